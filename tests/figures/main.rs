//! The fault figures: scenarios that drive the built `tributary` binary through kills, cuts and
//! full disks, and print what was sent, written, lost and duplicated as tables. A plain `main`
//! (harness = false): each set shares one runtime and runs its scenarios one after another; a
//! test-name filter picks a set (`cargo test --test figures buffer_figures -- --only=window`).

#[path = "../it/common/mod.rs"]
mod common;

mod brokers;
mod buffer;
mod fault;
mod hostile_reloads;

fn main() {
    fault::run();
    buffer::run();
}
