//! What the executor offers the events it runs ([`Runner`]): the trigger's work calls
//! back into the step graph, the object loader and the dead letters through it.

use object_store::ObjectStoreExt;
use std::sync::Arc;
use std::time::SystemTime;

use weir_functions::{FunctionError, Item, Metadata, Payload, Stores};

use super::{graph, invoke, PipelineRuntime};
use crate::event::{BatchRan, Rebuild, Runner, Scope, StepFailure, Work};

#[async_trait::async_trait]
impl Runner for PipelineRuntime {
    fn pipeline(&self) -> &Arc<str> {
        &self.name
    }

    fn stores(&self) -> &Stores {
        &self.stores
    }

    fn concurrency(&self) -> usize {
        self.pipeline.limits.concurrency
    }

    fn max_input_bytes(&self) -> u64 {
        self.pipeline.limits.max_input_bytes
    }

    async fn run(&self, root: Item, again: Option<Rebuild<'_>>, scope: &Scope) -> Result<usize, StepFailure> {
        graph::run(self, root, again, scope).await
    }

    async fn load_object(&self, url: &str, key: &str, size: Option<u64>, scope: &Scope) -> Result<Item, StepFailure> {
        let roots = self.graph.roots();
        if !roots.is_empty() && roots.iter().all(|&root| self.pipeline.steps[root].function.reads_source()) {
            // Every first step streams the object itself: hand it over by reference.
            return Ok(Item::new(Payload::Empty, Metadata::for_object(url.to_string(), key.to_string())));
        }
        let limit = self.pipeline.limits.max_input_bytes;
        if size.is_some_and(|s| s > limit) {
            // The size came with the event (a listing, or a notification anyone who may
            // post can forge): the store has the last word before the event is refused.
            // A failed look falls through to the bounded read, which checks as it goes.
            let real = match self.stores.resolve(url).and_then(|bucket| bucket.path(key).map(|p| (bucket, p))) {
                Ok((bucket, path)) => bucket.store.head(&path).await.ok().map(|meta| meta.size),
                Err(_) => None,
            };
            if let Some(real) = real.filter(|r| *r > limit) {
                return Err(StepFailure::load(FunctionError::permanent(format!(
                    "{key} is {real} bytes, over max_input_bytes = {limit}"
                ))));
            }
        }
        invoke::with_retries(self, "load", scope.started, true, |_| async move {
            let bucket = self.stores.resolve(url)?;
            let bytes = weir_functions::object::read_limited(&bucket, key, limit).await?;
            Ok(Item::new(Payload::Bytes(bytes), Metadata::for_object(url.to_string(), key.to_string())))
        })
        .await
    }

    async fn run_batch(&self, items: Vec<Item>, scope: &Scope) -> BatchRan {
        let Some(&root) = self.graph.roots().first() else {
            return BatchRan { failed: Vec::new(), after: Ok(0) };
        };
        let meta = Metadata { key: items.first().and_then(|i| i.meta.key.clone()), ..Metadata::default() };
        let (outputs, failed) = invoke::batch(self, root, items, scope).await;
        let after = graph::run_after(self, root, outputs, meta, scope).await;
        BatchRan { failed, after }
    }

    async fn dead_letter(
        &self,
        id: &str,
        work: &dyn Work,
        received_at: SystemTime,
        failure: &StepFailure,
    ) -> Result<String, FunctionError> {
        self.write_dead_letter(id, work, received_at, failure).await
    }
}
