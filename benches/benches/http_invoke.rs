//! Sync HTTP invocations through `weir run` (the release binary), measured from a
//! separate process over loopback with keep-alive connections:
//!
//! 1. a no-op pipeline (`json.transform` with `.`): requests/s and p50/p99 latency,
//!    the cost of the HTTP trigger and the executor themselves;
//! 2. `pipelines/http-thumbnail.toml` on real photos against the same job behind a
//!    minimal Python server (`benches/pillow_http.py`: Pillow, draft mode), same run.
//!
//! `cargo build --release && cargo bench -p weir-benches --bench http_invoke -- \
//!     [--photos DIR] [--python PATH] [--seconds N] [--only noop]`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn weir(dir: &Path, pipeline: &Path, addr: SocketAddr) -> Killed {
    let bin = repo().join("target/release/weir");
    assert!(bin.exists(), "build it first: cargo build --release");
    Killed(
        Command::new(bin)
            .current_dir(dir)
            .env("WEIR_HTTP_TOKEN", TOKEN)
            .env("WEIR_LOG", "warn")
            .args(["run", "--listen", &addr.to_string()])
            .arg(pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn wait_up(addr: SocketAddr) {
    for _ in 0..300 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never answered");
}

/// One keep-alive connection: POST, read the answer whole, again, until `until`.
async fn connection(addr: SocketAddr, path: String, bodies: Arc<Vec<Vec<u8>>>, until: Instant) -> Vec<(Duration, u16)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut seen = Vec::new();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut i = seen.len();
    while Instant::now() < until {
        let body = &bodies[i % bodies.len()];
        i += 1;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let started = Instant::now();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        buf.clear();
        let (status, length, head_end) = loop {
            let mut chunk = [0u8; 16384];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                    .unwrap_or(0);
                break (status, length, end + 4);
            }
        };
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        seen.push((started.elapsed(), status));
    }
    seen
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    ok: usize,
    other: usize,
}

async fn load(addr: SocketAddr, path: &str, bodies: Vec<Vec<u8>>, connections: usize, seconds: u64) -> Figures {
    let bodies = Arc::new(bodies);
    // Warm-up: one request per connection, not counted.
    connection(addr, path.to_string(), bodies.clone(), Instant::now()).await;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> =
        (0..connections).map(|_| tokio::spawn(connection(addr, path.to_string(), bodies.clone(), until))).collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let took = started.elapsed();
    let ok = all.iter().filter(|(_, s)| *s == 200).count();
    let mut times: Vec<Duration> = all.iter().map(|(d, _)| *d).collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Figures {
        per_second: all.len() as f64 / took.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        ok,
        other: all.len() - ok,
    }
}

fn print(name: &str, connections: usize, f: &Figures) {
    println!(
        "{name:<34} {connections:>3} conns  {:>9.0} req/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({} ok, {} other)",
        f.per_second,
        f.p50.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
        f.ok,
        f.other
    );
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let seconds: u64 = arg("--seconds").map(|s| s.parse().unwrap()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();

    let only = arg("--only");
    // 1. No-op.
    let noop = dir.path().join("noop.toml");
    std::fs::write(
        &noop,
        format!(
            "name = \"noop\"\n[trigger]\nkind = \"http\"\ntoken = \"{TOKEN}\"\n[limits]\nconcurrency = 64\nqueue = 256\n\
             [[step]]\nname = \"same\"\nfunction = \"json.transform\"\nfilter = \".\"\n"
        ),
    )
    .unwrap();
    let addr = free_addr();
    let server = weir(dir.path(), &noop, addr);
    wait_up(addr).await;
    let body = br#"{"id": 1, "name": "a small event"}"#.to_vec();
    for connections in [1, 16, 64] {
        if only.as_deref().is_some_and(|o| o != "noop") {
            break;
        }
        let f = load(addr, "/v1/invoke/noop", vec![body.clone()], connections, seconds).await;
        print("weir no-op (json.transform .)", connections, &f);
    }
    drop(server);
    if only.as_deref() == Some("noop") {
        return;
    }

    // 2. Thumbnails: weir against Pillow behind a Python server.
    let photos: Vec<Vec<u8>> = match arg("--photos") {
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
                })
                .collect();
            files.sort();
            files.iter().map(|p| std::fs::read(p).unwrap()).collect()
        }
        None => (0..8).map(|i| weir_benches::photo_jpeg(3000 + i * 100, 2000)).collect(),
    };
    println!("{} photos, {:.1} MB in all", photos.len(), photos.iter().map(Vec::len).sum::<usize>() as f64 / 1e6);
    let addr = free_addr();
    let server = weir(dir.path(), &repo().join("pipelines/http-thumbnail.toml"), addr);
    wait_up(addr).await;
    let mut weir_figures = Vec::new();
    for connections in [1, 4] {
        let f = load(addr, "/v1/invoke/http-thumbnail", photos.clone(), connections, seconds).await;
        print("weir http-thumbnail", connections, &f);
        weir_figures.push(f);
    }
    drop(server);
    let python = arg("--python").unwrap_or_else(|| "python3".into());
    let addr = free_addr();
    let peer = Killed(
        Command::new(python)
            .arg(repo().join("benches/pillow_http.py"))
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_up(addr).await;
    for (i, connections) in [1, 4].into_iter().enumerate() {
        let f = load(addr, "/", photos.clone(), connections, seconds).await;
        print("Pillow (draft) ThreadingHTTPServer", connections, &f);
        println!(
            "    weir/Pillow at {connections} conns: {:.2}x the requests/s, p50 {:.2}x",
            weir_figures[i].per_second / f.per_second,
            f.p50.as_secs_f64() / weir_figures[i].p50.as_secs_f64()
        );
    }
    drop(peer);
}
