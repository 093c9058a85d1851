/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The conformance harness's commands to its user processes (nkhelper in `serve`
 * mode), shared by the module (harness.c) and nkhelper.c. A helper reads one
 * `struct nk_cmd` from /proc/nk_harness (blocking until the module posts one for its
 * process), carries it out on its own address space, and writes one `__s64` back.
 */
#ifndef NOTIFIER_KMOD_NKPROTO_H
#define NOTIFIER_KMOD_NKPROTO_H

#include <linux/types.h>

#define NK_PROC_NAME "nk_harness"

enum nk_op {
	/* mprotect(addr, len, arg ? PROT_READ | PROT_WRITE : PROT_READ): 0 or -errno. */
	NK_OP_PROTECT = 1,
	/*
	 * One reclaim pass over [addr, addr + len): each present page whose idle bit
	 * (page_idle) survived since the last pass is swapped out (MADV_PAGEOUT), the
	 * others are marked idle. Returns the pages evicted, or -errno.
	 */
	NK_OP_RECLAIM = 2,
	/* fork(): the child serves the module too. Returns its pid, or -errno. */
	NK_OP_FORK = 3,
	/*
	 * Answer 0. Once a helper answered, it is in its command loop and changes its
	 * address space no more on its own (start-up mprotects, a fork's copy-on-write
	 * breaks of its stack are behind it).
	 */
	NK_OP_PING = 4,
	/*
	 * Write "4" to /proc/self/clear_refs: Linux clears the soft-dirty bits under one
	 * MMU_NOTIFY_SOFT_DIRTY invalidation of [0, ULONG_MAX) (and write-protects the
	 * present pages when built with MEM_SOFT_DIRTY). 0 or -errno.
	 */
	NK_OP_CLEAR_REFS = 5,
	/*
	 * Start a thread that writes one byte to /proc/nk_harness: the module keeps it
	 * there, uninterruptibly, until nk_h_unhold(). A process killed meanwhile is
	 * dying with its mm still attached to that thread, as the OOM reaper and
	 * process_mrelease() want their victims. 0 or -errno.
	 */
	NK_OP_HOLD = 6,
};

struct nk_cmd {
	__u64 op;
	__u64 addr;
	__u64 len;
	__u64 arg;
};

#endif
