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
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| bad(e.to_string()))?
                .with_automatic_cleanup(true);
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
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Bucket { url: url.to_string(), store: Arc::from(store), prefix, local_root: None })
    }
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
