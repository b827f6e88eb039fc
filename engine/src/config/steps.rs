//! `[[step]]` tables: the engine's keys (name, function, after, collect) split from the
//! function's parameters, each function built, `after` resolved into a DAG.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;
use weir_functions::{Output, Params, Registry};

use super::diagnostics::Reporter;
use super::document::{as_table, key_span, section};
use super::pipeline::Step;
use super::valid_name;

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

/// A step plus what later checks need to point at it.
pub(super) struct ParsedStep {
    pub step: Step,
    /// What the step's function writes, with the position of the parameter that says so.
    pub outputs: Vec<(Output, Range<usize>)>,
}

/// Parses every `[[step]]`, builds its function and resolves `after` into indices.
pub(super) fn parse_steps(
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
        let outputs = built
            .function
            .writes()
            .into_iter()
            .map(|o| {
                let span = key_span(&params_table, o.param).unwrap_or(entry.span());
                (o, span)
            })
            .collect();
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
            outputs,
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
