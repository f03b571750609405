//! Raw Xen hypercall instructions for an x86_64 PV (or PVH) guest.
//!
//! A guest calls hypercall `n` by `call`ing the 32-byte stub at `hypercall_page + n * 32`; Xen fills
//! that page when it builds the domain (ELF note `XEN_ELFNOTE_HYPERCALL_PAGE`, emitted by `boot/`).
//! x86_64 ABI (Xen `include/public/arch-x86/xen-x86_64.h`): the hypercall number selects the stub,
//! arguments go in `rdi, rsi, rdx, r10, r8`, the result comes back in `rax`. The stub uses `syscall`
//! (PV) or `vmcall`/`vmmcall` (PVH/HVM), so `rcx` and `r11` are clobbered; Xen may also clobber the
//! argument registers (debug builds poison them), so they are declared as clobbered outputs here.
//!
//! The page is pre-filled with `ret` by `boot/` so that a call made before Xen wrote the stubs (or
//! under plain QEMU, where nobody writes them) returns instead of executing garbage; the return value
//! is then meaningless.
//!
//! These functions are the only place that executes the instruction; everything typed (sched_op,
//! event channels, memory ops, grant tables) is built on top of them.

use core::arch::asm;

extern "C" {
    /// The page-aligned, page-sized hypercall page, defined by the `boot` crate's assembly.
    static hypercall_page: [u8; 4096];
}

/// Size of one hypercall stub in the hypercall page.
const STUB_SIZE: usize = 32;
/// Number of stubs in the page.
const MAX_HYPERCALL: usize = 4096 / STUB_SIZE;

#[inline(always)]
fn stub(nr: usize) -> usize {
    assert!(nr < MAX_HYPERCALL, "hypercall number {nr} out of range");
    // Only the address of the extern static is taken; it is never read as Rust data.
    let base = core::ptr::addr_of!(hypercall_page) as usize;
    base + nr * STUB_SIZE
}

/// Hypercall `nr` without arguments.
///
/// # Safety
/// The hypercall must be valid in the current domain and must not invalidate memory Rust relies on.
#[inline]
pub unsafe fn hypercall0(nr: usize) -> isize {
    let ret: isize;
    let target = stub(nr);
    // SAFETY: the caller guarantees the hypercall is valid; the stub only clobbers the registers
    // declared here.
    unsafe {
        asm!("call {t}", t = in(reg) target, lateout("rax") ret,
             lateout("rdi") _, lateout("rsi") _, lateout("rdx") _, lateout("r10") _, lateout("r8") _,
             lateout("rcx") _, lateout("r11") _);
    }
    ret
}

/// Hypercall `nr` with one argument (`rdi`).
///
/// # Safety
/// As [`hypercall0`]; pointer arguments must be valid for what the hypercall reads or writes.
#[inline]
pub unsafe fn hypercall1(nr: usize, a1: usize) -> isize {
    let ret: isize;
    let target = stub(nr);
    // SAFETY: see `hypercall0`.
    unsafe {
        asm!("call {t}", t = in(reg) target, lateout("rax") ret,
             inout("rdi") a1 => _, lateout("rsi") _, lateout("rdx") _, lateout("r10") _, lateout("r8") _,
             lateout("rcx") _, lateout("r11") _);
    }
    ret
}

/// Hypercall `nr` with two arguments (`rdi`, `rsi`).
///
/// # Safety
/// As [`hypercall1`].
#[inline]
pub unsafe fn hypercall2(nr: usize, a1: usize, a2: usize) -> isize {
    let ret: isize;
    let target = stub(nr);
    // SAFETY: see `hypercall0`.
    unsafe {
        asm!("call {t}", t = in(reg) target, lateout("rax") ret,
             inout("rdi") a1 => _, inout("rsi") a2 => _, lateout("rdx") _, lateout("r10") _,
             lateout("r8") _, lateout("rcx") _, lateout("r11") _);
    }
    ret
}

/// Hypercall `nr` with three arguments (`rdi`, `rsi`, `rdx`).
///
/// # Safety
/// As [`hypercall1`].
#[inline]
pub unsafe fn hypercall3(nr: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    let target = stub(nr);
    // SAFETY: see `hypercall0`.
    unsafe {
        asm!("call {t}", t = in(reg) target, lateout("rax") ret,
             inout("rdi") a1 => _, inout("rsi") a2 => _, inout("rdx") a3 => _, lateout("r10") _,
             lateout("r8") _, lateout("rcx") _, lateout("r11") _);
    }
    ret
}

/// Hypercall `nr` with four arguments (`rdi`, `rsi`, `rdx`, `r10`).
///
/// # Safety
/// As [`hypercall1`].
#[inline]
pub unsafe fn hypercall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    let target = stub(nr);
    // SAFETY: see `hypercall0`.
    unsafe {
        asm!("call {t}", t = in(reg) target, lateout("rax") ret,
             inout("rdi") a1 => _, inout("rsi") a2 => _, inout("rdx") a3 => _, inout("r10") a4 => _,
             lateout("r8") _, lateout("rcx") _, lateout("r11") _);
    }
    ret
}

/// Hypercall `nr` with five arguments (`rdi`, `rsi`, `rdx`, `r10`, `r8`).
///
/// # Safety
/// As [`hypercall1`].
#[inline]
pub unsafe fn hypercall5(
    nr: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> isize {
    let ret: isize;
    let target = stub(nr);
    // SAFETY: see `hypercall0`.
    unsafe {
        asm!("call {t}", t = in(reg) target, lateout("rax") ret,
             inout("rdi") a1 => _, inout("rsi") a2 => _, inout("rdx") a3 => _, inout("r10") a4 => _,
             inout("r8") a5 => _, lateout("rcx") _, lateout("r11") _);
    }
    ret
}
