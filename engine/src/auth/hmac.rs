//! Webhook signatures: the sender signs the body with a shared secret and sends the
//! signature in a header, as GitHub does with `X-Hub-Signature-256: sha256=<hex>`
//! (Stripe, Shopify and Slack differ only in the header and its prefix).

use axum::http::{HeaderMap, HeaderName};
use ring::hmac;

/// The header GitHub signs with, and its prefix.
pub const GITHUB_HEADER: &str = "x-hub-signature-256";
pub const GITHUB_PREFIX: &str = "sha256=";

/// HMAC-SHA256 of the body under a shared secret, as lowercase or uppercase hex after
/// a fixed prefix in one header.
pub struct HmacAuth {
    key: hmac::Key,
    header: HeaderName,
    prefix: String,
}

impl std::fmt::Debug for HmacAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hmac({}: {}***)", self.header, self.prefix)
    }
}

impl HmacAuth {
    pub fn new(secret: &[u8], header: HeaderName, prefix: String) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret), header, prefix }
    }

    /// Whether `headers` carry a valid signature of `body`; the reason if not.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let Some(value) = headers.get(&self.header) else {
            return Err(format!("missing {} header", self.header));
        };
        let value = value.to_str().unwrap_or_default().trim();
        let Some(hex) = value.strip_prefix(self.prefix.as_str()) else {
            return Err(format!("{} does not start with {:?}", self.header, self.prefix));
        };
        let Some(signature) = decode_hex(hex) else {
            return Err(format!("{} is not a hex signature", self.header));
        };
        // Constant-time comparison inside ring.
        hmac::verify(&self.key, body, &signature).map_err(|_| format!("{} does not match the body", self.header))
    }

    /// The header value a sender would send for `body` (tests, and `weir` clients).
    pub fn sign(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", self.prefix)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_documented_example_verifies() {
        // From GitHub's "Validating webhook deliveries": secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let auth = HmacAuth::new(b"It's a Secret to Everybody", GITHUB_HEADER.parse().unwrap(), GITHUB_PREFIX.into());
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(auth.sign(b"Hello, World!"), expected);
        let mut headers = HeaderMap::new();
        headers.insert(GITHUB_HEADER, expected.parse().unwrap());
        assert!(auth.verify(&headers, b"Hello, World!").is_ok());
        assert!(auth.verify(&headers, b"Hello, World?").unwrap_err().contains("does not match"));
        headers.insert(GITHUB_HEADER, "sha1=00".parse().unwrap());
        assert!(auth.verify(&headers, b"Hello, World!").unwrap_err().contains("does not start"));
        headers.insert(GITHUB_HEADER, "sha256=zz".parse().unwrap());
        assert!(auth.verify(&headers, b"Hello, World!").unwrap_err().contains("not a hex"));
        assert!(auth.verify(&HeaderMap::new(), b"x").unwrap_err().contains("missing"));
        assert!(!format!("{auth:?}").contains("Secret"));
    }
}
