//! Wires pipelines to their triggers and executors, and stops them gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_functions::{Registry, Stores};

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Diagnostics, Pipeline};
use crate::event::dead_letter::BucketDeadLetters;
use crate::event::{DeadLetterStore, EventSink, QueueStats};
use crate::executor::{ExecutorStats, PipelineRuntime};
use crate::state::{Ledger, StateLock};
use crate::trigger::{Trigger, TriggerContext, Triggers};

/// Engine-wide settings.
#[derive(Clone)]
pub struct Engine {
    pub registry: Registry,
    /// The trigger kinds pipeline files may name.
    pub triggers: Triggers,
    /// Where the ledger (and the default dead-letter bucket) live.
    pub state_dir: PathBuf,
    /// How long in-flight events may take to finish after a stop is requested.
    pub grace: Duration,
    /// Invocation permits shared by all pipelines.
    pub global_concurrency: usize,
    pub stores: Stores,
    /// Where health, readiness, metrics and pushed notifications are served. Loopback
    /// by default: exposing it is a deliberate choice (`--listen 0.0.0.0:9750`).
    pub listen: SocketAddr,
    /// Whether that address is served when no pipeline takes notifications.
    pub serve: Serve,
    /// Wall-clock time for schedules.
    pub clock: Arc<dyn Clock>,
}

/// The default address of the HTTP endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9750";

/// When the engine serves its HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Only when a pipeline takes notifications (an embedding application's choice,
    /// and most tests': no port taken for nothing).
    WhenNeeded,
    /// Always (`weir run --listen ADDR`): an address in use is an error.
    Always,
    /// Always, but an address in use only costs health, metrics and the status page,
    /// with a warning, unless a pipeline needs it for notifications: a second
    /// `weir run` on one machine with the default address still runs.
    IfFree,
}

impl Engine {
    pub fn new(registry: Registry) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            registry,
            triggers: Triggers::builtin(),
            state_dir: PathBuf::from("data/.weir"),
            grace: Duration::from_secs(30),
            global_concurrency: (cores * 4).max(8),
            stores: Stores::new(),
            listen: DEFAULT_LISTEN.parse().expect("a valid socket address"),
            serve: Serve::WhenNeeded,
            clock: Arc::new(SystemClock),
        }
    }

    /// Replaces the trigger kinds (the built-ins plus your own, see
    /// `examples/custom_trigger.rs`).
    pub fn triggers(mut self, triggers: Triggers) -> Self {
        self.triggers = triggers;
        self
    }

    /// Replaces the wall clock schedules follow (tests use a [`crate::clock::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    pub fn serve(mut self, serve: Serve) -> Self {
        self.serve = serve;
        self
    }

    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Loads and validates pipeline files or directories.
    /// Loads and validates pipeline files, and registers what their triggers know about
    /// their stores (see [`crate::trigger::TriggerSpec::register_stores`]).
    pub fn load(&self, paths: &[PathBuf]) -> Result<Vec<Pipeline>, Diagnostics> {
        let pipelines = config::load_paths(paths, &self.registry, &self.triggers)?;
        for pipeline in &pipelines {
            pipeline.trigger.register_stores(&self.stores);
        }
        Ok(pipelines)
    }

    pub fn ledger(&self) -> anyhow::Result<Ledger> {
        Ledger::open(&self.state_dir).context("opening the state ledger")
    }

    /// The dead-letter bucket used when a pipeline names none.
    pub fn default_dead_letter_url(&self) -> anyhow::Result<String> {
        std::fs::create_dir_all(&self.state_dir)?;
        let dir = self.state_dir.canonicalize()?.join("dead-letter");
        Ok(format!("file://{}", dir.display()))
    }

    /// The runtime (executor state) of a pipeline, without starting its trigger. Used by
    /// `weir run` and by `weir dlq redrive`.
    pub fn runtime(
        &self,
        pipeline: Pipeline,
        ledger: &Ledger,
        global: Arc<Semaphore>,
    ) -> anyhow::Result<Arc<PipelineRuntime>> {
        let url = match &pipeline.retry.dead_letter {
            Some(url) => url.clone(),
            None => self.default_dead_letter_url()?,
        };
        let dead_letters: Arc<dyn DeadLetterStore> = match pipeline.trigger.dead_letters(&url, ledger) {
            Some(store) => store?,
            None => BucketDeadLetters::new(&url, &self.stores),
        };
        let runtime =
            PipelineRuntime::new(Arc::new(pipeline), ledger.clone(), self.stores.clone(), global, dead_letters);
        Ok(Arc::new(runtime))
    }

    /// Starts every pipeline: trigger → bounded queue → executor.
    pub async fn start(&self, pipelines: Vec<Pipeline>) -> anyhow::Result<RunningEngine> {
        let lock = StateLock::acquire(&self.state_dir)?;
        let ledger = self.ledger()?;
        let mut crashed = ledger.crashed_runs().await?;
        let global = Arc::new(Semaphore::new(self.global_concurrency));
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut running = Vec::new();
        let mut routes = HashMap::new();
        let mut endpoints = HashMap::new();
        // Before the runtimes: their meters attach to the recorder there is when they
        // are made.
        let recorder = match self.serve {
            Serve::WhenNeeded => None,
            Serve::Always | Serve::IfFree => crate::metrics::recorder(),
        };
        for pipeline in pipelines {
            for step in &pipeline.steps {
                tracing::info!(pipeline = %pipeline.name, step = %step.name, function = %step.function_name,
                    init_ms = step.init.as_secs_f64() * 1000.0, "step ready");
            }
            let trigger = pipeline.trigger.build(TriggerContext {
                pipeline: Arc::from(pipeline.name.as_str()),
                ledger: ledger.clone(),
                stores: self.stores.clone(),
                clock: self.clock.clone(),
            });
            let (sink, queue, queue_stats) = EventSink::new(pipeline.limits.queue);
            let runtime = self.runtime(pipeline, &ledger, global.clone())?;
            let name = runtime.name.clone();
            let mine = crashed.keys().filter(|(p, _)| *p == *name).cloned().collect::<Vec<_>>();
            runtime.remember_crashes(
                mine.into_iter().filter_map(|key| crashed.remove_entry(&key)).map(|((_, s), n)| (s, n)).collect(),
            );
            if let Some(endpoint) = trigger.clone().endpoint() {
                endpoints.insert(name.to_string(), endpoint);
            }
            if let Some(inbox) = trigger.clone().inbox() {
                routes.insert(name.to_string(), crate::http::Route { inbox, runtime: runtime.clone() });
            }
            let trigger_stop = shutdown.child_token();
            tasks.spawn(keep_running(name.clone(), trigger, sink, trigger_stop.clone()));
            tasks.spawn({
                let runtime = runtime.clone();
                let stop = shutdown.clone();
                let grace = self.grace;
                let drained = queue_stats.drained.clone();
                async move {
                    runtime.serve(queue, stop, grace).await;
                    drained.cancel();
                    Ok(())
                }
            });
            running.push(RunningPipeline { name, queue: queue_stats, executor: runtime.stats.clone(), runtime });
        }
        let mut http_addr = None;
        if !routes.is_empty() || !endpoints.is_empty() || self.serve != Serve::WhenNeeded {
            let needed = !routes.is_empty() || !endpoints.is_empty() || self.serve == Serve::Always;
            let observed = running
                .iter()
                .map(|p: &RunningPipeline| crate::metrics::Observed {
                    name: p.name.clone(),
                    pipeline: p.runtime.pipeline.clone(),
                    queue: p.queue.clone(),
                    executor: p.executor.clone(),
                })
                .collect();
            let runtimes = running.iter().map(|p| (p.name.to_string(), p.runtime.clone())).collect();
            let site = crate::http::Site {
                routes,
                endpoints,
                runtimes,
                observed,
                recorder,
                state_dir: self.state_dir.clone(),
                ledger: ledger.clone(),
            };
            match crate::http::serve(self.listen, site, shutdown.clone()).await {
                Ok((addr, server)) => {
                    http_addr = Some(addr);
                    tasks.spawn(server);
                }
                Err(e) if !needed => {
                    tracing::warn!(error = %format!("{e:#}"),
                        "no health, metrics or status page: give `weir run --listen ADDR` a free address");
                }
                Err(e) => return Err(e),
            }
            if let Some(handle) = recorder {
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(crate::metrics::UPKEEP_EVERY) => handle.run_upkeep(),
                        }
                    }
                });
            }
        }
        Ok(RunningEngine { shutdown, tasks, pipelines: running, ledger, http_addr, _lock: lock })
    }

    /// Runs until `shutdown` is cancelled, then drains and returns.
    pub async fn run(&self, pipelines: Vec<Pipeline>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let running = self.start(pipelines).await?;
        running.wait(shutdown).await
    }
}

/// Handles to a started pipeline's counters.
pub struct RunningPipeline {
    pub name: Arc<str>,
    pub queue: Arc<QueueStats>,
    pub executor: Arc<ExecutorStats>,
    pub runtime: Arc<PipelineRuntime>,
}

/// A started engine.
pub struct RunningEngine {
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    pub pipelines: Vec<RunningPipeline>,
    pub ledger: Ledger,
    /// Where the HTTP endpoint is served, if it is.
    pub http_addr: Option<SocketAddr>,
    /// Released once the engine has stopped (dropped with it).
    _lock: StateLock,
}

impl RunningEngine {
    pub fn pipeline(&self, name: &str) -> Option<&RunningPipeline> {
        self.pipelines.iter().find(|p| &*p.name == name)
    }

    /// Waits for `stop` (or for a trigger to fail), then stops intake and drains.
    pub async fn wait(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            _ = stop.cancelled() => {}
            Some(result) = self.tasks.join_next() => {
                failure = flatten(result).err();
            }
        }
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = flatten(result) {
                failure.get_or_insert(e);
            }
        }
        for p in &self.pipelines {
            tracing::info!(pipeline = %p.name,
                done = p.executor.events_done.load(Ordering::Relaxed),
                dead_lettered = p.executor.events_dead_lettered.load(Ordering::Relaxed),
                abandoned = p.executor.events_abandoned.load(Ordering::Relaxed),
                "pipeline stopped");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops intake, drains in-flight events within the grace period and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        token.cancel();
        self.wait(token).await
    }
}

/// Runs a trigger until `stop`. A transient failure (a bucket or broker briefly
/// unreachable, at start-up or later) starts it again after a backoff, 1 s doubling to
/// 30 s; a fatal one stops the engine with that error.
async fn keep_running(
    name: Arc<str>,
    trigger: Arc<dyn Trigger>,
    sink: EventSink,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_secs(1);
    let stats = sink.stats();
    loop {
        stats.trigger_down.store(false, Ordering::Relaxed);
        match trigger.clone().run(sink.clone(), stop.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !stop.is_cancelled() => {
                stats.trigger_down.store(true, Ordering::Relaxed);
                stats.trigger_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pipeline = %name, error = %e, retry_in = ?delay, "trigger failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) if stop.is_cancelled() => {
                tracing::debug!(pipeline = %name, error = %e, "trigger stopped by shutdown");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %e, "trigger stopped with an error");
                return Err(anyhow::Error::new(e).context(format!("pipeline {name}: trigger failed")));
            }
        }
    }
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match result {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("engine task failed: {e}")),
    }
}
