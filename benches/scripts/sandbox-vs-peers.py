#!/usr/bin/env python3
"""`faas sandbox run` of a static hello against bubblewrap and runc, in the
same run, interleaved, with the ratios.

    benches/scripts/sandbox-vs-peers.py [--runs 200] [--faas target/release/faas]

Each tool runs the same static C hello world from the same read-only root
directory, with every namespace it offers:

  faas          faas sandbox run --root ROOT -- /hello, through a `faas
                sandbox serve` this script starts (sandboxes parked ahead)
  faas-oneshot  faas sandbox run --no-daemon ...: the command sets its
                sandbox up itself
  bwrap         bwrap --unshare-all --ro-bind ROOT / --dev /dev --tmpfs /tmp /hello
  runc          runc run --bundle BUNDLE ID   (bundle = ROOT as rootfs, `runc spec` config)
  hello         the hello itself, no sandbox: the floor of any tool

Wall time of the whole command (spawn of the tool, set-up, the hello,
teardown, until its exit status) is measured by a small C driver
(posix_spawn, waitpid, CLOCK_MONOTONIC), so the clock does not include
an interpreter's own fork cost. Rounds of 10 runs per tool alternate
between the tools. Needs root, gcc (static glibc), bubblewrap and runc
(apt-get install bubblewrap runc).
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

# Runs argv[2..] argv[1] times with stdout to a pipe it checks, printing
# each run's wall time in microseconds.
DRIVER_C = r"""
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) {
        int p[2];
        if (pipe(p)) return 2;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawn_file_actions_addclose(&fa, p[0]);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        pid_t pid;
        if (posix_spawn(&pid, argv[2], &fa, 0, argv + 2, environ)) {
            perror(argv[2]);
            return 2;
        }
        int st;
        waitpid(pid, &st, 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        close(p[1]);
        char out[16] = {0};
        ssize_t got = read(p[0], out, sizeof out - 1);
        close(p[0]);
        if (st != 0 || got != 6 || strcmp(out, "hello\n")) {
            fprintf(stderr, "run %d: status %d, output %zd bytes\n", i, st, got);
            return 1;
        }
        printf("%ld\n", (b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000);
    }
    return 0;
}
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
        driver = os.path.join(work, "drive")
        with open(driver + ".c", "w") as f:
            f.write(DRIVER_C)
        subprocess.run(["gcc", "-O2", "-o", driver, driver + ".c"], check=True)
        sock = os.path.join(work, "sandbox.sock")
        env = dict(os.environ, FAAS_SANDBOX_SOCKET=sock)
        daemon = subprocess.Popen([faas, "sandbox", "serve", "--socket", sock], stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"sandbox-vs-peers: faas sandbox serve did not start: {daemon.stderr.read().decode(errors='replace').strip()}")
            time.sleep(0.01)
        run_id = [0]

        def runc_cmd():
            run_id[0] += 1
            return [shutil.which("runc"), "run", "--bundle", bundle, f"faas-bench-{os.getpid()}-{run_id[0]}"]

        cmds = {
            "faas": lambda: [faas, "sandbox", "run", "--root", root, "--", "/hello"],
            "faas-oneshot": lambda: [faas, "sandbox", "run", "--no-daemon", "--root", root, "--", "/hello"],
            "bwrap": lambda: [shutil.which("bwrap"), "--unshare-all", "--ro-bind", root, "/", "--dev", "/dev", "--tmpfs", "/tmp", "/hello"],
            "runc": runc_cmd,
            # Not a peer: the same hello exec'd directly, no sandbox (the
            # floor any tool pays once for the program itself).
            "hello": lambda: [os.path.join(root, "hello")],
        }
        times = {k: [] for k in cmds}
        try:
            # Warm-up (untimed): the daemon parks sandboxes of this kind.
            for _ in range(3):
                subprocess.run(cmds["faas"](), env=env, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            per = 10
            for _ in range((a.runs + per - 1) // per):
                for name, cmd in cmds.items():
                    if name == "runc":
                        # runc needs a fresh container id per run.
                        xs = []
                        for _ in range(per):
                            r = subprocess.run([driver, "1"] + cmd(), env=env, capture_output=True, stdin=subprocess.DEVNULL)
                            if r.returncode != 0:
                                sys.exit(f"sandbox-vs-peers: runc failed: {r.stderr.decode(errors='replace').strip()}")
                            xs += r.stdout.split()
                    else:
                        # stdin /dev/null for every tool (with a terminal
                        # there, `faas sandbox run` keeps the command in its
                        # own process group and does not use the daemon).
                        r = subprocess.run([driver, str(per)] + cmd(), env=env, capture_output=True, stdin=subprocess.DEVNULL)
                        if r.returncode != 0:
                            sys.exit(f"sandbox-vs-peers: {name} failed: {r.stderr.decode(errors='replace').strip()}")
                        xs = r.stdout.split()
                    times[name] += [int(x) / 1e6 for x in xs]
        finally:
            daemon.terminate()
            daemon.wait()
        print(f"{'tool':13} {'runs':>5} {'p50':>9} {'p99':>9} {'mean':>9}")
        for name, xs in times.items():
            print(f"{name:13} {len(xs):5d} {pct(xs, .5)*1e3:7.2f}ms {pct(xs, .99)*1e3:7.2f}ms {statistics.mean(xs)*1e3:7.2f}ms")
        for name in ("faas", "faas-oneshot"):
            f50 = pct(times[name], .5)
            print(f"ratio p50 ({name}): bwrap/{name} {pct(times['bwrap'], .5)/f50:.2f}x, runc/{name} {pct(times['runc'], .5)/f50:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
