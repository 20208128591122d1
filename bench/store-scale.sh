#!/usr/bin/env bash
# Push cost against store size: a 1 GiB push into an empty store and into a store whose index
# holds BLOBS made-up blobs (default 20 million: about 10 TB at 512 KiB), with the time, peak
# RSS and bytes of index each push read.
#
#   bench/store-scale.sh [--bin PATH] [--blobs N] [--snapshots N] [--source FILE] [--scratch DIR] [--out DIR] [--repeat N]
#
# The large store is a real store (one push of a tiny directory) plus a consolidated index
# (`push-operator synthetic-index`) of BLOBS blobs in packs that do not exist, and SNAPSHOTS
# (default 1,000) snapshots of other sources: a push reads the index and lists the snapshots,
# never those packs, and the snapshot catalogue such a prune leaves. Each measured push goes
# into a fresh copy of its store.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BIN=$REPO/target/release/push-operator
BLOBS=20000000
SNAPSHOTS=1000
SOURCE=/work/benchdata/ext4.img
SCRATCH=/work/benchdata/scratch/store-scale
OUT=/work/benchdata/results
REPEAT=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN=$(realpath "$2"); shift 2 ;;
    --blobs) BLOBS=$2; shift 2 ;;
    --snapshots) SNAPSHOTS=$2; shift 2 ;;
    --source) SOURCE=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
export PUSH_OPERATOR_PASSWORD=bench LC_ALL=C
log() { printf '[store-scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[[ -x $BIN ]] || { echo "no push-operator at $BIN (cargo build --release)" >&2; exit 1; }
[[ -e $SOURCE ]] || { echo "no source at $SOURCE (bench/prepare.sh)" >&2; exit 1; }
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH/tiny" "$OUT"
echo "a first snapshot" >"$SCRATCH/tiny/readme"
JSONL=$OUT/store-scale.jsonl
: >"$JSONL"

for kind in empty large; do
  "$BIN" push "$SCRATCH/tiny" --store "$SCRATCH/template-$kind" >/dev/null
  if [[ $kind == large ]]; then
    log "writing the index of $BLOBS made-up blobs"
    /usr/bin/time -f '%e %M' -o "$SCRATCH/synth.time" "$BIN" synthetic-index --store "$SCRATCH/template-large" --blobs "$BLOBS" --snapshots "$SNAPSHOTS" >&2
    log "  took $(cut -d' ' -f1 "$SCRATCH/synth.time") s"
  fi
done
index_bytes=$(du -sb "$SCRATCH/template-large/index" | cut -f1)
log "large store: index $index_bytes bytes"

cat "$SOURCE" >/dev/null
for rep in $(seq 1 "$REPEAT"); do
  for kind in empty large; do
    rm -rf "$SCRATCH/store"; cp -a "$SCRATCH/template-$kind" "$SCRATCH/store"; sync
    /usr/bin/time -f '%e %M %U %S' -o "$SCRATCH/t" "$BIN" push "$SOURCE" --store "$SCRATCH/store" --source-name big --json >"$SCRATCH/out.json"
    read -r secs rss usr sys <"$SCRATCH/t"
    read -r ibr sor new <<<"$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["index_bytes_read"], d.get("snapshot_objects_read", -1), d["chunks_new"])' "$SCRATCH/out.json")"
    log "$kind #$rep: ${secs}s ${rss}KiB, index read $ibr bytes, $sor snapshot objects read, $new new chunks"
    python3 "$HERE/report.py" record "$JSONL" "store=$kind" "rep:num=$rep" "seconds:num=$secs" "max_rss_kib:num=$rss" \
      "cpu_seconds:num=$(echo "$usr + $sys" | bc)" "index_bytes_read:num=$ibr" "snapshot_objects_read:num=$sor" "chunks_new:num=$new" \
      "index_bytes:num=$([[ $kind == large ]] && echo "$index_bytes" || du -sb "$SCRATCH/template-empty/index" | cut -f1)" \
      "blobs:num=$([[ $kind == large ]] && echo "$BLOBS" || echo 0)" \
      "snapshots:num=$([[ $kind == large ]] && echo "$SNAPSHOTS" || echo 0)"
  done
done
rm -rf "$SCRATCH/store"
python3 - "$JSONL" "$OUT/store-scale.md" "$SOURCE" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(kind, key):
    return statistics.median(r[key] for r in recs if r["store"] == kind)
KEYS = ("seconds", "max_rss_kib", "cpu_seconds", "index_bytes_read", "snapshot_objects_read")
e, l = {k: med("empty", k) for k in KEYS}, {k: med("large", k) for k in KEYS}
blobs = max(r["blobs"] for r in recs)
snaps = max(r["snapshots"] for r in recs)
ib = max(r["index_bytes"] for r in recs)
n = len([r for r in recs if r["store"] == "empty"])
import os
L = [f"Push of {sys.argv[3]} ({os.path.getsize(sys.argv[3]) / 2**30:.2f} GiB), median of {n}, each into a fresh copy of the store.", "",
     "| store | blobs indexed | snapshots | index size | push s | CPU s | peak RSS MiB | index bytes read | snapshot objects read |",
     "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
     f"| empty | 0 | 1 | — | {e['seconds']:.2f} | {e['cpu_seconds']:.2f} | {e['max_rss_kib']/1024:.0f} | {e['index_bytes_read']:,.0f} | {e['snapshot_objects_read']:.0f} |",
     f"| large | {blobs:,} | {snaps + 1:,} | {ib/2**20:,.0f} MiB | {l['seconds']:.2f} | {l['cpu_seconds']:.2f} | {l['max_rss_kib']/1024:.0f} | {l['index_bytes_read']:,.0f} | {l['snapshot_objects_read']:.0f} |",
     "", f"Large / empty: time {l['seconds']/e['seconds']:.2f}× (target ≤ 1.5×), peak RSS {l['max_rss_kib']/1024:.0f} MiB (target < 256 MiB).", ""]
open(sys.argv[2], "w").write("\n".join(L))
print("\n".join(L))
PY
