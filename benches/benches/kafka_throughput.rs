//! Kafka consumption: raw rdkafka consumers against a weir pipeline with a no-op
//! function and commit after success, on the same broker in the same run —
//! librdkafka's mock cluster on loopback (the real Kafka protocol, in-process).
//!
//! Every consumer reads the same records from the beginning in a consumer group of its
//! own, timed from its first record to its last (the group join is left out). Rounds
//! alternate raw and weir so that both see the same machine. The goal is weir ≥ 90 %
//! of the faster raw consumer.
//!
//! Run: `cargo bench -p weir-benches --bench kafka_throughput`
//! (`KAFKA_BENCH_RECORDS`, `KAFKA_BENCH_PARTITIONS`, `KAFKA_BENCH_ROUNDS` to change the
//! defaults: 1,000,000 records of 100 bytes over 32 partitions, 2 rounds.)
//!
//! `KAFKA_BENCH_BROKERS=host:port` runs the same against a real broker instead (a topic
//! of its own is created; `benches/kafka-e2e.sh` does this with tansu).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_engine::Engine;
use weir_functions::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Registry};

/// The allocator the `weir` binary uses (engine/src/main.rs), for raw and weir alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The topic read: `bench` on the mock cluster, a fresh one on a real broker.
static TOPIC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn topic() -> &'static str {
    TOPIC.get().map(String::as_str).unwrap_or("bench")
}

struct NoOp;

#[async_trait::async_trait]
impl Function for NoOp {
    async fn invoke(&self, _: Item, _: &Context) -> Result<Vec<Item>, FunctionError> {
        Ok(Vec::new())
    }
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records = setting("KAFKA_BENCH_RECORDS", 1_000_000);
    let partitions = setting("KAFKA_BENCH_PARTITIONS", 32) as i32;
    let rounds = setting("KAFKA_BENCH_ROUNDS", 2);
    let (servers, _cluster, broker) = match std::env::var("KAFKA_BENCH_BROKERS") {
        Ok(brokers) => {
            let name = format!("bench-{}", std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_millis());
            create_topic(&brokers, &name, partitions).await;
            let _ = TOPIC.set(name);
            (brokers.clone(), None, format!("broker at {brokers}"))
        }
        Err(_) => {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic(topic(), partitions, 1).expect("topic");
            (cluster.bootstrap_servers(), Some(cluster), "rdkafka mock cluster, loopback".to_string())
        }
    };
    produce(&servers, records, partitions);

    // `KAFKA_BENCH_ONLY=weir` leaves the raw consumers out, `=partition` (or `none`,
    // `key`, `batch`) all but that weir run (for profiling).
    let only = std::env::var("KAFKA_BENCH_ONLY").unwrap_or_default();
    let only_weir = !only.is_empty();
    let wanted = |ordering: &str| only.is_empty() || only == "weir" || only == ordering;
    let mut rows = Vec::new();
    for round in 0..rounds {
        if !only_weir {
            rows.push(("raw rdkafka StreamConsumer (recv loop)", stream_consumer(&servers, records, round).await));
            rows.push(("raw rdkafka BaseConsumer (poll loop)", base_consumer(&servers, records, round)));
        }
        for (name, ordering) in [
            ("weir pipeline (no-op function per record, ordering = none, commit after success)", "none"),
            ("weir pipeline (no-op function per record, ordering = key)", "key"),
            ("weir pipeline (no-op function per record, ordering = partition)", "partition"),
        ] {
            if !wanted(ordering) {
                continue;
            }
            let extra = format!("ordering = \"{ordering}\"\n");
            let (took, committed) =
                weir_pipeline(&servers, records, partitions, &format!("{ordering}{round}"), &extra).await;
            assert_eq!(committed, records as i64, "weir committed every record");
            rows.push((name, took));
        }
        if !wanted("batch") {
            continue;
        }
        let batches = "ordering = \"none\"\nbatch_size = 500\nbatch_window = \"50ms\"\n";
        let (took, committed) = weir_pipeline(&servers, records, partitions, &format!("b{round}"), batches).await;
        assert_eq!(committed, records as i64, "weir committed every record");
        rows.push(("weir pipeline (no-op function per batch of 500, commit after success)", took));
    }
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    println!("\nKafka consumption, {records} records × 100 B over {partitions} partitions ({broker})");
    println!("| consumer | time | records/s |");
    println!("|---|---|---|");
    for (name, took) in &rows {
        println!("| {name} | {:.2} s | {:.0} |", took.as_secs_f64(), rate(*took));
    }
    let best =
        |pick: &dyn Fn(&str) -> bool| rows.iter().filter(|(n, _)| pick(n)).map(|(_, d)| rate(*d)).fold(0.0, f64::max);
    let raw = best(&|n| n.starts_with("raw"));
    let base = best(&|n| n.starts_with("raw rdkafka BaseConsumer"));
    for ordering in ["ordering = none", "ordering = key", "ordering = partition", "batch of 500"] {
        let weir = best(&|n| n.starts_with("weir") && n.contains(ordering));
        println!(
            "weir ({ordering}) {weir:.0} records/s: ÷ BaseConsumer = {:.2}, ÷ best raw ({raw:.0}) = {:.2}",
            weir / base,
            weir / raw
        );
    }
}

/// The mock cluster joins groups fastest with KIP-848's protocol; brokers such as tansu
/// speak only the classic one.
fn group_protocol() -> &'static str {
    if std::env::var_os("KAFKA_BENCH_BROKERS").is_some() {
        "classic"
    } else {
        "consumer"
    }
}

async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics(&[topic], &AdminOptions::new()).await.expect("create topic") {
        result.expect("topic created");
    }
}

fn produce(servers: &str, records: usize, partitions: i32) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", servers).set("linger.ms", "100").create().expect("producer");
    let payload = [b'x'; 100];
    for i in 0..records {
        let key = format!("{i}");
        let mut record = BaseRecord::to(topic()).key(&key).payload(&payload[..]).partition(i as i32 % partitions);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

fn consumer_config(servers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .set("group.protocol", group_protocol())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // What weir sets by default (see KafkaConfig::client_config), so that both
        // fetch the same way.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "10");
    config
}

async fn stream_consumer(servers: &str, records: usize, round: usize) -> Duration {
    let consumer: StreamConsumer =
        consumer_config(servers, &format!("{}-raw-stream-{round}", topic())).create().expect("consumer");
    consumer.subscribe(&[topic()]).expect("subscribe");
    let mut first = None;
    let mut cpu = 0.0;
    for _ in 0..records {
        consumer.recv().await.expect("record");
        first.get_or_insert_with(|| {
            cpu = cpu_seconds();
            Instant::now()
        });
    }
    let took = first.map(|t| t.elapsed()).unwrap_or_default();
    eprintln!("raw stream: {:.2} s of CPU over {:.2} s", cpu_seconds() - cpu, took.as_secs_f64());
    took
}

fn base_consumer(servers: &str, records: usize, round: usize) -> Duration {
    let consumer: BaseConsumer =
        consumer_config(servers, &format!("{}-raw-base-{round}", topic())).create().expect("consumer");
    consumer.subscribe(&[topic()]).expect("subscribe");
    let mut first = None;
    let mut seen = 0;
    while seen < records {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.expect("record");
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    first.map(|t| t.elapsed()).unwrap_or_default()
}

/// The time from the first record done to the last, and the sum of the offsets the
/// group committed afterwards.
async fn weir_pipeline(servers: &str, records: usize, partitions: i32, run: &str, extra: &str) -> (Duration, i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.toml");
    let group = format!("{}-weir-{run}", topic());
    let topic = topic();
    std::fs::write(
        &file,
        format!(
            "name = \"bench\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{servers}\"\ntopics = [\"{topic}\"]\n\
             group = \"{group}\"\nstart = \"earliest\"\n{extra}\
             [trigger.librdkafka]\n\"group.protocol\" = \"{}\"\n{}\n\
             [limits]\nconcurrency = 64\n[[step]]\nname = \"nothing\"\nfunction = \"bench.noop\"\n",
            group_protocol(),
            std::env::var("KAFKA_BENCH_LIBRDKAFKA").unwrap_or_default()
        ),
    )
    .expect("pipeline file");
    let mut registry = Registry::builtin();
    registry.register(FunctionSpec::new("bench.noop", "does nothing", &[], |_: serde::de::IgnoredAny| {
        Ok::<_, BuildError>(NoOp)
    }));
    let engine = Engine::new(registry).state_dir(dir.path().join("state"));
    let running = engine.start(engine.load(&[file]).expect("pipeline")).await.expect("engine");
    let stats = Arc::clone(&running.pipeline("bench").expect("pipeline").executor);
    let queue = Arc::clone(&running.pipeline("bench").expect("pipeline").queue);
    let done = || stats.records_done.load(Ordering::Relaxed);
    while done() == 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let first = Instant::now();
    let cpu = cpu_seconds();
    while done() < records as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = first.elapsed();
    eprintln!(
        "weir: {:.2} s of CPU over {:.2} s; fetching paused {} times, at most {} records held",
        cpu_seconds() - cpu,
        took.as_secs_f64(),
        queue.pauses.load(Ordering::Relaxed),
        queue.held_high_water.load(Ordering::Relaxed)
    );
    running.stop().await.expect("stop");
    (took, committed(servers, &group, partitions))
}

/// CPU time this process used so far (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn committed(servers: &str, group: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = consumer_config(servers, group).create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic(), p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}
