//! The Kafka scale-out scenario against a real, separate broker rather than the
//! in-process mock: two `weir run` members in one group, one killed with SIGKILL
//! mid-stream, a poison record on a dead-letter topic, then a restart.
//!
//! Needs a broker: `benches/kafka-e2e.sh` starts tansu (SQLite storage) on loopback and
//! runs `WEIR_TEST_KAFKA_BROKERS=127.0.0.1:19092 cargo test --test kafka_e2e -- --ignored`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Sandbox;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 6;
const WAIT: Duration = Duration::from_secs(180);

fn brokers() -> String {
    std::env::var("WEIR_TEST_KAFKA_BROKERS")
        .expect("WEIR_TEST_KAFKA_BROKERS=host:port of a running broker (benches/kafka-e2e.sh starts tansu)")
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await.unwrap() {
        result.unwrap();
    }
}

async fn produce(producer: &FutureProducer, topic: &str, from: usize, to: usize, poison: usize) {
    let sends: Vec<_> = (from..to)
        .map(|i| {
            let value = if i == poison { "not json".to_string() } else { format!("{{\"n\":{i}}}") };
            (i, format!("k{i}"), value)
        })
        .collect();
    let futures = sends.iter().map(|(i, key, value)| {
        let record = FutureRecord::to(topic).partition(*i as i32 % PARTITIONS).key(key).payload(value);
        async move { producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap() }
    });
    futures::future::join_all(futures).await;
}

fn committed(brokers: &str, group: &str, topic: &str) -> Vec<i64> {
    common::kafka::committed_offsets(brokers, group, topic, PARTITIONS)
}

/// The values of the records on partition 0 of `topic`. tansu's high watermark can lag
/// the last records, so reading goes on until the topic has been quiet for 3 s.
fn dead_letters(brokers: &str, topic: &str) -> Vec<String> {
    read_topic(brokers, topic).into_iter().map(|(_, value)| value).collect()
}

/// The keys and values of the records on partition 0 of `topic`.
fn read_topic(brokers: &str, topic: &str) -> Vec<(String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = Instant::now();
    while ((found.len() as i64) < high || quiet_since.elapsed() < Duration::from_secs(3)) && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            quiet_since = Instant::now();
            let text = |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
            found.push((text(message.key()), text(message.payload())));
        }
    }
    found
}

fn outputs(sandbox: &Sandbox, topic: &str) -> usize {
    sandbox.files_under(&format!("out/{topic}")).len()
}

/// Records in the runs of a member's ledger (a run covers a chunk: `t/p/first..=last`).
fn records_run(sandbox: &Sandbox, state: &str) -> Vec<String> {
    let Ok(db) = rusqlite::Connection::open(sandbox.dir.path().join(state).join("ledger.db")) else { return vec![] };
    let Ok(mut stmt) = db.prepare("SELECT source FROM runs WHERE status IN ('done', 'dead_letter')") else {
        return vec![];
    };
    let sources: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let mut records = Vec::new();
    for source in sources {
        let (partition, offsets) = source.rsplit_once('/').unwrap();
        let (first, last) = offsets.split_once("..=").unwrap_or((offsets, offsets));
        let (first, last): (i64, i64) = (first.parse().unwrap(), last.parse().unwrap());
        records.extend((first..=last).map(|o| format!("{partition}/{o}")));
    }
    records
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka broker: WEIR_TEST_KAFKA_BROKERS (benches/kafka-e2e.sh starts tansu)"]
async fn two_members_one_killed_then_a_restart_on_a_real_broker() {
    let brokers = brokers();
    let stamp = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis();
    let (topic, dlq, group) = (format!("e2e-{stamp}"), format!("e2e-{stamp}.dlq"), format!("e2e-{stamp}"));
    create_topics(&brokers, &[(&topic, PARTITIONS), (&dlq, 1)]).await;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let poison = 601;

    let sandbox = Sandbox::new();
    let file = sandbox.pipeline(
        "e2e",
        &format!(
            "name = \"e2e\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\
             group = \"{group}\"\nstart = \"earliest\"\nformat = \"json\"\nordering = \"partition\"\n\
             commit_interval = \"300ms\"\n[trigger.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\
             [retry]\nmax_attempts = 1\ndead_letter = \"kafka://{dlq}\"\n\
             [[step]]\nname = \"store\"\nfunction = \"object.put\"\nurl = \"{{bucket}}\"\nkey = \"out/{{key}}.json\"\n"
        ),
    );
    let (mut a, mut b) = (
        sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &file, "a"),
        sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &file, "b"),
    );
    // A stream of records; the first member is killed once both are at work.
    let (mut produced, mut killed) = (0, false);
    let mut committed_at_kill = Vec::new();
    let started = Instant::now();
    while !killed || produced < 1200 {
        assert!(started.elapsed() < WAIT, "the members never both got work");
        produce(&producer, &topic, produced, produced + 60, poison).await;
        produced += 60;
        let both = records_run(&sandbox, "a").len() >= 120 && !records_run(&sandbox, "b").is_empty();
        if !killed && both && produced >= 660 {
            // Past a commit interval, so that some of its work is committed.
            tokio::time::sleep(Duration::from_millis(600)).await;
            committed_at_kill = committed(&brokers, &group, &topic);
            a.kill().unwrap(); // SIGKILL
            a.wait().unwrap();
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = produced;
    wait_until("every record's output", || outputs(&sandbox, &topic) >= total - 1);
    wait_until("every offset committed", || {
        committed(&brokers, &group, &topic) == vec![(total as i64) / PARTITIONS as i64; PARTITIONS as usize]
    });
    let _ = Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    assert!(b.wait().unwrap().success(), "a SIGTERM stops a member cleanly");

    // Every record but the poison one has its output, with its own content.
    assert_eq!(outputs(&sandbox, &topic), total - 1);
    for i in [0, 1, 599, 600, 1199] {
        let path = sandbox.bucket().join(format!("out/{topic}/{}/{}.json", i % 6, i / 6));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{{\"n\":{i}}}"), "{}", path.display());
    }
    // The poison record is on the dead-letter topic (twice at most: once per member,
    // if the killed one wrote it without committing past it).
    let letters = dead_letters(&brokers, &dlq);
    assert!(!letters.is_empty() && letters.len() <= 2, "{letters:?}");
    assert!(letters.iter().all(|l| l == "not json"), "{letters:?}");
    // Only the killed member's uncommitted records ran twice.
    let (run_a, run_b) = (records_run(&sandbox, "a"), records_run(&sandbox, "b"));
    let unique_b: BTreeSet<&String> = run_b.iter().collect();
    assert_eq!(unique_b.len(), run_b.len(), "the surviving member ran a record twice");
    let twice: Vec<&String> = run_b.iter().filter(|r| run_a.contains(r)).collect();
    for record in &twice {
        let mut parts = record.rsplit('/');
        let offset: i64 = parts.next().unwrap().parse().unwrap();
        let partition: usize = parts.next().unwrap().parse().unwrap();
        assert!(offset >= committed_at_kill[partition], "{record} ran twice though committed before the kill");
    }
    let twice = twice.len();
    eprintln!(
        "{total} records: the killed member ran {}, the survivor {}, {twice} run by both",
        run_a.len(),
        run_b.len()
    );
    assert!(twice < run_a.len(), "everything the killed member ran was run again");

    // A restart runs only what was produced since.
    let before = records_run(&sandbox, "b").len();
    produce(&producer, &topic, total, total + 60, usize::MAX).await;
    let mut b = sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &file, "b");
    wait_until("the new records", || outputs(&sandbox, &topic) >= total - 1 + 60);
    wait_until("their commits", || {
        committed(&brokers, &group, &topic) == vec![(total as i64 + 60) / PARTITIONS as i64; PARTITIONS as usize]
    });
    let _ = Command::new("kill").args(["-TERM", &b.id().to_string()]).status();
    b.wait().unwrap();
    assert_eq!(records_run(&sandbox, "b").len() - before, 60, "the restart ran the 60 new records and no other");
}

/// A broker of its own behind the fault proxy: tansu listens on one port and tells
/// clients to come through the proxy, so every connection — fetches, commits,
/// produces — crosses it.
struct ProxiedBroker {
    proxy: common::proxy::Proxy,
    tansu: std::process::Child,
    _dir: tempfile::TempDir,
}

impl ProxiedBroker {
    async fn start() -> ProxiedBroker {
        let tansu =
            std::env::var("WEIR_TEST_TANSU").expect("WEIR_TEST_TANSU=path of a tansu binary (benches/kafka-e2e.sh)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let proxy = common::proxy::Proxy::start(target).await;
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(tansu)
            .args(["broker", "--listener-url", &format!("tcp://{target}")])
            .args(["--advertised-listener-url", &format!("tcp://{}", proxy.addr), "--storage-engine", "memory://"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(target).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        ProxiedBroker { proxy, tansu: child, _dir: dir }
    }

    fn brokers(&self) -> String {
        self.proxy.addr.to_string()
    }
}

impl Drop for ProxiedBroker {
    fn drop(&mut self) {
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
    }
}

/// Every connection to the broker is cut, and new ones refused, for 60 s (or
/// `WEIR_TEST_OUTAGE_SECS`) while records are being processed, with a policy that
/// dead-letters an event after one failure: fetches, commits and the step that
/// produces a receipt all fail, the pipeline waits, and once the broker is back every
/// record has its output and its receipt, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tansu: WEIR_TEST_TANSU (benches/kafka-e2e.sh)"]
async fn a_broker_outage_mid_stream_is_waited_out() {
    let broker = ProxiedBroker::start().await;
    let brokers = broker.brokers();
    let (topic, receipts) = ("outage", "outage.receipts");
    create_topics(&brokers, &[(topic, PARTITIONS), (receipts, 1)]).await;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    const N: usize = 600;
    produce(&producer, topic, 0, N / 2, usize::MAX).await;

    let sandbox = Sandbox::new();
    let file = sandbox.pipeline(
        "outage",
        &format!(
            "name = \"outage\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\
             group = \"outage\"\nstart = \"earliest\"\nformat = \"json\"\ncommit_interval = \"300ms\"\n\
             [limits]\nconcurrency = 4\n[retry]\nmax_attempts = 1\n\
             [[step]]\nname = \"store\"\nfunction = \"test.sleep\"\n\
             [[step]]\nname = \"receipt\"\nafter = \"store\"\nfunction = \"kafka.produce\"\nbrokers = \"{brokers}\"\n\
             topic = \"{receipts}\"\nkey = \"{{key}}\"\n"
        )
        .replace(
            "function = \"test.sleep\"",
            "function = \"object.put\"\nurl = \"{bucket}\"\nkey = \"out/{key}.json\"",
        ),
    );
    let mut member = sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &file, "state");
    wait_until("the stream under way", || outputs(&sandbox, topic) >= 60);
    broker.proxy.set(common::proxy::Fault::Drop);
    let outage = std::env::var("WEIR_TEST_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    tokio::time::sleep(Duration::from_secs(outage)).await;
    broker.proxy.set(common::proxy::Fault::None);
    produce(&producer, topic, N / 2, N, usize::MAX).await;
    let recovered = std::panic::catch_unwind(|| {
        wait_until("every record's output", || outputs(&sandbox, topic) >= N);
        wait_until("every offset committed", || {
            committed(&brokers, "outage", topic) == vec![(N / PARTITIONS as usize) as i64; PARTITIONS as usize]
        });
    });
    if recovered.is_err() {
        let _ = member.kill();
        panic!("{} of {N} outputs; weir's log ends:\n{}", outputs(&sandbox, topic), sandbox.log_tail("state", 40));
    }
    let _ = Command::new("kill").args(["-TERM", &member.id().to_string()]).status();
    assert!(member.wait().unwrap().success(), "a SIGTERM stops the member cleanly after the outage");

    assert!(broker.proxy.faulted.load(std::sync::atomic::Ordering::SeqCst) > 0, "the outage cut connections");
    assert_eq!(outputs(&sandbox, topic), N);
    let letters: Vec<String> = std::fs::read_dir(sandbox.state().join("dead-letter/outage"))
        .map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect())
        .unwrap_or_default();
    assert!(
        letters.is_empty(),
        "the outage dead-lettered {} records; the first: {}",
        letters.len(),
        letters[0].replace('\n', " ")
    );
    // A receipt's key is its record's `topic/partition/offset`.
    let receipts_seen = read_topic(&brokers, receipts);
    let unique: BTreeSet<&String> = receipts_seen.iter().map(|(key, _)| key).collect();
    let missing: Vec<usize> = (0..N)
        .filter(|i| !unique.contains(&format!("{topic}/{}/{}", i % PARTITIONS as usize, i / PARTITIONS as usize)))
        .collect();
    assert!(missing.is_empty(), "{} receipts, no receipt for {missing:?}", receipts_seen.len());
    eprintln!(
        "{N} records through a {outage} s broker outage: 0 dead letters, {} receipts ({} repeated)",
        receipts_seen.len(),
        receipts_seen.len() - N
    );
}
