//! `table.convert` through the engine: a file lands in a local bucket, Parquet (or CSV,
//! or JSON lines) objects come out, read back with the parquet crate. Bad rows are
//! listed with their lines; bad inputs are one-line dead letters and the engine goes
//! on; a 200 MB CSV converts in bounded memory.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::RecordBatch;
use common::{dead_letters, wait_for, Sandbox};
use weir_engine::Engine;
use weir_functions::Registry;

const WAIT: Duration = Duration::from_secs(120);

fn engine(sandbox: &Sandbox) -> Engine {
    Engine::new(Registry::builtin()).state_dir(sandbox.state()).grace(Duration::from_secs(10))
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// A flights-like CSV: `rows` rows over two years and three months, nulls as `NA`,
/// carriers with quoted commas and newlines. Returns rows per (year, month) and the sum
/// of `distance`.
fn flights_csv(rows: usize) -> (Vec<u8>, BTreeMap<(i64, i64), usize>, i64) {
    let mut text = b"year,month,day,dep_delay,carrier,distance,speed,time_hour\n".to_vec();
    let mut counts = BTreeMap::new();
    let mut distance_sum = 0;
    for i in 0..rows {
        let (year, month) = (2013 + (i % 2) as i64, 1 + (i / 7 % 3) as i64);
        *counts.entry((year, month)).or_default() += 1;
        let delay = if i % 10 == 0 { "NA".to_string() } else { format!("{}", i as i64 % 50 - 10) };
        let carrier = match i % 3 {
            0 => "UA".to_string(),
            1 => "\"Delta, Inc.\"".to_string(),
            _ => "\"Jet\nBlue\"".to_string(),
        };
        let distance = 100 + (i % 900) as i64;
        distance_sum += distance;
        writeln!(
            text,
            "{year},{month},{},{delay},{carrier},{distance},{}.5,{year}-{month:02}-01 {:02}:00:00",
            1 + i % 28,
            i % 400,
            i % 24
        )
        .unwrap();
    }
    (text, counts, distance_sum)
}

const PARTITIONED: &str = r#"
name = "lake"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
include = ["*.csv", "*.parquet", "*.jsonl"]
settle = "200ms"
[retry]
max_attempts = 1
dead_letter = "{bucket}/dlq"
[[step]]
name = "to-parquet"
function = "table.convert"
format = "parquet"
partition_by = ["year", "month"]
key = "lake/{stem}/{attr.hive}/part-{attr.part}.parquet"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_in_the_bucket_becomes_hive_partitioned_parquet() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("lake", PARTITIONED);
    let (csv, counts, distance_sum) = flights_csv(20_000);
    sandbox.drop_file("inbox/flights.csv", &csv);
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("lake").unwrap().executor.clone();
    wait_for(WAIT, "converted", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    running.stop().await.unwrap();

    let files = sandbox.files_under("lake/flights");
    assert_eq!(files.len(), counts.len(), "one file per partition: {files:?}");
    let mut seen = BTreeMap::new();
    let mut distances = 0;
    let mut nulls = 0;
    for path in &files {
        let relative = path.strip_prefix(sandbox.bucket().join("lake/flights")).unwrap().to_string_lossy().to_string();
        let parts: Vec<&str> = relative.split('/').collect();
        assert_eq!(parts[2], "part-0.parquet", "{relative}");
        let year: i64 = parts[0].strip_prefix("year=").unwrap().parse().unwrap();
        let month: i64 = parts[1].strip_prefix("month=").unwrap().parse().unwrap();
        for batch in read_parquet(path) {
            let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            assert_eq!(
                names,
                ["day", "dep_delay", "carrier", "distance", "speed", "time_hour"],
                "Hive drops partition columns"
            );
            *seen.entry((year, month)).or_insert(0) += batch.num_rows();
            distances += batch.column(3).as_primitive::<Int64Type>().values().iter().sum::<i64>();
            nulls += batch.column(1).null_count();
            assert!(batch.column(4).as_primitive_opt::<Float64Type>().is_some(), "speed is a float column");
            let hours = batch.column(5).as_primitive::<TimestampMillisecondType>();
            let first = chrono::DateTime::from_timestamp_millis(hours.value(0)).unwrap();
            assert_eq!(first.format("%Y-%m").to_string(), format!("{year}-{month:02}"));
            let carriers = batch.column(2).as_string::<i32>();
            assert!(carriers.iter().flatten().all(|c| ["UA", "Delta, Inc.", "Jet\nBlue"].contains(&c)));
        }
    }
    assert_eq!(seen, counts);
    assert_eq!(distances, distance_sum);
    assert_eq!(nulls, 2_000, "NA is null");
}

const BAD_ROWS: &str = r#"
name = "rows"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
settle = "200ms"
[retry]
max_attempts = 1
dead_letter = "{bucket}/dlq"
[[step]]
name = "to-jsonl"
function = "table.convert"
format = "json"
schema = { n = "int32" }
on_bad_row = "dead_letter"
key = "out/{stem}.jsonl"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_listed_with_their_lines_and_the_good_rows_written() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("rows", BAD_ROWS);
    let mut csv = b"n,name\n1,one\n2,two,extra\n3,\"three\nlines\"\nx,four\n5,caf".to_vec();
    csv.extend_from_slice(b"\xe9\n6,six\n9999999999,big\n");
    sandbox.drop_file("inbox/numbers.csv", &csv);
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("rows").unwrap().executor.clone();
    wait_for(WAIT, "converted", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    running.stop().await.unwrap();

    let out = std::fs::read_to_string(sandbox.bucket().join("out/numbers.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"n": 1, "name": "one"}),
            serde_json::json!({"n": 3, "name": "three\nlines"}),
            serde_json::json!({"n": 6, "name": "six"}),
        ]
    );
    let listed = std::fs::read_to_string(sandbox.bucket().join("dead-letter/rows/inbox/numbers.csv.jsonl")).unwrap();
    let bad: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let lines: Vec<u64> = bad.iter().map(|b| b["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [3, 6, 7, 9], "{listed}");
    assert!(bad[0]["error"].as_str().unwrap().contains("3 fields, expected 2"), "{listed}");
    assert!(bad[1]["error"].as_str().unwrap().contains("\"x\" is not int32"), "{listed}");
    assert!(bad[2]["error"].as_str().unwrap().contains("invalid UTF-8"), "{listed}");
    assert!(bad[3]["error"].as_str().unwrap().contains("9999999999"), "{listed}");
    assert!(bad.iter().all(|b| b["input"] == "inbox/numbers.csv"));
    assert_eq!(stats.events_dead_lettered.load(Ordering::SeqCst), 0);
}

/// Writes a valid Parquet file of `rows` rows, for the inputs that need one.
fn parquet_bytes(rows: i64) -> Vec<u8> {
    use std::sync::Arc;
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("year", arrow_schema::DataType::Int64, false),
        arrow_schema::Field::new("month", arrow_schema::DataType::Int64, false),
        arrow_schema::Field::new("v", arrow_schema::DataType::Int64, false),
    ]));
    let column = |f: fn(i64) -> i64| Arc::new(arrow_array::Int64Array::from_iter_values((0..rows).map(f))) as _;
    let batch =
        RecordBatch::try_new(schema.clone(), vec![column(|_| 2020), column(|i| 1 + i % 2), column(|i| i)]).unwrap();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_is_a_one_line_dead_letter_and_the_engine_goes_on() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("lake", PARTITIONED);
    let mut huge_field = b"year,month,v\n2013,1,".to_vec();
    huge_field.extend(std::iter::repeat_n(b'x', 100 << 20));
    huge_field.extend_from_slice(b"\n");
    let good = parquet_bytes(10);
    let truncated = good[..good.len() - 20].to_vec();
    let inputs: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "inbox/ragged.csv",
            b"year,month,v\n2013,1,1\n2013,2\n".to_vec(),
            "inbox/ragged.csv line 3: 2 fields, expected 3",
        ),
        (
            "inbox/latin1.csv",
            b"year,month,v\n2013,1,caf\xe9\n".to_vec(),
            "inbox/latin1.csv line 2: column v: invalid UTF-8",
        ),
        ("inbox/huge-field.csv", huge_field, "inbox/huge-field.csv line 2: longer than"),
        ("inbox/empty.csv", Vec::new(), "inbox/empty.csv is empty"),
        ("inbox/header-only.csv", b"year,month,v\n".to_vec(), "inbox/header-only.csv has a header but no rows"),
        (
            "inbox/csv-named.parquet",
            b"year,month,v\n2013,1,1\n".to_vec(),
            "inbox/csv-named.parquet is named .parquet but is not Parquet",
        ),
        ("inbox/truncated.parquet", truncated, "inbox/truncated.parquet is not a readable Parquet file"),
        (
            "inbox/not-json.jsonl",
            b"{\"year\": 2013, \"month\": 1, \"v\": 1}\n{oops\n".to_vec(),
            "inbox/not-json.jsonl line 2: not JSON",
        ),
    ];
    for (key, bytes, _) in &inputs {
        sandbox.drop_file(key, bytes);
    }
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("lake").unwrap().executor.clone();
    let dead = || stats.events_dead_lettered.load(Ordering::SeqCst);
    wait_for(WAIT, "every bad input dead-lettered", || dead() == inputs.len() as u64).await;
    // Still running: a good Parquet file after all that converts.
    sandbox.drop_file("inbox/good.parquet", &good);
    wait_for(WAIT, "the good file converted", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    running.stop().await.unwrap();

    let letters = dead_letters(&sandbox.bucket().join("dlq"));
    assert_eq!(letters.len(), inputs.len(), "{letters:#?}");
    for (key, _, expected) in &inputs {
        let (_, error) = letters.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no dead letter for {key}"));
        assert!(error.contains(expected), "{key}: {error:?} lacks {expected:?}");
        assert!(!error.contains('\n'), "{key}: one line: {error:?}");
        assert!(error.len() < 400, "{key}: short: {error:?}");
    }
    let parts = sandbox.files_under("lake/good");
    let rows: usize = parts.iter().flat_map(|p| read_parquet(p)).map(|b| b.num_rows()).sum();
    assert_eq!((parts.len(), rows), (2, 10), "{parts:?}");
    assert!(sandbox.files_under("lake").iter().all(|p| p.starts_with(sandbox.bucket().join("lake/good"))));
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The stated bound: converting a 200 MB CSV to Parquet takes `weir run` under 128 MiB
/// at its peak, the process and all (it idles at about 33 MiB; it measured 86–96 MiB
/// here, and a 20 MB CSV peaks within 10 MiB of a 200 MB one). Partitioned output adds
/// up to 8 MiB per open partition: an object's first 8 MiB are held to decide between
/// one PUT and a multipart upload.
const STREAMING_BOUND_KIB: u64 = 128 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_csv_converts_in_bounded_memory() {
    let sandbox = Sandbox::new();
    let flat = PARTITIONED.replace("[retry]", "[limits]\ntimeout = \"10m\"\n[retry]").replace(
        "partition_by = [\"year\", \"month\"]\nkey = \"lake/{stem}/{attr.hive}/part-{attr.part}.parquet\"",
        "key = \"lake/{stem}/all.parquet\"",
    );
    assert!(flat.contains("all.parquet"));
    let pipeline = sandbox.pipeline("lake", &flat);
    {
        let path = sandbox.bucket().join("inbox/.big.csv.part");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        out.write_all(b"year,month,day,dep_delay,carrier,distance,speed,time_hour\n").unwrap();
        let mut written = 0usize;
        let mut i = 0usize;
        while written < 200 << 20 {
            let line = format!(
                "{},{},{},{},{},{},{}.25,2013-{:02}-01 {:02}:00:00\n",
                2013 + i % 2,
                1 + i / 1000 % 12,
                1 + i % 28,
                i % 90,
                ["UA", "AA", "B6", "DL"][i % 4],
                100 + i % 4000,
                i % 700,
                1 + i / 1000 % 12,
                i % 24
            );
            out.write_all(line.as_bytes()).unwrap();
            written += line.len();
            i += 1;
        }
        out.flush().unwrap();
        drop(out);
        std::fs::rename(&path, sandbox.bucket().join("inbox/big.csv")).unwrap();
    }
    let mut child = sandbox.spawn_weir_run(env!("CARGO_BIN_EXE_weir"), &pipeline, "state");
    let mut peak = 0;
    let started = std::time::Instant::now();
    loop {
        peak = peak_rss_kib(child.id()).unwrap_or(0).max(peak);
        // The file appears (renamed into place) only when the input is finished.
        if sandbox.files_under("lake/big").len() == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "not converted: {}", sandbox.log_tail("state", 20));
        assert!(child.try_wait().unwrap().is_none(), "weir exited: {}", sandbox.log_tail("state", 20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let rows: usize = sandbox.files_under("lake/big").iter().flat_map(|p| read_parquet(p)).map(|b| b.num_rows()).sum();
    assert!(rows > 2_500_000, "{rows} rows");
    eprintln!("peak RSS converting 200 MB of CSV: {} MiB", peak >> 10);
    assert!(peak < STREAMING_BOUND_KIB, "peak RSS {} MiB over the bound", peak >> 10);
}
