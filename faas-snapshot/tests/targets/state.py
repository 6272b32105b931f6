#!/usr/bin/env python3
"""state.py: Python interpreter target for faas-snapshot's tests.

Run: python3 state.py        (Python 3.11, standard library only)

Does a heavy standard-library import, builds a deterministic state (a dict
of 10,000 entries, a compiled regex, a Fraction sum, Decimal values, dates,
a parsed e-mail message) and its sha256 digest, closes every fd above 2 and
stops itself with SIGSTOP. When continued it recomputes the digest from the
state and prints `OK python <digest>` (the same digest on every run) and
exits 0, or `FAIL python: ...` and exits 1.
"""

import collections
import datetime
import decimal
import email.parser
import fractions
import hashlib
import json
import os
import re
import signal
import statistics
import sys

MESSAGE = """\
From: snapshot@example.com
To: restore@example.com
Subject: state {n}
X-Entries: 10000

Body line one.
Body line two.
"""


def build_state():
    """A deterministic state: same values on every run (no sets, no hash-order)."""
    entries = {}
    for i in range(10_000):
        key = f"key-{i:05d}"
        entries[key] = {
            "i": i,
            "square": i * i,
            "word": "".join(chr(97 + (i * 7 + k) % 26) for k in range(6)),
        }
    decimal.getcontext().prec = 40
    return {
        "entries": entries,
        "regex": re.compile(r"([a-z])\1|q[aeiou]"),
        "fraction": sum(fractions.Fraction(1, k) for k in range(1, 300)),
        "decimal": decimal.Decimal(2).sqrt() * decimal.Decimal("1.000001") ** 1000,
        "dates": [datetime.date(2024, 1, 1) + datetime.timedelta(days=37 * k) for k in range(50)],
        "message": email.parser.Parser().parsestr(MESSAGE.format(n=42)),
        "counter": collections.Counter(e["word"][0] for e in entries.values()),
        "deque": collections.deque(range(1000), maxlen=500),
    }


def digest(state):
    """sha256 over a deterministic computation of every part of the state."""
    entries = state["entries"]
    words = [e["word"] for e in entries.values()]
    result = {
        "n": len(entries),
        "square_sum": sum(e["square"] for e in entries.values()),
        "regex_hits": sum(len(state["regex"].findall(w)) for w in words),
        "fraction": str(state["fraction"] * fractions.Fraction(3, 7)),
        "decimal": str(state["decimal"] + decimal.Decimal(1) / decimal.Decimal(7)),
        "dates": [d.isoformat() for d in state["dates"]],
        "weekday_mode": statistics.mode(d.weekday() for d in state["dates"]),
        "median": statistics.median(e["i"] for e in entries.values()),
        "mean_square": str(statistics.mean(fractions.Fraction(e["square"]) for e in entries.values())),
        "subject": state["message"]["Subject"],
        "body": state["message"].get_payload(),
        "counter": sorted(state["counter"].items()),
        "deque": [state["deque"][0], state["deque"][-1], sum(state["deque"])],
    }
    text = json.dumps(result, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def main():
    state = build_state()
    before = digest(state)
    sys.stdout.flush()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))

    os.kill(os.getpid(), signal.SIGSTOP)

    after = digest(state)
    if after != before:
        print(f"FAIL python: digest {after}, before the stop {before}", flush=True)
        return 1
    print(f"OK python {after}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
