#!/usr/bin/env bash
# Same-run A/B of `faas` binaries on the cold path: for each round and each
# binary, a fresh `faas serve` (pooled sandboxes, as root) with the bundled
# native `hello` and a Python hello deployed (both with
# --working-set-request ''), 200 warm-up requests, then
# `faas bench cold --server URL --function F --requests N --concurrency C`.
# Prints one line per run: p50 p90 p99 (µs), req/s, errors and the
# machine's CPU time per request (busy time from /proc/stat over the run,
# everything on the machine included: keep it otherwise idle).
#
#   benches/scripts/cold-ab.sh ROUNDS FUNCTION(hello|py) REQUESTS CONCURRENCY BINARY...
#   e.g. benches/scripts/cold-ab.sh 5 py 1500 1 /tmp/faas-before target/release/faas
set -euo pipefail
if [ $# -lt 5 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
rounds=$1 fn=$2 n=$3 c=$4
shift 4
work=$(mktemp -d /tmp/faas-cold-ab.XXXXXX)
server=
stop() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap 'stop; rm -rf "$work"' EXIT
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
mkdir -p "$work/py"
printf 'def lambda_handler(event, context):\n    return {"hello": event}\n' >"$work/py/lambda_function.py"
for r in $(seq "$rounds"); do
    for bin in "$@"; do
        state="$work/state"
        rm -rf "$state"
        FAAS_LOG=warn "$bin" serve --listen 127.0.0.1:0 --quiet-instances --state-dir "$state" \
            >"$work/serve.log" 2>&1 &
        server=$!
        url=
        for _ in $(seq 100); do
            url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.log" | head -1 || true)
            [ -n "$url" ] && break
            sleep 0.1
        done
        [ -n "$url" ] || { echo "$bin: the server did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
        "$bin" example-functions --out "$work/ex" >/dev/null 2>&1 || true
        "$bin" deploy hello --server "$url" --dir "$work/ex/hello" --handler hello \
            --working-set-request '' >/dev/null
        "$bin" deploy py --server "$url" --dir "$work/py" --runtime python \
            --handler lambda_function.lambda_handler --working-set-request '' >/dev/null
        "$bin" bench cold --server "$url" --function "$fn" --requests 200 --concurrency "$c" \
            --json >/dev/null
        b0=$(busy)
        json=$("$bin" bench cold --server "$url" --function "$fn" --requests "$n" \
            --concurrency "$c" --json)
        b1=$(busy)
        stop
        echo "$json" | python3 -c "
import json, sys
d = json.load(sys.stdin)
print('round $r  $bin  p50 %d  p90 %d  p99 %d  %d req/s  errors %d  cpu/req %.2f ms' % (
    d['p50_us'], d['p90_us'], d['p99_us'], d['rps'], d['errors'], ($b1 - $b0) * 10.0 / $n))"
    done
done
