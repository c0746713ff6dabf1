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
# certificate bundle, pip's configuration and proxy variables). Nothing else.
#
# Usage: sudo scripts/fresh-check.sh [--demo] [--if-changed] [--keep] [--dir DIR] [--sources FILE]
#   --demo          also run `make demo` in the fresh root (after the tests)
#   --if-changed    only when the files that decide the install and the build
#                   (install-deps.sh, CMakeLists.txt, Makefile, *.cmake, this script) have
#                   not passed on this machine before (.ci/run uses this)
#   --keep          keep the root afterwards (default: removed)
#   --dir DIR       where to build the root (default: a new folder under /var/tmp)
#   --sources FILE  an apt sources file (one-line or deb822 .sources) for the root
# Needs root (chroot, mounts) and mmdebstrap (installed with apt-get when missing).
# Exit status: that of the failing step, 0 when every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)

demo=0 keep=0 dir="" sources="" if_changed=0
while [ $# -gt 0 ]; do
    case "$1" in
    --demo) demo=1 ;;
    --if-changed) if_changed=1 ;;
    --keep) keep=1 ;;
    --dir) dir=$2; shift ;;
    --sources) sources=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh-check: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
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
    echo "fresh-check: no apt sources file found; give one with --sources FILE" >&2
    exit 2
}
# --if-changed: skip when the files that decide what a fresh machine needs already passed
# here (a stamp per fingerprint under /var/cache/tandem-fresh-check)
fp=$(git show HEAD:scripts/install-deps.sh HEAD:CMakeLists.txt HEAD:Makefile \
    HEAD:bench/bench.cmake HEAD:tests/tests.cmake HEAD:scripts/fresh-check.sh | sha256sum | cut -c1-16)
stamp=/var/cache/tandem-fresh-check/$fp$([ "$demo" = 1 ] && echo -demo || true)
if [ "$if_changed" = 1 ]; then
    for s in "$stamp" "$stamp-demo"; do
        if [ -f "$s" ]; then
            echo "fresh-check: skipped: the build and install files at HEAD (fingerprint $fp) passed on this machine at $(cat "$s")"
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

[ -n "$dir" ] || dir=$(mktemp -d /var/tmp/tandem-fresh.XXXXXX)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
root="$dir/root"
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2> /dev/null || true; done
    if [ "$keep" = 1 ]; then
        echo "fresh-check: root kept at $root"
    else
        rm -rf "$dir"
    fi
}
trap cleanup EXIT

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
[ -f /etc/pip.conf ] && sed 's#^cert *=.*#cert = /etc/ssl/certs/host-ca-certificates.crt#' \
    /etc/pip.conf > "$root/etc/pip.conf"

for m in proc sys dev dev/pts; do
    mkdir -p "$root/$m"
    case $m in
    proc) mount -t proc proc "$root/proc" ;;
    sys) mount -t sysfs sys "$root/sys" ;;
    dev) mount --bind /dev "$root/dev" ;;
    dev/pts) mount -t devpts devpts "$root/dev/pts" ;;
    esac
    mounted+=("$root/$m")
done
mkdir -p "$root/dev/shm" && mount -t tmpfs -o size=4g tmpfs "$root/dev/shm" && mounted+=("$root/dev/shm")

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

# runs a command in the root, its output kept in $dir/NAME.log and shown without apt's
# per-package lines; returns the command's exit status
run_logged() {
    local name=$1 cmd=$2 rc
    set +e
    in_root "$cmd" 2>&1 | tee "$dir/$name.log" |
        grep --line-buffered -v '^\(Selecting\|Preparing\|Unpacking\|Setting up\|(Reading\|Processing triggers\)'
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

step "make test (in the fresh root)"
rc=0
run_logged make-test "make test" || rc=$?
if [ "$rc" != 0 ] || ! grep -q '100% tests passed' "$dir/make-test.log"; then
    echo "fresh-check: make test failed (exit $rc); root kept at $root" >&2
    keep=1
    exit $((rc ? rc : 1))
fi

if [ "$demo" = 1 ]; then
    step "make demo (in the fresh root)"
    run_logged make-demo "make demo" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "fresh-check: make demo failed (exit $rc); root kept at $root" >&2
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
