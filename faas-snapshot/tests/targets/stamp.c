/*
 * stamp.c: benchmark and isolation target for faas-snapshot's tests.
 *
 * Build: gcc -O2 -static -o stamp stamp.c      (static glibc)
 *
 * Fills a 4 MiB static buffer with a pattern, closes every fd above 2 and
 * stops itself with raise(SIGSTOP). When continued it prints, in order:
 *
 *   first_instruction_ns=<N>   CLOCK_MONOTONIC taken first thing after the
 *                              stop returns (compare with the time the
 *                              restore started, same clock)
 *   private_dirty_kb=<N>       Private_Dirty of /proc/self/smaps_rollup,
 *                              read before this instance writes anything
 *   OK isolation | FAIL isolation: ...
 *                              after writing its pid into the first 8 bytes
 *                              of every 4 KiB page and sleeping 20 ms, every
 *                              page still holds its own pid and the rest of
 *                              the buffer the original pattern (several
 *                              instances restored from one snapshot must not
 *                              see each other's writes)
 *
 * Exits 0 when the isolation check passed, 1 otherwise.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (4u << 20)
#define PAGE 4096u

static unsigned char buf[BUF_SIZE] __attribute__((aligned(PAGE)));

/* Make the compiler assume anything may have changed buf. */
#define CLOBBER_BUF() __asm__ volatile("" : : "r"(buf) : "memory")

static unsigned char pattern(size_t i)
{
	return (unsigned char)((i * 131 + 17) ^ (i >> 12));
}

static long private_dirty_kb(void)
{
	char text[4096];
	ssize_t n;
	long kb = -1;
	int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
	char *line;

	if (fd < 0)
		return -1;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	text[n] = '\0';
	line = strstr(text, "\nPrivate_Dirty:");
	if (line)
		sscanf(line, "\nPrivate_Dirty: %ld kB", &kb);
	return kb;
}

int main(void)
{
	struct timespec first;
	uint64_t pid;
	size_t bad_page = SIZE_MAX, bad_byte = SIZE_MAX;

	for (size_t i = 0; i < BUF_SIZE; i++)
		buf[i] = pattern(i);
	CLOBBER_BUF();
	if (close_range(3, ~0U, 0) != 0) {
		printf("FAIL setup: close_range\n");
		return 1;
	}

	raise(SIGSTOP);

	clock_gettime(CLOCK_MONOTONIC, &first);
	dprintf(1, "first_instruction_ns=%lld\n",
		(long long)first.tv_sec * 1000000000LL + first.tv_nsec);
	dprintf(1, "private_dirty_kb=%ld\n", private_dirty_kb());

	CLOBBER_BUF();
	pid = (uint64_t)getpid();
	for (size_t p = 0; p < BUF_SIZE; p += PAGE)
		memcpy(&buf[p], &pid, sizeof(pid));
	CLOBBER_BUF();
	usleep(20000);
	CLOBBER_BUF();
	for (size_t p = 0; p < BUF_SIZE && bad_page == SIZE_MAX; p += PAGE) {
		uint64_t seen;

		memcpy(&seen, &buf[p], sizeof(seen));
		if (seen != pid) {
			bad_page = p / PAGE;
			break;
		}
		for (size_t i = p + sizeof(pid); i < p + PAGE; i++)
			if (buf[i] != pattern(i)) {
				bad_byte = i;
				break;
			}
		if (bad_byte != SIZE_MAX)
			break;
	}
	if (bad_page != SIZE_MAX) {
		uint64_t seen;

		memcpy(&seen, &buf[bad_page * PAGE], sizeof(seen));
		dprintf(1, "FAIL isolation: page %zu holds pid %llu, mine is %llu\n", bad_page,
			(unsigned long long)seen, (unsigned long long)pid);
		return 1;
	}
	if (bad_byte != SIZE_MAX) {
		dprintf(1, "FAIL isolation: byte %zu is %#x, pattern %#x\n", bad_byte,
			buf[bad_byte], pattern(bad_byte));
		return 1;
	}
	dprintf(1, "OK isolation\n");
	return 0;
}
