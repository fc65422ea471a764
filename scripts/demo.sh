#!/usr/bin/env bash
# The main job on an embedded default: a local PostgreSQL cluster streams its WAL into a
# file:// repository under load, takes a base backup, writes rows over time, and is
# restored to a chosen instant T; the restored cluster shows exactly the rows up to T.
#   ./scripts/demo.sh            (fresh machine: installs what is missing, builds, runs)
# Environment: DEMO_DIR (default /tmp/tidemark-demo), DEMO_SECONDS of pgbench load (10).
# It exits 0 only when the restored cluster holds exactly the rows up to T, and stops
# every server it started (.ci/run runs it with DEMO_SECONDS=2 under a timeout).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-/tmp/tidemark-demo}
DEMO_SECONDS=${DEMO_SECONDS:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/tidemark-target}

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi

if [[ $(id -u) -eq 0 ]]; then ./scripts/setup.sh; fi
say "building tidemark"
cargo build --quiet --bin tidemark
TIDEMARK=$CARGO_TARGET_DIR/debug/tidemark
BIN=/usr/lib/postgresql/15/bin

# Replace this (sub)shell by CMD, run as postgres when we are root: a server started with
# `( exec_as_postgres postgres … ) &` has $! = the server's own PID, so signals and
# `wait` reach it (a wrapper shell in between would swallow them).
exec_as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else exec "$@"; fi
}
as_postgres() { (exec_as_postgres "$@"); }
# Stop the server of data directory $1 (fast shutdown, waits), then reap its PID $2.
stop_server() {
  as_postgres "$BIN/pg_ctl" stop -D "$1" -m fast -w -t 60 >/dev/null 2>&1 || kill -KILL "$2" 2>/dev/null
  wait "$2" 2>/dev/null || true
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
(exec_as_postgres "$BIN/postgres" -D "$PGDATA" -p "$PORT" -k "$SOCK" -c listen_addresses=127.0.0.1 \
  -c wal_level=replica -c max_wal_senders=4 >"$DEMO_DIR/postgres.log" 2>&1) &
PG_PID=$!
STREAM_PID=
RESTORED_PID=
cleanup() {
  if [[ -n $STREAM_PID ]]; then kill -TERM "$STREAM_PID" 2>/dev/null; wait "$STREAM_PID" 2>/dev/null; fi
  [[ -n $RESTORED_PID ]] && stop_server "$RESTORED" "$RESTORED_PID"
  stop_server "$PGDATA" "$PG_PID"
  return 0
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # a timeout or ^C still stops every server started
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
# The restored server runs restore_command as postgres: it must read the repository.
[[ $(id -u) -eq 0 ]] && chmod -R a+rX "$DEMO_DIR/repo"
"$TIDEMARK" restore --pgdata "$RESTORED" --target-time "$TARGET"
[[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$RESTORED"
PORT2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(exec_as_postgres "$BIN/postgres" -D "$RESTORED" -p "$PORT2" -k "$SOCK" -c listen_addresses=127.0.0.1 \
  >"$DEMO_DIR/restored.log" 2>&1) &
RESTORED_PID=$!
for _ in $(seq 600); do
  [[ $("$BIN/psql" -XAtq -h 127.0.0.1 -p "$PORT2" -U postgres -c 'SELECT pg_is_in_recovery()' postgres 2>/dev/null) == f ]] && break
  sleep 0.1
done
say "the restored cluster: the rows committed at or before T, and none after"
"$BIN/psql" -Xq -h 127.0.0.1 -p "$PORT2" -U postgres -c 'SELECT id, note, at FROM orders ORDER BY id' postgres
GOT=$("$BIN/psql" -XAtq -h 127.0.0.1 -p "$PORT2" -U postgres -c "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders" postgres)
if [[ $GOT != "1,2,3" ]]; then
  echo "demo failed: the restored cluster holds orders $GOT, expected 1,2,3 (see $DEMO_DIR/restored.log)" >&2
  exit 1
fi
stop_server "$RESTORED" "$RESTORED_PID"
RESTORED_PID=
echo
echo "Everything is in $DEMO_DIR (repository: $DEMO_DIR/repo, archiver log: $DEMO_DIR/stream.log)."
