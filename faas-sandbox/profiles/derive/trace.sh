#!/bin/sh
# Traces the real Python and Node.js runtimes (faas-guest/runtimes/) under
# strace, driven by driver.py, into $OUT/*.trace; gen.py turns the traces
# into ../python.json and ../node.json. Run as root from anywhere:
#
#   sh faas-sandbox/profiles/derive/trace.sh [OUT]      (default /tmp/faas-derive;
#                                                        a path without spaces)
#   python3 faas-sandbox/profiles/derive/gen.py [OUT]
#
# Needs strace, unshare and ip (util-linux, iproute2), /usr/bin/python3,
# /usr/bin/node and the Node addon built (faas-guest/runtimes/node/README.md).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
OUT=${1:-/tmp/faas-derive}
PY=/usr/bin/python3
NODE=/usr/bin/node
mkdir -p "$OUT"
rm -rf "$OUT/code" "$OUT/runtime" "$OUT"/py-*.trace "$OUT"/node-*.trace
mkdir -p "$OUT/code" "$OUT/runtime/python" "$OUT/runtime/node"
# The code directory and the runtime directories as the platform lays them
# out: the handlers, the runtime scripts with their bytecode compiled.
cp "$here"/handlers/* "$OUT/code/"
cp "$repo"/faas-guest/runtimes/python/faas_runtime.py "$repo"/faas-guest/runtimes/python/_faas_runtime.py "$OUT/runtime/python/"
"$PY" -m compileall -q "$OUT/runtime/python"
cp "$repo"/faas-guest/runtimes/node/faas_runtime.js "$OUT/runtime/node/"
addon="$repo/faas-guest/runtimes/node/faas_native.node"
if [ ! -f "$addon" ]; then
    echo "trace.sh: $addon is missing; build it (faas-guest/runtimes/node/README.md)" >&2
    exit 1
fi
cp "$addon" "$OUT/runtime/node/"
wrapper=$(cat "$here/wrapper.py")
ALL_PY=echo,memfd,big,boom,log,tmp,http,asyncio,subprocess,signal,parallel,sleep
ALL_NODE=echo,memfd,big,boom,log,tmp,http,subprocess,parallel,sleep
STRACE="strace -f -qq -e trace=all -o"
driver() { "$PY" "$here/driver.py" "$@"; }
# In a network namespace with only loopback (as the sandbox's) and a DNS
# server of the driver's, in the sandbox's file-system view.
sandboxed() {
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
        "$PY" "$here/driver.py" --dns --host api.derive.test --env LAMBDA_RUNTIME_DIR=/var/runtime "$@"
}
in_sandbox() {
    rt=$1
    shift
    echo unshare --mount --propagation private -- sh "$here/sandboxed.sh" "$OUT/code" "$OUT/runtime/$rt" "$OUT" "$@"
}
cd "$OUT/code"
pyrt="$OUT/runtime/python/faas_runtime.py"
ndrt="$OUT/runtime/node/faas_runtime.js"

echo "== python: cold, keep_alive, every case"
driver --cases $ALL_PY -- $STRACE "$OUT/py-cold.trace" \
    "$PY" "$pyrt" --handler lambda_function.lambda_handler --code "$OUT/code"
echo "== python: cold, per_request"
driver --reuse per_request --cases echo -- $STRACE "$OUT/py-per-request.trace" \
    "$PY" "$pyrt" --handler lambda_function.lambda_handler --code "$OUT/code"
echo "== python: --snapshot under the platform's wrapper, SIGCONT, keep_alive, every case"
driver --snapshot --cases $ALL_PY -- $STRACE "$OUT/py-snapshot.trace" \
    "$PY" -I -S -c "$wrapper" "$PY" "$pyrt" --handler lambda_function.lambda_handler --code "$OUT/code" --snapshot
echo "== python: sandbox layout, --snapshot under the wrapper, SIGCONT, every case"
sandboxed --snapshot --cases $ALL_PY -- $(in_sandbox python) $STRACE /var/out/py-sandbox-snapshot.trace \
    "$PY" -I -S -c "$wrapper" "$PY" /var/runtime/faas_runtime.py --handler lambda_function.lambda_handler --code /var/task --snapshot
echo "== python: sandbox layout, cold, every case"
sandboxed --cases $ALL_PY -- $(in_sandbox python) $STRACE /var/out/py-sandbox-cold.trace \
    "$PY" /var/runtime/faas_runtime.py --handler lambda_function.lambda_handler --code /var/task

echo "== node: CommonJS handler, addon, keep_alive, every case"
driver --cases $ALL_NODE -- $STRACE "$OUT/node-cjs.trace" \
    "$NODE" "$ndrt" --handler index.handler --code "$OUT/code"
echo "== node: ES module handler, addon, keep_alive, every case"
driver --cases $ALL_NODE -- $STRACE "$OUT/node-esm.trace" \
    "$NODE" "$ndrt" --handler esm.handler --code "$OUT/code"
echo "== node: without the addon (inline bodies only)"
driver --inline-only --env FAAS_NODE_NATIVE=off --cases echo,memfd,big,boom,log -- $STRACE "$OUT/node-inline.trace" \
    "$NODE" "$ndrt" --handler index.handler --code "$OUT/code"
echo "== node: per_request"
driver --reuse per_request --cases echo -- $STRACE "$OUT/node-per-request.trace" \
    "$NODE" "$ndrt" --handler index.handler --code "$OUT/code"
echo "== node: sandbox layout, addon, every case"
sandboxed --cases $ALL_NODE -- $(in_sandbox node) $STRACE /var/out/node-sandbox.trace \
    "$NODE" /var/runtime/faas_runtime.js --handler index.handler --code /var/task
echo "== traces in $OUT"
