//! xHCI host controller driver (eXtensible Host Controller Interface 1.2), generic over the hal
//! [`Platform`] traits and implementing the usb-core [`HostController`] trait.
//!
//! What it does, with the spec sections it follows:
//! * bring-up (§4.2): BIOS hand-off (§7.1.1), halt and reset (§5.4.1), the supported-protocol
//!   capabilities that tell USB2 from USB3 ports (§7.2), the device context base address array
//!   (§6.1) with the scratchpad buffers (§4.20), the command ring (§4.6.1) and one event ring with
//!   its segment table on interrupter 0 (§4.9.4, §5.5.2), then run;
//! * commands (§4.6): Enable Slot, Address Device (first with BSR=1 so the device can be talked to
//!   at address 0, then BSR=0), Configure Endpoint, Evaluate Context, Reset Endpoint, Stop
//!   Endpoint, Set TR Dequeue Pointer, Disable Slot.  Commands complete before the call returns,
//!   bounded by [`COMMAND_TIMEOUT_MS`] (then the command ring is aborted, §4.6.1.2);
//! * transfers (§4.11): control (Setup/Data/Status stages), bulk and interrupt TDs made of Normal
//!   TRBs, split at 64 KiB boundaries (§6.4.1), chained across the ring's link TRB; TD Size
//!   (§4.11.2.4); the completion of a TD is its last TRB's event, or a Short Packet event (§4.10.1.1);
//! * errors (§4.8.3, §4.10.2): completion codes map to [`HcError`]; a failing TD halts the
//!   endpoint and the TDs behind it are failed with [`HcError::EndpointHalted`] (usb-core's rule);
//!   `clear_halt` does Reset Endpoint + Set TR Dequeue Pointer;
//! * cancel (§4.6.9): Stop Endpoint, then the cancelled TD is skipped with Set TR Dequeue Pointer
//!   or turned into No-op TRBs;
//! * ports (§4.19, §5.4.8): status, reset, disable, change bits; a disconnect fails every transfer of
//!   the devices on that root port with [`HcError::NoDevice`];
//! * devices behind hubs: route string, root port, TT hub slot and port in the slot context (§6.2.2),
//!   hub fields via Configure Endpoint;
//! * interrupts through the hal [`Interrupt`] when one is given (IMAN/USBSTS acknowledged, §4.17),
//!   and in any case the event ring is polled on every [`HostController::poll`].
//!
//! No `unsafe`: registers and DMA memory are reached only through hal.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(all(feature = "sim", not(test)))]
extern crate std;

pub mod context;
pub mod regs;
pub mod ring;
pub mod trb;

/// The simulated xHCI the host tests and the benchmark run the driver against.
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use hal::{Clock, DmaAlloc, DmaBuf, Interrupt, Platform, RegisterIo};
use usb_core::hc::*;

use context::{dci, ep_state, speed_id, EndpointContext, Layout, SlotContext};
use regs::*;
use ring::{EventRing, ProducerRing, TdPos, RING_TRBS};
use trb::{cc, completion_to_result, ty, Trb};

/// Limit for a command's completion.
pub const COMMAND_TIMEOUT_MS: u64 = 1000;
/// Limit for the controller to halt or finish its reset (§5.4.1: 16 ms to halt; reset is
/// implementation-defined, Linux allows 10 s; QEMU is instant).
pub const RESET_TIMEOUT_MS: u64 = 1000;
/// Largest transfer accepted (the PVUSB wire limit is 64 KiB; usb-core's own are smaller).
pub const MAX_TRANSFER: u64 = 16 << 20;

type Buf<P> = <<P as Platform>::Dma as DmaAlloc>::Buf;

/// Counters for diagnostics and the host benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub transfers: u64,
    pub trbs: u64,
    pub events: u64,
    pub commands: u64,
    pub stray_events: u64,
}

struct Td {
    id: TransferId,
    endpoint: EndpointAddress,
    pos: TdPos,
    /// (ring index, length) of the data TRBs in order.
    data: Vec<(usize, u32)>,
    total: u32,
    short_actual: Option<u32>,
    flags: TransferFlags,
    is_control: bool,
}

struct Endpoint<B: DmaBuf> {
    ring: ProducerRing<B>,
    tds: VecDeque<Td>,
    halted: bool,
    info: EndpointInfo,
}

struct Slot<B: DmaBuf> {
    info: DeviceInfo,
    out_ctx: B,
    in_ctx: B,
    /// Indexed by DCI (0 unused).
    eps: Vec<Option<Endpoint<B>>>,
    gone: bool,
    ep0_mps: u16,
    hub: Option<HubInfo>,
}

/// The driver for one xHCI controller.
pub struct Xhci<P: Platform> {
    regs: P::Regs,
    dma: P::Dma,
    clock: P::Clock,
    irq: Option<P::Irq>,
    op: usize,
    rt: usize,
    db: usize,
    layout: Layout,
    max_slots: u8,
    max_ports: u8,
    /// The controller can address 64-bit memory (HCCPARAMS1.AC64); without it every buffer must be
    /// below 4 GiB.
    ac64: bool,
    port_usb3: Vec<bool>,
    port_slot_type: Vec<u8>,
    dcbaa: Buf<P>,
    _scratch_array: Option<Buf<P>>,
    _scratch: Vec<Buf<P>>,
    cmd: ProducerRing<Buf<P>>,
    evt: EventRing<Buf<P>>,
    slots: Vec<Option<Slot<Buf<P>>>>,
    events: VecDeque<HcEvent>,
    cmd_done: Option<(u64, u8, u8)>,
    next_id: u32,
    dead: bool,
    pub stats: Stats,
}

impl<P: Platform> Xhci<P> {
    /// Take over, reset and start the controller whose MMIO BAR is `regs`.  `irq` is optional:
    /// without it the driver relies on being polled.
    pub fn new(
        regs: P::Regs,
        dma: P::Dma,
        clock: P::Clock,
        irq: Option<P::Irq>,
    ) -> Result<Self, HcError> {
        if regs.size() < 0x100 {
            return Err(HcError::Invalid("register window too small"));
        }
        // CAPLENGTH and HCIVERSION share the first dword; read it whole (QEMU's qemu-xhci and some
        // hardware only implement 32-bit accesses to the capability registers).
        let cap0 = regs.read32(CAPLENGTH);
        let caplen = (cap0 & 0xff) as usize;
        let version = (cap0 >> 16) as u16;
        let hcs1 = regs.read32(HCSPARAMS1);
        let hcs2 = regs.read32(HCSPARAMS2);
        let hcc1 = regs.read32(HCCPARAMS1);
        let db = (regs.read32(DBOFF) & !3) as usize;
        let rt = (regs.read32(RTSOFF) & !0x1f) as usize;
        let max_slots = (hcs1 & 0xff) as u8;
        let max_ports = (hcs1 >> 24) as u8;
        if caplen < 0x20
            || max_slots == 0
            || max_ports == 0
            || db >= regs.size()
            || rt >= regs.size()
        {
            return Err(HcError::Invalid("implausible capability registers"));
        }
        log::info!(
            "xhci: version {:x}, {} slots, {} ports, {}-byte contexts",
            version,
            max_slots,
            max_ports,
            if hcc1 & HCC_CSZ != 0 { 64 } else { 32 }
        );
        let layout = Layout::from_hccparams1(hcc1);
        let xecp = ((hcc1 >> 16) as usize) * 4;

        // BIOS hand-off and the port protocols (§7.1, §7.2).
        let mut port_usb3 = vec![false; max_ports as usize];
        let mut port_slot_type = vec![0u8; max_ports as usize];
        let mut off = xecp;
        let mut guard = 0;
        while off != 0 && off + 16 <= regs.size() && guard < 64 {
            guard += 1;
            let cap = regs.read32(off);
            match cap as u8 {
                XCAP_LEGACY if cap & LEGACY_BIOS_OWNED != 0 => {
                    regs.write32(off, cap | LEGACY_OS_OWNED);
                    let deadline = clock.now_ns() + RESET_TIMEOUT_MS * 1_000_000;
                    while regs.read32(off) & LEGACY_BIOS_OWNED != 0 {
                        if clock.now_ns() >= deadline {
                            log::warn!("xhci: BIOS did not release the controller; taking it");
                            regs.write32(
                                off,
                                (regs.read32(off) & !LEGACY_BIOS_OWNED) | LEGACY_OS_OWNED,
                            );
                            break;
                        }
                        clock.delay_us(100);
                    }
                }
                XCAP_PROTOCOL => {
                    let major = (cap >> 24) as u8;
                    let d2 = regs.read32(off + 8);
                    let d3 = regs.read32(off + 12);
                    let first = (d2 & 0xff) as usize;
                    let count = ((d2 >> 8) & 0xff) as usize;
                    for p in first..first + count {
                        if p >= 1 && p <= max_ports as usize {
                            port_usb3[p - 1] = major >= 3;
                            port_slot_type[p - 1] = (d3 & 0x1f) as u8;
                        }
                    }
                }
                _ => {}
            }
            let next = ((cap >> 8) & 0xff) as usize * 4;
            off = if next == 0 { 0 } else { off + next };
        }

        let op = caplen;
        let wait = |what: &'static str, cond: &dyn Fn() -> bool| -> Result<(), HcError> {
            let deadline = clock.now_ns() + RESET_TIMEOUT_MS * 1_000_000;
            while !cond() {
                if clock.now_ns() >= deadline {
                    log::error!("xhci: timeout waiting for {what}");
                    return Err(HcError::Timeout);
                }
                clock.delay_us(100);
            }
            Ok(())
        };
        // Halt, then reset (§4.2, §5.4.1.1).
        if regs.read32(op + USBSTS) & STS_HCH == 0 {
            regs.write32(op + USBCMD, regs.read32(op + USBCMD) & !CMD_RUN);
            wait("halt", &|| regs.read32(op + USBSTS) & STS_HCH != 0)?;
        }
        regs.write32(op + USBCMD, CMD_HCRST);
        wait("reset", &|| {
            regs.read32(op + USBCMD) & CMD_HCRST == 0 && regs.read32(op + USBSTS) & STS_CNR == 0
        })?;

        regs.write32(op + CONFIG, max_slots as u32);
        let dcbaa = dma.alloc((max_slots as usize + 1) * 8, 64)?;
        // Scratchpad buffers (§4.20).
        let nscratch = (((hcs2 >> 21) & 0x1f) << 5 | (hcs2 >> 27)) as usize;
        let page = (((regs.read32(op + PAGESIZE) & 0xffff) as usize) << 12).clamp(4096, 4096);
        let mut scratch = Vec::new();
        let scratch_array = if nscratch > 0 {
            let arr = dma.alloc(nscratch * 8, 64)?;
            for i in 0..nscratch {
                let p = dma.alloc(page, page)?;
                arr.write64(i * 8, p.bus_addr());
                scratch.push(p);
            }
            dcbaa.write64(0, arr.bus_addr());
            Some(arr)
        } else {
            None
        };
        regs.write64(op + DCBAAP, dcbaa.bus_addr());

        let cmd = ProducerRing::new(dma.alloc(RING_TRBS * 16, 64)?);
        regs.write64(op + CRCR, cmd.base() | CRCR_RCS);

        let evt = EventRing::new(dma.alloc(RING_TRBS * 16, 64)?, dma.alloc(64, 64)?);
        if hcc1 & HCC_AC64 == 0 {
            let high = [
                dcbaa.bus_addr(),
                cmd.base(),
                evt.erst_addr(),
                evt.dequeue_addr(),
            ]
            .iter()
            .any(|&a| a >= 1 << 32);
            if high {
                return Err(HcError::NotSupported(
                    "32-bit controller but DMA memory above 4 GiB",
                ));
            }
        }
        let ir = rt + IR0;
        regs.write32(ir + ERSTSZ, evt.erst_size());
        regs.write64(ir + ERDP, evt.dequeue_addr());
        regs.write64(ir + ERSTBA, evt.erst_addr());
        regs.write32(ir + IMOD, 0);
        regs.write32(ir + IMAN, IMAN_IE | IMAN_IP);

        let mut cmdreg = CMD_RUN | CMD_HSEE;
        if irq.is_some() {
            cmdreg |= CMD_INTE;
        }
        regs.write32(op + USBCMD, cmdreg);
        wait("run", &|| regs.read32(op + USBSTS) & STS_HCH == 0)?;

        let x: Xhci<P> = Xhci {
            regs,
            dma,
            clock,
            irq,
            op,
            rt,
            db,
            layout,
            max_slots,
            max_ports,
            ac64: hcc1 & HCC_AC64 != 0,
            port_usb3,
            port_slot_type,
            dcbaa,
            _scratch_array: scratch_array,
            _scratch: scratch,
            cmd,
            evt,
            slots: (0..=max_slots as usize).map(|_| None).collect(),
            events: VecDeque::new(),
            cmd_done: None,
            next_id: 1,
            dead: false,
            stats: Stats::default(),
        };
        // Power the ports if the controller has port power control (§4.19.4).
        for p in 1..=x.max_ports {
            let v = x.regs.read32(x.portsc(p));
            if v & PORT_PP == 0 {
                x.regs.write32(x.portsc(p), (v & PORT_PRESERVE) | PORT_PP);
            }
        }
        Ok(x)
    }

    /// Context size in bytes (32 or 64).
    pub fn context_size(&self) -> usize {
        self.layout.csz
    }

    /// Whether root port `port` is a USB3 port.
    pub fn is_usb3_port(&self, port: u8) -> bool {
        self.port_usb3.get((port as usize).wrapping_sub(1)) == Some(&true)
    }

    fn portsc(&self, port: u8) -> usize {
        self.op + PORT_BASE + 0x10 * (port as usize - 1)
    }

    fn check_port(&self, port: u8) -> Result<(), HcError> {
        if port == 0 || port > self.max_ports {
            return Err(HcError::Invalid("no such root port"));
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ns() / 1_000_000
    }

    fn ring_doorbell(&self, slot: u8, target: u8) {
        self.regs
            .write32(self.db + 4 * slot as usize, target as u32);
    }

    // ---- events -------------------------------------------------------------------------

    /// Drain the event ring (§4.9.4) and update ERDP.
    fn process_events(&mut self) {
        if self.dead {
            return;
        }
        let mut any = false;
        while let Some(ev) = self.evt.pop() {
            any = true;
            self.stats.events += 1;
            match ev.ty() {
                ty::COMMAND_COMPLETION => {
                    self.cmd_done = Some((ev.parameter, ev.completion_code(), ev.slot_id()));
                }
                ty::TRANSFER_EVENT => self.transfer_event(&ev),
                ty::PORT_STATUS_CHANGE => {
                    let port = (ev.parameter >> 24) as u8;
                    self.port_event(port);
                }
                ty::HOST_CONTROLLER => {
                    log::warn!("xhci: host controller event, code {}", ev.completion_code());
                }
                other => log::debug!("xhci: event type {other} ignored"),
            }
        }
        if any {
            let ir = self.rt + IR0;
            self.regs
                .write64(ir + ERDP, self.evt.dequeue_addr() | ERDP_EHB);
        }
        let sts = self.regs.read32(self.op + USBSTS);
        if sts & (STS_HSE | STS_HCE) != 0 || sts == u32::MAX {
            log::error!("xhci: controller error (USBSTS {sts:#x}); failing everything");
            self.die();
        }
    }

    fn die(&mut self) {
        self.dead = true;
        for s in 1..self.slots.len() {
            self.fail_slot(s as u8, HcError::ControllerDead);
        }
        self.events.push_back(HcEvent::ControllerDead);
    }

    fn port_event(&mut self, port: u8) {
        if port == 0 || port > self.max_ports {
            return;
        }
        let v = self.regs.read32(self.portsc(port));
        if v & PORT_CSC != 0 || v & PORT_CCS == 0 {
            // The device on this port went away (or was replaced): everything on it fails.
            for s in 1..self.slots.len() {
                let on_port = matches!(&self.slots[s], Some(sl) if sl.info.route.root_port == port && !sl.gone);
                if on_port {
                    log::info!("xhci: port {port} disconnected; slot {s} gone");
                    if let Some(sl) = self.slots[s].as_mut() {
                        sl.gone = true;
                    }
                    self.fail_slot(s as u8, HcError::NoDevice);
                }
            }
        }
        self.events.push_back(HcEvent::PortChange(port));
    }

    /// Complete every outstanding TD of a slot with `err`.
    fn fail_slot(&mut self, slot: u8, err: HcError) {
        let Some(sl) = self.slots.get_mut(slot as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        for ep in sl.eps.iter_mut().flatten() {
            while let Some(td) = ep.tds.pop_front() {
                self.events.push_back(HcEvent::Transfer(Completion {
                    id: td.id,
                    device: DeviceId(slot),
                    endpoint: td.endpoint,
                    actual: 0,
                    result: Err(err),
                }));
            }
            let (e, _) = ep.ring.enqueue();
            ep.ring.set_dequeue(e);
        }
    }

    fn transfer_event(&mut self, ev: &Trb) {
        let slot = ev.slot_id();
        let epid = ev.endpoint_id();
        let code = ev.completion_code();
        let Some(sl) = self.slots.get_mut(slot as usize).and_then(|s| s.as_mut()) else {
            self.stats.stray_events += 1;
            return;
        };
        let gone = sl.gone;
        let Some(ep) = sl.eps.get_mut(epid as usize).and_then(|e| e.as_mut()) else {
            self.stats.stray_events += 1;
            return;
        };
        let Some(idx) = ep.ring.index_of(ev.parameter) else {
            self.stats.stray_events += 1;
            return;
        };
        let Some(k) = ep.tds.iter().position(|td| td.pos.indices.contains(&idx)) else {
            // For example the Stopped event of a TD that was cancelled.
            self.stats.stray_events += 1;
            return;
        };
        let td = &mut ep.tds[k];
        let is_last = td.pos.indices.last() == Some(&idx);
        let mut before = 0u32;
        let mut actual = None;
        for &(i, len) in &td.data {
            if i == idx {
                actual = Some(before + len.saturating_sub(ev.transfer_residual()));
                break;
            }
            before += len;
        }
        let actual = actual.unwrap_or(before);
        let mut events = Vec::new();
        let device = DeviceId(slot);
        match code {
            cc::SUCCESS if !is_last => return, // an intermediate event we did not ask for
            cc::SUCCESS | cc::SHORT_PACKET => {
                if code == cc::SHORT_PACKET {
                    td.short_actual = Some(actual);
                    if td.is_control && !is_last {
                        return; // the status stage still reports
                    }
                }
                let td = ep.tds.remove(k).expect("index valid");
                let actual = td.short_actual.unwrap_or(td.total);
                let result = if td.short_actual.is_some()
                    && td.flags.contains(TransferFlags::SHORT_NOT_OK)
                    && actual < td.total
                {
                    Err(HcError::ShortPacket)
                } else {
                    Ok(())
                };
                if k == 0 {
                    ep.ring.set_dequeue(td.pos.end);
                }
                events.push(Completion {
                    id: td.id,
                    device,
                    endpoint: td.endpoint,
                    actual,
                    result,
                });
            }
            cc::STOPPED | cc::STOPPED_LENGTH_INVALID | cc::STOPPED_SHORT_PACKET => {
                // Stop Endpoint hit this TD; cancel() decides what happens to it.
                return;
            }
            _ => {
                let mut err = completion_to_result(code)
                    .err()
                    .unwrap_or(HcError::Controller(code));
                if gone && err == HcError::Transaction {
                    err = HcError::NoDevice;
                }
                let td = ep.tds.remove(k).expect("index valid");
                log::debug!("xhci: slot {slot} ep {epid}: transfer failed: {err} (code {code})");
                events.push(Completion {
                    id: td.id,
                    device,
                    endpoint: td.endpoint,
                    actual,
                    result: Err(err),
                });
                // The endpoint is halted now; everything queued behind fails unexecuted.
                ep.halted = true;
                while let Some(t) = ep.tds.pop_front() {
                    events.push(Completion {
                        id: t.id,
                        device,
                        endpoint: t.endpoint,
                        actual: 0,
                        result: Err(HcError::EndpointHalted),
                    });
                }
            }
        }
        for c in events {
            self.events.push_back(HcEvent::Transfer(c));
        }
    }

    // ---- commands -----------------------------------------------------------------------

    /// Run one command to completion.  Returns the completion's slot ID.
    fn command(&mut self, trb: Trb) -> Result<u8, HcError> {
        if self.dead {
            return Err(HcError::ControllerDead);
        }
        let pos = self.cmd.push_td(&[trb]).ok_or(HcError::NoResources)?;
        let addr = self.cmd.addr(pos.start);
        self.stats.commands += 1;
        self.cmd_done = None;
        self.ring_doorbell(0, 0);
        let deadline = self.now_ms() + COMMAND_TIMEOUT_MS;
        loop {
            self.process_events();
            if self.dead {
                return Err(HcError::ControllerDead);
            }
            if let Some((ptr, code, slot)) = self.cmd_done.take() {
                if ptr == addr {
                    self.cmd.set_dequeue(pos.end);
                    return match code {
                        cc::SUCCESS => Ok(slot),
                        c => {
                            log::debug!("xhci: command type {} failed with code {c}", trb.ty());
                            Err(completion_to_result(c)
                                .err()
                                .unwrap_or(HcError::Controller(c)))
                        }
                    };
                }
                log::warn!("xhci: completion for unexpected command {ptr:#x}");
            }
            if self.now_ms() >= deadline {
                log::error!(
                    "xhci: command type {} timed out; aborting the command ring",
                    trb.ty()
                );
                let v = self.regs.read64(self.op + CRCR);
                self.regs
                    .write64(self.op + CRCR, (v & 0x3f & !CRCR_CRR) | CRCR_CA);
                let d = self.now_ms() + 100;
                while self.regs.read64(self.op + CRCR) & CRCR_CRR != 0 && self.now_ms() < d {
                    self.clock.delay_us(100);
                }
                self.process_events();
                self.cmd.set_dequeue(pos.end);
                return Err(HcError::Timeout);
            }
            self.clock.delay_us(10);
        }
    }

    fn slot(&self, dev: DeviceId) -> Result<&Slot<Buf<P>>, HcError> {
        self.slots
            .get(dev.0 as usize)
            .and_then(|s| s.as_ref())
            .ok_or(HcError::NoDevice)
    }

    fn slot_mut(&mut self, dev: DeviceId) -> Result<&mut Slot<Buf<P>>, HcError> {
        self.slots
            .get_mut(dev.0 as usize)
            .and_then(|s| s.as_mut())
            .ok_or(HcError::NoDevice)
    }

    /// Fill the input context's slot context from the slot's state.
    fn write_slot_ctx(&self, sl: &Slot<Buf<P>>, max_dci: u8) {
        let info = &sl.info;
        let mut sc = SlotContext {
            route: info.route.string,
            speed: speed_id(info.speed),
            context_entries: max_dci.max(1),
            root_port: info.route.root_port,
            ..Default::default()
        };
        if let Some(tt) = info.tt {
            sc.tt_hub_slot = tt.hub.0;
            sc.tt_port = tt.port;
            sc.multi_tt = tt.multi_tt;
        }
        if let Some(h) = sl.hub {
            sc.hub = true;
            sc.num_ports = h.ports;
            sc.multi_tt = h.multi_tt;
            if info.speed == Speed::High {
                sc.tt_think_time = h.think_time;
            }
        }
        let base = self.layout.input_slot();
        for (i, d) in sc.encode().iter().enumerate() {
            sl.in_ctx.write32(base + 4 * i, *d);
        }
    }

    fn write_ep_ctx(&self, in_ctx: &Buf<P>, dci: u8, ctx: &EndpointContext) {
        let base = self.layout.input_ep(dci);
        for (i, d) in ctx.encode().iter().enumerate() {
            in_ctx.write32(base + 4 * i, *d);
        }
    }

    fn ep0_ctx(sl: &Slot<Buf<P>>) -> EndpointContext {
        let ep0 = sl.eps[1].as_ref().expect("endpoint 0 always exists");
        let (idx, cycle) = ep0.ring.enqueue();
        let mut c = EndpointContext::control(sl.ep0_mps, ep0.ring.addr(idx));
        c.dcs = cycle;
        c
    }

    fn address_cmd(&mut self, dev: DeviceId, bsr: bool) -> Result<(), HcError> {
        let sl = self.slot(dev)?;
        sl.in_ctx.zero();
        sl.in_ctx.write32(context::off::ICC_ADD, 0b11);
        self.write_slot_ctx(sl, 1);
        let ep0 = Self::ep0_ctx(sl);
        self.write_ep_ctx(&sl.in_ctx, 1, &ep0);
        let addr = sl.in_ctx.bus_addr();
        self.command(Trb::address_device(addr, dev.0, bsr))
            .map(|_| ())
    }

    fn output_ep_state(&self, dev: DeviceId, dci: u8) -> Result<u8, HcError> {
        let sl = self.slot(dev)?;
        Ok((sl.out_ctx.read32(self.layout.output_ep(dci)) & 7) as u8)
    }

    fn set_dequeue_to(
        &mut self,
        dev: DeviceId,
        dci: u8,
        index: usize,
        cycle: bool,
    ) -> Result<(), HcError> {
        let addr = {
            let ep = self.slot(dev)?.eps[dci as usize]
                .as_ref()
                .ok_or(HcError::Invalid("endpoint"))?;
            ep.ring.addr(index)
        };
        self.command(Trb::set_tr_dequeue(dev.0, dci, addr, cycle))?;
        if let Some(ep) = self.slot_mut(dev)?.eps[dci as usize].as_mut() {
            ep.ring.set_dequeue(index);
        }
        Ok(())
    }

    fn find_td(&self, id: TransferId) -> Option<(u8, u8, usize)> {
        for (s, sl) in self.slots.iter().enumerate() {
            let Some(sl) = sl else { continue };
            for (d, ep) in sl.eps.iter().enumerate() {
                if let Some(ep) = ep {
                    if let Some(k) = ep.tds.iter().position(|t| t.id == id) {
                        return Some((s as u8, d as u8, k));
                    }
                }
            }
        }
        None
    }

    /// Build the TRBs of a transfer's data (Normal or Data Stage TRBs), split so that no TRB
    /// crosses a 64 KiB boundary (§6.4.1), with TD Size (§4.11.2.4).
    fn data_trbs(
        buffer: &[hal::DmaSegment],
        first_type: u32,
        dir_in: bool,
        mps: u16,
        out: &mut Vec<Trb>,
    ) -> u32 {
        // The pieces of the buffer: segments split at 64 KiB boundaries.
        fn pieces(buffer: &[hal::DmaSegment]) -> impl Iterator<Item = (u64, u32)> + '_ {
            buffer.iter().flat_map(|s| {
                let end = s.bus_addr + s.len as u64;
                let mut addr = s.bus_addr;
                core::iter::from_fn(move || {
                    (addr < end).then(|| {
                        let n = (end - addr).min(0x10000 - (addr & 0xffff));
                        let p = (addr, n as u32);
                        addr += n;
                        p
                    })
                })
            })
        }
        let (n, total) = pieces(buffer).fold((0usize, 0u64), |(n, t), p| (n + 1, t + p.1 as u64));
        let mps = mps.max(1) as u64;
        let total_packets = total.div_ceil(mps);
        let mut done = 0u64;
        out.reserve(n);
        for (i, (addr, len)) in pieces(buffer).enumerate() {
            done += len as u64;
            let td_size = if i + 1 == n {
                0
            } else {
                (total_packets - (done / mps).min(total_packets)).min(31) as u32
            };
            let ty = if i == 0 { first_type } else { ty::NORMAL };
            let mut t = Trb::with_type(ty);
            t.parameter = addr;
            t.status = len | td_size << 17;
            if i + 1 < n {
                t.control |= trb::CHAIN;
            }
            if dir_in {
                t.control |= trb::ISP;
            }
            if ty == ty::DATA && dir_in {
                t.control |= trb::DIR_IN;
            }
            out.push(t);
        }
        total as u32
    }
}

impl<P: Platform> HostController for Xhci<P> {
    fn num_ports(&self) -> u8 {
        self.max_ports
    }

    fn port_status(&mut self, port: u8) -> Result<PortStatus, HcError> {
        self.check_port(port)?;
        let v = self.regs.read32(self.portsc(port));
        let speed = match (v >> PORT_SPEED_SHIFT) & 0xf {
            SPEED_FULL => Some(Speed::Full),
            SPEED_LOW => Some(Speed::Low),
            SPEED_HIGH => Some(Speed::High),
            SPEED_SUPER | SPEED_SUPER_PLUS => Some(Speed::Super),
            _ => None,
        };
        let mut changes = PortChanges::empty();
        for (bit, c) in [
            (PORT_CSC, PortChanges::CONNECT),
            (PORT_PEC, PortChanges::ENABLE),
            (PORT_PRC | PORT_WRC, PortChanges::RESET),
            (PORT_OCC, PortChanges::OVER_CURRENT),
            (PORT_PLC | PORT_CEC, PortChanges::LINK),
        ] {
            if v & bit != 0 {
                changes |= c;
            }
        }
        Ok(PortStatus {
            connected: v & PORT_CCS != 0,
            enabled: v & PORT_PED != 0,
            resetting: v & PORT_PR != 0,
            over_current: v & PORT_OCA != 0,
            powered: v & PORT_PP != 0,
            speed: if v & PORT_CCS != 0 { speed } else { None },
            usb3: self.is_usb3_port(port),
            changes,
        })
    }

    fn clear_port_changes(&mut self, port: u8, changes: PortChanges) -> Result<(), HcError> {
        self.check_port(port)?;
        let mut bits = 0;
        for (bit, c) in [
            (PORT_CSC, PortChanges::CONNECT),
            (PORT_PEC, PortChanges::ENABLE),
            (PORT_PRC | PORT_WRC, PortChanges::RESET),
            (PORT_OCC, PortChanges::OVER_CURRENT),
            (PORT_PLC | PORT_CEC, PortChanges::LINK),
        ] {
            if changes.contains(c) {
                bits |= bit;
            }
        }
        let r = self.portsc(port);
        let v = self.regs.read32(r);
        self.regs.write32(r, (v & PORT_PRESERVE) | bits);
        Ok(())
    }

    fn reset_port(&mut self, port: u8) -> Result<(), HcError> {
        self.check_port(port)?;
        let r = self.portsc(port);
        let v = self.regs.read32(r);
        if v & PORT_CCS == 0 {
            return Err(HcError::NoDevice);
        }
        self.regs.write32(r, (v & PORT_PRESERVE) | PORT_PR);
        Ok(())
    }

    fn disable_port(&mut self, port: u8) -> Result<(), HcError> {
        self.check_port(port)?;
        let r = self.portsc(port);
        let v = self.regs.read32(r);
        if self.is_usb3_port(port) {
            // USB3 ports are disabled through the link state (§4.19.1.2.4): PLS = Disabled.
            let w = (v & PORT_PRESERVE & !PORT_PLS_MASK) | (4 << 5) | (1 << 16);
            self.regs.write32(r, w);
        } else {
            // PED is write-1-to-clear.
            self.regs.write32(r, (v & PORT_PRESERVE) | PORT_PED);
        }
        Ok(())
    }

    fn create_device(&mut self, info: &DeviceInfo) -> Result<DeviceId, HcError> {
        self.check_port(info.route.root_port)?;
        if let Some(tt) = info.tt {
            self.slot(tt.hub)?;
        }
        let stype = self.port_slot_type[info.route.root_port as usize - 1];
        let slot = self.command(Trb::enable_slot(stype))?;
        if slot == 0 || slot > self.max_slots {
            return Err(HcError::Invalid("controller returned a bad slot id"));
        }
        let build = || -> Result<Slot<Buf<P>>, HcError> {
            let out_ctx = self.dma.alloc(self.layout.device_context_len(), 64)?;
            let in_ctx = self.dma.alloc(self.layout.input_context_len(), 64)?;
            let ring = ProducerRing::new(self.dma.alloc(RING_TRBS * 16, 64)?);
            let mps = info.speed.default_ep0_max_packet();
            let mut eps: Vec<Option<Endpoint<Buf<P>>>> = (0..32).map(|_| None).collect();
            eps[1] = Some(Endpoint {
                ring,
                tds: VecDeque::new(),
                halted: false,
                info: EndpointInfo {
                    address: EndpointAddress::EP0,
                    kind: TransferType::Control,
                    max_packet: mps,
                    mult: 0,
                    max_burst: 0,
                    interval: 0,
                    bytes_per_interval: 0,
                },
            });
            Ok(Slot {
                info: *info,
                out_ctx,
                in_ctx,
                eps,
                gone: false,
                ep0_mps: mps,
                hub: None,
            })
        };
        let sl = match build() {
            Ok(s) => s,
            Err(e) => {
                let _ = self.command(Trb::disable_slot(slot));
                return Err(e);
            }
        };
        self.dcbaa.write64(slot as usize * 8, sl.out_ctx.bus_addr());
        self.slots[slot as usize] = Some(sl);
        let dev = DeviceId(slot);
        // Default state, endpoint 0 usable at address 0 (§4.6.5, BSR = 1).
        if let Err(e) = self.address_cmd(dev, true) {
            let _ = self.release_device(dev);
            return Err(e);
        }
        Ok(dev)
    }

    fn address_device(&mut self, device: DeviceId) -> Result<u8, HcError> {
        if self.slot(device)?.gone {
            return Err(HcError::NoDevice);
        }
        self.address_cmd(device, false)?;
        let sl = self.slot(device)?;
        Ok(context::slot_address(
            sl.out_ctx.read32(context::off::SLOT_ADDR_STATE),
        ))
    }

    fn set_ep0_max_packet(&mut self, device: DeviceId, max_packet: u16) -> Result<(), HcError> {
        if max_packet == 0 || max_packet > 1024 {
            return Err(HcError::Invalid("endpoint 0 max packet"));
        }
        let sl = self.slot_mut(device)?;
        sl.ep0_mps = max_packet;
        if let Some(ep0) = sl.eps[1].as_mut() {
            ep0.info.max_packet = max_packet;
        }
        let sl = self.slot(device)?;
        sl.in_ctx.zero();
        sl.in_ctx.write32(context::off::ICC_ADD, 0b10);
        let ep0 = Self::ep0_ctx(sl);
        self.write_ep_ctx(&sl.in_ctx, 1, &ep0);
        let addr = sl.in_ctx.bus_addr();
        self.command(Trb::evaluate_context(addr, device.0))
            .map(|_| ())
    }

    fn set_hub_info(&mut self, device: DeviceId, hub: &HubInfo) -> Result<(), HcError> {
        self.slot_mut(device)?.hub = Some(*hub);
        let sl = self.slot(device)?;
        let max_dci = (1..32).rev().find(|&d| sl.eps[d].is_some()).unwrap_or(1) as u8;
        sl.in_ctx.zero();
        sl.in_ctx.write32(context::off::ICC_ADD, 0b1);
        self.write_slot_ctx(sl, max_dci);
        let addr = sl.in_ctx.bus_addr();
        self.command(Trb::configure_endpoint(addr, device.0))
            .map(|_| ())
    }

    fn configure_endpoints(
        &mut self,
        device: DeviceId,
        endpoints: &[EndpointInfo],
    ) -> Result<(), HcError> {
        let speed = {
            let sl = self.slot(device)?;
            if sl.gone {
                return Err(HcError::NoDevice);
            }
            sl.info.speed
        };
        for e in endpoints {
            if !e.address.is_valid() || e.address.is_ep0() {
                return Err(HcError::Invalid("endpoint address"));
            }
            if e.kind == TransferType::Control {
                return Err(HcError::NotSupported("extra control endpoints"));
            }
        }
        let mut drop = 0u32;
        let mut add = 0u32;
        let mut new_eps: Vec<(u8, Endpoint<Buf<P>>)> = Vec::new();
        {
            let sl = self.slot(device)?;
            for d in 2..32u8 {
                if let Some(ep) = &sl.eps[d as usize] {
                    let keep = endpoints
                        .iter()
                        .any(|e| dci(e.address) == d && *e == ep.info);
                    if !keep {
                        drop |= 1 << d;
                    }
                }
            }
        }
        for e in endpoints {
            let d = dci(e.address);
            let unchanged = self.slot(device)?.eps[d as usize]
                .as_ref()
                .is_some_and(|ep| ep.info == *e);
            if unchanged || add & (1 << d) != 0 {
                continue;
            }
            add |= 1 << d;
            let ring = ProducerRing::new(self.dma.alloc(RING_TRBS * 16, 64)?);
            new_eps.push((
                d,
                Endpoint {
                    ring,
                    tds: VecDeque::new(),
                    halted: false,
                    info: *e,
                },
            ));
        }
        if drop == 0 && add == 0 {
            return Ok(());
        }
        let max_dci = {
            let sl = self.slot(device)?;
            (1..32u8)
                .rev()
                .find(|&d| {
                    add & (1 << d) != 0 || (sl.eps[d as usize].is_some() && drop & (1 << d) == 0)
                })
                .unwrap_or(1)
        };
        {
            let sl = self.slot(device)?;
            sl.in_ctx.zero();
            sl.in_ctx.write32(context::off::ICC_DROP, drop);
            sl.in_ctx.write32(context::off::ICC_ADD, add | 1);
            self.write_slot_ctx(sl, max_dci);
            for (d, ep) in &new_eps {
                let ctx = EndpointContext::from_info(&ep.info, speed, ep.ring.base());
                self.write_ep_ctx(&sl.in_ctx, *d, &ctx);
            }
        }
        let addr = self.slot(device)?.in_ctx.bus_addr();
        self.command(Trb::configure_endpoint(addr, device.0))?;
        // Commit: dropped endpoints' transfers are cancelled.
        let mut done = Vec::new();
        let sl = self.slot_mut(device)?;
        for d in 2..32u8 {
            if drop & (1 << d) != 0 {
                if let Some(ep) = sl.eps[d as usize].take() {
                    for td in ep.tds {
                        done.push(Completion {
                            id: td.id,
                            device,
                            endpoint: td.endpoint,
                            actual: 0,
                            result: Err(HcError::Cancelled),
                        });
                    }
                }
            }
        }
        for (d, ep) in new_eps {
            sl.eps[d as usize] = Some(ep);
        }
        for c in done {
            self.events.push_back(HcEvent::Transfer(c));
        }
        Ok(())
    }

    fn submit(&mut self, r: &TransferRequest<'_>) -> Result<TransferId, HcError> {
        if self.dead {
            return Err(HcError::ControllerDead);
        }
        if !r.endpoint.is_valid() {
            return Err(HcError::Invalid("endpoint address"));
        }
        let total = r.length();
        if total > MAX_TRANSFER {
            return Err(HcError::Invalid("transfer too long"));
        }
        if !self.ac64
            && r.buffer
                .iter()
                .any(|s| s.bus_addr.saturating_add(s.len as u64) > 1 << 32)
        {
            return Err(HcError::Invalid(
                "buffer above 4 GiB for a 32-bit controller",
            ));
        }
        let d = dci(r.endpoint);
        let slot = r.device.0;
        let id = TransferId(self.next_id);
        let sl = self.slot_mut(r.device)?;
        if sl.gone {
            return Err(HcError::NoDevice);
        }
        let ep = sl
            .eps
            .get_mut(d as usize)
            .and_then(|e| e.as_mut())
            .ok_or(HcError::Invalid("endpoint not configured"))?;
        if ep.halted {
            return Err(HcError::EndpointHalted);
        }
        let mps = ep.info.max_packet;
        let mut trbs = Vec::new();
        let is_control = ep.info.kind == TransferType::Control;
        match (ep.info.kind, r.setup) {
            (TransferType::Control, Some(setup)) => {
                let dir_in = setup[0] & 0x80 != 0;
                let wlength = u16::from_le_bytes([setup[6], setup[7]]) as u64;
                if total > wlength {
                    return Err(HcError::Invalid("data stage longer than wLength"));
                }
                let mut s = Trb::with_type(ty::SETUP);
                s.parameter = u64::from_le_bytes(setup);
                s.status = 8;
                s.control |= trb::IDT
                    | match (total, dir_in) {
                        (0, _) => trb::TRT_NO_DATA,
                        (_, true) => trb::TRT_IN,
                        (_, false) => trb::TRT_OUT,
                    };
                trbs.push(s);
                Self::data_trbs(r.buffer, ty::DATA, dir_in, mps, &mut trbs);
                let mut st = Trb::with_type(ty::STATUS);
                st.control |= trb::IOC;
                if total == 0 || !dir_in {
                    st.control |= trb::DIR_IN;
                }
                trbs.push(st);
            }
            (TransferType::Control, None) => {
                return Err(HcError::Invalid("control transfer without setup"))
            }
            (_, Some(_)) => return Err(HcError::Invalid("setup packet on a non-control endpoint")),
            (TransferType::Isochronous, _) => {
                return Err(HcError::NotSupported("isochronous transfers"))
            }
            (_, None) => {
                let dir_in = r.endpoint.direction() == Direction::In;
                Self::data_trbs(r.buffer, ty::NORMAL, dir_in, mps, &mut trbs);
                if !dir_in
                    && r.flags.contains(TransferFlags::ZERO_PACKET)
                    && total > 0
                    && total.is_multiple_of(mps.max(1) as u64)
                {
                    if let Some(last) = trbs.last_mut() {
                        last.control |= trb::CHAIN;
                    }
                    trbs.push(Trb::with_type(ty::NORMAL));
                }
                if trbs.is_empty() {
                    trbs.push(Trb::with_type(ty::NORMAL));
                }
                trbs.last_mut().expect("non-empty").control |= trb::IOC;
            }
        }
        let pos = ep.ring.push_td(&trbs).ok_or(HcError::NoResources)?;
        let data = pos
            .indices
            .iter()
            .zip(trbs.iter())
            .filter(|(_, t)| matches!(t.ty(), ty::NORMAL | ty::DATA))
            .map(|(i, t)| (*i, t.status & 0x1ffff))
            .collect();
        ep.tds.push_back(Td {
            id,
            endpoint: if is_control {
                EndpointAddress::EP0
            } else {
                r.endpoint
            },
            pos,
            data,
            total: total as u32,
            short_actual: None,
            flags: r.flags,
            is_control,
        });
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.stats.transfers += 1;
        self.stats.trbs += trbs.len() as u64;
        self.ring_doorbell(slot, d);
        Ok(id)
    }

    fn cancel(&mut self, id: TransferId) -> Result<bool, HcError> {
        // Completions that already arrived win.
        self.process_events();
        let Some((slot, d, _)) = self.find_td(id) else {
            return Ok(false);
        };
        let dev = DeviceId(slot);
        {
            let sl = self.slot(dev)?;
            let ep = sl.eps[d as usize].as_ref().expect("found");
            let o = self.layout.output_ep(d);
            let deq = sl.out_ctx.read64(o + 8);
            let td = &ep.tds[ep.tds.iter().position(|t| t.id == id).expect("found")];
            log::debug!(
                "xhci: cancel {id:?} slot {slot} ep {d}: state {} deq {deq:#x}, TD at {:#x} ({} TRBs), {} queued, USBSTS {:#x}, {} events, ERDP {:#x}",
                sl.out_ctx.read32(o) & 7,
                ep.ring.addr(td.pos.start),
                td.pos.indices.len(),
                ep.tds.len(),
                self.regs.read32(self.op + USBSTS),
                self.stats.events,
                self.regs.read64(self.rt + IR0 + ERDP)
            );
        }
        let gone = self.slot(dev)?.gone;
        let halted = self.slot(dev)?.eps[d as usize]
            .as_ref()
            .is_some_and(|e| e.halted);
        if !gone && !self.dead && !halted {
            // The output context's state may lag behind (§4.8.3), so stop unconditionally; a
            // Context State Error means it was not running anyway.
            match self.command(Trb::stop_endpoint(slot, d)) {
                Ok(_) | Err(HcError::Invalid(_)) => {}
                Err(e) => log::warn!("xhci: stop endpoint {slot}/{d}: {e}"),
            }
        }
        // The stop may have raced with the TD's completion.
        let Some((_, _, k)) = self.find_td(id) else {
            return Ok(true);
        };
        let (td, restart) = {
            let sl = self.slot_mut(dev)?;
            let ep = sl.eps[d as usize].as_mut().expect("found above");
            let td = ep.tds.remove(k).expect("found above");
            if k > 0 {
                // Not at the head: turn it into No-ops so the controller skips it (§4.6.9).
                for &i in &td.pos.indices {
                    let c = ep.ring.read(i).control;
                    let keep = c & (trb::CYCLE | trb::CHAIN);
                    ep.ring.rewrite_control(i, keep | (ty::NOOP << 10));
                }
            }
            let restart = match ep.tds.front() {
                Some(first) => (first.pos.start, first.pos.start_cycle),
                None => ep.ring.enqueue(),
            };
            (td, restart)
        };
        if !gone && !self.dead {
            let state = self.output_ep_state(dev, d)?;
            if state == ep_state::STOPPED {
                // Restart at the first TD still outstanding (or the end of the ring's work).
                if let Err(e) = self.set_dequeue_to(dev, d, restart.0, restart.1) {
                    log::warn!("xhci: set dequeue {slot}/{d}: {e}");
                }
            }
            let more = self.slot(dev)?.eps[d as usize]
                .as_ref()
                .is_some_and(|e| !e.tds.is_empty());
            if more {
                self.ring_doorbell(slot, d);
            }
        }
        self.events.push_back(HcEvent::Transfer(Completion {
            id: td.id,
            device: dev,
            endpoint: td.endpoint,
            actual: 0,
            result: Err(HcError::Cancelled),
        }));
        Ok(true)
    }

    fn clear_halt(&mut self, device: DeviceId, endpoint: EndpointAddress) -> Result<(), HcError> {
        let d = dci(endpoint);
        {
            let sl = self.slot(device)?;
            if sl.eps.get(d as usize).and_then(|e| e.as_ref()).is_none() {
                return Err(HcError::Invalid("endpoint not configured"));
            }
            if sl.gone {
                return Err(HcError::NoDevice);
            }
        }
        self.process_events();
        let state = self.output_ep_state(device, d)?;
        if state == ep_state::HALTED {
            self.command(Trb::reset_endpoint(device.0, d))?;
        }
        let state = self.output_ep_state(device, d)?;
        let sl = self.slot_mut(device)?;
        let ep = sl.eps[d as usize].as_mut().expect("checked");
        // Anything still queued cannot have run on a halted endpoint; fail it in order.
        let mut failed = Vec::new();
        if ep.halted {
            while let Some(t) = ep.tds.pop_front() {
                failed.push(Completion {
                    id: t.id,
                    device,
                    endpoint: t.endpoint,
                    actual: 0,
                    result: Err(HcError::EndpointHalted),
                });
            }
        }
        let (idx, cycle) = ep.ring.enqueue();
        ep.halted = false;
        for c in failed {
            self.events.push_back(HcEvent::Transfer(c));
        }
        if state == ep_state::STOPPED {
            let empty = self.slot(device)?.eps[d as usize]
                .as_ref()
                .is_some_and(|e| e.tds.is_empty());
            if empty {
                self.set_dequeue_to(device, d, idx, cycle)?;
            }
        }
        Ok(())
    }

    fn release_device(&mut self, device: DeviceId) -> Result<(), HcError> {
        self.slot(device)?;
        self.fail_slot(device.0, HcError::NoDevice);
        let res = if self.dead {
            Ok(0)
        } else {
            self.command(Trb::disable_slot(device.0))
        };
        self.dcbaa.write64(device.0 as usize * 8, 0);
        self.slots[device.0 as usize] = None;
        // Hubs' children keep their slots until released by their owner; their TT hub is gone.
        res.map(|_| ())
    }

    fn poll(&mut self) -> Option<HcEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let irq = self.irq.as_ref().is_some_and(|i| i.take());
        if irq {
            let ir = self.rt + IR0;
            self.regs.write32(ir + IMAN, IMAN_IE | IMAN_IP);
            self.regs.write32(self.op + USBSTS, STS_EINT);
        }
        self.process_events();
        if irq {
            if let Some(i) = self.irq.as_ref() {
                i.unmask();
            }
        }
        self.events.pop_front()
    }
}
