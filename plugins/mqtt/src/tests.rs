//! Against the real Mosquitto on `127.0.0.1:1883` (`TRIBUTARY_TEST_MQTT` points elsewhere); each
//! test uses topics and client ids of its own.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
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
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: [a]}"),
        "schema: the columns of the JSON messages are required (or `format: badge`)"
    );
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: [a], format: badge, schema: {v: int}}"),
        "schema: `format: badge` has the badge schema (see the README); remove `schema`"
    );
    assert_eq!(
        source_error("{url: 'mqtt://127.0.0.1:1883', topics: [a], format: xml}"),
        "format: unknown variant `xml`, expected `json` or `badge`"
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

/// Publishes raw payloads (QoS 1) and waits for the broker's PUBACKs.
async fn publish_raw(messages: &[(String, &str)]) {
    let url = test_mqtt_url();
    let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let options = rumqttc::MqttOptions::new(unique("pub"), host, port.parse().unwrap());
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    for (topic, payload) in messages {
        client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await.unwrap();
    }
    let mut acked = 0;
    while acked < messages.len() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await.unwrap() {
            acked += 1;
        }
    }
}

#[tokio::test]
async fn badge_messages_over_mqtt_take_their_channel_from_the_topic() {
    let base = unique("badges");
    let yaml =
        format!("{{url: '{}', topics: ['{base}/#'], qos: 1, client_id: '{base}', format: badge, batch_wait: 300ms}}", test_mqtt_url());
    let (task, mut h, mut out) = start_source(&yaml);
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    let high_scores =
        r#"{"event":"high-score","user_uuid":"u-1","mac_address":"aa:bb","high_scores":[["BO",1200,95],{"g":"TT","s":37,"d":30}]}"#;
    publish_raw(&[
        (format!("{base}/hall-2/high-score-processor"), high_scores),
        (format!("{base}/hall-2/achievement"), r#"{"handle":"someone","name":"Rick Rolled","points":1}"#),
        (format!("{base}/hall-2/fact"), "{not json"),
    ])
    .await;
    let got = next(&mut out).await;
    let data = &got.batch.data;
    assert_eq!(data.schema(), tributary_sdk::badge::badge_schema());
    let text = |name: &str, i: usize| {
        let c = data.column_by_name(name).unwrap().as_string::<i32>();
        c.is_valid(i).then(|| c.value(i).to_string())
    };
    let int = |name: &str, i: usize| {
        let c = data.column_by_name(name).unwrap().as_primitive::<Int64Type>();
        c.is_valid(i).then(|| c.value(i))
    };
    let rows: Vec<_> = (0..data.num_rows())
        .map(|i| (text("channel", i), text("event", i), text("game", i), int("score", i), text("handle", i), text("message", i)))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        [
            (s("high-score-processor"), s("high-score"), s("Breakout"), Some(1200), None, None),
            (s("high-score-processor"), s("high-score"), s("Tappytime"), Some(37), None, None),
            (s("achievement"), s("achievement"), None, None, s("someone"), s("Rick Rolled")),
        ]
    );
    let letters = next(&mut h.dead_letters).await;
    let reason = letters.batch.data.column_by_name("reason").unwrap().as_string::<i32>().value(0).to_string();
    assert!(reason.starts_with(&format!("topic {base}/hall-2/fact: channel `fact`: malformed JSON: ")), "{reason}");
    h.shutdown.cancel();
    drop(got);
    task.await.unwrap().unwrap();
}

/// A Mosquitto of the test's own with only a TLS listener, signed by a test CA.
struct TlsBroker {
    server: tributary_testkit::OwnServer,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl TlsBroker {
    async fn start() -> TlsBroker {
        let dir = tempfile::tempdir().unwrap();
        let certs = tributary_testkit::write_test_certificates(dir.path());
        let port = tributary_testkit::free_port();
        let conf = dir.path().join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nuser root\n",
            certs.ca.display(),
            certs.cert.display(),
            certs.key.display()
        );
        std::fs::write(&conf, text).unwrap();
        let mut command = std::process::Command::new("mosquitto");
        command.arg("-c").arg(&conf);
        let server = tributary_testkit::OwnServer::start(command, port, Duration::from_secs(5)).await;
        TlsBroker { server, _dir: dir, ca: certs.ca }
    }
}

#[tokio::test]
async fn rows_cross_a_tls_listener_checked_against_the_ca_file() {
    let broker = TlsBroker::start().await;
    let (port, ca) = (broker.server.port, broker.ca.display().to_string());
    let base = unique("tls");
    let source = format!(
        "{{url: 'mqtts://localhost:{port}', tls_ca_file: '{ca}', topics: ['{base}/#'], qos: 1, client_id: '{base}', schema: {{co2: int}}}}"
    );
    let (task, h, mut out) = start_source(&source);
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    let sink = format!("{{url: 'mqtts://localhost:{port}', tls_ca_file: '{ca}', topic: '{base}/{{room}}', qos: 1}}");
    let mut sink = MqttSinkPlugin.build(&ComponentConfig::from_yaml("out", &sink), &[("co2".into(), rows().schema())]).unwrap();
    let ctx = sink_context("out");
    sink.start(&ctx).await.unwrap();
    sink.write(rows(), &ctx).await.unwrap();
    let got = next(&mut out).await;
    assert_eq!(values(&got), [(410, format!("{base}/r1")), (430, format!("{base}/r2"))]);
    h.shutdown.cancel();
    drop(got);
    task.await.unwrap().unwrap();

    // Without the CA the broker's certificate is refused, and the source says so.
    let untrusted = format!("{{url: 'mqtts://localhost:{port}', topics: ['{base}/#'], qos: 0, clean_session: true, schema: {{co2: int}}}}");
    let built = MqttSourcePlugin.build(&ComponentConfig::from_yaml("sensors", &untrusted)).unwrap();
    let (ctx, h) = source_context("sensors", &[""], 8);
    let metrics = ctx.metrics.clone();
    let task = tokio::spawn(built.source.run(ctx));
    let mut failing = None;
    for _ in 0..50 {
        failing = metrics.failing();
        if failing.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = failing.expect("the source marks itself failing").1;
    assert!(reason.starts_with(&format!("MQTT broker mqtts://localhost:{port}: ")), "{reason}");
    assert!(reason.contains("UnknownIssuer"), "names the certificate problem: {reason}");
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}
