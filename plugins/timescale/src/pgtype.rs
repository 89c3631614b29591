//! Arrow → PostgreSQL column types, and binary COPY encoders that write an Arrow column into a
//! PostgreSQL column of a given type (which may be an existing, narrower column such as the
//! original monitor's `smallint` times).

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds and days.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;
/// PostgreSQL's timestamp range (4713 BC to 294276 AD), in microseconds since its epoch.
const PG_TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const PG_TIMESTAMP_MAX: i64 = 9_223_371_331_199_999_999;

/// The column type the sink creates for an Arrow type, as `udt_name` (what `information_schema`
/// reports) and as SQL. `None`: the sink cannot store it.
pub fn pg_type_for(dt: &DataType) -> Option<(&'static str, &'static str)> {
    Some(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ("text", "text"),
        DataType::Int64 | DataType::UInt32 => ("int8", "bigint"),
        DataType::Int32 | DataType::UInt16 => ("int4", "integer"),
        DataType::Int16 | DataType::Int8 | DataType::UInt8 => ("int2", "smallint"),
        DataType::Float64 => ("float8", "double precision"),
        DataType::Float32 => ("float4", "real"),
        DataType::Boolean => ("bool", "boolean"),
        DataType::Timestamp(_, Some(_)) => ("timestamptz", "timestamptz"),
        DataType::Timestamp(_, None) => ("timestamp", "timestamp"),
        DataType::Date32 => ("date", "date"),
        DataType::Binary | DataType::LargeBinary => ("bytea", "bytea"),
        _ => return None,
    })
}

/// Whether an Arrow column can be written into an existing column of `udt` (PostgreSQL's
/// `information_schema.columns.udt_name`).
pub fn compatible(dt: &DataType, udt: &str) -> bool {
    let int = matches!(
        dt,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32
    );
    match udt {
        "int2" | "int4" | "int8" => int,
        "float4" | "float8" => int || matches!(dt, DataType::Float32 | DataType::Float64),
        "text" | "varchar" | "bpchar" | "json" | "jsonb" => matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        "bool" => *dt == DataType::Boolean,
        "timestamptz" | "timestamp" => matches!(dt, DataType::Timestamp(..)),
        "date" => *dt == DataType::Date32,
        "bytea" => matches!(dt, DataType::Binary | DataType::LargeBinary),
        _ => false,
    }
}

/// Writes one column's values in PostgreSQL's binary COPY format.
pub struct ColumnEncoder {
    array: ArrayRef,
    kind: PgKind,
    name: String,
}

/// The target column's type, resolved once per batch rather than compared as text per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgKind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Jsonb,
    Bool,
    Timestamp,
    Date,
    Bytea,
    Unsupported,
}

impl PgKind {
    fn of(udt: &str) -> PgKind {
        match udt {
            "int2" => PgKind::Int2,
            "int4" => PgKind::Int4,
            "int8" => PgKind::Int8,
            "float4" => PgKind::Float4,
            "float8" => PgKind::Float8,
            "text" | "varchar" | "bpchar" | "json" => PgKind::Text,
            "jsonb" => PgKind::Jsonb,
            "bool" => PgKind::Bool,
            "timestamptz" | "timestamp" => PgKind::Timestamp,
            "date" => PgKind::Date,
            "bytea" => PgKind::Bytea,
            _ => PgKind::Unsupported,
        }
    }
    fn sql_name(self) -> &'static str {
        match self {
            PgKind::Int2 => "smallint",
            PgKind::Int4 => "integer",
            PgKind::Int8 => "bigint",
            PgKind::Float4 => "real",
            PgKind::Float8 => "double precision",
            PgKind::Text => "text",
            PgKind::Jsonb => "jsonb",
            PgKind::Bool => "boolean",
            PgKind::Timestamp => "timestamp",
            PgKind::Date => "date",
            PgKind::Bytea => "bytea",
            PgKind::Unsupported => "(unsupported)",
        }
    }
}

impl ColumnEncoder {
    pub fn new(name: &str, array: ArrayRef, udt: &str) -> Self {
        ColumnEncoder { array, kind: PgKind::of(udt), name: name.to_string() }
    }

    /// Append row `i` (length prefix and value). `Err` names the value that does not fit, e.g. an
    /// integer beyond a `smallint` column.
    pub fn encode(&self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        let a = &self.array;
        if a.is_null(i) {
            out.put_i32(-1);
            return Ok(());
        }
        match self.kind {
            PgKind::Int2 | PgKind::Int4 | PgKind::Int8 | PgKind::Float4 | PgKind::Float8 => self.number(i, out),
            PgKind::Text => {
                let s = string_at(a, i);
                out.put_i32(s.len() as i32);
                out.put_slice(s.as_bytes());
                Ok(())
            }
            PgKind::Jsonb => {
                let s = string_at(a, i);
                out.put_i32(s.len() as i32 + 1);
                out.put_u8(1); // jsonb binary format version
                out.put_slice(s.as_bytes());
                Ok(())
            }
            PgKind::Bool => {
                out.put_i32(1);
                out.put_u8(a.as_boolean().value(i) as u8);
                Ok(())
            }
            PgKind::Timestamp => {
                let DataType::Timestamp(unit, _) = a.data_type() else { unreachable!("checked by compatible()") };
                let us = match unit {
                    TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i).saturating_mul(1_000_000),
                    TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i).saturating_mul(1_000),
                    TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(i),
                    TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(i) / 1_000,
                };
                // Checked: a hostile timestamp near the integer limits must become a rejected
                // row, not an overflow.
                let pg = us.checked_sub(PG_EPOCH_US).filter(|v| (PG_TIMESTAMP_MIN..=PG_TIMESTAMP_MAX).contains(v));
                let Some(pg) = pg else {
                    return Err(format!(
                        "column `{}`: timestamp {us} µs since 1970 is outside PostgreSQL's range (4713 BC to 294276 AD)",
                        self.name
                    ));
                };
                out.put_i32(8);
                out.put_i64(pg);
                Ok(())
            }
            PgKind::Date => {
                out.put_i32(4);
                out.put_i32(a.as_primitive::<Date32Type>().value(i) - PG_EPOCH_DAYS);
                Ok(())
            }
            PgKind::Bytea => {
                let b: &[u8] = match a.data_type() {
                    DataType::LargeBinary => a.as_binary::<i64>().value(i),
                    _ => a.as_binary::<i32>().value(i),
                };
                out.put_i32(b.len() as i32);
                out.put_slice(b);
                Ok(())
            }
            PgKind::Unsupported => Err(format!("column `{}`: cannot encode into this PostgreSQL type", self.name)),
        }
    }

    fn number(&self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        let a = &self.array;
        let v = match a.data_type() {
            DataType::Int8 => Num::I(a.as_primitive::<Int8Type>().value(i) as i64),
            DataType::Int16 => Num::I(a.as_primitive::<Int16Type>().value(i) as i64),
            DataType::Int32 => Num::I(a.as_primitive::<Int32Type>().value(i) as i64),
            DataType::Int64 => Num::I(a.as_primitive::<Int64Type>().value(i)),
            DataType::UInt8 => Num::I(a.as_primitive::<UInt8Type>().value(i) as i64),
            DataType::UInt16 => Num::I(a.as_primitive::<UInt16Type>().value(i) as i64),
            DataType::UInt32 => Num::I(a.as_primitive::<UInt32Type>().value(i) as i64),
            DataType::Float32 => Num::F(a.as_primitive::<Float32Type>().value(i) as f64),
            DataType::Float64 => Num::F(a.as_primitive::<Float64Type>().value(i)),
            other => return Err(format!("column `{}`: {other} is not a number", self.name)),
        };
        let out_of_range = |v: i64, ty: &str| format!("column `{}`: value {v} is out of range for PostgreSQL type {ty}", self.name);
        match (self.kind, v) {
            (PgKind::Int2, Num::I(v)) => {
                let v = i16::try_from(v).map_err(|_| out_of_range(v, "smallint"))?;
                out.put_i32(2);
                out.put_i16(v);
            }
            (PgKind::Int4, Num::I(v)) => {
                let v = i32::try_from(v).map_err(|_| out_of_range(v, "integer"))?;
                out.put_i32(4);
                out.put_i32(v);
            }
            (PgKind::Int8, Num::I(v)) => {
                out.put_i32(8);
                out.put_i64(v);
            }
            (PgKind::Float4, v) => {
                out.put_i32(4);
                out.put_f32(v.as_f64() as f32);
            }
            (PgKind::Float8, v) => {
                out.put_i32(8);
                out.put_f64(v.as_f64());
            }
            (ty, Num::F(_)) => {
                return Err(format!("column `{}`: a float cannot be stored in PostgreSQL type {}", self.name, ty.sql_name()))
            }
            (ty, _) => return Err(format!("column `{}`: cannot encode into PostgreSQL type {}", self.name, ty.sql_name())),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::I(v) => v as f64,
            Num::F(v) => v,
        }
    }
}

fn string_at(a: &ArrayRef, i: usize) -> &str {
    match a.data_type() {
        DataType::LargeUtf8 => a.as_string::<i64>().value(i),
        DataType::Utf8View => a.as_string_view().value(i),
        _ => a.as_string::<i32>().value(i),
    }
}

/// The fixed header and trailer of PostgreSQL's binary COPY stream.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];
