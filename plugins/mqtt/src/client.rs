//! One MQTT connection, 3.1.1 or 5, behind one small interface. `rumqttc` keeps the two protocol
//! versions in separate modules with their own types; the source and the sink only need: receive
//! messages, acknowledge one, publish, and learn when the broker acknowledged a publish.
//!
//! The event loop runs in a task of its own so that it is polled (pings, reconnects, sending
//! acknowledgements) while the source waits for the pipeline.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use tokio::sync::mpsc;
use tributary_sdk::tls::provider;

use crate::config::{Broker, Protocol, Qos};

/// What the connection reports.
pub(crate) enum Happening {
    Message(Box<Received>),
    /// The broker accepted the connection (`session_present`: it still had our session).
    Connected {
        session_present: bool,
    },
    /// The connection failed or dropped; the client reconnects by itself.
    Lost(String),
    /// The broker acknowledged one published message (PUBACK, PUBCOMP; a QoS 0 one when sent).
    Published,
}

/// A received message and what acknowledges it (QoS 1 and 2 only).
pub(crate) struct Received {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub ack: Option<Acknowledge>,
}

pub(crate) enum Acknowledge {
    V311(rumqttc::Publish),
    V5(p5::Publish),
}

#[derive(Clone)]
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn qos311(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: Qos) -> QoS5 {
    match q {
        Qos::AtMostOnce => QoS5::AtMostOnce,
        Qos::AtLeastOnce => QoS5::AtLeastOnce,
        Qos::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

/// MQTT's largest packet. `rumqttc` drops the connection on a larger one than it was told to
/// expect (10 KiB by default), and the broker of a persistent session would then deliver the
/// same message again at every reconnect: a stuck source. The decoder judges messages instead.
const MAX_PACKET: usize = 268_435_455;

/// TLS on the build's ring provider: the CA file's certificates, or the public roots.
fn tls_config(ca_file: &Option<std::path::PathBuf>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                roots.add(cert.with_context(|| format!("a certificate in {}", path.display()))?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the connection; `subscriptions` are (re)made on every connect. Nothing is sent before
/// the returned receiver is read: the event loop task starts at once and reconnects forever,
/// waiting a second between tries, until the receiver is dropped.
pub(crate) fn open(
    broker: &Broker,
    clean_session: bool,
    manual_acks: bool,
    max_in_flight: u16,
    subscriptions: Vec<(String, Qos)>,
    capacity: usize,
) -> anyhow::Result<(Client, mpsc::Receiver<Happening>)> {
    let tls = broker.tls.as_ref().map(tls_config).transpose()?;
    let (tx, rx) = mpsc::channel(capacity);
    match broker.protocol {
        Protocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(&broker.client_id, &broker.host, broker.port);
            options
                .set_keep_alive(broker.keep_alive)
                .set_clean_session(clean_session)
                .set_manual_acks(manual_acks)
                .set_inflight(max_in_flight.max(1));
            options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
            if let Some((user, password)) = &broker.credentials {
                options.set_credentials(user, password.expose());
            }
            if let Some(tls) = tls {
                options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(tls)));
            }
            let (client, mut events) = rumqttc::AsyncClient::new(options, capacity.max(10));
            let subscriber = client.clone();
            tokio::spawn(async move {
                loop {
                    let happening = match events.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                            for (filter, qos) in &subscriptions {
                                let _ = subscriber.try_subscribe(filter.clone(), qos311(*qos));
                            }
                            Some(Happening::Connected { session_present: c.session_present })
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => Some(Happening::Message(Box::new(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.clone(),
                            ack: (p.qos != rumqttc::QoS::AtMostOnce).then_some(Acknowledge::V311(p)),
                        }))),
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_))) => {
                            Some(Happening::Published)
                        }
                        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(0))) => Some(Happening::Published),
                        Ok(_) => None,
                        Err(e) => Some(Happening::Lost(e.to_string())),
                    };
                    if !forward(&tx, happening).await {
                        return;
                    }
                }
            });
            Ok((Client::V311(client), rx))
        }
        Protocol::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(&broker.client_id, &broker.host, broker.port);
            options.set_keep_alive(broker.keep_alive).set_clean_start(clean_session).set_manual_acks(manual_acks);
            options.set_receive_maximum(Some(max_in_flight.max(1))).set_max_packet_size(Some(MAX_PACKET as u32));
            if !clean_session {
                // Kept for a day while the source is away (MQTT 5 ends a session at disconnect
                // unless told otherwise).
                options.set_session_expiry_interval(Some(86_400));
            }
            if let Some((user, password)) = &broker.credentials {
                options.set_credentials(user, password.expose());
            }
            if let Some(tls) = tls {
                options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(tls)));
            }
            let (client, mut events) = rumqttc::v5::AsyncClient::new(options, capacity.max(10));
            let subscriber = client.clone();
            tokio::spawn(async move {
                loop {
                    let happening = match events.poll().await {
                        Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(c))) => {
                            for (filter, qos) in &subscriptions {
                                let _ = subscriber.try_subscribe(filter.clone(), qos5(*qos));
                            }
                            Some(Happening::Connected { session_present: c.session_present })
                        }
                        Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) => Some(Happening::Message(Box::new(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.clone(),
                            ack: (p.qos != QoS5::AtMostOnce).then_some(Acknowledge::V5(p)),
                        }))),
                        Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubAck(_) | p5::Packet::PubComp(_))) => Some(Happening::Published),
                        Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(0))) => Some(Happening::Published),
                        Ok(_) => None,
                        Err(e) => Some(Happening::Lost(e.to_string())),
                    };
                    if !forward(&tx, happening).await {
                        return;
                    }
                }
            });
            Ok((Client::V5(client), rx))
        }
    }
}

/// Passes one happening on, and waits a second after a lost connection before the event loop
/// tries again; `false` once nobody listens.
async fn forward(tx: &mpsc::Sender<Happening>, happening: Option<Happening>) -> bool {
    let Some(happening) = happening else { return !tx.is_closed() };
    let lost = matches!(happening, Happening::Lost(_));
    if tx.send(happening).await.is_err() {
        return false;
    }
    if lost {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    true
}

impl Client {
    pub(crate) async fn ack(&self, ack: &Acknowledge) -> anyhow::Result<()> {
        match (self, ack) {
            (Client::V311(c), Acknowledge::V311(p)) => c.ack(p).await?,
            (Client::V5(c), Acknowledge::V5(p)) => c.ack(p).await?,
            _ => anyhow::bail!("an acknowledgement of the other protocol version"),
        }
        Ok(())
    }

    pub(crate) async fn publish(&self, topic: String, qos: Qos, retain: bool, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Client::V311(c) => c.publish(topic, qos311(qos), retain, payload).await?,
            Client::V5(c) => c.publish(topic, qos5(qos), retain, payload).await?,
        }
        Ok(())
    }

    pub(crate) async fn disconnect(&self) {
        match self {
            Client::V311(c) => drop(c.disconnect().await),
            Client::V5(c) => drop(c.disconnect().await),
        }
    }
}
