//! What a JSON text must satisfy before a recursive parser sees it, checked in one flat pass.
//!
//! arrow-json builds its tape without recursion but prints an unexpected value recursively when it
//! reports it (a body nested 30,000 deep inside a declared string column overflowed the stack and
//! aborted the process); serde_json stops at 128 levels with a message that names no limit. So
//! every text bound for either is checked here first: nesting at most [`MAX_NESTING`] levels, and
//! no raw control character inside a string (JSON requires them escaped; arrow-json would take
//! them). The same pass finds the elements of a top-level array, so an array body is decoded as
//! lines instead of as a tree of `serde_json::Value`s (1M empty objects took 1.37 GB that way).

use std::ops::Range;

/// Objects and arrays nested deeper than this are refused (the flat decoder declines at the same
/// depth, serde_json stops at 128).
pub const MAX_NESTING: usize = 64;

/// Why a text was refused, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub offset: usize,
    pub reason: String,
}

/// One pass over `text`: its nesting and its strings' bytes. `on_element` hears the byte range of
/// each element of a top-level array (whitespace trimmed).
fn walk(text: &[u8], mut on_element: impl FnMut(Range<usize>)) -> Result<(), ShapeError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    // Where the current top-level array element started (depth 1 inside a top-level `[`).
    let mut element: Option<usize> = None;
    let mut top_array = false;
    while i < text.len() {
        let b = text[i];
        if in_string {
            match b {
                b'"' => in_string = false,
                b'\\' => i += 1,
                0..=0x1f => {
                    return Err(ShapeError {
                        offset: i,
                        reason: format!("raw control character U+{b:04X} inside a string (JSON requires it escaped, as \\u{b:04x})"),
                    })
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                if depth == 0 && b == b'[' {
                    top_array = true;
                }
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ShapeError { offset: i, reason: format!("JSON nested deeper than {MAX_NESTING} levels (the limit)") });
                }
            }
            b'}' | b']' => {
                if depth == 1 && top_array {
                    if let Some(start) = element.take() {
                        on_element(start..trim_end(text, i));
                    }
                    top_array = false;
                }
                depth = depth.saturating_sub(1);
            }
            b',' if depth == 1 && top_array => {
                if let Some(start) = element.take() {
                    on_element(start..trim_end(text, i));
                }
            }
            _ => {}
        }
        if top_array && depth >= 1 && element.is_none() && !b.is_ascii_whitespace() && !(depth == 1 && matches!(b, b'[' | b',' | b']')) {
            element = Some(i);
        }
        i += 1;
    }
    Ok(())
}

fn trim_end(text: &[u8], end: usize) -> usize {
    let mut e = end;
    while e > 0 && text[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    e
}

/// The first reason `text` must not reach a recursive JSON parser, if any.
pub fn check(text: &[u8]) -> Result<(), ShapeError> {
    walk(text, |_| {})
}

/// The byte ranges of the elements of the top-level array `text` (checked as [`check`] does).
/// Whether the text is valid JSON is not judged here: the elements' decoder does that.
pub fn array_elements(text: &[u8]) -> Result<Vec<Range<usize>>, ShapeError> {
    let mut elements = Vec::new();
    walk(text, |r| elements.push(r))?;
    Ok(elements)
}

/// 1-based line of byte `offset`.
pub fn line_of(text: &[u8], offset: usize) -> usize {
    1 + memchr::memchr_iter(b'\n', &text[..offset.min(text.len())]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let at_limit = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert_eq!(check(at_limit.as_bytes()), Ok(()));
        let over = format!("{{\"s\":{}{}}}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert_eq!(
            check(over.as_bytes()),
            Err(ShapeError { offset: 5 + MAX_NESTING - 1, reason: "JSON nested deeper than 64 levels (the limit)".into() })
        );
        let in_string = format!("{{\"s\":\"{}\"}}", "[{".repeat(10_000));
        assert_eq!(check(in_string.as_bytes()), Ok(()));
        // An escaped quote does not end the string.
        assert_eq!(check(br#"{"s":"a\"[[[[","t":1}"#), Ok(()));
    }

    #[test]
    fn depth_thirty_thousand_is_refused_without_recursion() {
        let deep = format!("{{\"s\":{}1{}}}", "[".repeat(30_000), "]".repeat(30_000));
        assert_eq!(check(deep.as_bytes()).unwrap_err().offset, 5 + MAX_NESTING - 1);
    }

    #[test]
    fn raw_control_characters_in_strings_are_refused() {
        assert_eq!(
            check(b"{\"s\":\"a\x01b\"}"),
            Err(ShapeError {
                offset: 7,
                reason: "raw control character U+0001 inside a string (JSON requires it escaped, as \\u0001)".into()
            })
        );
        // Outside strings, tabs and newlines are whitespace.
        assert_eq!(check(b"{\t\"s\":\r\n\"a\"}\n"), Ok(()));
        assert!(check(b"{\"s\":\"a\tb\"}").is_err(), "a raw tab in a string");
    }

    #[test]
    fn array_elements_are_found_with_their_nesting() {
        let text = br#" [ {"a":[1,2]} ,{"b":"x,]"}, 3 ,[[]], {} ] "#;
        let found: Vec<&str> = array_elements(text).unwrap().into_iter().map(|r| std::str::from_utf8(&text[r]).unwrap()).collect();
        assert_eq!(found, [r#"{"a":[1,2]}"#, r#"{"b":"x,]"}"#, "3", "[[]]", "{}"]);
        assert_eq!(array_elements(b"[]").unwrap(), Vec::<Range<usize>>::new());
        assert_eq!(array_elements(b"[\n{\"a\":\n1}\n]").unwrap(), vec![2..10]);
    }

    #[test]
    fn lines_are_counted_from_one() {
        assert_eq!(line_of(b"a\nb\nc", 0), 1);
        assert_eq!(line_of(b"a\nb\nc", 2), 2);
        assert_eq!(line_of(b"a\nb\nc", 4), 3);
    }
}
