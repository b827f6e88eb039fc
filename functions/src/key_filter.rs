//! Which object keys a trigger, a notification or a sweep cares about: a prefix, then
//! include/exclude globs on the rest of the key. One implementation, so that a bucket
//! trigger, bucket notifications on a Kafka topic and `object.sweep` agree on what
//! `include = ["*.jpg"]` means.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A prefix and globs, matched the way S3 prefix/suffix filters are read by people:
/// globs are case-insensitive and `*` crosses `/` ("*.jpg" is any key ending in .jpg
/// or .JPG, however deep).
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub prefix: String,
    /// Matched against the key after `prefix`. None: everything.
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A glob that does not compile: which list it is in, its position there, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadGlob {
    pub list: &'static str,
    pub index: usize,
    pub message: String,
}

impl KeyFilter {
    /// Compiles the globs; every bad one is reported, not only the first. A prefix must
    /// be relative (no leading `/`, no `..`): it names keys, never the file system.
    pub fn new(prefix: &str, include: &[impl AsRef<str>], exclude: &[impl AsRef<str>]) -> Result<Self, Vec<BadGlob>> {
        let mut bad = Vec::new();
        let include = globs("include", include, &mut bad);
        let exclude = globs("exclude", exclude, &mut bad);
        if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
            bad.push(BadGlob {
                list: "prefix",
                index: 0,
                message: format!("{prefix:?} must be a relative key prefix"),
            });
        }
        match bad.is_empty() {
            true => Ok(Self { prefix: prefix.to_string(), include, exclude }),
            false => Err(bad),
        }
    }

    /// True if `key` is under the prefix, included, not excluded, and no segment is
    /// hidden (`.name`: editor and rsync temp files, weir's own state directory).
    pub fn matches(&self, key: &str) -> bool {
        let Some(rest) = key.strip_prefix(&self.prefix) else { return false };
        if rest.is_empty() || key.split('/').any(|s| s.starts_with('.')) {
            return false;
        }
        self.include.as_ref().is_none_or(|g| g.is_match(rest))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(rest))
    }

    /// The directory part of the prefix: what to list or watch (listings match whole
    /// path segments, so `photos/2026-` lists `photos/` and filters the rest).
    pub fn dir(&self) -> &str {
        self.prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }
}

fn globs(list: &'static str, globs: &[impl AsRef<str>], bad: &mut Vec<BadGlob>) -> Option<GlobSet> {
    if globs.is_empty() {
        return None;
    }
    let mut set = GlobSetBuilder::new();
    for (index, glob) in globs.iter().enumerate() {
        let glob = glob.as_ref();
        match GlobBuilder::new(glob).case_insensitive(true).literal_separator(false).build() {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => bad.push(BadGlob { list, index, message: format!("invalid glob {glob:?}: {}", e.kind()) }),
        }
    }
    match set.build() {
        Ok(set) => Some(set),
        Err(e) => {
            bad.push(BadGlob { list, index: 0, message: format!("invalid globs: {e}") });
            None
        }
    }
}

/// The bucket's name in a URL, as bucket notifications name it: `s3://photos/inbox` →
/// `photos`; for a local directory, its last path segment (`file:///srv/photos` →
/// `photos`).
pub fn bucket_name(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let name =
        if scheme == "file" { rest.trim_end_matches('/').rsplit('/').next()? } else { rest.split('/').next()? };
    (!name.is_empty() && name != ".").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_globs_and_hidden_files() {
        let f = KeyFilter::new("inbox/", &["*.jpg", "*.png"], &["tmp/**"]).unwrap();
        assert!(f.matches("inbox/a.jpg"));
        assert!(f.matches("inbox/deep/er/A.JPG"));
        assert!(!f.matches("inbox/a.gif"));
        assert!(!f.matches("processed/a.jpg"));
        assert!(!f.matches("inbox/tmp/a.jpg"));
        assert!(!f.matches("inbox/.a.jpg.tmp"));
        assert!(!f.matches("inbox/.weir/x.jpg"));
        assert!(!f.matches("inbox/"));
        assert_eq!(f.dir(), "inbox");
    }

    #[test]
    fn every_bad_glob_and_prefix_is_reported() {
        let bad = KeyFilter::new("../x", &["a[", "ok"], &["b["]).unwrap_err();
        let lists: Vec<_> = bad.iter().map(|b| (b.list, b.index)).collect();
        assert_eq!(lists, [("include", 0), ("exclude", 0), ("prefix", 0)]);
    }

    #[test]
    fn bucket_names() {
        assert_eq!(bucket_name("s3://photos/inbox").as_deref(), Some("photos"));
        assert_eq!(bucket_name("file:///srv/buckets/photos/").as_deref(), Some("photos"));
        assert_eq!(bucket_name("file://."), None);
        assert_eq!(bucket_name("photos"), None);
    }
}
