#!/usr/bin/env bash
# Build the peers bench/run.sh compares against, from their sources (idempotent):
#   restic 0.19.1 and Kopia 0.22.3 from their Go modules (pinned with their go.sum in
#   bench/peers/restic and bench/peers/kopia), rustic 0.11.4 from crates.io (--locked).
# Into $PUSH_BENCH_PEERS (default ~/.cache/push-operator-bench/bin), outside the clone, so a
# second run is instant. About 3 minutes for the Go tools and 25 for rustic on 2 cores.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${PUSH_BENCH_PEERS:-$HOME/.cache/push-operator-bench/bin}
mkdir -p "$BIN"
log() { printf '[peers %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

build_go() {  # NAME PACKAGE VERSION
  if [[ -x $BIN/$1 ]] && "$BIN/$1" version 2>/dev/null | grep -q "${3#v}" ||
     { [[ -x $BIN/$1 ]] && "$BIN/$1" --version 2>/dev/null | grep -q "$3"; }; then
    log "$1 $3: present"; return
  fi
  log "building $1 $3"
  (cd "$HERE/peers/$1" && go build -trimpath -o "$BIN/$1.tmp" "$2" && mv "$BIN/$1.tmp" "$BIN/$1")
}
build_go restic github.com/restic/restic/cmd/restic v0.19.1
build_go kopia github.com/kopia/kopia v0.22.3

if [[ -x $BIN/rustic ]] && "$BIN/rustic" --version | grep -q 0.11.4; then
  log "rustic 0.11.4: present"
else
  log "building rustic 0.11.4 (cargo install --locked)"
  cargo install rustic-rs --version 0.11.4 --locked --root "$(dirname "$BIN")"
fi
log "peers in $BIN: $(ls "$BIN" | tr '\n' ' ')"
