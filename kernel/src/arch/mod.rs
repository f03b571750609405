//! x86_64 CPU primitives: port I/O, TSC, CPUID, pause/halt. The only module with CPU-instruction
//! `unsafe` besides `boot/`, the hypercall wrappers and the page-table code.
//!
//! Port I/O also works in a Xen PV guest once it has I/O privilege (`PHYSDEVOP_set_iopl` with
//! iopl 1 plus ioport permission from the toolstack): Xen then emulates the instruction.

use core::arch::asm;

pub mod exceptions;

/// Read a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port reads have no memory effects visible to Rust; callers own the device.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Read a 16-bit word from an I/O port.
#[inline]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as `inb`.
    unsafe {
        asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Read a 32-bit dword from an I/O port.
#[inline]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Write a byte to an I/O port.
#[inline]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port writes do not touch Rust memory; device effects are the caller's business
    // (no device on our ports does DMA into memory we did not hand it).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// Write a 16-bit word to an I/O port.
#[inline]
pub fn outw(port: u16, v: u16) {
    // SAFETY: as `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

/// Write a 32-bit dword to an I/O port.
#[inline]
pub fn outl(port: u16, v: u32) {
    // SAFETY: as `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

/// Read the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects (CR4.TSD is clear in both PVH and Xen PV).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf/subleaf: (eax, ebx, ecx, edx).
#[inline]
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Spin-loop hint.
#[inline]
pub fn pause() {
    core::hint::spin_loop();
}

/// Halt forever with interrupts off (PVH only: privileged instructions).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: only reached under PVH (ring 0); stops the CPU.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// PVH: unmap virtual page 0 (null-pointer guard) in `boot/`'s identity map. Call once the boot
/// information the loader left in low memory has been copied.
pub fn pvh_unmap_page0() {
    let pt0 = boot::pvh_first_page_table() as *mut u64;
    // SAFETY: PVH only (ring 0, boot/'s page tables are ordinary writable identity-mapped memory);
    // entry 0 maps page 0, which holds nothing we still use.
    unsafe {
        core::ptr::write_volatile(pt0, 0);
        asm!("invlpg [{}]", in(reg) 0usize, options(nostack, preserves_flags));
    }
}
