// SPDX-License-Identifier: GPL-2.0
/*
 * A user process for the in-kernel tests (static, in the initramfs).
 *
 * Without arguments (smoke.rs): it maps and faults in pages at a fixed address, says
 * so, waits for SIGUSR1 from the module, then changes their protection (mprotect),
 * marks them idle through idle page tracking (the kernel then clears their accessed
 * bits, calling clear_young), swaps them out (MADV_PAGEOUT, swap is on a RAM disk),
 * reads them back, and exits. The module watches all of it through its notifier on
 * this process's mm.
 *
 * `nkhelper serve` (harness.c starts it with call_usermodehelper): one address space
 * of the conformance suite. The module maps, faults and unmaps in it from kthreads;
 * what only the process itself can do it asks for through /proc/nk_harness
 * (nkproto.h): mprotect, a reclaim pass, fork, clear_refs, holding a thread in the
 * module. It exits when the module kills it.
 *
 * `nkhelper mrelease PID`: process_mrelease(2) on a dying process (smoke.rs's reap
 * cases); the exit status is the errno.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nkproto.h"

#define BASE ((void *)0x200000000UL) /* smoke.rs: HELPER_BASE */
#define PAGES 4
#define PAGE 4096
/* Enough pages to push ours out of the per-CPU LRU batch onto the LRU. */
#define FILLER 256
/* include/uapi/linux/kernel-page-flags.h */
#define KPF_IDLE 25

/* Mark the page at `p` idle: its frame from pagemap, its bit in page_idle/bitmap. */
static int age(char *p)
{
	uint64_t ent, pfn, bit;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, &ent, 8, (uintptr_t)p / PAGE * 8) != 8) {
		perror("nkhelper: pagemap");
		return -1;
	}
	close(fd);
	pfn = ent & ((1ULL << 55) - 1);
	if (!(ent >> 63) || !pfn) {
		fprintf(stderr, "nkhelper: page %p not present (%llx)\n", p,
			(unsigned long long)ent);
		return -1;
	}
	bit = 1ULL << (pfn % 64);
	fd = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	/* Short (even 0) when the chunk runs past the last frame: ours is still done. */
	if (fd < 0 || pwrite(fd, &bit, 8, pfn / 64 * 8) < 0) {
		perror("nkhelper: page_idle");
		return -1;
	}
	close(fd);
	return 0;
}

/* One reclaim pass (NK_OP_RECLAIM): evict the pages still idle since the last pass. */
static long long reclaim(uintptr_t addr, uintptr_t len)
{
	int pm = open("/proc/self/pagemap", O_RDONLY);
	int idle = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);
	int kpf = open("/proc/kpageflags", O_RDONLY);
	long long evicted = 0;
	uintptr_t a;

	if (pm < 0 || idle < 0 || kpf < 0) {
		evicted = -errno;
		goto out;
	}
	for (a = addr; a < addr + len; a += PAGE) {
		uint64_t ent, pfn, word = 0, flags = 0, bit;

		if (pread(pm, &ent, 8, a / PAGE * 8) != 8) {
			evicted = -EIO;
			break;
		}
		pfn = ent & ((1ULL << 55) - 1);
		if (!(ent >> 63) || !pfn)
			continue; /* not present: nothing to age or evict */
		bit = 1ULL << (pfn % 64);
		/*
		 * Reading the bit re-checks an idle page: the kernel clears the accessed
		 * bits of its mappings and asks the notifiers (clear_young); a use by the
		 * primary or a secondary MMU since it was marked clears the idle flag.
		 * The read returns nothing for the last, partial chunk of frames (the
		 * check is still done), so the verdict is the idle flag itself, from
		 * /proc/kpageflags.
		 */
		if (pread(idle, &word, 8, pfn / 64 * 8) < 0 ||
		    pread(kpf, &flags, 8, pfn * 8) != 8) {
			evicted = -errno;
			break;
		}
		if (flags & (1ULL << KPF_IDLE)) {
			int tries;

			/*
			 * Best effort in the kernel: a page briefly held elsewhere (a per-CPU
			 * LRU batch, a reference in flight) stays. Try a few times.
			 */
			for (tries = 0; tries < 4; tries++) {
				if (madvise((void *)a, PAGE, MADV_PAGEOUT)) {
					evicted = -errno;
					goto out;
				}
				if (pread(pm, &ent, 8, a / PAGE * 8) != 8) {
					evicted = -EIO;
					goto out;
				}
				if (!(ent >> 63)) {
					evicted++;
					break;
				}
				usleep(1000);
			}
		} else if (pwrite(idle, &bit, 8, pfn / 64 * 8) < 0) {
			evicted = -errno;
			break;
		}
	}
out:
	if (pm >= 0)
		close(pm);
	if (idle >= 0)
		close(idle);
	if (kpf >= 0)
		close(kpf);
	return evicted;
}

/* NK_OP_HOLD's thread: held in the module until it lets go. */
static void *hold(void *unused)
{
	int fd = open("/proc/" NK_PROC_NAME, O_RDWR);

	if (fd >= 0 && write(fd, "H", 1) != 1)
		perror("nkhelper: hold");
	return NULL;
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_mrelease
#define SYS_process_mrelease 448
#endif

/*
 * `nkhelper mrelease PID`: process_mrelease(2) on a dying process, which reaps its
 * address space with the OOM reaper's own code (__oom_reap_task_mm: non-blockable
 * invalidations). Exit status: 0, or the errno (EAGAIN: a notifier refused).
 */
static int mrelease(const char *pid)
{
	int fd = syscall(SYS_pidfd_open, atoi(pid), 0);

	if (fd < 0)
		return errno;
	if (syscall(SYS_process_mrelease, fd, 0))
		return errno;
	return 0;
}

/* echo 4 > /proc/self/clear_refs: 0 or -errno. */
static long long clear_soft_dirty(void)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY);
	long long r = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, "4", 1) != 1)
		r = -errno;
	close(fd);
	return r;
}

/* `nkhelper serve`: carry out the module's commands until killed. */
static int serve(void)
{
	int fd = open("/proc/" NK_PROC_NAME, O_RDWR);

	/* Forked children are reaped by the kernel: their exit is all that matters. */
	signal(SIGCHLD, SIG_IGN);
	if (fd < 0) {
		perror("nkhelper: /proc/" NK_PROC_NAME);
		return 1;
	}
	for (;;) {
		struct nk_cmd c;
		long long r;
		ssize_t n = read(fd, &c, sizeof(c));

		if (n != sizeof(c)) {
			if (n < 0 && errno == EINTR)
				continue;
			perror("nkhelper: read command");
			return 1;
		}
		switch (c.op) {
		case NK_OP_PROTECT:
			r = mprotect((void *)(uintptr_t)c.addr, c.len,
				     c.arg ? PROT_READ | PROT_WRITE : PROT_READ) ? -errno : 0;
			break;
		case NK_OP_RECLAIM:
			r = reclaim(c.addr, c.len);
			break;
		case NK_OP_FORK:
			r = fork();
			if (r == 0) {
				/* The child: the module adopts it by its pid. Its own open file. */
				close(fd);
				fd = open("/proc/" NK_PROC_NAME, O_RDWR);
				if (fd < 0)
					return 1;
				continue;
			}
			if (r < 0)
				r = -errno;
			break;
		case NK_OP_PING:
			r = 0;
			break;
		case NK_OP_CLEAR_REFS:
			r = clear_soft_dirty();
			break;
		case NK_OP_HOLD: {
			pthread_t t;

			r = -pthread_create(&t, NULL, hold, NULL);
			break;
		}
		default:
			r = -EINVAL;
		}
		if (write(fd, &r, sizeof(r)) != sizeof(r)) {
			perror("nkhelper: write result");
			return 1;
		}
	}
}

int main(int argc, char **argv)
{
	sigset_t set;
	int sig, i;
	char *p, *q;
	FILE *f;

	if (argc > 1 && !strcmp(argv[1], "serve"))
		return serve();
	if (argc > 2 && !strcmp(argv[1], "mrelease"))
		return mrelease(argv[2]);
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	p = mmap(BASE, PAGES * PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != BASE) {
		perror("nkhelper: mmap");
		return 1;
	}
	for (i = 0; i < PAGES; i++)
		p[i * PAGE] = (char)(i + 1);
	q = mmap(NULL, FILLER * PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (q == MAP_FAILED)
		return 1;
	for (i = 0; i < FILLER; i++)
		q[i * PAGE] = 1;
	f = fopen("/tmp/nkhelper.ready", "w");
	if (!f)
		return 1;
	fclose(f);
	if (sigwait(&set, &sig))
		return 1;
	if (mprotect(p, PAGES * PAGE, PROT_READ)) {
		perror("nkhelper: mprotect");
		return 1;
	}
	if (age(p))
		return 1;
	if (madvise(p, PAGES * PAGE, MADV_PAGEOUT)) {
		perror("nkhelper: madvise");
		return 1;
	}
	for (i = 0; i < PAGES; i++) {
		if (p[i * PAGE] != (char)(i + 1)) {
			fprintf(stderr, "nkhelper: page %d lost its contents\n", i);
			return 1;
		}
	}
	printf("nkhelper: protected, aged, paged out, read back; exiting\n");
	return 0;
}
