//! Object stores by URL, shared by triggers and functions.
//!
//! Every URL a pipeline names (`file://./data`, `memory://scratch`, `s3://bucket/prefix`)
//! resolves to one [`Bucket`]: a store plus the prefix inside it. Resolution is cached
//! so all steps share connections, and `memory://NAME` means the same in-memory
//! store everywhere in the process (useful for tests and examples).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path;
use object_store::ObjectStore;

use crate::FunctionError;

mod local;
pub use local::LocalBucket;

/// A store plus the prefix inside it that a URL points at. Keys are relative to `prefix`.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// The URL as written in the pipeline, for messages.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// For `file://` buckets, the directory on disk (absolute).
    pub local_root: Option<std::path::PathBuf>,
}

impl Bucket {
    /// The store path of an untrusted key. Rejects keys that could escape the bucket:
    /// `..` or `.` segments, empty segments, absolute paths, backslashes, control bytes.
    pub fn path(&self, key: &str) -> Result<Path, FunctionError> {
        check_key(key)
            .map_err(|why| FunctionError::permanent(format!("refusing key {key:?} in {}: {why}", self.url)))?;
        let relative = Path::parse(key)
            .map_err(|e| FunctionError::permanent(format!("invalid key {key:?} in {}: {e}", self.url)))?;
        Ok(self.prefix.parts().chain(relative.parts()).collect())
    }

    /// The store path of a key a step writes or deletes, from a template fed by
    /// untrusted input (`{attr.record_key}`, a header): besides what [`Self::path`]
    /// refuses, no hidden segment (`.weir/ledger.db`, `.name`), where weir keeps its state
    /// and uploaders keep partial files.
    pub fn output_path(&self, key: &str) -> Result<Path, FunctionError> {
        if let Some(hidden) = key.split('/').find(|segment| segment.starts_with('.')) {
            return Err(FunctionError::permanent(format!(
                "refusing to write key {key:?} in {}: hidden path segment {hidden:?}",
                self.url
            )));
        }
        self.path(key)
    }

    /// Whether the bucket answers a listing of `dir` (start-up health checks): the
    /// bucket exists and these credentials may read it. The error is one short line.
    pub async fn reachable(&self, dir: &str) -> Result<(), String> {
        let path = if dir.is_empty() { self.prefix.clone() } else { self.path(dir).map_err(|e| e.to_string())? };
        match self.store.list_with_delimiter(Some(&path)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {}", self.url, crate::error::short_store_message(&e.to_string()))),
        }
    }

    /// The key of a store path, relative to this bucket's prefix.
    pub fn key_of(&self, path: &Path) -> Option<String> {
        let rest: Vec<_> = path.prefix_match(&self.prefix)?.collect();
        Some(rest.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join("/"))
    }
}

/// Why a key is unsafe, if it is.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if key.starts_with('/') {
        return Err("absolute key");
    }
    if key.contains('\\') {
        return Err("backslash in key");
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("control character in key");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("empty path segment"),
            "." | ".." => return Err("relative path segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Resolves and caches buckets by URL. Cheap to clone.
#[derive(Clone, Default)]
pub struct Stores {
    cache: Arc<Mutex<HashMap<String, Bucket>>>,
    /// Extra object_store options per URL scheme (`aws_endpoint`, …) from pipeline config.
    options: Arc<Mutex<HashMap<String, StoreOptions>>>,
}

/// object_store configuration keys and values (`aws_endpoint`, `aws_region`, …).
pub type StoreOptions = Vec<(String, String)>;

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers object_store options (credentials, endpoint) used when `url` is resolved.
    pub fn set_options(&self, url: &str, options: StoreOptions) {
        self.options.lock().expect("stores lock").insert(url.to_string(), options);
    }

    /// Serves `bucket.url` from `bucket.store` from now on: an embedder's own
    /// `ObjectStore` (a backend object_store lacks, a wrapper that counts or injects
    /// faults) behind a URL pipelines name, as object_store's registry allows.
    pub fn insert(&self, bucket: Bucket) {
        self.cache.lock().expect("stores lock").insert(bucket.url.clone(), bucket);
    }

    /// The bucket for a URL, created on first use.
    ///
    /// `file://` URLs may be relative (`file://./data`): they resolve against the
    /// working directory, and the directory is created if missing.
    pub fn resolve(&self, url: &str) -> Result<Bucket, FunctionError> {
        if let Some(bucket) = self.cache.lock().expect("stores lock").get(url) {
            return Ok(bucket.clone());
        }
        let bucket = self.open(url)?;
        self.cache.lock().expect("stores lock").entry(url.to_string()).or_insert(bucket.clone());
        Ok(bucket)
    }

    fn open(&self, url: &str) -> Result<Bucket, FunctionError> {
        let bad = |why: String| FunctionError::permanent(format!("cannot open store {url}: {why}"));
        if let Some(rest) = url.strip_prefix("file://") {
            let dir = std::path::Path::new(if rest.is_empty() { "." } else { rest });
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            let root = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
            let store = LocalBucket::open(&root).map_err(|e| bad(e.to_string()))?;
            return Ok(Bucket {
                url: url.to_string(),
                store: Arc::new(store),
                prefix: Path::default(),
                local_root: Some(root),
            });
        }
        if let Some(name) = url.strip_prefix("memory://") {
            // One in-memory store per name for the whole process.
            static MEMORY: std::sync::OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> =
                std::sync::OnceLock::new();
            let stores = MEMORY.get_or_init(Default::default);
            let store = stores
                .lock()
                .expect("memory stores lock")
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()))
                .clone();
            return Ok(Bucket { url: url.to_string(), store, prefix: Path::default(), local_root: None });
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let options = self.options.lock().expect("stores lock").get(url).cloned().unwrap_or_default();
        let (store, prefix) = open_cloud(&parsed, &options).map_err(bad)?;
        Ok(Bucket { url: url.to_string(), store, prefix, local_root: None })
    }
}

/// How cloud stores retry on their own, below weir's retries.
///
/// object_store's default is 10 retries over up to 3 minutes inside every call, which
/// would hide an outage behind weir's own retry policy (and multiply it). Two quick
/// retries smooth over a dropped connection or a single 503; anything longer is the
/// pipeline's `[retry]` policy's business, with its backoff and its dead letter.
pub fn store_retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(50),
            max_backoff: std::time::Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

/// Checks option keys for a URL's scheme without opening anything, so `weir validate`
/// can point at a misspelt key. Returns the unknown keys.
pub fn unknown_option_keys(url: &str, options: &StoreOptions) -> Vec<String> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    options
        .iter()
        .filter(|(key, _)| {
            let key = key.to_ascii_lowercase();
            match scheme {
                "s3" | "s3a" => key.parse::<object_store::aws::AmazonS3ConfigKey>().is_err(),
                "gs" => key.parse::<object_store::gcp::GoogleConfigKey>().is_err(),
                "az" | "azure" | "abfs" | "abfss" | "adl" => {
                    key.parse::<object_store::azure::AzureConfigKey>().is_err()
                }
                _ => true,
            }
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Opens an `s3://`, `gs://` or `az://` URL: credentials and endpoint from object_store's
/// standard environment variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, …), then the
/// pipeline's options on top, with weir's retry settings.
fn open_cloud(url: &url::Url, options: &StoreOptions) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let prefix = Path::from_url_path(url.path()).map_err(|e| e.to_string())?;
    let unknown = |key: &str| format!("unknown option {key:?} for {}:// stores", url.scheme());
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in options {
                builder = builder.with_config(key.to_ascii_lowercase().parse().map_err(|_| unknown(key))?, value);
            }
            Arc::new(builder.with_retry(store_retry_config()).build().map_err(|e| e.to_string())?)
        }
        "gs" => {
            let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (key, value) in options {
                builder = builder.with_config(key.to_ascii_lowercase().parse().map_err(|_| unknown(key))?, value);
            }
            Arc::new(builder.with_retry(store_retry_config()).build().map_err(|e| e.to_string())?)
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (key, value) in options {
                builder = builder.with_config(key.to_ascii_lowercase().parse().map_err(|_| unknown(key))?, value);
            }
            Arc::new(builder.with_retry(store_retry_config()).build().map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unsupported scheme {other:?} (use file://, memory://, s3://, gs:// or az://)")),
    };
    Ok((store, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for key in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\..\\b", "a\nb"] {
            assert!(check_key(key).is_err(), "{key:?} should be refused");
        }
        for key in ["a", "inbox/cat.jpg", "ünï cødé/ça va+%20.jpg", "a..b/c"] {
            assert!(check_key(key).is_ok(), "{key:?} should be allowed");
        }
    }

    #[test]
    fn outputs_never_go_to_hidden_segments() {
        let bucket = Stores::new().resolve("memory://hidden-outputs").unwrap();
        for key in [".weir/ledger.db", "a/.hidden/b.jpg", ".name", "thumbs/.cat.jpg.part"] {
            let err = bucket.output_path(key).unwrap_err();
            assert!(!err.is_retryable() && err.message().contains("hidden path segment"), "{key}: {err}");
        }
        assert!(bucket.output_path("../x").is_err());
        assert!(bucket.output_path("thumbs/a.b.jpg").is_ok());
        assert!(bucket.path(".weir/ledger.db").is_ok(), "reading such keys is not an output");
    }

    #[test]
    fn file_bucket_keeps_keys_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let bucket = Stores::new().resolve(&url).unwrap();
        assert!(bucket.path("../escape").is_err());
        let path = bucket.path("processed/thumb/cat.jpg").unwrap();
        assert_eq!(bucket.key_of(&path).as_deref(), Some("processed/thumb/cat.jpg"));
    }

    #[test]
    fn memory_buckets_are_shared_by_name() {
        let a = Stores::new().resolve("memory://shared-test").unwrap();
        let b = Stores::new().resolve("memory://shared-test").unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store));
    }
}
