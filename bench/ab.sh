#!/usr/bin/env bash
# Before/after speed of two builds, side by side in one run: bench_train (tandem's rows only,
# fp32 and bf16) and bench_decode from build directory A and build directory B, run in
# alternation (A B A B ...) so that both see the same machine, and a table of each row's
# median tokens/s with the ratio B / A.
# Usage: bench/ab.sh BUILD_A BUILD_B [--rounds N] [--train-steps N] [--decode-steps N]
#   e.g. git worktree add /tmp/before <commit>; build it there; then
#        bench/ab.sh /tmp/before/build build
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
[ "${1:-}" = -h ] || [ "${1:-}" = --help ] && { usage; exit 0; }
[ $# -ge 2 ] || { usage >&2; exit 2; }
A=$1 B=$2
shift 2
rounds=3 tsteps=6 dsteps=32
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --train-steps) tsteps=$2; shift 2 ;;
    --decode-steps) dsteps=$2; shift 2 ;;
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
for r in $(seq 1 "$rounds"); do
    for side in A B; do
        d=$A
        [ $side = B ] && d=$B
        echo "round $r/$rounds, build $side ($d)" >&2
        "$d/bench_train" --no-torch --precision both --steps "$tsteps" --json 2> /dev/null \
            | sed "s/^/$side /" >> "$out/rows"
        "$d/bench_decode" --steps "$dsteps" --json 2> /dev/null | sed "s/^/$side /" >> "$out/rows"
    done
done
kernels=$("$B/bench_decode" --steps 1 --json 2>&1 >/dev/null | grep -m1 '^kernels:' || true)
python3 - "$out/rows" "$rounds" "$kernels" <<'EOF'
import json, statistics, sys
rows, rounds, kernels = sys.argv[1], sys.argv[2], sys.argv[3]
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
print('%s; medians of %s rounds, tokens/s' % (kernels or 'kernels: ?', rounds))
print()
print('| row | A | B | B / A |')
print('|---|---:|---:|---:|')
for k in order:
    a, b = statistics.median(vals[k]['A']), statistics.median(vals[k]['B'])
    print('| %s | %.1f | %.1f | %.3f |' % (k, a, b, b / a if a else float('nan')))
EOF
