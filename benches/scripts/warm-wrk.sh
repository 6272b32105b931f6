#!/usr/bin/env bash
# The warm path under wrk: `faas serve` (release build) with the bundled
# `hello` deployed keep-alive, driven by wrk for DURATION seconds at a few
# connection counts; prints requests/s and latency percentiles per count.
#
# usage: benches/scripts/warm-wrk.sh
#   env: FAAS (default $CARGO_TARGET_DIR/release/faas or target/release/faas),
#        CONNS ("1 8 32 128"), DURATION (10), THREADS (2), SLOTS (256),
#        SERVE_ARGS (more `faas serve` options, e.g. --no-pin-instances)
#
# Needs wrk (apt-get install wrk) and a release build
# (cargo build --release -p faas-platform). Every request is POST
# /invoke/hello with a 2-byte body over keep-alive connections; the
# instances run sandboxed (root) and are reused. One untimed 3 s run at the
# largest count warms up the instances first. `faas bench warm --server
# URL --function hello --concurrency C` measures the same with the
# platform's own load generator.
set -euo pipefail
cd "$(dirname "$0")/../.."

FAAS=${FAAS:-${CARGO_TARGET_DIR:-target}/release/faas}
CONNS=${CONNS:-"1 8 32 128"}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
SLOTS=${SLOTS:-256}

command -v wrk >/dev/null || { echo "warm-wrk: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -x "$FAAS" ] || { echo "warm-wrk: $FAAS not found (cargo build --release -p faas-platform, or set FAAS)" >&2; exit 1; }

work=$(mktemp -d /tmp/faas-warm-wrk.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$FAAS" serve --listen 127.0.0.1:0 --quiet-instances --slots "$SLOTS" \
    --state-dir "$work/state" ${SERVE_ARGS:-} >"$work/serve.out" 2>"$work/serve.err" &
server=$!
url=
for _ in $(seq 100); do
    url=$(grep -o 'http://[0-9.:]*' "$work/serve.out" || true)
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "warm-wrk: faas serve did not start" >&2; exit 1; }
export FAAS_SERVER=$url

"$FAAS" example-functions --out "$work/fns" >/dev/null
max=0
for c in $CONNS; do [ "$c" -gt "$max" ] && max=$c; done
"$FAAS" deploy hello --dir "$work/fns/hello" --handler hello \
    --keep-alive-ms 600000 --max-instances $((max > 100 ? max : 100)) >/dev/null

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = "hi"
EOF

threads_for() { [ "$1" -lt "$THREADS" ] && echo "$1" || echo "$THREADS"; }

wrk -t"$(threads_for "$max")" -c"$max" -d3s -s "$work/post.lua" "$url/invoke/hello" >/dev/null

echo "faas warm path under wrk: hello keep-alive, ${DURATION}s per row, $(nproc) CPUs, $("$FAAS" --version)"
printf '%-6s %12s %10s %10s %10s %10s %8s\n' CONNS REQ/S P50 P90 P99 MAX NON-2XX
for c in $CONNS; do
    out=$(wrk -t"$(threads_for "$c")" -c"$c" -d"${DURATION}s" --latency -s "$work/post.lua" "$url/invoke/hello")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    pct() { awk -v p="$1%" '$1 == p {print $2}' <<<"$out"; }
    max_lat=$(awk '$1 == "Latency" {print $4; exit}' <<<"$out")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    errs=$(awk '/Socket errors:/ {print}' <<<"$out")
    printf '%-6s %12s %10s %10s %10s %10s %8s\n' "$c" "$rps" "$(pct 50)" "$(pct 90)" "$(pct 99)" "$max_lat" "${bad:-0}"
    [ -z "$errs" ] || echo "       $errs"
done
