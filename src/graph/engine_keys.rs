//! The keys the engine reads on every component besides the plugin's own options: `buffer:` on a
//! source and `retry:` on a sink (a transform's `window:` is in `sql::window`). They are part of
//! the plan; the runtime acts on them. Documented in docs/pipelines.md, whose tables
//! `tests/it/config_docs.rs` checks against these structs.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::config::ByteSize;
use tributary_sdk::{ConfigError, Period};

/// `buffer:` on any source.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceBuffer {
    /// Rows wait in memory channels (the default): a crash loses what a non-replayable source
    /// had accepted and not yet written.
    #[default]
    Memory,
    /// Rows are fsynced to disk before the source is told they are accepted.
    Disk(DiskBufferConfig),
}

/// `buffer: {type: disk, …}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskBufferConfig {
    /// Disk space the buffer may use (default `1GiB`, at least `1MiB`).
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// What happens when it is full: `block` (default; the source waits, HTTP clients get 503
    /// with `Retry-After`) or `drop_newest` (new rows are dropped and counted in `dropped_total`).
    #[serde(default)]
    pub when_full: WhenFull,
    /// Folder of the segment files (default `data/buffers/<source id>`). One pipeline at a time.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    Block,
    DropNewest,
}

fn default_max_size() -> ByteSize {
    ByteSize(1 << 30)
}

const MIN_SIZE: u64 = 1 << 20;

impl SourceBuffer {
    /// Checked before anything runs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let SourceBuffer::Disk(d) = self {
            if d.max_size.0 < MIN_SIZE {
                return Err(ConfigError::at("max_size", format!("must be at least 1MiB, got {} bytes", d.max_size.0)));
            }
        }
        Ok(())
    }
}

/// `retry:` on any sink: how the engine retries a write or flush that failed transiently.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkRetry {
    /// First wait (default `100ms`); doubles per attempt, with jitter.
    #[serde(default = "default_initial")]
    pub initial: Period,
    /// Longest wait between attempts (default `30s`).
    #[serde(default = "default_max")]
    pub max: Period,
    /// Give up after failing this long and send the rows to the sink's dead letters. Unset (the
    /// default): never give up; the pipeline waits for the destination under backpressure.
    #[serde(default)]
    pub max_elapsed: Option<Period>,
}

fn default_initial() -> Period {
    Period(Duration::from_millis(100))
}
fn default_max() -> Period {
    Period(Duration::from_secs(30))
}

impl Default for SinkRetry {
    fn default() -> Self {
        SinkRetry { initial: default_initial(), max: default_max(), max_elapsed: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_option_is_checked() {
        let parse = |yaml: &str| {
            serde_yaml::from_str::<SourceBuffer>(yaml)
                .map_err(|e| e.to_string())
                .and_then(|b| b.validate().map(|()| b).map_err(|e| e.to_string()))
        };
        assert_eq!(parse("{type: memory}"), Ok(SourceBuffer::Memory));
        assert_eq!(
            parse("{type: disk, max_size: 64MiB, when_full: drop_newest}"),
            Ok(SourceBuffer::Disk(DiskBufferConfig { max_size: ByteSize(64 << 20), when_full: WhenFull::DropNewest, path: None }))
        );
        assert_eq!(parse("{type: disk, max_size: 1000}").unwrap_err(), "max_size: must be at least 1MiB, got 1000 bytes");
        assert!(parse("{type: disk, when_full: wait}").unwrap_err().contains("unknown variant `wait`, expected `block` or `drop_newest`"));
    }
}
