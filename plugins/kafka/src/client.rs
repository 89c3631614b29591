//! librdkafka settings shared by the source and the sink: brokers, SSL like the original monitor
//! (CA, certificate, key), and any other librdkafka property passed through (SASL and friends).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::Deserialize;
use tributary_sdk::Secret;

/// `ssl:` — the original monitor's `KAFKA_SSL_CA_FILE`, `KAFKA_SSL_CERT_FILE`, `KAFKA_SSL_KEY_FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub key_password: Option<Secret>,
}

/// The librdkafka config for brokers `bootstrap_servers`, optional SSL files, the component's own
/// `defaults`, then the passthrough properties (`librdkafka:` in YAML: SASL settings and the like),
/// which override everything Tributary sets.
pub fn client_config(
    client_id: &str,
    bootstrap_servers: &str,
    ssl: Option<&SslConfig>,
    defaults: &[(&str, String)],
    librdkafka: &BTreeMap<String, Secret>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap_servers).set("client.id", client_id);
    if let Some(ssl) = ssl {
        cfg.set("security.protocol", "ssl");
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(p) = &ssl.ca_file {
            cfg.set("ssl.ca.location", path(p));
        }
        if let Some(p) = &ssl.cert_file {
            cfg.set("ssl.certificate.location", path(p));
        }
        if let Some(p) = &ssl.key_file {
            cfg.set("ssl.key.location", path(p));
        }
        if let Some(pw) = &ssl.key_password {
            cfg.set("ssl.key.password", pw.expose());
        }
    }
    for (k, v) in defaults {
        cfg.set(*k, v);
    }
    for (k, v) in librdkafka {
        cfg.set(k, v.expose());
    }
    cfg
}
