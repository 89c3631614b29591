//! The `parquet` source on an exactly-once path: every file is a stream of positions of its own.
//!
//! - The stream is `<source id>/<file's path under the table>`; its epoch is a fingerprint of the
//!   file's size and entity tag (a file rewritten in place is a new epoch, read again whole).
//! - A file is read in the order its rows are stored, row group after row group, and a batch's
//!   position is the count of the file's rows up to its last one. The same file always gives the
//!   same rows at the same positions, so a sink that stored a position has exactly those rows.
//! - Before a folder's files are read, the exactly-once sinks say where they stopped in each. Rows
//!   every sink wrote are skipped (`replay_skipped`); batches end at each sink's position, so each
//!   sink drops whole batches it wrote and writes the rest.
//!
//! This is why the path reads file after file instead of merging a folder's files by time: a merge
//! mixes files in one batch, and a batch carries one stream's position.

use std::sync::Arc;

use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use object_store::{ObjectMeta, ObjectStoreExt};
use tributary_sdk::output::Batch;
use tributary_sdk::{Position, Positions, SourceContext};

use crate::store::ObjectLocation;

/// One file as a stream of positions.
pub(crate) struct FileStream {
    pub meta: ObjectMeta,
    pub stream: Arc<str>,
    pub epoch: u64,
}

impl FileStream {
    pub fn new(source: &str, location: &ObjectLocation, meta: ObjectMeta) -> Self {
        let relative: Vec<String> =
            meta.location.prefix_match(&location.prefix).into_iter().flatten().map(|p| p.as_ref().to_string()).collect();
        let stream = format!("{source}/{}", relative.join("/")).into();
        let identity = format!("{} {}", meta.size, meta.e_tag.as_deref().unwrap_or(&meta.last_modified.to_rfc3339()));
        let epoch = tributary_sdk::position::fnv1a(identity.as_bytes());
        FileStream { meta, stream, epoch }
    }

    /// Where to skip to and where to end batches, from what each sink says it wrote.
    pub fn cuts(&self, written: &[Positions]) -> Cuts {
        let seqs: Vec<Option<u64>> = written.iter().map(|w| w.seq_in(&self.stream, self.epoch)).collect();
        let skip = if seqs.iter().all(Option::is_some) { seqs.iter().flatten().min().copied().unwrap_or(0) } else { 0 };
        let mut ends: Vec<u64> = seqs.into_iter().flatten().filter(|&s| s > skip).collect();
        ends.sort_unstable();
        ends.dedup();
        Cuts { skip, ends }
    }
}

/// The file's rows before `skip` are written by every sink; batches end at each of `ends`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cuts {
    pub skip: u64,
    pub ends: Vec<u64>,
}

impl Cuts {
    /// The pieces of the rows `[start, start + n)` to send, as `(from, to)` offsets into them:
    /// what every sink wrote left out, split at each sink's position.
    fn pieces(&self, start: u64, n: u64) -> Vec<(u64, u64)> {
        let end = start + n;
        let from = self.skip.clamp(start, end) - start;
        let mut pieces = Vec::new();
        let mut at = from;
        for &cut in &self.ends {
            if cut > start + at && cut < end {
                pieces.push((at, cut - start));
                at = cut - start;
            }
        }
        if at < n {
            pieces.push((at, n));
        }
        pieces
    }
}

/// What a file's rows become: the declared columns, cast, in `[from, to)` of the time column.
pub(crate) struct Shape<'a> {
    pub schema: &'a SchemaRef,
    pub time_column: &'a str,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Shape<'_> {
    fn apply(&self, rows: &RecordBatch) -> anyhow::Result<RecordBatch> {
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let column = rows.column_by_name(field.name()).expect("projected by name");
            columns.push(cast(column, field.data_type())?);
        }
        let shaped = RecordBatch::try_new(self.schema.clone(), columns)?;
        if self.from.is_none() && self.to.is_none() {
            return Ok(shaped);
        }
        let time = shaped.column_by_name(self.time_column).expect("checked at build").as_primitive::<TimestampMicrosecondType>();
        let keep: BooleanArray = (0..time.len())
            .map(|i| Some(time.is_valid(i) && self.from.is_none_or(|f| time.value(i) >= f) && self.to.is_none_or(|t| time.value(i) < t)))
            .collect();
        Ok(filter_record_batch(&shaped, &keep)?)
    }
}

/// Sends `file`'s rows after `cuts.skip`, each batch with its position. False when the pipeline
/// stopped meanwhile.
pub(crate) async fn send_file(
    location: &ObjectLocation,
    file: &FileStream,
    cuts: &Cuts,
    shape: &Shape<'_>,
    ctx: &SourceContext,
) -> anyhow::Result<bool> {
    let shown = format!("{}{}", location.store_url, file.meta.location);
    // The whole file, then decoded row group by row group: the sink's files are a flush each.
    let bytes = location.store.get(&file.meta.location).await.with_context(|| format!("reading {shown}"))?.bytes().await?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).with_context(|| format!("reading {shown}"))?;
    let mut roots = Vec::new();
    for field in shape.schema.fields() {
        let found = builder.schema().column_with_name(field.name());
        crate::source::check_declared(field, found.map(|(_, f)| f), &shown)?;
        roots.extend(found.map(|(index, _)| index));
    }
    let projection = ProjectionMask::roots(builder.parquet_schema(), roots);
    let batches = builder.with_projection(projection).with_batch_size(8192).build()?;
    let mut start = 0u64; // the file's rows before this batch
    for rows in batches {
        let rows = rows.with_context(|| format!("reading {shown}"))?;
        let n = rows.num_rows() as u64;
        let pieces = cuts.pieces(start, n);
        let sent: u64 = pieces.iter().map(|(from, to)| to - from).sum();
        ctx.metrics.replay_skipped.add(n - sent);
        for (from, to) in pieces {
            let piece = shape.apply(&rows.slice(from as usize, (to - from) as usize))?;
            if piece.num_rows() == 0 {
                continue;
            }
            let position = Position { stream: file.stream.clone(), epoch: file.epoch, seq: start + to };
            if ctx.output("").send(Batch::new(piece).at(Some(position))).await.is_err() {
                return Ok(false);
            }
        }
        start += n;
        if ctx.shutdown.is_cancelled() {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_leave_out_what_every_sink_wrote_and_end_at_each_sinks_position() {
        let cuts = Cuts { skip: 10, ends: vec![15, 30] };
        assert_eq!(cuts.pieces(0, 8), vec![], "all written by every sink");
        assert_eq!(cuts.pieces(8, 8), vec![(2, 7), (7, 8)], "rows 10..15, then 15..16");
        assert_eq!(cuts.pieces(16, 14), vec![(0, 14)], "ends at 30: no cut inside");
        assert_eq!(cuts.pieces(30, 5), vec![(0, 5)]);
        assert_eq!(Cuts { skip: 0, ends: vec![] }.pieces(0, 3), vec![(0, 3)]);
    }

    #[test]
    fn the_sinks_answers_become_a_skip_and_the_ends() {
        let file = FileStream { meta: meta(), stream: "lake/date=2026-11-21/part-1.parquet".into(), epoch: 5 };
        let at = |seq| Position { stream: file.stream.clone(), epoch: 5, seq };
        let db: Positions = [at(40)].into_iter().collect();
        let lake: Positions = [at(25)].into_iter().collect();
        let other_epoch: Positions = [Position { epoch: 6, ..at(90) }].into_iter().collect();
        assert_eq!(file.cuts(&[db.clone(), lake]), Cuts { skip: 25, ends: vec![40] });
        assert_eq!(file.cuts(&[db, other_epoch]), Cuts { skip: 0, ends: vec![40] }, "one sink has none of this file");
    }

    fn meta() -> ObjectMeta {
        ObjectMeta { location: "x".into(), last_modified: chrono::Utc::now(), size: 1, e_tag: None, version: None }
    }
}
