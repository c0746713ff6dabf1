#!/usr/bin/env python3
"""Greedy exact match of served models on held-out conversations.

Sends each conversation's turns up to its last assistant turn to a tandem gateway's
/v1/chat/completions (temperature 0, so greedy), several requests at a time, and counts the
replies that equal the expected answer exactly (surrounding whitespace ignored). Prints one
line per model and, with --show N, the first N mistakes.

usage: scripts/skill_eval.py URL DATA.jsonl MODEL [MODEL ...] [--concurrency C] [--limit N]
"""
import argparse
import concurrent.futures as cf
import json
import sys
import urllib.request


def ask(url, model, messages, max_tokens):
    body = json.dumps(
        {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    ).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)["choices"][0]["message"]["content"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("data")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--show", type=int, default=0)
    a = ap.parse_args()
    cases = []
    with open(a.data) as f:
        for line in f:
            if not line.strip():
                continue
            msgs = json.loads(line)["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            cases.append((msgs[:last], msgs[last]["content"]))
    if a.limit:
        cases = cases[: a.limit]
    worst = 100.0
    for model in a.models:
        with cf.ThreadPoolExecutor(a.concurrency) as ex:
            replies = list(ex.map(lambda c: ask(a.url, model, c[0], a.max_tokens), cases))
        ok = [r.strip() == want.strip() for r, (_, want) in zip(replies, cases)]
        pct = 100.0 * sum(ok) / len(ok)
        worst = min(worst, pct)
        print(f"{model}: {sum(ok)}/{len(ok)} exact ({pct:.1f} %)")
        shown = 0
        for good, r, (msgs, want) in zip(ok, replies, cases):
            if not good and shown < a.show:
                print(f"   {msgs[-1]['content']!r}: got {r!r}, want {want!r}")
                shown += 1
    sys.stdout.flush()


if __name__ == "__main__":
    main()
