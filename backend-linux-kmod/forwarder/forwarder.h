/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The core on Linux: what the C and Rust halves of the forwarder share (forwarder.c,
 * srcu.c; platform.rs, mm.rs). The Rust side mirrors `struct nk_mm` (`mm::NkMmHead`)
 * and checks its layout against this one at build time (layout.c).
 */
#ifndef NOTIFIER_FORWARDER_H
#define NOTIFIER_FORWARDER_H

#include <linux/mmu_notifier.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

/*
 * The head of the one forwarder per mm. Rust allocates it with its own state after it
 * (`mm::MmState`), so only Rust knows the whole size.
 *
 * Three kernel subscriptions, because Linux ties what a notifier may do to which ops
 * it has (mm/mmu_notifier.c, mn_hlist_invalidate_range_start):
 * - a start that fails with -EAGAIN must not have an end (WARN_ON(ops->
 *   invalidate_range_end)): the refusable start is on `mn`, which has no end;
 * - when any start fails, Linux calls the end of every notifier that has one, and
 *   otherwise the caller's invalidate_range_end does: the end is on `end_mn`, which
 *   has no start, and so gets exactly one end for every start `mn` accepted;
 * - arch_invalidate_secondary_tlbs must be alone on its notifier: `tlb_mn`.
 */
struct nk_mm {
	/* start (no end), the young calls, release; reference-counted (get/put). */
	struct mmu_notifier mn;
	/*
	 * invalidate_range_end only. Registered before `mn` (from alloc_notifier), so an
	 * invalidation that saw `mn`'s start also sees this end; unregistered before the
	 * free.
	 */
	struct mmu_notifier end_mn;
	/* arch_invalidate_secondary_tlbs only. Registered with the first get. */
	struct mmu_notifier tlb_mn;
	/* The free is deferred to process context: see nk_free_notifier(). */
	struct work_struct free_work;
	bool end_registered;
	bool tlb_registered;
};

/* Kinds of young calls forwarded by nk_rust_young(). */
#define NK_CLEAR_FLUSH_YOUNG 0
#define NK_CLEAR_YOUNG 1
#define NK_TEST_YOUNG 2

/* Implemented in Rust (mm.rs). */
struct nk_mm *nk_rust_mm_alloc(void);
void nk_rust_mm_free(struct nk_mm *m);
void nk_rust_release(struct nk_mm *m);
int nk_rust_start(struct nk_mm *m, const struct mmu_notifier_range *range);
void nk_rust_end(struct nk_mm *m, const struct mmu_notifier_range *range);
void nk_rust_secondary_tlbs(struct nk_mm *m, unsigned long start, unsigned long end);
int nk_rust_young(struct nk_mm *m, int kind, unsigned long start, unsigned long end);

/* Implemented in C (forwarder.c, srcu.c), called from Rust (platform.rs, mm.rs). */
void nk_might_sleep(void);
unsigned int nk_sleep_violations(void);
void nk_non_block_start(void);
void nk_non_block_end(void);
void nk_invalidation_map_acquire(void);
void nk_invalidation_map_release(void);
/* The core's sleeping locks, one lockdep map per notifier_core::SleepClass. */
#define NK_SLEEP_CLASSES 2
void nk_sleep_lock_acquire(unsigned int class, bool try_lock);
void nk_sleep_lock_release(unsigned int class);
unsigned int nk_cpu(void);
void *nk_current(void);
void nk_relax(void);
void nk_wait(u32 *word, u32 expected);
void nk_wake_all(u32 *word);
void nk_spin_lock_init(spinlock_t *lock, unsigned int class);
void nk_spin_lock(spinlock_t *lock);
void nk_spin_unlock(spinlock_t *lock);
void *nk_kmalloc(size_t size);
void *nk_kmalloc_nowait(size_t size, bool atomic);
void nk_park_lock_init(spinlock_t *lock);
void nk_kfree(void *p);
long nk_mm_get(struct mm_struct *mm, struct nk_mm **out);
void nk_mm_put(struct nk_mm *m);
int nk_init(void);
void nk_exit(void);

#endif
