//! The trigger kinds a pipeline file may name, by `kind`.
//!
//! Every built-in is listed in [`Triggers::builtin`]: grep there to find a trigger.
//! Your own kind is one `register` away, from your own binary (see
//! `examples/custom_trigger.rs`).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use toml::de::DeValue;

use super::contract::{TriggerKind, TriggerSpec};
use crate::config::diagnostics::Reporter;
use crate::config::document::{section, Value};

/// A [`TriggerKind`] with its types erased, so kinds can sit in one list.
trait DynKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn parse(&self, table: &Value<'_>, report: &mut Reporter<'_>) -> Option<Arc<dyn TriggerSpec>>;
    fn dead_letter_scheme(&self) -> Option<(&'static str, &'static str)>;
}

struct Erased<K>(PhantomData<fn() -> K>);

impl<K: TriggerKind> DynKind for Erased<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn parse(&self, table: &Value<'_>, report: &mut Reporter<'_>) -> Option<Arc<dyn TriggerSpec>> {
        let raw: K::Raw = section(table, report)?;
        K::validate(raw, report).map(|config| Arc::new(config) as Arc<dyn TriggerSpec>)
    }

    fn dead_letter_scheme(&self) -> Option<(&'static str, &'static str)> {
        K::dead_letter_scheme()
    }
}

/// Trigger kinds by name.
#[derive(Clone, Default)]
pub struct Triggers {
    kinds: BTreeMap<&'static str, Arc<dyn DynKind>>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Triggers {
    /// No kinds at all, for embedders who want only their own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in kind. The one list to read to know what exists.
    pub fn builtin() -> Self {
        let mut triggers = Self::new();
        triggers.register::<super::object_store::ObjectStoreKind>();
        triggers.register::<super::cron::CronKind>();
        triggers.register::<super::kafka::KafkaKind>();
        triggers.register::<super::http::HttpKind>();
        triggers
    }

    /// Adds (or replaces) a kind under its name.
    pub fn register<K: TriggerKind>(&mut self) -> &mut Self {
        self.kinds.insert(K::NAME, Arc::new(Erased::<K>(PhantomData)));
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Parses a `[trigger]` table by its `kind`, reporting every problem.
    pub fn parse(&self, value: &Value<'_>, report: &mut Reporter<'_>) -> Option<Arc<dyn TriggerSpec>> {
        let known = || self.names().collect::<Vec<_>>().join(", ");
        let DeValue::Table(table) = value.get_ref() else {
            report.error(value.span(), "[trigger] must be a table");
            return None;
        };
        let Some(kind) = table.get("kind") else {
            report.error(value.span(), format!("[trigger] needs `kind` (one of: {})", known()));
            return None;
        };
        let Some(name) = kind.get_ref().as_str() else {
            report.error(kind.span(), format!("`kind` must be a string (one of: {})", known()));
            return None;
        };
        let Some(found) = self.kinds.get(name) else {
            report.error(kind.span(), format!("unknown trigger kind {name:?} (supported: {})", known()));
            return None;
        };
        let mut rest = table.clone();
        rest.remove("kind");
        found.parse(&toml::Spanned::new(value.span(), DeValue::Table(rest)), report)
    }

    /// The kind that offers dead letters at `url` (`kafka://…`), and what using them
    /// without that kind of trigger means.
    pub fn dead_letter_scheme(&self, url: &str) -> Option<(&'static str, &'static str)> {
        self.kinds.values().find_map(|k| {
            let (scheme, why) = k.dead_letter_scheme()?;
            url.starts_with(scheme).then(|| (k.name(), why))
        })
    }
}
