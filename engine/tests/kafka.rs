//! The Kafka trigger against librdkafka's mock cluster (the real Kafka protocol on
//! loopback, in-process): commit after success across a restart, poison records
//! dead-lettered without blocking their partition, ordering per partition.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kafka::Broker;
use common::{registry_with_probe, wait_for, Probe, Sandbox};
use weir_engine::{Engine, RunningEngine};

const WAIT: Duration = Duration::from_secs(60);

fn pipeline(servers: &str, ordering: &str, probe: &str) -> String {
    pipeline_with(servers, ordering, "", "concurrency = 8", probe)
}

/// A pipeline reading `uploads` in group `weir-test` into the probe; `librdkafka` and
/// `limits` are extra lines for those tables.
fn pipeline_with(servers: &str, ordering: &str, librdkafka: &str, limits: &str, probe: &str) -> String {
    format!(
        "name = \"records\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{servers}\"\ntopics = [\"uploads\"]\n\
         group = \"weir-test\"\nstart = \"earliest\"\nordering = \"{ordering}\"\ncommit_interval = \"100ms\"\n\
         [trigger.librdkafka]\n\"group.protocol\" = \"consumer\"\n{librdkafka}\n\
         [limits]\n{limits}\n[retry]\nmax_attempts = 1\n\
         [[step]]\nname = \"see\"\nfunction = \"test.probe\"\n{probe}\n"
    )
}

async fn start(sandbox: &Sandbox, text: &str) -> (RunningEngine, Arc<Probe>) {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("weir_engine=info").try_init();
    let file = sandbox.pipeline("records", text);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state()).grace(Duration::from_secs(10));
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    (running, probe)
}

fn seen(probe: &Probe) -> Vec<String> {
    probe.order.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_after_success_and_a_restart_resumes_from_them() {
    let broker = Broker::new("uploads", 2);
    let sandbox = Sandbox::new();
    let text = pipeline(&broker.servers(), "none", "sleep_ms = 5");
    broker.produce("uploads", 0, (0..20).map(|i| format!("a{i}"))).await;
    broker.produce("uploads", 1, (0..10).map(|i| format!("b{i}"))).await;

    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "30 records processed", || seen(&probe).len() >= 30).await;
    running.stop().await.unwrap();
    assert_eq!(broker.committed("weir-test", "uploads", 2), [20, 10], "everything finished is committed");
    let first: std::collections::BTreeSet<String> = seen(&probe).into_iter().collect();
    assert_eq!(first.len(), 30, "each record once");
    assert!(first.contains("uploads/0/19") && first.contains("uploads/1/9"));
    // Functions get the record in Lambda's Kafka event shape too.
    let events = probe.events.lock().unwrap().clone();
    let kafka = events.iter().find_map(|e| match e {
        weir_functions::TriggerEvent::Kafka(k) => k.records.get("uploads-1").map(|r| r[0].clone()),
        _ => None,
    });
    let record = kafka.expect("a Kafka event for partition 1");
    assert_eq!(record.topic.as_deref(), Some("uploads"));
    let value = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, record.value.unwrap()).unwrap();
    assert!(String::from_utf8(value).unwrap().starts_with('b'));

    // A restart in the same group gets only what was produced since.
    broker.produce("uploads", 1, (10..15).map(|i| format!("b{i}"))).await;
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "5 new records", || seen(&probe).len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await.unwrap();
    let mut second = seen(&probe);
    second.sort();
    assert_eq!(second, (10..15).map(|o| format!("uploads/1/{o}")).collect::<Vec<_>>());
    assert_eq!(broker.committed("weir-test", "uploads", 2), [20, 15]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_its_partition_moves_on() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..12).map(|i| format!("r{i}"))).await;
    let text = pipeline(&broker.servers(), "partition", "fail_keys_containing = \"uploads/0/4\"");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "12 records tried", || seen(&probe).len() >= 12).await;
    wait_for(WAIT, "the commit past the poison record", || broker.committed("weir-test", "uploads", 1) == [12]).await;
    running.stop().await.unwrap();
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    let source = &record["event"]["record"];
    assert_eq!(
        (source["topic"].as_str(), source["partition"].as_i64(), source["offset"].as_i64()),
        (Some("uploads"), Some(0), Some(4))
    );
    // The value travels with it (base64), so a redrive needs no broker.
    assert_eq!(source["value"].as_str(), Some("cjQ="), "{record}");
    let offset = |k: &String| k.rsplit('/').next().unwrap().parse::<i64>().unwrap();
    let after: Vec<String> = seen(&probe).into_iter().filter(|k| offset(k) > 4).collect();
    assert_eq!(after.len(), 7, "the records after the poison one ran: {after:?}");
}

/// A record over `max_input_bytes` never reaches a function: it is dead-lettered, named
/// with its size and the limit, and the records around it run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_max_input_bytes_is_dead_lettered_unread() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    let sizes = [10, 5000, 10];
    broker.produce("uploads", 0, sizes.iter().map(|&n| "x".repeat(n))).await;
    let text = pipeline_with(&broker.servers(), "partition", "", "max_input_bytes = \"1KiB\"", "");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "the commit past all three", || broker.committed("weir-test", "uploads", 1) == [3]).await;
    running.stop().await.unwrap();
    assert_eq!(seen(&probe), ["uploads/0/0", "uploads/0/2"], "the oversized record reached the function");
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    let error = letter["error"].as_str().unwrap();
    assert!(error.contains("uploads/0/1 is 5000 bytes, over max_input_bytes = 1024"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ordering_runs_each_partition_in_offset_order_one_at_a_time() {
    let broker = Broker::new("uploads", 3);
    let sandbox = Sandbox::new();
    for p in 0..3 {
        broker.produce("uploads", p, (0..8).map(|i| format!("p{p}-{i}"))).await;
    }
    let text = pipeline(&broker.servers(), "partition", "sleep_ms = 20");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "24 records", || seen(&probe).len() >= 24).await;
    running.stop().await.unwrap();
    assert!(probe.max_running() <= 3, "more than one record of a partition ran at once");
    let order = seen(&probe);
    for p in 0..3 {
        let offsets: Vec<i64> =
            order.iter().filter_map(|k| k.strip_prefix(&format!("uploads/{p}/")).map(|o| o.parse().unwrap())).collect();
        assert_eq!(offsets, (0..8).collect::<Vec<_>>(), "partition {p} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_passes_a_record_still_running() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..10).map(|i| format!("r{i}"))).await;
    // Offset 5 takes 3 s; everything after it finishes long before.
    let text = pipeline(&broker.servers(), "none", "slow_keys_ending = \"/0/5\"\nslow_ms = 3000");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "all 10 started", || seen(&probe).len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(probe.calls(), 10);
    assert_eq!(broker.committed("weir-test", "uploads", 1), [5], "6..9 finished, 5 did not: the commit waits at 5");
    wait_for(WAIT, "the commit after 5 finished", || broker.committed("weir-test", "uploads", 1) == [10]).await;
    running.stop().await.unwrap();
}

/// `commit_count`: commits go out as records finish, long before `commit_interval`;
/// what is left below the count waits for the interval, or for shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_out_every_commit_count_records() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..25).map(|i| format!("r{i}"))).await;
    let text = pipeline(&broker.servers(), "partition", "sleep_ms = 100")
        .replace("commit_interval = \"100ms\"", "commit_interval = \"1h\"\ncommit_count = 10");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "a commit after 10 records", || broker.committed("weir-test", "uploads", 1) == [10]).await;
    wait_for(WAIT, "a commit after 20 records", || broker.committed("weir-test", "uploads", 1) == [20]).await;
    wait_for(WAIT, "all 25 records", || seen(&probe).len() >= 25).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.committed("weir-test", "uploads", 1), [20], "5 finished records are below the count");
    running.stop().await.unwrap();
    assert_eq!(broker.committed("weir-test", "uploads", 1), [25], "flushed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_executor_pauses_fetching_without_leaving_the_group() {
    let broker = Broker::new("uploads", 2);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..3).map(|i| format!("a{i}"))).await;
    broker.produce("uploads", 1, (0..3).map(|i| format!("b{i}"))).await;
    // One record at a time, 1.5 s each, with librdkafka's poll deadline at 1 s: a
    // trigger that stopped polling while it waits for the executor would be thrown
    // out of the group and its records redelivered.
    let text = pipeline_with(
        &broker.servers(),
        "none",
        "\"max.poll.interval.ms\" = \"1000\"",
        "concurrency = 1\nqueue = 1\ntimeout = \"10s\"",
        "sleep_ms = 1500",
    );
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "6 records", || seen(&probe).len() >= 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await.unwrap();
    let counts = probe.key_counts();
    assert_eq!(counts.len(), 6);
    assert!(counts.values().all(|&n| n == 1), "records ran twice (the consumer left its group): {counts:?}");
    assert_eq!(broker.committed("weir-test", "uploads", 2), [3, 3]);
}

/// A slow function and a long backlog: the consumer pauses partitions instead of taking
/// the backlog into memory, and resumes them as records finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_left_in_the_broker_while_the_executor_is_busy() {
    let broker = Broker::new("uploads", 2);
    let sandbox = Sandbox::new();
    for p in 0..2 {
        broker.produce("uploads", p, (0..5000).map(|i| format!("r{i}"))).await;
    }
    let text = pipeline_with(&broker.servers(), "none", "", "concurrency = 2\nqueue = 1", "sleep_ms = 1");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "10,000 records", || probe.calls() >= 10_000).await;
    let queue = running.pipeline("records").unwrap().queue.clone();
    running.stop().await.unwrap();
    let held = queue.held_high_water.load(std::sync::atomic::Ordering::SeqCst);
    let pauses = queue.pauses.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("held at most {held} records, paused {pauses} times");
    assert!(pauses > 0, "fetching was never paused");
    // Two chunks' worth per partition at most, whatever librdkafka prefetched.
    assert!(held <= 2 * 2 * 500, "{held} records held in memory at once (of 10,000)");
    assert_eq!(broker.committed("weir-test", "uploads", 2), [5000, 5000]);
}

/// One partition behind a slow record and a full executor: what librdkafka fetches
/// beyond what a partition may hold is let go and fetched again later — each record
/// still runs once, in offset order (one at a time: concurrency 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_let_go_behind_a_slow_chunk_are_fetched_again_in_order() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, ["r0".to_string()]).await;
    // Offset 0 takes two seconds; once it runs, 4,000 records arrive, a poll round
    // brings up to 2,000 of them, and the executor has room for one more chunk only.
    let text = pipeline_with(
        &broker.servers(),
        "none",
        "",
        "concurrency = 1\nqueue = 1",
        "slow_keys_ending = \"/0/0\"\nslow_ms = 2000",
    );
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "the slow record to start", || probe.calls() >= 1).await;
    broker.produce("uploads", 0, (1..4000).map(|i| format!("r{i}"))).await;
    wait_for(WAIT, "4,000 records", || probe.calls() >= 4000).await;
    let queue = running.pipeline("records").unwrap().queue.clone();
    running.stop().await.unwrap();
    assert!(queue.refetches.load(std::sync::atomic::Ordering::SeqCst) > 0, "nothing was let go");
    let offsets: Vec<i64> = seen(&probe).iter().map(|k| k.rsplit('/').next().unwrap().parse().unwrap()).collect();
    assert_eq!(offsets, (0..4000).collect::<Vec<_>>(), "each record once, in order");
    assert_eq!(broker.committed("weir-test", "uploads", 1), [4000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_are_retried_without_losing_records() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..10).map(|i| format!("r{i}"))).await;
    // The next fetches and commits fail with retriable errors.
    let errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3];
    broker.cluster.request_errors(RDKafkaApiKey::Fetch, &errors);
    broker
        .cluster
        .request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3]);
    let text = pipeline(&broker.servers(), "partition", "");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "10 records", || seen(&probe).len() >= 10).await;
    wait_for(WAIT, "the commit", || broker.committed("weir-test", "uploads", 1) == [10]).await;
    // And with the broker gone for a while: records produced meanwhile arrive after.
    broker.cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.cluster.broker_up(1).unwrap();
    broker.produce("uploads", 0, (10..15).map(|i| format!("r{i}"))).await;
    wait_for(WAIT, "15 records", || seen(&probe).len() >= 15).await;
    wait_for(WAIT, "the commit", || broker.committed("weir-test", "uploads", 1) == [15]).await;
    running.stop().await.unwrap();
    let counts = probe.key_counts();
    assert_eq!(counts.len(), 15);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_runs_keys_side_by_side_and_each_key_in_order() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    // Offsets 0..12 with keys k0, k1, k2, k0, k1, …
    for i in 0..12 {
        broker.produce_keyed("uploads", 0, &format!("k{}", i % 3), &format!("r{i}")).await;
    }
    let text = pipeline(&broker.servers(), "key", "sleep_ms = 50");
    let (running, probe) = start(&sandbox, &text).await;
    wait_for(WAIT, "12 records", || seen(&probe).len() >= 12).await;
    running.stop().await.unwrap();
    assert!(probe.max_running() > 1, "different keys should run side by side");
    assert!(probe.max_running() <= 3, "two records of one key ran at once");
    let order: Vec<i64> = seen(&probe).iter().map(|k| k.rsplit('/').next().unwrap().parse().unwrap()).collect();
    for key in 0..3 {
        let of_key: Vec<i64> = order.iter().copied().filter(|o| o % 3 == key).collect();
        assert_eq!(of_key, (0..12).filter(|o| o % 3 == key).collect::<Vec<_>>(), "key k{key} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_one_leaving_hands_over_without_loss() {
    let broker = Broker::new("uploads", 4);
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let text = pipeline(&broker.servers(), "partition", "sleep_ms = 10");
    let (first, probe_a) = start(&a, &text).await;
    let (second, probe_b) = start(&b, &text).await;
    // Produce a round to every partition every 100 ms until both members got work
    // (the second joins while the first already holds everything).
    let mut produced = 0;
    let mut round = 0;
    let started = std::time::Instant::now();
    while seen(&probe_a).is_empty() || seen(&probe_b).is_empty() {
        assert!(started.elapsed() < WAIT, "the partitions were never shared");
        for p in 0..4 {
            broker.produce("uploads", p, [format!("{round}")]).await;
            produced += 1;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = || seen(&probe_a).len() + seen(&probe_b).len();
    wait_for(WAIT, "the first rounds", || total() >= produced).await;

    // The first member leaves (graceful stop: it commits what it finished); the second
    // takes over its partitions and gets what is produced next.
    first.stop().await.unwrap();
    for round in round..round + 10 {
        for p in 0..4 {
            broker.produce("uploads", p, [format!("{round}")]).await;
            produced += 1;
        }
    }
    wait_for(WAIT, "every record", || {
        let mut all: Vec<String> = seen(&probe_a);
        all.extend(seen(&probe_b));
        all.sort();
        all.dedup();
        all.len() >= produced
    })
    .await;
    second.stop().await.unwrap();
    let mut all: Vec<String> = seen(&probe_a);
    all.extend(seen(&probe_b));
    let runs = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), produced, "every record processed");
    assert_eq!(runs, produced, "a graceful hand-over processes nothing twice");
    let per_partition = (round + 10) as i64;
    assert_eq!(broker.committed("weir-test", "uploads", 4), [per_partition; 4]);
}

/// (record, status) of every record a member's ledger has a run for. A run covers a
/// chunk of records, `topic/partition/first..=last`.
fn done_runs(state: &std::path::Path) -> Vec<(String, String)> {
    let Ok(db) = rusqlite::Connection::open(state.join("ledger.db")) else { return Vec::new() };
    let Ok(mut stmt) = db.prepare("SELECT source, status FROM runs") else { return Vec::new() };
    let rows: Vec<(String, String)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    let mut records = Vec::new();
    for (source, status) in rows {
        let (partition, offsets) = source.rsplit_once('/').unwrap();
        let (first, last) = match offsets.split_once("..=") {
            Some((first, last)) => (first.parse::<i64>().unwrap(), last.parse::<i64>().unwrap()),
            None => (offsets.parse().unwrap(), offsets.parse().unwrap()),
        };
        records.extend((first..=last).map(|o| (format!("{partition}/{o}"), status.clone())));
    }
    records
}

/// Two `weir run` processes in one group over 6 partitions; one is killed with SIGKILL
/// mid-stream. Every record ends up processed; the only records processed twice are
/// ones the killed member had taken and not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_two_processes_one_killed_loses_nothing() {
    use std::process::Command;
    let broker = Broker::new("uploads", 6);
    let sandbox = Sandbox::new();
    let text = format!(
        "name = \"records\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"uploads\"]\n\
         group = \"scale\"\nstart = \"earliest\"\nordering = \"none\"\ncommit_interval = \"300ms\"\n\
         [trigger.librdkafka]\n\"group.protocol\" = \"consumer\"\n\
         [[step]]\nname = \"store\"\nfunction = \"object.put\"\nurl = \"{{bucket}}\"\nkey = \"out/{{key}}\"\n",
        broker.servers()
    );
    let file = sandbox.pipeline("records", &text);
    let (mut a, mut b) = (
        sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &file, "state-a"),
        sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &file, "state-b"),
    );
    let (state_a, state_b) = (sandbox.dir.path().join("state-a"), sandbox.dir.path().join("state-b"));

    // A steady stream until both members are working, then A is killed, then more.
    let mut produced = 0;
    let started = std::time::Instant::now();
    let mut killed = false;
    while produced < 1800 {
        for p in 0..6 {
            broker.produce("uploads", p, [format!("{produced}")]).await;
            produced += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let both = !done_runs(&state_a).is_empty() && !done_runs(&state_b).is_empty();
        if !killed && both && produced >= 600 {
            a.kill().unwrap(); // SIGKILL
            a.wait().unwrap();
            killed = true;
        }
        assert!(started.elapsed() < WAIT * 2, "the members never both got work");
    }
    assert!(killed, "both members never got work while records were produced");
    let outputs = || sandbox.files_under("out/uploads").len();
    let deadline = std::time::Instant::now() + WAIT * 2;
    while outputs() < produced && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(outputs(), produced, "committed: {:?}", broker.committed("scale", "uploads", 6));
    let _ = Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    b.wait().unwrap();
    assert_eq!(broker.committed("scale", "uploads", 6), [produced as i64 / 6; 6], "all committed at the end");
    let runs_a = done_runs(&state_a);
    let runs_b = done_runs(&state_b);
    let done_b: Vec<&String> = runs_b.iter().filter(|(_, s)| s == "done").map(|(k, _)| k).collect();
    let unique_b: std::collections::BTreeSet<&String> = done_b.iter().copied().collect();
    assert_eq!(unique_b.len(), done_b.len(), "the surviving member processed a record twice");
    let taken_by_a: std::collections::BTreeSet<&String> = runs_a.iter().map(|(k, _)| k).collect();
    let done_a = runs_a.iter().filter(|(_, s)| s == "done").count();
    let twice: Vec<&&String> = unique_b.iter().filter(|k| taken_by_a.contains(**k)).collect();
    assert!(done_a > 0, "the killed member did work");
    assert!(twice.len() < taken_by_a.len(), "everything A took was redone: its commits never landed");
    eprintln!(
        "{produced} records: A finished {done_a} before SIGKILL, B {} ; {} redone after the kill (A's uncommitted)",
        done_b.len(),
        twice.len()
    );
}

/// A member joining takes a partition from one that is busy with it: the revoke waits
/// (up to `rebalance_grace`) for the records in flight, commits them, and only then
/// hands the partition over — so nothing runs twice. Without the wait the new owner
/// would start from the last commit and run the in-flight records again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_finishes_its_records_in_flight_before_the_hand_over() {
    let broker = Broker::new("uploads", 2);
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for p in 0..2 {
        broker.produce("uploads", p, (0..3).map(|i| format!("first-{i}"))).await;
    }
    let text = pipeline(&broker.servers(), "partition", "sleep_ms = 700")
        .replace("commit_interval = \"100ms\"", "commit_interval = \"100ms\"\nrebalance_grace = \"20s\"");
    let (first, probe_a) = start(&a, &text).await;
    wait_for(WAIT, "the first member busy on both partitions", || {
        probe_a.running.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    let (second, probe_b) = start(&b, &text).await;
    // Records produced from now on go to whichever member owns their partition.
    let mut produced = 6;
    let started = std::time::Instant::now();
    while seen(&probe_b).is_empty() {
        assert!(started.elapsed() < WAIT, "the second member never got a partition");
        for p in 0..2 {
            broker.produce("uploads", p, [format!("later-{produced}")]).await;
            produced += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total = || {
        let mut all = seen(&probe_a);
        all.extend(seen(&probe_b));
        all.sort();
        all.dedup();
        all.len()
    };
    wait_for(WAIT, "every record", || total() >= produced).await;
    second.stop().await.unwrap();
    first.stop().await.unwrap();
    let mut counts = probe_a.key_counts();
    for (key, n) in probe_b.key_counts() {
        *counts.entry(key).or_default() += n;
    }
    assert_eq!(counts.len(), produced);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records run twice across the hand-over: {twice:?}");
}

/// `/metrics` shows the consumer lag per partition from librdkafka's statistics: up
/// while a backlog is worked through, back to 0 once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_lag_per_partition_rise_and_fall() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    let text = pipeline_with(
        &broker.servers(),
        "partition",
        "\"statistics.interval.ms\" = \"100\"",
        "concurrency = 1",
        "sleep_ms = 100",
    );
    broker.produce("uploads", 0, (0..30).map(|i| format!("r{i}"))).await;
    let file = sandbox.pipeline("records", &text);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry)
        .state_dir(sandbox.state())
        .listen("127.0.0.1:0".parse().unwrap())
        .serve(weir_engine::Serve::Always);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let addr = running.http_addr.unwrap();
    let lag = || async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let prefix = "weir_kafka_consumer_lag{pipeline=\"records\",topic=\"uploads\",partition=\"0\"} ";
        text.lines().find_map(|line| line.strip_prefix(prefix)?.parse::<f64>().ok())
    };
    let mut highest = 0.0f64;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = lag().await;
        highest = highest.max(now.unwrap_or(0.0));
        if seen(&probe).len() == 30 && highest > 0.0 && now == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lag {now:?}, highest {highest}, {} seen", seen(&probe).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(highest >= 5.0, "a backlog of 30 at 10 a second showed a lag of {highest} at most");
    running.stop().await.unwrap();
}
