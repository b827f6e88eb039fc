//! Kafka as an output: `kafka.produce` (delivery checked: a failed delivery is a failed
//! step) and dead-letter topics, read back and re-driven by `weir dlq`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::kafka::{header, Broker};
use common::{wait_for, Sandbox};
use rdkafka::message::Message;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use weir_engine::Engine;
use weir_functions::Registry;

const WAIT: Duration = Duration::from_secs(60);

/// The `[trigger]` of a pipeline reading `uploads` in `group`; `extra` are more lines.
fn trigger(servers: &str, group: &str, extra: &str) -> String {
    format!(
        "[trigger]\nkind = \"kafka\"\nbrokers = \"{servers}\"\ntopics = [\"uploads\"]\n\
         group = \"{group}\"\nstart = \"earliest\"\nordering = \"partition\"\ncommit_interval = \"100ms\"\n\
         {extra}\n[trigger.librdkafka]\n\"group.protocol\" = \"consumer\"\n"
    )
}

async fn run_until_committed(sandbox: &Sandbox, text: &str, broker: &Broker, group: &str, end: i64) {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("weir_engine=info").try_init();
    let file = sandbox.pipeline("outputs", text);
    let engine = Engine::new(Registry::builtin()).state_dir(sandbox.state());
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    wait_for(WAIT, "every record committed", || broker.committed(group, "uploads", 1) == [end]).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_produced_with_key_and_headers_and_acknowledged() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    for i in 0..5 {
        broker.produce_keyed("uploads", 0, &format!("user-{i}"), &format!("{{\"n\":{i}}}")).await;
    }
    let text = format!(
        "name = \"forward\"\n{}[[step]]\nname = \"forward\"\nfunction = \"kafka.produce\"\nbrokers = \"{}\"\n\
         topic = \"copies-{{attr.topic}}\"\nkey = \"{{attr.record_key}}\"\n\
         headers = {{ source = \"{{key}}\", pipeline = \"{{pipeline}}\" }}\n",
        trigger(&broker.servers(), "forward", "format = \"json\""),
        broker.servers()
    );
    run_until_committed(&sandbox, &text, &broker, "forward", 5).await;
    let mut copies = broker.read_all("copies-uploads");
    assert_eq!(copies.len(), 5, "one record produced per record consumed");
    // Keyed records spread over the topic's partitions: put them back in source order.
    copies.sort_by_key(|m| header(m, "source"));
    for (i, message) in copies.iter().enumerate() {
        assert_eq!(message.key(), Some(format!("user-{i}").as_bytes()));
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(value["n"], i);
        assert_eq!(header(message, "source").as_deref(), Some(format!("uploads/0/{i}").as_str()));
        assert_eq!(header(message, "pipeline").as_deref(), Some("forward"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_fails_the_step_and_dead_letters_the_record() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..3).map(|i| format!("r{i}"))).await;
    // The broker refuses every write to the output topic.
    broker.cluster.topic_error("refused", RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).unwrap();
    let text = format!(
        "name = \"forward\"\n{}[retry]\nmax_attempts = 2\nbackoff = \"10ms..20ms\"\n\
         [[step]]\nname = \"forward\"\nfunction = \"kafka.produce\"\nbrokers = \"{}\"\ntopic = \"refused\"\n\
         [step.librdkafka]\n\"message.timeout.ms\" = \"3000\"\n",
        trigger(&broker.servers(), "refusing", ""),
        broker.servers()
    );
    run_until_committed(&sandbox, &text, &broker, "refusing", 3).await;
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 3, "each undelivered record is dead-lettered: {dead:?}");
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    let error = letter["error"].as_str().unwrap();
    assert!(error.contains("delivering a record to topic \"refused\""), "{error}");
    assert_eq!(letter["step"], "forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_produce_errors_are_retried_by_the_producer() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    broker.produce("uploads", 0, (0..3).map(|i| format!("r{i}"))).await;
    broker
        .cluster
        .request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 4]);
    let text = format!(
        "name = \"forward\"\n{}[[step]]\nname = \"forward\"\nfunction = \"kafka.produce\"\nbrokers = \"{}\"\n\
         topic = \"copies\"\nkey = \"{{key}}\"\n",
        trigger(&broker.servers(), "flaky", ""),
        broker.servers()
    );
    run_until_committed(&sandbox, &text, &broker, "flaky", 3).await;
    let copies = broker.read_all("copies");
    let mut keys: Vec<String> = copies.iter().map(|m| String::from_utf8_lossy(m.key().unwrap()).into_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["uploads/0/0", "uploads/0/1", "uploads/0/2"], "each exactly once (idempotent producer)");
    assert!(sandbox.files_under("../state/dead-letter").is_empty());
}

fn weir(sandbox: &Sandbox, args: &[&str]) -> (i32, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_weir")).args(args).env("WEIR_STATE_DIR", sandbox.state()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A poison record goes to the dead-letter topic with its failure in headers while the
/// partition moves on; `weir dlq list` shows it, `weir dlq redrive` runs it again (and
/// puts it back on the topic when it fails again), and a fixed pipeline clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_a_dead_letter_topic_and_are_redriven_from_it() {
    let broker = Broker::new("uploads", 1);
    let sandbox = Sandbox::new();
    for (i, key) in ["a", "b", "../evil", "c"].iter().enumerate() {
        let trace = format!("t{i}");
        broker.produce_with_headers("uploads", 0, key, format!("v{i}").as_bytes(), &[("trace", &trace)]).await;
    }
    // `{attr.record_key}` of "../evil" is an unsafe key: refused, permanently.
    let pipeline = |key: &str| {
        format!(
            "name = \"topic-dlq\"\n{}[retry]\nmax_attempts = 1\ndead_letter = \"kafka://uploads.dlq\"\n\
             [[step]]\nname = \"store\"\nfunction = \"object.put\"\nurl = \"{{bucket}}\"\nkey = \"{key}\"\n",
            trigger(&broker.servers(), "topic-dlq", "")
        )
    };
    let broken = pipeline("out/{attr.record_key}.txt");
    run_until_committed(&sandbox, &broken, &broker, "topic-dlq", 4).await;
    let stored = sandbox.files_under("out");
    assert_eq!(stored.len(), 3, "the records around the poison one ran: {stored:?}");

    let letters = broker.read_all("uploads.dlq");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.key(), Some(&b"../evil"[..]), "the original key");
    assert_eq!(letter.payload(), Some(&b"v2"[..]), "the original value");
    assert_eq!(header(letter, "weir.source.topic").as_deref(), Some("uploads"));
    assert_eq!(header(letter, "weir.source.partition").as_deref(), Some("0"));
    assert_eq!(header(letter, "weir.source.offset").as_deref(), Some("2"));
    assert!(header(letter, "weir.source.timestamp").is_some());
    assert_eq!(header(letter, "weir.attempts").as_deref(), Some("1"));
    assert_eq!(header(letter, "weir.error_kind").as_deref(), Some("permanent"));
    assert!(header(letter, "weir.error").unwrap().contains("unsafe key"), "{:?}", header(letter, "weir.error"));
    assert_eq!(header(letter, "trace").as_deref(), Some("t2"), "the producer's headers travel on");
    let id = header(letter, "weir.event_id").unwrap();

    let file = sandbox.pipeline("outputs", &broken);
    let file = file.to_str().unwrap();
    let (code, listed) = weir(&sandbox, &["dlq", "list", file]);
    assert_eq!(code, 0, "{listed}");
    assert!(listed.contains(&id) && listed.contains("uploads/0/2"), "{listed}");

    // Re-driven with the same pipeline it fails again, and is back on the topic.
    let (code, out) = weir(&sandbox, &["dlq", "redrive", file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed again"), "{out}");
    let letters = broker.read_all("uploads.dlq");
    assert_eq!(letters.len(), 2);
    assert_eq!(header(&letters[1], "weir.redrives").as_deref(), Some("1"));
    let (_, listed) = weir(&sandbox, &["dlq", "list", file]);
    assert_eq!(listed.matches(&id).count(), 1, "only the newest copy is pending: {listed}");

    // With the pipeline fixed, the redrive succeeds and nothing is left; the record
    // still has its headers after two trips through the dead-letter topic.
    let file = sandbox.pipeline("outputs", &pipeline("out/{key}.{attr.header.trace}.txt"));
    let file = file.to_str().unwrap();
    let (code, out) = weir(&sandbox, &["dlq", "redrive", file]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 record(s) re-driven, 0 failed again"), "{out}");
    assert_eq!(std::fs::read(sandbox.bucket().join("out/uploads/0/2.t2.txt")).unwrap(), b"v2");
    let (code, listed) = weir(&sandbox, &["dlq", "list", file]);
    assert_eq!(code, 0);
    assert!(!listed.contains(&id), "{listed}");
}
