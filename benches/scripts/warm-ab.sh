#!/usr/bin/env bash
# Same-run A/B of the warm path between `faas` binaries: for ROUNDS rounds,
# each binary in turn starts a fresh `faas serve`, deploys the bundled
# `hello` keep-alive (--max-instances 128), warms it with wrk (2 s, 128
# connections), then measures:
#   - wrk for DURATION seconds at each of CONNS connections: requests/s, p50,
#     p99, and the CPU time per request of the server process (gateway) and
#     of its instances (utime + stime from /proc, all their threads);
#   - `faas bench warm --concurrency BENCH_C --requests BENCH_N`.
# With SYSCALLS=1, each binary also gets one `perf trace -s -a` over a 4 s
# wrk run at 32 connections: system calls per request in the gateway's
# worker threads and in the instances.
#
# usage: benches/scripts/warm-ab.sh LABEL=FAAS_BINARY [LABEL=FAAS_BINARY ...]
#   env: ROUNDS (3), CONNS ("8 32 128"), DURATION (6), BENCH_C (8),
#        BENCH_N (100000), PORT (18200), SYSCALLS (0)
# Needs root (sandboxes), wrk, python3, and perf for SYSCALLS=1.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"8 32 128"}
DURATION=${DURATION:-6}
BENCH_C=${BENCH_C:-8}
BENCH_N=${BENCH_N:-100000}
PORT=${PORT:-18200}
SYSCALLS=${SYSCALLS:-0}
url=http://127.0.0.1:$PORT

[ $# -gt 0 ] || { echo "usage: $0 LABEL=FAAS_BINARY ..." >&2; exit 2; }
command -v wrk >/dev/null || { echo "warm-ab: wrk is not installed (apt-get install wrk)" >&2; exit 1; }

work=$(mktemp -d /tmp/faas-warm-ab.XXXXXX)
server=
stop() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap 'stop; rm -rf "$work"' EXIT

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = "hi"
EOF

# CPU clock ticks of the server ("gateway") and of its other descendants
# ("instances").
cat >"$work/cpu.py" <<'EOF'
import os, sys
root = int(sys.argv[1]); kids = {}; ticks = {}
for d in os.listdir('/proc'):
    if not d.isdigit(): continue
    try: s = open(f'/proc/{d}/stat').read()
    except OSError: continue
    f = s[s.rfind(')') + 2:].split()
    kids.setdefault(int(f[1]), []).append(int(d)); ticks[int(d)] = int(f[11]) + int(f[12])
tot, todo = 0, list(kids.get(root, []))
while todo:
    p = todo.pop(); tot += ticks.get(p, 0); todo += kids.get(p, [])
print(ticks.get(root, 0), tot)
EOF

start() { # FAAS
    rm -rf "$work/state"
    FAAS_LOG=warn "$1" serve --listen "127.0.0.1:$PORT" --quiet-instances --slots 256 \
        --state-dir "$work/state" >"$work/serve.out" 2>"$work/serve.err" &
    server=$!
    for _ in $(seq 100); do grep -q http "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    grep -q http "$work/serve.out" || { cat "$work/serve.err" >&2; exit 1; }
    rm -rf "$work/fns"
    "$1" example-functions --out "$work/fns" >/dev/null
    FAAS_SERVER=$url "$1" deploy hello --dir "$work/fns/hello" --handler hello \
        --keep-alive-ms 600000 --max-instances 128 >/dev/null
    wrk -t2 -c128 -d2s -s "$work/post.lua" "$url/invoke/hello" >/dev/null
}

measure() { # LABEL FAAS
    local tick
    tick=$(getconf CLK_TCK)
    for c in $CONNS; do
        local t=$((c < 2 ? c : 2)) g0 i0 g1 i1 out
        read -r g0 i0 < <(python3 "$work/cpu.py" "$server")
        out=$(wrk -t"$t" -c"$c" -d"${DURATION}s" --latency -s "$work/post.lua" "$url/invoke/hello")
        read -r g1 i1 < <(python3 "$work/cpu.py" "$server")
        local n rps p50 p99 bad
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
        bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        python3 -c "import sys; n=int(sys.argv[1]); k=1e6/int(sys.argv[2]); print(f'$1 wrk c=$c rps=$rps p50=$p50 p99=$p99 ' + f'gateway_us={(int(sys.argv[4])-int(sys.argv[3]))*k/n:.1f} instances_us={(int(sys.argv[6])-int(sys.argv[5]))*k/n:.1f} non2xx=${bad:-0} load=' + open('/proc/loadavg').read().split()[0])" \
            "$n" "$tick" "$g0" "$g1" "$i0" "$i1"
    done
    "$2" bench warm --server "$url" --function hello --concurrency "$BENCH_C" \
        --requests "$BENCH_N" --json >"$work/bench.json"
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print('$1 bench c=$BENCH_C ' + ' '.join(f'{k}={d[k]}' for k in ('rps', 'p50_us', 'p90_us', 'p99_us', 'errors', 'not_warm')))" "$work/bench.json"
}

syscalls() { # LABEL
    perf trace -s -a -o "$work/trace.out" -- \
        wrk -t2 -c32 -d4s -s "$work/post.lua" "$url/invoke/hello" >"$work/trace.wrk" 2>&1
    python3 - "$work/trace.out" "$(awk '/requests in/ {print $1}' "$work/trace.wrk")" "$1" <<'EOF'
import collections, re, sys
path, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
who, counts = None, collections.defaultdict(collections.Counter)
for line in open(path):
    m = re.match(r'\s(\S.*) \((\d+)\), (\d+) events', line)
    if m:
        c = m.group(1)
        who = 'gateway' if c.startswith('tokio-rt') else 'instances' if c.startswith('memfd:faas') else None
        continue
    m = re.match(r'\s+(\w+)\s+(\d+)\s+(\d+)\s', line)
    if m and who:
        counts[who][m.group(1)] += int(m.group(2))
for w in ('gateway', 'instances'):
    c = counts[w]
    print(label, w, f"{sum(c.values()) / n:.2f} syscalls/request:",
          ' '.join(f"{k}={v / n:.2f}" for k, v in c.most_common() if v / n >= 0.01))
EOF
}

for r in $(seq "$ROUNDS"); do
    for lb in "$@"; do
        label=${lb%%=*} bin=${lb#*=}
        start "$bin"
        measure "$label#$r" "$bin"
        if [ "$SYSCALLS" = 1 ] && [ "$r" = 1 ]; then syscalls "$label"; fi
        stop
    done
done
