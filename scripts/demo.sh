#!/usr/bin/env bash
# The main job on its embedded default: the fortunes corpus (Debian's fortunes and
# fortunes-zh) → `tandem prep` (clean, dedup, BPE) → a small llama trained from scratch
# with `mpirun -np 2 tandem train` → a sample.
# Prints the initial and final validation loss and fails if it did not fall by 40 %;
# then serves the model over HTTP and asks it one question (curl, OpenAI API).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
TANDEM="$BUILD/tandem"
DATA=demo-data/fortunes

# The fortunes folder as installed: binary index files (*.dat), *.u8 links duplicating
# files, escape sequences and overstrikes; prep's rules handle each (see the summary).
"$TANDEM" prep --delimiter % --vocab-size 2048 --val-fraction 0.05 --out "$DATA" \
    /usr/share/games/fortunes
rm -rf runs/demo
# data-parallel over 2 MPI ranks (one core each): the global batch of 16 splits 8 + 8
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
mpirun -np 2 "$TANDEM" train scripts/demo-job.json

first=$(grep '"step": 0,' runs/demo/metrics.jsonl | sed 's/.*"val_loss": \([0-9.]*\).*/\1/')
last=$(grep '"val_loss"' runs/demo/metrics.jsonl | tail -1 | sed 's/.*"val_loss": \([0-9.]*\).*/\1/')
drop=$(awk -v a="$first" -v b="$last" 'BEGIN { printf "%.1f", 100 * (a - b) / a }')
echo
echo "validation loss: initial $first -> final $last (fell by $drop %; the demo needs >= 40 %)"
echo
echo "sample (temperature 0.8, top-k 40):"
"$TANDEM" generate --model runs/demo/step_00000600 --prompt "The meaning of life is" \
    --max-new-tokens 300 --temperature 0.8 --top-k 40 --seed 7
awk -v d="$drop" 'BEGIN { exit !(d >= 40) }' || { echo "demo: validation loss fell by only $drop %" >&2; exit 1; }

# Serve the model over HTTP (router and gateway in-process) and ask it one question with
# the OpenAI API; then stop the server.
echo
echo "serving runs/demo/step_00000600 on http://127.0.0.1:8080 (OpenAI and Ollama APIs):"
"$TANDEM" serve --model runs/demo/step_00000600 --name demo --http 127.0.0.1:8080 \
    2> runs/demo/serve.log &
SERVER=$!
trap 'kill $SERVER 2> /dev/null || true' EXIT
for _ in $(seq 100); do
    curl -s http://127.0.0.1:8080/health 2> /dev/null | grep -q '"replicas":1' && break
    kill -0 $SERVER 2> /dev/null || { cat runs/demo/serve.log >&2; exit 1; }
    sleep 0.1
done
REQ='{"model": "demo", "prompt": "Q: What is the secret of a happy life?\nA:", "max_tokens": 60, "temperature": 0.7, "seed": 3}'
echo "\$ curl http://127.0.0.1:8080/v1/completions -d '$REQ'"
curl -s --fail-with-body http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' -d "$REQ"
echo
kill $SERVER
wait $SERVER 2> /dev/null || true

# Fine-tune: LoRA on a small chat task (scripts/skill_data.py: reverse a list of 3-5 letters;
# 2,000 conversations, 200 held out), the adapter merged into a full checkpoint (its lineage
# shown), then the base and the adapter served side by side by one replica behind one router
# and one gateway and asked the same questions (greedy exact match on held-out conversations
# through the serving engine).
echo
python3 scripts/skill_data.py demo-data/skill
rm -rf runs/demo-lora runs/demo-lora-merged
"$TANDEM" finetune scripts/demo-finetune.json
LORA=$(ls -d runs/demo-lora/step_* | tail -1)
"$TANDEM" merge "$LORA" --out runs/demo-lora-merged
"$TANDEM" show runs/demo-lora-merged
export TANDEM_KEYS=$PWD/runs/demo-keys
FRONT=tcp://127.0.0.1:5575 BACK=tcp://127.0.0.1:5576
"$TANDEM" router --front $FRONT --back $BACK 2> runs/demo/router.log &
PIDS=$!
trap 'kill $PIDS 2> /dev/null || true' EXIT
# one replica, one base in memory: the base and the adapter (unmerged) as two model names,
# their requests sharing the engine's steps
"$TANDEM" serve --model runs/demo/step_00000600 --name base --adapter reverse="$LORA" \
    --router $BACK 2> runs/demo/serve.log &
PIDS="$PIDS $!"
"$TANDEM" gateway --listen 127.0.0.1:8081 --router $FRONT 2> runs/demo/gateway.log &
PIDS="$PIDS $!"
for _ in $(seq 150); do
    models=$(curl -s http://127.0.0.1:8081/v1/models 2> /dev/null || true)
    grep -q '"base"' <<< "$models" && grep -q '"reverse"' <<< "$models" && break
    sleep 0.2
done
echo
echo "one gateway (http://127.0.0.1:8081), one replica, two models: base (pretrained) and reverse"
echo "(its LoRA adapter, served on the same base weights)"
for m in base reverse; do
    REQ="{\"model\": \"$m\", \"messages\": [{\"role\": \"user\", \"content\": \"Reverse:\\nd,e,m,o\"}], \"temperature\": 0, \"max_tokens\": 16}"
    echo "\$ curl http://127.0.0.1:8081/v1/chat/completions -d '$REQ'"
    curl -s --fail-with-body http://127.0.0.1:8081/v1/chat/completions -H 'Content-Type: application/json' -d "$REQ" |
        python3 -c 'import json, sys; print("  ->", repr(json.load(sys.stdin)["choices"][0]["message"]["content"]))'
done
echo
echo "held-out exact match (greedy, through the gateway):"
python3 scripts/skill_eval.py http://127.0.0.1:8081 demo-data/skill/val.jsonl base reverse
kill $PIDS 2> /dev/null || true
wait 2> /dev/null || true
