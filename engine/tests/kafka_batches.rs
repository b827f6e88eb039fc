//! `batch_size` / `batch_window`: the first step takes a partition's records as one
//! batch, like Lambda's Kafka event source, and only the records it reports as failed
//! (a partial batch failure) are retried or dead-lettered.

mod common;

use std::time::Duration;

use common::kafka::Broker;
use common::{registry_with_probe, wait_for, Sandbox};
use weir_engine::Engine;

const WAIT: Duration = Duration::from_secs(60);

fn pipeline(servers: &str, probe: &str) -> String {
    format!(
        "name = \"batches\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{servers}\"\ntopics = [\"uploads\"]\n\
         group = \"weir-batches\"\nstart = \"earliest\"\nordering = \"partition\"\ncommit_interval = \"100ms\"\n\
         batch_size = 8\nbatch_window = \"300ms\"\n\
         [trigger.librdkafka]\n\"group.protocol\" = \"consumer\"\n\
         [retry]\nmax_attempts = 3\nbackoff = \"10ms..50ms\"\n\
         [[step]]\nname = \"batch\"\nfunction = \"test.probe\"\n{probe}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_failed_records_of_a_batch_are_retried_or_dead_lettered() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("weir_engine=info").try_init();
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..20).map(|i| format!("r{i}"))).await;
    // Record 5 fails for good; record 12 fails once, then succeeds.
    let text = pipeline(
        &broker.servers(),
        "batch_fail_containing = \"uploads/0/5\"\nbatch_flaky_containing = \"uploads/0/12\"",
    );
    let file = sandbox.pipeline("batches", &text);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    wait_for(WAIT, "the commit past all 20", || broker.committed("weir-batches", "uploads", 1) == [20]).await;
    running.stop().await.unwrap();

    let batches = probe.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 8), "batch sizes: {batches:?}");
    assert!(batches.iter().any(|b| b.len() > 1), "records were batched: {batches:?}");
    // The retry of record 12 is a batch of just record 12: the others are not run again.
    let retry: Vec<&Vec<String>> = batches.iter().filter(|b| b.contains(&"uploads/0/12".to_string())).collect();
    assert_eq!(retry.len(), 2, "record 12 ran twice: {batches:?}");
    assert_eq!(retry[1], &vec!["uploads/0/12".to_string()], "its retry held it alone");
    let counts = probe.key_counts();
    assert_eq!(counts.len(), 20);
    for (key, n) in &counts {
        let expected = if key == "uploads/0/12" { 2 } else { 1 };
        assert_eq!(*n, expected, "{key} ran {n} times");
    }
    // Record 5 failed permanently: one dead letter, for it alone, never retried.
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    assert_eq!(letter["event"]["record"]["offset"], 5);
    assert_eq!(letter["attempts"], 1);
    assert!(letter["error"].as_str().unwrap().contains("rotten"), "{letter}");

    // The function saw each batch as Lambda's Kafka event: all its records, in order.
    let events = probe.events.lock().unwrap().clone();
    let first = match &events[0] {
        weir_functions::TriggerEvent::Kafka(event) => event.records["uploads-0"].clone(),
        other => panic!("not a Kafka event: {other:?}"),
    };
    assert_eq!(first.len(), batches[0].len());
    let offsets: Vec<i64> = first.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..first.len() as i64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_its_window_to_fill() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    let text = pipeline(&broker.servers(), "batch_fail_containing = \"never\"")
        .replace("batch_window = \"300ms\"", "batch_window = \"2s\"");
    let file = sandbox.pipeline("batches", &text);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    // A first record, alone in its window, once the consumer has joined its group.
    broker.produce("uploads", 0, ["r0".to_string()]).await;
    wait_for(WAIT, "the first record", || !probe.key_counts().is_empty()).await;
    // Then three, one by one, well inside one window: they go as one batch.
    for i in 1..4 {
        broker.produce("uploads", 0, [format!("r{i}")]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(WAIT, "4 records", || probe.key_counts().len() >= 4).await;
    running.stop().await.unwrap();
    let batches = probe.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "one batch per window: {batches:?}");
    assert_eq!(batches[1], ["uploads/0/1", "uploads/0/2", "uploads/0/3"]);
}
