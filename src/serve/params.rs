//! The `/api/series` query string: parsed and checked before anything is read, every problem
//! named by its parameter.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, TimeZone, Utc};

/// One problem with one parameter (the 400 answer lists them all).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParamError {
    pub parameter: String,
    pub message: String,
}

impl ParamError {
    pub fn new(parameter: &str, message: impl Into<String>) -> Self {
        ParamError { parameter: parameter.to_string(), message: message.into() }
    }
}

/// How the values in one bin are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    /// Exact continuous percentile (interpolated), 0–1.
    Percentile(u8),
}

impl Agg {
    pub const NAMES: &'static str = "avg, min, max, sum, count, p50, p95, p99";

    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "avg" | "mean" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            "p50" | "median" => Agg::Percentile(50),
            "p95" => Agg::Percentile(95),
            "p99" => Agg::Percentile(99),
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Agg::Avg => "avg".into(),
            Agg::Min => "min".into(),
            Agg::Max => "max".into(),
            Agg::Sum => "sum".into(),
            Agg::Count => "count".into(),
            Agg::Percentile(p) => format!("p{p}"),
        }
    }
}

/// Response body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// A checked `/api/series` request (the table-dependent checks come after, against its schema).
#[derive(Debug, Clone)]
pub struct SeriesParams {
    pub table: String,
    pub value: String,
    pub agg: Agg,
    /// `None`: chosen to give about [`AUTO_BINS`] bins over the range.
    pub bin: Option<Duration>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Bins of a day or more start at midnight at this offset; times are printed in it.
    pub tz: FixedOffset,
    pub group_by: Option<String>,
    pub filter: Option<String>,
    /// The time column, when the table's default is not wanted.
    pub time: Option<String>,
    pub format: Format,
}

/// Bins an unset `bin` aims for.
pub const AUTO_BINS: u64 = 240;

/// The bins a refused request is pointed to, and an unset `bin` is chosen from.
pub const NICE_BINS: &[u64] = &[
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    2 * 60,
    5 * 60,
    10 * 60,
    15 * 60,
    30 * 60,
    3600,
    2 * 3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    7 * 86400,
    30 * 86400,
];

const KNOWN: &[&str] = &["table", "value", "agg", "bin", "from", "to", "tz", "group_by", "where", "time", "format"];

/// Parse the query string pairs. `now` anchors relative times; `accept` is the Accept header.
pub fn parse(pairs: &[(String, String)], now: DateTime<Utc>, accept: Option<&str>) -> Result<SeriesParams, Vec<ParamError>> {
    let mut errors = Vec::new();
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in pairs {
        if !KNOWN.contains(&k.as_str()) {
            errors.push(ParamError::new(k, format!("unknown parameter (known: {})", KNOWN.join(", "))));
        } else if given.insert(k.as_str(), v.as_str()).is_some() {
            errors.push(ParamError::new(k, "given more than once"));
        }
    }
    let mut required = |name: &str| match given.get(name).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Some(v.to_string()),
        _ => {
            errors.push(ParamError::new(name, "required"));
            None
        }
    };
    let table = required("table");
    let value = required("value");
    let optional = |name: &str| given.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

    let agg = match optional("agg") {
        None => Some(Agg::Avg),
        Some(a) => Agg::parse(a).or_else(|| {
            errors.push(ParamError::new("agg", format!("`{a}` is not an aggregate; use one of {}", Agg::NAMES)));
            None
        }),
    };
    let tz = match optional("tz") {
        None => Some(FixedOffset::east_opt(0).expect("UTC")),
        Some(t) => parse_offset(t).or_else(|| {
            errors.push(ParamError::new("tz", format!("`{t}` is not a UTC offset such as `UTC`, `+02:00` or `-05:30`")));
            None
        }),
    };
    let bin = match optional("bin") {
        None | Some("auto") => Some(None),
        Some(b) => match humantime::parse_duration(b) {
            Ok(d) if d.as_millis() >= 1 => Some(Some(d)),
            Ok(_) => {
                errors.push(ParamError::new("bin", format!("`{b}` is shorter than a millisecond")));
                None
            }
            Err(e) => {
                errors.push(ParamError::new("bin", format!("`{b}` is not a duration such as `30s`, `1m`, `1h`, `1d` ({e})")));
                None
            }
        },
    };
    let offset = tz.unwrap_or(FixedOffset::east_opt(0).expect("UTC"));
    let mut time_param = |name: &str, default: &str| {
        let text = optional(name).unwrap_or(default);
        parse_time(text, now, offset).map_err(|m| errors.push(ParamError::new(name, m))).ok()
    };
    let from = time_param("from", "now-24h");
    let to = time_param("to", "now");
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            errors.push(ParamError::new("from", format!("{} is not before `to` ({})", render_time(f, offset), render_time(t, offset))));
        }
    }
    let format = match (optional("format"), accept) {
        (Some("json"), _) => Some(Format::Json),
        (Some("csv"), _) => Some(Format::Csv),
        (Some(f), _) => {
            errors.push(ParamError::new("format", format!("`{f}` is not a format; use json or csv")));
            None
        }
        (None, Some(a)) if a.contains("text/csv") => Some(Format::Csv),
        (None, _) => Some(Format::Json),
    };
    match (table, value, agg, bin, from, to, tz, format) {
        (Some(table), Some(value), Some(agg), Some(bin), Some(from), Some(to), Some(tz), Some(format)) if errors.is_empty() => {
            Ok(SeriesParams {
                table,
                value,
                agg,
                bin,
                from,
                to,
                tz,
                group_by: optional("group_by").map(str::to_string),
                filter: optional("where").map(str::to_string),
                time: optional("time").map(str::to_string),
                format,
            })
        }
        _ => Err(errors),
    }
}

/// `UTC`, `Z`, `+02:00`, `-0530`.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// RFC 3339 (`2026-11-01T12:00:00Z`, `…+02:00`), a date (`2026-11-01`, midnight at `tz`), or
/// relative to now (`now`, `now-6h`, `now-30m`, `now+1h`).
pub fn parse_time(text: &str, now: DateTime<Utc>, tz: FixedOffset) -> Result<DateTime<Utc>, String> {
    if let Some(rel) = text.strip_prefix("now") {
        if rel.is_empty() {
            return Ok(now);
        }
        let (sign, span) = match rel.as_bytes()[0] {
            b'-' => (-1, &rel[1..]),
            b'+' => (1, &rel[1..]),
            _ => return Err(format!("`{text}` is not a time: after `now` comes `-` or `+` and a duration, as in `now-6h`")),
        };
        let d = humantime::parse_duration(span.trim()).map_err(|e| format!("`{text}`: `{span}` is not a duration ({e})"))?;
        let d = chrono::Duration::from_std(d).map_err(|_| format!("`{text}`: `{span}` is too long"))?;
        return Ok(if sign < 0 { now - d } else { now + d });
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
        if let chrono::LocalResult::Single(t) = tz.from_local_datetime(&midnight) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    Err(format!("`{text}` is not a time: use RFC 3339 (`2026-11-01T12:00:00Z`), a date (`2026-11-01`) or `now-6h`"))
}

/// A time as RFC 3339 at `tz` (`Z` for UTC), with milliseconds only when it has some.
pub fn render_time(t: DateTime<Utc>, tz: FixedOffset) -> String {
    let form = if t.timestamp_subsec_nanos() == 0 { SecondsFormat::Secs } else { SecondsFormat::Millis };
    t.with_timezone(&tz).to_rfc3339_opts(form, true)
}

/// A duration the way `bin` takes it: `90s` → `1m 30s`, `3600s` → `1h`.
pub fn render_bin(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// The bins covering `[from, to)`, aligned to midnight at `tz` (1970-01-01): the start of the first
/// and how many. A bin that does not divide the range leaves the last bin partly outside it.
pub fn bins(from: DateTime<Utc>, to: DateTime<Utc>, bin: Duration, tz: FixedOffset) -> (i64, u64) {
    let bin_ns = bin.as_nanos() as i64;
    let origin = origin_ns(tz);
    let from_ns = nanos(from);
    let to_ns = nanos(to);
    let start = origin + (from_ns - origin).div_euclid(bin_ns) * bin_ns;
    let count = (to_ns - start + bin_ns - 1).div_euclid(bin_ns);
    (start, count.max(0) as u64)
}

/// 1970-01-01T00:00 at `tz`, in nanoseconds since the epoch.
pub fn origin_ns(tz: FixedOffset) -> i64 {
    -(tz.local_minus_utc() as i64) * 1_000_000_000
}

pub fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 { i64::MIN } else { i64::MAX })
}

/// The smallest of [`NICE_BINS`] giving at most `max_bins` bins over `[from, to)`.
pub fn bin_that_fits(from: DateTime<Utc>, to: DateTime<Utc>, tz: FixedOffset, max_bins: u64) -> Option<Duration> {
    NICE_BINS.iter().map(|s| Duration::from_secs(*s)).find(|b| bins(from, to, *b, tz).1 <= max_bins.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_bad_parameter_is_named_with_its_problem() {
        let now = utc("2026-11-01T12:00:00Z");
        let q = pairs(&[
            ("value", "x"),
            ("agg", "median2"),
            ("bin", "fast"),
            ("from", "2026-11-02"),
            ("to", "2026-11-01"),
            ("tz", "Mars/Olympus"),
            ("colour", "red"),
        ]);
        let errors = parse(&q, now, None).unwrap_err();
        let got: Vec<(String, String)> = errors.into_iter().map(|e| (e.parameter, e.message)).collect();
        assert_eq!(
            got,
            vec![
                ("colour".into(), "unknown parameter (known: table, value, agg, bin, from, to, tz, group_by, where, time, format)".into()),
                ("table".into(), "required".into()),
                ("agg".into(), "`median2` is not an aggregate; use one of avg, min, max, sum, count, p50, p95, p99".into()),
                ("tz".into(), "`Mars/Olympus` is not a UTC offset such as `UTC`, `+02:00` or `-05:30`".into()),
                ("bin".into(), "`fast` is not a duration such as `30s`, `1m`, `1h`, `1d` (expected number at 0)".into()),
                ("from".into(), "2026-11-02T00:00:00Z is not before `to` (2026-11-01T00:00:00Z)".into()),
            ]
        );
    }

    #[test]
    fn relative_absolute_and_date_times() {
        let now = utc("2026-11-01T12:00:00Z");
        let plus2 = parse_offset("+02:00").unwrap();
        assert_eq!(parse_time("now-6h", now, plus2).unwrap(), utc("2026-11-01T06:00:00Z"));
        assert_eq!(parse_time("now+90s", now, plus2).unwrap(), utc("2026-11-01T12:01:30Z"));
        assert_eq!(parse_time("2026-11-01T01:30:00+02:00", now, plus2).unwrap(), utc("2026-10-31T23:30:00Z"));
        assert_eq!(parse_time("2026-11-01", now, plus2).unwrap(), utc("2026-10-31T22:00:00Z"));
        assert_eq!(
            parse_time("now-6x", now, plus2).unwrap_err(),
            "`now-6x`: `6x` is not a duration (unknown time unit \"x\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations))"
        );
        assert_eq!(parse_offset("-0530").unwrap().local_minus_utc(), -(5 * 3600 + 30 * 60));
        assert_eq!(render_time(utc("2026-10-31T22:00:00Z"), plus2), "2026-11-01T00:00:00+02:00");
    }

    #[test]
    fn bins_are_aligned_to_midnight_at_the_offset_and_cover_a_range_they_do_not_divide() {
        let utc0 = parse_offset("UTC").unwrap();
        // 00:01 to 00:10 in 3-minute bins: 00:00, 00:03, 00:06, 00:09 (the last one partly outside).
        let (start, n) = bins(utc("2026-11-01T00:01:00Z"), utc("2026-11-01T00:10:00Z"), Duration::from_secs(180), utc0);
        assert_eq!((start, n), (nanos(utc("2026-11-01T00:00:00Z")), 4));
        // Day bins at +02:00 start at 22:00 UTC the day before.
        let plus2 = parse_offset("+02:00").unwrap();
        let (start, n) = bins(utc("2026-10-31T22:00:00Z"), utc("2026-11-02T22:00:00Z"), Duration::from_secs(86400), plus2);
        assert_eq!((start, n), (nanos(utc("2026-10-31T22:00:00Z")), 2));
        assert_eq!(bin_that_fits(utc("2026-11-01T00:00:00Z"), utc("2026-11-02T00:00:00Z"), utc0, 100), Some(Duration::from_secs(15 * 60)));
        assert_eq!(render_bin(Duration::from_secs(90)), "1m30s");
    }
}
