//! A pipeline file as a spanned TOML tree, and typed sections read from it with
//! every error kept (not just the first) and pinned to its place in the file.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::diagnostics::Reporter;

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Deserializes a section. On an error, the offending entry is dropped and the section
/// read again, so one run reports every bad key in it (up to a sane bound). Returns
/// `None` if anything was wrong.
pub(crate) fn section<T: DeserializeOwned>(value: &Value<'_>, report: &mut Reporter<'_>) -> Option<T> {
    let mut value = value.clone();
    let mut failed = false;
    for _ in 0..32 {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(parsed) => return (!failed).then_some(parsed),
            Err(err) => {
                failed = true;
                let span = err.span().unwrap_or(value.span());
                report.error(span.clone(), err.message().trim().replace('\n', " "));
                if !remove_entry_at(&mut value, &span) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the table entry whose key or value contains `span`, if any.
fn remove_entry_at(value: &mut Value<'_>, span: &Range<usize>) -> bool {
    let DeValue::Table(table) = value.get_mut() else { return false };
    let key = table
        .iter()
        .find(|(k, v)| contains(&k.span(), span) || contains(&v.span(), span))
        .map(|(k, _)| k.get_ref().to_string());
    match key {
        Some(key) => table.remove(key.as_str()).is_some(),
        None => false,
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer != &(0..0)
}

/// The table inside a value, or an error at the value.
pub(crate) fn as_table<'a, 'i>(value: &'a Value<'i>, what: &str, report: &mut Reporter<'_>) -> Option<&'a DeTable<'i>> {
    match value.get_ref() {
        DeValue::Table(t) => Some(t),
        other => {
            report.error(value.span(), format!("{what} must be a table, found {}", other.type_str()));
            None
        }
    }
}

/// Span of `key`'s name in `table`, for errors about that key.
pub(crate) fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(k, _)| k.span())
}

/// Replaces `${env:NAME}` in every string of the tree with the variable's value.
/// A missing variable is an error naming it; the value itself never appears in
/// messages, since it may be a secret.
pub(crate) fn interpolate_env(value: &mut Value<'_>, report: &mut Reporter<'_>) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(text) if text.contains("${") => match expand(text) {
            Ok(expanded) => *text = expanded.into(),
            Err(message) => report.error(span, message),
        },
        DeValue::Array(items) => items.iter_mut().for_each(|v| interpolate_env(v, report)),
        DeValue::Table(table) => table.iter_mut().for_each(|(_, v)| interpolate_env(v, report)),
        _ => {}
    }
}

fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or("unclosed `${` in string")? + start;
        let reference = &rest[start + 2..end];
        let name = reference
            .strip_prefix("env:")
            .ok_or_else(|| format!("unknown reference `${{{reference}}}`: only `${{env:NAME}}` is supported"))?;
        let value = std::env::var(name)
            .map_err(|_| format!("environment variable {name} is not set (referenced as `${{env:{name}}}`)"))?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_env_and_names_missing_ones() {
        std::env::set_var("WEIR_TEST_BUCKET", "photos");
        assert_eq!(expand("s3://${env:WEIR_TEST_BUCKET}/in").unwrap(), "s3://photos/in");
        let err = expand("${env:WEIR_TEST_SURELY_MISSING}").unwrap_err();
        assert!(err.contains("WEIR_TEST_SURELY_MISSING"), "{err}");
        assert!(expand("${file:/etc/passwd}").is_err());
    }
}
