//! `object.put`: write an item's bytes to a bucket under a key template.

use serde::Deserialize;

use super::{object_ref, target_bucket};
use crate::template::KeyTemplate;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutParams {
    url: Option<String>,
    key: String,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "object.put",
        "Write the item (bytes, or JSON as text) to a bucket under a key template.",
        &[
            Param {
                name: "key",
                kind: "string (template)",
                default: None,
                doc: "Key template, e.g. \"processed/{variant}/{stem}.jpg\".",
            },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to write to: file://, memory://, s3://…",
            },
        ],
        |p: PutParams| {
            Ok(Put { url: p.url, key: KeyTemplate::parse(&p.key).map_err(|e| BuildError::param("key", e.message))? })
        },
    )
}

pub struct Put {
    url: Option<String>,
    key: KeyTemplate,
}

#[async_trait::async_trait]
impl Function for Put {
    fn writes(&self) -> Vec<crate::Output> {
        super::output(&self.url, &self.key)
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let bytes = match &item.payload {
            Payload::Bytes(b) => b.clone(),
            Payload::Json(v) => bytes::Bytes::from(
                serde_json::to_vec(v)
                    .map_err(|e| FunctionError::permanent(format!("cannot serialise {}: {e}", item.describe())))?,
            ),
            other => {
                return Err(FunctionError::permanent(format!(
                    "object.put needs bytes or JSON, got a {} payload for {} (encode it first)",
                    other.kind(),
                    item.describe()
                )))
            }
        };
        let bucket = target_bucket(self.url.as_deref(), &item, ctx)?;
        let key = self.key.render(&item, ctx)?;
        let path = bucket.output_path(&key)?;
        let size = bytes.len();
        super::write_object(&bucket, &path, bytes, || format!("writing {key} to {}", bucket.url)).await?;
        let mut meta = item.meta;
        meta.attributes.insert("output_key".into(), key.clone());
        Ok(vec![Item::new(Payload::Json(object_ref(&bucket, &key, size)), meta)])
    }
}
