"""_faas_runtime: the implementation of faas_runtime.py (run that file).

Runs an unchanged AWS Lambda Python handler as a faas instance:

    python3 faas_runtime.py --handler lambda_function.lambda_handler --code DIR [--snapshot]

Python 3.11, standard library only. The guest side of the faas guest protocol
(faas-core/src/protocol, DESIGN.md sections 5-6), mirroring the Rust guest
library faas-guest: the channel to the node gateway is the SOCK_SEQPACKET
socket on fd 3; the runtime sends Ready, pulls Invoke, answers Result or Error
and sends Log frames while a handler runs. See README.md for the contract.

Layers, bottom up:

- wire format: `encode_*` / `decode_frame` (byte-exact with frame.rs);
- `Channel`: one datagram per frame on fd 3, bodies over 64 KiB as a sealed
  memfd passed with SCM_RIGHTS;
- `Runtime`: the request loop (Ready -> Invoke -> handler -> Result/Error),
  log capture (print, sys.stdout/sys.stderr, logging) and the snapshot point;
- Lambda mapping: `LambdaContext`, `event_from_body`, `response_from_result`,
  `lambda_error`.

Exit codes: 0 done (per_request: one answer; keep_alive: the gateway closed
the channel); 2 bad usage, the handler cannot be loaded (one line on stderr
naming the handler and the code directory) or the snapshot point cannot be
reached; 70 fd 3 is not the guest channel; 71 the gateway broke the protocol,
the channel failed, or FAAS_REUSE names no mode. A handler calling sys.exit(N)
ends the instance with N after its Error frame.
"""

import gc
import io
import os
import struct
import sys
import time

import _socket

# --------------------------------------------------------------------------
# Wire format (faas-core/src/protocol/frame.rs)
# --------------------------------------------------------------------------

MAGIC = b"FAAS"
VERSION = 1
HEADER_LEN = 24
MAX_META = 64 * 1024
MAX_INLINE_BODY = 128 * 1024
MEMFD_THRESHOLD = 64 * 1024
MAX_DATAGRAM = HEADER_LEN + MAX_META + MAX_INLINE_BODY
MAX_HEADERS = 256
# DecodeLimits::default().max_body: the largest body (inline or memfd) accepted.
MAX_BODY = 64 * 1024 * 1024

READY, INVOKE, RESULT, ERROR, LOG = 1, 2, 3, 4, 5
KIND_NAMES = {READY: "Ready", INVOKE: "Invoke", RESULT: "Result", ERROR: "Error", LOG: "Log"}
FLAG_MEMFD = 1 << 0
FLAG_SNAPSHOT = 1 << 1
# On Result and Error: the instance takes its next Invoke at once (kept
# alive), no Ready follows.
FLAG_READY = 1 << 2
KNOWN_FLAGS = FLAG_MEMFD | FLAG_SNAPSHOT | FLAG_READY
STREAM_STDOUT, STREAM_STDERR, STREAM_LOG = 1, 2, 3

# fcntl(2) sealing constants (linux/fcntl.h); the values fcntl.F_* also have.
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
# What a receiver requires (frame.rs REQUIRED_SEALS); a sender adds F_SEAL_SEAL.
REQUIRED_SEALS = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK

GUEST_FD = 3
EXIT_USAGE = 2
EXIT_NO_CHANNEL = 70
EXIT_PROTOCOL = 71
REUSE_ENV = "FAAS_REUSE"

_HDR = struct.Struct("<4sBBHQII")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ProtocolError(Exception):
    """A frame that cannot be encoded, or a datagram that is not a valid frame."""


def encode_header(kind, flags, iid, meta_len, body_len):
    """The 24-byte frame header."""
    return _HDR.pack(MAGIC, VERSION, kind, flags, iid, meta_len, body_len)


def _str16(s, what):
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ProtocolError(f"{what} is too long for the wire format")
    return _U16.pack(len(b)) + b


def encode_headers(headers):
    """u16 count, then per header u16 name length, name, u32 value length, value."""
    if len(headers) > MAX_HEADERS:
        raise ProtocolError("headers is too long for the wire format")
    out = [_U16.pack(len(headers))]
    for name, value in headers:
        out.append(_str16(name, "header name"))
        v = value.encode("utf-8")
        if len(v) > 0xFFFFFFFF:
            raise ProtocolError("header value is too long for the wire format")
        out.append(_U32.pack(len(v)))
        out.append(v)
    return b"".join(out)


def encode_result_meta(status, headers):
    """Metadata of a Result frame: status u16, headers."""
    meta = _U16.pack(status) + encode_headers(headers)
    if len(meta) > MAX_META:
        raise ProtocolError(f"metadata of {len(meta)} bytes exceeds the limit of {MAX_META}")
    return meta


def encode_invoke_meta(deadline_ms, trace_id, headers):
    """Metadata of an Invoke frame (what a gateway sends; used by tests)."""
    return _U64.pack(deadline_ms) + _str16(trace_id, "trace id") + encode_headers(headers)


def error_message_bytes(message):
    """An Error frame's body: UTF-8, cut at a character boundary to fit inline."""
    b = message.encode("utf-8", "replace")
    if len(b) <= MAX_INLINE_BODY:
        return b
    end = MAX_INLINE_BODY
    while end > 0 and (b[end] & 0xC0) == 0x80:
        end -= 1
    return b[:end]


def encode_inline(kind, iid, meta=b"", body=b"", flags=0):
    """A whole datagram with its body inline."""
    return encode_header(kind, flags, iid, len(meta), len(body)) + meta + body


def encode_ready(snapshot=False):
    return encode_header(READY, FLAG_SNAPSHOT if snapshot else 0, 0, 0, 0)


def encode_error(iid, status, message, flags=0):
    body = error_message_bytes(message)
    return encode_inline(ERROR, iid, _U16.pack(status), body, flags)


def sealed_memfd(data, name="faas-body"):
    """A memfd holding `data`, sealed against writes, growth, shrinking and resealing."""
    import fcntl

    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        off = 0
        while off < len(view):
            n = os.write(fd, view[off:])
            if n <= 0:
                raise OSError("write to memfd made no progress")
            off += n
        fcntl.fcntl(fd, F_ADD_SEALS, REQUIRED_SEALS | F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_sealed_memfd(fd, expected):
    """Checks a received memfd (sealed against write/grow/shrink, `expected` bytes) and reads it."""
    import fcntl

    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        seals = 0
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise ProtocolError(
            f"memfd body is not sealed (seals {seals:#x}); need write, grow and shrink seals"
        )
    actual = os.fstat(fd).st_size
    if actual != expected:
        raise ProtocolError(f"memfd body has {actual} bytes, header says {expected}")
    chunks = []
    off = 0
    while off < expected:
        b = os.pread(fd, expected - off, off)
        if not b:
            raise ProtocolError("read memfd: unexpected end of file")
        chunks.append(b)
        off += len(b)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Invoke:
    """A decoded Invoke frame."""

    __slots__ = ("id", "deadline_ms", "trace_id", "headers", "body")

    def __init__(self, iid, deadline_ms, trace_id, headers, body):
        self.id = iid
        self.deadline_ms = deadline_ms
        self.trace_id = trace_id
        self.headers = headers
        self.body = body


class OtherFrame:
    """A well-formed frame of a kind a guest never receives."""

    __slots__ = ("kind", "id")

    def __init__(self, kind, iid):
        self.kind = kind
        self.id = iid


class _Meta:
    """A cursor over a frame's metadata, mirroring frame.rs `Cursor`."""

    __slots__ = ("buf", "pos", "kind")

    def __init__(self, buf, kind):
        self.buf = buf
        self.pos = 0
        self.kind = kind

    def take(self, n, what):
        if len(self.buf) - self.pos < n:
            raise ProtocolError(f"malformed {KIND_NAMES[self.kind]} frame: {what}")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def u16(self, what):
        return _U16.unpack(self.take(2, what))[0]

    def u32(self, what):
        return _U32.unpack(self.take(4, what))[0]

    def str16(self, what):
        b = self.take(self.u16(what), what)
        try:
            return str(b, "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(
                f"malformed {KIND_NAMES[self.kind]} frame: {what} is not UTF-8"
            ) from None

    def headers(self):
        n = self.u16("header count")
        if n > MAX_HEADERS:
            raise ProtocolError(f"malformed {KIND_NAMES[self.kind]} frame: more than 256 headers")
        out = []
        for _ in range(n):
            k = self.str16("header name")
            vb = self.take(self.u32("header value"), "header value")
            try:
                v = str(vb, "utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(
                    f"malformed {KIND_NAMES[self.kind]} frame: header value is not UTF-8"
                ) from None
            out.append((k, v))
        return out


def decode_frame(data, fd=None, max_body=MAX_BODY):
    """Decodes one datagram (bytes-like) and the fd that came with it.

    Returns an `Invoke`, or an `OtherFrame` for any other well-formed kind.
    Raises `ProtocolError` naming the first thing that is wrong; closes `fd`
    in every case (a memfd body is read into memory first).
    """
    try:
        return _decode(data, fd, max_body)
    finally:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _decode(data, fd, max_body):
    n = len(data)
    if n < HEADER_LEN:
        raise ProtocolError(f"frame of {n} bytes is shorter than the 24-byte header")
    magic, version, kind, flags, iid, meta_len, body_len = _HDR.unpack_from(data, 0)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} (this side speaks {VERSION})"
        )
    if kind not in KIND_NAMES:
        raise ProtocolError(f"unknown frame kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"unknown flags {flags:#06x}")
    if meta_len > MAX_META:
        raise ProtocolError(f"metadata of {meta_len} bytes exceeds the limit of {MAX_META}")
    memfd = bool(flags & FLAG_MEMFD)
    body_max = max_body if memfd else min(max_body, MAX_INLINE_BODY)
    if body_len > body_max:
        raise ProtocolError(f"body of {body_len} bytes exceeds the limit of {body_max}")
    declared = HEADER_LEN + meta_len + (0 if memfd else body_len)
    if declared != n:
        raise ProtocolError(f"header declares {declared} bytes but the frame has {n}")
    name = KIND_NAMES[kind]
    if flags & FLAG_SNAPSHOT and kind != READY:
        raise ProtocolError(f"malformed {name} frame: snapshot flag outside Ready")
    if flags & FLAG_READY and kind not in (RESULT, ERROR):
        raise ProtocolError(f"malformed {name} frame: ready flag outside Result and Error")
    if memfd and kind not in (INVOKE, RESULT, LOG):
        raise ProtocolError(f"malformed {name} frame: memfd body on a kind without body")
    if memfd and fd is None:
        raise ProtocolError("frame announces a memfd body but carries no fd")
    if not memfd and fd is not None:
        raise ProtocolError("frame carries an fd it does not announce")
    if kind != INVOKE:
        return OtherFrame(kind, iid)
    start = HEADER_LEN + meta_len
    m = _Meta(bytes(data[HEADER_LEN:start]), kind)
    deadline = _U64.unpack(m.take(8, "deadline"))[0]
    trace_id = m.str16("trace id")
    headers = m.headers()
    if m.pos != len(m.buf):
        raise ProtocolError(f"malformed {name} frame: trailing metadata bytes")
    body = read_sealed_memfd(fd, body_len) if memfd else bytes(data[start:n])
    return Invoke(iid, deadline, trace_id, headers, body)


# --------------------------------------------------------------------------
# Channel: frames on the SOCK_SEQPACKET socket
# --------------------------------------------------------------------------


class ChannelError(Exception):
    """fd 3 is not (or no longer) the guest channel."""


class PeerClosed(Exception):
    """The gateway closed its end."""

    def __str__(self):
        return "the gateway closed the channel"


class BodyError(Exception):
    """A body could not be put into a sealed memfd."""


def take_channel(fd=GUEST_FD, check_inherited=True, buf=None):
    """Wraps fd 3 after checking it is an open, connected AF_UNIX/SOCK_SEQPACKET socket.

    Like faas-guest's `sys::take_guest_fd`: with `check_inherited`, an fd with
    close-on-exec set is refused (this process opened it itself; Python opens
    everything close-on-exec). Sets close-on-exec and blocking mode on it.
    `buf`: the receive buffer to use (see `Channel`). Raises `ChannelError`.
    """
    import stat as _stat

    try:
        st = os.fstat(fd)
    except OSError:
        raise ChannelError(f"fd {fd} is not open") from None
    if not _stat.S_ISSOCK(st.st_mode):
        raise ChannelError(f"fd {fd} is not a socket")
    try:
        sock = _socket.socket(fileno=fd)
    except OSError as e:
        raise ChannelError(f"fd {fd}: {e}") from None
    try:
        if sock.family != _socket.AF_UNIX:
            raise ChannelError(f"fd {fd} is a socket of family {sock.family}, not AF_UNIX")
        if sock.type != _socket.SOCK_SEQPACKET:
            raise ChannelError(
                f"fd {fd} is a Unix socket of type {sock.type}, not SOCK_SEQPACKET"
            )
        try:
            sock.getpeername()
        except OSError:
            raise ChannelError(f"fd {fd} is an unconnected socket") from None
        if check_inherited and not os.get_inheritable(fd):
            raise ChannelError(
                f"fd {fd} has close-on-exec set, so this process opened it itself; "
                "it was not inherited from a gateway"
            )
        os.set_inheritable(fd, False)
        sock.setblocking(True)
    except BaseException:
        sock.detach()
        raise
    return Channel(sock, buf=buf)


class Channel:
    """One frame per datagram on a connected SOCK_SEQPACKET socket."""

    def __init__(self, sock, threshold=MEMFD_THRESHOLD, buf=None):
        self.sock = sock
        self.threshold = min(threshold, MAX_INLINE_BODY)
        # ~192 KiB, zeroed page by page when made: a restored copy reuses
        # the one made before the snapshot point (see `main`).
        self._buf = buf if buf is not None and len(buf) == MAX_DATAGRAM + 1 else bytearray(MAX_DATAGRAM + 1)
        self._anc = _socket.CMSG_SPACE(2 * 4)

    def send_datagram(self, parts, fd=None):
        """Sends `parts` (bytes-likes) as one datagram, with `fd` as SCM_RIGHTS."""
        anc = [] if fd is None else [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", fd))]
        total = sum(len(p) for p in parts)
        try:
            n = self.sock.sendmsg(parts, anc, _socket.MSG_NOSIGNAL)
        except (BrokenPipeError, ConnectionResetError):
            raise PeerClosed() from None
        if n != total:
            raise ProtocolError("frame truncated in transit")

    def send_frame(self, kind, iid, meta, body, flags=0):
        """Sends a frame with a body: inline up to the threshold, else as a sealed memfd
        (`flags`: more header flags, e.g. FLAG_READY).

        Raises ProtocolError (fields too long), BodyError (the memfd could not
        be made), PeerClosed or OSError (sending failed)."""
        if len(meta) > MAX_META:
            raise ProtocolError(f"metadata of {len(meta)} bytes exceeds the limit of {MAX_META}")
        if len(body) <= self.threshold:
            hdr = encode_header(kind, flags, iid, len(meta), len(body))
            self.send_datagram([hdr, meta, body] if body else [hdr, meta])
            return
        if len(body) > 0xFFFFFFFF:
            raise ProtocolError(f"body of {len(body)} bytes exceeds the limit of {0xFFFFFFFF}")
        try:
            fd = sealed_memfd(body)
        except OSError as e:
            raise BodyError(f"memfd: {e}") from None
        try:
            hdr = encode_header(kind, FLAG_MEMFD | flags, iid, len(meta), len(body))
            self.send_datagram([hdr, meta], fd)
        finally:
            os.close(fd)

    def recv(self):
        """Receives and decodes one frame; None when the gateway closed the channel."""
        try:
            n, anc, flags, _ = self.sock.recvmsg_into(
                [self._buf], self._anc, _socket.MSG_CMSG_CLOEXEC
            )
        except ConnectionResetError:
            return None
        fds = []
        for level, typ, data in anc:
            if level == _socket.SOL_SOCKET and typ == _socket.SCM_RIGHTS:
                k = len(data) // 4
                fds.extend(struct.unpack(f"{k}i", data[: 4 * k]))
        if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC) or n > MAX_DATAGRAM or len(fds) > 1:
            for fd in fds:
                os.close(fd)
            if len(fds) > 1 and not flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
                raise ProtocolError("frame carries an fd it does not announce")
            raise ProtocolError("frame truncated in transit")
        if n == 0:
            for fd in fds:
                os.close(fd)
            return None
        return decode_frame(memoryview(self._buf)[:n], fds[0] if fds else None)


# --------------------------------------------------------------------------
# Lambda mapping
# --------------------------------------------------------------------------


class CognitoIdentity:
    """`context.identity`: always empty here (as for a function URL)."""

    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self):
        self.cognito_identity_id = None
        self.cognito_identity_pool_id = None


class LambdaContext:
    """The `context` argument of a Lambda handler."""

    def __init__(self, rt, inv):
        self.aws_request_id = f"{inv.id:016x}"
        self.function_name = rt.function_name
        self.function_version = rt.function_version
        self.memory_limit_in_mb = rt.memory_limit_in_mb
        self.invoked_function_arn = rt.function_arn
        self.log_group_name = rt.log_group_name
        self.log_stream_name = rt.log_stream_name
        self.identity = CognitoIdentity()
        self.client_context = None
        # Beyond Lambda: what the faas protocol carries.
        self.invocation_id = inv.id
        self.deadline_ms = inv.deadline_ms
        self.trace_id = inv.trace_id
        self.headers = inv.headers
        self._rt = rt

    def get_remaining_time_in_millis(self):
        left = self.deadline_ms - int(time.time() * 1000)
        return left if left > 0 else 0

    def log(self, msg):
        self._rt.write_log(STREAM_LOG, str(msg).encode("utf-8", "backslashreplace"))

    def __repr__(self):
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},client_context=None])"
        )


class MarshalError(Exception):
    """The handler's return value cannot be turned into an HTTP response."""


def _json_default(o):
    if type(o).__name__ == "Decimal":
        return int(o) if o.is_finite() and o == o.to_integral_value() else float(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_JSON_WS = " \t\n\r"


def _make_json_codec():
    """(loads, dumps) with the semantics of json.loads / json.dumps(default=...),
    built on the C accelerator `_json` the json package itself uses, so that
    the runtime does not import json (which imports re and enum: ~5 ms of a
    cold start). Falls back to the json package when `_json` is missing or
    behaves differently."""
    try:
        import _json

        class _Context:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = {
                "-Infinity": float("-inf"),
                "Infinity": float("inf"),
                "NaN": float("nan"),
            }.__getitem__
            memo = None

        scan = _json.make_scanner(_Context())
        make_encoder = _json.make_encoder
        encode_str = _json.encode_basestring_ascii

        def loads(s):
            n = len(s)
            i = 0
            while i < n and s[i] in _JSON_WS:
                i += 1
            try:
                obj, end = scan(s, i)
            except StopIteration:
                raise ValueError("Expecting value") from None
            while end < n and s[end] in _JSON_WS:
                end += 1
            if end != n:
                raise ValueError("Extra data")
            return obj

        def dumps(o):
            enc = make_encoder({}, _json_default, encode_str, None, ": ", ", ", False, False, True)
            return "".join(enc(o, 0))

        sample = '{"a": [1, 2.5, "\\u00e9\\n", null, true, false, {}], "b": -1e400}'
        want = {"a": [1, 2.5, "\u00e9\n", None, True, False, {}], "b": float("-inf")}
        if loads(sample) != want or dumps(want) != sample.replace("-1e400", "-Infinity"):
            raise ValueError("_json behaves differently")
        return loads, dumps
    except Exception:
        import json

        def dumps(o):
            return json.dumps(o, default=_json_default)

        return json.loads, dumps


json_loads, json_dumps = _make_json_codec()


def event_from_body(body):
    """The handler's `event`: the body JSON-decoded; `{}` for an empty body; the
    UTF-8 text when it is not JSON; the raw bytes when it is not UTF-8 either."""
    if not body:
        return {}
    try:
        text = str(body, "utf-8")
    except UnicodeDecodeError:
        return body
    try:
        return json_loads(text[1:] if text.startswith("\ufeff") else text)
    except Exception:  # ValueError, JSONDecodeError, RecursionError
        return text


def _to_json(o):
    return json_dumps(o)


def _header_value(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def response_from_result(result):
    """(status, headers, body bytes) for a handler's return value, as Lambda
    function URLs map it: a dict with `statusCode` is an HTTP response
    (`headers`, `multiValueHeaders`, `cookies`, `body`, `isBase64Encoded`);
    bytes are the body as is; anything else is JSON-encoded with status 200
    and content-type application/json. Raises `MarshalError`."""
    if isinstance(result, dict) and "statusCode" in result:
        return _http_response(result)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return 200, [("content-type", "application/unknown")], bytes(result)
    try:
        body = _to_json(result)
    except (TypeError, ValueError, RecursionError) as e:
        raise MarshalError(f"Unable to marshal response: {e}") from None
    return 200, [("content-type", "application/json")], body.encode("utf-8")


def _http_response(r):
    status = r["statusCode"]
    if isinstance(status, str) and status.strip().isdigit():
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int):
        raise MarshalError(f"statusCode must be an integer, got {status!r}")
    if not 100 <= status <= 999:
        raise MarshalError(f"statusCode {status} is outside 100..=999")
    headers = []
    h = r.get("headers") or {}
    if not isinstance(h, dict):
        raise MarshalError("headers must be an object")
    for k, v in h.items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            headers.extend((str(k), _header_value(x)) for x in v)
        else:
            headers.append((str(k), _header_value(v)))
    mv = r.get("multiValueHeaders") or {}
    if not isinstance(mv, dict):
        raise MarshalError("multiValueHeaders must be an object")
    for k, vs in mv.items():
        for x in vs if isinstance(vs, (list, tuple)) else [vs]:
            headers.append((str(k), _header_value(x)))
    cookies = r.get("cookies") or []
    if not isinstance(cookies, (list, tuple)):
        raise MarshalError("cookies must be a list")
    headers.extend(("set-cookie", str(c)) for c in cookies)
    body = r.get("body")
    if body is None:
        data = b""
    elif isinstance(body, str):
        if r.get("isBase64Encoded"):
            import binascii

            try:
                data = binascii.a2b_base64("".join(body.split()), strict_mode=True)
            except (binascii.Error, ValueError) as e:
                raise MarshalError(f"body is not valid base64: {e}") from None
        else:
            data = body.encode("utf-8")
    elif isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
    else:
        try:
            data = _to_json(body).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            raise MarshalError(f"Unable to marshal response body: {e}") from None
    return status, headers, data


def lambda_error(exc, request_id, skip_frames=1):
    """Lambda's error shape for an exception: errorMessage, errorType, requestId,
    stackTrace (the runtime's own frames left out)."""
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(traceback.extract_tb(tb)),
    }


def error_json(err):
    """`err` as JSON that fits an Error frame: the stack trace (outermost frames
    first) and then the message are cut when it would not."""
    s = json_dumps(err)
    if len(s) <= MAX_INLINE_BODY:
        return s
    err = dict(err)
    if len(err.get("errorMessage", "")) > 16384:
        err["errorMessage"] = err["errorMessage"][:16384] + "... (truncated)"
    st = list(err.get("stackTrace", []))
    while True:
        err["stackTrace"] = st
        s = json_dumps(err)
        if len(s) <= MAX_INLINE_BODY or not st:
            break
        st = st[(len(st) + 1) // 2 :]
    if len(s) > MAX_INLINE_BODY:
        err["errorMessage"] = err["errorMessage"][:1024] + "... (truncated)"
        s = json_dumps(err)
    return s


def error_log_text(err):
    """How Lambda logs an unhandled error: `[ERROR] Type: message` and the traceback."""
    lines = [f"[ERROR] {err['errorType']}: {err['errorMessage']}", "Traceback (most recent call last):"]
    for entry in err["stackTrace"]:
        lines.append(entry.rstrip("\n"))
    return "\n".join(lines) + "\n"


def one_line(s):
    return " ".join(str(s).split("\n"))


# --------------------------------------------------------------------------
# Log capture
# --------------------------------------------------------------------------

_LINE_FLUSH = 64 * 1024  # a partial line longer than this is sent without waiting for '\n'


class _BinaryCapture:
    """`sys.stdout.buffer` of a captured stream."""

    def __init__(self, text):
        self._text = text

    def write(self, b):
        return self._text._write_bytes(bytes(b))

    def flush(self):
        self._text.flush()

    def fileno(self):
        return self._text.fileno()

    def __getattr__(self, name):
        return getattr(self._text._orig_buffer(), name)


class CapturedStream(io.TextIOBase):
    """Replaces sys.stdout / sys.stderr: while an invocation runs, complete lines
    go to the gateway as Log frames of that invocation (stream 1 or 2);
    otherwise writes go to the original stream."""

    def __init__(self, rt, stream, orig):
        super().__init__()
        self._rt = rt
        self._stream = stream
        self._orig = orig
        self._pending = bytearray()
        self.buffer = _BinaryCapture(self)

    # text API
    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "backslashreplace"

    @property
    def name(self):
        return "<stdout>" if self._stream == STREAM_STDOUT else "<stderr>"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        if self._orig is None:
            raise io.UnsupportedOperation("fileno")
        return self._orig.fileno()

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._write_bytes(s.encode("utf-8", "backslashreplace"), s)
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        rt = self._rt
        with rt.lock:
            if self._pending and rt.active is not None:
                data = bytes(self._pending)
                self._pending.clear()
                rt.send_log_locked(self._stream, data)
        orig = self._orig
        if orig is not None:
            try:
                orig.flush()
            except (OSError, ValueError):
                pass

    def close(self):
        self.flush()

    def __getattr__(self, name):
        # What TextIOBase lacks (reconfigure, line_buffering, mode, ...) comes
        # from the original stream.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._orig, name)

    def _orig_buffer(self):
        return getattr(self._orig, "buffer", self._orig)

    def _write_bytes(self, data, text=None):
        rt = self._rt
        if rt.active is not None:
            with rt.lock:
                if rt.active is not None:
                    self._pending += data
                    if b"\n" in data or len(self._pending) > _LINE_FLUSH:
                        cut = self._pending.rfind(b"\n") + 1
                        if cut == 0:
                            cut = len(self._pending)
                        chunk = bytes(self._pending[:cut])
                        del self._pending[:cut]
                        rt.send_log_locked(self._stream, chunk)
                    return len(data)
        self._write_orig(data, text)
        return len(data)

    def _write_orig(self, data, text=None):
        orig = self._orig
        if orig is None:
            return
        try:
            if text is not None:
                orig.write(text)
            else:
                buf = getattr(orig, "buffer", None)
                if buf is not None:
                    orig.flush()
                    buf.write(data)
                else:
                    orig.write(data.decode("utf-8", "replace"))
        except (OSError, ValueError, UnicodeError):
            pass

    def end_invocation_locked(self):
        """Sends the last partial line of the invocation (lock held)."""
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._rt.send_log_locked(self._stream, data)


LAMBDA_LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
LAMBDA_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def _configure_logging(rt, logging):
    """Root logger handler formatting like Lambda's and sending records as Log
    frames (stream 3) of the running invocation."""
    if rt.logging_configured:
        return
    rt.logging_configured = True

    class LambdaLoggerHandler(logging.Handler):
        def emit(self, record):
            try:
                record.aws_request_id = rt.request_id or ""
                msg = self.format(record)
                rt.write_log(STREAM_LOG, msg.encode("utf-8", "backslashreplace"))
            except Exception:
                self.handleError(record)

    logging.Formatter.converter = time.gmtime
    handler = LambdaLoggerHandler()
    handler.setFormatter(logging.Formatter(LAMBDA_LOG_FORMAT, LAMBDA_DATE_FORMAT))
    root = logging.getLogger()
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL", "TRACE": "DEBUG"}.get(level, level)
    if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        root.setLevel(level)
    root.addHandler(handler)


class _LoggingImportHook:
    """Configures `logging` the moment anything imports it, so the root logger
    has the Lambda handler before user code can call basicConfig (which then
    does nothing, as on Lambda) - without importing logging (~10 ms) for
    functions that never use it."""

    def __init__(self, rt):
        self.rt = rt

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None or isinstance(loader, type):
            return spec  # a class-level loader is shared: configured later instead
        rt = self.rt

        def exec_and_configure(module):
            exec_module(module)
            _configure_logging(rt, module)

        try:
            loader.exec_module = exec_and_configure
        except (AttributeError, TypeError):
            pass  # configured at the next check instead (Runtime.ensure_logging)
        return spec


# --------------------------------------------------------------------------
# snapshot_restore_py: Lambda SnapStart's runtime hooks
# --------------------------------------------------------------------------

_before_snapshot = []
_after_restore = []


def _snapshot_restore_module():
    mod = type(sys)("snapshot_restore_py")
    mod.__doc__ = "Lambda SnapStart runtime hooks, provided by faas_runtime."

    def register_before_snapshot(func, *args, **kwargs):
        _before_snapshot.append((func, args, kwargs))
        return func

    def register_after_restore(func, *args, **kwargs):
        _after_restore.append((func, args, kwargs))
        return func

    mod.register_before_snapshot = register_before_snapshot
    mod.register_after_restore = register_after_restore
    mod.get_before_snapshot = lambda: _before_snapshot
    mod.get_after_restore = lambda: _after_restore
    return mod


# --------------------------------------------------------------------------
# Snapshot point
# --------------------------------------------------------------------------


class SnapshotError(Exception):
    """The process cannot be checkpointed as it is."""


def _list_dir_ints(path):
    try:
        return sorted(int(x) for x in os.listdir(path))
    except (OSError, ValueError):
        return None


def open_fds():
    """Open fds of this process (from /proc/self/fd), or None without /proc."""
    fds = _list_dir_ints("/proc/self/fd")
    if fds is None:
        return None
    # The directory fd listdir used is closed by now.
    return [fd for fd in fds if _fd_open(fd)]


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def close_fds_above(keep=GUEST_FD):
    """Closes every fd above `keep` (never 0..keep)."""
    fds = _list_dir_ints("/proc/self/fd")
    if fds is None:
        try:
            top = os.sysconf("SC_OPEN_MAX")
        except (OSError, ValueError):
            top = 1 << 20
        os.closerange(keep + 1, max(top, keep + 1))
        return
    for fd in fds:
        if fd > keep:
            try:
                os.close(fd)
            except OSError:
                pass


def thread_count():
    tasks = _list_dir_ints("/proc/self/task")
    if tasks is not None:
        return len(tasks)
    threading = sys.modules.get("threading")
    return threading.active_count() if threading is not None else 1


def _wait_for_threads(timeout=1.0):
    """Gives threads that are finishing a moment to end."""
    threading = sys.modules.get("threading")
    deadline = time.monotonic() + timeout
    while thread_count() > 1 and time.monotonic() < deadline:
        if threading is not None:
            for t in threading.enumerate():
                if t is not threading.current_thread():
                    t.join(max(0.0, deadline - time.monotonic()))
        else:
            time.sleep(0.01)


def scan_heap(close_above=None):
    """One pass over the objects the collector tracks, at the snapshot point.

    Returns every random.Random (not SystemRandom) besides the module's own
    instance, to be reseeded after a restore. With `close_above`, also closes
    the file and socket objects whose fd is above it: their fds are about to
    be closed anyway, and a closed object fails loudly on use instead of
    reading or writing whatever file later reuses its fd number.
    """
    random = sys.modules.get("random")
    rcls = random.Random if random is not None else None
    srcls = random.SystemRandom if random is not None else None
    inst = getattr(random, "_inst", None)
    randoms = []
    stale = []
    iobase, sockcls = io.IOBase, _socket.socket
    for o in gc.get_objects():
        if rcls is not None and isinstance(o, rcls):
            if not isinstance(o, srcls) and o is not inst:
                randoms.append(o)
        elif close_above is not None and isinstance(o, (iobase, sockcls)):
            try:
                fd = o.fileno()
            except Exception:
                continue
            if isinstance(fd, int) and fd > close_above:
                stale.append(o)
    for o in stale:
        try:
            o.close()
        except Exception:
            pass
    return randoms


def reseed_rngs(extra_randoms=()):
    """Gives this copy of the process its own randomness after a restore.

    - `random`: the module-level instance (what random.random() & co. use)
      and every Random instance found at the snapshot point, from os.urandom;
    - `tempfile`: drops its cached name generator (keyed by pid, which a
      restored copy may share);
    - `uuid`: uuid1 goes through Python's path (clock_seq from the reseeded
      `random`) instead of libuuid's in-process state, `_last_timestamp` reset;
    - `ssl`: entropy mixed into OpenSSL's generator (RAND_add);
    - `multiprocessing`: a fresh authkey for the current process;
    - `numpy.random` (if loaded): its legacy global generator.
    os.urandom, secrets, SystemRandom, uuid4, hashlib and hmac keep no state.
    """
    m = sys.modules
    random = m.get("random")
    if random is not None:
        random.seed(int.from_bytes(os.urandom(32), "little"))
    for r in extra_randoms:
        try:
            r.seed(int.from_bytes(os.urandom(32), "little"))
        except Exception:
            pass
    tempfile = m.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None
    uuid = m.get("uuid")
    if uuid is not None:
        if hasattr(uuid, "_last_timestamp"):
            uuid._last_timestamp = None
        if hasattr(uuid, "_generate_time_safe"):
            uuid._generate_time_safe = None
    ssl = m.get("ssl")
    if ssl is not None and hasattr(ssl, "RAND_add"):
        ssl.RAND_add(os.urandom(32), 32.0)
    mp = m.get("multiprocessing.process")
    if mp is not None:
        try:
            mp.current_process().authkey = os.urandom(32)
        except Exception:
            pass
    np_random = m.get("numpy.random")
    if np_random is not None and hasattr(np_random, "seed"):
        try:
            np_random.seed()
        except Exception:
            pass


# --------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------


def _allocate_lock():
    import _thread

    return _thread.RLock()


class Runtime:
    """The request loop and everything it shares with the handler's threads."""

    def __init__(self, handler_spec, code_dir, env=None):
        env = os.environ if env is None else env
        self.handler_spec = handler_spec
        self.code_dir = code_dir
        self.function_name = env.get("FAAS_FUNCTION_NAME") or env.get(
            "AWS_LAMBDA_FUNCTION_NAME", "function"
        )
        self.function_version = env.get("FAAS_FUNCTION_VERSION") or env.get(
            "AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"
        )
        self.memory_limit_in_mb = env.get("FAAS_MEMORY_MB") or env.get(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"
        )
        self.function_arn = f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = ""
        self.new_log_stream()
        self.chan = None
        self.lock = _allocate_lock()
        self.active = None  # invocation id whose handler runs, if any
        self.request_id = None
        self.logging_configured = False
        self.stdout = None
        self.stderr = None
        self.orig_stderr = sys.__stderr__

    def new_log_stream(self):
        """A log stream name of Lambda's shape, unique to this process (or restored copy)."""
        day = time.strftime("%Y/%m/%d", time.gmtime())
        self.log_stream_name = f"{day}/[{self.function_version}]{os.urandom(16).hex()}"

    def export_env(self, snapshot):
        e = os.environ
        e.setdefault("AWS_LAMBDA_FUNCTION_NAME", self.function_name)
        e.setdefault("AWS_LAMBDA_FUNCTION_VERSION", self.function_version)
        e.setdefault("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", str(self.memory_limit_in_mb))
        e.setdefault("AWS_LAMBDA_LOG_GROUP_NAME", self.log_group_name)
        e["AWS_LAMBDA_LOG_STREAM_NAME"] = self.log_stream_name
        e.setdefault("LAMBDA_TASK_ROOT", self.code_dir)
        e.setdefault("_HANDLER", self.handler_spec)
        e.setdefault("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start" if snapshot else "on-demand")

    # -- logs -------------------------------------------------------------

    def install_capture(self):
        self.stdout = CapturedStream(self, STREAM_STDOUT, sys.stdout)
        self.stderr = CapturedStream(self, STREAM_STDERR, sys.stderr)
        self.orig_stderr = sys.stderr
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        logging = sys.modules.get("logging")
        if logging is not None:
            _configure_logging(self, logging)
        else:
            sys.meta_path.insert(0, _LoggingImportHook(self))

    def ensure_logging(self):
        if not self.logging_configured:
            logging = sys.modules.get("logging")
            if logging is not None and hasattr(logging, "Handler"):
                _configure_logging(self, logging)

    def send_log_locked(self, stream, data):
        """Sends a Log frame of the active invocation (lock held); on failure the
        bytes go to the original stderr, like faas-guest's log()."""
        try:
            self.chan.send_frame(LOG, self.active, bytes([stream]), data)
        except Exception:
            self.write_stderr(data)

    def write_log(self, stream, data):
        """A log record: a Log frame while an invocation runs, else stderr."""
        if self.active is not None:
            with self.lock:
                if self.active is not None:
                    self.send_log_locked(stream, data)
                    return
        self.write_stderr(data)

    def write_stderr(self, data):
        err = self.orig_stderr
        if err is None:
            return
        try:
            err.write(data.decode("utf-8", "replace"))
            err.flush()
        except (OSError, ValueError):
            pass

    def stderr_line(self, line):
        self.write_stderr((line.rstrip("\n") + "\n").encode("utf-8", "replace"))

    # -- invocations ------------------------------------------------------

    def begin(self, iid):
        with self.lock:
            self.active = iid
            self.request_id = f"{iid:016x}"

    def end(self):
        """Ends the invocation: partial lines sent, no Log frame after this."""
        with self.lock:
            for s in (self.stdout, self.stderr):
                if s is not None:
                    s.end_invocation_locked()
            self.active = None

    def invoke(self, inv, handler):
        """Runs the handler on one Invoke. Returns (reply, exit_code): the answer
        as (RESULT, status, headers, body) or (ERROR, status, message), and the
        exit code when the handler called sys.exit (else None)."""
        self.ensure_logging()
        ctx = LambdaContext(self, inv)
        if inv.trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = inv.trace_id
        elif "_X_AMZN_TRACE_ID" in os.environ:
            del os.environ["_X_AMZN_TRACE_ID"]
        self.begin(inv.id)
        exit_code = None
        try:
            try:
                event = event_from_body(inv.body)
                result = handler(event, ctx)
                status, headers, body = response_from_result(result)
                reply = (RESULT, status, headers, body)
            except MarshalError as e:
                err = {
                    "errorMessage": str(e),
                    "errorType": "Runtime.MarshalError",
                    "requestId": ctx.aws_request_id,
                    "stackTrace": [],
                }
                reply = self._error_reply(inv.id, err)
            except Exception as e:
                reply = self._error_reply(inv.id, lambda_error(e, ctx.aws_request_id))
            except SystemExit as e:
                code = e.code
                exit_code = code if isinstance(code, int) else (0 if code is None else 1)
                err = {
                    "errorMessage": f"RequestId: {ctx.aws_request_id} Error: Runtime exited "
                    f"with error: exit status {exit_code}",
                    "errorType": "Runtime.ExitError",
                    "requestId": ctx.aws_request_id,
                    "stackTrace": [],
                }
                reply = self._error_reply(inv.id, err)
        finally:
            self.end()
        return reply, exit_code

    def _error_reply(self, iid, err):
        self.write_log(STREAM_LOG, error_log_text(err).encode("utf-8", "backslashreplace"))
        self.stderr_line(
            f"faas_runtime: invocation {iid:016x}: handler failed: "
            f"{err['errorType']}: {one_line(err['errorMessage'])}"
        )
        return (ERROR, 500, error_json(err))

    def send_reply(self, iid, reply, ready=False):
        """Sends the answer, with FLAG_READY when `ready` (kept alive: the next
        request may come at once, no Ready follows); a Result the wire cannot
        carry becomes an Error saying so (like faas-guest's send_reply, in
        Lambda's error shape). Raises PeerClosed or OSError."""
        flags = FLAG_READY if ready else 0
        if reply[0] == RESULT:
            _, status, headers, body = reply
            try:
                if not 100 <= status <= 999:
                    raise ProtocolError(f"status {status} is outside 100..=999")
                meta = encode_result_meta(status, headers)
                self.chan.send_frame(RESULT, iid, meta, body, flags)
                return
            except (ProtocolError, UnicodeError, BodyError) as e:
                if isinstance(e, BodyError):
                    what = "the response body cannot be passed to the gateway"
                else:
                    what = "the handler's response cannot be sent"
                err = {
                    "errorMessage": f"{what}: {e}",
                    "errorType": "Runtime.MarshalError",
                    "requestId": f"{iid:016x}",
                    "stackTrace": [],
                }
                self.stderr_line(f"faas_runtime: invocation {iid:016x}: {what}: {e}")
                reply = (ERROR, 500, error_json(err))
        _, status, message = reply
        self.chan.send_datagram([encode_error(iid, status, message, flags)])

    def serve(self, handler, keep_alive):
        """The request loop (faas-guest's `run`); returns the exit code. Kept alive,
        each answer carries FLAG_READY: one Ready, at the start."""
        announced = False
        while True:
            try:
                if not announced:
                    self.chan.send_datagram([encode_ready(False)])
            except PeerClosed:
                return 0
            except (ProtocolError, OSError) as e:
                return self.fail(EXIT_PROTOCOL, f"sending Ready to the gateway: {e}")
            try:
                frame = self.chan.recv()
            except (ProtocolError, OSError) as e:
                return self.fail(EXIT_PROTOCOL, f"receiving from the gateway: {e}")
            if frame is None:
                return 0
            if not isinstance(frame, Invoke):
                return self.fail(
                    EXIT_PROTOCOL,
                    f"the gateway sent a {KIND_NAMES[frame.kind]} frame (invocation "
                    f"{frame.id:016x}) where a guest expects Invoke",
                )
            reply, exit_code = self.invoke(frame, handler)
            announced = keep_alive and exit_code is None
            try:
                self.send_reply(frame.id, reply, announced)
            except (PeerClosed, OSError) as e:
                what = "Result" if reply[0] == RESULT else "Error"
                return self.fail(
                    EXIT_PROTOCOL,
                    f"sending {what} of invocation {frame.id:016x} to the gateway: {e}",
                )
            if exit_code is not None:
                return exit_code
            if not keep_alive:
                return 0

    def fail(self, code, why):
        self.stderr_line(f"faas_runtime: {why}")
        return code

    def flush_all(self):
        for s in (self.stdout, self.stderr):
            if s is not None:
                s.flush()
        logging = sys.modules.get("logging")
        if logging is not None and hasattr(logging, "shutdown"):
            try:
                logging.shutdown()
            except Exception:
                pass
        for s in (sys.__stdout__, sys.__stderr__):
            try:
                if s is not None:
                    s.flush()
            except (OSError, ValueError):
                pass

    # -- snapshot ---------------------------------------------------------

    def snapshot_point(self):
        """Stops the process with SIGSTOP where it can be checkpointed: one thread,
        fds 0-3 only, the heap collected and frozen. Returns once continued (after
        a restore, or SIGCONT), with fresh RNG seeds. Raises SnapshotError."""
        import signal

        self.ensure_logging()
        while _before_snapshot:
            func, args, kwargs = _before_snapshot.pop()
            func(*args, **kwargs)
        if thread_count() > 1:
            _wait_for_threads()
        n = thread_count()
        if n > 1:
            raise SnapshotError(
                f"{n} threads are running at the snapshot point; only the main thread may "
                "run when the module has been initialised"
            )
        self.flush_all()
        randoms = scan_heap(close_above=GUEST_FD)
        gc.collect()
        gc.freeze()
        close_fds_above(GUEST_FD)
        fds = open_fds()
        if fds is not None and [fd for fd in fds if fd > GUEST_FD]:
            raise SnapshotError(f"fds {fds} are open at the snapshot point; only 0-3 may be")
        os.kill(os.getpid(), signal.SIGSTOP)
        # Continued: a restored copy (or the same process after SIGCONT).
        self.after_restore(randoms)

    def after_restore(self, randoms=()):
        reseed_rngs(randoms)
        logging = sys.modules.get("logging")
        if logging is not None and hasattr(logging, "_startTime"):
            logging._startTime = time.time()
        self.new_log_stream()
        os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = self.log_stream_name
        for func, args, kwargs in list(_after_restore):
            func(*args, **kwargs)


# --------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------

USAGE = "usage: faas_runtime.py --handler MODULE.FUNCTION --code DIR [--snapshot]"


def parse_args(argv):
    """(handler, code_dir, snapshot); exits 2 on bad usage."""
    handler = os.environ.get("_HANDLER")
    code = os.environ.get("LAMBDA_TASK_ROOT")
    snapshot = False
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if arg == "--snapshot":
            snapshot = True
            continue
        for opt in ("--handler", "--code"):
            if arg == opt or arg.startswith(opt + "="):
                if arg == opt:
                    value = next(it, None)
                    if value is None:
                        usage_error(f"{opt} needs a value")
                else:
                    value = arg[len(opt) + 1 :]
                if opt == "--handler":
                    handler = value
                else:
                    code = value
                break
        else:
            usage_error(f"unknown argument {arg!r}")
    if not handler:
        usage_error("--handler is required")
    return handler, os.path.abspath(code or "."), snapshot


def usage_error(why):
    sys.stderr.write(f"faas_runtime: {why}\n{USAGE}\n")
    sys.exit(EXIT_USAGE)


class HandlerError(Exception):
    """The handler cannot be loaded: (Lambda error type, message)."""

    def __init__(self, error_type, message):
        super().__init__(message)
        self.error_type = error_type


def load_handler(spec, code_dir):
    """Imports the handler's module from `code_dir` (module-level initialisation
    runs here) and returns the function. Raises HandlerError."""
    modname, _, fname = spec.rpartition(".")
    if not modname or not fname:
        raise HandlerError(
            "Runtime.MalformedHandlerName",
            f"Bad handler '{spec}': expected MODULE.FUNCTION",
        )
    modname = modname.replace("/", ".")
    if modname.split(".")[0] in sys.builtin_module_names:
        raise HandlerError(
            "Runtime.BuiltInModuleConflict",
            f"Cannot use built-in module {modname} as a handler module",
        )
    if not os.path.isdir(code_dir):
        raise HandlerError("Runtime.ImportModuleError", f"code directory {code_dir} does not exist")
    sys.path.insert(0, code_dir)
    try:
        os.chdir(code_dir)  # Lambda runs handlers in LAMBDA_TASK_ROOT
    except OSError:
        pass
    try:
        __import__(modname)
        module = sys.modules[modname]
    except SyntaxError as e:
        raise HandlerError(
            "Runtime.UserCodeSyntaxError",
            f"Syntax error in module '{modname}': {e.msg} ({e.filename}, line {e.lineno})",
        ) from None
    except ImportError as e:
        raise HandlerError(
            "Runtime.ImportModuleError", f"Unable to import module '{modname}': {e}"
        ) from None
    except Exception as e:
        import traceback

        where = traceback.extract_tb(e.__traceback__)
        at = f" at {where[-1].filename}:{where[-1].lineno}" if where else ""
        raise HandlerError(
            type(e).__name__,
            f"module '{modname}' raised {type(e).__name__}: {e}{at}",
        ) from None
    try:
        func = getattr(module, fname)
    except AttributeError:
        raise HandlerError(
            "Runtime.HandlerNotFound", f"Handler '{fname}' missing on module '{modname}'"
        ) from None
    if not callable(func):
        raise HandlerError(
            "Runtime.HandlerNotFound", f"Handler '{fname}' on module '{modname}' is not callable"
        )
    return func


def reuse_mode(env=None):
    """True for keep_alive, False for per_request; raises ValueError otherwise."""
    v = (os.environ if env is None else env).get(REUSE_ENV)
    if v is None or v in ("", "per_request"):
        return False
    if v == "keep_alive":
        return True
    raise ValueError(f"{REUSE_ENV}={v!r}: expected per_request or keep_alive")


def reserve_fd(fd):
    """Occupies a free `fd` with an empty memfd, so nothing else gets that number."""
    placeholder = os.memfd_create("faas-fd3-placeholder", os.MFD_CLOEXEC)
    if placeholder != fd:
        os.dup2(placeholder, fd, inheritable=False)
        os.close(placeholder)


def _exit(rt, code):
    rt.flush_all()
    os._exit(code)


def main(argv=None):
    handler_spec, code_dir, snapshot = parse_args(sys.argv[1:] if argv is None else argv)
    rt = Runtime(handler_spec, code_dir)

    # fd 3 first, before user code can open files (it would get fd 3 if free).
    if snapshot and not _fd_open(GUEST_FD):
        # Checkpointed without a channel: hold fd 3 until the restore brings one.
        reserve_fd(GUEST_FD)
    else:
        try:
            rt.chan = take_channel(GUEST_FD, check_inherited=True)
        except ChannelError as e:
            sys.stderr.write(
                f"faas_runtime: fd {GUEST_FD} is not the guest channel: {e} "
                "(run this under a faas node gateway)\n"
            )
            sys.exit(EXIT_NO_CHANNEL)
    try:
        keep_alive = reuse_mode()
    except ValueError as e:
        sys.stderr.write(f"faas_runtime: {e}\n")
        sys.exit(EXIT_PROTOCOL)

    rt.export_env(snapshot)
    sys.modules.setdefault("snapshot_restore_py", _snapshot_restore_module())
    rt.install_capture()
    try:
        handler = load_handler(handler_spec, code_dir)
    except HandlerError as e:
        rt.stderr_line(
            f"faas_runtime: cannot load handler '{handler_spec}' from {code_dir}: "
            f"{e.error_type}: {one_line(e)}"
        )
        _exit(rt, EXIT_USAGE)

    if snapshot:
        # The receive buffer, made (and its pages zeroed) before the
        # snapshot point, so a restored copy does not make its own on the
        # request path: ~48 page faults less per cold invocation.
        buf = rt.chan._buf if rt.chan is not None else bytearray(MAX_DATAGRAM + 1)
        try:
            rt.snapshot_point()
        except SnapshotError as e:
            rt.stderr_line(f"faas_runtime: --snapshot: {e}")
            _exit(rt, EXIT_USAGE)
        except Exception as e:
            rt.stderr_line(
                f"faas_runtime: --snapshot: a runtime hook failed: {type(e).__name__}: {one_line(e)}"
            )
            _exit(rt, EXIT_USAGE)
        # The restored fd 3 is a new socket: check it again and take it.
        old = rt.chan
        if old is not None:
            old.sock.detach()
        try:
            rt.chan = take_channel(GUEST_FD, check_inherited=False, buf=buf)
        except ChannelError as e:
            rt.stderr_line(
                f"faas_runtime: fd {GUEST_FD} is not the guest channel after the snapshot "
                f"point: {e}"
            )
            _exit(rt, EXIT_NO_CHANNEL)

    _exit(rt, rt.serve(handler, keep_alive))

