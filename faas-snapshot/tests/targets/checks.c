/*
 * checks.c: process-state target for faas-snapshot's tests.
 *
 * Build: gcc -O1 -o checks checks.c      (dynamically linked glibc)
 * Usage: checks DATAFILE
 *
 * Sets up TLS, rseq, vDSO time, a brk heap, signal state, a private file
 * mapping, a static counter and a 1 MiB heap pattern, closes every fd above
 * 2, and stops itself with kill(getpid(), SIGSTOP). When continued (after a
 * restore, or after a plain SIGCONT) it checks that each piece of state
 * survived and prints `OK <name>` or `FAIL <name>: <detail>` per check on
 * stdout. Exits 0 only when every check passed. A set-up failure prints
 * `FAIL setup: ...` and exits 1 without stopping.
 *
 * The stop uses kill(), not raise(): glibc's raise() blocks every signal
 * around the tgkill and restores the mask from its own stack afterwards,
 * which would hide a restore that lost the signal mask.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TLS_VALUE 0x7e57c0de12345678ULL
#define TLS_INIT 0x1badb002cafef00dULL
#define COUNTER_VALUE 1000u
#define PRE_BLOCKS 512
#define PRE_BLOCK_SIZE 512
#define POST_BLOCKS 2048
#define POST_BLOCK_SIZE 2048
#define HEAP_BUF_SIZE (1u << 20)
#define ALTSTACK_SIZE (64u * 1024)
#define REMEMBERED_BYTES 64

static __thread uint64_t tls_value;
static __thread uint64_t tls_initialised = TLS_INIT;

static volatile unsigned static_counter;

static unsigned char *pre_blocks[PRE_BLOCKS];
static void *brk_libc_before;   /* sbrk(0): glibc's idea of the break */
static long brk_kernel_before;  /* brk(0): the kernel's */

static struct timespec realtime_before;

static char altstack[ALTSTACK_SIZE];
static volatile sig_atomic_t usr1_count;
static volatile sig_atomic_t usr1_on_altstack;

static const char *data_path;
static unsigned char *data_map;
static size_t data_len;
static unsigned char data_first[REMEMBERED_BYTES];
static size_t data_first_len;

static unsigned char *heap_buf;

static int failures;

static void ok(const char *name)
{
	printf("OK %s\n", name);
	fflush(stdout);
}

static void fail(const char *name, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void fail(const char *name, const char *fmt, ...)
{
	va_list ap;

	failures++;
	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static void setup_fail(const char *what)
{
	printf("FAIL setup: %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static unsigned char pre_byte(size_t block, size_t i)
{
	return (unsigned char)(block * 7 + i * 13 + 1);
}

static unsigned char post_byte(size_t block, size_t i)
{
	return (unsigned char)(block * 11 + i * 3 + 5);
}

static unsigned char heap_byte(size_t i)
{
	return (unsigned char)((i * 31 + 7) ^ (i >> 12));
}

static struct rseq *rseq_area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* 0 when this thread's registration is the glibc area (the kernel answers EBUSY). */
static int rseq_registered(void)
{
	long r = syscall(SYS_rseq, rseq_area(), __rseq_size, 0, RSEQ_SIG);

	if (r == -1 && errno == EINVAL && __rseq_size != 32)
		r = syscall(SYS_rseq, rseq_area(), 32, 0, RSEQ_SIG);
	if (r == -1 && errno == EBUSY)
		return 0;
	return r == 0 ? -1 : errno;
}

static void usr1_handler(int sig, siginfo_t *info, void *uctx)
{
	char here;

	(void)sig;
	(void)info;
	(void)uctx;
	usr1_count++;
	usr1_on_altstack = &here >= altstack && &here < altstack + sizeof(altstack);
}

static void setup(void)
{
	int fd;
	struct stat st;
	struct sigaction sa;
	stack_t ss;
	sigset_t set;
	struct timespec ts;

	tls_value = TLS_VALUE;

	if (sched_getcpu() < 0)
		setup_fail("sched_getcpu");
	if (__rseq_size == 0) {
		errno = ENOSYS;
		setup_fail("glibc did not register rseq (__rseq_size == 0; GLIBC_TUNABLES?)");
	}
	if (rseq_registered() != 0) {
		errno = EINVAL;
		setup_fail("rseq registration probe does not answer EBUSY");
	}

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		setup_fail("clock_gettime(CLOCK_MONOTONIC)");
	if (clock_gettime(CLOCK_REALTIME, &realtime_before) != 0)
		setup_fail("clock_gettime(CLOCK_REALTIME)");

	for (size_t b = 0; b < PRE_BLOCKS; b++) {
		pre_blocks[b] = malloc(PRE_BLOCK_SIZE);
		if (!pre_blocks[b])
			setup_fail("malloc");
		for (size_t i = 0; i < PRE_BLOCK_SIZE; i++)
			pre_blocks[b][i] = pre_byte(b, i);
	}
	brk_libc_before = sbrk(0);
	brk_kernel_before = syscall(SYS_brk, 0);

	ss.ss_sp = altstack;
	ss.ss_size = sizeof(altstack);
	ss.ss_flags = 0;
	if (sigaltstack(&ss, NULL) != 0)
		setup_fail("sigaltstack");
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = usr1_handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) != 0)
		setup_fail("sigaction(SIGUSR1)");
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		setup_fail("sigprocmask");

	fd = open(data_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		setup_fail(data_path);
	if (fstat(fd, &st) != 0)
		setup_fail("fstat DATAFILE");
	if (st.st_size <= 0) {
		errno = EINVAL;
		setup_fail("DATAFILE is empty");
	}
	data_len = (size_t)st.st_size;
	data_map = mmap(NULL, data_len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (data_map == MAP_FAILED)
		setup_fail("mmap DATAFILE");
	close(fd);
	data_first_len = data_len < REMEMBERED_BYTES ? data_len : REMEMBERED_BYTES;
	memcpy(data_first, data_map, data_first_len);

	for (unsigned i = 0; i < COUNTER_VALUE; i++)
		static_counter++;

	heap_buf = malloc(HEAP_BUF_SIZE);
	if (!heap_buf)
		setup_fail("malloc 1 MiB");
	for (size_t i = 0; i < HEAP_BUF_SIZE; i++)
		heap_buf[i] = heap_byte(i);

	fflush(stdout);
	if (close_range(3, ~0U, 0) != 0)
		setup_fail("close_range");
}

static void check_tls(void)
{
	if (tls_value != TLS_VALUE)
		fail("tls", "__thread value %#llx, expected %#llx",
		     (unsigned long long)tls_value, TLS_VALUE);
	else if (tls_initialised != TLS_INIT)
		fail("tls", "initialised __thread value %#llx, expected %#llx",
		     (unsigned long long)tls_initialised, TLS_INIT);
	else
		ok("tls");
}

static void check_rseq(void)
{
	struct rseq *rs = rseq_area();
	int cpu = sched_getcpu();
	int reg;
	cpu_set_t orig, one;
	unsigned target;
	long nr_cpus = sysconf(_SC_NPROCESSORS_CONF);

	if (cpu < 0) {
		fail("rseq", "sched_getcpu() = %d", cpu);
		return;
	}
	if ((int)rs->cpu_id != cpu) {
		fail("rseq", "rseq cpu_id %d != sched_getcpu() %d", (int)rs->cpu_id, cpu);
		return;
	}
	reg = rseq_registered();
	if (reg != 0) {
		fail("rseq", "the glibc rseq area is not registered with the kernel (%s)",
		     reg < 0 ? "re-registration succeeded" : strerror(reg));
		return;
	}
	/*
	 * A stale area would still hold the cpu it was dumped on: move to
	 * another allowed cpu and require the kernel to update cpu_id.
	 */
	if (sched_getaffinity(0, sizeof(orig), &orig) != 0) {
		fail("rseq", "sched_getaffinity: %s", strerror(errno));
		return;
	}
	target = (unsigned)cpu;
	for (long c = 0; c < nr_cpus && c < CPU_SETSIZE; c++)
		if (c != cpu && CPU_ISSET(c, &orig)) {
			target = (unsigned)c;
			break;
		}
	CPU_ZERO(&one);
	CPU_SET(target, &one);
	if (sched_setaffinity(0, sizeof(one), &one) != 0) {
		fail("rseq", "sched_setaffinity(cpu %u): %s", target, strerror(errno));
		return;
	}
	{
		unsigned now_cpu = ~0u;
		int rs_cpu = (int)rs->cpu_id;
		int glibc_cpu = sched_getcpu();

		syscall(SYS_getcpu, &now_cpu, NULL, NULL);
		sched_setaffinity(0, sizeof(orig), &orig);
		if (now_cpu != target || rs_cpu != (int)target || glibc_cpu != (int)target) {
			fail("rseq", "after moving to cpu %u: getcpu %u, rseq cpu_id %d, sched_getcpu %d",
			     target, now_cpu, rs_cpu, glibc_cpu);
			return;
		}
	}
	ok("rseq");
}

static void check_malloc_brk(void)
{
	unsigned char **blocks;
	long brk_now = syscall(SYS_brk, 0);
	void *top;

	for (size_t b = 0; b < PRE_BLOCKS; b++)
		for (size_t i = 0; i < PRE_BLOCK_SIZE; i++)
			if (pre_blocks[b][i] != pre_byte(b, i)) {
				fail("malloc_brk", "block %zu byte %zu changed", b, i);
				return;
			}
	if (brk_now != brk_kernel_before) {
		fail("malloc_brk", "kernel brk %#lx, expected %#lx", brk_now, brk_kernel_before);
		return;
	}
	blocks = calloc(POST_BLOCKS, sizeof(*blocks));
	if (!blocks) {
		fail("malloc_brk", "calloc failed");
		return;
	}
	for (size_t b = 0; b < POST_BLOCKS; b++) {
		blocks[b] = malloc(POST_BLOCK_SIZE);
		if (!blocks[b]) {
			fail("malloc_brk", "malloc %zu failed", b);
			return;
		}
		for (size_t i = 0; i < POST_BLOCK_SIZE; i++)
			blocks[b][i] = post_byte(b, i);
	}
	top = sbrk(0);
	if ((char *)top <= (char *)brk_libc_before) {
		fail("malloc_brk", "sbrk(0) %p did not grow past %p", top, brk_libc_before);
		return;
	}
	if (syscall(SYS_brk, 0) != (long)top) {
		fail("malloc_brk", "kernel brk %#lx != sbrk(0) %p", syscall(SYS_brk, 0), top);
		return;
	}
	for (size_t b = 0; b < POST_BLOCKS; b++)
		for (size_t i = 0; i < POST_BLOCK_SIZE; i++)
			if (blocks[b][i] != post_byte(b, i)) {
				fail("malloc_brk", "new block %zu byte %zu reads back wrong", b, i);
				return;
			}
	for (size_t b = 0; b < POST_BLOCKS; b++)
		free(blocks[b]);
	free(blocks);
	ok("malloc_brk");
}

static void check_signal_handler(void)
{
	struct sigaction cur;

	if (sigaction(SIGUSR1, NULL, &cur) != 0) {
		fail("signal_handler", "sigaction query: %s", strerror(errno));
		return;
	}
	if (cur.sa_sigaction != usr1_handler ||
	    (cur.sa_flags & (SA_SIGINFO | SA_ONSTACK)) != (SA_SIGINFO | SA_ONSTACK)) {
		fail("signal_handler", "SIGUSR1 disposition lost (handler %p, flags %#x)",
		     (void *)cur.sa_sigaction, (unsigned)cur.sa_flags);
		return;
	}
	raise(SIGUSR1);
	if (usr1_count != 1)
		fail("signal_handler", "handler ran %d times, expected 1", (int)usr1_count);
	else if (!usr1_on_altstack)
		fail("signal_handler", "handler did not run on the alternate stack");
	else
		ok("signal_handler");
}

static void check_signal_mask(void)
{
	sigset_t cur;

	if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
		fail("signal_mask", "sigprocmask: %s", strerror(errno));
	else if (sigismember(&cur, SIGUSR2) != 1)
		fail("signal_mask", "SIGUSR2 is no longer blocked");
	else if (sigismember(&cur, SIGUSR1) != 0)
		fail("signal_mask", "SIGUSR1 became blocked");
	else
		ok("signal_mask");
}

static void check_sigaltstack(void)
{
	stack_t old;

	if (sigaltstack(NULL, &old) != 0)
		fail("sigaltstack", "sigaltstack: %s", strerror(errno));
	else if (old.ss_sp != altstack || old.ss_size != sizeof(altstack))
		fail("sigaltstack", "ss_sp %p ss_size %zu, expected %p %zu", old.ss_sp,
		     old.ss_size, (void *)altstack, sizeof(altstack));
	else if (old.ss_flags & SS_DISABLE)
		fail("sigaltstack", "alternate stack disabled");
	else
		ok("sigaltstack");
}

static void check_file_mapping(void)
{
	unsigned char *now;
	size_t got = 0;
	int fd;

	if (memcmp(data_map, data_first, data_first_len) != 0) {
		fail("file_mapping", "first %zu mapped bytes changed", data_first_len);
		return;
	}
	now = malloc(data_len);
	fd = open(data_path, O_RDONLY | O_CLOEXEC);
	if (!now || fd < 0) {
		fail("file_mapping", "reopen %s: %s", data_path, strerror(errno));
		return;
	}
	while (got < data_len) {
		ssize_t n = read(fd, now + got, data_len - got);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (got != data_len)
		fail("file_mapping", "%s is now %zu bytes, mapped %zu", data_path, got, data_len);
	else if (memcmp(now, data_map, data_len) != 0)
		fail("file_mapping", "mapping differs from the content of %s", data_path);
	else
		ok("file_mapping");
	free(now);
}

/* The mapping is still backed by DATAFILE (not an anonymous copy). */
static void check_file_mapping_backed(void)
{
	FILE *maps = fopen("/proc/self/maps", "re");
	char line[4096];
	struct stat st;
	int found = 0;

	if (!maps || stat(data_path, &st) != 0) {
		fail("file_mapping_backed", "open /proc/self/maps or stat %s: %s", data_path,
		     strerror(errno));
		if (maps)
			fclose(maps);
		return;
	}
	while (fgets(line, sizeof(line), maps)) {
		unsigned long start, end, ino;
		unsigned major, minor;

		if (sscanf(line, "%lx-%lx %*s %*x %x:%x %lu", &start, &end, &major, &minor,
			   &ino) != 5)
			continue;
		if (start == (unsigned long)data_map) {
			found = 1;
			if (ino != st.st_ino)
				fail("file_mapping_backed", "mapping at %#lx is inode %lu, %s is %lu",
				     start, ino, data_path, (unsigned long)st.st_ino);
			else
				ok("file_mapping_backed");
			break;
		}
	}
	fclose(maps);
	if (!found)
		fail("file_mapping_backed", "no mapping starts at %p", (void *)data_map);
}

static void check_static_counter(void)
{
	if (static_counter != COUNTER_VALUE)
		fail("static_counter", "%u, expected %u", static_counter, COUNTER_VALUE);
	else
		ok("static_counter");
}

static void check_heap_pattern(void)
{
	for (size_t i = 0; i < HEAP_BUF_SIZE; i++)
		if (heap_buf[i] != heap_byte(i)) {
			fail("heap_pattern", "byte %zu is %#x, expected %#x", i, heap_buf[i],
			     heap_byte(i));
			return;
		}
	ok("heap_pattern");
}

static long long ns(const struct timespec *t)
{
	return (long long)t->tv_sec * 1000000000LL + t->tv_nsec;
}

/*
 * clock_gettime must be served by the vDSO: a seccomp filter makes the
 * clock_gettime syscall fail with ENOSYS (so the check reports instead of
 * dying). The filter stays installed, so this check runs last.
 */
static void check_vdso_clock(void)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clock_gettime, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {
		.len = sizeof(code) / sizeof(code[0]),
		.filter = code,
	};
	struct timespec m1, m2, r;
	struct timespec pause = { 0, 2000000 };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
		fail("vdso_clock", "install seccomp filter: %s", strerror(errno));
		return;
	}
	/* The filter works: the raw syscall is refused. */
	if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &m1) != -1 || errno != ENOSYS) {
		fail("vdso_clock", "seccomp filter did not refuse the clock_gettime syscall");
		return;
	}
	if (clock_gettime(CLOCK_MONOTONIC, &m1) != 0) {
		fail("vdso_clock", "clock_gettime(CLOCK_MONOTONIC) needed the syscall: %s",
		     strerror(errno));
		return;
	}
	nanosleep(&pause, NULL);
	if (clock_gettime(CLOCK_MONOTONIC, &m2) != 0) {
		fail("vdso_clock", "second clock_gettime(CLOCK_MONOTONIC): %s", strerror(errno));
		return;
	}
	if (clock_gettime(CLOCK_REALTIME, &r) != 0) {
		fail("vdso_clock", "clock_gettime(CLOCK_REALTIME) needed the syscall: %s",
		     strerror(errno));
		return;
	}
	if (ns(&m2) - ns(&m1) < 1000000) {
		fail("vdso_clock", "CLOCK_MONOTONIC advanced %lld ns over a 2 ms sleep (stale vvar?)",
		     ns(&m2) - ns(&m1));
		return;
	}
	if (ns(&r) < ns(&realtime_before)) {
		fail("vdso_clock", "CLOCK_REALTIME went back %lld ns across the stop",
		     ns(&realtime_before) - ns(&r));
		return;
	}
	ok("vdso_clock");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DATAFILE\n", argv[0]);
		return 2;
	}
	data_path = argv[1];
	setup();

	kill(getpid(), SIGSTOP);

	check_tls();
	check_rseq();
	check_malloc_brk();
	check_signal_handler();
	check_signal_mask();
	check_sigaltstack();
	check_file_mapping();
	check_file_mapping_backed();
	check_static_counter();
	check_heap_pattern();
	check_vdso_clock();
	return failures ? 1 : 0;
}
