//! What the scale-out tests share: several `tributary run` processes of one pipeline, each with
//! its own sink file and log, and the ids each wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One `tributary run` process: its sink file (the pipeline's `OUT`) and its log.
pub struct Member {
    pub name: &'static str,
    pub child: Child,
    pub out: PathBuf,
    pub log: PathBuf,
}

/// Start member `name` of `pipeline`, writing `<dir>/<file>.jsonl` and logging to
/// `<dir>/<file>.log` at `log_filter`, with `env` besides `OUT` and `ADMIN`.
pub fn start(name: &'static str, file: &str, dir: &Path, pipeline: &Path, log_filter: &str, env: &[(&str, String)]) -> Member {
    let out = dir.join(format!("{file}.jsonl"));
    let log = dir.join(format!("{file}.log"));
    let child = Command::new(super::bin())
        .args(["run", pipeline.to_str().unwrap()])
        .env("OUT", &out)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("ADMIN", super::free_addr().to_string())
        .env("TRIBUTARY_LOG", log_filter)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Member { name, child, out, log }
}

/// ids a member wrote (a killed member's last line can be partial: skipped).
pub fn written(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["id"].as_i64())
        .collect()
}
