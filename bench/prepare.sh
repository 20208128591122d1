#!/usr/bin/env bash
# Prepare the benchmark datasets for bench/run.sh (idempotent).
#
#   bench/prepare.sh [--data DIR] [--skip-install] [--force]
#
# Steps:
#   1. apt-get install linux-source-6.1 postgresql postgresql-contrib e2fsprogs time
#      (only when something is missing; apt-get update is run once in that case)
#   2. DIR/linux     extracted /usr/src/linux-source-6.1.tar.xz (~1.3 GB, ~78k files)
#      DIR/pgdata    PostgreSQL 15 data directory after `pgbench -i -s 50`, server stopped
#      DIR/ext4.img  1 GiB ext4 image filled (mkfs.ext4 -d) with ~600 MB of linux/drivers
#      DIR/small     300,000 small files (~520 MB) cut from linux/Documentation (smallfiles.py)
#   ("growing", the fifth dataset of run.sh, is pgdata changed between ten pushes.)
#   3. the peers: bench/peers.sh (restic, Kopia, rustic built from their sources)
#
# Each dataset is built in a temporary name and renamed at the end, so an
# existing final name means "done" and is skipped (use --force to rebuild).
set -euo pipefail

DATA=/work/benchdata
INSTALL=1
FORCE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --skip-install) INSTALL=0; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { printf '[prepare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { echo "prepare.sh must run as root (apt-get, su postgres)" >&2; exit 1; }

# ---------------------------------------------------------------- step 1
PKGS=(linux-source-6.1 postgresql postgresql-contrib e2fsprogs time)
if [[ $INSTALL -eq 1 ]]; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    log "packages already installed"
  fi
fi

PGBIN=/usr/lib/postgresql/15/bin
LINUX_TAR=/usr/src/linux-source-6.1.tar.xz
for f in "$LINUX_TAR" "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/pgbench" /sbin/mkfs.ext4 /usr/bin/time; do
  [[ -e $f ]] || { echo "missing $f (run without --skip-install)" >&2; exit 1; }
done

mkdir -p "$DATA"
chmod 755 "$DATA"

# ---------------------------------------------------------------- linux
if [[ $FORCE -eq 1 ]]; then rm -rf "$DATA/linux" "$DATA/pgdata" "$DATA/ext4.img"; fi

if [[ ! -d $DATA/linux ]]; then
  log "extracting $LINUX_TAR"
  rm -rf "$DATA/linux.tmp"
  mkdir -p "$DATA/linux.tmp"
  # The tarball holds one top-level directory (linux-source-6.1/): strip it.
  tar -xJf "$LINUX_TAR" -C "$DATA/linux.tmp" --strip-components=1 --no-same-owner
  mv "$DATA/linux.tmp" "$DATA/linux"
else
  log "linux: present"
fi

# ---------------------------------------------------------------- pgdata
if [[ ! -d $DATA/pgdata ]]; then
  log "building pgdata (initdb + pgbench -i -s 50)"
  PGTMP=$DATA/pgdata.tmp
  SOCK=$(mktemp -d /tmp/bench-pgsock.XXXXXX)
  PORT=54329
  rm -rf "$PGTMP"
  install -d -o postgres -g postgres -m 700 "$PGTMP"
  chown postgres:postgres "$SOCK"
  su postgres -s /bin/bash -c "$PGBIN/initdb -D '$PGTMP' -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null"
  su postgres -s /bin/bash -c "$PGBIN/pg_ctl -D '$PGTMP' -w -l '$SOCK/server.log' \
      -o \"-p $PORT -k $SOCK -c listen_addresses='' \" start >/dev/null"
  stop_pg() { su postgres -s /bin/bash -c "$PGBIN/pg_ctl -D '$PGTMP' -m fast -w stop" >/dev/null 2>&1 || true; }
  trap stop_pg EXIT
  su postgres -s /bin/bash -c "$PGBIN/pgbench -i -s 50 -q -h '$SOCK' -p $PORT postgres"
  # A CHECKPOINT before the fast stop keeps the shutdown short; the fast stop
  # itself writes a shutdown checkpoint, so the directory is consistent at rest.
  su postgres -s /bin/bash -c "$PGBIN/psql -h '$SOCK' -p $PORT -d postgres -qc CHECKPOINT"
  su postgres -s /bin/bash -c "$PGBIN/pg_ctl -D '$PGTMP' -m fast -w stop >/dev/null"
  trap - EXIT
  state=$("$PGBIN/pg_controldata" "$PGTMP" | sed -n 's/^Database cluster state: *//p')
  [[ $state == "shut down" ]] || { echo "pgdata not cleanly shut down: $state" >&2; exit 1; }
  rm -f "$PGTMP/postmaster.pid"
  rm -rf "$SOCK"
  mv "$PGTMP" "$DATA/pgdata"
else
  log "pgdata: present"
fi

# ---------------------------------------------------------------- ext4.img
if [[ ! -f $DATA/ext4.img ]]; then
  log "building ext4.img (1 GiB, ~600 MB of linux/drivers)"
  SRC=$DATA/ext4-src.tmp
  rm -rf "$SRC" "$DATA/ext4.img.tmp"
  mkdir -p "$SRC"
  # Copy linux/drivers/<subdir> in sorted order until ~600 MB (apparent size).
  LIMIT=$((600 * 1000 * 1000))
  total=0
  while IFS= read -r d; do
    sz=$(du -sb "$d" | cut -f1)
    if (( total + sz > LIMIT )); then continue; fi
    mkdir -p "$SRC/drivers"
    cp -a "$d" "$SRC/drivers/"
    total=$((total + sz))
  done < <(find "$DATA/linux/drivers" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort)
  log "ext4 source: $total bytes in $(find "$SRC" -type f | wc -l) files"
  truncate -s 1G "$DATA/ext4.img.tmp"
  # Fixed UUID / hash seed so a rebuild is as reproducible as mkfs allows.
  mkfs.ext4 -q -F -U 6d0b4c6e-6c59-4f36-9f8e-000000000001 \
      -E hash_seed=6d0b4c6e-6c59-4f36-9f8e-000000000002 -d "$SRC" "$DATA/ext4.img.tmp"
  e2fsck -fn "$DATA/ext4.img.tmp" >/dev/null
  rm -rf "$SRC"
  mv "$DATA/ext4.img.tmp" "$DATA/ext4.img"
else
  log "ext4.img: present"
fi

# ---------------------------------------------------------------- small
if [[ ! -d $DATA/small ]]; then
  log "building small (300,000 files from linux/Documentation)"
  rm -rf "$DATA/small.tmp"
  python3 "$(dirname "$0")/smallfiles.py" "$DATA/linux/Documentation" "$DATA/small.tmp" --files 300000 --seed 42 >&2
  mv "$DATA/small.tmp" "$DATA/small"
else
  log "small: present"
fi

if [[ $INSTALL -eq 1 ]]; then
  "$(dirname "$0")/peers.sh"
fi

log "datasets in $DATA:"
for d in linux pgdata small; do
  printf '  %-9s %12s bytes %7s files\n' "$d" "$(du -sb "$DATA/$d" | cut -f1)" "$(find "$DATA/$d" -type f | wc -l)" >&2
done
printf '  %-9s %12s bytes (apparent), %s bytes allocated\n' ext4.img \
  "$(stat -c %s "$DATA/ext4.img")" "$(du -sB1 "$DATA/ext4.img" | cut -f1)" >&2
