#!/usr/bin/env python3
"""respond.py: the Python target of benches/benches/snapshot.rs.

Run: python3 respond.py [--cold]     (Python 3.11, standard library only)

A small Python "function" with a realistic start-up: it imports json,
decimal, re, collections, hashlib, datetime, email.parser, http.client,
urllib.parse, argparse, logging, dataclasses, typing, fractions, statistics
and uuid, builds its state (a 5,000-product catalogue of dataclasses with
Decimal prices, compiled routes, a configured logger, an argparse parser, a
parsed e-mail template, tax tables), runs `gc.collect(); gc.freeze()` (what a
runtime does before a fork or a snapshot so the collector does not touch
every object afterwards), closes every fd above 2 and stops itself with
SIGSTOP (the snapshot point). With `--cold` it skips the stop and goes
straight on, so the same script is the cold-exec baseline.

After the snapshot point it writes, in order, on fd 1 (os.write, no stdio
buffering):

  t=<ns>                 CLOCK_MONOTONIC, taken by the first statement after
                         the stop returns (cold: at the same point)
  main=<ns>              --cold only: CLOCK_MONOTONIC at the script's first
                         statement (after interpreter start-up, before the
                         imports)
  private_dirty_kb=<N>   Private_Dirty of /proc/self/smaps_rollup
  smaps_ns=<N>           how long reading it took (a measurement cost, not
                         part of answering)
  response {...}         the answer to a fixed HTTP request: headers parsed
                         with email.parser, query with urllib.parse, a JSON
                         body; catalogue look-ups, Decimal totals with tax, a
                         uuid5 and a sha256 ETag, JSON-encoded

then reads fd 0 until end of file (so the caller can look at the process
after the response) and exits 0.
"""
import time

T_MAIN = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import decimal  # noqa: E402
import email.parser  # noqa: E402
import fractions  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402
import urllib.parse  # noqa: E402
import uuid  # noqa: E402

REQUEST = (
    "POST /v1/quote?currency=EUR&region=de&promo=SPRING HTTP/1.1\r\n"
    "Host: shop.example.com\r\n"
    "Content-Type: application/json\r\n"
    "X-Request-Id: 7d444840-9dc0-11d1-b245-5ffdce74fad2\r\n"
    "\r\n"
    '{"items": [{"sku": "SKU-01234", "qty": 2}, {"sku": "SKU-04321", "qty": 1},'
    ' {"sku": "SKU-00042", "qty": 5}]}'
)

NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: decimal.Decimal
    tags: typing.Tuple[str, ...]
    added: datetime.date


def build_state(argv: typing.List[str]) -> typing.Dict[str, typing.Any]:
    parser = argparse.ArgumentParser(prog="respond")
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args(argv)
    log = logging.getLogger("respond")
    log.addHandler(logging.StreamHandler())
    log.setLevel(logging.WARNING)
    decimal.getcontext().prec = 28
    words = ["red", "blue", "steel", "oak", "mini", "pro", "eco", "max"]
    catalogue = {}
    for i in range(5000):
        sku = f"SKU-{i:05d}"
        catalogue[sku] = Product(
            sku=sku,
            name=" ".join(words[(i * k) % len(words)] for k in (1, 3, 5)),
            price=decimal.Decimal(i % 997) / 4 + decimal.Decimal("0.99"),
            tags=tuple(words[(i + k) % len(words)] for k in range(i % 4)),
            added=datetime.date(2020, 1, 1) + datetime.timedelta(days=i % 1500),
        )
    prices = [float(p.price) for p in catalogue.values()]
    return {
        "args": args,
        "log": log,
        "catalogue": catalogue,
        "routes": {
            "quote": re.compile(r"^POST /v1/quote(?:\?(?P<query>\S*))? HTTP/1\.[01]$"),
            "health": re.compile(r"^GET /healthz HTTP/1\.[01]$"),
        },
        "tax": {"de": decimal.Decimal("0.19"), "fr": decimal.Decimal("0.20"), "us": decimal.Decimal("0")},
        "promos": {"SPRING": fractions.Fraction(9, 10), "VIP": fractions.Fraction(4, 5)},
        "tag_counts": collections.Counter(t for p in catalogue.values() for t in p.tags),
        "price_median": statistics.median(prices),
        "template": email.parser.Parser().parsestr("From: shop@example.com\nSubject: quote\n\nThanks.\n"),
        "status": dict(http.client.responses),
    }


def handle(state: typing.Dict[str, typing.Any], request: str) -> bytes:
    head, _, body = request.partition("\r\n\r\n")
    line, _, header_text = head.partition("\r\n")
    headers = email.parser.Parser().parsestr(header_text + "\r\n", headersonly=True)
    m = state["routes"]["quote"].match(line)
    if m is None:
        return json.dumps({"status": 404, "reason": state["status"][404]}).encode()
    query = urllib.parse.parse_qs(m.group("query") or "")
    region = query.get("region", ["us"])[0]
    promo = state["promos"].get(query.get("promo", [""])[0], fractions.Fraction(1))
    order = json.loads(body)
    lines = []
    total = decimal.Decimal(0)
    for item in order["items"]:
        p = state["catalogue"][item["sku"]]
        amount = p.price * item["qty"]
        total += amount
        lines.append({"sku": p.sku, "name": p.name, "qty": item["qty"], "amount": str(amount)})
    discounted = total * decimal.Decimal(promo.numerator) / decimal.Decimal(promo.denominator)
    gross = (discounted * (1 + state["tax"][region])).quantize(decimal.Decimal("0.01"))
    state["log"].info("quote %s %s", headers["X-Request-Id"], gross)
    result = {
        "status": 200,
        "reason": state["status"][200],
        "quote": str(uuid.uuid5(NAMESPACE, headers["X-Request-Id"])),
        "currency": query.get("currency", ["USD"])[0],
        "lines": lines,
        "gross": str(gross),
        "cheaper_than_median": float(gross) < state["price_median"],
    }
    text = json.dumps(result, sort_keys=True, separators=(",", ":"))
    result["etag"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return json.dumps(result, sort_keys=True, separators=(",", ":")).encode()


def private_dirty_kb() -> int:
    with open("/proc/self/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Private_Dirty:"):
                return int(line.split()[1])
    return -1


def main() -> int:
    state = build_state(sys.argv[1:])
    cold = state["args"].cold
    gc.collect()
    gc.freeze()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))

    if not cold:
        os.kill(os.getpid(), signal.SIGSTOP)

    t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    os.write(1, b"t=%d\n" % t)
    if cold:
        os.write(1, b"main=%d\n" % T_MAIN)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    dirty = private_dirty_kb()
    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    os.write(1, b"private_dirty_kb=%d\nsmaps_ns=%d\n" % (dirty, t1 - t0))
    os.write(1, b"response " + handle(state, REQUEST) + b"\n")
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
