//! The state of one SRT session as its output lines arrive: connected state, reconnections,
//! per-connection sums, and the rows they produce. Every way of getting the lines (a supervised
//! process, a container's log stream) feeds a [`SessionTracker`].

use std::sync::Arc;

use crate::parse::{parse_line, Line, ParseError, Side, Stat, StatsLine, STAT_COUNT};

/// Which end of the SRT link a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sender: UDP in, SRT out (SRT *target*).
    Tx,
    /// Receiver: SRT in, UDP out (SRT *source*).
    Rx,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tx => "tx",
            Role::Rx => "rx",
        }
    }
}

/// `connected` values, as the SRT management API defines them.
pub mod connected {
    /// Stopped or never started.
    pub const STOPPED: i64 = 0;
    pub const CONNECTED: i64 = 1;
    /// Disconnected, waiting for (or attempting) a connection.
    pub const WAITING: i64 = 2;
}

/// One row of the stats output. `values` are cumulative since the connection started; NaN
/// means "not reported" (a null in the output).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub ts_us: i64,
    pub session: Arc<str>,
    pub role: Option<Role>,
    pub sid: Option<i64>,
    pub connected: i64,
    pub reconnections: i64,
    pub values: [f64; STAT_COUNT],
    pub line_loss_pct: f64,
}

/// One row of the events output: a connection or process state change.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub ts_us: i64,
    pub session: Arc<str>,
    pub role: Option<Role>,
    /// `connected`, `disconnected`, `started`, `exited`.
    pub event: &'static str,
    pub sid: Option<i64>,
    pub reconnections: i64,
    pub message: String,
}

/// Rows produced by a tracker, collected by the source until the next batch.
#[derive(Debug, Default)]
pub struct Emitted {
    pub stats: Vec<StatsRow>,
    pub events: Vec<EventRow>,
}

impl Emitted {
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.events.is_empty()
    }
    pub fn len(&self) -> usize {
        self.stats.len() + self.events.len()
    }
    pub fn append(&mut self, other: &mut Emitted) {
        self.stats.append(&mut other.stats);
        self.events.append(&mut other.events);
    }
}

/// The source's pending rows, gathered from every session's producer by the sdk's `Batcher`.
impl tributary_sdk::Gather<Emitted> for Emitted {
    fn gather(&mut self, mut item: Emitted) {
        self.append(&mut item);
    }
    fn rows(&self) -> usize {
        self.len()
    }
}

/// `lost / packets × 100`, 0 when nothing was sent or received.
pub fn line_loss_pct(lost: f64, packets: f64) -> f64 {
    if packets > 0.0 {
        lost / packets * 100.0
    } else {
        0.0
    }
}

/// A stderr connect message counts as the reconnect a new `sid` already signalled when it
/// arrives this soon after (the two streams race).
const CONNECT_ABSORB_US: i64 = 3_000_000;

pub struct SessionTracker {
    session: Arc<str>,
    role: Option<Role>,
    /// Lines carry counters since the connection started (`-f`); otherwise deltas are summed.
    cumulative: bool,
    connected: i64,
    connects: i64,
    sid: Option<i64>,
    /// A connect message was seen and the first line of its connection has not arrived yet.
    awaiting_new_sid: bool,
    /// A new sid counted a connect before its message arrived: absorb the message until then.
    absorb_connect_until: Option<i64>,
    /// Cumulative values of the current connection (sums when the lines are deltas).
    current: [f64; STAT_COUNT],
    has_current: bool,
}

impl SessionTracker {
    pub fn new(session: impl Into<Arc<str>>, role: Option<Role>, cumulative: bool) -> Self {
        SessionTracker {
            session: session.into(),
            role,
            cumulative,
            connected: connected::STOPPED,
            connects: 0,
            sid: None,
            awaiting_new_sid: false,
            absorb_connect_until: None,
            current: [0.0; STAT_COUNT],
            has_current: false,
        }
    }

    pub fn session(&self) -> &Arc<str> {
        &self.session
    }
    pub fn role(&self) -> Option<Role> {
        self.role
    }
    pub fn connected(&self) -> i64 {
        self.connected
    }
    pub fn reconnections(&self) -> i64 {
        (self.connects - 1).max(0)
    }

    /// The process (or container) started: waiting for a connection.
    pub fn started(&mut self, now_us: i64, message: String, out: &mut Emitted) {
        self.connected = connected::WAITING;
        self.event(now_us, "started", message, out);
    }

    /// The process (or container) is gone: stopped, with a last status row.
    pub fn exited(&mut self, now_us: i64, message: String, out: &mut Emitted) {
        if self.connected == connected::STOPPED {
            return;
        }
        self.connected = connected::STOPPED;
        self.awaiting_new_sid = false;
        self.status_row(now_us, out);
        self.event(now_us, "exited", message, out);
    }

    /// One line of the session's output (stdout or stderr).
    pub fn line(&mut self, text: &str, now_us: i64, out: &mut Emitted) -> Result<(), ParseError> {
        match parse_line(text)? {
            Line::Stats(stats) => self.stats(stats, now_us, out),
            Line::Connected(side) => {
                self.learn_role(side);
                if self.absorb_connect_until.take().is_some_and(|until| now_us <= until) {
                    return Ok(());
                }
                self.sid = None;
                self.connect(now_us, text.trim().to_string(), out);
                self.awaiting_new_sid = true;
            }
            Line::Disconnected(side) => {
                self.learn_role(side);
                if self.connected == connected::CONNECTED {
                    self.connected = connected::WAITING;
                    self.awaiting_new_sid = false;
                    self.status_row(now_us, out);
                    self.event(now_us, "disconnected", text.trim().to_string(), out);
                }
            }
            Line::MediaPath { srt_input, srt_output } => {
                if self.role.is_none() && srt_input != srt_output {
                    self.role = Some(if srt_output { Role::Tx } else { Role::Rx });
                }
            }
            Line::CsvHeader | Line::Ignored => {}
        }
        Ok(())
    }

    fn learn_role(&mut self, side: Side) {
        if self.role.is_none() {
            self.role = Some(match side {
                Side::Target => Role::Tx,
                Side::Source => Role::Rx,
            });
        }
    }

    fn connect(&mut self, now_us: i64, message: String, out: &mut Emitted) {
        self.connects += 1;
        self.connected = connected::CONNECTED;
        self.current = [0.0; STAT_COUNT];
        self.has_current = false;
        self.event(now_us, "connected", message, out);
    }

    fn stats(&mut self, line: StatsLine, now_us: i64, out: &mut Emitted) {
        if self.sid != Some(line.sid) {
            self.sid = Some(line.sid);
            if self.awaiting_new_sid {
                self.awaiting_new_sid = false;
            } else {
                // A new connection whose connect message has not arrived (yet).
                self.connect(now_us, format!("new SRT socket id {}", line.sid), out);
                self.absorb_connect_until = Some(now_us + CONNECT_ABSORB_US);
            }
            self.current = [0.0; STAT_COUNT];
        }
        if self.role.is_none() {
            if line.get(Stat::SendPacketsUnique) > 0.0 {
                self.role = Some(Role::Tx);
            } else if line.get(Stat::RecvPacketsUnique) > 0.0 {
                self.role = Some(Role::Rx);
            }
        }
        if self.cumulative {
            self.current = line.values;
        } else {
            for (i, v) in line.values.iter().enumerate() {
                if Stat::ALL[i].is_interval_counter() {
                    self.current[i] += v;
                } else {
                    self.current[i] = *v;
                }
            }
        }
        self.has_current = true;
        let ts_us = line.timepoint_us.unwrap_or(now_us);
        out.stats.push(self.row(ts_us, self.current));
    }

    /// A row at a state change: counters as last reported, link and rate fields zeroed
    /// (what the management API shows for a disconnected session).
    fn status_row(&mut self, now_us: i64, out: &mut Emitted) {
        let mut values = if self.has_current { self.current } else { [0.0; STAT_COUNT] };
        for stat in [Stat::LinkRtt, Stat::LinkBandwidth, Stat::LinkMaxBandwidth, Stat::SendMbitRate, Stat::RecvMbitRate] {
            values[stat as usize] = 0.0;
        }
        out.stats.push(self.row(now_us, values));
    }

    fn row(&self, ts_us: i64, values: [f64; STAT_COUNT]) -> StatsRow {
        let v = |s: Stat| values[s as usize];
        let line_loss_pct = match self.role {
            Some(Role::Tx) => line_loss_pct(v(Stat::SendPacketsLost), v(Stat::SendPackets)),
            Some(Role::Rx) | None => line_loss_pct(v(Stat::RecvPacketsLost), v(Stat::RecvPackets)),
        };
        StatsRow {
            ts_us,
            session: self.session.clone(),
            role: self.role,
            sid: self.sid,
            connected: self.connected,
            reconnections: self.reconnections(),
            values,
            line_loss_pct,
        }
    }

    fn event(&self, ts_us: i64, event: &'static str, message: String, out: &mut Emitted) {
        out.events.push(EventRow {
            ts_us,
            session: self.session.clone(),
            role: self.role,
            event,
            sid: self.sid,
            reconnections: self.reconnections(),
            message,
        });
    }
}
