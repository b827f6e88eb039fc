//! The HTTP endpoint `weir run` serves on `--listen` (loopback by default):
//! `GET /v1/health` (alive), `GET /v1/ready` (every trigger running), `GET /metrics`
//! (Prometheus text, see [`crate::metrics`]), and `POST /v1/notifications/{pipeline}`
//! with a bucket notification body (S3, SNS, EventBridge or MinIO shape).
//!
//! Notifications are answered `202` with `{"queued": n, "ignored": m}` once the objects
//! are recorded and queued; `401` without the pipeline's token, `403` for an SNS message
//! that is not signed by SNS for one of the pipeline's topics; `400` for a body that is
//! not a notification (dead-lettered, its first 4 KiB kept); `413` over 1 MiB; `404`
//! for an unknown pipeline; `503` while starting or stopping, or when the ledger or
//! store failed (the sender should retry). Headers must arrive within 10 s, bodies
//! within 30 s; at most 256 connections are open at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::JsonWork;
use crate::executor::PipelineRuntime;
use crate::metrics::Observed;
use crate::trigger::{Endpoint, Inbox, InboxError};
use metrics_exporter_prometheus::PrometheusHandle;

/// Largest request body: S3 and EventBridge send one record of about 1 KB, SNS at
/// most 256 KB.
pub const MAX_BODY: usize = 1 << 20;
/// The request line and headers fit in this, and in at most [`MAX_HEADERS`] headers:
/// larger heads are refused (431) before anything else is read.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
pub const MAX_HEADERS: usize = 100;
/// Connections open at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send its headers within this, and its body within [`BODY_TIMEOUT`]:
/// a half-sent request cannot hold a connection (and a file descriptor) for ever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// What a malformed body's dead letter and log line keep of it.
const KEPT_BODY: usize = 4096;
/// How long a stop lets requests in flight finish before closing their connections.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A pipeline that takes pushed events.
#[derive(Clone)]
pub struct Route {
    pub inbox: Arc<dyn Inbox>,
    pub runtime: Arc<PipelineRuntime>,
}

/// What the endpoint serves.
pub struct Site {
    /// Pipelines that take notifications, by name.
    pub routes: HashMap<String, Route>,
    /// Pipelines whose trigger answers requests itself (`kind = "http"`), by name.
    pub endpoints: HashMap<String, Arc<dyn Endpoint>>,
    /// Every running pipeline's executor, by name, for redrives from the status page.
    pub runtimes: HashMap<String, Arc<PipelineRuntime>>,
    /// Every running pipeline, for `/metrics` and `/v1/ready`.
    pub observed: Vec<Observed>,
    /// `None`: no metrics (not asked for, or the embedding application has its own).
    pub recorder: Option<&'static PrometheusHandle>,
    /// Where the ledger is, for its size.
    pub state_dir: PathBuf,
    /// Recent runs, for the status page.
    pub ledger: crate::state::Ledger,
}

type Shared = Arc<Site>;

/// Binds `addr` (port 0 picks one) and serves until `shutdown`. Returns the bound
/// address and the server task.
pub async fn serve(
    addr: SocketAddr,
    site: Site,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = anyhow::Result<()>>)> {
    if !addr.ip().is_loopback() {
        if let Some(open) = site.routes.iter().find(|(_, route)| route.inbox.auth().is_open()) {
            anyhow::bail!(
                "pipeline {} accepts notifications from anyone (notify_auth = \"none\"), which is only allowed \
                 on a loopback address, not {addr}: set notify_token, or --listen 127.0.0.1:PORT",
                open.0
            );
        }
        if let Some(open) = site.endpoints.iter().find(|(_, endpoint)| endpoint.auth().is_open()) {
            anyhow::bail!(
                "pipeline {} takes requests from anyone (auth = \"none\"), which is only allowed on a loopback \
                 address, not {addr}: set token or hmac_secret, or --listen 127.0.0.1:PORT",
                open.0
            );
        }
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let mut app = Router::new()
        .route("/v1/notifications/{pipeline}", post(notification))
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/invoke/{pipeline}", post(invoke))
        .route("/v1/events/{id}", get(event_status));
    let mut own_paths = HashMap::new();
    for (name, endpoint) in &site.endpoints {
        let Some(path) = endpoint.path() else { continue };
        if let Some(other) = own_paths.insert(path.to_string(), name.clone()) {
            anyhow::bail!("pipelines {other} and {name} both want path {path}");
        }
        let endpoint = endpoint.clone();
        app = app.route(path, post(move |request: axum::extract::Request| async move { endpoint.call(request).await }));
    }
    // The page lists object keys and errors, and nothing yet says who may read it:
    // served on loopback only, until the endpoint has its own authentication.
    if addr.ip().is_loopback() {
        let page = Router::new()
            .route("/", get(status_page))
            .route("/v1/status", get(status))
            .route("/v1/dead-letters/{pipeline}/{id}/redrive", post(redrive))
            .route_layer(axum::middleware::from_fn(loopback_host));
        app = app.merge(page);
    } else {
        tracing::info!(address = %addr, "the status page is served on loopback addresses only (it shows keys and errors)");
    }
    let app = app.route_layer(axum::middleware::from_fn(count_requests)).with_state(Arc::new(site));
    tracing::info!(address = %format!("http://{bound}"), "listening (health, ready, metrics, notifications, invocations)");
    Ok((bound, accept(listener, app, shutdown)))
}

/// Accepts connections up to [`MAX_CONNECTIONS`], each with header and body deadlines;
/// a stop closes every connection after [`STOP_WAIT`], whatever its client is doing.
async fn accept(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Answers go out at once, not after a delayed ACK from the sender.
        let _ = stream.set_nodelay(true);
        let (service, stop) = (TowerToHyperService::new(app.clone()), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_WAIT, connection).await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(STOP_WAIT + Duration::from_millis(200), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The status page: inline script and style only, nothing from elsewhere.
async fn status_page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, crate::status::PAGE).into_response()
}

async fn status(State(site): State<Shared>) -> Response {
    match crate::status::snapshot(&site.observed, &site.ledger).await {
        Ok(status) => json(StatusCode::OK, serde_json::json!(status)),
        Err(e) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e})),
    }
}

/// The page and its actions answer only requests addressed to a loopback name: a
/// page elsewhere cannot reach them by pointing its own domain at 127.0.0.1 (DNS
/// rebinding), since the browser would send that domain as the Host.
async fn loopback_host(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let loopback =
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "the status page answers on a loopback host name only"}),
        );
    }
    next.run(request).await
}

/// Runs a dead letter again (the status page's button). Loopback only, and only with
/// `X-Weir-Action: redrive`, which no other site's page can send without a CORS
/// preflight that weir never answers.
async fn redrive(
    State(site): State<Shared>,
    Path((pipeline, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if headers.get("x-weir-action").and_then(|v| v.to_str().ok()) != Some("redrive") {
        return json(StatusCode::FORBIDDEN, serde_json::json!({"error": "send X-Weir-Action: redrive"}));
    }
    let Some(runtime) = site.runtimes.get(&pipeline) else {
        return json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such pipeline"}));
    };
    match crate::redrive::redrive_id(runtime, &id).await {
        Ok(Some(redriven)) => {
            tracing::info!(pipeline = %pipeline, id = %id, result = ?redriven, "redriven from the status page");
            json(StatusCode::OK, serde_json::json!(redriven))
        }
        Ok(None) => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such dead letter"})),
        Err(e) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string()})),
    }
}

/// `weir_http_requests_total{route,status}`, for the routes there are.
async fn count_requests(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("weir_http_requests_total", "route" => route.unwrap_or_default(), "status" => status)
        .increment(1);
    response
}

/// `200` while every pipeline's trigger runs; `503` naming those waiting to be started
/// again after a failure (a bucket or broker out of reach).
async fn ready(State(site): State<Shared>) -> Response {
    let down: Vec<&str> = site.observed.iter().filter(|p| !p.queue.trigger_up()).map(|p| &*p.name).collect();
    if down.is_empty() {
        json(StatusCode::OK, serde_json::json!({"ready": true}))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"ready": false, "triggers_down": down}))
    }
}

async fn metrics(State(site): State<Shared>) -> Response {
    let Some(handle) = site.recorder else {
        return json(StatusCode::NOT_FOUND, serde_json::json!({"error": "metrics are not recorded by this process"}));
    };
    let site = site.clone();
    // Reading /proc and rendering every series is blocking work, if small.
    let text =
        tokio::task::spawn_blocking(move || crate::metrics::render(handle, &site.observed, Some(&site.state_dir)))
            .await
            .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn invoke(State(site): State<Shared>, Path(pipeline): Path<String>, request: axum::extract::Request) -> Response {
    match site.endpoints.get(&pipeline) {
        Some(endpoint) => endpoint.call(request).await,
        None => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such pipeline takes requests"})),
    }
}

/// How an event accepted by an HTTP trigger is going: its trigger knows.
async fn event_status(State(site): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    for endpoint in site.endpoints.values() {
        if let Some(response) = endpoint.event(&id, &headers).await {
            return response;
        }
    }
    json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such event"}))
}

async fn notification(
    State(site): State<Shared>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(route) = site.routes.get(&pipeline) else {
        return json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such pipeline takes notifications"}));
    };
    if let Err(why) = route.inbox.auth().check(&headers) {
        tracing::warn!(pipeline = %pipeline, reason = why, "notification refused: not authorized");
        let mut response = json(StatusCode::UNAUTHORIZED, serde_json::json!({"error": why}));
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            let error = format!("body over {MAX_BODY} bytes, or cut short");
            return json(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({"error": error}));
        }
        Err(_) => return json(StatusCode::REQUEST_TIMEOUT, serde_json::json!({"error": "body too slow"})),
    };
    if let Err(why) = route.inbox.auth().verify(&headers, &body).await {
        // Not dead-lettered: an unauthenticated body is nobody's event.
        tracing::warn!(pipeline = %pipeline, reason = ?truncated(&why, 200), "notification refused: not authenticated");
        return json(StatusCode::FORBIDDEN, serde_json::json!({"error": why}));
    }
    match route.inbox.deliver(&body).await {
        Ok(delivery) => {
            for (result, n) in [("queued", delivery.queued), ("ignored", delivery.ignored)] {
                metrics::counter!("weir_notification_objects_total", "pipeline" => pipeline.clone(), "result" => result)
                    .increment(n as u64);
            }
            json(StatusCode::ACCEPTED, serde_json::json!(delivery))
        }
        Err(InboxError::Malformed(why)) => {
            let error = format!("notification for pipeline {pipeline} ({} bytes) rejected: {why}", body.len());
            tracing::warn!(pipeline = %pipeline, error = ?truncated(&error, 300), "bad notification");
            // Kept for a look, not whole: a bad body can be as large as the limit.
            let kept = String::from_utf8_lossy(&body[..body.len().min(KEPT_BODY)]).into_owned();
            let value =
                serde_json::json!({ "notification": kept, "bytes": body.len(), "truncated": body.len() > KEPT_BODY });
            let work = JsonWork { value };
            if let Err(e) = route.runtime.dead_letter_input(&work, "notification", &error).await {
                tracing::error!(pipeline = %pipeline, error = %e.brief(), "cannot dead-letter a bad notification");
            }
            json(StatusCode::BAD_REQUEST, serde_json::json!({"error": error}))
        }
        Err(e @ (InboxError::Unavailable(_) | InboxError::Failed(_))) => {
            tracing::warn!(pipeline = %pipeline, error = %e, "notification not accepted; the sender should retry");
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string()}))
        }
    }
}

/// At most `max` characters of `text`, marked when cut.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
