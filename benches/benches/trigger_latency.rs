//! How long from "an object changed" to "the function runs", on a real S3-protocol
//! server on loopback (the in-process s3s-fs server the engine's tests use).
//!
//! * notifications: an S3 `Records[]` notification POSTed to weir's endpoint → the
//!   pipeline's first step invoked. The object is put beforehand, so the figure is
//!   weir's own share: HTTP, parsing, the ledger's *pending* record, queueing, the
//!   input's GET and the invocation. Also the POST's own answer time (the sender's
//!   view: 202 only after the ledger holds the object).
//! * poll: the object's PUT → the first step invoked, with `poll_interval` 500 ms over a
//!   prefix that also holds `BACKGROUND_KEYS` older objects, so each poll is a real
//!   listing compared against the ledger. s3s-fs leaves ETags out of listings, so
//!   weir HEADs every listed key each pass here (S3, MinIO, SeaweedFS and moto do not
//!   need that): the figure is an upper bound of interval + pass time.
//!
//! Objects go one at a time, so each latency is that of an idle engine.
//!
//! Run: `cargo bench -p weir-benches --bench trigger_latency`

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::s3::{post, s3_records, S3Server};
use common::{registry_with_probe, wait_for, Probe, Sandbox};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use weir_engine::{Engine, RunningEngine};

const NOTIFIED: usize = 1000;
const POLLED: usize = 60;
const BACKGROUND_KEYS: usize = 2000;
const POLL_INTERVAL: &str = "500ms";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let notification = notification_latency().await;
    let poll = poll_latency().await;
    println!("\ntrigger latency (s3s-fs on loopback, one object at a time)");
    report(&format!("notification → invocation ({NOTIFIED} objects)"), notification.0);
    report("notification POST → 202 answer", notification.1);
    report(
        &format!("PUT → invocation, poll every {POLL_INTERVAL}, {BACKGROUND_KEYS} keys listed ({POLLED} objects)"),
        poll,
    );
}

async fn notification_latency() -> (Vec<Duration>, Vec<Duration>) {
    let server = S3Server::start(&["photos"]).await;
    let photos = server.client("photos");
    let sandbox = Sandbox::new();
    let (running, probe) =
        start(&sandbox, &server, "notified", "detect = \"notifications\"\nnotify_auth = \"none\"").await;
    let addr = running.http_addr.expect("the notification endpoint is served");
    let (mut invoked, mut answered) = (Vec::new(), Vec::new());
    for i in 0..NOTIFIED {
        let key = format!("inbox/photo {i:05}.jpg");
        let etag = put(&*photos, &key).await;
        let body = s3_records("photos", &key, &etag, 5, "ObjectCreated:Put").to_string();
        let sent = Instant::now();
        let (status, answer) = post(addr, "/v1/notifications/notified", &body).await;
        answered.push(sent.elapsed());
        assert_eq!(status, 202, "{answer}");
        invoked.push(invocation(&probe, i, sent).await);
    }
    running.stop().await.expect("engine stops");
    (invoked, answered)
}

async fn poll_latency() -> Vec<Duration> {
    let server = S3Server::start(&["photos"]).await;
    let photos = server.client("photos");
    for i in 0..BACKGROUND_KEYS {
        put(&*photos, &format!("inbox/old/{i:05}.jpg")).await;
    }
    let sandbox = Sandbox::new();
    let detect = format!("detect = \"poll\"\npoll_interval = \"{POLL_INTERVAL}\"");
    let (running, probe) = start(&sandbox, &server, "polled", &detect).await;
    wait_for(Duration::from_secs(120), "the old keys done", || probe.calls() == BACKGROUND_KEYS).await;
    let mut invoked = Vec::new();
    for i in 0..POLLED {
        let key = format!("inbox/new/{i:05}.jpg");
        let sent = Instant::now();
        put(&*photos, &key).await;
        invoked.push(invocation(&probe, BACKGROUND_KEYS + i, sent).await);
    }
    running.stop().await.expect("engine stops");
    invoked
}

async fn start(
    sandbox: &Sandbox,
    server: &S3Server,
    name: &str,
    detect: &str,
) -> (RunningEngine, std::sync::Arc<Probe>) {
    let toml = format!(
        "name = \"{name}\"\n[trigger]\nkind = \"object_store\"\nurl = \"s3://photos\"\nprefix = \"inbox/\"\n{detect}\n\
         [trigger.options]\n{}\n[[step]]\nname = \"see\"\nfunction = \"test.probe\"\n",
        server.options_toml()
    );
    let file = sandbox.pipeline(name, &toml);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state()).listen("127.0.0.1:0".parse().expect("an address"));
    let pipelines = engine.load(&[file]).expect("the bench pipeline is valid");
    (engine.start(pipelines).await.expect("engine starts"), probe)
}

async fn put(store: &dyn ObjectStore, key: &str) -> String {
    let put = store.put(&Path::from(key), PutPayload::from_static(b"photo")).await.expect("put");
    put.e_tag.unwrap_or_default()
}

/// Waits for call number `n` (0-based) and returns its delay after `since`.
async fn invocation(probe: &Probe, n: usize, since: Instant) -> Duration {
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = probe.times("").get(n) {
            return at.saturating_duration_since(since);
        }
        assert!(Instant::now() < limit, "call {n} never came");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0))
    );
}
