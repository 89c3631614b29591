//! The on-disk format of a disk buffer: segment files of checksummed records.
//!
//! A segment is `<first seq, 20 digits>.seg`: the magic `TRIBSEG1`, then records back to back:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, little endian |
//! | 4 | CRC-32 of the next three fields |
//! | 8 | sequence number (increasing across segments) |
//! | 2 | index of the source output the rows belong to |
//! | n | the rows: one Arrow IPC stream (schema + one batch) |
//!
//! Records are only appended, and a record counts only once its checksum verifies, so a crash
//! mid-write leaves at most a torn tail, which [`scan`] finds and the buffer cuts off. Damage in the
//! middle (a flipped byte) costs only the damaged record: reading resumes at the next offset where
//! a whole record verifies, as Kafka's and Vector's logs resynchronise.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;

pub const MAGIC: &[u8; 8] = b"TRIBSEG1";
pub const HEADER_LEN: usize = 18;

/// A segment's file name for the first sequence number it holds.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The first sequence number in a segment's file name, if it is one.
pub fn segment_first_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Rows as a record payload.
pub fn encode_rows(rows: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(rows.get_array_memory_size() / 2 + 512);
    let mut writer = StreamWriter::try_new(&mut out, &rows.schema()).map_err(|e| e.to_string())?;
    writer.write(rows).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

/// A record payload as rows.
pub fn decode_rows(payload: &[u8]) -> Result<RecordBatch, String> {
    let mut reader = StreamReader::try_new(std::io::Cursor::new(payload), None).map_err(|e| e.to_string())?;
    match reader.next() {
        Some(batch) => batch.map_err(|e| e.to_string()),
        None => Err("the record holds no rows".into()),
    }
}

fn checksum(seq: u64, output: u16, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&output.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Bytes a record of `payload` takes in a segment, header included.
pub fn record_len(payload: &[u8]) -> u64 {
    (HEADER_LEN + payload.len()) as u64
}

/// Append one record to `buf`.
pub fn write_record(buf: &mut Vec<u8>, seq: u64, output: u16, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(seq, output, payload).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&output.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// One record read back.
#[derive(Debug)]
pub struct Record {
    pub seq: u64,
    pub output: u16,
    pub payload: Vec<u8>,
}

/// Why reading stopped before the end of a segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first byte that is not part of an intact record.
    pub offset: u64,
    pub reason: String,
}

/// Reads a segment's records in order, verifying each.
pub struct SegmentReader {
    file: BufReader<File>,
    offset: u64,
    len: u64,
}

impl SegmentReader {
    pub fn open(path: &Path) -> std::io::Result<SegmentReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut reader = SegmentReader { file: BufReader::with_capacity(256 << 10, file), offset: 0, len };
        let mut magic = [0u8; 8];
        match reader.file.read_exact(&mut magic) {
            Ok(()) if &magic == MAGIC => reader.offset = MAGIC.len() as u64,
            Ok(()) => return Err(std::io::Error::new(ErrorKind::InvalidData, "not a Tributary buffer segment (bad magic)")),
            // A segment created but never written: treat as empty.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => reader.offset = len,
            Err(e) => return Err(e),
        }
        Ok(reader)
    }

    /// Where the next record starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next intact record; `Ok(None)` at the end (or where a writer has not written yet);
    /// `Err` at the first damaged byte. The file may grow while it is read: its length is
    /// re-read at what looked like the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, Damage> {
        let damage = |offset: u64, reason: String| Damage { offset, reason };
        let start = self.offset;
        if start + HEADER_LEN as u64 > self.len {
            self.len = self.file.get_ref().metadata().map(|m| m.len()).unwrap_or(self.len);
            if start == self.len {
                return Ok(None);
            }
            if start + HEADER_LEN as u64 > self.len {
                return Err(damage(start, format!("torn record header ({} of {HEADER_LEN} bytes)", self.len - start)));
            }
        }
        let mut header = [0u8; HEADER_LEN];
        self.file.read_exact(&mut header).map_err(|e| damage(start, format!("reading a record header: {e}")))?;
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as u64;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let output = u16::from_le_bytes(header[16..18].try_into().unwrap());
        let end = start + HEADER_LEN as u64 + len;
        if end > self.len {
            self.len = self.file.get_ref().metadata().map(|m| m.len()).unwrap_or(self.len);
            if end > self.len {
                self.resync(start);
                return Err(damage(
                    start,
                    format!("torn record: {len} payload bytes declared, {} present", self.len.saturating_sub(start + HEADER_LEN as u64)),
                ));
            }
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact(&mut payload).map_err(|e| damage(start, format!("reading a record: {e}")))?;
        if checksum(seq, output, &payload) != crc {
            self.resync(start);
            return Err(damage(start, "checksum mismatch".into()));
        }
        self.offset = end;
        Ok(Some(Record { seq, output, payload }))
    }

    /// Drop the bytes read ahead of the next record: the writer cut a failed write off the file,
    /// and what it writes at those offsets next is not what was read.
    pub fn forget_read_ahead(&mut self) {
        // Seeking discards the buffer.
        let _ = self.file.seek(SeekFrom::Start(self.offset));
        self.len = self.file.get_ref().metadata().map(|m| m.len()).unwrap_or(self.offset);
    }

    /// Leave the reader at the damaged record: a caller that stops there sees its offset.
    fn resync(&mut self, offset: u64) {
        let _ = self.file.seek(SeekFrom::Start(offset));
        self.offset = offset;
    }

    /// After damage at the reader's offset: move to the next offset below `limit` where a whole
    /// record with a sequence number above `after` verifies, and return it (`None`: there is none,
    /// and the reader stays put). A candidate must hold an Arrow IPC stream (which starts with the
    /// continuation marker) and its checksum must match, so bytes inside a payload are not taken
    /// for a record.
    pub fn skip_damage(&mut self, limit: u64, after: Option<u64>) -> std::io::Result<Option<u64>> {
        let from = self.offset + 1;
        if from >= limit {
            return Ok(None);
        }
        let mut region = vec![0u8; (limit - from) as usize];
        self.file.seek(SeekFrom::Start(from))?;
        let read = self.file.read_exact(&mut region);
        self.resync(self.offset);
        read?;
        let found = (0..region.len().saturating_sub(HEADER_LEN)).find(|&at| {
            let header = &region[at..at + HEADER_LEN];
            let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
            let seq = u64::from_le_bytes(header[8..16].try_into().unwrap());
            let Some(payload) = region.get(at + HEADER_LEN..at + HEADER_LEN + len) else { return false };
            payload.starts_with(&[0xff; 4])
                && after.is_none_or(|a| seq > a)
                && checksum(seq, u16::from_le_bytes(header[16..18].try_into().unwrap()), payload)
                    == u32::from_le_bytes(header[4..8].try_into().unwrap())
        });
        Ok(found.map(|at| {
            let offset = from + at as u64;
            self.resync(offset);
            offset
        }))
    }
}

/// What [`scan`] found in one segment.
#[derive(Debug)]
pub struct Scanned {
    /// Sequence numbers of the intact records, in file order.
    pub seqs: Vec<u64>,
    /// Byte ranges of the intact records, in file order.
    pub intact: Vec<std::ops::Range<u64>>,
    /// Rows per intact record (for the replay count).
    pub rows: u64,
    /// Every stretch of damage, at the offset where it starts.
    pub damage: Vec<Damage>,
}

impl Scanned {
    /// Bytes of the segment once only its intact records are kept.
    pub fn intact_len(&self) -> u64 {
        MAGIC.len() as u64 + self.intact.iter().map(|r| r.end - r.start).sum::<u64>()
    }
}

/// Every intact record of a segment, resuming after damage at the next record that verifies.
/// Sequence numbers must increase and be above `after`; a record that breaks that is damage too.
pub fn scan(path: &Path, after: Option<u64>) -> std::io::Result<Scanned> {
    let mut reader = SegmentReader::open(path)?;
    let file_len = reader.len;
    let mut scanned = Scanned { seqs: Vec::new(), intact: Vec::new(), rows: 0, damage: Vec::new() };
    let mut last = after;
    loop {
        let start = reader.offset();
        let damage = match reader.next_record() {
            Ok(None) => break,
            Ok(Some(r)) if last.is_some_and(|l| r.seq <= l) => {
                Damage { offset: start, reason: format!("sequence number {} out of order", r.seq) }
            }
            Ok(Some(r)) => match decode_rows(&r.payload) {
                Ok(rows) => {
                    scanned.rows += rows.num_rows() as u64;
                    last = Some(r.seq);
                    scanned.seqs.push(r.seq);
                    scanned.intact.push(start..reader.offset());
                    continue;
                }
                Err(e) => Damage { offset: start, reason: format!("unreadable rows: {e}") },
            },
            Err(d) => d,
        };
        scanned.damage.push(damage);
        reader.resync(start);
        if reader.skip_damage(file_len, last)?.is_none() {
            break;
        }
    }
    Ok(scanned)
}

/// Rewrite a damaged segment with only its intact records (same bytes, same order), replacing
/// it atomically.
pub fn keep_intact(path: &Path, intact: &[std::ops::Range<u64>]) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = std::fs::read(path)?;
    let tmp = path.with_extension("seg.tmp");
    let mut out = File::create(&tmp)?;
    out.write_all(MAGIC)?;
    for r in intact {
        out.write_all(&bytes[r.start as usize..r.end as usize])?;
    }
    out.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use std::fs::OpenOptions;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..n)), Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("row {i}"))))],
        )
        .unwrap()
    }

    fn segment(dir: &Path, records: &[(u64, RecordBatch)]) -> PathBuf {
        let path = segment_path(dir, records[0].0);
        let mut buf = MAGIC.to_vec();
        for (seq, r) in records {
            write_record(&mut buf, *seq, 0, &encode_rows(r).unwrap());
        }
        std::fs::write(&path, buf).unwrap();
        path
    }

    #[test]
    fn records_round_trip_with_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), &[(7, rows(3)), (8, rows(2))]);
        assert_eq!(segment_first_seq(&path), Some(7));
        let mut reader = SegmentReader::open(&path).unwrap();
        let first = reader.next_record().unwrap().unwrap();
        assert_eq!((first.seq, first.output), (7, 0));
        assert_eq!(decode_rows(&first.payload).unwrap(), rows(3));
        assert_eq!(reader.next_record().unwrap().unwrap().seq, 8);
        assert!(reader.next_record().unwrap().is_none());
        let scanned = scan(&path, None).unwrap();
        assert_eq!(scanned.intact_len(), std::fs::metadata(&path).unwrap().len());
        assert_eq!((scanned.seqs, scanned.rows, scanned.damage), (vec![7, 8], 5, vec![]));
    }

    /// A failed write's bytes read ahead, then cut off, and other records written at their
    /// offsets (the full disk of buffer_figures scenario 4): forgetting the read-ahead makes the
    /// reader return the new record, not the cut one (before: a 503'd request's rows were
    /// forwarded under the number of a 200'd one, whose rows were lost).
    #[test]
    fn a_cut_write_read_ahead_is_forgotten_and_what_replaced_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), &[(1, rows(1)), (2, rows(5))]);
        let durable = std::fs::metadata(&path).unwrap().len() - record_len(&encode_rows(&rows(5)).unwrap());
        let mut reader = SegmentReader::open(&path).unwrap();
        assert_eq!(reader.next_record().unwrap().unwrap().seq, 1, "reading record 1 reads record 2's bytes ahead");
        // Record 2's write failed: cut off, and record 2 written again with other rows.
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        file.set_len(durable).unwrap();
        let mut buf = Vec::new();
        write_record(&mut buf, 2, 0, &encode_rows(&rows(2)).unwrap());
        (&file).write_all(&buf).unwrap();
        reader.forget_read_ahead();
        let second = reader.next_record().unwrap().unwrap();
        assert_eq!((second.seq, decode_rows(&second.payload).unwrap()), (2, rows(2)));
        assert!(reader.next_record().unwrap().is_none());
    }

    #[test]
    fn a_torn_tail_is_found_at_the_offset_of_the_first_broken_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), &[(1, rows(3)), (2, rows(4))]);
        let full = std::fs::metadata(&path).unwrap().len();
        let first_end = scan(&path, None).unwrap();
        // Cut the second record in the middle of its payload.
        let second_start = MAGIC.len() as u64 + HEADER_LEN as u64 + encode_rows(&rows(3)).unwrap().len() as u64;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(full - 10).unwrap();
        let scanned = scan(&path, None).unwrap();
        assert_eq!(scanned.seqs, vec![1]);
        assert_eq!(scanned.intact_len(), second_start);
        let [damage] = &scanned.damage[..] else { panic!("{:?}", scanned.damage) };
        assert_eq!(damage.offset, second_start);
        assert!(damage.reason.starts_with("torn record: "), "{}", damage.reason);
        assert_eq!(first_end.seqs, vec![1, 2]);
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), &[(1, rows(3)), (2, rows(4))]);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
        let scanned = scan(&path, None).unwrap();
        assert_eq!(scanned.seqs, vec![1]);
        assert_eq!(scanned.damage.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(), ["checksum mismatch"]);
    }

    /// Damage in the middle costs the damaged record only: the intact records after it are found
    /// again (a torn record followed by whole ones is what a full disk used to leave), and
    /// `keep_intact` leaves a segment that reads clean.
    #[test]
    fn records_after_damage_are_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), &[(1, rows(3)), (2, rows(4)), (3, rows(5)), (4, rows(6))]);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = MAGIC.len() + HEADER_LEN + encode_rows(&rows(3)).unwrap().len();
        let third = second + HEADER_LEN + encode_rows(&rows(4)).unwrap().len();
        // The second record's payload torn off after 40 bytes (its header still claims it all),
        // then the third and fourth records written behind it.
        let torn: Vec<u8> = [&bytes[..second + HEADER_LEN + 40], &bytes[third..]].concat();
        std::fs::write(&path, &torn).unwrap();
        let scanned = scan(&path, None).unwrap();
        assert_eq!(scanned.seqs, vec![1, 3, 4]);
        assert_eq!(scanned.rows, 3 + 5 + 6);
        assert_eq!(scanned.damage.len(), 1);
        assert_eq!(scanned.damage[0].offset, second as u64);
        keep_intact(&path, &scanned.intact).unwrap();
        let clean = scan(&path, None).unwrap();
        assert_eq!((clean.seqs, clean.damage), (vec![1, 3, 4], vec![]));
        // A flipped byte in a record's payload: that record alone is lost.
        bytes[second + HEADER_LEN + 30] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(scan(&path, None).unwrap().seqs, vec![1, 3, 4]);
    }

    #[test]
    fn sequence_numbers_must_increase() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), &[(5, rows(1)), (6, rows(1))]);
        let scanned = scan(&path, Some(5)).unwrap();
        assert_eq!(scanned.seqs, vec![6]);
        assert_eq!(scanned.damage, vec![Damage { offset: MAGIC.len() as u64, reason: "sequence number 5 out of order".into() }]);
    }
}
