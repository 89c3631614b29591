//! Splitting a byte stream (a child's pipe, a container's log chunks) into lines, without
//! trusting it: invalid UTF-8 is replaced, and a line longer than the limit is reported and
//! dropped instead of growing memory without bound.

/// What the splitter hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Line(&'a str),
    /// A line longer than the limit (its length so far); its bytes are discarded.
    TooLong(usize),
}

pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    /// Inside a too-long line: skip bytes up to its end.
    skipping: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter { buf: Vec::new(), max, skipping: false }
    }

    /// Feed a chunk; `f` gets every complete line.
    pub fn push(&mut self, mut chunk: &[u8], mut f: impl FnMut(Piece<'_>)) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.buf.is_empty() {
                emit(head, &mut f);
            } else {
                self.buf.extend_from_slice(head);
                emit(&self.buf, &mut f);
                self.buf.clear();
            }
        }
        if self.skipping {
            return;
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > self.max {
            f(Piece::TooLong(self.buf.len()));
            self.buf.clear();
            self.skipping = true;
        }
    }

    /// The last line when the stream ends without a newline.
    pub fn finish(&mut self, mut f: impl FnMut(Piece<'_>)) {
        if !self.buf.is_empty() && !self.skipping {
            emit(&self.buf, &mut f);
        }
        self.buf.clear();
        self.skipping = false;
    }
}

fn emit(bytes: &[u8], f: &mut impl FnMut(Piece<'_>)) {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => f(Piece::Line(s)),
        Err(_) => f(Piece::Line(&String::from_utf8_lossy(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut take = |p: Piece<'_>| {
            out.push(match p {
                Piece::Line(l) => l.to_string(),
                Piece::TooLong(n) => format!("<too long: {n}>"),
            })
        };
        for c in chunks {
            s.push(c, &mut take);
        }
        s.finish(&mut take);
        out
    }

    #[test]
    fn lines_across_chunks_crlf_invalid_utf8_and_a_tail() {
        assert_eq!(split(&[b"ab", b"c\r\nde\n", b"f\xffg\n", b"tail"], 100), ["abc", "de", "f\u{fffd}g", "tail"]);
    }

    #[test]
    fn a_line_over_the_limit_is_reported_once_and_skipped_to_its_end() {
        assert_eq!(split(&[b"ok\n0123456789", b"0123456789", b"xyz\nnext\n"], 12), ["ok", "<too long: 20>", "next"]);
    }
}
