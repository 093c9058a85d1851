// SPDX-License-Identifier: GPL-2.0
/*
 * The C half of the MMU-notifier binding (mmu_notifier.rs): the static inlines of
 * <linux/sched/mm.h> that Rust cannot call. Nothing else: copy it with the binding.
 */
#include <linux/sched.h>
#include <linux/sched/mm.h>

void nkb_mmgrab(struct mm_struct *mm);
void nkb_mmdrop(struct mm_struct *mm);
void nkb_mmget(struct mm_struct *mm);
bool nkb_mmget_not_zero(struct mm_struct *mm);
struct mm_struct *nkb_current_mm_get(void);

void nkb_mmgrab(struct mm_struct *mm)
{
	mmgrab(mm);
}

void nkb_mmdrop(struct mm_struct *mm)
{
	mmdrop(mm);
}

void nkb_mmget(struct mm_struct *mm)
{
	mmget(mm);
}

bool nkb_mmget_not_zero(struct mm_struct *mm)
{
	return mmget_not_zero(mm);
}

/* The caller's address space with a user reference, or NULL (kernel thread, exiting). */
struct mm_struct *nkb_current_mm_get(void)
{
	return get_task_mm(current);
}
