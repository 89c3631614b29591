//! Exactly once for plain Parquet files (`format: parquet`): the positions live in the files.
//!
//! Each flush writes one file per partition folder. Every file of a flush carries, in its footer's
//! key-value metadata, the flush's id, how many files the flush wrote, and the positions the sink
//! had written once the flush is complete (everything before it too, so the newest flush alone
//! says where the sink stands). A file appears whole (temporary name, fsync, rename), so its
//! footer is written with its rows: a flush whose files are all there is a commit.
//!
//! At start, an exactly-once sink lists its files, reads the footers of the newest ones, and takes
//! the positions of the newest complete flush. Files of a newer flush that a crash interrupted
//! (some partitions written, not all) are removed: their rows were never acknowledged, and the
//! replay writes them again. A flush given up on (`retry.max_elapsed`) leaves a hidden
//! `.<prefix>-<flush id>.closed` marker: its files hold rows already handed to the dead letters'
//! side of the acks, so they stay.
//!
//! Spark's file sink does the same with a `_spark_metadata` log beside the files; here the log is
//! the footers, so no reader needs to know about it.

use std::collections::HashSet;

use anyhow::Context;
use datafusion::parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};
use tributary_sdk::{Position, Positions};

use crate::store::ObjectLocation;

/// `<flush id> <files in the flush>`.
const FLUSH_KEY: &str = "tributary.flush";
/// The positions written once the flush is complete: `[[stream, epoch, seq], …]`.
const POSITIONS_KEY: &str = "tributary.positions";

/// What every file of one flush says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlushTag {
    pub id: String,
    pub files: usize,
    pub positions: Positions,
}

impl FlushTag {
    /// A new flush of `files` files, which completes `positions`.
    pub fn new(files: usize, positions: Positions) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static FLUSHES: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{}-{:08x}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"),
            std::process::id(),
            FLUSHES.fetch_add(1, Ordering::Relaxed)
        );
        FlushTag { id, files, positions }
    }

    pub fn key_values(&self) -> [KeyValue; 2] {
        let positions: Vec<serde_json::Value> =
            self.positions.iter().map(|p| serde_json::json!([p.stream.as_ref(), p.epoch, p.seq])).collect();
        [
            KeyValue::new(FLUSH_KEY.to_string(), format!("{} {}", self.id, self.files)),
            KeyValue::new(POSITIONS_KEY.to_string(), serde_json::Value::Array(positions).to_string()),
        ]
    }

    /// The tag in a footer's key-value metadata; `None` for a file without one (written before
    /// positions were stored, or by another writer).
    fn from_key_values(kv: &[KeyValue]) -> anyhow::Result<Option<Self>> {
        let value = |key: &str| kv.iter().find(|k| k.key == key).and_then(|k| k.value.as_deref());
        let Some(flush) = value(FLUSH_KEY) else { return Ok(None) };
        let (id, files) = flush.rsplit_once(' ').with_context(|| format!("`{FLUSH_KEY}` is `{flush}`, not `<id> <files>`"))?;
        let files = files.parse().with_context(|| format!("`{FLUSH_KEY}` is `{flush}`: `{files}` is not a file count"))?;
        let listed: Vec<(String, u64, u64)> = serde_json::from_str(value(POSITIONS_KEY).unwrap_or("[]"))
            .with_context(|| format!("`{POSITIONS_KEY}` is not a list of [stream, epoch, seq]"))?;
        let positions = listed.into_iter().map(|(stream, epoch, seq)| Position { stream: stream.into(), epoch, seq }).collect();
        Ok(Some(FlushTag { id: id.to_string(), files, positions }))
    }
}

/// The hidden marker of a flush given up on, at the lake's root.
pub(crate) fn closed_marker(lake: &ObjectLocation, file_prefix: &str, flush_id: &str) -> ObjectPath {
    lake.prefix.clone().join(format!(".{file_prefix}-{flush_id}.closed"))
}

/// Where the files say the sink stands.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Recovered {
    /// The positions of the newest complete flush.
    pub written: Positions,
    /// The files of newer flushes that a crash interrupted (removed by [`recover`]).
    pub removed: Vec<ObjectPath>,
}

/// Reads the newest flushes' footers (newest first: file names are time-ordered) down to the
/// newest complete one, and removes the files of the interrupted flushes above it.
pub(crate) async fn recover(lake: &ObjectLocation, file_prefix: &str) -> anyhow::Result<Recovered> {
    let listed: Vec<ObjectMeta> =
        lake.store.list(Some(&lake.prefix)).try_collect().await.with_context(|| format!("listing {}", lake.url()))?;
    let (marker_start, marker_end) = (format!(".{file_prefix}-"), ".closed");
    let closed: HashSet<String> = listed
        .iter()
        .filter_map(|o| o.location.filename()?.strip_prefix(&marker_start)?.strip_suffix(marker_end).map(str::to_string))
        .collect();
    let ours = format!("{file_prefix}-");
    let mut files: Vec<&ObjectMeta> =
        listed.iter().filter(|o| o.location.filename().is_some_and(|f| f.starts_with(&ours) && f.ends_with(".parquet"))).collect();
    files.sort_by(|a, b| b.location.filename().cmp(&a.location.filename()));

    let mut recovered = Recovered::default();
    // The flush being read (its tag and the files found so far).
    let mut flush: Option<(FlushTag, Vec<ObjectPath>)> = None;
    for file in files {
        let tag = match footer_tag(lake, file).await {
            Ok(tag) => tag,
            Err(e) => {
                tracing::warn!("{}: not a file of this sink ({e:#}); skipped", file.location);
                continue;
            }
        };
        if let (Some(tag), Some((current, paths))) = (&tag, &mut flush) {
            if tag.id == current.id {
                paths.push(file.location.clone());
                continue;
            }
        }
        if let Some(done) = flush.take() {
            if settle(lake, done, &closed, &mut recovered).await? {
                return Ok(recovered);
            }
        }
        match tag {
            Some(tag) => flush = Some((tag, vec![file.location.clone()])),
            // Written before positions were stored: nothing older has any either.
            None => return Ok(recovered),
        }
    }
    if let Some(done) = flush {
        settle(lake, done, &closed, &mut recovered).await?;
    }
    Ok(recovered)
}

/// A flush read whole: true when it is complete (its positions are where the sink stands); an
/// interrupted one's files are removed, a closed one's kept.
async fn settle(
    lake: &ObjectLocation,
    (tag, paths): (FlushTag, Vec<ObjectPath>),
    closed: &HashSet<String>,
    recovered: &mut Recovered,
) -> anyhow::Result<bool> {
    if paths.len() >= tag.files {
        recovered.written = tag.positions;
        return Ok(true);
    }
    if !closed.contains(&tag.id) {
        for path in paths {
            lake.store.delete(&path).await.with_context(|| format!("removing {path}, a file of an interrupted flush"))?;
            recovered.removed.push(path);
        }
    }
    Ok(false)
}

/// The flush tag in the footer of `file`: its last 8 bytes give the footer's length.
async fn footer_tag(lake: &ObjectLocation, file: &ObjectMeta) -> anyhow::Result<Option<FlushTag>> {
    let size = file.size;
    anyhow::ensure!(size >= 12, "{size} bytes is too short for Parquet");
    let tail = lake.store.get_range(&file.location, size - 8..size).await?;
    anyhow::ensure!(&tail[4..] == b"PAR1", "no Parquet footer");
    let length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    anyhow::ensure!(length + 8 <= size, "a footer of {length} bytes in a file of {size}");
    let footer = lake.store.get_range(&file.location, size - 8 - length..size - 8).await?;
    let metadata = ParquetMetaDataReader::decode_metadata(&footer)?;
    FlushTag::from_key_values(metadata.file_metadata().key_value_metadata().map_or(&[], |kv| kv.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_reads_back_from_its_key_values_and_a_bad_one_is_named() {
        let positions: Positions =
            [Position { stream: "in/0".into(), epoch: 3, seq: 9 }, Position { stream: "web".into(), epoch: 1, seq: 40 }]
                .into_iter()
                .collect();
        let tag = FlushTag::new(2, positions);
        assert_eq!(FlushTag::from_key_values(&tag.key_values()).unwrap(), Some(tag.clone()));
        assert_eq!(FlushTag::from_key_values(&[]).unwrap(), None);
        let bad = [KeyValue::new(FLUSH_KEY.to_string(), "x y".to_string())];
        assert_eq!(FlushTag::from_key_values(&bad).unwrap_err().to_string(), "`tributary.flush` is `x y`: `y` is not a file count");
    }
}
