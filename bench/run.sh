#!/usr/bin/env bash
# Isola benchmark harness, end to end: installs wrk and the peer runtimes if
# missing, builds raw hyper and isola-edge (release), then runs bench/run.py,
# which writes bench/results/<timestamp>.md and prints the table.
#
# Quick run:   RUNS=1 DURATION=3 WARMUP=1 STARTUP_RUNS=5 bench/run.sh
# See bench/README.md for every knob.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"

DENO_VERSION="${DENO_VERSION:-2.9.6}"
WORKERD_VERSION="${WORKERD_VERSION:-1.20261117.1}"
export PEERS_DIR="${PEERS_DIR:-$BENCH/.peers}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/isola-target}"
if [[ -z "${RUSTY_V8_ARCHIVE:-}" ]]; then
  v8="$ROOT/../shared/v8/librusty_v8_simdutf_release_x86_64-unknown-linux-gnu.a.gz"
  [[ -f "$v8" ]] && export RUSTY_V8_ARCHIVE="$(realpath "$v8")"
fi

# Every server run.py starts is listed here; on any exit, end those still alive.
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
if [[ -z "${ISOLA_EDGE:-}" && "${SKIP_BUILD:-0}" != "1" ]]; then
  log "building isola-edge (cargo build --release -p isola-edge; slow the first time)"
  if ! (cd "$ROOT" && cargo build --release --quiet -p isola-edge); then
    bin="$CARGO_TARGET_DIR/release/isola-edge"
    [[ -x "$bin" ]] || { echo "isola-edge does not build and no earlier binary exists" >&2; exit 1; }
    log "isola-edge FAILED to build; benchmarking the earlier binary $bin"
    export ISOLA_BUILD_NOTE="cargo build failed at $(date -Iseconds); the earlier binary was used"
  fi
fi

# --- run ----------------------------------------------------------------------
python3 "$BENCH/run.py"
