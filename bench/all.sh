#!/usr/bin/env bash
# Every benchmark of issue #15 in one command; docs/BENCHMARKS.md is written from its output.
#
#   bench/all.sh [--heavy] [--out DIR] [--datasets "..."] [--repeat N]
#
# Always: the peers (bench/peers.sh), a release build, and bench/run.sh on local directory
# stores (five tools, five datasets). With --heavy also:
#   - bench/run.sh --backend s3: the same comparison, every tool writing to one SeaweedFS;
#   - bench/store-scale.sh: a 1 GiB push into an empty store and into one of 20 million blobs;
#   - bench/controller-scale.py: the operator with 1,000 Repositories and 10,000 PushJobs on
#     the real API server (needs the cluster binaries .ci/run builds).
# Results: OUT/local, OUT/s3, OUT/store-scale.md, OUT/controller-scale.md (default OUT:
# /work/benchdata/results). Datasets come from bench/prepare.sh (run it once, as root).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=/work/benchdata/results
HEAVY=0
DATASETS="linux pgdata ext4 small growing"
REPEAT=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --heavy) HEAVY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --datasets) DATASETS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
log() { printf '[all %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

"$HERE/peers.sh"
(cd "$REPO" && cargo build --release)
log "local directory stores"
"$HERE/run.sh" --datasets "$DATASETS" --out "$OUT/local" --repeat "$REPEAT" --quiet-wait 60
if [[ $HEAVY -eq 1 ]]; then
  log "S3 (SeaweedFS)"
  "$HERE/run.sh" --backend s3 --datasets "$DATASETS" --out "$OUT/s3" --repeat "$REPEAT" --quiet-wait 60
  log "push cost against store size"
  "$HERE/store-scale.sh" --out "$OUT"
  log "the controller at scale"
  python3 "$HERE/controller-scale.py" --binary "$REPO/target/release/push-operator" --json "$OUT/controller-scale.json" | tee "$OUT/controller-scale.txt"
fi
log "done: $OUT"
