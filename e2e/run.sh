#!/bin/sh
# End-to-end tests of push-operator against the real apiextensions-apiserver (see harness/run.py).
# Usage: e2e/run.sh [--only NAME[,NAME...]] [--keep]
cd "$(dirname "$0")/.." || exit 1
exec python3 e2e/harness/run.py "$@"
