//! Against the real Mosquitto on `127.0.0.1:1883` (`TRIBUTARY_TEST_MQTT` points elsewhere); each
//! test uses topics and client ids of its own.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use tributary_sdk::{ComponentConfig, Delivery, SinkPlugin, SourcePlugin};
use tributary_testkit::{sink_context, source_context, test_mqtt_url, SourceHarness};

use crate::{MqttSinkPlugin, MqttSourcePlugin};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), tributary_sdk::now_us())
}

fn source_error(yaml: &str) -> String {
    match MqttSourcePlugin.build(&ComponentConfig::from_yaml("sensors", yaml)) {
        Ok(_) => panic!("built: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_options_are_refused_with_what_and_where() {
    let ok = "topics: [a/#], schema: {v: int}";
    assert_eq!(
        source_error(&format!("{{url: 'tcp://127.0.0.1:1883', {ok}}}")),
        "url: `tcp://127.0.0.1:1883` is not an MQTT broker address; expected `mqtt://host:port` or `mqtts://host:port`"
    );
    assert_eq!(source_error(&format!("{{url: 'mqtt://127.0.0.1:1883', qos: 3, {ok}}}")), "qos: 3 is no MQTT QoS; use 0, 1 or 2");
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: [a/#/b], schema: {v: int}}"),
        "topics[0]: `a/#/b`: `#` must be a whole level, and the last"
    );
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: [ok, 'a/b+'], schema: {v: int}}"),
        "topics[1]: `a/b+`: `+` must be a whole level"
    );
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: ['$share/x'], schema: {v: int}}"),
        "topics[0]: `$share/x`: a shared subscription is `$share/<group>/<filter>`"
    );
    assert_eq!(
        source_error(&format!("{{url: 'mqtt://127.0.0.1:1883', tls_ca_file: /ca.pem, {ok}}}")),
        "tls_ca_file: TLS needs an `mqtts://` url"
    );
    assert_eq!(
        source_error(&format!("{{url: 'mqtt://u:p@127.0.0.1:1883', {ok}}}")),
        "url: put credentials in `user` and `password` (from `${ENV}`), not in the URL"
    );
    assert_eq!(
        source_error(&format!("{{url: 'mqtt://127.0.0.1:1883', protocol: '4', {ok}}}")),
        "protocol: unknown variant `4`, expected `3.1.1` or `5`"
    );
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: [a], schema: {topic: string}}"),
        "topic_column: the schema already has a column `topic`; name the topic's column otherwise"
    );
}

fn rows() -> RecordBatch {
    let schema = Schema::new(vec![Field::new("room", DataType::Utf8, true), Field::new("co2", DataType::Int64, false)]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(vec![Some("r1"), None, Some("r2")])), Arc::new(Int64Array::from(vec![410, 420, 430]))],
    )
    .unwrap()
}

/// Publishes `rows()` through the sink: two messages (the null room's row is refused).
async fn publish(protocol: &str, topic: &str) {
    let yaml = format!("{{url: '{}', topic: '{topic}', qos: 1, protocol: '{protocol}'}}", test_mqtt_url());
    let mut sink = MqttSinkPlugin.build(&ComponentConfig::from_yaml("out", &yaml), &[("co2".into(), rows().schema())]).unwrap();
    let ctx = sink_context("out");
    sink.start(&ctx).await.unwrap();
    let written = sink.write(rows(), &ctx).await.unwrap();
    let rejected: Vec<(&str, &str)> = written.rejected.iter().map(|d| (d.payload.as_str(), d.reason.as_str())).collect();
    assert_eq!(rejected, [(r#"{"co2":420}"#, format!("column `room` is null, and the name `{topic}` needs it").as_str())]);
}

fn start_source(yaml: &str) -> (tokio::task::JoinHandle<anyhow::Result<()>>, SourceHarness, tokio::sync::mpsc::Receiver<Delivery>) {
    let built = MqttSourcePlugin.build(&ComponentConfig::from_yaml("sensors", yaml)).unwrap();
    let (ctx, mut h) = source_context("sensors", &[""], 8);
    let out = h.outputs.remove("").unwrap();
    (tokio::spawn(built.source.run(ctx)), h, out)
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch within 10 s").expect("the source is running")
}

fn values(d: &Delivery) -> Vec<(i64, String)> {
    let co2 = d.batch.data.column(0).as_primitive::<Int64Type>();
    let topics = d.batch.data.column(d.batch.data.num_columns() - 1).as_string::<i32>();
    (0..d.batch.data.num_rows()).map(|i| (co2.value(i), topics.value(i).to_string())).collect()
}

#[tokio::test]
async fn rows_go_out_as_json_on_their_topics_and_come_back_with_the_topic_over_mqtt_5() {
    let base = unique("site");
    let yaml = format!(
        "{{url: '{}', topics: ['{base}/+/co2'], qos: 1, protocol: '5', client_id: '{base}', schema: {{co2: int, ts: timestamp}}}}",
        test_mqtt_url()
    );
    let (task, h, mut out) = start_source(&yaml);
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    publish("5", &format!("{base}/{{room}}/co2")).await;
    let got = next(&mut out).await;
    assert_eq!(values(&got), [(410, format!("{base}/r1/co2")), (430, format!("{base}/r2/co2"))]);
    h.shutdown.cancel();
    drop(got);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unwritten_message_comes_again_after_a_restart_and_a_written_one_does_not() {
    let base = unique("persist");
    let client_id = unique("tributary-test");
    let yaml = format!(
        "{{url: '{}', topics: ['{base}/#'], qos: 1, client_id: '{client_id}', schema: {{co2: int}}, batch_wait: 50ms}}",
        test_mqtt_url()
    );
    // First run: the session is made, a message arrives, and its rows are never written.
    let (task, h, mut out) = start_source(&yaml);
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish("3.1.1", &format!("{base}/{{room}}")).await;
    let first = next(&mut out).await;
    assert_eq!(values(&first).len(), 2);
    drop(first); // the sink failed: not acknowledged
    h.shutdown.cancel();
    task.await.unwrap().unwrap();

    // Second run, same client id: the broker delivers the unacknowledged messages again.
    let (task, h, mut out) = start_source(&yaml);
    let again = next(&mut out).await;
    assert_eq!(values(&again), [(410, format!("{base}/r1")), (430, format!("{base}/r2"))]);
    again.batch.acks.release();
    tokio::time::sleep(Duration::from_millis(300)).await; // the PUBACKs go out
    h.shutdown.cancel();
    task.await.unwrap().unwrap();

    // Third run: nothing left to deliver.
    let (task, h, mut out) = start_source(&yaml);
    let nothing = tokio::time::timeout(Duration::from_secs(2), out.recv()).await;
    assert!(nothing.is_err(), "written messages were acknowledged and not delivered again");
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_message_that_is_not_json_goes_to_the_dead_letters_with_its_topic() {
    let base = unique("bad");
    let yaml = format!(
        "{{url: '{}', topics: ['{base}'], qos: 0, client_id: '{base}', clean_session: true, schema: {{co2: int}}}}",
        test_mqtt_url()
    );
    let (task, mut h, _out) = start_source(&yaml);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sink_yaml = format!("{{url: '{}', topic: '{base}', qos: 0}}", test_mqtt_url());
    let schema = Arc::new(Schema::new(vec![Field::new("co2", DataType::Utf8, false)]));
    let mut sink = MqttSinkPlugin.build(&ComponentConfig::from_yaml("out", &sink_yaml), &[("x".into(), schema.clone())]).unwrap();
    let ctx = sink_context("out");
    sink.start(&ctx).await.unwrap();
    let text = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["high"]))]).unwrap();
    sink.write(text, &ctx).await.unwrap();
    let letters = next(&mut h.dead_letters).await;
    let reason = letters.batch.data.column_by_name("reason").unwrap().as_string::<i32>().value(0).to_string();
    assert!(reason.starts_with(&format!("topic {base}: ")), "{reason}");
    assert!(reason.contains("co2"), "names the field: {reason}");
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}
