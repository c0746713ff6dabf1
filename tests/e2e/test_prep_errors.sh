#!/usr/bin/env bash
# Corrupt or unusable input to `tandem prep` never crashes or silently loses data: each
# case exits non-zero with the path and the reason on stderr, or — where the documented
# rule is to skip — exits 0 and counts the skip in manifest.json.
# Usage: test_prep_errors.sh TANDEM_BINARY
set -uo pipefail
TANDEM=$(realpath "$1")
W=$(mktemp -d)
trap 'chmod -R u+rwx "$W" 2>/dev/null; rm -rf "$W"' EXIT
cd "$W"
pass=0 fail=0
ok() { pass=$((pass + 1)); printf '  ok    %s\n' "$1"; }
bad() { fail=$((fail + 1)); printf '  FAIL  %s\n' "$1"; }

# expect_fail LABEL WANT_RC PHRASE -- CMD...
expect_fail() {
    local label=$1 want=$2 phrase=$3
    shift 4
    "$@" > out.txt 2> err.txt
    local rc=$?
    if [ "$rc" -eq "$want" ] && grep -qF -- "$phrase" err.txt; then
        ok "$(printf '%-28s exit %d: %s' "$label" "$rc" "$(head -c 160 err.txt | tr '\n' ' ')")"
    else
        bad "$label: exit $rc (want $want and \"$phrase\"): $(head -c 300 err.txt)"
    fi
}

P=(--quiet --vocab-size 300 --min-chars 1)
good_text() { # 40 distinct documents of pseudo-random words (no near duplicates)
    awk 'BEGIN { srand(7); for (d = 0; d < 40; d++) { line = "";
        for (w = 0; w < 40; w++) { word = ""; n = 3 + int(rand() * 6);
            for (k = 0; k < n; k++) word = word sprintf("%c", 97 + int(rand() * 26));
            line = line word " " }
        print line; print "%" } }'
}
mkdir -p in && good_text > in/good.txt

# unreadable file: /proc/self/mem is a regular file whose read fails (EIO) even for root
expect_fail "unreadable file (EIO)" 1 "/proc/self/mem" -- "$TANDEM" prep --out o1 "${P[@]}" in /proc/self/mem
# unreadable file by permission, as an unprivileged user where possible
if command -v setpriv > /dev/null && [ "$(id -u)" -eq 0 ]; then
    mkdir -p perm && good_text > perm/a.txt && cp perm/a.txt perm/locked.txt && chmod 000 perm/locked.txt
    chmod 777 "$W" perm && mkdir -p o2 && chmod 777 o2
    expect_fail "unreadable file (mode 000)" 1 "locked.txt: Permission denied" -- \
        setpriv --reuid=65534 --regid=65534 --clear-groups "$TANDEM" prep --out o2 "${P[@]}" perm
    # output directory not writable
    mkdir -p ro && chmod 555 ro
    expect_fail "output dir not writable" 1 "is not writable" -- \
        setpriv --reuid=65534 --regid=65534 --clear-groups "$TANDEM" prep --out ro "${P[@]}" in
fi
# output path that cannot be a directory (also for root)
echo x > afile
expect_fail "output path is a file" 1 "afile" -- "$TANDEM" prep --out afile/sub "${P[@]}" in
# truncated gzip
good_text | gzip -c > whole.txt.gz
head -c $(( $(stat -c %s whole.txt.gz) / 2 )) whole.txt.gz > trunc.txt.gz
mkdir -p gz && mv trunc.txt.gz gz/
expect_fail "truncated gzip" 2 "trunc.txt.gz" -- "$TANDEM" prep --out o3 "${P[@]}" gz
# missing input
expect_fail "missing input" 2 "no_such_dir" -- "$TANDEM" prep --out o4 "${P[@]}" no_such_dir
# empty corpus: an empty file, and a corpus whose documents all fail the rules
mkdir -p empty && : > empty/nothing.txt
expect_fail "empty corpus" 2 "corpus is empty" -- "$TANDEM" prep --out o5 "${P[@]}" empty
mkdir -p junk && printf '12345 67890\n%%\n!!!! ????\n' > junk/j.txt
expect_fail "all documents dropped" 2 "corpus is empty" -- "$TANDEM" prep --out o6 --delimiter % "${P[@]}" junk
# bad option values
expect_fail "bad option value" 2 "--near-threshold" -- "$TANDEM" prep --out o7 --near-threshold 2 in
expect_fail "tokenizer file missing" 2 "nope.json" -- "$TANDEM" prep --out o8 --tokenizer nope.json in
echo '{"model": {"type": "WordPiece"}}' > wp.json
expect_fail "unsupported tokenizer" 2 "must be BPE" -- "$TANDEM" prep --out o9 --tokenizer wp.json in

# binary file: the documented rule skips it and counts it; nothing else is lost
mkdir -p bin && good_text > bin/text.txt && head -c 4096 /dev/urandom > bin/blob.dat && printf 'a\0b' >> bin/blob.dat
if "$TANDEM" prep --out ob --delimiter % "${P[@]}" bin 2> err.txt &&
   grep -q '"files_binary_skipped":[[:space:]]*1' ob/manifest.json &&
   grep -q '"documents_out":[[:space:]]*40' ob/manifest.json; then
    ok "binary file skipped and counted (files_binary_skipped 1, 40 documents kept)"
else
    bad "binary file: $(cat err.txt)"
fi
# --special reserves a token after the defaults (<|endoftext|> stays 256)
if "$TANDEM" prep --out osp --delimiter % "${P[@]}" --special '<|user|>' in 2> err.txt &&
   grep -q '"<|endoftext|>":256' osp/tokenizer.json && grep -q '"<|user|>":260' osp/tokenizer.json; then
    ok "--special reserves <|user|> as id 260"
else
    bad "--special: $(cat err.txt)"
fi
# a second prep into the same directory replaces the first one's shards (none left over)
"$TANDEM" prep --out again --delimiter % "${P[@]}" --shard-tokens 1024 in 2> /dev/null
"$TANDEM" prep --out again --delimiter % "${P[@]}" --shard-tokens 1000000 in 2> /dev/null
nb=$(ls again/*.bin | wc -l); nm=$(grep -c '"file":[[:space:]]*"[a-z]*_[0-9]*.bin"' again/manifest.json)
[ "$nb" -eq "$nm" ] && ok "re-run into the same --out: $nb shards on disk = $nm in the manifest" ||
    bad "re-run left $nb shards on disk, manifest lists $nm"
# a directory link cycle is walked once
mkdir -p cyc/sub && good_text > cyc/sub/t.txt && ln -s .. cyc/sub/up
"$TANDEM" prep --out ocyc --delimiter % "${P[@]}" cyc 2> err.txt &&
    grep -q '"documents_in":[[:space:]]*40' ocyc/manifest.json && ok "directory link cycle walked once (40 documents)" ||
    bad "directory cycle: $(cat err.txt)"
# blank CRLF lines in JSON Lines are not bad lines
mkdir -p jl && { good_text | awk '/^%$/ { next } { printf "{\"text\": \"%s\"}\r\n\r\n", $0 }'; } > jl/d.jsonl
"$TANDEM" prep --out ojl "${P[@]}" jl 2> err.txt &&
    grep -q '"bad_json_lines":[[:space:]]*0' ojl/manifest.json && ok "CRLF blank lines in JSONL are not bad lines" ||
    bad "CRLF JSONL: $(cat err.txt; grep bad_json ojl/manifest.json)"
echo "test_prep_errors: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
