#!/usr/bin/env python3
"""Hugging Face `tokenizers` side of bench_tokenizer: encodes the same documents, one thread.

The corpus file is split into documents exactly as bench_tokenizer does: at lines that are
exactly "%" (fortune format); empty documents are dropped. For each of --runs runs the
tokenizer is loaded afresh (so its word cache starts empty, as tandem's does), then timed:

  encode        tokenizer.encode(doc, add_special_tokens=False) for each document in a loop
  encode_batch  tokenizer.encode_batch(docs, add_special_tokens=False)

Both run on one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, set before
tokenizers is imported). Prints one JSON line: MB/s medians and every run, documents, bytes,
tokens, and (with --ids FILE, int32 ids written by bench_tokenizer, concatenated in document
order) whether every id matches.

usage: tokenizers_speed.py --tokenizer FILE --corpus FILE [--runs N] [--ids FILE]
"""
import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import tokenizers  # noqa: E402


def split_documents(data):
    """Documents of a fortune-format file: text between lines that are exactly "%"."""
    docs, cur = [], []
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
        if line == b"%":  # "%\n", or "%" at the end
            if cur:
                docs.append(b"".join(cur))
            cur = []
        elif k + 1 < len(lines):
            cur.append(line + b"\n")
        elif line:
            cur.append(line)
    if cur:
        docs.append(b"".join(cur))
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ids", help="int32 ids from bench_tokenizer to compare with")
    args = ap.parse_args()

    with open(args.corpus, "rb") as f:
        raw = split_documents(f.read())
    try:
        docs = [d.decode("utf-8") for d in raw]
    except UnicodeDecodeError as e:
        sys.exit(f"{args.corpus}: not valid UTF-8 ({e}); tokenizers takes only str")
    nbytes = sum(len(d) for d in raw)

    per_doc, batch = [], []
    ids_doc = ids_batch = None
    for _ in range(args.runs):
        tok = tokenizers.Tokenizer.from_file(args.tokenizer)
        t0 = time.perf_counter()
        encs = [tok.encode(d, add_special_tokens=False) for d in docs]
        per_doc.append(nbytes / 1e6 / (time.perf_counter() - t0))
        ids_doc = [e.ids for e in encs]

        tok = tokenizers.Tokenizer.from_file(args.tokenizer)
        t0 = time.perf_counter()
        encs = tok.encode_batch(docs, add_special_tokens=False)
        batch.append(nbytes / 1e6 / (time.perf_counter() - t0))
        ids_batch = [e.ids for e in encs]
        del encs

    out = {
        "tokenizers": tokenizers.__version__,
        "documents": len(docs),
        "bytes": nbytes,
        "tokens": sum(len(i) for i in ids_doc),
        "tokens_batch": sum(len(i) for i in ids_batch),
        "encode_mbps": statistics.median(per_doc),
        "encode_runs": per_doc,
        "encode_batch_mbps": statistics.median(batch),
        "encode_batch_runs": batch,
        "batch_equals_encode": ids_doc == ids_batch,
    }
    if args.ids:
        import numpy as np

        theirs = np.fromfile(args.ids, dtype="<i4")
        mine = np.fromiter((i for ids in ids_doc for i in ids), dtype=np.int32)
        out["ids_match"] = bool(theirs.shape == mine.shape and (theirs == mine).all())
        if not out["ids_match"]:
            # first document whose ids differ
            pos = 0
            for k, ids in enumerate(ids_doc):
                if list(theirs[pos:pos + len(ids)]) != ids:
                    out["first_mismatch"] = {"document": k, "text": docs[k][:200],
                                             "tokenizers": ids[:50],
                                             "tandem": theirs[pos:pos + 50].tolist()}
                    break
                pos += len(ids)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
