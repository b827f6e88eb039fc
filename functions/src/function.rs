//! The function contract: what a step function implements, and how it is built from
//! its parameters in the pipeline file.
//!
//! A function is built once per step ([`FunctionSpec`]: its parameters typed with serde,
//! so every mistake is a `weir validate` error with its position) and then invoked many
//! times, possibly concurrently, like a warm Lambda instance.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{BuildError, Context, FunctionError, Item};

/// A built, ready-to-invoke step function. Built once per step, invoked many times,
/// possibly concurrently: keep per-invocation state on the stack.
#[async_trait::async_trait]
pub trait Function: Send + Sync + 'static {
    /// Processes one item. Returning several items fans out: each flows to the next
    /// step as its own invocation. Returning none ends this branch.
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError>;

    /// True for functions whose outputs are too many to hold at once (one item per
    /// listed object): the executor then calls [`Function::invoke_streaming`] instead.
    fn streams(&self) -> bool {
        false
    }

    /// Streaming fan-out: sends each output into `out` as soon as it exists. `emit`
    /// waits while the next steps are busy, so a listing of millions holds a handful of
    /// items. A streaming invocation holds no concurrency permit (it would starve the
    /// steps it feeds); a retry starts it over, so outputs may be emitted twice.
    async fn invoke_streaming(&self, item: Item, ctx: &Context, out: &Emitter) -> Result<(), FunctionError> {
        for output in self.invoke(item, ctx).await? {
            out.emit(output).await?;
        }
        Ok(())
    }

    /// True for functions that read their event's object themselves, as a stream (a
    /// 300 MB CSV converted in bounded memory): as a pipeline's first step such a
    /// function gets the object by reference (an empty payload whose metadata names it)
    /// instead of its bytes, and `max_input_bytes` does not apply to it. A function
    /// that says so must still take bytes (`weir invoke`, an earlier step's output).
    fn reads_source(&self) -> bool {
        false
    }

    /// The objects this function writes, so that `weir validate` can refuse a pipeline
    /// whose outputs would land where its own trigger watches (an S3 → Lambda loop)
    /// without knowing any function by name.
    fn writes(&self) -> Vec<Output> {
        Vec::new()
    }
}

/// An object a function writes: its bucket and a sample of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The bucket URL; None for the event's own bucket.
    pub url: Option<String>,
    /// A key the template can produce (`processed/thumb/stem.jpg`).
    pub sample_key: String,
    /// The parameter that sets it, for the error's position in the file.
    pub param: &'static str,
}

/// Where a streaming function sends its outputs (a bounded channel to the executor).
pub struct Emitter {
    tx: tokio::sync::mpsc::Sender<Item>,
}

impl Emitter {
    pub fn new(tx: tokio::sync::mpsc::Sender<Item>) -> Self {
        Self { tx }
    }

    /// Hands one output on, waiting while the steps after this one are busy.
    pub async fn emit(&self, item: Item) -> Result<(), FunctionError> {
        self.tx.send(item).await.map_err(|_| FunctionError::permanent("the event stopped taking outputs"))
    }
}

/// A step's parameters as they appear in the pipeline file: deserialize them with serde
/// and errors carry their position in the file.
pub struct Params<'a> {
    source: toml::de::ValueDeserializer<'a>,
}

impl<'a> Params<'a> {
    pub fn new(source: toml::de::ValueDeserializer<'a>) -> Self {
        Self { source }
    }

    /// Parameters from a TOML inline-table text, e.g. `{ key = "x/{stem}.jpg" }`
    /// (what `weir invoke --param` builds).
    pub fn parse(text: &'a str) -> Result<Self, BuildError> {
        Ok(Self::new(toml::de::ValueDeserializer::parse(text)?))
    }

    pub fn deserialize<P: DeserializeOwned>(self) -> Result<P, BuildError> {
        Ok(P::deserialize(self.source)?)
    }
}

/// Documentation of one parameter, shown by `weir functions`.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// TOML type and allowed values, e.g. `"jpeg" | "png" | "webp"`.
    pub kind: &'static str,
    /// `None` when required.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

type BuildFn = dyn Fn(Params<'_>) -> Result<Arc<dyn Function>, BuildError> + Send + Sync;

/// A named function: its documentation and how to build it from parameters.
#[derive(Clone)]
pub struct FunctionSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    pub(crate) build: Arc<BuildFn>,
}

impl FunctionSpec {
    /// A spec whose parameters deserialize into `P` (use `#[serde(deny_unknown_fields)]`
    /// so typos are caught at validate time) and whose builder turns `P` into a function.
    pub fn new<P, F>(
        name: &'static str,
        summary: &'static str,
        params: &'static [Param],
        build: impl Fn(P) -> Result<F, BuildError> + Send + Sync + 'static,
    ) -> Self
    where
        P: DeserializeOwned,
        F: Function,
    {
        let build = move |params: Params<'_>| -> Result<Arc<dyn Function>, BuildError> {
            let parsed: P = params.deserialize()?;
            Ok(Arc::new(build(parsed)?) as Arc<dyn Function>)
        };
        Self { name, summary, params, build: Arc::new(build) }
    }
}

impl std::fmt::Debug for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSpec").field("name", &self.name).finish_non_exhaustive()
    }
}
