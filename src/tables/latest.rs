//! `type: latest` tables: the newest row per key of a source's or transform's output (each
//! cluster's details, each SRT session's state), kept by an engine sink named after the table as
//! rows arrive.
//!
//! The table lives in memory only: a restart starts it empty, and it fills again as its input
//! sends rows. Each write merges the batch into the table (O(table rows)), which suits inventories
//! and states of thousands of keys, not event streams.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use tributary_sdk::{DeadLetter, Sink, SinkContext, Transient, Written};

use crate::sql::LookupTable;

/// The `type` the engine's table sinks show in summaries, graphs and metrics.
pub const LATEST_TABLE_SINK: &str = "latest_table";

/// Key columns resolved to indices of the input, at plan time.
#[derive(Debug, Clone)]
pub struct LatestKey {
    pub input: String,
    pub columns: Vec<usize>,
}

impl LatestKey {
    /// Resolve `key` against `schema` (the input's columns); the error names the column.
    pub fn resolve(input: String, key: &[String], schema: &SchemaRef) -> Result<LatestKey, String> {
        if key.is_empty() {
            return Err("`key` must name at least one column".into());
        }
        let columns = key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    let names: Vec<String> = schema.fields().iter().map(|f| format!("`{}`", f.name())).collect();
                    format!("`{k}` is not a column of `{input}` (its columns: {})", names.join(", "))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(LatestKey { input, columns })
    }
}

/// `rows` with, per key, only the last row (in order), kept in the order of those last rows.
pub fn last_per_key(rows: &RecordBatch, key: &[usize]) -> Result<RecordBatch, String> {
    let key_columns: Vec<_> = key.iter().map(|&i| rows.column(i).clone()).collect();
    let fields = key.iter().map(|&i| SortField::new(rows.schema().field(i).data_type().clone())).collect();
    let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
    let encoded = converter.convert_columns(&key_columns).map_err(|e| e.to_string())?;
    let mut seen = HashSet::with_capacity(encoded.num_rows());
    let mut keep: Vec<u32> = (0..encoded.num_rows()).rev().filter(|&i| seen.insert(encoded.row(i))).map(|i| i as u32).collect();
    keep.reverse();
    take_record_batch(rows, &UInt32Array::from(keep)).map_err(|e| e.to_string())
}

/// The sink that keeps a `latest` table: each batch is merged in and swapped in at once.
pub struct LatestTableSink {
    pub table: Arc<LookupTable>,
    pub key: LatestKey,
}

#[async_trait::async_trait]
impl Sink for LatestTableSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        let batch = RecordBatch::try_new(self.table.schema.clone(), batch.columns().to_vec()).map_err(Transient::new)?;
        let current = self.table.snapshot();
        let all = concat_batches(&self.table.schema, current.batches.iter().chain([&batch])).map_err(Transient::new)?;
        let merged = last_per_key(&all, &self.key.columns).map_err(|e| Transient::new(anyhow::anyhow!(e)))?;
        self.table.replace(vec![merged]);
        Ok(Written::durable())
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn sessions(names: &[Option<&str>], rtt: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("session", DataType::Utf8, true), Field::new("rtt", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(names.to_vec())), Arc::new(Int64Array::from(rtt.to_vec()))]).unwrap()
    }

    #[tokio::test]
    async fn the_table_keeps_the_newest_row_of_every_key_across_batches() {
        let first = sessions(&[Some("tx"), Some("rx"), Some("tx"), None], &[10, 20, 11, 1]);
        let table = Arc::new(LookupTable::new("links".into(), first.schema()));
        let key = LatestKey::resolve("srt".into(), &["session".into()], &first.schema()).unwrap();
        let mut sink = LatestTableSink { table: table.clone(), key };
        let ctx = tributary_testkit::sink_context("links");
        sink.write(first, &ctx).await.unwrap();
        sink.write(sessions(&[Some("rx"), None], &[25, 2]), &ctx).await.unwrap();
        assert_eq!(
            pretty_format_batches(&table.snapshot().batches).unwrap().to_string(),
            "+---------+-----+\n\
             | session | rtt |\n\
             +---------+-----+\n\
             | tx      | 11  |\n\
             | rx      | 25  |\n\
             |         | 2   |\n\
             +---------+-----+"
        );
    }

    #[test]
    fn a_key_column_the_input_lacks_is_named_with_the_columns_it_has() {
        let schema = sessions(&[], &[]).schema();
        assert_eq!(
            LatestKey::resolve("srt".into(), &["sesion".into()], &schema).unwrap_err(),
            "`sesion` is not a column of `srt` (its columns: `session`, `rtt`)"
        );
        assert_eq!(LatestKey::resolve("srt".into(), &[], &schema).unwrap_err(), "`key` must name at least one column");
    }
}
