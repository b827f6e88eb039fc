//! `weir replay`: a 10,000-object bucket replayed, killed with SIGKILL halfway and
//! resumed (nothing finished twice, everything finished once); dry runs change
//! nothing; windows, prefixes and failures; a week of hourly ticks in order.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use common::{registry_with_probe, utc, Sandbox};
use tokio_util::sync::CancellationToken;
use weir_engine::replay::{self, Counters, Plan, Summary, Window};
use weir_engine::Engine;
use weir_functions::TriggerEvent;

fn weir(sandbox: &Sandbox) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.current_dir(sandbox.dir.path()).env("WEIR_STATE_DIR", sandbox.state());
    command
}

const COPY_PIPELINE: &str = r#"
name = "backfill"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "in/"
[limits]
concurrency = 8
[[step]]
name = "copy"
function = "object.put"
url = "{bucket}"
key = "out/{key}"
"#;

fn sqlite_count(sandbox: &Sandbox, sql: &str) -> i64 {
    let db = rusqlite::Connection::open(sandbox.state().join("ledger.db")).unwrap();
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Finished files in `dir`: a write killed mid-way leaves object_store's `name#N`
/// temp file behind, never a partial `name`.
fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().filter(|e| !e.file_name().to_string_lossy().contains('#')).count()
}

#[test]
fn a_replay_killed_halfway_resumes_without_finishing_anything_twice() {
    const N: usize = 10_000;
    let sandbox = Sandbox::new();
    let inbox = sandbox.bucket().join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    for i in 0..N {
        std::fs::write(inbox.join(format!("{i:05}.txt")), format!("object {i}\n")).unwrap();
    }
    let pipeline = sandbox.pipeline("backfill", COPY_PIPELINE);

    // A dry run lists all of them and changes nothing: no outputs, no ledger.
    let dry = weir(&sandbox).arg("replay").arg(&pipeline).arg("--dry-run").output().unwrap();
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("would run: in/")).count(), N);
    assert!(stdout.contains(&format!("dry run: {N} would run, 0 skipped")), "{stdout}");
    assert!(!sandbox.bucket().join("out").exists(), "a dry run wrote outputs");
    assert!(!sandbox.state().exists(), "a dry run created the ledger");

    // The real thing, killed without warning once about half the outputs exist.
    let mut child =
        weir(&sandbox).arg("replay").arg(&pipeline).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let outputs = sandbox.bucket().join("out/in");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while count_files(&outputs) < N / 2 {
        assert!(std::time::Instant::now() < deadline, "the replay made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the replay ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = count_files(&outputs);
    assert!(at_kill < N, "the replay finished before the kill ({at_kill} outputs)");

    // Resumed: continues from the checkpoint.
    let resumed = weir(&sandbox).arg("replay").arg(&pipeline).arg("--resume").output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming replay"), "{stderr}");
    let (done, skipped) = done_and_skipped(&stderr);
    assert_eq!(done + skipped, N as u64, "{stderr}");
    assert!(skipped as usize >= N / 2 - 64, "the resume redid finished work: {stderr}");

    // Every object finished exactly once, and its output is right.
    let done_runs = sqlite_count(&sandbox, "SELECT count(*) FROM runs WHERE status = 'done'");
    let twice = sqlite_count(
        &sandbox,
        "SELECT count(*) FROM (SELECT source FROM runs WHERE status = 'done' GROUP BY source HAVING count(*) > 1)",
    );
    assert_eq!(twice, 0, "objects finished twice");
    assert_eq!(done_runs, N as i64);
    assert_eq!(
        sqlite_count(&sandbox, "SELECT count(*) FROM objects WHERE pipeline = 'backfill' AND status = 'done'"),
        N as i64
    );
    assert_eq!(sqlite_count(&sandbox, "SELECT count(*) FROM replay_items"), 0, "checkpoint dropped at the end");
    assert_eq!(count_files(&outputs), N);
    for i in (0..N).step_by(997) {
        let body = std::fs::read_to_string(outputs.join(format!("{i:05}.txt"))).unwrap();
        assert_eq!(body, format!("object {i}\n"));
    }

    // Nothing left to resume, and a new replay finds everything done.
    let again = weir(&sandbox).arg("replay").arg(&pipeline).arg("--resume").output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no interrupted replay"));
    let again = weir(&sandbox).arg("replay").arg(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(done_and_skipped(&stderr), (0, N as u64), "{stderr}");
}

/// (done, skipped) from the summary line.
fn done_and_skipped(stderr: &str) -> (u64, u64) {
    let line = stderr.lines().find(|l| l.starts_with("replay ")).unwrap_or_else(|| panic!("no summary: {stderr}"));
    let number_before = |word: &str| -> u64 {
        let at = line.find(word).unwrap_or_else(|| panic!("no {word} in {line}"));
        line[..at].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    (number_before(" done"), number_before(" skipped"))
}

fn set_modified(path: &std::path::Path, at: DateTime<Utc>) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::from(at)).unwrap();
}

async fn run_replay(engine: &Engine, path: &std::path::Path, plan: Plan) -> Summary {
    let pipeline = engine.load(&[path.to_path_buf()]).unwrap().remove(0);
    replay::replay(engine, pipeline, plan, Arc::new(Counters::default()), CancellationToken::new(), |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn windows_prefixes_and_failures() {
    let sandbox = Sandbox::new();
    // 3 days × 2 folders × 4 objects, modified at noon of their day; one object a day
    // is rotten.
    for day in 1..=3 {
        for folder in ["a", "b"] {
            for n in 0..4 {
                let key = if n == 3 {
                    format!("in/{folder}/d{day}-rotten.txt")
                } else {
                    format!("in/{folder}/d{day}-{n}.txt")
                };
                sandbox.drop_file(&key, b"x");
                set_modified(&sandbox.bucket().join(&key), utc(&format!("2026-11-0{day}T12:00:00Z")));
            }
        }
    }
    sandbox.drop_file("elsewhere/d2-0.txt", b"x");
    let path = sandbox.pipeline(
        "window",
        "name = \"window\"\n[trigger]\nkind = \"object_store\"\nurl = \"{bucket}\"\nprefix = \"in/\"\n\
         [retry]\nmax_attempts = 1\n\
         [[step]]\nname = \"see\"\nfunction = \"test.probe\"\nfail_keys_containing = \"rotten\"\n",
    );
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let day2 = Window {
        since: Some(utc("2026-11-02T00:00:00Z")),
        until: Some(utc("2026-11-03T00:00:00Z")),
        ..Default::default()
    };

    // Only day 2, only folder b.
    let plan = Plan { window: Window { prefix: Some("in/b/".into()), ..day2.clone() }, ..Default::default() };
    let summary = run_replay(&engine, &path, plan).await;
    assert_eq!((summary.found, summary.done, summary.failed, summary.skipped), (4, 3, 1, 0), "{summary:?}");
    let seen: Vec<String> = probe.key_counts().into_keys().collect();
    assert_eq!(seen, ["in/b/d2-0.txt", "in/b/d2-1.txt", "in/b/d2-2.txt", "in/b/d2-rotten.txt"]);
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");

    // The whole of day 2: folder b is done (its failure dead-lettered) and skipped.
    let summary = run_replay(&engine, &path, Plan { window: day2.clone(), ..Default::default() }).await;
    assert_eq!((summary.found, summary.done, summary.failed, summary.skipped), (8, 3, 1, 4), "{summary:?}");
    // --force runs them all again; everything but day 2 stays untouched.
    let forced = Plan { window: Window { force: true, ..day2 }, ..Default::default() };
    let summary = run_replay(&engine, &path, forced).await;
    assert_eq!((summary.done, summary.failed, summary.skipped), (6, 2, 0), "{summary:?}");
    let counts = probe.key_counts();
    assert!(counts.keys().all(|k| k.contains("/d2-")), "{counts:?}");
    assert_eq!(counts["in/b/d2-0.txt"], 2);
    assert_eq!(counts["in/a/d2-0.txt"], 2);

    // A prefix outside the trigger's is refused, naming both.
    let pipeline = engine.load(std::slice::from_ref(&path)).unwrap().remove(0);
    let plan =
        Plan { window: Window { prefix: Some("elsewhere/".into()), ..Default::default() }, ..Default::default() };
    let error = replay::replay(&engine, pipeline, plan, Default::default(), CancellationToken::new(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"elsewhere/\"") && error.contains("\"in/\""), "{error}");
}

#[tokio::test]
async fn a_replay_through_flow_discard_marks_history_seen() {
    let sandbox = Sandbox::new();
    for n in 0..50 {
        sandbox.drop_file(&format!("in/{n:02}.txt"), b"x");
    }
    let pipeline = |step: &str| {
        format!(
            "name = \"history\"\n[trigger]\nkind = \"object_store\"\nurl = \"{{bucket}}\"\nprefix = \"in/\"\n\
             [limits]\nconcurrency = 16\n[[step]]\nname = \"step\"\n{step}\n"
        )
    };
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let discard = sandbox.pipeline("history", &pipeline("function = \"flow.discard\""));
    let summary = run_replay(&engine, &discard, Plan::default()).await;
    assert_eq!((summary.found, summary.done, summary.failed), (50, 50, 0), "{summary:?}");
    assert_eq!(sqlite_count(&sandbox, "SELECT COUNT(*) FROM objects WHERE status = 'done'"), 50);

    // The same pipeline with a real step now finds everything done.
    let probing = sandbox.pipeline("history", &pipeline("function = \"test.probe\""));
    let summary = run_replay(&engine, &probing, Plan::default()).await;
    assert_eq!((summary.found, summary.done, summary.skipped), (50, 0, 50), "{summary:?}");
    assert!(probe.key_counts().is_empty(), "{:?}", probe.key_counts());
}

#[tokio::test]
async fn a_week_of_hourly_ticks_runs_168_logical_times_in_order() {
    let sandbox = Sandbox::new();
    let path = sandbox.pipeline(
        "hourly",
        "name = \"hourly\"\n[trigger]\nkind = \"cron\"\nschedule = \"@hourly\"\ntimezone = \"Europe/Berlin\"\n\
         [limits]\nconcurrency = 8\n\
         [[step]]\nname = \"see\"\nfunction = \"test.probe\"\nsleep_ms = 1\n",
    );
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let window = Window {
        since: Some(utc("2026-03-23T00:00:00Z")),
        until: Some(utc("2026-03-30T00:00:00Z")),
        ..Default::default()
    };
    let counters = Arc::new(Counters::default());
    let pipeline = engine.load(std::slice::from_ref(&path)).unwrap().remove(0);
    let plan = Plan { window: window.clone(), ..Default::default() };
    let summary =
        replay::replay(&engine, pipeline, plan, counters.clone(), CancellationToken::new(), |_| {}).await.unwrap();
    assert_eq!((summary.found, summary.done, summary.failed), (168, 168, 0), "{summary:?}");
    assert!(counters.enumerated.load(Ordering::Relaxed));

    // In order, one at a time, each with its own logical time (the week holds Berlin's
    // spring-forward night: hourly ticks follow real hours through it).
    let times: Vec<DateTime<Utc>> = probe
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            TriggerEvent::Scheduled(e) => e.time,
            _ => None,
        })
        .collect();
    let expected: Vec<DateTime<Utc>> =
        (0..168).map(|h| utc("2026-03-23T00:00:00Z") + chrono::Duration::hours(h)).collect();
    assert_eq!(times, expected);
    assert_eq!(probe.max_running(), 1, "ticks of a backfill run in order unless --concurrency says otherwise");

    // Again: all done already. With --force and --concurrency 4: all again, side by side.
    let summary = run_replay(&engine, &path, Plan { window: window.clone(), ..Default::default() }).await;
    assert_eq!((summary.done, summary.skipped), (0, 168));
    let forced = Plan { window: Window { force: true, ..window }, concurrency: Some(4), ..Default::default() };
    let summary = run_replay(&engine, &path, forced).await;
    assert_eq!((summary.done, summary.skipped), (168, 0));
    assert!(probe.max_running() > 1);
}

#[test]
fn failed_items_are_dead_lettered_and_the_exit_code_says_so() {
    let sandbox = Sandbox::new();
    sandbox.drop_file("inbox/fine.jpg", &common_jpeg());
    sandbox.drop_file("inbox/not-a-photo.jpg", b"<html>surprise</html>");
    let pipeline = sandbox.pipeline(
        "meta",
        "name = \"meta\"\n[trigger]\nkind = \"object_store\"\nurl = \"{bucket}\"\nprefix = \"inbox/\"\n\
         [[step]]\nname = \"meta\"\nfunction = \"image.metadata\"\n",
    );
    let out = weir(&sandbox).arg("replay").arg(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 found, 1 done, 1 failed"), "{stderr}");
    assert!(stderr.contains("weir dlq list"), "{stderr}");
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record = std::fs::read_to_string(&dead[0]).unwrap();
    assert!(record.contains("inbox/not-a-photo.jpg"), "{record}");
}

/// A small real JPEG.
fn common_jpeg() -> Vec<u8> {
    let image = image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 10, 128]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    bytes.into_inner()
}
