//! Event-time windows for SQL transforms: tumbling, hopping and session windows with a watermark,
//! allowed lateness, an idle timeout, a `.late` side output and a partial flush on shutdown.
//!
//! The operator buffers the raw rows of open windows only (any SQL works over them, including
//! joins of two inputs within one window). When the watermark passes a window's end, the rows of
//! every window that closed are handed to the SQL in one execution, each row carrying its
//! `window_start` and `window_end`; the results get a `partial` column (`false` here, `true` for
//! windows flushed open at shutdown). A row whose window was already emitted goes to `.late` with
//! its original columns instead of being counted twice.
//!
//! Times are microseconds: event time from the row's time column, processing time from the
//! caller's clock (`now`), so tests can simulate idleness without waiting.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::{DataFusionError, Result as DfResult};
use serde::Deserialize;
use tributary_sdk::config::event_time_type;
use tributary_sdk::{AckSet, HumanDuration};

use super::SqlTransform;

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
pub const PARTIAL: &str = "partial";
/// Added to `.late` rows when a transform has several inputs with different columns.
pub const LATE_INPUT: &str = "late_input";

/// `window:` of a SQL transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Fixed windows of this size, aligned to the Unix epoch (`1m` → 10:00, 10:01, …).
    #[serde(default)]
    pub tumbling: Option<HumanDuration>,
    /// Overlapping windows of this size, one starting every `slide`.
    #[serde(default)]
    pub hopping: Option<HumanDuration>,
    #[serde(default)]
    pub slide: Option<HumanDuration>,
    /// Session windows: rows closer than this gap (per `key`) share a window.
    #[serde(default)]
    pub session: Option<HumanDuration>,
    /// Columns that partition session windows (e.g. `[user_uuid]`); empty = one session stream.
    #[serde(default)]
    pub key: Vec<String>,
    /// The event-time column of every input (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// How far behind the newest event time a row may arrive and still count (default 0s).
    #[serde(default)]
    pub allowed_lateness: Option<HumanDuration>,
    /// After this long without rows, an input's event time is assumed to follow the wall clock
    /// (default 1m), so windows of a quiet source still close.
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    /// How far ahead of the wall clock an event time may be (default 1h). Rows beyond it (and
    /// rows before 1970) go to the dead-letter output: one row dated 9999-12-31 would otherwise
    /// move the watermark past every real row to come.
    #[serde(default)]
    pub max_future: Option<HumanDuration>,
}

fn default_time_column() -> String {
    "ts".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: i64 },
    Hopping { size: i64, slide: i64 },
    Session { gap: i64 },
}

/// A checked window declaration, in microseconds.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub key: Vec<String>,
    pub time_column: String,
    pub lateness: i64,
    pub idle_timeout: i64,
    pub max_future: i64,
}

fn micros(d: HumanDuration) -> i64 {
    d.0.as_micros().min(i64::MAX as u128 / 4) as i64
}

impl WindowSpec {
    /// Check the declaration; the error is the message for `transforms.<id>.window`.
    pub fn from_config(c: &WindowConfig) -> Result<WindowSpec, String> {
        let positive =
            |name: &str, d: HumanDuration| if d.0.is_zero() { Err(format!("`{name}` must be longer than 0s")) } else { Ok(micros(d)) };
        let kind = match (c.tumbling, c.hopping, c.session) {
            (Some(size), None, None) => WindowKind::Tumbling { size: positive("tumbling", size)? },
            (None, Some(size), None) => {
                let size = positive("hopping", size)?;
                let slide = positive(
                    "slide",
                    c.slide.ok_or("a hopping window needs `slide` (how often a window starts), e.g. `{hopping: 5m, slide: 1m}`")?,
                )?;
                if slide > size {
                    return Err("`slide` must not be longer than the `hopping` size (rows between windows would belong to none)".into());
                }
                WindowKind::Hopping { size, slide }
            }
            (None, None, Some(gap)) => WindowKind::Session { gap: positive("session", gap)? },
            _ => return Err("declare exactly one of `tumbling: SIZE`, `hopping: SIZE` (with `slide`) or `session: GAP`".into()),
        };
        if c.slide.is_some() && !matches!(kind, WindowKind::Hopping { .. }) {
            return Err("`slide` only applies to `hopping` windows".into());
        }
        if !c.key.is_empty() && !matches!(kind, WindowKind::Session { .. }) {
            return Err("`key` only applies to `session` windows (group tumbling and hopping windows in the SQL)".into());
        }
        Ok(WindowSpec {
            kind,
            key: c.key.clone(),
            time_column: c.time_column.clone(),
            lateness: c.allowed_lateness.map(micros).unwrap_or(0),
            idle_timeout: c.idle_timeout.map(micros).unwrap_or(60_000_000),
            max_future: c.max_future.map(micros).unwrap_or(3_600_000_000),
        })
    }

    /// The end of the first window a row at `t` belongs to (for sessions: the earliest its
    /// session can end).
    fn earliest_end(&self, t: i64) -> i64 {
        match self.kind {
            // Saturating: event times are checked to lie in [1970, now + max_future] before they
            // get here, but the watermark and `limit` may sit at the integer limits.
            WindowKind::Tumbling { size } => t.div_euclid(size).saturating_mul(size).saturating_add(size),
            WindowKind::Hopping { size, slide } => {
                t.saturating_sub(size).div_euclid(slide).saturating_add(1).saturating_mul(slide).saturating_add(size)
            }
            WindowKind::Session { gap } => t.saturating_add(gap),
        }
    }

    /// The end of the last window a row at `t` belongs to (tumbling and hopping).
    fn latest_end(&self, t: i64) -> i64 {
        match self.kind {
            WindowKind::Tumbling { size } => t.div_euclid(size).saturating_mul(size).saturating_add(size),
            WindowKind::Hopping { size, slide } => t.div_euclid(slide).saturating_mul(slide).saturating_add(size),
            WindowKind::Session { gap } => t.saturating_add(gap),
        }
    }

    /// Whether a row at `t` arrives too late for watermark `w`: one of its windows was emitted
    /// (tumbling, hopping), or it is older than the watermark (sessions, which may have closed).
    fn is_late(&self, t: i64, w: i64) -> bool {
        match self.kind {
            WindowKind::Session { .. } => t < w,
            _ => self.earliest_end(t) <= w,
        }
    }

    /// Whether a late row at `t` still has a window open at watermark `w`: a hopping window
    /// emitted some of its windows and not all. The row counts in those (as Flink and Arroyo
    /// assign a late row per window) and goes to `.late` for the ones it missed.
    fn has_open_window(&self, t: i64, w: i64) -> bool {
        matches!(self.kind, WindowKind::Hopping { .. }) && self.latest_end(t) > w
    }
}

/// An input table as windowed SQL sees it: its columns plus `window_start` and `window_end`.
pub fn windowed_input_schema(input: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WINDOW_START, event_time_type(), false));
    fields.push(Field::new(WINDOW_END, event_time_type(), false));
    Arc::new(Schema::new(fields))
}

/// The transform's output: the SQL's columns plus `partial`.
pub fn windowed_output_schema(sql: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = sql.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(PARTIAL, DataType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// `<transform>.late`: the input's own columns. With several inputs whose columns differ, the
/// union of their columns (nullable where an input lacks one) plus `late_input` naming the input.
pub fn late_schema(inputs: &[(String, SchemaRef)]) -> Result<SchemaRef, String> {
    let first = &inputs[0].1;
    if inputs.iter().all(|(_, s)| s.fields() == first.fields()) {
        return Ok(first.clone());
    }
    let mut fields: Vec<Field> = Vec::new();
    for (name, s) in inputs {
        for f in s.fields() {
            match fields.iter().find(|x| x.name() == f.name()) {
                Some(x) if x.data_type() != f.data_type() => {
                    return Err(format!(
                        "column `{}` is {} in input `{name}` but {} in another input; rename or cast it so late rows share one schema",
                        f.name(),
                        f.data_type(),
                        x.data_type()
                    ))
                }
                Some(_) => {}
                None => fields.push(f.as_ref().clone().with_nullable(true)),
            }
        }
    }
    fields.push(Field::new(LATE_INPUT, DataType::Utf8, false));
    Ok(Arc::new(Schema::new(fields)))
}

/// `rows` of input `input` in the `.late` schema (see [`late_schema`]).
pub fn to_late_schema(late_schema: &SchemaRef, input: &str, rows: RecordBatch) -> DfResult<RecordBatch> {
    if rows.schema().fields() == late_schema.fields() {
        return Ok(rows);
    }
    let n = rows.num_rows();
    let columns = late_schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == LATE_INPUT {
                return Arc::new(datafusion::arrow::array::StringArray::from(vec![input; n])) as ArrayRef;
            }
            match rows.column_by_name(f.name()) {
                Some(c) => c.clone(),
                None => datafusion::arrow::array::new_null_array(f.data_type(), n),
            }
        })
        .collect::<Vec<_>>();
    Ok(RecordBatch::try_new(late_schema.clone(), columns)?)
}

/// Check that every input can be windowed by `spec`.
pub fn check_inputs(spec: &WindowSpec, inputs: &[(String, SchemaRef)]) -> Result<(), String> {
    for (name, s) in inputs {
        match s.field_with_name(&spec.time_column) {
            Ok(f) if matches!(f.data_type(), DataType::Timestamp(..)) => {}
            Ok(f) => {
                return Err(format!("time column `{}` of input `{name}` is {}, expected a timestamp", spec.time_column, f.data_type()))
            }
            Err(_) => {
                return Err(format!("input `{name}` has no time column `{}` (set `window.time_column`)", spec.time_column));
            }
        }
        for reserved in [WINDOW_START, WINDOW_END] {
            if s.field_with_name(reserved).is_ok() {
                return Err(format!("input `{name}` already has a `{reserved}` column, which the window adds; rename it upstream"));
            }
        }
        for k in &spec.key {
            let Ok(f) = s.field_with_name(k) else { return Err(format!("session key `{k}` is not a column of input `{name}`")) };
            let first = inputs[0].1.field_with_name(k).map(|f| f.data_type().clone()).ok();
            if first.as_ref() != Some(f.data_type()) {
                return Err(format!("session key `{k}` has different types in the inputs"));
            }
        }
    }
    Ok(())
}

/// Rows of one input waiting for their windows to close, with the obligations they carry.
struct Chunk {
    input: usize,
    rows: RecordBatch,
    /// Event time per row, microseconds.
    ts: Vec<i64>,
    min_ts: i64,
    acks: AckSet,
}

struct InputClock {
    time_idx: usize,
    max_seen: Option<i64>,
    last_arrival: i64,
}

/// What an incoming batch turned into right away.
#[derive(Default)]
pub struct Accepted {
    /// Rows for `.late` (in the late schema), with a share of the batch's acks.
    pub late: Option<(RecordBatch, AckSet)>,
    /// Rows for the dead-letter output (no event time, or one outside the accepted range), with
    /// a share of the acks and the reason.
    pub rejected: Vec<(RecordBatch, AckSet, String)>,
    /// Replayed rows whose every window was written before the restart (see
    /// [`WindowOperator::resume`]): dropped, their share of the acks released.
    pub written_before: usize,
}

/// Closed windows: what the SQL made of their rows, or — when it failed — the rows handed to it
/// (per input) with the reason, for the dead-letter output.
pub struct Emission {
    pub result: Result<Vec<RecordBatch>, Vec<(RecordBatch, String)>>,
    pub acks: AckSet,
    /// Every window ending at or before this (microseconds) has now been emitted: the position
    /// an exactly-once sink stores with these rows (`i64::MAX` for the partial flush).
    pub through: i64,
}

/// What a reload hands from the old operator to the new one (exactly once): the rows of open
/// windows, still holding their acks, and how far the old one emitted.
pub struct OpenWindows {
    rows: Vec<(String, RecordBatch, AckSet)>,
    watermark: Option<i64>,
    emitted_through: i64,
}

pub struct WindowOperator {
    spec: WindowSpec,
    /// Shared by the operators of one transform kept per partition (they run one at a time).
    sql: std::sync::Arc<SqlTransform>,
    input_names: Vec<String>,
    late_schema: SchemaRef,
    clocks: Vec<InputClock>,
    chunks: Vec<Chunk>,
    watermark: Option<i64>,
    /// Windows ending at or before this were emitted.
    emitted_through: i64,
    /// Windows ending at or before this were written by every exactly-once sink before a restart
    /// (`i64::MIN` without one): their replayed rows are dropped, not counted again.
    resumed_through: i64,
    /// Where other exactly-once sinks stopped (above `resumed_through`): emissions end there
    /// once, so each sink can skip, whole, what it wrote.
    resume_points: Vec<i64>,
    key_converter: Option<RowConverter>,
}

impl WindowOperator {
    /// `sql` is planned over `windowed_input_schema` of each input; `inputs` are the inputs' own
    /// names and schemas; `now` starts the idle clocks.
    pub fn new(
        spec: WindowSpec,
        sql: impl Into<std::sync::Arc<SqlTransform>>,
        inputs: &[(String, SchemaRef)],
        late_schema: SchemaRef,
        now: i64,
    ) -> DfResult<Self> {
        let clocks = inputs
            .iter()
            .map(|(_, s)| Ok(InputClock { time_idx: s.index_of(&spec.time_column)?, max_seen: None, last_arrival: now }))
            .collect::<DfResult<Vec<_>>>()?;
        let key_converter = if spec.key.is_empty() {
            None
        } else {
            let s = &inputs[0].1;
            let fields =
                spec.key.iter().map(|k| Ok(SortField::new(s.field_with_name(k)?.data_type().clone()))).collect::<DfResult<Vec<_>>>()?;
            Some(RowConverter::new(fields)?)
        };
        Ok(WindowOperator {
            spec,
            sql: sql.into(),
            input_names: inputs.iter().map(|(n, _)| n.clone()).collect(),
            late_schema,
            clocks,
            chunks: Vec::new(),
            watermark: None,
            emitted_through: i64::MIN,
            resumed_through: i64::MIN,
            resume_points: Vec::new(),
            key_converter,
        })
    }

    /// After a restart, exactly once: `written` holds, per exactly-once sink fed by this
    /// transform, the end of the last window it wrote (`None`: nothing yet). The rows replayed
    /// from the source's buffer rebuild the open windows; windows every sink wrote are not
    /// emitted again, and an emission stops at each sink's point, so no emission is half written.
    pub fn resume(&mut self, written: &[Option<i64>]) {
        let mut points: Vec<i64> = written.iter().map(|w| w.unwrap_or(i64::MIN)).collect();
        points.sort_unstable();
        points.dedup();
        let Some(&lowest) = points.first() else { return };
        self.resumed_through = lowest;
        self.emitted_through = self.emitted_through.max(lowest);
        self.resume_points = points.split_off(1);
    }

    /// A reload, exactly once: the open windows' rows (acks still held) for the next version.
    pub fn into_open_windows(self) -> OpenWindows {
        let rows = self.chunks.into_iter().map(|c| (self.input_names[c.input].clone(), c.rows, c.acks)).collect();
        OpenWindows { rows, watermark: self.watermark, emitted_through: self.emitted_through }
    }

    /// Whether a new version over `inputs` can take over the open windows' rows: every input
    /// they came from is still there, with the same columns.
    pub fn hands_over_to(&self, inputs: &[(String, SchemaRef)]) -> bool {
        self.chunks.iter().all(|c| inputs.iter().any(|(n, s)| *n == self.input_names[c.input] && s.fields() == c.rows.schema().fields()))
    }

    /// Take over `open` from the version before a reload (checked with
    /// [`hands_over_to`](Self::hands_over_to)): its rows go into this version's windows, none of
    /// which ends at or before what the old one emitted. Rows late for the new windows (they
    /// start earlier) come back as when first accepted.
    pub fn take_over(&mut self, open: OpenWindows, now: i64) -> DfResult<Vec<Accepted>> {
        self.watermark = open.watermark;
        self.emitted_through = self.emitted_through.max(open.emitted_through);
        let mut out = Vec::new();
        for (name, rows, acks) in open.rows {
            let input = self.input_names.iter().position(|n| *n == name).ok_or_else(|| {
                DataFusionError::Internal(format!("input `{name}` is not an input of the new version (hands_over_to was not asked)"))
            })?;
            out.push(self.accept(input, rows, acks, now)?);
        }
        Ok(out)
    }

    pub fn output_schema(&self) -> SchemaRef {
        windowed_output_schema(&self.sql.output_schema())
    }

    /// The current watermark (microseconds), once every input has data or went idle.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Rows buffered in open windows.
    pub fn buffered_rows(&self) -> usize {
        self.chunks.iter().map(|c| c.rows.num_rows()).sum()
    }

    /// Take in a batch of input `input`: late rows and rows without a time come back at once,
    /// the rest waits for its windows. Call [`advance`](Self::advance) afterwards.
    pub fn accept(&mut self, input: usize, rows: RecordBatch, acks: AckSet, now: i64) -> DfResult<Accepted> {
        let clock = &mut self.clocks[input];
        clock.last_arrival = now;
        let times = cast(rows.column(clock.time_idx), &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        let (mut keep, mut late, mut no_time, mut out_of_range) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut written_before = Vec::new();
        let latest_allowed = tributary_sdk::now_us().saturating_add(self.spec.max_future);
        let mut ts = Vec::with_capacity(rows.num_rows());
        for i in 0..rows.num_rows() {
            if times.is_null(i) {
                no_time.push(i as u32);
                continue;
            }
            let t = times.value(i);
            if !(0..=latest_allowed).contains(&t) {
                out_of_range.push(i as u32);
                continue;
            }
            clock.max_seen = Some(clock.max_seen.map_or(t, |m| m.max(t)));
            let fixed = !matches!(self.spec.kind, WindowKind::Session { .. });
            if fixed && self.spec.latest_end(t) <= self.resumed_through {
                written_before.push(i as u32);
                continue;
            }
            // A replayed row whose first windows were written before the restart was not late
            // then: it counts in the rest, and is not sent to `.late` now.
            let replayed = fixed && self.spec.earliest_end(t) <= self.resumed_through;
            if let Some(w) = self.watermark.filter(|&w| !replayed && self.spec.is_late(t, w)) {
                late.push(i as u32);
                if self.spec.has_open_window(t, w) {
                    keep.push(i as u32);
                    ts.push(t);
                }
            } else {
                keep.push(i as u32);
                ts.push(t);
            }
        }
        let mut pieces = 0;
        let mut out = Accepted::default();
        let late_rows = (!late.is_empty()).then(|| take(&rows, late)).transpose()?;
        let no_time_rows = (!no_time.is_empty()).then(|| take(&rows, no_time)).transpose()?;
        let out_of_range_rows = (!out_of_range.is_empty()).then(|| take(&rows, out_of_range)).transpose()?;
        let keep_rows =
            if keep.len() == rows.num_rows() { Some(rows.clone()) } else { (!keep.is_empty()).then(|| take(&rows, keep)).transpose()? };
        pieces += late_rows.is_some() as usize
            + no_time_rows.is_some() as usize
            + out_of_range_rows.is_some() as usize
            + keep_rows.is_some() as usize;
        pieces += !written_before.is_empty() as usize;
        let mut shares = share(acks, pieces).into_iter();
        if !written_before.is_empty() {
            out.written_before = written_before.len();
            shares.next().expect("one share per piece").release();
        }
        if let Some(r) = late_rows {
            out.late = Some((self.to_late_schema(input, r)?, shares.next().expect("one share per piece")));
        }
        if let Some(r) = no_time_rows {
            let reason = format!("input `{}`: the event-time column is null", self.input_names[input]);
            out.rejected.push((r, shares.next().expect("one share per piece"), reason));
        }
        if let Some(r) = out_of_range_rows {
            let reason = format!(
                "input `{}`: the event time is before 1970 or more than {} ahead of the clock (`window.max_future`)",
                self.input_names[input],
                humantime::format_duration(std::time::Duration::from_micros(self.spec.max_future as u64))
            );
            out.rejected.push((r, shares.next().expect("one share per piece"), reason));
        }
        if let Some(rows) = keep_rows {
            let min_ts = ts.iter().copied().min().expect("non-empty");
            self.chunks.push(Chunk { input, rows, ts, min_ts, acks: shares.next().expect("one share per piece") });
        }
        Ok(out)
    }

    /// Move the watermark to what the inputs allow at `now` and emit every window it passed.
    pub async fn advance(&mut self, now: i64) -> DfResult<Option<Emission>> {
        let Some(w) = self.combined_watermark(now) else { return Ok(None) };
        let w = self.watermark.map_or(w, |old| old.max(w));
        self.watermark = Some(w);
        if self.emitted_through >= w {
            return Ok(None);
        }
        // Up to the next point where an exactly-once sink stopped before a restart, if one
        // comes first; the rest on the next call.
        let limit = self.resume_points.iter().copied().find(|&r| r > self.emitted_through && r < w).unwrap_or(w);
        self.emit(limit, false).await
    }

    /// Shutdown: emit every open window, marked partial.
    pub async fn finish(&mut self) -> DfResult<Option<Emission>> {
        self.emit(i64::MAX, true).await
    }

    /// Watermark per input = newest event time − allowed lateness; an input quiet for the idle
    /// timeout follows the wall clock from its last row and stops holding the others back.
    fn combined_watermark(&self, now: i64) -> Option<i64> {
        let (mut active, mut idle, mut waiting) = (None::<i64>, None::<i64>, false);
        for c in &self.clocks {
            let quiet = now - c.last_arrival >= self.spec.idle_timeout;
            match c.max_seen {
                None if quiet => {}
                None => waiting = true,
                Some(m) if quiet => {
                    let w = m.saturating_add(now - c.last_arrival).saturating_sub(self.spec.lateness);
                    idle = Some(idle.map_or(w, |x| x.max(w)));
                }
                Some(m) => {
                    let w = m.saturating_sub(self.spec.lateness);
                    active = Some(active.map_or(w, |x| x.min(w)));
                }
            }
        }
        if waiting {
            return None;
        }
        active.or(idle)
    }

    fn to_late_schema(&self, input: usize, rows: RecordBatch) -> DfResult<RecordBatch> {
        to_late_schema(&self.late_schema, &self.input_names[input], rows)
    }

    /// Emit the windows ending after `emitted_through` and at or before `limit`.
    async fn emit(&mut self, limit: i64, partial: bool) -> DfResult<Option<Emission>> {
        if self.chunks.iter().all(|c| self.spec.earliest_end(c.min_ts) > limit) {
            self.emitted_through = self.emitted_through.max(limit);
            return Ok(None);
        }
        // Per chunk: (row, window_start, window_end) to emit now.
        let assigned: Vec<Vec<(u32, i64, i64)>> = match self.spec.kind {
            WindowKind::Session { gap } => self.assign_sessions(gap, limit)?,
            _ => self.chunks.iter().map(|c| self.assign_fixed(c, limit)).collect(),
        };
        if assigned.iter().all(Vec::is_empty) {
            self.emitted_through = self.emitted_through.max(limit);
            return Ok(None);
        }
        let chunks = std::mem::take(&mut self.chunks);
        let mut per_input: Vec<Vec<RecordBatch>> = vec![Vec::new(); self.clocks.len()];
        let mut acks = AckSet::none();
        for (chunk, rows) in chunks.into_iter().zip(assigned) {
            if rows.is_empty() {
                self.chunks.push(chunk);
                continue;
            }
            // Sessions written before a restart are rebuilt from replayed rows, and dropped.
            let emitted: Vec<(u32, i64, i64)> = rows.iter().copied().filter(|&(_, _, end)| end > self.resumed_through).collect();
            if !emitted.is_empty() {
                per_input[chunk.input].push(with_window(&chunk.rows, &emitted)?);
            }
            let kept: Vec<u32> = match self.spec.kind {
                WindowKind::Session { .. } => {
                    let mut gone = vec![false; chunk.ts.len()];
                    rows.iter().for_each(|(i, _, _)| gone[*i as usize] = true);
                    (0..chunk.ts.len() as u32).filter(|i| !gone[*i as usize]).collect()
                }
                _ => (0..chunk.ts.len() as u32).filter(|&i| self.spec.latest_end(chunk.ts[i as usize]) > limit).collect(),
            };
            if kept.is_empty() {
                acks.extend(chunk.acks);
            } else {
                acks.extend(chunk.acks.clone());
                let ts: Vec<i64> = kept.iter().map(|&i| chunk.ts[i as usize]).collect();
                let min_ts = ts.iter().copied().min().expect("non-empty");
                let rows = take(&chunk.rows, kept)?;
                self.chunks.push(Chunk { input: chunk.input, rows, ts, min_ts, acks: chunk.acks });
            }
        }
        self.emitted_through = self.emitted_through.max(limit);
        let mut contents = Vec::new();
        for (i, batches) in per_input.into_iter().enumerate() {
            if !batches.is_empty() {
                let schema = batches[0].schema();
                contents.push((i, concat_batches(&schema, &batches)?));
            }
        }
        if contents.is_empty() {
            return Ok(Some(Emission { result: Ok(Vec::new()), acks, through: limit }));
        }
        let sql_input: Vec<(usize, Vec<RecordBatch>)> = contents.iter().map(|(i, b)| (*i, vec![b.clone()])).collect();
        let result = self.sql.execute_with(&sql_input).await;
        let result = result.and_then(|batches| batches.into_iter().map(|b| with_partial(b, partial)).collect()).map_err(|e| {
            contents.into_iter().map(|(i, rows)| (rows, format!("windowed SQL failed on input `{}`: {e}", self.input_names[i]))).collect()
        });
        Ok(Some(Emission { result, acks, through: limit }))
    }

    fn assign_fixed(&self, c: &Chunk, limit: i64) -> Vec<(u32, i64, i64)> {
        let mut out = Vec::new();
        if self.spec.earliest_end(c.min_ts) > limit {
            return out;
        }
        let (size, slide) = match self.spec.kind {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Hopping { size, slide } => (size, slide),
            WindowKind::Session { .. } => unreachable!("sessions are assigned together"),
        };
        for (i, &t) in c.ts.iter().enumerate() {
            let mut start = self.spec.earliest_end(t) - size;
            while start <= t {
                let end = start + size;
                if end > limit {
                    break;
                }
                if end > self.emitted_through {
                    out.push((i as u32, start, end));
                }
                start += slide;
            }
        }
        out
    }

    /// Sessions over every buffered row (all inputs), per key: rows less than `gap` apart share a
    /// session `[first, last + gap)`; the sessions ending by `limit` are emitted.
    fn assign_sessions(&self, gap: i64, limit: i64) -> DfResult<Vec<Vec<(u32, i64, i64)>>> {
        let mut rows: Vec<(Vec<u8>, i64, usize, u32)> = Vec::new();
        for (ci, c) in self.chunks.iter().enumerate() {
            let keys = match &self.key_converter {
                Some(conv) => {
                    let cols: Vec<ArrayRef> = self.spec.key.iter().map(|k| c.rows.column_by_name(k).expect("checked").clone()).collect();
                    let converted = conv.convert_columns(&cols)?;
                    (0..c.ts.len()).map(|i| converted.row(i).as_ref().to_vec()).collect()
                }
                None => vec![Vec::new(); c.ts.len()],
            };
            for (i, key) in keys.into_iter().enumerate() {
                rows.push((key, c.ts[i], ci, i as u32));
            }
        }
        rows.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut out = vec![Vec::new(); self.chunks.len()];
        let mut start = 0;
        while start < rows.len() {
            let mut end = start + 1;
            while end < rows.len() && rows[end].0 == rows[start].0 && rows[end].1 - rows[end - 1].1 < gap {
                end += 1;
            }
            let (first, last) = (rows[start].1, rows[end - 1].1);
            if last + gap <= limit {
                for (_, _, ci, i) in &rows[start..end] {
                    out[*ci].push((*i, first, last + gap));
                }
            }
            start = end;
        }
        Ok(out)
    }
}

/// Split an obligation into `n` holders (none when `n` is 0: the rows are gone, so it is done).
fn share(acks: AckSet, n: usize) -> Vec<AckSet> {
    if n == 0 {
        acks.release();
        return Vec::new();
    }
    let mut out: Vec<AckSet> = (1..n).map(|_| acks.clone()).collect();
    out.push(acks);
    out
}

fn take(rows: &RecordBatch, idx: Vec<u32>) -> DfResult<RecordBatch> {
    Ok(take_record_batch(rows, &UInt32Array::from(idx))?)
}

/// The chosen rows (repeated once per window for hopping windows) with their window bounds.
fn with_window(rows: &RecordBatch, assigned: &[(u32, i64, i64)]) -> DfResult<RecordBatch> {
    let picked = take(rows, assigned.iter().map(|(i, _, _)| *i).collect())?;
    let start = TimestampMicrosecondArray::from_iter_values(assigned.iter().map(|(_, s, _)| *s)).with_timezone("UTC");
    let end = TimestampMicrosecondArray::from_iter_values(assigned.iter().map(|(_, _, e)| *e)).with_timezone("UTC");
    let schema = windowed_input_schema(&rows.schema());
    let mut columns = picked.columns().to_vec();
    columns.push(Arc::new(start));
    columns.push(Arc::new(end));
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn with_partial(batch: RecordBatch, partial: bool) -> DfResult<RecordBatch> {
    let schema = windowed_output_schema(&batch.schema());
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(BooleanArray::from(vec![partial; batch.num_rows()])));
    RecordBatch::try_new(schema, columns).map_err(DataFusionError::from)
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
