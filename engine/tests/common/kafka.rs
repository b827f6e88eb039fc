//! A Kafka broker for tests: librdkafka's mock cluster (the real Kafka protocol on
//! loopback, in-process), with a producer and ways to look at what is committed and
//! what a topic holds.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub struct Broker {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub producer: FutureProducer,
}

impl Broker {
    pub fn new(topic: &str, partitions: i32) -> Self {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(topic, partitions, 1).unwrap();
        let producer: FutureProducer =
            ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().unwrap();
        Self { cluster, producer }
    }

    pub fn servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Produces `payloads` to one partition, in order (all sent, then all awaited).
    pub async fn produce(&self, topic: &str, partition: i32, payloads: impl IntoIterator<Item = String>) {
        let payloads: Vec<String> = payloads.into_iter().collect();
        let sends = payloads.iter().map(|payload| {
            let record = FutureRecord::to(topic).partition(partition).key("k").payload(payload);
            self.producer.send(record, Duration::from_secs(10))
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| e).unwrap();
        }
    }

    /// Produces `(timestamp in ms, payload)` records to one partition, in order, with
    /// those CreateTime timestamps.
    pub async fn produce_at(&self, topic: &str, partition: i32, records: &[(i64, String)]) {
        for (timestamp, payload) in records {
            let record = FutureRecord::to(topic).partition(partition).key("k").payload(payload).timestamp(*timestamp);
            self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    }

    pub async fn produce_keyed(&self, topic: &str, partition: i32, key: &str, payload: &str) {
        let record = FutureRecord::to(topic).partition(partition).key(key).payload(payload);
        self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    /// The group's committed offset of each partition (-1001: none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        committed_offsets(&self.servers(), group, topic, partitions)
    }
}

/// `group`'s committed offset of each partition of `topic` on `servers` (-1001: none).
pub fn committed_offsets(servers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", servers).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1001,
        })
        .collect()
}

impl Broker {
    /// Produces `payload` to `partition` with `key` and headers.
    pub async fn produce_with_headers(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) {
        let mut owned = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(rdkafka::message::Header { key: name, value: Some(*value) });
        }
        let record = FutureRecord::to(topic).partition(partition).key(key).payload(payload).headers(owned);
        self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    /// Everything `topic` holds now, partition by partition, in offset order.
    pub fn read_all(&self, topic: &str) -> Vec<OwnedMessage> {
        // A group id is required to assign partitions; nothing is committed under it.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.servers())
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
        let mut list = TopicPartitionList::new();
        let mut left = 0;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout).unwrap_or((0, 0));
            if high > low {
                list.add_partition_offset(topic, partition.id(), Offset::Offset(low)).unwrap();
                left += (high - low) as usize;
            }
        }
        let mut messages = Vec::new();
        if left == 0 {
            return messages;
        }
        consumer.assign(&list).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while messages.len() < left && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                messages.push(message.unwrap().detach());
            }
        }
        messages.sort_by_key(|m| (m.partition(), m.offset()));
        messages
    }
}

/// A header's value as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
