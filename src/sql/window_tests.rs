use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use tributary_sdk::{Ack, AckStatus};

use super::*;

/// 2026-11-22T10:00:00Z in microseconds.
const T0: i64 = 1_795_341_600_000_000;
const S: i64 = 1_000_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), true),
        Field::new("site", DataType::Utf8, false),
        Field::new("ms", DataType::Int64, false),
    ]))
}

/// Rows `(seconds after 10:00, site, ms)`.
fn rows(r: &[(i64, &str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(r.iter().map(|x| T0 + x.0 * S)).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(r.iter().map(|x| x.1))),
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.2))),
        ],
    )
    .unwrap()
}

async fn operator(window: &str, sql: &str) -> WindowOperator {
    let cfg: WindowConfig = serde_yaml::from_str(window).unwrap();
    let spec = WindowSpec::from_config(&cfg).unwrap();
    let inputs = vec![("probes".to_string(), schema())];
    check_inputs(&spec, &inputs).unwrap();
    let planned = SqlTransform::plan(sql, &[("probes".into(), windowed_input_schema(&schema()))], &[]).await.unwrap();
    WindowOperator::new(spec, planned, &inputs, late_schema(&inputs).unwrap(), 0).unwrap()
}

const PER_SITE: &str = "SELECT window_start, window_end, site, count(*) AS n, sum(ms) AS total FROM probes \
                        GROUP BY window_start, window_end, site ORDER BY window_start, site";

fn table(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

async fn push(op: &mut WindowOperator, r: &[(i64, &str, i64)]) -> (Option<Emission>, Option<RecordBatch>) {
    let acc = op.accept(0, rows(r), AckSet::none(), 0).unwrap();
    (op.advance(0).await.unwrap(), acc.late.map(|(b, _)| b))
}

fn emitted(e: Option<Emission>) -> String {
    table(&e.expect("an emission").result.unwrap())
}

#[tokio::test]
async fn tumbling_windows_emit_once_when_the_watermark_passes_their_end_and_route_late_rows() {
    let mut op = operator("{tumbling: 1m, allowed_lateness: 10s}", PER_SITE).await;
    // Out of order within the first minute; the watermark (max − 10s) stays inside it.
    let (e, late) = push(&mut op, &[(30, "a", 10), (5, "b", 20), (50, "a", 30), (12, "a", 5)]).await;
    assert!(e.is_none() && late.is_none());
    assert_eq!(op.watermark(), Some(T0 + 40 * S));
    // 10:01:05 → watermark 10:00:55: still open.
    let (e, _) = push(&mut op, &[(65, "a", 1)]).await;
    assert!(e.is_none());
    // 10:01:15 → watermark 10:01:05 passes 10:01:00: the first minute closes, once.
    let (e, _) = push(&mut op, &[(75, "b", 2), (58, "b", 7)]).await;
    assert_eq!(
        emitted(e),
        "+----------------------+----------------------+------+---+-------+---------+\n\
         | window_start         | window_end           | site | n | total | partial |\n\
         +----------------------+----------------------+------+---+-------+---------+\n\
         | 2026-11-22T10:00:00Z | 2026-11-22T10:01:00Z | a    | 3 | 45    | false   |\n\
         | 2026-11-22T10:00:00Z | 2026-11-22T10:01:00Z | b    | 2 | 27    | false   |\n\
         +----------------------+----------------------+------+---+-------+---------+"
    );
    // A row for the closed minute is late: it goes out whole and is not counted again.
    let (e, late) = push(&mut op, &[(59, "a", 99), (80, "a", 3)]).await;
    assert!(e.is_none());
    assert_eq!(
        table(&[late.unwrap()]),
        "+----------------------+------+----+\n\
         | ts                   | site | ms |\n\
         +----------------------+------+----+\n\
         | 2026-11-22T10:00:59Z | a    | 99 |\n\
         +----------------------+------+----+"
    );
    assert_eq!(op.buffered_rows(), 3, "only the open minute's rows stay buffered");
    // Shutdown flushes the open minute, marked partial.
    assert_eq!(
        emitted(op.finish().await.unwrap()),
        "+----------------------+----------------------+------+---+-------+---------+\n\
         | window_start         | window_end           | site | n | total | partial |\n\
         +----------------------+----------------------+------+---+-------+---------+\n\
         | 2026-11-22T10:01:00Z | 2026-11-22T10:02:00Z | a    | 2 | 4     | true    |\n\
         | 2026-11-22T10:01:00Z | 2026-11-22T10:02:00Z | b    | 1 | 2     | true    |\n\
         +----------------------+----------------------+------+---+-------+---------+"
    );
    assert_eq!(op.buffered_rows(), 0);
}

#[tokio::test]
async fn hopping_windows_count_each_row_in_every_window_it_falls_in() {
    let mut op = operator(
        "{hopping: 2m, slide: 1m}",
        "SELECT window_start, count(*) AS n, sum(ms) AS total FROM probes GROUP BY window_start ORDER BY window_start",
    )
    .await;
    // 10:00:30 is in [09:59, 10:01) and [10:00, 10:02); 10:01:10 in [10:00, 10:02) and [10:01, 10:03).
    // Watermark 10:01:10 passes the end of [09:59, 10:01).
    let (e, _) = push(&mut op, &[(70, "a", 2), (30, "a", 1)]).await;
    assert_eq!(
        emitted(e),
        "+----------------------+---+-------+---------+\n\
         | window_start         | n | total | partial |\n\
         +----------------------+---+-------+---------+\n\
         | 2026-11-22T09:59:00Z | 1 | 1     | false   |\n\
         +----------------------+---+-------+---------+"
    );
    // Watermark 10:02:05: [10:00, 10:02) closes; 09:59 is not emitted again.
    let (e, _) = push(&mut op, &[(125, "a", 4)]).await;
    assert_eq!(
        emitted(e),
        "+----------------------+---+-------+---------+\n\
         | window_start         | n | total | partial |\n\
         +----------------------+---+-------+---------+\n\
         | 2026-11-22T10:00:00Z | 2 | 3     | false   |\n\
         +----------------------+---+-------+---------+"
    );
    assert_eq!(
        emitted(op.finish().await.unwrap()),
        "+----------------------+---+-------+---------+\n\
         | window_start         | n | total | partial |\n\
         +----------------------+---+-------+---------+\n\
         | 2026-11-22T10:01:00Z | 2 | 6     | true    |\n\
         | 2026-11-22T10:02:00Z | 1 | 4     | true    |\n\
         +----------------------+---+-------+---------+"
    );
}

#[tokio::test]
async fn sessions_emit_when_the_watermark_passes_last_row_plus_gap() {
    let mut op = operator(
        "{session: 30s, key: [site]}",
        "SELECT site, window_start, window_end, count(*) AS n FROM probes GROUP BY site, window_start, window_end ORDER BY site, window_start",
    )
    .await;
    let (e, _) = push(&mut op, &[(40, "a", 1), (0, "a", 1), (20, "a", 1), (15, "b", 1)]).await;
    assert!(e.is_none(), "watermark 10:00:40: b's session runs to 10:00:45, a's to 10:01:10");
    // 10:01:15: b's session [10:00:15, 10:00:45) and a's [10:00:00, 10:01:10) have ended.
    let (e, _) = push(&mut op, &[(75, "b", 1)]).await;
    assert_eq!(
        emitted(e),
        "+------+----------------------+----------------------+---+---------+\n\
         | site | window_start         | window_end           | n | partial |\n\
         +------+----------------------+----------------------+---+---------+\n\
         | a    | 2026-11-22T10:00:00Z | 2026-11-22T10:01:10Z | 3 | false   |\n\
         | b    | 2026-11-22T10:00:15Z | 2026-11-22T10:00:45Z | 1 | false   |\n\
         +------+----------------------+----------------------+---+---------+"
    );
    // Older than the watermark: late.
    let (_, late) = push(&mut op, &[(70, "a", 1)]).await;
    assert_eq!(late.unwrap().num_rows(), 1);
    assert_eq!(
        emitted(op.finish().await.unwrap()),
        "+------+----------------------+----------------------+---+---------+\n\
         | site | window_start         | window_end           | n | partial |\n\
         +------+----------------------+----------------------+---+---------+\n\
         | b    | 2026-11-22T10:01:15Z | 2026-11-22T10:01:45Z | 1 | true    |\n\
         +------+----------------------+----------------------+---+---------+"
    );
}

#[tokio::test]
async fn acks_of_buffered_rows_resolve_only_when_every_window_they_feed_is_emitted() {
    let mut op = operator("{tumbling: 1m}", PER_SITE).await;
    let (ack, mut rx) = Ack::channel();
    // One batch spanning two minutes; its newest row (10:01:10) closes the first minute at once.
    op.accept(0, rows(&[(10, "a", 1), (70, "a", 2)]), AckSet::single(ack), 0).unwrap();
    let first = op.advance(0).await.unwrap().expect("minute one closes");
    assert_eq!(first.result.unwrap()[0].num_rows(), 1);
    first.acks.release();
    // The batch's second row still waits in 10:01.
    assert!(rx.try_recv().is_err(), "resolved while a row of the batch is still buffered");
    let rest = op.finish().await.unwrap().expect("the open minute flushes");
    rest.acks.release();
    assert_eq!(rx.await.unwrap(), AckStatus::Delivered);
}

#[tokio::test]
async fn an_idle_input_follows_the_wall_clock_so_its_last_window_closes() {
    let mut op = operator("{tumbling: 1m, idle_timeout: 30s}", PER_SITE).await;
    op.accept(0, rows(&[(10, "a", 1), (50, "a", 2)]), AckSet::none(), 0).unwrap();
    assert!(op.advance(0).await.unwrap().is_none());
    // 29 s of quiet: not idle yet.
    assert!(op.advance(29 * S).await.unwrap().is_none());
    // Idle: event time is assumed to have advanced with the clock since 10:00:50 → 10:01:20.
    let e = op.advance(30 * S).await.unwrap();
    assert_eq!(
        emitted(e),
        "+----------------------+----------------------+------+---+-------+---------+\n\
         | window_start         | window_end           | site | n | total | partial |\n\
         +----------------------+----------------------+------+---+-------+---------+\n\
         | 2026-11-22T10:00:00Z | 2026-11-22T10:01:00Z | a    | 2 | 3     | false   |\n\
         +----------------------+----------------------+------+---+-------+---------+"
    );
}

#[test]
fn declarations_are_checked_with_a_message_a_user_can_act_on() {
    let check = |y: &str| WindowSpec::from_config(&serde_yaml::from_str(y).unwrap()).unwrap_err();
    assert_eq!(check("{hopping: 5m}"), "a hopping window needs `slide` (how often a window starts), e.g. `{hopping: 5m, slide: 1m}`");
    assert_eq!(
        check("{tumbling: 1m, session: 5m}"),
        "declare exactly one of `tumbling: SIZE`, `hopping: SIZE` (with `slide`) or `session: GAP`"
    );
    assert_eq!(
        check("{tumbling: 1m, key: [site]}"),
        "`key` only applies to `session` windows (group tumbling and hopping windows in the SQL)"
    );
    assert_eq!(
        check("{hopping: 1m, slide: 2m}"),
        "`slide` must not be longer than the `hopping` size (rows between windows would belong to none)"
    );
    let spec = WindowSpec::from_config(&serde_yaml::from_str("{tumbling: 1m, time_column: at}").unwrap()).unwrap();
    assert_eq!(
        check_inputs(&spec, &[("probes".into(), schema())]).unwrap_err(),
        "input `probes` has no time column `at` (set `window.time_column`)"
    );
}

/// A row dated 9999-12-31 (or at the integer limit) used to move the watermark past every real
/// row to come, or overflow the window arithmetic; now it is rejected with the reason and the
/// real rows around it keep counting.
#[tokio::test]
async fn event_times_far_ahead_of_the_clock_or_before_1970_are_rejected_not_windowed() {
    let mut op = operator("{tumbling: 1m, max_future: 1h}", PER_SITE).await;
    let far = |t: i64| {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![T0, t, T0 + 5 * S]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec!["a", "hostile", "a"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap()
    };
    for hostile in [253_402_300_799_000_000, i64::MAX, -1, i64::MIN, tributary_sdk::now_us() + 2 * 3600 * S] {
        let acc = op.accept(0, far(hostile), AckSet::none(), 0).unwrap();
        assert!(acc.late.is_none(), "{hostile}");
        assert_eq!(acc.rejected.len(), 1, "{hostile}");
        let (rows, _, reason) = &acc.rejected[0];
        assert_eq!(rows.num_rows(), 1);
        assert_eq!(rows.column(1).as_string::<i32>().value(0), "hostile");
        assert_eq!(reason, "input `probes`: the event time is before 1970 or more than 1h ahead of the clock (`window.max_future`)");
    }
    assert_eq!(op.watermark(), None, "no watermark moved yet");
    op.advance(0).await.unwrap();
    assert_eq!(op.watermark(), Some(T0 + 5 * S), "only the real rows moved the watermark");
    // A row a few minutes ahead (clock skew) is still fine.
    let acc = op.accept(0, far(tributary_sdk::now_us() + 300 * S), AckSet::none(), 0).unwrap();
    assert!(acc.rejected.is_empty());
    let out = op.finish().await.unwrap().unwrap().result.unwrap();
    let counts: Vec<(String, i64)> = out
        .iter()
        .flat_map(|b| {
            let (site, n) = (b.column(2).as_string::<i32>(), b.column(3).as_primitive::<datafusion::arrow::datatypes::Int64Type>());
            (0..b.num_rows()).map(|i| (site.value(i).to_string(), n.value(i))).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(counts, [("a".to_string(), 12), ("hostile".to_string(), 1)], "six batches' real rows, and the skewed one");
}

/// A row that falls in one emitted hopping window and one still open is counted in the open one
/// and goes to `.late` for the one it missed (Flink's and Arroyo's rule); a row whose windows were
/// all emitted is only late. It used to go to `.late` alone, counted in neither window.
#[tokio::test]
async fn a_hopping_row_late_for_one_window_counts_in_the_windows_still_open() {
    let mut op = operator(
        "{hopping: 2m, slide: 1m, allowed_lateness: 30s}",
        "SELECT window_start, count(*) AS n, sum(ms) AS total FROM probes GROUP BY window_start ORDER BY window_start",
    )
    .await;
    // Watermark 10:01:40 − 30 s = 10:01:10: [09:59, 10:01) is emitted.
    let (e, _) = push(&mut op, &[(100, "a", 1)]).await;
    assert!(e.is_none(), "no row in [09:59, 10:01)");
    // 10:00:20 is in [09:59, 10:01) (emitted) and [10:00, 10:02) (open); 09:59:50 only in
    // [09:58, 10:00) and [09:59, 10:01), both emitted.
    let (_, late) = push(&mut op, &[(20, "a", 10), (-10, "a", 100)]).await;
    assert_eq!(
        table(&[late.expect("both rows missed a window")]),
        "+----------------------+------+-----+\n\
         | ts                   | site | ms  |\n\
         +----------------------+------+-----+\n\
         | 2026-11-22T10:00:20Z | a    | 10  |\n\
         | 2026-11-22T09:59:50Z | a    | 100 |\n\
         +----------------------+------+-----+"
    );
    assert_eq!(
        emitted(op.finish().await.unwrap()),
        "+----------------------+---+-------+---------+\n\
         | window_start         | n | total | partial |\n\
         +----------------------+---+-------+---------+\n\
         | 2026-11-22T10:00:00Z | 2 | 11    | true    |\n\
         | 2026-11-22T10:01:00Z | 1 | 1     | true    |\n\
         +----------------------+---+-------+---------+"
    );
}

/// After a crash, exactly once: the sink wrote minute 10:00 (its stored position is 10:01). The
/// buffer replays rows of that minute (their entry also held a later row) and of the open one:
/// the written minute is neither emitted again nor partly re-counted, the open one is whole, and
/// the skipped rows' acks resolve as delivered.
#[tokio::test]
async fn a_resumed_operator_skips_the_windows_its_sinks_wrote_and_rebuilds_the_open_ones() {
    let mut op = operator("{tumbling: 1m}", PER_SITE).await;
    op.resume(&[Some(T0 + 60 * S)]);
    let (ack, status) = Ack::channel();
    let acc = op.accept(0, rows(&[(20, "a", 1), (59, "b", 2)]), AckSet::single(ack), 0).unwrap();
    assert_eq!(acc.written_before, 2);
    assert!(acc.late.is_none() && acc.rejected.is_empty());
    assert_eq!(status.await.unwrap(), AckStatus::Delivered, "rows written before the crash are done");
    let (e, late) = push(&mut op, &[(70, "a", 10), (80, "b", 20), (61, "a", 30)]).await;
    assert!(e.is_none() && late.is_none(), "the watermark (10:01:20) is behind what the sink wrote: nothing to emit");
    assert_eq!(op.buffered_rows(), 3);
    let (e, late) = push(&mut op, &[(125, "a", 40)]).await;
    assert!(late.is_none());
    let e = e.expect("minute 10:01 closes");
    assert_eq!(e.through, T0 + 125 * S, "the emission covers every window ending by the watermark");
    assert_eq!(
        table(&e.result.unwrap()),
        "+----------------------+----------------------+------+---+-------+---------+\n\
         | window_start         | window_end           | site | n | total | partial |\n\
         +----------------------+----------------------+------+---+-------+---------+\n\
         | 2026-11-22T10:01:00Z | 2026-11-22T10:02:00Z | a    | 2 | 40    | false   |\n\
         | 2026-11-22T10:01:00Z | 2026-11-22T10:02:00Z | b    | 1 | 20    | false   |\n\
         +----------------------+----------------------+------+---+-------+---------+"
    );
}

/// Two exactly-once sinks stopped at different points (10:01 and 10:02): the first emission
/// after the restart ends at 10:02, so the sink that wrote through 10:02 skips it whole and the
/// other writes it; the next emission is new to both.
#[tokio::test]
async fn after_a_restart_an_emission_stops_where_each_sink_stopped() {
    let mut op = operator("{tumbling: 1m}", PER_SITE).await;
    op.resume(&[Some(T0 + 120 * S), Some(T0 + 60 * S), Some(T0 + 120 * S)]);
    op.accept(0, rows(&[(70, "a", 1), (130, "a", 2), (200, "a", 3)]), AckSet::none(), 0).unwrap();
    let first = op.advance(0).await.unwrap().expect("minute 10:01");
    assert_eq!(first.through, T0 + 120 * S);
    let second = op.advance(0).await.unwrap().expect("minute 10:02");
    assert_eq!(second.through, T0 + 200 * S);
    assert!(op.advance(0).await.unwrap().is_none());
    let starts = |e: Emission| -> Vec<String> {
        let b = &e.result.unwrap()[0];
        let c = b.column(0).as_primitive::<TimestampMicrosecondType>();
        (0..b.num_rows()).map(|i| ((c.value(i) - T0) / S).to_string()).collect()
    };
    assert_eq!(starts(first), ["60"]);
    assert_eq!(starts(second), ["120"]);
}

/// A sink that wrote nothing of this window yet: everything replayed is counted.
#[tokio::test]
async fn a_sink_that_wrote_nothing_yet_gets_every_window() {
    let mut op = operator("{tumbling: 1m}", PER_SITE).await;
    op.resume(&[None, Some(T0 + 60 * S)]);
    let acc = op.accept(0, rows(&[(20, "a", 1), (70, "a", 2)]), AckSet::none(), 0).unwrap();
    assert_eq!(acc.written_before, 0, "one sink has not written minute 10:00");
    let e = op.advance(0).await.unwrap().expect("minute 10:00, up to where the second sink stopped");
    assert_eq!(e.through, T0 + 60 * S);
    assert_eq!(e.result.unwrap()[0].num_rows(), 1);
    let (e, _) = push(&mut op, &[(130, "a", 3)]).await;
    assert_eq!(e.expect("minute 10:01").through, T0 + 130 * S);
}

/// A reload, exactly once: the new version (new SQL, same input) takes the open minute's rows,
/// does not emit again what the old one emitted, and a row late for it goes to `.late`.
#[tokio::test]
async fn a_reload_hands_the_open_windows_to_the_new_version() {
    let mut old = operator("{tumbling: 1m}", PER_SITE).await;
    let (e, _) = push(&mut old, &[(10, "a", 1), (70, "a", 2), (75, "b", 3)]).await;
    assert_eq!(e.expect("minute 10:00").result.unwrap()[0].num_rows(), 1);
    let mut new = operator("{tumbling: 1m}", "SELECT window_start, sum(ms) AS total FROM probes GROUP BY window_start").await;
    assert!(old.hands_over_to(&[("probes".to_string(), schema())]));
    let other = Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), true)]));
    assert!(!old.hands_over_to(&[("probes".to_string(), other)]), "new columns: the rows cannot be taken over");
    assert!(!old.hands_over_to(&[("other".to_string(), schema())]));
    let accepted = new.take_over(old.into_open_windows(), 0).unwrap();
    assert!(accepted.iter().all(|a| a.late.is_none() && a.rejected.is_empty()));
    assert_eq!(new.buffered_rows(), 2);
    let (e, late) = push(&mut new, &[(30, "a", 100), (130, "a", 4)]).await;
    assert_eq!(late.expect("10:00:30 is behind the watermark the old version reached").num_rows(), 1);
    assert_eq!(
        emitted(e),
        "+----------------------+-------+---------+\n\
         | window_start         | total | partial |\n\
         +----------------------+-------+---------+\n\
         | 2026-11-22T10:01:00Z | 5     | false   |\n\
         +----------------------+-------+---------+"
    );
}
