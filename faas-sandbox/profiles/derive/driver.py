# Speaks enough of the faas guest protocol (faas-core/src/protocol/frame.rs)
# over a SOCK_SEQPACKET socket placed at fd 3 of CMD: expects Ready, sends
# Invoke (one inline body, one 100 KiB sealed-memfd body), prints the replies.
import os, socket, struct, subprocess, sys, fcntl
cmd = sys.argv[1:]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
parent = socket.socket(fileno=os.dup2(a.fileno(), 20))
child = socket.socket(fileno=os.dup2(b.fileno(), 21))
a.detach(); b.detach()
for fd in (3, 4):
    try: os.close(fd)
    except OSError: pass
if child.fileno() != 3:
    os.dup2(child.fileno(), 3)
env = dict(os.environ, FAAS_REUSE="keep_alive")
p = subprocess.Popen(cmd, pass_fds=(3,), env=env)
child.close()
os.close(3)
def header(kind, flags, iid, meta, blen):
    return b"FAAS" + bytes([1, kind]) + struct.pack("<HQII", flags, iid, meta, blen)
def recv():
    msg, anc, _, _ = parent.recvmsg(300000, socket.CMSG_SPACE(16))
    if not msg: return None
    kind, flags, iid, ml, bl = msg[5], *struct.unpack("<HQII", msg[6:24])
    fds = []
    for lvl, typ, data in anc:
        fds += list(struct.unpack("i" * (len(data) // 4), data))
    print("got kind", kind, "flags", flags, "id", iid, "meta", ml, "body", bl, "fds", fds, "bytes", msg[24+ml:24+ml+60])
    return kind
assert recv() == 1
meta = struct.pack("<Q", 2**62) + struct.pack("<H", 0) + struct.pack("<H", 0)
parent.send(header(2, 0, 1, len(meta), 5) + meta + b"world")
recv()
big = b"x" * 100000
fd = os.memfd_create("body", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
os.write(fd, big)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
parent.sendmsg([header(2, 1, 2, len(meta), len(big)) + meta], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
while recv() != 3: pass
parent.shutdown(socket.SHUT_RDWR)
print("exit", p.wait())
