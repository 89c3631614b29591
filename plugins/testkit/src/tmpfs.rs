//! A small tmpfs of a test's own: a disk that fills up for real, without touching the machine's.

use std::path::Path;

/// A tmpfs mounted on a fresh folder, unmounted (lazily) when dropped.
pub struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// A tmpfs of `bytes`. `None` where mounting is not allowed (not root): the test is then
    /// skipped, except under `CI=true`, where that fails it.
    pub fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("tributary-tmpfs-{}-{}", std::process::id(), crate::free_port()));
        std::fs::create_dir_all(&dir).expect("a folder for the tmpfs");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI must be able to mount a tmpfs (the full-disk tests run as root)");
            eprintln!("skipped: cannot mount a tmpfs here (not root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fill what is left of it with `file`, leaving about `leave` bytes free.
    pub fn fill(&self, file: &str, leave: u64) -> std::io::Result<u64> {
        fill(&self.dir, file, leave)
    }
}

/// Fill what is left of the file system holding `dir` with `dir/file`, leaving about `leave`
/// bytes free; the bytes written.
pub fn fill(dir: &Path, file: &str, leave: u64) -> std::io::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(file))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = (free - leave).min(chunk.len() as u64) as usize;
        match f.write_all(&chunk[..n]) {
            Ok(()) => written += n as u64,
            Err(_) => break,
        }
    }
    // A full disk may refuse the fsync too; what was written counts either way.
    let _ = f.sync_all();
    Ok(written)
}

/// Bytes free on the file system holding `path` (0 when it cannot be asked).
pub fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(path).output();
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok())).unwrap_or(0)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
