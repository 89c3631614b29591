//! Message bodies: rows as JSON objects, or exactly the API status monitor's message so its
//! existing consumers keep working.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema, TimestampMicrosecondType};
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::ConfigError;

/// Columns the `api_status_monitor` format reads; `value`/`log`, `error`, `error_kind` and `in_sla`
/// are optional.
const REQUIRED: [(&str, &str); 6] = [
    ("site", "string"),
    ("endpoint", "string"),
    ("status_code", "integer"),
    ("response_time_ms", "integer"),
    ("sla_ms", "integer"),
    ("ts", "timestamp"),
];

pub fn check_api_status_columns(schema: &Schema) -> Result<(), ConfigError> {
    for (name, kind) in REQUIRED {
        let ok = match schema.field_with_name(name).map(|f| f.data_type().clone()) {
            Ok(DataType::Utf8) => kind == "string",
            Ok(DataType::Int64) => kind == "integer",
            Ok(DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, _)) => kind == "timestamp",
            _ => false,
        };
        if !ok {
            return Err(ConfigError::at(
                "format",
                format!("`api_status_monitor` needs a {kind} column `{name}` in the input (the site_probe source's columns fit)"),
            ));
        }
    }
    Ok(())
}

/// Python's `json.dumps` string form (ASCII only, `\uXXXX` escapes), as the original producer wrote.
fn py_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `html.escape(s, quote=True)`, which the original applied to the extracted value.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// One message per row, in the original's key order and spacing:
/// `{"site": …, "endpoint": …, "status_code": …, "log": …, "error": …, "response_time_ms": …,
/// "sla_ms": …, "in_sla": …, "timestamp": <epoch seconds>}`. A timeout's error is `"TIMEOUT"`.
pub fn api_status_messages(batch: &RecordBatch) -> Vec<String> {
    let text = |name: &str| batch.column_by_name(name).filter(|c| c.data_type() == &DataType::Utf8).map(|c| c.as_string::<i32>().clone());
    let int = |name: &str| batch.column_by_name(name).expect("checked at build").as_primitive::<Int64Type>().clone();
    let (site, endpoint) = (text("site").expect("checked"), text("endpoint").expect("checked"));
    let (status, rt, sla) = (int("status_code"), int("response_time_ms"), int("sla_ms"));
    let ts = batch.column_by_name("ts").expect("checked").as_primitive::<TimestampMicrosecondType>().clone();
    let value = text("value").or_else(|| text("log"));
    let error = text("error");
    let kind = text("error_kind");
    let in_sla = batch.column_by_name("in_sla").filter(|c| c.data_type() == &DataType::Boolean).map(|c| c.as_boolean().clone());
    let get =
        |a: &Option<datafusion::arrow::array::StringArray>, i: usize| a.as_ref().filter(|a| a.is_valid(i)).map(|a| a.value(i).to_string());
    (0..batch.num_rows())
        .map(|i| {
            let error_text = match (get(&kind, i).as_deref(), get(&error, i)) {
                (Some("timeout"), _) => "TIMEOUT".to_string(),
                (_, Some(e)) => e,
                _ => String::new(),
            };
            let within = match &in_sla {
                Some(a) if a.is_valid(i) => a.value(i),
                _ => rt.value(i) <= sla.value(i),
            };
            let mut m = String::with_capacity(256);
            m.push_str("{\"site\": ");
            py_json_string(if site.is_valid(i) { site.value(i) } else { "" }, &mut m);
            m.push_str(", \"endpoint\": ");
            py_json_string(if endpoint.is_valid(i) { endpoint.value(i) } else { "" }, &mut m);
            m.push_str(&format!(", \"status_code\": {}, \"log\": ", status.value(i)));
            py_json_string(&html_escape(&get(&value, i).unwrap_or_default()), &mut m);
            m.push_str(", \"error\": ");
            py_json_string(&error_text, &mut m);
            m.push_str(&format!(
                ", \"response_time_ms\": {}, \"sla_ms\": {}, \"in_sla\": {}, \"timestamp\": {}}}",
                rt.value(i),
                sla.value(i),
                if within { "true" } else { "false" },
                ts.value(i).div_euclid(1_000_000)
            ));
            m
        })
        .collect()
}

/// Rows as JSON objects (nulls omitted), one per message.
pub fn json_messages(batch: &RecordBatch) -> Vec<String> {
    rows_as_json(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_compatible_escaping() {
        let mut s = String::new();
        py_json_string("Tōkyō \"JPX\"\n😀", &mut s);
        assert_eq!(s, r#""T\u014dky\u014d \"JPX\"\n\ud83d\ude00""#);
        assert_eq!(html_escape(r#"<b>"A&B's"</b>"#), "&lt;b&gt;&quot;A&amp;B&#x27;s&quot;&lt;/b&gt;");
    }
}
