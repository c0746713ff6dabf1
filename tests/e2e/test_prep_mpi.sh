#!/usr/bin/env bash
# `mpirun -np N tandem prep` gives the same output as `tandem prep`: byte-identical shards
# and tokenizer.json, and the same manifest.json apart from its "run" object (ranks and
# seconds). Corpus: the fortunes folder as installed (92 files: text, *.dat binaries,
# *.u8 links), so the split over ranks meets every kind of input.
# Usage: test_prep_mpi.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
CORPUS=/usr/share/games/fortunes
[ -d "$CORPUS" ] || { echo "missing $CORPUS (scripts/install-deps.sh installs fortunes)"; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
. "$HERE/mpi_env.sh"
ARGS=(--delimiter % --vocab-size 1024 --val-fraction 0.05 --shard-tokens 300000 --quiet "$CORPUS")

"$TANDEM" prep --out "$W/np1" "${ARGS[@]}"
strip_run() { sed '/"run":/,$d' "$1"; }
fail=0
for np in 2 3; do
    mpirun -np $np "$TANDEM" prep --out "$W/np$np" "${ARGS[@]}"
    n=0
    for f in "$W"/np1/*.bin "$W"/np1/tokenizer.json; do
        b=$(basename "$f")
        if cmp -s "$f" "$W/np$np/$b"; then n=$((n + 1)); else echo "DIFFER: $b (np=$np)"; fail=1; fi
    done
    [ "$(ls "$W"/np1/*.bin | wc -l)" -eq "$(ls "$W"/np$np/*.bin | wc -l)" ] || { echo "shard count differs"; fail=1; }
    if diff <(strip_run "$W/np1/manifest.json") <(strip_run "$W/np$np/manifest.json") > /dev/null; then
        echo "np=$np: $n files byte-identical to np=1 ($(ls "$W"/np1/*.bin | wc -l) shards + tokenizer.json); manifest equal apart from \"run\""
    else
        echo "np=$np: manifest differs:"; diff <(strip_run "$W/np1/manifest.json") <(strip_run "$W/np$np/manifest.json") | head; fail=1
    fi
done
grep -E '"documents_(in|out)"|"dropped_(exact|near)_duplicate"|"tokens_(train|val)"' "$W/np1/manifest.json" | tr -d '\t'
[ $fail -eq 0 ] && echo "test_prep_mpi: passed"
exit $fail
