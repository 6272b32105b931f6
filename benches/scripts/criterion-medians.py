#!/usr/bin/env python3
"""Print the median (and its 95 % interval) of every criterion benchmark
under target/criterion, optionally filtered by a name prefix.

criterion's console line shows the mean/slope estimate; BENCHMARKS.md quotes
medians, which this reads from each benchmark's new/estimates.json.

    benches/scripts/criterion-medians.py [PREFIX]
"""
import json
import pathlib
import sys

prefix = sys.argv[1] if len(sys.argv) > 1 else ""
root = pathlib.Path(__file__).resolve().parents[2] / "target" / "criterion"


def fmt(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.1f} ns"


for est in sorted(root.glob("**/new/estimates.json")):
    name = str(est.parent.parent.relative_to(root))
    if not name.startswith(prefix):
        continue
    m = json.loads(est.read_text())["median"]
    ci = m["confidence_interval"]
    print(f"{name:40} median {fmt(m['point_estimate']):>12}  "
          f"[{fmt(ci['lower_bound'])} .. {fmt(ci['upper_bound'])}]")
