#!/usr/bin/env bash
# The main job on an embedded default: a local PostgreSQL cluster streams its WAL into a
# file:// repository under load, takes a base backup, writes rows over time, and is
# restored to a chosen instant T; the restored cluster shows exactly the rows up to T.
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

say "tidemark backup"
"$TIDEMARK" backup

say "rows written over time; we will come back to the instant marked T"
"${PSQL[@]}" -c "CREATE TABLE orders(id int, note text, at timestamptz DEFAULT clock_timestamp())"
for i in 1 2 3; do
  "${PSQL[@]}" -c "INSERT INTO orders(id, note) VALUES ($i, 'before T')"
  sleep 1
done
TARGET=$("${PSQL[@]}" -c 'SELECT clock_timestamp()')
echo "T = $TARGET"
sleep 1
for i in 4 5; do
  "${PSQL[@]}" -c "INSERT INTO orders(id, note) VALUES ($i, 'after T')"
  sleep 1
done
"${PSQL[@]}" -c 'SELECT pg_switch_wal()' >/dev/null
sleep 3
"${PSQL[@]}" -c 'SELECT id, note, at FROM orders ORDER BY id'

say "tidemark status"
"$TIDEMARK" status
"$TIDEMARK" list backups

say "stopping the archiver with SIGTERM (it finishes in-flight uploads)"
kill -TERM "$STREAM_PID"
wait "$STREAM_PID" && echo "tidemark stream exited 0"
STREAM_PID=

say "tidemark restore --target-time '$TARGET'"
RESTORED=$DEMO_DIR/restored
"$TIDEMARK" restore --pgdata "$RESTORED" --target-time "$TARGET"
[[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$RESTORED" "$DEMO_DIR/repo"
PORT2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_postgres "$BIN/postgres" -D "$RESTORED" -p "$PORT2" -k "$SOCK" -c listen_addresses=127.0.0.1 \
  >"$DEMO_DIR/restored.log" 2>&1 &
RESTORED_PID=$!
for _ in $(seq 600); do
  [[ $("$BIN/psql" -XAtq -h 127.0.0.1 -p "$PORT2" -U postgres -c 'SELECT pg_is_in_recovery()' postgres 2>/dev/null) == f ]] && break
  sleep 0.1
done
say "the restored cluster: the rows committed at or before T, and none after"
"$BIN/psql" -Xq -h 127.0.0.1 -p "$PORT2" -U postgres -c 'SELECT id, note, at FROM orders ORDER BY id' postgres
kill -INT "$RESTORED_PID"; wait "$RESTORED_PID" 2>/dev/null || true
echo
echo "Everything is in $DEMO_DIR (repository: $DEMO_DIR/repo, archiver log: $DEMO_DIR/stream.log)."
