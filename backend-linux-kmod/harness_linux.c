// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel half of the conformance harness (harness.rs): address spaces that are
 * real user processes, and the primary-MMU operations the suite asks for, each done
 * by Linux's own code.
 *
 * - An address space is an `nkhelper serve` process started with
 *   call_usermodehelper (a fresh exec'd mm). The module holds a user reference on
 *   its mm (mmget) until teardown.
 * - map / unmap: vm_mmap(MAP_FIXED) / vm_munmap from the calling kthread, which
 *   adopts the mm for the call (kthread_use_mm).
 * - touch / lookup: get_user_pages_remote (lookup with FOLL_NOFAULT: no fault).
 * - protect, reclaim, fork: the process itself, told through /proc/nk_harness
 *   (nkproto.h): mprotect, page_idle ageing + MADV_PAGEOUT, fork.
 * - migrate: migrate_vma_setup/pages/finalize with an ordinary page as destination.
 * - teardown: SIGKILL; once the process's exit dropped its user reference, the
 *   module's mmput is the last one: exit_mmap, mmu_notifier_release, pages freed.
 * - frames: a page's identity for the oracle is a tag the harness writes into the
 *   page (its frame number and a generation) when it first sees the allocation.
 */
#include <linux/completion.h>
#include <linux/cpu.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/highmem.h>
#include <linux/kthread.h>
#include <linux/migrate.h>
#include <linux/moduleparam.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_context.h>
#include <linux/mutex.h>
#include <linux/pagevec.h>
#include <linux/pid.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/debug.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/umh.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include "nk.h"
#include "nkproto.h"

/* Run the suite with a broken consumer (`cargo xtask kmod --broken NAME`). */
static char *suite_twin = "";
module_param(suite_twin, charp, 0444);
MODULE_PARM_DESC(suite_twin, "run the conformance suite with this broken consumer (twin)");

const char *nk_h_suite_twin(void)
{
	return suite_twin ? suite_twin : "";
}

#define NK_SLOTS 32
/* How long a helper may take to answer one command. */
#define NK_CALL_TIMEOUT (60 * HZ)

enum nk_state { NK_IDLE, NK_POSTED, NK_TAKEN, NK_DONE };

/* One address space of the suite: a helper process and its mm. */
struct nk_slot {
	bool used;
	pid_t tgid;
	struct task_struct *task;
	/* With our user reference until teardown, then NULL. */
	struct mm_struct *mm;
	/* The mm_struct itself (mmgrab), for the address-space handle after teardown. */
	struct mm_struct *mm_struct;
	/* One command at a time. */
	struct mutex call;
	enum nk_state state;
	struct nk_cmd cmd;
	s64 res;
	wait_queue_head_t done;
};

static struct nk_slot nk_slots[NK_SLOTS];
/* Guards `used`, `tgid`, `state`, `cmd` and `res` of every slot. */
static DEFINE_SPINLOCK(nk_slots_lock);
/* Helpers wait here for a command (or, just forked, for their slot). */
static DECLARE_WAIT_QUEUE_HEAD(nk_cmd_wait);
static struct proc_dir_entry *nk_proc;

static struct nk_slot *nk_slot(int i)
{
	if (i < 0 || i >= NK_SLOTS || !nk_slots[i].used)
		return NULL;
	return &nk_slots[i];
}

/* ---- /proc/nk_harness: the helpers' side ---- */

/* Take the command posted for process `tgid`, if any. */
static bool nk_take(pid_t tgid, struct nk_cmd *out)
{
	bool got = false;
	int i;

	spin_lock(&nk_slots_lock);
	for (i = 0; i < NK_SLOTS; i++) {
		struct nk_slot *s = &nk_slots[i];

		if (s->used && s->tgid == tgid && s->state == NK_POSTED) {
			*out = s->cmd;
			s->state = NK_TAKEN;
			got = true;
			break;
		}
	}
	spin_unlock(&nk_slots_lock);
	return got;
}

static ssize_t nk_proc_read(struct file *f, char __user *buf, size_t n, loff_t *pos)
{
	struct nk_cmd c;
	int err;

	if (n != sizeof(c))
		return -EINVAL;
	err = wait_event_killable(nk_cmd_wait, nk_take(current->tgid, &c));
	if (err)
		return err;
	if (copy_to_user(buf, &c, sizeof(c)))
		return -EFAULT;
	return sizeof(c);
}

/* Threads held by NK_OP_HOLD, and the generation that lets them go. */
static atomic_t nk_held = ATOMIC_INIT(0);
static unsigned long nk_hold_gen;
static DECLARE_WAIT_QUEUE_HEAD(nk_hold_wait);

/* A one-byte write: hold the writer (uninterruptibly, at most a minute). */
static ssize_t nk_hold(void)
{
	unsigned long gen = READ_ONCE(nk_hold_gen);

	atomic_inc(&nk_held);
	wait_event_timeout(nk_hold_wait, READ_ONCE(nk_hold_gen) != gen, 60 * HZ);
	atomic_dec(&nk_held);
	return 1;
}

static ssize_t nk_proc_write(struct file *f, const char __user *buf, size_t n,
			     loff_t *pos)
{
	s64 r;
	int i;

	if (n == 1)
		return nk_hold();
	if (n != sizeof(r))
		return -EINVAL;
	if (copy_from_user(&r, buf, sizeof(r)))
		return -EFAULT;
	spin_lock(&nk_slots_lock);
	for (i = 0; i < NK_SLOTS; i++) {
		struct nk_slot *s = &nk_slots[i];

		if (s->used && s->tgid == current->tgid && s->state == NK_TAKEN) {
			s->res = r;
			s->state = NK_DONE;
			wake_up(&s->done);
			break;
		}
	}
	spin_unlock(&nk_slots_lock);
	return i < NK_SLOTS ? sizeof(r) : -ESRCH;
}

static const struct proc_ops nk_proc_ops = {
	/*
	 * A stream: no file-position lock. A forked helper shares the open file with its
	 * parent, and a read blocked in one must not hold up (uninterruptibly) the other's
	 * answer or its exit.
	 */
	.proc_open = stream_open,
	.proc_read = nk_proc_read,
	.proc_write = nk_proc_write,
	.proc_lseek = noop_llseek,
};

/* The module's side: post a command to slot `i`'s process and wait for its answer. */
static s64 nk_call(int i, u64 op, u64 addr, u64 len, u64 arg)
{
	struct nk_slot *s = nk_slot(i);
	long left;
	s64 r;

	if (!s || !s->mm)
		return -ESRCH;
	mutex_lock(&s->call);
	spin_lock(&nk_slots_lock);
	s->cmd = (struct nk_cmd){ .op = op, .addr = addr, .len = len, .arg = arg };
	s->state = NK_POSTED;
	spin_unlock(&nk_slots_lock);
	wake_up_all(&nk_cmd_wait);
	left = wait_event_timeout(s->done, READ_ONCE(s->state) == NK_DONE, NK_CALL_TIMEOUT);
	spin_lock(&nk_slots_lock);
	r = s->state == NK_DONE ? s->res : -ETIMEDOUT;
	s->state = NK_IDLE;
	spin_unlock(&nk_slots_lock);
	mutex_unlock(&s->call);
	if (!left) {
		pr_err("notifier_kmod: harness: helper %d did not answer command %llu\n",
		       s->tgid, op);
		sched_show_task(s->task);
	}
	return r;
}

int nk_h_init(void)
{
	int i;

	for (i = 0; i < NK_SLOTS; i++) {
		mutex_init(&nk_slots[i].call);
		init_waitqueue_head(&nk_slots[i].done);
	}
	nk_proc = proc_create(NK_PROC_NAME, 0600, NULL, &nk_proc_ops);
	return nk_proc ? 0 : -ENOMEM;
}

void nk_h_exit(void)
{
	proc_remove(nk_proc);
}

/* ---- Address spaces ---- */

/* Give process `task` (a reference, handed over) with user reference `mm` a slot. */
static int nk_adopt(struct task_struct *task, struct mm_struct *mm)
{
	int i;

	spin_lock(&nk_slots_lock);
	for (i = 0; i < NK_SLOTS; i++) {
		struct nk_slot *s = &nk_slots[i];

		if (!s->used) {
			s->used = true;
			s->tgid = task->tgid;
			s->task = task;
			s->mm = mm;
			s->mm_struct = mm;
			mmgrab(mm);
			s->state = NK_IDLE;
			break;
		}
	}
	spin_unlock(&nk_slots_lock);
	if (i == NK_SLOTS) {
		send_sig(SIGKILL, task, 1);
		put_task_struct(task);
		mmput(mm);
		return -ENOSPC;
	}
	/* A just-forked child may already wait for its slot. */
	wake_up_all(&nk_cmd_wait);
	return i;
}

static int nk_ready(int i);

static int nk_umh_init(struct subprocess_info *info, struct cred *new)
{
	struct task_struct **task = info->data;

	get_task_struct(current);
	*task = current;
	return 0;
}

/* A new address space: `nkhelper serve`, exec'd. Returns its slot or -errno. */
int nk_h_spawn(void)
{
	static char *envp[] = { "HOME=/", "PATH=/bin", NULL };
	char *argv[] = { "/bin/nkhelper", "serve", NULL };
	struct subprocess_info *info;
	struct task_struct *task = NULL;
	struct mm_struct *mm;
	int ret;

	info = call_usermodehelper_setup(argv[0], argv, envp, GFP_KERNEL, nk_umh_init,
					 NULL, &task);
	if (!info)
		return -ENOMEM;
	/* Returns once the exec succeeded: the process has its own new mm. */
	ret = call_usermodehelper_exec(info, UMH_WAIT_EXEC);
	if (ret) {
		if (task)
			put_task_struct(task);
		return ret < 0 ? ret : -ECHILD;
	}
	if (!task)
		return -ECHILD;
	mm = get_task_mm(task);
	if (!mm) {
		put_task_struct(task);
		return -ESRCH;
	}
	return nk_ready(nk_adopt(task, mm));
}

/* The mm_struct of slot `i` (valid until nk_h_forget), or NULL. */
struct mm_struct *nk_h_mm(int i)
{
	struct nk_slot *s = nk_slot(i);

	return s ? s->mm_struct : NULL;
}

/*
 * Slot `i` (or an error, passed on) once its process answers: quiet from then on.
 * A process that does not answer is killed and forgotten.
 */
static int nk_ready(int i)
{
	s64 r;

	if (i < 0)
		return i;
	r = nk_call(i, NK_OP_PING, 0, 0, 0);
	if (r) {
		nk_h_forget(i);
		return r < 0 ? r : -EPROTO;
	}
	return i;
}

/* Fork slot `i`'s process: the child is a new address space. Slot or -errno. */
int nk_h_fork(int i)
{
	int child;

	struct task_struct *task;
	struct mm_struct *mm;
	struct pid *pid;
	s64 r = nk_call(i, NK_OP_FORK, 0, 0, 0);

	if (r <= 0)
		return r < 0 ? r : -ECHILD;
	pid = find_get_pid(r);
	if (!pid)
		return -ESRCH;
	task = get_pid_task(pid, PIDTYPE_PID);
	put_pid(pid);
	if (!task)
		return -ESRCH;
	mm = get_task_mm(task);
	if (!mm) {
		put_task_struct(task);
		return -ESRCH;
	}
	child = nk_ready(nk_adopt(task, mm));
	/* The parent broke copy-on-write on its own stack answering: wait for that too. */
	if (child >= 0 && nk_call(i, NK_OP_PING, 0, 0, 0)) {
		nk_h_forget(child);
		return -EPROTO;
	}
	return child;
}

/*
 * Exit: kill the process; once its exit dropped its user reference, ours is the
 * last, and mmput runs exit_mmap here: mmu_notifier_release, then every page is
 * unmapped and freed before this returns.
 */
void nk_h_teardown(int i)
{
	struct nk_slot *s = nk_slot(i);
	struct mm_struct *mm;
	int waited = 0;

	if (!s || !s->mm)
		return;
	mutex_lock(&s->call);
	mm = s->mm;
	send_sig(SIGKILL, s->task, 1);
	while (atomic_read(&mm->mm_users) > 1 && waited < 10000) {
		msleep(1);
		waited++;
	}
	if (atomic_read(&mm->mm_users) > 1)
		pr_err("notifier_kmod: harness: slot %d: process %d (state %#x, exit %#x, mm %p) still leaves %d users on its mm after 10 s\n",
		       i, s->tgid, READ_ONCE(s->task->__state), READ_ONCE(s->task->exit_state),
		       READ_ONCE(s->task->mm), atomic_read(&mm->mm_users));
	if (atomic_read(&mm->mm_users) > 1)
		sched_show_task(s->task);
	s->mm = NULL;
	mutex_unlock(&s->call);
	mmput(mm);
}

/* Forget slot `i` (after teardown). */
void nk_h_forget(int i)
{
	struct nk_slot *s = nk_slot(i);
	struct task_struct *task;
	struct mm_struct *mm;

	if (!s)
		return;
	nk_h_teardown(i);
	spin_lock(&nk_slots_lock);
	task = s->task;
	mm = s->mm_struct;
	s->task = NULL;
	s->mm_struct = NULL;
	s->tgid = 0;
	s->used = false;
	spin_unlock(&nk_slots_lock);
	put_task_struct(task);
	mmdrop(mm);
}

/* ---- Primary-MMU operations ---- */

/* Run with the calling kthread in slot `i`'s mm: the syscalls' code uses current->mm. */
static struct mm_struct *nk_use(int i)
{
	struct nk_slot *s = nk_slot(i);

	if (!s || !s->mm)
		return ERR_PTR(-ESRCH);
	/* kthread_use_mm is for kthreads without an mm of their own. */
	if (!(current->flags & PF_KTHREAD) || current->mm)
		return ERR_PTR(-EPERM);
	kthread_use_mm(s->mm);
	return s->mm;
}

long nk_h_map(int i, unsigned long addr, unsigned long len)
{
	struct mm_struct *mm = nk_use(i);
	unsigned long r;

	if (IS_ERR(mm))
		return PTR_ERR(mm);
	r = vm_mmap(NULL, addr, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, 0);
	kthread_unuse_mm(mm);
	if (IS_ERR_VALUE(r))
		return (long)r;
	return r == addr ? 0 : -EADDRNOTAVAIL;
}

long nk_h_unmap(int i, unsigned long addr, unsigned long len)
{
	struct mm_struct *mm = nk_use(i);
	int r;

	if (IS_ERR(mm))
		return PTR_ERR(mm);
	r = vm_munmap(addr, len);
	kthread_unuse_mm(mm);
	return r;
}

long nk_h_protect(int i, unsigned long addr, unsigned long len, bool writable)
{
	return nk_call(i, NK_OP_PROTECT, addr, len, writable);
}

long nk_h_clear_refs(int i)
{
	return nk_call(i, NK_OP_CLEAR_REFS, 0, 0, 0);
}

/* Have a thread of slot `i`'s process held in the module: 0 once it is, or -errno. */
long nk_h_hold(int i)
{
	int before = atomic_read(&nk_held);
	s64 r = nk_call(i, NK_OP_HOLD, 0, 0, 0);
	int waited;

	if (r)
		return r;
	for (waited = 0; atomic_read(&nk_held) == before && waited < 5000; waited++)
		msleep(1);
	return atomic_read(&nk_held) > before ? 0 : -ETIMEDOUT;
}

/* Let every held thread go. */
void nk_h_unhold(void)
{
	WRITE_ONCE(nk_hold_gen, nk_hold_gen + 1);
	wake_up_all(&nk_hold_wait);
}

/* SIGKILL slot `i`'s process, without waiting for anything. */
void nk_h_kill(int i)
{
	struct nk_slot *s = nk_slot(i);

	if (s && s->task)
		send_sig(SIGKILL, s->task, 1);
}

/*
 * process_mrelease() on slot `i`'s (dying) process, from a user process (`nkhelper
 * mrelease PID`): 0, or -errno (-EAGAIN: a notifier refused a non-blockable range).
 */
long nk_h_mrelease(int i)
{
	static char *envp[] = { "HOME=/", "PATH=/bin", NULL };
	struct nk_slot *s = nk_slot(i);
	char pid[16];
	char *argv[] = { "/bin/nkhelper", "mrelease", pid, NULL };
	int ret;

	if (!s || !s->task)
		return -ESRCH;
	snprintf(pid, sizeof(pid), "%d", s->tgid);
	ret = call_usermodehelper(argv[0], argv, envp, UMH_WAIT_PROC);
	if (ret < 0)
		return ret;
	/* A wait status: the exit code is the errno. */
	return -((ret >> 8) & 0xff);
}

/* Put this CPU's pending LRU additions on the LRU (what lru_add_drain does). */
static long nk_drain_local(void *unused)
{
	struct folio_batch empty;

	/* An empty batch: releasing it only drains this CPU's LRU caches first. */
	folio_batch_init(&empty);
	__folio_batch_release(&empty);
	return 0;
}

/* What lru_add_drain_all does (not exported): every CPU's LRU batches drained. */
static void nk_drain_all(void)
{
	int cpu;

	cpus_read_lock();
	for_each_online_cpu(cpu)
		work_on_cpu(cpu, nk_drain_local, NULL);
	cpus_read_unlock();
}

long nk_h_reclaim(int i, unsigned long addr, unsigned long len)
{
	/*
	 * Freshly faulted pages wait in per-CPU batches before they reach the LRU, and
	 * both idle tracking and MADV_PAGEOUT only see pages on the LRU.
	 */
	nk_drain_all();
	return nk_call(i, NK_OP_RECLAIM, addr, len, 0);
}

/* ---- Frames: the oracle's identity of a page ---- */

#define NK_TAG_MAGIC 0x6e6b2d6672616d65ULL /* "nk-frame" */
#define NK_GEN_ZERO U64_MAX

struct nk_tag {
	u64 key; /* NK_TAG_MAGIC ^ pfn */
	u64 gen;
};

static atomic64_t nk_gens = ATOMIC64_INIT(0);
/* Serialises the stamping of tags (so that two stampers agree on one generation). */
static DEFINE_SPINLOCK(nk_tag_lock);

static struct nk_tag *nk_tag_of(void *kaddr)
{
	return kaddr + PAGE_SIZE - sizeof(struct nk_tag);
}

/*
 * The generation of the allocation behind `page` (we hold a reference): the tag
 * written into the page when the harness first saw this allocation. A page without
 * its own tag (fresh, or a copy of another page made by copy-on-write, migration or
 * swap-in, which carries the other frame's number) gets a new generation.
 */
static u64 nk_identify(struct page *page)
{
	unsigned long pfn = page_to_pfn(page);
	struct nk_tag *t;
	void *k;
	u64 gen;

	if (is_zero_pfn(pfn))
		return NK_GEN_ZERO;
	if (!PageAnon(page))
		return 0;
	k = kmap_local_page(page);
	t = nk_tag_of(k);
	spin_lock(&nk_tag_lock);
	if (READ_ONCE(t->key) != (NK_TAG_MAGIC ^ pfn)) {
		WRITE_ONCE(t->gen, atomic64_inc_return(&nk_gens));
		smp_wmb();
		WRITE_ONCE(t->key, NK_TAG_MAGIC ^ pfn);
	}
	gen = READ_ONCE(t->gen);
	spin_unlock(&nk_tag_lock);
	kunmap_local(k);
	return gen;
}

/*
 * A reference on the folio of `pfn` if it is still the anonymous allocation of
 * generation `gen`; NULL otherwise. Never sleeps (called from notifier callbacks).
 * The reference is speculative, as the kernel's own pfn walkers take it (page_idle):
 * a freed page has no reference to take, and a page reused for something else fails
 * the anon and tag checks.
 */
static struct folio *nk_frame_get(u64 pfn, u64 gen)
{
	struct folio *folio;
	struct page *page;
	struct nk_tag *t;
	bool same;
	void *k;

	if (!pfn_valid(pfn))
		return NULL;
	page = pfn_to_page(pfn);
	folio = page_folio(page);
	if (!folio_try_get(folio))
		return NULL;
	/* Only anon small folios carry tags; never read a slab page (KASAN redzones). */
	if (page_folio(page) != folio || folio_test_slab(folio) || folio_test_large(folio) ||
	    !folio_test_anon(folio)) {
		folio_put(folio);
		return NULL;
	}
	k = kmap_local_page(page);
	t = nk_tag_of(k);
	same = READ_ONCE(t->key) == (NK_TAG_MAGIC ^ pfn);
	smp_rmb();
	same = same && READ_ONCE(t->gen) == gen;
	kunmap_local(k);
	if (!same) {
		folio_put(folio);
		return NULL;
	}
	return folio;
}

/*
 * The oracle, without taking a reference: a reference, even a speculative one, makes
 * a concurrent migration fail (migrate_vma refuses pages with unexpected references),
 * and the suite asks this on every secondary access. The page may be freed under us,
 * so its content is read unchecked by KASAN (READ_ONCE_NOCHECK; the direct map stays
 * mapped), and the reference count is read again after the tag: a page freed between
 * the two reads is not reported live. A page freed and reallocated between them, the
 * new allocation not yet tagged, is a window this check cannot close.
 */
bool nk_h_frame_live(u64 pfn, u64 gen)
{
	struct folio *folio;
	struct page *page;
	struct nk_tag *t;
	u64 key, g;

	if (gen == NK_GEN_ZERO)
		return is_zero_pfn(pfn); /* the shared zero page is never freed */
	if (!pfn_valid(pfn))
		return false;
	page = pfn_to_page(pfn);
	if (page_ref_count(page) <= 0)
		return false;
	folio = page_folio(page);
	if (folio_test_slab(folio) || folio_test_large(folio) || !folio_test_anon(folio))
		return false;
	t = nk_tag_of(page_address(page));
	key = READ_ONCE_NOCHECK(t->key);
	smp_rmb();
	g = READ_ONCE_NOCHECK(t->gen);
	smp_rmb();
	return key == (NK_TAG_MAGIC ^ pfn) && g == gen && page_ref_count(page) > 0;
}

bool nk_h_get_frame(u64 pfn, u64 gen)
{
	if (gen == NK_GEN_ZERO)
		return is_zero_pfn(pfn);
	return nk_frame_get(pfn, gen) != NULL;
}

void nk_h_put_frame(u64 pfn, u64 gen)
{
	if (gen == NK_GEN_ZERO || !pfn_valid(pfn))
		return;
	folio_put(page_folio(pfn_to_page(pfn)));
}

/* get_user_pages_remote of one page; the mmap lock is held by the caller. */
static struct page *nk_gup(struct mm_struct *mm, unsigned long addr, unsigned int flags)
{
	struct page *page;

	if (get_user_pages_remote(mm, addr, 1, flags, &page, NULL) != 1)
		return NULL;
	return page;
}

enum { NK_LOOKUP = 0, NK_TOUCH_READ = 1, NK_TOUCH_WRITE = 2 };

/*
 * The primary entry of `addr`: its frame, generation and whether it is writable.
 * NK_LOOKUP never faults; the touches fault the page in (for writing with
 * NK_TOUCH_WRITE, which breaks copy-on-write). A read touch of a page that is not
 * there yet populates it with a write fault when the mapping is writable: a read
 * fault would map the shared zero page, which is never freed and so gives the oracle
 * nothing to check.
 */
long nk_h_pte(int i, unsigned long addr, int mode, u64 *pfn, u64 *gen, bool *writable)
{
	struct nk_slot *s = nk_slot(i);
	struct vm_area_struct *vma;
	struct mm_struct *mm;
	struct page *page;
	bool w = true;
	long ret = 0;

	if (!s || !s->mm)
		return -ESRCH;
	mm = s->mm;
	mmap_read_lock(mm);
	vma = find_vma(mm, addr);
	if (!vma || vma->vm_start > addr) {
		ret = -EFAULT;
		goto out;
	}
	page = nk_gup(mm, addr, FOLL_NOFAULT | FOLL_WRITE);
	if (!page) {
		w = false;
		page = nk_gup(mm, addr, FOLL_NOFAULT);
	}
	if (mode == NK_LOOKUP) {
		if (!page)
			ret = -ENOENT;
	} else if (!page || (mode == NK_TOUCH_WRITE && !w)) {
		unsigned int flags = 0;

		if (page)
			put_page(page);
		if (mode == NK_TOUCH_WRITE || (!page && (vma->vm_flags & VM_WRITE)))
			flags = FOLL_WRITE;
		page = nk_gup(mm, addr, flags);
		w = flags & FOLL_WRITE;
		if (!page)
			ret = -EFAULT;
	}
	if (page) {
		*pfn = page_to_pfn(page);
		*gen = nk_identify(page);
		*writable = w;
		put_page(page);
	}
out:
	mmap_read_unlock(mm);
	/*
	 * A fresh page waits in this CPU's LRU-addition batch, and a page get_user_pages
	 * marked accessed may wait in its activation batch, each holding a reference: an
	 * unmap would then leave the page allocated until the batch drains, and a stale
	 * translation to it would look live to the oracle. Drain them now.
	 */
	nk_drain_local(NULL);
	return ret;
}

/*
 * Move the page at `addr` to a new frame with the device-migration API
 * (MMU_NOTIFY_MIGRATE): the old frame is freed once nothing else holds it.
 */
long nk_h_migrate(int i, unsigned long addr)
{
#ifdef CONFIG_DEVICE_MIGRATION
	struct nk_slot *s = nk_slot(i);
	unsigned long src = 0, dst = 0;
	struct migrate_vma args = {};
	struct page *spage, *dpage = NULL;
	struct mm_struct *mm;
	long ret;

	if (!s || !s->mm)
		return -ESRCH;
	mm = s->mm;
	/*
	 * A page waiting in a per-CPU batch (a fresh fault's LRU addition, or the
	 * activation a get_user_pages touch queues) holds a reference that makes the
	 * migration fail; migrate_pages() drains them all first as well.
	 */
	nk_drain_all();
	mmap_read_lock(mm);
	args.vma = find_vma(mm, addr);
	if (!args.vma || args.vma->vm_start > addr) {
		ret = -EFAULT;
		goto out;
	}
	args.start = addr;
	args.end = addr + PAGE_SIZE;
	args.src = &src;
	args.dst = &dst;
	args.flags = MIGRATE_VMA_SELECT_SYSTEM;
	ret = migrate_vma_setup(&args);
	if (ret)
		goto out;
	spage = migrate_pfn_to_page(src);
	if (spage && (src & MIGRATE_PFN_MIGRATE)) {
		dpage = alloc_page(GFP_HIGHUSER_MOVABLE);
		if (dpage) {
			lock_page(dpage);
			copy_highpage(dpage, spage);
			dst = migrate_pfn(page_to_pfn(dpage));
		}
	}
	migrate_vma_pages(&args);
	if (!spage)
		/* Not present (none or zero page), or put back: held by someone else. */
		ret = (src & MIGRATE_PFN_MIGRATE) ? -ENOENT : -EBUSY;
	else if (!dpage)
		ret = (src & MIGRATE_PFN_MIGRATE) ? -ENOMEM : -EBUSY;
	else if (!(src & MIGRATE_PFN_MIGRATE))
		ret = -EBUSY; /* held by someone else: the kernel keeps it in place */
	migrate_vma_finalize(&args);
out:
	mmap_read_unlock(mm);
	return ret;
#else
	return -EOPNOTSUPP;
#endif
}

bool nk_h_can_migrate(void)
{
	return IS_ENABLED(CONFIG_DEVICE_MIGRATION);
}

/* ---- Tasks ---- */

struct nk_task {
	void (*fn)(void *arg);
	void *arg;
	/* A larger stack to run fn on (NULL: the kthread's own), NK_BIG_STACK bytes. */
	void *stack;
	struct completion done;
};

/*
 * The suite's stack: its cases keep their secondary MMUs on the stack (the suite
 * allocates nothing), up to 24 KiB in one frame, more than a kthread's THREAD_SIZE
 * (32 KiB with KASAN) leaves once the kernel paths below a case are added.
 */
#define NK_BIG_STACK (256 * 1024)

void nk_call_on_stack(void (*fn)(void *), void *arg, void *top);

static int nk_task_fn(void *p)
{
	struct nk_task *t = p;

	if (t->stack)
		nk_call_on_stack(t->fn, t->arg, t->stack + NK_BIG_STACK);
	else
		t->fn(t->arg);
	/* The joiner may free `t` once this returns: touch nothing after it. */
	complete(&t->done);
	return 0;
}

/*
 * Run fn(args[k]) for every k at once: args[0] on the calling thread, the others on
 * kthreads; return when all have returned. Returns how many ran on a kthread of their
 * own (a task whose kthread could not start runs on the caller afterwards).
 */
int nk_h_run_tasks(void (*fn)(void *), void **args, int n)
{
	struct nk_task t[8];
	bool started[8] = {};
	int k, ok = 0;

	if (n > ARRAY_SIZE(t))
		n = ARRAY_SIZE(t);
	for (k = 1; k < n; k++) {
		struct task_struct *task;

		t[k].fn = fn;
		t[k].arg = args[k];
		t[k].stack = NULL;
		init_completion(&t[k].done);
		task = kthread_run(nk_task_fn, &t[k], "nk_suite/%d", k);
		started[k] = !IS_ERR(task);
		ok += started[k];
	}
	if (n > 0)
		fn(args[0]);
	for (k = 1; k < n; k++) {
		if (started[k])
			wait_for_completion(&t[k].done);
		else
			fn(args[k]);
	}
	return ok;
}

/*
 * Run fn(arg) on a fresh kthread (one without an mm), on a stack of NK_BIG_STACK
 * bytes, and wait for it.
 */
int nk_h_run_kthread(void (*fn)(void *), void *arg)
{
	struct nk_task t = { .fn = fn, .arg = arg };
	struct task_struct *task;

	t.stack = vmalloc(NK_BIG_STACK);
	if (!t.stack)
		return -ENOMEM;
	init_completion(&t.done);
	task = kthread_run(nk_task_fn, &t, "nk_suite");
	if (IS_ERR(task)) {
		vfree(t.stack);
		return PTR_ERR(task);
	}
	wait_for_completion(&t.done);
	vfree(t.stack);
	return 0;
}

/*
 * The suite's scheduling point: a short sleep, not just yield(), so that the task on
 * the other CPU makes progress inside the windows the suite opens on purpose (a fault
 * between reading the primary entry and installing it). With yield() alone those
 * windows are a few instructions wide and a broken consumer may go unnoticed.
 */
void nk_h_yield(void)
{
	usleep_range(100, 300);
}

void *nk_h_vmalloc(unsigned long size)
{
	return vmalloc(size);
}

void nk_h_vfree(void *p)
{
	vfree(p);
}
