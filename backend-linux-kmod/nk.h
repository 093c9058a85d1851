/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the C and Rust halves of notifier_kmod share. The Rust side mirrors
 * `struct nk_mm` (`mm::NkMmHead`) and checks its layout against this one at build
 * time (layout.c).
 */
#ifndef NOTIFIER_KMOD_NK_H
#define NOTIFIER_KMOD_NK_H

#include <linux/mmu_notifier.h>
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

/* What a reference-mode recorder saw (helpers.c; smoke.rs mirrors it). */
struct nk_ref_counts {
	unsigned int starts, ends, releases, young, after_release, events;
};

struct nk_ref;

/* Implemented in C (helpers.c), called from Rust. */
void nk_might_sleep(void);
unsigned int nk_sleep_violations(void);
void nk_non_block_start(void);
void nk_non_block_end(void);
void nk_invalidation_map_acquire(void);
void nk_invalidation_map_release(void);
bool nk_lockdep_teeth(void);
void nk_teeth_lock(void);
void nk_teeth_unlock(void);
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
int nk_touch_user(unsigned long addr);
int nk_helper_pid(void);
struct mm_struct *nk_task_mm(int nr);
int nk_signal(int nr, int sig);
void nk_msleep(unsigned int ms);
struct nk_ref *nk_ref_register(struct mm_struct *mm, unsigned long start, unsigned long end);
void nk_ref_read(struct nk_ref *r, struct nk_ref_counts *out);
void nk_ref_unregister(struct nk_ref *r);
struct nk_refuser;
struct nk_refuser *nk_refuser_register(struct mm_struct *mm);
void nk_refuser_set(struct nk_refuser *r, bool refuse);
void nk_refuser_read(struct nk_refuser *r, unsigned int out[3]);
void nk_refuser_unregister(struct nk_refuser *r);
int nk_run_on_mm(struct mm_struct *mm, void (*fn)(void *), void **args, int n);
struct nk_cbench;
struct nk_cbench *nk_cbench_register(struct mm_struct *mm, int n);
void nk_cbench_unregister(struct nk_cbench *v, struct mm_struct *mm, int n);
u64 nk_zap_loop(unsigned long addr, int iters);

/* The conformance harness (harness_linux.c, used by harness.rs). */
int nk_h_init(void);
const char *nk_h_suite_twin(void);
void nk_h_exit(void);
int nk_h_spawn(void);
struct mm_struct *nk_h_mm(int i);
int nk_h_fork(int i);
void nk_h_teardown(int i);
void nk_h_forget(int i);
long nk_h_map(int i, unsigned long addr, unsigned long len);
long nk_h_unmap(int i, unsigned long addr, unsigned long len);
long nk_h_protect(int i, unsigned long addr, unsigned long len, bool writable);
long nk_h_clear_refs(int i);
long nk_h_hold(int i);
void nk_h_unhold(void);
void nk_h_kill(int i);
long nk_h_mrelease(int i);
long nk_h_reclaim(int i, unsigned long addr, unsigned long len);
long nk_h_pte(int i, unsigned long addr, int mode, u64 *pfn, u64 *gen, bool *writable);
long nk_h_migrate(int i, unsigned long addr);
bool nk_h_can_migrate(void);
bool nk_h_frame_live(u64 pfn, u64 gen);
bool nk_h_get_frame(u64 pfn, u64 gen);
void nk_h_put_frame(u64 pfn, u64 gen);
int nk_h_run_tasks(void (*fn)(void *), void **args, int n);
int nk_h_run_kthread(void (*fn)(void *), void *arg);
void nk_h_yield(void);
void *nk_h_vmalloc(unsigned long size);
void nk_h_vfree(void *p);

#endif
