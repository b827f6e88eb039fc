//! Rows of text into Arrow record batches: the one place where a field becomes a typed
//! value or makes its row bad. CSV records and JSON objects both arrive as [`Row`]s.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder};
use arrow_array::types::{
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::TimeUnit;

use super::schema::{parse, ColumnType, Columns, Value};

/// How the bytes of text fields are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[serde(alias = "utf8")]
    Utf8,
    #[serde(alias = "latin1", alias = "iso-8859-1")]
    Latin1,
}

/// One input row: the text of its fields, by input column.
pub trait Row {
    fn width(&self) -> usize;
    /// The field's text; None for a missing value (a JSON null or absent key).
    fn field(&self, index: usize) -> Option<&[u8]>;
}

enum Builder {
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    String(StringBuilder),
    Date32(Date32Builder),
    Timestamp(TimeUnit, Int64Builder),
}

impl Builder {
    fn new(ty: ColumnType, capacity: usize) -> Self {
        match ty {
            ColumnType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::String => Self::String(StringBuilder::with_capacity(capacity, capacity * 8)),
            ColumnType::Date32 => Self::Date32(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamp(unit) => Self::Timestamp(unit, Int64Builder::with_capacity(capacity)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::String(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
            Self::Timestamp(unit, b) => {
                let values = b.finish();
                match unit {
                    TimeUnit::Second => Arc::new(values.reinterpret_cast::<TimestampSecondType>()),
                    TimeUnit::Millisecond => Arc::new(values.reinterpret_cast::<TimestampMillisecondType>()),
                    TimeUnit::Microsecond => Arc::new(values.reinterpret_cast::<TimestampMicrosecondType>()),
                    TimeUnit::Nanosecond => Arc::new(values.reinterpret_cast::<TimestampNanosecondType>()),
                }
            }
        }
    }
}

/// Why a row was refused, without its line (the reader knows that).
pub type BadRow = String;

/// Builds record batches of `batch_size` rows from [`Row`]s.
pub struct BatchBuilder {
    columns: Columns,
    /// For each output column, the input column it reads.
    sources: Vec<usize>,
    input_width: usize,
    encoding: Encoding,
    null_values: Vec<Vec<u8>>,
    builders: Vec<Builder>,
    staged: Vec<Option<Value>>,
    rows: usize,
    batch_size: usize,
    latin1: String,
}

impl BatchBuilder {
    pub fn new(
        columns: Columns,
        sources: Vec<usize>,
        input_width: usize,
        encoding: Encoding,
        null_values: Vec<Vec<u8>>,
        batch_size: usize,
    ) -> Self {
        let builders = columns.types.iter().map(|t| Builder::new(*t, batch_size)).collect();
        let staged = Vec::with_capacity(columns.names.len());
        Self {
            columns,
            sources,
            input_width,
            encoding,
            null_values,
            builders,
            staged,
            rows: 0,
            batch_size,
            latin1: String::new(),
        }
    }

    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    fn is_null(&self, text: &[u8]) -> bool {
        self.null_values.iter().any(|n| n.as_slice() == text)
    }

    /// Adds a row, or says why it is bad (and adds nothing).
    pub fn push(&mut self, row: &dyn Row) -> Result<(), BadRow> {
        if row.width() != self.input_width {
            return Err(format!("{} fields, expected {}", row.width(), self.input_width));
        }
        self.staged.clear();
        for (out, &source) in self.sources.iter().enumerate() {
            let ty = self.columns.types[out];
            let value = match row.field(source) {
                None => None,
                Some(text) if self.is_null(text) => None,
                Some(text) => {
                    let parsed = parse(ty, text).ok_or_else(|| {
                        let shown = String::from_utf8_lossy(&text[..text.len().min(40)]);
                        format!("column {}: {shown:?} is not {}", self.columns.names[out], ty.name())
                    })?;
                    if ty == ColumnType::String && self.encoding == Encoding::Utf8 && std::str::from_utf8(text).is_err()
                    {
                        return Err(format!("column {}: invalid UTF-8", self.columns.names[out]));
                    }
                    Some(parsed)
                }
            };
            self.staged.push(value);
        }
        for (out, &source) in self.sources.iter().enumerate() {
            let value = self.staged[out];
            match (&mut self.builders[out], value) {
                (Builder::Bool(b), v) => b.append_option(v.map(|v| matches!(v, Value::Bool(true)))),
                (Builder::Int32(b), v) => b.append_option(v.map(|v| int(v) as i32)),
                (Builder::Int64(b), v) => b.append_option(v.map(int)),
                (Builder::Float64(b), v) => b.append_option(v.map(|v| match v {
                    Value::Float(f) => f,
                    _ => 0.0,
                })),
                (Builder::Date32(b), v) => b.append_option(v.map(|v| int(v) as i32)),
                (Builder::Timestamp(_, b), v) => b.append_option(v.map(int)),
                (Builder::String(b), None) => b.append_null(),
                (Builder::String(b), Some(_)) => {
                    let text = row.field(source).unwrap_or_default();
                    match self.encoding {
                        Encoding::Utf8 => b.append_value(std::str::from_utf8(text).unwrap_or_default()),
                        Encoding::Latin1 => {
                            self.latin1.clear();
                            self.latin1.extend(text.iter().map(|&byte| byte as char));
                            b.append_value(&self.latin1);
                        }
                    }
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_full(&self) -> bool {
        self.rows >= self.batch_size
    }

    /// The rows added since the last call, as a batch (None if there are none).
    pub fn finish(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        self.rows = 0;
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        RecordBatch::try_new(self.columns.arrow(), arrays).ok()
    }
}

fn int(value: Value) -> i64 {
    match value {
        Value::Int(i) | Value::Temporal(i) => i,
        _ => 0,
    }
}
