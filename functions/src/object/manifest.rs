//! `object.manifest`: a collecting step that writes one JSON manifest per event,
//! listing what the previous steps produced (fan-in).

use object_store::{ObjectStoreExt, PutPayload};
use serde::Deserialize;

use super::{object_ref, target_bucket};
use crate::template::KeyTemplate;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestParams {
    url: Option<String>,
    key: String,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "object.manifest",
        "Fan-in: write a JSON manifest of the items collected for one event (use with `collect = true`).",
        &[
            Param {
                name: "key",
                kind: "string (template)",
                default: None,
                doc: "Key template of the manifest, e.g. \"manifests/{stem}.json\".",
            },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to write to.",
            },
        ],
        |p: ManifestParams| {
            Ok(Manifest {
                url: p.url,
                key: KeyTemplate::parse(&p.key).map_err(|e| BuildError::param("key", e.message))?,
            })
        },
    )
}

pub struct Manifest {
    url: Option<String>,
    key: KeyTemplate,
}

#[async_trait::async_trait]
impl Function for Manifest {
    fn writes(&self) -> Vec<crate::Output> {
        super::output(&self.url, &self.key)
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let entries: Vec<serde_json::Value> = match &item.payload {
            Payload::Collection(items) => items
                .iter()
                .map(|i| {
                    let mut entry = serde_json::json!({ "meta": i.meta });
                    if let Payload::Json(v) = &i.payload {
                        entry["value"] = v.clone();
                    }
                    entry
                })
                .collect(),
            other => {
                return Err(FunctionError::permanent(format!(
                    "object.manifest collects items: set `collect = true` on its step (got a {} payload)",
                    other.kind()
                )))
            }
        };
        let manifest = serde_json::json!({ "source": item.meta.key, "items": entries });
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| FunctionError::permanent(format!("cannot serialise manifest: {e}")))?;
        let bucket = target_bucket(self.url.as_deref(), &item, ctx)?;
        let key = self.key.render(&item, ctx)?;
        let size = body.len();
        bucket
            .store
            .put(&bucket.output_path(&key)?, PutPayload::from(body))
            .await
            .map_err(|e| FunctionError::from_store(format!("writing {key} to {}", bucket.url), e))?;
        Ok(vec![Item::new(Payload::Json(object_ref(&bucket, &key, size)), item.meta)])
    }
}
