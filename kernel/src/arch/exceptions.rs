//! CPU exceptions (vectors 0–31) become a panic naming the exception, the faulting `rip`, the
//! error code and, for page faults, the faulting address — so a wild access prints one
//! `PANIC at ...` line and ends the run as crashed instead of a silent triple fault (PVH) or an
//! unexplained "domain crashed" (Xen).
//!
//! * PVH: an IDT of interrupt gates (Intel SDM vol. 3 §6.14.1) pointing at `boot/`'s stubs.
//! * Xen PV: `HYPERVISOR_set_trap_table` (`include/public/arch-x86/xen.h`, `struct trap_info`)
//!   with the same stubs' PV flavour; CR2 comes from `vcpu_info.arch.cr2` in `shared_info`.

use core::arch::asm;

/// Code segment of our PVH GDT (boot/).
const PVH_CS: u16 = 0x08;
/// `FLAT_KERNEL_CS` of a 64-bit PV guest (`arch-x86/xen-x86_64.h`).
const XEN_FLAT_KERNEL_CS: u16 = 0xe033;

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved 31",
];

#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    zero: u32,
}
const _: () = assert!(core::mem::size_of::<IdtEntry>() == 16);

#[repr(C, align(16))]
struct Idt([IdtEntry; 32]);

static mut IDT: Idt = Idt([IdtEntry {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    zero: 0,
}; 32]);

#[repr(C, packed)]
struct IdtPtr {
    limit: u16,
    base: u64,
}

/// Install the IDT (PVH, ring 0).
pub fn init_pvh() {
    let (base, _) = boot::exception_stubs();
    let idt = core::ptr::addr_of_mut!(IDT);
    for v in 0..32usize {
        let a = (base + v * boot::EXCEPTION_STUB_SIZE) as u64;
        let e = IdtEntry {
            offset_lo: a as u16,
            selector: PVH_CS,
            ist: 0,
            type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (a >> 16) as u16,
            offset_hi: (a >> 32) as u32,
            zero: 0,
        };
        // SAFETY: single-threaded early boot; the IDT is not loaded yet.
        unsafe { (*idt).0[v] = e };
    }
    let ptr = IdtPtr {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is static, fully initialised and points at valid handlers.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

#[repr(C)]
struct TrapInfo {
    vector: u8,
    flags: u8,
    cs: u16,
    address: u64,
}
const _: () = assert!(core::mem::size_of::<TrapInfo>() == 16);

/// Register the trap table with Xen (PV). Vector 2 (NMI) is delivered by callback, not here.
pub fn init_xen_pv() -> isize {
    let (_, base) = boot::exception_stubs();
    let mut table: [TrapInfo; 33] = core::array::from_fn(|_| TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        address: 0,
    });
    let mut n = 0;
    for v in 0..32usize {
        if v == 2 {
            continue;
        }
        table[n] = TrapInfo {
            vector: v as u8,
            flags: 0,
            cs: XEN_FLAT_KERNEL_CS,
            address: (base + v * boot::EXCEPTION_STUB_SIZE) as u64,
        };
        n += 1;
    }
    // The array ends with a zero entry (address 0), as Xen requires.
    // SAFETY: Xen copies the table during the call; handlers are valid code.
    unsafe {
        xenidc::xen::hypercall::hypercall1(
            xenidc::abi::hypercall::SET_TRAP_TABLE,
            table.as_ptr() as usize,
        )
    }
}

fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects (PVH, ring 0).
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Called by the exception stubs in `boot/`.
#[no_mangle]
extern "C" fn usbdom_exception(vector: u64, error: u64, rip: u64, is_pv: u64) -> ! {
    let name = NAMES.get(vector as usize).copied().unwrap_or("?");
    if vector == 14 {
        let cr2 = if is_pv != 0 {
            crate::pv::shared_info().map(|s| s.vcpu0_cr2()).unwrap_or(0)
        } else {
            read_cr2()
        };
        panic!("CPU exception {vector} ({name}) at rip {rip:#x}, error code {error:#x}, address {cr2:#x}");
    }
    panic!("CPU exception {vector} ({name}) at rip {rip:#x}, error code {error:#x}");
}
