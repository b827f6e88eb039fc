#!/usr/bin/env bash
# Peak memory of `weir replay` over local buckets of several sizes: the listing is
# streamed in chunks and the queue is bounded, so the peak should not grow with the
# number of objects.
#
# For each size N: a fresh local bucket gets N small files under 97 sub-directories
# of in/; `weir replay` (release build) copies every one to out/ through an
# object.put step, recording each in the ledger; then a second replay of the same
# bucket (everything already done: listing and ledger checks only) runs. Peak RSS is
# GNU time's "Maximum resident set size".
#
# Usage: benches/replay_rss.sh [N...]      (default: 10000 100000)
# Needs: /usr/bin/time (apt-get install time), target/release/weir (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 10000 100000

weir=$PWD/target/release/weir
[ -x "$weir" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$work/time.txt" >/dev/null || { cat "$work/time.txt" >&2; exit 1; }
  local rss wall summary
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2 / 1024)}' "$work/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
  summary=$(grep '^replay ' "$work/time.txt" | sed 's/^replay [^:]*: //')
  printf '| %s | %s | %s MiB | %s |\n' "$label" "$summary" "$rss" "$wall"
}

echo "| run | summary | peak RSS | wall |"
echo "|---|---|---|---|"
for n in "$@"; do
  dir="$work/$n"
  mkdir -p "$dir/bucket/in"
  python3 - "$dir/bucket/in" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(97):
    os.makedirs(f"{root}/{d:02}", exist_ok=True)
for i in range(n):
    with open(f"{root}/{i % 97:02}/{i:07}.bin", "wb") as f:
        f.write(b"x" * 100)
PY
  cat > "$dir/replay.toml" <<TOML
name = "replay-rss"
[trigger]
kind = "object_store"
url = "file://$dir/bucket"
prefix = "in/"
[[step]]
name = "copy"
function = "object.put"
key = "out/{key}"
TOML
  export WEIR_STATE_DIR="$dir/state"
  measure "$n objects, first replay" "$weir" replay "$dir/replay.toml" --progress-every 1h
  measure "$n objects, again (all done)" "$weir" replay "$dir/replay.toml" --progress-every 1h
  rm -rf "$dir"
done
