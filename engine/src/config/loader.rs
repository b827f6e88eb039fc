//! Loading pipeline files: every problem in a file reported at once, each as
//! `file:line:column: reason` (`weir validate`), every step's function built, so bad
//! parameters are caught here rather than at the first event.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;
use weir_functions::Registry;

use super::diagnostics::{Diagnostic, Diagnostics, Reporter};
use super::document::{interpolate_env, section, Value};
use super::pipeline::{Limits, LimitsConfig, Pipeline, Retry, RetryConfig};
use super::steps::{parse_steps, ParsedStep};
use crate::trigger::{PipelineFacts, TriggerSpec, Triggers};

const TOP_LEVEL_KEYS: [&str; 6] = ["name", "description", "trigger", "limits", "retry", "step"];

/// Loads every `*.toml` in `paths` (files or directories, not recursive), reporting
/// the problems of all files together.
pub fn load_paths(paths: &[PathBuf], registry: &Registry, triggers: &Triggers) -> Result<Vec<Pipeline>, Diagnostics> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        problems.push(file_problem(path, "no *.toml pipeline files in this directory"));
                    }
                    files.extend(found);
                }
                Err(e) => problems.push(file_problem(path, &format!("cannot read directory: {e}"))),
            }
        } else {
            files.push(path.clone());
        }
    }
    let mut pipelines = Vec::new();
    for file in files {
        match load_file(&file, registry, triggers) {
            Ok(p) => pipelines.push(p),
            Err(d) => problems.extend(d.0),
        }
    }
    let mut seen = std::collections::HashMap::new();
    for p in &pipelines {
        if let Some(other) = seen.insert(p.name.clone(), p.file.clone()) {
            problems.push(file_problem(
                &p.file,
                &format!("pipeline name {:?} is also used by {}", p.name, other.display()),
            ));
        }
    }
    if problems.is_empty() {
        Ok(pipelines)
    } else {
        Err(Diagnostics(problems))
    }
}

fn file_problem(path: &Path, message: &str) -> Diagnostic {
    Diagnostic { file: path.to_path_buf(), line: 1, column: 1, message: message.to_string() }
}

/// Loads and validates one pipeline file.
pub fn load_file(path: &Path, registry: &Registry, triggers: &Triggers) -> Result<Pipeline, Diagnostics> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostics(vec![file_problem(path, &format!("cannot read file: {e}"))]))?;
    parse(path, &text, registry, triggers)
}

/// Parses and validates pipeline text; `path` is used in messages and as the base
/// name of the pipeline if it has no `name`.
pub fn parse(path: &Path, text: &str, registry: &Registry, triggers: &Triggers) -> Result<Pipeline, Diagnostics> {
    let mut report = Reporter::new(path, text);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    for err in &syntax_errors {
        report.error(err.span().unwrap_or(0..0), err.message().trim().replace('\n', " "));
    }
    if !syntax_errors.is_empty() {
        return Err(Diagnostics(report.finish()));
    }
    let root_span = root.span();
    let mut root: Value<'_> = Spanned::new(root_span.clone(), DeValue::Table(root.into_inner()));
    interpolate_env(&mut root, &mut report);
    let DeValue::Table(table) = root.get_ref() else { unreachable!("parsed a table") };

    for (key, _) in table.iter() {
        if !TOP_LEVEL_KEYS.contains(&key.get_ref().as_ref()) {
            report.error(
                key.span(),
                format!("unknown key `{}` (expected one of: {})", key.get_ref(), TOP_LEVEL_KEYS.join(", ")),
            );
        }
    }
    let name = match table.get("name").map(|v| (v.span(), v.get_ref())) {
        Some((_, DeValue::String(s))) if valid_name(s) => Some(s.to_string()),
        Some((span, DeValue::String(s))) => {
            report.error(span, format!("invalid pipeline name {s:?}: use letters, digits, `-`, `_` and `.`"));
            None
        }
        Some((span, other)) => {
            report.error(span, format!("`name` must be a string, found {}", other.type_str()));
            None
        }
        None => {
            report.error(0..0, "missing `name` (the pipeline's name, e.g. name = \"product-images\")");
            None
        }
    };
    let description = table.get("description").and_then(|v| v.get_ref().as_str()).map(str::to_string);

    let trigger = match table.get("trigger") {
        Some(value) => triggers.parse(value, &mut report),
        None => {
            report.error(0..0, "missing [trigger] table (what starts this pipeline)");
            None
        }
    };
    let limits: Option<Limits> = match table.get("limits") {
        Some(value) => section::<LimitsConfig>(value, &mut report).map(Into::into),
        None => toml::from_str::<LimitsConfig>("").ok().map(Into::into),
    };
    let retry: Option<Retry> = match table.get("retry") {
        Some(value) => section::<RetryConfig>(value, &mut report).map(Into::into),
        None => toml::from_str::<RetryConfig>("").ok().map(Into::into),
    };
    let steps = parse_steps(table, root_span.clone(), registry, &mut report);
    if let (Some(trigger), Some(steps), Some(retry)) = (&trigger, &steps, &retry) {
        check_self_trigger(&**trigger, steps, &mut report);
        let dead_letter = retry.dead_letter.as_deref().map(|url| {
            let span = table
                .get("retry")
                .and_then(|r| r.get_ref().as_table().and_then(|t| t.get("dead_letter")).map(|v| v.span()))
                .unwrap_or(0..0);
            (url, span)
        });
        if let Some((url, span)) = &dead_letter {
            check_dead_letter(&**trigger, url, span, triggers, &mut report);
        }
        let facts = PipelineFacts {
            trigger_span: table.get("trigger").map(|t| t.span()).unwrap_or(0..0),
            first_steps: steps.iter().filter(|s| s.step.after.is_empty()).count(),
            dead_letter,
        };
        trigger.check(&facts, &mut report);
    }

    match (name, trigger, limits, retry, steps) {
        (Some(name), Some(trigger), Some(limits), Some(retry), Some(steps)) if !report.has_errors() => Ok(Pipeline {
            name,
            description,
            file: path.to_path_buf(),
            trigger,
            limits,
            retry,
            steps: steps.into_iter().map(|s| s.step).collect(),
        }),
        _ => Err(Diagnostics(report.finish())),
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// Outputs written where the trigger is watching would fire the pipeline again, for
/// ever (a classic S3 → Lambda loop). Refuse such pipelines up front.
fn check_self_trigger(trigger: &dyn TriggerSpec, steps: &[ParsedStep], report: &mut Reporter<'_>) {
    for step in steps {
        for (output, span) in &step.outputs {
            let sample = &output.sample_key;
            if !trigger.watches(output.url.as_deref(), sample) {
                continue;
            }
            report.error(
                span.clone(),
                format!(
                    "step {:?} writes keys like {sample:?} where the trigger watches: the outputs would \
                     re-trigger this pipeline; write outside the trigger's prefix or exclude them",
                    step.step.name
                ),
            );
        }
    }
}

/// `dead_letter` is a bucket URL, or a URL of a scheme the trigger's kind offers.
fn check_dead_letter(
    trigger: &dyn TriggerSpec,
    url: &str,
    span: &Range<usize>,
    triggers: &Triggers,
    report: &mut Reporter<'_>,
) {
    if let Some((kind, why)) = triggers.dead_letter_scheme(url) {
        if trigger.kind() != kind {
            report.error(span.clone(), format!("dead_letter {url:?}: {why}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("p.toml"), text, &Registry::builtin(), &Triggers::builtin()) {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"
name = "copy"
[trigger]
kind = "object_store"
url = "memory://cfg-test"
prefix = "in/"
[[step]]
name = "copy"
function = "object.copy"
key = "out/{name}"
"#;

    #[test]
    fn a_good_pipeline_loads() {
        let p = parse(Path::new("p.toml"), GOOD, &Registry::builtin(), &Triggers::builtin()).unwrap();
        assert_eq!(p.name, "copy");
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.limits.queue, p.limits.concurrency * 2);
        assert_eq!(p.retry.max_attempts, 3);
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let text = GOOD.replace("[[step]]", "[limits]\nconcurrency = 0\ntimeout = \"soon\"\nbogus = 1\n[[step]]");
        let errs = errors(&text);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("p.toml:8:15:"), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("soon")));
        assert!(errs.iter().any(|e| e.contains("bogus")));
    }

    #[test]
    fn cycles_and_dangling_after_are_found() {
        let text = r#"
name = "c"
[trigger]
kind = "object_store"
url = "memory://x"
[[step]]
name = "a"
function = "object.delete"
after = "b"
[[step]]
name = "b"
function = "object.delete"
after = ["a"]
[[step]]
name = "c"
function = "object.delete"
after = "nope"
"#;
        let errs = errors(text);
        assert!(errs.iter().any(|e| e.contains("cycle")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("unknown step \"nope\"")), "{errs:#?}");
    }

    #[test]
    fn outputs_into_the_watched_prefix_are_refused() {
        let errs = errors(&GOOD.replace("out/{name}", "in/{name}"));
        assert!(errs.iter().any(|e| e.contains("re-trigger")), "{errs:#?}");
    }
}
