//! `uhci`: the UHCI driver against a real (emulated) controller: QEMU's `piix3-usb-uhci` with a
//! `usb-storage` stick and a `usb-kbd` (UHCI 1.1; USB 2.0 §9 enumeration; HID 1.11 boot keyboard).
//!
//! Steps, each logged; the first failure fails the test:
//! 1. take the controller from the BIOS (LEGSUP), map its I/O BAR4, start [`uhci::Uhci`];
//! 2. enumerate both root ports with usb-core's [`Bus`]: a mass-storage and a HID keyboard
//!    interface must show up;
//! 3. the stick, through the shared BOT/SCSI reader [`super::bot`]: read the whole image, compare
//!    its FNV-1a 64 with `usbdom.disk_fnv` (and the size with `usbdom.disk_bytes`) from the
//!    command line, log the throughput against QEMU's UHCI cap of 1280 bytes per frame, then write
//!    a pattern and read it back;
//! 4. keyboard: print `uhci: keyboard ready`, on which the harness sends keys (`sendkey`); wait
//!    for reports with two different keys down;
//! 5. hot-unplug: with an interrupt transfer outstanding print `uhci: unplug keyboard` (harness:
//!    `device_del`); the transfer must end with an error and the bus must report the detach;
//! 6. hot-plug: print `uhci: plug keyboard` (harness: `device_add`); a keyboard must enumerate.
//!
//! The same code runs on the Xen PV platform (steps 4–6 need the harness).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hal::{Clock, DmaAlloc, DmaBuf, DmaSegment};
use uhci::Uhci;
use usb_core::enumerate::{Bus, BusEvent};
use usb_core::hc::{
    Completion, DeviceId, Direction, EndpointAddress, HcError, HcEvent, HostController,
    TransferFlags, TransferId, TransferRequest, TransferType,
};
use usb_core::request::SetupPacket;

use super::bot::Bot;
use crate::cmdline;
use crate::platform::Platform;

pub use super::common::{ClockRef, DmaRef, On};

pub type UhciBus<'a, P> = Bus<
    Uhci<On<'a, P>>,
    DmaRef<'a, <P as hal::Platform>::Dma>,
    ClockRef<'a, <P as hal::Platform>::Clock>,
>;

const T: &str = "uhci";

pub fn run<P: Platform>(p: &P, cmdline: &str) -> Result<(), String> {
    let mut bus = start(p)?;
    let events = bus.scan();
    for e in &events {
        log::info!(target: T, "scan: {e:?}");
    }
    let storage = find_interface(&bus, 8).ok_or("no mass-storage device enumerated")?;
    let kbd = find_interface(&bus, 3).ok_or("no HID device enumerated")?;
    log::info!(target: T, "enumerated: storage {:?}, keyboard {:?}", storage.dev, kbd.dev);

    storage_checks(p, &mut bus, cmdline)?;

    keyboard_reports(p, &mut bus, &kbd)?;
    hotplug(p, &mut bus, &kbd)?;
    let st = bus.hc.stats();
    log::info!(target: T, "stats: {st:?}");
    Ok(())
}

/// Find the UHCI function, take it over and start the driver and the bus.
pub fn start<P: Platform>(p: &P) -> Result<UhciBus<'_, P>, String> {
    let f = p
        .functions()
        .iter()
        .find(|f| f.id.class == hal::PciId::CLASS_USB_UHCI)
        .ok_or("no UHCI controller on PCI (QEMU: -device piix3-usb-uhci)")?;
    uhci::pci::take_over(&f.config);
    let regs = p
        .map_bar(f, 4)
        .map_err(|e| format!("UHCI {}: mapping I/O BAR4: {e}", f.addr))?;
    let irq = p
        .bind_interrupt(f)
        .map_err(|e| format!("UHCI {}: interrupt: {e}", f.addr))?;
    let hc = Uhci::<On<'_, P>>::new(regs, DmaRef(p.dma()), ClockRef(p.clock()), irq)
        .map_err(|e| format!("UHCI {}: start: {e}", f.addr))?;
    log::info!(target: T, "UHCI {} running ({})", f.addr, p.irq_description());
    Bus::new(hc, DmaRef(p.dma()), ClockRef(p.clock())).map_err(|e| format!("bus: {e}"))
}

/// A device with an interface of some class: device, interface number, endpoints.
#[derive(Debug, Clone)]
pub struct Found {
    pub dev: DeviceId,
    pub iface: u8,
    pub endpoints: Vec<(EndpointAddress, TransferType, u16)>,
}

impl Found {
    /// The first endpoint of `kind` and direction `dir`.
    pub fn endpoint(&self, kind: TransferType, dir: Direction) -> Option<(EndpointAddress, u16)> {
        self.endpoints
            .iter()
            .find(|(a, k, _)| *k == kind && a.direction() == dir)
            .map(|(a, _, m)| (*a, *m))
    }
}

fn find_interface<P: Platform>(bus: &UhciBus<'_, P>, class: u8) -> Option<Found> {
    bus.registry.iter().find_map(|d| {
        let cfg = d.config.as_ref()?;
        let i = cfg
            .interfaces
            .iter()
            .find(|i| i.class == class && i.alternate == 0)?;
        Some(Found {
            dev: d.id,
            iface: i.number,
            endpoints: i
                .endpoints
                .iter()
                .map(|e| (e.address, e.kind(), e.max_packet()))
                .collect(),
        })
    })
}

/// Handle one bus event (root-port changes) and, every 250 ms, the hubs' ports.  Returns the
/// transfer completion it came across, if any.
fn service<P: Platform>(
    p: &P,
    bus: &mut UhciBus<'_, P>,
    events: &mut Vec<BusEvent>,
    next_hub_poll: &mut u64,
) -> Option<Completion> {
    let now = p.clock().now_ns();
    if now >= *next_hub_poll {
        *next_hub_poll = now + 250_000_000;
        let evs = bus.poll_hubs();
        if !evs.is_empty() {
            log::info!(target: T, "hubs: {evs:?}");
        }
        events.extend(evs);
    }
    match bus.poll() {
        Some(HcEvent::Transfer(c)) => return Some(c),
        Some(HcEvent::PortChange(port)) => {
            let evs = bus.handle_root_port(port);
            log::info!(target: T, "root port {port}: {evs:?}");
            events.extend(evs);
        }
        Some(HcEvent::ControllerDead) => log::error!(target: T, "controller dead"),
        None => p.clock().delay_us(200),
    }
    None
}

/// Wait for the completion of `id`, handling port changes meanwhile (so hotplug works while a
/// transfer is outstanding).  Returns the completion result and length; `None` on timeout.
fn wait_transfer<P: Platform>(
    p: &P,
    bus: &mut UhciBus<'_, P>,
    id: TransferId,
    timeout_ms: u64,
    events: &mut Vec<BusEvent>,
) -> Option<Result<u32, HcError>> {
    let deadline = p.clock().now_ns() + timeout_ms * 1_000_000;
    let mut next_hub_poll = p.clock().now_ns() + 250_000_000;
    while p.clock().now_ns() < deadline {
        if bus.hc.is_dead() {
            return Some(Err(HcError::ControllerDead));
        }
        if let Some(c) = service(p, bus, events, &mut next_hub_poll) {
            if c.id == id {
                return Some(c.result.map(|_| c.actual));
            }
        }
    }
    None
}

/// QEMU's UHCI moves at most 1280 bytes per 1 ms frame (`frame_bandwidth` in hcd-uhci.c).
pub const QEMU_UHCI_CAP_BYTES_PER_FRAME: u64 = 1280;

/// Step 3: whole-image checksum and write/read-back through the shared BOT/SCSI reader.
fn storage_checks<P: Platform>(
    p: &P,
    bus: &mut UhciBus<'_, P>,
    cmdline: &str,
) -> Result<(), String> {
    let mut bot = Bot::find(bus)?;
    let ident = bot.init(bus)?;
    let total = bot.blocks * bot.block_size as u64;
    log::info!(target: T, "storage '{ident}': {} blocks of {} bytes", bot.blocks, bot.block_size);
    let want_bytes = cmdline::get(cmdline, "usbdom.disk_bytes").and_then(|v| v.parse::<u64>().ok());
    let want_fnv =
        cmdline::get(cmdline, "usbdom.disk_fnv").and_then(|v| u64::from_str_radix(v, 16).ok());
    let (Some(want_bytes), Some(want_fnv)) = (want_bytes, want_fnv) else {
        return Err(String::from(
            "usbdom.disk_bytes / usbdom.disk_fnv missing from the command line",
        ));
    };
    if want_bytes != total {
        return Err(format!(
            "capacity {total} bytes, the image has {want_bytes}"
        ));
    }
    let t0 = p.clock().now_ns();
    let f0 = bus.hc.frames();
    let h = bot.image_fnv1a64(bus)?;
    let ns = (p.clock().now_ns() - t0).max(1);
    let frames = (bus.hc.frames() - f0).max(1);
    // Throughput against the bus: bytes per 1 ms frame of the controller's own clock, compared
    // with QEMU's cap of 1280 bytes per frame (the CPU clock under TCG drifts from QEMU's).
    let per_frame_x10 = total * 10 / frames;
    let permille = total * 1000 / (frames * QEMU_UHCI_CAP_BYTES_PER_FRAME);
    log::info!(target: T,
        "read {} KiB in {frames} frames ({} ms CPU clock): {}.{} bytes/frame = {}.{}% of QEMU's UHCI cap of {} bytes/frame; fnv1a64 {h:016x}",
        total / 1024, ns / 1_000_000, per_frame_x10 / 10, per_frame_x10 % 10,
        permille / 10, permille % 10, QEMU_UHCI_CAP_BYTES_PER_FRAME);
    log::info!(target: "bench",
        "uhci_read bytes={total} frames={frames} cap_bytes_per_frame={QEMU_UHCI_CAP_BYTES_PER_FRAME} ratio_permille={permille} cpu_ns={ns}");
    if h != want_fnv {
        return Err(format!("image checksum {h:016x}, expected {want_fnv:016x}"));
    }
    log::info!(target: T, "whole-image checksum matches");
    // Write a pattern (not a multiple of the 64-byte packet in its first block's offset) and
    // read it back.
    let blocks = bot.max_blocks().min(bot.blocks as u16);
    let at = bot.blocks / 3;
    let len = blocks as usize * bot.block_size as usize;
    let pattern: Vec<u8> = (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_246_822_519) >> 13) as u8 ^ 0xa5)
        .collect();
    bot.write_read_back(bus, at, blocks, &pattern)?;
    log::info!(target: T, "wrote and read back {len} bytes at LBA {at}: identical");
    Ok(())
}

fn submit_in<P: Platform>(
    bus: &mut UhciBus<'_, P>,
    dev: DeviceId,
    ep: EndpointAddress,
    bus_addr: u64,
    len: u32,
) -> Result<TransferId, HcError> {
    bus.hc.submit(&TransferRequest {
        device: dev,
        endpoint: ep,
        setup: None,
        buffer: &[DmaSegment { bus_addr, len }],
        flags: TransferFlags::empty(),
    })
}

fn keyboard_reports<P: Platform>(
    p: &P,
    bus: &mut UhciBus<'_, P>,
    kbd: &Found,
) -> Result<(), String> {
    let (ep, mps) = kbd
        .endpoint(TransferType::Interrupt, Direction::In)
        .ok_or("keyboard has no interrupt IN endpoint")?;
    // HID 1.11 §7.2.6 SET_PROTOCOL(boot) and §7.2.4 SET_IDLE(0): reports only on change.
    let class_request = |request: u8| SetupPacket {
        request_type: 0x21,
        request,
        value: 0,
        index: kbd.iface as u16,
        length: 0,
    };
    bus.control(kbd.dev, class_request(0x0b), None, None)
        .map_err(|e| format!("keyboard SET_PROTOCOL: {e}"))?;
    if let Err(e) = bus.control(kbd.dev, class_request(0x0a), None, None) {
        log::warn!(target: T, "keyboard SET_IDLE: {e} (ignored)");
    }
    let buf = p.dma().alloc(64, 64).map_err(|e| format!("{e}"))?;
    let len = mps.min(8) as u32;
    log::info!(target: T, "uhci: keyboard ready (interrupt IN {:#04x}, max packet {mps})", ep.0);
    let mut keys = Vec::new();
    let mut events = Vec::new();
    let deadline = p.clock().now_ns() + 30_000_000_000;
    while keys.len() < 2 {
        if p.clock().now_ns() > deadline {
            return Err(format!(
                "no keyboard reports within 30 s (got keys {keys:02x?})"
            ));
        }
        let id = submit_in(bus, kbd.dev, ep, buf.bus_addr(), len)
            .map_err(|e| format!("keyboard interrupt transfer: {e}"))?;
        match wait_transfer(p, bus, id, 30_000, &mut events) {
            Some(Ok(n)) => {
                let n = (n as usize).min(8);
                let mut r = [0u8; 8];
                buf.read_bytes(0, &mut r[..n]);
                log::info!(target: T, "keyboard report {:02x?}", &r[..n]);
                for &k in r.get(2..n).unwrap_or(&[]) {
                    if k != 0 && !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            Some(Err(e)) => return Err(format!("keyboard interrupt transfer failed: {e}")),
            None => {
                let _ = bus.hc.cancel(id);
                let _ = wait_transfer(p, bus, id, 1000, &mut events);
            }
        }
    }
    log::info!(target: T, "keyboard: keys {keys:02x?} received");
    Ok(())
}

fn hotplug<P: Platform>(p: &P, bus: &mut UhciBus<'_, P>, kbd: &Found) -> Result<(), String> {
    let dev = kbd.dev;
    let (ep, _) = kbd
        .endpoint(TransferType::Interrupt, Direction::In)
        .ok_or("keyboard has no interrupt IN endpoint")?;
    let buf = p.dma().alloc(64, 64).map_err(|e| format!("{e}"))?;
    let mut id = submit_in(bus, dev, ep, buf.bus_addr(), 8)
        .map_err(|e| format!("keyboard interrupt transfer: {e}"))?;
    log::info!(target: T, "uhci: unplug keyboard");
    let mut events = Vec::new();
    // Keep an interrupt transfer outstanding until one ends in error (the unplug).
    loop {
        let r = wait_transfer(p, bus, id, 30_000, &mut events)
            .ok_or("the outstanding keyboard transfer did not end after device_del")?;
        match r {
            Ok(n) => log::info!(target: T, "report of {n} bytes while waiting for the unplug"),
            Err(HcError::NoDevice | HcError::Transaction | HcError::Cancelled) => {
                log::info!(target: T, "outstanding transfer ended with: {:?}", r);
                break;
            }
            Err(e) => return Err(format!("outstanding transfer ended with unexpected {e}")),
        }
        id = match submit_in(bus, dev, ep, buf.bus_addr(), 8) {
            Ok(id) => id,
            Err(e) => {
                log::info!(target: T, "submit after unplug refused: {e}");
                break;
            }
        };
    }
    // Wait for the bus to report the detach.
    let deadline = p.clock().now_ns() + 30_000_000_000;
    let mut next_hub_poll = 0;
    while !events
        .iter()
        .any(|e| matches!(e, BusEvent::Detached(d, _) if *d == dev))
    {
        if p.clock().now_ns() > deadline {
            return Err(format!(
                "no detach reported after device_del (events {events:?})"
            ));
        }
        service(p, bus, &mut events, &mut next_hub_poll);
    }
    log::info!(target: T, "keyboard detached: {events:?}");
    if find_interface(bus, 3).is_some() {
        return Err(String::from(
            "the registry still lists a HID device after unplug",
        ));
    }
    log::info!(target: T, "uhci: plug keyboard");
    let deadline = p.clock().now_ns() + 30_000_000_000;
    loop {
        if let Some(k) = find_interface(bus, 3) {
            log::info!(target: T, "keyboard re-attached as {:?}", k.dev);
            return Ok(());
        }
        if p.clock().now_ns() > deadline {
            return Err(format!(
                "no keyboard enumerated after device_add (events {events:?})"
            ));
        }
        service(p, bus, &mut events, &mut next_hub_poll);
    }
}
