//! `format = "s3_event"`: bucket notifications carried on a Kafka topic (S3 → SQS/SNS →
//! Kafka connectors, MinIO's Kafka target) feed the object-store path — keys decoded
//! exactly once, the bucket's prefix and globs applied, Lambda's S3 event for the
//! function — and the record is committed once all its objects are done.

mod common;

use std::time::Duration;

use common::kafka::Broker;
use common::{registry_with_probe, wait_for, Sandbox};
use weir_engine::Engine;
use weir_functions::trigger_event::encode_key;

const WAIT: Duration = Duration::from_secs(60);

fn s3_record(bucket: &str, key: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-12-01T10:00:00.000Z",
        "eventName": name,
        "s3": { "bucket": { "name": bucket }, "object": { "key": encode_key(key), "size": 5, "eTag": "e1" } }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_on_a_topic_run_the_objects_they_name() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("weir_engine=info").try_init();
    let broker = Broker::new("bucket-events", 1);
    let sandbox = Sandbox::new();
    let awkward = "inbox/red flower+1 (café).txt";
    sandbox.drop_file(awkward, b"red!!");
    sandbox.drop_file("inbox/a/b.txt", b"bbbbb");
    sandbox.drop_file("inbox/skip.log", b"log..");
    sandbox.drop_file("elsewhere/x.txt", b"xxxxx");

    let notifications = [
        // S3's own shape: two objects in one record.
        serde_json::json!({ "Records": [s3_record("photos", awkward, "ObjectCreated:Put"),
                                        s3_record("photos", "inbox/a/b.txt", "ObjectCreated:CompleteMultipartUpload")] })
        .to_string(),
        // Wrapped in SNS.
        serde_json::json!({ "Type": "Notification", "Message": serde_json::json!({ "Records": [
            s3_record("photos", "inbox/a/b.txt", "ObjectCreated:Copy")] }).to_string() })
        .to_string(),
        // Ignored: another bucket, outside the prefix, excluded by the globs, a removal, a test event.
        serde_json::json!({ "Records": [s3_record("other-bucket", "inbox/a/b.txt", "ObjectCreated:Put")] }).to_string(),
        serde_json::json!({ "Records": [s3_record("photos", "elsewhere/x.txt", "ObjectCreated:Put")] }).to_string(),
        serde_json::json!({ "Records": [s3_record("photos", "inbox/skip.log", "ObjectCreated:Put")] }).to_string(),
        serde_json::json!({ "Records": [s3_record("photos", awkward, "ObjectRemoved:Delete")] }).to_string(),
        r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"photos"}"#.to_string(),
        // Not a notification at all: dead-lettered, and the partition moves on.
        "{ not json".to_string(),
        // A notification for an object that does not exist: dead-lettered as well.
        serde_json::json!({ "Records": [s3_record("photos", "inbox/gone.txt", "ObjectCreated:Put")] }).to_string(),
    ];
    broker.produce("bucket-events", 0, notifications.iter().cloned()).await;

    let text = format!(
        "name = \"notified\"\n[trigger]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopics = [\"bucket-events\"]\n\
         group = \"notified\"\nstart = \"earliest\"\nordering = \"partition\"\ncommit_interval = \"100ms\"\n\
         format = \"s3_event\"\nurl = \"{{bucket}}\"\nbucket = \"photos\"\nprefix = \"inbox/\"\nexclude = [\"*.log\"]\n\
         [trigger.librdkafka]\n\"group.protocol\" = \"consumer\"\n\
         [retry]\nmax_attempts = 1\n\
         [[step]]\nname = \"see\"\nfunction = \"test.probe\"\n\
         [[step]]\nname = \"copy\"\nafter = \"see\"\nfunction = \"object.copy\"\nkey = \"copies/{{key}}\"\n",
        broker.servers()
    );
    let file = sandbox.pipeline("notified", &text);
    let (registry, probe) = registry_with_probe();
    let engine = Engine::new(registry).state_dir(sandbox.state());
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let end = notifications.len() as i64;
    wait_for(WAIT, "every notification committed", || broker.committed("notified", "bucket-events", 1) == [end]).await;
    running.stop().await.unwrap();

    // The objects named, decoded once, copied under their real keys; nothing else.
    let copied = sandbox.files_under("copies");
    let names: Vec<String> =
        copied.iter().map(|p| p.strip_prefix(sandbox.bucket()).unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["copies/inbox/a/b.txt", format!("copies/{awkward}").as_str()], "{names:?}");
    assert_eq!(std::fs::read(sandbox.bucket().join(format!("copies/{awkward}"))).unwrap(), b"red!!");
    let counts = probe.key_counts();
    assert_eq!(counts.get(awkward), Some(&1));
    assert_eq!(counts.get("inbox/a/b.txt"), Some(&2), "notified twice (Put, then an SNS-wrapped Copy)");
    assert_eq!(counts.len(), 2, "{counts:?}");

    // The function saw Lambda's S3 event for each object.
    let events = probe.events.lock().unwrap().clone();
    let decoded: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            weir_functions::TriggerEvent::S3(s3) => s3.records[0].s3.object.url_decoded_key.clone(),
            _ => None,
        })
        .collect();
    assert!(decoded.iter().any(|k| k.ends_with(awkward)), "{decoded:?}");

    // Two dead letters: the malformed record and the missing object.
    let dead = sandbox.files_under("../state/dead-letter");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let errors: Vec<String> = dead
        .iter()
        .map(|d| serde_json::from_slice::<serde_json::Value>(&std::fs::read(d).unwrap()).unwrap()["error"].to_string())
        .collect();
    assert!(errors.iter().any(|e| e.contains("not a bucket notification")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("gone.txt")), "{errors:?}");
}
