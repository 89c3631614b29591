//! `json_path(text, path)`: the first match of a JSONPath expression in a JSON text, as text.
//! Strings come back unquoted; other values as their JSON. NULL when the text is not JSON, the
//! path matches nothing, or either argument is NULL. An invalid path is an error naming it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use tributary_sdk::json::{first_match_in, json_text};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonPathUdf {
    signature: Signature,
}

impl JsonPathUdf {
    pub fn new() -> Self {
        JsonPathUdf { signature: Signature::string(2, Volatility::Immutable) }
    }
}

impl Default for JsonPathUdf {
    fn default() -> Self {
        Self::new()
    }
}

/// The first match of `path` in `json`, rendered as text.
pub fn first_match(json: &str, path: &str) -> std::result::Result<Option<String>, String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else { return Ok(None) };
    first_match_in(&value, path)
}

fn as_utf8(v: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    Ok(cast(&v.to_array(rows)?, &DataType::Utf8)?)
}

impl ScalarUDFImpl for JsonPathUdf {
    fn name(&self) -> &str {
        "json_path"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let texts = as_utf8(&args.args[0], n)?;
        let texts = texts.as_string::<i32>();
        // The path is almost always a literal: compile it once.
        if let ColumnarValue::Scalar(s) = &args.args[1] {
            let path = match s {
                ScalarValue::Utf8(p) | ScalarValue::LargeUtf8(p) | ScalarValue::Utf8View(p) => p.clone(),
                _ => None,
            };
            let Some(path) = path else { return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))) };
            let selector = match jsonpath_lib::Compiled::compile(&path) {
                Ok(c) => c,
                Err(e) => return exec_err!("json_path: invalid JSONPath `{path}`: {e}"),
            };
            let mut out = StringBuilder::with_capacity(n, n * 8);
            for t in texts.iter() {
                let hit = t
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                    .and_then(|v| selector.select(&v).ok().and_then(|found| found.first().map(|m| json_text(m))));
                out.append_option(hit);
            }
            return Ok(ColumnarValue::Array(Arc::new(out.finish())));
        }
        let paths = as_utf8(&args.args[1], n)?;
        let paths = paths.as_string::<i32>();
        let mut out = StringBuilder::with_capacity(n, n * 8);
        for i in 0..n {
            if texts.is_null(i) || paths.is_null(i) {
                out.append_null();
                continue;
            }
            match first_match(texts.value(i), paths.value(i)) {
                Ok(v) => out.append_option(v),
                Err(e) => return exec_err!("json_path: {e}"),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
