"""Tests of the Node.js function runtime (faas_runtime.js).

Each test plays the node gateway: it creates a SOCK_SEQPACKET socketpair,
starts `node faas_runtime.js` with the other end as fd 3, and speaks the guest
protocol (faas-core/src/protocol/frame.rs) on its end.

The cases run twice: InlineRuntimeTest without the native addon
(FAAS_NODE_NATIVE=off: bodies inline only), NativeRuntimeTest with it (sealed
memfd bodies over 64 KiB, both ways). The addon is built once with
`cargo build --release --offline` (native/Cargo.toml) into
$FAAS_NODE_NATIVE_TARGET (default: $TMPDIR/faas-node-native-target); set
FAAS_NODE_NATIVE to a built faas_native.node to use that instead. Without
cargo the native cases are skipped (the reason is printed).

    python3 -m unittest discover -s faas-guest/runtimes/node -p 'test_*.py'
    node --test faas-guest/runtimes/node/      # runs this file via runtime.test.js
"""

import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME = os.path.join(HERE, "faas_runtime.js")
NATIVE_MANIFEST = os.path.join(HERE, "native", "Cargo.toml")
NODE = os.environ.get("NODE", shutil.which("node") or "node")

MAGIC = b"FAAS"
VERSION = 1
HEADER = struct.Struct("<4sBBHQII")
HEADER_LEN = 24
MAX_META = 64 * 1024
MAX_INLINE_BODY = 128 * 1024
MAX_DATAGRAM = HEADER_LEN + MAX_META + MAX_INLINE_BODY
MEMFD_THRESHOLD = 64 * 1024  # DEFAULT_MEMFD_THRESHOLD
MAX_BODY = 64 * 1024 * 1024  # DecodeLimits::default().max_body
READY, INVOKE, RESULT, ERROR, LOG = 1, 2, 3, 4, 5
FLAG_MEMFD = 1
FLAG_READY = 4
TIMEOUT = 10.0
MIB5 = 5 * 1024 * 1024

# fcntl(2) sealing (linux/fcntl.h).
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
REQUIRED_SEALS = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK

LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\t([^\t]+)\t(INFO|WARN|ERROR|DEBUG|TRACE)\t(.*)\n$", re.S
)


def put_str16(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b


def put_headers(headers):
    out = struct.pack("<H", len(headers))
    for k, v in headers:
        vb = v.encode()
        out += put_str16(k) + struct.pack("<I", len(vb)) + vb
    return out


def invoke_frame(inv_id, body, deadline=None, trace_id="", headers=(), memfd=False):
    if deadline is None:
        deadline = int(time.time() * 1000) + 30_000
    meta = struct.pack("<Q", deadline) + put_str16(trace_id) + put_headers(list(headers))
    flags = FLAG_MEMFD if memfd else 0
    inline = b"" if memfd else body
    return HEADER.pack(MAGIC, VERSION, INVOKE, flags, inv_id, len(meta), len(body)) + meta + inline


def sealed_memfd(data, seals=F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL):
    fd = os.memfd_create("faas-body", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if seals:
        fcntl.fcntl(fd, F_ADD_SEALS, seals)
    return fd


def read_received_memfd(fd, expected):
    """Checks a memfd from the runtime as the gateway does (SealedMemfd::from_received), and reads it."""
    seals = fcntl.fcntl(fd, F_GET_SEALS)  # fails (EINVAL) on anything but a memfd
    assert seals & REQUIRED_SEALS == REQUIRED_SEALS, f"memfd seals {seals:#x}"
    assert seals & F_SEAL_SEAL, "the runtime seals its memfds against further sealing too"
    size = os.fstat(fd).st_size
    assert size == expected, f"memfd has {size} bytes, header says {expected}"
    chunks, off = [], 0
    while off < expected:
        b = os.pread(fd, expected - off, off)
        assert b, "memfd shorter than its size"
        chunks.append(b)
        off += len(b)
    return b"".join(chunks)


class Frame:
    def __init__(self, kind, flags, inv_id, meta, body):
        self.kind, self.flags, self.id, self.meta, self.body = kind, flags, inv_id, meta, body
        self.memfd = bool(flags & FLAG_MEMFD)
        self.status = None
        self.headers = []
        self.stream = None
        if kind in (RESULT, ERROR):
            (self.status,) = struct.unpack_from("<H", meta, 0)
            assert 100 <= self.status <= 999, self.status
        if kind == RESULT:
            (n,) = struct.unpack_from("<H", meta, 2)
            off = 4
            for _ in range(n):
                (kl,) = struct.unpack_from("<H", meta, off)
                k = meta[off + 2 : off + 2 + kl].decode()
                off += 2 + kl
                (vl,) = struct.unpack_from("<I", meta, off)
                v = meta[off + 4 : off + 4 + vl].decode()
                off += 4 + vl
                self.headers.append((k, v))
            assert off == len(meta), "trailing metadata"
        elif kind == ERROR:
            assert len(meta) == 2
        elif kind == LOG:
            assert len(meta) == 1 and meta[0] in (1, 2, 3)
            self.stream = meta[0]
        elif kind == READY:
            assert inv_id == 0 and not meta and not body

    def header(self, name):
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Frame(kind={self.kind}, id={self.id}, status={self.status}, memfd={self.memfd}, body={self.body[:200]!r})"


def decode(datagram, fds, native):
    """Decodes a frame from the runtime as strictly as frame.rs, plus what this runtime promises:
    memfd bodies only with the addon and only above the 64 KiB threshold, inline bodies at most
    64 KiB with it (128 KiB for Error messages), no snapshot flag. Closes `fds`."""
    try:
        assert len(datagram) >= HEADER_LEN, f"short frame {datagram!r}"
        magic, ver, kind, flags, inv_id, meta_len, body_len = HEADER.unpack_from(datagram)
        assert magic == MAGIC and ver == VERSION, datagram[:8]
        assert flags & ~(FLAG_MEMFD | FLAG_READY) == 0, f"the Node runtime never sends the snapshot flag, got {flags}"
        assert not flags & FLAG_READY or kind in (RESULT, ERROR), f"ready flag on kind {kind}"
        assert meta_len <= MAX_META
        meta = datagram[HEADER_LEN : HEADER_LEN + meta_len]
        if flags & FLAG_MEMFD:
            assert native, "without the addon the Node runtime cannot pass fds"
            assert kind in (RESULT, LOG), f"memfd body on kind {kind}"
            assert len(fds) == 1, f"a memfd frame carries exactly one fd, got {len(fds)}"
            assert len(datagram) == HEADER_LEN + meta_len, "memfd frame with inline bytes"
            assert MEMFD_THRESHOLD < body_len <= MAX_BODY, f"memfd body of {body_len} bytes"
            body = read_received_memfd(fds[0], body_len)
        else:
            assert not fds, "fd without the memfd flag"
            assert body_len <= MAX_INLINE_BODY
            if native and kind != ERROR:
                assert body_len <= MEMFD_THRESHOLD, f"inline body of {body_len} bytes above the memfd threshold"
            assert len(datagram) == HEADER_LEN + meta_len + body_len, "length mismatch"
            body = datagram[HEADER_LEN + meta_len :]
        return Frame(kind, flags, inv_id, meta, body)
    finally:
        for fd in fds:
            os.close(fd)


_native_addon = None
_native_tmp = None


def native_addon():
    """The built addon (a faas_native.node path), or raises unittest.SkipTest saying why not.

    Built once per run: `cargo build --release --offline` of native/ (retried online when the
    offline build fails, e.g. libc is not in the local registry), copied to a temporary
    faas_native.node. A failing build is an error, not a skip."""
    global _native_addon, _native_tmp
    if _native_addon is not None:
        return _native_addon
    given = os.environ.get("FAAS_NODE_NATIVE", "")
    if given and given != "off":
        if not os.path.isfile(given):
            raise AssertionError(f"FAAS_NODE_NATIVE={given!r} is not a file")
        _native_addon = os.path.abspath(given)
        return _native_addon
    cargo = shutil.which("cargo")
    if not cargo:
        raise unittest.SkipTest(
            "cargo not found: the native addon (native/) cannot be built, so the memfd cases are skipped "
            "(install Rust, or set FAAS_NODE_NATIVE to a built faas_native.node)"
        )
    target = os.environ.get("FAAS_NODE_NATIVE_TARGET") or os.path.join(tempfile.gettempdir(), "faas-node-native-target")
    cmd = [cargo, "build", "--release", "--manifest-path", NATIVE_MANIFEST, "--target-dir", target]
    r = subprocess.run(cmd[:2] + ["--offline"] + cmd[2:], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"building the native addon failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
    built = os.path.join(target, "release", "libfaas_node_native.so")
    _native_tmp = tempfile.mkdtemp(prefix="faas-node-native-")
    _native_addon = os.path.join(_native_tmp, "faas_native.node")
    shutil.copyfile(built, _native_addon)
    return _native_addon


def tearDownModule():
    if _native_tmp is not None:
        shutil.rmtree(_native_tmp, ignore_errors=True)


class Gateway:
    """The gateway end of one runtime instance."""

    def __init__(self, code_dir, handler, reuse=None, env=None, fd3="seqpacket", native="off", runtime=RUNTIME):
        """`native`: the value of FAAS_NODE_NATIVE (a path, "off"), None to leave it unset."""
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.native = native not in (None, "off")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FAAS_", "AWS_", "LAMBDA_", "_HANDLER"))}
        full_env.update({"FAAS_FUNCTION_NAME": "fn-test", "FAAS_FUNCTION_VERSION": "7", "FAAS_MEMORY_MB": "256"})
        if native is not None:
            full_env["FAAS_NODE_NATIVE"] = native
        if reuse is not None:
            full_env["FAAS_REUSE"] = reuse
        full_env.update(env or {})
        child_fd = child.fileno()
        other = None
        if fd3 == "file":
            other = open(os.devnull, "rb")
            child_fd = other.fileno()

        def at_fd3():
            if fd3 is None:
                try:
                    os.close(3)
                except OSError:
                    pass
            elif child_fd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(child_fd, 3)

        self.proc = subprocess.Popen(
            [NODE, runtime, "--handler", handler, "--code", code_dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            close_fds=False,
            preexec_fn=at_fd3,
        )
        child.close()
        if other:
            other.close()
        self.sock.settimeout(TIMEOUT)

    def recv(self):
        """The next frame; None when the runtime closed its end."""
        data, anc, flags, _ = self.sock.recvmsg(MAX_DATAGRAM + 1, socket.CMSG_SPACE(4 * 2), socket.MSG_CMSG_CLOEXEC)
        fds = []
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(cdata) // 4}i", cdata[: len(cdata) // 4 * 4]))
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        return decode(data, fds, self.native)

    def ready(self):
        """The runtime is ready: a Ready frame, or (kept alive) FLAG_READY on its
        last answer, after which no Ready comes."""
        if getattr(self, "ready_next", False):
            self.ready_next = False
            return
        f = self.recv()
        assert f is not None and f.kind == READY, f"expected Ready, got {f!r} (stderr: {self.stderr_now()})"

    def send_raw(self, datagram, fds=()):
        if fds:
            self.sock.sendmsg([datagram], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.sock.send(datagram)

    def invoke(self, inv_id, body, **kw):
        """Sends an Invoke; returns (logs, answer)."""
        if isinstance(body, str):
            body = body.encode()
        memfd = kw.pop("memfd", False)
        if memfd:
            fd = sealed_memfd(body)
            try:
                self.send_raw(invoke_frame(inv_id, body, memfd=True, **kw), [fd])
            finally:
                os.close(fd)
        else:
            self.send_raw(invoke_frame(inv_id, body, **kw))
        logs = []
        while True:
            f = self.recv()
            assert f is not None, f"runtime closed the channel mid-invocation (stderr: {self.stderr_now()})"
            assert f.id == inv_id, f"frame for invocation {f.id}, expected {inv_id}"
            if f.kind == LOG:
                logs.append(f)
                continue
            assert f.kind in (RESULT, ERROR), f
            self.ready_next = bool(f.flags & FLAG_READY)
            return logs, f

    def wait(self):
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("runtime did not exit")
        return rc

    def stderr_now(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def close(self):
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


FIXTURES = {
    "echo.js": """
        exports.handler = async (event, context) => ({ event, requestId: context.awsRequestId });
    """,
    "callback.js": """
        exports.handler = (event, context, callback) => {
          setTimeout(() => callback(null, { n: event.n + 1, via: 'callback' }), 5);
        };
    """,
    "callback_error.js": """
        exports.handler = (event, context, callback) => callback(new TypeError('bad input'));
    """,
    "callback_string_error.js": """
        exports.handler = (event, context, callback) => callback('plain failure');
    """,
    "nocallback.js": """
        exports.handler = (event, context, callback) => { setTimeout(() => {}, 5); };
    """,
    "esm_handler.mjs": """
        const started = await Promise.resolve('tla');
        export const handler = async (event) => ({ esm: true, started, event });
    """,
    "throws.js": """
        class ValidationError extends Error { constructor(m) { super(m); this.name = 'ValidationError'; } }
        exports.handler = async () => { throw new ValidationError('nope: bad thing'); };
    """,
    "throws_sync.js": """
        exports.handler = () => { throw new Error('sync boom'); };
    """,
    "http.js": """
        exports.handler = async (event) => {
          if (event.kind === 'b64') return { statusCode: 200, isBase64Encoded: true, body: Buffer.from([0, 1, 2, 255]).toString('base64'), headers: { 'content-type': 'application/octet-stream' } };
          if (event.kind === 'bad') return { statusCode: 42, body: 'x' };
          if (event.kind === 'objbody') return { statusCode: 202, body: { a: 1 } };
          return {
            statusCode: 201,
            headers: { 'content-type': 'text/plain', 'x-num': 5 },
            multiValueHeaders: { 'x-multi': ['a', 'b'] },
            cookies: ['a=1', 'b=2'],
            body: 'created ' + event.name,
          };
        };
    """,
    "big.js": """
        exports.handler = async (event) => ({
          statusCode: 200,
          headers: { 'content-type': 'application/octet-stream' },
          body: 'x'.repeat(event.size),
        });
    """,
    "logs.js": """
        exports.handler = async (event, context) => {
          console.log('hello', { a: 1 }, 42);
          console.info('info line');
          console.warn('careful');
          console.error('bad %s', 'thing');
          console.debug('dbg');
          process.stdout.write('raw stdout\\n');
          process.stderr.write('raw stderr\\n');
          await new Promise((r) => setTimeout(r, 1));
          console.log('after await');
          return 'ok';
        };
    """,
    "remaining.js": """
        exports.handler = async (event, context) => {
          const first = context.getRemainingTimeInMillis();
          await new Promise((r) => setTimeout(r, 60));
          const second = context.getRemainingTimeInMillis();
          return { first, second };
        };
    """,
    "context.js": """
        exports.handler = async (event, context) => ({
          awsRequestId: context.awsRequestId,
          functionName: context.functionName,
          functionVersion: context.functionVersion,
          memoryLimitInMB: context.memoryLimitInMB,
          invokedFunctionArn: context.invokedFunctionArn,
          logGroupName: context.logGroupName,
          logStreamName: context.logStreamName,
          callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
          remaining: typeof context.getRemainingTimeInMillis(),
          keys: Object.keys(context),
          traceId: context.faas.traceId,
          headers: context.faas.headers,
          xray: process.env._X_AMZN_TRACE_ID || null,
          cwd: process.cwd(),
          envName: process.env.AWS_LAMBDA_FUNCTION_NAME,
        });
    """,
    "counter.js": """
        let calls = 0;
        exports.handler = async () => ({ calls: ++calls, pid: process.pid });
    """,
    "uncaught.js": """
        exports.handler = async () => {
          setTimeout(() => { throw new RangeError('timer blew up'); }, 1);
          return new Promise(() => {});
        };
    """,
    "notfn.js": """
        exports.handler = 42;
    """,
    "syntax.js": """
        exports.handler = async () => { ;
    """,
    "nested.js": """
        exports.api = { v1: { handler: async () => 'nested' } };
    """,
    "lib/inner.js": """
        exports.handler = async () => ({ where: 'lib/inner' });
    """,
    "legacy.cjs": """
        module.exports.handler = async () => 'cjs';
    """,
    "esm/package.json": '{"type": "module"}',
    "esm/app.js": """
        export async function handler(event) { return { esmJs: true, event }; }
    """,
    "rejection.js": """
        exports.handler = async () => {
          Promise.reject(new Error('forgotten'));
          await new Promise((r) => setTimeout(r, 50));
          return 'late';
        };
    """,
    "headers.js": """
        exports.handler = async (event) => {
          const headers = {};
          for (let i = 0; i < event.n; i++) headers['x-h' + i] = 'v';
          return { statusCode: 200, headers, body: 'ok' };
        };
    """,
    "slow.js": """
        exports.handler = async () => { await new Promise((r) => setTimeout(r, 200)); return 'done'; };
    """,
    "hugelog.js": """
        exports.handler = async () => { console.log('y'.repeat(200000)); return 'ok'; };
    """,
    "succeed.js": """
        exports.handler = (event, context) => { context.succeed({ legacy: true }); };
    """,
    "fds.js": """
        const fs = require('fs');
        exports.handler = async (event) => ({ fds: fs.readdirSync('/proc/self/fd').length, pad: 'q'.repeat(event.pad.length) });
    """,
}


class RuntimeCases:
    """The cases of both modes; `native` is the FAAS_NODE_NATIVE the runtime gets."""

    native = "off"

    @classmethod
    def setUpClass(cls):
        cls.code = tempfile.mkdtemp(prefix="faas-node-test-")
        for name, text in FIXTURES.items():
            p = os.path.join(cls.code, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(textwrap.dedent(text).lstrip())

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.code, ignore_errors=True)

    def start(self, handler, **kw):
        kw.setdefault("native", self.native)
        gw = Gateway(self.code, handler, **kw)
        self.addCleanup(gw.close)
        return gw

    def call(self, handler, body, inv_id=1, **kw):
        """One invocation on a fresh per-request instance: (logs, answer, exit code)."""
        gw = self.start(handler)
        gw.ready()
        logs, answer = gw.invoke(inv_id, body, **kw)
        self.assertIsNone(gw.recv(), "per_request instance must not send another Ready")
        return logs, answer, gw.wait()

    # -- happy paths ---------------------------------------------------------

    def test_json_echo_async_handler(self):
        logs, r, rc = self.call("echo.handler", json.dumps({"a": [1, 2], "s": "é"}), inv_id=17)
        self.assertEqual(r.kind, RESULT, r)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(r.json(), {"event": {"a": [1, 2], "s": "é"}, "requestId": "17"})
        self.assertEqual(logs, [])
        self.assertEqual(rc, 0)

    def test_callback_handler(self):
        _, r, rc = self.call("callback.handler", '{"n": 41}')
        self.assertEqual((r.kind, r.status), (RESULT, 200))
        self.assertEqual(r.json(), {"n": 42, "via": "callback"})
        self.assertEqual(rc, 0)

    def test_legacy_context_succeed(self):
        _, r, _ = self.call("succeed.handler", "{}")
        self.assertEqual(r.json(), {"legacy": True})

    def test_callback_never_called_answers_null_when_loop_empties(self):
        _, r, _ = self.call("nocallback.handler", "{}")
        self.assertEqual((r.kind, r.status, r.body), (RESULT, 200, b"null"))

    def test_esm_mjs_handler(self):
        _, r, _ = self.call("esm_handler.handler", '{"x": 1}')
        self.assertEqual(r.kind, RESULT, r)
        self.assertEqual(r.json(), {"esm": True, "started": "tla", "event": {"x": 1}})

    def test_esm_js_under_type_module(self):
        _, r, _ = self.call("esm/app.handler", '"s"')
        self.assertEqual(r.json(), {"esmJs": True, "event": "s"})

    def test_directory_nested_export_and_cjs(self):
        _, r, _ = self.call("lib/inner.handler", "{}")
        self.assertEqual(r.json(), {"where": "lib/inner"})
        _, r, _ = self.call("nested.api.v1.handler", "{}")
        self.assertEqual(r.json(), "nested")
        _, r, _ = self.call("legacy.handler", "{}")
        self.assertEqual(r.json(), "cjs")

    def test_non_json_body_is_a_raw_string(self):
        _, r, _ = self.call("echo.handler", "hello, not json {")
        self.assertEqual(r.json()["event"], "hello, not json {")

    def test_empty_body_is_an_empty_object(self):
        _, r, _ = self.call("echo.handler", b"")
        self.assertEqual(r.json()["event"], {})

    def test_context_fields(self):
        gw = self.start("context.handler")
        gw.ready()
        _, r = gw.invoke(
            123456789012345,
            "{}",
            trace_id="Root=1-abc",
            headers=[("x-h", "v1"), ("X-Other", "v2")],
        )
        c = r.json()
        self.assertEqual(c["awsRequestId"], "123456789012345")
        self.assertEqual(c["functionName"], "fn-test")
        self.assertEqual(c["functionVersion"], "7")
        self.assertEqual(c["memoryLimitInMB"], "256")
        self.assertTrue(c["invokedFunctionArn"].startswith("arn:aws:lambda:"), c)
        self.assertTrue(c["invokedFunctionArn"].endswith(":function:fn-test"), c)
        self.assertEqual(c["logGroupName"], "/aws/lambda/fn-test")
        self.assertIn("[7]", c["logStreamName"])
        self.assertTrue(c["callbackWaitsForEmptyEventLoop"])
        self.assertEqual(c["remaining"], "number")
        self.assertNotIn("faas", c["keys"])
        self.assertEqual(c["traceId"], "Root=1-abc")
        self.assertEqual(c["headers"], [["x-h", "v1"], ["X-Other", "v2"]])
        self.assertEqual(c["xray"], "Root=1-abc")
        self.assertEqual(os.path.realpath(c["cwd"]), os.path.realpath(self.code))
        self.assertEqual(c["envName"], "fn-test")

    def test_remaining_time_decreases(self):
        deadline = int(time.time() * 1000) + 5000
        _, r, _ = self.call("remaining.handler", "{}", deadline=deadline)
        t = r.json()
        self.assertLessEqual(t["first"], 5000)
        self.assertGreater(t["first"], 3000)
        self.assertGreaterEqual(t["first"] - t["second"], 50)
        _, r, _ = self.call("remaining.handler", "{}", deadline=int(time.time() * 1000) - 10)
        self.assertEqual(r.json(), {"first": 0, "second": 0})

    # -- errors ----------------------------------------------------------------

    def assert_lambda_error(self, r, error_type, message):
        self.assertEqual((r.kind, r.status), (ERROR, 500), r)
        e = json.loads(r.body)
        self.assertEqual(set(e), {"errorType", "errorMessage", "stackTrace"})
        self.assertEqual(e["errorType"], error_type)
        self.assertEqual(e["errorMessage"], message)
        self.assertIsInstance(e["stackTrace"], list)
        return e

    def test_thrown_error_shape(self):
        logs, r, rc = self.call("throws.handler", "{}", inv_id=9)
        e = self.assert_lambda_error(r, "ValidationError", "nope: bad thing")
        self.assertTrue(e["stackTrace"][0].startswith("ValidationError: nope"), e)
        self.assertTrue(any("throws.js" in l for l in e["stackTrace"]), e)
        self.assertEqual(rc, 0)
        # Lambda logs the failure too.
        self.assertEqual(len(logs), 1)
        m = LOG_LINE.match(logs[0].body.decode())
        self.assertIsNotNone(m, logs[0].body)
        self.assertEqual((m.group(2), m.group(3)), ("9", "ERROR"))
        self.assertIn("Invoke Error", m.group(4))

    def test_sync_throw_and_callback_errors(self):
        _, r, _ = self.call("throws_sync.handler", "{}")
        self.assert_lambda_error(r, "Error", "sync boom")
        _, r, _ = self.call("callback_error.handler", "{}")
        self.assert_lambda_error(r, "TypeError", "bad input")
        _, r, _ = self.call("callback_string_error.handler", "{}")
        e = self.assert_lambda_error(r, "string", "plain failure")
        self.assertEqual(e["stackTrace"], [])

    def test_uncaught_exception_fails_invocation_and_exits(self):
        gw = self.start("uncaught.handler", reuse="keep_alive")
        gw.ready()
        _, r = gw.invoke(3, "{}")
        self.assert_lambda_error(r, "RangeError", "timer blew up")
        self.assertEqual(gw.wait(), 129)

    def test_unhandled_rejection_fails_invocation_and_exits(self):
        gw = self.start("rejection.handler", reuse="keep_alive")
        gw.ready()
        _, r = gw.invoke(4, "{}")
        self.assert_lambda_error(r, "Runtime.UnhandledPromiseRejection", "Error: forgotten")
        self.assertEqual(gw.wait(), 128)

    def test_gateway_closing_mid_invocation_exits_71(self):
        gw = self.start("slow.handler", reuse="keep_alive")
        gw.ready()
        gw.send_raw(invoke_frame(1, b"{}"))
        gw.sock.close()
        self.assertEqual(gw.wait(), 71)
        self.assertIn("sending the answer of invocation 1", gw.proc.stderr.read().decode())

    # -- HTTP mapping ----------------------------------------------------------

    def test_status_code_headers_body_mapping(self):
        _, r, _ = self.call("http.handler", '{"name": "x"}')
        self.assertEqual((r.kind, r.status), (RESULT, 201), r)
        self.assertEqual(r.body, b"created x")
        self.assertEqual(
            r.headers,
            [
                ("content-type", "text/plain"),
                ("x-num", "5"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
            ],
        )

    def test_base64_body_and_object_body(self):
        _, r, _ = self.call("http.handler", '{"kind": "b64"}')
        self.assertEqual((r.status, r.body), (200, bytes([0, 1, 2, 255])))
        self.assertEqual(r.header("content-type"), "application/octet-stream")
        _, r, _ = self.call("http.handler", '{"kind": "objbody"}')
        self.assertEqual((r.status, r.json()), (202, {"a": 1}))

    def test_status_out_of_range_is_an_error(self):
        _, r, _ = self.call("http.handler", '{"kind": "bad"}')
        self.assertEqual((r.kind, r.status), (ERROR, 500))
        self.assertIn("outside 100..=999", json.loads(r.body)["errorMessage"])

    # -- sizes -----------------------------------------------------------------

    def test_response_up_to_inline_limit(self):
        _, r, _ = self.call("big.handler", json.dumps({"size": MAX_INLINE_BODY}))
        self.assertEqual((r.kind, r.status, len(r.body)), (RESULT, 200, MAX_INLINE_BODY))
        self.assertEqual(r.body, b"x" * MAX_INLINE_BODY)
        # Inline without the addon; with it, a memfd (above 64 KiB, as faas-guest sends).
        self.assertEqual(r.memfd, self.native != "off")

    def test_request_body_up_to_inline_limit(self):
        # The gateway sends at most 64 KiB inline, but the protocol allows 128 KiB.
        head, tail = '{"size": 3, "pad": "', '"}'
        body = head + "p" * (MAX_INLINE_BODY - len(head) - len(tail)) + tail
        self.assertEqual(len(body), MAX_INLINE_BODY)
        _, r, _ = self.call("big.handler", body)
        self.assertEqual((r.kind, r.body), (RESULT, b"xxx"))

    def test_too_many_headers_is_an_error(self):
        _, r, _ = self.call("headers.handler", '{"n": 256}')
        self.assertEqual((r.kind, len(r.headers)), (RESULT, 256))
        _, r, _ = self.call("headers.handler", '{"n": 257}')
        e = self.assert_lambda_error(r, "Function.ResponseSizeTooLarge", json.loads(r.body)["errorMessage"])
        self.assertIn("257 headers", e["errorMessage"])

    # -- logs ------------------------------------------------------------------

    def test_console_is_captured_as_log_frames(self):
        logs, r, _ = self.call("logs.handler", "{}", inv_id=77)
        self.assertEqual(r.json(), "ok")
        structured = [f for f in logs if f.stream == 3]
        parsed = []
        for f in structured:
            m = LOG_LINE.match(f.body.decode())
            self.assertIsNotNone(m, f.body)
            self.assertEqual(m.group(2), "77")
            parsed.append((m.group(3), m.group(4)))
        self.assertEqual(
            parsed,
            [
                ("INFO", "hello { a: 1 } 42"),
                ("INFO", "info line"),
                ("WARN", "careful"),
                ("ERROR", "bad thing"),
                ("DEBUG", "dbg"),
                ("INFO", "after await"),
            ],
        )
        self.assertEqual([(f.stream, f.body) for f in logs if f.stream != 3], [(1, b"raw stdout\n"), (2, b"raw stderr\n")])
        # Order is kept: stdout/stderr writes come between debug and "after await".
        self.assertEqual([f.stream for f in logs], [3, 3, 3, 3, 3, 1, 2, 3])

    # -- reuse -----------------------------------------------------------------

    def test_keep_alive_serves_three_invocations(self):
        gw = self.start("counter.handler", reuse="keep_alive")
        pids = set()
        for i in range(1, 4):
            gw.ready()
            _, r = gw.invoke(i, "{}")
            self.assertEqual(r.json()["calls"], i)
            pids.add(r.json()["pid"])
        self.assertEqual(len(pids), 1)
        gw.ready()
        gw.sock.close()
        self.assertEqual(gw.wait(), 0)

    def test_kept_alive_answers_carry_the_ready_flag_instead_of_a_ready(self):
        gw = self.start("counter.handler", reuse="keep_alive")
        gw.ready()
        for i in range(1, 4):
            _, r = gw.invoke(i, "{}")
            self.assertEqual(r.flags & FLAG_READY, FLAG_READY, r)
            gw.ready_next = False  # no Ready: the next frame answers the next Invoke
        gw.sock.close()
        self.assertEqual(gw.wait(), 0)
        once = self.start("counter.handler", reuse="per_request")
        once.ready()
        _, r = once.invoke(1, "{}")
        self.assertEqual(r.flags & FLAG_READY, 0, r)
        self.assertEqual(once.wait(), 0)

    def test_per_request_exits_after_one(self):
        gw = self.start("counter.handler", reuse="per_request")
        gw.ready()
        _, r = gw.invoke(1, "{}")
        self.assertEqual(r.json()["calls"], 1)
        self.assertIsNone(gw.recv())
        self.assertEqual(gw.wait(), 0)

    def test_default_reuse_is_per_request(self):
        _, r, rc = self.call("counter.handler", "{}")
        self.assertEqual((r.json()["calls"], rc), (1, 0))

    def test_gateway_closing_before_invoke_exits_0(self):
        gw = self.start("echo.handler", reuse="keep_alive")
        gw.ready()
        gw.sock.close()
        self.assertEqual(gw.wait(), 0)

    # -- failures --------------------------------------------------------------

    def assert_load_error(self, handler, *needles):
        gw = self.start(handler)
        self.assertIsNone(gw.recv(), "no Ready after a load error")
        self.assertEqual(gw.wait(), 2)
        err = gw.proc.stderr.read().decode()
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn(handler, lines[0])
        self.assertIn(self.code, lines[0])
        for n in needles:
            self.assertIn(n, lines[0])

    def test_load_errors_exit_2(self):
        self.assert_load_error("missing.handler", "Runtime.ImportModuleError", "Cannot find module")
        self.assert_load_error("echo.nothere", "Runtime.HandlerNotFound")
        self.assert_load_error("notfn.handler", "Runtime.HandlerNotFound")
        self.assert_load_error("syntax.handler", "Runtime.UserCodeSyntaxError")
        self.assert_load_error("nodot", "Runtime.MalformedHandlerName")
        self.assert_load_error("../x.handler", "Runtime.MalformedHandlerName")

    def test_missing_code_dir_exits_2(self):
        gw = Gateway(os.path.join(self.code, "nope"), "index.handler")
        self.addCleanup(gw.close)
        self.assertIsNone(gw.recv())
        self.assertEqual(gw.wait(), 2)
        self.assertIn("no such directory", gw.proc.stderr.read().decode())

    def test_fd3_not_a_socket_exits_70(self):
        for fd3 in (None, "file"):
            gw = self.start("echo.handler", fd3=fd3)
            self.assertEqual(gw.wait(), 70)
            self.assertIn("fd 3 is not the guest channel", gw.proc.stderr.read().decode())

    def test_bad_reuse_mode_exits_71(self):
        gw = self.start("echo.handler", reuse="forever")
        self.assertEqual(gw.wait(), 71)
        self.assertIn("FAAS_REUSE", gw.proc.stderr.read().decode())

    def test_malformed_frames_exit_71(self):
        good = invoke_frame(1, b"{}")
        bad = {
            "short": b"FAAS",
            "magic": b"XAAS" + good[4:],
            "version": good[:4] + b"\x02" + good[5:],
            "kind": good[:5] + bytes([READY]) + good[6:],
            "unknown kind": good[:5] + b"\x09" + good[6:],
            "length": good + b"extra",
            "meta": good[:HEADER_LEN] + b"\x01\x02",
            "longer than a datagram": good + b"z" * (MAX_DATAGRAM + 100 - len(good)),
        }
        for what, datagram in bad.items():
            with self.subTest(what):
                gw = self.start("echo.handler")
                gw.ready()
                gw.send_raw(datagram)
                self.assertIsNone(gw.recv())
                self.assertEqual(gw.wait(), 71)
                self.assertIn("receiving from the gateway", gw.proc.stderr.read().decode())

    def test_startup_is_lean(self):
        t = time.monotonic()
        gw = self.start("echo.handler")
        gw.ready()
        took = time.monotonic() - t
        self.assertLess(took, 2.0)


class InlineRuntimeTest(RuntimeCases, unittest.TestCase):
    """Without the addon (FAAS_NODE_NATIVE=off): bodies inline only."""

    native = "off"

    def test_five_mib_response_is_a_clear_error(self):
        gw = self.start("big.handler", reuse="keep_alive")
        gw.ready()
        _, r = gw.invoke(1, json.dumps({"size": 5 * 1024 * 1024}))
        e = self.assert_lambda_error(r, "Function.ResponseSizeTooLarge", json.loads(r.body)["errorMessage"])
        self.assertIn("5242880 bytes", e["errorMessage"])
        self.assertIn("memfd", e["errorMessage"])
        # The instance lives on.
        gw.ready()
        _, r = gw.invoke(2, json.dumps({"size": MAX_INLINE_BODY + 1}))
        self.assertEqual((r.kind, r.status), (ERROR, 500))
        gw.ready()
        _, r = gw.invoke(3, json.dumps({"size": 10}))
        self.assertEqual((r.kind, r.body), (RESULT, b"x" * 10))

    def test_memfd_request_is_answered_413_without_running_the_handler(self):
        gw = self.start("echo.handler", reuse="keep_alive")
        gw.ready()
        big = json.dumps({"pad": "z" * 200_000}).encode()
        _, r = gw.invoke(5, big, memfd=True)
        self.assertEqual((r.kind, r.status), (ERROR, 413), r)
        e = json.loads(r.body)
        self.assertEqual(e["errorType"], "Runtime.RequestTooLarge")
        self.assertIn(str(len(big)), e["errorMessage"])
        gw.ready()
        _, r = gw.invoke(6, '{"small": true}')
        self.assertEqual(r.json()["event"], {"small": True})

    def test_huge_log_record_is_truncated(self):
        logs, r, _ = self.call("hugelog.handler", "{}")
        self.assertEqual(r.json(), "ok")
        self.assertEqual(len(logs), 1)
        self.assertLessEqual(len(logs[0].body), MAX_INLINE_BODY)
        self.assertIn(b"log record truncated", logs[0].body)

    def test_unloadable_addon_next_to_the_runtime_is_ignored(self):
        # A copy of the runtime with a broken faas_native.node beside it, FAAS_NODE_NATIVE unset.
        d = tempfile.mkdtemp(prefix="faas-node-rt-")
        self.addCleanup(shutil.rmtree, d, True)
        shutil.copy(RUNTIME, d)
        with open(os.path.join(d, "faas_native.node"), "wb") as f:
            f.write(b"not an ELF file")
        gw = self.start("big.handler", reuse="keep_alive", native=None, runtime=os.path.join(d, "faas_runtime.js"))
        gw.ready()
        _, r = gw.invoke(1, json.dumps({"size": MIB5}))
        self.assertEqual((r.kind, r.status), (ERROR, 500), r)
        self.assertEqual(json.loads(r.body)["errorType"], "Function.ResponseSizeTooLarge")
        gw.ready()
        gw.sock.close()
        self.assertEqual(gw.wait(), 0)
        err = gw.proc.stderr.read().decode()
        self.assertIn("ignoring the native addon", err)
        self.assertIn("inline only", err)

    def test_addon_that_cannot_be_loaded_exits_2(self):
        missing = os.path.join(self.code, "no-such-addon.node")
        gw = self.start("echo.handler", native=missing)
        self.assertIsNone(gw.recv(), "no Ready when FAAS_NODE_NATIVE cannot be loaded")
        self.assertEqual(gw.wait(), 2)
        err = gw.proc.stderr.read().decode()
        self.assertIn("cannot load the native addon FAAS_NODE_NATIVE=", err)
        self.assertIn("no-such-addon.node", err)


class NativeRuntimeTest(RuntimeCases, unittest.TestCase):
    """With the addon: memfd bodies both ways above 64 KiB."""

    @classmethod
    def setUpClass(cls):
        cls.native = native_addon()
        super().setUpClass()

    def test_five_mib_request_and_response_round_trip(self):
        gw = self.start("echo.handler", reuse="keep_alive")
        for i in range(1, 4):
            gw.ready()
            pad = chr(ord("a") + i) * MIB5
            big = json.dumps({"pad": pad, "i": i}).encode()
            logs, r = gw.invoke(i, big, memfd=True)
            self.assertEqual((r.kind, r.status, r.memfd), (RESULT, 200, True), r)
            self.assertGreater(len(r.body), MIB5)
            self.assertEqual(r.json(), {"event": {"pad": pad, "i": i}, "requestId": str(i)})
            self.assertEqual(logs, [])
        gw.ready()
        _, r = gw.invoke(9, '{"small": true}')
        self.assertEqual((r.memfd, r.json()["event"]), (False, {"small": True}))

    def test_five_mib_response(self):
        _, r, rc = self.call("big.handler", json.dumps({"size": MIB5}))
        self.assertEqual((r.kind, r.status, r.memfd, len(r.body)), (RESULT, 200, True, MIB5), r)
        self.assertEqual(r.body, b"x" * MIB5)
        self.assertEqual(r.header("content-type"), "application/octet-stream")
        self.assertEqual(rc, 0)

    def test_memfd_threshold_is_64_kib(self):
        gw = self.start("big.handler", reuse="keep_alive")
        for i, size in enumerate((MEMFD_THRESHOLD, MEMFD_THRESHOLD + 1), 1):
            gw.ready()
            _, r = gw.invoke(i, json.dumps({"size": size}))
            self.assertEqual((r.kind, len(r.body), r.memfd), (RESULT, size, size > MEMFD_THRESHOLD))
        # A request just over the threshold, as the gateway sends it (memfd).
        gw.ready()
        body = json.dumps({"size": 3, "pad": "p" * MEMFD_THRESHOLD}).encode()
        _, r = gw.invoke(3, body, memfd=True)
        self.assertEqual((r.kind, r.body), (RESULT, b"xxx"))

    def test_response_over_max_body_is_a_clear_error(self):
        gw = self.start("big.handler", reuse="keep_alive")
        gw.ready()
        _, r = gw.invoke(1, json.dumps({"size": MAX_BODY + 1}))
        e = self.assert_lambda_error(r, "Function.ResponseSizeTooLarge", json.loads(r.body)["errorMessage"])
        self.assertIn(f"{MAX_BODY + 1} bytes", e["errorMessage"])
        gw.ready()
        _, r = gw.invoke(2, json.dumps({"size": MAX_BODY}))
        self.assertEqual((r.kind, r.memfd, len(r.body)), (RESULT, True, MAX_BODY))

    def test_huge_log_record_travels_as_memfd(self):
        logs, r, _ = self.call("hugelog.handler", "{}")
        self.assertEqual(r.json(), "ok")
        self.assertEqual(len(logs), 1)
        self.assertTrue(logs[0].memfd)
        m = LOG_LINE.match(logs[0].body.decode())
        self.assertIsNotNone(m, logs[0].body[:200])
        self.assertEqual(m.group(4), "y" * 200000)

    def test_no_fd_leaks_across_memfd_invocations(self):
        gw = self.start("fds.handler", reuse="keep_alive")
        counts = []
        for i in range(1, 6):
            gw.ready()
            _, r = gw.invoke(i, json.dumps({"pad": "f" * 300_000}).encode(), memfd=True)
            self.assertTrue(r.memfd)
            counts.append(r.json()["fds"])
        self.assertEqual(len(set(counts[1:])), 1, counts)

    def test_addon_next_to_the_runtime_is_found(self):
        d = tempfile.mkdtemp(prefix="faas-node-rt-")
        self.addCleanup(shutil.rmtree, d, True)
        shutil.copy(RUNTIME, d)
        shutil.copy(self.native, os.path.join(d, "faas_native.node"))
        gw = self.start("big.handler", native=None, runtime=os.path.join(d, "faas_runtime.js"))
        gw.native = True  # found without FAAS_NODE_NATIVE: decode() is to expect memfds
        gw.ready()
        _, r = gw.invoke(1, json.dumps({"size": MIB5}))
        self.assertEqual((r.kind, r.memfd, len(r.body)), (RESULT, True, MIB5), r)

    def test_addon_api_directly(self):
        script = textwrap.dedent("""
            const assert = require('assert');
            const mod = { exports: {} };
            process.dlopen(mod, process.argv[1]);
            const m = mod.exports;
            const out = {};
            const b = Buffer.alloc(300000, 'k');
            const fd = m.memfdFrom(b);
            out.flags = require('fs').readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\\s*(\\d+)/)[1];
            assert.ok(m.readMemfd(fd, b.length).equals(b));
            const code = (f) => { try { f(); return 'no error'; } catch (e) { return `${e.name}/${e.code}/${e.message}`; } };
            out.closedByRead = code(() => m.close(fd));
            out.size = code(() => m.readMemfd(m.memfdFrom(Buffer.from('abc')), 4));
            out.empty = m.readMemfd(m.memfdFrom(Buffer.alloc(0)), 0).length;
            out.type = code(() => m.send(1, 'not a buffer', -1));
            out.range = code(() => m.recv(-2, 10));
            out.missing = code(() => m.recv(1));
            out.notSocket = code(() => m.recv(1, 10));
            console.log(JSON.stringify(out));
        """)
        r = subprocess.run([NODE, "-e", script, self.native], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        # The memfd is close-on-exec (O_CLOEXEC in fdinfo's octal flags); its seals are
        # checked on every memfd the runtime sends (read_received_memfd).
        self.assertTrue(int(out["flags"], 8) & 0o2000000, out)
        self.assertTrue(out["closedByRead"].startswith("Error/EBADF/close: "), out)
        self.assertEqual(out["size"], "Error/ERR_FAAS_MEMFD_SIZE/memfd body has 3 bytes, header says 4")
        self.assertEqual(out["empty"], 0)
        self.assertEqual(out["type"], "TypeError/ERR_INVALID_ARG_TYPE/send: data: a Buffer is expected")
        self.assertTrue(out["range"].startswith("RangeError/ERR_OUT_OF_RANGE/"), out)
        self.assertTrue(out["missing"].startswith("TypeError/ERR_INVALID_ARG_TYPE/"), out)
        self.assertTrue(out["notSocket"].startswith("Error/ENOTSOCK/recvmsg: "), out)

    def test_bad_memfd_frames_exit_71(self):
        payload = b'{"a": 1}' + b" " * 100_000
        meta_only = invoke_frame(1, payload, memfd=True)
        inline = invoke_frame(1, b"{}")
        r, w = os.pipe()
        os.close(w)
        self.addCleanup(os.close, r)
        cases = {
            # what: (datagram, fds to create, expected stderr text)
            "unsealed memfd": (meta_only, lambda: [sealed_memfd(payload, seals=0)], "not sealed"),
            "write seal only": (meta_only, lambda: [sealed_memfd(payload, seals=F_SEAL_WRITE)], "not sealed"),
            "size differs": (invoke_frame(1, payload + b" ", memfd=True), lambda: [sealed_memfd(payload)], "header says"),
            "not a memfd": (meta_only, lambda: [os.dup(r)], "not sealed"),
            "flag without fd": (meta_only, lambda: [], "carries no fd"),
            "fd without flag": (inline, lambda: [sealed_memfd(b"{}")], "does not announce"),
            "two fds": (meta_only, lambda: [sealed_memfd(payload), sealed_memfd(payload)], "fds"),
            "over max body": (
                HEADER.pack(MAGIC, VERSION, INVOKE, FLAG_MEMFD, 1, len(meta_only) - HEADER_LEN, MAX_BODY + 1) + meta_only[HEADER_LEN:],
                lambda: [sealed_memfd(payload)],
                "exceeds the limit",
            ),
        }
        for what, (datagram, make_fds, needle) in cases.items():
            with self.subTest(what):
                gw = self.start("echo.handler")
                gw.ready()
                fds = make_fds()
                try:
                    gw.send_raw(datagram, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
                self.assertIsNone(gw.recv())
                self.assertEqual(gw.wait(), 71)
                err = gw.proc.stderr.read().decode()
                self.assertIn("receiving from the gateway", err)
                self.assertIn(needle, err)


if __name__ == "__main__":
    unittest.main()
