//! Object-store functions: write, copy, delete and expire objects by URL and key template.

pub mod copy;
pub mod delete;
pub mod expire;
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

/// Outputs larger than this are written as a multipart upload, in parts of this size:
/// no single request carries a huge body, and a failed part is retried alone.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;

/// Writes `bytes` at `path`: one PUT for small objects, a multipart upload for large ones.
pub async fn write_object(
    bucket: &Bucket,
    path: &object_store::path::Path,
    bytes: bytes::Bytes,
    context: impl Fn() -> String,
) -> Result<(), FunctionError> {
    use object_store::ObjectStoreExt;
    if bytes.len() <= MULTIPART_THRESHOLD {
        bucket.store.put(path, bytes.into()).await.map_err(|e| FunctionError::from_store(context(), e))?;
        return Ok(());
    }
    let upload = bucket.store.put_multipart(path).await.map_err(|e| FunctionError::from_store(context(), e))?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD);
    writer.put(bytes);
    writer.finish().await.map_err(|e| FunctionError::from_store(context(), e))?;
    Ok(())
}

/// Copies an object between buckets as a stream: at most a few parts in memory
/// whatever its size.
pub async fn stream_copy(
    from: &Bucket,
    from_path: &object_store::path::Path,
    to: &Bucket,
    to_path: &object_store::path::Path,
    context: impl Fn() -> String,
) -> Result<usize, FunctionError> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let source = from.store.get(from_path).await.map_err(|e| FunctionError::from_store(context(), e))?;
    let size = source.meta.size as usize;
    if size <= MULTIPART_THRESHOLD {
        let bytes = source.bytes().await.map_err(|e| FunctionError::from_store(context(), e))?;
        write_object(to, to_path, bytes, &context).await?;
        return Ok(size);
    }
    let upload = to.store.put_multipart(to_path).await.map_err(|e| FunctionError::from_store(context(), e))?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD);
    let mut stream = source.into_stream();
    let copied: Result<(), object_store::Error> = async {
        while let Some(chunk) = stream.try_next().await? {
            writer.wait_for_capacity(2).await?;
            writer.write(&chunk);
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        let _ = writer.abort().await;
        return Err(FunctionError::from_store(context(), e));
    }
    writer.finish().await.map_err(|e| FunctionError::from_store(context(), e))?;
    Ok(size)
}
