//! JSON payloads into Arrow rows of a declared schema, with per-line error isolation.
//!
//! Used by every source that receives JSON (files, HTTP, Kafka, Redis). The fastest path decodes
//! flat objects in one pass ([`flat`]); when it declines, the whole buffer goes to arrow-json; only
//! when that fails is the buffer decoded line by line, so one bad line is reported precisely and
//! never costs the good lines around it.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::reader::{Decoder, ReaderBuilder};

use crate::config::DeclaredSchema;

mod flat;
mod numbers;
pub mod shape;

use numbers::WholeNumbers;
pub use numbers::{exact_integer, Inexact};

/// A line that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number within the decoded text.
    pub line: usize,
    pub reason: String,
    pub raw: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// What [`JsonRows::decode_messages`] made of a list of messages.
#[derive(Debug)]
pub struct MessageRows {
    pub rows: RecordBatch,
    /// For each row, the index of its message.
    pub from: Vec<usize>,
    /// The messages that gave no row, in order.
    pub bad: Vec<MessageError>,
}

impl MessageRows {
    /// The rows with one more column, last: each row's message's label (its topic or subject).
    /// `schema` is [`JsonRows::schema_with_label`]'s.
    pub fn labelled<'a>(&self, schema: &SchemaRef, label: impl Fn(usize) -> &'a str) -> Result<RecordBatch, ArrowError> {
        let labels: ArrayRef = Arc::new(StringArray::from_iter_values(self.from.iter().map(|&i| label(i))));
        let mut columns = self.rows.columns().to_vec();
        columns.push(labels);
        RecordBatch::try_new(schema.clone(), columns)
    }
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError {
    /// Its index in the list decoded.
    pub message: usize,
    pub reason: String,
    pub raw: String,
}

/// Decodes JSON objects into batches of one declared schema.
#[derive(Debug, Clone)]
pub struct JsonRows {
    schema: SchemaRef,
    /// Columns declared `json`: any JSON value, stored as its text.
    json_columns: Vec<String>,
    /// Null values of this timestamp column are filled with the ingestion time.
    time_column: Option<String>,
    /// The integer and timestamp columns, judged exactly where arrow-json would round.
    whole_numbers: Option<WholeNumbers>,
}

/// Why a JSON document (a request body) gave no rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// Not JSON, or not rows of the declared schema: the reason names the line or element.
    Invalid(String),
    /// Its rows would take more memory than [`MAX_DECODED_PER_BYTE`] allows.
    TooLarge(String),
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocumentError::Invalid(m) | DocumentError::TooLarge(m) => f.write_str(m),
        }
    }
}

/// The rows decoded from a document take at most this many bytes per byte of it, besides the
/// string bytes they copy from it: a body of many empty objects for a wide schema would otherwise
/// take hundreds of times its size.
pub const MAX_DECODED_PER_BYTE: usize = 16;

impl JsonRows {
    pub fn new(declared: &DeclaredSchema, time_column: Option<&str>) -> Self {
        let schema = declared.arrow_schema();
        let time_column = time_column
            .filter(|c| matches!(schema.field_with_name(c).map(|f| f.data_type()), Ok(DataType::Timestamp(..))))
            .map(str::to_string);
        let whole_numbers = WholeNumbers::new(&schema);
        JsonRows { schema, json_columns: declared.json_columns(), time_column, whole_numbers }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn decoder(&self, batch_size: usize) -> Decoder {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(batch_size)
            .build_decoder()
            .expect("declared schemas only use types arrow-json decodes")
    }

    /// Decode newline-delimited JSON objects. Returns the good rows and every bad line.
    pub fn decode_lines(&self, text: &[u8]) -> (RecordBatch, Vec<LineError>) {
        if self.json_columns.is_empty() {
            // One flat object per line: one pass into the builders (it declines anything else).
            if let Some(batch) = flat::decode(&self.schema, text) {
                return (self.fill_time(batch), Vec::new());
            }
            if let Some(batch) = self.decode_whole(text) {
                return (self.fill_time(batch), Vec::new());
            }
        }
        let mut good = Vec::new();
        let mut errors = Vec::new();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            match self.decode_line(trimmed) {
                Ok(batch) => good.push(batch),
                Err(reason) => errors.push(LineError { line: i + 1, reason, raw: String::from_utf8_lossy(trimmed).into_owned() }),
            }
        }
        let batch = concat_batches(&self.schema, &good).expect("same schema");
        (self.fill_time(batch), errors)
    }

    /// The declared schema plus a text column `name`, last, for each message's label (a broker's
    /// topic or subject); the error says when the declared schema has that column already.
    pub fn schema_with_label(&self, name: &str, option: &str) -> Result<SchemaRef, String> {
        if self.schema.field_with_name(name).is_ok() {
            return Err(format!("the schema already has a column `{name}`; name the {option} column otherwise"));
        }
        let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(name, DataType::Utf8, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    /// One JSON object per message, as brokers deliver them (Kafka, NATS, MQTT). A newline inside
    /// a message can only be JSON whitespace, so it becomes a space and each message stays one
    /// line; an empty message is an error of its own. Returns the rows of the good messages in
    /// order, which message each row came from, and the bad messages by index.
    pub fn decode_messages<'a>(&self, payloads: impl IntoIterator<Item = &'a [u8]>) -> MessageRows {
        let mut text = Vec::new();
        let mut bad = Vec::new();
        let mut count = 0;
        for (i, p) in payloads.into_iter().enumerate() {
            count += 1;
            if p.trim_ascii().is_empty() {
                bad.push(MessageError { message: i, reason: "empty message".into(), raw: String::new() });
            } else {
                text.extend(p.iter().map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }));
            }
            text.push(b'\n');
        }
        let (rows, errors) = self.decode_lines(&text);
        bad.extend(errors.into_iter().map(|e| MessageError { message: e.line - 1, reason: e.reason, raw: e.raw }));
        bad.sort_by_key(|e| e.message);
        let mut failed = bad.iter().map(|e| e.message).peekable();
        let from = (0..count)
            .filter(|i| {
                let is_bad = failed.peek() == Some(i);
                if is_bad {
                    failed.next();
                }
                !is_bad
            })
            .collect();
        MessageRows { rows, from, bad }
    }

    /// arrow-json over the whole text. It reads a stream of JSON values, newlines or not: the batch
    /// counts only when it made exactly one row per line (`{…}{…}` on one line is one bad line, not
    /// two rows; found by the fuzzer in tests/it/hostile.rs).
    ///
    /// Only a text whose shape is safe reaches arrow-json (it prints an unexpected value
    /// recursively), and its integers are judged exactly afterwards; otherwise the line-by-line
    /// path names the line.
    fn decode_whole(&self, text: &[u8]) -> Option<RecordBatch> {
        shape::check(text).ok()?;
        let batch = self.decode_buffer(text).ok().flatten().filter(|batch| batch.num_rows() == non_blank_lines(text))?;
        if let Some(whole) = &self.whole_numbers {
            whole.check(text).ok()?;
        }
        Some(batch)
    }

    /// Fixed bytes one decoded row takes (values, offsets and validity; string bytes aside).
    fn row_width(&self) -> usize {
        self.schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Boolean => 2,
                DataType::Utf8 => 5,
                _ => 9,
            })
            .sum()
    }

    /// A request body: one object (pretty-printed or not), an array of objects, or NDJSON. All
    /// rows or none; the error names the first bad line or element.
    pub fn decode_document(&self, body: &[u8]) -> Result<RecordBatch, DocumentError> {
        let start = body.iter().position(|b| !b.is_ascii_whitespace());
        let (lines, element_numbers) = match start.map(|i| body[i]) {
            None => return Ok(RecordBatch::new_empty(self.schema.clone())),
            Some(b'[') => {
                let invalid = |m: String| DocumentError::Invalid(format!("malformed JSON array: {m}"));
                let elements =
                    shape::array_elements(body).map_err(|e| invalid(format!("{} at line {}", e.reason, shape::line_of(body, e.offset))))?;
                serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| invalid(e.to_string()))?;
                (Cow::Owned(one_per_line(body, &elements)), true)
            }
            // One pretty-printed object is one row.
            // (serde's check first: on NDJSON it stops at the second line, where the shape check would read
            // it all.)
            Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => {
                shape::check(body).map_err(|e| DocumentError::Invalid(format!("line {}: {}", shape::line_of(body, e.offset), e.reason)))?;
                (Cow::Owned(one_per_line(body, std::slice::from_ref(&(0..body.len())))), false)
            }
            Some(_) => (Cow::Borrowed(body), false),
        };
        let rows = non_blank_lines(&lines);
        let need = rows.saturating_mul(self.row_width());
        if need > MAX_DECODED_PER_BYTE.saturating_mul(body.len()) {
            return Err(DocumentError::TooLarge(format!(
                "its {rows} rows would take {need} bytes decoded, more than {MAX_DECODED_PER_BYTE} times the body's {} bytes (the limit); send fewer, fuller rows per request",
                body.len()
            )));
        }
        let (batch, errors) = self.decode_lines(&lines);
        let name = |e: &LineError| if element_numbers { format!("element {}: {}", e.line - 1, e.reason) } else { e.to_string() };
        match errors.as_slice() {
            [] => Ok(batch),
            [only] => Err(DocumentError::Invalid(name(only))),
            [first, rest @ ..] => Err(DocumentError::Invalid(format!(
                "{} (and {} more bad {})",
                name(first),
                rest.len(),
                if element_numbers { "elements" } else { "lines" }
            ))),
        }
    }

    /// Decode a list of JSON values (a request body that was an array, say). All or nothing:
    /// the first bad element is reported with its 0-based index.
    pub fn decode_values(&self, values: &[serde_json::Value]) -> Result<RecordBatch, String> {
        let mut batches = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let line = serde_json::to_vec(v).expect("a JSON value serializes");
            batches.push(self.decode_line(&line).map_err(|e| format!("element {i}: {e}"))?);
        }
        let batch = concat_batches(&self.schema, &batches).expect("same schema");
        Ok(self.fill_time(batch))
    }

    fn decode_buffer(&self, buf: &[u8]) -> Result<Option<RecordBatch>, String> {
        let mut decoder = self.decoder(8192);
        let mut batches = Vec::new();
        let mut rest = buf;
        loop {
            // `decode` stops early once a batch is full; flush it and go on.
            let n = decoder.decode(rest).map_err(clean_arrow_error)?;
            rest = &rest[n..];
            match decoder.flush().map_err(clean_arrow_error)? {
                Some(b) => batches.push(b),
                None if rest.is_empty() => break,
                None => {}
            }
            if rest.is_empty() {
                break;
            }
        }
        Ok(Some(concat_batches(&self.schema, &batches).map_err(|e| e.to_string())?))
    }

    fn decode_line(&self, line: &[u8]) -> Result<RecordBatch, String> {
        shape::check(line).map_err(|e| e.reason)?;
        if let Some(whole) = &self.whole_numbers {
            whole.check(line)?;
        }
        let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("malformed JSON: {e}"))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err(format!("expected a JSON object, got {}", json_kind(&value)));
        };
        for col in &self.json_columns {
            if let Some(v) = obj.get_mut(col) {
                if !v.is_null() && !v.is_string() {
                    *v = serde_json::Value::String(v.to_string());
                }
            }
        }
        let mut decoder = self.decoder(1);
        decoder.serialize(&[obj]).map_err(clean_arrow_error)?;
        Ok(decoder.flush().map_err(clean_arrow_error)?.expect("one row was serialized"))
    }

    /// Null event times become the ingestion time, so every row has one.
    fn fill_time(&self, batch: RecordBatch) -> RecordBatch {
        let Some(col) = &self.time_column else { return batch };
        let idx = self.schema.index_of(col).expect("checked in new");
        let ts = batch.column(idx);
        if ts.null_count() == 0 {
            return batch;
        }
        let ts = ts.as_any().downcast_ref::<TimestampMicrosecondArray>().expect("µs timestamps");
        let now = crate::now_us();
        let filled: TimestampMicrosecondArray =
            ts.iter().map(|v| Some(v.unwrap_or(now))).collect::<TimestampMicrosecondArray>().with_timezone("UTC");
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        cols[idx] = Arc::new(filled);
        RecordBatch::try_new(self.schema.clone(), cols).expect("same schema")
    }
}

/// Each range of `text` on a line of its own, its line breaks made spaces (outside strings they are
/// whitespace; inside, [`shape`] has refused them).
fn one_per_line(text: &[u8], ranges: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + ranges.len());
    for r in ranges {
        out.extend(text[r.clone()].iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
        out.push(b'\n');
    }
    out
}

/// Lines holding more than whitespace. The newlines are found with SIMD (`memchr`); a line's first
/// byte is almost always `{`, so the blank check stops there.
fn non_blank_lines(text: &[u8]) -> usize {
    let mut count = 0;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', text).chain(std::iter::once(text.len())) {
        count += usize::from(text[start..end].iter().any(|b| !b.is_ascii_whitespace()));
        start = end + 1;
    }
    count
}

/// "a string", "an object", …: what a JSON value is, for error messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// arrow's messages start with "Json error: "; the caller adds its own context.
fn clean_arrow_error(e: datafusion::arrow::error::ArrowError) -> String {
    let s = e.to_string();
    s.strip_prefix("Json error: ").unwrap_or(&s).to_string()
}

/// The first match of JSONPath `path` in `doc` as [`json_text`]; `Err` names an invalid path.
/// Used by `json_path()` and the probe extractors and assertions.
pub fn first_match_in(doc: &serde_json::Value, path: &str) -> Result<Option<String>, String> {
    let found = jsonpath_lib::select(doc, path).map_err(|e| format!("invalid JSONPath `{path}`: {e:?}"))?;
    Ok(found.first().map(|v| json_text(v)))
}

/// A JSON value as text the way Tributary shows extracted values: strings unquoted, everything
/// else as its JSON (`42`, `true`, `{"a":1}`). Used by `json_path()` and the probe extractors.
pub fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_blank_lines_counts_like_splitting_and_trimming() {
        for text in ["", "\n", "{}", "{}\n", "{}\n\n  \t\n{}", " {}\r\n{} \n   ", "\n\n{}"] {
            let by_split = text.as_bytes().split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count();
            assert_eq!(super::non_blank_lines(text.as_bytes()), by_split, "{text:?}");
        }
        assert_eq!(super::non_blank_lines(b"{}\n \n{}\n"), 2);
    }

    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    fn rows() -> JsonRows {
        let declared: DeclaredSchema = serde_yaml::from_str("{ts: timestamp, user: string, score: int, extra: json}").unwrap();
        JsonRows::new(&declared, Some("ts"))
    }

    #[test]
    fn messages_keep_their_index_and_a_newline_inside_one_is_whitespace() {
        let messages: [&[u8]; 5] = [
            b"{\"user\":\"a\",\n\"score\":1}",
            b"  ",
            b"{\"user\":\"b\",\"score\":\"high\"}",
            b"{\"user\":\"c\",\"score\":3}\r\n",
            b"{\"user\":\"d\"",
        ];
        let decoded = rows().decode_messages(messages);
        let users: Vec<_> = decoded.rows.column(1).as_string::<i32>().iter().flatten().collect();
        assert_eq!(users, ["a", "c"]);
        assert_eq!(decoded.from, [0, 3]);
        let bad: Vec<(usize, &str)> = decoded.bad.iter().map(|e| (e.message, e.raw.as_str())).collect();
        assert_eq!(bad, [(1, ""), (2, r#"{"user":"b","score":"high"}"#), (4, r#"{"user":"d""#)]);
        assert_eq!(decoded.bad[0].reason, "empty message");
    }

    #[test]
    fn bad_lines_are_reported_and_good_lines_kept() {
        let text = b"{\"ts\":\"2026-11-22T10:00:00Z\",\"user\":\"a\",\"score\":1}\n{not json\n\n{\"user\":\"b\",\"score\":\"high\"}\n[1,2]\n{\"ts\":\"2026-11-22T10:00:02Z\",\"user\":\"c\",\"score\":3,\"extra\":{\"k\":[1]}}\n";
        let (batch, errors) = rows().decode_lines(text);
        assert_eq!(batch.num_rows(), 2);
        let users: Vec<_> = batch.column(1).as_string::<i32>().iter().flatten().collect();
        assert_eq!(users, ["a", "c"]);
        let scores: Vec<_> = batch.column(2).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(scores, [1, 3]);
        assert_eq!(batch.column(3).as_string::<i32>().value(1), r#"{"k":[1]}"#);
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4, 5]);
        assert!(errors[0].reason.starts_with("malformed JSON: key must be a string"), "{}", errors[0].reason);
        assert!(errors[1].reason.contains("score"), "names the field: {}", errors[1].reason);
        assert_eq!(errors[2].reason, "expected a JSON object, got an array");
        assert_eq!(errors[1].raw, r#"{"user":"b","score":"high"}"#);
    }

    /// Two objects on one line are one bad line, on either path (the fast path used to make
    /// two rows of them: one Kafka message became two rows).
    #[test]
    fn two_objects_on_one_line_are_one_bad_line() {
        let declared: DeclaredSchema = serde_yaml::from_str("{n: int}").unwrap();
        let (batch, errors) = JsonRows::new(&declared, None).decode_lines(b"{\"n\":1}\n{\"n\":2}{}\n{\"n\":3}\n");
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().values().to_vec(), [1, 3]);
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].raw.as_str()), (2, r#"{"n":2}{}"#));
        assert!(errors[0].reason.starts_with("malformed JSON: trailing characters"), "{}", errors[0].reason);
    }

    /// arrow-json alone on `text`, as `decode_lines` uses it (None: it refused the text or did not
    /// make one row per line).
    fn arrow_json(schema: &SchemaRef, text: &[u8]) -> Option<RecordBatch> {
        JsonRows { schema: schema.clone(), json_columns: Vec::new(), time_column: None, whole_numbers: WholeNumbers::new(schema) }
            .decode_whole(text)
    }

    fn flat_schema() -> SchemaRef {
        let declared: DeclaredSchema = serde_yaml::from_str("{ts: timestamp, s: string, n: int, x: float, b: bool}").unwrap();
        declared.arrow_schema()
    }

    /// One generated line: keys in any order, some missing, null, undeclared keys with nested
    /// values, escapes, raw Unicode, odd spacing, and forms the flat decoder declines.
    fn generated_line(rng: &mut impl rand::Rng) -> String {
        use rand::seq::IndexedRandom;
        let times = [
            "\"2025-11-24T10:00:00Z\"",
            "\"1969-12-31T23:59:59.999999Z\"",
            "\"2024-02-29T00:00:00.5+01:30\"",
            "\"2000-01-01T12:34:56.123456789-07:00\"",
            "\"2100-12-31T23:59:59Z\"",
            "1764000000000000",
            "-5",
            "null",
            "\"2025-02-29T00:00:00Z\"",
            "\"2025-11-24 10:00:00Z\"",
            "\"2025-11-24T10:00:00\"",
            "1.5e3",
            "\"1764000000\"",
        ];
        let strings = [
            r#""plain""#,
            r#""""#,
            r#""with \"quotes\" and \\ and \/""#,
            r#""tab\tnew\nline""#,
            r#""\u00e9t\u00E9""#,
            "\"naïve ☃\"",
            r#""\ud83d\ude00""#,
            r#""\q""#,
            "null",
            "12",
            "true",
            r#"{"nested":1}"#,
        ];
        let ints =
            ["0", "-0", "42", "-9007199254740993", "123456789012345678", "1234567890123456789", "1.0", "1e2", "\"7\"", "null", "01", "-"];
        let floats = ["0", "1.5", "-2.25e-3", "1E10", "3", "null", "\"2.5\"", "1e400", ".5", "NaN"];
        let bools = ["true", "false", "null", "\"true\"", "1"];
        let extras = [r#""x""#, "[1, {\"a\": [true, null]}, \"s\"]", "{}", "[]", "-1.5e+7", r#"{"k": {"d": [[]]}}"#, "[1,]", "tru"];
        let mut fields: Vec<(&str, String)> = vec![
            ("ts", times.choose(rng).unwrap().to_string()),
            ("s", strings.choose(rng).unwrap().to_string()),
            ("n", ints.choose(rng).unwrap().to_string()),
            ("x", floats.choose(rng).unwrap().to_string()),
            ("b", bools.choose(rng).unwrap().to_string()),
            ("extra", extras.choose(rng).unwrap().to_string()),
        ];
        fields.retain(|_| rng.random_bool(0.85));
        if rng.random_bool(0.3) {
            let i = rng.random_range(0..=fields.len());
            fields.insert(i, ("other", extras.choose(rng).unwrap().to_string()));
        }
        if rng.random_bool(0.2) {
            fields.reverse();
        }
        let space = [" ", "", "\t"];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}\"{k}\"{}:{}{v}", space.choose(rng).unwrap(), space.choose(rng).unwrap(), space.choose(rng).unwrap()))
            .collect();
        let end = ["", " ", "\r"].choose(rng).unwrap();
        format!("{{{}}}{end}", body.join(","))
    }

    /// Whenever the flat decoder decodes a text, arrow-json decodes it to the very same batch; and it
    /// declines nothing of the plain forms telemetry is made of.
    #[test]
    fn the_flat_decoder_agrees_with_arrow_json() {
        use rand::{Rng, SeedableRng};
        let schema = flat_schema();
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let (mut decoded, mut declined) = (0, 0);
        for _ in 0..20_000 {
            let lines: Vec<String> = (0..rng.random_range(1..4)).map(|_| generated_line(&mut rng)).collect();
            let text = lines.join(if rng.random_bool(0.1) { "\n\n" } else { "\n" });
            match super::flat::decode(&schema, text.as_bytes()) {
                Some(flat) => {
                    decoded += 1;
                    let arrow = arrow_json(&schema, text.as_bytes());
                    assert_eq!(Some(&flat), arrow.as_ref(), "{text}");
                }
                None => declined += 1,
            }
        }
        // Both outcomes happen often, so both sides of the comparison are exercised (most texts
        // hold one of the generator's many declined forms).
        assert!(decoded > 400 && declined > 400, "decoded {decoded}, declined {declined}");

        let plain = "{\"ts\":\"2025-11-24T10:00:00.25Z\",\"s\":\"a \\\"b\\\" \\u00e9\",\"n\":-3,\"x\":1.5e2,\"b\":true,\"more\":[1,{\"y\":null}]}\n\
                     \r\n{\"n\":7,\"ts\":1764000000000000,\"s\":null}\n{}";
        let flat = super::flat::decode(&schema, plain.as_bytes()).expect("plain lines are decoded");
        assert_eq!(Some(&flat), arrow_json(&schema, plain.as_bytes()).as_ref());
        assert_eq!(flat.num_rows(), 3);
        assert_eq!(flat.column(1).as_string::<i32>().value(0), "a \"b\" é");
    }

    /// Random instants from 1900 to 2200, with 0 to 9 fraction digits and offsets east and west,
    /// read to the same microsecond as arrow-json reads them.
    #[test]
    fn the_flat_decoder_reads_times_as_arrow_json_does() {
        use chrono::{FixedOffset, TimeZone};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(30);
        let schema = flat_schema();
        let mut text = String::new();
        for _ in 0..3000 {
            let secs = rng.random_range(-2_208_988_800i64..7_258_118_400);
            let nanos = rng.random_range(0..1_000_000_000u32);
            let offset = FixedOffset::east_opt(rng.random_range(-23 * 60..=23 * 60) * 60).unwrap();
            let local = offset.timestamp_opt(secs, nanos).unwrap();
            let digits = rng.random_range(0..=9usize);
            let fraction = if digits == 0 { String::new() } else { format!(".{nanos:09}")[..=digits].to_string() };
            let zone = if offset.local_minus_utc() == 0 && rng.random_bool(0.5) { "Z".to_string() } else { offset.to_string() };
            text.push_str(&format!("{{\"ts\":\"{}{fraction}{zone}\"}}\n", local.format("%Y-%m-%dT%H:%M:%S")));
        }
        let flat = super::flat::decode(&schema, text.as_bytes()).expect("RFC 3339 times are the flat decoder's");
        assert_eq!(Some(&flat), arrow_json(&schema, text.as_bytes()).as_ref());
    }

    #[test]
    fn the_flat_decoder_declines_what_is_arrow_json_s_to_judge() {
        let schema = flat_schema();
        for text in [
            r#"{"n":1,"n":2}"#,                 // duplicate key
            r#"{"n":"7"}"#,                     // a number in quotes
            "{\"n\":1,\n\"s\":\"a\"}",          // an object over two lines
            r#"{"n":1}{"n":2}"#,                // two objects on one line
            r#"{"s":"\ud83d\ude00"}"#,          // a surrogate pair
            r#"{"ts":"2025-11-24 10:00:00Z"}"#, // another time format
            r#"[{"n":1}]"#,                     // not an object
            r#"{"n":1"#,                        // truncated
            "{\"s\":\"a\nb\"}",                 // a newline inside a string
            "{\"s\":\"tab\tinside\"}",          // a raw control character in a string
            "{\"s\":\"a long string, past the first 32 bytes: \u{1f}\"}",
        ] {
            assert!(super::flat::decode(&schema, text.as_bytes()).is_none(), "{text}");
        }
        // A raw newline in a string makes two bad lines, as it always did, not one row.
        let declared: DeclaredSchema = serde_yaml::from_str("{s: string, n: int}").unwrap();
        let (batch, errors) = JsonRows::new(&declared, None).decode_lines(b"{\"s\":\"a\nb\"}\n{\"n\":1}");
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2]);
        assert!(super::flat::decode(&schema, b"{\"s\":\"\xff\"}").is_none(), "invalid UTF-8");
    }

    #[test]
    fn the_fast_path_decodes_more_rows_than_one_arrow_batch() {
        let declared: DeclaredSchema = serde_yaml::from_str("{n: int, s: string}").unwrap();
        let text: String = (0..20_000).map(|i| format!("{{\"n\":{i},\"s\":\"v{i}\"}}\n")).collect();
        let (batch, errors) = JsonRows::new(&declared, None).decode_lines(text.as_bytes());
        assert!(errors.is_empty());
        assert_eq!(batch.num_rows(), 20_000);
        let n = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!((n.value(0), n.value(8192), n.value(19_999)), (0, 8192, 19_999));
        assert_eq!(batch.column(1).as_string::<i32>().value(12_345), "v12345");
    }

    #[test]
    fn missing_event_time_is_filled_with_ingestion_time() {
        let before = chrono::Utc::now().timestamp_micros();
        let (batch, errors) = rows().decode_lines(b"{\"user\":\"a\",\"score\":1}");
        assert!(errors.is_empty());
        let ts = batch.column(0).as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>().value(0);
        assert!(ts >= before && ts <= chrono::Utc::now().timestamp_micros());
    }

    #[test]
    fn arrays_decode_all_or_nothing() {
        let ok: Vec<serde_json::Value> = serde_json::from_str(r#"[{"user":"a","score":1},{"user":"b","score":2}]"#).unwrap();
        assert_eq!(rows().decode_values(&ok).unwrap().num_rows(), 2);
        let bad: Vec<serde_json::Value> = serde_json::from_str(r#"[{"user":"a","score":1},{"user":"b","score":true}]"#).unwrap();
        let err = rows().decode_values(&bad).unwrap_err();
        assert!(err.starts_with("element 1: ") && err.contains("score"), "{err}");
    }
}
