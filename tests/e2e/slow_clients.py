#!/usr/bin/env python3
"""Silent connections must not lock normal clients out of the gateway.

Against a running gateway (`tandem serve --http`), measures 16 concurrent clients doing
sequential completions, first alone (the baseline), then while SILENT connections are open
that send nothing (or half a request line). Every normal request must be answered 200; the
median and 95th-percentile latency with and without the silent connections are printed
(with --factor F, also checked against F x the baseline's). Then checks that the server closed the silent connections after its
header timeout. Prints the figures; exits 1 when a check fails.

Usage: slow_clients.py BASE_URL MODEL [--silent 1000] [--clients 16] [--requests 6]
       [--factor F] [--header-timeout 10] [--settle 1]
Only the standard library; connects to loopback addresses only.
"""
import argparse
import http.client
import json
import resource
import socket
import statistics
import sys
import threading
import time
import urllib.parse


def load(host, port, model, clients, requests):
    """clients threads x requests sequential completions; returns (latencies, failures)."""
    lat, bad = [], []
    lock = threading.Lock()
    body = json.dumps({"model": model, "prompt": "A fool", "max_tokens": 8, "temperature": 0})

    def worker():
        for _ in range(requests):
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection(host, port, timeout=60)
                c.request("POST", "/v1/completions", body=body,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                c.close()
                ok = r.status == 200
                why = r.status
            except Exception as e:  # a refused or reset connection is the failure measured
                ok, why = False, repr(e)
            with lock:
                if ok:
                    lat.append(time.monotonic() - t0)
                else:
                    bad.append(why)

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return lat, bad


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--silent", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--factor", type=float, default=0.0,
                    help="fail when p50 or p95 grows beyond this ratio (default 0: report only; "
                         "latency on a shared machine is a benchmark figure, not a test)")
    ap.add_argument("--header-timeout", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between opening the silent connections and the load: the "
                         "server starts a thread for each, a burst measured separately")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.base)
    host, port = u.hostname, u.port
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.silent + 512)), hard))

    load(host, port, a.model, a.clients, 1)  # warm-up
    base, base_bad = load(host, port, a.model, a.clients, a.requests)
    socks = []
    t0 = time.monotonic()
    for i in range(a.silent):
        s = socket.create_connection((host, port), timeout=10)
        if i % 2:  # half send the start of a request line and stop
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    opened = time.monotonic() - t0
    # the burst: one request right away, while the server starts a thread per connection
    tb = time.monotonic()
    burst, burst_bad = load(host, port, a.model, 1, 1)
    burst_s = time.monotonic() - tb
    time.sleep(max(0.0, a.settle - burst_s))
    under, under_bad = load(host, port, a.model, a.clients, a.requests)
    fail = 0
    print(f"baseline: {len(base)} answered, {len(base_bad)} failed; latency p50 "
          f"{statistics.median(base) * 1e3:.1f} ms, p95 {pct(base, 0.95) * 1e3:.1f} ms, "
          f"max {max(base) * 1e3:.1f} ms")
    print(f"with {a.silent} silent connections held (opened in {opened:.2f} s): {len(under)} answered, "
          f"{len(under_bad)} failed; latency p50 {statistics.median(under) * 1e3:.1f} ms, "
          f"p95 {pct(under, 0.95) * 1e3:.1f} ms, max {max(under) * 1e3:.1f} ms" if under else
          f"with {a.silent} silent connections: none answered; failures {under_bad[:3]}")
    print(f"one request sent right after opening them: "
          f"{'answered in %.1f ms' % (burst[0] * 1e3) if burst else 'failed %s' % burst_bad}; "
          f"the load below started {a.settle:.1f} s after the opening")
    if base_bad or under_bad or burst_bad:
        print(f"FAIL: failed requests: {(base_bad + under_bad)[:5]}")
        fail = 1
    if under and base:
        r50 = statistics.median(under) / statistics.median(base)
        r95 = pct(under, 0.95) / pct(base, 0.95)
        print(f"ratio to baseline: p50 {r50:.2f}x, p95 {r95:.2f}x"
              + (f" (limit {a.factor}x)" if a.factor else ""))
        if a.factor and (r50 > a.factor or r95 > a.factor):
            print("FAIL: normal clients slowed by more than the limit")
            fail = 1
    # the server closes silent connections after its header timeout
    deadline = t0 + a.header_timeout + 5
    while time.monotonic() < deadline:
        time.sleep(0.5)
    closed = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                closed += 1
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            closed += 1
        s.close()
    print(f"after {a.header_timeout + 5:.0f} s: the server had closed {closed} of {a.silent} silent "
          f"connections (header timeout {a.header_timeout:.0f} s)")
    if closed < a.silent:
        print("FAIL: silent connections were left open past the header timeout")
        fail = 1
    return fail


if __name__ == "__main__":
    sys.exit(main())
