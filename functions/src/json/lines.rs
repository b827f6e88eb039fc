//! Lines of a byte stream, each capped, with their numbers: the JSON-lines reader
//! `json.transform` and `json.split` share.

use std::io::{self, BufRead};

/// The longest line kept; a longer one is reported, not buffered.
pub const MAX_LINE_BYTES: usize = 8 << 20;

/// One line: its number (from 1) and its bytes without the newline, or `None` for a
/// line over [`MAX_LINE_BYTES`].
pub struct Line {
    pub number: u64,
    pub text: Option<Vec<u8>>,
}

/// Reads lines from `reader`, skipping blank ones.
pub struct Lines<R> {
    reader: R,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, number: 0 }
    }

    /// The next non-blank line.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            let mut text = Vec::new();
            let mut oversized = false;
            let mut any = false;
            loop {
                let buf = self.reader.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                any = true;
                let (piece, end) = match memchr::memchr(b'\n', buf) {
                    Some(at) => (&buf[..at], Some(at + 1)),
                    None => (buf, None),
                };
                if text.len() + piece.len() > MAX_LINE_BYTES {
                    oversized = true;
                    text = Vec::new();
                } else if !oversized {
                    text.extend_from_slice(piece);
                }
                let used = end.unwrap_or(buf.len());
                self.reader.consume(used);
                if end.is_some() {
                    break;
                }
            }
            if !any {
                return Ok(None);
            }
            self.number += 1;
            if oversized {
                return Ok(Some(Line { number: self.number, text: None }));
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Line { number: self.number, text: Some(text) }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_and_blank_ones_skipped() {
        let mut lines = Lines::new(&b"{\"a\":1}\n\n  \n{\"a\":2}"[..]);
        let first = lines.next_line().unwrap().unwrap();
        assert_eq!((first.number, first.text.as_deref()), (1, Some(&b"{\"a\":1}"[..])));
        let second = lines.next_line().unwrap().unwrap();
        assert_eq!((second.number, second.text.as_deref()), (4, Some(&b"{\"a\":2}"[..])));
        assert!(lines.next_line().unwrap().is_none());
    }
}
