# Writes ../python.json and ../node.json from the traces trace.sh left in
# TRACES (default /tmp/faas-derive): the union of the syscalls traced for
# each runtime, plus the additions below (each with its reason), minus the
# calls every sandbox denies or always allows. Prints what it traced, where
# it came from and how the lists changed. See ../README.md.
#
#   python3 gen.py [TRACES]
#
# ../native.json is written too when TRACES holds hello.trace (the native
# derivation of version 1, see ../README.md); otherwise it is left alone.
import collections
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILES = os.path.join(HERE, "..")

# faas_sandbox::seccomp::DENIED_SYSCALLS: a profile allowing one is rejected.
DENIED = set(
    "ptrace mount umount2 unshare setns bpf perf_event_open keyctl add_key request_key kexec_load "
    "kexec_file_load init_module finit_module delete_module io_uring_setup io_uring_enter "
    "io_uring_register userfaultfd process_vm_readv process_vm_writev open_by_handle_at "
    "name_to_handle_at pivot_root chroot swapon reboot".split()
)
# faas_sandbox::seccomp::ALWAYS_ALLOWED: every compiled profile has them.
ALWAYS = {"execve", "execveat", "clone3"}

# Added beyond the traces: paths one traced run does not take. Shared by
# both runtimes.
EXTRA_COMMON = {
    "rt_sigreturn": "the snapshot restorer's last call (it returns into the restored guest "
    "with rt_sigreturn after installing the filters), and the return of every signal handler",
    "restart_syscall": "the kernel resumes a sleep with a timeout (futex, poll, nanosleep) "
    "that a stop interrupted (SIGSTOP/SIGCONT, a freezer, a checkpoint) with it; without it "
    "glibc's futex wrapper aborts the process",
    "clock_gettime": "vDSO fallback (a clocksource without vDSO support makes glibc issue "
    "the syscall) and the CPU-time clocks, which are always a syscall",
    "gettimeofday": "vDSO fallback, as clock_gettime (V8's Date.now(), SQLite's clock, "
    "C code calling gettimeofday)",
    "mremap": "glibc realloc() of chunks above the mmap threshold (large buffers growing)",
    "sched_yield": "spinning worker threads (V8, OpenBLAS under numpy), os.sched_yield",
    "tgkill": "glibc abort() and raise(): fatal errors, os.abort(), signal.raise_signal(), "
    "process.abort()",
    "writev": "glibc's fatal-error messages (\"double free\", \"futex facility returned "
    "an unexpected error code\") are written with writev before it aborts",
}
EXTRA = {
    "python": {
        "dup3": "the runtime's --snapshot path without a channel: os.dup2(placeholder, 3, "
        "inheritable=False) is dup3",
        "eventfd2": "os.eventfd, and gRPC's wakeup fd (google-cloud clients)",
        "pselect6": "select.select: glibc 2.36 implements select() with pselect6",
    },
    "node": {
        "clock_getres": "V8 and libuv query clock resolutions (vDSO fallback as clock_gettime)",
        "pkey_mprotect": "V8 tags its code pages with a memory protection key when "
        "pkey_alloc succeeds, which depends on the CPU (PKU); this machine has none",
        "pkey_free": "as pkey_mprotect",
    },
}
# faas-snapshot's checkpoint (faas-snapshot/src/dump.rs remote_state)
# injects brk(0), prctl(PR_GET_TID_ADDRESS), sigaltstack(NULL, ...) and
# rt_sigaction(sig, NULL, ...) into the stopped process, which is under its
# sandbox's filters: the Python functions are checkpointed at deploy.
EXTRA["python"]["sigaltstack"] = (
    "faas-snapshot's checkpoint injects sigaltstack(NULL, &old) into the stopped runtime "
    "(brk and rt_sigaction, which it injects too, are traced anyway)"
)


# Allowed only with these arguments (seccompiler conditions; prctl's option
# is argument 0).
def prctl(option, value, why):
    return {
        "syscall": "prctl",
        "comment": f"{option}: {why}",
        "args": [{"index": 0, "type": "dword", "op": "eq", "val": value}],
    }


PR_SET_NAME, PR_GET_NAME, PR_GET_TID_ADDRESS = 15, 16, 40
THREAD_NAMES = [
    prctl("PR_SET_NAME", PR_SET_NAME, "thread names (pthread_setname_np of the calling thread, "
          "libuv's process.title); not traced"),
    prctl("PR_GET_NAME", PR_GET_NAME, "pthread_getname_np of the calling thread; not traced"),
]
ARG_RULES = {
    "python": THREAD_NAMES + [
        prctl("PR_GET_TID_ADDRESS", PR_GET_TID_ADDRESS, "injected by faas-snapshot's checkpoint "
              "into the stopped runtime at deploy (dump.rs remote_state)"),
    ],
    "node": THREAD_NAMES,
}
COMMENT = {
    "python": "CPython 3.11 running faas-guest/runtimes/python/faas_runtime.py (cold, per_request and "
    "keep_alive, --snapshot under the platform's wrapper continued with SIGCONT, in the sandbox's "
    "file-system view) with the handler in profiles/derive/handlers traced under strace -f, plus "
    "the additions listed in profiles/README.md.",
    "node": "Node.js 20 running faas-guest/runtimes/node/faas_runtime.js (with and without its "
    "addon, CommonJS and ES module handlers, per_request and keep_alive, in the sandbox's "
    "file-system view) with the handlers in profiles/derive/handlers traced under strace -f, "
    "plus the additions listed in profiles/README.md.",
}
MAIN = {"python": "/usr/bin/python3", "node": "/usr/bin/node"}


def parse(path):
    """{program: set of syscall names} for one strace -f -o file. A name
    counts for the program a process runs: the last program it executed, or
    its parent's (a forked child before its execve)."""
    prog, parent, pending = {}, {}, {}
    # (pid, its program then, or None before its first execve): names.
    seen = collections.defaultdict(set)
    for line in open(path):
        m = re.match(r"^(\d+)\s+(.*)$", line.rstrip("\n"))
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        c = re.match(r"(?:<\.\.\. )?(clone3?|vfork|fork)(?:\(| resumed>).*= (\d+)$", rest)
        if c:
            parent[int(c.group(2))] = pid
        e = re.match(r'execve\("([^"]+)"', rest)
        if e:
            if rest.endswith("= 0"):
                prog[pid] = e.group(1)
            elif "unfinished" in rest:
                pending[pid] = e.group(1)
        if rest.startswith("<... execve resumed>") and rest.endswith("= 0"):
            prog[pid] = pending.get(pid, "?")
        n = re.match(r"([a-z_0-9]+)\(", rest)
        if n:
            seen[(pid, prog.get(pid))].add(n.group(1))
    # Resolved at the end: a child may run before its parent's clone returns.
    per = collections.defaultdict(set)
    for (pid, program), names in seen.items():
        p = pid
        while program is None and p in parent:
            p = parent[p]
            program = prog.get(p)
        per[program or "?"] |= names
    return per


def main():
    traces = sys.argv[1] if len(sys.argv) > 1 else "/tmp/faas-derive"
    for rt, prefix in (("python", "py-"), ("node", "node-")):
        files = sorted(glob.glob(os.path.join(traces, prefix + "*.trace")))
        if not files:
            sys.exit(f"gen.py: no {prefix}*.trace in {traces}; run trace.sh first")
        per = collections.defaultdict(set)
        for f in files:
            for k, v in parse(f).items():
                per[k] |= v
        traced = set().union(*per.values())
        own = per.get(MAIN[rt], set())
        children = traced - own
        extra = {**EXTRA_COMMON, **EXTRA[rt]}
        rules = ARG_RULES[rt]
        with_args = {r["syscall"] for r in rules}
        allow = (traced | set(extra)) - DENIED - ALWAYS - with_args
        path = os.path.join(PROFILES, f"{rt}.json")
        try:
            before = json.load(open(path))
        except (OSError, ValueError):
            before = {"allow": [], "allow_with_args": []}
        old = set(before["allow"]) | {r["syscall"] for r in before.get("allow_with_args", [])}
        new = allow | with_args
        doc = {"version": 1, "name": rt, "comment": COMMENT[rt], "allow": sorted(allow), "allow_with_args": rules}
        with open(path, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        print(f"== {rt}: {len(files)} traces, {len(traced)} names traced, {len(allow)} in allow, "
              f"{len(with_args)} in allow_with_args ({', '.join(sorted(with_args))})")
        print(f"  traced, denied by every sandbox: {sorted(traced & DENIED)}")
        print(f"  traced, always allowed: {sorted(traced & ALWAYS)}")
        print(f"  traced only in child programs: {sorted(children - DENIED - ALWAYS)}")
        for k in sorted(per):
            if k != MAIN[rt] and per[k] - own:
                print(f"    {k}: {sorted(per[k] - own)}")
        print(f"  added, not traced: {sorted(set(extra) - traced)}")
        print(f"  new against the previous file: {sorted(new - old)}")
        print(f"  gone against the previous file: {sorted(old - new)}")
    hello = os.path.join(traces, "hello.trace")
    if os.path.exists(hello):
        native(hello)


# Version 1's native derivation: examples/functions/hello traced,
# plus the std/libc paths one echo run does not reach.
NATIVE_EXTRA = {
    "clock_gettime", "clock_nanosleep", "nanosleep", "clone", "exit", "futex", "madvise", "mremap",
    "rt_sigprocmask", "rt_sigreturn", "sched_yield", "ppoll", "readv", "writev", "recvfrom", "sendto",
    "lseek", "ftruncate", "statx", "tgkill", "getppid", "pwrite64", "fsync", "fdatasync", "wait4",
    "waitid", "getcwd", "getdents64", "getuid", "geteuid", "getgid", "getegid",
}


def native(hello):
    names = set().union(*parse(hello).values())
    allow = (names | NATIVE_EXTRA) - DENIED - ALWAYS
    doc = {
        "version": 1,
        "name": "native",
        "comment": "A static Rust guest linked against faas-guest (examples/functions/hello traced under "
        "strace -f, plus the std/libc paths one echo run does not reach). See profiles/README.md.",
        "allow": sorted(allow),
        # Native guests are checkpointed at deploy too.
        "allow_with_args": [
            prctl("PR_GET_TID_ADDRESS", PR_GET_TID_ADDRESS, "injected by faas-snapshot's checkpoint "
                  "into the guest blocked after its Ready at deploy (dump.rs remote_state)"),
        ],
    }
    with open(os.path.join(PROFILES, "native.json"), "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    print(f"== native: {len(allow)} in allow")


if __name__ == "__main__":
    main()
