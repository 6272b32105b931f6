# A copy of WRAPPER in faas-gateway/src/prepare.rs: pid 1 of the sandbox in
# which the platform snapshots a Python function (fork, exec the runtime, wait).
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)

