//! The `[trigger]` table of `kind = "http"`, and its checks: closed by default (a
//! bearer token, a webhook signing secret, or an explicit `auth = "none"` that
//! `weir run` and `weir validate` allow only on a loopback address).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::auth::hmac::{HmacAuth, GITHUB_HEADER, GITHUB_PREFIX};
use crate::auth::{PushAuth, MIN_TOKEN_CHARS};
use crate::config::diagnostics::Reporter;
use crate::config::units::{ByteSize, HumanDuration};

/// Lambda's limit for a synchronous invocation's payload, and so the default here.
pub const DEFAULT_MAX_BODY: u64 = 6 << 20;
/// Bodies are held in memory while their event runs: a ceiling on the ceiling.
pub const MAX_MAX_BODY: u64 = 256 << 20;
/// Lambda function URLs answer within 15 minutes at most.
const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// With the last step's output, once the event finished (Lambda's
    /// `RequestResponse`).
    #[default]
    Sync,
    /// `202` with the event's id at once; the body is kept in the state directory
    /// until the event finished (Lambda's `Event` invocation).
    Async,
}

/// The table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    mode: Mode,
    /// Served here too, besides `/v1/invoke/{pipeline}`.
    #[serde(default)]
    path: Option<Spanned<String>>,
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    token: Option<Spanned<String>>,
    /// Webhooks: HMAC-SHA256 of the body under this secret, in `hmac_header`.
    #[serde(default)]
    hmac_secret: Option<Spanned<String>>,
    #[serde(default)]
    hmac_header: Option<Spanned<String>>,
    #[serde(default)]
    hmac_prefix: Option<Spanned<String>>,
    /// `"none"`: anyone who can reach a loopback address.
    #[serde(default)]
    auth: Option<Spanned<String>>,
    #[serde(default)]
    max_body: Option<Spanned<ByteSize>>,
    #[serde(default)]
    timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    idempotency_window: Option<HumanDuration>,
}

/// The table once valid.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub mode: Mode,
    pub path: Option<String>,
    pub auth: PushAuth,
    /// Largest body taken; larger ones are answered `413` before they are read whole.
    pub max_body: usize,
    /// How long a sync request waits for its event before `504`.
    pub timeout: Duration,
    /// How long an `Idempotency-Key` stays bound to its first request.
    pub idempotency_window: Duration,
    /// No credential was given: reported by [`HttpConfig::check_credential`], which
    /// knows where the `[trigger]` table is.
    pub no_credential: bool,
}

impl RawConfig {
    pub fn validate(self, report: &mut Reporter<'_>) -> Option<HttpConfig> {
        let path = self.path.and_then(|path| match check_path(path.get_ref()) {
            Ok(()) => Some(path.into_inner()),
            Err(why) => {
                report.error(path.span(), why);
                None
            }
        });
        let max_body = match self.max_body {
            Some(size) if size.get_ref().0 > MAX_MAX_BODY => {
                report.error(
                    size.span(),
                    format!("max_body is at most {}MiB (bodies are held in memory)", MAX_MAX_BODY >> 20),
                );
                DEFAULT_MAX_BODY
            }
            Some(size) => size.get_ref().0,
            None => DEFAULT_MAX_BODY,
        };
        let timeout = match self.timeout {
            Some(t) if t.get_ref().0 > MAX_TIMEOUT || t.get_ref().0.is_zero() => {
                report.error(t.span(), "timeout must be between 1ms and 15m");
                Duration::ZERO
            }
            Some(t) => t.get_ref().0,
            None => Duration::from_secs(30),
        };
        let hmac = Hmac { secret: self.hmac_secret, header: self.hmac_header, prefix: self.hmac_prefix };
        let auth = auth(self.token, hmac, self.auth, report)?;
        Some(HttpConfig {
            no_credential: auth.is_none(),
            auth: auth.unwrap_or(PushAuth::None),
            mode: self.mode,
            path,
            max_body: max_body as usize,
            timeout,
            idempotency_window: self.idempotency_window.map(|w| w.0).unwrap_or(Duration::from_secs(24 * 3600)),
        })
    }
}

/// A path of the pipeline's own: plain segments, away from weir's own routes.
fn check_path(path: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~/".contains(c);
    if !path.starts_with('/') || path.len() < 2 || path.contains("//") || path.ends_with('/') {
        return Err(format!("path {path:?} must look like \"/thumbnail\" (a leading /, no trailing /)"));
    }
    if !path.chars().all(plain) || path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("path {path:?} may hold letters, digits and -._~/ only"));
    }
    if path == "/metrics" || path.starts_with("/v1/") || path == "/v1" {
        return Err(format!("path {path:?} is one of weir's own (/v1/…, /metrics)"));
    }
    Ok(())
}

struct Hmac {
    secret: Option<Spanned<String>>,
    header: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
}

impl HttpConfig {
    /// Closed by default: a table without a credential is an error, at the table.
    pub fn check_credential(&self, table: std::ops::Range<usize>, report: &mut Reporter<'_>) {
        if self.no_credential {
            report.error(
                table,
                "an http trigger needs a credential: token = \"${env:WEIR_HTTP_TOKEN}\" (sent as `Authorization: \
                 Bearer …`), hmac_secret = \"${env:WEBHOOK_SECRET}\" (webhooks signing the body, GitHub's \
                 X-Hub-Signature-256 by default), or auth = \"none\" to accept any caller on a loopback address",
            );
        }
    }
}

/// The credential, `Some(None)` when none was given; None after an error.
fn auth(
    token: Option<Spanned<String>>,
    hmac: Hmac,
    mode: Option<Spanned<String>>,
    report: &mut Reporter<'_>,
) -> Option<Option<PushAuth>> {
    if hmac.secret.is_none() {
        if let Some(span) = hmac.header.as_ref().map(|h| h.span()).or(hmac.prefix.as_ref().map(|p| p.span())) {
            report.error(span, "hmac_header and hmac_prefix only apply with hmac_secret");
            return None;
        }
    }
    let short = |s: &Spanned<String>| s.get_ref().chars().count() < MIN_TOKEN_CHARS;
    for (name, secret) in [("token", &token), ("hmac_secret", &hmac.secret)] {
        if let Some(secret) = secret.as_ref().filter(|s| short(s)) {
            report.error(secret.span(), format!("{name} must be at least {MIN_TOKEN_CHARS} characters"));
            return None;
        }
    }
    let given =
        [token.as_ref().map(|t| t.span()), hmac.secret.as_ref().map(|s| s.span()), mode.as_ref().map(|m| m.span())];
    if given.iter().flatten().count() > 1 {
        let span = given.into_iter().flatten().nth(1).unwrap_or_default();
        report.error(span, "token, hmac_secret and auth = \"none\" exclude each other: choose one");
        return None;
    }
    if let Some(token) = token {
        return Some(Some(PushAuth::Token(token.into_inner())));
    }
    if let Some(secret) = hmac.secret {
        let header = match hmac.header {
            Some(header) => match header.get_ref().parse::<axum::http::HeaderName>() {
                Ok(name) => name,
                Err(_) => {
                    report.error(header.span(), format!("hmac_header {:?} is not a header name", header.get_ref()));
                    return None;
                }
            },
            None => axum::http::HeaderName::from_static(GITHUB_HEADER),
        };
        let prefix = hmac.prefix.map(Spanned::into_inner).unwrap_or_else(|| GITHUB_PREFIX.to_string());
        return Some(Some(PushAuth::Hmac(Arc::new(HmacAuth::new(secret.get_ref().as_bytes(), header, prefix)))));
    }
    match mode {
        Some(none) if none.get_ref() == "none" => Some(Some(PushAuth::None)),
        Some(other) => {
            report.error(other.span(), "auth takes \"none\" only (or set token, or hmac_secret)");
            None
        }
        None => Some(None),
    }
}
