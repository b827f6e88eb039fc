//! Tables in: CSV or JSON lines from a byte stream (typed from a sample or the declared
//! schema), JSON records from a Kafka batch, or Parquet, as record batches, with bad
//! rows reported by line.

use std::collections::VecDeque;
use std::io::{self, BufReader, Read};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema};

use super::block::{Block, Spares, MAX_BLOCK_BYTES};
use super::csv::CsvReader;
pub use super::rows::BadRow;
use super::rows::{Encoding, Typed, Typer};
use super::schema::{ColumnType, Columns, Inference};
use crate::ordered::Ordered;
use crate::stream::io_error;
use crate::FunctionError;

/// How rows that do not fit are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    /// The first bad row fails the input (it is dead-lettered whole, nothing is written).
    Fail,
    /// Bad rows are counted and left out.
    Skip,
    /// Bad rows are left out and listed in one dead-letter object per input.
    DeadLetter,
}

/// A column of the output: an input column, optionally renamed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum ColumnSpec {
    Name(String),
    Renamed { name: String, from: String },
}

impl ColumnSpec {
    fn source(&self) -> &str {
        match self {
            ColumnSpec::Name(n) => n,
            ColumnSpec::Renamed { from, .. } => from,
        }
    }

    fn name(&self) -> &str {
        match self {
            ColumnSpec::Name(n) => n,
            ColumnSpec::Renamed { name, .. } => name,
        }
    }
}

/// The input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// From the first bytes (Parquet's `PAR1`), else the key's extension.
    Auto,
    Csv,
    #[serde(alias = "jsonl", alias = "ndjson")]
    Json,
    Parquet,
}

#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub format: InputFormat,
    pub delimiter: u8,
    pub quote: u8,
    pub header: bool,
    pub encoding: Encoding,
    pub null_values: Vec<Vec<u8>>,
    /// Declared types, overriding inference for the columns named.
    pub schema: Vec<(String, ColumnType)>,
    /// Output columns; empty keeps them all.
    pub columns: Vec<ColumnSpec>,
    pub batch_size: usize,
    pub sample_rows: usize,
    /// The largest Parquet input (read whole: its footer comes last).
    pub max_parquet_bytes: u64,
    /// What a compressed input may expand to.
    pub expansion: crate::compress::Expansion,
}

/// The most row bytes kept for type inference, whatever `sample_rows` says: a
/// thousand 8 MiB rows must not become 8 GiB of sample.
pub const SAMPLE_BYTES: usize = 16 << 20;

/// What a reader calls with each bad row; an error stops the input.
pub type OnBad<'a> = dyn FnMut(BadRow) -> Result<(), FunctionError> + 'a;

enum Kind {
    Csv {
        reader: Box<CsvReader<Box<dyn Read + Send>>>,
        /// Blocks read for the sample, typed first.
        queued: VecDeque<Block>,
        /// The reader reached the end of the input.
        ended: bool,
    },
    Json {
        rows: Box<dyn Iterator<Item = JsonLine> + Send>,
        names: Vec<String>,
        sample: VecDeque<(u64, Result<Object, String>)>,
        fields: JsonRow,
    },
    Parquet {
        reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
        projection: Vec<usize>,
        schema: Arc<Schema>,
    },
    /// CSV or JSON rows being read on their own thread and typed in the CPU pool.
    Typing(Ordered<Typed>),
}

/// A JSON row: its line (or record index) and the parsed value or why it is not one;
/// an error reading the input at all (the store failed) stops the input.
pub type JsonLine = Result<(u64, Result<Object, String>), FunctionError>;

/// A JSON object with its keys in the order written, so columns come out in the
/// input's order.
pub type Object = indexmap::IndexMap<String, serde_json::Value>;

pub struct TableReader {
    name: String,
    kind: Kind,
    /// What types CSV and JSON rows; Parquet arrives typed.
    typer: Option<Arc<Typer>>,
    batch_size: usize,
    pub rows: u64,
    pub bad_rows: u64,
}

impl TableReader {
    /// Opens a byte stream as a table; `name` (the key) is for messages and the
    /// format's extension.
    pub fn open(name: &str, input: Box<dyn Read + Send>, options: &ReadOptions) -> Result<Self, FunctionError> {
        // A compressed input (flights.csv.gz) is read through its codec, within limits.
        let (mut input, _) =
            crate::compress::codec::open(input, None, options.expansion, name).map_err(|e| io_error(name, e))?;
        let name = name.strip_suffix(".gz").or_else(|| name.strip_suffix(".zst")).unwrap_or(name);
        let mut head = Vec::with_capacity(4);
        (&mut input).take(4).read_to_end(&mut head).map_err(|e| io_error(name, e))?;
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        let format = match options.format {
            InputFormat::Auto if head == b"PAR1" => InputFormat::Parquet,
            InputFormat::Auto => match ext.as_str() {
                "json" | "jsonl" | "ndjson" => InputFormat::Json,
                "parquet" => {
                    return Err(FunctionError::permanent(format!(
                        "{name} is named .parquet but is not Parquet (it does not start with PAR1)"
                    )))
                }
                _ => InputFormat::Csv,
            },
            other => other,
        };
        if head.is_empty() {
            return Err(FunctionError::permanent(format!("{name} is empty: no header and no rows")));
        }
        let input: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(input));
        match format {
            InputFormat::Parquet => Self::parquet(name, input, options),
            InputFormat::Json => {
                let reader = BufReader::with_capacity(256 << 10, input);
                let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let lines =
                    Lines { lines: crate::json::lines::Lines::new(reader), name: name.to_string(), read: read.clone() };
                Self::json(name, Box::new(lines), options, Some(read))
            }
            _ => Self::csv(name, input, options),
        }
    }

    fn csv(name: &str, input: Box<dyn Read + Send>, options: &ReadOptions) -> Result<Self, FunctionError> {
        let mut reader = CsvReader::new(input, options.delimiter, options.quote);
        let decode = |bytes: &[u8]| match options.encoding {
            Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Latin1 => bytes.iter().map(|&b| b as char).collect(),
        };
        let mut names = Vec::new();
        if options.header {
            let header = reader
                .next_record()
                .map_err(|e| io_error(name, e))?
                .ok_or_else(|| FunctionError::permanent(format!("{name} is empty: no header and no rows")))?;
            if header.oversized {
                return Err(FunctionError::permanent(format!("{name} line 1: the header is too long")));
            }
            names = (0..header.width()).map(|i| decode(header.field(i).unwrap_or_default())).collect();
        }
        let mut queued = VecDeque::new();
        let (mut rows, mut bytes, mut ended) = (0, 0, false);
        while rows < options.sample_rows && bytes < SAMPLE_BYTES && !ended {
            let limit = (options.sample_rows - rows).min(options.batch_size);
            let block;
            (block, ended) =
                fill_csv(&mut reader, Block::with_capacity(limit), limit).map_err(|e| io_error(name, e))?;
            rows += block.len();
            bytes += block.bytes();
            queued.push_back(block);
        }
        let sample = || queued.iter().flat_map(|b| (0..b.len()).map(move |row| (b, row)));
        if !options.header {
            let width = sample().find(|(b, row)| b.known_bad(*row).is_none()).map_or(0, |(b, row)| b.width(row));
            names = (1..=width).map(|i| format!("column_{i}")).collect();
        }
        if rows == 0 {
            return Err(FunctionError::permanent(format!("{name} has a header but no rows")));
        }
        let names = unique_names(names);
        let mut inference = vec![Inference::default(); names.len()];
        for (block, row) in sample().filter(|(b, row)| b.known_bad(*row).is_none() && b.width(*row) == names.len()) {
            for (i, infer) in inference.iter_mut().enumerate() {
                let text = block.field(row, i).unwrap_or_default();
                if !options.null_values.iter().any(|n| n.as_slice() == text) {
                    infer.observe(text);
                }
            }
        }
        let types = inference.iter().map(Inference::result).collect();
        let typer = build(name, &names, types, options)?;
        Ok(Self::typed(name, Kind::Csv { reader: Box::new(reader), queued, ended }, typer, options))
    }

    fn typed(name: &str, kind: Kind, typer: Typer, options: &ReadOptions) -> Self {
        Self {
            name: name.to_string(),
            kind,
            typer: Some(Arc::new(typer)),
            batch_size: options.batch_size,
            rows: 0,
            bad_rows: 0,
        }
    }

    /// JSON rows from any source: lines of a byte stream, or the records of a batch.
    /// JSON rows; `read` counts the bytes of the lines read so far, to bound the sample
    /// (None when the rows are already in memory).
    pub fn json(
        name: &str,
        mut rows: Box<dyn Iterator<Item = JsonLine> + Send>,
        options: &ReadOptions,
        read: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    ) -> Result<Self, FunctionError> {
        let mut sample = VecDeque::new();
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for row in rows.by_ref() {
            let row = row?;
            if let (_, Ok(map)) = &row {
                for key in map.keys() {
                    if seen.insert(key.clone()) {
                        names.push(key.clone());
                    }
                }
            }
            sample.push_back(row);
            let sampled = read.as_ref().map_or(0, |r| r.load(std::sync::atomic::Ordering::Relaxed));
            if sample.len() >= options.sample_rows || sampled >= SAMPLE_BYTES {
                break;
            }
        }
        if sample.is_empty() {
            return Err(FunctionError::permanent(format!("{name} is empty: no rows")));
        }
        if names.is_empty() {
            return Err(FunctionError::permanent(format!("{name}: no JSON object among the first rows")));
        }
        let mut inference = vec![Inference::default(); names.len()];
        let mut fields = JsonRow::default();
        for (_, value) in &sample {
            if let Ok(value) = value {
                fields.fill(value, &names);
                for (i, infer) in inference.iter_mut().enumerate() {
                    if let Some(text) = fields.field(i) {
                        if !options.null_values.iter().any(|n| n.as_slice() == text) {
                            infer.observe(text);
                        }
                    }
                }
            }
        }
        let types = inference.iter().map(Inference::result).collect();
        let typer = build(name, &names, types, options)?;
        Ok(Self::typed(name, Kind::Json { rows, names, sample, fields }, typer, options))
    }

    fn parquet(name: &str, input: Box<dyn Read + Send>, options: &ReadOptions) -> Result<Self, FunctionError> {
        let mut bytes = Vec::new();
        input.take(options.max_parquet_bytes + 1).read_to_end(&mut bytes).map_err(|e| io_error(name, e))?;
        if bytes.len() as u64 > options.max_parquet_bytes {
            return Err(FunctionError::permanent(format!(
                "{name} is over max_input_bytes = {} (Parquet inputs are read whole)",
                options.max_parquet_bytes
            )));
        }
        let not_parquet = |e: parquet::errors::ParquetError| {
            FunctionError::permanent(format!("{name} is not a readable Parquet file: {e}"))
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .map_err(not_parquet)?
            .with_batch_size(options.batch_size);
        let full = builder.schema().clone();
        let specs: Vec<ColumnSpec> = if options.columns.is_empty() {
            full.fields().iter().map(|f| ColumnSpec::Name(f.name().clone())).collect()
        } else {
            options.columns.clone()
        };
        let mut projection = Vec::new();
        let mut fields = Vec::new();
        for spec in &specs {
            let index = full.index_of(spec.source()).map_err(|_| {
                FunctionError::permanent(format!("columns names {:?}, which {name} lacks", spec.source()))
            })?;
            projection.push(index);
            let field = full.field(index);
            fields.push(Field::new(spec.name(), field.data_type().clone(), true));
        }
        let reader = builder.build().map_err(not_parquet)?;
        Ok(Self {
            name: name.to_string(),
            kind: Kind::Parquet { reader, projection, schema: Arc::new(Schema::new(fields)) },
            typer: None,
            batch_size: options.batch_size,
            rows: 0,
            bad_rows: 0,
        })
    }

    pub fn schema(&self) -> Arc<Schema> {
        match (&self.kind, &self.typer) {
            (Kind::Parquet { schema, .. }, _) => schema.clone(),
            (_, Some(typer)) => typer.columns().arrow(),
            _ => Arc::new(Schema::empty()),
        }
    }

    /// The next batch of good rows; bad ones go to `on_bad`.
    pub fn next_batch(&mut self, on_bad: &mut OnBad<'_>) -> Result<Option<RecordBatch>, FunctionError> {
        let name = self.name.as_str();
        match &mut self.kind {
            Kind::Parquet { reader, projection, schema } => match reader.next() {
                None => Ok(None),
                Some(Err(e)) => Err(FunctionError::permanent(format!("{name} is not a readable Parquet file: {e}"))),
                Some(Ok(batch)) => {
                    let columns = projection.iter().map(|&i| batch.column(i).clone()).collect();
                    let batch = RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| FunctionError::permanent(format!("{name}: {e}")))?;
                    self.rows += batch.num_rows() as u64;
                    Ok(Some(batch))
                }
            },
            _ => self.next_typed(on_bad),
        }
    }

    /// Typed blocks in input order; reading starts (on its own thread) at the first
    /// call. A block of only bad rows yields no batch, so this goes on.
    fn next_typed(&mut self, on_bad: &mut OnBad<'_>) -> Result<Option<RecordBatch>, FunctionError> {
        if let (Some(typer), false) = (&self.typer, matches!(self.kind, Kind::Typing(_))) {
            let mut kind = std::mem::replace(&mut self.kind, Kind::Typing(Ordered::empty()));
            let (batch_size, name, typer) = (self.batch_size, self.name.clone(), typer.clone());
            let spares = Spares::default();
            let given = spares.clone();
            let read = move || kind.next_block(batch_size, &name, &spares);
            let work = move |block: Block| {
                let typed = typer.type_block(&block);
                given.give(block);
                typed
            };
            self.kind = Kind::Typing(Ordered::start(read, work));
        }
        let Kind::Typing(typing) = &mut self.kind else { return Ok(None) };
        for typed in typing {
            let typed = typed?;
            for bad in typed.bad {
                self.bad_rows += 1;
                on_bad(bad)?;
            }
            if let Some(batch) = typed.batch {
                self.rows += batch.num_rows() as u64;
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }
}

impl Kind {
    /// The next block of rows, and whether it is the last.
    fn next_block(&mut self, batch_size: usize, name: &str, spares: &Spares) -> Result<(Block, bool), FunctionError> {
        match self {
            Kind::Csv { reader, queued, ended } => match queued.pop_front() {
                Some(block) => Ok((block, *ended && queued.is_empty())),
                None if *ended => Ok((Block::default(), true)),
                None => {
                    let block;
                    (block, *ended) =
                        fill_csv(reader, spares.take(batch_size), batch_size).map_err(|e| io_error(name, e))?;
                    Ok((block, *ended))
                }
            },
            Kind::Json { rows, names, sample, fields } => {
                let mut block = spares.take(batch_size);
                while block.len() < batch_size && block.bytes() < MAX_BLOCK_BYTES {
                    let next = match sample.pop_front() {
                        Some(row) => Some(row),
                        None => rows.next().transpose()?,
                    };
                    let Some((line, value)) = next else { return Ok((block, true)) };
                    match value {
                        Err(why) => block.push_bad(line, why, String::new()),
                        Ok(object) => {
                            fields.fill(&object, names);
                            block.push_row(line, fields.fields.iter().map(Option::as_deref));
                        }
                    }
                }
                Ok((block, false))
            }
            Kind::Parquet { .. } | Kind::Typing(_) => Ok((Block::default(), true)),
        }
    }
}

/// Up to `limit` CSV records as a block, and whether the input ended.
fn fill_csv<R: Read>(reader: &mut CsvReader<R>, mut block: Block, limit: usize) -> io::Result<(Block, bool)> {
    while block.len() < limit && block.bytes() < MAX_BLOCK_BYTES {
        match reader.next_record()? {
            None => return Ok((block, true)),
            Some(record) if record.oversized => {
                let error = format!("longer than {} bytes", super::csv::MAX_RECORD_BYTES);
                block.push_bad(record.line, error, String::new());
            }
            Some(record) => {
                let (data, ends) = record.joined();
                block.push_joined(record.line, data, ends);
            }
        }
    }
    Ok((block, false))
}

/// Renames duplicate or empty header names so every column can be addressed.
fn unique_names(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let base = if name.trim().is_empty() { format!("column_{}", i + 1) } else { name };
            let mut candidate = base.clone();
            let mut n = 2;
            while !seen.insert(candidate.clone()) {
                candidate = format!("{base}_{n}");
                n += 1;
            }
            candidate
        })
        .collect()
}

/// The output columns from the input's names and inferred types, the declared
/// `schema` and the `columns` selection.
fn build(
    name: &str,
    names: &[String],
    mut types: Vec<ColumnType>,
    options: &ReadOptions,
) -> Result<Typer, FunctionError> {
    for (column, ty) in &options.schema {
        let index = names.iter().position(|n| n == column).ok_or_else(|| {
            FunctionError::permanent(format!(
                "schema names column {column:?}, which {name} lacks (it has {})",
                names.join(", ")
            ))
        })?;
        types[index] = *ty;
    }
    let (out_names, sources): (Vec<String>, Vec<usize>) = if options.columns.is_empty() {
        (names.to_vec(), (0..names.len()).collect())
    } else {
        let mut out = Vec::new();
        for spec in &options.columns {
            let index = names.iter().position(|n| n == spec.source()).ok_or_else(|| {
                FunctionError::permanent(format!("columns names {:?}, which {name} lacks", spec.source()))
            })?;
            out.push((spec.name().to_string(), index));
        }
        out.into_iter().unzip()
    };
    let out_types = sources.iter().map(|&i| types[i]).collect();
    let columns = Columns { names: out_names, types: out_types };
    Ok(Typer::new(columns, sources, names.len(), options.encoding, options.null_values.clone()))
}

/// A JSON object's fields as text, in the table's column order.
#[derive(Default)]
struct JsonRow {
    fields: Vec<Option<Vec<u8>>>,
}

impl JsonRow {
    fn fill(&mut self, map: &Object, names: &[String]) {
        self.fields.resize(names.len(), None);
        for (slot, name) in self.fields.iter_mut().zip(names) {
            let buffer = slot.get_or_insert_with(Vec::new);
            buffer.clear();
            match map.get(name) {
                None | Some(serde_json::Value::Null) => *slot = None,
                Some(serde_json::Value::String(s)) => buffer.extend_from_slice(s.as_bytes()),
                Some(serde_json::Value::Bool(b)) => buffer.extend_from_slice(if *b { b"true" } else { b"false" }),
                Some(serde_json::Value::Number(n)) => buffer.extend_from_slice(n.to_string().as_bytes()),
                Some(other) => buffer.extend_from_slice(other.to_string().as_bytes()),
            }
        }
    }

    fn field(&self, index: usize) -> Option<&[u8]> {
        self.fields.get(index)?.as_deref()
    }
}

/// JSON lines of a byte stream as rows: `crate::json::lines` numbers and caps them.
struct Lines<R> {
    lines: crate::json::lines::Lines<BufReader<R>>,
    name: String,
    /// Bytes of the lines returned so far.
    read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<R: Read> Iterator for Lines<R> {
    type Item = JsonLine;

    fn next(&mut self) -> Option<JsonLine> {
        let line = match self.lines.next_line() {
            Err(e) => return Some(Err(io_error(&self.name, e))),
            Ok(line) => line?,
        };
        let size = line.text.as_ref().map_or(crate::json::lines::MAX_LINE_BYTES, Vec::len);
        self.read.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        let Some(text) = line.text else {
            let limit = crate::json::lines::MAX_LINE_BYTES;
            return Some(Ok((line.number, Err(format!("longer than {limit} bytes")))));
        };
        let parsed = serde_json::from_slice::<Object>(&text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => "not a JSON object".to_string(),
            _ => format!("not JSON: {e}"),
        });
        Some(Ok((line.number, parsed)))
    }
}
