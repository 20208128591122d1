#!/usr/bin/env bash
# What encryption costs: push-operator with an encrypted store (the default) and with an
# unencrypted one (--encryption none), on the same data, in the same run, alternating. The
# encrypted runs open the store with a raw key, so the table shows what sealing, keyed ids and
# the keyed chunker cost per byte; what a passphrase adds once per command (Argon2id) is
# measured on its own and printed below the table.
#
#   bench/encryption.sh [--data DIR] [--datasets "linux pgdata ext4"] [--repeat N] [--bin PATH]
#
# Per dataset and repetition, for each mode (the order alternates between repetitions): an
# initial push into a fresh local store, then a restore of it into an empty target. Every timed
# command runs under /usr/bin/time after `sync` with a warm page cache (as bench/run.sh). Prints
# a Markdown table: median wall and CPU seconds per mode, and the cost of encryption
# (encrypted / plain - 1) on the medians. Datasets come from bench/prepare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=/work/benchdata
DATASETS="linux pgdata ext4"
REPEAT=3
BIN=target/release/push-operator
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --datasets) DATASETS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release, or --bin)" >&2; exit 1; }
declare -A DS_PATH=([linux]=$DATA/linux [pgdata]=$DATA/pgdata [ext4]=$DATA/ext4.img)
WORK=$(mktemp -d /var/tmp/push-operator-enc.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
RESULTS=$WORK/results.tsv
export PUSH_OPERATOR_KEY=5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed

warm() { if [[ -d $1 ]]; then find "$1" -type f -print0 | xargs -0 -r cat >/dev/null; else cat "$1" >/dev/null; fi; }

# timed DATASET MODE OP CMD...: appends "dataset mode op wall cpu" to RESULTS.
timed() {
  local ds=$1 mode=$2 op=$3; shift 3
  sync
  /usr/bin/time -f '%e %U %S' -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" ||
    { echo "$ds $mode $op failed: $(tail -n3 "$WORK/err")" >&2; exit 1; }
  read -r wall usr sys <"$WORK/time"
  printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$mode" "$op" "$wall" "$(echo "$usr + $sys" | bc)" >>"$RESULTS"
  echo "$ds $mode $op: ${wall}s" >&2
}

run_mode() {  # DATASET SOURCE MODE
  local ds=$1 src=$2 mode=$3 store=$WORK/store target=$WORK/target
  rm -rf "$store" "$target"
  local -a env=(env) init=()
  if [[ $mode == plain ]]; then env=(env -u PUSH_OPERATOR_KEY); init=(--encryption none); fi
  warm "$src"
  timed "$ds" "$mode" push "${env[@]}" "$BIN" push "$src" --store "$store" "${init[@]}" --json
  [[ -d $src ]] && mkdir -p "$target"
  cat "$store"/packs/*/* >/dev/null
  timed "$ds" "$mode" restore "${env[@]}" "$BIN" restore latest --store "$store" --target "$target"
  if [[ -d $src ]]; then diff -rq --no-dereference "$src" "$target" >/dev/null; else cmp -s "$src" "$target"; fi ||
    { echo "$ds $mode: the restored copy differs" >&2; exit 1; }
}

for ds in $DATASETS; do
  src=${DS_PATH[$ds]:?unknown dataset $ds}
  [[ -e $src ]] || { echo "dataset $ds missing at $src (run bench/prepare.sh)" >&2; exit 1; }
  for rep in $(seq 1 "$REPEAT"); do
    if (( rep % 2 )); then order="encrypted plain"; else order="plain encrypted"; fi
    for mode in $order; do run_mode "$ds" "$src" "$mode"; done
  done
done

# The passphrase's fixed cost: open a store with a passphrase slot, and with a raw-key slot.
unlock=$WORK/unlock
"$BIN" init --store "$unlock" >/dev/null
PUSH_OPERATOR_NEW_PASSWORD="benchmark passphrase" "$BIN" key add --store "$unlock" >/dev/null
for i in 1 2 3 4 5; do
  /usr/bin/time -f '%e' -a -o "$WORK/unlock.key" "$BIN" snapshots --store "$unlock" >/dev/null
  /usr/bin/time -f '%e' -a -o "$WORK/unlock.pass" env -u PUSH_OPERATOR_KEY PUSH_OPERATOR_PASSWORD="benchmark passphrase" \
    "$BIN" snapshots --store "$unlock" >/dev/null
done

python3 - "$RESULTS" "$($BIN --version)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    ds, mode, op, wall, cpu = line.split("\t")
    rows[(ds, op, mode)].append((float(wall), float(cpu)))
print(f"{sys.argv[2]}, {sys.argv[3]} cores ({sys.argv[4]}), medians of {len(next(iter(rows.values())))} runs\n")
print("| dataset | step | plain wall s | encrypted wall s | wall cost | plain CPU s | encrypted CPU s | CPU cost |")
print("|---|---|---|---|---|---|---|---|")
for ds in dict.fromkeys(k[0] for k in rows):
    for op in ("push", "restore"):
        p, e = rows[(ds, op, "plain")], rows[(ds, op, "encrypted")]
        pw, ew = statistics.median(w for w, _ in p), statistics.median(w for w, _ in e)
        pc, ec = statistics.median(c for _, c in p), statistics.median(c for _, c in e)
        print(f"| {ds} | {op} | {pw:.2f} | {ew:.2f} | {100 * (ew / pw - 1):+.1f}% | {pc:.2f} | {ec:.2f} | {100 * (ec / pc - 1):+.1f}% |")
PY
python3 - "$WORK/unlock.key" "$WORK/unlock.pass" <<'PY'
import statistics, sys
key, pw = (statistics.median(float(l) for l in open(f) if l.strip()) for f in sys.argv[1:])
print(f"\nOpening the store (`snapshots` of an empty store, median of 5): raw key {key:.3f} s, passphrase {pw:.3f} s: Argon2id adds {pw - key:.3f} s once per command.")
PY
