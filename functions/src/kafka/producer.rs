//! An idempotent Kafka producer whose sends complete only when the broker has the
//! record: a failed delivery is a failed step, never a silent loss.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;

use crate::FunctionError;

/// Settings the producer owns: turning them off would break idempotence or the
/// delivery check.
pub const RESERVED: [&str; 3] = ["bootstrap.servers", "enable.idempotence", "acks"];

/// Routes librdkafka's log lines into `tracing`, where weir's other logs go.
pub struct LogToTracing;

impl ClientContext for LogToTracing {
    /// librdkafka reports a broker it cannot reach both as a log line and as an error;
    /// the log line is enough.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(error = %error, "kafka producer: {reason}");
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(facility, "kafka producer: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "kafka producer: {message}"),
            _ => tracing::debug!(facility, "kafka producer: {message}"),
        }
    }
}

/// One record to send. Borrowed, so a caller holding the bytes pays no copy.
#[derive(Debug, Default, Clone)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The record's timestamp, milliseconds since the epoch (default: now).
    pub timestamp_ms: Option<i64>,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer (`enable.idempotence`, so `acks=all` and no duplicates from
/// librdkafka's own retries). Cheap to share: one per step, built once. It connects on
/// the first send, so that `weir validate` checks the options without dialling out.
pub struct RecordProducer {
    config: ClientConfig,
    /// Replaced after a fatal error (see [`RecordProducer::renew_if_fatal`]).
    inner: std::sync::Mutex<Option<Arc<FutureProducer<LogToTracing>>>>,
    brokers: String,
}

impl RecordProducer {
    /// A producer for `brokers`, with `options` passed to librdkafka as they are
    /// (SASL/SSL, `compression.type`, `linger.ms`…). Fails on options librdkafka refuses.
    pub fn new(brokers: &str, options: &[(String, String)]) -> Result<Self, String> {
        let mut config = ClientConfig::new();
        // Short local waits (linger) keep single-record latency low; librdkafka still
        // batches whatever is sent at the same time.
        config.set("linger.ms", "5").set("message.timeout.ms", "30000");
        for (key, value) in options {
            if RESERVED.contains(&key.as_str()) {
                return Err(format!("librdkafka option {key:?} is set by weir"));
            }
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set_log_level(RDKafkaLogLevel::Warning);
        // Checks every option's name and value, without creating a client. The error
        // names the option but never echoes values (they may be secrets).
        config
            .create_native_config()
            .map_err(|e| format!("invalid producer options: {}", super::describe_error(&e, options)))?;
        Ok(Self { config, inner: std::sync::Mutex::new(None), brokers: brokers.to_string() })
    }

    fn producer(&self) -> Result<Arc<FutureProducer<LogToTracing>>, FunctionError> {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(producer) = &*inner {
            return Ok(producer.clone());
        }
        let producer = self.config.create_with_context(LogToTracing).map_err(|e| {
            let options: Vec<(String, String)> =
                self.config.config_map().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let why = super::describe_error(&e, &options);
            FunctionError::permanent(format!("creating a Kafka producer: {why} (brokers {})", self.brokers))
        })?;
        Ok(inner.insert(Arc::new(producer)).clone())
    }

    /// An idempotent producer stops for good after a fatal error — a broker that lost
    /// or expired its producer id during a long outage answers `ProducerFenced` or
    /// `UnknownProducerId` to every send from then on. A fresh producer gets a new id;
    /// the sends that failed are retried by their steps.
    fn renew_if_fatal(&self, used: &Arc<FutureProducer<LogToTracing>>, error: &KafkaError) {
        use rdkafka::producer::Producer as _;
        use RDKafkaErrorCode as C;
        let fenced = matches!(
            error.rdkafka_error_code(),
            Some(C::ProducerFenced | C::InvalidProducerEpoch | C::UnknownProducerId | C::OutOfOrderSequenceNumber)
        );
        let Some((code, reason)) = used.client().fatal_error().or_else(|| {
            fenced.then(|| (error.rdkafka_error_code().expect("matched"), "the broker fenced its producer id".into()))
        }) else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.as_ref().is_some_and(|current| Arc::ptr_eq(current, used)) {
            tracing::warn!(brokers = %self.brokers, error = ?code, reason = %reason,
                "kafka producer stopped by a fatal error; starting a new one");
            *inner = None;
        }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Sends one record and waits for the broker's acknowledgement. Waits up to
    /// `queue_timeout` for room in librdkafka's local queue first.
    pub async fn send(&self, record: &Outgoing<'_>, queue_timeout: Duration) -> Result<Delivered, FunctionError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: Some(*value) });
        }
        let mut outgoing: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(record.topic).payload(record.value).headers(headers);
        if let Some(key) = record.key {
            outgoing = outgoing.key(key);
        }
        if let Some(ms) = record.timestamp_ms {
            outgoing = outgoing.timestamp(ms);
        }
        let producer = self.producer()?;
        match producer.send(outgoing, queue_timeout).await {
            Ok(delivery) => Ok(Delivered { partition: delivery.partition, offset: delivery.offset }),
            Err((error, _)) => {
                self.renew_if_fatal(&producer, &error);
                Err(classify(record.topic, &self.brokers, error))
            }
        }
    }
}

/// A delivery failure as a step error: unavailable (an outage) unless the broker refused the record
/// itself (too large, not allowed, invalid) or the topic does not exist, which no
/// retry fixes (create the topic, then `weir dlq redrive`).
fn classify(topic: &str, brokers: &str, error: KafkaError) -> FunctionError {
    use RDKafkaErrorCode as C;
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::UnsupportedForMessageFormat
                | C::PolicyViolation
                | C::InvalidRequiredAcks
                | C::InvalidArgument
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
        )
    );
    let message = format!("delivering a record to topic {topic:?} on {brokers}: {error}");
    // Everything else is the brokers not taking records now: an outage.
    let failure = if permanent { FunctionError::permanent(message) } else { FunctionError::unavailable(message) };
    failure.with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_records_are_permanent_and_broker_trouble_is_retryable() {
        let too_big = classify("t", "b:9092", KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!too_big.is_retryable());
        assert!(too_big.message().contains("topic \"t\""), "{}", too_big.message());
        let denied = classify("t", "b:9092", KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!denied.is_retryable());
        for code in
            [RDKafkaErrorCode::MessageTimedOut, RDKafkaErrorCode::QueueFull, RDKafkaErrorCode::NotLeaderForPartition]
        {
            assert!(classify("t", "b", KafkaError::MessageProduction(code)).is_retryable(), "{code:?}");
        }
    }

    #[test]
    fn options_are_checked_when_built() {
        let err = RecordProducer::new("127.0.0.1:1", &[("acks".into(), "1".into())]).err().unwrap();
        assert!(err.contains("acks"), "{err}");
        let err = RecordProducer::new("127.0.0.1:1", &[("linger.ms".into(), "soon".into())]).err().unwrap();
        assert!(err.contains("linger.ms"), "{err}");
        let err = RecordProducer::new("127.0.0.1:1", &[("no.such.option".into(), "1".into())]).err().unwrap();
        assert!(err.contains("no.such.option"), "{err}");
        assert!(RecordProducer::new("127.0.0.1:1", &[("compression.type".into(), "lz4".into())]).is_ok());
    }
}
