use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use weir_functions::{Context, Item, Metadata, Params, Payload, Registry, Stores};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The function's dotted name (see `weir functions`).
    function: String,
    /// The input file, passed to the function as bytes.
    #[arg(long)]
    input: PathBuf,
    /// A parameter as KEY=VALUE; VALUE is TOML (`quality=90`, `sizes=[{name="t",long_edge=200}]`),
    /// or a plain string. Dotted keys reach into tables: `watermark.text=Hi`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Where output bytes are written, as `<stem>-<variant>.<ext>`.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

/// Turns `k=v` pairs into a TOML inline table, quoting values that are not TOML.
fn params_table(params: &[String]) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    for p in params {
        let (key, value) = p.split_once('=').with_context(|| format!("--param {p:?} is not KEY=VALUE"))?;
        let value = if toml::de::ValueDeserializer::parse(value).is_ok() {
            value.to_string()
        } else {
            toml::Value::String(value.to_string()).to_string()
        };
        entries.push(format!("{} = {value}", key.trim()));
    }
    Ok(format!("{{ {} }}", entries.join(", ")))
}

pub async fn run(args: Args, registry: &Registry) -> anyhow::Result<ExitCode> {
    let table = params_table(&args.params)?;
    let params = Params::parse(&table).map_err(|e| anyhow::anyhow!("--param: {}", e.message))?;
    let built =
        registry.build(&args.function, params).map_err(|e| anyhow::anyhow!("{}: {}", args.function, e.message))?;
    let bytes = tokio::fs::read(&args.input).await.with_context(|| format!("reading {}", args.input.display()))?;
    let dir = args.input.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = args.input.file_name().and_then(|n| n.to_str()).context("input file name is not UTF-8")?;
    let item = Item::new(Payload::Bytes(bytes.into()), Metadata::for_object(format!("file://{}", dir.display()), name));
    let stem = item.meta.stem().to_string();
    let ctx = Context::standalone(Stores::new());
    let started = Instant::now();
    let outputs =
        built.function.invoke(item, &ctx).await.map_err(|e| anyhow::anyhow!("{}: {}", args.function, e.chain()))?;
    let took = started.elapsed();
    println!(
        "init {:.1} ms, invoke {:.1} ms, {} output(s)",
        built.init.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        outputs.len()
    );
    for (i, out) in outputs.iter().enumerate() {
        match &out.payload {
            Payload::Bytes(b) => {
                tokio::fs::create_dir_all(&args.out)
                    .await
                    .with_context(|| format!("creating {}", args.out.display()))?;
                let variant = out.meta.variant.clone().unwrap_or_else(|| i.to_string());
                let ext = out.meta.format_ext.as_deref().unwrap_or("bin");
                let path = args.out.join(format!("{stem}-{variant}.{ext}"));
                tokio::fs::write(&path, b).await.with_context(|| format!("writing {}", path.display()))?;
                println!("{}  {} bytes", path.display(), b.len());
            }
            Payload::Json(v) => println!("{v}"),
            other => println!("<{} item: {}>", other.kind(), out.describe()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_an_inline_table() {
        let t =
            params_table(&["quality=90".into(), "key=processed/{stem}.jpg".into(), "watermark.text=Hi there".into()])
                .unwrap();
        assert_eq!(t, "{ quality = 90, key = \"processed/{stem}.jpg\", watermark.text = \"Hi there\" }");
        assert!(params_table(&["novalue".into()]).is_err());
    }
}
