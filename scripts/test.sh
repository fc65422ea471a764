#!/usr/bin/env bash
# The test command (README, CI): prepares the machine (scripts/setup.sh),
# makes sure one SeaweedFS S3 server is listening on 127.0.0.1:8333 (reusing a
# running one, else starting one that is stopped on exit), then runs
#   cargo fmt --check, cargo clippy -D warnings, cargo test --workspace "$@".
# Environment it sets for the tests:
#   TIDEMARK_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#   AWS_REGION, TIDEMARK_PG_MAJORS (unless set), CARGO_TARGET_DIR (unless set;
#   outside /root so the postgres user can run the built binaries).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

S3_PORT=8333
WEED=/opt/tidemark/bin/weed

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

./scripts/setup.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/tidemark-target}
if [[ -z ${TIDEMARK_PG_MAJORS:-} ]]; then
  majors=()
  for bindir in /usr/lib/postgresql/*/bin /opt/tidemark/pg/*/bin; do
    [[ -x $bindir/postgres ]] && majors+=("$(basename "$(dirname "$bindir")")")
  done
  TIDEMARK_PG_MAJORS=$(printf '%s\n' "${majors[@]}" | sort -un | paste -sd, -)
fi
export TIDEMARK_PG_MAJORS

export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-tidemark-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-tidemark-test-secret}
export AWS_REGION=${AWS_REGION:-us-east-1}
export TIDEMARK_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; }

# 200 once SeaweedFS answers a signed ListBuckets (also proves the keys match).
s3_answers() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
    --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    "$TIDEMARK_TEST_S3_ENDPOINT/") == 200 ]]
}

weed_pid=
weed_dir=
stop_weed() {
  if [[ -n $weed_pid ]]; then
    kill "$weed_pid" 2>/dev/null || true
    wait "$weed_pid" 2>/dev/null || true
  fi
  [[ -n $weed_dir ]] && rm -rf "$weed_dir"
  return 0
}

# Every test bucket is a SeaweedFS collection with volumes of its own: many small
# volumes (not the disk-derived default of a few dozen 1 GB ones) keep the suite from
# running out of writable volumes.
if listening; then
  log "reusing the S3 server already listening on port $S3_PORT"
  s3_answers || die "the server on port $S3_PORT does not accept AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; export the keys it was started with"
else
  weed_dir=$(mktemp -d /tmp/tidemark-seaweedfs-XXXXXX)
  trap stop_weed EXIT
  log "starting SeaweedFS on port $S3_PORT (data and log in $weed_dir)"
  "$WEED" mini -dir="$weed_dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3_PORT" \
    -webdav=false -admin.ui=false -volume.max=1000 -master.volumeSizeLimitMB=64 \
    >"$weed_dir/weed.log" 2>&1 &
  weed_pid=$!
  for _ in $(seq 600); do
    s3_answers && break
    kill -0 "$weed_pid" 2>/dev/null || die "SeaweedFS exited: $(tail -n 20 "$weed_dir/weed.log")"
    sleep 0.1
  done
  s3_answers || die "SeaweedFS did not answer within 60 s: $(tail -n 20 "$weed_dir/weed.log")"
fi

log "PostgreSQL majors: $TIDEMARK_PG_MAJORS; target dir: $CARGO_TARGET_DIR"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
