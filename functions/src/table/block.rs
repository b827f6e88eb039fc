//! Rows gathered into blocks: the fields of many rows in one buffer, so a block is
//! typed column by column, on any thread, instead of field by field as it is read.
//!
//! Reading stays sequential (a CSV record's end is only known by parsing everything
//! before it, and line numbers with it); typing, the expensive half, is what runs in
//! parallel. A block closes at `batch_size` rows or [`MAX_BLOCK_BYTES`].

/// A block closes once its fields hold this much; with one record of at most
/// [`super::csv::MAX_RECORD_BYTES`] on top, offsets fit in `u32`.
pub const MAX_BLOCK_BYTES: usize = 8 << 20;

/// Marks a missing field's end (a JSON null or absent key, as opposed to an empty
/// field): blocks hold far less than 2 GiB, so the top bit is free.
const MISSING: u32 = 1 << 31;

#[derive(Default)]
pub struct Block {
    data: Vec<u8>,
    /// Each field's end in `data`; a field starts where the one before it ends (or at
    /// its row's start). Four bytes a field: blocks in flight are most of the memory.
    ends: Vec<u32>,
    rows: Vec<RowMark>,
}

struct RowMark {
    /// Where the row's text starts in `data`.
    start: u32,
    /// The end of the row's fields in `ends`.
    end: u32,
    line: u64,
    /// A row already known to be bad (too long, not a JSON object), and the text to show
    /// for it; such a row has no fields.
    bad: Option<Box<(String, String)>>,
}

impl Block {
    pub fn with_capacity(rows: usize) -> Self {
        Self { data: Vec::with_capacity(64 << 10), ends: Vec::new(), rows: Vec::with_capacity(rows) }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The bytes its fields hold.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub fn push_row<'a>(&mut self, line: u64, fields: impl IntoIterator<Item = Option<&'a [u8]>>) {
        let start = self.data.len() as u32;
        for field in fields {
            let end = match field {
                Some(text) => {
                    self.data.extend_from_slice(text);
                    self.data.len() as u32
                }
                None => self.data.len() as u32 | MISSING,
            };
            self.ends.push(end);
        }
        self.rows.push(RowMark { start, end: self.ends.len() as u32, line, bad: None });
    }

    /// A row whose fields lie end to end in `data`, each ending at its `ends` offset:
    /// one copy for the whole record (a CSV record as the CSV reader unquoted it).
    pub fn push_joined(&mut self, line: u64, data: &[u8], ends: &[usize]) {
        let base = self.data.len();
        self.data.extend_from_slice(data);
        self.ends.extend(ends.iter().map(|&end| (base + end) as u32));
        self.rows.push(RowMark { start: base as u32, end: self.ends.len() as u32, line, bad: None });
    }

    /// A row that is bad before typing, with why and what to show of it.
    pub fn push_bad(&mut self, line: u64, error: String, shown: String) {
        let start = self.data.len() as u32;
        self.rows.push(RowMark { start, end: self.ends.len() as u32, line, bad: Some(Box::new((error, shown))) });
    }

    fn span(&self, row: usize) -> &[u32] {
        let first = if row == 0 { 0 } else { self.rows[row - 1].end as usize };
        &self.ends[first..self.rows[row].end as usize]
    }

    pub fn width(&self, row: usize) -> usize {
        self.span(row).len()
    }

    pub fn line(&self, row: usize) -> u64 {
        self.rows[row].line
    }

    /// Why the row was bad before typing, and what to show of it.
    pub fn known_bad(&self, row: usize) -> Option<&(String, String)> {
        self.rows[row].bad.as_deref()
    }

    /// The field's text; None when it is missing (or the row has no such field).
    pub fn field(&self, row: usize, index: usize) -> Option<&[u8]> {
        self.range(row, index).map(|r| &self.data[r])
    }

    /// Where the field's text is in [`Block::data`]; None when it is missing.
    pub fn range(&self, row: usize, index: usize) -> Option<std::ops::Range<usize>> {
        let ends = self.span(row);
        let end = *ends.get(index)?;
        if end & MISSING != 0 {
            return None;
        }
        let start = match index {
            0 => self.rows[row].start,
            _ => ends[index - 1] & !MISSING,
        };
        Some(start as usize..end as usize)
    }

    /// All the fields' bytes, to check their encoding once per block.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Blocks handed back once typed, so the reader fills them again: a block freed on a
/// typing thread and a new one grown on the reader would leave each thread's
/// allocator holding memory the other one needs.
#[derive(Clone, Default)]
pub struct Spares(std::sync::Arc<std::sync::Mutex<Vec<Block>>>);

impl Spares {
    /// A cleared spare, or a new block.
    pub fn take(&self, rows: usize) -> Block {
        let spare = self.0.lock().ok().and_then(|mut spares| spares.pop());
        match spare {
            Some(mut block) => {
                block.data.clear();
                block.ends.clear();
                block.rows.clear();
                block
            }
            None => Block::with_capacity(rows),
        }
    }

    pub fn give(&self, block: Block) {
        if let Ok(mut spares) = self.0.lock() {
            // As many as can be in flight; any more would only be kept memory.
            if spares.len() < 4 {
                spares.push(block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_fields_lines_and_missing_values() {
        let mut block = Block::default();
        block.push_row(1, [Some(&b"a"[..]), None, Some(b"")]);
        block.push_bad(3, "too long".into(), String::new());
        block.push_joined(4, b"\xC3\xA9xy", &[2, 3, 4]);
        assert_eq!(block.len(), 3);
        assert_eq!((block.width(2), block.field(2, 1), block.field(2, 2)), (3, Some(&b"x"[..]), Some(&b"y"[..])));
        assert_eq!((block.width(0), block.line(0)), (3, 1));
        assert_eq!(block.field(0, 0), Some(&b"a"[..]));
        assert_eq!(block.field(0, 1), None);
        assert_eq!(block.field(0, 2), Some(&b""[..]));
        assert_eq!(block.known_bad(1).map(|b| b.0.as_str()), Some("too long"));
        assert_eq!(block.width(1), 0);
        let text = std::str::from_utf8(block.data()).unwrap();
        assert_eq!(text.get(block.range(2, 0).unwrap()), Some("é"));
    }

    #[test]
    fn a_field_cut_inside_a_character_is_not_text() {
        // "\xC3" then "\xA9": together UTF-8, each alone not.
        let mut block = Block::default();
        block.push_row(1, [Some(&b"\xC3"[..]), Some(&b"\xA9"[..])]);
        let text = std::str::from_utf8(block.data()).unwrap();
        assert_eq!(text.get(block.range(0, 0).unwrap()), None);
        assert_eq!(text.get(block.range(0, 1).unwrap()), None);
    }
}
