//! Pipeline files: parsing, validation and the typed [`Pipeline`] the engine runs.
//!
//! Loading reports every problem in a file at once, each as `file:line:column: reason`
//! (`weir validate`), and builds each step's function, so bad function parameters are
//! caught here rather than at the first event.

mod diagnostics;
mod document;
pub mod units;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;
use weir_functions::{Function, Params, Registry};

pub(crate) use diagnostics::Reporter;
pub use diagnostics::{Diagnostic, Diagnostics};
use document::{as_table, interpolate_env, key_span};
pub(crate) use document::{section, Value};
use units::{Backoff, ByteSize, HumanDuration};

use crate::trigger::TriggerConfig;

/// A validated pipeline with its step functions built and ready to invoke.
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The file it was loaded from.
    pub file: PathBuf,
    pub trigger: TriggerConfig,
    pub limits: Limits,
    pub retry: Retry,
    /// In file order; `after` refers to indices in this list.
    pub steps: Vec<Step>,
}

impl std::fmt::Debug for Pipeline {
    // Deliberately terse: configs may hold secrets from the environment.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("name", &self.name).field("file", &self.file).finish_non_exhaustive()
    }
}

/// `[limits]`: how much one pipeline may do at once and how big its inputs may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Invocations of this pipeline's functions running at once (Lambda's reserved
    /// concurrency). Also the number of events in flight.
    #[serde(default = "default_concurrency")]
    pub concurrency: std::num::NonZeroUsize,
    /// Deadline of one invocation; on expiry it is cancelled and counts as retryable.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_max_input_bytes")]
    pub max_input_bytes: ByteSize,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: std::num::NonZeroU64,
    /// Events waiting between the trigger and the executor. When full, the trigger waits.
    #[serde(default)]
    pub queue: Option<std::num::NonZeroUsize>,
}

/// The effective limits of a pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_input_bytes: u64,
    pub max_pixels: u64,
    pub queue: usize,
}

fn default_concurrency() -> std::num::NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_input_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_pixels() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(100_000_000).expect("non-zero")
}

impl From<LimitsConfig> for Limits {
    fn from(c: LimitsConfig) -> Self {
        let concurrency = c.concurrency.get();
        Self {
            concurrency,
            timeout: c.timeout.0,
            max_input_bytes: c.max_input_bytes.0,
            max_pixels: c.max_pixels.get(),
            queue: c.queue.map(|q| q.get()).unwrap_or(concurrency * 2),
        }
    }
}

/// `[retry]`: what happens when an invocation fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per invocation, the first included. Only retryable errors are retried.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: std::num::NonZeroU32,
    /// No retry starts once the event is older than this.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    #[serde(default)]
    pub backoff: Backoff,
    /// Where failed events are recorded (a bucket URL). Default: `dead-letter/` in the
    /// state directory, so nothing is ever dropped silently.
    #[serde(default)]
    pub dead_letter: Option<String>,
}

fn default_max_attempts() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(3).expect("non-zero")
}

#[derive(Debug, Clone)]
pub struct Retry {
    pub max_attempts: u32,
    pub max_age: Option<Duration>,
    pub backoff: Backoff,
    pub dead_letter: Option<String>,
}

impl From<RetryConfig> for Retry {
    fn from(c: RetryConfig) -> Self {
        Self {
            max_attempts: c.max_attempts.get(),
            max_age: c.max_age.map(|d| d.0),
            backoff: c.backoff,
            dead_letter: c.dead_letter,
        }
    }
}

/// One `[[step]]`, its function built.
pub struct Step {
    pub name: String,
    pub function_name: String,
    pub function: Arc<dyn Function>,
    /// How long building the function took (warm-up, like a Lambda init).
    pub init: Duration,
    /// Indices of the steps whose output items feed this one; empty for a root step,
    /// which receives the event's item.
    pub after: Vec<usize>,
    /// Fan-in: invoked once per event with every item its `after` steps produced.
    pub collect: bool,
}

/// The keys of a step table that belong to the engine; the rest are the function's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepHeader {
    name: Spanned<String>,
    function: Spanned<String>,
    #[serde(default)]
    after: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    collect: bool,
    #[serde(default)]
    #[allow(dead_code)] // documentation for readers of the file
    description: Option<String>,
}
const STEP_HEADER_KEYS: [&str; 5] = ["name", "function", "after", "collect", "description"];

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

const TOP_LEVEL_KEYS: [&str; 6] = ["name", "description", "trigger", "limits", "retry", "step"];

/// Loads every `*.toml` in `paths` (files or directories, not recursive), reporting
/// the problems of all files together.
pub fn load_paths(paths: &[PathBuf], registry: &Registry) -> Result<Vec<Pipeline>, Diagnostics> {
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
        match load_file(&file, registry) {
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
pub fn load_file(path: &Path, registry: &Registry) -> Result<Pipeline, Diagnostics> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostics(vec![file_problem(path, &format!("cannot read file: {e}"))]))?;
    parse(path, &text, registry)
}

/// Parses and validates pipeline text; `path` is used in messages and as the base
/// name of the pipeline if it has no `name`.
pub fn parse(path: &Path, text: &str, registry: &Registry) -> Result<Pipeline, Diagnostics> {
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
        Some(value) => TriggerConfig::parse(value, &mut report),
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
    if let (Some(trigger), Some(steps)) = (&trigger, &steps) {
        check_self_trigger(trigger, steps, &mut report);
        check_batching(trigger, steps, table, &mut report);
    }
    if let (Some(trigger), Some(retry)) = (&trigger, &retry) {
        check_dead_letter(trigger, retry, table, &mut report);
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// A step plus what later checks need to point at it.
struct ParsedStep {
    step: Step,
    /// The raw `url` and `key` parameters (spans included), for the self-trigger check.
    output: Option<(Option<String>, Spanned<String>)>,
}

fn parse_steps(
    table: &DeTable<'_>,
    root_span: std::ops::Range<usize>,
    registry: &Registry,
    report: &mut Reporter<'_>,
) -> Option<Vec<ParsedStep>> {
    let Some(value) = table.get("step") else {
        report.error(root_span.start..root_span.start, "no [[step]]: a pipeline needs at least one step");
        return None;
    };
    let DeValue::Array(entries) = value.get_ref() else {
        report.error(value.span(), "`step` must be an array of tables: write [[step]]");
        return None;
    };
    let mut parsed = Vec::new();
    let mut afters = Vec::new();
    let mut names: Vec<Spanned<String>> = Vec::new();
    let mut ok = true;
    for entry in entries.iter() {
        let Some(step_table) = as_table(entry, "a [[step]]", report) else {
            ok = false;
            continue;
        };
        // Split the engine's keys from the function's parameters.
        let mut header_table = DeTable::new();
        let mut params_table = DeTable::new();
        for (k, v) in step_table.iter() {
            let target =
                if STEP_HEADER_KEYS.contains(&k.get_ref().as_ref()) { &mut header_table } else { &mut params_table };
            target.insert(k.clone(), v.clone());
        }
        let header_value = Spanned::new(entry.span(), DeValue::Table(header_table));
        let Some(header) = section::<StepHeader>(&header_value, report) else {
            ok = false;
            continue;
        };
        if !valid_name(header.name.get_ref()) {
            report.error(header.name.span(), format!("invalid step name {:?}", header.name.get_ref()));
            ok = false;
        }
        if names.iter().any(|n| n.get_ref() == header.name.get_ref()) {
            report.error(header.name.span(), format!("duplicate step name {:?}", header.name.get_ref()));
            ok = false;
        }
        names.push(header.name.clone());
        let output = match (params_table.get("key"), header.function.get_ref().as_str()) {
            (Some(key), "object.put" | "object.copy" | "object.manifest") => key.get_ref().as_str().map(|k| {
                let url = params_table.get("url").and_then(|u| u.get_ref().as_str()).map(str::to_string);
                (url, Spanned::new(key.span(), k.to_string()))
            }),
            _ => None,
        };
        let params_value = Spanned::new(entry.span(), DeValue::Table(params_table.clone()));
        let built = registry.build(header.function.get_ref(), Params::new(ValueDeserializer::from(params_value)));
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                let span = e
                    .span
                    .clone()
                    .or_else(|| e.param.as_deref().and_then(|p| key_span(&params_table, p)))
                    .unwrap_or(header.function.span());
                let message = if registry.get(header.function.get_ref()).is_some() {
                    format!("step {:?} ({}): {}", header.name.get_ref(), header.function.get_ref(), e.message)
                } else {
                    e.message
                };
                report.error(span, message);
                ok = false;
                continue;
            }
        };
        afters.push((header.after.clone(), parsed.len(), entry.span()));
        parsed.push(ParsedStep {
            step: Step {
                name: header.name.into_inner(),
                function_name: header.function.into_inner(),
                function: built.function,
                init: built.init,
                after: Vec::new(),
                collect: header.collect,
            },
            output,
        });
    }
    if !ok {
        return None;
    }
    // Resolve `after` names to indices.
    for (after, index, entry_span) in afters {
        let Some(after) = after else {
            if parsed[index].step.collect {
                report
                    .error(entry_span, format!("step {:?} has collect = true but no `after`", parsed[index].step.name));
            }
            continue;
        };
        let span = after.span();
        for name in after.into_inner().into_vec() {
            match parsed.iter().position(|p| p.step.name == name) {
                Some(i) if i == index => report.error(span.clone(), format!("step {name:?} cannot come after itself")),
                Some(i) => parsed[index].step.after.push(i),
                None => report.error(span.clone(), format!("`after` names unknown step {name:?}")),
            }
        }
    }
    if let Some(cycle) = find_cycle(&parsed.iter().map(|p| p.step.after.clone()).collect::<Vec<_>>()) {
        let names: Vec<_> = cycle.iter().map(|&i| parsed[i].step.name.as_str()).collect();
        let span = key_span_of_step(entries, cycle[0]);
        report.error(span, format!("steps form a cycle: {} → {}", names.join(" → "), names[0]));
    }
    (!report.has_errors()).then_some(parsed)
}

fn key_span_of_step(entries: &toml::de::DeArray<'_>, index: usize) -> std::ops::Range<usize> {
    entries
        .get(index)
        .and_then(|e| e.get_ref().as_table().and_then(|t| t.get("after")).map(|v| v.span()))
        .unwrap_or(0..0)
}

/// A cycle in the `after` graph, as step indices, if there is one.
fn find_cycle(after: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(n: usize, after: &[Vec<usize>], marks: &mut [Mark], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        marks[n] = Mark::Active;
        stack.push(n);
        for &m in &after[n] {
            match marks[m] {
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == m).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.reverse();
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, after, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; after.len()];
    for n in 0..after.len() {
        if marks[n] == Mark::New {
            if let Some(c) = visit(n, after, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// `batch_size` hands the chunk to one step, which must be the only first step.
fn check_batching(trigger: &TriggerConfig, steps: &[ParsedStep], table: &DeTable<'_>, report: &mut Reporter<'_>) {
    let TriggerConfig::Kafka(kafka) = trigger else { return };
    if kafka.batch.is_none() {
        return;
    }
    let span = table.get("trigger").map(|t| t.span()).unwrap_or(0..0);
    let roots = steps.iter().filter(|s| s.step.after.is_empty()).count();
    if roots != 1 {
        report.error(
            span.clone(),
            format!("batch_size needs exactly one first step (the one that takes the batch); found {roots}"),
        );
    }
    if kafka.format == crate::trigger::kafka::RecordFormat::S3Event {
        report
            .error(span, "batch_size does not combine with format = \"s3_event\" (each notification runs on its own)");
    }
}

/// `dead_letter = "kafka://topic"` is a topic on the trigger's cluster.
fn check_dead_letter(trigger: &TriggerConfig, retry: &Retry, table: &DeTable<'_>, report: &mut Reporter<'_>) {
    let Some(url) = &retry.dead_letter else { return };
    let Some(topic) = crate::trigger::kafka::dead_letter::topic_of(url) else { return };
    let span = table
        .get("retry")
        .and_then(|r| r.get_ref().as_table().and_then(|t| t.get("dead_letter")).map(|v| v.span()))
        .unwrap_or(0..0);
    if !matches!(trigger, TriggerConfig::Kafka(_)) {
        report.error(span, format!("dead_letter {url:?}: a dead-letter topic needs a Kafka trigger (its cluster)"));
    } else if !crate::trigger::kafka::valid_topic(topic) {
        report.error(span, format!("dead_letter {url:?}: invalid topic name {topic:?}"));
    }
}

/// Outputs written where the trigger is watching would fire the pipeline again, for
/// ever (a classic S3 → Lambda loop). Refuse such pipelines up front.
fn check_self_trigger(trigger: &TriggerConfig, steps: &[ParsedStep], report: &mut Reporter<'_>) {
    for step in steps {
        let Some((url, key)) = &step.output else { continue };
        let sample = weir_functions::template::KeyTemplate::parse(key.get_ref()).map(|t| t.sample());
        let Ok(sample) = sample else { continue };
        if trigger.would_fire_on(url.as_deref(), &sample) {
            report.error(
                key.span(),
                format!(
                    "step {:?} writes keys like {sample:?} where the trigger watches: the outputs would \
                     re-trigger this pipeline; write outside the trigger's prefix or exclude them",
                    step.step.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("p.toml"), text, &Registry::builtin()) {
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
        let p = parse(Path::new("p.toml"), GOOD, &Registry::builtin()).unwrap();
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
