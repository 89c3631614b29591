//! Whole numbers exactly, or an error naming the column and the value.
//!
//! arrow-json reads a number it cannot parse as an integer as a float and casts it, so `1.5` in an
//! `int` column was stored as 1 and `-9223372036854775809` as `-9223372036854775808`, with a 200.
//! The flat decoder is exact (it declines such numbers); on the other paths the integer and
//! timestamp columns are read a second time as their text and judged here.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::reader::ReaderBuilder;

/// Why a JSON number is not a 64-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inexact {
    Fraction,
    OutOfRange,
}

/// `text` (a JSON number) as the 64-bit integer it denotes: `1.0` and `1e2` are whole, `1.5` is
/// not, and nothing is rounded. `None` when `text` is not a JSON number at all.
pub fn exact_integer(text: &str) -> Option<Result<i64, Inexact>> {
    if let Ok(v) = text.parse::<i64>() {
        return Some(Ok(v));
    }
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || (mantissa.contains('.') && !is_digits(fraction)) {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !is_digits(digits) {
                return None;
            }
            // Beyond this the value is 0 (all digits zero), fractional or out of range anyway.
            let significant = digits.trim_start_matches('0');
            let magnitude = if significant.is_empty() { 0 } else { significant.parse::<i64>().unwrap_or(i64::MAX).min(10_000) };
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // The value is `digits × 10^scale`.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Some(Ok(0));
    }
    let scale = exponent - fraction.len() as i64 + (digits.len() - significant.len()) as i64;
    if scale < 0 {
        return Some(Err(Inexact::Fraction));
    }
    if significant.len() as i64 + scale > 19 {
        return Some(Err(Inexact::OutOfRange));
    }
    let magnitude = significant.parse::<i128>().expect("at most 19 digits") * 10i128.pow(scale as u32);
    let value = if negative { -magnitude } else { magnitude };
    Some(i64::try_from(value).map_err(|_| Inexact::OutOfRange))
}

/// The integer and timestamp columns of a schema, read again as text to be judged exactly.
#[derive(Debug, Clone)]
pub(crate) struct WholeNumbers {
    /// The columns as `Utf8`; arrow-json gives a number's text as written (`coerce_primitive`).
    as_text: SchemaRef,
    /// Per column of `as_text`: whether it is a timestamp (microseconds since the epoch).
    is_time: Vec<bool>,
}

impl WholeNumbers {
    /// `None` when the schema has no integer or timestamp column.
    pub(crate) fn new(schema: &Schema) -> Option<WholeNumbers> {
        let columns: Vec<(&Field, bool)> = schema
            .fields()
            .iter()
            .filter_map(|f| match f.data_type() {
                DataType::Int64 => Some((f.as_ref(), false)),
                DataType::Timestamp(..) => Some((f.as_ref(), true)),
                _ => None,
            })
            .collect();
        if columns.is_empty() {
            return None;
        }
        let as_text = Arc::new(Schema::new(columns.iter().map(|(f, _)| Field::new(f.name(), DataType::Utf8, true)).collect::<Vec<_>>()));
        Some(WholeNumbers { as_text, is_time: columns.iter().map(|(_, t)| *t).collect() })
    }

    /// The first number in `text` (JSON objects) that its integer or timestamp column cannot hold
    /// exactly, as `column "n": …`. Values that are not numbers are not judged here.
    pub(crate) fn check(&self, text: &[u8]) -> Result<(), String> {
        let Ok(mut decoder) = ReaderBuilder::new(self.as_text.clone()).with_coerce_primitive(true).build_decoder() else {
            return Ok(());
        };
        let mut rest = text;
        while !rest.is_empty() {
            // A text arrow-json refuses is refused by the decode this check accompanies.
            let Ok(n) = decoder.decode(rest) else { return Ok(()) };
            rest = &rest[n..];
            let Ok(Some(batch)) = decoder.flush() else {
                if n == 0 {
                    break;
                }
                continue;
            };
            for (c, column) in batch.columns().iter().enumerate() {
                let name = self.as_text.field(c).name();
                let values = column.as_string::<i32>();
                for i in 0..values.len() {
                    if values.is_null(i) {
                        continue;
                    }
                    let v = values.value(i);
                    match exact_integer(v) {
                        None => {}
                        Some(Err(Inexact::Fraction)) => return Err(format!("column \"{name}\": {v} is not a whole number")),
                        Some(Err(Inexact::OutOfRange)) if self.is_time[c] => return Err(out_of_time_range(name, v)),
                        Some(Err(Inexact::OutOfRange)) => {
                            return Err(format!("column \"{name}\": {v} is outside the 64-bit integer range"))
                        }
                        Some(Ok(micros)) if self.is_time[c] && chrono::DateTime::from_timestamp_micros(micros).is_none() => {
                            return Err(out_of_time_range(name, v))
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
        Ok(())
    }
}

fn out_of_time_range(name: &str, v: &str) -> String {
    format!("column \"{name}\": {v} is outside the supported time range (microseconds since 1970, years -262143 to 262142)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_exact_or_refused() {
        for (text, expected) in [
            ("0", Some(Ok(0))),
            ("-0", Some(Ok(0))),
            ("42", Some(Ok(42))),
            ("9223372036854775807", Some(Ok(i64::MAX))),
            ("-9223372036854775808", Some(Ok(i64::MIN))),
            ("-9223372036854775809", Some(Err(Inexact::OutOfRange))),
            ("9223372036854775808", Some(Err(Inexact::OutOfRange))),
            ("1.0", Some(Ok(1))),
            ("1e2", Some(Ok(100))),
            ("1.25E2", Some(Ok(125))),
            ("1.255E2", Some(Err(Inexact::Fraction))),
            ("12.50e1", Some(Ok(125))),
            ("1.5", Some(Err(Inexact::Fraction))),
            ("-0.5", Some(Err(Inexact::Fraction))),
            ("1e-2", Some(Err(Inexact::Fraction))),
            ("0e999999999999", Some(Ok(0))),
            ("7e000", Some(Ok(7))),
            ("7E+0", Some(Ok(7))),
            ("1e999999999999", Some(Err(Inexact::OutOfRange))),
            ("9.223372036854775807e18", Some(Ok(i64::MAX))),
            ("9.223372036854775808e18", Some(Err(Inexact::OutOfRange))),
            ("100000000000000000000e-2", Some(Ok(1_000_000_000_000_000_000))),
            ("true", None),
            ("2026-11-29T10:00:00Z", None),
            ("1.", None),
            ("", None),
        ] {
            assert_eq!(exact_integer(text), expected, "{text}");
        }
    }

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())), true),
        ])
    }

    #[test]
    fn the_check_names_the_column_and_the_value_as_written() {
        let check = WholeNumbers::new(&schema()).unwrap();
        assert_eq!(check.check(b"{\"n\":1,\"s\":\"1.5\"}\n{\"n\":2.0,\"ts\":\"2026-11-29T10:00:00Z\"}"), Ok(()));
        assert_eq!(check.check(b"{\"n\":1}\n{\"n\":1.5}"), Err("column \"n\": 1.5 is not a whole number".into()));
        assert_eq!(
            check.check(b"{\"n\":-9223372036854775809}"),
            Err("column \"n\": -9223372036854775809 is outside the 64-bit integer range".into())
        );
        assert_eq!(
            check.check(b"{\"ts\":1e300}"),
            Err("column \"ts\": 1e300 is outside the supported time range (microseconds since 1970, years -262143 to 262142)".into())
        );
        assert_eq!(
            check.check(b"{\"ts\":9000000000000000000}"),
            Err(
                "column \"ts\": 9000000000000000000 is outside the supported time range (microseconds since 1970, years -262143 to 262142)"
                    .into()
            )
        );
        assert!(WholeNumbers::new(&Schema::new(vec![Field::new("s", DataType::Utf8, true)])).is_none());
    }
}
