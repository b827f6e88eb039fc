//! `object.copy`: copy the event's source object to a key template, in any bucket.

use object_store::ObjectStoreExt;
use serde::Deserialize;

use super::{object_ref, source_object, target_bucket};
use crate::template::KeyTemplate;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyParams {
    url: Option<String>,
    key: String,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "object.copy",
        "Copy the event's source object to a key template (same or another bucket).",
        &[
            Param {
                name: "key",
                kind: "string (template)",
                default: None,
                doc: "Destination key template, e.g. \"archive/{key}\".",
            },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Destination bucket.",
            },
        ],
        |p: CopyParams| {
            Ok(Copy { url: p.url, key: KeyTemplate::parse(&p.key).map_err(|e| BuildError::param("key", e.message))? })
        },
    )
}

pub struct Copy {
    url: Option<String>,
    key: KeyTemplate,
}

#[async_trait::async_trait]
impl Function for Copy {
    fn writes(&self) -> Vec<crate::Output> {
        super::output(&self.url, &self.key)
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let (source, source_key) = source_object(&item, ctx)?;
        let target = target_bucket(self.url.as_deref(), &item, ctx)?;
        let key = self.key.render(&item, ctx)?;
        let from = source.path(&source_key)?;
        let to = target.output_path(&key)?;
        let context = || format!("copying {source_key} from {} to {key} in {}", source.url, target.url);
        let size = if source.url == target.url {
            target.store.copy(&from, &to).await.map_err(|e| FunctionError::from_store(context(), e))?;
            target.store.head(&to).await.map(|m| m.size as usize).unwrap_or(0)
        } else {
            super::stream_copy(&source, &from, &target, &to, context).await?
        };
        Ok(vec![Item::new(Payload::Json(object_ref(&target, &key, size)), item.meta)])
    }
}
