#!/usr/bin/env bash
# The fresh-machine check: builds a minimal Debian 12 root from nothing (mmdebstrap, the
# "minbase" variant: essential packages and apt, plus make to run the README's commands; no
# compiler, no libraries), copies a clean clone of this repository's HEAD into it, and runs
# the README's test command there (`make test`), which must install everything it needs
# itself. With --demo it runs `make demo` as well. Any package that the build, the tests
# or the demo need and that scripts/install-deps.sh does not install fails it.
#
# What the root takes from this machine: the apt sources (Debian's, from
# /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list, or --sources FILE), and
# the network settings needed to reach the package registries (/etc/resolv.conf, the CA
# certificate bundle, pip's configuration and proxy variables; behind a proxy, keep them
# with `sudo -E`). Nothing else.
#
# Usage: sudo scripts/fresh-check.sh [--demo] [--if-changed] [--keep] [--dir DIR] [--sources FILE]
#   --demo          also run `make demo` in the fresh root (after the tests)
#   --if-changed    skip when the files that decide the install and the build (Makefile,
#                   CMakeLists.txt, *.cmake, scripts/, .ci/run, Python requirements) are as
#                   they were in a check that passed on this machine (.ci/run uses this)
#   --keep          keep the root afterwards (default: removed; kept when a step fails)
#   --dir DIR       a new or empty folder for the root and the logs (default: a new folder
#                   under /var/tmp)
#   --sources FILE  an apt sources file (one-line or deb822 .sources) for the root
# Needs root with the right to mount (chroot, /proc, /sys, /dev in the root) and mmdebstrap
# (installed with apt-get when missing). SIGINT/SIGTERM stop the processes inside the root,
# unmount and clean up. Exit status: that of the failing step, 0 when every step passed.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$(pwd)" "$1" ;; esac; }

demo=0 keep=0 dir="" sources="" if_changed=0
while [ $# -gt 0 ]; do
    case "$1" in
    --demo) demo=1 ;;
    --if-changed) if_changed=1 ;;
    --keep) keep=1 ;;
    --dir | --sources)
        if [ $# -lt 2 ] || [ -z "$2" ] || [ "${2#-}" != "$2" ]; then
            echo "fresh-check: $1 needs a value (see --help)" >&2
            exit 2
        fi
        [ "$1" = --dir ] && dir=$(abs "$2") || sources=$(abs "$2")
        shift
        ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fresh-check: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
SRC=$(pwd)
if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-check: needs root (mmdebstrap, chroot and mounts); run it with sudo" >&2
    exit 2
fi
if [ -z "$sources" ]; then
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        [ -s "$f" ] && grep -q '^[^#]' "$f" && { sources=$f; break; }
    done
fi
[ -n "$sources" ] && [ -r "$sources" ] || {
    echo "fresh-check: no readable apt sources file${sources:+ ($sources)}; give one with --sources FILE" >&2
    exit 2
}
if [ -n "$dir" ] && [ -e "$dir" ] && { [ ! -d "$dir" ] || [ -n "$(ls -A "$dir")" ]; }; then
    echo "fresh-check: --dir $dir exists and is not an empty folder: give a new or empty one" >&2
    exit 2
fi

# The fingerprint of what decides a fresh machine's install and build, at HEAD; a pass
# leaves a stamp under /var/cache/tandem-fresh-check, and --if-changed skips a known one.
fp=$(git ls-files -s Makefile CMakeLists.txt '*.cmake' scripts .ci '*requirements*.txt' |
    sha256sum | cut -c1-16)
stamp=/var/cache/tandem-fresh-check/$fp$([ "$demo" = 1 ] && echo -demo || true)
if [ "$if_changed" = 1 ]; then
    for s in "$stamp" "$stamp-demo"; do
        if [ -f "$s" ]; then
            echo "fresh-check: skipped: the install and build files at HEAD (fingerprint $fp) passed on this machine at $(cat "$s")"
            exit 0
        fi
    done
fi
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "fresh-check: note: uncommitted changes are not checked (the root gets a clone of HEAD)"
fi

t0=$(date +%s)
step() { printf '\n== fresh-check [%4ds] %s\n' $(($(date +%s) - t0)) "$*"; }

if ! command -v mmdebstrap > /dev/null; then
    step "installing mmdebstrap on this machine"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
fi

made_dir=0
if [ -z "$dir" ]; then
    dir=$(mktemp -d /var/tmp/tandem-fresh.XXXXXX)
    made_dir=1
elif [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    made_dir=1
fi
root="$dir/root"
mounted=()
cleanup() {
    local i p
    # processes still running inside the root (after a signal): stop them before unmounting
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2> /dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2> /dev/null
    done
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2> /dev/null || umount -l "${mounted[$i]}" ||
            echo "fresh-check: could not unmount ${mounted[$i]}" >&2
    done
    if [ "$keep" = 1 ]; then
        echo "fresh-check: root kept at $root (logs in $dir)"
    elif [ "$made_dir" = 1 ]; then
        rm -rf --one-file-system "$dir"
    else
        rm -rf --one-file-system "$root" "$dir"/*.log "$dir"/packages-*.txt
    fi
}
trap cleanup EXIT
trap 'echo "fresh-check: interrupted" >&2; exit 130' INT TERM

step "mmdebstrap --variant=minbase bookworm (sources: $sources)"
mmdebstrap --quiet --variant=minbase --include=ca-certificates,make bookworm "$root" "$sources"
chroot "$root" dpkg-query -W -f='${Package}\n' | sort > "$dir/packages-minbase.txt"
echo "packages in the new root: $(wc -l < "$dir/packages-minbase.txt")"

step "copying a clean clone of HEAD ($(git rev-parse --short HEAD)) into the root"
mkdir -p "$root/src"
git clone -q --no-hardlinks "$SRC" "$root/src/tandem"
git -C "$root/src/tandem" log -1 --format='%h %s' | cut -c1-100

# network settings only: name resolution, the CA bundle (a proxy's CA may be in it), pip's
# configuration
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca-certificates.crt"
if [ -f /etc/pip.conf ]; then
    sed 's#^cert *=.*#cert = /etc/ssl/certs/host-ca-certificates.crt#' /etc/pip.conf > "$root/etc/pip.conf"
fi

# /proc, /sys, the host's device nodes (bound, then made a slave so that nothing mounted
# below it reaches the host's /dev), a private pty instance and shared memory for MPI
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sys "$root/sys" && mounted+=("$root/sys")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
mount --make-rslave "$root/dev"
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" && mounted+=("$root/dev/pts")
mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx" && mounted+=("$root/dev/ptmx")
mount -t tmpfs -o size=4g tmpfs "$root/dev/shm" && mounted+=("$root/dev/shm")

in_root() {
    # a clean environment: what a new user's login shell would have, plus proxy settings
    local pass=()
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL \
        PIP_DEFAULT_TIMEOUT; do
        [ -n "${!v:-}" ] && pass+=("$v=${!v}")
    done
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt \
        REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca-certificates.crt "${pass[@]}" \
        bash -c "cd /src/tandem && $1"
}

# Runs a command in the root, in the background so that a signal reaches the trap at once;
# its output is kept in $dir/NAME.log and shown without apt's per-package lines. Returns
# the command's exit status.
run_logged() {
    local name=$1 cmd=$2
    { in_root "$cmd" 2>&1; echo $? > "$dir/$name.rc"; } | tee "$dir/$name.log" |
        grep --line-buffered -v '^\(Selecting\|Preparing\|Unpacking\|Setting up\|(Reading\|Processing triggers\)' &
    wait $! || true
    return "$(cat "$dir/$name.rc" 2> /dev/null || echo 1)"
}

step "make test (in the fresh root)"
rc=0
run_logged make-test "make test" || rc=$?
if [ "$rc" != 0 ] || ! grep -q '100% tests passed' "$dir/make-test.log"; then
    echo "fresh-check: make test failed (exit $rc)" >&2
    keep=1
    exit $((rc ? rc : 1))
fi

if [ "$demo" = 1 ]; then
    step "make demo (in the fresh root)"
    run_logged make-demo "make demo" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "fresh-check: make demo failed (exit $rc)" >&2
        keep=1
        exit "$rc"
    fi
fi

chroot "$root" dpkg-query -W -f='${Package}\n' | sort > "$dir/packages-after.txt"
added=$(comm -13 "$dir/packages-minbase.txt" "$dir/packages-after.txt")
step "the project's scripts installed $(echo "$added" | wc -l) packages, and .venv with pip"
named=""
for p in $(sed -n '/^APT_PKGS=(/,/)/p' scripts/install-deps.sh | tr -d '()' | sed 's/APT_PKGS=//'); do
    if echo "$added" | grep -qx "$p"; then named="$named $p"; fi
done
echo "named in scripts/install-deps.sh:$named"
mkdir -p "$(dirname "$stamp")" && date -u +%FT%TZ > "$stamp"
echo "fresh-check: passed in $(($(date +%s) - t0)) s$([ "$demo" = 1 ] && echo ' (make test and make demo)' || true)"
