#!/usr/bin/env bash
# Start mode fork against restore, in one run through the real `faas`
# binary and real HTTP (pooled sandbox, as root): the bundled native `hello`
# deployed twice on one server, once with the default start (each instance
# restored from the snapshot into a sandbox of its own) and once with
# `--start fork` (each instance forked from the function's template), and
# a Python hello the same two ways; `faas bench cold` at concurrency 1 and
# 4 for each.
#
#   benches/scripts/fork-vs-restore.sh [REQUESTS]
#
# FAAS (default: $CARGO_TARGET_DIR/release/faas, built first) is the binary.
# The server uses a temporary state directory and is stopped at the end.
set -euo pipefail
N=${1:-2000}
if [ -z "${FAAS:-}" ]; then
    cargo build --release -q -p faas-platform
    FAAS=${CARGO_TARGET_DIR:-target}/release/faas
fi
work=$(mktemp -d /tmp/faas-fork.XXXXXX)
cleanup() {
    if [ -f "$work/pid" ]; then
        kill "$(cat "$work/pid")" 2>/dev/null || true
        sleep 1
    fi
    rm -rf "$work"
}
trap cleanup EXIT

p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$p"
FAAS_LOG=warn "$FAAS" serve --sandbox pooled --quiet-instances --listen "127.0.0.1:$p" \
    --state-dir "$work/state" >"$work/serve.log" 2>&1 &
echo $! >"$work/pid"
for _ in $(seq 100); do
    curl -fs "$url/healthz" >/dev/null 2>&1 && break
    sleep 0.05
done
"$FAAS" example-functions --out "$work/ex" >/dev/null
mkdir -p "$work/py"
printf 'def lambda_handler(event, context):\n    return {"hello": event}\n' >"$work/py/lambda_function.py"
"$FAAS" deploy hello --dir "$work/ex/hello" --handler hello --server "$url" >/dev/null
"$FAAS" deploy hellofork --dir "$work/ex/hello" --handler hello --start fork --server "$url" >/dev/null
"$FAAS" deploy py --dir "$work/py" --runtime python \
    --handler lambda_function.lambda_handler --server "$url" >/dev/null
"$FAAS" deploy pyfork --dir "$work/py" --runtime python --start fork \
    --handler lambda_function.lambda_handler --server "$url" >/dev/null

row() { # LABEL JSON
    python3 - "$1" "$2" <<'PY'
import json, sys
label, j = sys.argv[1], json.loads(sys.argv[2])
modes = ",".join(f"{k}={v}" for k, v in sorted(j.get("start_modes", {}).items()) if v)
print(f"{label:<24} p50 {j['p50_us']/1e3:7.2f} ms  p90 {j['p90_us']/1e3:7.2f}  p99 {j['p99_us']/1e3:7.2f}"
      f"  max {j['max_us']/1e3:7.2f}  {j['rps']:8.0f} req/s  errors {j['errors']}  [{modes}]")
PY
}
bench() { # LABEL FUNCTION CONCURRENCY
    row "$1" "$("$FAAS" bench cold --server "$url" --function "$2" --concurrency "$3" --requests "$N" --json)"
}
echo "faas fork vs restore, $(date -u +%FT%TZ), $(nproc) CPUs, N=$N, load $(cut -d' ' -f1-3 /proc/loadavg)"
for c in 1 4; do
    bench "native restore c=$c" hello "$c"
    bench "native fork    c=$c" hellofork "$c"
    bench "python restore c=$c" py "$c"
    bench "python fork    c=$c" pyfork "$c"
done
