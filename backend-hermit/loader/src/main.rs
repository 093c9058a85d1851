//! A small multiboot loader for Hermit images under QEMU
//! (`qemu-system-x86_64 -kernel loader.bin -initrd image`).
//!
//! QEMU's multiboot support enters [`_start32`] in 32-bit protected mode with paging
//! off, `eax` = the multiboot magic and `ebx` = the multiboot information. The entry
//! code builds page tables (0–2 MiB in 4 KiB pages, 2 MiB–4 GiB in 2 MiB pages, all
//! identity), switches to long mode and calls
//! [`loader_main`], which places the image (the multiboot module) with `hermit-entry`,
//! describes the memory in a flattened device tree, and jumps to the kernel's entry
//! with the boot information and a boot stack.

#![no_std]
#![no_main]

use core::fmt::{self, Write};
use core::mem::MaybeUninit;
use core::num::{NonZeroU16, NonZeroU64};

use hermit_entry::boot_info::{BootInfo, HardwareInfo, PlatformInfo, RawBootInfo};
use hermit_entry::elf::KernelObject;

mod fdt;

/// `hermit-entry`'s ELF parser allocates a little: a bump allocator over a static
/// arena that never frees (the loader runs once and hands everything over).
mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};

    const SIZE: usize = 1 << 20;
    #[repr(C, align(4096))]
    struct Arena([u8; SIZE]);
    static mut ARENA: Arena = Arena([0; SIZE]);
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    pub struct Bump;

    // SAFETY: every block returned is inside the arena, aligned as asked, and never
    // handed out twice (`NEXT` only grows).
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let base = core::ptr::addr_of_mut!(ARENA) as usize;
            let mut cur = NEXT.load(Ordering::Relaxed);
            loop {
                let start = (base + cur).next_multiple_of(l.align()) - base;
                let end = start + l.size();
                if end > SIZE {
                    return core::ptr::null_mut();
                }
                match NEXT.compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return (base + start) as *mut u8,
                    Err(now) => cur = now,
                }
            }
        }
        unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
    }

    #[global_allocator]
    static GLOBAL: Bump = Bump;
}

core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .p2align 2
mb_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long mb_header
    .long __load_start
    .long __load_end
    .long __bss_end
    .long _start32

    .section .text._start32, "ax"
    .code32
    .global _start32
_start32:
    cli
    movl %eax, %ebp
    movl %ebx, %esi
    /* zero the bss (page tables, stacks) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    /* PML4[0] -> PDPT */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    /* PDPT[0..4] -> the four page directories */
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    addl $pds, %eax
    orl $3, %eax
    movl %eax, pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b
    /* 2 MiB pages over 0..4 GiB */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pds(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b
    /* the first 2 MiB through a page table (page 0 left out, to catch null) */
    movl $pt0, %eax
    orl $3, %eax
    movl %eax, pds
    movl $1, %ecx
3:  movl %ecx, %eax
    shll $12, %eax
    orl $3, %eax
    movl %eax, pt0(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jb 3b
    /* long mode: PAE, EFER.LME|NXE, paging */
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdt gdt_ptr
    ljmp $0x08, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $loader_stack_top, %rsp
    movl %esi, %edi
    movl %ebp, %esi
    call loader_main
4:  hlt
    jmp 4b

    .section .rodata.gdt, "a"
    .p2align 3
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
gdt_ptr:
    .word 23
    .long gdt

    .section .bss.paging, "aw", @nobits
    .p2align 12
pml4: .skip 4096
pdpt: .skip 4096
pds:  .skip 4 * 4096
.global pt0
pt0:  .skip 4096
loader_stack: .skip 65536
loader_stack_top:
    .code64
"#,
    options(att_syntax)
);

/// The kernel's boot stack: the kernel's `_start` takes the stack's low end in `rsp`.
#[repr(C, align(4096))]
struct Stack([u8; 0x10000]);
static mut KERNEL_STACK: Stack = Stack([0; 0x10000]);
static mut RAW_BOOT_INFO: MaybeUninit<RawBootInfo> = MaybeUninit::uninit();
static mut FDT: [u8; 4096] = [0; 4096];

const MULTIBOOT_MAGIC: u32 = 0x2BAD_B002;
const COM1: u16 = 0x3f8;

struct Serial;
impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: writing a byte to COM1's data register has no memory effects.
            unsafe { core::arch::asm!("out dx, al", in("dx") COM1, in("al") b) };
        }
        Ok(())
    }
}

fn fail(why: &str) -> ! {
    let _ = writeln!(Serial, "notifier-hermit-loader: {why}");
    // QEMU's isa-debug-exit device: QEMU exits with (value << 1) | 1, here 1.
    // SAFETY: a port write to the debug-exit device (or nothing, without it).
    unsafe { core::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") 0u8) };
    loop {
        // SAFETY: halting with interrupts off ends the loader here.
        unsafe { core::arch::asm!("cli; hlt") };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Serial, "notifier-hermit-loader: panic: {info}");
    fail("panicked")
}

/// Reads a `u32` of the multiboot information.
///
/// # Safety
///
/// `addr` is identity-mapped and readable.
unsafe fn rd(addr: u64) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

extern "C" {
    /// The page table of the first 2 MiB (see `_start32`).
    static mut pt0: [u64; 512];
}

/// Hermit identity-maps the firmware areas below 1 MiB itself (ACPI, the SMP
/// trampoline) and fails if they are mapped already: leave them to it.
fn unmap_low_memory() {
    // SAFETY: the loader is done with low memory (the multiboot information was read);
    // clearing entries of its own page table and reloading CR3 flushes them.
    unsafe {
        let pt = &mut *core::ptr::addr_of_mut!(pt0);
        for e in &mut pt[..256] {
            *e = 0;
        }
        core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _);
    }
}

#[no_mangle]
extern "C" fn loader_main(mbi: u32, magic: u32) -> ! {
    if magic != MULTIBOOT_MAGIC {
        fail("not started by a multiboot loader");
    }
    let mbi = u64::from(mbi);
    // SAFETY: the multiboot information lies in low memory, identity-mapped until
    // `unmap_low_memory`.
    let (flags, mem_upper, mods_count, mods_addr) =
        unsafe { (rd(mbi), rd(mbi + 8), rd(mbi + 20), rd(mbi + 24)) };
    if flags & 1 == 0 || flags & 8 == 0 || mods_count == 0 {
        fail("no memory size or no module (pass the image with -initrd)");
    }
    let mods = u64::from(mods_addr);
    // SAFETY: as above.
    let (mod_start, mod_end) = unsafe { (u64::from(rd(mods)), u64::from(rd(mods + 4))) };
    let mem_end = 0x10_0000 + u64::from(mem_upper) * 1024;
    let _ = writeln!(
        Serial,
        "notifier-hermit-loader: image {mod_start:#x}..{mod_end:#x}, memory up to {mem_end:#x}"
    );

    // SAFETY: the module is identity-mapped memory QEMU filled with the image.
    let elf = unsafe {
        core::slice::from_raw_parts(mod_start as *const u8, (mod_end - mod_start) as usize)
    };
    let kernel = KernelObject::parse(elf).unwrap_or_else(|_| fail("the image is not a Hermit ELF"));
    let size = kernel.mem_size();
    let start = kernel
        .start_addr()
        .unwrap_or((mod_end + 0x1f_ffff) & !0x1f_ffff);
    if start + size as u64 > mem_end {
        fail("the image does not fit in memory");
    }
    // SAFETY: `start..start + size` is free RAM after the module, identity-mapped,
    // used by nothing else.
    let memory = unsafe { core::slice::from_raw_parts_mut(start as *mut MaybeUninit<u8>, size) };
    let loaded = kernel.load_kernel(memory, start);

    // SAFETY: the loader runs alone; FDT is written once, here.
    let fdt = unsafe { &mut *core::ptr::addr_of_mut!(FDT) };
    let fdt_len = fdt::write(fdt, 0x10_0000, mem_end - 0x10_0000)
        .unwrap_or_else(|| fail("device tree buffer too small"));
    let _ = fdt_len;

    let boot_info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: 0..mem_end,
            serial_port_base: NonZeroU16::new(COM1),
            device_tree: NonZeroU64::new(fdt.as_ptr() as u64),
        },
        load_info: loaded.load_info,
        platform_info: PlatformInfo::Multiboot {
            command_line: None,
            multiboot_info_addr: NonZeroU64::new(mbi).unwrap_or_else(|| fail("null mbi")),
        },
    };
    // SAFETY: written once, before the kernel (its only reader) starts.
    let raw = unsafe {
        let p = &mut *core::ptr::addr_of_mut!(RAW_BOOT_INFO);
        p.write(RawBootInfo::from(boot_info))
    };
    let stack = core::ptr::addr_of!(KERNEL_STACK) as u64;
    unmap_low_memory();
    let _ = writeln!(
        Serial,
        "notifier-hermit-loader: entering the kernel at {:#x}",
        loaded.entry_point
    );
    // SAFETY: the entry point of the image just loaded, with the ABI Hermit's `_start`
    // expects: boot information in rdi, CPU number in esi, the boot stack's low end
    // in rsp.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "jmp {entry}",
            stack = in(reg) stack,
            entry = in(reg) loaded.entry_point,
            in("rdi") raw as *const RawBootInfo,
            in("esi") 0u32,
            options(noreturn)
        )
    }
}
