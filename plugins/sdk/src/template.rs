//! Names made from a row's values: `sites/{site}/probes` for an MQTT topic or a NATS subject.
//! The `{column}` placeholders are resolved into column indices once, when the sink is built.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{DataType, Schema};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Column { name: String, index: usize },
}

/// A name with `{column}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowTemplate {
    parts: Vec<Part>,
}

impl RowTemplate {
    /// Resolves the placeholders of `text` against `schema`; the error says what is wrong.
    pub fn parse(text: &str, schema: &Schema) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| format!("`{text}` has a `{{` without its `}}`"))?;
            let name = &after[..close];
            let index = schema.index_of(name).map_err(|_| {
                let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!("`{{{name}}}` in `{text}` names no input column; the columns are {}", columns.join(", "))
            })?;
            let data_type = schema.field(index).data_type();
            if !can_cast_types(data_type, &DataType::Utf8) {
                return Err(format!("`{{{name}}}` in `{text}` is a {data_type} column, which has no text form"));
            }
            parts.push(Part::Column { name: name.to_string(), index });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}` has a `}}` without its `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(RowTemplate { parts })
    }

    /// Each row's name, or why the row has none: a placeholder's value is null, or holds one of
    /// `forbidden` (a wildcard or a separator the destination would misread).
    pub fn render(&self, batch: &RecordBatch, forbidden: &[char]) -> Vec<Result<String, String>> {
        let texts: Vec<Option<_>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(_) => None,
                Part::Column { index, .. } => cast(batch.column(*index), &DataType::Utf8).ok(),
            })
            .collect();
        (0..batch.num_rows())
            .map(|row| {
                let mut out = String::new();
                for (part, text) in self.parts.iter().zip(&texts) {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Column { name, .. } => {
                            let Some(values) = text else { return Err(format!("column `{name}` has no text form")) };
                            if values.is_null(row) {
                                return Err(format!("column `{name}` is null, and the name `{}` needs it", self));
                            }
                            let value = values.as_string::<i32>().value(row);
                            if let Some(c) = value.chars().find(|c| forbidden.contains(c) || c.is_whitespace() && forbidden.contains(&' '))
                            {
                                return Err(format!("column `{name}` is `{value}`, and {c:?} cannot be part of a name here"));
                            }
                            out.push_str(value);
                        }
                    }
                }
                Ok(out)
            })
            .collect()
    }
}

impl std::fmt::Display for RowTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::Column { name, .. } => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![Field::new("site", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![Some("oslo"), None, Some("a b"), Some("x.*")])),
                Arc::new(Int64Array::from(vec![Some(7), Some(8), Some(9), Some(10)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn placeholders_take_each_rows_values_and_bad_values_say_why() {
        let b = batch();
        let t = RowTemplate::parse("sites.{site}.n{n}", &b.schema()).unwrap();
        assert_eq!(t.to_string(), "sites.{site}.n{n}");
        assert_eq!(
            t.render(&b, &[' ', '*', '>']),
            vec![
                Ok("sites.oslo.n7".to_string()),
                Err("column `site` is null, and the name `sites.{site}.n{n}` needs it".to_string()),
                Err("column `site` is `a b`, and ' ' cannot be part of a name here".to_string()),
                Err("column `site` is `x.*`, and '*' cannot be part of a name here".to_string()),
            ]
        );
        assert_eq!(RowTemplate::parse("fixed/topic", &b.schema()).unwrap().render(&b, &[])[3], Ok("fixed/topic".to_string()));
    }

    #[test]
    fn templates_that_cannot_work_are_refused_at_build() {
        let schema = batch().schema();
        assert_eq!(RowTemplate::parse("a/{site", &schema).unwrap_err(), "`a/{site` has a `{` without its `}`");
        assert_eq!(RowTemplate::parse("a/site}", &schema).unwrap_err(), "`a/site}` has a `}` without its `{`");
        assert_eq!(
            RowTemplate::parse("a/{host}", &schema).unwrap_err(),
            "`{host}` in `a/{host}` names no input column; the columns are site, n"
        );
    }
}
