/*
 * The liburcu baseline of notifier-benches: a subscriber list the way a C user of
 * liburcu writes it (urcu-memb flavour, the default of <urcu.h>; an RCU list from
 * <urcu/rculist.h>; a mutex for writers; synchronize_rcu() before freeing).
 *
 * The callbacks are Rust functions passed as pointers, so liburcu and notifier-core
 * call exactly the same code, through one indirect call each.
 */
#define _LGPL_SOURCE /* inline the read side, as LGPL-compatible code does */
#include <urcu/urcu-memb.h>
#include <urcu/rculist.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdint.h>

typedef int (*shim_start_fn)(const void *ctx, const void *range);
typedef void (*shim_end_fn)(const void *ctx, const void *range);

struct shim_node {
	struct cds_list_head node;
	const void *ctx;
	shim_start_fn start;
	shim_end_fn end;
};

struct shim_list {
	struct cds_list_head head;
	pthread_mutex_t lock;
};

/* Registrations of this thread: nested handles register it once. */
static __thread int registered;

void shim_register_thread(void)
{
	if (registered++ == 0)
		urcu_memb_register_thread();
}

void shim_unregister_thread(void)
{
	if (registered > 0 && --registered == 0)
		urcu_memb_unregister_thread();
}

int shim_has_sys_membarrier(void)
{
	return urcu_memb_has_sys_membarrier;
}

size_t shim_node_size(void)
{
	return sizeof(struct shim_node);
}

struct shim_list *shim_list_new(void)
{
	struct shim_list *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	CDS_INIT_LIST_HEAD(&l->head);
	pthread_mutex_init(&l->lock, NULL);
	return l;
}

void shim_list_free(struct shim_list *l)
{
	struct shim_node *n, *tmp;

	urcu_memb_synchronize_rcu();
	cds_list_for_each_entry_safe(n, tmp, &l->head, node)
		free(n);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

/* Register: allocate a node, publish it at the head. */
struct shim_node *shim_add(struct shim_list *l, const void *ctx,
			   shim_start_fn start, shim_end_fn end)
{
	struct shim_node *n = malloc(sizeof(*n));
	if (!n)
		return NULL;
	n->ctx = ctx;
	n->start = start;
	n->end = end;
	pthread_mutex_lock(&l->lock);
	cds_list_add_rcu(&n->node, &l->head);
	pthread_mutex_unlock(&l->lock);
	return n;
}

/* Unregister: unlink, wait for a grace period, free. */
void shim_del(struct shim_list *l, struct shim_node *n)
{
	pthread_mutex_lock(&l->lock);
	cds_list_del_rcu(&n->node);
	pthread_mutex_unlock(&l->lock);
	urcu_memb_synchronize_rcu();
	free(n);
}

/* One invalidation: every start in one read-side section, every end in another. */
int shim_dispatch(struct shim_list *l, const void *range)
{
	struct shim_node *n;
	int ret = 0;

	urcu_memb_read_lock();
	cds_list_for_each_entry_rcu(n, &l->head, node)
		ret |= n->start(n->ctx, range);
	urcu_memb_read_unlock();

	urcu_memb_read_lock();
	cds_list_for_each_entry_rcu(n, &l->head, node)
		n->end(n->ctx, range);
	urcu_memb_read_unlock();
	return ret;
}

/* `iters` empty read-side sections, for the read-lock cost without a call per section. */
void shim_read_lock_loop(uint64_t iters)
{
	uint64_t i;

	for (i = 0; i < iters; i++) {
		urcu_memb_read_lock();
		cmm_barrier();
		urcu_memb_read_unlock();
	}
}

void shim_synchronize(void)
{
	urcu_memb_synchronize_rcu();
}
