//! The registry that names functions.
//!
//! Every built-in is listed in [`Registry::builtin`]: grep there to find a function.
//! The contract a function implements is in [`crate::function`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::function::{Function, FunctionSpec, Params};
use crate::BuildError;

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
        registry.register(crate::table::convert::spec());
        registry.register(crate::table::split::spec());
        registry.register(crate::compress::function::decode_spec());
        registry.register(crate::compress::function::encode_spec());
        registry.register(crate::archive::extract::spec());
        registry.register(crate::json::transform::spec());
        registry.register(crate::json::split::spec());
        registry.register(crate::flow::discard::spec());
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
