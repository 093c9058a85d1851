// SPDX-License-Identifier: GPL-2.0
/*
 * The core's sleepable RCU on the kernel's own SRCU: one static domain for the
 * module (Linux's mmu_notifier has one too, `srcu`). The Rust side (platform.rs)
 * calls these; srcu_read_lock and friends are static inlines Rust cannot call.
 */
#include <linux/srcu.h>
#include <linux/stddef.h>
#include <linux/build_bug.h>

int nk_srcu_read_lock(void);
void nk_srcu_read_unlock(int idx);
void nk_synchronize_srcu(void);
void nk_call_srcu(struct rcu_head *head, rcu_callback_t func);
void nk_srcu_barrier(void);

DEFINE_STATIC_SRCU(nk_srcu);

int nk_srcu_read_lock(void)
{
	return srcu_read_lock(&nk_srcu);
}

void nk_srcu_read_unlock(int idx)
{
	srcu_read_unlock(&nk_srcu, idx);
}

void nk_synchronize_srcu(void)
{
	synchronize_srcu(&nk_srcu);
}

/* The core's RcuHead is laid out as struct callback_head (asserted on both sides). */
void nk_call_srcu(struct rcu_head *head, rcu_callback_t func)
{
	call_srcu(&nk_srcu, head, func);
}

void nk_srcu_barrier(void)
{
	srcu_barrier(&nk_srcu);
}

static_assert(sizeof(struct callback_head) == 2 * sizeof(void *));
static_assert(offsetof(struct callback_head, func) == sizeof(void *));
