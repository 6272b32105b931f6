"""Tests of faas_runtime.py, driven as a subprocess over a SOCK_SEQPACKET pair.

Run: python3 -m unittest discover -s faas-guest/runtimes/python -v

The gateway side of the guest protocol is implemented here independently of
the runtime's own encoder (`t_*` below), and both are checked against bytes
the Rust encoder (faas-core/src/protocol/frame.rs) produced (GOLDEN).

Optional end-to-end test through the real platform: set FAAS_BIN to a built
`faas` binary (CARGO_TARGET_DIR=/tmp/x cargo build --release -p faas-platform).
"""

import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME = os.path.join(HERE, "faas_runtime.py")
sys.path.insert(0, HERE)
import _faas_runtime as rt  # noqa: E402

# --------------------------------------------------------------------------
# Bytes from the Rust encoder: Frame::encode of faas-core at commit 884157e,
# printed by a throwaway program (see README "Golden vectors").
# --------------------------------------------------------------------------

GOLDEN = {
    # Frame::Ready { snapshot: false }
    "ready": "464141530101000000000000000000000000000000000000",
    # Frame::Ready { snapshot: true }
    "ready_snapshot": "464141530101020000000000000000000000000000000000",
    # Frame::Invoke { id: 0x0102030405060708, deadline: 1_700_000_000_123, trace_id: "t-1",
    #   headers: [("content-type", "application/json"), ("x-\u{e9}", "v")], body: b"{\"a\":1}" }
    "invoke": "464141530102000008070605040302013c000000070000007b68e5cf8b0100000300742d3102"
    "000c00636f6e74656e742d74797065100000006170706c69636174696f6e2f6a736f6e0400782d"
    "c3a901000000767b2261223a317d",
    # Frame::Result { id: 42, status: 201, headers: [("content-type", "text/plain")], body: b"hello" }
    "result": "46414153010300002a000000000000002000000005000000c90001000c00636f6e74656e742d"
    "747970650a000000746578742f706c61696e68656c6c6f",
    # Frame::Error { id: 7, status: 500, message: "boom \u{fc}" }
    "error": "464141530104000007000000000000000200000007000000f401626f6f6d20c3bc",
    # Frame::Log { id: 9, stream: Stderr, body: b"line\n" }
    "log": "464141530105000009000000000000000100000005000000026c696e650a",
    # Frame::Result { id: 3, status: 200, headers: [], body: Body::new(vec![b'x'; 70_000]) } (memfd)
    "result_memfd": "464141530103010003000000000000000400000070110100c8000000",
}

# --------------------------------------------------------------------------
# The gateway side, written from frame.rs independently of faas_runtime
# --------------------------------------------------------------------------

T_READY, T_INVOKE, T_RESULT, T_ERROR, T_LOG = 1, 2, 3, 4, 5


def t_header(kind, flags, iid, meta_len, body_len):
    return b"FAAS" + bytes([1, kind]) + struct.pack("<HQII", flags, iid, meta_len, body_len)


def t_headers(headers):
    out = struct.pack("<H", len(headers))
    for k, v in headers:
        kb, vb = k.encode(), v.encode()
        out += struct.pack("<H", len(kb)) + kb + struct.pack("<I", len(vb)) + vb
    return out


def t_invoke_meta(deadline_ms, trace_id, headers):
    tb = trace_id.encode()
    return struct.pack("<Q", deadline_ms) + struct.pack("<H", len(tb)) + tb + t_headers(headers)


def t_memfd(data):
    fd = os.memfd_create("test-body", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(
        fd,
        fcntl.F_ADD_SEALS,
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
    )
    return fd


def t_parse_headers(meta, pos):
    (n,) = struct.unpack_from("<H", meta, pos)
    pos += 2
    out = []
    for _ in range(n):
        (kl,) = struct.unpack_from("<H", meta, pos)
        k = meta[pos + 2 : pos + 2 + kl].decode()
        pos += 2 + kl
        (vl,) = struct.unpack_from("<I", meta, pos)
        v = meta[pos + 4 : pos + 4 + vl].decode()
        pos += 4 + vl
        out.append((k, v))
    return out, pos


class Frame:
    """A frame the instance sent, decoded by the test."""

    def __init__(self, raw, fd):
        assert len(raw) >= 24, raw
        assert raw[:4] == b"FAAS" and raw[4] == 1, raw[:8]
        self.kind = raw[5]
        self.flags, self.id, meta_len, body_len = struct.unpack_from("<HQII", raw, 6)
        self.meta = raw[24 : 24 + meta_len]
        self.memfd = bool(self.flags & 1)
        self.seals = None
        if self.memfd:
            assert fd is not None, "memfd flag without an fd"
            assert len(raw) == 24 + meta_len
            self.seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert os.fstat(fd).st_size == body_len
            self.body = os.pread(fd, body_len, 0)
            while len(self.body) < body_len:
                self.body += os.pread(fd, body_len - len(self.body), len(self.body))
            os.close(fd)
        else:
            assert fd is None, "fd on a frame without the memfd flag"
            assert len(raw) == 24 + meta_len + body_len, (len(raw), meta_len, body_len)
            self.body = raw[24 + meta_len :]
        self.status = self.headers = self.stream = None
        if self.kind == T_RESULT:
            (self.status,) = struct.unpack_from("<H", self.meta, 0)
            self.headers, end = t_parse_headers(self.meta, 2)
            assert end == len(self.meta)
        elif self.kind == T_ERROR:
            (self.status,) = struct.unpack_from("<H", self.meta, 0)
            assert len(self.meta) == 2
        elif self.kind == T_LOG:
            assert len(self.meta) == 1
            self.stream = self.meta[0]
        elif self.kind == T_READY:
            assert self.meta == b"" and self.body == b"" and self.id == 0

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Frame(kind={self.kind}, id={self.id}, flags={self.flags}, status={self.status}, body={self.body[:80]!r})"


# Keep fd 3 of this process occupied, so that no pipe Popen makes lands on
# it (the child's fd 3 is replaced by the channel in preexec_fn).
try:
    os.fstat(3)
except OSError:
    _fd3_holder = os.open(os.devnull, os.O_RDONLY)
    if _fd3_holder != 3:
        os.dup2(_fd3_holder, 3, inheritable=False)


CODE = {
    "fn.py": '''
        import base64, hashlib, json, os, sys, time
        COUNT = 0

        def echo(event, context):
            return event

        def kind(event, context):
            return {"type": type(event).__name__, "value": event if not isinstance(event, bytes) else event.hex()}

        def boom(event, context):
            raise ValueError("bad input: " + str(event.get("x")))

        def http(event, context):
            return {
                "statusCode": event.get("status", 201),
                "headers": {"Content-Type": "text/plain", "X-Num": 7, "X-Flag": True},
                "multiValueHeaders": {"X-Multi": ["a", "b"]},
                "cookies": ["c1=v1", "c2=v2; Max-Age=10"],
                "body": event.get("body", "created"),
                "isBase64Encoded": event.get("b64", False),
            }

        def big(event, context):
            return {"statusCode": 200, "body": "y" * event["n"]}

        def digest(event, context):
            return {"len": len(event["data"]), "sha256": hashlib.sha256(event["data"].encode()).hexdigest()}

        def raw_bytes(event, context):
            return b"\\x00\\x01binary"

        def loud(event, context):
            import logging
            print("hello from print")
            print("to stderr", file=sys.stderr)
            sys.stdout.write("partial")
            logging.getLogger().warning("a warning %d", 42)
            logging.getLogger().info("hidden at the default level")
            context.log("via context.log\\n")
            return "ok"

        def threaded(event, context):
            import threading
            t = threading.Thread(target=lambda: print("from a thread"))
            t.start()
            t.join()
            return "joined"

        def remaining(event, context):
            a = context.get_remaining_time_in_millis()
            time.sleep(0.05)
            b = context.get_remaining_time_in_millis()
            return [a, b]

        def ctx(event, context):
            return {
                "aws_request_id": context.aws_request_id,
                "function_name": context.function_name,
                "function_version": context.function_version,
                "memory_limit_in_mb": context.memory_limit_in_mb,
                "invoked_function_arn": context.invoked_function_arn,
                "log_group_name": context.log_group_name,
                "log_stream_name": context.log_stream_name,
                "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
                "client_context": context.client_context,
                "trace_id": context.trace_id,
                "headers": context.headers,
                "env_trace": os.environ.get("_X_AMZN_TRACE_ID"),
                "env_name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
                "cwd": os.getcwd(),
            }

        def counter(event, context):
            global COUNT
            COUNT += 1
            return {"count": COUNT, "pid": os.getpid()}

        def bad_status(event, context):
            return {"statusCode": 42, "body": "x"}

        def many_headers(event, context):
            return {"statusCode": 200, "headers": {f"x-{i}": "v" for i in range(300)}, "body": "x"}

        def unserialisable(event, context):
            return {"when": object()}

        def exits(event, context):
            sys.exit(3)

        NOT_CALLABLE = 5
    ''',
    "plain.py": '''
        import sys

        def modules(event, context):
            heavy = ("json", "re", "enum", "logging", "traceback", "socket", "argparse", "fcntl")
            return sorted(m for m in heavy if m in sys.modules)
    ''',
    "pkg/__init__.py": "",
    "pkg/sub/__init__.py": "",
    "pkg/sub/mod.py": '''
        def handler(event, context):
            return {"from": __name__, "event": event}
    ''',
    "broken_import.py": '''
        import does_not_exist_anywhere
        def handler(event, context):
            return 1
    ''',
    "broken_syntax.py": "def handler(event, context)\n    return 1\n",
    "raises_at_init.py": '''
        CONFIG = {}
        VALUE = CONFIG["missing"]
        def handler(event, context):
            return 1
    ''',
    "uses_logging.py": '''
        import logging
        logging.basicConfig(level=logging.INFO)  # a no-op on Lambda: the root has a handler
        log = logging.getLogger(__name__)
        log.setLevel(logging.INFO)
        log.info("init message")

        def handler(event, context):
            log.info("handling %s", event)
            return "done"
    ''',
    "snap.py": '''
        import random, threading, os
        STATE = [random.random() for _ in range(3)]
        MY_RNG = random.Random(1234)
        LOG_FILE = open(os.path.join(os.environ["SNAP_TMP"], "init.log"), "w")
        LOG_FILE.write("initialised\\n")
        t = threading.Thread(target=lambda: None)
        t.start()

        def handler(event, context):
            return {"r": random.random(), "mine": MY_RNG.random(), "state": STATE,
                    "file_closed": LOG_FILE.closed}
    ''',
    "snap_thread.py": '''
        import threading, time
        STOP = threading.Event()
        t = threading.Thread(target=STOP.wait, daemon=True)
        t.start()
        def handler(event, context):
            return 1
    ''',
    "snap_hooks.py": '''
        from snapshot_restore_py import register_before_snapshot, register_after_restore
        CALLS = []
        @register_before_snapshot
        def before():
            CALLS.append("before")
        @register_after_restore
        def after():
            CALLS.append("after")
        def handler(event, context):
            return CALLS
    ''',
}


def setUpModule():
    global CODE_DIR
    CODE_DIR = tempfile.mkdtemp(prefix="faas-py-code-")
    for name, src in CODE.items():
        path = os.path.join(CODE_DIR, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(src).lstrip("\n"))


def tearDownModule():
    shutil.rmtree(CODE_DIR, ignore_errors=True)


def now_ms():
    return int(time.time() * 1000)


class Instance:
    """One runtime process and the gateway end of its channel."""

    def __init__(self, handler, reuse=None, snapshot=False, env=None, code_dir=None, channel=True):
        self.gw, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.gw.settimeout(20)
        e = dict(os.environ)
        e.pop("FAAS_REUSE", None)
        e.update({"FAAS_FUNCTION_NAME": "test-fn", "FAAS_FUNCTION_VERSION": "7", "FAAS_MEMORY_MB": "256"})
        if reuse is not None:
            e["FAAS_REUSE"] = reuse
        e.update(env or {})
        argv = [sys.executable, RUNTIME, "--handler", handler, "--code", code_dir or CODE_DIR]
        if snapshot:
            argv.append("--snapshot")
        cfd = child.fileno()

        def place_channel():
            if not channel:
                os.close(3)
            elif cfd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(cfd, 3)  # inheritable: survives exec

        self.proc = subprocess.Popen(
            argv, preexec_fn=place_channel, close_fds=False, env=e,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        child.close()
        self.next_id = 1
        self.ready_next = False

    def recv(self):
        raw, anc, flags, _ = self.gw.recvmsg(300_000, socket.CMSG_SPACE(16))
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), flags
        if not raw:
            return None
        fds = []
        for level, typ, data in anc:
            assert (level, typ) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds += struct.unpack(f"{len(data) // 4}i", data)
        assert len(fds) <= 1, fds
        return Frame(raw, fds[0] if fds else None)

    def expect_ready(self):
        """The instance is ready: a Ready frame, or (kept alive) FLAG_READY on its
        last answer, after which no Ready comes."""
        if self.ready_next:
            self.ready_next = False
            return None
        f = self.recv()
        assert f is not None, "channel closed instead of Ready: " + self.stderr_now()
        assert f.kind == T_READY, f
        return f

    def send_invoke(self, body, iid=None, deadline_ms=None, trace_id="", headers=(), memfd=None):
        if isinstance(body, str):
            body = body.encode()
        iid = self.next_id if iid is None else iid
        self.next_id = iid + 1
        meta = t_invoke_meta(deadline_ms or now_ms() + 30_000, trace_id, list(headers))
        if memfd is None:
            memfd = len(body) > 64 * 1024
        if memfd:
            fd = t_memfd(body)
            try:
                self.gw.sendmsg(
                    [t_header(T_INVOKE, 1, iid, len(meta), len(body)) + meta],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))],
                )
            finally:
                os.close(fd)
        else:
            self.gw.sendmsg([t_header(T_INVOKE, 0, iid, len(meta), len(body)) + meta + body])
        return iid

    def invoke(self, body, **kw):
        """Sends an Invoke and returns (answer, logs) once Result or Error arrives."""
        iid = self.send_invoke(body, **kw)
        logs = []
        while True:
            f = self.recv()
            assert f is not None, "channel closed during the invocation: " + self.stderr_now()
            assert f.id == iid, (f, iid)
            if f.kind == T_LOG:
                logs.append(f)
                continue
            assert f.kind in (T_RESULT, T_ERROR), f
            self.ready_next = bool(f.flags & 4)
            return f, logs

    def stderr_now(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def finish(self, timeout=20):
        """Closes the gateway end; returns (exit code, stdout, stderr)."""
        self.gw.close()
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.communicate()
        self.gw.close()


def wait_stopped(proc, timeout=20):
    """Waits until the runtime has stopped itself (SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid == 0:
            time.sleep(0.01)
            continue
        if os.WIFSTOPPED(status):
            assert os.WSTOPSIG(status) == signal.SIGSTOP, status
            return
        proc.returncode = os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the runtime exited ({proc.returncode}) instead of stopping: "
                             + proc.stderr.read().decode(errors="replace"))
    raise AssertionError("the runtime did not stop itself")


class Golden(unittest.TestCase):
    """Both encoders agree byte for byte with the Rust encoder."""

    def test_test_codec_matches_rust(self):
        meta = t_invoke_meta(1_700_000_000_123, "t-1", [("content-type", "application/json"), ("x-\u00e9", "v")])
        self.assertEqual(
            (t_header(T_INVOKE, 0, 0x0102030405060708, len(meta), 7) + meta + b'{"a":1}').hex(),
            GOLDEN["invoke"],
        )
        self.assertEqual(t_header(T_READY, 0, 0, 0, 0).hex(), GOLDEN["ready"])

    def test_runtime_encoder_matches_rust(self):
        self.assertEqual(rt.encode_ready(False).hex(), GOLDEN["ready"])
        self.assertEqual(rt.encode_ready(True).hex(), GOLDEN["ready_snapshot"])
        meta = rt.encode_result_meta(201, [("content-type", "text/plain")])
        self.assertEqual(rt.encode_inline(rt.RESULT, 42, meta, b"hello").hex(), GOLDEN["result"])
        self.assertEqual(rt.encode_error(7, 500, "boom \u00fc").hex(), GOLDEN["error"])
        self.assertEqual(rt.encode_inline(rt.LOG, 9, bytes([rt.STREAM_STDERR]), b"line\n").hex(), GOLDEN["log"])
        meta = rt.encode_invoke_meta(1_700_000_000_123, "t-1", [("content-type", "application/json"), ("x-\u00e9", "v")])
        self.assertEqual(
            rt.encode_inline(rt.INVOKE, 0x0102030405060708, meta, b'{"a":1}').hex(), GOLDEN["invoke"]
        )
        # A memfd body: header + metadata only, flag bit 0, body_len = the memfd's size.
        meta = rt.encode_result_meta(200, [])
        self.assertEqual(
            (rt.encode_header(rt.RESULT, rt.FLAG_MEMFD, 3, len(meta), 70_000) + meta).hex(),
            GOLDEN["result_memfd"],
        )

    def test_runtime_decodes_rust_invoke(self):
        inv = rt.decode_frame(bytes.fromhex(GOLDEN["invoke"]))
        self.assertIsInstance(inv, rt.Invoke)
        self.assertEqual(inv.id, 0x0102030405060708)
        self.assertEqual(inv.deadline_ms, 1_700_000_000_123)
        self.assertEqual(inv.trace_id, "t-1")
        self.assertEqual(inv.headers, [("content-type", "application/json"), ("x-\u00e9", "v")])
        self.assertEqual(inv.body, b'{"a":1}')

    def test_runtime_decoder_refuses_what_rust_refuses(self):
        good = bytes.fromhex(GOLDEN["invoke"])
        cases = {
            "short": good[:23],
            "magic": b"FAAT" + good[4:],
            "version": good[:4] + b"\x02" + good[5:],
            "kind": good[:5] + b"\x09" + good[6:],
            "flags": good[:6] + b"\x04\x00" + good[8:],
            "length": good + b"x",
            "trailing meta": rt.encode_inline(rt.INVOKE, 1, rt.encode_invoke_meta(1, "", []) + b"z", b""),
            "snapshot flag": rt.encode_inline(rt.INVOKE, 1, rt.encode_invoke_meta(1, "", []), b"", flags=rt.FLAG_SNAPSHOT),
            "memfd without fd": rt.encode_header(rt.INVOKE, rt.FLAG_MEMFD, 1, 12, 10) + rt.encode_invoke_meta(1, "", []),
            "bad utf-8": rt.encode_inline(rt.INVOKE, 1, struct.pack("<QH", 1, 1) + b"\xff" + b"\x00\x00", b""),
        }
        for name, data in cases.items():
            with self.subTest(name):
                with self.assertRaises(rt.ProtocolError):
                    rt.decode_frame(data)

    def test_unsealed_memfd_is_refused(self):
        fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, b"abc")
        meta = rt.encode_invoke_meta(1, "", [])
        with self.assertRaisesRegex(rt.ProtocolError, "not sealed"):
            rt.decode_frame(rt.encode_header(rt.INVOKE, rt.FLAG_MEMFD, 1, len(meta), 3) + meta, fd)
        with self.assertRaises(OSError):
            os.fstat(fd)  # the decoder closed it

    def test_error_message_cut_at_a_character_boundary(self):
        body = rt.error_message_bytes("\u00e9" * 100_000)
        self.assertLessEqual(len(body), rt.MAX_INLINE_BODY)
        body.decode("utf-8")  # no half character

    def test_error_json_fits_inline(self):
        err = {"errorMessage": "m" * 500_000, "errorType": "E", "requestId": "1",
               "stackTrace": ["  File \"x\", line 1, in f\n    g()\n"] * 20_000}
        s = rt.error_json(err)
        self.assertLessEqual(len(s), rt.MAX_INLINE_BODY)
        self.assertEqual(json.loads(s)["errorType"], "E")


class LambdaMapping(unittest.TestCase):
    """The pure mapping functions."""

    def test_event_from_body(self):
        self.assertEqual(rt.event_from_body(b""), {})
        self.assertEqual(rt.event_from_body(b'{"a": [1, 2]}'), {"a": [1, 2]})
        self.assertEqual(rt.event_from_body(b"42"), 42)
        self.assertEqual(rt.event_from_body(b"plain text"), "plain text")
        self.assertEqual(rt.event_from_body(b"\xff\xfe\x00"), b"\xff\xfe\x00")

    def test_plain_results_are_json(self):
        self.assertEqual(rt.response_from_result({"a": 1}), (200, [("content-type", "application/json")], b'{"a": 1}'))
        self.assertEqual(rt.response_from_result("hi")[2], b'"hi"')
        self.assertEqual(rt.response_from_result(None)[2], b"null")
        import decimal
        self.assertEqual(rt.response_from_result([decimal.Decimal("2"), decimal.Decimal("1.5")])[2], b"[2, 1.5]")
        with self.assertRaises(rt.MarshalError):
            rt.response_from_result({"x": object()})

    def test_status_code_results_are_http_responses(self):
        status, headers, body = rt.response_from_result(
            {"statusCode": 404, "headers": {"a": "b"}, "body": "nope", "cookies": ["k=v"]}
        )
        self.assertEqual((status, headers, body), (404, [("a", "b"), ("set-cookie", "k=v")], b"nope"))
        self.assertEqual(rt.response_from_result({"statusCode": 204}), (204, [], b""))
        self.assertEqual(
            rt.response_from_result({"statusCode": 200, "body": "aGk=", "isBase64Encoded": True})[2], b"hi"
        )
        self.assertEqual(rt.response_from_result({"statusCode": 200, "body": {"k": 1}})[2], b'{"k": 1}')
        for bad in ({"statusCode": 99}, {"statusCode": "abc"}, {"statusCode": True},
                    {"statusCode": 200, "body": "!!", "isBase64Encoded": True}):
            with self.subTest(bad), self.assertRaises(rt.MarshalError):
                rt.response_from_result(bad)

    def test_reuse_mode(self):
        self.assertFalse(rt.reuse_mode({}))
        self.assertFalse(rt.reuse_mode({"FAAS_REUSE": ""}))
        self.assertFalse(rt.reuse_mode({"FAAS_REUSE": "per_request"}))
        self.assertTrue(rt.reuse_mode({"FAAS_REUSE": "keep_alive"}))
        with self.assertRaisesRegex(ValueError, "expected per_request or keep_alive"):
            rt.reuse_mode({"FAAS_REUSE": "forever"})


class JsonCodec(unittest.TestCase):
    """The runtime's JSON codec (on _json, without the json package) agrees with json."""

    def test_fast_path_is_in_use(self):
        self.assertIsNot(rt.json_loads, json.loads)

    def test_loads_agrees_with_json(self):
        corpus = [
            '{"a": [1, -2, 3.25, 1e3, -0.0, true, false, null], "b": {"c": "d"}}',
            '  [] \n', '"\\ud83d\\ude00 \\u00e9 \\t"', "12345678901234567890123", '"\u00e9t\u00e9"',
            "NaN", "[Infinity, -Infinity]", '{"k": 1, "k": 2}', "\t0\r\n",
        ]
        for text in corpus:
            with self.subTest(text):
                a, b = rt.json_loads(text), json.loads(text)
                self.assertEqual(json.dumps(a), json.dumps(b))
        for bad in ["", "  ", "{", "[1,]", "1 2", "{'a': 1}", "tru", '"\x01"', "[1] x"]:
            with self.subTest(bad), self.assertRaises(ValueError):
                rt.json_loads(bad)

    def test_dumps_agrees_with_json(self):
        import decimal

        for o in [
            {"a": [1, 2.5, None, True, False], 1: "int key", 2.5: "float key", None: "null key"},
            "\u00e9\ud83d\ude00\n\"", (1, 2), [float("nan"), float("inf")], 10 ** 30, {"d": decimal.Decimal("1.25")},
            [], {}, "", 0.1, -0.0,
        ]:
            with self.subTest(o):
                self.assertEqual(rt.json_dumps(o), json.dumps(o, default=rt._json_default))
        loop = []
        loop.append(loop)
        with self.assertRaises(ValueError):
            rt.json_dumps(loop)
        with self.assertRaises(TypeError):
            rt.json_dumps({"x": object()})


class Reseed(unittest.TestCase):
    """After a restore, copies of one snapshot draw different random numbers."""

    def test_copies_from_one_state_diverge(self):
        import tempfile as tf
        import uuid

        random.seed(1234)
        mine = random.Random(99)
        saved, saved_mine = random.getstate(), mine.getstate()
        runs = []
        for _ in range(2):
            random.setstate(saved)
            mine.setstate(saved_mine)
            before = (random.random(), mine.random())
            random.setstate(saved)
            mine.setstate(saved_mine)
            tf._get_candidate_names()
            rt.reseed_rngs([mine])
            self.assertIsNone(tf._name_sequence)
            self.assertIsNone(uuid._last_timestamp)
            runs.append((random.random(), mine.random(), random.getrandbits(64)))
        # Without reseeding both copies would repeat `before`.
        self.assertNotEqual(runs[0], runs[1])
        self.assertNotEqual(runs[0][0], before[0])
        self.assertNotEqual(runs[0][1], before[1])
        self.assertNotEqual(uuid.uuid1(), uuid.uuid1())

    def test_scan_heap_finds_random_instances(self):
        r = random.Random(5)
        found = rt.scan_heap()
        self.assertTrue(any(o is r for o in found))
        self.assertFalse(any(o is random._inst for o in found))
        self.assertFalse(any(isinstance(o, random.SystemRandom) for o in found))


class Invocations(unittest.TestCase):
    def test_json_echo(self):
        inst = Instance("fn.echo")
        try:
            inst.expect_ready()
            res, logs = inst.invoke(json.dumps({"hello": "world", "n": [1, 2.5, None]}))
            self.assertEqual(res.kind, T_RESULT)
            self.assertEqual(res.status, 200)
            self.assertEqual(res.header("content-type"), "application/json")
            self.assertEqual(res.json(), {"hello": "world", "n": [1, 2.5, None]})
            self.assertEqual(logs, [])
            code, out, err = inst.finish()
            self.assertEqual(code, 0, err)
        finally:
            inst.kill()

    def test_runtime_imports_nothing_heavy(self):
        inst = Instance("plain.modules")
        try:
            inst.expect_ready()
            res, _ = inst.invoke("{}")
            # What the interpreter itself loads at start-up (site, .pth hooks) does not count.
            baseline = subprocess.run(
                [sys.executable, "-c", "import sys; print(' '.join(sorted(sys.modules)))"],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            self.assertEqual([m for m in res.json() if m not in baseline], [])
        finally:
            inst.kill()

    def test_dotted_module_path(self):
        inst = Instance("pkg.sub.mod.handler")
        try:
            inst.expect_ready()
            res, _ = inst.invoke('{"k": 1}')
            self.assertEqual(res.json(), {"from": "pkg.sub.mod", "event": {"k": 1}})
        finally:
            inst.kill()

    def test_event_kinds(self):
        inst = Instance("fn.kind", reuse="keep_alive")
        try:
            for body, expected in [
                (b"not json at all", {"type": "str", "value": "not json at all"}),
                (b"", {"type": "dict", "value": {}}),
                (b'"a string"', {"type": "str", "value": "a string"}),
                (b"\xff\x00", {"type": "bytes", "value": "ff00"}),
            ]:
                inst.expect_ready()
                res, _ = inst.invoke(body)
                self.assertEqual(res.json(), expected, body)
        finally:
            inst.kill()

    def test_kept_alive_answers_carry_the_ready_flag_instead_of_a_ready(self):
        inst = Instance("fn.kind", reuse="keep_alive")
        try:
            self.assertIsNotNone(inst.expect_ready())
            for body in (b"one", b"two"):
                res, _ = inst.invoke(body)
                self.assertEqual(res.kind, T_RESULT)
                self.assertEqual(res.flags & 4, 4, res)
            # The next frame is the third answer, not a Ready.
            res, _ = inst.invoke(b"three")
            self.assertEqual(res.flags & 4, 4, res)
        finally:
            inst.kill()
        once = Instance("fn.kind")
        try:
            once.expect_ready()
            res, _ = once.invoke(b"only")
            self.assertEqual(res.flags & 4, 0, res)
        finally:
            once.kill()

    def test_exception_is_a_lambda_shaped_error(self):
        inst = Instance("fn.boom", reuse="keep_alive")
        try:
            inst.expect_ready()
            res, logs = inst.invoke('{"x": 5}', iid=0xABC)
            self.assertEqual(res.kind, T_ERROR)
            self.assertEqual(res.status, 500)
            err = res.json()
            self.assertEqual(err["errorType"], "ValueError")
            self.assertEqual(err["errorMessage"], "bad input: 5")
            self.assertEqual(err["requestId"], "0000000000000abc")
            self.assertEqual(len(err["stackTrace"]), 1, err["stackTrace"])  # runtime frames left out
            self.assertIn("fn.py", err["stackTrace"][0])
            self.assertIn("in boom", err["stackTrace"][0])
            self.assertTrue(logs and logs[0].stream == 3, logs)
            self.assertTrue(logs[0].body.startswith(b"[ERROR] ValueError: bad input: 5\nTraceback"), logs[0].body)
            # The instance goes on serving.
            inst.expect_ready()
            res, _ = inst.invoke('{"x": 6}')
            self.assertEqual(res.json()["errorMessage"], "bad input: 6")
            code, _, stderr = inst.finish()
            self.assertEqual(code, 0)
            self.assertIn("invocation 0000000000000abc: handler failed: ValueError: bad input: 5", stderr)
        finally:
            inst.kill()

    def test_status_code_body_headers_mapping(self):
        inst = Instance("fn.http", reuse="keep_alive")
        try:
            inst.expect_ready()
            res, _ = inst.invoke("{}")
            self.assertEqual(res.kind, T_RESULT)
            self.assertEqual(res.status, 201)
            self.assertEqual(res.body, b"created")
            self.assertEqual(
                res.headers,
                [("Content-Type", "text/plain"), ("X-Num", "7"), ("X-Flag", "true"),
                 ("X-Multi", "a"), ("X-Multi", "b"),
                 ("set-cookie", "c1=v1"), ("set-cookie", "c2=v2; Max-Age=10")],
            )
            inst.expect_ready()
            res, _ = inst.invoke(json.dumps({"status": 302, "body": "AAECAw==", "b64": True}))
            self.assertEqual((res.status, res.body), (302, b"\x00\x01\x02\x03"))
            inst.expect_ready()
            res, _ = inst.invoke(json.dumps({"body": "\u00e9t\u00e9"}))
            self.assertEqual(res.body, "\u00e9t\u00e9".encode())
        finally:
            inst.kill()

    def test_bytes_result_and_marshal_errors(self):
        for handler, check in [
            ("fn.raw_bytes", lambda r: (r.kind, r.status, r.body) == (T_RESULT, 200, b"\x00\x01binary")),
            ("fn.bad_status", lambda r: r.kind == T_ERROR and r.json()["errorType"] == "Runtime.MarshalError"),
            ("fn.unserialisable", lambda r: r.kind == T_ERROR and "not JSON serializable" in r.json()["errorMessage"]),
            ("fn.many_headers", lambda r: (r.kind, r.status) == (T_ERROR, 500)
             and r.json()["errorMessage"] == "the handler's response cannot be sent: headers is too long for the wire format"),
        ]:
            with self.subTest(handler):
                inst = Instance(handler)
                try:
                    inst.expect_ready()
                    res, _ = inst.invoke("{}")
                    self.assertTrue(check(res), res)
                finally:
                    inst.kill()

    def test_five_mib_response_travels_as_sealed_memfd(self):
        inst = Instance("fn.big")
        try:
            inst.expect_ready()
            n = 5 * 1024 * 1024
            res, _ = inst.invoke(json.dumps({"n": n}))
            self.assertEqual(res.kind, T_RESULT)
            self.assertTrue(res.memfd)
            need = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            self.assertEqual(res.seals & need, need)
            self.assertEqual(len(res.body), n)
            self.assertEqual(res.body, b"y" * n)
            self.assertEqual(inst.finish()[0], 0)
        finally:
            inst.kill()

    def test_threshold_is_64_kib(self):
        inst = Instance("fn.big", reuse="keep_alive")
        try:
            for n, memfd in [(64 * 1024, False), (64 * 1024 + 1, True)]:
                inst.expect_ready()
                res, _ = inst.invoke(json.dumps({"n": n}))
                self.assertEqual((len(res.body), res.memfd), (n, memfd))
        finally:
            inst.kill()

    def test_five_mib_request_arrives_through_memfd(self):
        inst = Instance("fn.digest")
        try:
            inst.expect_ready()
            data = "".join(random.choice("abcdef") for _ in range(1024)) * 5 * 1024
            body = json.dumps({"data": data}).encode()
            self.assertGreater(len(body), 5 * 1024 * 1024)
            res, _ = inst.invoke(body, memfd=True)
            self.assertEqual(res.json(), {"len": len(data), "sha256": hashlib.sha256(data.encode()).hexdigest()})
        finally:
            inst.kill()

    def test_print_and_logging_are_log_frames_of_the_invocation(self):
        inst = Instance("fn.loud")
        try:
            inst.expect_ready()
            res, logs = inst.invoke("{}", iid=77)
            self.assertEqual(res.json(), "ok")
            self.assertTrue(all(f.id == 77 for f in logs))
            by_stream = {}
            for f in logs:
                by_stream.setdefault(f.stream, []).append(f.body)
            self.assertEqual(by_stream[1], [b"hello from print\n", b"partial"])
            self.assertEqual(by_stream[2], [b"to stderr\n"])
            records = by_stream[3]
            self.assertEqual(len(records), 2, records)
            level, stamp, rid, msg = records[0].decode().split("\t")
            self.assertEqual(level, "[WARNING]")
            self.assertRegex(stamp, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertEqual(rid, "000000000000004d")
            self.assertEqual(msg, "a warning 42\n")
            self.assertEqual(records[1], b"via context.log\n")
            code, out, err = inst.finish()
            self.assertEqual(code, 0)
            self.assertNotIn("hello from print", out)  # went to the gateway, not to stdout
        finally:
            inst.kill()

    def test_output_of_a_thread_the_handler_started(self):
        inst = Instance("fn.threaded")
        try:
            inst.expect_ready()
            res, logs = inst.invoke("{}", iid=12)
            self.assertEqual(res.json(), "joined")
            self.assertEqual([(f.id, f.stream, f.body) for f in logs], [(12, 1, b"from a thread\n")])
        finally:
            inst.kill()

    def test_logging_basic_config_at_init_is_a_no_op(self):
        inst = Instance("uses_logging.handler")
        try:
            inst.expect_ready()
            res, logs = inst.invoke('"ev"', iid=5)
            self.assertEqual(res.json(), "done")
            self.assertEqual(len(logs), 1, logs)
            self.assertEqual(logs[0].stream, 3)
            self.assertTrue(logs[0].body.decode().startswith("[INFO]\t"))
            self.assertTrue(logs[0].body.endswith(b"\t0000000000000005\thandling ev\n"), logs[0].body)
            code, out, err = inst.finish()
            # The init record went to stderr once, in Lambda's format, not twice.
            self.assertEqual(err.count("init message"), 1, err)
            self.assertIn("[INFO]\t", err)
        finally:
            inst.kill()

    def test_remaining_time_decreases(self):
        inst = Instance("fn.remaining")
        try:
            inst.expect_ready()
            deadline = now_ms() + 10_000
            res, _ = inst.invoke("{}", deadline_ms=deadline)
            a, b = res.json()
            self.assertLessEqual(a, 10_000)
            self.assertGreater(a, 5_000)
            self.assertGreaterEqual(a - b, 45)
            inst2 = Instance("fn.remaining")
            inst2.expect_ready()
            res, _ = inst2.invoke("{}", deadline_ms=now_ms() - 1000)
            self.assertEqual(res.json(), [0, 0])
            inst2.kill()
        finally:
            inst.kill()

    def test_context(self):
        inst = Instance("fn.ctx")
        try:
            inst.expect_ready()
            res, _ = inst.invoke("{}", iid=0x1F, trace_id="Root=1-abc", headers=[("x-h", "v")])
            c = res.json()
            self.assertEqual(c["aws_request_id"], "000000000000001f")
            self.assertEqual(c["function_name"], "test-fn")
            self.assertEqual(c["function_version"], "7")
            self.assertEqual(c["memory_limit_in_mb"], "256")
            self.assertEqual(c["invoked_function_arn"], "arn:aws:lambda:local:000000000000:function:test-fn")
            self.assertEqual(c["log_group_name"], "/aws/lambda/test-fn")
            self.assertRegex(c["log_stream_name"], r"^\d{4}/\d\d/\d\d/\[7\][0-9a-f]{32}$")
            self.assertEqual(c["identity"], [None, None])
            self.assertIsNone(c["client_context"])
            self.assertEqual(c["trace_id"], "Root=1-abc")
            self.assertEqual(c["env_trace"], "Root=1-abc")
            self.assertEqual(c["headers"], [["x-h", "v"]])
            self.assertEqual(c["env_name"], "test-fn")
            self.assertEqual(os.path.realpath(c["cwd"]), os.path.realpath(CODE_DIR))
        finally:
            inst.kill()

    def test_keep_alive_serves_three_invocations(self):
        inst = Instance("fn.counter", reuse="keep_alive")
        try:
            pids = set()
            for i in range(1, 4):
                inst.expect_ready()
                res, _ = inst.invoke("{}")
                self.assertEqual(res.json()["count"], i)
                pids.add(res.json()["pid"])
            self.assertEqual(len(pids), 1)
            inst.expect_ready()
            code, _, err = inst.finish()
            self.assertEqual(code, 0, err)
        finally:
            inst.kill()

    def test_per_request_exits_after_one(self):
        inst = Instance("fn.counter", reuse="per_request")
        try:
            inst.expect_ready()
            res, _ = inst.invoke("{}")
            self.assertEqual(res.json()["count"], 1)
            self.assertEqual(inst.proc.wait(timeout=20), 0)
            self.assertIsNone(inst.recv())  # no second Ready: the channel closed
        finally:
            inst.kill()

    def test_sys_exit_in_handler(self):
        inst = Instance("fn.exits", reuse="keep_alive")
        try:
            inst.expect_ready()
            res, _ = inst.invoke("{}")
            self.assertEqual(res.kind, T_ERROR)
            self.assertEqual(res.json()["errorType"], "Runtime.ExitError")
            self.assertEqual(inst.proc.wait(timeout=20), 3)
        finally:
            inst.kill()

    def test_gateway_closing_before_a_request_exits_0(self):
        inst = Instance("fn.echo", reuse="keep_alive")
        try:
            inst.expect_ready()
            self.assertEqual(inst.finish()[0], 0)
        finally:
            inst.kill()

    def test_unexpected_frame_from_gateway_exits_71(self):
        inst = Instance("fn.echo")
        try:
            inst.expect_ready()
            inst.gw.send(t_header(T_READY, 0, 0, 0, 0))
            code, _, err = inst.finish()
            self.assertEqual(code, 71)
            self.assertIn("the gateway sent a Ready frame", err)
        finally:
            inst.kill()

    def test_malformed_frame_from_gateway_exits_71(self):
        inst = Instance("fn.echo")
        try:
            inst.expect_ready()
            inst.gw.send(b"FAAS\x01\x02\x00\x00" + b"\x00" * 8)
            code, _, err = inst.finish()
            self.assertEqual(code, 71)
            self.assertIn("receiving from the gateway: frame of 16 bytes is shorter", err)
        finally:
            inst.kill()


class StartupFailures(unittest.TestCase):
    def assert_fails(self, handler, code, *needles, **kw):
        inst = Instance(handler, **kw)
        try:
            rc, out, err = inst.finish()
            self.assertEqual(rc, code, err)
            lines = [line for line in err.splitlines() if line.strip()]
            self.assertEqual(len(lines), 1, err)
            for needle in needles:
                self.assertIn(needle, lines[0])
            return lines[0]
        finally:
            inst.kill()

    def test_import_error(self):
        self.assert_fails(
            "broken_import.handler", 2, "broken_import.handler", CODE_DIR,
            "Runtime.ImportModuleError", "does_not_exist_anywhere",
        )

    def test_missing_module(self):
        self.assert_fails("nope.handler", 2, "nope.handler", CODE_DIR, "Unable to import module 'nope'")

    def test_missing_function(self):
        self.assert_fails("fn.missing", 2, "fn.missing", "Runtime.HandlerNotFound", "Handler 'missing' missing on module 'fn'")

    def test_not_callable(self):
        self.assert_fails("fn.NOT_CALLABLE", 2, "not callable")

    def test_syntax_error(self):
        self.assert_fails("broken_syntax.handler", 2, "Runtime.UserCodeSyntaxError", "broken_syntax.py")

    def test_exception_at_init(self):
        self.assert_fails("raises_at_init.handler", 2, "KeyError", "raises_at_init.py:2")

    def test_malformed_handler_name(self):
        self.assert_fails("nodot", 2, "Runtime.MalformedHandlerName")

    def test_missing_code_dir(self):
        self.assert_fails("fn.echo", 2, "/does/not/exist", code_dir="/does/not/exist")

    def test_no_channel_on_fd_3(self):
        self.assert_fails("fn.echo", 70, "fd 3 is not the guest channel", channel=False)

    def test_bad_reuse_mode(self):
        self.assert_fails("fn.echo", 71, "FAAS_REUSE='forever': expected per_request or keep_alive", reuse="forever")

    def test_usage(self):
        p = subprocess.run([sys.executable, RUNTIME, "--bogus"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("usage:", p.stderr)


class Snapshot(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="faas-py-snap-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_stops_with_fds_0_to_3_and_one_thread_then_serves(self):
        inst = Instance("snap.handler", snapshot=True, reuse="keep_alive", env={"SNAP_TMP": self.tmp})
        try:
            pid = inst.proc.pid
            wait_stopped(inst.proc)
            fds = sorted(int(x) for x in os.listdir(f"/proc/{pid}/fd"))
            self.assertEqual(fds, [0, 1, 2, 3])
            self.assertEqual(len(os.listdir(f"/proc/{pid}/task")), 1)
            self.assertTrue(os.readlink(f"/proc/{pid}/fd/3").startswith("socket:"))
            # Nothing was sent before the stop.
            inst.gw.settimeout(0.2)
            with self.assertRaises(socket.timeout):
                inst.gw.recv(100)
            inst.gw.settimeout(20)
            os.kill(pid, signal.SIGCONT)
            ready = inst.expect_ready()
            self.assertEqual(ready.flags, 0)
            res, _ = inst.invoke("{}")
            r = res.json()
            self.assertTrue(r["file_closed"])  # the module's open file was closed at the snapshot point
            self.assertEqual(len(r["state"]), 3)
            inst.expect_ready()
            self.assertEqual(inst.finish()[0], 0)
        finally:
            inst.kill()

    def test_hooks_run_around_the_snapshot(self):
        inst = Instance("snap_hooks.handler", snapshot=True)
        try:
            wait_stopped(inst.proc)
            os.kill(inst.proc.pid, signal.SIGCONT)
            inst.expect_ready()
            res, _ = inst.invoke("{}")
            self.assertEqual(res.json(), ["before", "after"])
        finally:
            inst.kill()

    def test_running_thread_refuses_the_snapshot(self):
        inst = Instance("snap_thread.handler", snapshot=True)
        try:
            rc, _, err = inst.finish()
            self.assertEqual(rc, 2)
            self.assertIn("2 threads are running at the snapshot point", err)
        finally:
            inst.kill()

    def test_without_a_channel_fd_3_is_held_for_the_restore(self):
        inst = Instance("fn.echo", snapshot=True, channel=False)
        try:
            pid = inst.proc.pid
            wait_stopped(inst.proc)
            self.assertEqual(sorted(int(x) for x in os.listdir(f"/proc/{pid}/fd")), [0, 1, 2, 3])
            self.assertIn("faas-fd3-placeholder", os.readlink(f"/proc/{pid}/fd/3"))
            os.kill(pid, signal.SIGCONT)  # no restore: fd 3 is still not a channel
            rc, _, err = inst.finish()
            self.assertEqual(rc, 70)
            self.assertIn("not the guest channel after the snapshot point", err)
        finally:
            inst.kill()


E2E_HANDLER = '''
import logging, sys
logging.getLogger().setLevel(logging.INFO)

def lambda_handler(event, context):
    logging.info("event of type %s", type(event).__name__)
    print("printed")
    if isinstance(event, dict) and event.get("fail"):
        raise RuntimeError("asked to fail")
    if isinstance(event, dict) and "n" in event:
        return {"statusCode": 202, "headers": {"content-type": "text/plain"}, "body": "z" * event["n"]}
    if isinstance(event, dict) and "data" in event:
        return {"len": len(event["data"])}
    return {"echo": event, "request_id": context.aws_request_id, "function": context.function_name}
'''


@unittest.skipUnless(
    os.environ.get("FAAS_BIN"),
    "end-to-end test: set FAAS_BIN to a built faas binary "
    "(CARGO_TARGET_DIR=/tmp/t cargo build --release -p faas-platform)",
)
class EndToEnd(unittest.TestCase):
    """Deploys a Lambda handler on a `faas serve` (process sandbox) and invokes it."""

    @classmethod
    def setUpClass(cls):
        cls.bin = os.environ["FAAS_BIN"]
        cls.tmp = tempfile.mkdtemp(prefix="faas-py-e2e-")
        fn = os.path.join(cls.tmp, "fn")
        os.mkdir(fn)
        for f in ("faas_runtime.py", "_faas_runtime.py"):
            shutil.copy(os.path.join(HERE, f), fn)
        with open(os.path.join(fn, "lambda_function.py"), "w") as f:
            f.write(E2E_HANDLER)
        run = os.path.join(fn, "run")
        with open(run, "w") as f:
            f.write(f'#!/bin/sh\nd=$(dirname "$0")\nexec {sys.executable} "$d/faas_runtime.py" '
                    '--handler lambda_function.lambda_handler --code "$d"\n')
        os.chmod(run, 0o755)
        cls.log = open(os.path.join(cls.tmp, "serve.log"), "w+")
        cls.server = subprocess.Popen(
            [cls.bin, "serve", "--listen", "127.0.0.1:0", "--state-dir", os.path.join(cls.tmp, "state"),
             "--sandbox", "process"],
            stdout=cls.log, stderr=cls.log, text=True,
        )
        deadline = time.monotonic() + 30
        cls.url = None
        while cls.url is None and time.monotonic() < deadline and cls.server.poll() is None:
            with open(cls.log.name) as f:
                for line in f:
                    if "listening on " in line:
                        cls.url = line.split("listening on ")[1].split()[0]
            time.sleep(0.05)
        if cls.url is None:
            cls.server.kill()
            with open(cls.log.name) as f:
                raise AssertionError("faas serve did not start: " + f.read())
        cls.env = dict(os.environ, FAAS_SERVER=cls.url)
        subprocess.run([cls.bin, "deploy", "pyfn", "--dir", fn, "--runtime", "exec", "--handler", "run"],
                       env=cls.env, check=True, capture_output=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()
        cls.server.wait()
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def invoke(self, data=None, file=None):
        args = [self.bin, "invoke", "pyfn", "-i"]
        args += ["--data", data] if data is not None else ["--file", file]
        p = subprocess.run(args, env=self.env, capture_output=True)
        return p.returncode, p.stdout, p.stderr.decode(errors="replace")

    def test_echo(self):
        rc, out, err = self.invoke(data='{"a": 1}')
        self.assertEqual(rc, 0, err)
        body = json.loads(out)
        self.assertEqual(body["echo"], {"a": 1})
        self.assertEqual(body["function"], "pyfn")
        self.assertRegex(body["request_id"], "^[0-9a-f]{16}$")
        self.assertIn("x-faas-invocation-id: " + body["request_id"], err)

    def test_error(self):
        rc, out, err = self.invoke(data='{"fail": true}')
        self.assertNotEqual(rc, 0)
        self.assertIn("500", err)
        self.assertIn('"errorType": "RuntimeError"', err)

    def test_large_response_and_request(self):
        rc, out, err = self.invoke(data=json.dumps({"n": 5 * 1024 * 1024}))
        self.assertEqual(rc, 0, err)
        self.assertIn("202", err)
        self.assertEqual(out, b"z" * (5 * 1024 * 1024))
        path = os.path.join(self.tmp, "big.json")
        with open(path, "w") as f:
            json.dump({"data": "q" * (5 * 1024 * 1024)}, f)
        rc, out, err = self.invoke(file=path)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out), {"len": 5 * 1024 * 1024})


SNAP_RESTORE_HANDLER = '''
import os, random, sys
from snapshot_restore_py import register_after_restore
INIT = random.random()
MINE = random.Random(7)

@register_after_restore
def report():
    sys.stdout.write(f"restored init={INIT} r={random.random()} mine={MINE.random()} "
                     f"stream={os.environ['AWS_LAMBDA_LOG_STREAM_NAME']}\\n")

def handler(event, context):
    return 1
'''


@unittest.skipUnless(
    os.environ.get("FAAS_BIN"),
    "checkpoint/restore test: set FAAS_BIN to a built faas binary (needs root for ptrace)",
)
class SnapshotRestore(unittest.TestCase):
    """Checkpoints the runtime at its snapshot point with `faas snapshot dump` and
    restores two copies with `faas snapshot restore` (which gives them no channel:
    they report from an after-restore hook, then exit 70 on fd 3)."""

    def test_restored_copies_have_their_own_randomness(self):
        self.assertEqual(os.geteuid(), 0, "faas snapshot dump needs root (ptrace)")
        fbin = os.environ["FAAS_BIN"]
        tmp = tempfile.mkdtemp(prefix="faas-py-restore-")
        try:
            with open(os.path.join(tmp, "snaprestore.py"), "w") as f:
                f.write(SNAP_RESTORE_HANDLER)
            inst = Instance("snaprestore.handler", snapshot=True, code_dir=tmp)
            try:
                wait_stopped(inst.proc)
                out = os.path.join(tmp, "snap")
                subprocess.run([fbin, "snapshot", "dump", "--pid", str(inst.proc.pid), "--out", out, "--kill"],
                               check=True, capture_output=True)
            finally:
                inst.kill()
            lines = []
            for _ in range(2):
                p = subprocess.run([fbin, "snapshot", "restore", out], capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 70, p.stderr)
                self.assertIn("fd 3 is not the guest channel after the snapshot point", p.stderr)
                lines.append(dict(kv.split("=", 1) for kv in p.stdout.split()[1:]))
            a, b = lines
            self.assertEqual(a["init"], b["init"])  # the same snapshot...
            self.assertNotEqual(a["r"], b["r"])  # ...but each copy reseeded
            self.assertNotEqual(a["mine"], b["mine"])
            self.assertNotEqual(a["stream"], b["stream"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
