//! The two output schemas (`<id>` stats, `<id>.events`) and building record batches from rows.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary_sdk::config::event_time_type;

use crate::parse::Stat;
use crate::session::{EventRow, Role, StatsRow};

/// Where a stat column's value comes from.
#[derive(Clone, Copy)]
enum Pick {
    /// The same stat for both roles.
    Any(Stat),
    /// Only on a sender's rows (null on a receiver's).
    Tx(Stat),
    /// Only on a receiver's rows.
    Rx(Stat),
    /// The sender's stat on tx rows, the receiver's on rx rows.
    ByRole(Stat, Stat),
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
}

use Kind::{Float, Int};
use Pick::{Any, ByRole, Rx, Tx};

/// The stat columns after `ts, session, role, sid, connected, reconnections`, with
/// `line_loss_pct` placed after `mbit_rate`.
const STAT_COLUMNS: &[(&str, Pick, Kind)] = &[
    ("link_rtt_ms", Any(Stat::LinkRtt), Float),
    ("link_bandwidth_mbps", Any(Stat::LinkBandwidth), Float),
    ("link_max_bandwidth_mbps", Any(Stat::LinkMaxBandwidth), Float),
    ("flight_pkts", Any(Stat::WindowFlight), Int),
    ("send_packets", Tx(Stat::SendPackets), Int),
    ("send_packets_unique", Tx(Stat::SendPacketsUnique), Int),
    ("send_packets_lost", Tx(Stat::SendPacketsLost), Int),
    ("send_packets_dropped", Tx(Stat::SendPacketsDropped), Int),
    ("send_packets_retransmitted", Tx(Stat::SendPacketsRetransmitted), Int),
    ("send_packets_filter_extra", Tx(Stat::SendPacketsFilterExtra), Int),
    ("send_bytes", Tx(Stat::SendBytes), Int),
    ("send_bytes_unique", Tx(Stat::SendBytesUnique), Int),
    ("send_bytes_dropped", Tx(Stat::SendBytesDropped), Int),
    ("recv_packets", Rx(Stat::RecvPackets), Int),
    ("recv_packets_unique", Rx(Stat::RecvPacketsUnique), Int),
    ("recv_packets_lost", Rx(Stat::RecvPacketsLost), Int),
    ("recv_packets_dropped", Rx(Stat::RecvPacketsDropped), Int),
    ("recv_packets_retransmitted", Rx(Stat::RecvPacketsRetransmitted), Int),
    ("recv_packets_belated", Rx(Stat::RecvPacketsBelated), Int),
    ("recv_packets_filter_extra", Rx(Stat::RecvPacketsFilterExtra), Int),
    ("recv_packets_filter_supply", Rx(Stat::RecvPacketsFilterSupply), Int),
    ("recv_packets_filter_loss", Rx(Stat::RecvPacketsFilterLoss), Int),
    ("recv_bytes", Rx(Stat::RecvBytes), Int),
    ("recv_bytes_unique", Rx(Stat::RecvBytesUnique), Int),
    ("recv_bytes_lost", Rx(Stat::RecvBytesLost), Int),
    ("recv_bytes_dropped", Rx(Stat::RecvBytesDropped), Int),
    ("mbit_rate", ByRole(Stat::SendMbitRate, Stat::RecvMbitRate), Float),
    ("ms_buf", ByRole(Stat::SendMsBuf, Stat::RecvMsBuf), Int),
    ("tsbpd_delay_ms", Any(Stat::RecvTsbPdDelay), Int),
];

/// The stats output: one row per statistics line, plus a status row at every disconnect and exit.
pub fn stats_schema() -> SchemaRef {
    // Built once: every batch the source sends carries it.
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_stats_schema);
    SCHEMA.clone()
}

fn build_stats_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("ts", event_time_type(), false),
        Field::new("session", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, true),
        Field::new("sid", DataType::Int64, true),
        Field::new("connected", DataType::Int64, false),
        Field::new("reconnections", DataType::Int64, false),
    ];
    for (name, _, kind) in STAT_COLUMNS {
        fields.push(Field::new(*name, if *kind == Int { DataType::Int64 } else { DataType::Float64 }, true));
        if *name == "mbit_rate" {
            fields.push(Field::new("line_loss_pct", DataType::Float64, false));
        }
    }
    Arc::new(Schema::new(fields))
}

/// The events output: one row per connect, disconnect, process start and exit.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("ts", event_time_type(), false),
            Field::new("session", DataType::Utf8, false),
            Field::new("role", DataType::Utf8, true),
            Field::new("event", DataType::Utf8, false),
            Field::new("sid", DataType::Int64, true),
            Field::new("reconnections", DataType::Int64, false),
            Field::new("message", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}

fn value(row: &StatsRow, pick: Pick) -> Option<f64> {
    let stat = match (pick, row.role) {
        (Any(s), _) => s,
        (Tx(s), Some(Role::Tx) | None) => s,
        (Rx(s), Some(Role::Rx) | None) => s,
        (Tx(_) | Rx(_), _) => return None,
        (ByRole(tx, _), Some(Role::Tx)) => tx,
        (ByRole(_, rx), _) => rx,
    };
    let v = row.values[stat as usize];
    (!v.is_nan()).then_some(v)
}

pub fn stats_batch(rows: &[StatsRow]) -> RecordBatch {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts_us)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &*r.session))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.role.map(Role::as_str)))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.sid))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.connected))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.reconnections))),
    ];
    for (name, pick, kind) in STAT_COLUMNS {
        columns.push(match kind {
            Int => Arc::new(Int64Array::from_iter(rows.iter().map(|r| value(r, *pick).map(|v| v as i64)))),
            Float => Arc::new(Float64Array::from_iter(rows.iter().map(|r| value(r, *pick)))),
        });
        if *name == "mbit_rate" {
            columns.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.line_loss_pct))));
        }
    }
    RecordBatch::try_new(stats_schema(), columns).expect("columns match the stats schema")
}

pub fn events_batch(rows: &[EventRow]) -> RecordBatch {
    RecordBatch::try_new(
        events_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts_us)).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &*r.session))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.role.map(Role::as_str)))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.event))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.sid))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.reconnections))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.message.as_str()))),
        ],
    )
    .expect("columns match the events schema")
}
