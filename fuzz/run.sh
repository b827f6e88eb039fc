#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser an attacker can feed, SECONDS each (60 by
# default): notification bodies, pipeline files, key templates, cron expressions and
# durations, and the image decode entry under limits. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). Seeds come from fixtures/; what libFuzzer
# finds is kept in fuzz/corpus/ (not committed), crashes in fuzz/artifacts/.
#
#   fuzz/run.sh                 # all targets, 60 s each
#   SECONDS_EACH=600 fuzz/run.sh image_resize
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_EACH:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(notification pipeline key_template schedule image_resize)
seeds() {
  case $1 in
    pipeline) echo pipelines fixtures/pipelines/bad ;;
    *) echo "fixtures/fuzz/$1" ;;
  esac
}
cargo +nightly fuzz build --fuzz-dir fuzz
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "== $target: $seconds s"
  # shellcheck disable=SC2046
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" $(seeds "$target") -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==ERROR|SUMMARY|Done)" || true
  found=$(find "fuzz/artifacts/$target" -type f 2>/dev/null | wc -l)
  echo "$target: $found crash(es) in fuzz/artifacts/$target"
done
