#!/usr/bin/env python3
"""Python and Node.js Lambda handlers through the whole platform (`faas serve`,
real HTTP), per-request instances: snapshot restore against cold starts, in the
same run, interleaved, with the ratios and the memory of an instance.

    cd /work/main && CARGO_TARGET_DIR=/tmp/helper-rt-target \\
        python3 benches/scripts/runtimes-through-platform.py --runs 200

    benches/scripts/runtimes-through-platform.py [--runs 200] [--faas PATH]
        [--python /usr/bin/python3] [--node /usr/bin/node]

Without --faas it runs `cargo build --release -p faas-platform` (honouring
CARGO_TARGET_DIR) and uses $CARGO_TARGET_DIR/release/faas, else
target/release/faas. Run as root from the repository root (the pooled
sandbox needs root).

Four functions, written to a temporary directory; each also sleeps when the
event is {"sleep": SECONDS} (the memory probe):

  python trivial  returns {"echo": event}
  python heavy    imports email.parser, decimal, http.client, json, logging,
                  uuid, datetime, re, hashlib and builds a dict at module
                  scope; returns the echo and a uuid4
  node   trivial  exports.handler = async (e) => ({echo: e})
  node   heavy    requires zlib, crypto, url, util and builds a Map at module
                  scope; returns the echo

Three servers, each with its own temporary --state-dir, on a free port
(--listen 127.0.0.1:0), FAAS_LOG=warn:

  pooled          faas serve --sandbox pooled                 Python: restore
                                                              (snapshot taken
                                                              at deploy); Node: cold
  pooled-nosnap   faas serve --sandbox pooled --no-snapshots  Python: cold, same
                                                              sandbox (Node is cold
                                                              anyway: not deployed)
  process         faas serve --sandbox process                Python, Node: cold
                                                              plain processes, NOT
                                                              isolated (dev baseline)

Latency: 5 warm-up rounds, then --runs rounds; in every round each
(function, server) pair gets one POST /invoke/NAME with body {"a": 1}, each
pair over its own keep-alive HTTP/1.1 connection, the servers taking turns
request by request (pooled, pooled-nosnap, process, pooled, ...) so machine
noise hits every arm alike. Every request must answer 200 with the expected
x-faas-start (restore or cold: a new instance per request). e2e is the
client's perf_counter around request+response; start is the server's
`server-timing: start;dur=MS`.

Memory: per (server, function), 3 concurrent {"sleep": 2.5} requests; 1.2 s
later, the instance processes among the server's descendants (restored:
exe /memfd:faas-restorer; cold: the interpreter whose environ holds
FAAS_FUNCTION_NAME=NAME) are read from /proc/PID/smaps_rollup; the table
gives the median of Private_Dirty, Rss and Pss per instance.

Every server started is stopped (SIGTERM, then SIGKILL) and the temporary
directories removed, also on failure or Ctrl-C.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WARMUP = 5
SLEEP_S = 2.5
PROBE_AFTER_S = 1.2
PROBE_INSTANCES = 3

PY_TRIVIAL = '''\
import time


def lambda_handler(event, context):
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    return {"echo": event}
'''

PY_HEAVY = '''\
import email.parser, decimal, http.client, json, logging, uuid, datetime, re, hashlib
import time

TABLE = {f"k{i}": hashlib.sha256(str(i).encode()).hexdigest() for i in range(64)}
PATTERN = re.compile(r"^[a-z]+$")
LOG = logging.getLogger("heavy")
PARSER = email.parser.Parser()
PRICE = decimal.Decimal("1.10")


def lambda_handler(event, context):
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    return {"echo": event, "id": str(uuid.uuid4())}
'''

NODE_TRIVIAL = '''\
const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
exports.handler = async (e) => {
  if (e && typeof e === 'object' && e.sleep) await sleep(e.sleep);
  return {echo: e};
};
'''

NODE_HEAVY = '''\
const zlib = require('zlib');
const crypto = require('crypto');
const url = require('url');
const util = require('util');
const TABLE = new Map();
for (let i = 0; i < 64; i++) TABLE.set('k' + i, crypto.createHash('sha256').update(String(i)).digest('hex'));
const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
exports.handler = async (e) => {
  if (e && typeof e === 'object' && e.sleep) await sleep(e.sleep);
  return {echo: e, size: TABLE.size, fmt: util.format('%d', 1), z: typeof zlib.gzipSync, u: typeof url.parse};
};
'''

# (runtime, function, deployed name, file, source, handler)
FUNCTIONS = [
    ("python", "trivial", "py-trivial", "lambda_function.py", PY_TRIVIAL, "lambda_function.lambda_handler"),
    ("python", "heavy", "py-heavy", "lambda_function.py", PY_HEAVY, "lambda_function.lambda_handler"),
    ("node", "trivial", "node-trivial", "index.js", NODE_TRIVIAL, "index.handler"),
    ("node", "heavy", "node-heavy", "index.js", NODE_HEAVY, "index.handler"),
]

# (label, extra serve args, runtimes deployed there)
SERVERS = [
    ("pooled", ["--sandbox", "pooled"], ("python", "node")),
    ("pooled-nosnap", ["--sandbox", "pooled", "--no-snapshots"], ("python",)),
    ("process", ["--sandbox", "process"], ("python", "node")),
]


def expected_start(server, runtime):
    return "restore" if (server == "pooled" and runtime == "python") else "cold"


class Fail(Exception):
    pass


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def build_faas():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    print(f"building: cargo build --release -p faas-platform (target dir {target})", flush=True)
    r = subprocess.run(["cargo", "build", "--release", "-p", "faas-platform"], cwd=ROOT)
    if r.returncode != 0:
        raise Fail("cargo build --release -p faas-platform failed")
    return os.path.join(os.path.abspath(target), "release", "faas")


class Server:
    def __init__(self, label, extra, runtimes, faas, py, node, work):
        self.label, self.extra, self.runtimes = label, extra, runtimes
        self.state = os.path.join(work, f"state-{label}")
        self.log = os.path.join(work, f"serve-{label}.log")
        self.proc = None
        self.port = None
        self.faas, self.py, self.node = faas, py, node

    def start(self):
        env = dict(os.environ, FAAS_LOG="warn")
        cmd = [self.faas, "serve", "--listen", "127.0.0.1:0", "--state-dir", self.state,
               "--python", self.py, "--node", self.node, *self.extra]
        with open(self.log, "wb") as log:
            # Own session: the terminal's Ctrl-C reaches only this script, which stops the server.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        self.cmd = cmd

    def log_tail(self, n=15):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Fail(f"server {self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.port is None:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(self.log, errors="replace").read())
                if m:
                    self.port = int(m.group(1))
            if self.port is not None:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                    c.request("GET", "/healthz")
                    r = c.getresponse()
                    ok = r.status == 200 and r.read().strip() == b"ok"
                    c.close()
                    if ok:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise Fail(f"server {self.label} not healthy after {timeout} s:\n{self.log_tail()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        except ProcessLookupError:
            pass


def deploy(faas, server, name, fdir, runtime, handler):
    cmd = [faas, "deploy", name, "--dir", fdir, "--runtime", runtime, "--handler", handler,
           "--server", server.url]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise Fail(f"deploy of {name} to {server.label} failed ({r.returncode}): {out}\n{server.log_tail()}")
    want = expected_start(server.label, runtime)
    m = re.search(r"\(start: (\w+)\)", r.stdout)
    got = m.group(1) if m else None
    if got != want:
        raise Fail(f"deploy of {name} to {server.label}: expected `start: {want}`, got {got!r}: {out}")
    return out


class Arm:
    """One (server, function) pair and its keep-alive connection."""

    def __init__(self, server, fn):
        self.server, self.fn = server, fn
        self.runtime, self.function, self.name = fn[0], fn[1], fn[2]
        self.want = expected_start(server.label, self.runtime)
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.sock = None
        self.reconnects = 0
        self.e2e, self.start = [], []
        self.mem = []

    def invoke(self, record):
        body = b'{"a": 1}'
        t = time.perf_counter()
        self.conn.request("POST", f"/invoke/{self.name}", body=body,
                          headers={"content-type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        if self.sock is None:
            self.sock = self.conn.sock
        elif self.conn.sock is not self.sock:
            self.reconnects += 1
            self.sock = self.conn.sock
        where = f"{self.server.label}/{self.name}"
        if r.status != 200:
            raise Fail(f"{where}: status {r.status}: {data[:300]!r}")
        mode = r.getheader("x-faas-start")
        if mode != self.want:
            raise Fail(f"{where}: x-faas-start {mode!r}, expected {self.want!r}")
        st = r.getheader("server-timing") or ""
        m = re.search(r"start;dur=([0-9.]+)(?:;desc=\"?(\w+))?", st)
        if not m:
            raise Fail(f"{where}: no start;dur in server-timing {st!r}")
        if m.group(2) and m.group(2) != self.want:
            raise Fail(f"{where}: server-timing start desc {m.group(2)!r}, expected {self.want!r}")
        if json.loads(data).get("echo") != {"a": 1}:
            raise Fail(f"{where}: unexpected body {data[:300]!r}")
        if record:
            self.e2e.append(dt * 1e3)
            self.start.append(float(m.group(1)))


def proc_table():
    """pid -> (ppid, exe) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
        except OSError:
            exe = ""
        out[int(d)] = (ppid, exe)
    return out


def descendants(table, root):
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            seen.append(k)
            todo.append(k)
    return seen


def smaps_rollup(pid):
    roll = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                roll[parts[0].rstrip(":")] = int(parts[1])
    return roll


def memory_probe(arm):
    results = [None] * PROBE_INSTANCES

    def call(i):
        try:
            c = http.client.HTTPConnection("127.0.0.1", arm.server.port, timeout=30)
            c.request("POST", f"/invoke/{arm.name}", body=json.dumps({"sleep": SLEEP_S}).encode())
            r = c.getresponse()
            results[i] = (r.status, r.getheader("x-faas-start"), r.read())
            c.close()
        except Exception as e:  # reported below
            results[i] = (None, None, repr(e).encode())

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(PROBE_INSTANCES)]
    for t in threads:
        t.start()
    time.sleep(PROBE_AFTER_S)
    table = proc_table()
    found = []
    interp = "python" if arm.runtime == "python" else "node"
    for pid in descendants(table, arm.server.proc.pid):
        exe = table[pid][1]
        if arm.want == "restore":
            if not exe.startswith("/memfd:faas-restorer"):
                continue
        else:
            if not os.path.basename(exe).startswith(interp):
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"FAAS_FUNCTION_NAME={arm.name}".encode() not in env:
                continue
        try:
            found.append(smaps_rollup(pid))
        except OSError:
            continue
    for t in threads:
        t.join(timeout=SLEEP_S + 30)
    where = f"{arm.server.label}/{arm.name}"
    for res in results:
        if res is None or res[0] != 200:
            raise Fail(f"{where}: memory probe request failed: {res}")
        if res[1] != arm.want:
            raise Fail(f"{where}: memory probe x-faas-start {res[1]!r}, expected {arm.want!r}")
    if len(found) != PROBE_INSTANCES:
        raise Fail(f"{where}: memory probe found {len(found)} instance processes, expected {PROBE_INSTANCES}")
    arm.mem = found


def med(rolls, key):
    return statistics.median(r.get(key, 0) for r in rolls)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(cmd):
    try:
        r = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip()
    except OSError as e:
        return f"unavailable ({e})"


def run(a, work, servers):
    faas = os.path.abspath(a.faas) if a.faas else build_faas()
    if not os.access(faas, os.X_OK):
        raise Fail(f"{faas} not found (cargo build --release -p faas-platform)")
    if os.geteuid() != 0:
        raise Fail("run as root: the pooled sandbox needs it")
    for p in (a.python, a.node):
        if not os.access(p, os.X_OK):
            raise Fail(f"interpreter {p} not found")

    fdirs = {}
    for runtime, function, name, fname, src, handler in FUNCTIONS:
        d = os.path.join(work, "functions", name)
        os.makedirs(d)
        with open(os.path.join(d, fname), "w") as f:
            f.write(src)
        os.chmod(d, 0o755)
        fdirs[name] = d

    for label, extra, runtimes in SERVERS:
        s = Server(label, extra, runtimes, faas, a.python, a.node, work)
        servers.append(s)
        s.start()
    for s in servers:
        s.wait_ready()
        print(f"server {s.label:14} pid {s.proc.pid:>7} {s.url}  ({' '.join(s.cmd[1:])})", flush=True)

    t_deploy = time.perf_counter()
    for s in servers:
        for runtime, function, name, fname, src, handler in FUNCTIONS:
            if runtime in s.runtimes:
                out = deploy(faas, s, name, fdirs[name], runtime, handler)
                print(f"  {s.label:14} {out}", flush=True)
    print(f"deploys took {time.perf_counter() - t_deploy:.1f} s", flush=True)

    # Arms ordered function by function, the servers taking turns within each.
    arms = [Arm(s, fn) for fn in FUNCTIONS for s in servers if fn[0] in s.runtimes]
    t_lat = time.perf_counter()
    for i in range(WARMUP + a.runs):
        for arm in arms:
            arm.invoke(record=i >= WARMUP)
    lat_s = time.perf_counter() - t_lat
    print(f"latency: {WARMUP} warm-up + {a.runs} interleaved rounds of {len(arms)} arms took {lat_s:.1f} s", flush=True)

    t_mem = time.perf_counter()
    for arm in arms:
        memory_probe(arm)
    print(f"memory probes took {time.perf_counter() - t_mem:.1f} s", flush=True)

    # Report.
    print()
    print(f"## Runtimes through the platform: {a.runs} interleaved runs per arm, per-request instances\n")
    print(f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}")
    print(f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
          f"Linux {platform.release()}")
    print(f"- faas: {faas}")
    print(f"- python: {a.python} -> {os.path.realpath(a.python)} ({version(a.python)})")
    print(f"- node: {a.node} -> {os.path.realpath(a.node)} ({version(a.node)})")
    print(f"- client: Python {platform.python_version()} http.client, one keep-alive connection per arm; "
          f"e2e = perf_counter around request+response; start = server-timing start;dur")
    print("- servers: pooled = `faas serve --sandbox pooled`, pooled-nosnap = `... --sandbox pooled --no-snapshots`, "
          "process = `... --sandbox process` (NOT isolated, dev baseline)")
    recon = sum(arm.reconnects for arm in arms)
    if recon:
        print(f"- WARNING: {recon} connection re-opens during the latency runs")
    print()
    print("| runtime | function | server | start mode | e2e p50 | e2e p99 | start p50 | start p99 "
          "| Private_Dirty / instance | Rss / instance | Pss / instance |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for arm in arms:
        print(f"| {arm.runtime} | {arm.function} | {arm.server.label} | {arm.want} "
              f"| {pct(arm.e2e, .5):.2f} ms | {pct(arm.e2e, .99):.2f} ms "
              f"| {pct(arm.start, .5):.2f} ms | {pct(arm.start, .99):.2f} ms "
              f"| {med(arm.mem, 'Private_Dirty'):.0f} kB | {med(arm.mem, 'Rss'):.0f} kB "
              f"| {med(arm.mem, 'Pss'):.0f} kB |")
    print()
    print(f"Memory: median of {PROBE_INSTANCES} concurrent instances each, /proc/PID/smaps_rollup "
          f"{PROBE_AFTER_S} s into a {SLEEP_S} s sleep.")
    print()
    print("Python ratios at p50 (cold / restore):\n")
    print("| function | pooled cold / pooled restore, e2e | start | process cold / pooled restore, e2e | start |")
    print("|---|---:|---:|---:|---:|")
    by = {(arm.server.label, arm.name): arm for arm in arms}
    for runtime, function, name, *_ in FUNCTIONS:
        if runtime != "python":
            continue
        r, nc, pc = by[("pooled", name)], by[("pooled-nosnap", name)], by[("process", name)]
        re50, rs50 = pct(r.e2e, .5), pct(r.start, .5)
        print(f"| {function} | {pct(nc.e2e, .5) / re50:.1f}x | {pct(nc.start, .5) / rs50:.1f}x "
              f"| {pct(pc.e2e, .5) / re50:.1f}x | {pct(pc.start, .5) / rs50:.1f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="measured requests per (server, function) [200]")
    ap.add_argument("--faas", help="the faas binary (default: build it with cargo)")
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter of Python functions")
    ap.add_argument("--node", default="/usr/bin/node", help="interpreter of Node.js functions")
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="faas-rt-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    servers = []
    code = 0
    try:
        run(a, work, servers)
    except Fail as e:
        print(f"runtimes-through-platform: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("runtimes-through-platform: interrupted", file=sys.stderr)
        code = 130
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                print(f"runtimes-through-platform: stopping {s.label}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    sys.exit(code)


if __name__ == "__main__":
    main()
