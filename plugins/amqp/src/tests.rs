//! Against the real RabbitMQ on `127.0.0.1:5672` (`TRIBUTARY_TEST_AMQP` points elsewhere); each
//! test declares queues of its own and deletes them.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tributary_sdk::{ComponentConfig, Delivery, SinkPlugin, SourcePlugin};
use tributary_testkit::{sink_context, source_context, test_amqp_url};

use crate::{AmqpSinkPlugin, AmqpSourcePlugin};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), tributary_sdk::now_us())
}

async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(&test_amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Messages ready in `queue` (not the ones delivered and unacknowledged).
async fn ready(channel: &Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions { passive: true, ..Default::default() };
    channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap().message_count()
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch within 10 s").expect("the source is running")
}

#[test]
fn credentials_stay_out_of_the_url() {
    let e = AmqpSourcePlugin.build(&ComponentConfig::from_yaml("q", "{url: 'amqp://guest:guest@h:5672/%2f', queue: q, schema: {v: int}}"));
    assert_eq!(e.err().unwrap().to_string(), "url: put credentials in `user` and `password` (from `${ENV}`), not in the URL");
    let e = AmqpSourcePlugin.build(&ComponentConfig::from_yaml("q", "{url: 'rabbit://h', queue: q, schema: {v: int}}"));
    assert_eq!(
        e.err().unwrap().to_string(),
        "url: `rabbit://h` is not an AMQP broker address; expected `amqp://host:port/vhost` or `amqps://host:port/vhost`"
    );
    let e = AmqpSourcePlugin.build(&ComponentConfig::from_yaml("q", "{url: 'amqp://h', tls_ca_file: /ca.pem, queue: q, schema: {v: int}}"));
    assert_eq!(e.err().unwrap().to_string(), "tls_ca_file: TLS needs an `amqps://` url");
    let broker =
        crate::Broker::parse("amqp://h:5672/%2f", &Some("ops".into()), &Some(tributary_sdk::Secret::new("p@ss/w")), &None).unwrap();
    assert_eq!(broker.uri.expose(), "amqp://ops:p%40ss%2Fw@h:5672/%2f");
    let broker = crate::Broker::parse("amqps://h/%2f", &Some("ops".into()), &Some(tributary_sdk::Secret::new("pw")), &None).unwrap();
    assert_eq!((broker.uri.expose(), broker.tls), ("amqps://ops:pw@h/%2f", Some(None)));
}

#[tokio::test]
async fn messages_are_acknowledged_after_the_write_and_a_failed_batch_comes_back() {
    let queue = unique("readings");
    let (_c, ch) = channel().await;
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    for body in [r#"{"co2":410}"#, "{oops", r#"{"co2":430}"#] {
        ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let yaml = format!("{{url: '{}', queue: {queue}, schema: {{co2: int}}, batch_wait: 100ms}}", test_amqp_url());
    let built = AmqpSourcePlugin.build(&ComponentConfig::from_yaml("readings", &yaml)).unwrap();
    let (ctx, mut h) = source_context("readings", &[""], 8);
    let task = tokio::spawn(built.source.run(ctx));
    let mut out = h.outputs.remove("").unwrap();

    let letters = next(&mut h.dead_letters).await;
    let reason = letters.batch.data.column_by_name("reason").unwrap().as_string::<i32>().value(0).to_string();
    assert!(reason.starts_with(&format!("queue {queue} ({queue}): malformed JSON")), "{reason}");
    let first = next(&mut out).await;
    let co2: Vec<i64> = first.batch.data.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(co2, [410, 430]);
    assert_eq!(first.batch.data.column(1).as_string::<i32>().value(0), queue);
    assert_eq!(ready(&ch, &queue).await, 0, "all three delivered, none acknowledged yet");

    // The sink failed: the batch goes back to the queue and comes again.
    drop(first);
    drop(letters);
    let again = next(&mut out).await;
    let co2: Vec<i64> = again.batch.data.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(co2, [410, 430]);
    let letters = next(&mut h.dead_letters).await;
    again.batch.acks.release();
    letters.batch.acks.release();
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ready(&ch, &queue).await, 0, "acknowledged: nothing comes back after the consumer left");
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

#[tokio::test]
async fn the_sink_publishes_confirmed_json_and_unroutable_rows_become_dead_letters() {
    let room = unique("room");
    let (_c, ch) = channel().await;
    let bound = format!("{room}-r1");
    ch.queue_declare(bound.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("room", DataType::Utf8, true), Field::new("co2", DataType::Int64, false)]));
    let rows = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![Some("r1"), Some("r2"), None])), Arc::new(Int64Array::from(vec![410, 420, 430]))],
    )
    .unwrap();
    let yaml = format!("{{url: '{}', routing_key: '{room}-{{room}}'}}", test_amqp_url());
    let mut sink = AmqpSinkPlugin.build(&ComponentConfig::from_yaml("out", &yaml), &[("co2".into(), schema)]).unwrap();
    let ctx = sink_context("out");
    let written = sink.write(rows, &ctx).await.unwrap();
    let rejected: Vec<(&str, String)> = written.rejected.iter().map(|d| (d.payload.as_str(), d.reason.clone())).collect();
    assert_eq!(
        rejected,
        [
            (r#"{"co2":430}"#, format!("column `room` is null, and the name `{room}-{{room}}` needs it")),
            (r#"{"room":"r2","co2":420}"#, format!("no queue is bound to exchange `` for routing key `{room}-r2`")),
        ]
    );
    let got = ch.basic_get(bound.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
    assert_eq!(String::from_utf8(got.delivery.data.clone()).unwrap(), r#"{"room":"r1","co2":410}"#);
    assert_eq!(got.delivery.properties.delivery_mode(), &Some(2), "persistent");
    ch.queue_delete(bound.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

/// A RabbitMQ node of the test's own beside the machine's: its own name, ports and folders, with
/// a TLS listener, signed by a test CA.
struct TlsNode {
    server: tributary_testkit::OwnServer,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl TlsNode {
    async fn start() -> TlsNode {
        let dir = tempfile::tempdir().unwrap();
        let certs = tributary_testkit::write_test_certificates(dir.path());
        let (port, plain, dist) = (tributary_testkit::free_port(), tributary_testkit::free_port(), tributary_testkit::free_port());
        let base = dir.path().display().to_string();
        // A plain listener too, on a port of its own: an empty `listeners.tcp` would take 5672.
        let conf = format!(
            "listeners.tcp.default = 127.0.0.1:{plain}\nlisteners.ssl.default = {port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nloopback_users = none\n",
            certs.ca.display(),
            certs.cert.display(),
            certs.key.display()
        );
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        // The program itself: /usr/sbin/rabbitmq-server would switch to the `rabbitmq` user, who
        // cannot read this folder.
        let mut command = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        command
            .env("RABBITMQ_NODENAME", format!("tributary-tls-{port}@localhost"))
            .env("RABBITMQ_NODE_PORT", plain.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", format!("{base}/rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{base}/enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", format!("{base}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{base}/log"))
            .env("RABBITMQ_PID_FILE", format!("{base}/pid"));
        let server = tributary_testkit::OwnServer::start(command, port, Duration::from_secs(60)).await;
        TlsNode { server, _dir: dir, ca: certs.ca }
    }
}

#[tokio::test]
async fn rows_cross_a_tls_listener_checked_against_the_ca_file() {
    let node = TlsNode::start().await;
    let (port, ca) = (node.server.port, node.ca.display().to_string());
    let url = format!("amqps://localhost:{port}/%2f");
    let queue = "readings";
    // The queue, declared over TLS by the sink's own connection type.
    let broker =
        crate::Broker::parse(&url, &Some("guest".into()), &Some(tributary_sdk::Secret::new("guest")), &Some(node.ca.clone())).unwrap();
    let connection = broker.connect().await.unwrap();
    let ch = connection.create_channel().await.unwrap();
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let login = "user: guest, password: guest";
    let sink = format!("{{url: '{url}', {login}, tls_ca_file: '{ca}', routing_key: '{queue}'}}");
    let schema = Arc::new(Schema::new(vec![Field::new("co2", DataType::Int64, false)]));
    let mut sink = AmqpSinkPlugin.build(&ComponentConfig::from_yaml("out", &sink), &[("x".into(), schema.clone())]).unwrap();
    let ctx = sink_context("out");
    sink.start(&ctx).await.unwrap();
    let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![410, 430]))]).unwrap();
    sink.write(rows, &ctx).await.unwrap();
    let source = format!("{{url: '{url}', {login}, tls_ca_file: '{ca}', queue: {queue}, schema: {{co2: int}}, batch_wait: 100ms}}");
    let built = AmqpSourcePlugin.build(&ComponentConfig::from_yaml("q", &source)).unwrap();
    let (ctx, mut h) = source_context("q", &[""], 8);
    let mut out = h.outputs.remove("").unwrap();
    let task = tokio::spawn(built.source.run(ctx));
    let got = tokio::time::timeout(Duration::from_secs(10), out.recv()).await.unwrap().unwrap();
    let co2: Vec<i64> = got.batch.data.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(co2, [410, 430]);
    got.batch.acks.release();
    h.shutdown.cancel();
    task.await.unwrap().unwrap();

    // Without the CA the broker's certificate is refused, and the error says so.
    let untrusted = crate::Broker::parse(&url, &Some("guest".into()), &Some(tributary_sdk::Secret::new("guest")), &None).unwrap();
    let error = match untrusted.connect().await {
        Ok(_) => panic!("connected without the CA"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("UnknownIssuer"), "names the certificate problem: {error}");
}
