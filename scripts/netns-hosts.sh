#!/usr/bin/env bash
# Simulated hosts on one machine, for testing what only shows up across hosts (docs/deploy.md,
# "Several hosts on one machine"): N Linux network namespaces, each its own host with an
# address on a private network 10.77.0.0/24 and its own hostname (tdhost1 .. tdhostN),
# joined by a bridge that lives in a namespace of its own (tandem-net), so that no traffic
# reaches the machine's own network. Needs root.
#
#   scripts/netns-hosts.sh up [N]        make N hosts (default 3); idempotent
#   scripts/netns-hosts.sh down          remove them
#   scripts/netns-hosts.sh run HOST CMD  run CMD on HOST (its network, its hostname)
#   scripts/netns-hosts.sh rsh HOST CMD  the same, CMD given as words for a shell (what
#                                        Open MPI's rsh launcher passes: use
#                                        --mca plm_rsh_agent "$PWD/scripts/netns-hosts.sh rsh")
#   scripts/netns-hosts.sh cut HOST      take HOST's link down (a host cut off)
#   scripts/netns-hosts.sh mend HOST     bring it back
#   scripts/netns-hosts.sh check         exit 0 when namespaces can be made here
#
# An Open MPI job across them (run mpirun on one of the hosts, with TCP only: ranks on
# different hosts must not share memory):
#   scripts/netns-hosts.sh run tdhost1 mpirun --hostfile H -np 3 \
#       --mca plm_rsh_agent "$PWD/scripts/netns-hosts.sh rsh" --mca btl self,tcp \
#       --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 CMD
set -euo pipefail
NET=10.77.0
ns() { echo "tandem-$1"; }

up() {
    local n=${1:-3}
    ip netns list | grep -qw tandem-net || ip netns add tandem-net
    ip -n tandem-net link show tdbr0 > /dev/null 2>&1 || {
        ip -n tandem-net link add tdbr0 type bridge
        ip -n tandem-net link set tdbr0 up
        ip -n tandem-net link set lo up
    }
    for i in $(seq 1 "$n"); do
        local h="tdhost$i"
        ip netns list | grep -qw "$(ns "$h")" && continue
        ip netns add "$(ns "$h")"
        ip link add "tdv$i" type veth peer name "tdp$i"
        ip link set "tdv$i" netns "$(ns "$h")"
        ip link set "tdp$i" netns tandem-net
        ip -n tandem-net link set "tdp$i" master tdbr0
        ip -n tandem-net link set "tdp$i" up
        ip -n "$(ns "$h")" link set lo up
        ip -n "$(ns "$h")" link set "tdv$i" name eth0
        ip -n "$(ns "$h")" addr add "$NET.$i/24" dev eth0
        ip -n "$(ns "$h")" link set eth0 up
    done
    # each host's /etc/hosts (ip netns exec binds /etc/netns/NS/hosts over /etc/hosts)
    local hosts="127.0.0.1 localhost"$'\n'
    for i in $(seq 1 "$n"); do hosts+="$NET.$i tdhost$i"$'\n'; done
    for i in $(seq 1 "$n"); do
        mkdir -p "/etc/netns/$(ns "tdhost$i")"
        printf '%s' "$hosts" > "/etc/netns/$(ns "tdhost$i")/hosts"
    done
}

down() {
    for n in $(ip netns list | awk '{ print $1 }' | grep '^tandem-'); do
        ip netns pids "$n" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
        ip netns del "$n"
        rm -rf "/etc/netns/$n"
    done
}

run() { # HOST CMD...: CMD on HOST with HOST as its hostname (a UTS namespace of its own)
    local h=$1
    shift
    exec ip netns exec "$(ns "$h")" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$h" "$@"
}

case ${1:-} in
up) up "${2:-3}" ;;
down) down ;;
run)
    shift
    run "$@"
    ;;
rsh) # Open MPI's agent: HOST then the remote command as shell words
    shift
    h=$1
    shift
    run "$h" sh -c "$*"
    ;;
cut) ip -n "$(ns "$2")" link set eth0 down ;;
mend) ip -n "$(ns "$2")" link set eth0 up ;;
check)
    [ "$(id -u)" -eq 0 ] || { echo "netns-hosts: needs root" >&2; exit 1; }
    # entering a namespace remounts / (rslave), which fails where / is no mount point (a
    # chroot); and there `ip netns add` would leave its /run/netns mount behind
    mountpoint -q / || { echo "netns-hosts: / is not a mount point here (a chroot?): namespaces cannot be entered" >&2; exit 1; }
    had_run_netns=0
    mountpoint -q /run/netns 2> /dev/null && had_run_netns=1
    ip netns add tandem-probe 2> /dev/null || { echo "netns-hosts: cannot make network namespaces here" >&2; exit 1; }
    if ! why=$(ip netns exec tandem-probe true 2>&1); then
        ip netns del tandem-probe
        # leave no mount behind that `ip netns add` made
        [ $had_run_netns -eq 1 ] || umount /run/netns 2> /dev/null || true
        echo "netns-hosts: cannot enter a network namespace here: $why" >&2
        exit 1
    fi
    ip netns del tandem-probe
    unshare --uts true 2> /dev/null || { echo "netns-hosts: cannot make UTS namespaces here" >&2; exit 1; }
    ;;
*)
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
