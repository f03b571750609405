//! The smallest xHCI bring-up that makes the controller raise one interrupt (xHCI 1.2 §4.2,
//! §4.6.2, §4.9.4, §4.17, §5): reset, a device-context base-address array (with scratchpad buffers
//! if the controller wants them), a one-segment command ring, a one-segment event ring on
//! interrupter 0 with IMAN.IE, run with USBCMD.INTE, then a No-Op command. Its Command Completion
//! Event (or any port-status event) makes the interrupter fire; we wait for that as an event on the
//! interrupt's event channel, acknowledge it (IMAN.IP, USBSTS.EINT, ERDP.EHB), then halt the
//! controller again so the real driver starts from a clean state.
//!
//! It proves the Xen plumbing (BAR mapping, DMA machine addresses, pirq → event channel) before
//! the full driver runs; it is not a driver.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hal::{DmaAlloc, DmaBuf, Interrupt, RegisterIo};
use xenidc::xen::ops;

use super::dma::XenDmaBuf;
use super::irq::XenIrq;
use super::platform::XenPlatform;
use crate::platform::{Platform, Regs};
use crate::time;

// Capability registers (§5.3).
const CAPLENGTH: usize = 0x00;
const HCSPARAMS1: usize = 0x04;
const HCSPARAMS2: usize = 0x08;
const DBOFF: usize = 0x14;
const RTSOFF: usize = 0x18;
// Operational registers (§5.4), relative to CAPLENGTH.
const USBCMD: usize = 0x00;
const USBSTS: usize = 0x04;
const CRCR: usize = 0x18;
const DCBAAP: usize = 0x30;
const CONFIG: usize = 0x38;
const CMD_RS: u32 = 1 << 0;
const CMD_HCRST: u32 = 1 << 1;
const CMD_INTE: u32 = 1 << 2;
const STS_HCH: u32 = 1 << 0;
const STS_EINT: u32 = 1 << 3;
const STS_CNR: u32 = 1 << 11;
// Interrupter 0 (§5.5.2), relative to RTSOFF.
const IR0: usize = 0x20;
const IMAN: usize = IR0;
const ERSTSZ: usize = IR0 + 0x08;
const ERSTBA: usize = IR0 + 0x10;
const ERDP: usize = IR0 + 0x18;
const IMAN_IP: u32 = 1 << 0;
const IMAN_IE: u32 = 1 << 1;
const ERDP_EHB: u64 = 1 << 3;
// TRBs (§6.4).
const TRB_NOOP_CMD: u32 = 23;
const TRB_CMD_COMPLETION: u32 = 33;
const TRB_PORT_STATUS_CHANGE: u32 = 34;
const RING_TRBS: usize = 256;

const RESET_TIMEOUT_NS: u64 = 1_000_000_000;
const IRQ_TIMEOUT_NS: u64 = 5_000_000_000;

fn wait_until(regs: &Regs, off: usize, mask: u32, want: u32, what: &str) -> Result<(), String> {
    let deadline = time::now_ns() + RESET_TIMEOUT_NS;
    while regs.read32(off) & mask != want {
        if time::now_ns() >= deadline {
            return Err(format!("xHCI: timeout waiting for {what}"));
        }
        time::spin_us(100);
    }
    Ok(())
}

/// What the bring-up saw.
pub struct FirstInterrupt {
    /// Events found on the event ring when the interrupt came (type, completion code).
    pub events: Vec<(u32, u32)>,
    pub waited_ns: u64,
}

/// Run the bring-up on the controller at `regs` with interrupt `irq`.
pub fn xhci_first_interrupt(
    p: &XenPlatform,
    regs: &Regs,
    irq: &XenIrq,
) -> Result<FirstInterrupt, String> {
    let dma = p.dma();
    let caplen = (regs.read32(CAPLENGTH) & 0xff) as usize;
    let op = caplen;
    let rt = (regs.read32(RTSOFF) & !0x1f) as usize;
    let db = (regs.read32(DBOFF) & !0x3) as usize;
    let slots = regs.read32(HCSPARAMS1) & 0xff;
    let hcs2 = regs.read32(HCSPARAMS2);
    let scratch = (((hcs2 >> 21) & 0x1f) << 5 | (hcs2 >> 27)) as usize;
    if rt + ERDP + 8 > regs.size() || db + 4 > regs.size() {
        return Err(format!(
            "xHCI: runtime {rt:#x} or doorbell {db:#x} outside BAR0"
        ));
    }

    // Halt, then reset (§4.2, §5.4.1).
    wait_until(regs, op + USBSTS, STS_CNR, 0, "controller ready")?;
    regs.write32(op + USBCMD, regs.read32(op + USBCMD) & !(CMD_RS | CMD_INTE));
    wait_until(regs, op + USBSTS, STS_HCH, STS_HCH, "halt")?;
    regs.write32(op + USBCMD, CMD_HCRST);
    wait_until(regs, op + USBCMD, CMD_HCRST, 0, "reset")?;
    wait_until(
        regs,
        op + USBSTS,
        STS_CNR,
        0,
        "controller ready after reset",
    )?;

    let alloc = |size: usize| -> Result<XenDmaBuf, String> {
        dma.alloc(size, 64)
            .map_err(|e| format!("xHCI bring-up: {e}"))
    };
    // DCBAA (§6.1) with the scratchpad array in slot 0 (§4.20).
    let dcbaa = alloc(2048)?;
    let mut keep: Vec<XenDmaBuf> = Vec::new();
    if scratch > 0 {
        if scratch > 64 {
            return Err(format!(
                "xHCI: {scratch} scratchpad buffers wanted (max 64 here)"
            ));
        }
        let arr = alloc(scratch * 8)?;
        for i in 0..scratch {
            let page = alloc(4096)?;
            arr.write64(i * 8, page.bus_addr());
            keep.push(page);
        }
        dcbaa.write64(0, arr.bus_addr());
        keep.push(arr);
    }
    regs.write32(op + CONFIG, slots.clamp(1, 8));
    regs.write64(op + DCBAAP, dcbaa.bus_addr());

    // Command ring (§4.6.1): consumer cycle state 1.
    let cmd = alloc(RING_TRBS * 16)?;
    regs.write64(op + CRCR, cmd.bus_addr() | 1);

    // Event ring, one segment (§4.9.4), on interrupter 0; ERSTBA last (§5.5.2.3.2).
    let seg = alloc(RING_TRBS * 16)?;
    let erst = alloc(64)?;
    erst.write64(0, seg.bus_addr());
    erst.write32(8, RING_TRBS as u32);
    regs.write32(rt + ERSTSZ, 1);
    regs.write64(rt + ERDP, seg.bus_addr());
    regs.write64(rt + ERSTBA, erst.bus_addr());
    regs.write32(rt + IMAN, IMAN_IE | IMAN_IP);

    // Drop any event-channel notification left from before the reset.
    irq.take();
    let t0 = time::now_ns();
    regs.write32(op + USBCMD, CMD_RS | CMD_INTE);
    wait_until(regs, op + USBSTS, STS_HCH, 0, "run")?;

    // No-Op command (§4.6.2), cycle bit 1, then ring the host-controller doorbell.
    cmd.write64(0, 0);
    cmd.write32(8, 0);
    cmd.write32(12, (TRB_NOOP_CMD << 10) | 1);
    regs.write32(db, 0);

    // Wait for the interrupt as an event on its channel.
    let deadline = t0 + IRQ_TIMEOUT_NS;
    let mut got = irq.take();
    while !got && time::now_ns() < deadline {
        let _ = ops::sched_poll(&[irq.port], time::to_xen_system_time(deadline));
        got = irq.take();
    }
    let waited_ns = time::now_ns() - t0;

    // Collect the events (cycle bit 1 on the first pass), acknowledge, advance ERDP.
    let mut events = Vec::new();
    let mut idx = 0;
    while idx < RING_TRBS {
        let control = seg.read32(idx * 16 + 12);
        if control & 1 != 1 {
            break;
        }
        let ty = (control >> 10) & 0x3f;
        let code = seg.read32(idx * 16 + 8) >> 24;
        events.push((ty, code));
        idx += 1;
    }
    regs.write32(rt + IMAN, IMAN_IE | IMAN_IP);
    regs.write32(op + USBSTS, STS_EINT);
    regs.write64(rt + ERDP, (seg.bus_addr() + (idx * 16) as u64) | ERDP_EHB);

    // Halt again: the driver resets the controller itself.
    regs.write32(op + USBCMD, 0);
    let halted = wait_until(regs, op + USBSTS, STS_HCH, STS_HCH, "halt after the test");
    irq.unmask();
    drop(keep);

    if !got {
        let what: Vec<String> = events
            .iter()
            .map(|(t, c)| format!("type {t} code {c}"))
            .collect();
        return Err(format!(
            "xHCI: no interrupt within {} ms after run + No-Op (events on the ring: [{}]; USBSTS={:#x})",
            IRQ_TIMEOUT_NS / 1_000_000,
            what.join(", "),
            regs.read32(op + USBSTS)
        ));
    }
    halted?;
    let noop_ok = events
        .iter()
        .any(|&(t, c)| t == TRB_CMD_COMPLETION && c == 1);
    if !noop_ok && !events.iter().any(|&(t, _)| t == TRB_PORT_STATUS_CHANGE) {
        log::warn!(target: "xhci", "interrupt came but no No-Op completion on the event ring: {events:?}");
    }
    Ok(FirstInterrupt { events, waited_ns })
}
