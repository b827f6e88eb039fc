//! Shared helpers for the engine's integration tests: test functions that observe
//! what the executor does, pipeline files in temp directories, and polling waits.
#![allow(dead_code)]

pub mod flaky;
pub mod kafka;
pub mod proxy;
pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use weir_functions::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Payload, Registry};

/// What the test functions saw, shared between a test and the functions it registered.
#[derive(Default)]
pub struct Probe {
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub calls: AtomicUsize,
    /// (step-local label, time) of every call, in call order.
    pub log: Mutex<Vec<(String, Instant)>>,
    /// Calls per source object key.
    pub keys: Mutex<std::collections::BTreeMap<String, usize>>,
    /// Item keys in call order.
    pub order: Mutex<Vec<String>>,
    /// The trigger events (Lambda shape) the calls were given, in call order.
    pub events: Mutex<Vec<weir_functions::TriggerEvent>>,
    /// For batch calls: the keys of each batch, in call order.
    pub batches: Mutex<Vec<Vec<String>>>,
}

impl Probe {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }
    /// How often each key was seen.
    pub fn key_counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.keys.lock().unwrap().clone()
    }
    pub fn times(&self, label: &str) -> Vec<Instant> {
        self.log.lock().unwrap().iter().filter(|(l, _)| l == label).map(|(_, t)| *t).collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestParams {
    #[serde(default)]
    sleep_ms: u64,
    /// Return this many items (fan-out); 1 passes the item through.
    #[serde(default = "one")]
    fan_out: usize,
    /// Fail with a retryable error this many times per item before succeeding.
    #[serde(default)]
    fail_retryable: usize,
    /// Always fail permanently.
    #[serde(default)]
    fail_permanent: bool,
    /// Sleep `slow_ms` (instead of `sleep_ms`) for items whose key ends with this text.
    #[serde(default)]
    slow_keys_ending: Option<String>,
    #[serde(default)]
    slow_ms: u64,
    /// Fail permanently for items whose key contains this text.
    #[serde(default)]
    fail_keys_containing: Option<String>,
    #[serde(default)]
    label: String,
    /// Batches: items whose key contains this fail permanently (a partial batch failure).
    #[serde(default)]
    batch_fail_containing: Option<String>,
    /// Batches: items whose key contains this fail retryably the first time they are seen.
    #[serde(default)]
    batch_flaky_containing: Option<String>,
}
fn one() -> usize {
    1
}

struct TestFunction {
    probe: Arc<Probe>,
    params: TestParams,
    failures: Mutex<std::collections::HashMap<String, usize>>,
}

#[async_trait::async_trait]
impl Function for TestFunction {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let p = &self.probe;
        if let Payload::Collection(items) = &item.payload {
            if self.params.batch_fail_containing.is_some() || self.params.batch_flaky_containing.is_some() {
                return self.batch(items, ctx);
            }
        }
        if let Some(key) = &item.meta.key {
            *p.keys.lock().unwrap().entry(key.clone()).or_default() += 1;
            p.order.lock().unwrap().push(key.clone());
        }
        if let Some(event) = ctx.event() {
            p.events.lock().unwrap().push(event.clone());
        }
        let now = p.running.fetch_add(1, Ordering::SeqCst) + 1;
        p.max_running.fetch_max(now, Ordering::SeqCst);
        p.calls.fetch_add(1, Ordering::SeqCst);
        p.log.lock().unwrap().push((self.params.label.clone(), Instant::now()));
        // Decrement even if the invocation is cancelled (timeout) mid-sleep.
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _done = Done(&p.running);
        let slow = self
            .params
            .slow_keys_ending
            .as_ref()
            .is_some_and(|end| item.meta.key.as_ref().is_some_and(|k| k.ends_with(end.as_str())));
        let sleep = if slow { self.params.slow_ms } else { self.params.sleep_ms };
        if sleep > 0 {
            tokio::time::sleep(Duration::from_millis(sleep)).await;
        }
        let marked = |mark: &String| item.meta.key.as_ref().is_some_and(|k| k.contains(mark.as_str()));
        if self.params.fail_permanent || self.params.fail_keys_containing.as_ref().is_some_and(marked) {
            return Err(FunctionError::permanent(format!("{} is rotten", item.describe())));
        }
        {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(item.describe()).or_insert(0);
            if *seen < self.params.fail_retryable {
                *seen += 1;
                return Err(FunctionError::retryable(format!("{}: flaky failure {}", item.describe(), *seen)));
            }
        }
        Ok((0..self.params.fan_out)
            .map(|i| {
                let mut out = item.clone();
                if self.params.fan_out > 1 {
                    out.meta.variant = Some(format!("v{i}"));
                    if let Payload::Bytes(b) = &item.payload {
                        out.payload =
                            Payload::Bytes(format!("{}:{}", String::from_utf8_lossy(b), i).into_bytes().into());
                    }
                }
                out
            })
            .collect())
    }
}

impl TestFunction {
    /// A batch (Kafka `batch_size`): records every item, and reports the ones marked to
    /// fail as a partial batch failure; the rest pass through.
    fn batch(&self, items: &[Item], ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let p = &self.probe;
        p.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(event) = ctx.event() {
            p.events.lock().unwrap().push(event.clone());
        }
        let keys: Vec<String> = items.iter().map(|i| i.meta.key.clone().unwrap_or_default()).collect();
        p.batches.lock().unwrap().push(keys.clone());
        let marked = |mark: &Option<String>, key: &str| mark.as_ref().is_some_and(|m| key.contains(m.as_str()));
        let (mut outputs, mut failures) = (Vec::new(), Vec::new());
        for (index, (item, key)) in items.iter().zip(&keys).enumerate() {
            *p.keys.lock().unwrap().entry(key.clone()).or_default() += 1;
            p.order.lock().unwrap().push(key.clone());
            if marked(&self.params.batch_fail_containing, key) {
                failures.push((index, FunctionError::permanent(format!("{key} is rotten"))));
                continue;
            }
            if marked(&self.params.batch_flaky_containing, key) {
                let mut seen = self.failures.lock().unwrap();
                let tries = seen.entry(key.clone()).or_insert(0);
                *tries += 1;
                if *tries == 1 {
                    failures.push((index, FunctionError::retryable(format!("{key}: flaky"))));
                    continue;
                }
            }
            outputs.push(item.clone());
        }
        if failures.is_empty() {
            Ok(outputs)
        } else {
            Err(FunctionError::partial_batch(outputs, failures))
        }
    }
}

/// The built-in functions plus `test.probe`, whose calls are recorded in the returned probe.
pub fn registry_with_probe() -> (Registry, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let mut registry = Registry::builtin();
    let shared = probe.clone();
    registry.register(FunctionSpec::new("test.probe", "records its calls", &[], move |params: TestParams| {
        Ok::<_, BuildError>(TestFunction { probe: shared.clone(), params, failures: Default::default() })
    }));
    (registry, probe)
}

/// A temp directory with `bucket/` (the watched bucket) and `state/`.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bucket/inbox")).unwrap();
        Self { dir }
    }
    pub fn bucket(&self) -> PathBuf {
        self.dir.path().join("bucket")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn bucket_url(&self) -> String {
        format!("file://{}", self.bucket().display())
    }
    /// Writes a pipeline file; `{bucket}` in the text is replaced by the bucket URL.
    pub fn pipeline(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text.replace("{bucket}", &self.bucket_url())).unwrap();
        path
    }
    /// Drops a file into the bucket the way a well-behaved uploader does: write a
    /// hidden temp file, then rename it into place.
    pub fn drop_file(&self, key: &str, bytes: &[u8]) {
        let path = self.bucket().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_file_name(format!(".{}.part", path.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    /// Starts `<weir> run <pipeline>` (the binary is `env!("CARGO_BIN_EXE_weir")`, which
    /// only integration tests have) as a process of its own, with its own state
    /// directory `<state>` in the sandbox, the way a second machine would run it.
    pub fn spawn_weir_run(&self, weir: &str, pipeline: &Path, state: &str) -> std::process::Child {
        std::process::Command::new(weir)
            .args(["run", pipeline.to_str().unwrap(), "--listen", "127.0.0.1:0", "--grace", "5s"])
            .env("WEIR_STATE_DIR", self.dir.path().join(state))
            .stdout(std::process::Stdio::null())
            .stderr(self.log_file(state))
            .spawn()
            .unwrap()
    }
    /// Where a spawned `weir run` with this state name logs (appended across restarts).
    fn log_file(&self, state: &str) -> std::fs::File {
        let path = self.dir.path().join(format!("{state}.log"));
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
    }
    /// The last `lines` lines a spawned `weir run` logged, for a failing test's message.
    pub fn log_tail(&self, state: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{state}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
    pub fn files_under(&self, key_prefix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.bucket().join(key_prefix), &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if !p.file_name().unwrap().to_string_lossy().contains('#') {
            out.push(p);
        }
    }
}

/// Every file under `dir`, at any depth.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// The dead letters written under `dir` (a dead-letter bucket), as (the event's key,
/// the error), sorted.
pub fn dead_letters(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = files_in(dir)
        .iter()
        .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).ok()?).ok())
        .map(|r| {
            (r["event"]["key"].as_str().unwrap_or_default().into(), r["error"].as_str().unwrap_or_default().into())
        })
        .collect();
    out.sort();
    out
}

/// A UTC time from RFC 3339 text.
pub fn utc(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&chrono::Utc)
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
