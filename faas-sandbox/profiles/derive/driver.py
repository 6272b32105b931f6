# Plays the gateway for one guest, to trace it (see ../README.md).
#
#   python3 driver.py [options] -- CMD [ARG...]
#
# Puts one end of a SOCK_SEQPACKET socketpair at fd 3 of CMD and speaks the
# faas guest protocol (faas-core/src/protocol/frame.rs) on the other: waits
# for Ready, sends one Invoke per case (--cases), checks each answer, and at
# the end closes the channel (keep_alive) and waits for CMD to exit. CMD is
# typically `strace -f -qq -o FILE runtime...`.
#
# CMD gets the environment the platform gives a language runtime
# (faas-gateway/src/runtimes.rs instance_env): PATH, LANG=C.UTF-8, TZ=:UTC,
# FAAS_FUNCTION_NAME/VERSION, FAAS_MEMORY_MB, FAAS_TIMEOUT_MS, FAAS_REUSE,
# plus --env KEY=VALUE; nothing else from the driver's environment.
#
# Cases (the handler's branch is the event's "case"; see handlers/):
#   echo        inline JSON request, inline JSON answer
#   memfd       a 200 KB request as a sealed memfd (SCM_RIGHTS)
#   big         a 5 MiB answer (a sealed memfd from the guest; with
#               --inline-only an Error 500 is expected instead, and memfd
#               requests an Error 413)
#   boom        the handler raises: an Error frame 500
#   log         print/logging/console output: Log frames, then a Result
#   tmp, http, asyncio, subprocess, signal, parallel
#               /tmp files (and SQLite), outbound HTTP (--host NAME),
#               asyncio, children (a shell running handlers/shell.sh),
#               a SIGALRM timeout guard, threads and processes
#   sleep       the handler waits ~0.5 s; meanwhile the driver stops the
#               runtime (SIGSTOP) and continues it (SIGCONT), as a freezer
#               or a checkpoint would
#
# --snapshot: CMD stops itself with SIGSTOP after initialisation (the Python
# runtime's --snapshot); the driver waits until the runtime process is
# stopped, continues it with SIGCONT (the post-restore path) and then
# expects Ready.
# --snapshot and the sleep case find the runtime's pid in /proc.
# --dns: answers DNS queries on 127.0.0.1:53 (A: 127.0.0.1, others: no
# data), for a network namespace whose resolv.conf points there.
import argparse
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HEADER = struct.Struct("<4sBBHQII")
READY, INVOKE, RESULT, ERROR, LOG = 1, 2, 3, 4, 5
FLAG_MEMFD = 1
F_ADD_SEALS, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1033, 1, 2, 4, 8


def frame(kind, flags, iid, meta, body=b"", body_len=None):
    blen = len(body) if body_len is None else body_len
    return HEADER.pack(b"FAAS", 1, kind, flags, iid, len(meta), blen) + meta + body


def invoke_meta(trace_id, headers):
    deadline = int(time.time() * 1000) + 60_000
    m = struct.pack("<Q", deadline)
    t = trace_id.encode()
    m += struct.pack("<H", len(t)) + t + struct.pack("<H", len(headers))
    for k, v in headers:
        k, v = k.encode(), v.encode()
        m += struct.pack("<H", len(k)) + k + struct.pack("<I", len(v)) + v
    return m


def sealed_memfd(data):
    fd = os.memfd_create("body", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)
    return fd


class Gateway:
    def __init__(self, sock):
        self.sock = sock
        self.logs = []

    def recv(self):
        """The next frame as (kind, flags, id, meta, body), or None at EOF."""
        msg, anc, mflags, _ = self.sock.recvmsg(300_000, socket.CMSG_SPACE(4 * 4))
        if not msg:
            return None
        assert not mflags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), "truncated"
        magic, ver, kind, flags, iid, ml, bl = HEADER.unpack_from(msg)
        assert (magic, ver) == (b"FAAS", 1), msg[:24]
        fds = []
        for lvl, typ, data in anc:
            if (lvl, typ) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds += struct.unpack("%di" % (len(data) // 4), data[: len(data) // 4 * 4])
        meta = msg[24 : 24 + ml]
        if flags & FLAG_MEMFD:
            assert len(fds) == 1, fds
            body = b""
            while len(body) < bl:
                chunk = os.pread(fds[0], bl - len(body), len(body))
                assert chunk
                body += chunk
            os.close(fds[0])
        else:
            assert not fds, fds
            body = msg[24 + ml : 24 + ml + bl]
        return kind, flags, iid, meta, body

    def answer(self, iid):
        """Frames until the Result/Error of `iid`: (kind, status, body, via memfd)."""
        while True:
            f = self.recv()
            assert f is not None, f"the guest closed the channel while invocation {iid} ran"
            kind, flags, fid, meta, body = f
            assert fid == iid, (kind, fid, iid)
            if kind == LOG:
                self.logs.append((meta[0], body))
                continue
            assert kind in (RESULT, ERROR), kind
            status = struct.unpack_from("<H", meta)[0]
            return kind, status, body, bool(flags & FLAG_MEMFD)


def descendants(root):
    """Pids under `root` (from /proc), parents before children."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            ppid = int(st[st.rfind(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        for c in sorted(children.get(p, [])):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rfind(")") + 2]
    except OSError:
        return "?"


def runtime_pid(root):
    """The deepest process under `root` running faas_runtime (under strace and
    the snapshot wrapper, the runtime itself)."""
    pids = [p for p in [root, *descendants(root)] if b"faas_runtime" in cmdline(p)]
    return pids[-1] if pids else None


def wait_stopped(root, timeout=60.0):
    """Waits until the runtime under `root` stays stopped (T, or t under
    strace) for 0.3 s; returns its pid."""
    end = time.monotonic() + timeout
    seen, since = None, None
    while time.monotonic() < end:
        pid = runtime_pid(root)
        if pid is not None and state(pid) in "Tt":
            if seen != pid:
                seen, since = pid, time.monotonic()
            elif time.monotonic() - since >= 0.3:
                return pid
        else:
            seen = None
        time.sleep(0.02)
    raise SystemExit("driver: the runtime did not stop at its snapshot point")


def dns_server():
    tmp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tmp.bind(("127.0.0.1", 53))
    # Above fd 9: fd 3 is about to become the guest's channel.
    s = socket.socket(fileno=fcntl.fcntl(tmp.fileno(), fcntl.F_DUPFD_CLOEXEC, 10))
    tmp.close()

    def serve():
        while True:
            q, addr = s.recvfrom(4096)
            i = 12
            while q[i]:
                i += q[i] + 1
            qtype = struct.unpack_from(">H", q, i + 1)[0]
            question = q[12 : i + 5]
            ans = b""
            if qtype == 1:
                ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
            hdr = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if ans else 0, 0, 0)
            s.sendto(hdr + question + ans, addr)

    threading.Thread(target=serve, daemon=True).start()


CASES = {
    # name: (event, request as memfd)
    "echo": ({"case": "echo", "n": [1, "two", {"three": 3.5}]}, False),
    "memfd": ({"case": "echo", "pad": "x" * 200_000}, True),
    "big": ({"case": "big", "n": 5 * 1024 * 1024}, False),
    "boom": ({"case": "boom", "boom": 5}, False),
    "log": ({"case": "log"}, False),
    "tmp": ({"case": "tmp", "data": [1, 2, 3]}, False),
    "http": ({"case": "http"}, False),
    "asyncio": ({"case": "asyncio"}, False),
    "subprocess": ({"case": "subprocess"}, False),
    "signal": ({"case": "signal"}, False),
    "parallel": ({"case": "parallel"}, False),
    "sleep": ({"case": "sleep", "seconds": 0.6}, False),
}


def run_case(gw, iid, name, args, root):
    event, as_memfd = CASES[name]
    if name == "http" and args.host:
        event = dict(event, host=args.host)
    body = json.dumps(event).encode()
    meta = invoke_meta(f"Root=1-derive-{iid}", [("content-type", "application/json")])
    if as_memfd:
        fd = sealed_memfd(body)
        gw.sock.sendmsg(
            [frame(INVOKE, FLAG_MEMFD, iid, meta, body_len=len(body))],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))],
        )
        os.close(fd)
    else:
        gw.sock.send(frame(INVOKE, 0, iid, meta, body))
    if name == "sleep":
        time.sleep(0.2)
        pid = runtime_pid(root)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.2)
        os.kill(pid, signal.SIGCONT)
    nlogs = len(gw.logs)
    kind, status, out, via_memfd = gw.answer(iid)
    what = f"{name}: {'Result' if kind == RESULT else 'Error'} {status}, {len(out)} bytes{' (memfd)' if via_memfd else ''}"
    if name == "boom":
        ok = kind == ERROR and status == 500 and b"bad input: 5" in out
    elif name == "big" and args.inline_only:
        ok = kind == ERROR and b"ResponseSizeTooLarge" in out
    elif name == "memfd" and args.inline_only:
        ok = kind == ERROR and status == 413
    elif name == "big":
        ok = kind == RESULT and via_memfd and len(out) == 5 * 1024 * 1024
    else:
        ok = kind == RESULT and status == 200
    if name == "log":
        ok = ok and len(gw.logs) - nlogs >= 3
        what += f", {len(gw.logs) - nlogs} Log frames"
    if ok and kind == RESULT and len(out) <= 200:
        what += ": " + out.decode(errors="replace")
    print(f"driver: {what}{'' if ok else ' UNEXPECTED: ' + out[:300].decode(errors='replace')}", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(
        usage="driver.py [options] -- CMD [ARG...]",
        description="Plays the faas gateway for CMD on fd 3 (see the comments at the top of driver.py).",
    )
    ap.add_argument("--cases", default="echo,memfd,big,boom,log")
    ap.add_argument("--reuse", default="keep_alive", choices=["keep_alive", "per_request"])
    ap.add_argument("--snapshot", action="store_true")
    ap.add_argument("--inline-only", action="store_true")
    ap.add_argument("--host", default=None)
    ap.add_argument("--dns", action="store_true")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command")
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c}")
    if args.dns:
        dns_server()

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Both ends above fd 9, then the guest's end at fd 3 (inheritable).
    ours = socket.socket(fileno=fcntl.fcntl(a.fileno(), fcntl.F_DUPFD_CLOEXEC, 10))
    theirs = fcntl.fcntl(b.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
    a.close()
    b.close()
    os.dup2(theirs, 3, inheritable=True)
    os.close(theirs)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "FAAS_FUNCTION_NAME": "derive",
        "FAAS_FUNCTION_VERSION": "1",
        "FAAS_MEMORY_MB": "256",
        "FAAS_TIMEOUT_MS": "60000",
        "FAAS_REUSE": args.reuse,
    }
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v

    p = subprocess.Popen(cmd, env=env, pass_fds=(3,))
    os.close(3)
    ours.settimeout(120)
    gw = Gateway(ours)
    if args.snapshot:
        pid = wait_stopped(p.pid)
        print(f"driver: runtime {pid} stopped at its snapshot point; SIGCONT", flush=True)
        os.kill(pid, signal.SIGCONT)
    ok = True
    for n, name in enumerate(cases, 1):
        f = gw.recv()
        if f is None or f[0] != READY:
            print(f"driver: expected Ready before case {name}, got {f and f[0]}", flush=True)
            ok = False
            break
        try:
            ok &= run_case(gw, n, name, args, p.pid)
        except AssertionError as e:
            print(f"driver: {name}: {e}", flush=True)
            ok = False
            break
        if args.reuse == "per_request":
            break
    if not ok:
        pass
    elif args.reuse == "per_request":
        ok &= gw.recv() is None
    else:
        ours.shutdown(socket.SHUT_RDWR)
    ours.close()
    code = p.wait(timeout=120)
    print(f"driver: exit {code}, {len(gw.logs)} Log frames in all", flush=True)
    sys.exit(0 if ok and code == 0 else 1)


if __name__ == "__main__":
    main()
