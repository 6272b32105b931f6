# Writes ../{native,python,node}.json from hello.trace, py.trace, node.trace
# (in the current directory; see ../README.md) plus the hand-added names below.
import json, os, sys
HERE = os.path.dirname(os.path.abspath(__file__))
DENIED = "ptrace mount umount2 unshare setns bpf perf_event_open keyctl add_key request_key kexec_load kexec_file_load init_module finit_module delete_module io_uring_setup io_uring_enter io_uring_register userfaultfd process_vm_readv process_vm_writev open_by_handle_at name_to_handle_at pivot_root chroot swapon reboot"
def traced(f):
    import re
    return {m.group(1) for l in open(f) for m in [re.match(r'^\d+\s+([a-z_0-9]+)\(', l)] if m}
# Added by hand beyond the trace: paths a static Rust guest takes that one echo run does not reach
native_extra = {"clock_gettime","clock_nanosleep","nanosleep","clone","exit","futex","madvise","mremap",
  "rt_sigprocmask","rt_sigreturn","sched_yield","ppoll","readv","writev","recvfrom","sendto","lseek",
  "ftruncate","statx","tgkill","getppid","pwrite64","fsync","fdatasync","wait4","waitid","getcwd","getdents64","getuid","geteuid","getgid","getegid"}
python_extra = {"dup","dup2","dup3","pipe2","socket","connect","bind","listen","accept4","setsockopt",
  "shutdown","getsockname","socketpair","unlink","unlinkat","rename","renameat2","mkdir","mkdirat","rmdir",
  "select","pselect6","epoll_ctl","epoll_wait","epoll_pwait","wait4","waitid","kill","faccessat2",
  "readlinkat","fchmod","fchdir","chdir","umask","getpgrp","times","getrusage","eventfd2","sched_getaffinity",
  "uname","fstat","getgroups","getresuid","getresgid","sendmsg","recvmsg","sendmmsg","recvmmsg","fstatfs","statfs",
  "fchown","utimensat","symlink","link","getitimer","setitimer","alarm","timerfd_create","timerfd_settime",
  "memfd_create","pread64","pwrite64","getpriority","prctl","vfork","copy_file_range","sendfile","fadvise64"}
node_extra = {"epoll_pwait2","poll","ppoll","socketpair","recvfrom","sendto","recvmsg","sendmsg","dup","dup3",
  "unlink","unlinkat","rename","renameat2","mkdir","mkdirat","rmdir","getdents64","wait4","kill","faccessat2",
  "pkey_free","pkey_mprotect","membarrier","mremap","timerfd_create","timerfd_settime","sched_yield",
  "clock_gettime","clock_getres","nanosleep","clock_nanosleep","readv","writev","preadv","pwritev","pwrite64",
  "ftruncate","fsync","fdatasync","fchmod","utimensat","getrusage","getppid","tgkill","sched_getparam",
  "sched_getscheduler","sched_setaffinity","copy_file_range","sendfile","fstatfs","statfs","umask","chdir","inotify_init1",
  "inotify_add_watch","inotify_rm_watch","prctl","rt_sigreturn","sigaltstack","vfork","dup2","pipe2","getpgrp","setsid"}
never = set(DENIED.split()) | {"clone3", "execve", "execveat"}
nat = (traced("hello.trace") | native_extra) - never
py = (traced("py.trace") | python_extra | nat) - never
nd = (traced("node.trace") | node_extra | nat) - never
desc = {
 "native": "A static Rust guest linked against faas-guest (examples/functions/hello traced under strace -f, plus the std/libc paths one echo run does not reach). See profiles/README.md.",
 "python": "CPython 3.11 (json, os, sys, socket, hashlib, random, logging, threading; a request/response on fd 3) traced under strace -f, plus the native profile and common stdlib paths. See profiles/README.md.",
 "node": "Node.js 20 (fs, crypto, net over loopback, JSON, timers; a request/response on fd 3) traced under strace -f, plus the native profile and libuv/V8 paths. See profiles/README.md.",
}
for name, s in [("native", nat), ("python", py), ("node", nd)]:
    doc = {"version": 1, "name": name, "comment": desc[name], "allow": sorted(s)}
    txt = json.dumps(doc, indent=2)
    open(os.path.join(HERE, "..", f"{name}.json"), "w").write(txt + "\n")
    print(name, len(s))
