#!/usr/bin/env bash
# `tandem train` does not trust its inputs or its disk (ctest labels e2e, mpi). Each case
# checks the exit code and the message:
#   1. job file: a misspelt key ("stpes") and an unknown one ("init_from") are errors with
#      "did you mean"; a key in the wrong block is pointed to its block; a directory or a
#      FIFO where the job file should be is exit 2 naming the path
#   2. a tokenizer.json beside the shards that tandem cannot use (WordPiece) is refused when
#      training starts, not when the checkpoint is first served; the shards are checked
#      against manifest.json (sizes, listing, the tokenizer's sha256; with --verify-data
#      every shard's sha256)
#   3. checkpoints carry SHA256SUMS (`sha256sum -c` agrees); one flipped bit in
#      model.safetensors is refused on --resume, by serve and by generate (exit 2, naming the
#      file); --no-verify loads it and says so
#   4. SIGTERM to `mpirun -np 2 tandem train` (and to a single process) finishes the step,
#      writes its checkpoint and says so; --resume then gives losses identical, bit for bit,
#      to an uninterrupted run; SIGUSR1 (which mpirun forwards) does the same
# Usage: test_train_faults.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
export OMP_NUM_THREADS=1
fail=0
# expect NAME WANT_RC NEEDLE command...: runs the command, checks its exit code and that its
# output holds NEEDLE
expect() {
    local name=$1 want=$2 needle=$3 rc=0
    shift 3
    timeout 60 "$@" > out.txt 2>&1 || rc=$?
    if [ "$rc" = "$want" ] && grep -qF -- "$needle" out.txt; then
        echo "PASS $name: exit $rc: $(grep -F -- "$needle" out.txt | head -1 | cut -c1-180)"
    else
        echo "FAIL $name: exit $rc (want $want), want '$needle' in:"
        sed 's/^/    /' out.txt | head -5
        fail=1
    fi
}

"$TANDEM" prep --out data --quiet --vocab-size 300 --delimiter % --val-fraction 0.05 \
    /usr/share/games/fortunes/fortunes
job() { # name steps [extra train keys] [root extra]
    cat > "$1.json" <<JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": 32},
 "data": {"train": "${DATA:-data}", "seq_len": 32},
 "train": {"batch_size": 4, "steps": $2, "lr": 1e-3, "seed": 1${3:-}},
 "checkpoint": {"dir": "$1", "every": 100000, "keep": 3}, "device": "cpu"${4:-}}
JOB
}

echo "== 1. job file"
job typo 2 && sed -i 's/"steps"/"stpes"/' typo.json
expect "misspelt key" 2 'typo.json: train: unknown key "stpes": did you mean "steps"?' "$TANDEM" train typo.json
job unknown 2 "" ', "init_from": "runs/base"'
expect "unknown key" 2 'unknown.json: unknown key "init_from"' "$TANDEM" train unknown.json
job wrong 2 && sed -i 's/"seq_len": 32}/"seq_len": 32, "grad_accum": 2}/' wrong.json
expect "key in the wrong block" 2 'did you mean "train.grad_accum" (in another block)?' "$TANDEM" train wrong.json
mkdir dir.json
expect "a directory as the job file" 2 'dir.json is a directory; a file is expected there' "$TANDEM" train dir.json
mkfifo fifo.json
expect "a FIFO as the job file" 2 'fifo.json is not a regular file' "$TANDEM" train fifo.json
job once 2 && sed -i 's/"steps"/"stpes"/' once.json
# once_per_job NEEDLE: the error was printed once, not once per rank
once_per_job() {
    local n
    n=$(grep -cF -- "$1" out.txt || true)
    if [ "$n" = 1 ]; then echo "PASS printed once under mpirun -np 2"; else
        echo "FAIL printed $n times under mpirun -np 2"; fail=1; fi
}
expect "typo under mpirun -np 2" 2 'did you mean "steps"?' mpirun -np 2 "$TANDEM" train once.json
once_per_job 'did you mean "steps"?'

echo "== 2. a tokenizer tandem cannot use beside the shards"
cp -r data wp
rm wp/manifest.json # shards from another tool, with its tokenizer (no manifest to compare)
cat > wp/tokenizer.json <<'TOK'
{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
 "normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"},
 "post_processor": null, "decoder": {"type": "WordPiece", "prefix": "##"},
 "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
           "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}}
TOK
DATA=wp job wordpiece 2
expect "WordPiece tokenizer.json" 2 'wp/tokenizer.json: the tokenizer beside the training shards cannot be used' \
    "$TANDEM" train wordpiece.json
[ ! -d wordpiece ] || ! ls wordpiece/step_* > /dev/null 2>&1 || { echo "FAIL: a checkpoint was written"; fail=1; }
expect "WordPiece under mpirun -np 2" 2 'the tokenizer beside the training shards cannot be used' \
    mpirun -np 2 "$TANDEM" train wordpiece.json
once_per_job 'the tokenizer beside the training shards cannot be used'

echo "== 2b. shards checked against manifest.json"
cp -r data dm
DATA=dm job manifest 2
expect "intact data: sizes and tokenizer checked" 0 'match manifest.json (sizes;' "$TANDEM" train manifest.json
rm -rf manifest
off=$(($(stat -c %s dm/train_000000.bin) / 2))
printf '\377' | dd of=dm/train_000000.bin bs=1 seek=$off conv=notrunc status=none
expect "a changed shard byte, --verify-data" 2 'dm/train_000000.bin: the shard does not match its sha256' \
    "$TANDEM" train manifest.json --verify-data
cp data/train_000000.bin dm/ && truncate -s -2 dm/train_000000.bin
expect "a truncated shard" 2 'manifest.json lists' "$TANDEM" train manifest.json
cp data/train_000000.bin dm/ && cp data/val_000000.bin dm/stray.bin
expect "a .bin the manifest does not list" 2 'dm/stray.bin is not listed in dm/manifest.json' \
    "$TANDEM" train manifest.json
rm dm/stray.bin && cp data/tokenizer.json dm/tokenizer.json && sed -i 's/"<|endoftext|>"/"<|end|>"/' dm/tokenizer.json
expect "a swapped tokenizer" 2 'the tokenizer does not match its sha256' "$TANDEM" train manifest.json

echo "== 3. checksums"
job sums 4 && sed -i 's/"every": 100000/"every": 2/' sums.json
"$TANDEM" train sums.json --quiet 2> /dev/null
(cd sums/step_00000004 && sha256sum -c --quiet SHA256SUMS) && echo "PASS sha256sum -c SHA256SUMS: $(wc -l < sums/step_00000004/SHA256SUMS) files" ||
    { echo "FAIL sha256sum -c"; fail=1; }
cp -r sums sums_flip
CK=sums_flip/step_00000004/model.safetensors
off=$(($(stat -c %s $CK) - 100))
byte=$(od -An -tu1 -j $off -N1 $CK | tr -d ' ')
printf "$(printf '\\%03o' $((byte ^ 1)))" | dd of=$CK bs=1 seek=$off conv=notrunc status=none
echo "   flipped bit 0 of byte $off of $CK ($byte -> $((byte ^ 1)))"
sed -i 's/"dir": "sums"/"dir": "sums_flip"/; s/"steps": 4/"steps": 6/' sums.json
expect "flipped bit: --resume refused" 2 'model.safetensors does not match its sha256 in SHA256SUMS' \
    "$TANDEM" train sums.json --resume
expect "flipped bit: serve refused" 2 'model.safetensors does not match its sha256 in SHA256SUMS' \
    "$TANDEM" serve --model sums_flip/step_00000004 --dry-run
expect "flipped bit: generate refused" 2 'model.safetensors does not match its sha256' \
    "$TANDEM" generate --model sums_flip/step_00000004 --prompt "A" --max-new-tokens 2
expect "flipped bit: --resume under mpirun -np 2 refused" 2 'does not match its sha256' \
    mpirun -np 2 "$TANDEM" train sums.json --resume
once_per_job 'does not match its sha256'
expect "--no-verify loads it and says so" 0 'checksums not verified (--no-verify)' \
    "$TANDEM" train sums.json --resume --no-verify
expect "an intact checkpoint is verified" 0 'files match SHA256SUMS' \
    "$TANDEM" generate --model sums/step_00000004 --prompt "A" --max-new-tokens 2

echo "== 4. SIGTERM and SIGUSR1: finish the step, save it, resume exactly"
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"step": \([0-9]*\), "loss": \([0-9.]*\).*/\1 \2/'; }
# stop_run NAME SIGNAL LAUNCH...: starts the run, signals the launcher once 30 steps are done
stop_run() {
    local name=$1 sig=$2
    shift 2
    job "$name" 100000
    "$@" train "$name.json" --quiet > "$name.out" 2> "$name.err" &
    local pid=$!
    for _ in $(seq 300); do
        [ -f "$name/metrics.jsonl" ] && [ "$(grep -c '"loss"' "$name/metrics.jsonl")" -ge 30 ] && break
        sleep 0.05
    done
    kill -"$sig" $pid
    local rc=0
    wait $pid || rc=$?
    local n
    n=$(grep -c '"loss"' "$name/metrics.jsonl")
    echo "   $name: $* stopped by SIG$sig after step $n, exit $rc: $(grep -h 'stopped by a signal' "$name.err" | cut -c1-160)"
    if ! ls "$name/step_$(printf %08d "$n")/SHA256SUMS" > /dev/null 2>&1; then
        echo "FAIL $name: no checkpoint of step $n"; ls "$name"; fail=1; return
    fi
    grep -q "stopped by a signal after step $n; checkpoint" "$name.err" || { echo "FAIL $name: no line saying so"; fail=1; }
    [ "$LAUNCH_RC_MUST_BE_0" = 0 ] || [ "$rc" = 0 ] || { echo "FAIL $name: exit $rc"; fail=1; }
    # resume to n + 10 steps; the uninterrupted reference runs to the same step
    "$@" train "$name.json" --quiet --resume --stop-at $((n + 10)) > /dev/null 2>&1
    job "${name}_ref" 100000
    "$@" train "${name}_ref.json" --quiet --stop-at $((n + 10)) > /dev/null 2>&1
    if [ "$(losses "$name")" = "$(losses "${name}_ref")" ] && [ "$(losses "$name" | wc -l)" = $((n + 10)) ]; then
        echo "PASS $name: steps 1-$((n + 10)) identical to the uninterrupted run (last $(losses "$name" | tail -1))"
    else
        echo "FAIL $name: resumed losses differ from the uninterrupted run"
        diff <(losses "$name") <(losses "${name}_ref") | head -5
        fail=1
    fi
}
LAUNCH_RC_MUST_BE_0=1 stop_run term1 TERM "$TANDEM"
LAUNCH_RC_MUST_BE_0=1 stop_run usr1mpi USR1 mpirun -np 2 "$TANDEM"
# mpirun answers SIGTERM by signalling the ranks and killing them a second later; the ranks
# save within that second, mpirun's own exit code reports the termination
LAUNCH_RC_MUST_BE_0=0 stop_run termmpi TERM mpirun -np 2 "$TANDEM"
exit $fail
