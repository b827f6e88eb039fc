//! `flow.discard`: end a branch on purpose (Vector's `blackhole`, Redpanda Connect's
//! `drop`). A pipeline whose only step discards still records every event in the
//! ledger: a replay with it marks a bucket's history as seen without processing it,
//! and it measures the engine without the cost of any work.

use serde::Deserialize;

use crate::{Context, Function, FunctionError, FunctionSpec, Item};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscardParams {}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "flow.discard",
        "Do nothing with the item and pass nothing on; the event still counts as done. An object \
         event's object is not even read.",
        &[],
        |_: DiscardParams| Ok(Discard),
    )
}

pub struct Discard;

#[async_trait::async_trait]
impl Function for Discard {
    async fn invoke(&self, _item: Item, _ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        Ok(Vec::new())
    }

    /// It never looks at the bytes, so an object event's object is not loaded for it.
    fn reads_source(&self) -> bool {
        true
    }
}
