//! `xhci`: drive the first xHCI controller with the xhci driver and usb-core's enumeration and
//! check, against QEMU's emulated devices:
//! 1. every device enumerates (descriptors and strings logged), none fails;
//! 2. the usb-storage stick: the whole image is read through BOT/SCSI ([`super::bot`]) and its
//!    FNV-1a 64 compared with `usbdom.disk_fnv` (and `usbdom.disk_bytes`) from the command line;
//!    a pattern is written and read back; on a USB3 root port it must be SuperSpeed;
//! 3. the keyboard: a report with a key pressed arrives after the line `XHCI-ACTION sendkey`
//!    (the scenario sends `sendkey a` through the QEMU monitor);
//! 4. hubs: every hub has at least one device enumerated behind it;
//!    `usbdom.xhci_speed=high|super` on the command line requires that speed;
//! 5. hotplug, when the command line has `usbdom.xhci_hotplug=1`: after `XHCI-ACTION unplug` the
//!    keyboard is removed (`device_del`) while an interrupt transfer is outstanding — the transfer
//!    must fail with "no device" and the bus must report the detach; after `XHCI-ACTION plug` a new
//!    keyboard (`device_add`) must enumerate.
//!
//! References: xHCI 1.2 (driver), USB 2.0 ch. 9/11, USB MSC BOT 1.0, HID 1.11 appendix B (boot
//! keyboard report).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hal::{Clock, DmaAlloc, DmaBuf, DmaSegment};
use usb_core::hc::{
    DeviceId, Direction, EndpointAddress, HcError, HcEvent, HostController, Speed, TransferFlags,
    TransferRequest, TransferType,
};
use usb_core::registry::UsbDevice;
use usb_core::{Bus, BusEvent};
use xhci::Xhci;

use super::bot::Bot;
use crate::cmdline;
use crate::platform::Platform;

use super::common::{ClockRef, DmaRef, On};

type TestBus<'a, P> = Bus<
    Xhci<On<'a, P>>,
    DmaRef<'a, <P as hal::Platform>::Dma>,
    ClockRef<'a, <P as hal::Platform>::Clock>,
>;

fn log_device(d: &UsbDevice) {
    let dd = &d.descriptor;
    log::info!(target: "xhci",
        "device {} slot {} addr {}: {:04x}:{:04x} usb {:x}.{:02x} class {:02x}/{:02x}/{:02x} {:?} ep0 {} '{}' '{}' '{}'",
        d.info.route, d.id.0, d.address, dd.vendor, dd.product, dd.usb_version >> 8,
        dd.usb_version & 0xff, dd.class, dd.subclass, dd.protocol, d.info.speed,
        dd.max_packet0().unwrap_or(0), d.manufacturer.as_deref().unwrap_or(""),
        d.product.as_deref().unwrap_or(""), d.serial.as_deref().unwrap_or(""));
    if let Some(c) = &d.config {
        log::info!(target: "xhci", "  configuration {}: {} interface(s), {} bytes, attributes {:#04x}, max power {}",
            c.value, c.num_interfaces, d.config_raw.len(), c.attributes, c.max_power);
        for i in &c.interfaces {
            log::info!(target: "xhci", "  interface {} alt {}: class {:02x}/{:02x}/{:02x}",
                i.number, i.alternate, i.class, i.subclass, i.protocol);
            for e in &i.endpoints {
                log::info!(target: "xhci", "    endpoint {:#04x} {:?} max packet {} interval {}{}",
                    e.address.0, e.kind(), e.max_packet(), e.interval,
                    e.companion.map(|c| format!(" (SS burst {})", c.max_burst)).unwrap_or_default());
            }
        }
    }
    if let Some(h) = d.hub {
        log::info!(target: "xhci", "  hub: {} ports, multi-TT {}", h.ports, h.multi_tt);
    }
}

fn is_keyboard(d: &UsbDevice) -> Option<EndpointAddress> {
    let c = d.config.as_ref()?;
    let i = c
        .interfaces
        .iter()
        .find(|i| i.class == 3 && i.subclass == 1 && i.protocol == 1)?;
    i.endpoints
        .iter()
        .find(|e| e.kind() == TransferType::Interrupt && e.address.direction() == Direction::In)
        .map(|e| e.address)
}

pub fn run<P: Platform>(platform: &P, cmd: &str) -> Result<(), String> {
    let f = platform
        .functions()
        .iter()
        .find(|f| f.id.class == hal::PciId::CLASS_USB_XHCI)
        .ok_or_else(|| {
            String::from("no xHCI controller on PCI (start QEMU with -device qemu-xhci)")
        })?;
    let regs = platform
        .map_bar(f, 0)
        .map_err(|e| format!("mapping BAR0 of {}: {e}", f.addr))?;
    let irq = match platform.bind_interrupt(f) {
        Ok(i) => Some(i),
        Err(e) => {
            log::warn!(target: "xhci", "no interrupt ({e}); polling");
            None
        }
    };
    log::info!(target: "xhci", "controller {} ({:04x}:{:04x}), interrupts {}", f.addr, f.id.vendor,
        f.id.device, platform.irq_description());
    let dma = DmaRef(platform.dma());
    let clock = ClockRef(platform.clock());
    let hc =
        Xhci::<On<'_, P>>::new(regs, dma, clock, irq).map_err(|e| format!("xHCI bring-up: {e}"))?;
    let mut bus: TestBus<'_, P> = Bus::new(hc, dma, clock).map_err(|e| format!("bus: {e}"))?;

    // 1. Enumerate everything.
    let t0 = clock.now_ns();
    let events = bus.scan();
    let mut failures = Vec::new();
    for e in &events {
        if let BusEvent::Failed(route, err) = e {
            failures.push(format!("device on port {route} failed to enumerate: {err}"));
        }
    }
    log::info!(target: "xhci", "enumerated {} device(s) in {} ms", bus.registry.len(),
        (clock.now_ns() - t0) / 1_000_000);
    for d in bus.registry.iter() {
        log_device(d);
    }
    if let Some(f) = failures.into_iter().next() {
        return Err(f);
    }
    if bus.registry.is_empty() {
        return Err(String::from("no USB device enumerated"));
    }
    // 4. Hubs have their children.
    for h in bus.registry.iter().filter(|d| d.hub.is_some()) {
        if !bus.registry.iter().any(|d| d.parent == Some(h.id)) {
            return Err(format!(
                "hub at {} has no device enumerated behind it",
                h.info.route
            ));
        }
        log::info!(target: "xhci", "hub at {}: devices behind it enumerated", h.info.route);
    }

    // 2. Storage.
    storage_test(&mut bus, cmd)?;

    // 3. Keyboard.
    let (kbd, ep) = bus
        .registry
        .iter()
        .find_map(|d| is_keyboard(d).map(|e| (d.id, e)))
        .ok_or_else(|| String::from("no boot keyboard enumerated"))?;
    keyboard_test(&mut bus, kbd, ep)?;

    // 5. Hotplug.
    if cmdline::get(cmd, "usbdom.xhci_hotplug") == Some("1") {
        hotplug_test(&mut bus, kbd, ep)?;
    }
    Ok(())
}

fn storage_test<P: Platform>(bus: &mut TestBus<'_, P>, cmd: &str) -> Result<(), String> {
    let mut bot = Bot::find(bus)?;
    let dev = bus.registry.get(bot.dev).expect("found in registry");
    let (route, speed) = (dev.info.route, dev.info.speed);
    if bus.hc.is_usb3_port(route.root_port) && route.depth == 0 && speed != Speed::Super {
        return Err(format!(
            "storage on USB3 port {route} is {speed:?}, not SuperSpeed"
        ));
    }
    log::info!(target: "xhci", "storage at {route}: {speed:?}");
    let want_speed = match cmdline::get(cmd, "usbdom.xhci_speed") {
        Some("high") => Some(Speed::High),
        Some("super") => Some(Speed::Super),
        _ => None,
    };
    if let Some(w) = want_speed {
        if w != speed {
            return Err(format!("storage enumerated {speed:?}, expected {w:?}"));
        }
    }
    let ident = bot.init(bus)?;
    let total = bot.blocks * bot.block_size as u64;
    log::info!(target: "xhci", "storage '{ident}': {} blocks of {} bytes ({} KiB)", bot.blocks,
        bot.block_size, total / 1024);
    let want_bytes = cmdline::get(cmd, "usbdom.disk_bytes").and_then(|v| v.parse::<u64>().ok());
    let want_fnv =
        cmdline::get(cmd, "usbdom.disk_fnv").and_then(|v| u64::from_str_radix(v, 16).ok());
    if let Some(b) = want_bytes {
        if b != total {
            return Err(format!("capacity {total} bytes, image is {b}"));
        }
    }
    // Whole-image read.
    let clock = bus.clock;
    let t0 = clock.now_ns();
    let h = bot.image_fnv1a64(bus)?;
    let ns = (clock.now_ns() - t0).max(1);
    let kib_s = total * 1_000_000_000 / 1024 / ns;
    log::info!(target: "xhci", "read {} KiB in {} ms: {} KiB/s, fnv1a64 {h:016x}", total / 1024,
        ns / 1_000_000, kib_s);
    match want_fnv {
        Some(w) if w != h => return Err(format!("image checksum {h:016x}, expected {w:016x}")),
        Some(_) => log::info!(target: "xhci", "whole-image checksum matches"),
        None => {
            return Err(String::from(
                "no usbdom.disk_fnv on the command line: the image checksum cannot be checked",
            ))
        }
    }
    // Write a pattern over a 64 KiB-crossing range and read it back.
    let blocks = bot.max_blocks().min(bot.blocks as u16);
    let at = (bot.blocks / 2).saturating_sub(blocks as u64 / 2);
    let len = blocks as usize * bot.block_size as usize;
    let pattern: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ 0x5a)
        .collect();
    bot.write_read_back(bus, at, blocks, &pattern)?;
    log::info!(target: "xhci", "wrote and read back {len} bytes at LBA {at}: identical");
    Ok(())
}

/// Wait for the completion of `id`, handing other events to the bus; returns the completion.
fn wait_completion<P: Platform>(
    bus: &mut TestBus<'_, P>,
    id: usb_core::hc::TransferId,
    timeout_ms: u64,
    port_events: &mut Vec<u8>,
) -> Option<usb_core::hc::Completion> {
    let clock = bus.clock;
    let deadline = clock.now_ns() + timeout_ms * 1_000_000;
    while clock.now_ns() < deadline {
        match bus.poll() {
            Some(HcEvent::Transfer(c)) if c.id == id => return Some(c),
            Some(HcEvent::PortChange(p)) => port_events.push(p),
            Some(_) => {}
            None => clock.delay_us(200),
        }
    }
    None
}

/// A DMA buffer for one 8-byte boot-keyboard report (HID 1.11 appendix B) and its segment.
fn report_buffer<P: Platform>(
    bus: &TestBus<'_, P>,
) -> Result<(<P::Dma as DmaAlloc>::Buf, [DmaSegment; 1]), String> {
    let buf = bus.dma().alloc(64, 64).map_err(|e| format!("DMA: {e}"))?;
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 8,
    }];
    Ok((buf, seg))
}

/// An interrupt IN transfer of one report from the keyboard's endpoint `ep` into `seg`.
fn report_request(kbd: DeviceId, ep: EndpointAddress, seg: &[DmaSegment]) -> TransferRequest<'_> {
    TransferRequest {
        device: kbd,
        endpoint: ep,
        setup: None,
        buffer: seg,
        flags: TransferFlags::empty(),
    }
}

fn submit_report<P: Platform>(
    bus: &mut TestBus<'_, P>,
    req: &TransferRequest<'_>,
) -> Result<usb_core::hc::TransferId, String> {
    bus.hc
        .submit(req)
        .map_err(|e| format!("keyboard submit: {e}"))
}

fn keyboard_test<P: Platform>(
    bus: &mut TestBus<'_, P>,
    kbd: DeviceId,
    ep: EndpointAddress,
) -> Result<(), String> {
    wait_key(bus, kbd, ep, "XHCI-ACTION sendkey")?;
    // Cancel an outstanding interrupt transfer (Stop Endpoint + Set TR Dequeue Pointer), then
    // the endpoint must still deliver the next key.
    let (_buf, seg) = report_buffer(bus)?;
    let req = report_request(kbd, ep, &seg);
    let id = submit_report(bus, &req)?;
    let mut ports = Vec::new();
    if let Some(c) = wait_completion(bus, id, 300, &mut ports) {
        return Err(format!("keyboard transfer completed without a key: {c:?}"));
    }
    match bus.hc.cancel(id) {
        Ok(true) => {}
        other => return Err(format!("cancel of the outstanding transfer: {other:?}")),
    }
    let c = wait_completion(bus, id, 1_000, &mut ports)
        .ok_or_else(|| String::from("no completion for the cancelled transfer"))?;
    if c.result != Err(HcError::Cancelled) {
        return Err(format!("cancelled transfer ended with {:?}", c.result));
    }
    log::info!(target: "xhci", "outstanding interrupt transfer cancelled");
    wait_key(bus, kbd, ep, "XHCI-ACTION second key")
}

fn wait_key<P: Platform>(
    bus: &mut TestBus<'_, P>,
    kbd: DeviceId,
    ep: EndpointAddress,
    action: &str,
) -> Result<(), String> {
    let (buf, seg) = report_buffer(bus)?;
    let req = report_request(kbd, ep, &seg);
    log::info!(target: "xhci", "{action}: waiting for a key press on the keyboard");
    let mut ports = Vec::new();
    for _ in 0..8 {
        let id = submit_report(bus, &req)?;
        let c = wait_completion(bus, id, 20_000, &mut ports)
            .ok_or_else(|| String::from("no keyboard report within 20 s"))?;
        c.result.map_err(|e| format!("keyboard transfer: {e}"))?;
        let mut rep = [0u8; 8];
        buf.read_bytes(0, &mut rep);
        log::info!(target: "xhci", "keyboard report {:02x?} ({} bytes)", rep, c.actual);
        if rep[2..].iter().any(|&k| k != 0) {
            log::info!(target: "xhci", "key usage {:#04x} received", rep[2]);
            // Take the release report too (sendkey releases after ~100 ms) so that it does not
            // satisfy a later transfer.
            let id = submit_report(bus, &req)?;
            match wait_completion(bus, id, 2_000, &mut ports) {
                Some(c) => {
                    buf.read_bytes(0, &mut rep);
                    log::info!(target: "xhci", "keyboard report {:02x?} ({:?})", rep, c.result);
                }
                None => {
                    let _ = bus.hc.cancel(id);
                    let _ = wait_completion(bus, id, 1_000, &mut ports);
                }
            }
            return Ok(());
        }
    }
    Err(String::from(
        "keyboard reports arrived but none with a key pressed",
    ))
}

fn hotplug_test<P: Platform>(
    bus: &mut TestBus<'_, P>,
    kbd: DeviceId,
    ep: EndpointAddress,
) -> Result<(), String> {
    let route = bus.registry.get(kbd).ok_or("keyboard gone")?.info.route;
    let (_buf, seg) = report_buffer(bus)?;
    let req = report_request(kbd, ep, &seg);
    let mut id = submit_report(bus, &req)?;
    log::info!(target: "xhci", "XHCI-ACTION unplug: interrupt transfer outstanding on {route}");
    let mut ports = Vec::new();
    let mut c;
    let mut reports = 0;
    loop {
        c = wait_completion(bus, id, 30_000, &mut ports).ok_or_else(|| {
            String::from("outstanding transfer not completed within 30 s of the unplug")
        })?;
        // A report still queued in the keyboard completes first; keep a transfer outstanding.
        if c.result.is_ok() && reports < 8 {
            reports += 1;
            id = submit_report(bus, &req)?;
            continue;
        }
        break;
    }
    if c.result != Err(HcError::NoDevice) {
        return Err(format!(
            "transfer on the unplugged keyboard ended with {:?}, want no-device",
            c.result
        ));
    }
    log::info!(target: "xhci", "outstanding transfer failed cleanly: {}", HcError::NoDevice);
    let mut detached = false;
    for p in ports.drain(..).chain(core::iter::once(route.root_port)) {
        for e in bus.handle_root_port(p) {
            log::info!(target: "xhci", "bus event {e:?}");
            detached |= matches!(e, BusEvent::Detached(id, _) if id == kbd);
        }
    }
    if !detached {
        return Err(String::from("the unplug was not reported as a detach"));
    }
    log::info!(target: "xhci", "disconnect reported");
    log::info!(target: "xhci", "XHCI-ACTION plug: waiting for a new device");
    let clock = bus.clock;
    let deadline = clock.now_ns() + 30_000 * 1_000_000;
    while clock.now_ns() < deadline {
        match bus.poll() {
            Some(HcEvent::PortChange(p)) => {
                for e in bus.handle_root_port(p) {
                    log::info!(target: "xhci", "bus event {e:?}");
                    if let BusEvent::Attached(id) = e {
                        let d = bus.registry.get(id).expect("just attached");
                        log_device(d);
                        if is_keyboard(d).is_some() {
                            log::info!(target: "xhci", "new keyboard enumerated at {}", d.info.route);
                            return Ok(());
                        }
                    }
                    if let BusEvent::Failed(r, err) = e {
                        return Err(format!("plugged device at {r} failed: {err}"));
                    }
                }
            }
            Some(_) => {}
            None => clock.delay_us(500),
        }
    }
    Err(String::from("no device enumerated within 30 s of the plug"))
}
