//! Your own function, in your own binary: register it next to the built-ins and run a
//! pipeline that uses it.
//!
//! ```sh
//! cargo run --example custom_function
//! ```
//!
//! The function depends on `weir-functions` only; the engine comes in where the
//! pipeline is run.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use weir_engine::Engine;
use weir_functions::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload, Registry};

/// Parameters, checked when the pipeline is loaded (`weir validate` time).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoutParams {
    #[serde(default = "default_suffix")]
    suffix: String,
}

fn default_suffix() -> String {
    "!".into()
}

/// Upper-cases text. Built once per step; `invoke` runs for every item.
struct Shout {
    suffix: String,
}

#[async_trait::async_trait]
impl Function for Shout {
    async fn invoke(&self, item: Item, _ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let Payload::Bytes(bytes) = &item.payload else {
            return Err(FunctionError::permanent(format!("{} is not bytes", item.describe())));
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| FunctionError::permanent(format!("{} is not UTF-8 text: {e}", item.describe())))?;
        let shouted = format!("{}{}", text.trim_end().to_uppercase(), self.suffix);
        Ok(vec![Item::new(Payload::Bytes(shouted.into_bytes().into()), item.meta)])
    }
}

fn shout_spec() -> FunctionSpec {
    FunctionSpec::new(
        "example.shout",
        "Upper-case a text file.",
        &[Param { name: "suffix", kind: "string", default: Some("\"!\""), doc: "Appended to the text." }],
        |p: ShoutParams| {
            if p.suffix.len() > 10 {
                return Err(BuildError::param("suffix", "suffix must be at most 10 bytes"));
            }
            Ok(Shout { suffix: p.suffix })
        },
    )
}

const PIPELINE: &str = r#"
name = "shouter"

[trigger]
kind = "object_store"
url = "file://BUCKET"
prefix = "inbox/"
include = ["*.txt"]

[[step]]
name = "shout"
function = "example.shout"
suffix = "!!!"

[[step]]
name = "store"
after = "shout"
function = "object.put"
key = "shouted/{name}"
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut registry = Registry::builtin();
    registry.register(shout_spec());

    let dir = std::env::temp_dir().join(format!("weir-example-{}", std::process::id()));
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(bucket.join("inbox"))?;
    let pipeline_file = dir.join("shouter.toml");
    std::fs::write(&pipeline_file, PIPELINE.replace("BUCKET", &bucket.display().to_string()))?;

    let engine = Engine::new(registry).state_dir(dir.join("state"));
    let pipelines = engine.load(&[pipeline_file]).map_err(|d| anyhow::anyhow!("{d}"))?;
    let running = engine.start(pipelines).await?;

    std::fs::write(bucket.join("inbox/hello.txt"), "hello from a custom function")?;
    let output = bucket.join("shouted/hello.txt");
    let started = Instant::now();
    while !output.exists() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "no output after 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{} -> {:?}", output.display(), std::fs::read_to_string(&output)?);

    let stop = CancellationToken::new();
    stop.cancel();
    running.wait(stop).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
