//! The driver domain's service on Xen: one USB host controller (xHCI or UHCI, chosen by PCI class)
//! driven by its driver, usb-core's [`Bus`] (enumeration, hubs) and the PVUSB backend
//! ([`pvusb::Backend`], `io/usbif.h`), all in one event loop.
//!
//! The kernel's Xen code ([`crate::xen`]) brings the controller up (BAR mapped, interrupt bound and
//! tested) and hands it over as a [`Controller`]; [`serve`] never returns.
//!
//! One round of the loop (the contract in `pvusb`'s crate docs):
//! 1. take the pending bits of the ports the hypervisor object watches (xenstore, the rings the
//!    backend bound, the controller's interrupt); the interrupt's bit is remembered for the driver
//!    ([`LoopIrq`]), so it still acknowledges the controller and re-arms the line;
//! 2. `control/shutdown` ([`crate::xen::check_shutdown`]);
//! 3. the backend's xenstore events, then [`pvusb::Backend::tick`] when it asked for it or
//!    [`TICK_NS`] passed;
//! 4. [`pvusb::Backend::poll_bus`] (completions, each answered frontend served once; root port
//!    changes), then [`pvusb::Backend::process_rings`] once, then `poll_bus` again if the rings
//!    handed the controller transfers; every [`HUB_POLL_NS`] the hubs' status change endpoints;
//! 5. block on all those ports (`SCHEDOP_poll`) until the next deadline, at most
//!    [`MAX_SLEEP_NS`] (the polling safety net).
//!
//! No borrow of the shared [`Ctx`] is held while the backend runs (it borrows it per call through
//! [`SharedHv`] and the xenstore [`XsStore`]).
//!
//! Data path: by default data moves by grant copy through bounce pages; `usbdom.zero_copy=1`
//! grant-maps the frontend's pages for DMA instead (both map and unmap batched, one hypercall per
//! request). Grant copy stays the default: measured side by side in one boot of the Xen bench
//! (TCG, emulated VT-d, `USBDOM_BENCH=xen cargo xtask bench`, four runs), grant map read
//! 0.81-0.94x grant copy's sequential MiB/s and its QD1 4 KiB median latency was 1.34-1.75x grant
//! copy's. The frontend's URBs are small (Linux `usb-storage` over `xen-hcd`: 1.4 grant segments
//! per request on average), so batching the segments of a request saves little, and the unmap
//! cost is per page anyway: ~90-230 us per page unmapped (TLB + IOTLB flush), ~20-70 us per map
//! call, against ~20-33 us per grant-copy call. At QD1 most of a read's latency is outside this
//! loop: usbdom's three URBs per 4 KiB read took ~0.6-0.8 ms of a 2.5-3.9 ms mean read, about two
//! thirds of that in the emulated controller (its work runs inside the doorbell write of the
//! submit); the rest of the read is the frontend and the event-channel round trips between dom0
//! and usbdom on the one emulated CPU.
//! Per round, not per transfer: every completion the controller has is answered first, then
//! each frontend that got answers is served once (its IN data copied back in one batched grant
//! copy, its responses published with at most one notification), then every ring once; if that
//! handed the controller transfers, the controller is polled again before the loop sleeps (the
//! emulated controller often finishes a transfer inside the doorbell write). Measured against
//! the per-transfer loop in one boot, interleaved (A, B, A, B; stock `xen-hcd`, TCG): no
//! regression, sequential read +0-15 %, QD1 median -4 to -13 %; the stock frontend's own limits
//! dominate (one URB per page, and URBs that find its 16-slot ring full wait for a 4 ms timer).
//! The loop's statistics line shows, per 10 s window, the grant hypercalls (calls, entries,
//! time) and where the window's transfers spent their time ([`pvusb::link::UrbTiming`]);
//! `usbdom.trace=1` adds the last transfers one by one ([`pvusb::link::UrbTrace`]).

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::{Cell, RefCell};
use core::marker::PhantomData;

use hal::Clock;
use pvusb::link::UrbTiming;
use pvusb::{Backend, BackendError, Config, PhysDevice, SharedHv};
use usb_core::hc::HostController;
use usb_core::registry::Registry;
use usb_core::{Bus, BusEvent};
use xenidc::abi::Port;
use xenidc::hypervisor::Hypervisor;
use xenidc::xen::GrantStats;

use crate::cmdline;
use crate::platform::{PciAddress, Platform, Regs};
use crate::time::KernelClock;
use crate::xen::dma::XenDma;
use crate::xen::irq::XenIrq;
use crate::xen::platform::XenPlatform;
use crate::xen::store::XsStore;
use crate::xen::{self, Ctx};

/// How long the loop sleeps at most without any event: the safety net for a lost notification.
/// Everything the loop serves wakes it through an event channel, so this only bounds how late a
/// lost one is noticed; an idle usbdom wakes about 10 times a second for it (plus the hub poll
/// and the backend tick), not 50 (it was 20 ms).
pub const MAX_SLEEP_NS: u64 = 100_000_000;
/// How often [`pvusb::Backend::tick`] runs at least.
pub const TICK_NS: u64 = 500_000_000;
/// How often the loop's statistics are logged (while there is traffic).
pub const STATS_NS: u64 = 10_000_000_000;
/// How often the hubs' status-change endpoints are polled.
pub const HUB_POLL_NS: u64 = 250_000_000;

const T: &str = "backend";

/// A controller the Xen bring-up mapped and bound, handed to [`serve`].
pub struct Controller {
    pub addr: PciAddress,
    /// xHCI (else UHCI).
    pub xhci: bool,
    pub regs: Regs,
    pub irq: XenIrq,
}

/// The controller's interrupt as the driver sees it: pending when its event-channel bit was set,
/// or when the loop already took that bit with the others (`Hypervisor::take_pending`).
pub struct LoopIrq {
    inner: XenIrq,
    taken: Rc<Cell<bool>>,
}

impl hal::Interrupt for LoopIrq {
    fn take(&self) -> bool {
        let taken = self.taken.replace(false);
        // Both: the bit may have been set again since the loop took it.
        self.inner.take() | taken
    }
    fn unmask(&self) {
        self.inner.unmask()
    }
    fn count(&self) -> u64 {
        self.inner.count()
    }
}

/// The hal bundle the drivers run with here.
pub struct OnXen<'a>(PhantomData<&'a ()>);
impl hal::Platform for OnXen<'_> {
    type Regs = Regs;
    type Dma = XenDma;
    type Clock = KernelClock;
    type Irq = LoopIrq;
}

type Hv = SharedHv<Ctx, xen::env::Hv>;
type Be = Backend<Hv, XsStore>;

/// Serve the controller to PVUSB frontends until `xl shutdown`. Returns only when the driver or
/// the backend could not start: the error (the caller logs it and keeps answering `xl shutdown`).
pub fn serve(platform: &XenPlatform, c: Controller) -> String {
    match start(platform, c) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn start(platform: &XenPlatform, c: Controller) -> Result<core::convert::Infallible, String> {
    let ctx = platform.ctx().clone();
    let irq_port = c.irq.port;
    let taken = Rc::new(Cell::new(false));
    let irq = LoopIrq {
        inner: c.irq,
        taken: taken.clone(),
    };
    let kind = if c.xhci { "xHCI" } else { "UHCI" };
    log::info!(target: T, "{kind} {}: starting the driver and the PVUSB backend", c.addr);
    if c.xhci {
        let hc = xhci::Xhci::<OnXen<'_>>::new(c.regs, XenDma, KernelClock, Some(irq))
            .map_err(|e| format!("xHCI {}: start: {e}", c.addr))?;
        let bus = Bus::new(hc, XenDma, KernelClock).map_err(|e| format!("usb bus: {e}"))?;
        run(ctx, bus, irq_port, taken)
    } else {
        if let Some(f) = platform.functions().iter().find(|f| f.addr == c.addr) {
            uhci::pci::take_over(&f.config);
        }
        let hc = uhci::Uhci::<OnXen<'_>>::new(c.regs, XenDma, KernelClock, irq)
            .map_err(|e| format!("UHCI {}: start: {e}", c.addr))?;
        let bus = Bus::new(hc, XenDma, KernelClock).map_err(|e| format!("usb bus: {e}"))?;
        run(ctx, bus, irq_port, taken)
    }
}

fn be_err(what: &str, e: BackendError) -> String {
    format!("PVUSB backend: {what}: {e}")
}

/// Log the devices a bus event list reports.
fn log_events(registry: &Registry, events: &[BusEvent]) {
    for e in events {
        match e {
            BusEvent::Attached(id) => {
                if let Some(d) = registry.get(*id) {
                    let p = PhysDevice::from_usb_device(1, d);
                    log::info!(target: T, "device {} {:04x}:{:04x} {:?} '{}'{}",
                        p.path, d.descriptor.vendor, d.descriptor.product, d.info.speed,
                        d.product.as_deref().unwrap_or(""),
                        if d.hub.is_some() { " (hub, not exportable)" } else { "" });
                }
            }
            BusEvent::Detached(_, route) => log::info!(target: T, "device 1-{route} removed"),
            BusEvent::Failed(route, err) => {
                log::warn!(target: T, "device 1-{route} failed to enumerate: {err}")
            }
        }
    }
}

/// The grant hypercalls of one statistics window: per kind, hypercalls / entries / time in them.
fn grant_line(a: &GrantStats, b: &GrantStats) -> String {
    let us = |x: u64, y: u64| (y.saturating_sub(x)) / 1000;
    format!(
        "grant map {}/{}/{} us, unmap {}/{}/{} us, copy {}/{}/{} us (calls/entries/time)",
        b.map_calls - a.map_calls,
        b.maps - a.maps,
        us(a.map_ns, b.map_ns),
        b.unmap_calls - a.unmap_calls,
        b.unmaps - a.unmaps,
        us(a.unmap_ns, b.unmap_ns),
        b.copy_calls - a.copy_calls,
        b.copies - a.copies,
        us(a.copy_ns, b.copy_ns),
    )
}

/// Where the window's forwarded transfers spent their time, mean per transfer
/// ([`pvusb::link::UrbTiming`]).
fn urb_line(t: &UrbTiming) -> String {
    let mean = |ns: u64| ns / t.urbs.max(1) / 1000;
    format!(
        "urbs {}: ring->submit {} us (of which the controller's submit call {} us), submit->completion {} us, completion->response+notify {} us (means)",
        t.urbs,
        mean(t.to_submit_ns),
        mean(t.submit_call_ns),
        mean(t.in_controller_ns),
        mean(t.to_response_ns),
    )
}

/// A wake-up this close before the deadline is counted apart in the statistics (Xen's poll timer
/// and the kernel clock may disagree by a little).
const EARLY_SLACK_NS: u64 = 500_000;

/// Early wake-ups with no port of ours pending after which the pending ports are logged.
const SPURIOUS_REPORT: u64 = 1000;

/// Diagnostics of a loop that keeps waking up: every pending event channel, masked or not.
/// (The early wake-ups with nothing pending that earlier statistics showed for nearly every
/// sleep under traffic were the busy rounds after a real wake-up, counted as wake-ups.)
fn report_stuck_ports(ctx: &Rc<RefCell<Ctx>>) {
    let ev = ctx.borrow().hv.events();
    let mut s = String::new();
    for p in 1..1024u32 {
        let port = Port(p);
        if ev.is_pending(port) {
            s.push_str(&format!(
                " {p}{}",
                if ev.is_masked(port) { "(masked)" } else { "" }
            ));
        }
    }
    log::info!(target: T, "{SPURIOUS_REPORT} early wake-ups with none of the loop's ports pending so far (each costs one loop round); ports pending now:{s}");
}

/// `usbdom.trace=1`: with each statistics line, the last forwarded transfers of each frontend
/// not printed before ([`pvusb::link::UrbTrace`]): when each was taken off the ring (Xen system
/// time), and how long it spent before the controller, in it, and until its response was
/// published. The Xen bench prints them beside the frontend's usbmon timestamps.
fn trace_urbs(be: &Be, traced_until: &mut u64) {
    let mut last = *traced_until;
    for (dom, t) in be.recent_urbs() {
        if t.t_ring <= *traced_until {
            continue;
        }
        last = last.max(t.t_ring);
        log::info!(target: T, "urb trace: frontend {} id {} ep {:#04x} len {} actual {} ring@{} us, ring->submit {} us, submit->done {} us, done->response {} us",
            dom.0, t.id, t.ep, t.len, t.actual, t.t_ring / 1000,
            t.t_submit.saturating_sub(t.t_ring) / 1000,
            t.t_done.saturating_sub(t.t_submit) / 1000,
            t.t_response.saturating_sub(t.t_done) / 1000);
    }
    *traced_until = last;
}

/// [`pvusb::Backend::poll_bus`], its error logged: whether anything happened.
fn poll<C: HostController>(be: &mut Be, bus: &mut Bus<C, XenDma, KernelClock>) -> bool {
    match be.poll_bus(bus) {
        Ok(any) => any,
        Err(e) => {
            log::warn!(target: T, "{}", be_err("controller events", e));
            false
        }
    }
}

fn run<C: HostController>(
    ctx: Rc<RefCell<Ctx>>,
    mut bus: Bus<C, XenDma, KernelClock>,
    irq_port: Port,
    taken: Rc<Cell<bool>>,
) -> Result<core::convert::Infallible, String> {
    let zero_copy = cmdline::get(cmdline::current(), "usbdom.zero_copy") == Some("1");
    let trace = cmdline::get(cmdline::current(), "usbdom.trace") == Some("1");
    let mut traced_until = 0u64;
    let hv = {
        let c = ctx.borrow();
        let port = c.hv.xenstore_port();
        let va = c.hv.xenstore_page().addr();
        let mfn = crate::pv::mm::va_to_mfn(va)
            .ok_or_else(|| String::from("the xenstore page has no machine frame"))?;
        SharedHv::new(
            ctx.clone(),
            |c: &Ctx| &c.hv,
            |c: &mut Ctx| &mut c.hv,
            xen::env::xenstore_page(mfn),
            port,
        )
    };
    let mut be: Be = Backend::new(
        hv,
        XsStore::new(ctx.clone()),
        Config {
            controller: 1,
            zero_copy,
        },
    );
    be.start().map_err(|e| be_err("start", e))?;

    let clock = KernelClock;
    let t0 = clock.now_ns();
    let events = bus.scan();
    log::info!(target: T, "{} device(s) enumerated in {} ms", bus.registry.len(),
        (clock.now_ns() - t0) / 1_000_000);
    log_events(&bus.registry, &events);
    be.handle_bus_events(&mut bus.hc, &bus.registry, &events)
        .map_err(|e| be_err("publishing the devices", e))?;
    log::info!(target: T, "serving PVUSB frontends ({} data path)",
        if zero_copy { "zero-copy grant-map" } else { "grant-copy bounce" });
    xen::watch_shutdown(&ctx);

    // `tick` runs at least every [`TICK_NS`], earlier when the backend asks for it.
    let mut next_tick = clock.now_ns();
    let mut next_hubs = clock.now_ns() + HUB_POLL_NS;
    let mut broken_logged = false;
    // Loop statistics, logged every STATS_NS while there is traffic.
    let (mut busy_rounds, mut sleeps, mut timeouts) = (0u64, 0u64, 0u64);
    let mut next_stats = clock.now_ns() + STATS_NS;
    let mut grants_before = ctx.borrow().hv.grant_stats();
    let mut urbs_before = pvusb::link::urb_timing_total();
    let (mut woke_early, mut spurious) = (false, 0u64);
    // Early wake-ups with none of our ports pending in this statistics window, and how many of
    // them came within EARLY_SLACK_NS of the deadline.
    let (mut early_none, mut early_near, mut early_by) = (0u64, 0u64, 0u64);
    loop {
        // 1. Pending ports: cleared before the work, so an event that arrives during the work
        //    stays pending and ends the block below at once.
        let mut any_port = false;
        ctx.borrow_mut().hv.take_pending(&mut |p| {
            any_port = true;
            if p == irq_port {
                taken.set(true);
            }
        });
        // Only the first round after a wake-up says what woke it (the busy rounds that follow
        // find nothing pending, and must not count as wake-ups: they once did, and the
        // statistics showed nearly every sleep as a spurious early wake-up).
        let woken_by_nothing = core::mem::take(&mut woke_early) && !any_port;
        if woken_by_nothing {
            early_none += 1;
            if early_by < EARLY_SLACK_NS {
                early_near += 1;
            }
            spurious += 1;
            if spurious == SPURIOUS_REPORT {
                report_stuck_ports(&ctx);
            }
        }
        // 2. xl shutdown.
        xen::check_shutdown(&ctx);
        // 3. xenstore, timed work.
        if let Err(e) = be.process_xenstore(&mut bus.hc) {
            // Our own xenstore connection failing: nothing a peer can cause; keep serving what
            // is connected and say it once.
            if !broken_logged {
                log::error!(target: "error", "{}", be_err("xenstore", e));
                broken_logged = true;
            }
        }
        let now = clock.now_ns();
        if next_tick <= now {
            next_tick = match be.tick(&mut bus.hc) {
                Ok(t) => t.map_or(now + TICK_NS, |t| t.min(now + TICK_NS)),
                Err(e) => {
                    log::warn!(target: T, "{}", be_err("tick", e));
                    now + TICK_NS
                }
            };
        }
        // 4. The controller first (finished transfers are answered, each frontend that got an
        //    answer is served once), then every ring once; and the controller again if the
        //    rings handed it transfers: an emulated controller may finish them inside the
        //    doorbell write, and answering them now saves a sleep and a wake-up (measured: the
        //    QD1 4 KiB read took twice as long without it).
        let mut busy = poll(&mut be, &mut bus);
        let forwarded = be.stats().links.forwarded;
        busy |= be.process_rings(&mut bus.hc);
        if be.stats().links.forwarded != forwarded {
            busy |= poll(&mut be, &mut bus);
        }
        let now = clock.now_ns();
        if now >= next_hubs {
            next_hubs = now + HUB_POLL_NS;
            let evs = bus.poll_hubs();
            if !evs.is_empty() {
                log_events(&bus.registry, &evs);
                if let Err(e) = be.handle_bus_events(&mut bus.hc, &bus.registry, &evs) {
                    log::warn!(target: T, "{}", be_err("hub events", e));
                }
            }
        }
        if now >= next_stats {
            next_stats = now + STATS_NS;
            let grants = ctx.borrow().hv.grant_stats();
            let urbs = pvusb::link::urb_timing_total();
            if busy_rounds != 0 {
                log::info!(target: T, "loop: {busy_rounds} busy rounds, {sleeps} sleeps ({timeouts} ended by the timeout, {early_none} woke early with no port of ours pending, {early_near} of them within {} us of the deadline); rings {:?}; {}; {}",
                    EARLY_SLACK_NS / 1000, be.stats(), grant_line(&grants_before, &grants), urb_line(&urbs.since(&urbs_before)));
            }
            if trace {
                trace_urbs(&be, &mut traced_until);
            }
            grants_before = grants;
            urbs_before = urbs;
            (busy_rounds, sleeps, timeouts) = (0, 0, 0);
            (early_none, early_near) = (0, 0);
        }
        if busy {
            busy_rounds += 1;
            continue;
        }
        // 5. Sleep until something happens or the next deadline.
        let deadline = (clock.now_ns() + MAX_SLEEP_NS)
            .min(next_tick)
            .min(next_hubs);
        // The hypervisor object's deadlines are Xen system time, not the kernel clock.
        let r = ctx
            .borrow_mut()
            .hv
            .block(Some(crate::time::to_xen_system_time(deadline)));
        if let Err(e) = r {
            log::warn!(target: T, "block: {e:?}");
        }
        sleeps += 1;
        let woke = clock.now_ns();
        woke_early = woke < deadline;
        early_by = deadline.saturating_sub(woke);
        if !woke_early {
            timeouts += 1;
        }
    }
}
