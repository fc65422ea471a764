#!/usr/bin/env bash
# The main job on an embedded default: a local PostgreSQL cluster streams its WAL into a
# file:// repository under load, then shows status and what was archived.
#   ./scripts/demo.sh            (fresh machine: installs what is missing, builds, runs)
# Environment: DEMO_DIR (default /tmp/tidemark-demo), DEMO_SECONDS of pgbench load (10).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-/tmp/tidemark-demo}
DEMO_SECONDS=${DEMO_SECONDS:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/tidemark-target}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ $(id -u) -eq 0 ]]; then ./scripts/setup.sh; fi
say "building tidemark"
cargo build --quiet --bin tidemark
TIDEMARK=$CARGO_TARGET_DIR/debug/tidemark
BIN=/usr/lib/postgresql/15/bin

as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
chmod 0755 "$DEMO_DIR"
PGDATA=$DEMO_DIR/pgdata
SOCK=$DEMO_DIR/sock
mkdir -p "$PGDATA" "$SOCK"
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$PGDATA" "$SOCK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

say "starting PostgreSQL 15 on 127.0.0.1:$PORT (data in $PGDATA)"
as_postgres "$BIN/initdb" -D "$PGDATA" -U postgres -A trust --data-checksums >/dev/null
as_postgres "$BIN/postgres" -D "$PGDATA" -p "$PORT" -k "$SOCK" -c listen_addresses=127.0.0.1 \
  -c wal_level=replica -c max_wal_senders=4 >"$DEMO_DIR/postgres.log" 2>&1 &
PG_PID=$!
STREAM_PID=
cleanup() {
  [[ -n $STREAM_PID ]] && kill "$STREAM_PID" 2>/dev/null && wait "$STREAM_PID" 2>/dev/null
  kill -INT "$PG_PID" 2>/dev/null && wait "$PG_PID" 2>/dev/null
  return 0
}
trap cleanup EXIT
for _ in $(seq 300); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.1; done

export TIDEMARK_REPO=file://$DEMO_DIR/repo
export TIDEMARK_PG="host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
export TIDEMARK_CATALOG=$DEMO_DIR/catalog.db
PSQL=("$BIN/psql" -XAtq -h 127.0.0.1 -p "$PORT" -U postgres postgres)

say "tidemark init   (repository $TIDEMARK_REPO)"
"$TIDEMARK" init
say "tidemark stream --partial-interval 2   (in the background)"
"$TIDEMARK" stream --partial-interval 2 2>"$DEMO_DIR/stream.log" &
STREAM_PID=$!

say "pgbench: initialise, then ${DEMO_SECONDS}s of load"
"$BIN/pgbench" -q -i -s 5 -h 127.0.0.1 -p "$PORT" -U postgres postgres 2>&1 | tail -1
"$BIN/pgbench" -n -T "$DEMO_SECONDS" -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres 2>&1 | grep -E 'tps|latency average'
sleep 3
say "tidemark status"
"$TIDEMARK" status

say "pg_switch_wal(), then the archive"
SWITCH=$("${PSQL[@]}" -c 'SELECT pg_switch_wal()')
echo "switched at $SWITCH"
sleep 3
"$TIDEMARK" list wal | tail -8
"$TIDEMARK" list wal --json | python3 -c '
import json, sys
rows = json.load(sys.stdin)
raw = sum(r["raw_size"] for r in rows)
stored = sum(r["stored_size"] for r in rows)
print(f"{len(rows)} objects: {raw / 2**20:.1f} MB of WAL stored as {stored / 2**20:.1f} MB (zstd, x{raw / max(stored, 1):.1f})")'


say "stopping the archiver with SIGTERM (it finishes in-flight uploads)"
kill -TERM "$STREAM_PID"
wait "$STREAM_PID" && echo "tidemark stream exited 0"
STREAM_PID=
"$TIDEMARK" status
echo
echo "Everything is in $DEMO_DIR (repository: $DEMO_DIR/repo, archiver log: $DEMO_DIR/stream.log)."
