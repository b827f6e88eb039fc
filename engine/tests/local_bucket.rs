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
