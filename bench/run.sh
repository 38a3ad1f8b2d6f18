#!/usr/bin/env bash
# Isola benchmark harness, end to end: installs wrk, oha and the peer runtimes
# if missing, builds raw hyper, isola-edge and isola-control (release), then
# runs bench/measure.py, which writes bench/results/<timestamp>.json (raw) and
# .md (rendered by bench/report.py) and prints the table.
#
# Quick run:   RUNS=1 DURATION=3 WARMUP=1 STARTUP_RUNS=5 bench/run.sh
# Re-render or compare saved results: bench/report.py (see bench/README.md).
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"

DENO_VERSION="${DENO_VERSION:-2.9.6}"
OHA_VERSION="${OHA_VERSION:-1.16.0}"
WORKERD_VERSION="${WORKERD_VERSION:-1.20261117.1}"
export PEERS_DIR="${PEERS_DIR:-$BENCH/.peers}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/isola-target}"
if [[ -z "${RUSTY_V8_ARCHIVE:-}" ]]; then
  v8="$ROOT/../shared/v8/librusty_v8_simdutf_release_x86_64-unknown-linux-gnu.a.gz"
  [[ -f "$v8" ]] && export RUSTY_V8_ARCHIVE="$(realpath "$v8")"
fi

# Every server measure.py starts is listed here; on any exit, end those still alive.
export BENCH_PIDFILE="$(mktemp -t isola-bench-pids.XXXXXX)"
cleanup() {
  local pid
  if [[ -f "$BENCH_PIDFILE" ]]; then
    while read -r pid; do
      [[ "$pid" =~ ^[0-9]+$ ]] || continue
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      fi
    done <"$BENCH_PIDFILE"
    rm -f "$BENCH_PIDFILE"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '== %s\n' "$*" >&2; }

# --- load generator ---------------------------------------------------------
if ! command -v wrk >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing wrk (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "wrk is missing; install it (apt-get install wrk)" >&2
    exit 1
  fi
fi

# Open-loop load for the latency columns: oha from crates.io into bench/.tools
# (git-ignored), unless OHA names a binary or LATENCY=0 turns the columns off.
if [[ -z "${OHA:-}" && "${LATENCY:-1}" != 0 ]]; then
  oha="$BENCH/.tools/bin/oha"
  if [[ ! -x "$oha" || "$("$oha" --version 2>/dev/null)" != "oha $OHA_VERSION" ]]; then
    log "installing oha $OHA_VERSION into $BENCH/.tools (cargo install; a few minutes once)"
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/bench-oha" cargo install --quiet --locked \
      --version "$OHA_VERSION" --root "$BENCH/.tools" oha
  fi
  export OHA="$oha"
fi

# --- peers: deno and workerd from npm, into bench/.peers ---------------------
installed_version() { # package dir -> version from its package.json, or nothing
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$PEERS_DIR/node_modules/$1/package.json" 2>/dev/null || true
}
if [[ "$(installed_version @deno/linux-x64-glibc)" != "$DENO_VERSION" ||
      "$(installed_version @cloudflare/workerd-linux-64)" != "$WORKERD_VERSION" ]]; then
  command -v npm >/dev/null || { echo "npm is needed to install deno and workerd" >&2; exit 1; }
  log "installing deno $DENO_VERSION and workerd $WORKERD_VERSION into $PEERS_DIR"
  mkdir -p "$PEERS_DIR"
  [[ -f "$PEERS_DIR/package.json" ]] ||
    echo '{"name":"isola-bench-peers","private":true}' >"$PEERS_DIR/package.json"
  (cd "$PEERS_DIR" && timeout 600 npm install --no-audit --no-fund --loglevel=error \
    "@deno/linux-x64-glibc@$DENO_VERSION" "@cloudflare/workerd-linux-64@$WORKERD_VERSION")
fi
chmod +x "$PEERS_DIR/node_modules/@deno/linux-x64-glibc/deno" \
  "$PEERS_DIR/node_modules/@cloudflare/workerd-linux-64/bin/workerd" 2>/dev/null || true

# --- builds -------------------------------------------------------------------
if [[ -z "${HYPER_BASELINE:-}" ]]; then
  log "building bench/hyper-baseline (release)"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/bench-hyper-baseline" \
    cargo build --release --quiet --manifest-path "$BENCH/hyper-baseline/Cargo.toml"
fi
# isola-edge and isola-control, unless ISOLA_EDGE / ISOLA_CONTROL name binaries.
build=()
if [[ -z "${ISOLA_EDGE:-}" ]]; then build+=(isola-edge); fi
if [[ -z "${ISOLA_CONTROL:-}" ]]; then build+=(isola-control); fi
if [[ ${#build[@]} -gt 0 && "${SKIP_BUILD:-0}" != "1" ]]; then
  log "building ${build[*]} (cargo build --release; slow the first time)"
  if ! (cd "$ROOT" && cargo build --release --quiet "${build[@]/#/--package=}"); then
    for bin in "${build[@]}"; do
      [[ -x "$CARGO_TARGET_DIR/release/$bin" ]] ||
        { echo "$bin does not build and no earlier binary exists" >&2; exit 1; }
    done
    log "the build FAILED; benchmarking the earlier ${build[*]} in $CARGO_TARGET_DIR/release"
    export ISOLA_BUILD_NOTE="cargo build failed at $(date -Iseconds); the earlier ${build[*]} was used"
  fi
fi
# DENSITY=1: the runtime's density bench too (built here, run by measure.py).
if [[ "${DENSITY:-0}" == "1" && -z "${DENSITY_BIN:-}" && -z "${DENSITY_FILE:-}" ]]; then
  log "building the density bench (cargo bench -p isola-runtime --bench density --no-run)"
  DENSITY_BIN="$(cd "$ROOT" && cargo bench --quiet -p isola-runtime --bench density --no-run \
    --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "density" \
            and m.get("executable"):
        print(m["executable"])')"
  [[ -x "$DENSITY_BIN" ]] || { echo "the density bench did not build" >&2; exit 1; }
  export DENSITY_BIN
fi

# --- run ----------------------------------------------------------------------
python3 "$BENCH/measure.py"
