//! CSV records from a byte stream, with their line numbers, in bounded memory.
//!
//! `csv-core` (the state machine under the `csv` crate) splits records; this reader
//! feeds it from any `Read` and keeps every buffer capped, so a 100 MB field is one
//! bad row, not 100 MB of memory. Quoted newlines count towards line numbers.

use std::io::{self, Read};

/// The largest record kept; a longer one is reported as bad and skipped.
pub const MAX_RECORD_BYTES: usize = 8 << 20;
/// The most fields a record may have.
const MAX_FIELDS: usize = 65_536;
const READ_SIZE: usize = 256 << 10;

pub struct CsvReader<R> {
    source: R,
    core: csv_core::Reader,
    input: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    output: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    /// Lines consumed before the current record.
    line: u64,
    first: bool,
}

/// One record: its first line and its fields.
pub struct Record<'a> {
    pub line: u64,
    /// Longer than [`MAX_RECORD_BYTES`] or wider than the field limit: its fields were
    /// not kept.
    pub oversized: bool,
    data: &'a [u8],
    ends: &'a [usize],
}

impl Record<'_> {
    /// The fields end to end, and where each ends.
    pub fn joined(&self) -> (&[u8], &[usize]) {
        (self.data, self.ends)
    }

    pub fn width(&self) -> usize {
        self.ends.len()
    }

    pub fn field(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.data[start..end])
    }
}

impl<R: Read> CsvReader<R> {
    pub fn new(source: R, delimiter: u8, quote: u8) -> Self {
        let core = csv_core::ReaderBuilder::new().delimiter(delimiter).quote(quote).build();
        Self {
            source,
            core,
            input: vec![0; READ_SIZE],
            pos: 0,
            len: 0,
            eof: false,
            output: vec![0; 64 << 10],
            out_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            line: 0,
            first: true,
        }
    }

    /// The next record, or None at the end of the input.
    pub fn next_record(&mut self) -> io::Result<Option<Record<'_>>> {
        self.out_len = 0;
        self.ends_len = 0;
        let mut oversized = false;
        let mut start_line: Option<u64> = None;
        loop {
            if self.pos == self.len && !self.eof {
                self.len = self.source.read(&mut self.input)?;
                self.pos = 0;
                self.eof = self.len == 0;
                if self.first {
                    self.first = false;
                    // A UTF-8 byte-order mark is not part of the first field's name.
                    if self.input[..self.len].starts_with(b"\xEF\xBB\xBF") {
                        self.pos = 3;
                    }
                }
            }
            let input = &self.input[self.pos..self.len];
            let (result, nin, nout, nends) =
                self.core.read_record(input, &mut self.output[self.out_len..], &mut self.ends[self.ends_len..]);
            let consumed = &input[..nin];
            if start_line.is_none() {
                let lead = consumed.iter().take_while(|b| matches!(b, b'\n' | b'\r')).count();
                let blank_lines = consumed[..lead].iter().filter(|b| **b == b'\n').count() as u64;
                if nin > lead || matches!(result, csv_core::ReadRecordResult::Record) {
                    start_line = Some(self.line + blank_lines + 1);
                }
            }
            self.line += memchr::memchr_iter(b'\n', consumed).count() as u64;
            self.pos += nin;
            self.out_len += nout;
            self.ends_len += nends;
            match result {
                csv_core::ReadRecordResult::InputEmpty => continue,
                csv_core::ReadRecordResult::OutputFull => {
                    if self.output.len() >= MAX_RECORD_BYTES {
                        // Keep reading to the record's end, keeping nothing of it.
                        oversized = true;
                        self.out_len = 0;
                        self.ends_len = 0;
                    } else {
                        let grown = (self.output.len() * 2).min(MAX_RECORD_BYTES);
                        self.output.resize(grown, 0);
                    }
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() >= MAX_FIELDS {
                        oversized = true;
                        self.out_len = 0;
                        self.ends_len = 0;
                    } else {
                        let grown = (self.ends.len() * 2).min(MAX_FIELDS);
                        self.ends.resize(grown, 0);
                    }
                }
                csv_core::ReadRecordResult::Record => {
                    let line = start_line.unwrap_or(self.line);
                    // A record's last line ends with its terminator; a final record
                    // without one ends the input.
                    return Ok(Some(Record {
                        line,
                        oversized,
                        data: &self.output[..self.out_len],
                        ends: &self.ends[..self.ends_len],
                    }));
                }
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &[u8]) -> Vec<(u64, Vec<String>)> {
        let mut reader = CsvReader::new(text, b',', b'"');
        let mut out = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            let fields = (0..r.width()).map(|i| String::from_utf8_lossy(r.field(i).unwrap()).into_owned()).collect();
            out.push((r.line, fields));
        }
        out
    }

    #[test]
    fn records_carry_their_first_line() {
        let text = b"\xEF\xBB\xBFa,b\n1,\"two\nlines\"\n\n3,4\n5,6";
        let got = records(text);
        assert_eq!(got[0], (1, vec!["a".to_string(), "b".to_string()]));
        assert_eq!(got[1], (2, vec!["1".to_string(), "two\nlines".to_string()]));
        assert_eq!(got[2], (5, vec!["3".to_string(), "4".to_string()]));
        assert_eq!(got[3], (6, vec!["5".to_string(), "6".to_string()]));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_huge_field_is_an_oversized_record_not_memory() {
        let mut text = b"a,b\n1,".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        text.extend_from_slice(b"\n2,3\n");
        let mut reader = CsvReader::new(text.as_slice(), b',', b'"');
        assert!(!reader.next_record().unwrap().unwrap().oversized);
        let big = reader.next_record().unwrap().unwrap();
        assert!(big.oversized);
        assert_eq!(big.line, 2);
        let next = reader.next_record().unwrap().unwrap();
        assert_eq!((next.line, next.oversized, next.width()), (3, false, 2));
        assert!(reader.output.len() <= MAX_RECORD_BYTES);
    }
}
