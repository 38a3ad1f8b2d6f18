#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests, from Debian's packages
# (`postgresql`; installed when missing and we are root).
#
#   tests/support/postgres.sh start DIR   # prints postgres://postgres@127.0.0.1:PORT
#   tests/support/postgres.sh stop DIR
#
# DIR must not exist yet and its parent must be world-traversable (/tmp):
# initdb refuses root, so as root the cluster belongs to user `postgres`.
# Trust authentication on 127.0.0.1 only, and fsync off: a test server.
set -euo pipefail
cmd="${1:?start|stop}"
dir="${2:?DIR}"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin)"
if [ -z "$bin" ] && [ "$cmd" = start ] && [ "$(id -u)" = 0 ]; then
  apt-get update >/dev/null && apt-get install -y --no-install-recommends postgresql >/dev/null
  bin="$(find_bin)"
fi
if [ -z "$bin" ]; then
  echo "PostgreSQL's server binaries are missing (/usr/lib/postgresql/*/bin); apt-get install postgresql" >&2
  exit 1
fi
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    mkdir -m 0755 "$dir"
    [ "$(id -u)" != 0 ] || chown postgres "$dir"
    if ! as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
      >"$dir/initdb.log" 2>&1; then
      cat "$dir/initdb.log" >&2
      exit 1
    fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      >/dev/null; then
      cat "$dir/server.log" >&2
      exit 1
    fi
    echo "postgres://postgres@127.0.0.1:$port"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
