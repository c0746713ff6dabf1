#!/usr/bin/env bash
# bf16 mixed-precision training (ctest label e2e): the same small llama trained 200 steps on
# the fortunes corpus in fp32 and with "precision": "bf16" reaches a validation loss within
# 2 % of fp32's at the same step; the bf16 run says which oneDNN instruction set it used;
# with ONEDNN_MAX_CPU_ISA=AVX2 (no bf16 matrix product in oneDNN) the same job trains, says
# so once, and reaches the same loss as the native bf16 run (same rounding of the inputs);
# a bad precision value is refused.
# Usage: test_train_bf16.sh TANDEM_BINARY
set -euo pipefail
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
export OMP_NUM_THREADS=2
"$TANDEM" prep --out data --quiet --vocab-size 512 --delimiter % --val-fraction 0.3 \
    /usr/share/games/fortunes/fortunes
job() { # precision
    cat <<JOB
{"model": {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 512,
           "max_position_embeddings": 64},
 "data": {"train": "data", "seq_len": 64},
 "train": {"batch_size": 8, "steps": 200, "lr": 5e-3, "warmup": 10, "seed": 4,
           "eval_every": 200, "eval_batches": 8},
 "checkpoint": {"dir": "run-$1", "every": 200, "keep": 1},
 "precision": "$1"}
JOB
}
job fp32 > fp32.json
job bf16 > bf16.json
sed 's/run-bf16/run-avx2/' bf16.json > avx2.json
"$TANDEM" train fp32.json > fp32.log
"$TANDEM" train bf16.json > bf16.log
ONEDNN_MAX_CPU_ISA=AVX2 "$TANDEM" train avx2.json > avx2.log 2> avx2.err
grep "bf16 matrix products" bf16.log
v32=$(grep '"val_loss"' run-fp32/metrics.jsonl | tail -1 | sed 's/.*"val_loss": \([0-9.]*\).*/\1/')
v16=$(grep '"val_loss"' run-bf16/metrics.jsonl | tail -1 | sed 's/.*"val_loss": \([0-9.]*\).*/\1/')
diff=$(awk -v a="$v32" -v b="$v16" 'BEGIN { d = (b - a) / a * 100; printf "%.2f", d < 0 ? -d : d }')
echo "validation loss at step 200: fp32 $v32, bf16 $v16 (differ by $diff %; limit 2 %)"
vav=$(grep '"val_loss"' run-avx2/metrics.jsonl | tail -1 | sed 's/.*"val_loss": \([0-9.]*\).*/\1/')
dav=$(awk -v a="$v16" -v b="$vav" 'BEGIN { d = (b - a) / a * 100; printf "%.3f", d < 0 ? -d : d }')
echo "ONEDNN_MAX_CPU_ISA=AVX2: $(grep -c 'no bf16 matrix product' avx2.err) fallback warning(s); validation loss $vav ($dav % from the native bf16 run)"
fail=0
awk -v d="$diff" 'BEGIN { exit !(d <= 2) }' || { echo "FAIL: bf16 off fp32 by $diff %"; fail=1; }
[ "$(grep -c 'no bf16 matrix product' avx2.err)" = 1 ] || { echo "FAIL: the AVX2 fallback was not said once"; fail=1; }
awk -v d="$dav" 'BEGIN { exit !(d <= 0.5) }' || { echo "FAIL: AVX2 fallback off native bf16 by $dav %"; fail=1; }
cmp -s run-fp32/metrics.jsonl run-bf16/metrics.jsonl && { echo "FAIL: identical runs"; fail=1; }
sed 's/"bf16"/"fp16"/' bf16.json > bad.json
if "$TANDEM" train bad.json 2> bad.err; then echo "FAIL: precision fp16 accepted"; fail=1; fi
grep -q 'precision: "fp16" is not one of fp32, bf16' bad.err || { echo "FAIL: message: $(cat bad.err)"; fail=1; }
[ $fail -eq 0 ] && echo "test_train_bf16: passed"
exit $fail
