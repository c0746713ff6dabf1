#!/usr/bin/env bash
# Fuzzes the data pipeline with libFuzzer + ASan/LSan + UBSan.
#
# Usage: scripts/fuzz.sh [SECONDS]
#   SECONDS  how long each target runs (default: $SECONDS_PER_TARGET, else 60)
#
# Targets (tests/fuzz/):
#   fuzz_tokenizer  decode(encode(x)) == x with the fixture tokenizer, pre-token split covers
#                   the input; first byte 0 => the rest is fed to td_bpe_from_json
#   fuzz_clean      td_clean_doc (default rules) + td_dedup_signature on the kept text
#   fuzz_gateway    HTTP request bodies of the generation routes (td_gateway_check_request)
#                   and ZeroMQ frames through the protobuf-c Envelope decoder (td_wire_decode)
#   fuzz_control    the coordinator's control requests (td_control_decode): refused with a
#                   message, or a request with its fields in range that decodes again
#
# Needs clang with the libFuzzer runtime (Debian: clang-14, libclang-rt-14-dev), libutf8proc,
# libcjson, zlib, python3 (to seed the corpora); fuzz_gateway also libmicrohttpd, libzmq,
# protobuf-c and protoc-c (fuzz_control: libzmq, protobuf-c and protoc-c). Everything goes under build-fuzz/:
#   build-fuzz/fuzz_NAME            the fuzzer binaries
#   build-fuzz/corpus-NAME/         the corpus (seeded each run, grows across runs)
#   build-fuzz/artifacts-NAME/      crash-*, leak-*, timeout-*, oom-* reproducers
#   build-fuzz/NAME.log             libFuzzer's output
# Reproduce a finding: build-fuzz/fuzz_NAME build-fuzz/artifacts-NAME/crash-...
# (run from the repository root; fuzz_tokenizer also reads $TD_FUZZ_TOKENIZER).
# Environment: CC (default clang), SECONDS_PER_TARGET, TARGETS (default "tokenizer clean gateway
# control").
# The targets run one after the other, one process each.
# Exit status: 0 when every target ran clean, 1 on a finding, 2 when the build fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECS="${1:-${SECONDS_PER_TARGET:-60}}"
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS]" >&2
    exit 2
fi
CC="${CC:-clang}"
TARGETS="${TARGETS:-tokenizer clean gateway control}"
OUT="$ROOT/build-fuzz"
mkdir -p "$OUT"

# ---------------------------------------------------------------------------------------
# build: the sources are compiled directly (no CMake: the fuzzers need neither MPI nor BLAS,
# so data/prep.c, data/loader.c and data/shard.c are left out)
# shellcheck disable=SC2054 # the commas belong to -fsanitize=
CFLAGS=(-std=c11 -D_GNU_SOURCE -I"$ROOT" -Wall -Wextra -g -O1
        -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer)
COMMON=(common/*.c)
LIBS=(-lutf8proc -lcjson -lz -lm)
# the gateway target needs the generated protobuf-c sources
mkdir -p "$OUT/proto"
if [[ " $TARGETS " == *" gateway "* || " $TARGETS " == *" control "* ]]; then
    protoc-c --c_out="$OUT/proto" -I"$ROOT/proto" "$ROOT/proto/tandem.proto" || exit 2
    CFLAGS+=(-I"$OUT/proto")
fi
declare -A SRCS=(
    [tokenizer]="data/bpe.c data/pretok.c"
    [clean]="data/clean.c data/dedup.c"
    [gateway]="coordinator/gateway.c proto/wire.c $OUT/proto/tandem.pb-c.c"
    [control]="coordinator/control.c proto/wire.c $OUT/proto/tandem.pb-c.c"
)
declare -A XLIBS=([gateway]="-lmicrohttpd -lzmq -lprotobuf-c -lpthread"
                  [control]="-lzmq -lprotobuf-c -lpthread")
for t in $TARGETS; do
    [ -n "${SRCS[$t]:-}" ] || { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
    echo "building build-fuzz/fuzz_$t"
    # shellcheck disable=SC2086
    if ! "$CC" "${CFLAGS[@]}" -o "$OUT/fuzz_$t" "tests/fuzz/fuzz_$t.c" ${SRCS[$t]} \
        "${COMMON[@]}" "${LIBS[@]}" ${XLIBS[$t]:-}; then
        echo "fuzz.sh: build of fuzz_$t failed" >&2
        exit 2
    fi
done

# ---------------------------------------------------------------------------------------
# seed corpora: the tokenizer fixture's case texts, a few fortunes, and (tokenizer only) a
# small tokenizer.json behind a 0 byte plus a dictionary of tokenizer.json keys
CASES="tests/reference/fixtures/tokenizer/cases.json"
if command -v python3 > /dev/null; then
    # shellcheck disable=SC2086 # one argument per target
    python3 - "$OUT" "$CASES" $TARGETS << 'EOF'
import json, os, sys

out, cases_path, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
seeds = []
try:
    with open(cases_path, encoding="utf-8") as f:
        seeds += [c["text"].encode("utf-8") for c in json.load(f)]
except OSError as e:
    print(f"fuzz.sh: no case texts ({e})", file=sys.stderr)
for name in ("fortunes", "chinese", "tang300"):
    try:
        with open(f"/usr/share/games/fortunes/{name}", "rb") as f:
            text = f.read(200000)
    except OSError:
        continue
    for piece in text.split(b"\n%\n")[:8]:
        if piece.strip():
            seeds.append(piece[:4000])

# GPT-2 byte <-> code point map, for a small valid tokenizer.json
keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
b2u, n = {}, 0
for b in range(256):
    if b in keep:
        b2u[b] = chr(b)
    else:
        b2u[b] = chr(256 + n)
        n += 1
m = lambda bs: "".join(b2u[b] for b in bs)
vocab = {m(bytes([b])): b for b in range(256)}
merges = []
for a, b in [(b"h", b"e"), (b"l", b"l"), (b"he", b"ll"), (b" ", b"w"), (b"o", b"r"),
             (b" w", b"or"), (b"hell", b"o")]:
    merges.append(f"{m(a)} {m(b)}")
    vocab[m(a + b)] = len(vocab)
tok = {"version": "1.0", "truncation": None, "padding": None,
       "added_tokens": [{"id": len(vocab), "content": "<|endoftext|>", "special": True}],
       "normalizer": None,
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
       "decoder": {"type": "ByteLevel"},
       "model": {"type": "BPE", "ignore_merges": False, "vocab": vocab, "merges": merges}}
tok_json = json.dumps(tok, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
tok2 = dict(tok, model=dict(tok["model"], ignore_merges=True,
                            merges=[m.split(" ") for m in merges]))
tok2_json = json.dumps(tok2, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

for t in targets:
    d = os.path.join(out, f"corpus-{t}")
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:03d}"), "wb") as f:
            f.write(s)
    if t == "gateway":
        bodies = [
            {"model": "m", "prompt": "hello", "max_tokens": 8, "temperature": 0.5, "top_p": 0.9,
             "top_k": 4, "seed": 3, "stop": ["\n", "x"], "stream": True,
             "stream_options": {"include_usage": True}, "ignore_eos": False, "n": 1},
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            {"model": "m", "prompt": "hi", "options": {"num_predict": -1, "temperature": 0,
                                                        "stop": "q", "seed": 1}},
            {"model": "m", "messages": [{"role": "system", "content": "s"}], "stream": False},
        ]
        for i, b in enumerate(bodies):
            for r in range(4):
                with open(os.path.join(d, f"seed-body-{i}-{r}"), "wb") as f:
                    f.write(bytes([r]) + json.dumps(b).encode("utf-8"))
    if t == "control":
        # Envelopes by hand (protobuf wire format): JobSubmit (field 8), JobCancel (9),
        # JobList (10), each as the coordinator's clients send them
        def varint(v):
            b = bytearray()
            while True:
                b.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
                v >>= 7
                if not v:
                    return bytes(b)
        def field(num, wire, payload):
            head = varint(num << 3 | wire)
            return head + (varint(len(payload)) + payload if wire == 2 else payload)
        sub = (field(1, 2, b"train") + field(2, 2, b"/srv/jobs/job.json") + field(3, 2, b"/srv/jobs")
               + field(4, 0, varint(2)) + field(5, 0, varint(3))
               + field(6, 1, b"\0\0\0\0\0\0\x4e\x40") + field(7, 0, varint(2)))
        msgs = [field(8, 2, sub), field(9, 2, field(1, 0, varint(7))), field(10, 2, b""),
                field(10, 2, field(1, 0, varint(1)))]
        for i, m in enumerate(msgs):
            with open(os.path.join(d, f"seed-control-{i}"), "wb") as f:
                f.write(m)
    if t == "tokenizer":
        for i, js in enumerate((tok_json, tok2_json)):
            with open(os.path.join(d, f"seed-json-{i}"), "wb") as f:
                f.write(b"\0" + js)
        words = ["model", "type", "BPE", "vocab", "merges", "added_tokens", "id", "content",
                 "pre_tokenizer", "ByteLevel", "use_regex", "add_prefix_space", "normalizer",
                 "ignore_merges", "<|endoftext|>"]
        with open(os.path.join(out, "tokenizer.dict"), "w") as f:
            for w in words:
                f.write('"\\"%s\\""\n' % w)
            for w in ["true", "false", "null", "{", "}", "[", "]", ":", ",", "-1",
                      "1e10", "16777216", "\\u0120", "\\u0100"]:
                f.write('"%s"\n' % w.replace("\\", "\\\\").replace('"', '\\"'))
EOF
else
    echo "fuzz.sh: python3 not found; the corpora start empty" >&2
fi

# ---------------------------------------------------------------------------------------
# run, one target after the other
FIXTURE="$ROOT/tests/reference/fixtures/tokenizer/tokenizer.json"
export TD_FUZZ_TOKENIZER="${TD_FUZZ_TOKENIZER:-$FIXTURE}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
status=0
summary=()
for t in $TARGETS; do
    corpus="$OUT/corpus-$t"
    art="$OUT/artifacts-$t"
    log="$OUT/$t.log"
    mkdir -p "$corpus" "$art"
    extra=()
    [ "$t" = tokenizer ] && [ -f "$OUT/tokenizer.dict" ] && extra+=(-dict="$OUT/tokenizer.dict")
    echo "running fuzz_$t for ${SECS}s (log: build-fuzz/$t.log)"
    before=$(find "$art" -type f | wc -l)
    rc=0
    "$OUT/fuzz_$t" "$corpus" -max_len=4096 -max_total_time="$SECS" -timeout=30 \
        -print_final_stats=1 -artifact_prefix="$art/" "${extra[@]}" > "$log" 2>&1 || rc=$?
    after=$(find "$art" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[^ ]*\).*/\1/p' <<< "$last")
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        found="found (exit $rc; see build-fuzz/$t.log"
        # shellcheck disable=SC2012 # artifact names are hex digests
        newest=$(ls -t "$art" 2> /dev/null | head -n 1)
        [ -n "$newest" ] && found+=", reproducer build-fuzz/artifacts-$t/$newest"
        found+=")"
        status=1
    else
        found="none"
    fi
    line="fuzz_$t: ${SECS}s, executions ${execs:-?}, coverage ${cov:-?} edges"
    line+=" (${ft:-?} features, corpus ${corp:-?}), crashes: $found"
    summary+=("$line")
    echo "$line"
    if [ "$found" != none ]; then
        grep -E 'ERROR: |SUMMARY: |runtime error|fuzz_(tokenizer|clean): ' "$log" |
            head -n 8 | sed 's/^/    /' || true
    fi
done
echo "---"
printf '%s\n' "${summary[@]}"
exit $status
