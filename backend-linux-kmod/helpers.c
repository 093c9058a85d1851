// SPDX-License-Identifier: GPL-2.0
/*
 * The C half of notifier_kmod.
 *
 * 1. What Rust cannot call: static inlines and macros (might_sleep, wait_var_event,
 *    spin_lock_init with its lockdep class, ...).
 * 2. The forwarder: one kernel mmu_notifier per mm (mmu_notifier_get/put), whose every
 *    callback goes to the Rust core's address space of that mm (mm.rs).
 */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/kthread.h>
#include <linux/err.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/moduleparam.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait_bit.h>
#include <linux/workqueue.h>
#include "nk.h"

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
 * The lockdep teeth run (`lockdep_teeth=1`, `cargo xtask kmod --lockdep-teeth`): a
 * subscriber's own mutex, taken in its start callback and held across a registration
 * (smoke.rs, lockdep_teeth). Lockdep must report the cycle through the invalidation
 * map; the normal run never sets the parameter.
 */
static bool lockdep_teeth;
module_param(lockdep_teeth, bool, 0444);
MODULE_PARM_DESC(lockdep_teeth, "run only the scenario lockdep must report, then fail to load");
static DEFINE_MUTEX(nk_teeth_mutex);

bool nk_lockdep_teeth(void)
{
	return lockdep_teeth;
}

void nk_teeth_lock(void)
{
	mutex_lock(&nk_teeth_mutex);
}

void nk_teeth_unlock(void)
{
	mutex_unlock(&nk_teeth_mutex);
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

/* ---- What the in-kernel tests need ---- */

int nk_touch_user(unsigned long addr)
{
	char c = 1;

	return copy_to_user((void __user *)addr, &c, 1) ? -EFAULT : 0;
}

struct nk_worker {
	struct mm_struct *mm;
	void (*fn)(void *arg);
	void *arg;
	struct completion done;
};

static int nk_worker_fn(void *p)
{
	struct nk_worker *w = p;

	kthread_use_mm(w->mm);
	w->fn(w->arg);
	kthread_unuse_mm(w->mm);
	/* The joiner may free `w` once this returns: touch nothing after it. */
	complete(&w->done);
	return 0;
}

/*
 * Run fn(args[i]) on n kthreads at once, each working in `mm` (kthread_use_mm), and
 * wait for all. The caller keeps `mm` alive. Returns how many could be started; the
 * ones that could not are not run.
 */
int nk_run_on_mm(struct mm_struct *mm, void (*fn)(void *), void **args, int n)
{
	struct nk_worker w[8];
	int i, started = 0;

	if (n > ARRAY_SIZE(w))
		n = ARRAY_SIZE(w);
	for (i = 0; i < n; i++) {
		struct task_struct *t;

		w[i].mm = mm;
		w[i].fn = fn;
		w[i].arg = args[i];
		init_completion(&w[i].done);
		t = kthread_run(nk_worker_fn, &w[i], "notifier_kmod/%d", i);
		if (IS_ERR(t))
			break;
		started++;
	}
	for (i = 0; i < started; i++)
		wait_for_completion(&w[i].done);
	return started;
}

/* The pid of nkhelper, the user process of the process cases (0: skip them). */
static int helper_pid;
module_param(helper_pid, int, 0444);
MODULE_PARM_DESC(helper_pid, "pid of the nkhelper process the tests watch");

int nk_helper_pid(void)
{
	return helper_pid;
}

/* The mm of process `nr` with a user reference (mmput it), or NULL. */
struct mm_struct *nk_task_mm(int nr)
{
	struct task_struct *task;
	struct mm_struct *mm;
	struct pid *pid = find_get_pid(nr);

	if (!pid)
		return NULL;
	task = get_pid_task(pid, PIDTYPE_PID);
	put_pid(pid);
	if (!task)
		return NULL;
	mm = get_task_mm(task);
	put_task_struct(task);
	return mm;
}

int nk_signal(int nr, int sig)
{
	struct pid *pid = find_get_pid(nr);
	int ret;

	if (!pid)
		return -ESRCH;
	ret = kill_pid(pid, sig, 1);
	put_pid(pid);
	return ret;
}

void nk_msleep(unsigned int ms)
{
	msleep(ms);
}

/*
 * Reference mode: a subscriber registered straight with Linux's own implementation
 * (mmu_notifier_register), recording what the core-mode recorder of smoke.rs records,
 * so that the expectations are shown to hold for Linux itself.
 */
struct nk_ref {
	struct mmu_notifier mn;
	unsigned long watch_start, watch_end;
	atomic_t starts, ends, releases, young, after_release, events;
};

static bool nk_ref_covers(struct nk_ref *r, unsigned long start, unsigned long end)
{
	return start <= r->watch_start && end >= r->watch_end;
}

static void nk_ref_live(struct nk_ref *r)
{
	if (atomic_read(&r->releases))
		atomic_inc(&r->after_release);
}

static int nk_ref_start(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	struct nk_ref *r = container_of(mn, struct nk_ref, mn);

	nk_ref_live(r);
	atomic_inc(&r->starts);
	if (nk_ref_covers(r, range->start, range->end))
		atomic_or(1 << range->event, &r->events);
	return 0;
}

static void nk_ref_end(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	struct nk_ref *r = container_of(mn, struct nk_ref, mn);

	nk_ref_live(r);
	atomic_inc(&r->ends);
}

static void nk_ref_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	atomic_inc(&container_of(mn, struct nk_ref, mn)->releases);
}

static int nk_ref_young(struct mmu_notifier *mn, struct mm_struct *mm,
			unsigned long start, unsigned long end)
{
	struct nk_ref *r = container_of(mn, struct nk_ref, mn);

	nk_ref_live(r);
	if (nk_ref_covers(r, start, end))
		atomic_inc(&r->young);
	return 0;
}

static const struct mmu_notifier_ops nk_ref_ops = {
	.release = nk_ref_release,
	.clear_flush_young = nk_ref_young,
	.clear_young = nk_ref_young,
	.invalidate_range_start = nk_ref_start,
	.invalidate_range_end = nk_ref_end,
};

/* Register a reference recorder watching [start, end) of `mm` (caller holds mm_users). */
struct nk_ref *nk_ref_register(struct mm_struct *mm, unsigned long start, unsigned long end)
{
	struct nk_ref *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (!r)
		return NULL;
	r->mn.ops = &nk_ref_ops;
	r->watch_start = start;
	r->watch_end = end;
	if (mmu_notifier_register(&r->mn, mm)) {
		kfree(r);
		return NULL;
	}
	return r;
}

void nk_ref_read(struct nk_ref *r, struct nk_ref_counts *out)
{
	out->starts = atomic_read(&r->starts);
	out->ends = atomic_read(&r->ends);
	out->releases = atomic_read(&r->releases);
	out->young = atomic_read(&r->young);
	out->after_release = atomic_read(&r->after_release);
	out->events = atomic_read(&r->events);
}

/* Unregister (a barrier, like the core's) and free. */
void nk_ref_unregister(struct nk_ref *r)
{
	mmu_notifier_unregister(&r->mn, r->mn.mm);
	kfree(r);
}

/*
 * Reference mode's refusing subscriber for the reaper's non-blockable ranges. Linux
 * lets a notifier refuse only if it has no invalidate_range_end (else it WARNs), so
 * this one has a start and release only.
 */
struct nk_refuser {
	struct mmu_notifier mn;
	atomic_t refuse, refusals, nonblock_starts, releases;
};

static int nk_refuser_start(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	struct nk_refuser *r = container_of(mn, struct nk_refuser, mn);

	if (mmu_notifier_range_blockable(range))
		return 0;
	if (atomic_read(&r->refuse)) {
		atomic_inc(&r->refusals);
		return -EAGAIN;
	}
	atomic_inc(&r->nonblock_starts);
	return 0;
}

static void nk_refuser_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	atomic_inc(&container_of(mn, struct nk_refuser, mn)->releases);
}

static const struct mmu_notifier_ops nk_refuser_ops = {
	.release = nk_refuser_release,
	.invalidate_range_start = nk_refuser_start,
};

/* Register a refusing recorder on `mm` (caller holds mm_users), refusing at first. */
struct nk_refuser *nk_refuser_register(struct mm_struct *mm)
{
	struct nk_refuser *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (!r)
		return NULL;
	r->mn.ops = &nk_refuser_ops;
	atomic_set(&r->refuse, 1);
	if (mmu_notifier_register(&r->mn, mm)) {
		kfree(r);
		return NULL;
	}
	return r;
}

void nk_refuser_set(struct nk_refuser *r, bool refuse)
{
	atomic_set(&r->refuse, refuse);
}

/* out: refusals, accepted non-blockable starts, releases. */
void nk_refuser_read(struct nk_refuser *r, unsigned int out[3])
{
	out[0] = atomic_read(&r->refusals);
	out[1] = atomic_read(&r->nonblock_starts);
	out[2] = atomic_read(&r->releases);
}

void nk_refuser_unregister(struct nk_refuser *r)
{
	mmu_notifier_unregister(&r->mn, r->mn.mm);
	kfree(r);
}

/*
 * The in-kernel measurement (kbench.rs, issue 16): N empty C notifiers, Linux's native
 * path with C callbacks, and a loop of invalidations of one page.
 */
struct nk_cbench {
	struct mmu_notifier mn;
};

static int nk_cbench_start(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	return 0;
}

static void nk_cbench_end(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
}

static const struct mmu_notifier_ops nk_cbench_ops = {
	.invalidate_range_start = nk_cbench_start,
	.invalidate_range_end = nk_cbench_end,
};

/* Register `n` empty notifiers on `mm` (caller holds mm_users); NULL on failure. */
struct nk_cbench *nk_cbench_register(struct mm_struct *mm, int n)
{
	struct nk_cbench *v = kcalloc(n, sizeof(*v), GFP_KERNEL);
	int i;

	if (!v)
		return NULL;
	for (i = 0; i < n; i++) {
		v[i].mn.ops = &nk_cbench_ops;
		if (mmu_notifier_register(&v[i].mn, mm)) {
			while (i--)
				mmu_notifier_unregister(&v[i].mn, mm);
			kfree(v);
			return NULL;
		}
	}
	return v;
}

void nk_cbench_unregister(struct nk_cbench *v, struct mm_struct *mm, int n)
{
	int i;

	for (i = 0; i < n; i++)
		mmu_notifier_unregister(&v[i].mn, mm);
	kfree(v);
}

/*
 * `iters` invalidations of the page at `addr` of the current mm, as MADV_DONTNEED makes
 * them (zap_page_range_single: one MMU_NOTIFY_CLEAR start/end each; the page is not
 * present, so little else happens); the nanoseconds they took, or 0 if `addr` is not
 * mapped.
 */
u64 nk_zap_loop(unsigned long addr, int iters)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	u64 t0, t1;
	int i;

	mmap_read_lock(mm);
	vma = find_vma(mm, addr);
	if (!vma || vma->vm_start > addr) {
		mmap_read_unlock(mm);
		return 0;
	}
	t0 = ktime_get_ns();
	for (i = 0; i < iters; i++)
		zap_page_range_single(vma, addr, PAGE_SIZE, NULL);
	t1 = ktime_get_ns();
	mmap_read_unlock(mm);
	return t1 - t0;
}
