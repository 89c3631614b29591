//! The root crate's integration tests, as modules of one binary: each file of `tests/*.rs` used
//! to link DataFusion, rdkafka and deltalake into a binary of its own, and linking them was most
//! of an incremental test run. Run one file's tests with its module name as the filter:
//! `cargo test --test it kafka_restart::`.

mod common;

mod acks;
mod badge_pipeline_dashboard;
mod badge_stream_restart;
mod cli;
mod config_docs;
mod delivery_faults;
mod deployment;
mod docs;
mod exactly_once;
mod file_exactly_once;
mod hostile;
mod hot_reload;
mod http_input;
mod kafka_exactly_once;
mod kafka_repartition;
mod kafka_restart;
mod kafka_scale_out;
mod lake_s3;
mod mqtt_scale_out;
mod nats_scale_out;
mod operations_dashboard;
mod otlp_source;
mod pipeline_e2e;
mod probe_kafka_pg;
mod replay;
mod serve_api;
mod serve_page;
mod site_probes_pg;
mod srt_pipeline_dashboard;
mod top;
mod webex_pipeline_dashboard;
mod windows_tap_test;
