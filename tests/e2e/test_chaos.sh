#!/usr/bin/env bash
# The chaos test (ctest label slow; not part of `make test`): tests/e2e/chaos.py for
# CHAOS_MINUTES (default 2) against a tiny model — router, gateway, a replica and a
# tensor-parallel replica, killed, stopped and restarted at random under mixed load; every
# request must be answered or end with a clear error, none may hang.
# Run it: cd build && ctest -L slow --output-on-failure   (CHAOS_MINUTES=10 for longer)
# Usage: test_chaos.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/tiny_model.sh"
export OMP_NUM_THREADS=1
tiny_model "$TANDEM" 128
python3 "$HERE/chaos.py" "$TANDEM" "$TINY_CK" --minutes "${CHAOS_MINUTES:-2}"
