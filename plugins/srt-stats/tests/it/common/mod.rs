//! Running an `srt_stats` source in a test and looking at what it produced.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use tributary_sdk::{ComponentConfig, SourcePlugin};
use tributary_srt_stats::SrtStatsPlugin;
use tributary_testkit::{source_context, SourceHarness};

/// A stats row, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Stat {
    pub session: String,
    pub role: Option<String>,
    pub sid: Option<i64>,
    pub connected: i64,
    pub reconnections: i64,
    pub columns: std::collections::HashMap<String, Option<f64>>,
}

impl Stat {
    pub fn get(&self, column: &str) -> f64 {
        self.columns[column].unwrap_or_else(|| panic!("`{column}` is null in {self:?}"))
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub session: String,
    pub role: Option<String>,
    pub event: String,
    pub reconnections: i64,
    pub message: String,
}

pub struct Running {
    pub harness: SourceHarness,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub stats: Vec<Stat>,
    pub events: Vec<Event>,
}

pub fn start(yaml: &str) -> Running {
    let built = SrtStatsPlugin.build(&ComponentConfig::from_yaml("srt", yaml)).map_err(|e| e.to_string()).unwrap();
    let (ctx, harness) = source_context("srt", &["", "events"], 1024);
    let task = tokio::spawn(built.source.run(ctx));
    Running { harness, task, stats: Vec::new(), events: Vec::new() }
}

fn strings(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a = b.column_by_name(col).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).to_string())).collect()
}
fn ints(b: &RecordBatch, col: &str) -> Vec<Option<i64>> {
    let a = b.column_by_name(col).unwrap().as_primitive::<Int64Type>();
    (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i))).collect()
}

impl Running {
    fn take(&mut self) {
        while let Ok(d) = self.harness.outputs.get_mut("").unwrap().try_recv() {
            let b = d.batch.data;
            let (sessions, roles, sids, conn, rec) =
                (strings(&b, "session"), strings(&b, "role"), ints(&b, "sid"), ints(&b, "connected"), ints(&b, "reconnections"));
            for i in 0..b.num_rows() {
                let mut columns = std::collections::HashMap::new();
                for (f, col) in b.schema().fields().iter().zip(b.columns()).skip(6) {
                    let v = if col.is_null(i) {
                        None
                    } else if let Some(a) = col.as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>() {
                        Some(a.value(i))
                    } else {
                        Some(col.as_primitive::<Int64Type>().value(i) as f64)
                    };
                    columns.insert(f.name().clone(), v);
                }
                self.stats.push(Stat {
                    session: sessions[i].clone().unwrap(),
                    role: roles[i].clone(),
                    sid: sids[i],
                    connected: conn[i].unwrap(),
                    reconnections: rec[i].unwrap(),
                    columns,
                });
            }
        }
        while let Ok(d) = self.harness.outputs.get_mut("events").unwrap().try_recv() {
            let b = d.batch.data;
            let (sessions, roles, events, rec, msgs) =
                (strings(&b, "session"), strings(&b, "role"), strings(&b, "event"), ints(&b, "reconnections"), strings(&b, "message"));
            for i in 0..b.num_rows() {
                self.events.push(Event {
                    session: sessions[i].clone().unwrap(),
                    role: roles[i].clone(),
                    event: events[i].clone().unwrap(),
                    reconnections: rec[i].unwrap(),
                    message: msgs[i].clone().unwrap(),
                });
            }
        }
    }

    /// Wait until `done` holds over everything received so far.
    pub async fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.take();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nevents: {:#?}\nlast stats: {:#?}",
                self.events,
                self.stats.iter().rev().take(4).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn events_of(&self, session: &str, event: &str) -> Vec<&Event> {
        self.events.iter().filter(|e| e.session == session && e.event == event).collect()
    }
    pub fn stats_of(&self, session: &str) -> Vec<&Stat> {
        self.stats.iter().filter(|s| s.session == session).collect()
    }
    pub fn last_stats(&self, session: &str) -> Option<&Stat> {
        self.stats.iter().rev().find(|s| s.session == session && s.connected == 1)
    }

    /// Stop the source and collect what it flushed.
    pub async fn stop(mut self) -> Running {
        self.harness.shutdown.cancel();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(15), task).await.expect("source stops").unwrap().unwrap();
        self.take();
        self
    }
}
