#!/usr/bin/env python3
"""`faas deploy` of a function to its first successful invoke, through a real
`faas serve` (pooled sandbox, snapshots on): issue 7's target is <= 1 s for a
Python hello.

    cd /work/main && python3 benches/scripts/deploy-to-first-invoke.py --runs 20

    benches/scripts/deploy-to-first-invoke.py [--runs 20] [--faas PATH]

Without --faas it runs `cargo build --release -p faas-platform` (honouring
CARGO_TARGET_DIR) and uses $CARGO_TARGET_DIR/release/faas. Run as root from
the repository root.

Each run deploys a new function (a new name, so nothing is cached: the
version is copied, its faas-rofs image built, the runtime started once in a
sandbox, checkpointed and restored once as a check) with POST /functions,
then sends POST /invoke/NAME until the first 200. Functions: a Python hello
(`lambda_function.lambda_handler` returning {"hello": event}) and the bundled
native `hello` example. Prints p50/p90/max of deploy, first invoke and the
sum, and the deploy's own step times (from its `steps`).
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PY_HELLO = "def lambda_handler(event, context):\n    return {'hello': event}\n"


def faas_binary(given):
    if given:
        return given
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "faas-platform"], check=True)
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return os.path.join(target, "release", "faas")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--faas")
    a = ap.parse_args()
    faas = faas_binary(a.faas)
    work = tempfile.mkdtemp(prefix="faas-deploy-bench-")
    port = free_port()
    env = dict(os.environ, FAAS_LOG="warn")
    server = subprocess.Popen(
        [faas, "serve", "--sandbox", "pooled", "--listen", f"127.0.0.1:{port}",
         "--state-dir", os.path.join(work, "state")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if request(port, "GET", "/healthz", None)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        py = os.path.join(work, "py")
        os.makedirs(py)
        with open(os.path.join(py, "lambda_function.py"), "w") as f:
            f.write(PY_HELLO)
        subprocess.run([faas, "example-functions", "--out", os.path.join(work, "ex")],
                       check=True, stdout=subprocess.DEVNULL)
        kinds = {
            "python": ("python", py, "lambda_function.lambda_handler"),
            "native": ("native", os.path.join(work, "ex", "hello"), "hello"),
        }
        results = {k: {"deploy": [], "first": [], "total": [], "steps": {}} for k in kinds}
        for i in range(a.runs):
            for kind, (runtime, src, handler) in kinds.items():
                name = f"{kind}-{i}"
                spec = {"name": name, "runtime": runtime, "image": {"kind": "dir", "path": src},
                        "handler": handler}
                t0 = time.perf_counter()
                status, body = request(port, "POST", "/functions", json.dumps(spec))
                t1 = time.perf_counter()
                if status != 201:
                    sys.exit(f"deploy {name}: {status} {body[:300]!r}")
                d = json.loads(body)
                if d.get("start") != "restore":
                    sys.exit(f"deploy {name}: start {d.get('start')}, warnings {d.get('warnings')}")
                while True:
                    status, body = request(port, "POST", f"/invoke/{name}", b'{"a": 1}')
                    if status == 200:
                        break
                    if time.perf_counter() - t0 > 30:
                        sys.exit(f"invoke {name}: {status} {body[:300]!r}")
                t2 = time.perf_counter()
                r = results[kind]
                r["deploy"].append((t1 - t0) * 1e3)
                r["first"].append((t2 - t1) * 1e3)
                r["total"].append((t2 - t0) * 1e3)
                for s in d.get("steps", []):
                    r["steps"].setdefault(s["step"], []).append(s["us"] / 1e3)
        print(f"deploy to first invoke, {a.runs} runs each (ms): p50 / p90 / max")
        for kind, r in results.items():
            for k in ("deploy", "first", "total"):
                xs = r[k]
                print(f"  {kind:<7} {k:<7} {statistics.median(xs):8.1f} {pct(xs, 90):8.1f} {max(xs):8.1f}")
            for step, xs in r["steps"].items():
                print(f"  {kind:<7}   step {step:<9} {statistics.median(xs):8.1f} {pct(xs, 90):8.1f} {max(xs):8.1f}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
