//! Walks one event through the step DAG: fan-out (every item a step returns is its
//! own invocation of each next step, all in flight together within the permits) and
//! fan-in (a `collect` step runs once, with every item its upstream produced, when
//! nothing upstream can produce more).

use futures::stream::{FuturesUnordered, StreamExt};
use weir_functions::{Item, Payload};

use super::{invoke, EventScope, PipelineRuntime, StepFailure};
use crate::config::Step;

/// The shape of a pipeline's steps, computed once.
pub(super) struct Graph {
    roots: Vec<usize>,
    children: Vec<Vec<usize>>,
    /// Every step upstream of each step (transitively).
    ancestors: Vec<Vec<usize>>,
    collect: Vec<bool>,
}

impl Graph {
    pub fn new(steps: &[Step]) -> Self {
        let n = steps.len();
        let mut children = vec![Vec::new(); n];
        for (i, s) in steps.iter().enumerate() {
            for &parent in &s.after {
                children[parent].push(i);
            }
        }
        let ancestors = (0..n)
            .map(|i| {
                let mut seen = vec![false; n];
                let mut stack = steps[i].after.clone();
                while let Some(a) = stack.pop() {
                    if !std::mem::replace(&mut seen[a], true) {
                        stack.extend(steps[a].after.iter().copied());
                    }
                }
                (0..n).filter(|&a| seen[a]).collect()
            })
            .collect();
        Self {
            roots: (0..n).filter(|&i| steps[i].after.is_empty()).collect(),
            children,
            ancestors,
            collect: steps.iter().map(|s| s.collect).collect(),
        }
    }
}

/// Runs the graph for one event from its root item. The first failure stops the
/// event: in-flight invocations are dropped (cancelled) and the failure returned.
pub(super) async fn run(rt: &PipelineRuntime, root: Item, scope: &EventScope) -> Result<usize, StepFailure> {
    let graph = &rt.graph;
    let n = graph.children.len();
    let mut pending = vec![0usize; n];
    let mut fired = vec![false; n];
    let mut collected: Vec<Vec<Item>> = vec![Vec::new(); n];
    let mut running = FuturesUnordered::new();
    let mut invocations = 0;
    let launch = |index: usize, item: Item| async move { (index, invoke::step(rt, index, item, scope).await) };

    for &r in &graph.roots {
        pending[r] += 1;
        running.push(launch(r, root.clone()));
    }
    while let Some((index, result)) = running.next().await {
        pending[index] -= 1;
        invocations += 1;
        let items = result?;
        for &child in &graph.children[index] {
            if graph.collect[child] {
                collected[child].extend(items.iter().cloned());
            } else {
                for item in &items {
                    pending[child] += 1;
                    running.push(launch(child, item.clone()));
                }
            }
        }
        for c in 0..n {
            let ready = graph.collect[c]
                && !fired[c]
                && graph.ancestors[c].iter().all(|&a| pending[a] == 0 && (!graph.collect[a] || fired[a]));
            if ready {
                fired[c] = true;
                let batch = Item::new(Payload::Collection(std::mem::take(&mut collected[c])), root.meta.clone());
                pending[c] += 1;
                running.push(launch(c, batch));
            }
        }
    }
    Ok(invocations)
}
