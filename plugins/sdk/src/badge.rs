//! The badge API's messages, normalised to one row shape. The `badge_events` source reads them
//! from Redis or HTTP, and the broker sources (`format: badge`) from MQTT topics, where a topic's
//! last level is the channel.
//!
//! - `high-score-processor`: JSON with `event`; a `high-score` event expands to one row per score,
//!   from either list form (`[{"g","s","d"}]` or `[[g, s, d]]`, games as two-letter abbreviations
//!   or names).
//! - `achievement`: JSON `{"handle","name","description","points"}` → `message` = name.
//! - `fact`: JSON `{"fact","discord_handle","discord_user_id"}` → `message` = fact, `handle`.
//! - `community-message`: plain text → `message`.
//! - any other channel: JSON objects keep the known keys; other text lands in `message`.

use std::sync::Arc;

use crate::config::event_time_type;
use crate::dead_letter::DeadLetter;
use crate::json::json_kind;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::{Map, Value};

/// One normalised event row (`ts` and `channel` are added by the source).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BadgeRow {
    pub event: Option<String>,
    pub user_uuid: Option<String>,
    pub mac_address: Option<String>,
    pub game: Option<String>,
    pub score: Option<i64>,
    pub duration: Option<i64>,
    pub handle: Option<String>,
    pub points: Option<i64>,
    pub message: Option<String>,
}

/// The game of a high-score entry: abbreviations expanded, names kept.
pub fn game_name(g: &str) -> String {
    match g {
        "BO" => "Breakout",
        "LA" => "Labyrinth",
        "RO" => "Asteroids",
        "TT" => "Tappytime",
        other => other,
    }
    .to_string()
}

fn text(m: &Map<String, Value>, key: &str) -> Option<String> {
    match m.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Decode one message of `channel`. `Err` is the reason for the dead-letter output.
pub fn decode(channel: &str, payload: &str) -> Result<Vec<BadgeRow>, String> {
    if channel == "community-message" {
        return Ok(vec![BadgeRow { event: Some(channel.into()), message: Some(payload.to_string()), ..Default::default() }]);
    }
    let value: Value = match serde_json::from_str(payload) {
        Ok(v) => v,
        Err(e) if channel == "high-score-processor" || channel == "achievement" || channel == "fact" => {
            return Err(format!("channel `{channel}`: malformed JSON: {e}"))
        }
        // Unknown channels may carry plain text.
        Err(_) => return Ok(vec![BadgeRow { event: Some(channel.into()), message: Some(payload.to_string()), ..Default::default() }]),
    };
    let Value::Object(m) = value else {
        return Err(format!("channel `{channel}`: expected a JSON object, got {}", json_kind(&value)));
    };
    match channel {
        "achievement" => Ok(vec![BadgeRow {
            event: Some("achievement".into()),
            handle: text(&m, "handle"),
            points: m.get("points").and_then(int),
            message: text(&m, "name"),
            ..Default::default()
        }]),
        "fact" => Ok(vec![BadgeRow {
            event: Some("fact".into()),
            handle: text(&m, "discord_handle"),
            message: text(&m, "fact"),
            ..Default::default()
        }]),
        _ => high_score_processor(channel, &m),
    }
}

fn high_score_processor(channel: &str, m: &Map<String, Value>) -> Result<Vec<BadgeRow>, String> {
    let base = BadgeRow {
        event: text(m, "event"),
        user_uuid: text(m, "user_uuid"),
        mac_address: text(m, "mac_address"),
        handle: text(m, "handle"),
        points: m.get("points").and_then(int),
        message: text(m, "message"),
        ..Default::default()
    };
    if channel == "high-score-processor" && base.event.is_none() {
        return Err("channel `high-score-processor`: message has no `event`".into());
    }
    if base.event.as_deref() != Some("high-score") {
        return Ok(vec![base]);
    }
    let Some(scores) = m.get("high_scores") else {
        return Err("`high-score` event without `high_scores`".into());
    };
    let Value::Array(scores) = scores else {
        return Err(format!("`high_scores` must be a list, got {}", json_kind(scores)));
    };
    let mut rows = Vec::with_capacity(scores.len());
    for (i, s) in scores.iter().enumerate() {
        let (g, score, duration) = match s {
            Value::Array(a) if a.len() == 3 => (a[0].clone(), &a[1], &a[2]),
            Value::Object(o) => {
                (o.get("g").cloned().unwrap_or(Value::Null), o.get("s").unwrap_or(&Value::Null), o.get("d").unwrap_or(&Value::Null))
            }
            other => {
                return Err(format!(
                    "high_scores[{i}]: expected [game, score, duration] or {{\"g\",\"s\",\"d\"}}, got {}",
                    json_kind(other)
                ))
            }
        };
        let Value::String(g) = g else { return Err(format!("high_scores[{i}]: the game must be a string")) };
        let (Some(score), Some(duration)) = (int(score), int(duration)) else {
            return Err(format!("high_scores[{i}]: score and duration must be integers"));
        };
        rows.push(BadgeRow { game: Some(game_name(&g)), score: Some(score), duration: Some(duration), ..base.clone() });
    }
    Ok(rows)
}

/// The output schema: one row per event (per score for high-score lists).
pub fn badge_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("channel", DataType::Utf8, false),
        s("event"),
        s("user_uuid"),
        s("mac_address"),
        s("game"),
        i("score"),
        i("duration"),
        s("handle"),
        i("points"),
        s("message"),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// A received message: when, where from, what.
#[derive(Debug, Clone)]
pub struct Message {
    pub ts_us: i64,
    pub channel: String,
    pub payload: String,
}

/// Decode messages into a batch, plus dead letters for the ones that do not decode.
pub fn to_batch(messages: &[Message]) -> (RecordBatch, Vec<DeadLetter>) {
    to_batch_from(messages, |_| None)
}

/// [`to_batch`], each dead letter's reason led by where its message came from (`origin` of the
/// message's index: `topic site/3/fact`).
pub fn to_batch_from(messages: &[Message], origin: impl Fn(usize) -> Option<String>) -> (RecordBatch, Vec<DeadLetter>) {
    let mut rows: Vec<(&Message, BadgeRow)> = Vec::new();
    let mut dead = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match decode(&m.channel, &m.payload) {
            Ok(decoded) => rows.extend(decoded.into_iter().map(|r| (m, r))),
            Err(reason) => {
                let reason = match origin(i) {
                    Some(origin) => format!("{origin}: {reason}"),
                    None => reason,
                };
                dead.push(DeadLetter { payload: m.payload.clone(), reason })
            }
        }
    }
    let s = |f: fn(&BadgeRow) -> &Option<String>| Arc::new(StringArray::from_iter(rows.iter().map(|(_, r)| f(r).as_deref())));
    let i = |f: fn(&BadgeRow) -> Option<i64>| Arc::new(Int64Array::from_iter(rows.iter().map(|(_, r)| f(r))));
    let batch = RecordBatch::try_new(
        badge_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(m, _)| m.ts_us)).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(m, _)| m.channel.as_str()))),
            s(|r| &r.event),
            s(|r| &r.user_uuid),
            s(|r| &r.mac_address),
            s(|r| &r.game),
            i(|r| r.score),
            i(|r| r.duration),
            s(|r| &r.handle),
            i(|r| r.points),
            s(|r| &r.message),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(m, _)| m.payload.as_str()))),
        ],
    )
    .expect("columns match the badge schema");
    (batch, dead)
}

/// The channel of a message published to an MQTT topic: the topic's last level
/// (`site/hall-2/high-score-processor` → `high-score-processor`).
pub fn channel_of_topic(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(game: &str, score: i64, duration: i64) -> BadgeRow {
        BadgeRow {
            event: Some("high-score".into()),
            user_uuid: Some("u-1".into()),
            mac_address: Some("aa:bb".into()),
            game: Some(game.into()),
            score: Some(score),
            duration: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn both_high_score_formats_expand_to_one_row_per_score() {
        let lists = r#"{"user_uuid":"u-1","mac_address":"aa:bb","event":"high-score","high_scores":[["BO",1200,95],["TT",37,30]]}"#;
        let dicts = r#"{"user_uuid":"u-1","mac_address":"aa:bb","event":"high-score","high_scores":[{"g":"BO","s":1200,"d":95},{"g":"Tappytime","s":"37","d":30}]}"#;
        let expected = vec![hs("Breakout", 1200, 95), hs("Tappytime", 37, 30)];
        assert_eq!(decode("high-score-processor", lists).unwrap(), expected);
        assert_eq!(decode("high-score-processor", dicts).unwrap(), expected);
    }

    #[test]
    fn each_channel_keeps_its_meaning() {
        assert_eq!(
            decode("high-score-processor", r#"{"event":"challenge-check","user_uuid":"u","mac_address":"m","score_id":4711}"#).unwrap(),
            vec![BadgeRow {
                event: Some("challenge-check".into()),
                user_uuid: Some("u".into()),
                mac_address: Some("m".into()),
                ..Default::default()
            }]
        );
        assert_eq!(
            decode("achievement", r#"{"handle":"someone","name":"Rick Rolled","description":"…","points":1}"#).unwrap(),
            vec![BadgeRow {
                event: Some("achievement".into()),
                handle: Some("someone".into()),
                points: Some(1),
                message: Some("Rick Rolled".into()),
                ..Default::default()
            }]
        );
        assert_eq!(
            decode("fact", r#"{"fact":"Cats sleep 70% of their lives","discord_handle":"staff1","discord_user_id":"42"}"#).unwrap(),
            vec![BadgeRow {
                event: Some("fact".into()),
                handle: Some("staff1".into()),
                message: Some("Cats sleep 70% of their lives".into()),
                ..Default::default()
            }]
        );
        let text = "<@1> won the challenge against <@2> to a game of: Breakout with 120pts to 80pts";
        assert_eq!(decode("community-message", text).unwrap()[0].message.as_deref(), Some(text));
    }

    #[test]
    fn undecodable_messages_say_why() {
        assert!(decode("high-score-processor", "{oops").unwrap_err().starts_with("channel `high-score-processor`: malformed JSON: "));
        assert_eq!(decode("achievement", "[1]").unwrap_err(), "channel `achievement`: expected a JSON object, got an array");
        assert_eq!(
            decode("high-score-processor", r#"{"user_uuid":"u"}"#).unwrap_err(),
            "channel `high-score-processor`: message has no `event`"
        );
        assert_eq!(
            decode("high-score-processor", r#"{"event":"high-score","high_scores":[["BO","lots",3]]}"#).unwrap_err(),
            "high_scores[0]: score and duration must be integers"
        );
        assert_eq!(
            decode("high-score-processor", r#"{"event":"high-score","high_scores":7}"#).unwrap_err(),
            "`high_scores` must be a list, got a number"
        );
    }
}
