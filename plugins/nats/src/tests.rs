//! Against the real NATS server (`nats://127.0.0.1:4222`, JetStream on): each test makes its own
//! stream with a unique name and deletes it at the end.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use futures::StreamExt;
use tributary_sdk::{ComponentConfig, Delivery, SinkPlugin, SourcePlugin};
use tributary_testkit::{sink_context, source_context, test_nats_url};

use crate::{NatsSinkPlugin, NatsSourcePlugin};

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), tributary_sdk::now_us())
}

async fn jetstream_with_stream(name: &str, subjects: &str) -> jetstream::Context {
    let client = async_nats::connect(test_nats_url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config { name: name.to_string(), subjects: vec![subjects.to_string()], ..Default::default() }).await.unwrap();
    js
}

fn source_error(yaml: &str) -> String {
    match NatsSourcePlugin.build(&ComponentConfig::from_yaml("badges", yaml)) {
        Ok(_) => panic!("built: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_mode_needs_its_keys_and_the_errors_say_which() {
    let schema = "schema: {id: int}";
    assert_eq!(
        source_error(&format!("{{url: 'nats://127.0.0.1:4222', {schema}}}")),
        "subject: set `subject` (core NATS, at most once) or `stream` and `consumer` (JetStream, acknowledged after the sinks wrote)"
    );
    assert_eq!(
        source_error(&format!("{{url: 'nats://127.0.0.1:4222', stream: s, {schema}}}")),
        "consumer: reading a JetStream `stream` needs the durable `consumer`'s name"
    );
    assert_eq!(
        source_error(&format!("{{url: 'nats://127.0.0.1:4222', consumer: c, {schema}}}")),
        "stream: a `consumer` reads a JetStream stream: name it in `stream`"
    );
    assert_eq!(
        source_error(&format!("{{url: 'nats://127.0.0.1:4222', stream: s, consumer: c, queue_group: q, {schema}}}")),
        "queue_group: a JetStream consumer is already shared by every process that names it; remove `queue_group`"
    );
    assert_eq!(
        source_error(&format!("{{url: 'http://127.0.0.1:4222', subject: a, {schema}}}")),
        "url: `http://127.0.0.1:4222` is not a NATS server address; expected `nats://host:port`"
    );
    assert_eq!(
        source_error(&format!("{{url: 'nats://me:pw@127.0.0.1:4222', subject: a, {schema}}}")),
        "url: put credentials in `user` and `password` (or `token`) from `${ENV}`, not in the URL"
    );
    assert_eq!(
        source_error(&format!("{{url: 'nats://127.0.0.1:4222', subject: a, user: me, {schema}}}")),
        "password: `user` and `password` go together"
    );
    assert_eq!(
        source_error("{url: 'nats://127.0.0.1:4222', subject: a, schema: {id: int, subject: string}}"),
        "subject_column: the schema already has a column `subject`; name the subject's column otherwise"
    );
    let built = NatsSourcePlugin
        .build(&ComponentConfig::from_yaml("badges", "{url: 'nats://127.0.0.1:4222', subject: 'badges.>', schema: {id: int}}"))
        .unwrap();
    let names: Vec<&str> = built.outputs[0].schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "subject"]);
}

/// The next batch a source sent, with its acks.
async fn next(rx: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch within 10 s").expect("the source is running")
}

async fn ack_pending(js: &jetstream::Context, stream: &str, consumer: &str) -> (usize, u64) {
    let mut c: jetstream::consumer::PullConsumer = js.get_stream(stream).await.unwrap().get_consumer(consumer).await.unwrap();
    let info = c.info().await.unwrap();
    (info.num_ack_pending, info.num_pending)
}

#[tokio::test]
async fn jetstream_messages_are_acknowledged_only_after_the_rows_are_written() {
    let name = unique("ACKS");
    let subjects = format!("{name}.>");
    let js = jetstream_with_stream(&name, &subjects).await;
    for (site, body) in [("oslo", r#"{"id":1,"ts":"2026-12-01T10:00:00Z"}"#), ("oslo", "{not json"), ("bergen", r#"{"id":3}"#)] {
        js.publish(format!("{name}.{site}"), body.into()).await.unwrap().await.unwrap();
    }
    let yaml =
        format!("{{url: '{}', stream: {name}, consumer: readers, schema: {{id: int, ts: timestamp}}, batch_wait: 100ms}}", test_nats_url());
    let built = NatsSourcePlugin.build(&ComponentConfig::from_yaml("badges", &yaml)).unwrap();
    let (ctx, mut h) = source_context("badges", &[""], 8);
    let task = tokio::spawn(built.source.run(ctx));
    let mut out = h.outputs.remove("").unwrap();

    let letters = next(&mut h.dead_letters).await;
    let reason = letters.batch.data.column_by_name("reason").unwrap().as_string::<i32>().value(0).to_string();
    assert!(reason.starts_with(&format!("{name} #2 ({name}.oslo): malformed JSON")), "{reason}");
    let rows = next(&mut out).await;
    let ids: Vec<i64> = rows.batch.data.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(ids, [1, 3]);
    let subjects: Vec<&str> = rows.batch.data.column(2).as_string::<i32>().iter().flatten().collect();
    assert_eq!(subjects, [format!("{name}.oslo"), format!("{name}.bergen")]);
    assert_eq!(
        rows.batch.data.column(1).as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>().value(0),
        1_796_119_200_000_000
    );

    // Nothing is acknowledged while the rows and the dead letter wait for their writers.
    assert_eq!(ack_pending(&js, &name, "readers").await, (3, 0));
    letters.batch.acks.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ack_pending(&js, &name, "readers").await, (3, 0), "one ack covers the batch: the rows are not written yet");
    rows.batch.acks.release();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ack_pending(&js, &name, "readers").await != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "acknowledged: {:?}", ack_pending(&js, &name, "readers").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn a_failed_batch_comes_back_and_its_last_delivery_goes_to_the_dead_letters() {
    let name = unique("REDELIVER");
    let js = jetstream_with_stream(&name, &format!("{name}.>")).await;
    js.publish(format!("{name}.a"), r#"{"id":7}"#.into()).await.unwrap().await.unwrap();
    let yaml =
        format!("{{url: '{}', stream: {name}, consumer: c, schema: {{id: int}}, batch_wait: 100ms, max_deliver: 2}}", test_nats_url());
    let built = NatsSourcePlugin.build(&ComponentConfig::from_yaml("badges", &yaml)).unwrap();
    let (ctx, mut h) = source_context("badges", &[""], 8);
    let task = tokio::spawn(built.source.run(ctx));
    let mut out = h.outputs.remove("").unwrap();

    let first = next(&mut out).await;
    first.batch.acks.fail();
    let second = next(&mut out).await;
    assert_eq!(second.batch.data.column(0).as_primitive::<Int64Type>().value(0), 7, "delivered again after the failure");
    second.batch.acks.fail();
    let letters = next(&mut h.dead_letters).await;
    let reason = letters.batch.data.column_by_name("reason").unwrap().as_string::<i32>().value(0).to_string();
    assert_eq!(reason, format!("#1 ({name}.a): delivered 2 times (max_deliver) and never written"));
    assert_eq!(letters.batch.data.column_by_name("payload").unwrap().as_string::<i32>().value(0), r#"{"id":7}"#);
    letters.batch.acks.release();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ack_pending(&js, &name, "c").await != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "acknowledged once dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    js.delete_stream(&name).await.unwrap();
}

fn rows() -> RecordBatch {
    let schema = Schema::new(vec![Field::new("site", DataType::Utf8, true), Field::new("ms", DataType::Int64, false)]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(vec![Some("oslo"), None, Some("bergen")])), Arc::new(Int64Array::from(vec![12, 13, 14]))],
    )
    .unwrap()
}

#[tokio::test]
async fn the_sink_publishes_rows_to_their_subjects_and_a_retried_batch_is_stored_once() {
    let name = unique("SINK");
    // At first the stream captures only oslo's subjects: bergen's message finds no stream, the
    // write fails after oslo's was stored, and the engine passes the batch again.
    let js = jetstream_with_stream(&name, &format!("{name}.oslo.>")).await;
    let yaml = format!("{{url: '{}', subject: '{name}.{{site}}.probes', stream: {name}, timeout: 2s}}", test_nats_url());
    let mut sink = NatsSinkPlugin.build(&ComponentConfig::from_yaml("out", &yaml), &[("probes".into(), rows().schema())]).unwrap();
    let ctx = sink_context("out");
    sink.start(&ctx).await.unwrap();
    let failed = sink.write(rows(), &ctx).await.unwrap_err();
    assert!(failed.to_string().starts_with(&format!("waiting for JetStream's acknowledgement of `{name}.bergen.probes`")), "{failed}");
    let stored = |js: jetstream::Context| {
        let name = name.clone();
        async move { js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages }
    };
    assert_eq!(stored(js.clone()).await, 1);

    js.update_stream(stream::Config { name: name.clone(), subjects: vec![format!("{name}.>")], ..Default::default() }).await.unwrap();
    let written = sink.write(rows(), &ctx).await.unwrap();
    assert_eq!(written.rejected.len(), 1);
    assert_eq!(written.rejected[0].reason, format!("column `site` is null, and the name `{name}.{{site}}.probes` needs it"));
    assert_eq!(written.rejected[0].payload, r#"{"ms":13}"#);
    assert_eq!(stored(js.clone()).await, 2, "oslo's message, published again with the same Nats-Msg-Id, was stored once");

    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&name)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config { durable_name: Some("check".into()), ..Default::default() })
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut batch = consumer.fetch().max_messages(10).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        got.push((m.subject.to_string(), String::from_utf8(m.payload.to_vec()).unwrap()));
    }
    assert_eq!(
        got,
        [
            (format!("{name}.oslo.probes"), r#"{"site":"oslo","ms":12}"#.to_string()),
            (format!("{name}.bergen.probes"), r#"{"site":"bergen","ms":14}"#.to_string())
        ]
    );

    // A new batch gets new ids even with the same rows: a reading repeated later is stored again.
    sink.write(rows(), &ctx).await.unwrap();
    assert_eq!(stored(js.clone()).await, 4);
    js.delete_stream(&name).await.unwrap();
}

/// A batch larger than the client's 5,000 permits for unacknowledged messages is written: the sink
/// used to send every message before awaiting any acknowledgement, and waited forever for a permit
/// at message 5,001 (a disk buffer's replay makes such batches).
#[tokio::test]
async fn a_batch_of_twelve_thousand_rows_is_written() {
    let name = unique("LARGE");
    let js = jetstream_with_stream(&name, &format!("{name}.>")).await;
    let yaml = format!("{{url: '{}', subject: '{name}.rows', stream: {name}, timeout: 5s}}", test_nats_url());
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..12_000))]).unwrap();
    let mut sink = NatsSinkPlugin.build(&ComponentConfig::from_yaml("out", &yaml), &[("rows".into(), schema)]).unwrap();
    let ctx = sink_context("out");
    sink.start(&ctx).await.unwrap();
    let written = tokio::time::timeout(Duration::from_secs(60), sink.write(batch, &ctx)).await.expect("the write ends").unwrap();
    assert!(written.rejected.is_empty());
    assert_eq!(js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages, 12_000);
    js.delete_stream(&name).await.unwrap();
}

/// Rows at a position of a replayable stream get the same ids in every run: the replay after a
/// crash (a new sink, as in a new process) is dropped by the stream. Without records, the same
/// position with rows cut otherwise is stored (ids from the position alone would have dropped
/// those rows); with records, rows are named by record, however the batches are cut.
#[tokio::test]
async fn rows_replayed_from_the_same_position_are_stored_once_across_runs() {
    let name = unique("REPLAY");
    let js = jetstream_with_stream(&name, &format!("{name}.>")).await;
    let yaml = format!("{{url: '{}', subject: '{name}.{{site}}.probes', stream: {name}, timeout: 2s}}", test_nats_url());
    let stored = || {
        let (js, name) = (js.clone(), name.clone());
        async move { js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages }
    };
    let at = |seq| tributary_sdk::Position { stream: "ingest".into(), epoch: 7, seq };
    let run = || async {
        let mut sink = NatsSinkPlugin.build(&ComponentConfig::from_yaml("out", &yaml), &[("probes".into(), rows().schema())]).unwrap();
        sink.start(&sink_context("out")).await.unwrap();
        sink
    };
    let ctx = sink_context("out");

    let mut first = run().await;
    first.next_at(Some(&at(3)), None);
    first.write(rows(), &ctx).await.unwrap();
    assert_eq!(stored().await, 2, "oslo and bergen (the null site is refused)");

    let mut second = run().await;
    second.next_at(Some(&at(3)), None);
    second.write(rows(), &ctx).await.unwrap();
    assert_eq!(stored().await, 2, "the replay of position 3 in another run was dropped as a copy");
    second.next_at(Some(&at(3)), None);
    second.write(rows().slice(2, 1), &ctx).await.unwrap();
    assert_eq!(stored().await, 3, "position 3 cut otherwise (bergen alone) is other rows: stored");
    second.next_at(Some(&at(4)), None);
    second.write(rows(), &ctx).await.unwrap();
    assert_eq!(stored().await, 5, "the same rows at the next position are new readings");
    second.next_at(None, None);
    second.write(rows(), &ctx).await.unwrap();
    second.write(rows(), &ctx).await.unwrap();
    assert_eq!(stored().await, 9, "without a position, each batch that succeeded is new");

    // Rows of known records are named by record: two records merged into one batch, replayed in
    // a new run one record per batch (as the disk buffer replays), are dropped as copies.
    second.next_at(Some(&at(11)), Some(&[(10, 2), (11, 1)]));
    second.write(rows(), &ctx).await.unwrap();
    assert_eq!(stored().await, 11, "records 10 and 11: oslo and bergen");
    let mut third = run().await;
    third.next_at(Some(&at(10)), Some(&[(10, 2)]));
    third.write(rows().slice(0, 2), &ctx).await.unwrap();
    third.next_at(Some(&at(11)), Some(&[(11, 1)]));
    third.write(rows().slice(2, 1), &ctx).await.unwrap();
    assert_eq!(stored().await, 11, "the records replayed one by one were dropped as copies");
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn core_subjects_flow_from_the_sink_to_the_source() {
    let subject = unique("core");
    let yaml = format!("{{url: '{}', subject: '{subject}.>', schema: {{ms: int, site: string}}, batch_wait: 100ms}}", test_nats_url());
    let built = NatsSourcePlugin.build(&ComponentConfig::from_yaml("probes", &yaml)).unwrap();
    let (ctx, mut h) = source_context("probes", &[""], 8);
    let task = tokio::spawn(built.source.run(ctx));
    tokio::time::sleep(Duration::from_millis(300)).await; // subscribed

    let yaml = format!("{{url: '{}', subject: '{subject}.{{site}}'}}", test_nats_url());
    let mut sink = NatsSinkPlugin.build(&ComponentConfig::from_yaml("out", &yaml), &[("probes".into(), rows().schema())]).unwrap();
    let sctx = sink_context("out");
    sink.start(&sctx).await.unwrap();
    let written = sink.write(rows(), &sctx).await.unwrap();
    assert_eq!(written.rejected.len(), 1);

    let got = next(h.outputs.get_mut("").unwrap()).await;
    let ms: Vec<i64> = got.batch.data.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(ms, [12, 14]);
    let subjects: Vec<&str> = got.batch.data.column(2).as_string::<i32>().iter().flatten().collect();
    assert_eq!(subjects, [format!("{subject}.oslo"), format!("{subject}.bergen")]);
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn a_lost_connection_marks_the_component_failing_until_it_is_back() {
    let metrics = tributary_sdk::ComponentMetrics::default();
    let url = "nats://127.0.0.1:4222";
    crate::connect::mark_connection(&metrics, url, &async_nats::Event::Disconnected);
    let (since, reason) = metrics.failing().expect("failing while disconnected");
    assert_eq!(reason, "NATS server nats://127.0.0.1:4222: connection lost; reconnecting");
    // A second drop keeps the first time, so `/health` counts from the start of the outage.
    crate::connect::mark_connection(&metrics, url, &async_nats::Event::Disconnected);
    assert_eq!(metrics.failing().map(|f| f.0), Some(since));
    assert_eq!(metrics.retries.get(), 2);
    crate::connect::mark_connection(&metrics, url, &async_nats::Event::Connected);
    assert_eq!(metrics.failing(), None);
}
