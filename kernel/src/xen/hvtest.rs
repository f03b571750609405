//! `usbdom.selftest=xenhv`: the real-Xen [`Hypervisor`] implementation checked against Xen
//! itself, without any PCI device: the domain grants one of its pages to itself and maps the grant
//! (`GNTTABOP_map_grant_ref`), sees the same bytes through both views, cannot revoke the grant while
//! it is mapped (`GTF_reading/writing`), can after the unmap; copies through a grant
//! (`GNTTABOP_copy`); and sends itself an event over a loopback inter-domain channel
//! (`EVTCHNOP_alloc_unbound` + `bind_interdomain` + `send`, seen with `SCHEDOP_poll`).
//! It also checks the shared xenstore connection: the PVUSB backend's [`XsStore`] writes, lists,
//! removes and watches under our `data/` directory, and its watch events reach it and nobody else.
//! Every wait has a deadline; every failure names the step.

use alloc::format;
use alloc::string::String;

use xenidc::abi::grant::GntStatus;
use xenidc::abi::DomId;
use xenidc::hypervisor::{CopyOp, CopyPtr, Hypervisor};
use xenidc::shm::SharedMem;

use super::store::XsStore;
use super::Ctx;
use crate::time;
use alloc::rc::Rc;
use core::cell::RefCell;
use pvusb::store::Store;

fn step<T, E: core::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

pub fn run(shared: &Rc<RefCell<Ctx>>) -> Result<(), String> {
    store_demux(shared)?;
    let mut guard = shared.borrow_mut();
    let ctx = &mut *guard;
    let me: u16 = match ctx.xs.read("domid") {
        Ok(Some(d)) => d
            .trim()
            .parse()
            .map_err(|_| format!("domid {d:?} is not a number"))?,
        other => return Err(format!("cannot read our domid: {other:?}")),
    };
    let me = DomId(me);
    let hv = &mut ctx.hv;

    // Grant one of our pages to ourselves and map it.
    let page = step("alloc_page", hv.alloc_page())?;
    for i in 0..64 {
        step("fill", page.mem.write_u32(i * 4, 0xc0de_0000 | i as u32))?;
    }
    let gref = step("grant_access", hv.grant_access(page.frame, me, false))?;
    let map = step("map_grant (own grant)", hv.map_grant(me, gref, false))?;
    if map.bus_addr != page.frame << 12 {
        return Err(format!(
            "map_grant: dev_bus_addr {:#x} is not the page's machine address {:#x}",
            map.bus_addr,
            page.frame << 12
        ));
    }
    for i in 0..64 {
        let v = step("read through the mapping", map.mem.read_u32(i * 4))?;
        if v != 0xc0de_0000 | i as u32 {
            return Err(format!("mapping word {i} reads {v:#x}"));
        }
    }
    step("write through the mapping", map.mem.write_u32(256, 0x5eed))?;
    let back = step("read the page", page.mem.read_u32(256))?;
    if back != 0x5eed {
        return Err(format!(
            "a write through the mapping reads {back:#x} in the page"
        ));
    }
    // Bulk copies through both views (unaligned start, word middle, tail).
    let pattern: [u8; 100] = core::array::from_fn(|i| (i * 7 + 3) as u8);
    step(
        "write_bytes through the mapping",
        map.mem.write_bytes(1003, &pattern),
    )?;
    let mut seen = [0u8; 100];
    step(
        "read_bytes of the page",
        page.mem.read_bytes(1003, &mut seen),
    )?;
    if seen != pattern {
        return Err(String::from(
            "bytes written through the mapping differ in the page",
        ));
    }
    if !hv.grant_in_use(gref) {
        return Err(String::from("grant not marked in use while mapped"));
    }
    if hv.end_access(gref).is_ok() {
        return Err(String::from(
            "end_access succeeded while the grant was mapped",
        ));
    }
    step("unmap_grant", hv.unmap_grant(map))?;
    if hv.grant_in_use(gref) {
        return Err(String::from("grant still in use after the unmap"));
    }

    // Grant copy: from the grant into a second page of ours.
    let dst = step("alloc_page (copy target)", hv.alloc_page())?;
    let mut ops = [CopyOp::new(
        CopyPtr::Grant {
            dom: me,
            gref,
            offset: 0,
        },
        CopyPtr::Local {
            frame: dst.frame,
            offset: 512,
        },
        64,
    )];
    step("grant_copy", hv.grant_copy(&mut ops))?;
    if ops[0].status != GntStatus::OKAY {
        return Err(format!(
            "grant_copy status {} ({})",
            ops[0].status.0,
            ops[0].status.describe()
        ));
    }
    for i in 0..16 {
        let v = step("read the copy", dst.mem.read_u32(512 + i * 4))?;
        if v != 0xc0de_0000 | i as u32 {
            return Err(format!("copied word {i} reads {v:#x}"));
        }
    }
    step("end_access", hv.end_access(gref))?;
    // A revoked grant can no longer be mapped.
    if let Ok(m) = hv.map_grant(me, gref, true) {
        let _ = hv.unmap_grant(m);
        return Err(String::from("a revoked grant could still be mapped"));
    }
    hv.free_page(page);
    hv.free_page(dst);

    // Loopback event channel.
    let a = step("evtchn_alloc_unbound", hv.evtchn_alloc_unbound(me))?;
    let b = step("evtchn_bind_interdomain", hv.evtchn_bind_interdomain(me, a))?;
    step("evtchn_unmask", hv.evtchn_unmask(a))?;
    let mut drained = 0;
    hv.take_pending(&mut |_| drained += 1);
    step("evtchn_send", hv.evtchn_send(b))?;
    let deadline = time::xen_system_time_ns() + 2_000_000_000;
    step("poll", hv.poll(&[a], Some(deadline)))?;
    let mut seen = false;
    hv.take_pending(&mut |p| seen |= p == a);
    if !seen {
        return Err(format!(
            "no event on port {} after send on port {} (poll returned)",
            a.0, b.0
        ));
    }
    step("evtchn_close", hv.evtchn_close(b))?;
    step("evtchn_close", hv.evtchn_close(a))?;
    dma_contiguous()?;
    log::info!(target: "xenhv",
        "own grant {} mapped/copied/revoked, loopback ports {}<->{} ok, {} grant refs left",
        gref.0, a.0, b.0, hv.grants_available());
    Ok(())
}

/// Multi-page DMA buffers are machine-contiguous (`XENMEM_exchange`), zeroed, naturally aligned
/// (so a 64 KiB one never crosses a 64 KiB boundary) and usable; freeing and reallocating works.
fn dma_contiguous() -> Result<(), String> {
    use hal::{DmaAlloc, DmaBuf};
    let dma = super::dma::XenDma;
    for round in 0..2 {
        for size in [4096usize, 8192, 3 * 4096, 16384, 65536] {
            let b = dma
                .alloc(size, 64)
                .map_err(|e| format!("DMA alloc of {size} bytes (round {round}): {e}"))?;
            let pages = size.div_ceil(4096);
            let span = pages.next_power_of_two() as u64 * 4096;
            if b.bus_addr() % span != 0 {
                return Err(format!(
                    "DMA buffer of {size} bytes at {:#x} is not aligned to {span:#x}",
                    b.bus_addr()
                ));
            }
            for i in 0..pages {
                let mfn = crate::pv::mm::va_to_mfn(b.va() + i * 4096)
                    .ok_or_else(|| format!("DMA page {i} outside the p2m"))?;
                if mfn << 12 != b.bus_addr() + (i as u64) * 4096 {
                    return Err(format!(
                        "DMA buffer of {size} bytes: page {i} is machine frame {mfn:#x}, not contiguous with {:#x}",
                        b.bus_addr()
                    ));
                }
            }
            if b.read64(size - 8) != 0 || b.read32(0) != 0 {
                return Err(format!("DMA buffer of {size} bytes not zeroed"));
            }
            b.write64(size - 8, 0x0123_4567_89ab_cdef);
            if b.read64(size - 8) != 0x0123_4567_89ab_cdef {
                return Err(format!("DMA buffer of {size} bytes does not read back"));
            }
        }
    }
    log::info!(target: "xenhv", "DMA: 1..16-page buffers machine-contiguous, aligned, zeroed (twice)");
    Ok(())
}

/// The backend's view of xenstore ([`XsStore`]) on the shared connection, with event
/// demultiplexing by token prefix.
fn store_demux(shared: &Rc<RefCell<Ctx>>) -> Result<(), String> {
    let mut st = XsStore::new(shared.clone());
    step("mkdir data/xenhv", st.mkdir("data/xenhv"))?;
    step("write data/xenhv/a", st.write("data/xenhv/a", "1"))?;
    let v = step("read data/xenhv/a", st.read("data/xenhv/a"))?;
    if v.as_deref() != Some("1") {
        return Err(format!("data/xenhv/a reads {v:?}"));
    }
    let dir = step("directory data/xenhv", st.directory("data/xenhv"))?;
    if dir != ["a"] {
        return Err(format!("data/xenhv lists {dir:?}"));
    }
    step("watch data/xenhv", st.watch("data/xenhv", "t1"))?;
    // Another user's watch on the same node.
    step(
        "usbdom watch",
        shared.borrow_mut().xs.watch("data/xenhv", "usbdom:xenhv"),
    )?;
    step("write data/xenhv/b", st.write("data/xenhv/b", "2"))?;
    let deadline = time::now_ns() + 5_000_000_000;
    let mut got = alloc::vec::Vec::new();
    while time::now_ns() < deadline {
        let (ev, _) = step("take_events", st.take_events())?;
        got.extend(ev);
        if got.iter().any(|e| e.path.ends_with("data/xenhv/b")) {
            break;
        }
        shared.borrow_mut().xs.wait(deadline);
    }
    if !got.iter().any(|e| e.path.ends_with("data/xenhv/b")) {
        return Err(format!("no watch event for data/xenhv/b (got {got:?})"));
    }
    if got.iter().any(|e| e.token != "t1") {
        return Err(format!("the backend got events of another user: {got:?}"));
    }
    let (mine, _) = step(
        "usbdom events",
        shared.borrow_mut().xs.take_events("usbdom:"),
    )?;
    if !mine.iter().all(|e| e.token == "usbdom:xenhv") || mine.is_empty() {
        return Err(format!("the usbdom user's events are wrong: {mine:?}"));
    }
    step("unwatch", st.unwatch("data/xenhv", "t1"))?;
    step("rm data/xenhv", st.rm("data/xenhv"))?;
    if step("read after rm", st.read("data/xenhv/a"))?.is_some() {
        return Err(String::from("data/xenhv/a still there after rm"));
    }
    log::info!(target: "xenhv", "xenstore shared by token prefix: backend got {} event(s), usbdom {}", got.len(), mine.len());
    Ok(())
}
