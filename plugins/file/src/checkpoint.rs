//! The file source's checkpoint: which file it read (path, device, inode, a fingerprint of its
//! head, as Vector's and Fluent Bit's file inputs identify files) and the offset up to which every
//! sink has written its lines.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes of the file's head that are fingerprinted (fewer when the file is shorter).
const HEAD_BYTES: usize = 1024;

/// What makes a file the same file after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileIdentity {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    /// How many bytes of the head `head_hash` covers.
    pub head_len: usize,
    /// FNV-1a of the first `head_len` bytes: a file replaced in place (same inode after a copy
    /// truncate, or an inode reused) has another head.
    pub head_hash: String,
}

impl FileIdentity {
    /// The identity of the open `file`, which is left positioned at its start; `None` when it is
    /// not a regular file (a FIFO or a device cannot be fingerprinted, seeked or resumed).
    pub async fn of(path: &Path, file: &mut tokio::fs::File) -> anyhow::Result<Option<FileIdentity>> {
        let meta = file.metadata().await.with_context(|| format!("stat {}", path.display()))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let (head_len, head_hash) = head(file, HEAD_BYTES).await.with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(FileIdentity { path: path.to_path_buf(), device: meta.dev(), inode: meta.ino(), head_len, head_hash }))
    }
}

/// The fingerprint of up to `limit` first bytes of `file`, which is left positioned at its start.
async fn head(file: &mut tokio::fs::File, limit: usize) -> std::io::Result<(usize, String)> {
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut bytes = Vec::with_capacity(limit);
    file.take(limit as u64).read_to_end(&mut bytes).await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    Ok((bytes.len(), fnv1a(&bytes)))
}

fn fnv1a(bytes: &[u8]) -> String {
    format!("{:016x}", tributary_sdk::position::fnv1a(bytes))
}

/// The lines before `offset` (line `line` starts there) are written by every sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// `None` for what is not a regular file: such checkpoints are never saved.
    #[serde(flatten)]
    pub identity: Option<FileIdentity>,
    pub offset: u64,
    pub line: usize,
    /// The epoch of the positions given to this reading of the file (see
    /// `tributary_sdk::Position`): drawn when the file is read from its start afresh, and kept
    /// while a restart resumes it, so the positions exactly-once sinks stored still name its
    /// bytes. `None` in a checkpoint of an older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl Checkpoint {
    /// The start of a file that has no identity to resume by.
    pub fn start() -> Checkpoint {
        Checkpoint { identity: None, offset: 0, line: 1, epoch: None }
    }

    pub fn load(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| format!("checkpoint {} is unreadable", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("checkpoint {}", path.display())),
        }
    }

    /// Whether reading may go on at this checkpoint in the file `current` (now `len` bytes long);
    /// the reason to start over otherwise.
    pub fn resumes(&self, current: &FileIdentity, len: u64) -> Result<(), String> {
        let Some(saved) = &self.identity else { return Err("the checkpoint names no file".into()) };
        if saved.path != current.path {
            return Err(format!("the checkpoint is for {}", saved.path.display()));
        }
        if (saved.device, saved.inode) != (current.device, current.inode) {
            return Err("the file was replaced (another inode)".into());
        }
        if len < self.offset {
            return Err(format!("the file is shorter ({len} bytes) than the checkpoint's offset {}", self.offset));
        }
        // The current head is at least as long as the saved one unless the file shrank, caught above.
        if current.head_len < saved.head_len || !current.head_matches(saved) {
            return Err("the file's first bytes changed (rewritten in place)".into());
        }
        Ok(())
    }

    /// Written to a temporary file, fsynced and renamed over the old one: a crash leaves the old
    /// checkpoint or the new one, never half of one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string(self).expect("serializes").as_bytes())?;
        f.sync_all().with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }
}

impl FileIdentity {
    /// Whether this (current) file starts with the bytes `saved` fingerprinted.
    fn head_matches(&self, saved: &FileIdentity) -> bool {
        if self.head_len == saved.head_len {
            return self.head_hash == saved.head_hash;
        }
        // The file grew past a short head: compare the same number of bytes again.
        use std::io::Read;
        let mut bytes = Vec::with_capacity(saved.head_len);
        match std::fs::File::open(&self.path).and_then(|f| f.take(saved.head_len as u64).read_to_end(&mut bytes)) {
            Ok(n) => n == saved.head_len && fnv1a(&bytes) == saved.head_hash,
            Err(_) => false,
        }
    }
}

/// Writes checkpoints on a thread of its own, keeping only the newest one waiting. Acks resolve in
/// bursts (a sink releasing every chunk of the file it just renamed into place), and each save is a
/// write, an fsync and a rename: saved one by one on the releasing task, 200 chunks held up the end
/// of a run by ~75 ms. A checkpoint superseded while another is being written is skipped (the newer
/// one covers it). Dropping the saver writes what still waits and waits for it, so a clean stop
/// leaves the newest position on disk; a crash may leave an older one (those lines are read again).
pub(crate) struct CheckpointSaver {
    shared: std::sync::Arc<(std::sync::Mutex<Waiting>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Waiting {
    next: Option<Checkpoint>,
    closed: bool,
}

impl CheckpointSaver {
    pub fn new(path: PathBuf, source: String) -> Self {
        let shared = std::sync::Arc::new((std::sync::Mutex::new(Waiting::default()), std::sync::Condvar::new()));
        let waiting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("file-checkpoint".into())
            .spawn(move || loop {
                let next = {
                    let (lock, wake) = &*waiting;
                    let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
                    while w.next.is_none() && !w.closed {
                        w = wake.wait(w).unwrap_or_else(|e| e.into_inner());
                    }
                    w.next.take()
                };
                let Some(checkpoint) = next else { return }; // closed, nothing waiting
                if let Err(e) = checkpoint.save(&path) {
                    tracing::error!(source = %source, "cannot save the checkpoint: {e:#}");
                }
            })
            .expect("a thread for checkpoints");
        CheckpointSaver { shared, thread: Some(thread) }
    }

    /// Save `checkpoint` soon (replacing one still waiting).
    pub fn save(&self, checkpoint: Checkpoint) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).next = Some(checkpoint);
        wake.notify_one();
    }
}

impl Drop for CheckpointSaver {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_checkpoints_leaves_the_newest_on_disk_when_the_saver_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let identity = FileIdentity { path: "in.ndjson".into(), device: 1, inode: 2, head_len: 3, head_hash: "h".into() };
        let saver = CheckpointSaver::new(path.clone(), "src".into());
        for offset in 1..=500u64 {
            saver.save(Checkpoint { identity: Some(identity.clone()), offset, line: offset as usize + 1, epoch: Some(7) });
        }
        drop(saver);
        let saved = Checkpoint::load(&path).unwrap().unwrap();
        assert_eq!((saved.offset, saved.line), (500, 501));
        assert!(!path.with_extension("json.tmp").exists());
    }
}
