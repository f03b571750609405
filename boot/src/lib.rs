//! usbdom entry code: the two ways the one kernel ELF is started.
//!
//! * **Xen PV (x86_64)**: the domain builder reads the `Xen` ELF notes below (`include/public/elfnote.h`:
//!   GUEST_OS, GUEST_VERSION, XEN_VERSION "xen-3.0", LOADER "generic", VIRT_BASE/PADDR_OFFSET 0, ENTRY,
//!   HYPERCALL_PAGE), maps the image at its link address with its own page tables and jumps to
//!   [`_start_xen_pv`] in 64-bit mode with `%rsi` = virtual address of `start_info`
//!   (`include/public/xen.h`). We switch to our stack and call `usbdom_xen_pv_main(start_info)`.
//! * **PVH** (plain QEMU `-kernel`, or Xen `type="pvh"`): the loader reads `XEN_ELFNOTE_PHYS32_ENTRY`
//!   and enters [`_start_pvh`] in 32-bit protected mode, paging off, `%ebx` = physical address of
//!   `hvm_start_info` (`include/public/arch-x86/hvm/start_info.h`). We build identity page tables for
//!   the first 4 GiB (2 MiB pages; 3..4 GiB, the PCI MMIO hole, uncached; the first 2 MiB in 4 KiB
//!   pages so page 0 can be unmapped later as a null-pointer guard), enable long mode, load a GDT,
//!   switch to our stack and call `usbdom_pvh_main(hvm_start_info_paddr)`.
//!
//! The hypercall page is page-aligned in `.text` and pre-filled with `ret` (0xc3) so an early or
//! non-Xen hypercall returns instead of running garbage; Xen overwrites it with 32-byte stubs.
//!
//! The kernel must be linked with `linker.ld` from this directory (`-T boot/linker.ld`, non-PIE);
//! `kernel/build.rs` passes it.
#![no_std]

#[cfg(target_os = "none")]
use core::arch::global_asm;

/// Size of the boot stack (both entries use the same one; only one ever runs).
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

// The entry code only exists in the bare-metal kernel build; on the host (e.g. `cargo test
// --workspace`) the crate compiles to nothing but its constants.
#[cfg(target_os = "none")]
global_asm!(
    r#"
    .macro xen_elfnote_str type, str
        .p2align 2
        .long 4
        .long 952f - 951f
        .long \type
        .asciz "Xen"
        .p2align 2
    951:
        .asciz "\str"
    952:
        .p2align 2
    .endm

    .macro xen_elfnote_quad type, value
        .p2align 2
        .long 4
        .long 8
        .long \type
        .asciz "Xen"
        .p2align 2
        .quad \value
    .endm

    .macro xen_elfnote_long type, value
        .p2align 2
        .long 4
        .long 4
        .long \type
        .asciz "Xen"
        .p2align 2
        .long \value
    .endm

    .section .note.Xen, "a", @note
    xen_elfnote_str 6, usbdom
    xen_elfnote_str 7, 0.1.0
    xen_elfnote_str 5, xen-3.0
    xen_elfnote_str 8, generic
    xen_elfnote_quad 3, 0
    xen_elfnote_quad 4, 0
    xen_elfnote_quad 1, _start_xen_pv
    xen_elfnote_quad 2, hypercall_page
    xen_elfnote_long 18, _start_pvh

    /* ---------------------------------------------------------------- Xen PV entry (64-bit) */
    .section .text.boot, "ax", @progbits
    .code64
    .global _start_xen_pv
_start_xen_pv:
    cld
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %rsi, %rdi
    call usbdom_xen_pv_main
1:  ud2
    jmp 1b

    /* ---------------------------------------------------------------- PVH entry (32-bit) */
    .code32
    .global _start_pvh
_start_pvh:
    cli
    cld
    mov %ebx, %esi

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD[0..4]; PD: 2048 2 MiB pages, 0..4 GiB identity. */
    mov $pvh_pdpt, %eax
    or $0x3, %eax
    mov %eax, pvh_pml4
    mov $pvh_pd, %eax
    or $0x3, %eax
    mov $pvh_pdpt, %edi
    mov $4, %ecx
2:  mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    loop 2b

    /* PT0: the first 2 MiB in 4 KiB pages, so the kernel can unmap page 0 (null-pointer guard)
     * once it has read the boot information the loader left there. */
    mov $pvh_pt0, %edi
    xor %ecx, %ecx
8:  mov %ecx, %eax
    shl $12, %eax
    or $0x3, %eax
    mov %eax, (%edi,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jb 8b

    mov $pvh_pd, %edi
    xor %ecx, %ecx
3:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present, writable, 2 MiB page */
    cmp $1536, %ecx
    jb 4f
    or $0x18, %eax              /* >= 3 GiB: PCI hole, PWT|PCD (uncached) */
4:  mov %eax, (%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 3b
    mov $pvh_pt0, %eax
    or $0x3, %eax
    mov %eax, pvh_pd            /* PD[0] -> PT0 instead of a 2 MiB page */

    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    lgdt pvh_gdt_ptr
    ljmp $0x08, $pvh_long

    .code64
pvh_long:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %esi, %edi              /* zero-extends: hvm_start_info physical address */
    call usbdom_pvh_main
5:  hlt
    jmp 5b

    /* ---------------------------------------------------------------- CPU exceptions
     * 32 stubs per flavour, 16 bytes apart: stub n at exception_stubs_pvh or _pv + 16 * n.
     * Each pushes a dummy error code where the CPU pushes none, then the vector, and jumps to the
     * common code, which calls usbdom_exception(vector, error, rip, is_pv) (never returns).
     * PV: Xen's 64-bit bounce frame has %rcx and %r11 on top of the hardware frame; pop them. */
    .macro exception_stubs common, pv
        .set vec, 0
        .rept 32
            .p2align 4
            .if \pv
                pop %rcx
                pop %r11
            .endif
            .if ((0x60227d00 >> vec) & 1) == 0
                push $0
            .endif
            push $vec
            jmp \common
            .set vec, vec + 1
        .endr
    .endm

    .section .text.exceptions, "ax", @progbits
    .p2align 4
    .global exception_stubs_pvh
exception_stubs_pvh:
    exception_stubs exception_common_pvh, 0
    .p2align 4
    .global exception_stubs_pv
exception_stubs_pv:
    exception_stubs exception_common_pv, 1

exception_common_pvh:
    xor %ecx, %ecx
    jmp 6f
exception_common_pv:
    mov $1, %ecx
6:  mov (%rsp), %rdi
    mov 8(%rsp), %rsi
    mov 16(%rsp), %rdx
    and $-16, %rsp
    call usbdom_exception
7:  ud2
    jmp 7b

    /* ---------------------------------------------------------------- hypercall page */
    .section .text.hypercall_page, "ax", @progbits
    .p2align 12
    .global hypercall_page
hypercall_page:
    .fill 4096, 1, 0xc3

    /* ---------------------------------------------------------------- GDT (PVH) */
    .section .rodata.boot_gdt, "a", @progbits
    .p2align 3
pvh_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
pvh_gdt_end:
pvh_gdt_ptr:
    .word pvh_gdt_end - pvh_gdt - 1
    .quad pvh_gdt

    /* ---------------------------------------------------------------- stacks, tables */
    .section .bss.boot, "aw", @nobits
    .p2align 12
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4 * 4096
    .global pvh_pt0
pvh_pt0:
    .skip 4096
    .global xen_shared_info_page
xen_shared_info_page:
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack}
    .global boot_stack_top
boot_stack_top:
    "#,
    stack = const BOOT_STACK_SIZE,
    options(att_syntax)
);

#[cfg(target_os = "none")]
extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static hypercall_page: u8;
    static xen_shared_info_page: u8;
    #[link_name = "exception_stubs_pvh"]
    static EXCEPTION_STUBS_PVH: u8;
    #[link_name = "exception_stubs_pv"]
    static EXCEPTION_STUBS_PV: u8;
    #[link_name = "pvh_pt0"]
    static PVH_PT0: u8;
    #[link_name = "boot_stack_bottom"]
    static BOOT_STACK_BOTTOM: u8;
}

#[cfg(target_os = "none")]
/// Virtual (= physical under PVH, = pseudo-physical under PV) address range `[start, end)` of the
/// loaded image including `.bss`.
pub fn image_range() -> (usize, usize) {
    (
        core::ptr::addr_of!(__image_start) as usize,
        core::ptr::addr_of!(__image_end) as usize,
    )
}

#[cfg(target_os = "none")]
/// Address of the hypercall page.
pub fn hypercall_page_addr() -> usize {
    core::ptr::addr_of!(hypercall_page) as usize
}

#[cfg(target_os = "none")]
/// Address of a page-aligned, page-sized `.bss` page reserved for mapping Xen's `shared_info` frame
/// over it (PV: `update_va_mapping`). Never accessed as Rust data.
pub fn shared_info_page_addr() -> usize {
    core::ptr::addr_of!(xen_shared_info_page) as usize
}

#[cfg(target_os = "none")]
/// Addresses of the CPU exception stubs: `(pvh, pv)`; stub for vector `n` (0..32) is at
/// `base + 16 * n`. Both call `usbdom_exception(vector, error_code, rip, is_pv) -> !`.
pub fn exception_stubs() -> (usize, usize) {
    (
        core::ptr::addr_of!(EXCEPTION_STUBS_PVH) as usize,
        core::ptr::addr_of!(EXCEPTION_STUBS_PV) as usize,
    )
}

#[cfg(target_os = "none")]
/// Address of the PVH page table that maps the first 2 MiB with 4 KiB pages (identity, writable
/// by the kernel under PVH).
pub fn pvh_first_page_table() -> usize {
    core::ptr::addr_of!(PVH_PT0) as usize
}

/// Distance between two exception stubs.
pub const EXCEPTION_STUB_SIZE: usize = 16;

#[cfg(target_os = "none")]
/// Lowest address of the boot stack (for overflow diagnostics).
pub fn boot_stack_bottom() -> usize {
    core::ptr::addr_of!(BOOT_STACK_BOTTOM) as usize
}
