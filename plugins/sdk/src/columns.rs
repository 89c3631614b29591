//! Finding a sink's configured columns in its input schema, and reading cells as text: the
//! checks and messages every column-mapping sink (influx, otlp) shares.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Schema};

use crate::ConfigError;

/// The index of column `name`, or an error at option `path` listing the input's columns.
pub fn column_index(schema: &Schema, path: &str, name: &str) -> Result<usize, ConfigError> {
    schema.index_of(name).map_err(|_| {
        let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        ConfigError::at(path, format!("column `{name}` is not in the input (columns: {})", cols.join(", ")))
    })
}

/// The index of the timestamp column `name` (option `time_column`).
pub fn time_column_index(schema: &Schema, name: &str) -> Result<usize, ConfigError> {
    let i = column_index(schema, "time_column", name)?;
    if !matches!(schema.field(i).data_type(), DataType::Timestamp(..)) {
        return Err(ConfigError::at("time_column", format!("column `{name}` is {}, expected a timestamp", schema.field(i).data_type())));
    }
    Ok(i)
}

/// Cell `i` of `col` as text: strings as they are, anything else as Arrow displays it; `None`
/// for null.
pub fn text_at(col: &ArrayRef, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => col.as_string_view().value(i).to_string(),
        _ => datafusion::arrow::util::display::array_value_to_string(col, i).ok()?,
    })
}
