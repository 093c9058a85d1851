// SPDX-License-Identifier: GPL-2.0
/*
 * A user process for the in-kernel tests (static, in the initramfs): it maps and
 * faults in pages at a fixed address, says so, waits for SIGUSR1 from the module, then
 * changes their protection (mprotect), marks them idle through idle page tracking
 * (the kernel then clears their accessed bits, calling clear_young), swaps them out
 * (MADV_PAGEOUT, swap is on a RAM disk), reads them back, and exits. The module watches all of it through its
 * notifier on this process's mm.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define BASE ((void *)0x200000000UL) /* smoke.rs: HELPER_BASE */
#define PAGES 4
#define PAGE 4096
/* Enough pages to push ours out of the per-CPU LRU batch onto the LRU. */
#define FILLER 256

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

int main(void)
{
	sigset_t set;
	int sig, i;
	char *p, *q;
	FILE *f;

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
