//! Row-level interval joins of two streams: rows of the two inputs pair when their event times
//! are at most `within` apart (and the SQL's own condition holds, a key for example).
//!
//! Each input's rows are kept while a row of the other input could still pair with them. A batch
//! runs the SQL once, against the other input's kept rows, so every pair is made once: when the
//! later of its two rows arrives. The watermark is the oldest of the inputs' newest event times,
//! less `allowed_lateness`; a row older than it is late (to `.late`, as windows do), and kept rows
//! older than the watermark less `within` can pair with nothing to come, so they go. Kept rows
//! hold their acknowledgements until then, and every pair carries the acknowledgements of both
//! sides' rows, so a row is acknowledged only once every pair it made is written.

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::error::Result as DfResult;
use serde::Deserialize;
use tributary_sdk::{AckSet, HumanDuration};

use super::window::to_late_schema;
use super::SqlTransform;

/// `interval_join:` of a SQL transform with two inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalJoinConfig {
    /// Rows of the two inputs can pair when their event times are at most this far apart (the
    /// SQL says which do, e.g. `l.ts BETWEEN p.ts - INTERVAL '30 seconds' AND p.ts + …`).
    pub within: HumanDuration,
    /// The event-time column of both inputs (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// How far behind the newest event time a row may arrive and still pair (default 0s).
    #[serde(default)]
    pub allowed_lateness: Option<HumanDuration>,
}

fn default_time_column() -> String {
    "ts".into()
}

/// A checked `interval_join:`: microseconds, and each input's time column.
#[derive(Debug, Clone)]
pub struct IntervalSpec {
    pub within: i64,
    pub lateness: i64,
    /// The time column's index in each of the two inputs.
    pub time: [usize; 2],
}

impl IntervalSpec {
    pub fn new(c: &IntervalJoinConfig, inputs: &[(String, SchemaRef)]) -> Result<IntervalSpec, String> {
        let [(a, a_schema), (b, b_schema)] = inputs else {
            return Err(format!("an interval join reads exactly two inputs, this transform has {}", inputs.len()));
        };
        let column = |name: &str, schema: &SchemaRef| match schema.index_of(&c.time_column) {
            Ok(i) if matches!(schema.field(i).data_type(), DataType::Timestamp(..)) => Ok(i),
            Ok(i) => {
                Err(format!("time column `{}` of input `{name}` is {}, expected a timestamp", c.time_column, schema.field(i).data_type()))
            }
            Err(_) => Err(format!("input `{name}` has no time column `{}` (set `interval_join.time_column`)", c.time_column)),
        };
        let micros = |d: &HumanDuration| i64::try_from(d.0.as_micros()).unwrap_or(i64::MAX);
        Ok(IntervalSpec {
            within: micros(&c.within),
            lateness: c.allowed_lateness.as_ref().map_or(0, micros),
            time: [column(a, a_schema)?, column(b, b_schema)?],
        })
    }
}

/// Rows of one input still able to pair, with the acknowledgements of the batch they came in.
struct Kept {
    rows: RecordBatch,
    newest: i64,
    acks: AckSet,
}

/// What one batch made.
#[derive(Default)]
pub struct Joined {
    /// The pairs the batch's rows made with the other input's kept rows, with the
    /// acknowledgements of every row involved; or the SQL's error.
    pub pairs: Option<(DfResult<Vec<RecordBatch>>, AckSet)>,
    /// Rows behind the watermark (in the `.late` schema), with a share of the batch's acks.
    pub late: Option<(RecordBatch, AckSet)>,
    /// Rows without an event time, with a share of the acks, for the dead letters.
    pub untimed: Option<(RecordBatch, AckSet)>,
}

pub struct IntervalJoin {
    sql: SqlTransform,
    spec: IntervalSpec,
    names: [String; 2],
    late_schema: SchemaRef,
    kept: [Vec<Kept>; 2],
    newest: [Option<i64>; 2],
}

/// Event times in microseconds (null where there is none).
fn event_times(rows: &RecordBatch, column: usize) -> DfResult<Vec<Option<i64>>> {
    let micros = cast(rows.column(column), &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok(micros.as_primitive::<TimestampMicrosecondType>().iter().collect())
}

fn keep(rows: &RecordBatch, mask: Vec<bool>) -> DfResult<RecordBatch> {
    Ok(filter_record_batch(rows, &BooleanArray::from(mask))?)
}

impl IntervalJoin {
    pub fn new(sql: SqlTransform, spec: IntervalSpec, inputs: &[(String, SchemaRef)], late_schema: SchemaRef) -> IntervalJoin {
        IntervalJoin {
            sql,
            spec,
            names: [inputs[0].0.clone(), inputs[1].0.clone()],
            late_schema,
            kept: [Vec::new(), Vec::new()],
            newest: [None, None],
        }
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.sql.output_schema()
    }

    /// The oldest of the inputs' newest event times, less the allowed lateness; none until both
    /// inputs have had rows.
    pub fn watermark(&self) -> Option<i64> {
        Some(self.newest[0]?.min(self.newest[1]?).saturating_sub(self.spec.lateness))
    }

    /// Rows kept, per input.
    pub fn kept_rows(&self) -> [usize; 2] {
        [0, 1].map(|i| self.kept[i].iter().map(|k| k.rows.num_rows()).sum())
    }

    /// Pair `rows` of `input` with the other input's kept rows, keep them for the rows to come,
    /// and let go of what can pair with nothing more.
    pub async fn accept(&mut self, input: usize, rows: RecordBatch, acks: AckSet) -> DfResult<Joined> {
        let times = event_times(&rows, self.spec.time[input])?;
        let watermark = self.watermark();
        let on_time_mask: Vec<bool> = times.iter().map(|t| t.is_some_and(|t| watermark.is_none_or(|w| t >= w))).collect();
        let late_mask: Vec<bool> = times.iter().map(|t| t.is_some_and(|t| watermark.is_some_and(|w| t < w))).collect();
        let untimed_mask: Vec<bool> = times.iter().map(Option::is_none).collect();
        let mut joined = Joined::default();
        if late_mask.contains(&true) {
            let late = to_late_schema(&self.late_schema, &self.names[input], keep(&rows, late_mask)?)?;
            joined.late = Some((late, acks.clone()));
        }
        if untimed_mask.contains(&true) {
            joined.untimed = Some((keep(&rows, untimed_mask)?, acks.clone()));
        }
        let newest = times.iter().zip(&on_time_mask).filter(|(_, on)| **on).filter_map(|(t, _)| *t).max();
        if let Some(newest) = newest {
            let on_time = keep(&rows, on_time_mask)?;
            let other = 1 - input;
            let mut pair_acks = acks.clone();
            for k in &self.kept[other] {
                pair_acks.extend(k.acks.clone());
            }
            let contents = [(input, vec![on_time.clone()]), (other, self.kept[other].iter().map(|k| k.rows.clone()).collect())];
            joined.pairs = Some((self.sql.execute_with(&contents).await, pair_acks));
            self.kept[input].push(Kept { rows: on_time, newest, acks: acks.clone() });
            self.newest[input] = Some(self.newest[input].map_or(newest, |n| n.max(newest)));
            self.let_go()?;
        }
        acks.release();
        Ok(joined)
    }

    /// Drop the kept rows older than the watermark less `within`: nothing on time can pair with
    /// them any more. A batch's acks go once all of its rows are gone.
    fn let_go(&mut self) -> DfResult<()> {
        let Some(bound) = self.watermark().map(|w| w.saturating_sub(self.spec.within)) else { return Ok(()) };
        for input in 0..2 {
            let column = self.spec.time[input];
            let mut still = Vec::with_capacity(self.kept[input].len());
            for k in self.kept[input].drain(..) {
                if k.newest < bound {
                    k.acks.release();
                    continue;
                }
                let times = event_times(&k.rows, column)?;
                let mask: Vec<bool> = times.iter().map(|t| t.is_some_and(|t| t >= bound)).collect();
                let rows = if mask.iter().all(|m| *m) { k.rows } else { keep(&k.rows, mask)? };
                still.push(Kept { rows, ..k });
            }
            self.kept[input] = still;
        }
        Ok(())
    }

    /// The stop: every pair that could be made was; the kept rows' acks are released.
    pub fn finish(self) {
        for k in self.kept.into_iter().flatten() {
            k.acks.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use tokio::sync::oneshot;
    use tributary_sdk::{Ack, AckStatus};

    use super::*;

    const SQL: &str = "SELECT p.site, p.v AS probe, l.v AS link FROM p JOIN l \
                       ON p.site = l.site AND l.ts BETWEEN p.ts - INTERVAL '30 seconds' AND p.ts + INTERVAL '30 seconds' \
                       ORDER BY p.v, l.v";

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("site", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    /// Rows at `secs` past a minute, per site, with values.
    fn rows(r: &[(Option<i64>, &str, i64)]) -> RecordBatch {
        let ts = TimestampMicrosecondArray::from(r.iter().map(|x| x.0.map(|s| s * 1_000_000)).collect::<Vec<_>>()).with_timezone("UTC");
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(ts),
                Arc::new(StringArray::from(r.iter().map(|x| x.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(r.iter().map(|x| x.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    async fn join() -> IntervalJoin {
        let inputs = vec![("p".to_string(), schema()), ("l".to_string(), schema())];
        let sql = SqlTransform::plan(SQL, &inputs, &[]).await.unwrap();
        let config = IntervalJoinConfig {
            within: HumanDuration(std::time::Duration::from_secs(30)),
            time_column: "ts".into(),
            allowed_lateness: None,
        };
        let spec = IntervalSpec::new(&config, &inputs).unwrap();
        let late = super::super::window::late_schema(&inputs).unwrap();
        IntervalJoin::new(sql, spec, &inputs, late)
    }

    fn acked() -> (AckSet, oneshot::Receiver<AckStatus>) {
        let (ack, rx) = Ack::channel();
        (AckSet::single(ack), rx)
    }

    fn pairs(j: &mut Joined) -> String {
        let (result, acks) = j.pairs.take().expect("pairs");
        acks.release();
        pretty_format_batches(&result.unwrap()).unwrap().to_string()
    }

    #[tokio::test]
    async fn each_pair_is_made_once_when_its_later_row_arrives() {
        let mut j = join().await;
        let (a, _) = acked();
        let mut out = j.accept(0, rows(&[(Some(100), "ams", 1), (Some(100), "sjc", 2)]), a).await.unwrap();
        assert_eq!(pairs(&mut out), "++\n++", "nothing to pair with yet");
        // 20 s and 40 s later: only the first is within 30 s; another site never pairs.
        let (b, _) = acked();
        let mut out = j.accept(1, rows(&[(Some(120), "ams", 10), (Some(140), "ams", 11), (Some(120), "blr", 12)]), b).await.unwrap();
        assert_eq!(
            pairs(&mut out),
            "+------+-------+------+\n| site | probe | link |\n+------+-------+------+\n| ams  | 1     | 10   |\n+------+-------+------+"
        );
        // A later probe pairs with both kept links it is near, not again with the old probe's.
        let (c, _) = acked();
        let mut out = j.accept(0, rows(&[(Some(125), "ams", 3)]), c).await.unwrap();
        assert_eq!(
            pairs(&mut out),
            "+------+-------+------+\n| site | probe | link |\n+------+-------+------+\n| ams  | 3     | 10   |\n| ams  | 3     | 11   |\n+------+-------+------+"
        );
    }

    #[tokio::test]
    async fn rows_behind_the_watermark_are_late_and_kept_rows_go_with_their_acks_once_nothing_can_pair() {
        let mut j = join().await;
        let (a, mut a_status) = acked();
        let mut first = j.accept(0, rows(&[(Some(100), "ams", 1)]), a).await.unwrap();
        let (_, first_acks) = first.pairs.take().unwrap();
        first_acks.release();
        let (b, mut b_status) = acked();
        let mut out = j.accept(1, rows(&[(Some(110), "ams", 10)]), b).await.unwrap();
        let (_, pair_acks) = out.pairs.take().unwrap();
        assert_eq!(j.watermark(), Some(100 * 1_000_000));
        // Both inputs move to 200 s: the watermark is 200 s, and rows before 170 s can pair with
        // nothing to come. The kept probe and link go, but their pair is not written yet.
        let (c, _) = acked();
        j.accept(0, rows(&[(Some(200), "ams", 2)]), c).await.unwrap().pairs.take().unwrap().1.release();
        let (d, _) = acked();
        j.accept(1, rows(&[(Some(200), "ams", 20)]), d).await.unwrap().pairs.take().unwrap().1.release();
        assert_eq!(j.kept_rows(), [1, 1]);
        assert!(a_status.try_recv().is_err() && b_status.try_recv().is_err(), "their pair is still in flight");
        pair_acks.release();
        assert_eq!(a_status.try_recv(), Ok(AckStatus::Delivered));
        assert_eq!(b_status.try_recv(), Ok(AckStatus::Delivered));

        // A probe from before the watermark is late; one without a time is untimed.
        let (e, _) = acked();
        let out = j.accept(0, rows(&[(Some(150), "ams", 4), (None, "ams", 5), (Some(201), "ams", 6)]), e).await.unwrap();
        let (late, late_acks) = out.late.unwrap();
        late_acks.release();
        assert_eq!(late.column(2).as_primitive::<datafusion::arrow::datatypes::Int64Type>().values().to_vec(), [4]);
        let (untimed, untimed_acks) = out.untimed.unwrap();
        untimed_acks.release();
        assert_eq!(untimed.num_rows(), 1);
        let (result, pair_acks) = out.pairs.unwrap();
        pair_acks.release();
        assert_eq!(result.unwrap().iter().map(RecordBatch::num_rows).sum::<usize>(), 1, "the on-time probe pairs with the link at 200 s");
        j.finish();
    }

    #[test]
    fn the_spec_names_what_is_wrong_with_the_inputs() {
        let config = IntervalJoinConfig {
            within: HumanDuration(std::time::Duration::from_secs(30)),
            time_column: "at".into(),
            allowed_lateness: None,
        };
        let inputs = vec![("p".to_string(), schema()), ("l".to_string(), schema())];
        assert_eq!(IntervalSpec::new(&config, &inputs).unwrap_err(), "input `p` has no time column `at` (set `interval_join.time_column`)");
        assert_eq!(
            IntervalSpec::new(&config, &inputs[..1]).unwrap_err(),
            "an interval join reads exactly two inputs, this transform has 1"
        );
    }
}
