//! pcifront in the kernel: [`xenidc::pcifront::PcifrontHost`] over our xenstore connection and
//! hypervisor object, and [`FrontConfig`], the `hal::PciConfig` of one passed-through function,
//! whose every access is a pcifront operation (Xen `io/pciif.h`).

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use hal::PciConfig;
use xenidc::abi::{DomId, GrantRef, Port};
use xenidc::hypervisor::Hypervisor;
use xenidc::pcifront::{HostError, PciAddress, Pcifront, PcifrontHost};
use xenidc::xen::{ops, XenMem};

use super::Ctx;
use crate::time;

/// Longest single sleep while waiting for the backend, so a missed watch only delays us.
const MAX_SLEEP_NS: u64 = 100_000_000;

pub struct FrontHost {
    ctx: Rc<RefCell<Ctx>>,
    watched: Vec<String>,
}

impl FrontHost {
    pub fn new(ctx: Rc<RefCell<Ctx>>) -> Self {
        FrontHost {
            ctx,
            watched: Vec::new(),
        }
    }
}

fn xs_err(what: String, e: xenidc::xenstore::Error) -> HostError {
    HostError {
        what: format!("{what} ({e})"),
        code: e.errno().map(|n| -n.0).unwrap_or(-1),
    }
}

impl PcifrontHost for FrontHost {
    type Page = XenMem;

    fn xs_read(&mut self, path: &str) -> Result<Option<String>, HostError> {
        self.ctx
            .borrow_mut()
            .xs
            .read(path)
            .map_err(|e| xs_err(format!("xenstore read {path}"), e))
    }

    fn xs_write(&mut self, path: &str, value: &str) -> Result<(), HostError> {
        self.ctx
            .borrow_mut()
            .xs
            .write(path, value)
            .map_err(|e| xs_err(format!("xenstore write {path}"), e))
    }

    fn share_page(&mut self, backend: DomId) -> Result<(XenMem, GrantRef), HostError> {
        let mut c = self.ctx.borrow_mut();
        let page = c.hv.alloc_page().map_err(|e| HostError {
            what: format!("allocating the pcifront page ({e})"),
            code: -12,
        })?;
        let gref =
            c.hv.grant_access(page.frame, backend, false)
                .map_err(|e| HostError {
                    what: format!("granting the pcifront page to {backend} ({e})"),
                    code: -1,
                })?;
        // The page lives as long as the connection: for the rest of the run.
        Ok((page.mem, gref))
    }

    fn alloc_unbound(&mut self, backend: DomId) -> Result<Port, HostError> {
        self.ctx
            .borrow_mut()
            .hv
            .evtchn_alloc_unbound(backend)
            .map_err(|e| HostError {
                what: format!("EVTCHNOP_alloc_unbound for {backend} ({e})"),
                code: -1,
            })
    }

    fn notify(&mut self, port: Port) {
        let _ = ops::evtchn_send(port);
    }

    fn wait_event(&mut self, port: Port, deadline_ns: u64) {
        let events = self.ctx.borrow().hv.events();
        if !events.test_and_clear(port) {
            let _ = ops::sched_poll(&[port], time::to_xen_system_time(deadline_ns));
            events.test_and_clear(port);
        }
    }

    fn wait_xs(&mut self, path: &str, deadline_ns: u64) {
        let mut c = self.ctx.borrow_mut();
        if !self.watched.iter().any(|p| p == path) {
            // A watch makes the backend's change wake us; without it we still re-read every
            // MAX_SLEEP_NS.
            if c.xs.watch(path, "pcifront:backend-state").is_ok() {
                self.watched.push(String::from(path));
            }
        }
        let _ = c.xs.take_events("pcifront:");
        let until = deadline_ns.min(time::now_ns() + MAX_SLEEP_NS);
        c.xs.wait(until);
        let _ = c.xs.take_events("pcifront:");
    }

    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
}

pub type Front = Pcifront<FrontHost>;

/// Configuration space of one passed-through function, through pcifront. Failed operations read
/// as all-ones (as a missing device would) and are logged, rate-limited.
#[derive(Clone)]
pub struct FrontConfig {
    front: Rc<RefCell<Front>>,
    addr: PciAddress,
}

impl FrontConfig {
    pub fn new(front: Rc<RefCell<Front>>, addr: PciAddress) -> Self {
        FrontConfig { front, addr }
    }

    fn read(&self, offset: u16, size: u8) -> u32 {
        match self.front.borrow_mut().conf_read(self.addr, offset, size) {
            Ok(v) => v,
            Err(e) => {
                log_failure(&e);
                match size {
                    1 => 0xff,
                    2 => 0xffff,
                    _ => u32::MAX,
                }
            }
        }
    }

    fn write(&self, offset: u16, size: u8, value: u32) {
        if let Err(e) = self
            .front
            .borrow_mut()
            .conf_write(self.addr, offset, size, value)
        {
            log_failure(&e);
        }
    }
}

static FAILURES_LOGGED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn log_failure(e: &xenidc::pcifront::PcifrontError) {
    // pciback refuses some fields by design; log the first few failures only.
    let n = FAILURES_LOGGED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if n < 8 {
        log::warn!(target: "pcifront", "{e}");
    } else if n == 8 {
        log::warn!(target: "pcifront", "further configuration-space errors not logged");
    }
}

impl PciConfig for FrontConfig {
    fn read32(&self, offset: u16) -> u32 {
        self.read(offset & !3, 4)
    }
    fn write32(&self, offset: u16, value: u32) {
        self.write(offset & !3, 4, value)
    }
    fn read16(&self, offset: u16) -> u16 {
        self.read(offset & !1, 2) as u16
    }
    fn read8(&self, offset: u16) -> u8 {
        self.read(offset, 1) as u8
    }
    fn write16(&self, offset: u16, value: u16) {
        self.write(offset & !1, 2, value as u32)
    }
}
