//! Walks one event through the step DAG: fan-out (every item a step returns is its
//! own invocation of each next step, all in flight together within the permits;
//! streaming steps hand theirs over as they list them) and
//! fan-in (a `collect` step runs once, with every item its upstream produced, when
//! nothing upstream can produce more).

use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered, SelectAll, StreamExt};
use weir_functions::{Item, Metadata, Payload};

use super::{invoke, PipelineRuntime};
use crate::config::Step;
use crate::event::{Rebuild, Scope as EventScope, StepFailure};

/// The shape of a pipeline's steps, computed once.
pub(super) struct Graph {
    roots: Vec<usize>,
    children: Vec<Vec<usize>>,
    /// Every step upstream of each step (transitively).
    ancestors: Vec<Vec<usize>>,
    collect: Vec<bool>,
}

impl Graph {
    /// Steps that take the event's own item.
    pub fn roots(&self) -> &[usize] {
        &self.roots
    }

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
///
/// Streaming steps (`object.sweep`) hand their outputs over a bounded channel; the
/// walk takes from it only while fewer than `2 × concurrency` invocations are
/// running, so a listing of millions advances as fast as the steps after it, and no
/// faster. A streaming invocation counts as pending until its channel is drained, so
/// a `collect` step after it sees every item.
///
/// `again` rebuilds the root item for a retry of a one-step pipeline's step.
pub(super) async fn run(
    rt: &PipelineRuntime,
    root: Item,
    again: Option<Rebuild<'_>>,
    scope: &EventScope,
) -> Result<usize, StepFailure> {
    let graph = &rt.graph;
    if graph.children.len() == 1 && !rt.pipeline.steps[0].function.streams() {
        // One plain step: no walk to keep track of.
        let items = invoke::step(rt, 0, root, again, scope, None).await?;
        if let Some(outputs) = &scope.outputs {
            outputs.keep(&items);
        }
        return Ok(1);
    }
    let meta = root.meta.clone();
    // Boxed: the walk's state is large, and every record's future would carry it.
    Box::pin(walk(rt, scope, meta, |walk| {
        for &r in &graph.roots {
            walk.launch(r, root.clone());
        }
        Ok(())
    }))
    .await
}

/// Continues an event's walk as if step `after` had just returned `items` (a batch
/// step that the caller invoked itself).
pub(super) async fn run_after(
    rt: &PipelineRuntime,
    after: usize,
    items: Vec<Item>,
    meta: Metadata,
    scope: &EventScope,
) -> Result<usize, StepFailure> {
    walk(rt, scope, meta, |walk| walk.dispatch(after, items)).await
}

async fn walk<'a>(
    rt: &'a PipelineRuntime,
    scope: &'a EventScope,
    meta: Metadata,
    start: impl FnOnce(&mut Walk<'a>) -> Result<(), StepFailure>,
) -> Result<usize, StepFailure> {
    let graph = &rt.graph;
    let n = graph.children.len();
    let cap = rt.pipeline.limits.concurrency.max(1) * 2;
    let mut walk = Walk {
        rt,
        scope,
        cap,
        pending: vec![0usize; n],
        collected: vec![Vec::new(); n],
        running: FuturesUnordered::new(),
        streamed: SelectAll::new(),
        plain_running: 0,
    };
    let mut fired = vec![false; n];
    let mut invocations = 0;
    start(&mut walk)?;
    loop {
        for c in 0..n {
            let ready = graph.collect[c]
                && !fired[c]
                && graph.ancestors[c].iter().all(|&a| walk.pending[a] == 0 && (!graph.collect[a] || fired[a]));
            if ready {
                fired[c] = true;
                let batch = Item::new(Payload::Collection(std::mem::take(&mut walk.collected[c])), meta.clone());
                walk.launch(c, batch);
            }
        }
        let can_take = walk.plain_running < cap;
        tokio::select! {
            biased;
            Some((index, streaming, result)) = walk.running.next() => {
                invocations += 1;
                let items = result?;
                if !streaming {
                    walk.plain_running -= 1;
                    walk.pending[index] -= 1;
                    walk.dispatch(index, items)?;
                }
            }
            Some((index, item)) = walk.streamed.next(), if can_take => match item {
                Some(item) => walk.dispatch(index, vec![item])?,
                None => walk.pending[index] -= 1,
            },
            else => break,
        }
    }
    Ok(invocations)
}

type Invocation<'a> = BoxFuture<'a, (usize, bool, Result<Vec<Item>, StepFailure>)>;

/// One event's walk in progress.
struct Walk<'a> {
    rt: &'a PipelineRuntime,
    scope: &'a EventScope,
    /// Most non-streaming invocations in flight before streams are paused.
    cap: usize,
    /// Invocations of each step not finished yet (streams: not drained yet).
    pending: Vec<usize>,
    /// Items waiting for each `collect` step.
    collected: Vec<Vec<Item>>,
    /// (step, streaming, outputs) of every invocation in flight.
    running: FuturesUnordered<Invocation<'a>>,
    /// Items from streaming steps as (step, item); (step, None) when one ends.
    streamed: SelectAll<BoxStream<'a, (usize, Option<Item>)>>,
    plain_running: usize,
}

impl<'a> Walk<'a> {
    fn launch(&mut self, index: usize, item: Item) {
        let (rt, scope) = (self.rt, self.scope);
        self.pending[index] += 1;
        if rt.pipeline.steps[index].function.streams() {
            let (tx, rx) = tokio::sync::mpsc::channel(self.cap);
            self.running.push(Box::pin(async move {
                (index, true, invoke::step(rt, index, item, None, scope, Some(tx)).await)
            }));
            let items = futures::stream::unfold(rx, move |mut rx| async move {
                rx.recv().await.map(|item| ((index, Some(item)), rx))
            })
            .chain(futures::stream::once(async move { (index, None) }));
            self.streamed.push(Box::pin(items));
        } else {
            self.plain_running += 1;
            self.running
                .push(Box::pin(async move { (index, false, invoke::step(rt, index, item, None, scope, None).await) }));
        }
    }

    /// Hands a step's outputs to the steps after it. A `collect` step holds what it
    /// gathers in memory: past `limits.max_collect` items the event fails, clearly,
    /// instead of holding a sweep of millions.
    fn dispatch(&mut self, index: usize, items: Vec<Item>) -> Result<(), StepFailure> {
        let graph = &self.rt.graph;
        if let (true, Some(outputs)) = (graph.children[index].is_empty(), &self.scope.outputs) {
            outputs.keep(&items);
        }
        for &child in &graph.children[index] {
            if graph.collect[child] {
                let max = self.rt.pipeline.limits.max_collect;
                if self.collected[child].len() + items.len() > max {
                    let step = &self.rt.pipeline.steps[child].name;
                    return Err(StepFailure {
                        step: step.clone(),
                        error: weir_functions::FunctionError::permanent(format!(
                            "step {step:?} would collect more than {max} items (limits.max_collect): \
                             process them one by one instead, or raise the limit"
                        )),
                        attempts: 0,
                    });
                }
                self.collected[child].extend(items.iter().cloned());
            } else {
                for item in &items {
                    self.launch(child, item.clone());
                }
            }
        }
        Ok(())
    }
}
