#!/usr/bin/env bash
# Issue 7's targets, measured in one run through the real `faas` binary and
# real HTTP (pooled sandbox, as root):
#
#   1. native cold invoke: restored from its snapshot (start: restore) vs
#      started cold (the same server with --no-snapshots), concurrency 1
#   2. Python cold invoke: restored vs cold, concurrency 1
#   3. sustained isolated cold invocations: native, restore, concurrency 2 and 4
#   4. the warm path: hello kept alive, concurrency 8 and 32
#
#   cd /work/main && benches/scripts/platform-targets.sh [REQUESTS]
#
# FAAS (default: $CARGO_TARGET_DIR/release/faas, built first) is the binary.
# Every number is from `faas bench ... --json`; the servers use their own
# temporary state directories and are stopped at the end.
set -euo pipefail
N=${1:-2000}
if [ -z "${FAAS:-}" ]; then
    cargo build --release -q -p faas-platform
    FAAS=${CARGO_TARGET_DIR:-target}/release/faas
fi
work=$(mktemp -d /tmp/faas-targets.XXXXXX)
# serve() runs in a command substitution (a subshell): the servers' pids
# go to a file.
cleanup() {
    if [ -f "$work/pids" ]; then
        while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
        sleep 1
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve() { # NAME EXTRA... -> URL
    local name=$1; shift
    local p; p=$(port)
    FAAS_LOG=warn "$FAAS" serve --sandbox pooled --quiet-instances --listen "127.0.0.1:$p" \
        --state-dir "$work/$name" "$@" >"$work/$name.log" 2>&1 &
    echo $! >>"$work/pids"
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$p/healthz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    echo "http://127.0.0.1:$p"
}
"$FAAS" example-functions --out "$work/ex" >/dev/null
mkdir -p "$work/py"
printf 'def lambda_handler(event, context):\n    return {"hello": event}\n' >"$work/py/lambda_function.py"

snap=$(serve snap)
cold=$(serve cold --no-snapshots)
# The restored functions learn their working set from the request the
# bench sends (an empty body): --working-set-request ''.
for url in "$snap" "$cold"; do
    "$FAAS" deploy hello --dir "$work/ex/hello" --handler hello --server "$url" \
        --working-set-request '' >/dev/null
    "$FAAS" deploy hellowarm --dir "$work/ex/hello" --handler hello --keep-alive-ms 600000 \
        --server "$url" >/dev/null
    "$FAAS" deploy py --dir "$work/py" --runtime python \
        --handler lambda_function.lambda_handler --server "$url" \
        --working-set-request '' >/dev/null
done

row() { # LABEL JSON
    python3 - "$1" "$2" <<'EOF'
import json, sys
label, j = sys.argv[1], json.loads(sys.argv[2])
modes = ",".join(f"{k}={v}" for k, v in sorted(j.get("start_modes", {}).items()) if v)
print(f"{label:<34} p50 {j['p50_us']/1e3:7.2f} ms  p90 {j['p90_us']/1e3:7.2f}  p99 {j['p99_us']/1e3:7.2f}"
      f"  max {j['max_us']/1e3:7.2f}  {j['rps']:8.0f} req/s  errors {j['errors']}  [{modes}]")
EOF
}
bench() { # LABEL MODE URL FUNCTION CONCURRENCY REQUESTS
    row "$1" "$("$FAAS" bench "$2" --server "$3" --function "$4" --concurrency "$5" --requests "$6" --json)"
}
echo "faas platform targets, $(date -u +%FT%TZ), $(nproc) CPUs, N=$N"
bench "native restore  c=1" cold "$snap" hello 1 "$N"
bench "native cold     c=1" cold "$cold" hello 1 "$N"
bench "python restore  c=1" cold "$snap" py 1 "$N"
bench "python cold     c=1" cold "$cold" py 1 "$((N / 4))"
bench "native restore  c=2 (sustained)" cold "$snap" hello 2 "$N"
bench "native restore  c=4 (sustained)" cold "$snap" hello 4 "$N"
bench "warm            c=8" warm "$snap" hellowarm 8 "$((N * 20))"
bench "warm            c=32" warm "$snap" hellowarm 32 "$((N * 20))"
