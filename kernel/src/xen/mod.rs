//! The Xen PV side of the kernel: what a driver domain does between boot and serving USB.
//!
//! 1. Hypervisor services ([`env`]): grant table, event bitmaps, the xenstore ring page.
//! 2. xenstore ([`xs`]): our `domid` and `name` (logged), `control/shutdown` watched.
//! 3. pcifront ([`front`], protocol in `xenidc::pcifront`): connect to dom0's pciback, scan the
//!    virtual buses it publishes.
//! 4. The platform ([`platform`]): every function found, with BARs sized through pcifront; memory
//!    BARs mapped from `DOMID_IO`, I/O BARs with I/O privilege, pirq → event channel
//!    ([`irq`]), DMA with machine addresses ([`dma`]).
//! 5. Each supported USB host controller: BAR mapped and its identity logged; for xHCI one
//!    interrupt is provoked and received as an event ([`bringup`]).
//! 6. `usbdom: ready`, then the event loop until `xl shutdown` (`control/shutdown` = `poweroff` /
//!    `halt` / `reboot`) ends the domain cleanly.
//!
//! Every failure is one `error:` line naming the cause and the fix, then the domain shuts down
//! (crashed); every wait has a timeout.

pub mod bringup;
pub mod dma;
pub mod env;
pub mod front;
#[cfg(feature = "selftest")]
pub mod hvtest;
pub mod irq;
pub mod platform;
pub mod store;
pub mod xs;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;

use hal::RegisterIo;
use xenidc::abi::sched::shutdown as reason;
use xenidc::abi::Port;
use xenidc::pcifront::{Pcifront, PcifrontError};
use xenidc::xen::ops;

use crate::exit::{self, Exit};
use crate::platform::pci::{is_supported_host, log_function, usb_host_kind};
use crate::platform::{PciFunction, Platform, Regs};
use crate::pv::start_info::StartInfo;
use crate::time;
use front::{FrontConfig, FrontHost};
use platform::XenPlatform;

/// State shared by pcifront and the service loop.
pub struct Ctx {
    pub hv: env::Hv,
    pub xs: xs::Xs,
}

const SHUTDOWN_PATH: &str = "control/shutdown";
const SHUTDOWN_TOKEN: &str = "usbdom:shutdown";

fn fail(msg: &str) -> ! {
    log::error!(target: "error", "{msg}");
    exit::exit(Exit::Crash)
}

/// Run the Xen PV driver domain: Xen services and xenstore, the `xenhv` self-test if asked for
/// (it needs no PCI device), the platform (pcifront), then the self-test `selftest` if one was
/// asked for (`usbdom.selftest=<name>`), else [`serve`].
pub fn run(si: &StartInfo, selftest: Option<&'static str>) -> ! {
    let ctx = services(si);
    #[cfg(feature = "selftest")]
    if selftest == Some("xenhv") {
        // Needs no PCI device: runs before pcifront.
        log::info!(target: "selftest", "running self-test xenhv on xen-pv");
        match hvtest::run(&ctx) {
            Ok(()) => {
                log::info!(target: "selftest", "SELFTEST PASS xenhv");
                exit::exit(Exit::Pass)
            }
            Err(why) => {
                log::error!(target: "selftest", "SELFTEST FAIL xenhv: {why}");
                exit::exit(Exit::Fail)
            }
        }
    }
    let platform = platform_from(ctx);
    if let Some(name) = selftest {
        crate::selftest::run(name, &platform);
    }
    serve(&platform)
}

/// Hypervisor services and the xenstore connection; logs `xenstore: domid N name X`.
fn services(si: &StartInfo) -> Rc<RefCell<Ctx>> {
    let store_port = Port(si.store_evtchn);
    let hv = env::setup(si.store_mfn, store_port)
        .unwrap_or_else(|e| fail(&format!("setting up Xen services failed: {e}")));
    let events = hv.events();
    let xs = xs::Xs::new(env::xenstore_page(si.store_mfn), store_port, events)
        .unwrap_or_else(|e| fail(&format!("xenstore ring unusable: {e}")));
    let ctx = Rc::new(RefCell::new(Ctx { hv, xs }));

    // Who we are.
    {
        let mut c = ctx.borrow_mut();
        let domid = c.xs.read("domid");
        let name = c.xs.read("name");
        match (domid, name) {
            (Ok(Some(d)), Ok(Some(n))) => log::info!(target: "xenstore", "domid {d} name {n}"),
            (d, n) => fail(&format!(
                "xenstore: cannot read our domid/name ({d:?}, {n:?}): is xenstored running in dom0?"
            )),
        }
    }
    ctx
}

/// pcifront (logs `pcifront: connected`) and the scan of the passed-through buses: the
/// [`XenPlatform`]. Any failure logs one `error:` line and shuts the domain down.
fn platform_from(ctx: Rc<RefCell<Ctx>>) -> XenPlatform {
    // pcifront.
    let front = match Pcifront::connect(FrontHost::new(ctx.clone())) {
        Ok(f) => f,
        Err(e) => fail(&format!("{e}")),
    };
    let roots: alloc::vec::Vec<String> = front
        .roots()
        .iter()
        .map(|r| format!("{:04x}:{:02x}", r.segment, r.bus))
        .collect();
    log::info!(target: "pcifront", "connected (backend {}, roots [{}])",
        front.backend_path(), roots.join(", "));
    let front = Rc::new(RefCell::new(front));
    let found = front.borrow_mut().scan().unwrap_or_else(|e| {
        fail(&format!(
            "scanning the passed-through PCI buses failed: {e}"
        ))
    });
    if found.is_empty() {
        fail(&format!("{}", PcifrontError::NoDevice));
    }
    XenPlatform::new(ctx, front, &found)
}

/// The driver-domain service on Xen: log every passed-through function, refuse the ones that are
/// not UHCI/xHCI controllers, bring up each controller (BAR, interrupt), print `usbdom: ready`,
/// then serve until `xl shutdown`.
pub fn serve(platform: &XenPlatform) -> ! {
    let mut hosts = 0;
    let mut controllers = alloc::vec::Vec::new();
    for f in platform.functions() {
        log_function(f);
        if !is_supported_host(&f.id) {
            let what = match usb_host_kind(&f.id) {
                Some(k) => format!("a {k} USB controller, which usbdom does not drive"),
                None => String::from("not a USB host controller"),
            };
            log::error!(target: "error",
                "PCI device {} ({:04x}:{:04x} class {:06x}) is {what}: pass a UHCI or xHCI controller",
                f.addr, f.id.vendor, f.id.device, f.id.class);
            continue;
        }
        hosts += 1;
        match bring_up(platform, f) {
            Ok(c) => controllers.push(c),
            Err(e) if e.is_empty() => exit::exit(Exit::Crash),
            Err(e) => fail(&e),
        }
    }
    if hosts == 0 {
        fail("no supported USB host controller among the passed-through devices: pass a UHCI or xHCI controller with pci=['BDF']");
    }

    log::info!(target: "usbdom", "ready");
    // The PVUSB backend serves the first controller (one backend per usbdom).
    if let Some(c) = controllers.into_iter().next() {
        let e = crate::backend::serve(platform, c);
        log::error!(target: "error", "{e}");
    }
    service(platform.ctx())
}

/// Map the controller's registers, log them, bind its interrupt and (xHCI) receive one.
fn bring_up(
    p: &XenPlatform,
    f: &PciFunction<FrontConfig>,
) -> Result<crate::backend::Controller, String> {
    let xhci = f.id.class == hal::PciId::CLASS_USB_XHCI;
    let bar = if xhci { 0 } else { 4 };
    // `map_bar` and `bind_interrupt` log their own `error:` line (cause and fix); an empty
    // error here means "already said".
    let regs = p.map_bar(f, bar).map_err(|_| String::new())?;
    if xhci {
        let cap0 = regs.read32(0);
        let hcs1 = regs.read32(4);
        log::info!(target: "xhci",
            "BAR0 mapped: CAPLENGTH={:#04x} HCIVERSION={:#06x} HCSPARAMS1={hcs1:#010x} (slots {}, ports {})",
            cap0 & 0xff, cap0 >> 16, hcs1 & 0xff, hcs1 >> 24);
        if cap0 == u32::MAX || (cap0 & 0xff) < 0x20 {
            return Err(format!(
                "xHCI {}: registers read {cap0:#x} through the mapped BAR0: the mapping does not reach the device",
                f.addr
            ));
        }
    } else if let Regs::Port(pr) = &regs {
        log::info!(target: "uhci",
            "I/O BAR4 at {:#06x}: USBCMD={:#06x} USBSTS={:#06x} PORTSC1={:#06x} PORTSC2={:#06x}",
            pr.base(), regs.read16(0), regs.read16(2), regs.read16(0x10), regs.read16(0x12));
    }
    let irq = p.bind_interrupt(f).map_err(|_| String::new())?;
    if xhci {
        let r = bringup::xhci_first_interrupt(p, &regs, &irq)?;
        log::info!(target: "irq", "first interrupt received ({}) after {} us, events {:?}",
            p.irq_description(), r.waited_ns / 1000, r.events);
    } else {
        log::info!(target: "irq", "{}: UHCI interrupt bound ({}); no interrupt test for UHCI yet",
            f.addr, p.irq_description());
    }
    Ok(crate::backend::Controller {
        addr: f.addr,
        xhci,
        regs,
        irq,
    })
}

/// Watch `control/shutdown` (for [`check_shutdown`]).
pub(crate) fn watch_shutdown(ctx: &Rc<RefCell<Ctx>>) {
    if let Err(e) = ctx.borrow_mut().xs.watch(SHUTDOWN_PATH, SHUTDOWN_TOKEN) {
        log::warn!(target: "usbdom", "cannot watch {SHUTDOWN_PATH} ({e}): xl shutdown will need xl destroy");
    }
}

/// Act on a `control/shutdown` request, if one came (does not return then).
pub(crate) fn check_shutdown(ctx: &Rc<RefCell<Ctx>>) {
    let mut c = ctx.borrow_mut();
    let (events, lost) = match c.xs.take_events("usbdom:") {
        Ok(ev) => ev,
        Err(e) => {
            drop(c);
            fail(&format!("xenstore connection broken: {e}"));
        }
    };
    if lost || events.iter().any(|e| e.token == SHUTDOWN_TOKEN) {
        if let Ok(Some(req)) = c.xs.read(SHUTDOWN_PATH) {
            let req = String::from(req.trim_end_matches('\0'));
            match req.as_str() {
                "" => {}
                "poweroff" | "halt" | "reboot" => {
                    // Acknowledge as Linux does, so the toolstack sees we got it.
                    let _ = c.xs.write(SHUTDOWN_PATH, "");
                    log::info!(target: "usbdom", "shutdown ({req})");
                    drop(c);
                    if req == "reboot" {
                        loop {
                            ops::sched_shutdown(reason::REBOOT);
                        }
                    }
                    exit::exit(Exit::Poweroff);
                }
                other => {
                    log::warn!(target: "usbdom", "unsupported shutdown request {other:?} ignored");
                    let _ = c.xs.write(SHUTDOWN_PATH, "");
                }
            }
        }
    }
}

/// Wait for `control/shutdown` and act on it.
fn service(ctx: &Rc<RefCell<Ctx>>) -> ! {
    watch_shutdown(ctx);
    loop {
        check_shutdown(ctx);
        // Block on xenstore (watch events) with a periodic wake-up as a safety net.
        let until = time::now_ns() + 1_000_000_000;
        ctx.borrow_mut().xs.wait(until);
    }
}
