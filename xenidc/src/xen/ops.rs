//! Typed hypercalls over the raw instructions of [`super::hypercall`]: grant-table, event-channel,
//! scheduler, physdev and memory operations (Xen `grant_table.h`, `event_channel.h`, `sched.h`,
//! `physdev.h`, `memory.h`). Each takes and returns values; argument structures are the
//! layout-checked ABI structs of [`crate::abi`], living on our stack for the duration of the call.
//! A negative hypercall result becomes `Err(errno)` (positive errno).

use super::hypercall::{hypercall2, hypercall3, hypercall4};
use crate::abi::evtchn::{self, AllocUnbound, BindInterdomain, BindPirq, PortOp};
use crate::abi::grant::{self, GnttabCopy, MapGrantRef, QuerySize, SetupTable, UnmapGrantRef};
use crate::abi::hypercall as nr;
use crate::abi::physdev::{self, PhysdevEoi, PhysdevIrqStatusQuery, PhysdevSetIopl};
use crate::abi::sched::{self, SchedPoll, SchedShutdown};
use crate::abi::{DomId, Port};

/// Turn a hypercall return value into `Ok(value)` or `Err(positive errno)`.
#[inline]
pub fn result(ret: isize) -> Result<usize, i32> {
    if ret < 0 {
        Err((-ret) as i32)
    } else {
        Ok(ret as usize)
    }
}

/// `HYPERVISOR_grant_table_op(cmd, args, count)` over a slice of argument structs.
///
/// # Safety
/// `T` must be the argument struct of `cmd`; mapping operations must name addresses we own.
unsafe fn grant_table_op<T>(cmd: u32, args: &mut [T]) -> Result<usize, i32> {
    // SAFETY: `args` is valid for reads and writes of `args.len()` structs during the call; the
    // caller guarantees the struct type matches `cmd` and the effects are sound.
    result(unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            cmd as usize,
            args.as_mut_ptr() as usize,
            args.len(),
        )
    })
}

/// `GNTTABOP_query_size` for our own table: (current frames, maximum frames).
pub fn gnttab_query_size() -> Result<(u32, u32), i32> {
    let mut q = [QuerySize {
        dom: DomId::SELF,
        pad0: [0; 2],
        nr_frames: 0,
        max_nr_frames: 0,
        status: grant::GntStatus::GENERAL_ERROR,
        pad1: [0; 2],
    }];
    // SAFETY: query_size only writes the struct.
    unsafe { grant_table_op(grant::op::QUERY_SIZE, &mut q) }?;
    if !q[0].status.is_ok() {
        return Err(q[0].status.0 as i32);
    }
    Ok((q[0].nr_frames, q[0].max_nr_frames))
}

/// `GNTTABOP_setup_table` for our own table: fills `frames` with the machine frames of the first
/// `frames.len()` grant-table frames. A failed status is returned as `Err(GNTST value)`.
pub fn gnttab_setup_table(frames: &mut [u64]) -> Result<(), i32> {
    let mut s = [SetupTable {
        dom: DomId::SELF,
        pad0: [0; 2],
        nr_frames: frames.len() as u32,
        status: grant::GntStatus::GENERAL_ERROR,
        pad1: [0; 6],
        frame_list: frames.as_mut_ptr() as u64,
    }];
    // SAFETY: Xen writes at most `nr_frames` entries into `frames`, which is that long.
    unsafe { grant_table_op(grant::op::SETUP_TABLE, &mut s) }?;
    if !s[0].status.is_ok() {
        return Err(s[0].status.0 as i32);
    }
    Ok(())
}

/// `GNTTABOP_map_grant_ref` for a batch; each op's `status` tells its outcome.
///
/// # Safety
/// Each `host_addr` must be a page of our address space reserved for grant mappings (its L1 page
/// table present, nothing else mapped there that Rust uses).
pub unsafe fn gnttab_map(ops: &mut [MapGrantRef]) -> Result<(), i32> {
    // SAFETY: forwarded to the caller.
    unsafe { grant_table_op(grant::op::MAP_GRANT_REF, ops) }.map(|_| ())
}

/// `GNTTABOP_unmap_grant_ref` for a batch.
///
/// # Safety
/// Nothing may access the unmapped addresses afterwards.
pub unsafe fn gnttab_unmap(ops: &mut [UnmapGrantRef]) -> Result<(), i32> {
    // SAFETY: forwarded to the caller.
    unsafe { grant_table_op(grant::op::UNMAP_GRANT_REF, ops) }.map(|_| ())
}

/// `GNTTABOP_copy` for a batch.
///
/// # Safety
/// Local frames named as destinations must be ours and not hold anything Rust relies on.
pub unsafe fn gnttab_copy(ops: &mut [GnttabCopy]) -> Result<(), i32> {
    // SAFETY: forwarded to the caller.
    unsafe { grant_table_op(grant::op::COPY, ops) }.map(|_| ())
}

/// `HYPERVISOR_event_channel_op(cmd, arg)`.
///
/// # Safety
/// `T` must be the argument struct of `cmd`.
unsafe fn evtchn_op<T>(cmd: u32, arg: &mut T) -> Result<usize, i32> {
    // SAFETY: `arg` is valid for reads and writes during the call; event-channel operations do
    // not touch other memory.
    result(unsafe { hypercall2(nr::EVENT_CHANNEL_OP, cmd as usize, arg as *mut T as usize) })
}

/// `EVTCHNOP_alloc_unbound`: a port of ours that `remote` may bind.
pub fn evtchn_alloc_unbound(remote: DomId) -> Result<Port, i32> {
    let mut a = AllocUnbound {
        dom: DomId::SELF,
        remote_dom: remote,
        port: Port(0),
    };
    // SAFETY: matching struct.
    unsafe { evtchn_op(evtchn::op::ALLOC_UNBOUND, &mut a) }?;
    Ok(a.port)
}

/// `EVTCHNOP_bind_interdomain`.
pub fn evtchn_bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, i32> {
    let mut a = BindInterdomain {
        remote_dom: remote,
        pad: [0; 2],
        remote_port,
        local_port: Port(0),
    };
    // SAFETY: matching struct.
    unsafe { evtchn_op(evtchn::op::BIND_INTERDOMAIN, &mut a) }?;
    Ok(a.local_port)
}

/// `EVTCHNOP_bind_pirq`: deliver physical IRQ `pirq` on a new port.
pub fn evtchn_bind_pirq(pirq: u32, will_share: bool) -> Result<Port, i32> {
    let mut a = BindPirq {
        pirq,
        flags: if will_share {
            evtchn::BIND_PIRQ_WILL_SHARE
        } else {
            0
        },
        port: Port(0),
    };
    // SAFETY: matching struct.
    unsafe { evtchn_op(evtchn::op::BIND_PIRQ, &mut a) }?;
    Ok(a.port)
}

fn port_op(cmd: u32, port: Port) -> Result<(), i32> {
    let mut a = PortOp { port };
    // SAFETY: send/unmask/close all take a `PortOp`.
    unsafe { evtchn_op(cmd, &mut a) }.map(|_| ())
}

/// `EVTCHNOP_send`.
pub fn evtchn_send(port: Port) -> Result<(), i32> {
    port_op(evtchn::op::SEND, port)
}

/// `EVTCHNOP_unmask`.
pub fn evtchn_unmask(port: Port) -> Result<(), i32> {
    port_op(evtchn::op::UNMASK, port)
}

/// `EVTCHNOP_close`.
pub fn evtchn_close(port: Port) -> Result<(), i32> {
    port_op(evtchn::op::CLOSE, port)
}

/// `SCHEDOP_poll`: sleep until one of `ports` is pending or Xen system time reaches
/// `timeout_ns` (absolute; 0 = no timeout). Returns at once if one is already pending.
pub fn sched_poll(ports: &[Port], timeout_ns: u64) -> Result<(), i32> {
    let mut a = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        pad: [0; 4],
        timeout: timeout_ns,
    };
    // SAFETY: `a` and the port array it points to live across the call; Xen only reads them.
    result(unsafe {
        hypercall2(
            nr::SCHED_OP,
            sched::op::POLL as usize,
            &mut a as *mut SchedPoll as usize,
        )
    })
    .map(|_| ())
}

/// `SCHEDOP_yield`.
pub fn sched_yield() {
    // SAFETY: no arguments, no memory effects.
    unsafe { hypercall2(nr::SCHED_OP, sched::op::YIELD as usize, 0) };
}

/// `SCHEDOP_shutdown` with `reason` (`sched::shutdown::*`). Returns only if Xen refused.
pub fn sched_shutdown(reason: u32) -> i32 {
    let mut a = SchedShutdown { reason };
    // SAFETY: `a` lives across the call; Xen only reads it.
    let r = unsafe {
        hypercall2(
            nr::SCHED_OP,
            sched::op::SHUTDOWN as usize,
            &mut a as *mut SchedShutdown as usize,
        )
    };
    r as i32
}

/// `HYPERVISOR_set_timer_op(deadline)`: a one-shot timer event (VIRQ_TIMER) at Xen system time
/// `deadline_ns`; 0 cancels.
pub fn set_timer_op(deadline_ns: u64) -> Result<(), i32> {
    // SAFETY: no memory arguments.
    result(unsafe { super::hypercall::hypercall1(nr::SET_TIMER_OP, deadline_ns as usize) })
        .map(|_| ())
}

/// `HYPERVISOR_physdev_op(cmd, arg)`.
///
/// # Safety
/// `T` must be the argument struct of `cmd`.
unsafe fn physdev_op<T>(cmd: u32, arg: &mut T) -> Result<usize, i32> {
    // SAFETY: `arg` is valid for reads and writes during the call.
    result(unsafe { hypercall2(nr::PHYSDEV_OP, cmd as usize, arg as *mut T as usize) })
}

/// `PHYSDEVOP_eoi`: end of interrupt for `pirq` (re-enables a level-triggered line).
pub fn physdev_eoi(pirq: u32) -> Result<(), i32> {
    let mut a = PhysdevEoi { irq: pirq };
    // SAFETY: matching struct.
    unsafe { physdev_op(physdev::op::EOI, &mut a) }.map(|_| ())
}

/// `PHYSDEVOP_irq_status_query`: whether `pirq` needs an explicit EOI (`XENIRQSTAT_*` flags).
pub fn physdev_irq_status(pirq: u32) -> Result<u32, i32> {
    let mut a = PhysdevIrqStatusQuery {
        irq: pirq,
        flags: 0,
    };
    // SAFETY: matching struct.
    unsafe { physdev_op(physdev::op::IRQ_STATUS_QUERY, &mut a) }?;
    Ok(a.flags)
}

/// `PHYSDEVOP_set_iopl`: the ring from which `in`/`out` are allowed (1 = our PV kernel ring).
pub fn physdev_set_iopl(iopl: u32) -> Result<(), i32> {
    let mut a = PhysdevSetIopl { iopl };
    // SAFETY: matching struct.
    unsafe { physdev_op(physdev::op::SET_IOPL, &mut a) }.map(|_| ())
}

/// `HYPERVISOR_memory_op(cmd, arg)`.
///
/// # Safety
/// `T` must be the argument struct of `cmd`, and every guest handle in it must point to memory
/// valid for what Xen does with it; exchanging or giving away frames must not free memory Rust
/// still uses.
pub unsafe fn memory_op<T>(cmd: u32, arg: &mut T) -> Result<usize, i32> {
    // SAFETY: forwarded to the caller.
    result(unsafe { hypercall2(nr::MEMORY_OP, cmd as usize, arg as *mut T as usize) })
}

/// `HYPERVISOR_mmu_update(reqs, count, &done, foreigndom)`: returns the number done, or the error
/// and the number done before it.
///
/// # Safety
/// The caller owns every page-table entry named in `reqs` and nothing Rust uses is unmapped.
pub unsafe fn mmu_update(reqs: &[[u64; 2]], foreigndom: DomId) -> Result<u32, (i32, u32)> {
    let mut done: u32 = 0;
    // SAFETY: `reqs` and `done` are valid during the call; effects are the caller's contract.
    let r = unsafe {
        hypercall4(
            nr::MMU_UPDATE,
            reqs.as_ptr() as usize,
            reqs.len(),
            &mut done as *mut u32 as usize,
            foreigndom.0 as usize,
        )
    };
    match result(r) {
        Ok(_) => Ok(done),
        Err(e) => Err((e, done)),
    }
}
