#!/usr/bin/env bash
# clang-format over the project's C, CUDA and kernel-include files (.clang-format at the top).
# Usage: scripts/format.sh          format the tracked files in place (make format)
#        scripts/format.sh --check  change nothing; list each unformatted file with the first
#                                   lines of its diff and exit 1 if any (run by .ci/run)
# The formatter is Debian 12's clang-format (14); other versions format some constructs
# differently, so the check names the version it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || {
    echo "format: clang-format not found: run scripts/install-deps.sh (apt package clang-format)" >&2
    exit 2
}
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.inc')
if [ "${1:-}" != "--check" ]; then
    clang-format -i "${files[@]}"
    echo "format: ${#files[@]} files formatted ($(clang-format --version | sed 's/.*version //'))"
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
    echo "format: $bad of ${#files[@]} files need 'make format' ($(clang-format --version | sed 's/.*version //'))" >&2
    exit 1
fi
echo "format: ${#files[@]} files formatted as .clang-format says"
