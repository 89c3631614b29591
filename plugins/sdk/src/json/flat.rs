//! One pass from newline-delimited flat JSON objects straight into Arrow builders.
//!
//! arrow-json first builds a tape of every token of the buffer, then walks it once per column. For
//! the lines telemetry is made of (one flat object per line: strings, numbers, booleans, RFC 3339
//! times) this decoder does the same work in one pass: it finds each key's column, parses the
//! value into that column's builder and skips (while checking) keys the schema does not declare.
//!
//! It is exact or it declines. Whatever it does not handle with certainty returns `None` and the
//! caller decodes the text with arrow-json as before: a number in quotes, a nested value in a
//! declared column, a duplicate key, an object spanning lines or two on one line, a `\u` surrogate,
//! a time in another format, malformed JSON. So on success its rows are the rows arrow-json makes
//! (`json::tests::the_flat_decoder_agrees_with_arrow_json` checks it on generated lines), and bad
//! lines still reach the line-by-line path that names them.

use std::sync::Arc;

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};

/// Nesting deeper than this inside an undeclared key is left to arrow-json.
const MAX_DEPTH: usize = 64;

/// A string column being built from the text's bytes as they are; they are checked to be UTF-8
/// once, when the column is finished (as arrow-json checks its string bytes once).
struct Utf8Column {
    offsets: Vec<i32>,
    values: Vec<u8>,
    nulls: NullBufferBuilder,
}

impl Utf8Column {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Utf8Column { offsets, values: Vec::with_capacity(bytes), nulls: NullBufferBuilder::new(rows) }
    }

    /// Ends the value whose bytes were just added.
    fn end_value(&mut self) -> Option<()> {
        self.offsets.push(i32::try_from(self.values.len()).ok()?);
        self.nulls.append_non_null();
        Some(())
    }

    fn append_null(&mut self) {
        self.offsets.push(*self.offsets.last().expect("starts with 0"));
        self.nulls.append_null();
    }

    /// `None` when a value is not UTF-8.
    fn finish(mut self) -> Option<ArrayRef> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        Some(Arc::new(StringArray::try_new(offsets, Buffer::from_vec(self.values), self.nulls.finish()).ok()?))
    }
}

/// A column being built.
enum Column {
    Str(Utf8Column),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Column {
    fn new(data_type: &DataType, rows: usize, bytes: usize) -> Option<Column> {
        Some(match data_type {
            DataType::Utf8 => Column::Str(Utf8Column::with_capacity(rows, bytes)),
            DataType::Int64 => Column::Int(Int64Builder::with_capacity(rows)),
            DataType::Float64 => Column::Float(Float64Builder::with_capacity(rows)),
            DataType::Boolean => Column::Bool(BooleanBuilder::with_capacity(rows)),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Column::Time(TimestampMicrosecondBuilder::with_capacity(rows).with_data_type(data_type.clone()))
            }
            _ => return None,
        })
    }

    fn append_null(&mut self) {
        match self {
            Column::Str(b) => b.append_null(),
            Column::Int(b) => b.append_null(),
            Column::Float(b) => b.append_null(),
            Column::Bool(b) => b.append_null(),
            Column::Time(b) => b.append_null(),
        }
    }

    fn finish(self) -> Option<ArrayRef> {
        Some(match self {
            Column::Str(b) => b.finish()?,
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Float(mut b) => Arc::new(b.finish()),
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Time(mut b) => Arc::new(b.finish()),
        })
    }
}

/// Decode `text` (one flat object per non-blank line) into a batch of `schema`, or `None` when
/// arrow-json has to do it.
pub(crate) fn decode(schema: &SchemaRef, text: &[u8]) -> Option<RecordBatch> {
    let fields = schema.fields();
    if fields.len() > 64 {
        return None;
    }
    // Rows estimated from the first line (a count of the newlines would be one more pass).
    let first_line = memchr::memchr(b'\n', text).unwrap_or(text.len()).max(16);
    let rows = text.len() / first_line + 16;
    // Room for twice a fair share of the text per string column: untouched room costs address
    // space, not memory, and growing past it is a cheap `mremap` at these sizes.
    let string_columns = fields.iter().filter(|f| f.data_type() == &DataType::Utf8).count().max(1);
    let bytes = (2 * text.len() / string_columns).min(text.len());
    let mut columns = fields.iter().map(|f| Column::new(f.data_type(), rows, bytes)).collect::<Option<Vec<_>>>()?;
    // Each name with the quote that ends it, to be matched where a key starts.
    let names: Vec<Vec<u8>> = fields.iter().map(|f| [f.name().as_bytes(), b"\""].concat()).collect();
    let mut cursor = Cursor { b: text, i: 0, skipped: Vec::new() };
    let all_seen = if names.len() == 64 { u64::MAX } else { (1u64 << names.len()) - 1 };
    loop {
        cursor.skip_blank_lines();
        if cursor.at_end() {
            break;
        }
        let seen = cursor.object(&names, &mut columns)?;
        if seen != all_seen {
            for (c, column) in columns.iter_mut().enumerate() {
                if seen & (1 << c) == 0 {
                    column.append_null();
                }
            }
        }
        // Nothing but spaces may follow an object on its line.
        cursor.skip_spaces();
        if !cursor.at_end() && !cursor.eat(b'\n') {
            return None;
        }
    }
    let arrays = columns.into_iter().map(Column::finish).collect::<Option<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), arrays).ok()
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    /// The text of the string being skipped (one buffer for every undeclared key's string).
    skipped: Vec<u8>,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Whitespace inside a line (a newline inside an object is left to arrow-json).
    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }

    fn skip_blank_lines(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(word).then(|| self.i += word.len())
    }

    /// One object into the columns; returns which columns it set.
    fn object(&mut self, names: &[Vec<u8>], columns: &mut [Column]) -> Option<u64> {
        self.expect(b'{')?;
        self.skip_spaces();
        let mut seen = 0u64;
        if self.eat(b'}') {
            return Some(seen);
        }
        // Keys usually come in the same order on every line: try the one after the last first.
        let mut next = 0;
        loop {
            self.expect(b'"')?;
            let column = match names.get(next).filter(|name| starts_with(&self.b[self.i..], name)) {
                Some(name) => {
                    self.i += name.len();
                    Some(next)
                }
                None => {
                    let key = self.key()?;
                    names.iter().position(|n| n.len() == key.len() + 1 && n.starts_with(key))
                }
            };
            self.skip_spaces();
            self.expect(b':')?;
            self.skip_spaces();
            match column {
                Some(c) => {
                    if seen & (1 << c) != 0 {
                        return None; // which duplicate wins is arrow-json's call
                    }
                    seen |= 1 << c;
                    self.value(&mut columns[c])?;
                    next = c + 1;
                }
                None => self.skip_value(0)?,
            }
            self.skip_spaces();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.skip_spaces();
                }
                b'}' => {
                    self.i += 1;
                    return Some(seen);
                }
                _ => return None,
            }
        }
    }

    /// The rest of a key after its opening quote, without escapes (and UTF-8: it may be
    /// undeclared, and then it is never stored).
    fn key(&mut self) -> Option<&'a [u8]> {
        let key = self.plain_string()?;
        std::str::from_utf8(key).ok()?;
        Some(key)
    }

    /// The rest of a string after its opening quote, when it holds no escape (not checked to be
    /// UTF-8).
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let end = start + find_string_end(&self.b[start..])?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.b[start..end])
    }

    fn value(&mut self, column: &mut Column) -> Option<()> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            column.append_null();
            return Some(());
        }
        match column {
            Column::Str(b) => {
                self.expect(b'"')?;
                self.string(&mut b.values)?;
                b.end_value()?
            }
            Column::Int(b) => b.append_value(self.integer()?),
            Column::Float(b) => {
                let token = self.number()?;
                // Both std and lexical-core (arrow-json's parser) round correctly: the same f64.
                let v: f64 = std::str::from_utf8(token).ok()?.parse().ok()?;
                if !v.is_finite() {
                    return None;
                }
                b.append_value(v)
            }
            Column::Bool(b) => match self.peek()? {
                b't' => {
                    self.literal(b"true")?;
                    b.append_value(true)
                }
                _ => {
                    self.literal(b"false")?;
                    b.append_value(false)
                }
            },
            Column::Time(b) => {
                if self.eat(b'"') {
                    // Escapes in a time are arrow-json's.
                    b.append_value(rfc3339_micros(self.plain_string()?)?)
                } else {
                    // A number is microseconds since the epoch, as arrow-json reads it.
                    b.append_value(self.integer()?)
                }
            }
        }
        Some(())
    }

    /// The rest of a string after its opening quote, its text (escapes resolved) added to `out`.
    /// `None`: an escape left to arrow-json. Not checked to be UTF-8: the caller does.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let mut from = self.i;
        loop {
            let at = from + find_string_end(&self.b[from..])?;
            out.extend_from_slice(&self.b[from..at]);
            match self.b[at] {
                b'"' => {
                    self.i = at + 1;
                    return Some(());
                }
                b'\\' => {}
                _ => return None, // a control character
            }
            let (c, width) = match *self.b.get(at + 1)? {
                b'"' => ('"', 2),
                b'\\' => ('\\', 2),
                b'/' => ('/', 2),
                b'b' => ('\u{8}', 2),
                b'f' => ('\u{c}', 2),
                b'n' => ('\n', 2),
                b'r' => ('\r', 2),
                b't' => ('\t', 2),
                b'u' => {
                    let hex = self.b.get(at + 2..at + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    let code = hex.iter().fold(0u32, |v, h| v * 16 + (*h as char).to_digit(16).expect("a hex digit"));
                    // Surrogates (pairs or not) are arrow-json's to judge.
                    (char::from_u32(code)?, 6)
                }
                _ => return None,
            };
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            from = at + width;
        }
    }

    /// Skip a string after its opening quote, checking its escapes and that it is UTF-8.
    fn skip_string(&mut self) -> Option<()> {
        let mut text = std::mem::take(&mut self.skipped);
        text.clear();
        self.string(&mut text)?;
        std::str::from_utf8(&text).ok()?;
        self.skipped = text;
        Some(())
    }

    /// A JSON number's text (its grammar, strictly).
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            let before = self.i;
            self.digits();
            if self.i == before {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let before = self.i;
            self.digits();
            if self.i == before {
                return None;
            }
        }
        Some(&self.b[start..self.i])
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    /// A JSON integer of at most 18 digits (no fraction, no exponent: those are arrow-json's).
    fn integer(&mut self) -> Option<i64> {
        let token = self.number()?;
        let (negative, digits) = match token.split_first()? {
            (b'-', rest) => (true, rest),
            _ => (false, token),
        };
        if digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = digits.iter().fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
        Some(if negative { -v } else { v })
    }

    /// Skip (and check) a value of a key the schema does not declare.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.skip_string()
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                self.skip_spaces();
                if self.eat(close) {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.expect(b'"')?;
                        self.skip_string()?;
                        self.skip_spaces();
                        self.expect(b':')?;
                        self.skip_spaces();
                    }
                    self.skip_value(depth + 1)?;
                    self.skip_spaces();
                    if self.eat(close) {
                        return Some(());
                    }
                    self.expect(b',')?;
                    self.skip_spaces();
                }
            }
            _ => None,
        }
    }
}

/// `text.starts_with(prefix)` for the short prefixes keys are, without a call to `memcmp` (an
/// eighth of the decoder's time went to calling it).
fn starts_with(text: &[u8], prefix: &[u8]) -> bool {
    text.len() >= prefix.len() && text.iter().zip(prefix).all(|(a, b)| a == b)
}

/// Index of the first `"`, `\\` or control character in `s`: where a string's plain run ends. A
/// raw control character is not JSON (it must be escaped), and a newline inside a string splits
/// the line in two for everyone counting lines, so the caller declines both. Eight bytes at a time
/// (telemetry strings are short; memchr's setup costs more than it saves below 32 bytes), then
/// memchr for long ones, whose run is checked for control characters after.
fn find_string_end(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |w: u64| w.wrapping_sub(ONES) & !w;
    let mut i = 0;
    while i + 8 <= s.len() && i < 32 {
        let word = u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
        // High bit set in each matching byte (and maybe above the first one; the lowest is exact):
        // a quote, a backslash, or a byte below 0x20 (`w - 0x20…` borrows into the high bit of
        // exactly those bytes that are below 0x20 and have no high bit of their own).
        let found = (zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH;
        if found != 0 {
            return Some(i + found.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    let end = i + memchr::memchr2(b'"', b'\\', &s[i..])?;
    Some(s[i..end].iter().position(|b| *b < 0x20).map_or(end, |p| i + p))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as microseconds since the epoch (a fraction's digits
/// past the sixth are dropped, as chrono's `timestamp_micros` does). Other forms: `None`.
fn rfc3339_micros(s: &[u8]) -> Option<i64> {
    fn num(s: &[u8]) -> Option<i64> {
        s.iter().try_fold(0i64, |v, d| d.is_ascii_digit().then(|| v * 10 + i64::from(d - b'0')))
    }
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    if year == 0 {
        return None; // year 0 is a matter of calendars; arrow-json's to judge
    }
    let (hour, minute, second) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || !(1..=month_days[month as usize - 1]).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        let kept = &fraction[..digits.min(6)];
        micros = num(kept)? * 10i64.pow(6 - kept.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            (if *sign == b'+' { 1 } else { -1 }) * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let seconds = crate::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1_000_000 + micros)
}
