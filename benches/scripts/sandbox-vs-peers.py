#!/usr/bin/env python3
"""`faas sandbox run` of a static hello against bubblewrap and runc, in the
same run, interleaved, with the ratios.

    benches/scripts/sandbox-vs-peers.py [--runs 200] [--faas target/release/faas]

Each tool runs the same static C hello world from the same read-only root
directory, with every namespace it offers:

  faas   faas sandbox run --root ROOT -- /hello
  bwrap  bwrap --unshare-all --ro-bind ROOT / --dev /dev --tmpfs /tmp /hello
  runc   runc run --bundle BUNDLE ID   (bundle = ROOT as rootfs, `runc spec` config)

Wall time of the whole command (fork+exec of the tool, set-up, the hello,
teardown) is measured with perf_counter around subprocess.run. Needs root,
gcc (static glibc), bubblewrap and runc (apt-get install bubblewrap runc).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HELLO_C = r"""
#include <unistd.h>
int main(void) { write(1, "hello\n", 6); return 0; }
"""


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--faas", default=os.path.join(os.path.dirname(__file__), "../../target/release/faas"))
    a = ap.parse_args()
    faas = os.path.abspath(a.faas)
    for tool in ("gcc", "bwrap", "runc"):
        if not shutil.which(tool):
            sys.exit(f"sandbox-vs-peers: {tool} is not installed (apt-get install gcc bubblewrap runc)")
    if not os.path.exists(faas):
        sys.exit(f"sandbox-vs-peers: {faas} not found (cargo build --release -p faas-platform)")
    work = tempfile.mkdtemp(prefix="faas-sbx-bench-", dir="/var/tmp")
    try:
        root = os.path.join(work, "bundle", "rootfs")
        for d in ("dev", "tmp", "proc", "sys"):
            os.makedirs(os.path.join(root, d))
        src = os.path.join(work, "hello.c")
        with open(src, "w") as f:
            f.write(HELLO_C)
        subprocess.run(["gcc", "-static", "-O2", "-o", os.path.join(root, "hello"), src], check=True)
        bundle = os.path.join(work, "bundle")
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        spec["process"]["args"] = ["/hello"]
        spec["process"]["terminal"] = False
        spec["root"]["readonly"] = True
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        cmds = {
            "faas": [faas, "sandbox", "run", "--root", root, "--", "/hello"],
            "bwrap": ["bwrap", "--unshare-all", "--ro-bind", root, "/", "--dev", "/dev", "--tmpfs", "/tmp", "/hello"],
            "runc": None,
        }
        times = {k: [] for k in cmds}
        for i in range(a.runs):
            for name, cmd in cmds.items():
                if name == "runc":
                    cmd = ["runc", "run", "--bundle", bundle, f"faas-bench-{os.getpid()}-{i}"]
                t = time.perf_counter()
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                dt = time.perf_counter() - t
                if r.returncode != 0 or r.stdout != b"hello\n":
                    sys.exit(f"sandbox-vs-peers: {name} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
                times[name].append(dt)
        print(f"{'tool':6} {'runs':>5} {'p50':>9} {'p99':>9} {'mean':>9}")
        for name, xs in times.items():
            print(f"{name:6} {len(xs):5d} {pct(xs, .5)*1e3:7.2f}ms {pct(xs, .99)*1e3:7.2f}ms {statistics.mean(xs)*1e3:7.2f}ms")
        f50 = pct(times["faas"], .5)
        print(f"ratio p50: bwrap/faas {pct(times['bwrap'], .5)/f50:.2f}x, runc/faas {pct(times['runc'], .5)/f50:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
