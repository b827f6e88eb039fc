//! Streaming fan-out: a step that emits more items than should ever be held (a
//! listing) runs only as far ahead of the steps it feeds as the executor's bound
//! allows, never deadlocks at `concurrency = 1`, and `object.sweep` pushes a whole
//! prefix through a replayed tick.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{registry_with_probe, utc, Sandbox};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use weir_engine::event::JsonWork;
use weir_engine::replay::{self, Counters, Plan, Window};
use weir_engine::Engine;
use weir_functions::Emitter;
use weir_functions::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Metadata, Payload};

/// Emits `count` JSON items, recording the most it ever ran ahead of `consumed`.
struct CountUp {
    count: usize,
    emitted: Arc<AtomicUsize>,
    consumed: Arc<AtomicUsize>,
    max_lead: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Function for CountUp {
    async fn invoke(&self, _: Item, _: &Context) -> Result<Vec<Item>, FunctionError> {
        Err(FunctionError::permanent("streams only"))
    }
    fn streams(&self) -> bool {
        true
    }
    async fn invoke_streaming(&self, _: Item, _: &Context, out: &Emitter) -> Result<(), FunctionError> {
        for i in 0..self.count {
            out.emit(Item::new(Payload::Json(serde_json::json!(i)), Metadata::default())).await?;
            let emitted = self.emitted.fetch_add(1, Ordering::SeqCst) + 1;
            let lead = emitted.saturating_sub(self.consumed.load(Ordering::SeqCst));
            self.max_lead.fetch_max(lead, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Counts the items it is given (one by one, or as a collection).
struct Tally {
    seen: Arc<AtomicUsize>,
    collections: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Function for Tally {
    async fn invoke(&self, item: Item, _: &Context) -> Result<Vec<Item>, FunctionError> {
        match &item.payload {
            Payload::Collection(items) => {
                self.collections.fetch_add(1, Ordering::SeqCst);
                self.seen.fetch_add(items.len(), Ordering::SeqCst);
            }
            _ => {
                tokio::task::yield_now().await;
                self.seen.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(vec![item])
    }
}

#[derive(Default, Clone)]
struct Counts {
    emitted: Arc<AtomicUsize>,
    consumed: Arc<AtomicUsize>,
    max_lead: Arc<AtomicUsize>,
    collected: Arc<AtomicUsize>,
    collections: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize)]
struct CountParams {
    count: usize,
}

fn registry(counts: &Counts) -> weir_functions::Registry {
    let (mut registry, _) = registry_with_probe();
    let c = counts.clone();
    registry.register(FunctionSpec::new("test.count_up", "", &[], move |p: CountParams| {
        Ok::<_, BuildError>(CountUp {
            count: p.count,
            emitted: c.emitted.clone(),
            consumed: c.consumed.clone(),
            max_lead: c.max_lead.clone(),
        })
    }));
    let c = counts.clone();
    registry.register(FunctionSpec::new("test.consume", "", &[], move |_: serde::de::IgnoredAny| {
        Ok::<_, BuildError>(Tally { seen: c.consumed.clone(), collections: Arc::new(AtomicUsize::new(0)) })
    }));
    let c = counts.clone();
    registry.register(FunctionSpec::new("test.collect", "", &[], move |_: serde::de::IgnoredAny| {
        Ok::<_, BuildError>(Tally { seen: c.collected.clone(), collections: c.collections.clone() })
    }));
    registry
}

fn counting_pipeline(concurrency: usize, count: usize) -> String {
    format!(
        "name = \"count\"\n[trigger]\nkind = \"cron\"\nschedule = \"@daily\"\n[limits]\nconcurrency = {concurrency}\n\
         [[step]]\nname = \"list\"\nfunction = \"test.count_up\"\ncount = {count}\n\
         [[step]]\nname = \"each\"\nafter = \"list\"\nfunction = \"test.consume\"\n\
         [[step]]\nname = \"all\"\nafter = \"each\"\nfunction = \"test.collect\"\ncollect = true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_step_runs_only_a_bounded_distance_ahead() {
    for concurrency in [1, 4] {
        const N: usize = 20_000;
        let sandbox = Sandbox::new();
        let counts = Counts::default();
        let engine = Engine::new(registry(&counts)).state_dir(sandbox.state());
        let path = sandbox.pipeline("count", &counting_pipeline(concurrency, N));
        let pipeline = engine.load(&[path]).unwrap().remove(0);
        let ledger = engine.ledger().unwrap();
        let runtime = engine.runtime(pipeline, &ledger, Arc::new(Semaphore::new(8))).unwrap();
        let invocations = runtime
            .execute(Arc::new(JsonWork { value: serde_json::json!({}) }))
            .await
            .unwrap_or_else(|f| panic!("{}", f.error));

        assert_eq!(counts.consumed.load(Ordering::SeqCst), N, "every emitted item ran (concurrency {concurrency})");
        assert_eq!(invocations, 1 + N + 1);
        // The collect step ran once, after the stream was drained, with everything.
        assert_eq!(counts.collections.load(Ordering::SeqCst), 1);
        assert_eq!(counts.collected.load(Ordering::SeqCst), N);
        // Channel (2 × concurrency) + running (2 × concurrency) + the one in hand.
        let lead = counts.max_lead.load(Ordering::SeqCst);
        assert!(lead <= 4 * concurrency + 2, "the stream ran {lead} items ahead at concurrency {concurrency}");
    }
}

/// A `collect` step holds everything it gathers: a sweep of millions into one would
/// hold them all. Past `limits.max_collect` the event fails, naming the step and the
/// limit, and the stream stops there instead of running to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collect_past_max_collect_fails_clearly_and_early() {
    let sandbox = Sandbox::new();
    let counts = Counts::default();
    let engine = Engine::new(registry(&counts)).state_dir(sandbox.state());
    let text = counting_pipeline(2, 20_000).replace("concurrency = 2\n", "concurrency = 2\nmax_collect = 1000\n");
    let pipeline = engine.load(&[sandbox.pipeline("count", &text)]).unwrap().remove(0);
    let ledger = engine.ledger().unwrap();
    let runtime = engine.runtime(pipeline, &ledger, Arc::new(Semaphore::new(8))).unwrap();
    let failure = runtime.execute(Arc::new(JsonWork { value: serde_json::json!({}) })).await.unwrap_err();
    assert_eq!(failure.step, "all");
    assert!(failure.error.message().contains("would collect more than 1000 items (limits.max_collect)"));
    assert!(!failure.error.is_retryable());
    assert_eq!(counts.collections.load(Ordering::SeqCst), 0, "the collect step never ran");
    assert!(counts.consumed.load(Ordering::SeqCst) < 1100, "the stream ran on past the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_sweep_copies_a_whole_prefix_for_one_replayed_tick() {
    const N: usize = 3_000;
    let sandbox = Sandbox::new();
    for i in 0..N {
        sandbox.drop_file(&format!("data/{:02}/{i:05}.txt", i % 7), format!("{i}").as_bytes());
    }
    sandbox.drop_file("data/skip.bin", b"not a txt");
    sandbox.drop_file("elsewhere/00001.txt", b"not under the prefix");
    let path = sandbox.pipeline(
        "archive",
        "name = \"archive\"\n[trigger]\nkind = \"cron\"\nschedule = \"0 4 * * *\"\n[limits]\nconcurrency = 4\n\
         [[step]]\nname = \"sweep\"\nfunction = \"object.sweep\"\nurl = \"{bucket}\"\nprefix = \"data/\"\ninclude = [\"*.txt\"]\n\
         [[step]]\nname = \"copy\"\nafter = \"sweep\"\nfunction = \"object.copy\"\nkey = \"archive/{attr.date}/{key}\"\n",
    );
    let (registry, _) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let pipeline = engine.load(&[path]).unwrap().remove(0);
    let window = Window {
        since: Some(utc("2026-11-20T00:00:00Z")),
        until: Some(utc("2026-11-21T00:00:00Z")),
        ..Default::default()
    };
    let plan = Plan { window, ..Default::default() };
    let summary =
        replay::replay(&engine, pipeline, plan, Arc::new(Counters::default()), CancellationToken::new(), |_| {})
            .await
            .unwrap();
    assert_eq!((summary.found, summary.done, summary.failed), (1, 1, 0), "{summary:?}");
    let archived = sandbox.files_under("archive/2026-11-20/data");
    assert_eq!(archived.len(), N);
    let sample = sandbox.bucket().join("archive/2026-11-20/data/03/00003.txt");
    assert_eq!(std::fs::read_to_string(sample).unwrap(), "3");
}
