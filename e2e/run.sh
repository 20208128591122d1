#!/bin/sh
# End-to-end tests of push-operator on a real control plane (see harness/README.md).
# Usage: e2e/run.sh [--only NAME[,NAME...]] [--keep]
cd "$(dirname "$0")/.." || exit 1
exec python3 e2e/harness/run.py "$@"
