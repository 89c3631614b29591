//! Configuration of the `srt_stats` source, validated before anything runs, and the
//! srt-live-transmit command line built from a session's settings.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::{ComponentConfig, ConfigError, HumanDuration, Period, Secret};

use crate::parse::redact_passphrase;
use crate::session::Role;

/// How the statistics are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Tributary runs and supervises srt-live-transmit for each entry of `sessions`.
    Sessions,
    /// Follow the logs of Docker containers selected by labels.
    Docker,
    /// Poll an SRT management REST API.
    SrtApi,
}

/// A checked `srt_stats` config: the options of its `mode:` only.
#[derive(Debug, Clone)]
pub enum SrtStatsConfig {
    Sessions(SessionsMode),
    Docker(DockerMode),
    SrtApi { api: ApiConfig, batch_wait: HumanDuration },
}

/// `mode: sessions`: the transmitters and receivers Tributary runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsMode {
    /// The transmitters and receivers to run.
    #[serde(default)]
    pub sessions: Vec<SessionConfig>,
    /// The srt-live-transmit program (default: found on `PATH`).
    #[serde(default = "default_program")]
    pub program: String,
    /// One statistics line every this many packets (`-s:N`; reports are packet-driven, not timed).
    #[serde(default = "default_report_every")]
    pub report_every_packets: u32,
    /// Lines carry counters since the connection started (`-f`, what the SRT management API
    /// runs). `false`: each line holds the interval's deltas, which the source sums per connection.
    /// Output counters are cumulative per connection either way.
    #[serde(default = "default_true")]
    pub cumulative: bool,
    /// A stopped session is restarted after this delay, doubling up to `restart_max` (default 500ms).
    #[serde(default = "default_restart_initial")]
    pub restart_initial: Period,
    /// Longest wait between restarts (default 30s).
    #[serde(default = "default_restart_max")]
    pub restart_max: Period,
    /// Rows are sent downstream at least this often (default 1s).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
}

/// `mode: docker`: follow the logs of containers selected by labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerMode {
    /// Which containers, and how to name their sessions.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Lines carry counters since the connection started (`-f`); `false`: interval deltas.
    #[serde(default = "default_true")]
    pub cumulative: bool,
    /// Rows are sent downstream at least this often (default 1s).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
}

/// `mode: srt_api` as written: `srt_api:` is checked to be there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiMode {
    /// The management API to poll.
    #[serde(default)]
    pub srt_api: Option<ApiConfig>,
    /// Rows are sent downstream at least this often (default 1s).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
}

fn default_program() -> String {
    "srt-live-transmit".into()
}
fn default_report_every() -> u32 {
    100
}
fn default_true() -> bool {
    true
}
fn default_restart_initial() -> Period {
    Period(Duration::from_millis(500))
}
fn default_restart_max() -> Period {
    Period(Duration::from_secs(30))
}
fn default_batch_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtMode {
    Caller,
    Listener,
    Rendezvous,
}

impl SrtMode {
    fn as_str(self) -> &'static str {
        match self {
            SrtMode::Caller => "caller",
            SrtMode::Listener => "listener",
            SrtMode::Rendezvous => "rendezvous",
        }
    }
}

/// FEC packet filter (`packetfilter=fec,cols:…,rows:…,layout:…[,arq:…]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FecConfig {
    pub cols: u32,
    #[serde(default = "default_fec_rows")]
    pub rows: u32,
    #[serde(default = "default_fec_layout")]
    pub layout: String,
    /// `always`, `onreq` or `never` (SRT's default when unset: `onreq`).
    #[serde(default)]
    pub arq: Option<String>,
}

fn default_fec_rows() -> u32 {
    1
}
fn default_fec_layout() -> String {
    "staircase".into()
}

/// One SRT transmitter (`role: tx`, UDP in → SRT out) or receiver (`role: rx`, SRT in → UDP out),
/// with the SRT management API's parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    pub name: String,
    pub role: Role,
    pub mode: SrtMode,
    /// The peer to call (caller, rendezvous); for a listener, the local address to bind (default all).
    #[serde(default)]
    pub host: Option<String>,
    /// The SRT port: listened on, or called.
    #[serde(alias = "port")]
    pub listen_port: u16,
    /// tx: where the UDP input arrives, `host:port` (multicast allowed).
    #[serde(default)]
    pub udp_in: Option<String>,
    /// rx: where the UDP output goes, `host:port`.
    #[serde(default)]
    pub udp_out: Option<String>,
    /// rx: multicast TTL of the UDP output.
    #[serde(default)]
    pub ttl: Option<u8>,
    /// SRT latency in ms (default 120; the larger of both sides wins).
    #[serde(default)]
    pub latency_ms: Option<u32>,
    /// Send-rate cap in kbit/s (`maxbw`).
    #[serde(default)]
    pub srt_bw_kbps: Option<u64>,
    /// Expected input rate in kbit/s (`inputbw`; also sizes the UDP receive buffer).
    #[serde(default)]
    pub input_bw_kbps: Option<u64>,
    /// Bandwidth overhead for retransmissions, percent 5–100 (only when `srt_bw_kbps` is unset).
    #[serde(default)]
    pub overhead_pct: Option<u8>,
    /// AES passphrase, 10–79 characters; use `${ENV}`. Never logged.
    #[serde(default)]
    pub passphrase: Option<Secret>,
    /// Key length 16, 24 or 32 (AES-128/192/256); needs a passphrase.
    #[serde(default)]
    pub pbkeylen: Option<u8>,
    /// rx: drop packets that arrive too late to play.
    #[serde(default)]
    pub tlpktdrop: Option<bool>,
    #[serde(default)]
    pub packetfilter: Option<FecConfig>,
    /// Overrides the source's `report_every_packets` for this session.
    #[serde(default)]
    pub report_every_packets: Option<u32>,
}

/// `mode: docker`: which containers, and how to name their sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Docker Engine API address: `unix:///run/docker.sock`, `tcp://host:2375`; default `DOCKER_HOST`.
    #[serde(default)]
    pub host: Option<String>,
    /// Label selector: `key` or `key=value`; a container must carry all of them.
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
    /// Label holding the session name (default: the container's name).
    #[serde(default = "default_session_label")]
    pub session_label: String,
    /// Label holding `tx` or `rx` (otherwise learnt from the output).
    #[serde(default = "default_role_label")]
    pub role_label: String,
    /// How often to look for containers that started (default 2s).
    #[serde(default = "default_discover")]
    pub discover_interval: Period,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            labels: default_labels(),
            session_label: default_session_label(),
            role_label: default_role_label(),
            discover_interval: default_discover(),
        }
    }
}

fn default_labels() -> Vec<String> {
    vec!["tributary.srt".into()]
}
fn default_session_label() -> String {
    "tributary.srt.session".into()
}
fn default_role_label() -> String {
    "tributary.srt.role".into()
}
fn default_discover() -> Period {
    Period(Duration::from_secs(2))
}

/// `mode: srt_api`: an SRT management API (`POST /v1/login`, `GET /v1/get_tx`, `GET /v1/get_rx`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Base URL, e.g. `http://srt-api:5000`.
    pub url: String,
    pub username: String,
    pub password: Secret,
    /// Poll interval (default 10s).
    #[serde(default = "default_api_interval")]
    pub interval: Period,
    /// Per-request timeout (default 10s).
    #[serde(default = "default_api_timeout")]
    pub timeout: Period,
}

fn default_api_interval() -> Period {
    Period(Duration::from_secs(10))
}
fn default_api_timeout() -> Period {
    Period(Duration::from_secs(10))
}

impl SrtStatsConfig {
    /// Decode the options of the `mode:` given and check them.
    pub fn from_component(config: &ComponentConfig) -> Result<Self, ConfigError> {
        let (mode, options) = config.split_tag::<Mode>("mode")?;
        match mode {
            Mode::Sessions => {
                let m: SessionsMode = options.decode()?;
                m.validate()?;
                Ok(SrtStatsConfig::Sessions(m))
            }
            Mode::Docker => {
                let m: DockerMode = options.decode()?;
                if m.docker.labels.is_empty() {
                    return Err(ConfigError::at(
                        "docker.labels",
                        "name at least one label, or every container on the host would be followed",
                    ));
                }
                Ok(SrtStatsConfig::Docker(m))
            }
            Mode::SrtApi => {
                let m: ApiMode = options.decode()?;
                let api =
                    m.srt_api.ok_or_else(|| ConfigError::at("srt_api", "`mode: srt_api` needs `srt_api: {url, username, password}`"))?;
                if !(api.url.starts_with("http://") || api.url.starts_with("https://")) {
                    return Err(ConfigError::at("srt_api.url", format!("expected an http:// or https:// URL, got `{}`", api.url)));
                }
                Ok(SrtStatsConfig::SrtApi { api, batch_wait: m.batch_wait })
            }
        }
    }

    /// How often rows are sent downstream at least.
    pub fn batch_wait(&self) -> Duration {
        match self {
            SrtStatsConfig::Sessions(m) => m.batch_wait.0,
            SrtStatsConfig::Docker(m) => m.batch_wait.0,
            SrtStatsConfig::SrtApi { batch_wait, .. } => batch_wait.0,
        }
    }
}

impl SessionsMode {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.report_every_packets == 0 {
            return Err(ConfigError::at("report_every_packets", "must be at least 1"));
        }
        if self.sessions.is_empty() {
            return Err(ConfigError::at("sessions", "`mode: sessions` needs at least one session"));
        }
        let mut names = HashSet::new();
        for (i, s) in self.sessions.iter().enumerate() {
            s.validate().map_err(|mut e| {
                e.path.splice(0..0, [tributary_sdk::config::PathSeg::Key("sessions".into()), tributary_sdk::config::PathSeg::Index(i)]);
                e
            })?;
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::at("sessions", format!("session name `{}` is used twice", s.name)));
            }
        }
        Ok(())
    }
}

impl SessionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::at("name", "must not be empty"));
        }
        if self.listen_port == 0 {
            return Err(ConfigError::at("listen_port", "must be a port number 1–65535"));
        }
        if self.mode != SrtMode::Listener && self.host.is_none() {
            return Err(ConfigError::at("host", format!("`mode: {}` needs the peer's host", self.mode.as_str())));
        }
        match self.role {
            Role::Tx if self.udp_in.is_none() => {
                return Err(ConfigError::at("udp_in", "a transmitter (`role: tx`) needs `udp_in`, e.g. `127.0.0.1:5000`"))
            }
            Role::Rx if self.udp_out.is_none() => {
                return Err(ConfigError::at("udp_out", "a receiver (`role: rx`) needs `udp_out`, e.g. `127.0.0.1:5001`"))
            }
            _ => {}
        }
        if let Some(p) = &self.passphrase {
            let n = p.expose().chars().count();
            if !(10..=79).contains(&n) {
                return Err(ConfigError::at("passphrase", format!("must be 10 to 79 characters long (it has {n})")));
            }
        }
        if let Some(k) = self.pbkeylen {
            if ![16, 24, 32].contains(&k) {
                return Err(ConfigError::at("pbkeylen", format!("must be 16, 24 or 32, got {k}")));
            }
            if self.passphrase.is_none() {
                return Err(ConfigError::at("pbkeylen", "needs a `passphrase`"));
            }
        }
        if let Some(o) = self.overhead_pct {
            if !(5..=100).contains(&o) {
                return Err(ConfigError::at("overhead_pct", format!("must be 5 to 100, got {o}")));
            }
        }
        if let Some(fec) = &self.packetfilter {
            if fec.cols == 0 {
                return Err(ConfigError::at("packetfilter.cols", "must be at least 1"));
            }
            if !["even", "staircase"].contains(&fec.layout.as_str()) {
                return Err(ConfigError::at("packetfilter.layout", format!("must be `even` or `staircase`, got `{}`", fec.layout)));
            }
            if let Some(arq) = &fec.arq {
                if !["always", "onreq", "never"].contains(&arq.as_str()) {
                    return Err(ConfigError::at("packetfilter.arq", format!("must be `always`, `onreq` or `never`, got `{arq}`")));
                }
            }
        }
        if self.report_every_packets == Some(0) {
            return Err(ConfigError::at("report_every_packets", "must be at least 1"));
        }
        Ok(())
    }

    /// The SRT URI: `srt://host:port?mode=…&latency=…&…`.
    fn srt_uri(&self) -> String {
        let host = self.host.as_deref().unwrap_or("");
        let mut opts = vec![format!("mode={}", self.mode.as_str())];
        if let Some(l) = self.latency_ms {
            opts.push(format!("latency={l}"));
        }
        if let Some(bw) = self.srt_bw_kbps {
            opts.push(format!("maxbw={}", bw * 125));
        }
        if let Some(bw) = self.input_bw_kbps {
            opts.push(format!("inputbw={}", bw * 125));
        }
        if let Some(o) = self.overhead_pct {
            opts.push(format!("oheadbw={o}"));
        }
        if let Some(p) = &self.passphrase {
            opts.push(format!("passphrase={}", p.expose()));
        }
        if let Some(k) = self.pbkeylen {
            opts.push(format!("pbkeylen={k}"));
        }
        if let Some(t) = self.tlpktdrop {
            opts.push(format!("tlpktdrop={t}"));
        }
        if let Some(fec) = &self.packetfilter {
            let mut f = format!("packetfilter=fec,cols:{},rows:{},layout:{}", fec.cols, fec.rows, fec.layout);
            if let Some(arq) = &fec.arq {
                f.push_str(&format!(",arq:{arq}"));
            }
            opts.push(f);
        }
        format!("srt://{host}:{}?{}", self.listen_port, opts.join("&"))
    }

    /// srt-live-transmit's arguments: `-s:N -pf:json [-f] <input-uri> <output-uri>`.
    pub fn args(&self, report_every_packets: u32, cumulative: bool) -> Vec<String> {
        let mut args = vec![format!("-s:{}", self.report_every_packets.unwrap_or(report_every_packets)), "-pf:json".into()];
        if cumulative {
            args.push("-f".into());
        }
        match self.role {
            Role::Tx => {
                let mut input = format!("udp://{}", self.udp_in.as_deref().unwrap_or_default());
                if let Some(bw) = self.input_bw_kbps {
                    // A UDP receive buffer of two seconds' input, as the management API sizes it.
                    input.push_str(&format!("?rcvbuf={}", bw * 125 * 2));
                }
                args.push(input);
                args.push(self.srt_uri());
            }
            Role::Rx => {
                args.push(self.srt_uri());
                let mut output = format!("udp://{}", self.udp_out.as_deref().unwrap_or_default());
                if let Some(ttl) = self.ttl {
                    output.push_str(&format!("?ttl={ttl}"));
                }
                args.push(output);
            }
        }
        args
    }

    /// The command line as it may be logged (passphrase redacted).
    pub fn display_command(&self, program: &str, report_every_packets: u32, cumulative: bool) -> String {
        let args = self.args(report_every_packets, cumulative);
        redact_passphrase(&format!("{program} {}", args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")))
    }
}
