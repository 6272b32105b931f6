/*
 * restore_probe.c: the snapshot target of tests/sandbox_restore.rs.
 *
 * Build: gcc -O1 -static -o restore_probe restore_probe.c   (static glibc:
 * it maps only its own binary, which the snapshot reopens on the host)
 *
 * Usage: restore_probe HOST_PATH
 *
 * On the host it records what it can do there (open HOST_PATH, unshare(0),
 * clone3, its pid), closes every fd above 2 and stops itself with SIGSTOP:
 * the test dumps it then. Restored in a sandbox, it prints one line per
 * property, `KEY VALUE`, the `before_*` ones recorded on the host:
 *
 *   restored 1
 *   pid N                     getpid() (1: pid 1 of a new pid namespace)
 *   before_pid N
 *   host_path OK|ENOENT|...   open(HOST_PATH)
 *   before_host_path ...
 *   root_marker OK|...        open("/restore-root-marker") (only in the
 *                             sandbox's root)
 *   unshare0 OK|EPERM         unshare(0): a no-op the kernel allows, denied
 *   before_unshare0 ...       by every seccomp profile
 *   unshare_newuser ...       unshare(CLONE_NEWUSER)
 *   clone3 EINVAL|ENOSYS      clone3(NULL, 0): EINVAL from the kernel,
 *   before_clone3 ...         ENOSYS from the sandbox's guard filter
 *   socket OK|EPERM|...       socket(AF_INET, SOCK_STREAM)
 *   connect ...               connect to 1.1.1.1:53 (when socket worked)
 *   ifaces lo,...             interfaces in /proc/net/dev
 *   Seccomp N, Seccomp_filters N, NoNewPrivs N
 *                             from /proc/self/status
 *   uid_map INSIDE HOST LEN   first line of /proc/self/uid_map
 *   fds 0,1,2,3               open fds
 *
 * and exits 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *result(long rc)
{
	if (rc >= 0)
		return "OK";
	const char *name = strerrorname_np(errno);
	return name ? name : "E?";
}

static const char *try_open(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	const char *r = result(fd);
	if (fd >= 0)
		close(fd);
	return r;
}

static long clone3_null(void)
{
	return syscall(SYS_clone3, NULL, 0);
}

static ssize_t read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, got = 0;
	if (fd < 0)
		return -1;
	while (got < (ssize_t)len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
		got += n;
	close(fd);
	buf[got] = '\0';
	return got;
}

static void status_field(const char *name)
{
	char text[8192], key[64];
	snprintf(key, sizeof(key), "\n%s:", name);
	if (read_file("/proc/self/status", text, sizeof(text)) < 0) {
		dprintf(1, "%s %s\n", name, result(-1));
		return;
	}
	char *line = strstr(text, key);
	if (!line) {
		dprintf(1, "%s missing\n", name);
		return;
	}
	line += strlen(key);
	while (*line == ' ' || *line == '\t')
		line++;
	dprintf(1, "%s %.*s\n", name, (int)strcspn(line, "\n"), line);
}

static void ifaces(void)
{
	char text[8192], out[1024] = "";
	if (read_file("/proc/net/dev", text, sizeof(text)) < 0) {
		dprintf(1, "ifaces %s\n", result(-1));
		return;
	}
	/* Two header lines, then "  name: counters". */
	char *line = strchr(text, '\n');
	line = line ? strchr(line + 1, '\n') : NULL;
	while (line && line[1]) {
		line++;
		char *colon = strchr(line, ':');
		if (!colon)
			break;
		char *name = line;
		while (*name == ' ')
			name++;
		if (out[0])
			strncat(out, ",", sizeof(out) - strlen(out) - 1);
		strncat(out, name, (size_t)(colon - name) < sizeof(out) - strlen(out) - 1
					   ? (size_t)(colon - name)
					   : sizeof(out) - strlen(out) - 1);
		line = strchr(colon, '\n');
	}
	dprintf(1, "ifaces %s\n", out);
}

static void open_fds(void)
{
	char out[1024] = "";
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		dprintf(1, "fds %s\n", result(-1));
		return;
	}
	struct dirent *e;
	/* In ascending order: the kernel lists them so. */
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
			continue;
		if (out[0])
			strncat(out, ",", sizeof(out) - strlen(out) - 1);
		strncat(out, e->d_name, sizeof(out) - strlen(out) - 1);
	}
	closedir(d);
	dprintf(1, "fds %s\n", out);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: restore_probe HOST_PATH\n");
		return 2;
	}
	const char *host_path = argv[1];
	const char *before_host_path = try_open(host_path);
	const char *before_unshare0 = result(unshare(0));
	const char *before_clone3 = result(clone3_null());
	long before_pid = getpid();

	if (close_range(3, ~0U, 0) != 0) {
		fprintf(stderr, "restore_probe: close_range: %s\n", strerror(errno));
		return 1;
	}
	raise(SIGSTOP);

	dprintf(1, "restored 1\n");
	dprintf(1, "pid %ld\n", (long)getpid());
	dprintf(1, "before_pid %ld\n", before_pid);
	dprintf(1, "host_path %s\n", try_open(host_path));
	dprintf(1, "before_host_path %s\n", before_host_path);
	dprintf(1, "root_marker %s\n", try_open("/restore-root-marker"));
	dprintf(1, "unshare0 %s\n", result(unshare(0)));
	dprintf(1, "before_unshare0 %s\n", before_unshare0);
	dprintf(1, "unshare_newuser %s\n", result(unshare(CLONE_NEWUSER)));
	dprintf(1, "clone3 %s\n", result(clone3_null()));
	dprintf(1, "before_clone3 %s\n", before_clone3);

	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	dprintf(1, "socket %s\n", result(s));
	if (s >= 0) {
		struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(53) };
		inet_pton(AF_INET, "1.1.1.1", &to.sin_addr);
		dprintf(1, "connect %s\n", result(connect(s, (struct sockaddr *)&to, sizeof(to))));
		close(s);
	}
	ifaces();
	{
		/* The nice value: field 19 of /proc/self/stat, after the ")". */
		char st[1024];
		int n = read_file("/proc/self/stat", st, sizeof(st));
		char *p = n < 0 ? NULL : strrchr(st, ')');
		int field = 2;
		while (p && field < 19) {
			p = strchr(p + 1, ' ');
			field++;
		}
		if (p)
			dprintf(1, "nice %d\n", atoi(p + 1));
		else
			dprintf(1, "nice %s\n", result(-1));
	}
	status_field("Seccomp");
	status_field("Seccomp_filters");
	status_field("NoNewPrivs");
	{
		char map[256];
		if (read_file("/proc/self/uid_map", map, sizeof(map)) < 0) {
			dprintf(1, "uid_map %s\n", result(-1));
		} else {
			/* "         0 1000000000          1\n" → "0 1000000000 1" */
			long a, b, c;
			if (sscanf(map, "%ld %ld %ld", &a, &b, &c) == 3)
				dprintf(1, "uid_map %ld %ld %ld\n", a, b, c);
			else
				dprintf(1, "uid_map ?\n");
		}
	}
	open_fds();
	return 0;
}
