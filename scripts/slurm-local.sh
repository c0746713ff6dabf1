#!/usr/bin/env bash
# A one-node Slurm cluster from Debian's packages (slurmctld, slurmd, munge), for trying and
# testing deploy/slurm/ on one machine (docs/deploy.md, "Slurm"). Needs root. No cgroups
# (proctrack/linuxproc, task/none), no accounting, its own ports, every file under DIR.
#
#   scripts/slurm-local.sh up DIR [CPUS]   start it (munged if none runs, slurmctld, slurmd);
#                                          prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-local.sh down DIR        stop the daemons it started
#
# On failure it says which daemon did not come up and prints the end of its log.
set -euo pipefail
cmd=${1:-}
D=${2:-}
[ -n "$cmd" ] && [ -n "$D" ] || {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
mkdir -p "$D"
D=$(cd "$D" && pwd)
export SLURM_CONF=$D/slurm.conf

fail() { # daemon log: what did not come up, and why
    echo "slurm-local: $1 did not start" >&2
    [ -f "$2" ] && tail -n 8 "$2" | sed 's/^/  /' >&2
    exit 1
}

up() {
    local cpus=${1:-$(nproc)} host
    host=$(hostname -s)
    for b in slurmctld slurmd munged srun sbatch; do
        command -v "$b" > /dev/null || {
            echo "slurm-local: $b is not installed (apt-get install slurmctld slurmd slurm-client munge)" >&2
            exit 1
        }
    done
    mkdir -p "$D/ctld" "$D/d"
    # ports from DIR's name, so that two clusters on one machine do not meet
    local base=$((27000 + $(cksum <<< "$D" | cut -d' ' -f1) % 2000 * 2))
    cat > "$SLURM_CONF" << EOF
ClusterName=tandem
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/d
SlurmctldPidFile=$D/ctld.pid
SlurmdPidFile=$D/d.pid
SlurmctldPort=$base
SlurmdPort=$((base + 1))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldLogFile=$D/ctld.log
SlurmdLogFile=$D/d.log
NodeName=$host CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    if ! munge -n > /dev/null 2>&1; then
        mkdir -p /run/munge
        [ -f /etc/munge/munge.key ] || fail "munged (no /etc/munge/munge.key: run mungekey)" /dev/null
        munged --force 2> "$D/munged.err" || fail munged "$D/munged.err"
        for _ in $(seq 50); do munge -n > /dev/null 2>&1 && break; sleep 0.1; done
        munge -n > /dev/null 2>&1 || fail munged "$D/munged.err"
    fi
    slurmctld -f "$SLURM_CONF" 2> "$D/ctld.err" || fail slurmctld "$D/ctld.log"
    for _ in $(seq 50); do scontrol ping > /dev/null 2>&1 && break; sleep 0.1; done
    scontrol ping 2>&1 | grep -q UP || fail slurmctld "$D/ctld.log"
    slurmd -f "$SLURM_CONF" 2> "$D/d.err" || fail slurmd "$D/d.log"
    for _ in $(seq 100); do
        sinfo -h -o %T 2> /dev/null | grep -q idle && break
        sleep 0.1
    done
    sinfo -h -o %T 2> /dev/null | grep -q idle || fail "slurmd (the node is not idle)" "$D/d.log"
    echo "export SLURM_CONF=$SLURM_CONF"
}

down() {
    [ -f "$SLURM_CONF" ] || exit 0
    scontrol shutdown > /dev/null 2>&1 || true
    for f in "$D/d.pid" "$D/ctld.pid"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2> /dev/null || true
    done
    sleep 0.5
}

case $cmd in
up) up "${3:-}" ;;
down) down ;;
*)
    echo "slurm-local: unknown command $cmd (up, down)" >&2
    exit 2
    ;;
esac
