//! Errors a function reports, classified so the executor knows whether to retry.

use std::fmt;

/// Whether trying the same input again could succeed, and whether the input is to
/// blame at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// May succeed on another try (a step timed out, a flaky dependency): retried with
    /// backoff up to the pipeline's `max_attempts`.
    Retryable,
    /// A store or broker did not answer, or answered 5xx/429: an outage, which every
    /// input would meet, not a fault of this one. Retried with backoff until the event
    /// is `max_age` old, however many tries that takes: the pipeline holds instead of
    /// dead-lettering good events.
    Unavailable,
    /// Corrupt input, bad parameters, over-limit input: dead-lettered at once.
    Permanent,
}

/// A failed invocation. The message names the input and the reason in one line.
#[derive(Debug)]
pub struct FunctionError {
    pub kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    partial: Option<Box<PartialBatch>>,
}

/// A batch function's answer when only some of its items failed (Lambda's
/// `batchItemFailures`): the items that succeeded produced `outputs`, which flow on;
/// only the failed ones are retried (as a smaller batch) or dead-lettered.
#[derive(Debug)]
pub struct PartialBatch {
    pub outputs: Vec<crate::Item>,
    /// (index in the batch's collection, why it failed).
    pub failures: Vec<(usize, FunctionError)>,
}

/// The cause behind a step's timeout, so a caller can tell a timeout from other
/// retryable failures (an HTTP request answers it with 504, not 503).
#[derive(Debug, thiserror::Error)]
#[error("timed out")]
pub struct TimedOut;

impl FunctionError {
    /// A step ran out of its `limits.timeout`: retryable.
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self::retryable(message).with_source(TimedOut)
    }

    /// Whether this is [`Self::timed_out`].
    pub fn is_timeout(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.is::<TimedOut>())
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Permanent, message: one_line(message.into()), source: None, partial: None }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Retryable, message: one_line(message.into()), source: None, partial: None }
    }

    /// A store or broker is unavailable (see [`ErrorKind::Unavailable`]).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unavailable, message: one_line(message.into()), source: None, partial: None }
    }

    /// Some items of a batch failed; the rest succeeded with `outputs`. Retryable if
    /// any failure is.
    pub fn partial_batch(outputs: Vec<crate::Item>, failures: Vec<(usize, FunctionError)>) -> Self {
        let kind = if failures.iter().all(|(_, e)| e.is_unavailable()) && !failures.is_empty() {
            ErrorKind::Unavailable
        } else if failures.iter().any(|(_, e)| e.is_retryable()) {
            ErrorKind::Retryable
        } else {
            ErrorKind::Permanent
        };
        let first = failures.first().map(|(i, e)| format!(": item {i}: {}", e.message)).unwrap_or_default();
        let message = format!("{} batch item(s) failed{first}", failures.len());
        Self { kind, message, source: None, partial: Some(Box::new(PartialBatch { outputs, failures })) }
    }

    /// The per-item failures, if this is a partial batch failure.
    pub fn into_partial_batch(self) -> Result<PartialBatch, Self> {
        match self.partial {
            Some(partial) => Ok(*partial),
            None => Err(self),
        }
    }

    /// The same classification and message (causes folded in), for reporting one
    /// failure against several inputs.
    pub fn copied(&self) -> Self {
        Self { kind: self.kind, message: self.chain(), source: None, partial: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether another try could succeed (retryable or unavailable).
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Permanent
    }

    /// Whether a store or broker was unavailable (an outage, not this input's fault).
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by every cause, `: `-separated, for logs and dead letters.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(err) = next {
            let text = short_store_message(&err.to_string());
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = err.source();
        }
        out
    }

    /// [`Self::chain`] cut to 300 characters: for log lines, which must stay readable
    /// (dead letters keep the whole chain).
    pub fn brief(&self) -> String {
        let chain = self.chain();
        match chain.char_indices().nth(300) {
            Some((at, _)) => format!("{}…", &chain[..at]),
            None => chain,
        }
    }

    /// Classifies an object-store failure. Missing objects, refused access, bad keys and
    /// other 4xx answers will not fix themselves; 5xx, throttling (429), timeouts and
    /// connection resets are the store being unavailable (object_store already retried
    /// them briefly, see [`crate::store::store_retry_config`]). `context` should name
    /// bucket and key.
    pub fn from_store(context: impl fmt::Display, err: object_store::Error) -> Self {
        let message = format!("{context}: {}", short_store_message(&err.to_string()));
        let error = if store_error_is_permanent(&err) { Self::permanent(message) } else { Self::unavailable(message) };
        error.with_source(err)
    }
}

/// S3 error codes about the destination, not the object: a missing bucket, keys the
/// store does not know. Every event sees them, so they are waited out (an operator
/// creates the bucket, fixes the keys) rather than dead-lettering each event.
const DESTINATION_CODES: [&str; 6] =
    ["NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem"];

/// Whether a store error is about the request itself (missing object, a key no store
/// can hold, a 4xx about that object), so that trying again cannot help; 5xx, 429,
/// timeouts and problems of the whole destination ([`DESTINATION_CODES`]) can pass.
pub fn store_error_is_permanent(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    if matches!(err, E::Unauthenticated { .. }) || about_destination(err) {
        return false;
    }
    match err {
        E::NotFound { .. }
        | E::InvalidPath { .. }
        | E::PermissionDenied { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. } => true,
        other => {
            http_status(other).is_some_and(|status| (400..500).contains(&status) && status != 408 && status != 429)
        }
    }
}

/// Looks for the code in the store's answer only, never in the object's path: a key
/// named after a code must not turn its own failure into a wait.
fn about_destination(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    let answer = match err {
        E::NotFound { source, .. }
        | E::Generic { source, .. }
        | E::PermissionDenied { source, .. }
        | E::Unauthenticated { source, .. } => source.to_string(),
        _ => return false,
    };
    DESTINATION_CODES.iter().any(|code| answer.contains(&format!("<Code>{code}</Code>")))
}

impl fmt::Display for FunctionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FunctionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Errors end up in one-line log records and dead letters: fold any line breaks a
/// library put into its message.
/// A store's error as a line a person reads: the S3-style error code first when the
/// answer carried one (`NoSuchBucket`, `InvalidAccessKeyId`, `SlowDown`), never the
/// whole XML body, and at most [`SHORT_ERROR`] characters.
pub fn short_store_message(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].trim().to_string())
    };
    // object_store says "… status code: 403 Forbidden: <?xml …": keep the status.
    let status = text
        .find("status code: ")
        .and_then(|at| text[at + 13..].split([':', ',']).next())
        .map(|s| format!("{} ", s.trim()))
        .unwrap_or_default();
    let line = match (between("<Code>", "</Code>"), between("<Message>", "</Message>")) {
        (Some(code), Some(message)) => format!("{status}{code}: {message}"),
        (Some(code), None) => format!("{status}{code}"),
        _ => one_line(text.to_string()),
    };
    match line.char_indices().nth(SHORT_ERROR) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// Longest store error text kept in a message.
pub const SHORT_ERROR: usize = 200;

fn one_line(message: String) -> String {
    if message.contains(['\n', '\r']) {
        message.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
    } else {
        message
    }
}

/// A step's parameters were rejected when the function was built (`weir validate` time).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    pub message: String,
    /// Byte range in the pipeline file, when the error can be pinned to a value.
    pub span: Option<std::ops::Range<usize>>,
    /// The parameter at fault, so the caller can point at it when `span` is unknown.
    pub param: Option<String>,
}

impl BuildError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), span: None, param: None }
    }

    /// An error about one parameter; the engine points at that key in the file.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), span: None, param: Some(param.into()) }
    }
}

impl From<toml::de::Error> for BuildError {
    fn from(err: toml::de::Error) -> Self {
        Self { message: err.message().trim().to_string(), span: err.span(), param: None }
    }
}

/// The HTTP status a cloud store answered with, if the error carries one.
///
/// object_store keeps its HTTP error type private; its message is stable
/// ("… non-2xx status code: 403 Forbidden …" / "… error response: …"), so the status is
/// read from the error chain's text.
fn http_status(err: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if let Some(rest) = text.split("status code: ").nth(1) {
            if let Ok(status) = rest.get(..3).unwrap_or("").parse::<u16>() {
                return Some(status);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: text.to_string().into() }
    }

    #[test]
    fn store_errors_are_classified_by_status() {
        let cases = [
            ("Server returned non-2xx status code: 503 Service Unavailable: slow down", true),
            ("Server returned non-2xx status code: 500 Internal Server Error", true),
            ("Server returned non-2xx status code: 429 Too Many Requests", true),
            ("Server returned non-2xx status code: 408 Request Timeout", true),
            ("error sending request: connection reset by peer", true),
            ("Server returned non-2xx status code: 400 Bad Request: InvalidArgument", false),
            ("Server returned non-2xx status code: 403 Forbidden: AccessDenied", false),
        ];
        for (text, retryable) in cases {
            let err = FunctionError::from_store("reading inbox/a.jpg from s3://photos", generic(text));
            assert_eq!(err.is_retryable(), retryable, "{text}");
            assert!(err.message().starts_with("reading inbox/a.jpg from s3://photos: "), "{}", err.message());
        }
        let missing = object_store::Error::NotFound { path: "inbox/a.jpg".into(), source: "404".into() };
        assert!(!FunctionError::from_store("reading inbox/a.jpg from s3://photos", missing).is_retryable());
    }
}
