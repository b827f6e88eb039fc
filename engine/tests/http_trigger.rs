//! `kind = "http"` from outside, over real HTTP on loopback: a photo in and its
//! thumbnail out (the shipped pipeline), credentials (bearer and webhook HMAC),
//! a full queue answered 429 at once, idempotency keys, every error class's status,
//! body and path limits, and async requests surviving a kill -9 of `weir run`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{registry_with_probe, wait_for, Probe, Sandbox};
use weir_engine::{Engine, RunningEngine};

const TOKEN: &str = "http-test-token-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

async fn start(sandbox: &Sandbox, toml: &str) -> (RunningEngine, Arc<Probe>, String) {
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry)
        .state_dir(sandbox.state())
        .grace(Duration::from_secs(5))
        .listen("127.0.0.1:0".parse().unwrap());
    let file = sandbox.pipeline("web", toml);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let base = format!("http://{}", running.http_addr.unwrap());
    (running, probe, base)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&image).unwrap();
    out
}

fn probe_pipeline(trigger: &str, step: &str) -> String {
    format!("name = \"web\"\n[trigger]\nkind = \"http\"\n{trigger}\n[retry]\nmax_attempts = 1\n[[step]]\nname = \"s\"\nfunction = \"test.probe\"\n{step}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_pipeline_answers_a_photo_with_its_thumbnail() {
    std::env::set_var("WEIR_HTTP_TOKEN", TOKEN);
    let sandbox = Sandbox::new();
    let toml = std::fs::read_to_string(repo().join("pipelines/http-thumbnail.toml")).unwrap();
    let toml = toml.replace("file://./data/dead-letter", &format!("file://{}/dead", sandbox.dir.path().display()));
    let (running, _, base) = start(&sandbox, &toml).await;
    let http = client();
    for url in [format!("{base}/v1/invoke/http-thumbnail"), format!("{base}/thumbnail")] {
        // As the README's curl sends it: --data-binary, no content type of its own.
        let answer = http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(jpeg(1600, 1000))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{url}");
        assert_eq!(answer.headers()["content-type"], "image/jpeg");
        let thumb = image::load_from_memory(&answer.bytes().await.unwrap()).expect("a valid JPEG");
        assert_eq!((thumb.width(), thumb.height()), (400, 250), "the long edge is 400 px");
    }
    // Not an image: 400, with the reason, and dead-lettered.
    let answer = http
        .post(format!("{base}/thumbnail"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/html")
        .body("<html>")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("not a supported image"), "{body}");
    assert_eq!(body["kind"], "permanent");
    running.stop().await.unwrap();
    let dead = common::files_in(&sandbox.dir.path().join("dead/http-thumbnail"));
    assert_eq!(dead.len(), 1);
    let letter = std::fs::read_to_string(&dead[0]).unwrap();
    assert!(
        letter.contains("<html>") && !letter.contains(TOKEN),
        "the request is kept, its credential is not: {letter}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_401_and_nothing_runs() {
    let sandbox = Sandbox::new();
    let (running, probe, base) = start(&sandbox, &probe_pipeline(&format!("token = \"{TOKEN}\""), "")).await;
    let http = client();
    let url = format!("{base}/v1/invoke/web");
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some("Basic Og=="), Some(&format!("Bearer {TOKEN}x")[..])]
    {
        let mut request = http.post(&url).body("{}");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401, "{auth:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
        assert!(!answer.text().await.unwrap().contains(TOKEN), "the token leaked into an answer");
    }
    assert_eq!(probe.calls(), 0, "an unauthorized request ran");
    let answer = http.post(&url).bearer_auth(TOKEN).body("{\"a\":1}").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "{\"a\":1}", "the probe echoes its item");
    assert_eq!(probe.calls(), 1);
    assert_eq!(http.post(format!("{base}/v1/invoke/nope")).body("").send().await.unwrap().status(), 404);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_are_verified() {
    use weir_engine::auth::hmac::HmacAuth;
    let secret = "webhook-secret-0123456789";
    let sandbox = Sandbox::new();
    let (running, probe, base) =
        start(&sandbox, &probe_pipeline(&format!("hmac_secret = \"{secret}\"\nmode = \"async\""), "")).await;
    let signer = HmacAuth::new(secret.as_bytes(), "x-hub-signature-256".parse().unwrap(), "sha256=".into());
    let http = client();
    let url = format!("{base}/v1/invoke/web");
    let body = r#"{"action":"opened"}"#;
    let unsigned = http.post(&url).body(body).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let forged = http.post(&url).header("x-hub-signature-256", signer.sign(b"{}")).body(body).send().await.unwrap();
    assert_eq!(forged.status(), 401);
    assert!(forged.text().await.unwrap().contains("does not match"));
    let signed =
        http.post(&url).header("x-hub-signature-256", signer.sign(body.as_bytes())).body(body).send().await.unwrap();
    assert_eq!(signed.status(), 202);
    let id = signed.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the signed request ran", || probe.calls() == 1).await;
    // Status requests sign the id, having no body.
    let status = format!("{base}/v1/events/{id}");
    assert_eq!(http.get(&status).send().await.unwrap().status(), 401);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http.get(&status).header("x-hub-signature-256", signer.sign(id.as_bytes())).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let body: serde_json::Value = answer.json().await.unwrap();
        if body["state"] == "done" {
            assert_eq!(body["output"]["action"], "opened", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probe.calls(), 1, "forged requests never ran");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_at_once() {
    let sandbox = Sandbox::new();
    let toml = probe_pipeline("auth = \"none\"", "sleep_ms = 1500")
        .replace("[retry]", "[limits]\nconcurrency = 1\nqueue = 1\n[retry]");
    let (running, probe, base) = start(&sandbox, &toml).await;
    let http = client();
    let url = format!("{base}/v1/invoke/web");
    let first = tokio::spawn(http.post(&url).body("1").send());
    wait_for(Duration::from_secs(30), "the first request running", || probe.calls() == 1).await;
    let second = tokio::spawn(http.post(&url).body("2").send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let third = http.post(&url).body("3").send().await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(asked.elapsed() < Duration::from_millis(500), "429 took {:?}", asked.elapsed());
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(probe.calls(), 2, "the refused request never ran");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_result() {
    let sandbox = Sandbox::new();
    let (running, probe, base) = start(&sandbox, &probe_pipeline("auth = \"none\"", "sleep_ms = 300")).await;
    let http = client();
    let url = format!("{base}/v1/invoke/web");
    let send = |body: &'static str, key: &'static str| http.post(&url).header("idempotency-key", key).body(body).send();
    let (first, early) = tokio::join!(send("first", "k-1"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send("first", "k-1").await
    });
    let first = first.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "first");
    let early = early.unwrap();
    assert_eq!(early.status(), 409, "a retry while the first is running");
    let again = send("second", "k-1").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), "first", "the first request's answer, not a new run");
    let other = send("second", "k-2").await.unwrap();
    assert_eq!(other.text().await.unwrap(), "second");
    assert_eq!(probe.calls(), 2);
    running.stop().await.unwrap();

    // Async: the same key gives the same event.
    let sandbox = Sandbox::new();
    let (running, probe, base) = start(&sandbox, &probe_pipeline("auth = \"none\"\nmode = \"async\"", "")).await;
    let url = format!("{base}/v1/invoke/web");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let answer = http.post(&url).header("idempotency-key", "order-7").body("x").send().await.unwrap();
        assert_eq!(answer.status(), 202);
        ids.push(answer.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(probe.calls(), 1);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_maps_to_its_status() {
    let http = client();
    for (step, limits, status, kind) in [
        ("fail_permanent = true", "", 400, Some("permanent")),
        ("fail_retryable = 5", "", 503, Some("retryable")),
        ("sleep_ms = 3000", "[limits]\ntimeout = \"200ms\"\n", 504, Some("retryable")),
        ("sleep_ms = 3000", "", 504, None),
    ] {
        let sandbox = Sandbox::new();
        let mut toml = probe_pipeline("auth = \"none\"\ntimeout = \"1s\"", step);
        toml = toml.replace("[retry]", &format!("{limits}[retry]"));
        let (running, _, base) = start(&sandbox, &toml).await;
        let answer = http.post(format!("{base}/v1/invoke/web")).body("x").send().await.unwrap();
        assert_eq!(answer.status(), status, "{step} {limits}");
        if status == 503 {
            assert_eq!(answer.headers()["retry-after"], "1");
        }
        let body: serde_json::Value = answer.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert_eq!(body["kind"].as_str(), kind, "{step}: {body}");
        running.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_and_strangers_are_refused() {
    let sandbox = Sandbox::new();
    let (running, probe, base) = start(&sandbox, &probe_pipeline("auth = \"none\"\nmax_body = \"1KiB\"", "")).await;
    // The server closes a connection whose body it refused unread, so each request gets
    // its own client: a pooled connection would race that close.
    let big = client().post(format!("{base}/v1/invoke/web")).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(big.status(), 413);
    let chunked = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let streamed =
        client().post(format!("{base}/v1/invoke/web")).body(reqwest::Body::wrap_stream(chunked)).send().await.unwrap();
    assert_eq!(streamed.status(), 413, "a chunked body is counted as it comes");
    let http = client();
    for id in ["../../ledger.db", "01a23da1-75fd-70db-b6b1-7191c84c39f0", "x"] {
        let answer = http.get(format!("{base}/v1/events/{id}")).send().await.unwrap();
        assert_eq!(answer.status(), 404, "{id}");
    }
    assert_eq!(probe.calls(), 0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_endpoint_is_refused_off_loopback() {
    let sandbox = Sandbox::new();
    let (registry, _) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state()).listen("0.0.0.0:0".parse().unwrap());
    let file = sandbox.pipeline("web", &probe_pipeline("auth = \"none\"", ""));
    let refused =
        engine.start(engine.load(std::slice::from_ref(&file)).unwrap()).await.err().expect("refused").to_string();
    assert!(refused.contains("takes requests from anyone"), "{refused}");
    let open = "name = \"open\"\n[trigger]\nkind = \"http\"\nauth = \"none\"\n\
        [[step]]\nname = \"s\"\nfunction = \"image.metadata\"\n";
    let file = sandbox.pipeline("open", open);
    let validate = |listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_weir")).args(["validate", "--listen", listen]).arg(&file).output().unwrap()
    };
    let out = validate("0.0.0.0:9750");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("only allowed on a loopback address"), "{out:?}");
    assert!(validate("127.0.0.1:9750").status.success(), "open on loopback is fine");
}

/// `weir run` in `dir` on `pipeline`, listening on `addr`.
fn weir_run(dir: &Path, pipeline: &Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir)
        .args(["run", "--listen", &addr.to_string()])
        .arg(pipeline)
        .stdout(std::fs::File::create(dir.join("weir.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("weir.err")).unwrap())
        .spawn()
        .unwrap()
}

async fn up(base: &str) {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http.get(format!("{base}/v1/health")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "weir run did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_requests_survive_a_kill_9_between_202_and_completion() {
    const N: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("async.toml");
    std::fs::write(
        &pipeline,
        "name = \"async\"\n[trigger]\nkind = \"http\"\nmode = \"async\"\nauth = \"none\"\nmax_body = \"16MiB\"\n\
         [limits]\nconcurrency = 1\nqueue = 16\n\
         [[step]]\nname = \"thumb\"\nfunction = \"image.resize_and_watermark\"\nsizes = [{ name = \"thumb\", long_edge = 300 }]\n\
         [[step]]\nname = \"store\"\nafter = \"thumb\"\nfunction = \"object.put\"\nurl = \"file://./out\"\nkey = \"{stem}.jpg\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut weir = weir_run(dir.path(), &pipeline, addr);
    up(&base).await;
    let http = client();
    let photo = jpeg(4000, 3000);
    let mut ids = Vec::new();
    for _ in 0..N {
        let answer = http
            .post(format!("{base}/v1/invoke/async"))
            .header("content-type", "image/jpeg")
            .body(photo.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        ids.push(answer.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    // Killed once the first request finished, with the rest accepted and waiting.
    let out = dir.path().join("out");
    let deadline = Instant::now() + Duration::from_secs(120);
    while common::files_in(&out).is_empty() {
        assert!(Instant::now() < deadline, "no output before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    weir.kill().unwrap();
    weir.wait().unwrap();
    let before = common::files_in(&out).len();
    assert!(before < N, "killed too late to test anything ({before} done)");

    let mut weir = weir_run(dir.path(), &pipeline, addr);
    up(&base).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    for id in &ids {
        loop {
            let body: serde_json::Value =
                http.get(format!("{base}/v1/events/{id}")).send().await.unwrap().json().await.unwrap();
            if body["state"] == "done" {
                let key = body["output"]["key"].as_str().unwrap_or_default();
                assert_eq!(key, format!("{id}.jpg"), "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} never finished: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut names: Vec<String> =
        common::files_in(&out).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| format!("{id}.jpg")).collect();
    expected.sort();
    assert_eq!(names, expected, "every accepted request has its output, once");
    for name in &names {
        let thumb = image::open(out.join(name)).unwrap();
        assert_eq!(thumb.width(), 300);
    }
    let kept = dir.path().join("data/.weir/http/async");
    assert!(common::files_in(&kept).is_empty(), "finished requests are no longer kept");
    let _ = Command::new("kill").args(["-TERM", &weir.id().to_string()]).status();
    weir.wait().unwrap();
}
