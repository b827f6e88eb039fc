//! Object-store functions: write, copy, delete and list objects by URL and key template.

pub mod copy;
pub mod delete;
pub mod manifest;
pub mod put;

use crate::{Bucket, Context, FunctionError, Item};

/// The bucket a step writes to: its `url` parameter, or the bucket the event came from.
pub(crate) fn target_bucket(url: Option<&str>, item: &Item, ctx: &Context) -> Result<Bucket, FunctionError> {
    let url = url.or(item.meta.source_url.as_deref()).ok_or_else(|| {
        FunctionError::permanent(format!(
            "no `url` parameter and {} has no source bucket to default to",
            item.describe()
        ))
    })?;
    ctx.stores.resolve(url)
}

/// The bucket and key of the event's source object.
pub(crate) fn source_object(item: &Item, ctx: &Context) -> Result<(Bucket, String), FunctionError> {
    let (Some(url), Some(key)) = (item.meta.source_url.as_deref(), item.meta.key.as_deref()) else {
        return Err(FunctionError::permanent(format!("{} has no source object", item.describe())));
    };
    Ok((ctx.stores.resolve(url)?, key.to_string()))
}

/// A JSON description of a written object, the item an output step passes on.
pub(crate) fn object_ref(bucket: &Bucket, key: &str, size: usize) -> serde_json::Value {
    serde_json::json!({ "url": bucket.url, "key": key, "size": size })
}
