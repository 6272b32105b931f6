#!/usr/bin/env python3
"""Restore from a snapshot and fork of a template against a cold exec of the
same program, in the same run, for a small native process and a Python
process with imports: latencies, Private_Dirty per instance, ratios, and the
issue's targets.

    python3 benches/scripts/snapshot-vs-cold.py [--runs 200] [--rounds-only]
        [--python PATH] [--json PATH] [--no-run] [-- CRITERION ARGS...]

Runs `cargo bench -p faas-benches --bench snapshot` (see the header of
benches/benches/snapshot.rs for what is timed): the restores and forks are
done in-process (`Snapshot::restore`, `ForkTemplate::fork`), so no CLI start-up
is counted; the cold arm spawns the same binary/script with `--cold`. The
bench writes its interleaved rounds (--runs of each arm) as JSON; this
script prints them as tables, with the criterion medians of the
`snapshot_*` cases when criterion ran. Run as root from the repository root.
`--no-run` only prints the tables from an existing JSON file.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARMS = [
    ("cold", "cold exec (`--cold`)"),
    ("restore", "`Snapshot::restore`"),
    ("fork", "`ForkTemplate::fork` (no namespaces)"),
    ("fork_ns", "`ForkTemplate::fork` (pid, ipc, uts, mount, net namespaces)"),
]
# The targets.
NATIVE_FIRST_P50_US = 300
PYTHON_RATIO = 30
DIRTY_KB = {"native": 256, "python": 1024}


def target_dir():
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def us(x):
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs"


def criterion_medians():
    out = {}
    for est in sorted((target_dir() / "criterion").glob("snapshot_*/*/new/estimates.json")):
        name = f"{est.parent.parent.parent.name}/{est.parent.parent.name}"
        out[name] = json.loads(est.read_text())["median"]["point_estimate"] / 1000
    return out


def report(v, medians):
    print(f"\n{v['runs']} interleaved runs of each arm (rounds took {v['rounds_seconds']:.1f} s); "
          f"Python: {v['python_interpreter']}")
    for name in ("native", "python"):
        t = v[name]
        s = t["snapshot"]
        print(f"\n## {name}: snapshot {s['pages']} pages, {s['bytes'] / 1024:.0f} KiB, dump {s['dump_ms']:.1f} ms\n")
        print("| arm | first instruction p50 / p99 | response p50 / p99 | response without the smaps read p50 / p99 "
              "| Private_Dirty at t= / after response (median) | minor faults to the response (median) |")
        print("|---|---|---|---|---|---|")
        for arm, label in ARMS:
            a = t[arm]
            if arm == "cold":
                first = (f"main {us(a['main_us']['p50'])} / {us(a['main_us']['p99'])}; "
                         f"ready {us(a['ready_us']['p50'])} / {us(a['ready_us']['p99'])}")
            else:
                first = f"{us(a['first_instruction_us']['p50'])} / {us(a['first_instruction_us']['p99'])}"
            resp = f"{us(a['response_us']['p50'])} / {us(a['response_us']['p99'])}"
            net = f"{us(a['response_net_us']['p50'])} / {us(a['response_net_us']['p99'])}"
            dirty = f"{a['private_dirty_kb_at_first']} / {a['private_dirty_kb_after_response']} kB"
            print(f"| {label} | {first} | {resp} | {net} | {dirty} | {a['minor_faults_after_response']} |")
        r = t["ratios"]
        print(f"\nratios at p50: cold/restore response {r['cold_response_over_restore_response_p50']:.1f}x "
              f"(without the smaps reads {r['cold_response_net_over_restore_response_net_p50']:.1f}x), "
              f"cold/fork response {r['cold_response_over_fork_response_p50']:.1f}x, "
              f"cold main / restore first instruction {r['cold_main_over_restore_first_instruction_p50']:.2f}x, "
              f"restore/fork response {r['restore_response_over_fork_response_p50']:.2f}x")
        crit = {k: m for k, m in medians.items() if k.startswith(f"snapshot_{name}/")}
        if crit:
            print("criterion medians: " + ", ".join(f"{k.split('/', 1)[1]} {us(m)}" for k, m in crit.items()))

    print("\n## targets\n")
    n, p = v["native"], v["python"]
    checks = [
        (f"native restore → first instruction p50 ≤ {NATIVE_FIRST_P50_US} µs",
         n["restore"]["first_instruction_us"]["p50"] <= NATIVE_FIRST_P50_US,
         us(n["restore"]["first_instruction_us"]["p50"])),
        (f"Python restore answers ≥ {PYTHON_RATIO}x faster than cold exec (p50 response)",
         p["ratios"]["cold_response_over_restore_response_p50"] >= PYTHON_RATIO,
         f"{p['ratios']['cold_response_over_restore_response_p50']:.1f}x"),
        ("the same without the targets' smaps_rollup reads (p50 response net)",
         p["ratios"]["cold_response_net_over_restore_response_net_p50"] >= PYTHON_RATIO,
         f"{p['ratios']['cold_response_net_over_restore_response_net_p50']:.1f}x"),
    ]
    for name in ("native", "python"):
        a = v[name]["restore"]
        for when, key in (("at first instruction", "private_dirty_kb_at_first"),
                          ("after the response", "private_dirty_kb_after_response")):
            checks.append((f"{name} Private_Dirty per restored instance {when} ≤ {DIRTY_KB[name]} KiB",
                           a[key] <= DIRTY_KB[name], f"{a[key]} kB"))
    for what, ok, got in checks:
        print(f"- {'met' if ok else 'NOT MET'}: {what}: {got}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds-only", action="store_true", help="skip the criterion cases")
    ap.add_argument("--python", help="interpreter (default: /usr/bin/python3, else the real executable behind python3)")
    ap.add_argument("--json", help="where the bench writes its rounds (default: TARGET_DIR/snapshot-latencies.json)")
    ap.add_argument("--no-run", action="store_true", help="only print the tables of an existing JSON file")
    ap.add_argument("criterion", nargs="*", help="arguments for criterion (after --)")
    a = ap.parse_args()
    path = pathlib.Path(a.json) if a.json else target_dir() / "snapshot-latencies.json"
    if not a.no_run:
        if os.geteuid() != 0:
            sys.exit("snapshot-vs-cold: run as root (ptrace, PR_SET_MM, namespaces)")
        env = dict(os.environ, SNAPSHOT_BENCH_RUNS=str(a.runs), SNAPSHOT_BENCH_JSON=str(path))
        if a.rounds_only:
            env["SNAPSHOT_BENCH_ROUNDS_ONLY"] = "1"
        if a.python:
            env["SNAPSHOT_BENCH_PYTHON"] = a.python
        cmd = ["cargo", "bench", "-p", "faas-benches", "--bench", "snapshot"]
        if a.criterion:
            cmd += ["--", *a.criterion]
        started = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        print(f"\ncargo bench took {time.monotonic() - started:.0f} s", file=sys.stderr)
    v = json.loads(path.read_text())
    report(v, {} if a.rounds_only else criterion_medians())


if __name__ == "__main__":
    main()
