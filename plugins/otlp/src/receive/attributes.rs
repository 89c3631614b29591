//! OTLP attribute values as JSON text, the form the rows carry them in (as `prometheus_scrape`
//! carries labels): SQL reads them with `json_get`-style functions or string matching, and every
//! sink stores a string.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use serde_json::{Map, Number, Value as Json};

/// `{"key": value, …}` with keys sorted (the same attributes are the same text, whatever order a
/// client sent them in, so rows group by it); a repeated key keeps its last value.
pub fn object(attributes: &[KeyValue]) -> String {
    object_value(attributes).to_string()
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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        assert_eq!(string_value(&attributes, "s"), Some("last wins"));
        assert_eq!(string_value(&attributes, "b"), None);
        assert_eq!(body(Some(&AnyValue { value: Some(Value::StringValue("plain".into())) })).as_deref(), Some("plain"));
        assert_eq!(body(Some(&AnyValue { value: Some(Value::IntValue(3)) })).as_deref(), Some("3"));
        assert_eq!(body(None), None);
        assert_eq!(id(&[]), None);
        assert_eq!(id(&[1, 0xff]).as_deref(), Some("01ff"));
    }
}
