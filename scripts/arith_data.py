#!/usr/bin/env python3
"""The distillation task: add two numbers, with or without the worked steps.

  user:      4721+5634
  assistant: 1+4=5
             2+3=5
             7+6=13 c1
             4+5+1=10 c1
             answer 10355

The worked solution adds digit by digit from the right with the carry written out; the
answer-only form is just "answer 10355". The sum's leading digit depends on every carry,
so a small model that must write the answer at once has the harder task. Held-out pairs
never occur in training. Writes into DIR:

  worked.jsonl    training conversations with worked solutions (the teacher's data)
  answers.jsonl   the same prompts with the answer alone (student (a))
  prompts.jsonl   the training prompts with their "answer" (for tandem synthesize)
  val.jsonl       held-out prompts with their "answer" (exact-match evaluation)
  val_worked.jsonl  held-out conversations with worked solutions (validation loss)
  corpus.txt      the worked solutions as plain text (for tandem prep's tokenizer)

usage: scripts/arith_data.py DIR [--train N] [--val N] [--digits D] [--seed S]
"""
import argparse
import json
import os
import random


def worked(a, b, digits):
    xs, ys = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    lines, carry = [], 0
    for x, y in zip(xs, ys):
        s = int(x) + int(y) + carry
        expr = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = s // 10
        lines.append(f"{expr}={s}" + (f" c{carry}" if carry else ""))
    lines.append(f"answer {a + b}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--digits", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    lo, hi = 10 ** (a.digits - 1), 10**a.digits - 1
    seen, pairs = set(), []
    while len(pairs) < a.train + a.val:
        p = (rng.randint(lo, hi), rng.randint(lo, hi))
        if p not in seen:
            seen.add(p)
            pairs.append(p)
    os.makedirs(a.out, exist_ok=True)
    train, val = pairs[: a.train], pairs[a.train :]

    def conv(x, y, answer):
        return {
            "messages": [
                {"role": "user", "content": f"{x}+{y}"},
                {"role": "assistant", "content": answer},
            ]
        }

    def write(name, rows):
        with open(os.path.join(a.out, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    write("worked.jsonl", [conv(x, y, worked(x, y, a.digits)) for x, y in train])
    write("answers.jsonl", [conv(x, y, f"answer {x + y}") for x, y in train])
    write("prompts.jsonl", [{"prompt": f"{x}+{y}", "answer": str(x + y)} for x, y in train])
    write("val.jsonl", [{"prompt": f"{x}+{y}", "answer": str(x + y)} for x, y in val])
    write("val_worked.jsonl", [conv(x, y, worked(x, y, a.digits)) for x, y in val])
    with open(os.path.join(a.out, "corpus.txt"), "w") as f:
        for x, y in train:
            f.write(f"{x}+{y}\n{worked(x, y, a.digits)}\n%\n")


if __name__ == "__main__":
    main()
