/*
 * extra_fd.c: negative target for faas-snapshot's tests.
 *
 * Build: gcc -O1 -o extra_fd extra_fd.c
 *
 * Closes every fd above 2, opens /dev/null twice and moves the two fds to
 * 5 and 7, then stops itself with raise(SIGSTOP) holding fds 0, 1, 2, 5 and
 * 7. A checkpoint must refuse it and name fds 5 and 7. When continued it
 * checks that 5 and 7 are still open, prints `OK extra_fd` and exits 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static int fail(const char *what)
{
	perror(what);
	printf("FAIL setup: %s\n", what);
	return 1;
}

int main(void)
{
	int a, b;

	if (close_range(3, ~0U, 0) != 0)
		return fail("close_range");
	a = open("/dev/null", O_RDONLY);
	b = open("/dev/null", O_WRONLY);
	if (a < 0 || b < 0)
		return fail("open /dev/null");
	if (dup2(a, 5) != 5 || dup2(b, 7) != 7)
		return fail("dup2");
	if (a != 5 && a != 7)
		close(a);
	if (b != 5 && b != 7)
		close(b);

	raise(SIGSTOP);

	if (fcntl(5, F_GETFD) < 0 || fcntl(7, F_GETFD) < 0) {
		printf("FAIL extra_fd: fd 5 or 7 is closed\n");
		return 1;
	}
	printf("OK extra_fd\n");
	fflush(stdout);
	return 0;
}
