//! librdkafka's callbacks: its logs into `tracing`, consumer lag from its statistics,
//! and rebalances handed to the consumer thread's [`State`].

use std::sync::{Arc, Mutex};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use super::consumer::State;

pub(super) struct KafkaContext {
    pub pipeline: Arc<str>,
    pub state: Arc<Mutex<State>>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(pipeline = %self.pipeline, facility, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(pipeline = %self.pipeline, facility, "kafka: {message}"),
            _ => tracing::debug!(pipeline = %self.pipeline, facility, "kafka: {message}"),
        }
    }

    /// Every `statistics.interval.ms` (30 s unless set): consumer lag per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = Vec::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("weir_kafka_consumer_lag", "pipeline" => self.pipeline.to_string(),
                        "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                    lags.push((format!("{topic}/{partition}"), p.consumer_lag));
                }
            }
        }
        if lags.is_empty() {
            return;
        }
        lags.sort();
        let total: i64 = lags.iter().map(|(_, lag)| lag).sum();
        let per_partition = lags.iter().map(|(p, lag)| format!("{p}={lag}")).collect::<Vec<_>>().join(" ");
        let taken = self.state.lock().map(|s| s.records_taken).unwrap_or_default();
        tracing::info!(pipeline = %self.pipeline, total, partitions = %per_partition, records_taken = taken,
            "consumer lag");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(pipeline = %self.pipeline, error = %error, "kafka: {reason}");
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.revoke(consumer, revoked);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(pipeline = %self.pipeline, error = %e, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            tracing::info!(pipeline = %self.pipeline, partitions = assigned.count(), "partitions assigned");
        }
    }
}
