#!/bin/sh
# End-to-end tests of push-operator on a real cluster (see harness/README.md).
# Usage: e2e/run.sh [NAME...] [--keep]
#   e2e/run.sh                    every scenario
#   e2e/run.sh pg-offline hooks   those two
cd "$(dirname "$0")/.." || exit 1
exec python3 e2e/harness/run.py "$@"
