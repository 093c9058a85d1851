// SPDX-License-Identifier: GPL-2.0
/*
 * Compiled to assembly only: every DEFINE/OFFSET below becomes a `->NAME value` line
 * that Kbuild turns into a Rust constant (layout_offsets.rs, the crate's `layout`
 * module). platform.rs and mm.rs assert at compile time that bindgen's layouts agree,
 * for every field the Rust side reads.
 */
#include <linux/kbuild.h>
#include <linux/mm_types.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include "forwarder.h"

void nk_layout(void);

void nk_layout(void)
{
	OFFSET(TASK_STRUCT_MM, task_struct, mm);
	DEFINE(TASK_STRUCT_SIZE, sizeof(struct task_struct));
	OFFSET(RANGE_MM, mmu_notifier_range, mm);
	OFFSET(RANGE_START, mmu_notifier_range, start);
	OFFSET(RANGE_END, mmu_notifier_range, end);
	OFFSET(RANGE_FLAGS, mmu_notifier_range, flags);
	OFFSET(RANGE_EVENT, mmu_notifier_range, event);
	OFFSET(RANGE_OWNER, mmu_notifier_range, owner);
	DEFINE(MMU_NOTIFIER_SIZE, sizeof(struct mmu_notifier));
	OFFSET(NK_MM_END_MN, nk_mm, end_mn);
	OFFSET(NK_MM_END_REGISTERED, nk_mm, end_registered);
	OFFSET(NK_MM_TLB_MN, nk_mm, tlb_mn);
	OFFSET(NK_MM_FREE_WORK, nk_mm, free_work);
	OFFSET(NK_MM_TLB_REGISTERED, nk_mm, tlb_registered);
	DEFINE(NK_MM_SIZE, sizeof(struct nk_mm));
	DEFINE(SPINLOCK_SIZE, sizeof(spinlock_t));
	DEFINE(SPINLOCK_ALIGN, __alignof__(spinlock_t));
}
