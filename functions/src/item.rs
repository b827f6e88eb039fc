//! What flows between steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

/// One unit of work for one invocation of a step.
#[derive(Clone, Debug)]
pub struct Item {
    pub payload: Payload,
    pub meta: Metadata,
}

/// The data of an item. Decoded images travel as pixels, so a step after a decode
/// never pays for a re-encode and a second decode.
#[derive(Clone, Debug)]
pub enum Payload {
    Empty,
    Bytes(Bytes),
    Image(Arc<image::DynamicImage>),
    Json(serde_json::Value),
    /// The items a collecting (fan-in) step gathered for one event, in arrival order.
    Collection(Vec<Item>),
}

impl Payload {
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Empty => "empty",
            Payload::Bytes(_) => "bytes",
            Payload::Image(_) => "image",
            Payload::Json(_) => "json",
            Payload::Collection(_) => "collection",
        }
    }
}

/// Facts about an item that key templates and functions use.
///
/// `key` is the object key of the event's source object, and stays the same through
/// every step, so `{stem}` in a key template always means the original file's stem.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// URL of the bucket the source object lives in (`file:///data`, `s3://bucket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// Object key of the source object, relative to `source_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Which variant of the source this item is (`thumb`, `medium`), set by fan-out steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// MIME type of a bytes payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// File extension matching `content_type`, without the dot (`jpg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_ext: Option<String>,
    /// Anything else a function wants later steps or templates to see (`{attr.name}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Metadata {
    pub fn for_object(source_url: impl Into<String>, key: impl Into<String>) -> Self {
        Self { source_url: Some(source_url.into()), key: Some(key.into()), ..Self::default() }
    }

    /// Last path segment of the key: `inbox/a/cat.jpg` → `cat.jpg`.
    pub fn name(&self) -> &str {
        let key = self.key.as_deref().unwrap_or("");
        key.rsplit('/').next().unwrap_or(key)
    }

    /// Everything before the last `/` of the key, empty at the root.
    pub fn dir(&self) -> &str {
        let key = self.key.as_deref().unwrap_or("");
        key.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
    }

    /// The name without its last extension: `cat.tar.gz` → `cat.tar`, `.env` → `.env`.
    pub fn stem(&self) -> &str {
        let name = self.name();
        match name.rfind('.') {
            Some(0) | None => name,
            Some(dot) => &name[..dot],
        }
    }

    /// The source's extension without the dot, empty if none.
    pub fn ext(&self) -> &str {
        let name = self.name();
        match name.rfind('.') {
            Some(0) | None => "",
            Some(dot) => &name[dot + 1..],
        }
    }
}

impl Item {
    pub fn new(payload: Payload, meta: Metadata) -> Self {
        Self { payload, meta }
    }

    /// A short description for log lines and error messages.
    pub fn describe(&self) -> String {
        match (&self.meta.key, &self.meta.variant) {
            (Some(key), Some(variant)) => format!("{key} [{variant}]"),
            (Some(key), None) => key.clone(),
            (None, Some(variant)) => format!("[{variant}]"),
            (None, None) => format!("<{} item>", self.payload.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts() {
        let m = Metadata::for_object("file:///d", "inbox/sub/cat.photo.JPG");
        assert_eq!(m.name(), "cat.photo.JPG");
        assert_eq!(m.dir(), "inbox/sub");
        assert_eq!(m.stem(), "cat.photo");
        assert_eq!(m.ext(), "JPG");
        let hidden = Metadata::for_object("file:///d", ".env");
        assert_eq!(hidden.stem(), ".env");
        assert_eq!(hidden.ext(), "");
        assert_eq!(hidden.dir(), "");
    }
}
