#!/usr/bin/env bash
# Checks that every #include "..." in the source folders follows the allowed dependencies
# between folders (the RULES table at the top of this script; docs/layers.svg draws it).
# Usage: scripts/check-layers.sh [--root DIR]
#   --root DIR  the repository to check (default: the one holding this script)
#   -h, --help  this text
# The files are the *.c *.h *.cu *.cuh *.inc files that git tracks or would track (untracked
# files that are not ignored count too) under a folder of the table; outside a git checkout
# (or without git), every such file under those folders. A file's folder is the
# longest folder of the table its path starts with (worker/kernels/cpu/x.c is in
# worker/kernels). An included path is repository-relative ("worker/model/model.h") and
# its folder is found the same way; a name without a slash is the includer's own folder,
# except "tandem.pb-c.h" (generated from proto/tandem.proto), which is proto. System
# headers (<...>) are not checked. An included path in no folder of the table is a
# violation too.
# Exit status: 0 all allowed (one summary line), 1 violations (one line each:
# file:line: FOLDER may not include PATH (allowed: ...)), 2 usage or setup error.
set -euo pipefail

# Folder -> the folders its files may include. A folder may always include itself;
# "*" allows anything; "-" means the folder's files are not checked.
RULES='
common          common
proto           common proto
data            common worker/comm data
worker/kernels  common worker/kernels
worker/comm     common worker/comm
worker/backend  common worker/kernels worker/backend
worker/model    common worker/backend worker/model
worker/train    common data proto worker/comm worker/backend worker/model worker/train
worker/infer    common data proto worker/comm worker/backend worker/kernels worker/model worker/infer
scheduler       common scheduler
coordinator     common proto scheduler coordinator
cli             *
bench           -
tests           -
'
# Bare include names that belong to a folder other than the includer's.
BARE='
tandem.pb-c.h   proto
'

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

root=""
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --root)
        [ $# -ge 2 ] || { echo "layers: --root needs a directory" >&2; exit 2; }
        root=$2
        shift 2
        ;;
    --root=*) root=${1#--root=}; shift ;;
    *) echo "layers: unknown argument '$1' (usage: scripts/check-layers.sh [--root DIR])" >&2; exit 2 ;;
    esac
done
[ -n "$root" ] || root="$(dirname "$0")/.."
[ -d "$root" ] || { echo "layers: no such directory: $root" >&2; exit 2; }
cd "$root"
# The files: what git tracks or would track in a checkout; without git (a source tarball, a
# machine without git), every such file under the table's folders.
if command -v git > /dev/null && top=$(git rev-parse --show-toplevel 2> /dev/null); then
    cd "$top"
    list=$(git ls-files --cached --others --exclude-standard -- \
        '*.c' '*.h' '*.cu' '*.cuh' '*.inc')
else
    dirs=$(printf '%s\n' "$RULES" | awk 'NF >= 2 && $2 != "-" { print $1 }' | sort -u)
    existing=""
    for d in $dirs; do [ -d "$d" ] && existing="$existing $d"; done
    list=""
    [ -z "$existing" ] || list=$(find $existing -type f \( -name '*.c' -o -name '*.h' \
        -o -name '*.cu' -o -name '*.cuh' -o -name '*.inc' \) | sort)
fi

printf '%s\n' "$list" | LAYER_RULES=$RULES LAYER_BARE=$BARE awk '
function folder_of(path,    r, best) {
    best = ""
    for (r in allow)
        if (substr(path, 1, length(r) + 1) == r "/" && length(r) > length(best))
            best = r
    return best
}
function allowed_list(f,    s, i, n, parts) {
    if (allow[f] == "*") return "anything"
    n = split(allow[f], parts, " ")
    s = ""
    for (i = 1; i <= n; i++) s = s (i > 1 ? ", " : "") parts[i]
    return s
}
BEGIN {
    n = split(ENVIRON["LAYER_RULES"], lines, "\n")
    for (i = 1; i <= n; i++) {
        k = split(lines[i], w, " ")
        if (k < 2) continue
        s = ""
        self = 0
        for (j = 2; j <= k; j++) {
            s = s (j > 2 ? " " : "") w[j]
            if (w[j] == w[1]) self = 1
            ok[w[1], w[j]] = 1
        }
        if (!self && s != "*" && s != "-") s = s " " w[1]
        ok[w[1], w[1]] = 1
        allow[w[1]] = s
    }
    n = split(ENVIRON["LAYER_BARE"], lines, "\n")
    for (i = 1; i <= n; i++)
        if (split(lines[i], w, " ") == 2) bare[w[1]] = w[2]
    files = 0; incs = 0; bad = 0
}
{
    file = $0
    if (file == "") next
    f = folder_of(file)
    if (f == "" || allow[f] == "-") next
    lineno = 0
    while ((rc = (getline line < file)) > 0) {
        lineno++
        if (line !~ /^[ \t]*#[ \t]*include[ \t]*"/) continue
        sub(/^[ \t]*#[ \t]*include[ \t]*"/, "", line)
        if (index(line, "\"") == 0) continue
        inc = substr(line, 1, index(line, "\"") - 1)
        incs++
        if (index(inc, "/") == 0)
            g = (inc in bare) ? bare[inc] : f
        else
            g = folder_of(inc)
        if (g == "") {
            printf "%s:%d: %s may not include %s (unknown folder; allowed: %s)\n",
                file, lineno, f, inc, allow[f] == "*" ? "any folder of the table" : allowed_list(f)
            bad++
        } else if (allow[f] != "*" && !((f, g) in ok)) {
            printf "%s:%d: %s may not include %s (allowed: %s)\n",
                file, lineno, f, inc, allowed_list(f)
            bad++
        }
    }
    if (rc == 0) files++
    close(file)
}
END {
    if (bad) {
        printf "layers: %d violation%s (%d files, %d includes)\n",
            bad, bad == 1 ? "" : "s", files, incs
        exit 1
    }
    printf "layers: %d files, %d includes, all allowed\n", files, incs
}'
