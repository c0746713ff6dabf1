#!/usr/bin/env bash
# deploy/ checked offline (ctest label deploy):
#   1. every systemd unit passes `systemd-analyze verify` with nothing to say (a warning,
#      such as an unknown key, fails too); the units are verified as installed, with
#      ExecStart pointing at the binary under test; a unit with a misspelt key and one with
#      a missing program are seen to fail (the check can fail)
#   2. the Slurm scripts parse (`bash -n`)
#   3. deploy/k8s: the core kinds pass kubernetes-validate --strict (Kubernetes 1.30's
#      schemas, offline), the MPIJob validates against the MPI Operator's v2beta1 CRD schema
#      (tests/reference/fixtures/k8s); a misspelt field is refused by each
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

# 3. Kubernetes: the core kinds against Kubernetes' own schemas (strict: unknown fields
#    fail), the MPIJob against the MPI Operator's CRD schema; typos are seen to fail
PY=$ROOT/.venv/bin/python
KV=$ROOT/.venv/bin/kubernetes-validate
if [ -x "$KV" ] && "$PY" -c 'import jsonschema, yaml' 2> /dev/null; then
    core=$(ls "$ROOT"/deploy/k8s/*.yaml | grep -v mpijob)
    if out=$("$KV" --strict -k 1.30.0 $core 2>&1) && ! grep -qE "WARN|ERROR|FAIL" <<< "$out"; then
        echo "ok: kubernetes-validate --strict (1.30): $(grep -c passed <<< "$out") resources"
    else
        echo "FAIL: kubernetes-validate: $out"
        fail=1
    fi
    if "$PY" "$ROOT/tests/reference/validate_mpijob.py" "$ROOT"/deploy/k8s/mpijob-*.yaml; then
        echo "ok: the MPIJob validates"
    else
        echo "FAIL: the MPIJob does not validate"
        fail=1
    fi
    sed 's/  replicas: 2/  replicsa: 2/' "$ROOT/deploy/k8s/serving.yaml" > typo-serving.yaml
    sed 's/slotsPerWorker/slotsPerWorkr/' "$ROOT/deploy/k8s/mpijob-train.yaml" > typo-mpijob.yaml
    if "$KV" --strict -k 1.30.0 typo-serving.yaml > /dev/null 2>&1; then
        echo "FAIL: kubernetes-validate accepted a misspelt field"
        fail=1
    else
        echo "ok: kubernetes-validate refuses a misspelt field"
    fi
    if "$PY" "$ROOT/tests/reference/validate_mpijob.py" typo-mpijob.yaml > /dev/null; then
        echo "FAIL: the MPIJob check accepted a misspelt field"
        fail=1
    else
        echo "ok: the MPIJob check refuses a misspelt field"
    fi
else
    echo "FAIL: the Kubernetes validators are missing (scripts/install-deps.sh --clients)"
    fail=1
fi
exit $fail
