//! The hypercalls the kernel core uses: `sched_op`, `event_channel_op(send)`, `console_io`, and the
//! PV MMU calls `mmu_update`, `update_va_mapping`, `mmuext_op` (`include/public/xen.h`,
//! `sched.h`, `event_channel.h`). Hypercall numbers, command codes and the scheduler argument
//! structs are xenidc's ABI ([`xenidc::abi`]); yield, shutdown and event send go through
//! [`xenidc::xen::ops`]. The PV MMU argument structs, which xenidc does not need, are here,
//! `#[repr(C)]` with asserted layouts.

use xenidc::abi::hypercall as nr;
use xenidc::abi::sched::{self, SchedPoll};
use xenidc::abi::{DomId, Port};
use xenidc::xen::hypercall::{hypercall2, hypercall3, hypercall4};
use xenidc::xen::ops;

/// `update_va_mapping` flag: invalidate the one TLB entry.
pub const UVMF_INVLPG: usize = nr::UVMF_INVLPG as usize;
/// `mmu_update` command in the low bits of `ptr`: normal page-table update.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `foreigndom` value for "our own frames".
pub const DOMID_SELF: u16 = DomId::SELF.0;
/// `foreigndom` value for I/O memory (PCI BARs) when mapping with `mmu_update`.
pub const DOMID_IO: u16 = DomId::IO.0;

/// `SHUTDOWN_*` reasons (`sched.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    Poweroff = sched::shutdown::POWEROFF,
    Reboot = sched::shutdown::REBOOT,
    Crash = sched::shutdown::CRASH,
}

/// One `mmu_update` request (`struct mmu_update`): `ptr` = machine address of the PTE | command,
/// `val` = new PTE.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}
const _: () = assert!(core::mem::size_of::<MmuUpdate>() == 16);
const _: () = assert!(core::mem::align_of::<MmuUpdate>() == core::mem::align_of::<[u64; 2]>());
const _: () = assert!(core::mem::offset_of!(MmuUpdate, val) == 8);

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
    ops::sched_yield();
}

/// Shut the domain down. Never returns on Xen.
pub fn shutdown(reason: ShutdownReason) {
    ops::sched_shutdown(reason as u32);
}

/// Block until one of `ports` is pending or Xen system time reaches `timeout_ns` (absolute; 0 =
/// no timeout). Works with event upcalls masked (`SCHEDOP_poll`). Returns the hypercall result.
pub fn sched_poll(ports: &[u32], timeout_ns: u64) -> isize {
    let arg = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        pad: [0; 4],
        timeout: timeout_ns,
    };
    // SAFETY: `arg` and the port array it points to outlive the call; Xen only reads them.
    unsafe {
        hypercall2(
            nr::SCHED_OP,
            sched::op::POLL as usize,
            &arg as *const _ as usize,
        )
    }
}

/// Notify the remote end of event channel `port`; returns the hypercall result (0 or -errno).
pub fn evtchn_send(port: u32) -> isize {
    match ops::evtchn_send(Port(port)) {
        Ok(()) => 0,
        Err(errno) => -(errno as isize),
    }
}

/// Write to Xen's console (`xl dmesg`), if Xen allows this domain to (otherwise -EPERM, ignored).
pub fn console_io_write(bytes: &[u8]) {
    // SAFETY: Xen reads `len` bytes from the buffer, which is valid for the call.
    unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            nr::CONSOLEIO_WRITE as usize,
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
    unsafe { hypercall3(nr::UPDATE_VA_MAPPING, va, pte as usize, flags) }
}

/// `mmu_update(reqs, count, &done, foreigndom)` through [`ops::mmu_update`]; returns (result:
/// 0 or -errno, number done).
///
/// # Safety
/// As [`update_va_mapping`]: the caller owns every PTE named in `reqs`.
pub unsafe fn mmu_update(reqs: &[MmuUpdate], foreigndom: u16) -> (isize, u32) {
    // SAFETY: `MmuUpdate` is `#[repr(C)]` { u64, u64 }, 16 bytes (asserted above): the layout of
    // `[u64; 2]`; the view borrows `reqs` for the call only.
    let raw = unsafe { core::slice::from_raw_parts(reqs.as_ptr() as *const [u64; 2], reqs.len()) };
    // SAFETY: forwarded; the caller owns the PTEs.
    match unsafe { ops::mmu_update(raw, DomId(foreigndom)) } {
        Ok(done) => (0, done),
        Err((errno, done)) => (-(errno as isize), done),
    }
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
            nr::MMUEXT_OP,
            ops.as_ptr() as usize,
            ops.len(),
            &mut done as *mut u32 as usize,
            DOMID_SELF as usize,
        )
    }
}
