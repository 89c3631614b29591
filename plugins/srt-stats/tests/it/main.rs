//! This plugin's integration tests, as modules of one test binary (one link instead of one per file).

mod common;
mod docker_mode;
mod live_transmit;
mod srt_api_mode;
