//! Rows a sink holds until a batch is big enough (or its flush interval comes) to write at once.

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// Batches of one schema, counted in rows.
pub struct RowBuffer {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Rows at which the buffer asks to be written.
    limit: usize,
}

impl RowBuffer {
    pub fn new(schema: SchemaRef, limit: usize) -> Self {
        RowBuffer { schema, batches: Vec::new(), rows: 0, limit }
    }

    /// Add a batch; `true` when the buffer holds `limit` rows or more and should be written.
    pub fn push(&mut self, batch: RecordBatch) -> bool {
        self.rows += batch.num_rows();
        self.batches.push(batch);
        self.rows >= self.limit
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Everything buffered as one batch (no copy for a single batch), leaving the buffer empty.
    pub fn take(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        self.rows = 0;
        match self.batches.len() {
            0 => Ok(None),
            1 => Ok(self.batches.pop()),
            _ => {
                let rows = concat_batches(&self.schema, &self.batches);
                self.batches.clear();
                rows.map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn asks_to_be_written_at_the_limit_and_hands_out_everything_once() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |v: Vec<i64>| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap();
        let mut buf = RowBuffer::new(schema.clone(), 3);
        assert!(!buf.push(batch(vec![1, 2])));
        assert!(buf.push(batch(vec![3])));
        let rows = buf.take().unwrap().unwrap();
        assert_eq!(rows.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values(), &[1, 2, 3]);
        assert!(buf.take().unwrap().is_none());
        assert!(!buf.push(batch(vec![4])), "the count restarts after take");
    }
}
