// SPDX-License-Identifier: GPL-2.0
/*
 * The C half of notifier_kmod's in-kernel tests (smoke.rs, kbench.rs): what they need
 * of the kernel that Rust cannot call. The core on Linux itself (the platform and the
 * forwarder) is forwarder/forwarder.c.
 */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/kthread.h>
#include <linux/err.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/moduleparam.h>
#include <linux/pid.h>
#include <linux/proc_fs.h>
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

/* ---- The lockdep teeth (smoke.rs) ---- */

/*
 * The lockdep teeth run (`lockdep_teeth=1`, `cargo xtask kmod --lockdep-teeth`): a
 * subscriber's own mutex, taken in its start callback and held across a registration
 * (smoke.rs, lockdep_teeth). Lockdep must report the cycle through the invalidation
 * map; the normal run never sets the parameter.
 */
static int lockdep_teeth;
module_param(lockdep_teeth, int, 0444);
MODULE_PARM_DESC(lockdep_teeth, "run only a scenario lockdep must report (1: through the invalidation map, 2: through get's mutex), then fail to load");
static DEFINE_MUTEX(nk_teeth_mutex);

int nk_lockdep_teeth(void)
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

/* ---- Real programs, shadowed (shadow.rs) ---- */

/*
 * /proc/nk_shadow: nkshadow writes one command per write ("attach PID NAME [teeth]",
 * "report PID EXIT"); shadow.rs carries it out under nk_shadow_mutex.
 */
static DEFINE_MUTEX(nk_shadow_mutex);
static struct proc_dir_entry *nk_shadow_proc;

static ssize_t nk_shadow_write(struct file *f, const char __user *ubuf, size_t n,
			       loff_t *pos)
{
	char buf[128];
	int ret;

	if (n >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, n))
		return -EFAULT;
	buf[n] = 0;
	mutex_lock(&nk_shadow_mutex);
	ret = nk_shadow_cmd(buf, n);
	mutex_unlock(&nk_shadow_mutex);
	return ret ? ret : n;
}

static const struct proc_ops nk_shadow_ops = {
	.proc_write = nk_shadow_write,
};

int nk_shadow_init(void)
{
	nk_shadow_proc = proc_create("nk_shadow", 0200, NULL, &nk_shadow_ops);
	return nk_shadow_proc ? 0 : -ENOMEM;
}

void nk_shadow_fini(void)
{
	if (nk_shadow_proc)
		proc_remove(nk_shadow_proc);
	nk_shadow_proc = NULL;
	mutex_lock(&nk_shadow_mutex);
	nk_shadow_exit();
	mutex_unlock(&nk_shadow_mutex);
}

/* smoke.rs mirrors it as six c_uint fields and asserts the same. */
static_assert(sizeof(struct nk_ref_counts) == 6 * sizeof(unsigned int));
