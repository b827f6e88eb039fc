//! Errors of the engine and its triggers, classified the way function errors are: a
//! *transient* one (a bucket or broker briefly unreachable, the ledger busy) is worth
//! retrying with backoff; a *fatal* one (a misconfiguration, a missing bucket, refused
//! credentials) is not, and stops what hit it with one clear line.

use weir_functions::FunctionError;

/// Whether retrying could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Transient,
    Fatal,
}

/// An engine error: what failed, in one line, and whether retrying could help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub severity: Severity,
    message: String,
}

impl EngineError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self { severity: Severity::Transient, message: message.into() }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self { severity: Severity::Fatal, message: message.into() }
    }

    pub fn is_transient(&self) -> bool {
        self.severity == Severity::Transient
    }

    /// Prefixes the message with what was being done (`listing s3://photos: …`).
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        Self { severity: self.severity, message: format!("{what}: {}", self.message) }
    }

    /// Classifies an error chain: store and ledger failures by what they say (a 5xx or
    /// a timeout is transient, a 403 or 404 fatal), anything else as fatal.
    pub fn from_anyhow(error: anyhow::Error) -> Self {
        let message = format!("{error:#}");
        for cause in error.chain() {
            if let Some(store) = cause.downcast_ref::<object_store::Error>() {
                let permanent = weir_functions::error::store_error_is_permanent(store);
                return Self { severity: if permanent { Severity::Fatal } else { Severity::Transient }, message };
            }
            if let Some(function) = cause.downcast_ref::<FunctionError>() {
                let severity = if function.is_retryable() { Severity::Transient } else { Severity::Fatal };
                return Self { severity, message };
            }
            if let Some(engine) = cause.downcast_ref::<EngineError>() {
                return Self { severity: engine.severity, message };
            }
            if cause.downcast_ref::<crate::state::LedgerError>().is_some()
                || cause.downcast_ref::<std::io::Error>().is_some()
            {
                return Self::transient(message);
            }
        }
        Self::fatal(message)
    }
}

impl From<FunctionError> for EngineError {
    fn from(e: FunctionError) -> Self {
        let severity = if e.is_retryable() { Severity::Transient } else { Severity::Fatal };
        Self { severity, message: e.chain() }
    }
}

impl From<crate::state::LedgerError> for EngineError {
    fn from(e: crate::state::LedgerError) -> Self {
        Self::transient(format!("ledger: {e}"))
    }
}
