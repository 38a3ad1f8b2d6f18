#!/usr/bin/env bash
# Fuzzes the control plane's REST API with schemathesis, driven by the API's
# own OpenAPI document (GET /v1/openapi.json): generated, mutated and
# stateful call sequences against a real `isola-control serve` on loopback.
# Fails on any 5xx, any answer outside the documented statuses, content
# types or schemas, or a control plane that stops answering or panics.
#
#   tests/api-fuzz/run.sh [SECONDS]     # default 600; CI runs a short smoke
#
# Uses ISOLA_CONTROL_BIN (default: $CARGO_TARGET_DIR/debug/isola-control) and
# a Python venv with a pinned schemathesis under $CARGO_TARGET_DIR.
set -euo pipefail
seconds="${1:-600}"
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/isola-target}"
bin="${ISOLA_CONTROL_BIN:-$target/debug/isola-control}"
[ -x "$bin" ] || { echo "api-fuzz: no isola-control at $bin; run cargo build -p isola-control first" >&2; exit 1; }

venv="$target/api-fuzz-venv"
# A venv moved with its target dir keeps scripts that name the old path:
# made again when its pip no longer runs.
if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/pip" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

work="$(mktemp -d)"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api="127.0.0.1:$(port)"
quic="127.0.0.1:$(port)"
# The fuzzer is one client sending as fast as it can: lift the per-token
# rate limit so answers are judged, not throttled.
cat > "$work/control.toml" <<TOML
[rate_limit]
per_second = 1000000
burst = 1000000
TOML
"$bin" init --data-dir "$work/cp" > /dev/null
ISOLA_LOG=warn "$bin" serve --data-dir "$work/cp" --config "$work/control.toml" \
  --api "$api" --quic "$quic" > "$work/control.log" 2>&1 &
pid=$!
up=""
for _ in $(seq 600); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://$api/healthz')" 2>/dev/null; then
    up=1
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "api-fuzz: the control plane did not start:" >&2
  cat "$work/control.log" >&2
  exit 1
fi
token="$(cat "$work/cp/admin-token")"

# Something for the generated calls to find: a worker, a route, a KV
# namespace and a queue.
"$venv/bin/python" "$here/seed.py" "http://$api" "$token"

status=0
# One worker: schemathesis runs its workers as threads, and CPython before
# 3.11.8 (gh-106905) can fail `ast.parse` with "AST constructor recursion
# depth mismatch" when two threads parse at once, a crash of the tool that
# is not a finding.
"$venv/bin/schemathesis" run "http://$api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-time "$seconds" --workers 1 --suppress-health-check all \
  --warnings off --report junit --report-dir "${ISOLA_ARTIFACTS:-$target/artifacts}/api-fuzz" \
  || status=$?

if ! python3 -c "import urllib.request; urllib.request.urlopen('http://$api/healthz')" 2>/dev/null; then
  echo "api-fuzz: the control plane stopped answering" >&2
  status=1
fi
if grep -q "panicked" "$work/control.log"; then
  echo "api-fuzz: the control plane panicked:" >&2
  grep -A5 "panicked" "$work/control.log" >&2
  status=1
fi
exit "$status"
