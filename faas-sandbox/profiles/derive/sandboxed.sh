#!/bin/sh
# sandboxed.sh CODE RUNTIME OUT CMD [ARG...]
#
# Runs CMD with the file-system view a language runtime has in the
# platform's pooled sandbox (faas-gateway/src/runtimes.rs, faas-sandbox
# runtime.rs), as far as it changes which syscalls a runtime makes: no
# /proc and no /sys (empty directories), the code read-only at /var/task
# (the working directory), the runtime scripts read-only at /var/runtime,
# /var otherwise empty, /tmp an empty tmpfs, and /etc/resolv.conf pointing
# at 127.0.0.1 (where driver.py --dns answers). OUT, a host directory for
# the trace, is bound read-write at /var/out. Must run in a private mount
# namespace:
#   unshare --mount --propagation private -- sh sandboxed.sh ...
# CMD starts after the mounts, so a tracer started as CMD (strace) sees
# only the runtime.
set -eu
code=$1
runtime=$2
out=$3
shift 3
resolv=$(mktemp)
echo "nameserver 127.0.0.1" > "$resolv"
mount --bind "$resolv" /etc/resolv.conf
mount -t tmpfs -o mode=755 tmpfs /var
mkdir /var/task /var/runtime /var/out
mount --bind "$out" /var/out
mount --bind "$code" /var/task
mount -o remount,bind,ro /var/task
mount --bind "$runtime" /var/runtime
mount -o remount,bind,ro /var/runtime
mount -o remount,ro /var
mount -t tmpfs -o mode=1777,size=64m tmpfs /tmp
mount -t tmpfs -o ro,mode=555 tmpfs /sys
mount -t tmpfs -o ro,mode=555 tmpfs /proc
cd /var/task
exec "$@"
