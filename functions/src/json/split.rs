//! `json.split`: one item per line of a JSON-lines object, or per element of a JSON
//! array, as a streaming fan-out (the next steps take them as they come).

use std::io::BufReader;

use serde::Deserialize;

use super::lines::{Lines, MAX_LINE_BYTES};
use crate::stream::{self, io_error, Input, Sink};
use crate::{Context, Emitter, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitParams {
    #[serde(default)]
    skip_bad_lines: bool,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "json.split",
        "Fan out one JSON item per line of a JSON-lines object (streamed), or per element of a JSON array item.",
        &[Param {
            name: "skip_bad_lines",
            kind: "bool",
            default: Some("false"),
            doc: "Leave out lines that are not JSON instead of failing the input (naming the line).",
        }],
        |p: SplitParams| Ok(Split { skip_bad_lines: p.skip_bad_lines }),
    )
}

pub struct Split {
    skip_bad_lines: bool,
}

impl Split {
    async fn go(&self, item: Item, ctx: &Context, emitter: Option<&Emitter>) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        if let Payload::Json(value) = item.payload {
            let elements = match value {
                serde_json::Value::Array(elements) => elements,
                other => vec![other],
            };
            let mut out = Vec::with_capacity(elements.len());
            for (i, element) in elements.into_iter().enumerate() {
                let mut meta = item.meta.clone();
                meta.attributes.insert("index".into(), i.to_string());
                out.push(Item::new(Payload::Json(element), meta));
            }
            return Ok(out);
        }
        let input = Input::of(&item, ctx)?;
        let (skip, meta) = (self.skip_bad_lines, item.meta.clone());
        let ((), produced) = stream::run(input, Sink { bucket: None, emitter }, move |reader, outputs| {
            let mut lines = Lines::new(BufReader::with_capacity(256 << 10, reader));
            while let Some(line) = lines.next_line().map_err(|e| io_error(&name, e))? {
                let parsed = match &line.text {
                    None => Err(format!("longer than {MAX_LINE_BYTES} bytes")),
                    Some(text) => serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}")),
                };
                match parsed {
                    Ok(value) => {
                        let mut meta = meta.clone();
                        meta.attributes.insert("line".into(), line.number.to_string());
                        outputs.emit(Item::new(Payload::Json(value), meta)).map_err(|e| io_error(&name, e))?;
                    }
                    Err(_) if skip => {}
                    Err(why) => return Err(FunctionError::permanent(format!("{name} line {}: {why}", line.number))),
                }
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
