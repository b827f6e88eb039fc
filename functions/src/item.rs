//! What flows between steps.

use std::borrow::Cow;
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
///
/// Read attributes with [`Metadata::attribute`]: it sees both the ones set on the item
/// and the ones its source provides.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "MetadataFields", from = "MetadataFields")]
pub struct Metadata {
    /// URL of the bucket the source object lives in (`file:///data`, `s3://bucket`).
    pub source_url: Option<String>,
    /// Object key of the source object, relative to `source_url`.
    pub key: Option<String>,
    /// Which variant of the source this item is (`thumb`, `medium`), set by fan-out steps.
    pub variant: Option<String>,
    /// MIME type of a bytes payload.
    pub content_type: Option<String>,
    /// File extension matching `content_type`, without the dot (`jpg`).
    pub format_ext: Option<String>,
    /// Anything else a function wants later steps or templates to see (`{attr.name}`).
    pub attributes: BTreeMap<String, String>,
    /// Attributes the event's source answers on demand (a Kafka record's `topic`,
    /// `partition`, `offset`, `record_key`), rather than as strings copied into every
    /// item: at a million records a second the copies cost more than the work.
    pub source: Option<Arc<dyn SourceAttributes>>,
}

/// Attributes an item's source provides on demand (see [`Metadata::source`]).
pub trait SourceAttributes: Send + Sync {
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;
    /// Every attribute name it answers.
    fn names(&self) -> &'static [&'static str];
}

/// [`Metadata`] as it is written out (dead letters, manifests): source attributes are
/// folded into `attributes`.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetadataFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format_ext: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
}

impl From<Metadata> for MetadataFields {
    fn from(meta: Metadata) -> Self {
        let attributes = meta.all_attributes();
        let Metadata { source_url, key, variant, content_type, format_ext, .. } = meta;
        Self { source_url, key, variant, content_type, format_ext, attributes }
    }
}

impl From<MetadataFields> for Metadata {
    fn from(f: MetadataFields) -> Self {
        let MetadataFields { source_url, key, variant, content_type, format_ext, attributes } = f;
        Self { source_url, key, variant, content_type, format_ext, attributes, source: None }
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        (&self.source_url, &self.key, &self.variant, &self.content_type, &self.format_ext)
            == (&other.source_url, &other.key, &other.variant, &other.content_type, &other.format_ext)
            && self.all_attributes() == other.all_attributes()
    }
}

impl Eq for Metadata {}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("source_url", &self.source_url)
            .field("key", &self.key)
            .field("variant", &self.variant)
            .field("content_type", &self.content_type)
            .field("format_ext", &self.format_ext)
            .field("attributes", &self.all_attributes())
            .finish()
    }
}

impl Metadata {
    /// An attribute set on the item, or else one its source provides.
    pub fn attribute(&self, name: &str) -> Option<Cow<'_, str>> {
        match self.attributes.get(name) {
            Some(value) => Some(Cow::Borrowed(value)),
            None => self.source.as_ref()?.get(name),
        }
    }

    /// Every attribute, the item's own over its source's.
    pub fn all_attributes(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        if let Some(source) = &self.source {
            for name in source.names() {
                if let Some(value) = source.get(name) {
                    all.insert(name.to_string(), value.into_owned());
                }
            }
        }
        all.extend(self.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }

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
