#!/usr/bin/env python3
"""The shipped pipelines/s3-thumbnails.toml against a third-party S3 server (moto).

Run by .ci/run after `cargo test`, so weir is not only tested against its own
in-process server. Needs `moto[server]`, boto3 and Pillow (installed by .ci/run into
.venv) and a built `weir` binary.

For each detection mode (poll, then S3 -> SNS -> HTTP notifications):
  * 200 generated photos, with spaces, '+', '%', unicode and '/' in their names, are
    put into a fresh input bucket;
  * every photo must yield its three variants in the output bucket, and the ledger
    must show exactly one finished run per photo;
  * weir is restarted: nothing runs again;
  * one photo's content changes: exactly that photo runs again.

Usage: python3 engine/tests/e2e/s3_moto.py [--weir target/debug/weir] [--photos 200]
"""

import argparse
import io
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[3]
PIPELINE = ROOT / "pipelines" / "s3-thumbnails.toml"
VARIANTS = ("thumb", "medium", "large")
# The shared token the notification endpoint is closed with in the notifications run.
NOTIFY_TOKEN = "e2e-notify-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, condition, limit=180):
    start = time.time()
    while not condition():
        if time.time() - start > limit:
            raise SystemExit(f"FAIL: timed out after {limit}s waiting for {what}")
        time.sleep(0.2)


def photo(i, seed=0):
    rng = random.Random(i * 1000 + seed)
    w, h = rng.choice([(640, 480), (480, 640), (900, 600)])
    img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.ellipse((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)),
                     fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def photo_key(i):
    awkward = ["plain", "with space", "plus+sign", "100% done", "café", "日本の写真", "a+b c%20d", "deep/er/path"]
    return f"inbox/{awkward[i % len(awkward)]} {i:03d}.jpg"


def output_keys(key):
    # The pipeline writes {variant}/{dir}/{stem}.jpg
    stem = key.rsplit("/", 1)[1].rsplit(".", 1)[0]
    directory = key.rsplit("/", 1)[0]
    return [f"{v}/{directory}/{stem}.jpg" for v in VARIANTS]


class Weir:
    def __init__(self, binary, pipeline, state, env, listen):
        self.args = [binary, "run", str(pipeline), "--state-dir", str(state), "--listen", listen, "--grace", "30s"]
        self.env, self.state, self.proc = env, state, None

    def start(self):
        self.log = open(self.state.parent / "weir.log", "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        if code != 0:
            raise SystemExit(f"FAIL: weir exited with {code}; see {self.state.parent / 'weir.log'}")

    def runs(self):
        """Finished runs per source key, from the ledger."""
        db = self.state / "ledger.db"
        if not db.exists():
            return {}
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT source, count(*) FROM runs WHERE status = 'done' GROUP BY source").fetchall()
        return dict(rows)


def listed(s3, bucket):
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def scenario(mode, s3, sns, args, env, work, weir_listen):
    print(f"== {mode}: {args.photos} photos", flush=True)
    bucket, out = f"photos-{mode}", f"photos-{mode}-out"
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=out)
    text = PIPELINE.read_text()
    text = text.replace('url = "s3://photos"', f'url = "s3://{bucket}"').replace(
        'url = "s3://photos-out"', f'url = "s3://{out}"')
    text = text.replace('name = "s3-thumbnails"', f'name = "s3-{mode}"')
    if mode == "poll":
        text = text.replace('detect = "hybrid"', 'detect = "poll"').replace('poll_interval = "60s"', 'poll_interval = "1s"')
        text = text.replace('notify_auth = "none"\n', '')
    else:
        # The endpoint closed with a shared token, which SNS sends as the password of
        # the subscription URL's basic auth.
        text = text.replace('detect = "hybrid"', 'detect = "notifications"')
        text = text.replace('notify_auth = "none"', 'notify_token = "${env:WEIR_NOTIFY_TOKEN}"')
        env["WEIR_NOTIFY_TOKEN"] = NOTIFY_TOKEN
        topic = sns.create_topic(Name=f"weir-{mode}")["TopicArn"]
        sns.subscribe(TopicArn=topic, Protocol="http",
                      Endpoint=f"http://weir:{NOTIFY_TOKEN}@{weir_listen}/v1/notifications/s3-{mode}")
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]})
    pipeline = work / f"s3-{mode}.toml"
    pipeline.write_text(text)
    state = work / mode / "state"
    state.parent.mkdir(parents=True)
    weir = Weir(args.weir, pipeline, state, env, weir_listen)
    weir.start()
    time.sleep(1.0)  # the notification endpoint must be up before the first PUT

    keys = [photo_key(i) for i in range(args.photos)]
    started = time.time()
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=photo(i), ContentType="image/jpeg")
    expected = {k for key in keys for k in output_keys(key)}
    wait_until(f"{len(expected)} outputs in {out}", lambda: expected <= listed(s3, out))
    wait_until("every run recorded", lambda: sum(weir.runs().values()) >= len(keys))
    print(f"   {len(expected)} variants in {time.time() - started:.1f}s", flush=True)
    runs = weir.runs()
    if set(runs) != set(keys) or any(n != 1 for n in runs.values()):
        extra = {k: n for k, n in runs.items() if n != 1 or k not in keys}
        raise SystemExit(f"FAIL ({mode}): runs per key not exactly once: {extra}, missing {set(keys) - set(runs)}")
    head = s3.head_object(Bucket=out, Key=output_keys(keys[3])[0])
    if head["ContentLength"] < 1000:
        raise SystemExit(f"FAIL ({mode}): thumbnail of {keys[3]} is only {head['ContentLength']} bytes")
    weir.stop()

    # A restart processes nothing again.
    weir.start()
    time.sleep(4)
    if weir.runs() != runs:
        raise SystemExit(f"FAIL ({mode}): a restart processed objects again")
    # Changing one object's content reprocesses only it.
    changed = keys[5]
    s3.put_object(Bucket=bucket, Key=changed, Body=photo(5, seed=1), ContentType="image/jpeg")
    wait_until(f"{changed} processed again", lambda: weir.runs().get(changed) == 2)
    time.sleep(3)
    after = weir.runs()
    weir.stop()
    others = {k: n for k, n in after.items() if k != changed and n != 1}
    if others or sum(after.values()) != len(keys) + 1:
        raise SystemExit(f"FAIL ({mode}): more than the changed object ran again: {others}")
    print(f"   exactly once each; restart: nothing again; change of {changed!r}: only it again", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", default=str(ROOT / "target" / "debug" / "weir"))
    parser.add_argument("--photos", type=int, default=200)
    beside_python = Path(sys.executable).parent / "moto_server"  # the venv's, even when not activated
    parser.add_argument("--moto", default=str(beside_python) if beside_python.exists() else "moto_server")
    args = parser.parse_args()

    moto_port, weir_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="weir-moto-"))
    moto = subprocess.Popen([args.moto, "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=open(work / "moto.log", "wb"), stderr=subprocess.STDOUT)
    try:
        endpoint = f"http://127.0.0.1:{moto_port}"
        creds = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        s3 = boto3.client("s3", endpoint_url=endpoint, **creds)
        sns = boto3.client("sns", endpoint_url=endpoint, **creds)

        def moto_up():
            try:
                s3.list_buckets()
                return True
            except Exception:
                return False

        wait_until("moto to start", moto_up, limit=60)
        env = dict(os.environ, AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", WEIR_LOG="info")
        for mode in ("poll", "notifications"):
            scenario(mode, s3, sns, args, env, work, f"127.0.0.1:{weir_port}")
        print("moto e2e: OK", flush=True)
    finally:
        moto.terminate()
        moto.wait()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
