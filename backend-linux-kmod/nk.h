/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the C and Rust halves of notifier_kmod's tests share (the forwarder's own
 * declarations are in forwarder/forwarder.h).
 */
#ifndef NOTIFIER_KMOD_NK_H
#define NOTIFIER_KMOD_NK_H

#include "forwarder/forwarder.h"

/* What a reference-mode recorder saw (helpers.c; smoke.rs mirrors it). */
struct nk_ref_counts {
	unsigned int starts, ends, releases, young, after_release, events;
};

struct nk_ref;

/* Implemented in C (helpers.c), called from Rust. */
int nk_lockdep_teeth(void);
void nk_teeth_lock(void);
void nk_teeth_unlock(void);
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
int nk_shadow_init(void);
void nk_shadow_fini(void);

/* Implemented in Rust (shadow.rs), called from C with nk_shadow_mutex held. */
int nk_shadow_cmd(const char *buf, size_t len);
void nk_shadow_exit(void);

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
