// SPDX-License-Identifier: GPL-2.0
/*
 * The core on Linux, C half (with srcu.c; the Rust half is platform.rs and mm.rs).
 *
 * 1. The core's Platform in kernel terms, where Rust cannot call the kernel directly:
 *    static inlines and macros (might_sleep, wait_var_event, spin_lock_init with its
 *    lockdep class, ...).
 * 2. The forwarder: one kernel mmu_notifier per mm (mmu_notifier_get/put), whose every
 *    callback goes to the Rust core's address space of that mm (mm.rs).
 *
 * Nothing here is test code: a module that uses the core on Linux copies this
 * directory (examples/core-template).
 */
#include <linux/delay.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/wait_bit.h>
#include <linux/workqueue.h>
#include "forwarder.h"

/* ---- Platform primitives (platform.rs) ---- */

/* Sleepable calls made inside a non_block_start/end region (the suite's C-08 count). */
static atomic_t nk_sleeps_in_non_block = ATOMIC_INIT(0);

void nk_might_sleep(void)
{
#ifdef CONFIG_DEBUG_ATOMIC_SLEEP
	/* The kernel's own check below splats too ("BUG: sleeping function ..."). */
	if (current->non_block_count)
		atomic_inc(&nk_sleeps_in_non_block);
#endif
	might_sleep();
}

unsigned int nk_sleep_violations(void)
{
	return atomic_read(&nk_sleeps_in_non_block);
}

/* With CONFIG_DEBUG_ATOMIC_SLEEP, a might_sleep() inside this region splats. */
void nk_non_block_start(void)
{
	non_block_start();
}

void nk_non_block_end(void)
{
	non_block_end();
}

/*
 * The core's invalidation map, for lockdep (Platform::invalidation_map_acquire and
 * may_wait_for_invalidations): held while an invalidation's callbacks run, and taken
 * and dropped at once by every call that waits for invalidations in flight. A
 * subscriber lock held across such a wait and also taken in a callback closes a cycle
 * lockdep reports, as Linux's own __mmu_notifier_invalidate_range_start_map does for
 * its notifiers. A static object (in the module's data): lockdep keys it by address.
 */
#ifdef CONFIG_LOCKDEP
static struct lockdep_map nk_invalidation_map = {
	.name = "notifier_invalidation"
};
#endif

void nk_invalidation_map_acquire(void)
{
	lock_map_acquire(&nk_invalidation_map);
}

void nk_invalidation_map_release(void)
{
	lock_map_release(&nk_invalidation_map);
}

/*
 * The core's sleeping locks (Platform::sleep_lock_acquired/released): one lockdep map
 * per SleepClass, in its order (notifier_core::SleepClass::index), so that lockdep sees
 * them as it sees a kernel mutex.
 */
#ifdef CONFIG_LOCKDEP
static struct lockdep_map nk_sleep_maps[NK_SLEEP_CLASSES] = {
	{ .name = "notifier_grace_period" },
	{ .name = "notifier_get" },
};
#endif

void nk_sleep_lock_acquire(unsigned int class, bool try_lock)
{
	if (class >= NK_SLEEP_CLASSES)
		return;
	if (try_lock)
		lock_map_acquire_try(&nk_sleep_maps[class]);
	else
		lock_map_acquire(&nk_sleep_maps[class]);
}

void nk_sleep_lock_release(unsigned int class)
{
	if (class < NK_SLEEP_CLASSES)
		lock_map_release(&nk_sleep_maps[class]);
}

unsigned int nk_cpu(void)
{
	return raw_smp_processor_id();
}

void *nk_current(void)
{
	return current;
}

void nk_relax(void)
{
	usleep_range(20, 100);
}

void nk_wait(u32 *word, u32 expected)
{
	/*
	 * Bounded like the hosted platform's: the core loops on its condition, so a
	 * timeout costs a retry, never correctness.
	 */
	wait_var_event_timeout(word, READ_ONCE(*word) != expected, HZ);
}

void nk_wake_all(u32 *word)
{
	/*
	 * wake_up_var() looks for sleepers without a lock: order the caller's store to
	 * *word before that look, pairing with the barrier in prepare_to_wait_event().
	 */
	smp_mb();
	wake_up_var(word);
}

/*
 * One lockdep class per kind of core lock (notifier_core::LockClass, by index), so that
 * lockdep checks the order between kinds and never takes two kinds for one lock.
 * Keys in the module's static data, as lockdep requires.
 */
#define NK_LOCK_CLASSES 4
static struct lock_class_key nk_lock_keys[NK_LOCK_CLASSES];
static const char *const nk_lock_names[NK_LOCK_CLASSES] = {
	"notifier_subscriptions",
	"notifier_export_page",
	"notifier_export_registry",
	"notifier_secondary",
};

void nk_spin_lock_init(spinlock_t *lock, unsigned int class)
{
	spin_lock_init(lock);
	if (class < NK_LOCK_CLASSES)
		lockdep_set_class_and_name(lock, &nk_lock_keys[class], nk_lock_names[class]);
}

void nk_spin_lock(spinlock_t *lock)
{
	spin_lock(lock);
}

void nk_spin_unlock(spinlock_t *lock)
{
	spin_unlock(lock);
}

void *nk_kmalloc(size_t size)
{
	return kmalloc(size, GFP_KERNEL);
}

/*
 * For the forwarder's parking of invalidations, inside invalidate_range_start: never
 * direct reclaim (an allocation that may reclaim there is a lockdep report against
 * __mmu_notifier_invalidate_range_start_map, and reclaim may invalidate this mm).
 * `atomic` (a non-blockable start: the OOM reaper freeing memory) may use the
 * reserves.
 */
void *nk_kmalloc_nowait(size_t size, bool atomic)
{
	return kmalloc(size, (atomic ? GFP_ATOMIC : GFP_NOWAIT) | __GFP_NOWARN);
}

/* The forwarder's overflow list lock: a lockdep class of its own. */
void nk_park_lock_init(spinlock_t *lock)
{
	spin_lock_init(lock);
}

void nk_kfree(void *p)
{
	kfree(p);
}

/* ---- The forwarder ---- */

static struct workqueue_struct *nk_wq;

static inline struct nk_mm *to_nk(struct mmu_notifier *mn)
{
	return container_of(mn, struct nk_mm, mn);
}

static const struct mmu_notifier_ops nk_end_ops;

/*
 * Called by mmu_notifier_get_locked() under the mmap write lock, right before it
 * registers `mn`: the end half goes on the list first (each registration takes
 * mm_take_all_locks, so no invalidation runs between it and its list update).
 */
static struct mmu_notifier *nk_alloc_notifier(struct mm_struct *mm)
{
	struct nk_mm *m = nk_rust_mm_alloc();
	int ret;

	if (!m)
		return ERR_PTR(-ENOMEM);
	m->end_mn.ops = &nk_end_ops;
	ret = __mmu_notifier_register(&m->end_mn, mm);
	if (ret) {
		nk_rust_mm_free(m);
		return ERR_PTR(ret);
	}
	m->end_registered = true;
	return &m->mn;
}

static void nk_free_work(struct work_struct *work)
{
	struct nk_mm *m = container_of(work, struct nk_mm, free_work);

	/* Each waits for its running callbacks; each registration's mmgrab keeps mm. */
	if (m->tlb_registered)
		mmu_notifier_unregister(&m->tlb_mn, m->tlb_mn.mm);
	if (m->end_registered)
		mmu_notifier_unregister(&m->end_mn, m->end_mn.mm);
	nk_rust_mm_free(m);
}

/*
 * Called from an SRCU callback after the last mmu_notifier_put(), where sleeping is
 * not allowed; dropping the core's address space may sleep (it tears down if the mm
 * has not), so the free runs from a work item. nk_exit() waits for both.
 */
static void nk_free_notifier(struct mmu_notifier *mn)
{
	struct nk_mm *m = to_nk(mn);

	INIT_WORK(&m->free_work, nk_free_work);
	queue_work(nk_wq, &m->free_work);
}

static void nk_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	nk_rust_release(to_nk(mn));
}

static int nk_start(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	return nk_rust_start(to_nk(mn), range);
}

static void nk_end(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	nk_rust_end(container_of(mn, struct nk_mm, end_mn), range);
}

static void nk_secondary_tlbs(struct mmu_notifier *mn, struct mm_struct *mm,
			      unsigned long start, unsigned long end)
{
	nk_rust_secondary_tlbs(container_of(mn, struct nk_mm, tlb_mn), start, end);
}

static int nk_clear_flush_young(struct mmu_notifier *mn, struct mm_struct *mm,
				unsigned long start, unsigned long end)
{
	return nk_rust_young(to_nk(mn), NK_CLEAR_FLUSH_YOUNG, start, end);
}

static int nk_clear_young(struct mmu_notifier *mn, struct mm_struct *mm,
			  unsigned long start, unsigned long end)
{
	return nk_rust_young(to_nk(mn), NK_CLEAR_YOUNG, start, end);
}

static int nk_test_young(struct mmu_notifier *mn, struct mm_struct *mm,
			 unsigned long address)
{
	return nk_rust_young(to_nk(mn), NK_TEST_YOUNG, address, address + PAGE_SIZE);
}

static const struct mmu_notifier_ops nk_ops = {
	.release = nk_release,
	.clear_flush_young = nk_clear_flush_young,
	.clear_young = nk_clear_young,
	.test_young = nk_test_young,
	/* No invalidate_range_end here: a start with an end may not fail (above). */
	.invalidate_range_start = nk_start,
	.alloc_notifier = nk_alloc_notifier,
	.free_notifier = nk_free_notifier,
};

static const struct mmu_notifier_ops nk_end_ops = {
	.invalidate_range_end = nk_end,
};

static const struct mmu_notifier_ops nk_tlb_ops = {
	.arch_invalidate_secondary_tlbs = nk_secondary_tlbs,
};

/*
 * The forwarder of `mm`, created on first use; a negative errno on failure. The
 * caller keeps mm_users above zero. Both registrations happen under one hold of the
 * mmap lock, so concurrent first gets register the tlb half once.
 */
long nk_mm_get(struct mm_struct *mm, struct nk_mm **out)
{
	struct mmu_notifier *mn;
	struct nk_mm *m;
	int ret = 0;

	mmap_write_lock(mm);
	mn = mmu_notifier_get_locked(&nk_ops, mm);
	if (IS_ERR(mn)) {
		mmap_write_unlock(mm);
		return PTR_ERR(mn);
	}
	m = to_nk(mn);
	if (!m->tlb_registered) {
		m->tlb_mn.ops = &nk_tlb_ops;
		ret = __mmu_notifier_register(&m->tlb_mn, mm);
		if (!ret)
			m->tlb_registered = true;
	}
	mmap_write_unlock(mm);
	if (ret) {
		mmu_notifier_put(mn);
		return ret;
	}
	*out = m;
	return 0;
}

void nk_mm_put(struct nk_mm *m)
{
	mmu_notifier_put(&m->mn);
}

int nk_init(void)
{
	nk_wq = alloc_workqueue("notifier_kmod", 0, 0);
	return nk_wq ? 0 : -ENOMEM;
}

/* Every forwarder put so far is freed when this returns: the module may go. */
void nk_exit(void)
{
	mmu_notifier_synchronize();
	destroy_workqueue(nk_wq);
}

