//! `file` source (JSON lines, read once or tailed) and `file` sink (JSON lines).

mod checkpoint;
mod sink;
mod source;

pub use sink::{FileSink, FileSinkConfig, FileSinkPlugin};
pub use source::{FileSource, FileSourceConfig, FileSourcePlugin, ReadMode};
