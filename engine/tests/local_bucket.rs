//! The embedded default trigger: a local directory as the bucket, over real inotify.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{registry_with_probe, wait_for, Sandbox};
use weir_engine::Engine;

const WAIT: Duration = Duration::from_secs(60);

const COPY: &str = r#"
name = "copier"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
include = ["*.txt"]
rescan_interval = "200ms"
settle = "300ms"
[[step]]
name = "see"
function = "test.probe"
[[step]]
name = "copy"
after = "see"
function = "object.copy"
key = "copies/{name}"
"#;

fn engine(sandbox: &Sandbox, registry: weir_functions::Registry) -> Engine {
    Engine::new(registry).state_dir(sandbox.state()).grace(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_processes_nothing_twice_and_a_changed_file_again() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("copier", COPY);
    sandbox.drop_file("inbox/a.txt", b"one");
    sandbox.drop_file("inbox/b.txt", b"two");

    let (registry, probe) = registry_with_probe();
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(std::slice::from_ref(&file)).unwrap()).await.unwrap();
    let stats = running.pipeline("copier").unwrap().executor.clone();
    wait_for(WAIT, "2 done", || stats.events_done.load(Ordering::SeqCst) == 2).await;
    // Dropped while running: picked up by the watcher.
    sandbox.drop_file("inbox/sub/c.txt", b"three");
    wait_for(WAIT, "3 done", || stats.events_done.load(Ordering::SeqCst) == 3).await;
    running.stop().await.unwrap();
    assert_eq!(probe.calls(), 3);

    // Down time: one file arrives, one changes, one stays the same.
    sandbox.drop_file("inbox/d.txt", b"four");
    std::thread::sleep(Duration::from_millis(20));
    sandbox.drop_file("inbox/a.txt", b"one, edited");

    let (registry, probe) = registry_with_probe();
    let engine = self::engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("copier").unwrap().executor.clone();
    wait_for(WAIT, "2 done after restart", || stats.events_done.load(Ordering::SeqCst) == 2).await;
    // Several rescans later, still nothing else.
    tokio::time::sleep(Duration::from_millis(800)).await;
    running.stop().await.unwrap();
    assert_eq!(probe.calls(), 2, "only the new and the changed file run after a restart");
    assert_eq!(std::fs::read_to_string(sandbox.bucket().join("copies/a.txt")).unwrap(), "one, edited");
    assert_eq!(std::fs::read_to_string(sandbox.bucket().join("copies/d.txt")).unwrap(), "four");
    assert_eq!(std::fs::read_to_string(sandbox.bucket().join("copies/c.txt")).unwrap(), "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_being_written_is_never_read_half_done() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("copier", COPY);
    let (registry, probe) = registry_with_probe();
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("copier").unwrap().executor.clone();

    // An in-place writer that takes its time, across several rescans.
    let path = sandbox.bucket().join("inbox/slow.txt");
    let mut out = std::fs::File::create(&path).unwrap();
    let mut expected = String::new();
    for i in 0..8 {
        let chunk = format!("chunk {i}\n");
        out.write_all(chunk.as_bytes()).unwrap();
        out.flush().unwrap();
        expected.push_str(&chunk);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(out);
    wait_for(WAIT, "done", || stats.events_done.load(Ordering::SeqCst) >= 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    running.stop().await.unwrap();
    assert_eq!(std::fs::read_to_string(sandbox.bucket().join("copies/slow.txt")).unwrap(), expected);
    assert_eq!(probe.calls(), 1, "one complete read, no partial one before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_in_the_same_bucket_do_not_retrigger_and_awkward_names_work() {
    let sandbox = Sandbox::new();
    // Watches the whole bucket; outputs are excluded by glob.
    let file = sandbox.pipeline(
        "whole",
        r#"
name = "whole"
[trigger]
kind = "object_store"
url = "{bucket}"
exclude = ["copies/**"]
[[step]]
name = "see"
function = "test.probe"
[[step]]
name = "copy"
after = "see"
function = "object.copy"
key = "copies/{name}"
"#,
    );
    let names = ["inbox/with space.txt", "inbox/plus+sign.txt", "inbox/100%25 real.txt", "inbox/ünïcödé 写真.txt"];
    for n in names {
        sandbox.drop_file(n, n.as_bytes());
    }
    let (registry, probe) = registry_with_probe();
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("whole").unwrap().executor.clone();
    wait_for(WAIT, "all done", || stats.events_done.load(Ordering::SeqCst) == names.len() as u64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await.unwrap();
    assert_eq!(probe.calls(), names.len(), "outputs must not fire the pipeline again");
    for n in names {
        let copy = sandbox.bucket().join("copies").join(n.trim_start_matches("inbox/"));
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), n, "{}", copy.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_then_delete_moves_objects_to_another_bucket() {
    let sandbox = Sandbox::new();
    let archive = sandbox.dir.path().join("archive");
    let file = sandbox.pipeline(
        "mover",
        &r#"
name = "mover"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
[[step]]
name = "archive"
function = "object.copy"
url = "ARCHIVE"
key = "{dir}/{stem}.{ext}"
[[step]]
name = "remove"
after = "archive"
function = "object.delete"
"#
        .replace("ARCHIVE", &format!("file://{}", archive.display())),
    );
    let (registry, _probe) = registry_with_probe();
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("mover").unwrap().executor.clone();
    sandbox.drop_file("inbox/2026/report.csv", b"a,b\n1,2\n");
    wait_for(WAIT, "moved", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    running.stop().await.unwrap();
    assert_eq!(std::fs::read_to_string(archive.join("inbox/2026/report.csv")).unwrap(), "a,b\n1,2\n");
    assert!(!sandbox.bucket().join("inbox/2026/report.csv").exists(), "source deleted after the copy");
}

/// `ln -s /usr/share/doc data/inbox/doclink` made thousands of dead letters, each
/// naming a file outside the bucket. Links are skipped (one line per listing), both at
/// start-up and when one appears while running; files written through the link
/// elsewhere never become events; real files around them run as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_in_the_inbox_are_skipped_not_walked_or_dead_lettered() {
    let sandbox = Sandbox::new();
    let elsewhere = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::write(elsewhere.path().join(format!("doc{i}.txt")), "outside").unwrap();
    }
    std::os::unix::fs::symlink(elsewhere.path(), sandbox.bucket().join("inbox/doclink")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("doc0.txt"), sandbox.bucket().join("inbox/one.txt")).unwrap();
    sandbox.drop_file("inbox/a.txt", b"one");
    let file = sandbox.pipeline("copier", COPY);
    let (registry, probe) = registry_with_probe();
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("copier").unwrap().executor.clone();
    wait_for(WAIT, "the real file done", || stats.events_done.load(Ordering::SeqCst) == 1).await;
    // While running: a new link, a file written through the old one, a real file.
    std::os::unix::fs::symlink(elsewhere.path(), sandbox.bucket().join("inbox/later")).unwrap();
    std::fs::write(elsewhere.path().join("new.txt"), "outside").unwrap();
    sandbox.drop_file("inbox/b.txt", b"two");
    wait_for(WAIT, "the second real file done", || stats.events_done.load(Ordering::SeqCst) == 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    running.stop().await.unwrap();
    assert_eq!(probe.key_counts().into_keys().collect::<Vec<_>>(), ["inbox/a.txt", "inbox/b.txt"]);
    assert_eq!(stats.events_dead_lettered.load(Ordering::SeqCst), 0);
    assert!(sandbox.files_under("../state/dead-letter").is_empty());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 51, "nothing outside was touched");
}

/// An input that kills the process (an abort, an out-of-memory kill) would crash-loop
/// `weir run` for ever. The ledger knows which runs were in flight when a process
/// died: an event caught in two deaths is dead-lettered as poison on the next start,
/// one caught in a single death runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_in_flight_at_two_deaths_is_dead_lettered_as_poison() {
    let sandbox = Sandbox::new();
    sandbox.drop_file("inbox/poison.txt", b"boom");
    sandbox.drop_file("inbox/once.txt", b"unlucky");
    sandbox.drop_file("inbox/fine.txt", b"fine");
    // The ledger as dead processes leave it: runs still marked running.
    let ledger = weir_engine::state::Ledger::open(&sandbox.state()).unwrap();
    ledger.run_started("died-1", "copier", "inbox/poison.txt").await.unwrap();
    ledger.run_started("died-2", "copier", "inbox/poison.txt").await.unwrap();
    ledger.run_started("died-3", "copier", "inbox/once.txt").await.unwrap();
    drop(ledger);

    let file = sandbox.pipeline("copier", COPY);
    let (registry, probe) = registry_with_probe();
    let engine = engine(&sandbox, registry);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("copier").unwrap().executor.clone();
    wait_for(WAIT, "three events finished", || {
        stats.events_done.load(Ordering::SeqCst) + stats.events_dead_lettered.load(Ordering::SeqCst) == 3
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(probe.key_counts().into_keys().collect::<Vec<_>>(), ["inbox/fine.txt", "inbox/once.txt"]);
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    assert_eq!(letter["step"], "poison");
    let error = letter["error"].as_str().unwrap();
    assert!(error.contains("inbox/poison.txt was being processed when weir died 2 times"), "{error}");
}
