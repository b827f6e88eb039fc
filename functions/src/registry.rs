//! The function contract and the registry that names functions.
//!
//! Every built-in is listed in [`Registry::builtin`]: grep there to find a function.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    build: Arc<BuildFn>,
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

/// A function built for one step, with how long building it took (the "init time").
pub struct Built {
    pub function: Arc<dyn Function>,
    pub init: Duration,
}

/// Functions by dotted name.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    specs: BTreeMap<&'static str, FunctionSpec>,
}

impl Registry {
    /// An empty registry, for embedders who want only their own functions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in function. The one list to read to know what exists.
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        registry.register(crate::image::function::resize_and_watermark::spec());
        registry.register(crate::image::function::resize::spec());
        registry.register(crate::image::function::watermark::spec());
        registry.register(crate::image::function::convert::spec());
        registry.register(crate::image::function::metadata::spec());
        registry.register(crate::image::function::placeholder::spec());
        registry.register(crate::object::put::spec());
        registry.register(crate::object::copy::spec());
        registry.register(crate::object::delete::spec());
        registry.register(crate::object::expire::spec());
        registry.register(crate::object::sweep::spec());
        registry.register(crate::object::manifest::spec());
        #[cfg(feature = "kafka")]
        registry.register(crate::kafka::produce::spec());
        registry
    }

    /// Adds (or replaces) a function under its name.
    pub fn register(&mut self, spec: FunctionSpec) -> &mut Self {
        self.specs.insert(spec.name, spec);
        self
    }

    pub fn get(&self, name: &str) -> Option<&FunctionSpec> {
        self.specs.get(name)
    }

    pub fn specs(&self) -> impl Iterator<Item = &FunctionSpec> {
        self.specs.values()
    }

    /// Builds `name` from `params`, timing the set-up.
    pub fn build(&self, name: &str, params: Params<'_>) -> Result<Built, BuildError> {
        let spec = self.get(name).ok_or_else(|| {
            let known: Vec<_> = self.specs.keys().copied().collect();
            BuildError::new(format!("unknown function `{name}` (known: {})", known.join(", ")))
        })?;
        let started = Instant::now();
        let function = (spec.build)(params)?;
        Ok(Built { function, init: started.elapsed() })
    }
}
