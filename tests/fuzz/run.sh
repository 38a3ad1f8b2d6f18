#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600) and prints a table:
# target, runs, execs/s, findings. Findings (crash/leak/timeout inputs) are
# kept under $FUZZ_WORK/artifacts/<target>/; the exit status is 1 if any.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`); builds on the
# stable toolchain with RUSTC_BOOTSTRAP=1 (libFuzzer needs -Z flags).
# FUZZ_TARGET_DIR (default /root/.cache/isola-fuzz or ./target) holds the
# build, FUZZ_WORK (default a temp dir) the grown corpus and findings; the
# committed seeds in seeds/<target> are read, never written.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame manifest routes cron upload edge_toml dns)
fi
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR-fuzz}}"
target_dir="${target_dir:-$here/target}"
work="${FUZZ_WORK:-$(mktemp -d)}"
export RUSTC_BOOTSTRAP=1
cd "$here"
cargo fuzz build --fuzz-dir . --target-dir "$target_dir" -O
status=0
rows=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  log="$work/$t.log"
  set +e
  cargo fuzz run --fuzz-dir . --target-dir "$target_dir" -O "$t" \
    "$work/corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  findings=$(find "$work/artifacts/$t" -type f | wc -l)
  if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ]; then
    status=1
    echo "== $t failed (exit $rc); the end of its log:" >&2
    tail -40 "$log" >&2
  fi
  rows+=("$(printf '%-10s %12s %10s %9s' "$t" "${runs:-?}" "${speed:-?}" "$findings")")
done
printf '%-10s %12s %10s %9s\n' target runs execs/s findings
printf '%s\n' "${rows[@]}"
echo "corpus, logs and findings: $work"
exit "$status"
