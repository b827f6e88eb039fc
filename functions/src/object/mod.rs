//! Object-store functions: write, copy, delete and expire objects by URL and key template.

pub mod copy;
pub mod delete;
pub mod expire;
pub mod manifest;
pub mod put;
pub mod sweep;

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

/// Reads an object as a stream, refusing it as soon as it grows past `limit` bytes
/// (the listed size may be stale or wrong; memory must not follow a liar).
pub async fn read_limited(bucket: &Bucket, key: &str, limit: u64) -> Result<bytes::Bytes, FunctionError> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let location = bucket.path(key)?;
    let context = || format!("reading {key} from {}", bucket.url);
    let result = bucket.store.get(&location).await.map_err(|e| FunctionError::from_store(context(), e))?;
    let too_big =
        |size: u64| FunctionError::permanent(format!("{key} is {size} bytes, over max_input_bytes = {limit}"));
    if result.meta.size > limit {
        return Err(too_big(result.meta.size));
    }
    let mut buffer = bytes::BytesMut::with_capacity(result.meta.size as usize);
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.try_next().await.map_err(|e| FunctionError::from_store(context(), e))? {
        if (buffer.len() + chunk.len()) as u64 > limit {
            return Err(too_big((buffer.len() + chunk.len()) as u64));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// The moment object ages are measured from: a schedule tick's logical time (so a
/// re-run or replayed tick sees the same objects as old), or now.
pub(crate) fn age_reference(item: &Item) -> chrono::DateTime<chrono::Utc> {
    item.meta
        .attribute("scheduled_time")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now)
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

/// What a function writing `key` to `url` declares in [`crate::Function::writes`].
pub(crate) fn output(url: &Option<String>, key: &crate::template::KeyTemplate) -> Vec<crate::Output> {
    vec![crate::Output { url: url.clone(), sample_key: key.sample(), param: "key" }]
}
