/*
 * fork_probe.c: the snapshot target of tests/sandbox_fork.rs.
 *
 * Build: gcc -O1 -static -o fork_probe fork_probe.c
 *
 * On the host it closes every fd above 2 and stops itself with SIGSTOP:
 * the test dumps it then. Each fork of its template then adds one to a
 * global counter (0 in the snapshot: a fork that sees another's write
 * would say 2) and sends, on fd 3, one message:
 *
 *   count N pid P ppid Q unshare0 OK|EPERM
 *
 * (unshare(0), a no-op the kernel allows, is denied by every seccomp
 * profile of the sandbox: EPERM shows the fork's filters are in force)
 * then reads one command from fd 3: `exit N` exits with N; `alloc M`
 * allocates and touches M MiB, then exits with 0; `sleep` waits until
 * killed. A closed fd 3 exits with 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int counter;

int main(void)
{
	if (close_range(3, ~0U, 0) != 0)
		return 1;
	raise(SIGSTOP);

	counter++;
	const char *unshare0 = unshare(0) == 0 ? "OK" : strerrorname_np(errno);
	char msg[128];
	int n = snprintf(msg, sizeof msg, "count %d pid %ld ppid %ld unshare0 %s",
			 counter, (long)getpid(), (long)getppid(),
			 unshare0 ? unshare0 : "E?");
	if (write(3, msg, n) != n)
		return 4;
	char cmd[64];
	ssize_t got = read(3, cmd, sizeof cmd - 1);
	if (got <= 0)
		return 3;
	cmd[got] = 0;
	if (strncmp(cmd, "exit ", 5) == 0)
		return atoi(cmd + 5);
	if (strncmp(cmd, "alloc ", 6) == 0) {
		size_t len = (size_t)atoi(cmd + 6) << 20;
		volatile char *p = malloc(len);
		if (!p)
			return 5;
		for (size_t i = 0; i < len; i += 4096)
			p[i] = 1;
		return 0;
	}
	for (;;)
		pause();
}
