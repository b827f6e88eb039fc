//! `json.transform`: a jq filter over a JSON item or each line of a JSON-lines object.
//! The filter is parsed and compiled once, when the step is built (a typo is a
//! `weir validate` error); it yields 0..n values per input, each an item (fan-out), or
//! lines of one JSON-lines object when `key` is set.

use std::io::{BufReader, Write};

use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::Val;
use serde::Deserialize;

use super::lines::{Line, Lines};
use crate::stream::{self, io_error, Input, Outputs, Sink};
use crate::template::KeyTemplate;
use crate::{BuildError, Context, Emitter, Function, FunctionError, FunctionSpec, Item, Param, Payload};

type Filter = jaq_core::compile::Filter<jaq_core::Native<JustLut<Val>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnError {
    Fail,
    Skip,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformParams {
    filter: String,
    url: Option<String>,
    key: Option<String>,
    #[serde(default = "fail")]
    on_error: OnError,
}

fn fail() -> OnError {
    OnError::Fail
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "json.transform",
        "Run a jq filter (jq's language, by the jaq crates) over a JSON item or each line of a JSON-lines object: \
         each value it yields is an item, or a line of one JSON-lines object with `key`.",
        &[
            Param {
                name: "filter",
                kind: "string (jq)",
                default: None,
                doc: "e.g. \"select(.dep_delay > 60) | {carrier, delay: .dep_delay}\".",
            },
            Param {
                name: "key",
                kind: "string (template)",
                default: Some("none: one item per value"),
                doc: "Write the values as one JSON-lines object under this key template instead.",
            },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to write to.",
            },
            Param {
                name: "on_error",
                kind: "\"fail\" | \"skip\"",
                default: Some("\"fail\""),
                doc: "A line that is not JSON, or on which the filter fails: fail the input (naming the line) or \
                      leave the line out.",
            },
        ],
        |p: TransformParams| {
            let filter = compile(&p.filter).map_err(|e| BuildError::param("filter", e))?;
            let key = p
                .key
                .as_deref()
                .map(KeyTemplate::parse)
                .transpose()
                .map_err(|e| BuildError::param("key", e.message))?;
            Ok(Transform { filter: std::sync::Arc::new(filter), url: p.url, key, on_error: p.on_error })
        },
    )
}

fn compile(code: &str) -> Result<Filter, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errors| format!("invalid jq filter {code:?}: {}", describe(&errors)))?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errors| format!("invalid jq filter {code:?}: {}", describe(&errors)))
}

fn describe<T: std::fmt::Debug>(errors: &T) -> String {
    let text = format!("{errors:?}");
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

pub struct Transform {
    filter: std::sync::Arc<Filter>,
    url: Option<String>,
    key: Option<KeyTemplate>,
    on_error: OnError,
}

/// Runs the filter over one value: its outputs, or the filter's error.
fn run(filter: &Filter, input: Val, out: &mut dyn FnMut(Val) -> Result<(), FunctionError>) -> Result<(), String> {
    let ctx = Ctx::<JustLut<Val>>::new(&filter.lut, Vars::new([]));
    for value in filter.id.run((ctx, input)).map(jaq_core::unwrap_valr) {
        match value {
            Ok(value) => out(value).map_err(|e| e.message().to_string())?,
            Err(e) => return Err(format!("jq error: {e}")),
        }
    }
    Ok(())
}

/// Lines per piece of a JSON-lines input handed to the CPU pool, and the most bytes.
const PIECE_LINES: usize = 4096;
const PIECE_BYTES: usize = 1 << 20;

/// What the filter made of a piece of lines.
struct Piece {
    /// The values as JSON lines (when writing one object).
    text: Vec<u8>,
    /// The values with their input line (when each is an item).
    values: Vec<(u64, serde_json::Value)>,
    count: u64,
    /// The line that failed the input (with `on_error = "fail"`) and why; the piece's
    /// values before it are kept.
    failed: Option<(u64, String)>,
}

/// Runs the filter over each line of a piece, on a CPU-pool thread (jaq's values
/// never leave it).
fn filter_piece(filter: &Filter, lines: Vec<Line>, as_lines: bool, on_error: OnError) -> Piece {
    let mut piece = Piece { text: Vec::new(), values: Vec::new(), count: 0, failed: None };
    for line in lines {
        let parsed = match &line.text {
            None => Err(format!("longer than {} bytes", super::lines::MAX_LINE_BYTES)),
            Some(text) => jaq_json::read::parse_single(text).map_err(|e| format!("not JSON: {e}")),
        };
        let outcome = parsed.and_then(|value| {
            run(filter, value, &mut |v| {
                piece.count += 1;
                if as_lines {
                    to_line(&v, &mut piece.text);
                } else {
                    piece.values.push((line.number, to_json(&v)?));
                }
                Ok(())
            })
        });
        if let Err(why) = outcome {
            if on_error == OnError::Fail {
                piece.failed = Some((line.number, why));
                break;
            }
        }
    }
    piece
}

fn to_line(value: &Val, buffer: &mut Vec<u8>) {
    let _ = jaq_json::write::write(buffer, &jaq_json::write::Pp::default(), 0, value);
    buffer.push(b'\n');
}

fn to_json(value: &Val) -> Result<serde_json::Value, FunctionError> {
    let mut text = Vec::new();
    to_line(value, &mut text);
    serde_json::from_slice(&text)
        .map_err(|e| FunctionError::permanent(format!("the filter yielded a value JSON cannot hold: {e}")))
}

impl Transform {
    async fn go(&self, item: Item, ctx: &Context, emitter: Option<&Emitter>) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        if let Payload::Json(value) = &item.payload {
            // One value in memory: no stream needed.
            let input =
                Val::deserialize(value.clone()).map_err(|e| FunctionError::permanent(format!("{name}: {e}")))?;
            let mut outputs = Vec::new();
            let filter = self.filter.clone();
            let meta = item.meta.clone();
            crate::cpu::run(move || {
                run(&filter, input, &mut |v| {
                    outputs.push(Item::new(Payload::Json(to_json(&v)?), meta.clone()));
                    Ok(())
                })
                .map_err(|e| FunctionError::permanent(format!("{name}: {e}")))?;
                Ok(outputs)
            })
            .await
        } else {
            let bucket = match &self.key {
                Some(_) => Some(crate::object::target_bucket(self.url.as_deref(), &item, ctx)?),
                None => None,
            };
            let key = match &self.key {
                Some(key) => Some(key.render(&item, ctx)?),
                None => None,
            };
            let input = Input::of(&item, ctx)?;
            let (filter, on_error, meta, cancel) =
                (self.filter.clone(), self.on_error, item.meta.clone(), ctx.cancel.clone());
            let (written, produced) =
                stream::run(input, Sink { bucket, emitter }, move |reader, mut outputs: Outputs| {
                    let mut object = match &key {
                        Some(key) => Some(outputs.open(key.clone()).map_err(|e| io_error(key, e))?),
                        None => None,
                    };
                    // Lines are read in pieces on one thread and filtered in the CPU pool,
                    // the pieces' values written in input order.
                    let mut lines = Lines::new(BufReader::with_capacity(256 << 10, reader));
                    let reader_name = name.clone();
                    let read = move || {
                        crate::cpu::check(&cancel, &reader_name)?;
                        let mut piece = Vec::new();
                        let mut bytes = 0;
                        while piece.len() < PIECE_LINES && bytes < PIECE_BYTES {
                            match lines.next_line().map_err(|e| io_error(&reader_name, e))? {
                                Some(line) => {
                                    bytes += line.text.as_ref().map_or(0, Vec::len);
                                    piece.push(line);
                                }
                                None => return Ok((piece, true)),
                            }
                        }
                        Ok((piece, false))
                    };
                    let as_lines = object.is_some();
                    let work = move |piece: Vec<Line>| filter_piece(&filter, piece, as_lines, on_error);
                    let pieces = crate::ordered::Ordered::start(read, work);
                    let mut count = 0u64;
                    for piece in pieces {
                        let piece = piece?;
                        count += piece.count;
                        match &mut object {
                            Some(object) => object.write_all(&piece.text).map_err(|e| io_error(&name, e))?,
                            None => {
                                for (line, json) in piece.values {
                                    let mut meta = meta.clone();
                                    meta.attributes.insert("line".into(), line.to_string());
                                    outputs
                                        .emit(Item::new(Payload::Json(json), meta))
                                        .map_err(|e| io_error(&name, e))?;
                                }
                            }
                        }
                        if let Some((line, why)) = piece.failed {
                            return Err(FunctionError::permanent(format!("{name} line {line}: {why}")));
                        }
                    }
                    if let (Some(object), Some(key)) = (object, key) {
                        object.finish().map_err(|e| io_error(&key, e))?;
                        return Ok(Some((key, count)));
                    }
                    Ok(None)
                })
                .await?;
            match written {
                Some((key, count)) => {
                    let mut meta = item.meta;
                    meta.attributes.insert("output_key".into(), key.clone());
                    let size = produced.written.first().map_or(0, |w| w.size);
                    let url = self.url.clone().or_else(|| meta.source_url.clone());
                    let description = serde_json::json!({ "url": url, "key": key, "size": size, "values": count });
                    Ok(vec![Item::new(Payload::Json(description), meta)])
                }
                None => Ok(produced.items),
            }
        }
    }
}

#[async_trait::async_trait]
impl Function for Transform {
    fn reads_source(&self) -> bool {
        true
    }

    fn streams(&self) -> bool {
        self.key.is_none()
    }

    fn writes(&self) -> Vec<crate::Output> {
        self.key.as_ref().map(|key| crate::object::output(&self.url, key)).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(code: &str, input: &str) -> Vec<String> {
        let filter = compile(code).unwrap();
        let mut out = Vec::new();
        run(&filter, jaq_json::read::parse_single(input.as_bytes()).unwrap(), &mut |v| {
            let mut line = Vec::new();
            to_line(&v, &mut line);
            out.push(String::from_utf8(line).unwrap().trim_end().to_string());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_filter_selects_renames_and_computes() {
        let code = "select(.dep_delay > 60) | {carrier, delay: .dep_delay, speed: (.distance / .air_time * 60)}";
        assert_eq!(
            values(code, r#"{"carrier":"UA","dep_delay":61,"distance":1400,"air_time":200}"#),
            [r#"{"carrier":"UA","delay":61,"speed":420.0}"#]
        );
        assert!(values(code, r#"{"carrier":"UA","dep_delay":2,"distance":1,"air_time":1}"#).is_empty());
        assert_eq!(values(".[]", "[1,2,3]"), ["1", "2", "3"]);
    }

    #[test]
    fn a_bad_filter_is_a_build_error() {
        assert!(compile("select(").is_err());
        assert!(compile("no_such_function(1)").is_err());
    }
}
