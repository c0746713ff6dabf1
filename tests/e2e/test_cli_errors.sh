#!/usr/bin/env bash
# Bad input through the command line: each case must exit with code 2 (never crash, never
# 0) and print a message on stderr that names the problem. Covers job files (missing,
# invalid JSON, unknown architecture, heads not dividing the width), shards (truncated,
# wrong magic), checkpoints (missing tensor, mis-shaped tensor, truncated file), and
# usage errors. Usage: test_cli_errors.sh TANDEM_BINARY
set -uo pipefail
TANDEM=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
pass=0 fail=0

# expect LABEL PHRASE -- COMMAND...
expect() {
    local label=$1 phrase=$2
    shift 3
    "$@" > out.txt 2> err.txt
    local rc=$?
    if [ "$rc" -eq 2 ] && grep -qF -- "$phrase" err.txt; then
        pass=$((pass + 1))
        printf '  ok    %-26s exit %d: %s\n' "$label" "$rc" "$(head -c 150 err.txt | tr '\n' ' ')"
    else
        fail=$((fail + 1))
        printf '  FAIL  %-26s exit %d (want 2 and "%s"): %s\n' "$label" "$rc" "$phrase" \
            "$(head -c 300 err.txt | tr '\n' ' ')"
    fi
}

job() { # file model-json data-dir
    printf '{"model": %s, "data": {"train": "%s", "seq_len": 16},
             "train": {"batch_size": 2, "steps": 2}, "checkpoint": {"dir": "run"}}\n' "$2" "$3" > "$1"
}
MODEL='{"arch": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
        "intermediate_size": 64, "vocab_size": 260, "max_position_embeddings": 16}'

"$TANDEM" prep --out data --quiet --vocab-size 260 --val-fraction 0.3 --min-letter-ratio 0 \
    --max-symbol-ratio 1 --max-dup-line-frac 1 --max-top-ngram-frac 1 "$ROOT/common" || { echo "prep failed"; exit 1; }

job good.json "$MODEL" data
expect "missing job file" "no_such.json" -- "$TANDEM" train no_such.json
printf '{"model": {"arch": "llama",,}}' > invalid.json
expect "invalid JSON" "invalid JSON near line 1" -- "$TANDEM" train invalid.json
job arch.json '{"arch": "rwkv", "hidden_size": 32}' data
expect "unknown architecture" 'unknown architecture "rwkv"' -- "$TANDEM" train arch.json
job heads.json "${MODEL/\"hidden_size\": 32/\"hidden_size\": 30}" data
expect "heads not dividing width" "must divide hidden_size (30)" -- "$TANDEM" train heads.json
job vocab.json "${MODEL/260/200}" data
expect "token id beyond vocab" "but model.vocab_size is 200" -- "$TANDEM" train vocab.json

"$TANDEM" prep --out bigvocab --quiet --vocab-size 600 --val-fraction 0.3 --min-letter-ratio 0 \
    --max-symbol-ratio 1 --max-dup-line-frac 1 --max-top-ngram-frac 1 "$ROOT/common" "$ROOT/data"
printf '{"model": %s, "data": {"train": "data", "val": "bigvocab", "seq_len": 16},
         "train": {"batch_size": 2, "steps": 2}, "checkpoint": {"dir": "run"}}\n' "$MODEL" > valvocab.json
expect "val token id beyond vocab" "validation shards hold token id" -- "$TANDEM" train valvocab.json
mkdir -p trunc magic
head -c 3000 data/train_000000.bin > trunc/x_train.bin
job trunc.json "$MODEL" trunc
expect "truncated shard" "truncated" -- "$TANDEM" train trunc.json
{ printf '\x01\x02\x03\x04'; tail -c +5 data/train_000000.bin; } > magic/x_train.bin
job magic.json "$MODEL" magic
expect "wrong-magic shard" "bad magic" -- "$TANDEM" train magic.json
job nodata.json "$MODEL" no_such_dir
expect "missing data dir" "does not exist" -- "$TANDEM" train nodata.json

FX="$ROOT/tests/reference/fixtures/llama"
cp -r "$FX" ck_missing && sed -i 's/"num_hidden_layers": 2/"num_hidden_layers": 3/' ck_missing/config.json
expect "checkpoint missing tensor" "missing tensor 'model.layers.2." -- \
    "$TANDEM" generate --model ck_missing --tokens 1,2,3 --max-new-tokens 1
cp -r "$FX" ck_shape && sed -i 's/"intermediate_size": 64/"intermediate_size": 80/' ck_shape/config.json
expect "checkpoint mis-shaped" "has shape [64, 32], but config.json implies [80, 32]" -- \
    "$TANDEM" generate --model ck_shape --tokens 1,2,3 --max-new-tokens 1
cp -r "$FX" ck_trunc && head -c 5000 "$FX/model.safetensors" > ck_trunc/model.safetensors
expect "checkpoint truncated" "truncated" -- \
    "$TANDEM" generate --model ck_trunc --tokens 1,2,3 --max-new-tokens 1
expect "token outside vocab" "outside the vocabulary" -- \
    "$TANDEM" generate --model "$FX" --tokens 1,500 --max-new-tokens 1
expect "unknown command" "unknown command" -- "$TANDEM" frobnicate
expect "train without job" "expected exactly one job file" -- "$TANDEM" train
expect "bad bucket size" "--bucket-mb needs a size" -- "$TANDEM" train good.json --bucket-mb 0
# device "cuda" without a usable GPU (or without the CUDA build) is an error that says why;
# "auto" trains on the CPU and says so in one line
sed 's/"checkpoint": {"dir": "run"}/"checkpoint": {"dir": "run-dev"}, "device": "cuda"/' good.json > cuda.json
expect "device cuda, no GPU" 'device "cuda": ' -- "$TANDEM" train cuda.json
sed 's/"cuda"/"auto"/; s/run-dev/run-auto/' cuda.json > auto.json
if "$TANDEM" train auto.json --quiet > auto.out 2> auto.err && [ "$(grep -c 'device auto: training on the CPU' auto.err)" = 1 ]; then
    pass=$((pass + 1)); echo "  ok    device auto: $(grep 'device auto' auto.err | head -c 160)"
else
    fail=$((fail + 1)); echo "  FAIL  device auto: $(cat auto.err | head -c 300)"
fi
expect "generate bad value" "bad option value" -- "$TANDEM" generate --model "$FX" --tokens 1 --top-p 7

# a valid run still works (the cases above fail for their own reasons only)
"$TANDEM" train good.json --quiet && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "  FAIL  valid job"; }

# the same checkpoint directory is not reused by a new run, and resume refuses a changed batch
expect "new run in a used checkpoint dir" "already holds checkpoints" -- "$TANDEM" train good.json
sed 's/"batch_size": 2/"batch_size": 4/' good.json > changed.json
expect "resume with another batch size" "cannot resume from" -- "$TANDEM" train changed.json --resume
# serving errors, on the checkpoint the valid run just wrote (it carries tokenizer.json)
echo "hello there" > prompts.txt
expect "serve: tp not dividing ranks" "must divide the 1 ranks" -- "$TANDEM" serve --model run/step_00000002 --tp 2 --prompts-file prompts.txt
expect "serve: missing prompts file" "nope.txt" -- "$TANDEM" serve --model run/step_00000002 --prompts-file nope.txt
expect "serve: KV budget too small" "holds no block" -- "$TANDEM" serve --model run/step_00000002 --kv-mb 0.0001 --prompts-file prompts.txt
expect "serve: no prompts" "need --model" -- "$TANDEM" serve --model run/step_00000002
expect "serve: device cuda, no GPU" "--device cuda: " -- "$TANDEM" serve --model run/step_00000002 --device cuda --prompts-file prompts.txt
expect "serve: empty stop string" "bad value" -- "$TANDEM" serve --model run/step_00000002 --stop "" --prompts-file prompts.txt
expect "train --serve without prompts" "--serve needs --prompts-file" -- "$TANDEM" train good.json --serve
expect "serve: --max-tokens past int" "bad value for an option: '4294967297'" -- "$TANDEM" serve --model run/step_00000002 --prompts-file prompts.txt --max-tokens 4294967297
printf 'abc\0def\nghi\n' > nul.txt
expect "generate: NUL in prompts file" "line 1 holds a NUL byte" -- "$TANDEM" generate --model run/step_00000002 --prompts-file nul.txt
expect "generate: prompt and file" "exclude each other" -- "$TANDEM" generate --model run/step_00000002 --prompts-file prompts.txt --prompt hi
"$TANDEM" serve --model run/step_00000002 --prompts-file prompts.txt --max-tokens 2147483647 > big.jsonl 2>&1 &&
    grep -q '"finish"' big.jsonl && { pass=$((pass + 1)); echo "  ok    serve: --max-tokens 2147483647 clamps to the context"; } ||
    { fail=$((fail + 1)); echo "  FAIL  serve: huge --max-tokens: $(cat big.jsonl)"; }
# a prompt longer than the context is refused on its own line; the others are served
{ echo "hello there"; printf 'word %.0s' $(seq 1 100); echo; } > long.txt
if "$TANDEM" serve --model run/step_00000002 --prompts-file long.txt --max-tokens 3 > out.jsonl 2> err.txt &&
   grep -q '"index": 0, "replica": 0, "finish"' out.jsonl &&
   grep -q '"index": 1, "replica": 0, "error": "prompt of [0-9]* tokens leaves no room' out.jsonl; then
    pass=$((pass + 1)); echo "  ok    serve: over-long prompt refused alone (exit 0, error line)"
else
    fail=$((fail + 1)); echo "  FAIL  serve: over-long prompt: $(cat out.jsonl err.txt)"
fi
echo "test_cli_errors: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
