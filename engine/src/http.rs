//! The HTTP endpoint `weir run` serves when a pipeline takes pushed events:
//! `POST /v1/notifications/{pipeline}` with a bucket notification body (S3, SNS,
//! EventBridge or MinIO shape).
//!
//! Answers: `202` with `{"queued": n, "ignored": m}` once the objects are recorded and
//! queued; `400` for a body that is not a notification (also dead-lettered, so the
//! payload is kept); `404` for an unknown pipeline; `503` while starting or stopping,
//! or when the ledger or store failed (the sender should retry).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::event::JsonWork;
use crate::executor::PipelineRuntime;
use crate::trigger::{Inbox, InboxError};

/// A pipeline that takes pushed events.
#[derive(Clone)]
pub struct Route {
    pub inbox: Arc<dyn Inbox>,
    pub runtime: Arc<PipelineRuntime>,
}

type Routes = Arc<HashMap<String, Route>>;

/// Binds `addr` (port 0 picks one) and serves until `shutdown`. Returns the bound
/// address and the server task.
pub async fn serve(
    addr: SocketAddr,
    routes: HashMap<String, Route>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for notifications: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/notifications/{pipeline}", post(notification))
        .route("/v1/health", get(|| async { "ok" }))
        .with_state(Arc::new(routes));
    tracing::info!(address = %format!("http://{bound}"), "listening for notifications");
    let server = async move {
        // Answers go out at once, not after a delayed ACK from the sender.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
        Ok(())
    };
    Ok((bound, server))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn notification(State(routes): State<Routes>, Path(pipeline): Path<String>, body: Bytes) -> Response {
    let Some(route) = routes.get(&pipeline) else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no pipeline {pipeline:?} takes notifications")}),
        );
    };
    match route.inbox.deliver(&body).await {
        Ok(delivery) => json(StatusCode::ACCEPTED, serde_json::json!(delivery)),
        Err(InboxError::Malformed(why)) => {
            let error = format!("notification for pipeline {pipeline} ({} bytes) rejected: {why}", body.len());
            tracing::warn!(pipeline = %pipeline, error = %error, "bad notification");
            let kept = String::from_utf8_lossy(&body).into_owned();
            let work = JsonWork { value: serde_json::json!({ "notification": kept }) };
            if let Err(e) = route.runtime.dead_letter_input(&work, "notification", &error).await {
                tracing::error!(pipeline = %pipeline, error = %e.chain(), "cannot dead-letter a bad notification");
            }
            json(StatusCode::BAD_REQUEST, serde_json::json!({"error": error}))
        }
        Err(e @ (InboxError::Unavailable(_) | InboxError::Failed(_))) => {
            tracing::warn!(pipeline = %pipeline, error = %e, "notification not accepted; the sender should retry");
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string()}))
        }
    }
}
