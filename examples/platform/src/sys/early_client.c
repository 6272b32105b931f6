/*
 * `faas sandbox run` through a running `faas sandbox serve`, at the
 * executable's entry point: before the C library and the Rust runtime
 * start.
 *
 * Why here: a command handed to the daemon is two process starts, this
 * one and the sandboxed program's, and on a virtual machine most of a
 * start is the C library's: glibc probes the CPU with some 70 `cpuid`
 * instructions, each a trap to the hypervisor (~5 us on the 2-vCPU VM
 * of BENCHMARKS.md), then Rust's runtime sets itself up. None of it is
 * needed to pass a command line and three fds over a socket. runc's
 * `nsexec` runs before the Go runtime for a like reason.
 *
 * `faas_entry` is the executable's entry (`-e faas_entry`, see
 * build.rs). It calls `faas_early` with the initial stack (argc, argv,
 * envp); when that returns, nothing has changed but a socket opened and
 * closed, and `_start` (the C library's entry) runs as if it had been
 * first. `faas_early` returns unless the command is `faas sandbox run`
 * without `--no-daemon`/`--no-cgroups`, its stdin is not a terminal,
 * and a daemon answers; then it exits with the command's status.
 *
 * The rules for code that runs before the C library: no calls outside
 * this file (the build links this object alone to prove it: no
 * `memcpy` a compiler might emit, no stack protector that would read an
 * unset thread pointer), no errno, no thread-local storage, system calls
 * by hand. The compiler flags are in build.rs.
 *
 * The protocol (the daemon's side: `src/cli_sandbox.rs`): one
 * SOCK_SEQPACKET connection per command. The request is one datagram,
 *     "faas-run 1\0" CWD "\0" ARG "\0" ARG "\0" ...
 * (the working directory, then every argument after `run`) with fds 0,
 * 1 and 2 attached (SCM_RIGHTS). The answer is one datagram: "F" (the
 * daemon does not take this command line: a parse error, `--help`; the
 * client goes on into `main`, which sets the sandbox up itself or prints
 * clap's message) or "X", the exit code as 4 bytes little-endian, and
 * the text to print on stderr.
 */

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__)
enum {
	NR_write = 1, NR_close = 3, NR_rt_sigaction = 13, NR_ioctl = 16, NR_socket = 41,
	NR_connect = 42, NR_recvfrom = 45, NR_sendmsg = 46, NR_getcwd = 79,
	NR_exit_group = 231,
};

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

/*
 * The kernel leaves argc at (%rsp) and %rdx = the function for atexit
 * (0 for a static executable, the loader's for a dynamic one). Both are
 * as they were when `_start` runs.
 */
__asm__(".text\n"
	".globl faas_entry\n"
	".type faas_entry,@function\n"
	"faas_entry:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	push %rdx\n"
	"	push %rdi\n"
	"	call faas_early\n"
	"	pop %rdi\n"
	"	pop %rdx\n"
	"	mov %rdi, %rsp\n"
	"	jmp _start\n"
	".size faas_entry, .-faas_entry\n");

#elif defined(__aarch64__)
enum {
	NR_write = 64, NR_close = 57, NR_rt_sigaction = 134, NR_ioctl = 29, NR_socket = 198,
	NR_connect = 203, NR_recvfrom = 207, NR_sendmsg = 211, NR_getcwd = 17,
	NR_exit_group = 94,
};

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;
	__asm__ volatile("svc #0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory");
	return x0;
}

/* x0 = the function for atexit; sp = argc. x19, x20 survive the call. */
__asm__(".text\n"
	".globl faas_entry\n"
	".type faas_entry,%function\n"
	"faas_entry:\n"
	"	mov x19, x0\n"
	"	mov x20, sp\n"
	"	mov x0, sp\n"
	"	bl faas_early\n"
	"	mov sp, x20\n"
	"	mov x0, x19\n"
	"	b _start\n"
	".size faas_entry, .-faas_entry\n");

#else
#error "faas_entry: no entry for this architecture (build.rs builds this file only for x86_64 and aarch64)"
#endif

#define sys3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

enum {
	AF_UNIX = 1, SOCK_SEQPACKET = 5, SOCK_CLOEXEC = 02000000,
	SOL_SOCKET = 1, SCM_RIGHTS = 1, MSG_NOSIGNAL = 0x4000,
	EINTR = 4, SIGPIPE = 13, TCGETS = 0x5401,
};

struct iovec_ {
	void *base;
	size_t len;
};

struct msghdr_ {
	void *name;
	uint32_t namelen;
	struct iovec_ *iov;
	size_t iovlen;
	void *control;
	size_t controllen;
	int flags;
};

struct sockaddr_un_ {
	uint16_t family;
	char path[108];
};

/* A cmsghdr and three fds, padded as CMSG_SPACE(3 * sizeof(int)). */
struct rights {
	size_t len;
	int level;
	int type;
	int fds[3];
	int pad;
};

static const char tag[] = "faas-run 1"; /* sent with its NUL */
static const char default_socket[] = "/run/faas/sandbox.sock";

/* The request, then the answer. In .bss: the kernel maps it zeroed. */
static char buf[64 * 1024];

static int eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/* The value of `name` in `envp`, or 0. */
static const char *env(char **envp, const char *name)
{
	for (; *envp; envp++) {
		const char *e = *envp, *n = name;
		while (*n && *e == *n)
			e++, n++;
		if (!*n && *e == '=')
			return e + 1;
	}
	return 0;
}

static size_t len(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static void put(const char *s, size_t n)
{
	while (n > 0) {
		long w = sys3(NR_write, 2, s, n);
		if (w == -EINTR)
			continue;
		if (w <= 0)
			return;
		s += w, n -= (size_t)w;
	}
}

static void puts_(const char *s)
{
	put(s, len(s));
}

static __attribute__((noreturn)) void exit_(int code)
{
	for (;;)
		sys3(NR_exit_group, code, 0, 0);
}

/* "faas: sandbox daemon at PATH" + `what`, on stderr; exits 1. */
static __attribute__((noreturn)) void fail(const char *path, const char *what, long err)
{
	char num[24];
	int i = sizeof num;
	puts_("faas: sandbox daemon at ");
	puts_(path);
	puts_(what);
	if (err < 0) {
		unsigned long e = (unsigned long)-err;
		num[--i] = 0;
		do
			num[--i] = (char)('0' + e % 10), e /= 10;
		while (e && i > 0);
		puts_(" (errno ");
		puts_(num + i);
		puts_(")");
	}
	puts_("\n");
	exit_(1);
}

/*
 * Appends `n` bytes of `s` to the request at `*at`; 0 when they do not
 * fit (the command line is too long for a datagram: `main` runs it).
 */
static int append(size_t *at, const char *s, size_t n)
{
	if (n > sizeof buf - *at)
		return 0;
	for (size_t i = 0; i < n; i++)
		buf[*at + i] = s[i];
	*at += n;
	return 1;
}

__attribute__((used, visibility("hidden"))) void faas_early(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;

	if (argc < 3 || !eq(argv[1], "sandbox") || !eq(argv[2], "run"))
		return;
	for (long i = 3; i < argc && !eq(argv[i], "--"); i++)
		if (eq(argv[i], "--no-daemon") || eq(argv[i], "--no-cgroups"))
			return;

	/*
	 * A terminal on stdin: the command may read it (a shell, an editor),
	 * which a process of the daemon cannot: it is not in the terminal's
	 * foreground process group. `main` runs it as this process's child.
	 */
	char termios[64];
	if (sys3(NR_ioctl, 0, TCGETS, termios) == 0)
		return;

	const char *path = env(envp, "FAAS_SANDBOX_SOCKET");
	if (!path || !*path)
		path = default_socket;
	struct sockaddr_un_ addr;
	size_t plen = len(path);
	if (plen >= sizeof addr.path)
		return;
	addr.family = AF_UNIX;
	for (size_t i = 0; i <= plen; i++)
		addr.path[i] = path[i];

	long fd = sys3(NR_socket, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	/* No daemon, a stale socket, another user's: `main` sets it up. */
	if (sys3(NR_connect, fd, &addr, sizeof addr.family + plen + 1) < 0)
		goto back;

	size_t at = 0;
	if (!append(&at, tag, sizeof tag))
		goto back;
	long cwd = sys3(NR_getcwd, buf + at, sizeof buf - at, 0);
	if (cwd <= 0) /* the length with its NUL */
		goto back;
	at += (size_t)cwd;
	for (long i = 3; i < argc; i++)
		if (!append(&at, argv[i], len(argv[i]) + 1))
			goto back;

	struct iovec_ iov = { buf, at };
	struct rights rights = {
		.len = offsetof(struct rights, fds) + 3 * sizeof(int),
		.level = SOL_SOCKET,
		.type = SCM_RIGHTS,
		.fds = { 0, 1, 2 },
	};
	struct msghdr_ msg = {
		.iov = &iov,
		.iovlen = 1,
		.control = &rights,
		.controllen = sizeof rights,
	};
	long sent;
	do
		sent = sys3(NR_sendmsg, fd, &msg, MSG_NOSIGNAL);
	while (sent == -EINTR);
	/* Nothing ran: `main` can still run it. */
	if (sent != (long)at)
		goto back;

	long n;
	do
		n = sys6(NR_recvfrom, fd, (long)buf, sizeof buf, 0, 0, 0);
	while (n == -EINTR);
	if (n == 0)
		fail(path, " went away before the command ended", 0);
	if (n < 0)
		fail(path, ": receiving its answer failed", n);
	if (n == 1 && buf[0] == 'F')
		goto back;
	if (n < 5 || buf[0] != 'X')
		fail(path, ": unreadable answer", 0);
	int32_t code = (int32_t)((uint32_t)(unsigned char)buf[1] |
				 (uint32_t)(unsigned char)buf[2] << 8 |
				 (uint32_t)(unsigned char)buf[3] << 16 |
				 (uint32_t)(unsigned char)buf[4] << 24);
	/* A closed stderr is an error to ignore, not a signal to die of. */
	long ignore[4] = { 1 /* SIG_IGN */, 0, 0, 0 };
	sys6(NR_rt_sigaction, SIGPIPE, (long)ignore, 0, 8, 0, 0);
	put(buf + 5, (size_t)n - 5);
	exit_(code);
back:
	sys3(NR_close, fd, 0, 0);
}
