//! Who may push events to `weir run`'s endpoint. Closed by default: a pipeline that
//! takes pushed events names a shared token, a webhook signing secret, SNS topics
//! whose signed messages it takes, or says `"none"` — which `weir run` only accepts on
//! a loopback listen address.

pub mod hmac;
pub mod sns;

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use base64::Engine as _;

/// How a pushed request proves it may push.
#[derive(Clone)]
pub enum PushAuth {
    /// Anyone who can reach the address (loopback only).
    None,
    /// A shared token: `Authorization: Bearer <token>` (webhooks, MinIO's
    /// `auth_token`), the bare token, or the password of HTTP basic auth (SNS
    /// subscriptions to `https://weir:<token>@host/…`).
    Token(String),
    /// SNS messages signed by SNS for one of the named topics, and the token too if
    /// one is set.
    Sns { sns: Arc<sns::SnsAuth>, token: Option<String> },
    /// The body signed with a shared secret, in a header (webhooks).
    Hmac(Arc<hmac::HmacAuth>),
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushAuth::None => f.write_str("None"),
            PushAuth::Token(_) => f.write_str("Token(***)"),
            PushAuth::Sns { sns, .. } => write!(f, "Sns({sns:?})"),
            PushAuth::Hmac(hmac) => write!(f, "{hmac:?}"),
        }
    }
}

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

impl PushAuth {
    /// Whether anyone who can reach the endpoint may push.
    pub fn is_open(&self) -> bool {
        matches!(self, PushAuth::None)
    }

    /// Whether `headers` carry the token; the reason if not (never the token).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let (PushAuth::Token(token) | PushAuth::Sns { token: Some(token), .. }) = self else { return Ok(()) };
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Err("missing Authorization header");
        };
        let presented = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim().to_string(),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
                let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).unwrap_or_default();
                let text = String::from_utf8(decoded).unwrap_or_default();
                text.split_once(':').map(|(_, password)| password.to_string()).unwrap_or_default()
            }
            _ => value.trim().to_string(),
        };
        if same(presented.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err("wrong credential")
        }
    }
}

impl PushAuth {
    /// Whether the body itself proves where it comes from (an SNS or webhook
    /// signature), once read.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        match self {
            PushAuth::Sns { sns, .. } => sns.verify(body).await,
            PushAuth::Hmac(hmac) => hmac.verify(headers, body),
            _ => Ok(()),
        }
    }

    /// Confirms an SNS subscription whose confirmation message [`verify`](Self::verify)
    /// accepted; `None` when this credential cannot tell that a confirmation is genuine
    /// (a token or none), so a person must confirm it.
    pub async fn confirm_subscription(&self, subscribe_url: &str) -> Option<Result<(), String>> {
        match self {
            PushAuth::Sns { sns, .. } => Some(sns.confirm(subscribe_url).await),
            _ => None,
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_token_is_taken_as_bearer_bare_or_basic_password_and_nothing_else() {
        let auth = PushAuth::Token("s3cret-token-0123456789".into());
        assert!(auth.check(&with("Bearer s3cret-token-0123456789")).is_ok());
        assert!(auth.check(&with("s3cret-token-0123456789")).is_ok());
        let basic = base64::engine::general_purpose::STANDARD.encode("weir:s3cret-token-0123456789");
        assert!(auth.check(&with(&format!("Basic {basic}"))).is_ok());
        assert_eq!(auth.check(&HeaderMap::new()), Err("missing Authorization header"));
        for wrong in ["Bearer s3cret-token-012345678", "Bearer ", "Basic !!!", "s3cret-token-0123456789x"] {
            assert_eq!(auth.check(&with(wrong)), Err("wrong credential"), "{wrong}");
        }
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert!(PushAuth::None.check(&HeaderMap::new()).is_ok());
    }
}
