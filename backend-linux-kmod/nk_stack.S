/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Run a function on a stack of the caller's choosing (x86-64), as the kernel runs
 * interrupt handlers on the IRQ stacks. The conformance suite keeps its secondary
 * MMUs on the stack (it allocates nothing); some of its cases need more than a
 * kthread's fixed THREAD_SIZE, so harness_linux.c gives the suite's kthread a larger
 * vmalloc'd stack (with guard pages, like any vmap stack).
 *
 * No ORC data for this function (objtool skips this object): an unwind that starts on
 * the other stack stops there, as it does on any stack the unwinder does not know.
 */
#include <linux/linkage.h>
#include <asm/nospec-branch.h>

/* void nk_call_on_stack(void (*fn)(void *), void *arg, void *top): top 16-aligned. */
SYM_FUNC_START(nk_call_on_stack)
	pushq	%rbp
	movq	%rsp, %rbp
	movq	%rdx, %rsp
	movq	%rdi, %rax
	movq	%rsi, %rdi
	CALL_NOSPEC rax
	movq	%rbp, %rsp
	popq	%rbp
	RET
SYM_FUNC_END(nk_call_on_stack)
