//! Webex time and ID conventions shared by the source and the simulator.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Any ISO-8601 form the API (or the legacy shapes) use — with or without a fraction, `Z` or an
/// offset, or no zone at all (taken as UTC) — as UTC.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"].iter().find_map(|f| NaiveDateTime::parse_from_str(text, f).ok()).map(|t| t.and_utc())
}

/// A JSON time value as RFC 3339 UTC text (what the declared `timestamp` columns read), or
/// `None` when it is missing or not a time.
pub fn json_time(v: &Value) -> Option<String> {
    v.as_str().and_then(parse_time).map(rfc3339)
}

/// Microsecond RFC 3339 in UTC (`2026-11-22T10:00:00Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The form the API's `from` / `to` parameters take: seconds, `Z`.
pub fn query_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An ID as a key: the API pads the same base64 ID with `=` in some responses and not in others.
pub fn id_key(id: &str) -> String {
    id.trim_end_matches('=').to_string()
}
