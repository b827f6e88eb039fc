//! `table.convert`: CSV, JSON lines or Parquet in; Parquet, CSV or JSON lines out,
//! optionally partitioned, streamed from the input object to the output objects.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use serde::Deserialize;

use super::rows::Encoding;
use super::schema::{ColumnType, TYPE_NAMES};
use super::sink::{Codec, File, Format, TableSink, Target, WriteOptions};
use super::source::{BadRow, ColumnSpec, InputFormat, JsonLine, OnBadRow, ReadOptions, TableReader};
use crate::stream::{self, Input, ObjectWriter, Outputs, Sink};
use crate::template::KeyTemplate;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvertParams {
    format: Format,
    #[serde(default = "auto")]
    from: InputFormat,
    url: Option<String>,
    key: Option<String>,
    #[serde(default = "comma")]
    delimiter: String,
    #[serde(default = "double_quote")]
    quote: String,
    #[serde(default = "yes")]
    header: bool,
    #[serde(default = "utf8")]
    encoding: Encoding,
    #[serde(default = "default_nulls")]
    null_values: Vec<String>,
    #[serde(default)]
    schema: BTreeMap<String, String>,
    #[serde(default)]
    columns: Vec<ColumnSpec>,
    #[serde(default = "zstd")]
    compression: Codec,
    #[serde(default = "one")]
    compression_level: i32,
    #[serde(default = "row_group")]
    row_group_size: usize,
    #[serde(default = "batch")]
    batch_size: usize,
    #[serde(default = "sample")]
    sample_rows: usize,
    #[serde(default)]
    partition_by: Vec<String>,
    #[serde(default = "open_partitions")]
    max_open_partitions: usize,
    #[serde(default = "fail")]
    on_bad_row: OnBadRow,
    #[serde(default = "bad_rows_key")]
    bad_rows_key: String,
    #[serde(default = "four_gib")]
    max_decompressed_bytes: crate::units::ByteSize,
}

fn four_gib() -> crate::units::ByteSize {
    crate::units::ByteSize(4 << 30)
}

fn auto() -> InputFormat {
    InputFormat::Auto
}
fn comma() -> String {
    ",".into()
}
fn double_quote() -> String {
    "\"".into()
}
fn yes() -> bool {
    true
}
fn utf8() -> Encoding {
    Encoding::Utf8
}
fn default_nulls() -> Vec<String> {
    ["", "NA", "N/A", "NULL", "null"].map(String::from).to_vec()
}
fn zstd() -> Codec {
    Codec::Zstd
}
fn one() -> i32 {
    1
}
fn row_group() -> usize {
    128 * 1024
}
fn batch() -> usize {
    8192
}
fn sample() -> usize {
    1000
}
fn open_partitions() -> usize {
    64
}
fn fail() -> OnBadRow {
    OnBadRow::Fail
}
fn bad_rows_key() -> String {
    "dead-letter/rows/{key}.jsonl".into()
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "table.convert",
        "Convert a table between CSV, JSON lines and Parquet as a stream (memory bounded by the batch and row \
         group, not the file), optionally partitioned Hive-style. As a first step it reads the event's object \
         itself; after a Kafka batch step it writes the batch's JSON records as one table.",
        PARAMS,
        build,
    )
}

const PARAMS: &[Param] = &[
    Param {
        name: "format",
        kind: "\"parquet\" | \"csv\" | \"json\"",
        default: None,
        doc: "Output format (json: JSON lines).",
    },
    Param {
        name: "key",
        kind: "string (template)",
        default: Some("none: pass the file on as bytes"),
        doc: "Where to stream each output file, e.g. \"lake/{stem}/{attr.hive}/part-{attr.part}.parquet\". \
              {attr.hive} is the partition's path (year=2013/month=1), {attr.part} its file number; after a \
              Kafka batch, {attr.first_offset} and {attr.last_offset} name the batch, and records whose own \
              attributes render different keys ({attr.date}/{attr.hour} of their timestamps) go to different \
              objects.",
    },
    Param { name: "url", kind: "string (URL)", default: Some("the event's bucket"), doc: "Bucket to write to." },
    Param {
        name: "from",
        kind: "\"auto\" | \"csv\" | \"json\" | \"parquet\"",
        default: Some("\"auto\""),
        doc: "Input format; auto: Parquet by its magic bytes, JSON lines by .json/.jsonl/.ndjson, else CSV.",
    },
    Param { name: "delimiter", kind: "string (one byte)", default: Some("\",\""), doc: "CSV field delimiter." },
    Param { name: "quote", kind: "string (one byte)", default: Some("'\"'"), doc: "CSV quote character." },
    Param { name: "header", kind: "bool", default: Some("true"), doc: "The CSV's first record names the columns." },
    Param {
        name: "encoding",
        kind: "\"utf-8\" | \"latin-1\"",
        default: Some("\"utf-8\""),
        doc: "Text encoding of the input; invalid UTF-8 makes a row bad. A byte-order mark is skipped.",
    },
    Param {
        name: "null_values",
        kind: "[string]",
        default: Some("[\"\", \"NA\", \"N/A\", \"NULL\", \"null\"]"),
        doc: "Field texts that mean a missing value.",
    },
    Param {
        name: "schema",
        kind: "{ column = type }",
        default: Some("inferred"),
        doc: "Declared column types, over the ones inferred from the first sample_rows rows. Types: string, \
              bool, int32, int64, float64, date32, timestamp[s|ms|us|ns].",
    },
    Param {
        name: "columns",
        kind: "[name | { name, from }]",
        default: Some("all"),
        doc: "Output columns in order: a name keeps a column, { name = \"new\", from = \"old\" } renames one.",
    },
    Param {
        name: "partition_by",
        kind: "[column]",
        default: Some("none"),
        doc: "Write one file per value of these columns, Hive-style (year=2013/month=1/); the columns leave the files.",
    },
    Param {
        name: "max_open_partitions",
        kind: "integer",
        default: Some("64"),
        doc: "Partition files open at once; past it the oldest is finished and its next rows start a new part.",
    },
    Param {
        name: "on_bad_row",
        kind: "\"fail\" | \"skip\" | \"dead_letter\"",
        default: Some("\"fail\""),
        doc: "A ragged row, a value not of its column's type, invalid UTF-8: fail the input, leave the row out, \
              or leave it out and list it (with its line) in one object per input at bad_rows_key.",
    },
    Param {
        name: "bad_rows_key",
        kind: "string (template)",
        default: Some("\"dead-letter/rows/{key}.jsonl\""),
        doc: "Where on_bad_row = \"dead_letter\" lists an input's bad rows, in the output bucket.",
    },
    Param {
        name: "compression",
        kind: "\"zstd\" | \"snappy\" | \"none\"",
        default: Some("\"zstd\""),
        doc: "Parquet codec.",
    },
    Param { name: "compression_level", kind: "integer", default: Some("1"), doc: "zstd level (1-22)." },
    Param { name: "row_group_size", kind: "integer", default: Some("131072"), doc: "Rows per Parquet row group." },
    Param { name: "batch_size", kind: "integer", default: Some("8192"), doc: "Rows decoded at a time." },
    Param { name: "sample_rows", kind: "integer", default: Some("1000"), doc: "Rows read to infer column types." },
    Param {
        name: "max_decompressed_bytes",
        kind: "size",
        default: Some("\"4GiB\""),
        doc: "A gzip, zstd, bzip2 or xz input (recognised by its first bytes) is read through its codec: the most \
              it may expand to (and never more than 100:1).",
    },
];

/// How `table.split` reads: `table.convert`'s defaults (comma, header, UTF-8, the usual
/// null texts, inferred types).
pub fn default_read_options() -> ReadOptions {
    ReadOptions {
        format: InputFormat::Auto,
        delimiter: b',',
        quote: b'"',
        header: true,
        encoding: Encoding::Utf8,
        null_values: default_nulls().into_iter().map(String::into_bytes).collect(),
        schema: Vec::new(),
        columns: Vec::new(),
        batch_size: batch(),
        sample_rows: sample(),
        max_parquet_bytes: 0,
        expansion: crate::compress::Expansion { max_bytes: four_gib().0, max_ratio: 100 },
    }
}

fn one_byte(name: &'static str, text: &str) -> Result<u8, BuildError> {
    match text.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(BuildError::param(name, format!("{text:?} must be one ASCII character"))),
    }
}

fn build(p: ConvertParams) -> Result<Convert, BuildError> {
    let mut schema = Vec::new();
    for (column, ty) in &p.schema {
        let parsed = ColumnType::parse(ty).ok_or_else(|| {
            BuildError::param("schema", format!("{column}: unknown type {ty:?} (known: {TYPE_NAMES})"))
        })?;
        schema.push((column.clone(), parsed));
    }
    for (name, value) in
        [("row_group_size", p.row_group_size), ("batch_size", p.batch_size), ("sample_rows", p.sample_rows)]
    {
        if value == 0 {
            return Err(BuildError::param(name, "must be at least 1"));
        }
    }
    if p.max_open_partitions == 0 {
        return Err(BuildError::param("max_open_partitions", "must be at least 1"));
    }
    if p.compression == Codec::Zstd && !(1..=22).contains(&p.compression_level) {
        return Err(BuildError::param("compression_level", "zstd levels are 1 to 22"));
    }
    let key = p.key.as_deref().map(KeyTemplate::parse).transpose().map_err(|e| BuildError::param("key", e.message))?;
    let bad_rows_key = KeyTemplate::parse(&p.bad_rows_key).map_err(|e| BuildError::param("bad_rows_key", e.message))?;
    Ok(Convert {
        read: ReadOptions {
            format: p.from,
            delimiter: one_byte("delimiter", &p.delimiter)?,
            quote: one_byte("quote", &p.quote)?,
            header: p.header,
            encoding: p.encoding,
            null_values: p.null_values.into_iter().map(String::into_bytes).collect(),
            schema,
            columns: p.columns,
            batch_size: p.batch_size,
            sample_rows: p.sample_rows,
            max_parquet_bytes: 0,
            expansion: crate::compress::Expansion { max_bytes: p.max_decompressed_bytes.0, max_ratio: 100 },
        },
        write: WriteOptions {
            format: p.format,
            codec: p.compression,
            zstd_level: p.compression_level,
            row_group_size: p.row_group_size,
            partition_by: p.partition_by,
            max_open_partitions: p.max_open_partitions,
        },
        url: p.url,
        key,
        on_bad_row: p.on_bad_row,
        bad_rows_key,
    })
}

pub struct Convert {
    read: ReadOptions,
    write: WriteOptions,
    url: Option<String>,
    key: Option<KeyTemplate>,
    on_bad_row: OnBadRow,
    bad_rows_key: KeyTemplate,
}

/// What one conversion did.
struct Converted {
    files: Vec<File>,
    rows: u64,
    bad_rows: u64,
    bad_rows_key: Option<String>,
    /// A batch's records that failed on their own (by position), with why.
    failed: Vec<(usize, String)>,
}

#[async_trait::async_trait]
impl Function for Convert {
    fn reads_source(&self) -> bool {
        true
    }

    fn writes(&self) -> Vec<crate::Output> {
        match &self.key {
            Some(key) => crate::object::output(&self.url, key),
            None => Vec::new(),
        }
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        match (&self.key, &item.payload) {
            (Some(key), Payload::Collection(_)) => self.convert_batch(key, item, ctx).await,
            _ => self.convert(item, ctx).await,
        }
    }
}

impl Convert {
    /// A batch's records are grouped by the key each one's own attributes render, the
    /// group-level `{attr.first_offset}`, `{attr.last_offset}`, `{attr.hive}` and
    /// `{attr.part}` aside: under an hourly key the records of two hours go to two
    /// objects, as the Kafka Connect S3 sink starts a new file when a record's time
    /// partition changes. A record whose key cannot be rendered (no timestamp for
    /// `{attr.hour}`) fails alone.
    async fn convert_batch(&self, key: &KeyTemplate, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let Payload::Collection(records) = item.payload else {
            return self.convert(item, ctx).await;
        };
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut failures = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.group_key(key, record, ctx) {
                Ok(rendered) => {
                    let next = groups.len();
                    let group = *group_of.entry(rendered).or_insert(next);
                    if group == next {
                        groups.push(Vec::new());
                    }
                    groups[group].push(index);
                }
                Err(e) => failures.push((index, e)),
            }
        }
        if failures.is_empty() && groups.len() == 1 {
            return self.convert(Item::new(Payload::Collection(records), item.meta), ctx).await;
        }
        let mut slots: Vec<Option<Item>> = records.into_iter().map(Some).collect();
        let mut outputs = Vec::new();
        for members in groups {
            let group = members.iter().filter_map(|&i| slots[i].take()).collect();
            match self.convert(Item::new(Payload::Collection(group), item.meta.clone()), ctx).await {
                Ok(written) => outputs.extend(written),
                Err(e) => {
                    let partial = e.into_partial_batch()?;
                    outputs.extend(partial.outputs);
                    failures.extend(partial.failures.into_iter().map(|(i, e)| (members[i], e)));
                }
            }
        }
        if failures.is_empty() {
            return Ok(outputs);
        }
        failures.sort_by_key(|(index, _)| *index);
        Err(FunctionError::partial_batch(outputs, failures))
    }

    /// The key `record` would be written under, with the group-level attributes fixed.
    fn group_key(&self, key: &KeyTemplate, record: &Item, ctx: &Context) -> Result<String, FunctionError> {
        let mut meta = record.meta.clone();
        for name in ["first_offset", "last_offset", "hive", "part"] {
            meta.attributes.insert(name.into(), "0".into());
        }
        meta.format_ext = Some(self.write.format.ext().to_string());
        key.render(&Item::new(Payload::Empty, meta), ctx)
    }

    async fn convert(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        let bucket = match (&self.url, &item.meta.source_url) {
            (None, None) => None,
            _ => Some(crate::object::target_bucket(self.url.as_deref(), &item, ctx)?),
        };
        if self.key.is_some() && bucket.is_none() {
            return Err(FunctionError::permanent(format!("{name}: `key` is set but there is no bucket to write to")));
        }
        // The item the output keys are rendered from: a batch's first record, with the
        // batch's offsets.
        let mut base = match &item.payload {
            Payload::Collection(items) => batch_item(items),
            _ => Item::new(Payload::Empty, item.meta.clone()),
        };
        base.meta.format_ext = Some(self.write.format.ext().to_string());
        let (input, rows, labels) = match item.payload {
            Payload::Collection(items) => {
                let labels: Vec<String> = items.iter().map(Item::describe).collect();
                (Input::Bytes(bytes::Bytes::new()), Some(json_records(items)), Some(labels))
            }
            _ => (Input::of(&item, ctx)?, None, None),
        };
        let in_batch = labels.is_some();
        let mut read = self.read.clone();
        read.max_parquet_bytes = ctx.limits.max_input_bytes;
        let write = self.write.clone();
        let key = self.key.clone();
        let on_bad_row = self.on_bad_row;
        let bad_rows_key = self.bad_rows_key.clone();
        let (stage_ctx, stage_base, stage_name) = (ctx.clone(), base.clone(), name.clone());
        let sink = Sink { bucket: bucket.clone(), emitter: None };
        let (converted, _) = stream::run(input, sink, move |reader, outputs| {
            let reader = match rows {
                Some(rows) => TableReader::json(&stage_name, rows, &read, None)?,
                None => TableReader::open(&stage_name, Box::new(reader), &read)?,
            };
            let job = Job {
                name: &stage_name,
                ctx: &stage_ctx,
                base: &stage_base,
                key: key.as_ref(),
                write,
                on_bad_row,
                in_batch,
            };
            job.run(reader, outputs, &bad_rows_key)
        })
        .await?;
        if converted.bad_rows > 0 {
            tracing::warn!(
                rows = converted.rows,
                bad_rows = converted.bad_rows,
                listed_in = converted.bad_rows_key.as_deref().unwrap_or("(skipped)"),
                "{name}: {} bad row(s) left out",
                converted.bad_rows
            );
        }
        let bucket_url = bucket.as_ref().map(|b| b.url.clone());
        let outputs: Vec<Item> = converted
            .files
            .into_iter()
            .map(|file| {
                let mut meta = base.meta.clone();
                meta.content_type = Some(self.write.format.content_type().to_string());
                if !file.partition.is_empty() {
                    meta.attributes.insert("hive".into(), file.partition.clone());
                    meta.variant = Some(file.partition.replace('/', ","));
                }
                meta.attributes.insert("part".into(), file.part.to_string());
                meta.attributes.insert("rows".into(), file.rows.to_string());
                match (file.bytes, file.key) {
                    (Some(bytes), _) => Item::new(Payload::Bytes(bytes), meta),
                    (None, Some(key)) => {
                        meta.attributes.insert("output_key".into(), key.clone());
                        let description = serde_json::json!({
                            "url": bucket_url, "key": key, "size": file.size, "rows": file.rows,
                            "partition": file.partition,
                        });
                        Item::new(Payload::Json(description), meta)
                    }
                    (None, None) => Item::new(Payload::Empty, meta),
                }
            })
            .collect();
        if converted.failed.is_empty() {
            return Ok(outputs);
        }
        // Like Lambda's batchItemFailures: the good records are written, the bad ones
        // are dead-lettered on their own.
        let labels = labels.unwrap_or_default();
        let failures = converted
            .failed
            .into_iter()
            .map(|(index, why)| {
                let label = labels.get(index).map(String::as_str).unwrap_or("a record");
                (index, FunctionError::permanent(format!("{label}: {why}")))
            })
            .collect();
        Err(FunctionError::partial_batch(outputs, failures))
    }
}

/// The per-input work, on the stage's thread.
struct Job<'a> {
    name: &'a str,
    ctx: &'a Context,
    base: &'a Item,
    key: Option<&'a KeyTemplate>,
    write: WriteOptions,
    on_bad_row: OnBadRow,
    /// The rows are a batch's records: a bad one fails alone (a partial batch failure).
    in_batch: bool,
}

impl Job<'_> {
    fn run(
        self,
        reader: TableReader,
        outputs: Outputs,
        bad_rows_key: &KeyTemplate,
    ) -> Result<Converted, FunctionError> {
        let schema = reader.schema();
        let mut object_outputs = outputs.clone();
        let render = |hive: &str, part: u32| -> Result<String, FunctionError> {
            let mut item = self.base.clone();
            if !hive.is_empty() {
                item.meta.attributes.insert("hive".into(), hive.to_string());
            }
            item.meta.attributes.insert("part".into(), part.to_string());
            self.key.expect("objects only with a key").render(&item, self.ctx)
        };
        let target = match self.key {
            Some(_) => Target::Objects { outputs: &mut object_outputs, key: &render },
            None => Target::Memory { limit: self.ctx.limits.max_input_bytes },
        };
        let mut sink = TableSink::new(&schema, self.write.clone(), target)?;
        // The reader's batches (rows split on its own thread, typed in the CPU pool, see
        // `source`) are encoded here while the next ones are read. Two batches wait
        // between them at most.
        let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let this = &self;
        let (read, written) = std::thread::scope(|scope| {
            let reading = scope.spawn(move || this.read_all(reader, tx, outputs, bad_rows_key));
            let mut written = Ok(());
            while let Ok(batch) = rx.recv() {
                if let Err(e) = sink.write(&batch) {
                    written = Err(e);
                    break;
                }
            }
            drop(rx);
            let read = reading.join().unwrap_or_else(|_| Err(FunctionError::permanent("the row reader panicked")));
            (read, written.and_then(|()| sink.finish()))
        });
        // The reader's own failure (a bad row, a failed read) is the cause; a failed
        // write stops the reader, which then reports what it had read.
        let read = read?;
        Ok(Converted {
            files: written?,
            rows: read.rows,
            bad_rows: read.bad_rows,
            bad_rows_key: read.bad_rows_key,
            failed: read.failed,
        })
    }

    /// Reads every row, sending batches on and handling bad rows per `on_bad_row`.
    fn read_all(
        &self,
        mut reader: TableReader,
        tx: std::sync::mpsc::SyncSender<RecordBatch>,
        mut list_outputs: Outputs,
        bad_rows_key: &KeyTemplate,
    ) -> Result<Read, FunctionError> {
        let mut listed: Option<(String, ObjectWriter)> = None;
        let mut failed = Vec::new();
        let mut on_bad = |bad: BadRow| -> Result<(), FunctionError> {
            match self.on_bad_row {
                OnBadRow::Fail if self.in_batch => {
                    failed.push((bad.line.saturating_sub(1) as usize, bad.error));
                    Ok(())
                }
                OnBadRow::Fail => {
                    Err(FunctionError::permanent(format!("{} line {}: {}", self.name, bad.line, bad.error)))
                }
                OnBadRow::Skip => Ok(()),
                OnBadRow::DeadLetter => {
                    use std::io::Write;
                    if listed.is_none() {
                        let key = bad_rows_key.render(self.base, self.ctx)?;
                        let writer = list_outputs.open(key.clone()).map_err(|e| stream::io_error(&key, e))?;
                        listed = Some((key, writer));
                    }
                    let (key, writer) = listed.as_mut().expect("opened above");
                    let mut line = serde_json::to_vec(&serde_json::json!({
                        "input": self.name, "line": bad.line, "error": bad.error, "row": bad.row,
                    }))
                    .unwrap_or_default();
                    line.push(b'\n');
                    writer.write_all(&line).map_err(|e| stream::io_error(key, e))
                }
            }
        };
        while let Some(batch) = reader.next_batch(&mut on_bad)? {
            crate::cpu::check(&self.ctx.cancel, self.name)?;
            if tx.send(batch).is_err() {
                break;
            }
        }
        let bad_rows_key = match listed {
            Some((key, writer)) => {
                writer.finish().map_err(|e| stream::io_error(&key, e))?;
                Some(key)
            }
            None => None,
        };
        Ok(Read { rows: reader.rows, bad_rows: reader.bad_rows, bad_rows_key, failed })
    }
}

/// What the reading thread saw.
struct Read {
    rows: u64,
    bad_rows: u64,
    bad_rows_key: Option<String>,
    failed: Vec<(usize, String)>,
}

/// The item a batch's output keys are rendered from: its first record's metadata, with
/// `first_offset` and `last_offset` when the records have offsets (Kafka).
fn batch_item(items: &[Item]) -> Item {
    let mut meta = items.first().map(|i| i.meta.clone()).unwrap_or_default();
    let offsets: Vec<i64> =
        items.iter().filter_map(|i| i.meta.attribute("offset").and_then(|o| o.parse().ok())).collect();
    if let (Some(first), Some(last)) = (offsets.iter().min(), offsets.iter().max()) {
        meta.attributes.insert("first_offset".into(), first.to_string());
        meta.attributes.insert("last_offset".into(), last.to_string());
    }
    Item::new(Payload::Empty, meta)
}

/// A batch's records as JSON rows; a record's "line" is its position in the batch,
/// from 1.
fn json_records(items: Vec<Item>) -> Box<dyn Iterator<Item = JsonLine> + Send> {
    Box::new(items.into_iter().enumerate().map(|(i, item)| {
        let line = i as u64 + 1;
        let value = match item.payload {
            Payload::Json(serde_json::Value::Object(map)) => Ok(map.into_iter().collect()),
            Payload::Json(_) => Err("not a JSON object".to_string()),
            Payload::Bytes(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON object: {e}")),
            other => Err(format!("a {} payload is not a JSON record", other.kind())),
        };
        Ok((line, value))
    }))
}
