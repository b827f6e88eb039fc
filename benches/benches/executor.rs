//! The executor alone: events handed straight to a pipeline's bounded queue (an
//! in-memory trigger), a step that fans out to 3 items, a no-op step per item, and a
//! ledger acknowledgement per event — what every trigger pays on top of its own work.
//!
//! Criterion measures events/s over bursts of `BURST` events; a separate pass prints
//! the dispatch latency (queued → first step started) at p50/p99 with the queue kept
//! a few events deep, as a steady trigger keeps it.
//!
//! `cargo bench -p weir-benches --bench executor`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use weir_engine::event::{Acknowledge, Event, EventSink, LedgerAck, LedgerEntry, Outcome, Ran, Runner, Scope, Work};
use weir_engine::Engine;
use weir_functions::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Metadata, Payload, Registry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BURST: u64 = 5_000;
const CONCURRENCY: usize = 8;

struct FanOut;

#[async_trait::async_trait]
impl Function for FanOut {
    async fn invoke(&self, item: Item, _: &Context) -> Result<Vec<Item>, FunctionError> {
        Ok((0..3).map(|_| Item::new(Payload::Empty, item.meta.clone())).collect())
    }
}

struct NoOp;

#[async_trait::async_trait]
impl Function for NoOp {
    async fn invoke(&self, _: Item, _: &Context) -> Result<Vec<Item>, FunctionError> {
        Ok(Vec::new())
    }
}

/// An event as a bucket trigger makes one: a key, recorded in the ledger when done.
struct Key {
    key: String,
    queued: Instant,
    dispatch: Option<Arc<Mutex<Vec<Duration>>>>,
}

#[async_trait::async_trait]
impl Work for Key {
    fn describe(&self) -> String {
        self.key.clone()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({ "type": "bench", "key": self.key })
    }

    fn ledger_entry(&self) -> Option<LedgerEntry> {
        Some(LedgerEntry { url: "memory://bench".into(), key: self.key.clone(), version: "1".into() })
    }

    async fn run(&self, runner: &dyn Runner, _event: &Event) -> Ran {
        if let Some(dispatch) = &self.dispatch {
            dispatch.lock().unwrap().push(self.queued.elapsed());
        }
        let item = Item::new(Payload::Empty, Metadata::for_object("memory://bench", self.key.clone()));
        runner.run(item, None, &Scope::new(None, false)).await.into()
    }
}

/// Counts finished events, after the ledger recorded them.
struct Count {
    ledger: Arc<LedgerAck>,
    done: AtomicU64,
    finished: Notify,
}

#[async_trait::async_trait]
impl Acknowledge for Count {
    async fn ack(&self, event: &Event, outcome: Outcome) {
        assert_eq!(outcome, Outcome::Done, "a no-op event failed");
        self.ledger.ack(event, outcome).await;
        self.done.fetch_add(1, Ordering::Relaxed);
        self.finished.notify_one();
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    sink: EventSink,
    count: Arc<Count>,
    name: Arc<str>,
    next: AtomicU64,
    _stop: tokio_util::sync::DropGuard,
}

impl Bench {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bench.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"bench\"\n[trigger]\nkind = \"object_store\"\nurl = \"memory://bench\"\n\
                 [limits]\nconcurrency = {CONCURRENCY}\n\
                 [[step]]\nname = \"fan-out\"\nfunction = \"bench.fan_out\"\n\
                 [[step]]\nname = \"nothing\"\nfunction = \"bench.noop\"\nafter = \"fan-out\"\n"
            ),
        )
        .unwrap();
        let mut registry = Registry::builtin();
        registry.register(FunctionSpec::new(
            "bench.fan_out",
            "three items per item",
            &[],
            |_: serde::de::IgnoredAny| Ok::<_, BuildError>(FanOut),
        ));
        registry.register(FunctionSpec::new("bench.noop", "does nothing", &[], |_: serde::de::IgnoredAny| {
            Ok::<_, BuildError>(NoOp)
        }));
        let engine = Engine::new(registry).state_dir(dir.path().join("state"));
        let pipeline = engine.load(&[file]).expect("pipeline").remove(0);
        let ledger = engine.ledger().unwrap();
        let runtime = engine.runtime(pipeline, &ledger, Arc::new(Semaphore::new(CONCURRENCY))).unwrap();
        let (sink, queue, _) = EventSink::new(CONCURRENCY * 2);
        let stop = CancellationToken::new();
        tokio::spawn(runtime.serve(queue, stop.clone(), Duration::from_secs(5)));
        let count =
            Arc::new(Count { ledger: LedgerAck::new(ledger, None), done: AtomicU64::new(0), finished: Notify::new() });
        Self { _dir: dir, sink, count, name: Arc::from("bench"), next: AtomicU64::new(0), _stop: stop.drop_guard() }
    }

    fn event(&self, dispatch: Option<Arc<Mutex<Vec<Duration>>>>) -> Event {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let work = Key { key: format!("in/{n:09}.jpg"), queued: Instant::now(), dispatch };
        Event::new(self.name.clone(), Arc::new(work), self.count.clone())
    }

    async fn wait_done(&self, target: u64) {
        while self.count.done.load(Ordering::Relaxed) < target {
            self.count.finished.notified().await;
        }
    }

    /// `events` events as fast as the queue takes them, until the last is done.
    async fn burst(&self, events: u64) -> Duration {
        let target = self.count.done.load(Ordering::Relaxed) + events;
        let started = Instant::now();
        for _ in 0..events {
            self.sink.send(self.event(None)).await.unwrap();
        }
        self.wait_done(target).await;
        started.elapsed()
    }
}

fn executor(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bench = runtime.block_on(Bench::new());
    let mut group = c.benchmark_group("executor");
    group.throughput(Throughput::Elements(BURST));
    group.sample_size(10);
    group.bench_function(format!("{BURST} events, fan-out of 3, no-op steps, ledger ack"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    took += bench.burst(BURST).await;
                }
                took
            })
        });
    });
    group.finish();

    // Dispatch latency at a steady pace: a new event whenever fewer than `depth` wait.
    let dispatch = Arc::new(Mutex::new(Vec::with_capacity(20_000)));
    runtime.block_on(async {
        let depth = CONCURRENCY as u64;
        let total = 20_000u64;
        let base = bench.count.done.load(Ordering::Relaxed);
        for sent in 0..total {
            while sent.saturating_sub(bench.count.done.load(Ordering::Relaxed) - base) >= depth {
                bench.count.finished.notified().await;
            }
            bench.sink.send(bench.event(Some(dispatch.clone()))).await.unwrap();
        }
        bench.wait_done(base + total).await;
    });
    let mut samples = dispatch.lock().unwrap().clone();
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "dispatch latency (queued → first step started), {} events, ≤ {CONCURRENCY} waiting: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

criterion_group!(benches, executor);
criterion_main!(benches);
