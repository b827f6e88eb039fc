//! A real S3-protocol server on loopback for tests: `s3s-fs` (S3 over a temp
//! directory) served by hyper, optionally failing a fraction of requests with 503 and
//! logging every request it answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use weir_functions::trigger_event::encode_key;

pub const ACCESS_KEY: &str = "weir-test";
pub const SECRET_KEY: &str = "weir-test-secret";
/// The user agent of [`S3Server::client`]: injected failures spare it, so a test can
/// set up and check objects in the middle of an outage it makes for weir.
const TEST_CLIENT: &str = "weir-test-client";

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    /// Per-mille of requests answered with 503 SlowDown.
    fail_per_mille: Arc<AtomicU32>,
    /// Buckets answered as S3 answers a bucket that does not exist (s3s-fs would
    /// create the directory on a write).
    hidden: Arc<Mutex<Vec<String>>>,
    pub failed_requests: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    /// Every answered request, in order.
    pub log: Arc<Mutex<Vec<Logged>>>,
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: http::Method,
    pub bucket: String,
    /// URL-decoded.
    pub key: String,
    /// `uploads`, `partNumber=..`: multipart uploads and listings have one.
    pub query: Option<String>,
    pub status: u16,
}

impl S3Server {
    /// Starts a server with these buckets.
    pub async fn start(buckets: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        }
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fail_per_mille = Arc::new(AtomicU32::new(0));
        let failed_requests = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let request_log = Arc::new(Mutex::new(Vec::new()));
        let hidden: Arc<Mutex<Vec<String>>> = Arc::default();
        let (fail, failed, count, log) =
            (fail_per_mille.clone(), failed_requests.clone(), requests.clone(), request_log.clone());
        let gone = hidden.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                // As real S3 servers do: without it, Nagle + delayed ACKs add ~40 ms to
                // every response that spans two writes.
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let (fail, failed, count, log) = (fail.clone(), failed.clone(), count.clone(), log.clone());
                let gone = gone.clone();
                tokio::spawn(async move {
                    let handler = service_fn(move |req: http::Request<Incoming>| {
                        let service = service.clone();
                        let (fail, failed, count, log) = (fail.clone(), failed.clone(), count.clone(), log.clone());
                        let gone = gone.clone();
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            let (bucket, _) = split_path(req.uri().path());
                            if gone.lock().unwrap().contains(&bucket) {
                                let body = format!(
                                    "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified \
                                     bucket does not exist</Message><BucketName>{bucket}</BucketName></Error>"
                                );
                                return Ok(http::Response::builder().status(404).body(s3s::Body::from(body)).unwrap());
                            }
                            let tester = req.headers().get(http::header::USER_AGENT).is_some_and(|a| a == TEST_CLIENT);
                            if !tester && rand_per_mille() < fail.load(Ordering::SeqCst) {
                                failed.fetch_add(1, Ordering::SeqCst);
                                let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>";
                                return Ok::<_, s3s::HttpError>(
                                    http::Response::builder()
                                        .status(503)
                                        .body(s3s::Body::from(body.to_string()))
                                        .unwrap(),
                                );
                            }
                            let method = req.method().clone();
                            let (bucket, key) = split_path(req.uri().path());
                            let query = req.uri().query().map(str::to_string);
                            let response = service.call(req.map(s3s::Body::from)).await?;
                            let status = response.status().as_u16();
                            log.lock().unwrap().push(Logged { method, bucket, key, query, status });
                            Ok(response)
                        }
                    });
                    let _ =
                        ConnBuilder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), handler).await;
                });
            }
        });
        Self { addr, root, fail_per_mille, hidden, failed_requests, requests, log: request_log }
    }

    /// The requests answered for `key`, in order.
    pub fn requests_for(&self, key: &str) -> Vec<Logged> {
        self.log.lock().unwrap().iter().filter(|r| r.key == key).cloned().collect()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails this fraction of weir's requests (0.0–1.0) with 503 from now on.
    /// Answers requests to `bucket` as if it did not exist (`false`: as it is).
    pub fn hide_bucket(&self, bucket: &str, hidden: bool) {
        let mut buckets = self.hidden.lock().unwrap();
        buckets.retain(|b| b != bucket);
        if hidden {
            buckets.push(bucket.to_string());
        }
    }

    /// Requests answered with an injected 503 so far.
    pub fn failed_requests(&self) -> u64 {
        self.failed_requests.load(Ordering::SeqCst)
    }

    pub fn fail_fraction(&self, fraction: f64) {
        self.fail_per_mille.store((fraction * 1000.0) as u32, Ordering::SeqCst);
    }

    /// object_store options that reach this server (for `[trigger.options]` or `Stores::set_options`).
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.endpoint()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_access_key_id".into(), ACCESS_KEY.into()),
            ("aws_secret_access_key".into(), SECRET_KEY.into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_virtual_hosted_style_request".into(), "false".into()),
        ]
    }

    /// The same options as a TOML `[trigger.options]` table body.
    pub fn options_toml(&self) -> String {
        self.options().iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect()
    }

    /// A client for test set-up and checks, spared by injected failures.
    pub fn client(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_virtual_hosted_style_request(false)
                .with_retry(object_store::RetryConfig { max_retries: 5, ..Default::default() })
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_allow_http(true)
                        .with_user_agent(http::HeaderValue::from_static(TEST_CLIENT)),
                )
                .build()
                .unwrap(),
        )
    }
}

fn split_path(path: &str) -> (String, String) {
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
    (bucket.to_string(), key)
}

fn rand_per_mille() -> u32 {
    rand::random_range(0..1000)
}

/// One S3 `Records[]` notification for an object.
pub fn s3_records(bucket: &str, key: &str, etag: &str, size: usize, name: &str) -> serde_json::Value {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T10:00:00.000Z", "eventName": name,
        "userIdentity": {"principalId": "test"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {}, "s3": {"s3SchemaVersion": "1.0", "configurationId": "weir",
            "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": encode_key(key), "size": size, "eTag": etag, "sequencer": "0A1B"}}}]})
}

/// The four shapes a notification for `key` can take.
pub fn shapes(key: &str, etag: &str, size: usize) -> [serde_json::Value; 4] {
    let records = s3_records("photos", key, etag, size, "ObjectCreated:Put");
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": records.to_string(), "Timestamp": "2026-11-24T10:00:00.000Z"});
    let eventbridge = serde_json::json!({"version": "0", "id": "e1", "detail-type": "Object Created",
        "source": "aws.s3", "time": "2026-11-24T10:00:00Z", "resources": ["arn:aws:s3:::photos"],
        "detail": {"version": "0", "bucket": {"name": "photos"},
            "object": {"key": encode_key(key), "size": size, "etag": etag, "sequencer": "0A1B"}, "reason": "PutObject"}});
    let mut minio = s3_records("photos", key, &format!("\"{etag}\""), size, "s3:ObjectCreated:Put");
    minio["EventName"] = "s3:ObjectCreated:Put".into();
    minio["Key"] = format!("photos/{key}").into();
    minio["Records"][0]["eventSource"] = "minio:s3".into();
    [records, sns, eventbridge, minio]
}

/// A minimal HTTP/1.1 POST; returns status and body.
pub async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    post_with(addr, path, &[], body.as_bytes()).await
}

/// A POST with extra header lines (`"Authorization: Bearer …"`).
pub async fn post_with(addr: std::net::SocketAddr, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before a large body is all sent.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
