//! Record batches out: Parquet, CSV or JSON lines, one file per Hive-style partition
//! (`year=2013/month=1/`), each streamed to its object as it is encoded.
//!
//! A partition's writer stays open while rows keep arriving for it; past
//! `max_open_partitions` the one opened longest ago is finished, and its partition's
//! next rows start a new part (`part` 1, 2, …). Part numbers follow the input's order,
//! so the same input always gives the same keys.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::stream::{ObjectWriter, Outputs};
use crate::FunctionError;

/// The most encoded data the open Parquet files may buffer between them before the
/// largest ends its row group early.
pub const BUFFER_BUDGET: usize = 32 << 20;

/// A table file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Csv,
    #[serde(alias = "jsonl", alias = "ndjson")]
    Json,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "jsonl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Csv => "text/csv",
            Format::Json => "application/x-ndjson",
        }
    }
}

/// Parquet's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Zstd,
    Snappy,
    None,
}

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub format: Format,
    pub codec: Codec,
    pub zstd_level: i32,
    pub row_group_size: usize,
    pub partition_by: Vec<String>,
    pub max_open_partitions: usize,
}

/// Where finished files go: objects streamed to a bucket, or bytes kept for the item
/// a step passes on (capped, since they are in memory).
pub enum Target<'a> {
    Objects { outputs: &'a mut Outputs, key: &'a dyn Fn(&str, u32) -> Result<String, FunctionError> },
    Memory { limit: u64 },
}

/// A file written.
#[derive(Debug)]
pub struct File {
    /// The Hive path of its partition (`year=2013/month=1`), empty without `partition_by`.
    pub partition: String,
    pub part: u32,
    pub rows: u64,
    /// The object's key, when written to a bucket.
    pub key: Option<String>,
    pub size: u64,
    /// The file's bytes, when kept in memory.
    pub bytes: Option<bytes::Bytes>,
}

enum Out {
    Object(ObjectWriter),
    Memory(Vec<u8>, u64),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Object(w) => w.write(buf),
            Out::Memory(v, limit) => {
                if (v.len() + buf.len()) as u64 > *limit {
                    return Err(io::Error::other(format!(
                        "the output passes max_input_bytes = {limit} (set `key` to stream it to a bucket)"
                    )));
                }
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Encoder {
    Parquet(Box<ArrowWriter<Out>>),
    Csv(Box<arrow_csv::Writer<Out>>),
    Json(arrow_json::LineDelimitedWriter<Out>),
}

struct Open {
    encoder: Encoder,
    key: Option<String>,
    part: u32,
    rows: u64,
}

pub struct TableSink<'a> {
    options: WriteOptions,
    target: Target<'a>,
    /// Positions of the partition columns in incoming batches, and of the others.
    partition_columns: Vec<usize>,
    data_columns: Vec<usize>,
    data_schema: Arc<Schema>,
    open: HashMap<String, Open>,
    opened: VecDeque<String>,
    next_part: HashMap<String, u32>,
    pub files: Vec<File>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> FunctionError {
    FunctionError::permanent(format!("{what}: {e}"))
}

impl<'a> TableSink<'a> {
    pub fn new(schema: &Schema, options: WriteOptions, target: Target<'a>) -> Result<Self, FunctionError> {
        let mut partition_columns = Vec::new();
        for name in &options.partition_by {
            let index = schema.index_of(name).map_err(|_| {
                FunctionError::permanent(format!("partition_by names column {name:?}, which the table lacks"))
            })?;
            partition_columns.push(index);
        }
        let data_columns: Vec<usize> = (0..schema.fields().len()).filter(|i| !partition_columns.contains(i)).collect();
        if data_columns.is_empty() {
            return Err(FunctionError::permanent("every column is a partition column: the files would be empty"));
        }
        let mut data_schema = schema.project(&data_columns).map_err(|e| failed("schema", e))?;
        if options.format == Format::Parquet {
            // Parquet has no seconds unit: pyarrow and DuckDB store such timestamps as
            // milliseconds, and so does weir, so that every reader sees a timestamp.
            let fields: Vec<_> = data_schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Timestamp(TimeUnit::Second, tz) => Arc::new(
                        f.as_ref().clone().with_data_type(DataType::Timestamp(TimeUnit::Millisecond, tz.clone())),
                    ),
                    _ => f.clone(),
                })
                .collect();
            data_schema = Schema::new(fields);
        }
        let data_schema = Arc::new(data_schema);
        Ok(Self {
            options,
            target,
            partition_columns,
            data_columns,
            data_schema,
            open: HashMap::new(),
            opened: VecDeque::new(),
            next_part: HashMap::new(),
            files: Vec::new(),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), FunctionError> {
        if self.partition_columns.is_empty() {
            let data = batch.project(&self.data_columns).map_err(|e| failed("projecting", e))?;
            return self.write_to(String::new(), &data);
        }
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut last: Option<(String, usize)> = None;
        for row in 0..batch.num_rows() {
            let hive = self.hive_path(batch, row);
            let group = match &last {
                Some((previous, g)) if *previous == hive => *g,
                _ => match index.get(&hive) {
                    Some(g) => *g,
                    None => {
                        groups.push((hive.clone(), Vec::new()));
                        index.insert(hive.clone(), groups.len() - 1);
                        groups.len() - 1
                    }
                },
            };
            groups[group].1.push(row as u32);
            last = Some((hive, group));
        }
        let data = batch.project(&self.data_columns).map_err(|e| failed("projecting", e))?;
        if groups.len() == 1 {
            let (hive, _) = groups.pop().expect("one group");
            return self.write_to(hive, &data);
        }
        for (hive, rows) in groups {
            let part = arrow_select::take::take_record_batch(&data, &UInt32Array::from(rows))
                .map_err(|e| failed("partitioning", e))?;
            self.write_to(hive, &part)?;
        }
        Ok(())
    }

    fn hive_path(&self, batch: &RecordBatch, row: usize) -> String {
        let mut path = String::new();
        for (n, &column) in self.partition_columns.iter().enumerate() {
            if n > 0 {
                path.push('/');
            }
            path.push_str(&self.options.partition_by[n]);
            path.push('=');
            hive_value(batch.column(column).as_ref(), row, &mut path);
        }
        path
    }

    /// The batch in the files' schema (timestamps in seconds widened for Parquet).
    fn coerce(&self, data: &RecordBatch) -> Result<RecordBatch, FunctionError> {
        if data.schema().fields() == self.data_schema.fields() {
            return Ok(data.clone());
        }
        let columns = data
            .columns()
            .iter()
            .zip(self.data_schema.fields())
            .map(|(column, field)| arrow_cast::cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed("converting timestamps", e))?;
        RecordBatch::try_new(self.data_schema.clone(), columns).map_err(|e| failed("converting timestamps", e))
    }

    fn write_to(&mut self, hive: String, data: &RecordBatch) -> Result<(), FunctionError> {
        let data = &self.coerce(data)?;
        if !self.open.contains_key(&hive) {
            if self.open.len() >= self.options.max_open_partitions.max(1) {
                if let Some(oldest) = self.opened.pop_front() {
                    self.close(&oldest)?;
                }
            }
            let part = *self.next_part.entry(hive.clone()).and_modify(|p| *p += 1).or_insert(0);
            let (out, key) = match &mut self.target {
                Target::Objects { outputs, key } => {
                    let key = key(&hive, part)?;
                    let writer = outputs.open(key.clone()).map_err(|e| crate::stream::io_error(&key, e))?;
                    (Out::Object(writer), Some(key))
                }
                Target::Memory { limit } => (Out::Memory(Vec::new(), *limit), None),
            };
            let encoder = self.encoder(out)?;
            self.open.insert(hive.clone(), Open { encoder, key, part, rows: 0 });
            self.opened.push_back(hive.clone());
        }
        let open = self.open.get_mut(&hive).expect("opened above");
        open.rows += data.num_rows() as u64;
        let what = || open.key.clone().unwrap_or_else(|| "the output".into());
        match &mut open.encoder {
            Encoder::Parquet(w) => w.write(data).map_err(|e| write_error(&what(), e.into()))?,
            Encoder::Csv(w) => w.write(data).map_err(|e| write_error(&what(), e.into()))?,
            Encoder::Json(w) => w.write(data).map_err(|e| write_error(&what(), e.into()))?,
        }
        self.keep_to_budget()
    }

    /// Ends the row group of the partition holding the most while all of them together
    /// hold more than [`BUFFER_BUDGET`]: many partitions each short of a full row group
    /// would otherwise buffer the whole input between them.
    fn keep_to_budget(&mut self) -> Result<(), FunctionError> {
        let buffered = |open: &Open| match &open.encoder {
            Encoder::Parquet(w) => w.in_progress_size(),
            _ => 0,
        };
        while self.open.values().map(buffered).sum::<usize>() > BUFFER_BUDGET {
            let Some(open) = self.open.values_mut().max_by_key(|o| buffered(o)) else { break };
            let what = open.key.clone().unwrap_or_else(|| "the output".into());
            if let Encoder::Parquet(w) = &mut open.encoder {
                w.flush().map_err(|e| write_error(&what, e.into()))?;
            }
        }
        Ok(())
    }

    fn encoder(&self, out: Out) -> Result<Encoder, FunctionError> {
        Ok(match self.options.format {
            Format::Parquet => {
                let compression = match self.options.codec {
                    Codec::Zstd => Compression::ZSTD(
                        ZstdLevel::try_new(self.options.zstd_level).map_err(|e| failed("zstd level", e))?,
                    ),
                    Codec::Snappy => Compression::SNAPPY,
                    Codec::None => Compression::UNCOMPRESSED,
                };
                let properties = WriterProperties::builder()
                    .set_compression(compression)
                    .set_max_row_group_row_count(Some(self.options.row_group_size.max(1)))
                    .set_created_by(concat!("weir ", env!("CARGO_PKG_VERSION")).into())
                    .build();
                let writer = ArrowWriter::try_new(out, self.data_schema.clone(), Some(properties))
                    .map_err(|e| failed("starting a Parquet file", e))?;
                Encoder::Parquet(Box::new(writer))
            }
            Format::Csv => Encoder::Csv(Box::new(arrow_csv::WriterBuilder::new().with_header(true).build(out))),
            Format::Json => Encoder::Json(arrow_json::LineDelimitedWriter::new(out)),
        })
    }

    fn close(&mut self, hive: &str) -> Result<(), FunctionError> {
        let Some(open) = self.open.remove(hive) else { return Ok(()) };
        let what = open.key.clone().unwrap_or_else(|| "the output".into());
        let out = match open.encoder {
            Encoder::Parquet(w) => w.into_inner().map_err(|e| write_error(&what, e.into()))?,
            Encoder::Csv(w) => w.into_inner(),
            Encoder::Json(mut w) => {
                w.finish().map_err(|e| write_error(&what, e.into()))?;
                w.into_inner()
            }
        };
        let (size, bytes) = match out {
            Out::Object(writer) => (writer.finish().map_err(|e| crate::stream::io_error(&what, e))?, None),
            Out::Memory(bytes, _) => (bytes.len() as u64, Some(bytes::Bytes::from(bytes))),
        };
        self.files.push(File {
            partition: hive.to_string(),
            part: open.part,
            rows: open.rows,
            key: open.key,
            size,
            bytes,
        });
        Ok(())
    }

    /// Finishes every open file; returns them all, in the order they were finished.
    pub fn finish(mut self) -> Result<Vec<File>, FunctionError> {
        while let Some(hive) = self.opened.pop_front() {
            self.close(&hive)?;
        }
        Ok(self.files)
    }
}

/// An encoder's error, keeping a store failure or a stopped invocation as what it is.
fn write_error(what: &str, e: Box<dyn std::error::Error + Send + Sync>) -> FunctionError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            let kind = io.kind();
            let message = io.to_string();
            if kind == io::ErrorKind::BrokenPipe {
                return FunctionError::retryable(format!("writing {what}: the invocation stopped"));
            }
            return FunctionError::permanent(format!("writing {what}: {message}"));
        }
        source = err.source();
    }
    FunctionError::permanent(format!("writing {what}: {e}"))
}

/// A partition value as a key segment: Hive's escaping (`%2F` for `/`), and
/// `__HIVE_DEFAULT_PARTITION__` for null, as Spark, Hive, pyarrow and DuckDB read them.
fn hive_value(array: &dyn Array, row: usize, out: &mut String) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use std::fmt::Write as _;
    if array.is_null(row) {
        out.push_str("__HIVE_DEFAULT_PARTITION__");
        return;
    }
    let text = match array.data_type() {
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            chrono::DateTime::from_timestamp(days as i64 * 86_400, 0)
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_default()
        }
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row) / 1_000,
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row) / 1_000_000,
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row) / 1_000_000_000,
            };
            chrono::DateTime::from_timestamp(v, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        }
        _ => String::new(),
    };
    if text.is_empty() {
        out.push_str("__HIVE_DEFAULT_PARTITION__");
        return;
    }
    for (i, c) in text.chars().enumerate() {
        let plain = c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ' ') || (c == '.' && i > 0);
        if plain {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}
