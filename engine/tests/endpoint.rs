//! The HTTP endpoint as an attacker sees it: notifications closed without the
//! pipeline's token, bounded in body size, records per request, header and body time
//! and connections, a forged size never dead-letters a real object, and the status
//! page (keys and errors) served on loopback only.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::s3::{post_with, s3_records, S3Server};
use common::{registry_with_probe, wait_for, Sandbox};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_engine::{Engine, RunningEngine};

const TOKEN: &str = "endpoint-test-token-0123456789";
const PATH: &str = "/v1/notifications/guarded";

fn pipeline(server: &S3Server, auth: &str) -> String {
    format!(
        "name = \"guarded\"\n[trigger]\nkind = \"object_store\"\nurl = \"s3://photos\"\nprefix = \"inbox/\"\n\
         detect = \"notifications\"\n{auth}\n[trigger.options]\n{}\n[limits]\nmax_input_bytes = \"1KiB\"\n\
         [[step]]\nname = \"see\"\nfunction = \"test.probe\"\n",
        server.options_toml()
    )
}

async fn start(
    sandbox: &Sandbox,
    toml: &str,
    listen: &str,
) -> anyhow::Result<(RunningEngine, std::sync::Arc<common::Probe>)> {
    let (registry, probe) = registry_with_probe();
    let engine =
        Engine::new(registry).state_dir(sandbox.state()).grace(Duration::from_secs(5)).listen(listen.parse().unwrap());
    let file = sandbox.pipeline("guarded", toml);
    Ok((engine.start(engine.load(&[file]).unwrap()).await?, probe))
}

fn dead_letters(sandbox: &Sandbox) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(sandbox.state().join("dead-letter/guarded")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_token_opens_the_endpoint() {
    let server = S3Server::start(&["photos"]).await;
    let put = server.client("photos").put(&Path::from("inbox/a.txt"), "hello".into()).await.unwrap();
    let body = s3_records("photos", "inbox/a.txt", put.e_tag.unwrap().trim_matches('"'), 5, "ObjectCreated:Put");
    let body = body.to_string();
    let sandbox = Sandbox::new();
    let toml = pipeline(&server, &format!("notify_token = \"{TOKEN}\""));
    let (running, probe) = start(&sandbox, &toml, "127.0.0.1:0").await.unwrap();
    let addr = running.http_addr.unwrap();
    for refused in [
        vec![],
        vec!["Authorization: Bearer wrong-token-0123456789".to_string()],
        vec![format!("Authorization: Bearer {TOKEN}x")],
    ] {
        let headers: Vec<&str> = refused.iter().map(String::as_str).collect();
        let (status, answer) = post_with(addr, PATH, &headers, body.as_bytes()).await;
        assert_eq!(status, 401, "{refused:?}: {answer}");
        assert!(!answer.contains(TOKEN), "{answer}");
    }
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(post_with(addr, PATH, &[&bearer], body.as_bytes()).await.0, 202);
    // SNS subscribed to http://weir:TOKEN@host/… sends it as basic auth.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("weir:{TOKEN}"));
    let basic = format!("Authorization: Basic {basic}");
    assert_eq!(post_with(addr, PATH, &[&basic], body.as_bytes()).await.0, 202);
    wait_for(Duration::from_secs(30), "the object run", || probe.calls() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await.unwrap();
    assert_eq!(probe.calls(), 1, "refused requests ran nothing; the repeated one was deduplicated");
    assert!(dead_letters(&sandbox).is_empty(), "refused requests are not dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_endpoint_is_refused_off_loopback_and_a_missing_credential_by_validate() {
    let server = S3Server::start(&["photos"]).await;
    let sandbox = Sandbox::new();
    let error = start(&sandbox, &pipeline(&server, "notify_auth = \"none\""), "0.0.0.0:0").await.err().unwrap();
    assert!(error.to_string().contains("only allowed on a loopback address"), "{error}");
    let (registry, _) = registry_with_probe();
    let file = sandbox.pipeline("guarded", &pipeline(&server, ""));
    let Err(diagnostics) = Engine::new(registry).load(&[file]) else {
        panic!("a pipeline without a credential loaded")
    };
    let diagnostics = diagnostics.to_string();
    assert!(diagnostics.contains("notifications need a credential"), "{diagnostics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_forged_sizes_cost_one_answer_each() {
    let server = S3Server::start(&["photos"]).await;
    let photos = server.client("photos");
    let sandbox = Sandbox::new();
    let (running, probe) = start(&sandbox, &pipeline(&server, "notify_auth = \"none\""), "127.0.0.1:0").await.unwrap();
    let addr = running.http_addr.unwrap();

    // 15,000 records for missing keys (7 MB): refused unread. 1,000 (under 1 MiB): one
    // 400 and one small dead letter. Neither makes a single lookup.
    let flood = |n: usize| {
        let records: Vec<serde_json::Value> = (0..n)
            .map(|i| s3_records("photos", &format!("inbox/m{i}"), "e", 1, "ObjectCreated:Put")["Records"][0].clone())
            .collect();
        serde_json::json!({ "Records": records }).to_string()
    };
    assert_eq!(post_with(addr, PATH, &[], flood(15_000).as_bytes()).await.0, 413);
    let (status, answer) = post_with(addr, PATH, &[], flood(1_000).as_bytes()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("1000 records in one request, over 100"), "{answer}");
    let head_requests = server.log.lock().unwrap().iter().filter(|r| r.method == http::Method::HEAD).count();
    assert_eq!(head_requests, 0, "a flood made lookups");
    // A 2 MB body: refused unread, nothing kept.
    let (status, _) = post_with(addr, PATH, &[], &vec![b'x'; 2 << 20]).await;
    assert_eq!(status, 413);
    // Malformed and large-ish: 400, and its dead letter keeps only the first 4 KiB.
    let (status, _) = post_with(addr, PATH, &[], &vec![b'{'; 500_000]).await;
    assert_eq!(status, 400);
    let kept: Vec<u64> = dead_letters(&sandbox).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    assert!(!kept.is_empty() && kept.iter().all(|&len| len < 16 << 10), "dead letters kept whole: {kept:?}");

    // A real 5-byte object notified as 10 GB: the store's size wins; it runs.
    let put = photos.put(&Path::from("inbox/small.txt"), "small".into()).await.unwrap();
    let forged =
        s3_records("photos", "inbox/small.txt", put.e_tag.unwrap().trim_matches('"'), 10 << 30, "ObjectCreated:Put");
    assert_eq!(post_with(addr, PATH, &[], forged.to_string().as_bytes()).await.0, 202);
    wait_for(Duration::from_secs(30), "the forged-size object run", || probe.calls() == 1).await;
    let stats = running.pipeline("guarded").unwrap().executor.clone();
    running.stop().await.unwrap();
    assert_eq!(stats.events_dead_lettered.load(Ordering::SeqCst), 0, "a forged size dead-lettered a real object");
}

/// Half-sent requests (headers never finished) are cut after the header timeout and
/// never hold up a stop: 300 of them exhausted file descriptors and kept SIGTERM
/// waiting a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_off_and_never_delay_a_stop() {
    let server = S3Server::start(&["photos"]).await;
    let sandbox = Sandbox::new();
    let (running, _) = start(&sandbox, &pipeline(&server, "notify_auth = \"none\""), "127.0.0.1:0").await.unwrap();
    let addr = running.http_addr.unwrap();
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Le").as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    for stream in &mut slow {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
        assert!(read.is_ok(), "a half-sent request was held for 20 s");
    }
    assert!(started.elapsed() < weir_engine::http::HEADER_TIMEOUT + Duration::from_secs(5));
    // The endpoint still answers.
    let health = reqwest_get(addr).await;
    assert_eq!(health, "ok");

    // Now hold many open and stop: the stop does not wait for them.
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"POST /v1/notifications/guarded HTTP/1.1\r\nHost: x\r\n").await;
        held.push(stream);
    }
    let stopping = Instant::now();
    running.stop().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(4), "the stop waited {:?} for clients", stopping.elapsed());
}

async fn reqwest_get(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// A local bucket takes notifications naming it by its directory, and a record for a
/// key no file system can hold (over 255 bytes, no ETag) is ignored alone: it used to
/// fail the whole request with 503, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_bucket_takes_notifications_and_an_impossible_key_fails_only_itself() {
    let sandbox = Sandbox::new();
    sandbox.drop_file("inbox/real.txt", b"real");
    let toml = "name = \"guarded\"\n[trigger]\nkind = \"object_store\"\nurl = \"{bucket}\"\nprefix = \"inbox/\"\n\
                detect = \"notifications\"\nnotify_auth = \"none\"\n[[step]]\nname = \"see\"\nfunction = \"test.probe\"\n";
    let (running, probe) = start(&sandbox, toml, "127.0.0.1:0").await.unwrap();
    let addr = running.http_addr.unwrap();
    let record = |key: &str| {
        serde_json::json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "bucket"}, "object": {"key": key}}})
    };
    let long = format!("inbox/{}.txt", "x".repeat(300));
    let body = serde_json::json!({ "Records": [record(&long), record("inbox/real.txt")] }).to_string();
    let (status, answer) = post_with(addr, PATH, &[], body.as_bytes()).await;
    assert_eq!((status, answer.as_str()), (202, r#"{"ignored":1,"queued":1}"#));
    wait_for(Duration::from_secs(30), "the real file run", || probe.calls() == 1).await;
    running.stop().await.unwrap();
    assert_eq!(probe.key_counts().into_keys().collect::<Vec<_>>(), ["inbox/real.txt"]);
}

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:photos-events";

/// An SNS stand-in on loopback: serves the test signing certificate and counts
/// certificate fetches and subscription confirmations.
struct SnsOrigin {
    addr: std::net::SocketAddr,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    confirmations: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SnsOrigin {
    async fn start() -> SnsOrigin {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let fetches = Arc::new(AtomicUsize::new(0));
        let confirmations = Arc::new(AtomicUsize::new(0));
        let (f, c) = (fetches.clone(), confirmations.clone());
        let app = axum::Router::new()
            .route(
                "/cert.pem",
                axum::routing::get(move || async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/sns/test-signing-cert.pem"))
                        .unwrap()
                }),
            )
            .route(
                "/confirm",
                axum::routing::get(move || async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    "<ConfirmSubscriptionResponse/>"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        SnsOrigin { addr, fetches, confirmations }
    }

    /// An SNS message signed with the test key (SignatureVersion 2, SHA-256).
    fn signed(&self, fields: serde_json::Value) -> String {
        let mut envelope = fields.as_object().unwrap().clone();
        let text: String = match envelope["Type"].as_str().unwrap() {
            "Notification" => ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"].as_slice(),
            _ => ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"].as_slice(),
        }
        .iter()
        .filter_map(|name| envelope.get(*name).map(|v| format!("{name}\n{}\n", v.as_str().unwrap())))
        .collect();
        let der = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/sns/test-signing-key.pk8")).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), text.as_bytes(), &mut signature)
            .unwrap();
        let signature = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signature);
        envelope.insert("SignatureVersion".into(), "2".into());
        envelope.insert("Signature".into(), signature.into());
        envelope.entry("SigningCertURL").or_insert(format!("http://{}/cert.pem", self.addr).into());
        serde_json::Value::Object(envelope).to_string()
    }
}

fn sns_notification(topic: &str, key: &str) -> serde_json::Value {
    let records = s3_records("photos", key, "", 0, "ObjectCreated:Put");
    let mut record = records["Records"][0].clone();
    // No size or ETag: weir asks the store.
    record["s3"]["object"] = serde_json::json!({ "key": key });
    serde_json::json!({
        "Type": "Notification", "MessageId": format!("id-{key}"), "TopicArn": topic,
        "Message": serde_json::json!({ "Records": [record] }).to_string(),
        "Timestamp": "2026-12-03T10:00:00.000Z",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_messages_are_taken_only_when_signed_by_sns_for_the_named_topic() {
    let server = S3Server::start(&["photos"]).await;
    for key in ["inbox/signed-v1.txt", "inbox/signed-v2.txt", "inbox/forged.txt"] {
        server.client("photos").put(&Path::from(key), "hello".into()).await.unwrap();
    }
    let sns = SnsOrigin::start().await;
    let sandbox = Sandbox::new();
    let auth =
        format!("notify_auth = \"sns\"\nsns_topic_arns = [\"{TOPIC}\"]\nsns_signing_origin = \"http://{}\"", sns.addr);
    let (running, probe) = start(&sandbox, &pipeline(&server, &auth), "127.0.0.1:0").await.unwrap();
    let addr = running.http_addr.unwrap();
    let post = |body: String| async move { post_with(addr, PATH, &[], body.as_bytes()).await };

    // SignatureVersion 1 (SHA-1, what most topics still send), signed by openssl.
    let v1 = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/sns/notification-v1.json"))
        .unwrap()
        .replace("CERT_URL", &format!("http://{}/cert.pem", sns.addr));
    assert_eq!(post(v1.clone()).await.0, 202);
    assert_eq!(post(sns.signed(sns_notification(TOPIC, "inbox/signed-v2.txt"))).await.0, 202);

    let refused = [
        // Plain S3 records, with no signature at all.
        s3_records("photos", "inbox/forged.txt", "e", 5, "ObjectCreated:Put").to_string(),
        // Signed, then changed.
        v1.replace("signed-v1", "forged"),
        // Signed by SNS, for someone else's topic.
        sns.signed(sns_notification("arn:aws:sns:us-east-1:999999999999:mine", "inbox/forged.txt")),
        // A certificate from anywhere else is never fetched.
        sns.signed({
            let mut n = sns_notification(TOPIC, "inbox/forged.txt");
            n["SigningCertURL"] = format!("http://{}/cert.pem", server.addr).into();
            n
        }),
    ];
    for body in refused {
        let (status, answer) = post(body).await;
        assert_eq!(status, 403, "{answer}");
    }
    assert_eq!(sns.fetches.load(Ordering::SeqCst), 1, "the certificate is fetched once and cached");

    // A signed confirmation is confirmed by visiting its URL; one pointing elsewhere is not.
    let confirmation = |url: String| {
        sns.signed(serde_json::json!({
            "Type": "SubscriptionConfirmation", "MessageId": "c1", "TopicArn": TOPIC, "Token": "tok",
            "Message": "You have chosen to subscribe", "SubscribeURL": url, "Timestamp": "2026-12-03T10:00:00.000Z",
        }))
    };
    assert_eq!(post(confirmation(format!("http://{}/confirm?Token=tok", sns.addr))).await.0, 202);
    assert_eq!(sns.confirmations.load(Ordering::SeqCst), 1);
    let (status, answer) = post(confirmation(format!("http://{}/confirm", server.addr))).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("not on the SNS origin"), "{answer}");
    assert_eq!(sns.confirmations.load(Ordering::SeqCst), 1);

    wait_for(Duration::from_secs(30), "both signed objects", || probe.calls() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await.unwrap();
    assert_eq!(probe.calls(), 2, "only the signed notifications ran");
    assert!(dead_letters(&sandbox).is_empty(), "refused messages are not dead-lettered");
}

/// `GET path`: the status code and the whole response, headers included.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    (response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), response)
}

/// The status page shows keys and errors, so it is served on loopback addresses only;
/// there it is one self-contained page with a policy that forbids loading anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_served_on_loopback_only() {
    let sandbox = Sandbox::new();
    let toml = "name = \"plain\"\n[trigger]\nkind = \"object_store\"\nurl = \"{bucket}\"\nprefix = \"inbox/\"\n\
                [[step]]\nname = \"see\"\nfunction = \"test.probe\"\n";
    let file = sandbox.pipeline("plain", toml);
    for (listen, served) in [("0.0.0.0:0", false), ("127.0.0.1:0", true)] {
        let (registry, _probe) = registry_with_probe();
        let engine = Engine::new(registry)
            .state_dir(sandbox.state())
            .grace(Duration::from_secs(5))
            .listen(listen.parse().unwrap())
            .serve(weir_engine::Serve::Always);
        let running = engine.start(engine.load(std::slice::from_ref(&file)).unwrap()).await.unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], running.http_addr.unwrap().port()));
        let (page, text) = get(addr, "/").await;
        let (status, json) = get(addr, "/v1/status").await;
        assert_eq!(get(addr, "/metrics").await.0, 200, "{listen}");
        assert_eq!(get(addr, "/v1/ready").await.0, 200, "{listen}");
        if served {
            assert_eq!((page, status), (200, 200), "{text}\n{json}");
            assert!(text.contains("<title>weir</title>"), "{text}");
            assert!(text.to_lowercase().contains("content-security-policy: default-src 'none'"), "{text}");
            let body: serde_json::Value = serde_json::from_str(json.split_once("\r\n\r\n").unwrap().1).unwrap();
            assert_eq!(body["pipelines"][0]["name"], "plain", "{json}");
            assert_eq!(body["pipelines"][0]["trigger"], "object_store", "{json}");
            assert!(body["runs"].is_array(), "{json}");
            assert!(body["replays"].is_array(), "{json}");
        } else {
            assert_eq!((page, status), (404, 404), "{listen}: {text}\n{json}");
        }
        running.stop().await.unwrap();
    }
}

/// The status page's redrive button: a dead letter runs again once its cause is gone,
/// only from a loopback host name and with the page's own header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_redriven_from_the_status_page() {
    let sandbox = Sandbox::new();
    // The first try fails retryably, and with one attempt allowed it is dead-lettered;
    // the second (the redrive) succeeds.
    let toml = "name = \"flaky\"\n[trigger]\nkind = \"object_store\"\nurl = \"{bucket}\"\nprefix = \"inbox/\"\n\
                [retry]\nmax_attempts = 1\n[[step]]\nname = \"see\"\nfunction = \"test.probe\"\nfail_retryable = 1\n";
    let file = sandbox.pipeline("flaky", toml);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry)
        .state_dir(sandbox.state())
        .grace(Duration::from_secs(5))
        .listen("127.0.0.1:0".parse().unwrap())
        .serve(weir_engine::Serve::Always);
    let running = engine.start(engine.load(std::slice::from_ref(&file)).unwrap()).await.unwrap();
    let addr = running.http_addr.unwrap();
    let stats = running.pipeline("flaky").unwrap().executor.clone();
    sandbox.drop_file("inbox/a.txt", b"a");
    wait_for(Duration::from_secs(30), "dead-lettered", || stats.events_dead_lettered.load(Ordering::SeqCst) == 1).await;
    let runs = |json: String| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(json.split_once("\r\n\r\n").unwrap().1).unwrap()["runs"].clone()
    };
    let listed = runs(get(addr, "/v1/status").await.1);
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["status"], "dead_letter");
    let path = format!("/v1/dead-letters/flaky/{id}/redrive");
    let action = "X-Weir-Action: redrive";
    assert_eq!(post_with(addr, &path, &[], b"").await.0, 403, "without the page's header");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let rebound = format!(
        "POST {path} HTTP/1.1\r\nHost: evil.example:9750\r\n{action}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(rebound.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "a host name that is not loopback (DNS rebinding): {answer}");
    assert_eq!(probe.calls(), 1);
    let (status, body) = post_with(addr, &path, &[action], b"").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\":\"done\""), "{body}");
    assert_eq!(probe.calls(), 2, "the redrive ran the event");
    assert_eq!(runs(get(addr, "/v1/status").await.1)[0]["status"], "redriven");
    assert_eq!(post_with(addr, &path, &[action], b"").await.0, 404, "settled: not there any more");
    running.stop().await.unwrap();
}
