/*
 * respond.c: the native target of benches/benches/snapshot.rs.
 *
 * Build: gcc -O2 -static -o respond respond.c      (static glibc)
 *
 * A small native "function": at start it builds its state (a sieve of the
 * primes below 2^18 and the table of those primes, ~270 KiB of bss), closes
 * every fd above 2, and stops itself with kill(getpid(), SIGSTOP) (the
 * snapshot point). Run with `--cold` it skips the stop and goes straight on,
 * so the same binary serves as the cold-exec baseline.
 *
 * After the snapshot point it writes, in order, on fd 1:
 *
 *   t=<ns>                 CLOCK_MONOTONIC, taken first thing after the stop
 *                          returns (cold: at the same point, after set-up)
 *   main=<ns>              --cold only: CLOCK_MONOTONIC at main's entry
 *   private_dirty_kb=<N>   Private_Dirty of /proc/self/smaps_rollup
 *   smaps_ns=<N>           how long reading it took (a measurement cost, not
 *                          part of answering)
 *   response primes=<N> sum=<N>
 *                          the answer: a count and sum over the prime table
 *                          for a fixed range (reads the state, writes none)
 *
 * then reads fd 0 until end of file (so the caller can look at the process
 * after the response) and exits 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LIMIT (1u << 18)

static unsigned char composite[LIMIT];
static uint32_t primes[LIMIT / 8];
static size_t nprimes;

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
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

static void build_state(void)
{
	for (uint32_t i = 2; i < LIMIT; i++) {
		if (composite[i])
			continue;
		primes[nprimes++] = i;
		for (uint64_t j = (uint64_t)i * i; j < LIMIT; j += i)
			composite[j] = 1;
	}
}

/* The first index whose prime is >= x. */
static size_t lower_bound(uint32_t x)
{
	size_t lo = 0, hi = nprimes;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (primes[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int main(int argc, char **argv)
{
	long long t_main = now_ns();
	int cold = argc > 1 && strcmp(argv[1], "--cold") == 0;
	long long t, t0;
	long dirty;
	size_t a, b;
	uint64_t sum = 0;
	char sink[256];

	build_state();
	if (close_range(3, ~0U, 0) != 0) {
		dprintf(2, "respond: close_range failed\n");
		return 1;
	}

	if (!cold)
		kill(getpid(), SIGSTOP);

	t = now_ns();
	dprintf(1, "t=%lld\n", t);
	if (cold)
		dprintf(1, "main=%lld\n", t_main);
	t0 = now_ns();
	dirty = private_dirty_kb();
	dprintf(1, "private_dirty_kb=%ld\nsmaps_ns=%lld\n", dirty, now_ns() - t0);

	a = lower_bound(100000);
	b = lower_bound(200000);
	for (size_t i = a; i < b; i++)
		sum += primes[i];
	dprintf(1, "response primes=%zu sum=%llu\n", b - a, (unsigned long long)sum);

	while (read(0, sink, sizeof(sink)) > 0)
		;
	return 0;
}
