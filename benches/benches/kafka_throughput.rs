//! Kafka consumption: a raw rdkafka consumer against a weir pipeline with a no-op
//! function (commit after success, ledger records per event), on the same broker in
//! the same run — librdkafka's mock cluster on loopback (the real Kafka protocol).
//!
//! Both read the same `RECORDS` records of 100 bytes over `PARTITIONS` partitions from
//! the beginning, in their own consumer groups; each is timed from its first record
//! to its last (group join excluded). The goal is weir ≥ 90 % of raw.
//!
//! Run: `cargo bench -p weir-benches --bench kafka_throughput`

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir_engine::Engine;
use weir_functions::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Registry};

const RECORDS: usize = 100_000;
const PARTITIONS: i32 = 8;
const TOPIC: &str = "bench";

struct NoOp;

#[async_trait::async_trait]
impl Function for NoOp {
    async fn invoke(&self, _: Item, _: &Context) -> Result<Vec<Item>, FunctionError> {
        Ok(Vec::new())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let servers = cluster.bootstrap_servers();
    produce(&servers);

    let raw = raw_consumer(&servers).await;
    let weir = weir_pipeline(&servers).await;
    let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
    println!(
        "\nKafka consumption, {RECORDS} records × 100 B over {PARTITIONS} partitions (rdkafka mock cluster, loopback)"
    );
    println!("| consumer | time | records/s |");
    println!("|---|---|---|");
    println!("| raw rdkafka StreamConsumer | {:.2} s | {:.0} |", raw.as_secs_f64(), rate(raw));
    println!(
        "| weir pipeline (no-op function, ordering = none, commit after success, ledger) | {:.2} s | {:.0} |",
        weir.as_secs_f64(),
        rate(weir)
    );
    println!("weir ÷ raw = {:.2}", rate(weir) / rate(raw));
}

fn produce(servers: &str) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", servers).set("linger.ms", "10").create().expect("producer");
    let payload = [b'x'; 100];
    for i in 0..RECORDS {
        let key = format!("{i}");
        let mut record = BaseRecord::to(TOPIC).key(&key).payload(&payload[..]).partition(i as i32 % PARTITIONS);
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
    producer.flush(Duration::from_secs(60)).expect("flush");
}

async fn raw_consumer(servers: &str) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "raw")
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut first = None;
    for _ in 0..RECORDS {
        consumer.recv().await.expect("record");
        first.get_or_insert_with(Instant::now);
    }
    first.map(|t| t.elapsed()).unwrap_or_default()
}

async fn weir_pipeline(servers: &str) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"bench\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{servers}\"\ntopics = [\"{TOPIC}\"]\n\
             group = \"weir\"\nstart = \"earliest\"\nordering = \"none\"\n\
             [trigger.librdkafka]\n\"group.protocol\" = \"consumer\"\n\
             [limits]\nconcurrency = 64\n[[step]]\nname = \"nothing\"\nfunction = \"bench.noop\"\n"
        ),
    )
    .expect("pipeline file");
    let mut registry = Registry::builtin();
    registry.register(FunctionSpec::new("bench.noop", "does nothing", &[], |_: serde::de::IgnoredAny| {
        Ok::<_, BuildError>(NoOp)
    }));
    let engine = Engine::new(registry).state_dir(dir.path().join("state"));
    let running = engine.start(engine.load(&[file]).expect("pipeline")).await.expect("engine");
    let done = Arc::clone(&running.pipeline("bench").expect("pipeline").executor);
    while done.events_done.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = Instant::now();
    while done.events_done.load(Ordering::Relaxed) < RECORDS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = first.elapsed();
    running.stop().await.expect("stop");
    took
}
