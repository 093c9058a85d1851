// SPDX-License-Identifier: GPL-2.0
/*
 * nkshadow: run a program with notifier_kmod's two recorders on its address space
 * (shadow.rs): one registered straight with Linux, one a core subscriber through the
 * forwarder.
 *
 *   nkshadow [-t SECONDS] [-T] NAME PROGRAM [ARG...]
 *
 * The child asks to be traced and execs PROGRAM: Linux stops it right after the
 * execve, on its new address space, before it runs an instruction of its own. The
 * parent then attaches the recorders ("attach PID NAME" to /proc/nk_shadow), lets the
 * child go (PTRACE_DETACH), waits for it (killing it after SECONDS, default 300), and
 * asks for the comparison ("report PID EXIT"), which the module prints as a "shadow:"
 * line. -T asks for the teeth run (the core recorder ignores soft-dirty and protection
 * changes: the comparison must then find mismatches). The program's own output goes
 * to /tmp/NAME.out, a summary line (exit status, time, the program's last line) to
 * /tmp/nkshadow.log; only errors are printed.
 *
 * Built static (clang, glibc) by `cargo xtask kmod`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int shadow_cmd(const char *cmd)
{
	int fd = open("/proc/nk_shadow", O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, cmd, strlen(cmd));
	n = n < 0 ? -errno : 0;
	close(fd);
	return (int)n;
}

static void last_line(const char *path, char *out, size_t len)
{
	char line[256];
	FILE *f = fopen(path, "r");

	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		if (line[0] != '\n') {
			line[strcspn(line, "\n")] = 0;
			snprintf(out, len, "%s", line);
		}
	fclose(f);
}

int main(int argc, char **argv)
{
	int timeout = 300, teeth = 0, opt, status, waited = 0, ret;
	char cmd[128], out[96], path[64], tail[200];
	const char *name;
	struct timespec t0, t1;
	FILE *summary;
	pid_t pid;

	while ((opt = getopt(argc, argv, "+t:T")) != -1) {
		if (opt == 't')
			timeout = atoi(optarg);
		else if (opt == 'T')
			teeth = 1;
		else
			return 2;
	}
	if (argc - optind < 2) {
		fprintf(stderr, "usage: nkshadow [-t SECONDS] [-T] NAME PROGRAM [ARG...]\n");
		return 2;
	}
	name = argv[optind];
	snprintf(path, sizeof(path), "/tmp/%s.out", name);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	if (pid < 0) {
		perror("nkshadow: fork");
		return 1;
	}
	if (pid == 0) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL)) {
			perror("nkshadow: PTRACE_TRACEME");
			_exit(126);
		}
		execv(argv[optind + 1], argv + optind + 1);
		perror("nkshadow: execv");
		_exit(127);
	}
	/* Stopped by the SIGTRAP that follows a traced execve. */
	if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) {
		printf("nkshadow: %s: the child did not stop after execve (status %#x)\n", name,
		       status);
		return 1;
	}
	snprintf(cmd, sizeof(cmd), "attach %d %s%s", pid, name, teeth ? " teeth" : "");
	ret = shadow_cmd(cmd);
	if (ret) {
		printf("nkshadow: %s: attach: %s\n", name, strerror(-ret));
		kill(pid, SIGKILL);
		ptrace(PTRACE_DETACH, pid, NULL, NULL);
		waitpid(pid, &status, 0);
		return 1;
	}
	if (ptrace(PTRACE_DETACH, pid, NULL, NULL)) {
		perror("nkshadow: PTRACE_DETACH");
		kill(pid, SIGKILL);
	}
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);

		if (w == pid)
			break;
		if (w < 0) {
			perror("nkshadow: waitpid");
			return 1;
		}
		if (waited == timeout * 10) {
			printf("nkshadow: %s: still running after %d s: killed\n", name, timeout);
			kill(pid, SIGKILL);
		}
		usleep(100000);
		waited++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ret = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	snprintf(cmd, sizeof(cmd), "report %d %d", pid, ret);
	/*
	 * Only errors go to the console: its user output is flushed apart from the
	 * kernel's, and a line of ours could land inside the module's "shadow:" line.
	 * The summary goes to /tmp/nkshadow.log.
	 */
	last_line(path, tail, sizeof(tail));
	snprintf(out, sizeof(out), "%.1f s", (double)(t1.tv_sec - t0.tv_sec) +
		 (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	summary = fopen("/tmp/nkshadow.log", "a");
	if (summary) {
		fprintf(summary, "%s: exit %d after %s; last line: %s\n", name, ret, out, tail);
		fclose(summary);
	}
	ret = shadow_cmd(cmd);
	if (ret) {
		printf("nkshadow: %s: report: %s\n", name, strerror(-ret));
		return 1;
	}
	return 0;
}
