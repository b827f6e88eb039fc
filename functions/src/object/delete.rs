//! `object.delete`: delete an object (by default the event's source object).

use object_store::ObjectStoreExt;
use serde::Deserialize;

use super::target_bucket;
use crate::template::KeyTemplate;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    url: Option<String>,
    #[serde(default = "source_key")]
    key: String,
}

fn source_key() -> String {
    "{key}".into()
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "object.delete",
        "Delete an object; by default the event's source object. Deleting a missing object succeeds.",
        &[
            Param {
                name: "key",
                kind: "string (template)",
                default: Some("\"{key}\""),
                doc: "Key template of the object to delete.",
            },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to delete from.",
            },
        ],
        |p: DeleteParams| {
            Ok(Delete { url: p.url, key: KeyTemplate::parse(&p.key).map_err(|e| BuildError::param("key", e.message))? })
        },
    )
}

pub struct Delete {
    url: Option<String>,
    key: KeyTemplate,
}

#[async_trait::async_trait]
impl Function for Delete {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let bucket = target_bucket(self.url.as_deref(), &item, ctx)?;
        let key = self.key.render(&item, ctx)?;
        let path = bucket.output_path(&key)?;
        match bucket.store.delete(&path).await {
            // Idempotent: a redelivered delete finds nothing and still succeeds.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(vec![item]),
            Err(e) => Err(FunctionError::from_store(format!("deleting {key} from {}", bucket.url), e)),
        }
    }
}
