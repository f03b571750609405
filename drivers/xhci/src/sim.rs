//! A small simulated xHCI for the host tests: a register block ([`FakeRegs`]) whose write hook runs
//! the controller model, over [`FakeMemory`] shared with the driver's DMA buffers.  It implements
//! what the driver uses of xHCI 1.2: reset/run, the command ring, one event ring segment with cycle
//! bits, device and input contexts (32- or 64-byte), transfer rings with link TRBs, and ports with
//! connect/reset/disable.  Devices are usb-core's simulated devices.
//!
//! Like QEMU it executes a TD as soon as the doorbell is rung; an IN transfer on a non-control
//! endpoint without data waits (NAK) until [`SimXhci::kick`].

use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use hal::fake::{FakeIrq, FakeMemory, FakeRegs};
use usb_core::hc::{HcError, Route, Speed};
use usb_core::request::SetupPacket;
use usb_core::sim::SimDevice;

use crate::regs::*;
use crate::trb::{cc, ty, Trb, CHAIN, CYCLE, IDT, IOC, ISP, LINK_TC};

/// A TD read from a ring: its (address, TRB) pairs, the dequeue pointer after it and its cycle.
type GatheredTd = (Vec<(u64, Trb)>, u64, bool);

pub const CAPLEN: usize = 0x40;
pub const RTS: usize = 0x1000;
pub const DB: usize = 0x2000;
pub const XECP: usize = 0x3000;
pub const SIZE: usize = 0x4000;
pub const PORTS: u8 = 4;
pub const SLOTS: u8 = 8;

#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct SimEp {
    pub deq: u64,
    pub ccs: bool,
    pub state: u8,
    pub ep_type: u32,
    pub pending: bool,
}

#[derive(Default)]
pub struct SimSlot {
    pub port: u8,
    pub route: u32,
    pub depth: u8,
    pub address: u8,
    pub eps: [SimEp; 32],
    pub tt_hub: u8,
    pub speed: u32,
}

pub struct State {
    pub mem: FakeMemory,
    pub csz: usize,
    pub devices: Vec<Option<SimDevice>>,
    pub slots: Vec<Option<SimSlot>>,
    cmd_deq: u64,
    cmd_ccs: bool,
    er_base: u64,
    er_size: u32,
    er_idx: u32,
    er_pcs: bool,
    pub irq: FakeIrq,
    pub commands: Vec<u32>,
    /// Fail every command of this TRB type with this completion code.
    pub fail_command: Option<(u32, u8)>,
    /// Do not complete commands (to test the timeout).
    pub hang_commands: bool,
    /// Authoritative copies of the registers with write-1-to-clear bits.
    sts: u32,
    iman: u32,
    dcbaap: u64,
    pub portsc: [u32; PORTS as usize],
}

pub struct SimXhci {
    pub regs: Rc<FakeRegs>,
    pub st: Rc<RefCell<State>>,
}

/// A `RegisterIo` handle to the shared fake register block.
pub use hal::fake::SharedRegs as Regs;

fn portsc(port: u8) -> usize {
    CAPLEN + PORT_BASE + 0x10 * (port as usize - 1)
}

fn is_usb3(port: u8) -> bool {
    port > 2
}

impl SimXhci {
    /// Ports 1–2 are USB2, 3–4 USB3.  `csz64` selects 64-byte contexts; `scratchpads` buffers
    /// are requested.
    pub fn new(mem: FakeMemory, csz64: bool, scratchpads: u32) -> Self {
        let regs = Rc::new(FakeRegs::new(SIZE));
        regs.poke(CAPLENGTH, 1, CAPLEN as u64);
        regs.poke(HCIVERSION, 2, 0x120);
        regs.poke(
            HCSPARAMS1,
            4,
            (SLOTS as u64) | 1 << 8 | (PORTS as u64) << 24,
        );
        regs.poke(
            HCSPARAMS2,
            4,
            (((scratchpads >> 5) & 0x1f) << 21 | (scratchpads & 0x1f) << 27) as u64,
        );
        let csz = if csz64 { HCC_CSZ } else { 0 };
        regs.poke(
            HCCPARAMS1,
            4,
            (HCC_AC64 | csz | ((XECP as u32 / 4) << 16)) as u64,
        );
        regs.poke(DBOFF, 4, DB as u64);
        regs.poke(RTSOFF, 4, RTS as u64);
        regs.poke(CAPLEN + USBSTS, 4, STS_HCH as u64);
        regs.poke(CAPLEN + PAGESIZE, 4, 1);
        // Legacy support (BIOS owned, released when the OS asks), then two protocol caps.
        regs.poke(
            XECP,
            4,
            (XCAP_LEGACY as u32 | 4 << 8 | LEGACY_BIOS_OWNED) as u64,
        );
        regs.poke(
            XECP + 16,
            4,
            (XCAP_PROTOCOL as u32 | 4 << 8 | 2 << 24) as u64,
        );
        regs.poke(XECP + 16 + 8, 4, (1 | 2 << 8) as u64);
        regs.poke(XECP + 32, 4, (XCAP_PROTOCOL as u32 | 3 << 24) as u64);
        regs.poke(XECP + 32 + 8, 4, (3 | 2 << 8) as u64);
        for p in 1..=PORTS {
            regs.poke(portsc(p), 4, PORT_PP as u64);
        }
        let st = Rc::new(RefCell::new(State {
            mem,
            csz: if csz64 { 64 } else { 32 },
            devices: (0..PORTS).map(|_| None).collect(),
            slots: (0..=SLOTS).map(|_| None).collect(),
            cmd_deq: 0,
            cmd_ccs: true,
            er_base: 0,
            er_size: 0,
            er_idx: 0,
            er_pcs: true,
            irq: FakeIrq::default(),
            commands: Vec::new(),
            fail_command: None,
            hang_commands: false,
            sts: STS_HCH,
            iman: 0,
            dcbaap: 0,
            portsc: [PORT_PP; PORTS as usize],
        }));
        let s2 = st.clone();
        regs.set_on_write(move |r, off, _w, v| {
            let mut s = s2.borrow_mut();
            s.on_write(r, off, v as u32);
        });
        SimXhci { regs, st }
    }

    pub fn regs(&self) -> Regs {
        Regs(self.regs.clone())
    }

    /// Plug (or unplug with `None`) a device on a root port.
    pub fn plug(&self, port: u8, dev: Option<SimDevice>) {
        let mut s = self.st.borrow_mut();
        let present = dev.is_some();
        let speed = dev.as_ref().map(|d| speed_code(d.speed)).unwrap_or(0);
        s.devices[port as usize - 1] = dev;
        let mut v = s.portsc[port as usize - 1];
        v &= !(PORT_CCS | PORT_PED | (0xf << PORT_SPEED_SHIFT) | PORT_PLS_MASK);
        v |= PORT_CSC;
        if present {
            v |= PORT_CCS | speed << PORT_SPEED_SHIFT;
            if is_usb3(port) {
                v |= PORT_PED; // USB3 ports enable on link training
            } else {
                v |= 7 << 5; // polling
            }
        } else {
            v |= 5 << 5; // RxDetect
        }
        s.portsc[port as usize - 1] = v;
        s.event(
            &self.regs,
            0,
            ty::PORT_STATUS_CHANGE,
            cc::SUCCESS,
            (port as u64) << 24,
            0,
            0,
        );
        s.sync(&self.regs);
    }

    /// Re-run endpoint `dci` of `slot` (e.g. after queueing IN data on a device).
    pub fn kick(&self, slot: u8, dci: u8) {
        let mut s = self.st.borrow_mut();
        s.run_endpoint(&self.regs, slot, dci);
        s.sync(&self.regs);
    }

    pub fn device(&self, port: u8) -> std::cell::RefMut<'_, SimDevice> {
        std::cell::RefMut::map(self.st.borrow_mut(), |s| {
            s.devices[port as usize - 1]
                .as_mut()
                .expect("device plugged")
        })
    }

    pub fn irq(&self) -> FakeIrq {
        self.st.borrow().irq.clone()
    }
}

fn speed_code(s: Speed) -> u32 {
    match s {
        Speed::Full => SPEED_FULL,
        Speed::Low => SPEED_LOW,
        Speed::High => SPEED_HIGH,
        Speed::Super => SPEED_SUPER,
    }
}

impl State {
    fn r32(&self, a: u64) -> u32 {
        self.mem.read32(a).expect("DMA read in memory")
    }
    fn w32(&self, a: u64, v: u32) {
        assert!(self.mem.write(a, &v.to_le_bytes()));
    }
    fn trb(&self, a: u64) -> Trb {
        let mut b = [0u8; 16];
        assert!(self.mem.read(a, &mut b), "TRB at {a:#x} outside memory");
        Trb::from_bytes(&b)
    }

    fn sync(&self, r: &FakeRegs) {
        r.poke(CAPLEN + USBSTS, 4, self.sts as u64);
        r.poke(RTS + IR0 + IMAN, 4, self.iman as u64);
        for p in 1..=PORTS {
            r.poke(portsc(p), 4, self.portsc[p as usize - 1] as u64);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(&mut self, r: &FakeRegs, slot: u8, t: u32, code: u8, param: u64, len: u32, epid: u8) {
        if self.er_size == 0 {
            return;
        }
        let mut e = Trb::with_type(t);
        e.parameter = param;
        e.status = (code as u32) << 24 | (len & 0xff_ffff);
        e.control |= (slot as u32) << 24 | (epid as u32) << 16;
        if self.er_pcs {
            e.control |= CYCLE;
        }
        let a = self.er_base + 16 * self.er_idx as u64;
        assert!(self.mem.write(a, &e.to_bytes()));
        self.er_idx += 1;
        if self.er_idx == self.er_size {
            self.er_idx = 0;
            self.er_pcs = !self.er_pcs;
        }
        self.iman |= IMAN_IP;
        self.sts |= STS_EINT;
        let cmd = r.peek(CAPLEN + USBCMD, 4) as u32;
        if self.iman & IMAN_IE != 0 && cmd & CMD_INTE != 0 {
            self.irq.raise();
        }
    }

    fn on_write(&mut self, r: &FakeRegs, off: usize, v: u32) {
        let op = CAPLEN;
        match off {
            // The "BIOS" lets go as soon as the OS asks.
            _ if off == XECP && v & LEGACY_OS_OWNED != 0 => {
                r.poke(XECP, 4, (v & !LEGACY_BIOS_OWNED) as u64);
            }
            _ if off == op + USBCMD => {
                if v & CMD_HCRST != 0 {
                    r.poke(op + USBCMD, 4, 0);
                    self.sts = STS_HCH;
                    self.slots.iter_mut().for_each(|s| *s = None);
                    self.er_size = 0;
                } else if v & CMD_RUN != 0 {
                    self.sts &= !STS_HCH;
                } else {
                    self.sts |= STS_HCH;
                }
            }
            _ if off == op + USBSTS => self.sts &= !(v & (STS_EINT | STS_PCD | STS_HSE)),
            _ if off == op + CRCR + 4 => {
                let lo = r.peek(op + CRCR, 4);
                if lo & CRCR_CA != 0 {
                    // Abort: complete nothing; the ring stops.
                    r.poke(op + CRCR, 8, 0);
                    return self.sync(r);
                }
                self.cmd_deq = (lo & !0x3f) | (v as u64) << 32;
                self.cmd_ccs = lo & 1 != 0;
                r.poke(op + CRCR, 8, 0);
            }
            _ if off == op + DCBAAP + 4 => self.dcbaap = r.peek(op + DCBAAP, 8),
            _ if off == RTS + IR0 + ERSTBA + 4 => {
                let erst = r.peek(RTS + IR0 + ERSTBA, 8);
                self.er_base = self.mem.read64(erst).unwrap();
                self.er_size = self.r32(erst + 8);
                self.er_idx = 0;
                self.er_pcs = true;
            }
            _ if off == RTS + IR0 + IMAN => {
                let ip = if v & IMAN_IP != 0 {
                    0
                } else {
                    self.iman & IMAN_IP
                };
                self.iman = (v & IMAN_IE) | ip;
            }
            _ if (op + PORT_BASE..op + PORT_BASE + 0x10 * PORTS as usize).contains(&off)
                && (off - op - PORT_BASE).is_multiple_of(0x10) =>
            {
                let port = ((off - op - PORT_BASE) / 0x10 + 1) as u8;
                self.port_write(r, port, v);
            }
            _ if off == DB => self.run_commands(r),
            _ if off > DB && off < DB + 4 * (SLOTS as usize + 1) => {
                let slot = ((off - DB) / 4) as u8;
                self.run_endpoint(r, slot, v as u8);
            }
            _ => {}
        }
        self.sync(r);
    }

    fn port_write(&mut self, r: &FakeRegs, port: u8, v: u32) {
        let i = port as usize - 1;
        let mut p = self.portsc[i];
        p &= !(v & PORT_CHANGE_MASK);
        if v & PORT_PP != 0 {
            p |= PORT_PP;
        }
        if v & PORT_PED != 0 {
            p &= !PORT_PED;
        }
        if v & (1 << 16) != 0 && (v & PORT_PLS_MASK) >> 5 == 4 {
            p &= !PORT_PED;
            p = (p & !PORT_PLS_MASK) | 4 << 5;
        }
        if v & PORT_PR != 0 && p & PORT_CCS != 0 {
            // The reset completes at once.
            p |= PORT_PED | PORT_PRC;
            p &= !PORT_PLS_MASK; // U0
            if let Some(d) = self.devices[i].as_mut() {
                d.address = 0;
            }
            self.portsc[i] = p;
            self.event(
                r,
                0,
                ty::PORT_STATUS_CHANGE,
                cc::SUCCESS,
                (port as u64) << 24,
                0,
                0,
            );
            return;
        }
        self.portsc[i] = p;
    }

    fn ctx_addr(&self, slot: u8) -> u64 {
        let dcbaap = self.dcbaap;
        self.mem.read64(dcbaap + 8 * slot as u64).unwrap()
    }

    fn device_for(&mut self, slot: u8) -> Option<&mut SimDevice> {
        let s = self.slots[slot as usize].as_ref()?;
        let (port, route, depth) = (s.port, s.route, s.depth);
        if port == 0 || port > PORTS || self.portsc[port as usize - 1] & PORT_PED == 0 {
            return None;
        }
        let r = Route {
            root_port: port,
            string: route,
            depth,
        };
        self.devices[port as usize - 1].as_mut()?.descend(&r)
    }

    fn run_commands(&mut self, r: &FakeRegs) {
        loop {
            let t = self.trb(self.cmd_deq);
            if t.cycle() != self.cmd_ccs {
                return;
            }
            if t.ty() == ty::LINK {
                self.cmd_deq = t.parameter;
                if t.control & LINK_TC != 0 {
                    self.cmd_ccs = !self.cmd_ccs;
                }
                continue;
            }
            if self.hang_commands {
                return;
            }
            let addr = self.cmd_deq;
            self.cmd_deq += 16;
            self.commands.push(t.ty());
            let (code, slot) = match self.fail_command {
                Some((ty, code)) if ty == t.ty() => (code, t.slot_id()),
                _ => self.command(r, &t),
            };
            self.event(r, slot, ty::COMMAND_COMPLETION, code, addr, 0, 0);
        }
    }

    fn slot_ctx_out(&self, slot: u8) -> u64 {
        self.ctx_addr(slot)
    }

    fn write_ep_out(&self, slot: u8, dci: u8) {
        let s = self.slots[slot as usize].as_ref().unwrap();
        let e = s.eps[dci as usize];
        let a = self.slot_ctx_out(slot) + (dci as usize * self.csz) as u64;
        let d0 = self.r32(a) & !7;
        self.w32(a, d0 | e.state as u32);
        self.w32(a + 8, (e.deq as u32 & !0xf) | e.ccs as u32);
        self.w32(a + 12, (e.deq >> 32) as u32);
    }

    fn command(&mut self, r: &FakeRegs, t: &Trb) -> (u8, u8) {
        let slot = t.slot_id();
        let csz = self.csz as u64;
        match t.ty() {
            ty::NOOP_COMMAND => (cc::SUCCESS, 0),
            ty::ENABLE_SLOT => match (1..=SLOTS).find(|&i| self.slots[i as usize].is_none()) {
                Some(i) => {
                    self.slots[i as usize] = Some(SimSlot::default());
                    (cc::SUCCESS, i)
                }
                None => (cc::NO_SLOTS, 0),
            },
            _ if slot == 0 || slot > SLOTS || self.slots[slot as usize].is_none() => {
                (cc::SLOT_NOT_ENABLED, slot)
            }
            ty::DISABLE_SLOT => {
                self.slots[slot as usize] = None;
                (cc::SUCCESS, slot)
            }
            ty::ADDRESS_DEVICE | ty::EVALUATE_CONTEXT | ty::CONFIGURE_ENDPOINT => {
                let inp = t.parameter;
                let drop = self.r32(inp);
                let add = self.r32(inp + 4);
                let out = self.ctx_addr(slot);
                let islot = inp + csz;
                if t.ty() == ty::ADDRESS_DEVICE {
                    if add & 3 != 3 {
                        return (cc::PARAMETER, slot);
                    }
                    let d0 = self.r32(islot);
                    let d1 = self.r32(islot + 4);
                    let d2 = self.r32(islot + 8);
                    let bsr = t.control & crate::trb::BSR != 0;
                    {
                        let s = self.slots[slot as usize].as_mut().unwrap();
                        s.route = d0 & 0xf_ffff;
                        s.depth = (0..5)
                            .take_while(|i| (s.route >> (4 * i)) & 0xf != 0)
                            .count() as u8;
                        s.speed = (d0 >> 20) & 0xf;
                        s.port = (d1 >> 16) as u8;
                        s.tt_hub = d2 as u8;
                    }
                    if self.device_for(slot).is_none() {
                        return (cc::TRANSACTION, slot);
                    }
                    let address = if bsr { 0 } else { slot };
                    if !bsr {
                        self.device_for(slot).unwrap().address = address;
                    }
                    for k in 0..8u64 {
                        self.w32(out + 4 * k, self.r32(islot + 4 * k));
                    }
                    let state = if bsr { 1 } else { 2 };
                    self.w32(out + 12, state << 27 | address as u32);
                    let ep0 = inp + 2 * csz;
                    for k in 0..8u64 {
                        self.w32(out + csz + 4 * k, self.r32(ep0 + 4 * k));
                    }
                    let lo = self.r32(ep0 + 8);
                    let hi = self.r32(ep0 + 12);
                    let s = self.slots[slot as usize].as_mut().unwrap();
                    s.address = address;
                    s.eps[1] = SimEp {
                        deq: (lo & !0xf) as u64 | (hi as u64) << 32,
                        ccs: lo & 1 != 0,
                        state: 1,
                        ep_type: 4,
                        pending: false,
                    };
                    self.write_ep_out(slot, 1);
                    return (cc::SUCCESS, slot);
                }
                if t.ty() == ty::EVALUATE_CONTEXT {
                    if add & 2 != 0 {
                        let mps = self.r32(inp + 2 * csz + 4) & 0xffff_0000;
                        let a = out + csz + 4;
                        self.w32(a, (self.r32(a) & 0xffff) | mps);
                    }
                    return (cc::SUCCESS, slot);
                }
                // Configure Endpoint.
                if add & 1 == 0 || add & 2 != 0 || drop & 3 != 0 {
                    return (cc::TRB, slot);
                }
                let d0 = self.r32(islot);
                self.w32(out, d0);
                self.w32(out + 4, self.r32(islot + 4));
                self.w32(out + 8, self.r32(islot + 8));
                self.w32(out + 12, (self.r32(out + 12) & 0xff) | 3 << 27);
                for d in 2..32u8 {
                    if drop & (1 << d) != 0 {
                        self.slots[slot as usize].as_mut().unwrap().eps[d as usize] =
                            SimEp::default();
                        self.write_ep_out(slot, d);
                    }
                    if add & (1 << d) != 0 {
                        let ie = inp + (d as u64 + 1) * csz;
                        let oe = out + d as u64 * csz;
                        for k in 0..8u64 {
                            self.w32(oe + 4 * k, self.r32(ie + 4 * k));
                        }
                        let lo = self.r32(ie + 8);
                        let hi = self.r32(ie + 12);
                        let ep_type = (self.r32(ie + 4) >> 3) & 7;
                        self.slots[slot as usize].as_mut().unwrap().eps[d as usize] = SimEp {
                            deq: (lo & !0xf) as u64 | (hi as u64) << 32,
                            ccs: lo & 1 != 0,
                            state: 1,
                            ep_type,
                            pending: false,
                        };
                        self.write_ep_out(slot, d);
                    }
                }
                (cc::SUCCESS, slot)
            }
            ty::RESET_ENDPOINT | ty::STOP_ENDPOINT | ty::SET_TR_DEQUEUE => {
                let d = t.endpoint_id() as usize;
                let res = {
                    let s = self.slots[slot as usize].as_mut().unwrap();
                    let e = &mut s.eps[d];
                    match t.ty() {
                        _ if e.state == 0 => cc::EP_NOT_ENABLED,
                        ty::RESET_ENDPOINT if e.state != 2 => cc::CONTEXT_STATE,
                        ty::RESET_ENDPOINT => {
                            e.state = 3;
                            cc::SUCCESS
                        }
                        ty::STOP_ENDPOINT if e.state != 1 => cc::CONTEXT_STATE,
                        ty::STOP_ENDPOINT => {
                            e.state = 3;
                            if e.pending {
                                e.pending = false;
                                // Report the TD the stop hit (§4.6.9).
                                cc::STOPPED
                            } else {
                                cc::SUCCESS
                            }
                        }
                        _ if e.state != 3 => cc::CONTEXT_STATE,
                        _ => {
                            e.deq = t.parameter & !0xf;
                            e.ccs = t.parameter & 1 != 0;
                            cc::SUCCESS
                        }
                    }
                };
                if res == cc::STOPPED {
                    let deq = self.slots[slot as usize].as_ref().unwrap().eps[d].deq;
                    self.event(r, slot, ty::TRANSFER_EVENT, cc::STOPPED, deq, 0, d as u8);
                    self.write_ep_out(slot, d as u8);
                    return (cc::SUCCESS, slot);
                }
                if res == cc::SUCCESS {
                    self.write_ep_out(slot, d as u8);
                }
                (res, slot)
            }
            _ => (cc::TRB, slot),
        }
    }

    /// Gather the TD at the endpoint's dequeue pointer: (TRB addresses and TRBs, address after).
    fn gather_td(&self, mut deq: u64, mut ccs: bool, control: bool) -> Option<GatheredTd> {
        let mut v = Vec::new();
        let mut in_control = false;
        loop {
            let t = self.trb(deq);
            if t.cycle() != ccs {
                return None; // nothing (more) published
            }
            if t.ty() == ty::LINK {
                deq = t.parameter;
                if t.control & LINK_TC != 0 {
                    ccs = !ccs;
                }
                continue;
            }
            v.push((deq, t));
            deq += 16;
            if control && t.ty() == ty::SETUP {
                in_control = true;
            }
            if control && t.ty() == ty::STATUS {
                in_control = false;
            }
            if !in_control && t.control & CHAIN == 0 {
                return Some((v, deq, ccs));
            }
            if v.len() > 300 {
                panic!("runaway TD");
            }
        }
    }

    fn run_endpoint(&mut self, r: &FakeRegs, slot: u8, dci: u8) {
        loop {
            let Some(s) = self.slots.get(slot as usize).and_then(|s| s.as_ref()) else {
                return;
            };
            let e = s.eps[dci as usize];
            if e.state == 3 {
                self.slots[slot as usize].as_mut().unwrap().eps[dci as usize].state = 1;
                self.write_ep_out(slot, dci);
            } else if e.state != 1 {
                return;
            }
            let control = e.ep_type == 4;
            let Some((trbs, next, next_ccs)) = self.gather_td(e.deq, e.ccs, control) else {
                return;
            };
            let is_in = dci % 2 == 1;
            // Data of the TD.
            let data_trbs: Vec<&(u64, Trb)> = trbs
                .iter()
                .filter(|(_, t)| matches!(t.ty(), ty::NORMAL | ty::DATA))
                .collect();
            let cap: usize = data_trbs
                .iter()
                .map(|(_, t)| (t.status & 0x1ffff) as usize)
                .sum();
            let mut out = Vec::new();
            let mut dir_in = is_in;
            for (_, t) in &data_trbs {
                let n = (t.status & 0x1ffff) as usize;
                let mut b = vec![0u8; n];
                assert!(n == 0 || self.mem.read(t.parameter, &mut b));
                out.extend_from_slice(&b);
            }
            let result: Option<Result<Vec<u8>, HcError>> =
                if trbs.iter().all(|(_, t)| t.ty() == ty::NOOP) {
                    Some(Ok(Vec::new()))
                } else if control {
                    let (_, setup) = trbs[0];
                    assert_eq!(setup.ty(), ty::SETUP, "control TD starts with a setup TRB");
                    assert!(setup.control & IDT != 0 && setup.status == 8);
                    let sp = SetupPacket::from_bytes(setup.parameter.to_le_bytes());
                    dir_in = sp.request_type & 0x80 != 0;
                    match self.device_for(slot) {
                        None => Some(Err(HcError::Transaction)),
                        Some(d) => d.control(sp, &out),
                    }
                } else {
                    let epaddr = (dci / 2) | if is_in { 0x80 } else { 0 };
                    match self.device_for(slot) {
                        None => Some(Err(HcError::Transaction)),
                        Some(d) if d.stall_eps.contains(&epaddr) => Some(Err(HcError::Stall)),
                        Some(d) if is_in => d.in_data.pop_front().map(Ok),
                        Some(d) => {
                            d.out_data.push((epaddr, out.clone()));
                            Some(Ok(Vec::new()))
                        }
                    }
                };
            let Some(result) = result else {
                // NAK: the TD stays at the head until kicked or stopped.
                self.slots[slot as usize].as_mut().unwrap().eps[dci as usize].pending = true;
                return;
            };
            self.slots[slot as usize].as_mut().unwrap().eps[dci as usize].pending = false;
            let (mut left, status) = match result {
                Ok(d) if dir_in && d.len() > cap && !control => (0, cc::BABBLE),
                Ok(d) => {
                    let mut off = 0;
                    if dir_in {
                        for (_, t) in &data_trbs {
                            let n = ((t.status & 0x1ffff) as usize).min(d.len() - off);
                            assert!(n == 0 || self.mem.write(t.parameter, &d[off..off + n]));
                            off += n;
                        }
                        (d.len().min(cap), cc::SUCCESS)
                    } else {
                        (cap, cc::SUCCESS)
                    }
                }
                Err(HcError::Stall) => (0, cc::STALL),
                Err(HcError::Babble) => (0, cc::BABBLE),
                Err(_) => (0, cc::TRANSACTION),
            };
            // Report like an xHC: Short Packet at the first short TRB with ISP, then skip to the
            // status stage (control) or the end of the TD; the IOC TRB's event otherwise.
            let mut short = false;
            let mut reported = false;
            for (a, t) in &trbs {
                let mut chunk = 0;
                if matches!(t.ty(), ty::NORMAL | ty::DATA) {
                    let n = t.status & 0x1ffff;
                    chunk = n.min(left as u32);
                    if chunk < n && status == cc::SUCCESS {
                        short = true;
                    }
                    left -= chunk as usize;
                }
                if t.ty() == ty::STATUS {
                    reported = false;
                    short = false;
                }
                if status != cc::SUCCESS {
                    if left == 0 {
                        self.event(
                            r,
                            slot,
                            ty::TRANSFER_EVENT,
                            status,
                            *a,
                            (t.status & 0x1ffff) - chunk,
                            dci,
                        );
                        break;
                    }
                    continue;
                }
                if !reported && (t.control & IOC != 0 || (short && t.control & ISP != 0)) {
                    let code = if short { cc::SHORT_PACKET } else { cc::SUCCESS };
                    self.event(
                        r,
                        slot,
                        ty::TRANSFER_EVENT,
                        code,
                        *a,
                        (t.status & 0x1ffff) - chunk,
                        dci,
                    );
                    reported = true;
                    if short && !control {
                        break;
                    }
                }
            }
            let e = &mut self.slots[slot as usize].as_mut().unwrap().eps[dci as usize];
            if status != cc::SUCCESS {
                e.state = 2; // halted at the TD's start
                self.write_ep_out(slot, dci);
                return;
            }
            e.deq = next;
            e.ccs = next_ccs;
            self.write_ep_out(slot, dci);
        }
    }
}
