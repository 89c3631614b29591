//! One parser for every line srt-live-transmit prints: JSON and CSV statistics lines, the
//! connect and disconnect messages, and the lines to skip (see this plugin's README).
//!
//! The JSON reader is a small single-pass scanner rather than serde: a collector follows
//! thousands of sessions, so a stats line must cost well under 2 µs (plugins/srt-stats/benches/srt_parser.rs).
//! It still accepts any key order, whitespace, escapes and unknown keys.

use std::fmt;

/// Declares `Stat` and `Stat::ALL` from one list, so the enum and the CSV column order cannot
/// drift apart.
macro_rules! stats {
    ($($name:ident),* $(,)?) => {
        /// The statistics a line carries, indexing [`StatsLine::values`]. Values are f64 because
        /// srt-live-transmit prints integers and 6-significant-digit doubles alike (`1000`,
        /// `4.11671`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Stat {
            $($name),*
        }

        impl Stat {
            /// Every stat, in enum order, which is also the CSV column order (the CSV writer
            /// prints `Timepoint,Time,SocketID`, then these).
            pub const ALL: [Stat; STAT_COUNT] = [$(Stat::$name),*];
        }
    };
}

stats! {
    Time,
    WindowFlow,
    WindowCongestion,
    WindowFlight,
    LinkRtt,
    LinkBandwidth,
    LinkMaxBandwidth,
    SendPackets,
    SendPacketsUnique,
    SendPacketsLost,
    SendPacketsDropped,
    SendPacketsRetransmitted,
    SendPacketsFilterExtra,
    SendBytes,
    SendBytesUnique,
    SendBytesDropped,
    SendByteAvailBuf,
    SendMsBuf,
    SendMbitRate,
    SendPeriod,
    RecvPackets,
    RecvPacketsUnique,
    RecvPacketsLost,
    RecvPacketsDropped,
    RecvPacketsRetransmitted,
    RecvPacketsBelated,
    RecvPacketsFilterExtra,
    RecvPacketsFilterSupply,
    RecvPacketsFilterLoss,
    RecvBytes,
    RecvBytesUnique,
    RecvBytesLost,
    RecvBytesDropped,
    RecvByteAvailBuf,
    RecvMsBuf,
    RecvMbitRate,
    RecvTsbPdDelay,
}

pub const STAT_COUNT: usize = Stat::RecvTsbPdDelay as usize + 1;

impl Stat {
    /// Interval counters: cleared after each report unless `-f`, so summed per connection when
    /// the lines are deltas. (Rates, buffers and link estimates are instantaneous.)
    pub fn is_interval_counter(self) -> bool {
        use Stat::*;
        matches!(
            self,
            SendPackets
                | SendPacketsUnique
                | SendPacketsLost
                | SendPacketsDropped
                | SendPacketsRetransmitted
                | SendPacketsFilterExtra
                | SendBytes
                | SendBytesUnique
                | SendBytesDropped
                | RecvPackets
                | RecvPacketsUnique
                | RecvPacketsLost
                | RecvPacketsDropped
                | RecvPacketsRetransmitted
                | RecvPacketsBelated
                | RecvPacketsFilterExtra
                | RecvPacketsFilterSupply
                | RecvPacketsFilterLoss
                | RecvBytes
                | RecvBytesUnique
                | RecvBytesLost
                | RecvBytesDropped
        )
    }

    /// The stat a JSON `section.key` names.
    fn from_json(section: &[u8], key: &[u8]) -> Option<Stat> {
        use Stat::*;
        Some(match (section, key) {
            (b"", b"time") => Time,
            (b"window", b"flow") => WindowFlow,
            (b"window", b"congestion") => WindowCongestion,
            (b"window", b"flight") => WindowFlight,
            (b"link", b"rtt") => LinkRtt,
            (b"link", b"bandwidth") => LinkBandwidth,
            (b"link", b"maxBandwidth") => LinkMaxBandwidth,
            (b"send", k) => match k {
                b"packets" => SendPackets,
                b"packetsUnique" => SendPacketsUnique,
                b"packetsLost" => SendPacketsLost,
                b"packetsDropped" => SendPacketsDropped,
                b"packetsRetransmitted" => SendPacketsRetransmitted,
                b"packetsFilterExtra" => SendPacketsFilterExtra,
                b"bytes" => SendBytes,
                b"bytesUnique" => SendBytesUnique,
                b"bytesDropped" => SendBytesDropped,
                b"byteAvailBuf" => SendByteAvailBuf,
                b"msBuf" => SendMsBuf,
                b"mbitRate" => SendMbitRate,
                b"sendPeriod" => SendPeriod,
                _ => return None,
            },
            (b"recv", k) => match k {
                b"packets" => RecvPackets,
                b"packetsUnique" => RecvPacketsUnique,
                b"packetsLost" => RecvPacketsLost,
                b"packetsDropped" => RecvPacketsDropped,
                b"packetsRetransmitted" => RecvPacketsRetransmitted,
                b"packetsBelated" => RecvPacketsBelated,
                b"packetsFilterExtra" => RecvPacketsFilterExtra,
                b"packetsFilterSupply" => RecvPacketsFilterSupply,
                b"packetsFilterLoss" => RecvPacketsFilterLoss,
                b"bytes" => RecvBytes,
                b"bytesUnique" => RecvBytesUnique,
                b"bytesLost" => RecvBytesLost,
                b"bytesDropped" => RecvBytesDropped,
                b"byteAvailBuf" => RecvByteAvailBuf,
                b"msBuf" => RecvMsBuf,
                b"mbitRate" => RecvMbitRate,
                b"msTsbPdDelay" => RecvTsbPdDelay,
                _ => return None,
            },
            _ => return None,
        })
    }
}

/// One statistics report.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsLine {
    /// SRT socket id: new on every connection.
    pub sid: i64,
    /// `timepoint` in µs since the epoch, when the line has one.
    pub timepoint_us: Option<i64>,
    pub values: [f64; STAT_COUNT],
}

impl StatsLine {
    pub fn get(&self, stat: Stat) -> f64 {
        self.values[stat as usize]
    }
}

/// Which side a connect or disconnect message is about: `target` = SRT output (a sender),
/// `source` = SRT input (a receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Target,
    Source,
}

/// What one line of srt-live-transmit output is.
// Returned by value once per line and consumed at once: boxing `Stats` would add an allocation
// per statistics line on the parser's hot path for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Stats(StatsLine),
    /// The CSV header (printed once per process).
    CsvHeader,
    Connected(Side),
    Disconnected(Side),
    /// `Media path: '<in>' --> '<out>'` — tells which side is SRT. May hold a passphrase.
    MediaPath {
        srt_input: bool,
        srt_output: bool,
    },
    /// Known noise: byte counters, SRT library logs, bandwidth reports, blank lines.
    Ignored,
}

/// A line that is none of the known forms, or a stats line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Classify and parse one output line (stdout or stderr: the forms do not overlap).
pub fn parse_line(line: &str) -> Result<Line, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let t = line.trim();
    if t.is_empty() {
        return Ok(Line::Ignored);
    }
    match t.as_bytes()[0] {
        b'{' => {
            if t.starts_with("{\"bandwidth\"") {
                return Ok(Line::Ignored);
            }
            return parse_json(t).map(Line::Stats);
        }
        b'0'..=b'9' => {
            // A CSV row starts with the timepoint date; other digit-led lines are byte
            // counters (`N bytes lost, …`) or library logs (`HH:MM:SS.ffffff/SRT:…`).
            if t.len() > 10 && t.as_bytes()[4] == b'-' && t.contains(',') {
                return parse_csv_row(t).map(Line::Stats);
            }
            if t.contains(" bytes lost, ") || is_srt_library_log(t) {
                return Ok(Line::Ignored);
            }
        }
        _ => {}
    }
    Ok(match t {
        "Accepted SRT target connection" | "SRT target connected" => Line::Connected(Side::Target),
        "Accepted SRT source connection" | "SRT source connected" => Line::Connected(Side::Source),
        "SRT target disconnected" => Line::Disconnected(Side::Target),
        "SRT source disconnected" => Line::Disconnected(Side::Source),
        _ if t.starts_with("Timepoint,") => Line::CsvHeader,
        _ if t.starts_with("Media path:") => {
            let (input, output) = t["Media path:".len()..].split_once("-->").unwrap_or(("", ""));
            Line::MediaPath {
                srt_input: input.trim().trim_matches('\'').starts_with("srt://"),
                srt_output: output.trim().trim_matches('\'').starts_with("srt://"),
            }
        }
        _ if t.starts_with("+++/+++SRT BANDWIDTH") => Line::Ignored,
        _ => return Err(ParseError(format!("not a statistics line or a known message: `{}`", excerpt(t)))),
    })
}

/// `HH:MM:SS.ffffff/<thread>!<level>:SRT.<area>: …`, a log line of the SRT library. The thread is
/// an SRT worker (`SRT:RcvQ:w1`) or the program's own main thread, named after the program and cut
/// to 15 characters (`srt-live-transm`); the level is one letter (D, N, W, E, F).
fn is_srt_library_log(t: &str) -> bool {
    let b = t.as_bytes();
    let timestamped = b.len() > 9 && b[2] == b':' && b[5] == b':' && b[8] == b'.';
    timestamped
        && t.split_once('/')
            .and_then(|(_, thread_on)| thread_on.split_once('!'))
            .is_some_and(|(_, level_on)| level_on.get(1..6) == Some(":SRT."))
}

/// At most 80 characters of a line, for error messages.
pub fn excerpt(t: &str) -> String {
    match t.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// Redact `passphrase=…` in a URI or a `Media path:` line before it is logged or stored.
pub fn redact_passphrase(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("passphrase=") {
        let start = i + "passphrase=".len();
        out.push_str(&rest[..start]);
        out.push_str("***");
        let end = rest[start..].find(['&', '\'', ' ', '"']).map(|e| start + e).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Parse a JSON statistics line. Unknown keys are skipped; missing stats read 0 (older builds
/// print fewer fields); a line without `sid` is an error.
pub fn parse_json(line: &str) -> Result<StatsLine, ParseError> {
    let mut s = Scanner { b: line.as_bytes(), i: 0, depth: 0 };
    let mut out = StatsLine { sid: 0, timepoint_us: None, values: [0.0; STAT_COUNT] };
    let mut saw_sid = false;
    s.object(|s, key| {
        match key {
            b"sid" => {
                out.sid = s.number()? as i64;
                saw_sid = true;
            }
            b"timepoint" => {
                let text = s.string()?;
                out.timepoint_us = Some(parse_timepoint(text).ok_or_else(|| s.error(&format!("`timepoint` `{text}` is not a time")))?);
            }
            _ if s.peek() == Some(b'{') => {
                let section = key;
                s.object(|s, key| match Stat::from_json(section, key) {
                    Some(stat) => {
                        out.values[stat as usize] = s.number()?;
                        Ok(())
                    }
                    None => s.skip_value(),
                })?;
            }
            _ => match Stat::from_json(b"", key) {
                Some(stat) => out.values[stat as usize] = s.number()?,
                None => s.skip_value()?,
            },
        }
        Ok(())
    })?;
    s.ws();
    if s.i != s.b.len() {
        return Err(s.error("text after the JSON object"));
    }
    if !saw_sid {
        return Err(ParseError("JSON statistics line without `sid`".into()));
    }
    Ok(out)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Arrays and objects open around the current value: bounded, so a hostile line of
    /// `[[[[…` is an error instead of a stack overflow.
    depth: usize,
}

/// Deepest nesting a statistics line may have (srt-live-transmit writes 3 levels).
const MAX_DEPTH: usize = 32;

impl<'a> Scanner<'a> {
    fn error(&self, what: &str) -> ParseError {
        ParseError(format!("malformed JSON statistics line at byte {}: {what}", self.i))
    }
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", c as char)))
        }
    }
    /// `{ "key": value, … }`, calling `field` with the scanner positioned at each value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Result<(), ParseError>) -> Result<(), ParseError> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.raw_string()?;
            self.expect(b':')?;
            field(self, key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }
    /// A string's raw bytes between the quotes (escapes left in place: keys and timepoints
    /// never contain any, and skipping is all other strings need).
    fn raw_string(&mut self) -> Result<&'a [u8], ParseError> {
        self.expect(b'"')?;
        let start = self.i;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(&self.b[start..self.i - 1]);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        Err(self.error("unterminated string"))
    }
    fn string(&mut self) -> Result<&'a str, ParseError> {
        let raw = self.raw_string()?;
        std::str::from_utf8(raw).map_err(|_| self.error("string is not UTF-8"))
    }
    fn number(&mut self) -> Result<f64, ParseError> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        // Fast path: plain integers (most fields).
        let mut int: u64 = 0;
        let digits_start = i;
        while i < b.len() && b[i].is_ascii_digit() && i - digits_start < 18 {
            int = int * 10 + (b[i] - b'0') as u64;
            i += 1;
        }
        if i == digits_start {
            return Err(self.error("expected a number"));
        }
        if i < b.len() && matches!(b[i], b'.' | b'e' | b'E' | b'0'..=b'9') {
            while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                i += 1;
            }
            let text = std::str::from_utf8(&b[start..i]).expect("ASCII");
            self.i = i;
            return text.parse::<f64>().map_err(|_| self.error(&format!("`{text}` is not a number")));
        }
        self.i = i;
        Ok(if negative { -(int as f64) } else { int as f64 })
    }
    /// Skip any JSON value.
    fn skip_value(&mut self) -> Result<(), ParseError> {
        if matches!(self.peek(), Some(b'{' | b'[')) {
            if self.depth >= MAX_DEPTH {
                return Err(self.error(&format!("nested deeper than {MAX_DEPTH} levels")));
            }
            self.depth += 1;
            let skipped = self.skip_nested();
            self.depth -= 1;
            return skipped;
        }
        self.skip_scalar()
    }
    fn skip_nested(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'{') => self.object(|s, _| s.skip_value()),
            Some(b'[') => {
                self.i += 1;
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value()?;
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            _ => self.skip_scalar(),
        }
    }
    fn skip_scalar(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'"') => self.raw_string().map(|_| ()),
            Some(b't') | Some(b'f') | Some(b'n') => {
                let word = [&b"true"[..], b"false", b"null"].into_iter().find(|w| self.b[self.i..].starts_with(w));
                match word {
                    Some(w) => {
                        self.i += w.len();
                        Ok(())
                    }
                    None => Err(self.error("unknown literal")),
                }
            }
            _ => self.number().map(|_| ()),
        }
    }
}

/// A CSV row: `Timepoint,Time,SocketID,` then the stats in [`Stat::ALL`] order (read by
/// position: the header names `Time` twice).
pub fn parse_csv_row(line: &str) -> Result<StatsLine, ParseError> {
    let mut cols = line.split(',');
    let timepoint = cols.next().unwrap_or_default();
    let timepoint_us =
        Some(parse_timepoint(timepoint).ok_or_else(|| ParseError(format!("CSV statistics row: `{}` is not a time", excerpt(timepoint))))?);
    cols.next(); // Time, repeated below
    let sid_text = cols.next().unwrap_or_default();
    let sid =
        sid_text.trim().parse::<i64>().map_err(|_| ParseError(format!("CSV statistics row: SocketID `{sid_text}` is not a number")))?;
    let mut values = [0.0; STAT_COUNT];
    let mut n = 0;
    for (stat, text) in Stat::ALL.iter().zip(&mut cols) {
        values[*stat as usize] = text
            .trim()
            .parse::<f64>()
            .map_err(|_| ParseError(format!("CSV statistics row: column {} `{}` is not a number", n + 4, excerpt(text))))?;
        n += 1;
    }
    if n != STAT_COUNT || cols.next().is_some() {
        return Err(ParseError(format!("CSV statistics row has {} columns, expected {}", n + 3 + cols.count(), STAT_COUNT + 3)));
    }
    Ok(StatsLine { sid, timepoint_us, values })
}

/// `2026-11-22T10:51:57.202401+0000` (local time with a `%z` offset) → µs since the epoch.
pub fn parse_timepoint(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let fixed = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(range)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    if b.len() < 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z").ok().map(|t| t.timestamp_micros());
    }
    let (year, month, day) = (fixed(0..4)?, fixed(5..7)?, fixed(8..10)?);
    let (hour, minute, second) = (fixed(11..13)?, fixed(14..16)?, fixed(17..19)?);
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let mut scale = 100_000;
        while i < b.len() && b[i].is_ascii_digit() {
            micros += (b[i] - b'0') as i64 * scale;
            scale /= 10;
            i += 1;
        }
    }
    let offset_s = match b.get(i) {
        Some(b'Z') => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &text[i + 1..];
            let digits: String = rest.chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let v = digits[..2].parse::<i64>().ok()? * 3600 + digits[2..].parse::<i64>().ok()? * 60;
            if sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = tributary_sdk::days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset_s) * 1_000_000 + micros)
}
