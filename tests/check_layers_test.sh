#!/usr/bin/env bash
# Self-test of scripts/check-layers.sh: a small source tree in a temporary folder (a git
# repository when git is installed, a plain folder otherwise: the script lists files either
# way), checked once with an include the layers forbid (the check must fail and name that
# line) and once without it (the check must pass). Prints one PASS or FAIL line per check;
# exits 1 if any check failed.
set -euo pipefail
script="$(cd "$(dirname "$0")/.." && pwd)/scripts/check-layers.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
pass() { echo "PASS: $1"; }
fail() {
    echo "FAIL: $1"
    [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/    /'
    failed=1
}

if command -v git > /dev/null; then git -C "$tmp" init -q; fi
mkdir -p "$tmp/common" "$tmp/worker/model" "$tmp/worker/comm" "$tmp/coordinator"
printf '#pragma once\n' > "$tmp/common/a.h"
printf '#pragma once\n#include "common/a.h"\n' > "$tmp/worker/comm/comm.h"
printf '#include "common/a.h"\n#include <stdio.h>\n#include "worker/comm/comm.h"\n' \
    > "$tmp/worker/model/m.c"
# A bare "tandem.pb-c.h" is proto, which the coordinator may include.
printf '#include "tandem.pb-c.h"\n#include "common/a.h"\n' > "$tmp/coordinator/c.c"

rc=0
out=$("$script" --root "$tmp" 2>&1) || rc=$?
want='worker/model/m.c:3: worker/model may not include worker/comm/comm.h'
if [ "$rc" -eq 1 ] && grep -qF "$want" <<< "$out"; then
    pass "forbidden include fails and names worker/model/m.c:3"
else
    fail "forbidden include: expected exit 1 naming '$want', got exit $rc" "$out"
fi
if [ "$(grep -c 'may not include' <<< "$out")" -eq 1 ]; then
    pass "only the forbidden include is reported"
else
    fail "expected exactly one violation" "$out"
fi

sed -i '/worker\/comm\/comm.h/d' "$tmp/worker/model/m.c"
rc=0
out=$("$script" --root "$tmp" 2>&1) || rc=$?
if [ "$rc" -eq 0 ] && grep -qF 'all allowed' <<< "$out"; then
    pass "without the forbidden include it passes ($out)"
else
    fail "without the forbidden include: expected exit 0, got exit $rc" "$out"
fi

if [ "$failed" -eq 0 ]; then echo "check_layers_test: all passed"; fi
exit "$failed"
