#!/usr/bin/env python3
"""Concurrent HTTP load for tests/e2e/test_router.sh (standard library only).

  router_load.py check --base URL --n N --model NAME=REF.jsonl [--model NAME2=REF2.jsonl
                       --n-second M]
      N concurrent greedy /v1/completions requests (max_tokens 24) to the first model (and M
      to the second, at the same time), prompts taken
      round-robin from REF.jsonl (the JSON lines `tandem serve --prompts-file` printed for the
      same checkpoint); every answer must equal REF's completion for its prompt.
  router_load.py stream --base URL --n N --model NAME --prompts REF.jsonl --out FILE.json
      N concurrent streaming requests (max_tokens 64, ignore_eos); writes one record per request:
      status, whether it ended with [DONE] or an error event, when it ended (epoch seconds),
      the error message.
  router_load.py codes --base URL --n N --model NAME --prompts REF.jsonl
      N concurrent non-streaming requests; prints the HTTP status of each, space-separated.
Exit status: 0 when every check holds (check), 0 otherwise (stream, codes: the caller judges).
"""
import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse


def post(base, path, body, timeout=120):
    u = urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return c, c.getresponse()


def load_ref(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    return [(r["prompt"], r["completion"]) for r in rows if "completion" in r]


def run_threads(n, fn):
    out = [None] * n
    ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def cmd_check(a):
    jobs = []
    for k, spec in enumerate(a.model):
        name, ref = spec.split("=", 1)
        pairs = load_ref(ref)
        n = a.n if k == 0 or not a.n_second else a.n_second
        jobs += [(name, pairs[i % len(pairs)]) for i in range(n)]

    def one(i):
        name, (prompt, want) = jobs[i]
        try:
            c, r = post(a.base, "/v1/completions", {"model": name, "prompt": prompt,
                                                    "max_tokens": 24, "temperature": 0})
            body = r.read().decode()
            c.close()
            if r.status != 200:
                return name, False, f"HTTP {r.status}: {body[:200]}"
            got = json.loads(body)["choices"][0]["text"]
            return name, got == want, "" if got == want else f"{got!r} != {want!r}"
        except Exception as e:  # noqa: BLE001 - reported, counted as a failure
            return name, False, repr(e)

    res = run_threads(len(jobs), one)
    bad = [r for r in res if not r[1]]
    for name in sorted({j[0] for j in jobs}):
        ok = sum(1 for r in res if r[0] == name and r[1])
        tot = sum(1 for r in res if r[0] == name)
        print(f"model {name}: {ok}/{tot} answers equal to the single-replica reference")
    for r in bad[:5]:
        print("  mismatch:", r[0], r[2])
    return 0 if not bad else 1


def cmd_stream(a):
    pairs = load_ref(a.prompts)

    def one(i):
        rec = {"i": i, "status": None, "done": False, "error": None, "pieces": 0}
        try:
            c, r = post(a.base, "/v1/completions", {
                "model": a.model, "prompt": pairs[i % len(pairs)][0], "max_tokens": 64,
                "temperature": 0, "stream": True, "ignore_eos": True})
            rec["status"] = r.status
            if r.status != 200:
                rec["error"] = r.read().decode()[:300]
            else:
                while True:
                    line = r.readline()
                    if not line:
                        break
                    line = line.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        rec["done"] = True
                        break
                    ev = json.loads(data)
                    if "error" in ev:
                        rec["error"] = ev["error"].get("message")
                        break
                    rec["pieces"] += 1
            c.close()
        except Exception as e:  # noqa: BLE001 - recorded for the caller
            rec["error"] = repr(e)
        rec["ended"] = time.time()
        return rec

    res = run_threads(a.n, one)
    json.dump(res, open(a.out, "w"))
    return 0


def cmd_codes(a):
    pairs = load_ref(a.prompts)

    def one(i):
        try:
            c, r = post(a.base, "/v1/completions", {"model": a.model,
                                                    "prompt": pairs[i % len(pairs)][0],
                                                    "max_tokens": 24, "temperature": 0})
            r.read()
            c.close()
            return r.status
        except Exception:  # noqa: BLE001 - a failed connection counts as 0
            return 0

    print(" ".join(str(s) for s in run_threads(a.n, one)))
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["check", "stream", "codes"])
    p.add_argument("--base", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--n-second", type=int, default=0, help="check: requests to the 2nd model")
    p.add_argument("--prompts")
    p.add_argument("--out")
    a = p.parse_args()
    if a.mode != "check":
        a.model = a.model[0]
    return {"check": cmd_check, "stream": cmd_stream, "codes": cmd_codes}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main())
