#!/usr/bin/env bash
# tandem select end to end on a throwaway corpus and model (ctest label e2e):
#   1. --by middle: the kept documents are those nearest the median loss (recomputed from
#      selection.jsonl), their tokens reach the fraction (and one document less would not),
#      the train shard is exactly the kept documents in corpus order, the validation shard
#      and tokenizer are byte-identical, and tandem train accepts the directory
#   2. near-duplicates planted in the corpus (three edited copies of one document) are
#      found and not kept twice
#   3. --by random: the same seed keeps the same documents, another seed others
#   4. bad input: exit 2, a message, no output directory (nor a temporary one) left
# Usage: test_select.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 64
fail=0
check() {
    local label=$1
    shift
    if "$@"; then echo "ok: $label"; else
        echo "FAIL: $label"
        fail=1
    fi
}
# a corpus with planted near-duplicates: one fortune three more times, a word changed in each
python3 - << 'EOF'
docs = open("/usr/share/games/fortunes/fortunes", encoding="utf-8", errors="replace").read().split("\n%\n")
base = "The quick brown fox jumps over the lazy dog while the cat watches from the old wooden fence near the river bank at dawn."
out = docs[:300] + [base] + docs[300:] + [base.replace("quick", "swift"), base.replace("lazy", "sleepy"), base.replace("dawn", "dusk")]
open("corpus.txt", "w").write("\n%\n".join(out))
EOF
"$TANDEM" prep --out dup --quiet --tokenizer data/tokenizer.json --near-threshold 0 \
    --delimiter % --val-fraction 0.05 corpus.txt
"$TANDEM" select --data dup --model "$TINY_CK" --keep-fraction 0.3 --out mid > mid.txt 2> /dev/null
cat mid.txt
python3 - << 'EOF' || fail=1
import json, struct
def shard(p):
    b = open(p, "rb").read()
    h = struct.unpack("<256i", b[:1024])
    w = 2 if h[0] == 20240520 else 4
    return list(struct.unpack("<%d%s" % (h[2], "H" if w == 2 else "I"), b[1024:]))
src, kept = shard("dup/train_000000.bin"), shard("mid/train_000000.bin")
rows = [json.loads(l) for l in open("mid/selection.jsonl")]
# documents in corpus order: their tokens end with <|endoftext|>
docs, at = [], 0
for r in rows:
    docs.append(src[at:at + r["tokens"]]); at += r["tokens"]
assert at == len(src), (at, len(src))
want = [t for r, d in zip(rows, docs) if r["kept"] for t in d]
assert want == kept, "the train shard is not the kept documents in corpus order"
losses = sorted(r["loss"] for r in rows if r["loss"] is not None)
n = len(losses)
med = losses[n // 2] if n % 2 else (losses[n // 2 - 1] + losses[n // 2]) / 2
cand = [r for r in rows if not r["near_duplicate"]]
cand.sort(key=lambda r: abs(r["loss"] - med))
total = sum(r["tokens"] for r in rows)
goal, got, expect = 0.3 * total, 0, set()
for r in cand:
    if got >= goal: break
    expect.add(r["doc"]); got += r["tokens"]
kept_docs = {r["doc"] for r in rows if r["kept"]}
assert kept_docs == expect, "kept documents are not those nearest the median"
ktok = sum(r["tokens"] for r in rows if r["kept"])
last = max((r for r in rows if r["kept"]), key=lambda r: abs(r["loss"] - med))
assert ktok >= goal and ktok - last["tokens"] < goal, (ktok, goal)
dups = [r["doc"] for r in rows if r["near_duplicate"]]
m = json.load(open("mid/manifest.json"))["selection"]
print("middle rule: %d of %d documents kept, %d of %d tokens (%.1f%%); near-duplicates %s"
      % (len(kept_docs), len(rows), ktok, total, 100.0 * ktok / total, dups))
assert m["documents_kept"] == len(kept_docs) and m["tokens_kept"] == ktok
# the planted copies are the corpus's last three documents (prep keeps the order; these
# fell in the train split): flagged, and none of them kept
n = len(rows)
assert {n - 3, n - 2, n - 1} <= set(dups), dups
assert not any(rows[i]["kept"] for i in (n - 3, n - 2, n - 1))
print("ok: the planted near-duplicates are flagged and not kept")
EOF
check "validation shard unchanged" cmp -s dup/val_000000.bin mid/val_000000.bin
check "tokenizer unchanged" cmp -s dup/tokenizer.json mid/tokenizer.json
sed 's/"train": "data"/"train": "mid"/; s/"dir": "run"/"dir": "midrun"/' job.json > mj.json
check "tandem train takes the selected corpus" "$TANDEM" train mj.json --quiet 2> /dev/null
check "the model's lineage records the selection" python3 -c "
import json
d = json.load(open('midrun/step_00000002/trainer_state.json'))['lineage']['data']['selection']
assert d['by'] == 'middle' and d['keep_fraction'] == 0.3 and d['model'] == '$TINY_CK', d"

# 3. random
"$TANDEM" select --data dup --by random --seed 4 --keep-fraction 0.25 --out r1 --quiet
"$TANDEM" select --data dup --by random --seed 4 --keep-fraction 0.25 --out r2 --quiet
"$TANDEM" select --data dup --by random --seed 5 --keep-fraction 0.25 --out r3 --quiet
check "random: same seed, same documents" cmp -s r1/train_000000.bin r2/train_000000.bin
check "random: another seed, other documents" bash -c '! cmp -s r1/train_000000.bin r3/train_000000.bin'

# 4. bad input
bad() { # label message args...
    local label=$1 msg=$2 rc=0
    shift 2
    "$TANDEM" select --out badout "$@" > /dev/null 2> err.txt || rc=$?
    echo "bad input ($label): exit $rc: $(grep -v '^checkpoint' err.txt | head -1 | cut -c1-140)"
    check "$label: exit 2, nothing left" test $rc -eq 2 -a ! -e badout \
        -a "$(ls -d badout.tmp-* 2> /dev/null | wc -l)" -eq 0 -a "$(grep -c -- "$msg" err.txt)" -ge 1
}
bad "fraction 0" "needs a share in (0, 1]" --data dup --model "$TINY_CK" --keep-fraction 0
bad "fraction 1.5" "needs a share in (0, 1]" --data dup --model "$TINY_CK" --keep-fraction 1.5
bad "no model" "and --model" --data dup --keep-fraction 0.5
bad "unknown rule" "is not one of middle" --data dup --by best --keep-fraction 0.5
bad "missing data" "nothere" --data nothere --model "$TINY_CK" --keep-fraction 0.5
"$TANDEM" prep --out other --quiet --vocab-size 280 --delimiter % --val-fraction 0.05 corpus.txt
bad "model of another tokenizer" "has another tokenizer" --data other --model "$TINY_CK" \
    --keep-fraction 0.5
bad "--out in a missing directory" "does not exist" --data dup --by random --keep-fraction 0.5 \
    --out nodir/x
cp -r dup damaged
printf 'XXXX' | dd of=damaged/train_000000.bin bs=1 seek=3000 conv=notrunc 2> /dev/null
bad "a damaged shard" "train_000000.bin: the shard does not match its sha256" --data damaged --by random \
    --keep-fraction 0.5
mkdir badout
rc=0
"$TANDEM" select --data dup --by random --keep-fraction 0.5 --out badout 2> err.txt || rc=$?
check "an existing --out is refused" test $rc -eq 2 -a "$(ls badout | wc -l)" -eq 0
exit $fail
