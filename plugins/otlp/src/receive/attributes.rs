//! OTLP attribute values as JSON text, the form the rows carry them in (as `prometheus_scrape`
//! carries labels): SQL reads them with `json_get`-style functions or string matching, and every
//! sink stores a string.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use std::fmt::Write;

use serde_json::{Map, Number, Value as Json};

/// `{"key": value, …}` with keys sorted (the same attributes are the same text, whatever order a
/// client sent them in, so rows group by it); a repeated key keeps its last value.
pub fn object(attributes: &[KeyValue]) -> String {
    let mut out = String::new();
    write_object(attributes, &mut out);
    out
}

/// [`object`], appended to `out`. Written straight from the request, as [`object_value`]'s
/// `to_string` would write it: building a JSON map per data point first (a map, its keys and
/// values copied, then the text) was most of the receiver's allocations.
pub fn write_object(attributes: &[KeyValue], out: &mut String) {
    out.push('{');
    // Already in order without repeats (what an SDK sends for a fixed attribute set), or sorted
    // here, stably, so that of a repeated key the last received is the last one and is kept.
    if attributes.windows(2).all(|pair| pair[0].key < pair[1].key) {
        for (i, kv) in attributes.iter().enumerate() {
            write_member(i > 0, kv, out);
        }
    } else {
        let mut sorted: Vec<&KeyValue> = attributes.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let last_of_each = sorted.iter().enumerate().filter(|(i, kv)| sorted.get(i + 1).is_none_or(|next| next.key != kv.key));
        for (n, (_, kv)) in last_of_each.enumerate() {
            write_member(n > 0, kv, out);
        }
    }
    out.push('}');
}

fn write_member(comma: bool, kv: &KeyValue, out: &mut String) {
    if comma {
        out.push(',');
    }
    write_string(&kv.key, out);
    out.push(':');
    write_value(kv.value.as_ref(), out);
}

/// What [`json`] gives, written as serde_json writes it.
fn write_value(value: Option<&AnyValue>, out: &mut String) {
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(Value::StringValueStrindex(_)) => out.push_str("null"),
        Some(Value::StringValue(s)) => write_string(s, out),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::DoubleValue(f)) => match Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => write_string(&f.to_string(), out),
        },
        Some(Value::BytesValue(b)) => {
            out.push('"');
            write_hex(b, out);
            out.push('"');
        }
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(Some(v), out);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(l)) => write_object(&l.values, out),
    }
}

/// A JSON string literal, escaped as serde_json escapes it.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `plain..i` ends on a character boundary.
        out.push_str(&s[plain..i]);
        plain = i + 1;
        match escape {
            "" => {
                let _ = write!(out, "\\u{byte:04x}");
            }
            escape => out.push_str(escape),
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// [`object`] as a JSON value, to nest in another.
pub fn object_value(attributes: &[KeyValue]) -> Json {
    Json::Object(map(attributes))
}

/// The value of `key`, when it is a string (`service.name`).
pub fn string_value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().rev().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

/// A log body: a string as itself, anything else as JSON; `None` when absent.
pub fn body(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => Some(json(value).to_string()),
    }
}

fn map(attributes: &[KeyValue]) -> Map<String, Json> {
    let mut sorted: Vec<&KeyValue> = attributes.iter().collect();
    // Stable, so among equal keys the last received stays last and wins the insert below.
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut map = Map::new();
    for kv in sorted {
        map.remove(&kv.key);
        map.insert(kv.key.clone(), json(kv.value.as_ref()));
    }
    map
}

/// Bytes are hex (as OTLP/JSON writes trace ids); a float that JSON cannot hold (NaN, ±inf) is
/// its name as a string; an empty value is `null`.
fn json(value: Option<&AnyValue>) -> Json {
    match value.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::Number((*i).into()),
        Some(Value::DoubleValue(f)) => Number::from_f64(*f).map(Json::Number).unwrap_or_else(|| Json::String(f.to_string())),
        Some(Value::BytesValue(b)) => Json::String(hex(b)),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(|v| json(Some(v))).collect()),
        Some(Value::KvlistValue(l)) => Json::Object(map(&l.values)),
        // An index into the profiles signal's string table, which other signals do not carry.
        Some(Value::StringValueStrindex(_)) => Json::Null,
    }
}

/// Lower-case hex; `None` for an empty id (OTLP's "absent").
pub fn id(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| hex(bytes))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    write_hex(bytes, &mut out);
    out
}

fn write_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    #[test]
    fn every_value_kind_has_one_json_form() {
        let attributes = vec![
            kv("s", Value::StringValue("a\"b".into())),
            kv("b", Value::BoolValue(true)),
            kv("i", Value::IntValue(-9_007_199_254_740_993)),
            kv("f", Value::DoubleValue(0.5)),
            kv("nan", Value::DoubleValue(f64::NAN)),
            kv("bytes", Value::BytesValue(vec![0, 0xab])),
            kv(
                "list",
                Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::IntValue(1)) }, AnyValue { value: None }] }),
            ),
            kv("map", Value::KvlistValue(KeyValueList { values: vec![kv("k", Value::StringValue("v\"w".into()))] })),
            KeyValue { key: "empty".into(), value: None, ..Default::default() },
            kv("s", Value::StringValue("last wins".into())),
        ];
        assert_eq!(
            object(&attributes),
            r#"{"b":true,"bytes":"00ab","empty":null,"f":0.5,"i":-9007199254740993,"list":[1,null],"map":{"k":"v\"w"},"nan":"NaN","s":"last wins"}"#
        );
        assert_eq!(object(&attributes), object_value(&attributes).to_string(), "the writer and serde_json agree");
        assert_eq!(string_value(&attributes, "s"), Some("last wins"));
        assert_eq!(string_value(&attributes, "b"), None);
        assert_eq!(body(Some(&AnyValue { value: Some(Value::StringValue("plain".into())) })).as_deref(), Some("plain"));
        assert_eq!(body(Some(&AnyValue { value: Some(Value::IntValue(3)) })).as_deref(), Some("3"));
        assert_eq!(body(None), None);
        assert_eq!(id(&[]), None);
        assert_eq!(id(&[1, 0xff]).as_deref(), Some("01ff"));
    }

    /// The text is what the rows group by, so the direct writer must give serde_json's text, byte
    /// for byte, whatever a client sends: every ASCII character (controls escaped), other
    /// scripts, floats of every form, nesting, keys in order, out of order and repeated.
    #[test]
    fn the_direct_writer_writes_what_serde_json_writes() {
        let ascii: String = (0u8..0x80).map(char::from).collect();
        let strings = [ascii.as_str(), "", "plain", "é∑😀", "\u{7f}\u{80}\u{2028}", "a\"b\\c\u{1}"];
        let floats =
            [0.0, -0.0, 1.0, 0.1, 1e20, 1e21, 1.5e-7, -2.5e300, f64::MAX, f64::MIN_POSITIVE, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let mut values: Vec<Value> = strings.iter().map(|s| Value::StringValue(s.to_string())).collect();
        values.extend(floats.map(Value::DoubleValue));
        values.extend([i64::MIN, -1, 0, i64::MAX].map(Value::IntValue));
        values.extend([Value::BoolValue(false), Value::BytesValue(vec![]), Value::BytesValue((0..=255).collect())]);
        let nested = Value::KvlistValue(KeyValueList {
            values: vec![
                kv("z", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(values[3].clone()) }] })),
                kv("a", values[0].clone()),
            ],
        });
        values.push(nested);
        for (i, value) in values.iter().enumerate() {
            let one = [kv(strings[i % strings.len()], value.clone())];
            assert_eq!(object(&one), object_value(&one).to_string(), "value {value:?}");
        }
        let in_order: Vec<KeyValue> = values.iter().enumerate().map(|(i, v)| kv(&format!("k{i:03}"), v.clone())).collect();
        let mut shuffled = in_order.clone();
        shuffled.reverse();
        shuffled.push(kv("k001", Value::StringValue("repeated, kept".into())));
        shuffled.insert(0, kv("k002", Value::StringValue("repeated, dropped".into())));
        for attributes in [&in_order, &shuffled] {
            assert_eq!(object(attributes), object_value(attributes).to_string());
        }
        assert!(object(&shuffled).contains(r#""k001":"repeated, kept""#));
        assert!(!object(&shuffled).contains("repeated, dropped"));
    }
}
