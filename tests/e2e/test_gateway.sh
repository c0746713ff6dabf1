#!/usr/bin/env bash
# The HTTP gateway (ctest label e2e), on a small llama trained here, served with
# `tandem serve --http` (router and gateway in-process) and an API key:
#   1. the official openai and ollama Python clients (tests/e2e/gateway_clients.py):
#      completions and chat, streaming and not (streamed text = non-streamed text for the
#      same seed), model listings, errors
#   2. bad input, each with its status code and a JSON error body, the gateway still
#      serving afterwards: malformed JSON, missing model, unknown model (404), prompt longer
#      than the context (400 with the limits), negative and absurd max_tokens, wrong types,
#      a 10 MB body (413), invalid UTF-8, missing and wrong API key (401), unknown route
#      (404), wrong method (405); /metrics counts them
# Usage: test_gateway.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
PY="$HERE/../../.venv/bin/python"
[ -x "$PY" ] && "$PY" -c 'import openai, ollama' 2> /dev/null || {
    echo "FAIL: the openai and ollama clients are missing: run scripts/install-deps.sh --clients"
    exit 1
}
W=$(mktemp -d)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2> /dev/null; wait 2> /dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
export OMP_NUM_THREADS=1
CORPUS=/usr/share/games/fortunes/fortunes
"$TANDEM" prep --out data --quiet --vocab-size 512 --delimiter % --val-fraction 0.05 "$CORPUS"
cat > job.json <<'JOB'
{"model": {"arch": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 512,
           "max_position_embeddings": 128},
 "data": {"train": "data", "seq_len": 64},
 "train": {"batch_size": 8, "steps": 120, "lr": 5e-3, "warmup": 10, "seed": 2},
 "checkpoint": {"dir": "run", "every": 120, "keep": 1}}
JOB
"$TANDEM" train job.json --quiet 2> /dev/null
KEY=test-key-123
"$TANDEM" serve --model run/step_00000120 --name tiny --http 127.0.0.1:0 --api-key $KEY 2> serve.log &
SRV=$!
for _ in $(seq 100); do grep -q "listening on http" serve.log && break; sleep 0.1; done
BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' serve.log)
for _ in $(seq 100); do curl -s $BASE/health | grep -q '"replicas":1' && break; sleep 0.1; done
fail=0
echo "== official clients against $BASE"
"$PY" "$HERE/gateway_clients.py" --base "$BASE" --model tiny --api-key $KEY || fail=1

echo "== bad input"
AUTH="Authorization: Bearer $KEY"
# check NAME WANT_STATUS WANT_IN_BODY PATH [curl args...]
check() {
    local name=$1 want=$2 needle=$3 path=$4
    shift 4
    local code
    code=$(curl -s -o body.json -w '%{http_code}' "$@" "$BASE$path")
    if [ "$code" = "$want" ] && grep -q '"error"' body.json && grep -q -- "$needle" body.json; then
        echo "PASS $name: $code $(head -c 160 body.json)"
    else
        echo "FAIL $name: got $code, want $want with '$needle': $(head -c 300 body.json)"
        fail=1
    fi
}
J=(-H "$AUTH" -H "Content-Type: application/json" --data-binary)
check malformed_json 400 "malformed JSON" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": '
check missing_model 400 "missing field 'model'" /v1/completions "${J[@]}" '{"prompt": "hi"}'
check unknown_model 404 "not found" /v1/completions "${J[@]}" '{"model": "nope", "prompt": "hi"}'
python3 -c 'print("{\"model\": \"tiny\", \"prompt\": \"" + "the cat sat on the mat " * 200 + "\"}")' > long.json
check prompt_too_long 400 "context is 128 tokens" /v1/completions "${J[@]}" @long.json
check negative_max_tokens 400 "max_tokens" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": "hi", "max_tokens": -3}'
check absurd_max_tokens 400 "max_tokens" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": "hi", "max_tokens": 1000000000000}'
check wrong_type_prompt 400 "'prompt' must be a string" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": 5}'
check wrong_type_temperature 400 "temperature" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": "hi", "temperature": "hot"}'
check wrong_type_messages 400 "messages" /v1/chat/completions "${J[@]}" '{"model": "tiny", "messages": "hi"}'
head -c 10000000 /dev/zero | tr '\0' 'a' > big.txt
check body_10MB 413 "exceeds the limit" /v1/completions "${J[@]}" @big.txt
printf '{"model": "tiny", "prompt": "caf\xc3 \xff"}' > badutf8.json
check invalid_utf8 400 "not valid UTF-8" /v1/completions "${J[@]}" @badutf8.json
check no_api_key 401 "API key" /v1/models
check wrong_api_key 401 "API key" /v1/models -H "Authorization: Bearer wrong"
check ollama_bad_json 400 "malformed JSON" /api/generate "${J[@]}" '{"model":'
check ollama_bad_num_predict 400 "num_predict" /api/generate "${J[@]}" '{"model": "tiny", "prompt": "hi", "options": {"num_predict": -7}}'
check trailing_garbage 400 "unexpected data after the JSON object" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": "hi"} {"x": 1}'
check bad_role 400 "is not one of system, developer, user, assistant" /v1/chat/completions "${J[@]}" '{"model": "tiny", "messages": [{"role": "root", "content": "hi"}]}'
check logprobs_refused 400 "'logprobs' is not supported" /v1/completions "${J[@]}" '{"model": "tiny", "prompt": "hi", "logprobs": 2}'
check chat_logprobs_refused 400 "'logprobs' is not supported" /v1/chat/completions "${J[@]}" '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}'
check top_logprobs_refused 400 "'top_logprobs' is not supported" /v1/chat/completions "${J[@]}" '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}'
check metrics_needs_key 401 "API key" /metrics
check version_needs_key 401 "API key" /api/version
code=$(curl -s -o /dev/null -w '%{http_code}' $BASE/health)
[ "$code" = 200 ] && echo "PASS health_without_key: 200" || { echo "FAIL health_without_key: $code"; fail=1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: bearer   $KEY  " $BASE/v1/models)
[ "$code" = 200 ] && echo "PASS lowercase_bearer: 200" || { echo "FAIL lowercase_bearer: $code"; fail=1; }
# a client that sends its whole body before reading (Python's http.client) sees the 413
# (and a 401 the same way: the key is checked from the headers, the body still read)
python3 - "$BASE" "$KEY" <<'PY' && echo "PASS 413_and_401_drained: http.client reads both" || { echo "FAIL 413_and_401_drained"; fail=1; }
import http.client, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
for key, want in ((sys.argv[2], 413), ("wrong", 401)):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request("POST", "/v1/completions", body=b"x" * (3 << 20),
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    r = c.getresponse()
    print("   ", r.status, r.read()[:80])
    if r.status != want:
        sys.exit(1)
PY
check unknown_route 404 "no such route" /v1/nothing -H "$AUTH"
check wrong_method 405 "method" /v1/completions -H "$AUTH"
# accepted shapes that once broke: chat with ignore_eos (an EOT first token has no text),
# content as a list of text parts
ok200() {
    local name=$1 path=$2 body=$3 code
    code=$(curl -s -o ok.json -w '%{http_code}' "${J[@]}" "$body" $BASE$path || true)
    if [ "$code" = 200 ]; then echo "PASS $name: 200"; else echo "FAIL $name: $code $(cat ok.json)"; fail=1; fi
}
for seed in 1 2 3 4 5 6 7 8; do
    ok200 chat_ignore_eos_seed$seed /v1/chat/completions "{\"model\": \"tiny\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"ignore_eos\": true, \"max_tokens\": 4, \"seed\": $seed}"
done
ok200 chat_content_parts /v1/chat/completions '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": " a fortune."}]}], "max_tokens": 4}'
code=$(curl -s -o ok.json -w '%{http_code}' "${J[@]}" '{"model": "tiny", "prompt": "A fool", "max_tokens": 5, "temperature": 0}' $BASE/v1/completions)
if [ "$code" = 200 ] && grep -q '"finish_reason"' ok.json; then
    echo "PASS still_serving: 200 $(head -c 120 ok.json)"
else
    echo "FAIL still_serving: $code $(cat ok.json)"; fail=1
fi
curl -s -H "$AUTH" $BASE/metrics > metrics.txt
n400=$(awk '$1 == "tandem_requests_total{route=\"/v1/completions\",code=\"400\"}" { print $2 }' metrics.txt)
echo "metrics: /v1/completions answered 400 ${n400:-0} times; $(grep -c '^tandem_' metrics.txt) sample lines"
[ "${n400:-0}" -ge 8 ] || { echo "FAIL: /metrics does not count the 400s"; fail=1; }
grep -q '^tandem_ttft_seconds_bucket' metrics.txt || { echo "FAIL: no TTFT histogram"; fail=1; }
kill $SRV
wait $SRV 2> /dev/null || true
SRV=

echo "== chat template stored with the checkpoint"
grep -q '"chat_template":' run/step_00000120/tokenizer_config.json \
    && echo "PASS tokenizer_config.json holds the chat template" \
    || { echo "FAIL: no chat_template in tokenizer_config.json"; fail=1; }
cp -r run/step_00000120 other
python3 - other/tokenizer_config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["chat_template"] = "{{ messages[0]['content'] }}"
json.dump(c, open(sys.argv[1], "w"))
PY
# a file edited on purpose: its new sha256 goes into SHA256SUMS (docs/formats.md)
(cd other && sha256sum $(awk '{ print $2 }' SHA256SUMS) > SHA256SUMS.new && mv SHA256SUMS.new SHA256SUMS)
TANDEM_API_KEY=env-key "$TANDEM" serve --model other --http 127.0.0.1:0 2> serve2.log &
SRV=$!
for _ in $(seq 100); do grep -q "listening on http" serve2.log && break; sleep 0.1; done
BASE=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' serve2.log)
for _ in $(seq 100); do curl -s $BASE/health | grep -q '"replicas":1' && break; sleep 0.1; done
check env_key_required 401 "API key" /v1/models
AUTH="Authorization: Bearer env-key" # TANDEM_API_KEY, as --api-key
J=(-H "$AUTH" -H "Content-Type: application/json" --data-binary)
check chat_template_not_chatml 400 "not ChatML" /v1/chat/completions "${J[@]}" '{"model": "other", "messages": [{"role": "user", "content": "hi"}]}'
if "$TANDEM" gateway --max-body -1 2> /dev/null; then echo "FAIL: --max-body -1 accepted"; fail=1; fi
[ $fail -eq 0 ] && echo "test_gateway: passed"
exit $fail
