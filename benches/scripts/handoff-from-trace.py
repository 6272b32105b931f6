#!/usr/bin/env python3
"""Hand-off latency of parked sandboxes, from kernel syscall tracepoints.

Record a run of the sandbox bench's parked case with the tracepoints, then
pair each hand-off `sendmsg` of a launching thread
with the next `execve` of a parked sandbox (comm faas-pool-keepe: a sandbox
the keeper thread parked keeps its name until it executes):

    perf record -e syscalls:sys_enter_sendmsg -e syscalls:sys_enter_execve \
        -e syscalls:sys_exit_execve -o ho.data -- \
        target/release/deps/sandbox-HASH --bench sandbox_spawn/parked
    benches/scripts/handoff-from-trace.py ho.data

Prints the hand-off (sendmsg -> the sandbox's execve) and the guest's
execve (enter -> exit) percentiles.
"""
import subprocess, sys, statistics
out = subprocess.run(["perf","script","-i",sys.argv[1],"-F","comm,pid,tid,time,event"],capture_output=True,text=True).stdout
last_send=None; enter={}; hand=[]; ex=[]
for line in out.splitlines():
    parts=line.split()
    ev=parts[-1]; t=float(parts[-2].rstrip(':')); pid=int(parts[-3].split('/')[0]); comm=" ".join(parts[:-3])
    # A hand-off is sent by the launching thread (a tokio worker, a blocking
    # thread or the bench's own); parked sandboxes and guests are not it.
    if ev.startswith('syscalls:sys_enter_sendmsg') and comm not in ('faas-pool-keepe', 'hello'):
        last_send=t
    elif ev.startswith('syscalls:sys_enter_execve') and comm=='faas-pool-keepe':
        if last_send is not None and t-last_send<0.005:
            hand.append((t-last_send)*1e6); last_send=None
        enter[pid]=t
    elif ev.startswith('syscalls:sys_exit_execve') and pid in enter:
        ex.append((t-enter.pop(pid))*1e6)
def q(xs,p):
    if not xs:
        sys.exit("no hand-off found in the trace (was it recorded with the three tracepoints?)")
    xs=sorted(xs); return xs[min(len(xs)-1,int(len(xs)*p))]
print(f"hand-offs {len(hand)}: send -> the sandbox's execve p50 {q(hand,.5):.0f} us p90 {q(hand,.9):.0f} p99 {q(hand,.99):.0f}")
print(f"execve of the guest {len(ex)}: p50 {q(ex,.5):.0f} us p99 {q(ex,.99):.0f}")
