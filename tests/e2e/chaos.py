#!/usr/bin/env python3
"""Chaos on the serving path: for MINUTES, under mixed load (streaming and not, OpenAI
completions and chat), kill -9 or SIGSTOP/SIGCONT the router, replicas and a
tensor-parallel member at random, restarting what was killed. Every request must be
accounted for: answered 200 in full, or ended with a clear error (an HTTP error status with
a message, or an error event in the stream) — none may hang past the gateway's timeout
(--timeout) plus a margin. Prints the figures and exits 1 if any request hung or ended
without a clear error.

Usage: chaos.py TANDEM CHECKPOINT [--minutes 2] [--seed 1] [--clients 8]
The processes: `tandem router`, `tandem gateway --timeout 20`, one replica
(`serve --router`) and one tensor-parallel replica (`mpirun -np 2 serve --tp 2 --router`),
all on loopback, keys in a fresh TANDEM_KEYS directory. Only the standard library.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_btl": "self,vader",
           "OMPI_MCA_pml": "ob1", "OMP_NUM_THREADS": "1"}
GATEWAY_TIMEOUT = 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cluster:
    def __init__(self, tandem, ckpt, work):
        self.tandem, self.ckpt, self.work = tandem, ckpt, work
        self.env = dict(os.environ, TANDEM_KEYS=os.path.join(work, "keys"),
                        TANDEM_TEST_STEP_DELAY_MS="20", **MPI_ENV)
        self.pf, self.pb, self.ph = free_port(), free_port(), free_port()
        self.procs = {}
        self.lock = threading.Lock()

    def log(self, name):
        return open(os.path.join(self.work, name + ".log"), "ab")

    def start(self, name):
        t, b = self.tandem, f"tcp://127.0.0.1:{self.pb}"
        cmd = {
            "router": [t, "router", "--front", f"tcp://127.0.0.1:{self.pf}", "--back", b],
            "gateway": [t, "gateway", "--listen", f"127.0.0.1:{self.ph}", "--router",
                        f"tcp://127.0.0.1:{self.pf}", "--timeout", str(GATEWAY_TIMEOUT)],
            "replica": [t, "serve", "--model", self.ckpt, "--name", "tiny", "--router", b],
            "tp": ["mpirun", "-np", "2", t, "serve", "--model", self.ckpt, "--name", "tiny",
                   "--tp", "2", "--router", b],
        }[name]
        with self.lock:
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                                stderr=self.log(name), start_new_session=True)

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def pids(self, name):
        """The tandem processes of a started name (for tp: the two ranks, not mpirun)."""
        p = self.procs[name]
        if name != "tp":
            return [p.pid]
        out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True)
        kids = [int(x) for x in out.stdout.split()]
        ranks = []
        for k in kids:  # mpirun -> orted-less launch: ranks are direct children here
            out = subprocess.run(["pgrep", "-P", str(k)], capture_output=True, text=True)
            ranks += [int(x) for x in out.stdout.split()] or [k]
        return [r for r in ranks if b"serve" in open(f"/proc/{r}/cmdline", "rb").read()] or kids

    def stop_all(self):
        for name, p in self.procs.items():
            try:
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()


def request(port, kind, rid):
    """One request; returns (outcome, seconds, detail): 'ok', 'error' (clear), 'unclear'."""
    t0 = time.monotonic()
    stream = kind in ("stream", "chat-stream")
    chat = kind.startswith("chat")
    body = {"model": "tiny", "max_tokens": 24, "stream": stream, "seed": rid}
    if chat:
        body["messages"] = [{"role": "user", "content": "Tell me a fortune."}]
    else:
        body["prompt"] = "A fool and his money"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=GATEWAY_TIMEOUT + 15)
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
    except ConnectionRefusedError:
        return "error", time.monotonic() - t0, "gateway restarting: connection refused"
    except socket.timeout:
        return "hung", time.monotonic() - t0, "no answer"
    except Exception as e:
        return "unclear", time.monotonic() - t0, repr(e)
    dt = time.monotonic() - t0
    text = data.decode("utf-8", "replace")
    if r.status != 200:
        try:
            msg = json.loads(text)["error"]["message"]
            return "error", dt, f"{r.status} {msg}"
        except Exception:
            return "unclear", dt, f"{r.status} {text[:120]}"
    if not stream:
        ok = '"finish_reason"' in text
        return ("ok" if ok else "unclear"), dt, text[:120]
    if '"error"' in text:
        return "error", dt, "stream error event: " + text[text.find('"error"'):][:120]
    if "[DONE]" in text and '"finish_reason":"' in text.replace(" ", ""):
        return "ok", dt, ""
    return "unclear", dt, text[-160:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tandem")
    ap.add_argument("checkpoint")
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="tandem-chaos.")
    cl = Cluster(os.path.abspath(a.tandem), os.path.abspath(a.checkpoint), work)
    for name in ("router", "gateway", "replica", "tp"):
        cl.start(name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both replicas registered
        try:
            c = http.client.HTTPConnection("127.0.0.1", cl.ph, timeout=2)
            c.request("GET", "/health")
            h = json.loads(c.getresponse().read())
            if h.get("replicas", 0) >= 2:
                break
        except Exception:
            pass
        time.sleep(0.2)
    results, lock = [], threading.Lock()
    end = time.monotonic() + a.minutes * 60
    kinds = ["stream", "plain", "chat", "chat-stream"]

    def client(i):
        n = 0
        while time.monotonic() < end:
            kind = kinds[(i + n) % len(kinds)]
            out = request(cl.ph, kind, i * 100000 + n)
            with lock:
                results.append((kind,) + out)
            n += 1
            if out[0] == "error":
                time.sleep(0.2)

    actions = []

    def chaos():
        while time.monotonic() < end - 5:
            time.sleep(rng.uniform(2, 6))
            what = rng.choice(["kill router", "kill replica", "stop replica", "stop tp member",
                               "kill tp member", "kill gateway"])
            t = time.monotonic()
            if what == "kill router":
                os.kill(cl.procs["router"].pid, signal.SIGKILL)
                cl.procs["router"].wait()
                time.sleep(rng.uniform(0.2, 2))
                cl.start("router")
            elif what == "kill gateway":
                os.kill(cl.procs["gateway"].pid, signal.SIGKILL)
                cl.procs["gateway"].wait()
                time.sleep(rng.uniform(0.2, 1))
                cl.start("gateway")
            elif what in ("kill replica", "stop replica"):
                if not cl.alive("replica"):
                    cl.start("replica")
                    continue
                pid = cl.procs["replica"].pid
                if what == "kill replica":
                    os.kill(pid, signal.SIGKILL)
                    cl.procs["replica"].wait()
                    time.sleep(rng.uniform(0.2, 1))
                    cl.start("replica")
                else:
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(1, 5))
                    os.kill(pid, signal.SIGCONT)
            else:  # a tensor-parallel member: the TP replica fails and its job ends
                if not cl.alive("tp"):
                    cl.start("tp")
                    continue
                ranks = cl.pids("tp")
                for r in ranks:  # rank 1: the member
                    try:
                        env = open(f"/proc/{r}/environ", "rb").read().split(b"\0")
                    except OSError:
                        continue
                    if b"OMPI_COMM_WORLD_RANK=1" in env:
                        os.kill(r, signal.SIGSTOP if what == "stop tp member" else signal.SIGKILL)
                for _ in range(100):  # the job ends by itself (--tp-timeout)
                    if not cl.alive("tp"):
                        break
                    time.sleep(0.1)
                if cl.alive("tp"):
                    actions.append((what, "mpirun still running 10 s later: killed"))
                    os.killpg(cl.procs["tp"].pid, signal.SIGKILL)
                cl.procs["tp"].wait()
                try:
                    os.killpg(cl.procs["tp"].pid, signal.SIGCONT)
                    os.killpg(cl.procs["tp"].pid, signal.SIGKILL)
                except OSError:
                    pass
                cl.start("tp")
            actions.append((what, f"{time.monotonic() - t:.1f} s"))

    ths = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    ch = threading.Thread(target=chaos)
    t_start = time.monotonic()
    for t in ths + [ch]:
        t.start()
    for t in ths + [ch]:
        t.join()
    minutes = (time.monotonic() - t_start) / 60
    cl.stop_all()
    n = len(results)
    count = {k: sum(1 for r in results if r[1] == k) for k in ("ok", "error", "hung", "unclear")}
    longest = max((r[2] for r in results), default=0)
    print(f"chaos: {minutes:.1f} minutes, {a.clients} clients, {len(actions)} faults "
          f"({', '.join(sorted(set(x[0] for x in actions)))})")
    for what in sorted(set(x[0] for x in actions)):
        print(f"  {what}: {sum(1 for x in actions if x[0] == what)} times")
    print(f"requests sent {n}: answered {count['ok']}, failed with a clear error {count['error']}, "
          f"hung {count['hung']}, ended without a clear error {count['unclear']}; longest "
          f"{longest:.1f} s (gateway timeout {GATEWAY_TIMEOUT} s)")
    errs = {}
    for r in results:
        if r[1] == "error":
            key = r[3].split(":")[0][:70]
            errs[key] = errs.get(key, 0) + 1
    for k, v in sorted(errs.items(), key=lambda x: -x[1])[:8]:
        print(f"  error: {v} x {k}")
    for r in results:
        if r[1] in ("hung", "unclear"):
            print(f"  {r[1]}: {r[0]} after {r[2]:.1f} s: {r[3]}")
    print(f"logs: {work}")
    return 1 if count["hung"] or count["unclear"] or count["ok"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
