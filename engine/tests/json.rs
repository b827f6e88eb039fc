//! `json.transform`, `json.split` and `table.split` through the engine, and Kafka
//! batches of JSON records written as Parquet objects by `table.convert` (the Kafka
//! Connect S3 sink job), a redelivered batch overwriting its own object.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::kafka::Broker;
use common::{wait_for, Sandbox};
use weir_engine::Engine;
use weir_functions::Registry;

const WAIT: Duration = Duration::from_secs(60);

fn engine(sandbox: &Sandbox) -> Engine {
    Engine::new(Registry::builtin()).state_dir(sandbox.state()).grace(Duration::from_secs(10))
}

fn events(n: usize) -> String {
    (0..n)
        .map(|i| {
            let delay = if i % 5 == 0 { "null".to_string() } else { (i % 120).to_string() };
            format!(
                "{{\"carrier\":\"{}\",\"flight\":{i},\"dep_delay\":{delay},\"distance\":{},\"air_time\":{}}}\n",
                ["UA", "AA"][i % 2],
                100 + i,
                10 + i % 50
            )
        })
        .collect()
}

const TRANSFORM: &str = r#"
name = "jq"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
include = ["*.jsonl"]
settle = "200ms"
[retry]
max_attempts = 1
dead_letter = "{bucket}/dlq"
[[step]]
name = "late"
function = "json.transform"
filter = "select(.dep_delay != null and .dep_delay > 60) | {carrier, flight, delay: .dep_delay, speed: (.distance / .air_time * 60 | floor)}"
key = "late/{stem}.jsonl"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jq_filter_turns_json_lines_into_json_lines_and_a_bad_line_is_named() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("jq", TRANSFORM);
    sandbox.drop_file("inbox/flights.jsonl", events(1000).as_bytes());
    sandbox.drop_file("inbox/broken.jsonl", b"{\"dep_delay\": 61, \"distance\": 1, \"air_time\": 1}\n\n{not json\n");
    sandbox.drop_file("inbox/typed.jsonl", b"{\"dep_delay\": 61, \"distance\": \"far\", \"air_time\": 1}\n");
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("jq").unwrap().executor.clone();
    wait_for(WAIT, "all three through", || {
        stats.events_done.load(Ordering::SeqCst) + stats.events_dead_lettered.load(Ordering::SeqCst) == 3
    })
    .await;
    running.stop().await.unwrap();

    let out = std::fs::read_to_string(sandbox.bucket().join("late/flights.jsonl")).unwrap();
    let got: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected: Vec<serde_json::Value> = (0..1000usize)
        .filter(|i| i % 5 != 0 && i % 120 > 60)
        .map(|i| {
            let speed = ((100 + i) as f64 / (10 + i % 50) as f64 * 60.0).floor() as i64;
            let carrier = ["UA", "AA"][i % 2];
            serde_json::json!({"carrier": carrier, "flight": i, "delay": i % 120, "speed": speed})
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(stats.events_dead_lettered.load(Ordering::SeqCst), 2);
    let mut letters = Vec::new();
    for entry in common::files_in(&sandbox.bucket().join("dlq")) {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(entry).unwrap()).unwrap();
        letters.push(record["error"].as_str().unwrap().to_string());
    }
    letters.sort();
    assert!(letters[0].starts_with("inbox/broken.jsonl line 3: not JSON"), "{letters:?}");
    assert!(letters[1].starts_with("inbox/typed.jsonl line 1: jq error"), "{letters:?}");
    assert!(!sandbox.bucket().join("late/broken.jsonl").exists(), "a failed input leaves no output");
}

const SPLITS: &str = r#"
name = "splits"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
settle = "200ms"
[limits]
concurrency = 2
[[step]]
name = "lines"
function = "json.split"
[[step]]
name = "line"
after = "lines"
function = "object.put"
key = "lines/{stem}/{attr.line}.json"
[[step]]
name = "chunks"
function = "table.split"
rows = 100
format = "csv"
[[step]]
name = "chunk"
after = "chunks"
function = "object.put"
key = "chunks/{stem}/{attr.chunk}.csv"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_fan_out_one_item_per_line_and_per_chunk() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("splits", SPLITS);
    sandbox.drop_file("inbox/e.jsonl", events(250).as_bytes());
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("splits").unwrap().executor.clone();
    wait_for(WAIT, "split", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    running.stop().await.unwrap();
    let lines = sandbox.files_under("lines/e");
    assert_eq!(lines.len(), 250);
    let seventh: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sandbox.bucket().join("lines/e/7.json")).unwrap()).unwrap();
    assert_eq!(seventh["flight"], 6);
    let chunks = sandbox.files_under("chunks/e");
    assert_eq!(chunks.len(), 3);
    let rows: Vec<usize> = (0..3)
        .map(|i| {
            std::fs::read_to_string(sandbox.bucket().join(format!("chunks/e/{i}.csv"))).unwrap().lines().count() - 1
        })
        .collect();
    assert_eq!(rows, [100, 100, 50]);
    let first = std::fs::read_to_string(sandbox.bucket().join("chunks/e/0.csv")).unwrap();
    assert!(first.starts_with("carrier,flight,dep_delay,distance,air_time\nUA,0,,100,10\n"), "{first}");
}

fn kafka_pipeline(servers: &str, group: &str) -> String {
    format!(
        r#"
name = "sink"
[trigger]
kind = "kafka"
brokers = "{servers}"
topics = ["events"]
group = "{group}"
start = "earliest"
format = "json"
ordering = "partition"
commit_interval = "100ms"
batch_size = 8
batch_window = "5s"
[trigger.librdkafka]
"group.protocol" = "consumer"
[[step]]
name = "parquet"
function = "table.convert"
format = "parquet"
url = "{{bucket}}"
key = "lake/{{attr.topic}}/{{attr.partition}}/{{attr.first_offset}}-{{attr.last_offset}}.parquet"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_batches_become_parquet_objects_and_a_redelivered_batch_overwrites_its_own() {
    let broker = Broker::new("events", 1);
    let sandbox = Sandbox::new();
    let mut records: Vec<String> = events(20).lines().map(String::from).collect();
    // JSON, but not an object: no row of a table. It fails alone; its batch is written.
    records.push("[1, 2]".into());
    broker.produce("events", 0, records).await;

    let run = |group: &'static str| {
        let file = sandbox.pipeline("sink", &kafka_pipeline(&broker.servers(), group));
        let engine = engine(&sandbox);
        let broker = &broker;
        async move {
            let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
            wait_for(WAIT, "all 21 committed", || broker.committed(group, "events", 1) == [21]).await;
            running.stop().await.unwrap();
        }
    };
    run("first").await;
    let files = sandbox.files_under("lake/events/0");
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["0-7.parquet", "16-20.parquet", "8-15.parquet"]);
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    assert!(letter["error"].as_str().unwrap().contains("not a JSON object"), "{letter}");
    assert_eq!(letter["event"]["record"]["offset"], 20, "{letter}");
    let mut flights = Vec::new();
    let mut delay_nulls = 0;
    let mut before = Vec::new();
    for path in &files {
        before.push((std::fs::read(path).unwrap(), std::fs::metadata(path).unwrap().modified().unwrap()));
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap();
        for batch in reader {
            use arrow_array::cast::AsArray;
            let batch = batch.unwrap();
            let flight = batch.column_by_name("flight").unwrap().as_primitive::<arrow_array::types::Int64Type>();
            flights.extend(flight.values().iter().copied());
            delay_nulls += batch.column_by_name("dep_delay").unwrap().null_count();
        }
    }
    flights.sort();
    assert_eq!(flights, (0..20).collect::<Vec<i64>>());
    assert_eq!(delay_nulls, 4);

    // A new group reads the topic again: every batch is delivered a second time and
    // lands on the same key with the same bytes.
    std::thread::sleep(Duration::from_millis(20));
    run("second").await;
    let again = sandbox.files_under("lake/events/0");
    assert_eq!(again, files, "no new objects: the redelivered batches overwrote theirs");
    for (path, (bytes, modified)) in again.iter().zip(before) {
        assert_eq!(std::fs::read(path).unwrap(), bytes, "{path:?} holds the same bytes");
        assert!(std::fs::metadata(path).unwrap().modified().unwrap() > modified, "{path:?} was written again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hourly_key_splits_a_batch_at_the_hour_of_its_records() {
    let broker = Broker::new("events", 1);
    let sandbox = Sandbox::new();
    // 2026-12-03T10:59:57Z: three records in hour 10, then four in hour 11, one batch.
    let start = 1_796_295_597_000i64;
    let records: Vec<(i64, String)> =
        events(7).lines().enumerate().map(|(i, line)| (start + i as i64 * 1000, line.to_string())).collect();
    broker.produce_at("events", 0, &records).await;
    let pipeline = kafka_pipeline(&broker.servers(), "hourly").replace(
        "lake/{attr.topic}/{attr.partition}/{attr.first_offset}-{attr.last_offset}.parquet",
        "lake/{attr.topic}/date={attr.date}/hour={attr.hour}/{attr.partition}-{attr.first_offset}-{attr.last_offset}.parquet",
    );
    let file = sandbox.pipeline("sink", &pipeline);
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    wait_for(WAIT, "all 7 committed", || broker.committed("hourly", "events", 1) == [7]).await;
    running.stop().await.unwrap();

    let files = sandbox.files_under("lake/events");
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(sandbox.bucket().join("lake/events")).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["date=2026-12-03/hour=10/0-0-2.parquet", "date=2026-12-03/hour=11/0-3-6.parquet"]);
    let rows: Vec<usize> = files
        .iter()
        .map(|path| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|batch| batch.unwrap().num_rows())
                .sum()
        })
        .collect();
    assert_eq!(rows, [3, 4]);
}
