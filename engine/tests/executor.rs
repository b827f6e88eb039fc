//! The executor's guarantees, observed through test functions on a real local bucket:
//! limits, fan-out/fan-in, acknowledgement timing, timeouts, retries, dead letters,
//! bounded queues.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{registry_with_probe, wait_for, Sandbox};
use weir_engine::state::ObjectStatus;
use weir_engine::Engine;

const WAIT: Duration = Duration::from_secs(60);

fn engine(sandbox: &Sandbox, registry: weir_functions::Registry) -> Engine {
    Engine::new(registry).state_dir(sandbox.state()).grace(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_is_never_exceeded() {
    let sandbox = Sandbox::new();
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "limited",
        r#"
name = "limited"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[limits]
concurrency = 3
[[step]]
name = "slow"
function = "test.probe"
sleep_ms = 20
fan_out = 4
[[step]]
name = "slower"
after = "slow"
function = "test.probe"
sleep_ms = 10
"#,
    );
    for i in 0..40 {
        sandbox.drop_file(&format!("inbox/{i}.txt"), b"x");
    }
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("limited").unwrap().executor.clone();
    wait_for(WAIT, "40 events done", || stats.events_done.load(Ordering::SeqCst) == 40).await;
    running.stop().await.unwrap();
    // 40 events × (1 + 4 fan-out) invocations.
    assert_eq!(probe.calls(), 200);
    assert!(probe.max_running() <= 3, "saw {} at once with concurrency = 3", probe.max_running());
    assert!(probe.max_running() >= 2, "work should overlap (saw {})", probe.max_running());
    assert!(stats.invocations_high_water.load(Ordering::SeqCst) <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_yields_n_outputs_and_the_event_is_acked_after_the_last() {
    let sandbox = Sandbox::new();
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "fan",
        r#"
name = "fan"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[[step]]
name = "split"
function = "test.probe"
fan_out = 5
[[step]]
name = "write"
after = "split"
function = "object.put"
key = "out/{variant}/{stem}.txt"
[[step]]
name = "slow-tail"
after = "write"
function = "test.probe"
label = "tail"
sleep_ms = 300
[[step]]
name = "manifest"
after = "write"
collect = true
function = "object.manifest"
key = "manifests/{stem}.json"
"#,
    );
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("fan").unwrap().executor.clone();
    sandbox.drop_file("inbox/photo.txt", b"data");
    // All five outputs are written while the slow tail is still sleeping…
    wait_for(WAIT, "5 outputs", || sandbox.files_under("out").len() == 5).await;
    wait_for(WAIT, "tail steps started", || probe.times("tail").len() == 5).await;
    assert_eq!(stats.events_done.load(Ordering::SeqCst), 0, "acked before its sub-steps finished");
    assert_eq!(running.ledger.object_count("fan", ObjectStatus::Done).await.unwrap(), 0);
    // …and only when the last sub-step is done is the event acknowledged.
    wait_for(WAIT, "event done", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    wait_for(WAIT, "ledger updated", || sandbox.state().join("ledger.db").exists()).await;
    assert_eq!(running.ledger.object_count("fan", ObjectStatus::Done).await.unwrap(), 1);
    let outputs: Vec<String> = sandbox.files_under("out").iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert_eq!(outputs, (0..5).map(|i| format!("data:{i}")).collect::<Vec<_>>());
    // The collecting step saw all five written objects of the event, once.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sandbox.bucket().join("manifests/photo.json")).unwrap()).unwrap();
    assert_eq!(manifest["items"].as_array().unwrap().len(), 5, "{manifest}");
    assert_eq!(manifest["source"], "inbox/photo.txt");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_the_invocation_and_is_retried_then_dead_lettered() {
    let sandbox = Sandbox::new();
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "slow",
        r#"
name = "slow"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[limits]
timeout = "100ms"
[retry]
max_attempts = 2
backoff = "10ms..20ms"
[[step]]
name = "hang"
function = "test.probe"
sleep_ms = 60000
"#,
    );
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("slow").unwrap().executor.clone();
    sandbox.drop_file("inbox/a.txt", b"x");
    wait_for(Duration::from_secs(10), "dead-lettered after timeouts", || {
        stats.events_dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(probe.calls(), 2, "a timeout is retryable: max_attempts = 2");
    // Cancelled, not left running in the background.
    assert_eq!(probe.running.load(Ordering::SeqCst), 0);
    let records = std::fs::read_dir(sandbox.state().join("dead-letter/slow")).unwrap().count();
    assert_eq!(records, 1);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_error_is_retried_max_attempts_times_with_growing_delays() {
    let sandbox = Sandbox::new();
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "flaky",
        r#"
name = "flaky"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[retry]
max_attempts = 4
backoff = "40ms..10s"
dead_letter = "{bucket}/../dlq"
[[step]]
name = "flaky"
function = "test.probe"
label = "flaky"
fail_retryable = 100
"#,
    );
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("flaky").unwrap().executor.clone();
    sandbox.drop_file("inbox/a.txt", b"x");
    wait_for(WAIT, "dead-lettered", || stats.events_dead_lettered.load(Ordering::SeqCst) == 1).await;
    let times = probe.times("flaky");
    assert_eq!(times.len(), 4, "tried exactly max_attempts times");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0], "delays must grow: {gaps:?}");
    }
    assert!(gaps[0] >= Duration::from_millis(30), "first backoff ~40ms: {gaps:?}");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(sandbox.dir.path().join("dlq/flaky")).unwrap().next().unwrap().unwrap().path(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["attempts"], 4);
    assert_eq!(record["error_kind"], "retryable");
    assert_eq!(record["event"]["key"], "inbox/a.txt");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_succeeds_is_not_dead_lettered() {
    let sandbox = Sandbox::new();
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "recovers",
        r#"
name = "recovers"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[retry]
max_attempts = 3
backoff = "10ms..50ms"
[[step]]
name = "flaky"
function = "test.probe"
fail_retryable = 2
"#,
    );
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("recovers").unwrap().executor.clone();
    sandbox.drop_file("inbox/a.txt", b"x");
    wait_for(WAIT, "done", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    assert_eq!(probe.calls(), 3);
    assert_eq!(stats.events_dead_lettered.load(Ordering::SeqCst), 0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_not_retried_and_lands_in_the_dead_letter_bucket() {
    let sandbox = Sandbox::new();
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "rotten",
        r#"
name = "rotten"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[retry]
max_attempts = 5
dead_letter = "{bucket}/../dlq"
[[step]]
name = "check"
function = "test.probe"
fail_permanent = true
"#,
    );
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("rotten").unwrap().executor.clone();
    sandbox.drop_file("inbox/bad.txt", b"x");
    sandbox.drop_file("inbox/good-but-also-rotten.txt", b"y");
    wait_for(WAIT, "both dead-lettered", || stats.events_dead_lettered.load(Ordering::SeqCst) == 2).await;
    assert_eq!(probe.calls(), 2, "permanent errors are never retried");
    let dir = sandbox.dir.path().join("dlq/rotten");
    let mut errors: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            assert_eq!(v["attempts"], 1);
            assert_eq!(v["step"], "check");
            assert_eq!(v["error_kind"], "permanent");
            v["error"].as_str().unwrap().to_string()
        })
        .collect();
    errors.sort();
    assert_eq!(errors, ["inbox/bad.txt is rotten", "inbox/good-but-also-rotten.txt is rotten"]);
    // Dead-lettered objects count as handled: a restart does not retry them in a loop.
    assert_eq!(running.ledger.object_count("rotten", ObjectStatus::DeadLettered).await.unwrap(), 2);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_files_keeps_the_queue_bounded() {
    let sandbox = Sandbox::new();
    for i in 0..2000 {
        sandbox.drop_file(&format!("inbox/{i:04}.txt"), b"x");
    }
    let (registry, probe) = registry_with_probe();
    let file = sandbox.pipeline(
        "burst",
        r#"
name = "burst"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[limits]
concurrency = 2
queue = 4
[[step]]
name = "work"
function = "test.probe"
sleep_ms = 1
"#,
    );
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let pipeline = running.pipeline("burst").unwrap();
    let (stats, queue) = (pipeline.executor.clone(), pipeline.queue.clone());
    wait_for(Duration::from_secs(120), "2000 events done", || stats.events_done.load(Ordering::SeqCst) == 2000).await;
    running.stop().await.unwrap();
    assert_eq!(probe.calls(), 2000, "each file exactly once");
    let high_water = queue.high_water.load(Ordering::SeqCst);
    assert!(high_water <= 4, "queue held {high_water} events; its bound is 4");
    assert!(probe.max_running() <= 2);
}
