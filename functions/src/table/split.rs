//! `table.split`: a table in chunks of N rows, each chunk an item of its own (CSV, JSON
//! lines or Parquet bytes), as a streaming fan-out.

use serde::Deserialize;

use super::sink::{Codec, Format, TableSink, Target, WriteOptions};
use super::source::{ReadOptions, TableReader};
use crate::stream::{self, io_error, Input, Sink};
use crate::{BuildError, Context, Emitter, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitParams {
    rows: usize,
    format: Format,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "table.split",
        "Fan out a CSV, JSON-lines or Parquet table in chunks of `rows` rows, each chunk an item in `format` \
         (streamed: the next steps take chunks as they come). Bad rows fail the input, naming their line.",
        &[
            Param { name: "rows", kind: "integer", default: None, doc: "Rows per chunk." },
            Param {
                name: "format",
                kind: "\"parquet\" | \"csv\" | \"json\"",
                default: None,
                doc: "Each chunk's format.",
            },
        ],
        |p: SplitParams| {
            if p.rows == 0 {
                return Err(BuildError::param("rows", "must be at least 1"));
            }
            Ok(Split { rows: p.rows, format: p.format })
        },
    )
}

pub struct Split {
    rows: usize,
    format: Format,
}

impl Split {
    async fn go(&self, item: Item, ctx: &Context, emitter: Option<&Emitter>) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        let input = Input::of(&item, ctx)?;
        let mut read: ReadOptions = super::convert::default_read_options();
        read.batch_size = self.rows;
        read.max_parquet_bytes = ctx.limits.max_input_bytes;
        let write = WriteOptions {
            format: self.format,
            codec: Codec::Zstd,
            zstd_level: 1,
            row_group_size: self.rows,
            partition_by: Vec::new(),
            max_open_partitions: 1,
        };
        let (meta, limit) = (item.meta.clone(), ctx.limits.max_input_bytes);
        let ((), produced) = stream::run(input, Sink { bucket: None, emitter }, move |reader, outputs| {
            let mut table = TableReader::open(&name, Box::new(reader), &read)?;
            let schema = table.schema();
            let mut fail = |bad: super::source::BadRow| -> Result<(), FunctionError> {
                Err(FunctionError::permanent(format!("{name} line {}: {}", bad.line, bad.error)))
            };
            let mut chunk = 0usize;
            while let Some(batch) = table.next_batch(&mut fail)? {
                let mut sink = TableSink::new(&schema, write.clone(), Target::Memory { limit })?;
                sink.write(&batch)?;
                for file in sink.finish()? {
                    let mut meta = meta.clone();
                    meta.attributes.insert("chunk".into(), chunk.to_string());
                    meta.attributes.insert("rows".into(), file.rows.to_string());
                    meta.variant = Some(chunk.to_string());
                    meta.format_ext = Some(write.format.ext().into());
                    meta.content_type = Some(write.format.content_type().into());
                    let bytes = file.bytes.unwrap_or_default();
                    outputs.emit(Item::new(Payload::Bytes(bytes), meta)).map_err(|e| io_error(&name, e))?;
                }
                chunk += 1;
            }
            Ok(())
        })
        .await?;
        Ok(produced.items)
    }
}

#[async_trait::async_trait]
impl Function for Split {
    fn reads_source(&self) -> bool {
        true
    }

    fn streams(&self) -> bool {
        true
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        self.go(item, ctx, None).await
    }

    async fn invoke_streaming(&self, item: Item, ctx: &Context, out: &Emitter) -> Result<(), FunctionError> {
        for output in self.go(item, ctx, Some(out)).await? {
            out.emit(output).await?;
        }
        Ok(())
    }
}
