//! Cron schedules on an injected clock: DST days in two zones, catch-up after a
//! simulated 3-day outage, overlap policies with a slow function, and the logical
//! time each run receives.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{registry_with_probe, utc, wait_for, Probe, Sandbox};
use weir_engine::clock::ManualClock;
use weir_engine::state::ObjectStatus;
use weir_engine::trigger::cron::LEDGER_URL;
use weir_engine::{Engine, RunningEngine};
use weir_functions::TriggerEvent;

const WAIT: Duration = Duration::from_secs(30);

/// A scheduled pipeline whose one step is the probe (with `probe` parameters).
fn pipeline(name: &str, trigger: &str, probe: &str) -> String {
    format!(
        "name = \"{name}\"\n[trigger]\nkind = \"cron\"\n{trigger}\n[limits]\nconcurrency = 8\n\
         [[step]]\nname = \"see\"\nfunction = \"test.probe\"\n{probe}\n"
    )
}

async fn start(sandbox: &Sandbox, clock: &ManualClock, pipelines: &[(&str, String)]) -> (RunningEngine, Arc<Probe>) {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("weir_engine=debug").try_init();
    let files: Vec<_> = pipelines.iter().map(|(name, text)| sandbox.pipeline(name, text)).collect();
    let (registry, probe) = registry_with_probe();
    let engine =
        Engine::new(registry).state_dir(sandbox.state()).grace(Duration::from_secs(10)).clock(Arc::new(clock.clone()));
    let running = engine.start(engine.load(&files).unwrap()).await.unwrap();
    (running, probe)
}

/// The logical times the runs of `pipeline` were given, in call order.
fn logical_times(probe: &Probe, pipeline: &str) -> Vec<String> {
    let resource = format!("weir:schedule/{pipeline}");
    probe
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| match event {
            TriggerEvent::Scheduled(e) if e.resources.as_ref().is_some_and(|r| r.contains(&resource)) => {
                e.time.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            }
            _ => None,
        })
        .collect()
}

async fn runs_of(probe: &Probe, pipeline: &str, n: usize) -> Vec<String> {
    wait_for(WAIT, &format!("{n} runs of {pipeline}"), || logical_times(probe, pipeline).len() >= n).await;
    logical_times(probe, pipeline)
}

/// Waits for the run of `pipeline` with logical time `last`, then a moment more (so
/// a tick run twice would show), and returns all its runs' logical times.
async fn runs_until(probe: &Probe, pipeline: &str, last: &str) -> Vec<String> {
    wait_for(WAIT, &format!("{pipeline} to run {last}"), || logical_times(probe, pipeline).iter().any(|t| t == last))
        .await;
    settle().await;
    logical_times(probe, pipeline)
}

/// Lets the engine react to a clock change that should *not* cause a run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_job_runs_once_on_spring_forward_and_fall_back_days() {
    let sandbox = Sandbox::new();
    let clock = ManualClock::new(utc("2026-03-06T12:00:00Z"));
    let daily = |name: &str, zone: &str, at: &str| {
        pipeline(name, &format!("schedule = \"{at}\"\ntimezone = \"{zone}\"\noverlap = \"queue\""), "")
    };
    let (running, probe) = start(
        &sandbox,
        &clock,
        &[
            ("berlin", daily("berlin", "Europe/Berlin", "30 2 * * *")),
            ("new_york", daily("new_york", "America/New_York", "30 1 * * *")),
        ],
    )
    .await;
    let on = |times: &[String], day: &str| times.iter().filter(|t| t.starts_with(day)).cloned().collect::<Vec<_>>();

    // Spring: New York jumps 02:00 → 03:00 on 03-08, Berlin on 03-29.
    clock.set(utc("2026-03-31T00:00:00Z"));
    let berlin = runs_until(&probe, "berlin", "2026-03-30T00:30:00Z").await;
    assert_eq!(berlin.len(), 24, "one a day, 03-07 to 03-30");
    assert_eq!(on(&berlin, "2026-03-28"), ["2026-03-28T01:30:00Z"], "02:30 CET");
    assert_eq!(on(&berlin, "2026-03-29"), ["2026-03-29T01:00:00Z"], "02:30 does not exist: once, at 03:00 CEST");
    assert_eq!(on(&berlin, "2026-03-30"), ["2026-03-30T00:30:00Z"], "02:30 CEST");
    let new_york = runs_until(&probe, "new_york", "2026-03-30T05:30:00Z").await;
    assert_eq!(new_york.len(), 24);
    assert_eq!(on(&new_york, "2026-03-08"), ["2026-03-08T06:30:00Z"], "01:30 EST, before the jump");
    assert_eq!(on(&new_york, "2026-03-09"), ["2026-03-09T05:30:00Z"], "01:30 EDT");

    // Autumn: Berlin falls back 03:00 → 02:00 on 10-25 (02:30 happens twice), New
    // York 02:00 → 01:00 on 11-01 (01:30 happens twice).
    clock.set(utc("2026-11-03T00:00:00Z"));
    let berlin = runs_until(&probe, "berlin", "2026-11-02T01:30:00Z").await;
    assert_eq!(berlin.len(), 24 + 217, "one a day, 03-31 to 11-02");
    assert_eq!(on(&berlin, "2026-10-25"), ["2026-10-25T00:30:00Z"], "once, at the first 02:30");
    assert_eq!(on(&berlin, "2026-10-26"), ["2026-10-26T01:30:00Z"], "02:30 CET");
    let new_york = runs_until(&probe, "new_york", "2026-11-02T06:30:00Z").await;
    assert_eq!(new_york.len(), 24 + 217);
    assert_eq!(on(&new_york, "2026-11-01"), ["2026-11-01T05:30:00Z"], "once, at the first 01:30");
    assert_eq!(on(&new_york, "2026-11-02"), ["2026-11-02T06:30:00Z"], "01:30 EST");
    let mut sorted = berlin.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(berlin, sorted, "in order, no tick twice");
    running.stop().await.unwrap();
}

/// Runs 3 hourly ticks, stops, lets 3 days pass, starts again: the runs right after
/// the restart, as logical times.
struct Outage {
    caught_up: Vec<String>,
    probe: Arc<Probe>,
    clock: ManualClock,
    running: RunningEngine,
    _sandbox: Sandbox,
}

async fn after_an_outage(catch_up: &str) -> Outage {
    let sandbox = Sandbox::new();
    let clock = ManualClock::new(utc("2026-06-01T00:00:00Z"));
    let text = pipeline("hourly", &format!("schedule = \"@hourly\"\noverlap = \"queue\"\n{catch_up}"), "");
    let (running, probe) = start(&sandbox, &clock, &[("hourly", text.clone())]).await;
    clock.set(utc("2026-06-01T03:00:00Z"));
    runs_until(&probe, "hourly", "2026-06-01T03:00:00Z").await;
    running.stop().await.unwrap();
    clock.set(utc("2026-06-04T03:30:00Z")); // 72 ticks fell while stopped
    let (running, probe) = start(&sandbox, &clock, &[("hourly", text)]).await;
    settle().await;
    Outage { caught_up: logical_times(&probe, "hourly"), probe, clock, running, _sandbox: sandbox }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_decides_what_happens_to_ticks_missed_while_stopped() {
    let none = after_an_outage("catch_up = \"none\"").await;
    assert_eq!(none.caught_up, Vec::<String>::new(), "nothing runs for the outage");
    none.clock.set(utc("2026-06-04T04:00:00Z"));
    assert_eq!(runs_until(&none.probe, "hourly", "2026-06-04T04:00:00Z").await.len(), 1, "the schedule carries on");
    none.running.stop().await.unwrap();

    let latest = after_an_outage("catch_up = \"latest\"").await;
    let caught_up = runs_until(&latest.probe, "hourly", "2026-06-04T03:00:00Z").await;
    assert_eq!(caught_up, ["2026-06-04T03:00:00Z"], "only the most recent missed tick");
    latest.running.stop().await.unwrap();

    let expected: Vec<String> = (4..76)
        .map(|h| (utc("2026-06-01T00:00:00Z") + chrono::Duration::hours(h)).format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect();
    let all = after_an_outage("catch_up = \"all\"\nmax_catch_up = 1000").await;
    let caught_up = runs_until(&all.probe, "hourly", "2026-06-04T03:00:00Z").await;
    assert_eq!(caught_up, expected, "every missed tick, oldest first, each once");
    all.running.stop().await.unwrap();

    let capped = after_an_outage("catch_up = \"all\"\nmax_catch_up = 10").await;
    let caught_up = runs_until(&capped.probe, "hourly", "2026-06-04T03:00:00Z").await;
    assert_eq!(caught_up, expected[62..].to_vec(), "the 10 most recent, oldest first");
    capped.running.stop().await.unwrap();
}

/// Five one-minute ticks while the first run (2 s) is still going.
async fn overlapping(overlap: &str) -> (Arc<Probe>, u64, RunningEngine, Sandbox) {
    let sandbox = Sandbox::new();
    let clock = ManualClock::new(utc("2026-06-01T00:00:30Z"));
    let text = pipeline("slow", &format!("every = \"1m\"\noverlap = \"{overlap}\""), "sleep_ms = 2000");
    let (running, probe) = start(&sandbox, &clock, &[("slow", text)]).await;
    clock.set(utc("2026-06-01T00:01:00Z"));
    runs_of(&probe, "slow", 1).await;
    for minute in 2..=5 {
        clock.set(utc(&format!("2026-06-01T00:0{minute}:00Z")));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let skipped = running.ledger.object_count("slow", ObjectStatus::Skipped).await.unwrap();
    (probe, skipped, running, sandbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skips_queues_or_allows_ticks_while_the_previous_run_goes_on() {
    let (probe, skipped, running, _sandbox) = overlapping("skip").await;
    settle().await;
    assert_eq!((probe.calls(), skipped), (1, 4), "the 4 ticks during the run are skipped");
    let ledger = running.ledger.clone();
    running.stop().await.unwrap();
    assert_eq!(ledger.object_count("slow", ObjectStatus::Done).await.unwrap(), 1);

    let (probe, skipped, running, _sandbox) = overlapping("queue").await;
    assert_eq!(skipped, 0);
    let times = runs_of(&probe, "slow", 5).await;
    assert_eq!(probe.max_running(), 1, "one at a time");
    assert_eq!(times.first().map(String::as_str), Some("2026-06-01T00:01:00Z"));
    assert_eq!(times.last().map(String::as_str), Some("2026-06-01T00:05:00Z"), "in order");
    running.stop().await.unwrap();

    let (probe, skipped, running, _sandbox) = overlapping("allow").await;
    assert_eq!(skipped, 0);
    runs_of(&probe, "slow", 5).await;
    assert!(probe.max_running() >= 2, "side by side: {}", probe.max_running());
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_tick_carries_its_logical_time_and_an_unfinished_one_runs_again() {
    let sandbox = Sandbox::new();
    let clock = ManualClock::new(utc("2026-06-01T00:30:00Z"));
    // Jitter delays the run up to 30 minutes; the logical time stays on the hour.
    let text = pipeline("late", "every = \"1h\"\njitter = \"30m\"", "sleep_ms = 60000");
    let (running, probe) = start(&sandbox, &clock, &[("late", text.clone())]).await;
    clock.set(utc("2026-06-01T01:30:00Z"));
    assert_eq!(runs_of(&probe, "late", 1).await, ["2026-06-01T01:00:00Z"]);
    // Stopped mid-run (grace shorter than the run): the tick stays pending...
    let engine_stop = tokio::time::timeout(Duration::from_secs(20), running.stop()).await;
    assert!(engine_stop.is_ok(), "stops within the grace period");
    let text = text.replace("sleep_ms = 60000", "");
    let (running, probe) = start(&sandbox, &clock, &[("late", text)]).await;
    // ...and runs again, with the same logical time, before anything else.
    assert_eq!(runs_of(&probe, "late", 1).await, ["2026-06-01T01:00:00Z"]);
    settle().await;
    assert_eq!(probe.calls(), 1, "no catch-up: the tick was not missed, only unfinished");
    let ledger = running.ledger.clone();
    running.stop().await.unwrap();
    assert_eq!(ledger.last_key("late", LEDGER_URL).await.unwrap().as_deref(), Some("2026-06-01T01:00:00.000Z"));
    assert_eq!(ledger.object_count("late", ObjectStatus::Done).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_expire_deletes_old_objects_and_writes_its_report() {
    let sandbox = Sandbox::new();
    let days_ago = |key: &str, days: u64| {
        sandbox.drop_file(key, b"0123456789");
        let when = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
        let file = std::fs::File::options().write(true).open(sandbox.bucket().join(key)).unwrap();
        file.set_modified(when).unwrap();
    };
    days_ago("processed/old.jpg", 10);
    days_ago("processed/deep/older.jpg", 400);
    days_ago("processed/new.jpg", 1);
    // A link under the swept prefix to old files elsewhere: never followed, never deleted.
    let elsewhere = tempfile::tempdir().unwrap();
    for name in ["a.jpg", "b.jpg", "c.jpg"] {
        let path = elsewhere.path().join(name);
        std::fs::write(&path, "keep").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(30 * 86_400)).unwrap();
    }
    std::os::unix::fs::symlink(elsewhere.path(), sandbox.bucket().join("processed/cache")).unwrap();
    let url = sandbox.bucket_url();
    let steps = format!(
        "url = \"{url}\"\nprefix = \"processed/\"\nolder_than = \"7days\"\n\
         [[step]]\nname = \"report\"\nafter = \"expire\"\nfunction = \"object.put\"\nurl = \"{url}\"\n\
         key = \"reports/{{attr.hour}}.json\""
    );
    let text = format!(
        "name = \"sweep\"\n[trigger]\nkind = \"cron\"\nevery = \"1h\"\n[[step]]\nname = \"expire\"\n\
         function = \"object.expire\"\n{steps}\n"
    );
    let clock = ManualClock::new(Utc::now());
    let (running, _probe) = start(&sandbox, &clock, &[("sweep", text)]).await;
    clock.advance(Duration::from_secs(3600));
    let stats = running.pipelines[0].executor.clone();
    wait_for(WAIT, "the sweep", || stats.events_done.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    running.stop().await.unwrap();
    assert!(!sandbox.bucket().join("processed/old.jpg").exists());
    assert!(!sandbox.bucket().join("processed/deep/older.jpg").exists());
    assert!(sandbox.bucket().join("processed/new.jpg").exists());
    let reports = sandbox.files_under("reports");
    assert_eq!(reports.len(), 1, "one report, named after the tick's hour");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&reports[0]).unwrap()).unwrap();
    assert_eq!((report["matched"].as_u64(), report["deleted"].as_u64()), (Some(2), Some(2)), "{report}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 3, "files outside the bucket were deleted");
}

/// The value of `name{pipeline="metered"}` on the engine's `/metrics`.
async fn scraped(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let prefix = format!("{name}{{pipeline=\"metered\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

/// Waits until `/metrics` shows `want` for `name{pipeline="metered"}`.
async fn scraped_until(addr: std::net::SocketAddr, name: &str, want: f64) {
    let started = std::time::Instant::now();
    loop {
        let got = scraped(addr, name).await;
        if got == Some(want) {
            return;
        }
        assert!(started.elapsed() < WAIT, "{name} is {got:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/metrics` tells when the schedule fires next, and how many ticks fell while weir
/// was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_next_tick_and_the_ticks_missed_while_stopped() {
    let sandbox = Sandbox::new();
    let clock = ManualClock::new(utc("2026-06-01T00:00:00Z"));
    let file = sandbox.pipeline("metered", &pipeline("metered", "schedule = \"@hourly\"\ncatch_up = \"none\"", ""));
    let start = || async {
        let (registry, probe) = registry_with_probe();
        let engine = Engine::new(registry)
            .state_dir(sandbox.state())
            .clock(Arc::new(clock.clone()))
            .listen("127.0.0.1:0".parse().unwrap())
            .serve(weir_engine::Serve::Always);
        let running = engine.start(engine.load(std::slice::from_ref(&file)).unwrap()).await.unwrap();
        let addr = running.http_addr.unwrap();
        (running, probe, addr)
    };
    let at = |text| utc(text).timestamp() as f64;
    const NEXT: &str = "weir_cron_next_fire_timestamp_seconds";

    let (running, probe, addr) = start().await;
    scraped_until(addr, NEXT, at("2026-06-01T01:00:00Z")).await;
    clock.set(utc("2026-06-01T01:00:00Z"));
    runs_of(&probe, "metered", 1).await;
    scraped_until(addr, NEXT, at("2026-06-01T02:00:00Z")).await;
    running.stop().await.unwrap();

    clock.set(utc("2026-06-01T04:30:00Z")); // 02:00, 03:00 and 04:00 fall while stopped
    let (running, _probe, addr) = start().await;
    scraped_until(addr, "weir_cron_missed_ticks_total", 3.0).await;
    scraped_until(addr, NEXT, at("2026-06-01T05:00:00Z")).await;
    running.stop().await.unwrap();
}
