#!/usr/bin/env bash
# Speed and peak memory of `weir replay` over local buckets of several sizes: the
# listing is streamed in chunks and the queue is bounded, so the peak should not grow
# with the number of objects.
#
# For each size N: a fresh local bucket gets N small files under 97 sub-directories
# of in/; `weir replay` (release build) runs three times:
#   1. through a flow.discard step (the engine alone: listing, ledger checks, the
#      executor and a ledger record per object; the objects are not read);
#   2. through an object.put step that copies every object to out/ (read, write,
#      fdatasync, rename), with a ledger of its own;
#   3. the copy again: everything already done, listing and ledger checks only.
# Every pipeline has `limits.concurrency = $CONCURRENCY` (default 32: these steps
# wait on the disk, not the CPU). Peak RSS is GNU time's "Maximum resident set size".
#
# Usage: [CONCURRENCY=N] benches/replay_rss.sh [N...]      (default: 10000 100000)
# Needs: /usr/bin/time (apt-get install time), target/release/weir (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 10000 100000
concurrency=${CONCURRENCY:-32}

weir=$PWD/target/release/weir
[ -x "$weir" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$work/time.txt" >/dev/null || { cat "$work/time.txt" >&2; exit 1; }
  local rss wall summary rate
  rss=$(awk -F': ' '/Maximum resident set size/ {print int($2 / 1024)}' "$work/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
  summary=$(grep '^replay ' "$work/time.txt" | sed 's/^replay [^:]*: //')
  # Objects found per second of the replay's own time (the figure in its summary).
  rate=$(echo "$summary" | awk '{ for (i = 1; i < NF; i++) if ($i == "in") t = $(i + 1); sub("s$", "", t);
    if (t + 0 > 0) printf "%.0f/s", $1 / t; else printf "(under 0.05 s)" }')
  printf '| %s | %s | %s | %s MiB | %s |\n' "$label" "$summary" "$rate" "$rss" "$wall"
}

echo "| run | summary | objects/s | peak RSS | wall |"
echo "|---|---|---|---|---|"
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
  pipeline() { # file name, the step's lines
    printf 'name = "%s"\n[trigger]\nkind = "object_store"\nurl = "file://%s/bucket"\nprefix = "in/"\n[limits]\nconcurrency = %s\n[[step]]\n%s\n' \
      "$(basename "$1" .toml)" "$dir" "$concurrency" "$2" > "$1"
  }
  pipeline "$dir/discard.toml" 'name = "nothing"
function = "flow.discard"'
  pipeline "$dir/replay.toml" 'name = "copy"
function = "object.put"
key = "out/{key}"'
  WEIR_STATE_DIR="$dir/state-discard" measure "$n objects, flow.discard" "$weir" replay "$dir/discard.toml" --progress-every 1h
  export WEIR_STATE_DIR="$dir/state"
  measure "$n objects, object.put copies" "$weir" replay "$dir/replay.toml" --progress-every 1h
  measure "$n objects, copies again (all done)" "$weir" replay "$dir/replay.toml" --progress-every 1h
  rm -rf "$dir"
done
