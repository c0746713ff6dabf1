#!/usr/bin/env python3
"""The fine-tuning skill task: reverse a short list of letters.

  user:      Reverse:\nq,w,e,r
  assistant: r,e,w,q

Every answer is exact, the rule is systematic (a held-out list is never in the training
set), and a model pretrained on prose does not do it. The letters are joined by commas
without spaces so that each letter is the same token in the question and in the answer
(with the demo's tokenizer "Reverse: q w e r" makes " r" of the input and "r" of the answer
two different tokens, and the task becomes a 26-entry vocabulary map besides the reversal). Writes DIR/train.jsonl and
DIR/val.jsonl in the OpenAI chat form `tandem finetune` reads.

usage: scripts/skill_data.py DIR [--train N] [--val N] [--seed S]
"""
import argparse
import json
import os
import random
import string


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-len", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=5)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    seen, lists = set(), []
    while len(lists) < a.train + a.val:
        n = rng.randint(a.min_len, a.max_len)
        item = tuple(rng.choice(string.ascii_lowercase) for _ in range(n))
        if item not in seen:  # held-out lists never occur in training
            seen.add(item)
            lists.append(item)
    os.makedirs(a.out, exist_ok=True)
    for name, part in (("train", lists[: a.train]), ("val", lists[a.train :])):
        with open(os.path.join(a.out, name + ".jsonl"), "w") as f:
            for item in part:
                conv = {
                    "messages": [
                        {"role": "user", "content": "Reverse:\n" + ",".join(item)},
                        {"role": "assistant", "content": ",".join(reversed(item))},
                    ]
                }
                f.write(json.dumps(conv) + "\n")
    print(f"skill data: {a.train} training and {a.val} held-out conversations in {a.out}")


if __name__ == "__main__":
    main()
