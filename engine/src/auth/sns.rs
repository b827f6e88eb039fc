//! SNS message signatures, so an endpoint subscribed to a topic takes messages from
//! that topic and nothing else.
//!
//! SNS signs every message with a certificate it serves from its own host; anyone can
//! create a topic and get messages signed by the same certificate, so a signature alone
//! proves only "from SNS": the topic ARN must also be one the pipeline names. The
//! certificate's origin is checked before it is fetched (no request goes anywhere a
//! message says), and its key is cached so a burst of messages costs one fetch.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Url;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256};
use serde::Deserialize;

/// Where signing certificates and subscription URLs may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `https://sns.<region>.amazonaws.com[.cn]`, as AWS documents.
    Aws,
    /// One exact origin (`http://127.0.0.1:4566` for an SNS-compatible service).
    Exact(String),
}

impl Origin {
    /// Parses `sns_signing_origin`: a bare `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        let bare = url.path() == "/" && url.query().is_none() && url.username().is_empty() && url.password().is_none();
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !bare {
            return Err("expected an origin such as https://sns.example.com:8443 (no path, no credentials)".into());
        }
        Ok(Origin::Exact(url.origin().ascii_serialization()))
    }

    /// Whether `url` may be fetched: a certificate (`.pem`) or a subscription URL.
    fn allows(&self, url: &Url, certificate: bool) -> bool {
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        if certificate && !url.path().ends_with(".pem") {
            return false;
        }
        match self {
            Origin::Exact(origin) => url.origin().ascii_serialization() == *origin,
            Origin::Aws => {
                let host = url.host_str().unwrap_or_default();
                let region = host
                    .strip_prefix("sns.")
                    .and_then(|h| h.strip_suffix(".amazonaws.com").or_else(|| h.strip_suffix(".amazonaws.com.cn")));
                url.scheme() == "https"
                    && url.port().is_none()
                    && region.is_some_and(|r| {
                        !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    })
            }
        }
    }
}

/// The fields of an SNS envelope a signature covers, plus how it is signed.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    r#type: String,
    message_id: String,
    message: String,
    timestamp: String,
    topic_arn: String,
    subject: Option<String>,
    #[serde(rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    token: Option<String>,
    signature_version: String,
    signature: String,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: String,
}

impl Envelope {
    /// The string SNS signs: chosen fields as `name\nvalue\n`, in this order.
    fn signed_text(&self) -> Result<String, String> {
        let fields: Vec<(&str, Option<&str>)> = match self.r#type.as_str() {
            "Notification" => vec![
                ("Message", Some(&self.message)),
                ("MessageId", Some(&self.message_id)),
                ("Subject", self.subject.as_deref()),
                ("Timestamp", Some(&self.timestamp)),
                ("TopicArn", Some(&self.topic_arn)),
                ("Type", Some(&self.r#type)),
            ],
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => vec![
                ("Message", Some(&self.message)),
                ("MessageId", Some(&self.message_id)),
                ("SubscribeURL", Some(self.subscribe_url.as_deref().ok_or("no SubscribeURL")?)),
                ("Timestamp", Some(&self.timestamp)),
                ("Token", Some(self.token.as_deref().ok_or("no Token")?)),
                ("TopicArn", Some(&self.topic_arn)),
                ("Type", Some(&self.r#type)),
            ],
            other => return Err(format!("unknown SNS message type {other:?}")),
        };
        let mut text = String::new();
        for (name, value) in fields {
            if let Some(value) = value {
                text.push_str(name);
                text.push('\n');
                text.push_str(value);
                text.push('\n');
            }
        }
        Ok(text)
    }
}

/// Largest certificate accepted (AWS's are about 2 KB).
const MAX_CERTIFICATE: usize = 64 * 1024;
/// How long a fetched key is trusted before it is fetched again.
const KEY_TTL: Duration = Duration::from_secs(3600);

/// Verifies SNS messages for one pipeline.
pub struct SnsAuth {
    topics: Vec<String>,
    origin: Origin,
    http: reqwest::Client,
    /// Certificate URL → the RSA public key in it.
    keys: moka::future::Cache<String, Arc<Vec<u8>>>,
}

impl std::fmt::Debug for SnsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsAuth").field("topics", &self.topics).field("origin", &self.origin).finish()
    }
}

impl SnsAuth {
    pub fn new(topics: Vec<String>, origin: Origin) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client without custom TLS settings builds");
        let keys = moka::future::Cache::builder().max_capacity(16).time_to_live(KEY_TTL).build();
        SnsAuth { topics, origin, http, keys }
    }

    /// Checks that `body` is an SNS message from one of the pipeline's topics, signed by
    /// SNS. The reason if not, short and naming no secret.
    pub async fn verify(&self, body: &[u8]) -> Result<(), String> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| format!("not a signed SNS message: {e}"))?;
        if !self.topics.contains(&envelope.topic_arn) {
            return Err(format!(
                "message from topic {:?}, which this pipeline does not subscribe to",
                envelope.topic_arn
            ));
        }
        let algorithm: &'static dyn ring::signature::VerificationAlgorithm = match envelope.signature_version.as_str() {
            "1" => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &RSA_PKCS1_2048_8192_SHA256,
            other => return Err(format!("unknown SignatureVersion {other:?}")),
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(envelope.signature.as_bytes())
            .map_err(|_| "Signature is not base64".to_string())?;
        let text = envelope.signed_text()?;
        let key = self.key(&envelope.signing_cert_url).await?;
        UnparsedPublicKey::new(algorithm, key.as_slice())
            .verify(text.as_bytes(), &signature)
            .map_err(|_| "bad signature".to_string())
    }

    /// Confirms a subscription by visiting its `SubscribeURL` (which must be on the
    /// signing origin, so a message cannot make weir request anything else).
    pub async fn confirm(&self, subscribe_url: &str) -> Result<(), String> {
        let url = Url::parse(subscribe_url).map_err(|_| "SubscribeURL is not a URL".to_string())?;
        if !self.origin.allows(&url, false) {
            return Err(format!("SubscribeURL on {}, not on the SNS origin", url.origin().ascii_serialization()));
        }
        let response = self.http.get(url).send().await.map_err(|e| format!("visiting SubscribeURL: {e}"))?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(format!("SubscribeURL answered {status}")),
        }
    }

    async fn key(&self, cert_url: &str) -> Result<Arc<Vec<u8>>, String> {
        let url = Url::parse(cert_url).map_err(|_| "SigningCertURL is not a URL".to_string())?;
        if !self.origin.allows(&url, true) {
            return Err(format!("SigningCertURL on {}, not on the SNS origin", url.origin().ascii_serialization()));
        }
        self.keys.try_get_with(cert_url.to_string(), self.fetch(url)).await.map_err(|e: Arc<String>| (*e).clone())
    }

    async fn fetch(&self, url: Url) -> Result<Arc<Vec<u8>>, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("fetching the signing certificate: {e}"))?;
        let mut pem = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("fetching the signing certificate: {e}"))? {
            if pem.len() + chunk.len() > MAX_CERTIFICATE {
                return Err(format!("signing certificate over {MAX_CERTIFICATE} bytes"));
            }
            pem.extend_from_slice(&chunk);
        }
        public_key(&pem).map(Arc::new)
    }
}

/// The RSA public key of a PEM certificate that is valid now.
fn public_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| "signing certificate is not PEM".to_string())?;
    let certificate = pem.parse_x509().map_err(|_| "signing certificate is not X.509".to_string())?;
    if !certificate.validity().is_valid() {
        return Err("signing certificate has expired or is not yet valid".into());
    }
    let info = certificate.public_key();
    if info.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        return Err("signing certificate does not hold an RSA key".into());
    }
    Ok(info.subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_come_only_from_sns_hosts() {
        let aws = Origin::Aws;
        let ok = |u: &str, cert| aws.allows(&Url::parse(u).unwrap(), cert);
        assert!(ok("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", true));
        assert!(ok("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", true));
        assert!(ok("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x", false));
        for bad in [
            "http://sns.us-east-1.amazonaws.com/a.pem",
            "https://sns.us-east-1.amazonaws.com:8443/a.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/a.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/a.pem",
            "https://sns..amazonaws.com/a.pem",
            "https://user@sns.us-east-1.amazonaws.com/a.pem",
            "https://sns.us-east-1.amazonaws.com/a.txt",
            "https://s3.us-east-1.amazonaws.com/a.pem",
        ] {
            assert!(!ok(bad, true), "{bad}");
        }
        let local = Origin::parse("http://127.0.0.1:4566").unwrap();
        assert!(local.allows(&Url::parse("http://127.0.0.1:4566/c.pem").unwrap(), true));
        assert!(!local.allows(&Url::parse("http://127.0.0.1:4567/c.pem").unwrap(), true));
        assert!(Origin::parse("http://127.0.0.1:4566/path").is_err());
        assert!(Origin::parse("file:///etc").is_err());
    }

    #[test]
    fn the_signed_text_follows_the_message_type() {
        let notification: Envelope = serde_json::from_value(serde_json::json!({
            "Type": "Notification", "MessageId": "m", "Message": "{}", "Timestamp": "t", "TopicArn": "arn",
            "SignatureVersion": "2", "Signature": "", "SigningCertURL": "",
        }))
        .unwrap();
        assert_eq!(
            notification.signed_text().unwrap(),
            "Message\n{}\nMessageId\nm\nTimestamp\nt\nTopicArn\narn\nType\nNotification\n"
        );
        let confirmation: Envelope = serde_json::from_value(serde_json::json!({
            "Type": "SubscriptionConfirmation", "MessageId": "m", "Message": "hi", "Timestamp": "t", "TopicArn": "arn",
            "SubscribeURL": "u", "Token": "k", "SignatureVersion": "1", "Signature": "", "SigningCertURL": "",
        }))
        .unwrap();
        assert_eq!(
            confirmation.signed_text().unwrap(),
            "Message\nhi\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nt\nToken\nk\nTopicArn\narn\nType\nSubscriptionConfirmation\n"
        );
    }

    #[test]
    fn the_test_certificate_yields_its_key_and_junk_does_not() {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/sns/test-signing-cert.pem")).unwrap();
        assert!(public_key(&pem).unwrap().len() > 256);
        assert!(public_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(public_key(b"").is_err());
    }
}
