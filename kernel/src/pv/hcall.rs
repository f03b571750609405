//! Typed wrappers over the raw hypercall instructions (`xenidc::xen::hypercall`) for the
//! hypercalls the kernel core uses: `sched_op`, `event_channel_op(send)`, `console_io`, and the
//! PV MMU calls `mmu_update`, `update_va_mapping`, `mmuext_op` (`include/public/xen.h`,
//! `sched.h`, `event_channel.h`). Argument structs are `#[repr(C)]` with asserted layouts.

use xenidc::xen::hypercall::{hypercall2, hypercall3, hypercall4};

pub const HYPERVISOR_MMU_UPDATE: usize = 1;
pub const HYPERVISOR_UPDATE_VA_MAPPING: usize = 14;
pub const HYPERVISOR_CONSOLE_IO: usize = 18;
pub const HYPERVISOR_MMUEXT_OP: usize = 26;
pub const HYPERVISOR_SCHED_OP: usize = 29;
pub const HYPERVISOR_EVENT_CHANNEL_OP: usize = 32;

const SCHEDOP_YIELD: usize = 0;
const SCHEDOP_SHUTDOWN: usize = 2;
const SCHEDOP_POLL: usize = 3;
const EVTCHNOP_SEND: usize = 4;
const CONSOLEIO_WRITE: usize = 0;

/// `update_va_mapping` flag: invalidate the one TLB entry.
pub const UVMF_INVLPG: usize = 2;
/// `mmu_update` command in the low bits of `ptr`: normal page-table update.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `foreigndom` value for "our own frames".
pub const DOMID_SELF: u16 = 0x7ff0;
/// `foreigndom` value for I/O memory (PCI BARs) when mapping with `mmu_update`.
pub const DOMID_IO: u16 = 0x7ff1;

/// `SHUTDOWN_*` reasons (`sched.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    Poweroff = 0,
    Reboot = 1,
    Crash = 3,
}

#[repr(C)]
struct SchedShutdown {
    reason: u32,
}
const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);

#[repr(C)]
struct SchedPoll {
    ports: u64, // XEN_GUEST_HANDLE(evtchn_port_t)
    nr_ports: u32,
    _pad: u32,
    timeout: u64,
}
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);
const _: () = assert!(core::mem::offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(core::mem::offset_of!(SchedPoll, timeout) == 16);

/// One `mmu_update` request (`struct mmu_update`): `ptr` = machine address of the PTE | command,
/// `val` = new PTE.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}
const _: () = assert!(core::mem::size_of::<MmuUpdate>() == 16);

/// `struct mmuext_op`: command, then a union of mfn/linear_addr, then a union of nr_ents/vcpumask.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct MmuextOp {
    pub cmd: u32,
    pub _pad: u32,
    pub arg1: u64,
    pub arg2: u64,
}
const _: () = assert!(core::mem::size_of::<MmuextOp>() == 24);
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
pub const MMUEXT_UNPIN_TABLE: u32 = 4;

/// Give up the CPU (`SCHEDOP_yield`).
pub fn sched_yield() {
    // SAFETY: yield takes no argument and has no memory effects.
    unsafe { hypercall2(HYPERVISOR_SCHED_OP, SCHEDOP_YIELD, 0) };
}

/// Shut the domain down. Never returns on Xen.
pub fn shutdown(reason: ShutdownReason) {
    let arg = SchedShutdown {
        reason: reason as u32,
    };
    // SAFETY: `arg` is a valid sched_shutdown for the duration of the call.
    unsafe {
        hypercall2(
            HYPERVISOR_SCHED_OP,
            SCHEDOP_SHUTDOWN,
            &arg as *const _ as usize,
        )
    };
}

/// Block until one of `ports` is pending or Xen system time reaches `timeout_ns` (absolute; 0 =
/// no timeout). Works with event upcalls masked (`SCHEDOP_poll`). Returns the hypercall result.
pub fn sched_poll(ports: &[u32], timeout_ns: u64) -> isize {
    let arg = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        _pad: 0,
        timeout: timeout_ns,
    };
    // SAFETY: `arg` and the port array it points to outlive the call; Xen only reads them.
    unsafe { hypercall2(HYPERVISOR_SCHED_OP, SCHEDOP_POLL, &arg as *const _ as usize) }
}

/// Notify the remote end of event channel `port`.
pub fn evtchn_send(port: u32) -> isize {
    let arg: u32 = port;
    // SAFETY: `arg` is a valid evtchn_send for the duration of the call.
    unsafe {
        hypercall2(
            HYPERVISOR_EVENT_CHANNEL_OP,
            EVTCHNOP_SEND,
            &arg as *const u32 as usize,
        )
    }
}

/// Write to Xen's console (`xl dmesg`), if Xen allows this domain to (otherwise -EPERM, ignored).
pub fn console_io_write(bytes: &[u8]) {
    // SAFETY: Xen reads `len` bytes from the buffer, which is valid for the call.
    unsafe {
        hypercall3(
            HYPERVISOR_CONSOLE_IO,
            CONSOLEIO_WRITE,
            bytes.len(),
            bytes.as_ptr() as usize,
        )
    };
}

/// `update_va_mapping(va, pte, flags)`: set the PTE that maps `va` (its L1 must exist).
///
/// # Safety
/// Changing a mapping can invalidate memory Rust code relies on; the caller owns `va`.
pub unsafe fn update_va_mapping(va: usize, pte: u64, flags: usize) -> isize {
    // SAFETY: forwarded.
    unsafe { hypercall3(HYPERVISOR_UPDATE_VA_MAPPING, va, pte as usize, flags) }
}

/// `mmu_update(reqs, count, &done, foreigndom)`; returns (result, number done).
///
/// # Safety
/// As [`update_va_mapping`]: the caller owns every PTE named in `reqs`.
pub unsafe fn mmu_update(reqs: &[MmuUpdate], foreigndom: u16) -> (isize, u32) {
    let mut done: u32 = 0;
    // SAFETY: `reqs` and `done` are valid for the call; the caller owns the PTEs.
    let r = unsafe {
        hypercall4(
            HYPERVISOR_MMU_UPDATE,
            reqs.as_ptr() as usize,
            reqs.len(),
            &mut done as *mut u32 as usize,
            foreigndom as usize,
        )
    };
    (r, done)
}

/// `mmuext_op(ops, count, &done, DOMID_SELF)`.
///
/// # Safety
/// As [`mmu_update`].
pub unsafe fn mmuext_op(ops: &[MmuextOp]) -> isize {
    let mut done: u32 = 0;
    // SAFETY: `ops` and `done` are valid for the call.
    unsafe {
        hypercall4(
            HYPERVISOR_MMUEXT_OP,
            ops.as_ptr() as usize,
            ops.len(),
            &mut done as *mut u32 as usize,
            DOMID_SELF as usize,
        )
    }
}
