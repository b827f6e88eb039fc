//! `weir run` as a user runs it: the shipped thumbnails pipeline on real JPEGs, bad
//! inputs dead-lettered, graceful stop on SIGTERM, and kill -9 mid-burst losing nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::{ImageEncoder, RgbImage};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `weir run pipelines/thumbnails.toml` in `dir` (so `./data` is `dir/data`).
fn start_weir(dir: &Path) -> Child {
    start_weir_on(dir, None)
}

/// [`start_weir`], its HTTP endpoint on `listen`.
fn start_weir_on(dir: &Path, listen: Option<std::net::SocketAddr>) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("weir.log")).unwrap();
    let listen = listen.map(|addr| vec!["--listen".to_string(), addr.to_string()]).unwrap_or_default();
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir)
        .args(["run", "--grace", "60s"])
        .args(listen)
        .arg(repo().join("pipelines/thumbnails.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// SIGTERM, as a service manager would send, then the exit status.
fn stop(mut child: Child) -> std::process::ExitStatus {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    child.wait().unwrap()
}

/// A photo-like JPEG: smooth gradients plus a per-image pattern, so each is distinct.
fn jpeg(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        let r = (x * 255 / width) as u8;
        let g = (y * 255 / height) as u8;
        let b = (((x / 7 + y / 5 + seed * 13) % 64) * 4) as u8;
        image::Rgb([r, g, b])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// Writes a file the way `cp` does (in place; weir waits for the close).
fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir.join("data/inbox")).unwrap();
    std::fs::write(dir.join("data/inbox").join(name), bytes).unwrap();
}

fn outputs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for variant in ["thumb", "medium", "large"] {
        if let Ok(entries) = std::fs::read_dir(dir.join("data/processed").join(variant)) {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jpg")));
        }
    }
    out.sort();
    out
}

fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir.join("data/dead-letter/thumbnails")) else { return vec![] };
    // `name#N` is object_store's temp file of a write in progress.
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains('#'))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

fn wait_for(limit: Duration, what: &str, dir: &Path, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > limit {
            let log = std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for {what}; weir.log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port free now (the kernel picks it; a test binding it a moment later may, rarely,
/// lose it to another process).
fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `GET path` on `addr`: (status, body). Plain HTTP/1.1 over a socket, as curl sends it.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the series `name{labels…}` in a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let wanted = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && wanted).then(|| value.parse().ok())?
    })
}

/// `promtool check metrics` on `text`, when promtool is here (Debian's `prometheus`
/// package; `.ci/run` installs it and sets `WEIR_TEST_PROMTOOL=1`, which makes it
/// required).
fn promtool_check(text: &str) {
    let required = std::env::var_os("WEIR_TEST_PROMTOOL").is_some();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if !required => {
            eprintln!("promtool not found ({e}): the exposition is not linted here");
            return;
        }
        Err(e) => panic!("promtool is required (WEIR_TEST_PROMTOOL) but cannot run: {e}"),
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");
}

#[test]
fn the_shipped_pipeline_makes_three_variants_and_dead_letters_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let addr = free_address();
    let weir = start_weir_on(dir, Some(addr));
    // Landscape, portrait, square and small photos.
    let shapes = [(1800, 1200), (1200, 1800), (1000, 1000), (640, 480), (150, 100)];
    for i in 0..20u32 {
        let (w, h) = shapes[i as usize % shapes.len()];
        drop_file(dir, &format!("photo {i:02}.jpg"), &jpeg(w, h, i));
    }
    let good = jpeg(800, 600, 99);
    drop_file(dir, "empty.jpg", b"");
    drop_file(dir, "x.jpg", b"<html><body>not a photo</body></html>");
    drop_file(dir, "truncated.jpg", &good[..good.len() / 3]);

    wait_for(Duration::from_secs(120), "60 outputs and 3 dead letters", dir, || {
        outputs(dir).len() == 60 && dead_letters(dir).len() == 3
    });

    // The burst, as Prometheus scrapes it.
    let events = |outcome| {
        sample(&http_get(addr, "/metrics").1, "weir_events_total", &[("pipeline", "thumbnails"), ("outcome", outcome)])
    };
    wait_for(Duration::from_secs(30), "the metrics to count 23 events", dir, || {
        events("done") == Some(20.0) && events("dead_lettered") == Some(3.0)
    });
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let thumbnails = [("pipeline", "thumbnails")];
    assert_eq!(sample(&text, "weir_events_total", &[("pipeline", "thumbnails"), ("outcome", "abandoned")]), Some(0.0));
    assert_eq!(sample(&text, "weir_events_received_total", &thumbnails), Some(23.0));
    assert_eq!(sample(&text, "weir_events_in_flight", &thumbnails), Some(0.0));
    assert_eq!(sample(&text, "weir_queue_depth", &thumbnails), Some(0.0));
    assert_eq!(sample(&text, "weir_trigger_up", &thumbnails), Some(1.0));
    assert_eq!(sample(&text, "weir_event_duration_seconds_count", &thumbnails), Some(23.0));
    assert_eq!(sample(&text, "weir_event_latency_seconds_count", &thumbnails), Some(23.0));
    let invocations = |step, outcome| {
        sample(&text, "weir_invocations_total", &[("pipeline", "thumbnails"), ("step", step), ("outcome", outcome)])
    };
    assert_eq!(invocations("variants", "ok"), Some(20.0), "{text}");
    assert_eq!(invocations("variants", "permanent"), Some(3.0));
    assert_eq!(invocations("store", "ok"), Some(60.0), "one store per variant");
    let bytes = |name, step| sample(&text, name, &[("pipeline", "thumbnails"), ("step", step)]).unwrap_or(0.0);
    assert!(bytes("weir_step_input_bytes_total", "variants") > 20.0 * 1000.0, "the photos read");
    let made = bytes("weir_step_output_bytes_total", "variants");
    assert!(made > 0.0);
    assert_eq!(bytes("weir_step_input_bytes_total", "store"), made, "what variants made is what store wrote");
    assert_eq!(
        sample(&text, "weir_invocation_duration_seconds_count", &[("pipeline", "thumbnails"), ("step", "variants")]),
        Some(23.0)
    );
    assert!(sample(&text, "weir_poll_passes_total", &[("pipeline", "thumbnails"), ("result", "ok")]).unwrap() >= 1.0);
    assert!(sample(&text, "weir_http_requests_total", &[("route", "/metrics"), ("status", "200")]).unwrap() >= 1.0);
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(sample(&text, "weir_ledger_bytes", &[]).unwrap() > 0.0);
    promtool_check(&text);
    assert_eq!(http_get(addr, "/v1/health"), (200, "ok".to_string()));
    let (status, ready) = http_get(addr, "/v1/ready");
    assert_eq!((status, ready.as_str()), (200, r#"{"ready":true}"#));

    let status = stop(weir);
    assert!(status.success(), "weir run exits 0 on SIGTERM, got {status}");

    for path in outputs(dir) {
        let variant = path.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let i: usize = path.file_stem().unwrap().to_str().unwrap().trim_start_matches("photo ").parse().unwrap();
        let (w, h) = shapes[i % shapes.len()];
        let long_edge = match variant {
            "thumb" => 200,
            "medium" => 800,
            _ => 1600,
        };
        let expected = long_edge.min(w.max(h));
        let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(img.width().max(img.height()), expected, "{}", path.display());
        assert_eq!(img.width() >= img.height(), w >= h, "{} keeps its orientation", path.display());
    }
    let mut failed: Vec<String> = dead_letters(dir)
        .iter()
        .map(|r| {
            assert_eq!(r["error_kind"], "permanent", "{r}");
            assert_eq!(r["attempts"], 1, "permanent errors are not retried: {r}");
            format!("{} | {}", r["event"]["key"].as_str().unwrap(), r["error"].as_str().unwrap())
        })
        .collect();
    failed.sort();
    assert_eq!(failed.len(), 3);
    for (line, key) in failed.iter().zip(["inbox/empty.jpg", "inbox/truncated.jpg", "inbox/x.jpg"]) {
        assert!(line.starts_with(key), "{line}");
        assert!(!line.contains('\n'), "one-line error: {line}");
    }

    // `weir runs` shows them; `weir dlq list` lists the three records.
    let runs =
        Command::new(env!("CARGO_BIN_EXE_weir")).current_dir(dir).args(["runs", "--limit", "50"]).output().unwrap();
    let runs = String::from_utf8_lossy(&runs.stdout);
    assert_eq!(runs.matches(" done ").count(), 20, "{runs}");
    assert_eq!(runs.matches(" dead_letter ").count(), 3, "{runs}");
    let dlq = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir)
        .args(["dlq", "list"])
        .arg(repo().join("pipelines/thumbnails.toml"))
        .output()
        .unwrap();
    assert!(dlq.status.success());
    assert_eq!(String::from_utf8_lossy(&dlq.stdout).lines().count(), 4, "header + 3 records");
}

#[test]
fn dead_letters_can_be_redriven_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let weir = start_weir(dir);
    drop_file(dir, "late.jpg", b"");
    wait_for(Duration::from_secs(60), "a dead letter", dir, || dead_letters(dir).len() == 1);
    assert!(stop(weir).success());
    let redrive = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .current_dir(dir)
            .args(["dlq", "redrive"])
            .arg(repo().join("pipelines/thumbnails.toml"))
            .output()
            .unwrap()
    };
    // Still broken: the record stays, with a redrive count.
    let out = redrive(dir);
    assert!(!out.status.success());
    assert_eq!(dead_letters(dir)[0]["redrives"], 1);
    // The upload finished after all: a redrive processes it and clears the record.
    std::fs::write(dir.join("data/inbox/late.jpg"), jpeg(400, 300, 7)).unwrap();
    let out = redrive(dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(dead_letters(dir).is_empty());
    assert_eq!(outputs(dir).len(), 3);
}

#[test]
fn kill_9_mid_burst_then_restart_processes_every_file_like_a_clean_run() {
    const N: u32 = 40;
    let photos: Vec<(String, Vec<u8>)> = (0..N).map(|i| (format!("p{i:02}.jpg"), jpeg(900, 600, i))).collect();

    // A clean run, for reference.
    let clean = tempfile::tempdir().unwrap();
    let weir = start_weir(clean.path());
    for (name, bytes) in &photos {
        drop_file(clean.path(), name, bytes);
    }
    wait_for(Duration::from_secs(180), "clean outputs", clean.path(), || outputs(clean.path()).len() == 3 * N as usize);
    assert!(stop(weir).success());

    // A run killed with SIGKILL part-way, then restarted.
    let crashed = tempfile::tempdir().unwrap();
    let mut weir = start_weir(crashed.path());
    for (name, bytes) in &photos {
        drop_file(crashed.path(), name, bytes);
    }
    wait_for(Duration::from_secs(180), "some outputs", crashed.path(), || outputs(crashed.path()).len() >= 15);
    weir.kill().unwrap();
    weir.wait().unwrap();
    let before_restart = outputs(crashed.path()).len();
    assert!(before_restart < 3 * N as usize, "killed too late to test anything ({before_restart} outputs)");

    let weir = start_weir(crashed.path());
    wait_for(Duration::from_secs(180), "outputs after restart", crashed.path(), || {
        outputs(crashed.path()).len() == 3 * N as usize
    });
    assert!(stop(weir).success());

    // Same files, same bytes.
    let rel = |root: &Path| -> Vec<PathBuf> {
        outputs(root).iter().map(|p| p.strip_prefix(root).unwrap().to_path_buf()).collect()
    };
    assert_eq!(rel(clean.path()), rel(crashed.path()));
    for path in rel(clean.path()) {
        assert!(
            std::fs::read(clean.path().join(&path)).unwrap() == std::fs::read(crashed.path().join(&path)).unwrap(),
            "{} differs from the clean run",
            path.display()
        );
    }
    // No temp files left behind by the interrupted writes are visible as outputs, and
    // the ledger knows every photo.
    let runs = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(crashed.path())
        .args(["runs", "--limit", "1000"])
        .output()
        .unwrap();
    // A photo whose event was acknowledged just before the kill, but whose run row was
    // not yet closed, reads "crashed" (the restart marks what the dead process left
    // running): finished, not run again.
    let runs = String::from_utf8_lossy(&runs.stdout);
    let done: std::collections::HashSet<&str> = runs
        .lines()
        .filter(|l| l.contains(" done ") || l.contains(" crashed "))
        .filter_map(|l| l.split_whitespace().find(|w| w.ends_with(".jpg")))
        .collect();
    assert_eq!(done.len(), N as usize, "{runs}");
    assert!(!runs.contains(" running "), "runs of the killed process still read running: {runs}");
}

/// Two `weir run`s on one state directory would each run the other's unfinished
/// objects: the second refuses at once and names the first; once the first is gone
/// (even by kill -9), the directory is free again.
#[test]
fn a_second_run_on_the_same_state_directory_refuses_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_weir(dir.path());
    let lock = dir.path().join("data/.weir/weir.lock");
    wait_for(Duration::from_secs(60), "the first run holds the state directory", dir.path(), || {
        std::fs::read_to_string(&lock).is_ok_and(|pid| pid.trim() == first.id().to_string())
    });
    let second = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir.path())
        .arg("run")
        .arg(repo().join("pipelines/thumbnails.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("in use by pid {}", first.id())), "{stderr}");

    let mut first = first;
    first.kill().unwrap();
    first.wait().unwrap();
    let third = start_weir(dir.path());
    wait_for(Duration::from_secs(60), "a run after a kill -9 takes the directory", dir.path(), || {
        std::fs::read_to_string(&lock).is_ok_and(|pid| pid.trim() == third.id().to_string())
    });
    assert!(stop(third).success());
}
