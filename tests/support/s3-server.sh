#!/usr/bin/env bash
# Installs the S3-compatible server the blob-store test (tests/e2e/blobs.rs)
# starts: moto's server, pinned, in a venv under $CARGO_TARGET_DIR (as
# tests/api-fuzz/), where the test looks for it. Prints moto_server's path.
#
#   tests/support/s3-server.sh
set -euo pipefail
target="${CARGO_TARGET_DIR:-$HOME/.cache/isola-target}"
venv="$target/s3-venv"
# A venv moved with its target dir keeps scripts that name the old path:
# made again when its pip no longer runs.
if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/pip" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5"
fi
echo "$venv/bin/moto_server"
