#!/usr/bin/env bash
# Before/after speed of two builds, side by side in one run: bench_train (tandem's rows only,
# fp32 and bf16, one model shape at a time) and bench_decode from build directory A and build
# directory B, each measurement run for A and B back to back (in the order A B, then B A in
# the next round) so that both see the same machine, and a table of each row's median
# tokens/s over the rounds with the ratio B / A, the ratio of the best rounds (the figure least
# disturbed by neighbours), and every round's figure (a row only one build prints is shown as
# such).
# Usage: bench/ab.sh BUILD_A BUILD_B [--rounds N] [--train-steps N] [--decode-steps N]
#                    [--threads N] [--only train|decode]
#   e.g. git worktree add /tmp/before <commit>; build it there; then
#        bench/ab.sh /tmp/before/build build --threads 1
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
[ "${1:-}" = -h ] || [ "${1:-}" = --help ] && { usage; exit 0; }
[ $# -ge 2 ] || { usage >&2; exit 2; }
A=$1 B=$2
shift 2
rounds=3 tsteps=6 dsteps=32 threads= only=
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --train-steps) tsteps=$2; shift 2 ;;
    --decode-steps) dsteps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "ab.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
for d in "$A" "$B"; do
    for p in bench_train bench_decode; do
        [ -x "$d/$p" ] || { echo "ab.sh: $d/$p is missing: build it (make -C $d $p)" >&2; exit 2; }
    done
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # side build-dir program args...
    local side=$1 d=$2 prog=$3
    shift 3
    if [ -n "$threads" ]; then
        OMP_NUM_THREADS=$threads "$d/$prog" "$@" 2> /dev/null | sed "s/^/$side /" >> "$out/rows"
    else
        "$d/$prog" "$@" 2> /dev/null | sed "s/^/$side /" >> "$out/rows"
    fi
}
shapes="gpt2-L4-C256 gpt2-L12-C768 llama-L4-C256 llama-L12-C768"
what_list="$shapes decode"
[ "$only" = train ] && what_list=$shapes
[ "$only" = decode ] && what_list=decode
for r in $(seq 1 "$rounds"); do
    order="A B"
    [ $((r % 2)) -eq 0 ] && order="B A"
    echo "round $r/$rounds ($order)" >&2
    for what in $what_list; do
        for side in $order; do
            d=$A
            [ $side = B ] && d=$B
            if [ $what = decode ]; then
                run $side "$d" bench_decode --steps "$dsteps" --json
            else
                run $side "$d" bench_train --no-torch --precision both --steps "$tsteps" \
                    --only $what --json ${threads:+--threads $threads}
            fi
        done
    done
done
kernels=$("$B/bench_decode" --steps 1 --json 2>&1 >/dev/null | grep -m1 '^kernels:' || true)
python3 - "$out/rows" "$rounds" "$kernels" "$threads" <<'EOF'
import json, statistics, sys
rows, rounds, kernels, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
vals = {}
order = []
for line in open(rows):
    side, js = line.split(' ', 1)
    j = json.loads(js)
    if 'model' in j:
        key = 'train %s %s' % (j['model'], j['impl'])
    else:
        key = 'decode %s batch %d' % (j['weights'], j['batch'])
    if key not in vals:
        vals[key] = {'A': [], 'B': []}
        order.append(key)
    vals[key][side].append(j['tokens_per_s'])
print('%s; medians of %s rounds, tokens/s%s' % (kernels or 'kernels: ?', rounds,
      ', %s OpenMP thread(s)' % threads if threads else ''))
print()
print('| row | A | B | B / A | best B / best A | A rounds | B rounds |')
print('|---|---:|---:|---:|---:|---|---|')
fmt = lambda xs: ' '.join('%.1f' % x for x in xs)
for k in order:
    A, B = vals[k]['A'], vals[k]['B']
    if not A or not B:  # a row one build does not print (a benchmark added since)
        print('| %s | %s | %s | (%s only) | | %s | %s |' % (
            k, '%.1f' % statistics.median(A) if A else '-',
            '%.1f' % statistics.median(B) if B else '-', 'B' if B else 'A', fmt(A), fmt(B)))
        continue
    a, b = statistics.median(A), statistics.median(B)
    print('| %s | %.1f | %.1f | %.3f | %.3f | %s | %s |' % (
        k, a, b, b / a if a else float('nan'), max(B) / max(A) if max(A) else float('nan'),
        fmt(A), fmt(B)))
EOF
