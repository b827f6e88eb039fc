//! The two compression functions. Both stream: with `key` the result goes straight to
//! an object as it is produced; without, it is passed on as bytes (capped at
//! `max_input_bytes`, since it is then in memory).

use std::io::{Read, Write};

use serde::Deserialize;

use super::codec::{self, Codec, Expansion};
use crate::stream::{self, io_error, Input, Sink};
use crate::template::KeyTemplate;
use crate::units::ByteSize;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

/// `"auto"` or a codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Detect {
    Codec(Codec),
    Auto(AutoWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AutoWord {
    Auto,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeParams {
    #[serde(default = "auto")]
    format: Detect,
    url: Option<String>,
    key: Option<String>,
    #[serde(default = "one_gib")]
    max_output_bytes: ByteSize,
    #[serde(default = "hundred")]
    max_ratio: u64,
}

fn auto() -> Detect {
    Detect::Auto(AutoWord::Auto)
}
fn one_gib() -> ByteSize {
    ByteSize(1 << 30)
}
fn hundred() -> u64 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncodeParams {
    format: Codec,
    level: Option<u32>,
    url: Option<String>,
    key: Option<String>,
}

const KEY_DOC: &str = "Key template to stream the result to; without it the result is passed on as bytes \
                       (at most max_input_bytes).";

pub fn decode_spec() -> FunctionSpec {
    FunctionSpec::new(
        "compress.decode",
        "Decompress gzip, zstd, bzip2 or xz (detected from the first bytes with format = \"auto\") as a stream, \
         refusing output past max_output_bytes or max_ratio.",
        &[
            Param {
                name: "format",
                kind: "\"auto\" | \"gzip\" | \"zstd\" | \"bzip2\" | \"xz\"",
                default: Some("\"auto\""),
                doc: "The codec; auto reads the magic bytes and refuses an input that has none.",
            },
            Param { name: "key", kind: "string (template)", default: Some("none"), doc: KEY_DOC },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to write to.",
            },
            Param {
                name: "max_output_bytes",
                kind: "size",
                default: Some("\"1GiB\""),
                doc: "The most the input may decompress to.",
            },
            Param {
                name: "max_ratio",
                kind: "integer",
                default: Some("100"),
                doc: "The most output bytes per input byte, once past 16 MiB of output.",
            },
        ],
        |p: DecodeParams| {
            if p.max_ratio == 0 {
                return Err(BuildError::param("max_ratio", "must be at least 1"));
            }
            Ok(Decode {
                codec: match p.format {
                    Detect::Codec(c) => Some(c),
                    Detect::Auto(_) => None,
                },
                url: p.url,
                key: parse_key(p.key)?,
                limits: Expansion { max_bytes: p.max_output_bytes.0, max_ratio: p.max_ratio },
            })
        },
    )
}

pub fn encode_spec() -> FunctionSpec {
    FunctionSpec::new(
        "compress.encode",
        "Compress with gzip, zstd, bzip2 or xz as a stream.",
        &[
            Param {
                name: "format",
                kind: "\"gzip\" | \"zstd\" | \"bzip2\" | \"xz\"",
                default: None,
                doc: "The codec.",
            },
            Param {
                name: "level",
                kind: "integer",
                default: Some("the codec's default"),
                doc: "gzip 0-9, zstd 1-22, bzip2 1-9, xz 0-9.",
            },
            Param { name: "key", kind: "string (template)", default: Some("none"), doc: KEY_DOC },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to write to.",
            },
        ],
        |p: EncodeParams| Ok(Encode { codec: p.format, level: p.level, url: p.url, key: parse_key(p.key)? }),
    )
}

fn parse_key(key: Option<String>) -> Result<Option<KeyTemplate>, BuildError> {
    key.as_deref().map(KeyTemplate::parse).transpose().map_err(|e| BuildError::param("key", e.message))
}

pub struct Decode {
    codec: Option<Codec>,
    url: Option<String>,
    key: Option<KeyTemplate>,
    limits: Expansion,
}

pub struct Encode {
    codec: Codec,
    level: Option<u32>,
    url: Option<String>,
    key: Option<KeyTemplate>,
}

/// Runs `work` (input reader → output writer) as a stage, to an object under `key` or
/// into bytes, and describes the result as the item to pass on.
async fn transform<F>(
    item: Item,
    ctx: &Context,
    url: Option<&str>,
    key: Option<&KeyTemplate>,
    content_type: Option<&'static str>,
    ext: Option<&'static str>,
    work: F,
) -> Result<Vec<Item>, FunctionError>
where
    F: FnOnce(Box<dyn Read + Send>, &mut dyn Write) -> Result<(), FunctionError> + Send + 'static,
{
    let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
    let input = Input::of(&item, ctx)?;
    let mut meta = item.meta.clone();
    meta.content_type = content_type.map(String::from);
    meta.format_ext = ext.map(String::from);
    let limit = ctx.limits.max_input_bytes;
    match key {
        Some(key) => {
            let bucket = crate::object::target_bucket(url, &item, ctx)?;
            let rendered = key.render(&Item::new(Payload::Empty, meta.clone()), ctx)?;
            let object_key = rendered.clone();
            let sink = Sink { bucket: Some(bucket.clone()), emitter: None };
            let ((), produced) = stream::run(input, sink, move |reader, mut outputs| {
                let mut out = outputs.open(object_key.clone()).map_err(|e| io_error(&object_key, e))?;
                work(Box::new(reader), &mut out)?;
                out.finish().map_err(|e| io_error(&object_key, e))?;
                Ok(())
            })
            .await?;
            let size = produced.written.first().map_or(0, |w| w.size);
            meta.attributes.insert("output_key".into(), rendered.clone());
            Ok(vec![Item::new(Payload::Json(crate::object::object_ref(&bucket, &rendered, size as usize)), meta)])
        }
        None => {
            let (bytes, _) = stream::run(input, Sink { bucket: None, emitter: None }, move |reader, _| {
                let mut out = Capped { bytes: Vec::new(), limit, name: name.clone() };
                work(Box::new(reader), &mut out)?;
                Ok(out.bytes)
            })
            .await?;
            Ok(vec![Item::new(Payload::Bytes(bytes.into()), meta)])
        }
    }
}

/// Bytes kept in memory, refused past `limit`.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
    name: String,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "the output of {} passes max_input_bytes = {} (set `key` to stream it to a bucket)",
                self.name, self.limit
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Function for Decode {
    fn reads_source(&self) -> bool {
        true
    }

    fn writes(&self) -> Vec<crate::Output> {
        self.key.as_ref().map(|key| crate::object::output(&self.url, key)).unwrap_or_default()
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        let (codec, limits) = (self.codec, self.limits);
        transform(item, ctx, self.url.as_deref(), self.key.as_ref(), None, None, move |input, out| {
            let (mut reader, found) = codec::open(input, codec, limits, &name).map_err(|e| io_error(&name, e))?;
            if found.is_none() {
                return Err(FunctionError::permanent(format!(
                    "{name} is not gzip, zstd, bzip2 or xz (no magic bytes of any)"
                )));
            }
            std::io::copy(&mut reader, out).map_err(|e| io_error(&name, e))?;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Function for Encode {
    fn reads_source(&self) -> bool {
        true
    }

    fn writes(&self) -> Vec<crate::Output> {
        self.key.as_ref().map(|key| crate::object::output(&self.url, key)).unwrap_or_default()
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        let (codec, level) = (self.codec, self.level);
        let (content_type, ext) = (Some(codec.content_type()), Some(codec.ext()));
        transform(item, ctx, self.url.as_deref(), self.key.as_ref(), content_type, ext, move |mut input, out| {
            codec.encode(&mut input, out, level).map_err(|e| io_error(&name, e))?;
            Ok(())
        })
        .await
    }
}
