//! Blocks of rows into Arrow record batches, column by column: the one place where a
//! field becomes a typed value or makes its row bad. CSV records and JSON objects both
//! arrive as [`Block`]s; a [`Typer`] is shared by the threads that type them.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{ArrayRef, BooleanArray, PrimitiveArray, RecordBatch};
use arrow_buffer::{BooleanBuffer, BooleanBufferBuilder, NullBuffer};
use arrow_schema::TimeUnit;

use super::block::Block;
use super::schema::{self, ColumnType, Columns};

/// How the bytes of text fields are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[serde(alias = "utf8")]
    Utf8,
    #[serde(alias = "latin1", alias = "iso-8859-1")]
    Latin1,
}

/// One bad row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadRow {
    pub line: u64,
    pub error: String,
    /// The row's fields (or text), cut to 1 KiB.
    pub row: String,
}

/// A block typed: the batch of its good rows (None if it has none), and its bad rows in
/// input order.
pub struct Typed {
    pub batch: Option<RecordBatch>,
    pub bad: Vec<BadRow>,
}

/// Types blocks into batches of the output columns.
pub struct Typer {
    columns: Columns,
    /// For each output column, the input column it reads.
    sources: Vec<usize>,
    input_width: usize,
    encoding: Encoding,
    null_values: Vec<Vec<u8>>,
    /// Whether "" is a null value, and which bytes start one that is not empty: most
    /// fields are told apart from every null value by their first byte.
    empty_is_null: bool,
    null_starts: [bool; 256],
}

/// The text of a block's fields, when the whole block is UTF-8 (checked once).
type Text<'a> = Option<&'a str>;

impl Typer {
    pub fn new(
        columns: Columns,
        sources: Vec<usize>,
        input_width: usize,
        encoding: Encoding,
        null_values: Vec<Vec<u8>>,
    ) -> Self {
        let mut null_starts = [false; 256];
        for value in &null_values {
            if let Some(&first) = value.first() {
                null_starts[first as usize] = true;
            }
        }
        let empty_is_null = null_values.iter().any(Vec::is_empty);
        Self { columns, sources, input_width, encoding, null_values, empty_is_null, null_starts }
    }

    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    fn is_null(&self, text: &[u8]) -> bool {
        match text.first() {
            None => self.empty_is_null,
            Some(&first) => self.null_starts[first as usize] && self.null_values.iter().any(|n| n.as_slice() == text),
        }
    }

    /// Types every row of `block`. A row is bad for the first reason found: known bad
    /// when read, the wrong width, then the first output column that refuses its field.
    pub fn type_block(&self, block: &Block) -> Typed {
        let n = block.len();
        let mut bad: Vec<Option<String>> = (0..n)
            .map(|row| match block.known_bad(row) {
                Some((error, _)) => Some(error.clone()),
                None if block.width(row) != self.input_width => {
                    Some(format!("{} fields, expected {}", block.width(row), self.input_width))
                }
                None => None,
            })
            .collect();
        let text = match self.encoding {
            Encoding::Utf8 => std::str::from_utf8(block.data()).ok(),
            Encoding::Latin1 => None,
        };
        let arrays: Vec<ArrayRef> =
            (0..self.columns.names.len()).map(|out| self.column(out, block, text, &mut bad)).collect();
        let good = bad.iter().filter(|b| b.is_none()).count();
        let batch = RecordBatch::try_new(self.columns.arrow(), arrays).ok().filter(|_| good > 0);
        let batch = match batch {
            Some(batch) if good < n => {
                let keep = BooleanArray::from(bad.iter().map(Option::is_none).collect::<Vec<_>>());
                arrow_select::filter::filter_record_batch(&batch, &keep).ok()
            }
            other => other,
        };
        let bad = bad
            .into_iter()
            .enumerate()
            .filter_map(|(row, error)| {
                let error = error?;
                let shown = match block.known_bad(row) {
                    Some((_, shown)) => shown.clone(),
                    None => {
                        let fields: Vec<String> = (0..block.width(row))
                            .map(|i| String::from_utf8_lossy(block.field(row, i).unwrap_or_default()).into_owned())
                            .collect();
                        cut(&serde_json::to_string(&fields).unwrap_or_default())
                    }
                };
                Some(BadRow { line: block.line(row), error, row: shown })
            })
            .collect();
        Typed { batch, bad }
    }

    fn refused(&self, out: usize, text: &[u8]) -> String {
        let shown = String::from_utf8_lossy(&text[..text.len().min(40)]);
        format!("column {}: {shown:?} is not {}", self.columns.names[out], self.columns.types[out].name())
    }

    fn column(&self, out: usize, block: &Block, text: Text<'_>, bad: &mut [Option<String>]) -> ArrayRef {
        match self.columns.types[out] {
            ColumnType::Bool => {
                let (values, nulls) = self.values(out, block, bad, schema::parse_bool);
                Arc::new(BooleanArray::new(BooleanBuffer::from_iter(values), Some(nulls)))
            }
            ColumnType::Int32 => {
                Arc::new(self.primitive::<Int32Type>(out, block, bad, |t| {
                    schema::parse_int(t).and_then(|v| i32::try_from(v).ok())
                }))
            }
            ColumnType::Int64 => Arc::new(self.primitive::<Int64Type>(out, block, bad, schema::parse_int)),
            ColumnType::Float64 => Arc::new(self.primitive::<Float64Type>(out, block, bad, schema::parse_float)),
            ColumnType::Date32 => Arc::new(self.primitive::<Date32Type>(out, block, bad, |t| {
                schema::parse_date(t).and_then(|v| i32::try_from(v).ok())
            })),
            ColumnType::Timestamp(unit) => {
                let parse = move |t: &[u8]| schema::parse_timestamp(t, unit);
                match unit {
                    TimeUnit::Second => Arc::new(self.primitive::<TimestampSecondType>(out, block, bad, parse)),
                    TimeUnit::Millisecond => {
                        Arc::new(self.primitive::<TimestampMillisecondType>(out, block, bad, parse))
                    }
                    TimeUnit::Microsecond => {
                        Arc::new(self.primitive::<TimestampMicrosecondType>(out, block, bad, parse))
                    }
                    TimeUnit::Nanosecond => Arc::new(self.primitive::<TimestampNanosecondType>(out, block, bad, parse)),
                }
            }
            ColumnType::String => Arc::new(self.strings(out, block, text, bad)),
        }
    }

    fn primitive<T: ArrowPrimitiveType>(
        &self,
        out: usize,
        block: &Block,
        bad: &mut [Option<String>],
        parse: impl Fn(&[u8]) -> Option<T::Native>,
    ) -> PrimitiveArray<T> {
        let (values, nulls) = self.values(out, block, bad, parse);
        PrimitiveArray::new(values.into(), Some(nulls))
    }

    /// A column's values; a row whose field does not parse is marked bad (and gets a
    /// null, dropped with the row).
    fn values<V: Default + Copy>(
        &self,
        out: usize,
        block: &Block,
        bad: &mut [Option<String>],
        parse: impl Fn(&[u8]) -> Option<V>,
    ) -> (Vec<V>, NullBuffer) {
        let source = self.sources[out];
        let mut values = Vec::with_capacity(block.len());
        let mut valid = BooleanBufferBuilder::new(block.len());
        for (row, bad) in bad.iter_mut().enumerate() {
            let value = match block.field(row, source) {
                _ if bad.is_some() => None,
                None => None,
                Some(t) if self.is_null(t) => None,
                Some(t) => {
                    let value = parse(t);
                    if value.is_none() {
                        *bad = Some(self.refused(out, t));
                    }
                    value
                }
            };
            values.push(value.unwrap_or_default());
            valid.append(value.is_some());
        }
        (values, NullBuffer::new(valid.finish()))
    }

    fn strings(
        &self,
        out: usize,
        block: &Block,
        text: Text<'_>,
        bad: &mut [Option<String>],
    ) -> arrow_array::StringArray {
        let source = self.sources[out];
        let mut builder = StringBuilder::with_capacity(block.len(), block.bytes() / self.input_width.max(1));
        let mut latin1 = String::new();
        for (row, bad) in bad.iter_mut().enumerate() {
            let Some(range) = block.range(row, source).filter(|_| bad.is_none()) else {
                builder.append_null();
                continue;
            };
            let bytes = &block.data()[range.clone()];
            if self.is_null(bytes) {
                builder.append_null();
                continue;
            }
            let value = match (self.encoding, text) {
                (Encoding::Latin1, _) => {
                    latin1.clear();
                    latin1.extend(bytes.iter().map(|&byte| byte as char));
                    Some(latin1.as_str())
                }
                (Encoding::Utf8, Some(text)) => text.get(range),
                (Encoding::Utf8, None) => std::str::from_utf8(bytes).ok(),
            };
            match value {
                Some(value) => builder.append_value(value),
                None => {
                    *bad = Some(format!("column {}: invalid UTF-8", self.columns.names[out]));
                    builder.append_null();
                }
            }
        }
        builder.finish()
    }
}

/// `text` cut to 1 KiB of characters, for listing a bad row.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(1024) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
