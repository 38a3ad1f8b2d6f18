#!/usr/bin/env bash
# Builds isola-edge and writes the npm package @isola/edge-linux-x64-gnu,
# which `isola dev` finds the binary in (see src/edge.ts), then packs it.
#
# Usage: scripts/build-edge-package.sh [--debug] [--binary PATH] [--out DIR]
#   --debug        build the debug binary instead of the release one
#   --binary PATH  package this binary instead of building one
#   --out DIR      write DIR/edge-linux-x64-gnu/ and the tarball in DIR
#                  (default: js-sdk/dist-platform)
# Prints the tarball's path last.
#
# js-sdk/package.json does not list the package under optionalDependencies:
# while it is not on the registry, `npm ci` would fail to fetch it. The CLI
# finds it when a project installs it (npm install -D TARBALL or, once
# published, @isola/edge-linux-x64-gnu), after ISOLA_EDGE_BIN, before PATH.
set -euo pipefail

sdk="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$sdk/.." && pwd)"
profile=release
binary=""
out="$sdk/dist-platform"
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --binary) binary="${2:?--binary needs a path}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-edge-package.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "build-edge-package.sh: this package is for linux-x64 (glibc); this is $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

if [ -z "$binary" ]; then
  flags=(-p isola-edge)
  [ "$profile" = release ] && flags+=(--release)
  (cd "$repo" && cargo build "${flags[@]}")
  binary="${CARGO_TARGET_DIR:-$repo/target}/$profile/isola-edge"
fi
if [ ! -x "$binary" ]; then
  echo "build-edge-package.sh: $binary is not an executable file" >&2
  exit 1
fi

version="$(node -p 'require(process.argv[1]).version' "$sdk/package.json")"
pkg="$out/edge-linux-x64-gnu"
rm -rf "$pkg"
mkdir -p "$pkg/bin"
cp "$binary" "$pkg/bin/isola-edge"
chmod 755 "$pkg/bin/isola-edge"
# No "bin" field: the CLI finds the binary through the package, and it stays
# off PATH.
cat > "$pkg/package.json" <<JSON
{
  "name": "@isola/edge-linux-x64-gnu",
  "version": "$version",
  "description": "The isola-edge binary for linux-x64 (glibc), used by the isola CLI's \`isola dev\`",
  "os": ["linux"],
  "cpu": ["x64"],
  "libc": ["glibc"],
  "files": ["bin/"],
  "license": "Apache-2.0"
}
JSON
cat > "$pkg/README.md" <<'MD'
# @isola/edge-linux-x64-gnu

The `isola-edge` binary for linux-x64 with glibc. The `isola` CLI looks for
it here (after `ISOLA_EDGE_BIN`, before `PATH`) to run `isola dev`. Install it
next to `isola`: `npm install -D @isola/edge-linux-x64-gnu` (or a tarball
built by `js-sdk/scripts/build-edge-package.sh`).
MD
tarball="$(cd "$pkg" && npm pack --silent --pack-destination "$out" | tail -n 1)"
echo "$out/$tarball"
