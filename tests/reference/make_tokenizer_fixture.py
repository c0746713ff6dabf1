#!/usr/bin/env python3
"""Generate the tokenizer fixture: a BPE tokenizer trained by tandem, and Hugging Face
`tokenizers`' encodings of a set of tricky strings with it.

Writes tests/reference/fixtures/tokenizer/:

  tokenizer.json  -- trained by tandem's td_bpe_train (vocab 2048) on the concatenation of
                     the Debian fortune files fortunes, chinese, tang300 (packages fortunes,
                     fortunes-zh), split into documents at "%" lines. The trainer is
                     tests/reference/train_tokenizer_fixture.c, compiled here with cc against
                     build/libtd_data.a and build/libtd_common.a (build those first:
                     cmake --build build --target td_data).
  cases.json      -- [{"text": ..., "ids": [...]}, ...]: tokenizers.Tokenizer.from_file(
                     tokenizer.json).encode(text, add_special_tokens=False).ids
  meta.json       -- versions (tokenizers, python), corpus files with sizes and sha256,
                     vocab size, case count

tests/unit/test_tokenizer.c checks that tandem encodes every case to exactly these ids.

Run: .venv/bin/python tests/reference/make_tokenizer_fixture.py [--no-train] [--build DIR]
  --no-train  keep the existing tokenizer.json and only recompute cases.json/meta.json
  --build     folder with libtd_data.a and libtd_common.a (default build/)

The script is deterministic: a second run writes byte-identical files.

Known difference kept out of the cases: code points first assigned in Unicode 15.0 (e.g.
CJK Extension H U+31350..U+323AF, Kawi U+11F00.., Nag Mundari U+1E4D0..) are letters or
numbers to utf8proc 2.8 (Unicode 15) but unassigned, hence "other", to the Oniguruma regex
inside tokenizers 0.20.3 (Unicode 14), so the two split text holding them differently.
Every other code point gets the same class (checked over all of U+0001..U+10FFFF).
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile

import tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "reference", "fixtures", "tokenizer")
FORTUNES = "/usr/share/games/fortunes"
CORPUS = [os.path.join(FORTUNES, n) for n in ("fortunes", "chinese", "tang300")]
VOCAB_SIZE = 2048
MAX_BYTES = 300 * 1024  # commit-sized; fall back to 1024 above this

C_CODE = (
    "#include <stdio.h>\n"
    "\n"
    "int main(int argc, char **argv) {\n"
    "\tfor (int i = 0; i < argc; i++) {\n"
    "\t\tif (argv[i][0] == '-' && i != 0) x += (i << 2) | 0x1f;\n"
    "\t\tprintf(\"%s\\n\", argv[i]);\n"
    "\t}\n"
    "\treturn a->b >= c && !d ? e[f] : ~g;\n"
    "}\n"
)
PY_CODE = (
    "def f(x: int, *args, **kw) -> list[int]:\n"
    "    if x <= 0 or x != 3:\n"
    "        return [i ** 2 for i in range(x)]  # squares\n"
    "    y = {'a': 1, \"b\": 2}\n"
    "    return x // 2 @ y\n"
)

CASES = [
    # --- English prose and contractions
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A day for firm decisions!!!!!  Or is it?",
    "I'm sure they'll say we don't know what it's worth.",
    "I'M SHOUTING, DON'T",
    "you're, we've, he'd, she'll",
    "the dog's bone; the dogs' bones",
    "!'s",
    "\"'s\" and ('s) and .'s",
    "''s '''",
    " 's",
    "'",
    "'re'",
    "rock'n'roll",
    "It\u2019s a curly apostrophe",
    "Mr. O'Neil's 3rd attempt at 4:30pm cost $12.50 (a 10% fee).",
    "e-mail: someone@example.com, URL: https://example.org/a?b=c&d=e#f",
    # --- Chinese and a Tang poem
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u5e8a\u524d\u660e\u6708\u5149\uff0c\u7591\u662f\u5730\u4e0a\u971c\u3002",
    "\u5170\u53f6\u6625\u8564\u8564\uff0c\u6842\u534e\u79cb\u768e\u6d01\u3002",
    "\u300a\u611f\u9047\u30fb\u5176\u4e00\u300b\n\u4f5c\u8005\uff1a\u5f20\u4e5d\u9f84",
    "\u4e2d\u6587English\u6df7\u5408123\u6570\u5b57",
    "\x1b[32m\u300a\u68a6\u674e\u767d\u30fb\u5176\u4e8c\u300b\x1b[m",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    # --- other scripts
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    # --- emoji
    "I \u2764\ufe0f tokenizers \U0001f600\U0001f600",
    "\U0001f44d\U0001f3fd thumbs",
    "family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466!",
    "flags \U0001f1fa\U0001f1f8\U0001f1e8\U0001f1f3\U0001f1ef\U0001f1f5",
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f9d1\u200d\U0001f4bb",
    # --- code
    C_CODE,
    PY_CODE,
    "x=a+b*c-d/e%f^g|h&i<<j>>k;{[()]}",
    "if (a != b) { return -1; }\r\n",
    "\t\tindent\twith\ttabs\t",
    # --- whitespace
    "a  b   c    d",
    "   leading spaces",
    "trailing spaces   ",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "line1\nline2\n\nline4\n",
    "windows\r\nline\r\n\r\nendings\r\n",
    "a \t b \n c",
    " \t\n x",
    "no\u00a0break\u00a0space",
    "\u00a0\u00a0x",
    "ideographic\u3000space\u3000\u3000x",
    "next\u0085line",
    "a\x0bb\x0cc",
    "line\u2028sep\u2029para",
    "ogham\u1680em\u2003thin\u2009narrow\u202fmath\u205fend",
    "zero\u200bwidth\ufeffbom",
    "info\x1fsep\x1crs\x1d",
    "mongolian\u180evowel",
    "soft\u00adhyphen",
    # --- digits and numbers
    "1234567890",
    "3.14159 2,718 1e-10 0x1F 007",
    "\u0663\u0664\u0665 Arabic-Indic \u06f1\u06f2",
    "\uff11\uff12\uff13 fullwidth \uff21\uff22\uff43",
    "\u2167 \u00bd \u00b2 \u2460 roman/fraction/superscript/circled",
    "\u0967\u0968\u0969 \u0e51\u0e52",
    "abc123def 456ghi",
    # --- combining accents, NFC vs NFD
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301",
    "\u00c5ngstr\u00f6m \u212bngstrom A\u030angstro\u0308m",
    "Z\u0351\u036b\u0343a\u0310\u0352l\u0346g\u0311o\u0308",
    "\u1e9b\u0323 \ufb01 \u2126",
    # --- special tokens in text
    "a<|endoftext|>b",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    " <|pad|> ",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext",
    "< |endoftext|>",
    "<|endoftext|>|>",
    "<<|im_end|>>",
    "\u4e2d<|endoftext|>\u6587",
    # --- edge sizes
    "",
    "a",
    "Z",
    "!",
    "?",
    "\u4e2d",
    "\U0001f600",
    "\u00e9",
    "7",
    # --- long repeated runs
    "a" * 1000,
    "ab" * 300,
    " " * 500,
    "\n" * 100,
    " a" * 200,
    "!" * 300,
    "1" * 200,
    "\u4e2d" * 300,
    "\U0001f600" * 50,
    "ha" * 50 + "!" * 20 + " " * 10 + "end",
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def train(path, vocab_size, build):
    """Compiles the trainer against the build tree and trains into path."""
    libs = [os.path.join(build, n) for n in ("libtd_data.a", "libtd_common.a")]
    for lib in libs:
        if not os.path.exists(lib):
            sys.exit(f"{lib} missing: run `cmake --build build --target td_data` first")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "train_tokenizer_fixture")
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-std=c11", "-D_GNU_SOURCE", "-I", ROOT,
                        os.path.join(ROOT, "tests", "reference", "train_tokenizer_fixture.c"),
                        *libs, "-lutf8proc", "-lcjson", "-lz", "-lm", "-o", exe], check=True)
        subprocess.run([exe, path, str(vocab_size), *CORPUS], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-train", action="store_true",
                    help="keep tokenizer.json, only recompute cases.json and meta.json")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="folder holding libtd_data.a and libtd_common.a (default: build)")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    tok_path = os.path.join(OUT, "tokenizer.json")
    vocab_size = VOCAB_SIZE
    if not args.no_train:
        for p in CORPUS:
            if not os.path.exists(p):
                sys.exit(f"{p} missing: apt-get install fortunes fortunes-zh")
        train(tok_path, vocab_size, args.build)
        if os.path.getsize(tok_path) > MAX_BYTES:
            vocab_size = 1024
            print(f"tokenizer.json over {MAX_BYTES} bytes; retraining with vocab {vocab_size}")
            train(tok_path, vocab_size, args.build)

    tok = tokenizers.Tokenizer.from_file(tok_path)
    # tokenizers ignores added_tokens[].id: an added token keeps the id only when
    # model.vocab lists it; check the ids it uses are the ones the file declares
    with open(tok_path, encoding="utf-8") as f:
        declared = json.load(f)["added_tokens"]
    for a in declared:
        got = tok.token_to_id(a["content"])
        assert got == a["id"], f"tokenizers gives {a['content']} id {got}, file says {a['id']}"
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    assert len(CASES) >= 60, len(CASES)
    assert len(set(CASES)) == len(CASES), "duplicate cases"
    cases = []
    for text in CASES:
        assert "\0" not in text, "cJSON strings end at NUL"
        enc = tok.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        # sanity: tokenizers itself round-trips (special tokens kept on decode)
        back = tok.decode(ids, skip_special_tokens=False)
        assert back == text, (text, ids, back)
        cases.append({"text": text, "ids": ids})
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        f.write("[\n")
        for i, c in enumerate(cases):
            f.write(json.dumps(c, ensure_ascii=False))
            f.write(",\n" if i + 1 < len(cases) else "\n")
        f.write("]\n")
    meta = {
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "vocab_size": vocab_size,
        "cases": len(cases),
        "tokens": sum(len(c["ids"]) for c in cases),
        "corpus": [{"file": p, "bytes": os.path.getsize(p), "sha256": sha256(p)}
                   for p in CORPUS],
        "tokenizer_json_sha256": sha256(tok_path),
        "trained_by": "tandem td_bpe_train via tests/reference/train_tokenizer_fixture.c",
    }
    with open(os.path.join(OUT, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"tokenizers {tokenizers.__version__}: {len(cases)} cases, {meta['tokens']} tokens, "
          f"vocab {vocab_size}, tokenizer.json {os.path.getsize(tok_path)} bytes -> {OUT}")


if __name__ == "__main__":
    main()
