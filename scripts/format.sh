#!/usr/bin/env bash
# clang-format over the project's C, CUDA and kernel-include files (.clang-format at the top).
# Usage: scripts/format.sh          format the tracked files in place (make format)
#        scripts/format.sh --check  change nothing; list each unformatted file with the first
#                                   lines of its diff and exit 1 if any (run by .ci/run)
# The files are those git tracks (a new file is checked once it is added). The formatter is
# Debian 12's clang-format (14); other versions format some constructs differently, so the
# check names the version it ran.
set -euo pipefail
check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
*) echo "format: unknown argument '$1' (usage: scripts/format.sh [--check])" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "format: one argument at most (usage: scripts/format.sh [--check])" >&2; exit 2; }
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || {
    echo "format: clang-format not found: run scripts/install-deps.sh (apt package clang-format)" >&2
    exit 2
}
list=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.inc') || {
    echo "format: not a git checkout: the files to format are the ones git tracks" >&2
    exit 2
}
mapfile -t files <<< "$list"
[ -n "$list" ] && [ "${#files[@]}" -gt 0 ] || { echo "format: git tracks no C source here" >&2; exit 2; }
version=$(clang-format --version | sed 's/.*version //')
if [ "$check" = 0 ]; then
    clang-format -i "${files[@]}"
    echo "format: ${#files[@]} files formatted ($version)"
    exit 0
fi
bad=0
for f in "${files[@]}"; do
    if ! clang-format "$f" | cmp -s - "$f"; then
        bad=$((bad + 1))
        echo "format: $f is not formatted; the first differences:"
        clang-format "$f" | diff -u "$f" - | sed -n '3,14p' | sed 's/^/    /'
    fi
done
if [ "$bad" -gt 0 ]; then
    echo "format: $bad of ${#files[@]} files need 'make format' ($version)" >&2
    exit 1
fi
echo "format: ${#files[@]} files formatted as .clang-format says ($version)"
