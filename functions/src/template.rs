//! Key templates: `processed/{variant}/{stem}.jpg`.
//!
//! Outputs are written under keys derived only from the input's metadata, so a
//! redelivered event overwrites the same objects with the same bytes (idempotence).

use crate::store::check_key;
use crate::{BuildError, Context, FunctionError, Item};

/// The placeholders a template may use, for messages and docs.
pub const PLACEHOLDERS: &str = "{key} {dir} {name} {stem} {ext} {variant} {format} {pipeline} {step} {attr.NAME}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    Dir,
    Name,
    Stem,
    Ext,
    Variant,
    Format,
    Pipeline,
    Step,
    Attr(String),
}

/// A parsed text template (topic names, header values): placeholders filled from the
/// item's metadata. Parsing happens at build time, so an unknown placeholder is a
/// `weir validate` error, not a failure at the first event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTemplate {
    source: String,
    parts: Vec<Part>,
}

impl TextTemplate {
    pub fn parse(source: &str) -> Result<Self, BuildError> {
        Self::parse_as(source, "template")
    }

    fn parse_as(source: &str, what: &str) -> Result<Self, BuildError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close =
                rest[open..].find('}').ok_or_else(|| BuildError::new(format!("unclosed `{{` in {what} {source:?}")))?
                    + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "key" => Part::Key,
                "dir" => Part::Dir,
                "name" => Part::Name,
                "stem" => Part::Stem,
                "ext" => Part::Ext,
                "variant" => Part::Variant,
                "format" => Part::Format,
                "pipeline" => Part::Pipeline,
                "step" => Part::Step,
                other => match other.strip_prefix("attr.") {
                    Some(attr) if !attr.is_empty() => Part::Attr(attr.to_string()),
                    _ => {
                        return Err(BuildError::new(format!(
                            "unknown placeholder {{{other}}} in {what} {source:?} (known: {PLACEHOLDERS})"
                        )))
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(BuildError::new(format!("stray `}}` in {what} {source:?}")));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { source: source.to_string(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The template with every placeholder replaced by `x`.
    pub fn sample(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                _ => "x",
            })
            .collect()
    }

    /// The text for `item`. Fails (permanently) if a placeholder has no value.
    pub fn render(&self, item: &Item, ctx: &Context) -> Result<String, FunctionError> {
        let meta = &item.meta;
        let missing = |what: &str| {
            FunctionError::permanent(format!("template {:?}: {what} has no value for {}", self.source, item.describe()))
        };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Key => out.push_str(meta.key.as_deref().ok_or_else(|| missing("{key}"))?),
                Part::Dir => out.push_str(meta.dir()),
                Part::Name => out.push_str(meta.name()),
                Part::Stem => out.push_str(meta.stem()),
                Part::Ext => out.push_str(meta.ext()),
                Part::Variant => out.push_str(meta.variant.as_deref().ok_or_else(|| missing("{variant}"))?),
                Part::Format => out.push_str(meta.format_ext.as_deref().ok_or_else(|| missing("{format}"))?),
                Part::Pipeline => out.push_str(&ctx.pipeline),
                Part::Step => out.push_str(&ctx.step),
                Part::Attr(name) => {
                    out.push_str(&meta.attribute(name).ok_or_else(|| missing(&format!("{{attr.{name}}}")))?)
                }
            }
        }
        Ok(out)
    }
}

/// A parsed key template: a [`TextTemplate`] whose results must be safe object keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate(TextTemplate);

impl KeyTemplate {
    pub fn parse(source: &str) -> Result<Self, BuildError> {
        let template = TextTemplate::parse_as(source, "key template")?;
        // The literal parts alone must not be able to escape the bucket.
        let sample = template.sample();
        check_key(&sample)
            .map_err(|why| BuildError::new(format!("key template {source:?} can produce unsafe keys: {why}")))?;
        Ok(Self(template))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The template with every placeholder replaced by `x`: what the template's fixed
    /// parts look like, used to check outputs cannot land in a watched prefix.
    pub fn sample(&self) -> String {
        self.0.sample()
    }

    /// The key for `item`. Fails (permanently) if a placeholder has no value or the
    /// result is unsafe, e.g. a source key whose `{dir}` is empty leaving `//`.
    pub fn render(&self, item: &Item, ctx: &Context) -> Result<String, FunctionError> {
        let out = self.0.render(item, ctx).map_err(|e| FunctionError::permanent(format!("key {}", e.message())))?;
        check_key(&out).map_err(|why| {
            FunctionError::permanent(format!(
                "key template {:?} gave unsafe key {out:?} for {}: {why}",
                self.0.source,
                item.describe()
            ))
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metadata, Payload, Stores};

    fn item(key: &str, variant: Option<&str>) -> Item {
        let mut meta = Metadata::for_object("memory://t", key);
        meta.variant = variant.map(str::to_string);
        Item::new(Payload::Empty, meta)
    }

    #[test]
    fn renders_placeholders() {
        let ctx = Context::standalone(Stores::new());
        let t = KeyTemplate::parse("processed/{variant}/{stem}.jpg").unwrap();
        assert_eq!(t.render(&item("inbox/cat.png", Some("thumb")), &ctx).unwrap(), "processed/thumb/cat.jpg");
        assert!(t.render(&item("inbox/cat.png", None), &ctx).is_err());
    }

    #[test]
    fn rejects_unknown_and_unsafe_templates() {
        assert!(KeyTemplate::parse("out/{nope}.jpg").is_err());
        assert!(KeyTemplate::parse("../{stem}.jpg").is_err());
        assert!(KeyTemplate::parse("/abs/{stem}").is_err());
        assert!(KeyTemplate::parse("out/{stem").is_err());
    }

    #[test]
    fn text_templates_fill_in_without_key_rules() {
        let ctx = Context::standalone(Stores::new());
        let t = TextTemplate::parse("{attr.topic}.out").unwrap();
        let mut it = item("uploads/0/7", None);
        it.meta.attributes.insert("topic".into(), "uploads".into());
        assert_eq!(t.render(&it, &ctx).unwrap(), "uploads.out");
        // A text template may well look like `..` or start with `/`: it is not a key.
        assert_eq!(TextTemplate::parse("/{name}").unwrap().render(&it, &ctx).unwrap(), "/7");
        assert!(TextTemplate::parse("{nope}").is_err());
        assert!(t.render(&item("k", None), &ctx).is_err(), "a missing attribute is an error");
    }

    #[test]
    fn a_hostile_source_key_cannot_escape() {
        let ctx = Context::standalone(Stores::new());
        // `{dir}` of a root-level key is empty: `out//x` is refused, not silently changed.
        let t = KeyTemplate::parse("out/{dir}/{name}").unwrap();
        assert!(t.render(&item("cat.jpg", None), &ctx).is_err());
        let t = KeyTemplate::parse("{key}").unwrap();
        assert!(t.render(&item("../../etc/passwd", None), &ctx).is_err());
    }
}
