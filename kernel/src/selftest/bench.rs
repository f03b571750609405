//! `bench`: sequential-read throughput of a `usb-storage` stick for `cargo xtask bench` (read-only;
//! no keyboard, no hotplug, nothing written).
//!
//! Command line: `usbdom.bench_hc=xhci|uhci` picks the controller (default: xHCI if present),
//! `usbdom.bench_passes=N` (default 3, at most 20) the number of timed passes, and
//! `usbdom.disk_fnv` / `usbdom.disk_bytes` (as for the other storage self-tests) the expected
//! content.
//!
//! Steps: bring up the controller and usb-core's [`Bus`], enumerate, find the stick through the
//! test-side BOT/SCSI reader ([`super::bot`]), then
//! 1. one untimed pass that reads the whole image and compares its FNV-1a 64 with
//!    `usbdom.disk_fnv` (also warms QEMU's host-side page cache, as the Linux guest's first pass
//!    does);
//! 2. `N` timed passes of READ(10) commands of [`MAX_XFER`] bytes each, the data left in the DMA
//!    buffer (the equivalent of `dd iflag=direct of=/dev/null`). Each prints one line
//!    `BENCH-RESULT hc=<xhci|uhci> pass=<i> bytes=<n> ns=<t> frames=<f>` (`frames`: UHCI frames
//!    elapsed, 0 for xHCI), which xtask parses.
//!
//! References: USB MSC BOT 1.0, SBC-3 READ(10); UHCI 1.1 §2.1.3 (FRNUM) for the frame count.

use alloc::format;
use alloc::string::String;

use hal::{Clock, DmaAlloc, DmaBuf};
use usb_core::hc::HostController;
use usb_core::Bus;
use xhci::Xhci;

use super::bot::{Bot, MAX_XFER};
use super::uhci::{ClockRef, DmaRef, On};
use crate::cmdline;
use crate::platform::Platform;

const T: &str = "bench";

fn fnv1a64(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn run<P: Platform>(p: &P, cmd: &str) -> Result<(), String> {
    let passes = cmdline::get(cmd, "usbdom.bench_passes")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(3)
        .clamp(1, 20);
    let want_xhci = match cmdline::get(cmd, "usbdom.bench_hc") {
        Some("uhci") => false,
        Some("xhci") | None => true,
        Some(other) => return Err(format!("usbdom.bench_hc={other}: want xhci or uhci")),
    };
    if want_xhci {
        let f = p
            .functions()
            .iter()
            .find(|f| f.id.class == hal::PciId::CLASS_USB_XHCI)
            .ok_or("no xHCI controller on PCI (QEMU: -device qemu-xhci)")?;
        let regs = p
            .map_bar(f, 0)
            .map_err(|e| format!("mapping BAR0 of {}: {e}", f.addr))?;
        let irq = p.bind_interrupt(f).ok();
        let hc = Xhci::<On<'_, P>>::new(regs, DmaRef(p.dma()), ClockRef(p.clock()), irq)
            .map_err(|e| format!("xHCI bring-up: {e}"))?;
        log::info!(target: T, "xHCI {} running ({})", f.addr, p.irq_description());
        let mut bus =
            Bus::new(hc, DmaRef(p.dma()), ClockRef(p.clock())).map_err(|e| format!("bus: {e}"))?;
        measure(&mut bus, "xhci", passes, cmd, |_| 0)
    } else {
        let mut bus = super::uhci::start(p)?;
        measure(&mut bus, "uhci", passes, cmd, |hc| hc.frames())
    }
}

/// Enumerate, check the image once, then the timed passes.
fn measure<H: HostController, D: DmaAlloc, C: Clock>(
    bus: &mut Bus<H, D, C>,
    hc_name: &str,
    passes: u32,
    cmd: &str,
    mut frames: impl FnMut(&mut H) -> u64,
) -> Result<(), String> {
    let events = bus.scan();
    log::info!(target: T, "scan: {} device(s), {events:?}", bus.registry.len());
    let mut bot = Bot::find(bus)?;
    let ident = bot.init(bus)?;
    let total = bot.blocks * bot.block_size as u64;
    log::info!(target: T, "storage '{ident}': {} blocks of {} bytes", bot.blocks, bot.block_size);
    if let Some(b) = cmdline::get(cmd, "usbdom.disk_bytes").and_then(|v| v.parse::<u64>().ok()) {
        if b != total {
            return Err(format!("capacity {total} bytes, the image has {b}"));
        }
    }
    let want_fnv = cmdline::get(cmd, "usbdom.disk_fnv")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or("no usbdom.disk_fnv on the command line: the read cannot be checked")?;
    let per = bot.max_blocks() as u64;
    // 1. Checked, untimed pass.
    let mut chunk = alloc::vec![0u8; MAX_XFER];
    let mut h = 0xcbf2_9ce4_8422_2325;
    let mut lba = 0;
    while lba < bot.blocks {
        let n = per.min(bot.blocks - lba) as u16;
        let bytes = bot
            .read(bus, lba, n)
            .map_err(|e| format!("checked pass, command {} (LBA {lba}): {e}", lba / per))?;
        bot.data.read_bytes(0, &mut chunk[..bytes]);
        h = fnv1a64(h, &chunk[..bytes]);
        lba += n as u64;
    }
    if h != want_fnv {
        return Err(format!("image checksum {h:016x}, expected {want_fnv:016x}"));
    }
    log::info!(target: T, "checked pass: fnv1a64 {h:016x} matches; {passes} timed pass(es) of {} bytes per command",
        per * bot.block_size as u64);
    // 2. Timed passes.
    for pass in 1..=passes {
        let t0 = bus.clock.now_ns();
        let f0 = frames(&mut bus.hc);
        let mut lba = 0;
        while lba < bot.blocks {
            let n = per.min(bot.blocks - lba) as u16;
            bot.read(bus, lba, n).map_err(|e| {
                format!(
                    "timed pass {pass}, command {} (LBA {lba}; {} READ(10)s before it): {e}",
                    lba / per,
                    (pass as u64) * bot.blocks.div_ceil(per) + lba / per
                )
            })?;
            lba += n as u64;
        }
        let ns = (bus.clock.now_ns() - t0).max(1);
        let fr = frames(&mut bus.hc).wrapping_sub(f0);
        log::info!(target: T, "BENCH-RESULT hc={hc_name} pass={pass} bytes={total} ns={ns} frames={fr}");
    }
    Ok(())
}
