/*
 * Linux's own algorithm as a peer of notifier-benches: the subscriber list of
 * mm/mmu_notifier.c (an hlist walked under SRCU) with the read side of Linux 6.12's
 * Tree SRCU, in user space, so that its cost stands beside the core's in one run.
 *
 * What it does per invalidation is what mn_hlist_invalidate_range_start and
 * mn_hlist_invalidate_end do: one SRCU read-side section walking the list and calling
 * every start, a second one calling every end. A read-side section is what
 * srcu_read_lock / srcu_read_unlock do in 6.12 (kernel/rcu/srcutree.c):
 *
 *   lock:   idx = READ_ONCE(ssp->srcu_idx) & 1; this_cpu_inc(lock_count[idx]); smp_mb();
 *   unlock: smp_mb(); this_cpu_inc(unlock_count[idx]);
 *
 * "Per CPU" is per thread here: each thread owns one cache-line-aligned slot, so its
 * increments are plain (not locked) read-modify-writes, as this_cpu_inc is on x86.
 * smp_mb() is a sequentially consistent fence. The writer side follows
 * srcu_readers_active_idx_check: sum the unlocks, full fence, sum the locks, equal
 * means idle; a grace period waits for the inactive index, flips, waits for the old
 * one. Registration takes a mutex and publishes at the head (hlist_add_head_rcu);
 * unregistration unlinks (hlist_del_rcu), waits for a grace period, frees.
 *
 * The callbacks are the same Rust functions liburcu's shim calls, one indirect call
 * each. Not modelled: lockdep maps, the interval tree check, non_block_start for
 * non-blockable ranges (none here).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sched.h>

#define LX_SLOTS 64

typedef int (*lx_start_fn)(const void *ctx, const void *range);
typedef void (*lx_end_fn)(const void *ctx, const void *range);

struct lx_node {
	struct lx_node *next;
	struct lx_node **pprev;
	const void *ctx;
	lx_start_fn start;
	lx_end_fn end;
};

struct lx_slot {
	_Alignas(64) unsigned long lock[2];
	unsigned long unlock[2];
};

struct lx_list {
	struct lx_node *head;
	pthread_mutex_t lock;
	/* SRCU */
	unsigned long idx;
	pthread_mutex_t gp;
	struct lx_slot slots[LX_SLOTS];
};

static unsigned int lx_next_slot;
static __thread int lx_my_slot = -1;

/* This thread's slot: threads beyond LX_SLOTS share, as tasks share a CPU's. */
static inline struct lx_slot *lx_slot(struct lx_list *l)
{
	if (__builtin_expect(lx_my_slot < 0, 0))
		lx_my_slot = __atomic_fetch_add(&lx_next_slot, 1, __ATOMIC_RELAXED) % LX_SLOTS;
	return &l->slots[lx_my_slot];
}

/* A plain increment by the slot's owner, readable by the writer (this_cpu_inc). */
static inline void lx_inc(unsigned long *c)
{
	__atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static inline int lx_read_lock(struct lx_list *l)
{
	int idx = __atomic_load_n(&l->idx, __ATOMIC_RELAXED) & 1;

	lx_inc(&lx_slot(l)->lock[idx]);
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* B */
	return idx;
}

static inline void lx_read_unlock(struct lx_list *l, int idx)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* C */
	lx_inc(&lx_slot(l)->unlock[idx]);
}

static int lx_idle(struct lx_list *l, int idx)
{
	unsigned long locks = 0, unlocks = 0;
	int i;

	for (i = 0; i < LX_SLOTS; i++)
		unlocks += __atomic_load_n(&l->slots[i].unlock[idx], __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* A */
	for (i = 0; i < LX_SLOTS; i++)
		locks += __atomic_load_n(&l->slots[i].lock[idx], __ATOMIC_RELAXED);
	return locks == unlocks;
}

void lx_synchronize(struct lx_list *l)
{
	int idx;

	pthread_mutex_lock(&l->gp);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	idx = __atomic_load_n(&l->idx, __ATOMIC_RELAXED) & 1;
	while (!lx_idle(l, idx ^ 1))
		sched_yield();
	__atomic_store_n(&l->idx, l->idx + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* D */
	while (!lx_idle(l, idx))
		sched_yield();
	pthread_mutex_unlock(&l->gp);
}

struct lx_list *lx_list_new(void)
{
	struct lx_list *l;

	if (posix_memalign((void **)&l, 64, sizeof(*l)))
		return NULL;
	*l = (struct lx_list){ 0 };
	pthread_mutex_init(&l->lock, NULL);
	pthread_mutex_init(&l->gp, NULL);
	return l;
}

void lx_list_free(struct lx_list *l)
{
	struct lx_node *n, *next;

	lx_synchronize(l);
	for (n = l->head; n; n = next) {
		next = n->next;
		free(n);
	}
	pthread_mutex_destroy(&l->lock);
	pthread_mutex_destroy(&l->gp);
	free(l);
}

/* mmu_notifier_register's list part: hlist_add_head_rcu under the lock. */
struct lx_node *lx_add(struct lx_list *l, const void *ctx, lx_start_fn start, lx_end_fn end)
{
	struct lx_node *n = malloc(sizeof(*n));

	if (!n)
		return NULL;
	n->ctx = ctx;
	n->start = start;
	n->end = end;
	pthread_mutex_lock(&l->lock);
	n->next = l->head;
	n->pprev = &l->head;
	if (l->head)
		l->head->pprev = &n->next;
	__atomic_store_n(&l->head, n, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&l->lock);
	return n;
}

/* mmu_notifier_unregister's list part: hlist_del_rcu, synchronize_srcu, free. */
void lx_del(struct lx_list *l, struct lx_node *n)
{
	pthread_mutex_lock(&l->lock);
	__atomic_store_n(n->pprev, n->next, __ATOMIC_RELAXED);
	if (n->next)
		n->next->pprev = n->pprev;
	pthread_mutex_unlock(&l->lock);
	lx_synchronize(l);
	free(n);
}

/* One invalidation: mn_hlist_invalidate_range_start, then mn_hlist_invalidate_end. */
int lx_dispatch(struct lx_list *l, const void *range)
{
	struct lx_node *n;
	int ret = 0;
	int id;

	id = lx_read_lock(l);
	for (n = __atomic_load_n(&l->head, __ATOMIC_CONSUME); n;
	     n = __atomic_load_n(&n->next, __ATOMIC_CONSUME))
		ret |= n->start(n->ctx, range);
	lx_read_unlock(l, id);

	id = lx_read_lock(l);
	for (n = __atomic_load_n(&l->head, __ATOMIC_CONSUME); n;
	     n = __atomic_load_n(&n->next, __ATOMIC_CONSUME))
		n->end(n->ctx, range);
	lx_read_unlock(l, id);
	return ret;
}

/* `iters` empty read-side sections, for the read-lock cost without a call per section. */
void lx_read_lock_loop(struct lx_list *l, uint64_t iters)
{
	uint64_t i;

	for (i = 0; i < iters; i++) {
		int id = lx_read_lock(l);

		__asm__ __volatile__("" ::: "memory");
		lx_read_unlock(l, id);
	}
}
