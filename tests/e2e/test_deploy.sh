#!/usr/bin/env bash
# deploy/ checked offline (ctest label deploy):
#   1. every systemd unit passes `systemd-analyze verify` with nothing to say (a warning,
#      such as an unknown key, fails too); the units are verified as installed, with
#      ExecStart pointing at the binary under test; a unit with a misspelt key and one with
#      a missing program are seen to fail (the check can fail)
#   2. the Slurm scripts parse (`bash -n`)
# Usage: test_deploy.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
fail=0
verify() { # unit files...: 0 when systemd-analyze verify exits 0 and prints nothing
    local out
    out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$@" 2>&1) && [ -z "$out" ] ||
        { echo "$out"; return 1; }
}
if command -v systemd-analyze > /dev/null; then
    for u in "$ROOT"/deploy/systemd/*.service; do
        sed "s#/usr/local/bin/tandem#$TANDEM#" "$u" > "$(basename "$u")"
    done
    cp tandem-replica@.service tandem-replica@demo.service # a template verifies as an instance
    for u in tandem-coordinator.service tandem-gateway.service tandem-replica@demo.service; do
        if verify "./$u"; then echo "ok: systemd-analyze verify $u"; else
            echo "FAIL: $u"
            fail=1
        fi
    done
    printf '[Service]\nExecStart=/bin/true\nProtectSystm=strict\n' > typo.service
    printf '[Service]\nExecStart=/nonexistent/tandem\n' > missing.service
    for u in typo.service missing.service; do
        if verify "./$u" > /dev/null; then
            echo "FAIL: verify accepted $u"
            fail=1
        else
            echo "ok: verify refuses $u"
        fi
    done
else
    echo "systemd-analyze is not installed: the units are not checked"
    fail=1
fi
for s in "$ROOT"/deploy/slurm/*.sbatch; do
    if bash -n "$s"; then echo "ok: bash -n $(basename "$s")"; else
        echo "FAIL: bash -n $s"
        fail=1
    fi
done
exit $fail
