//! A simulated UHCI controller for host tests: the I/O registers of UHCI 1.1 §2.1 on a
//! [`FakeRegs`] block, and a frame engine that, as the [`FakeClock`] advances, walks the frame
//! list, queue heads and TDs in [`FakeMemory`] the way §3–§4 describe (depth-first TD chains, QH
//! element advance on success, no advance on a short packet with SPD or on an error, C_ERR
//! countdown on timeouts), with scripted devices that answer ACK, NAK, STALL, timeout, babble or
//! data-buffer errors.  Like QEMU it moves at most 1280 bytes per frame.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use hal::fake::{FakeClock, FakeDma, FakeIrq, FakeMemory, FakeRegs};
use hal::Clock;

use crate::regs::{self, Cmd, Intr, PortSc, Sts};
use crate::schedule::{Link, Td, TdCtrl, PID_IN, PID_OUT, PID_SETUP};

/// `RegisterIo` over a shared [`FakeRegs`].
pub use hal::fake::SharedRegs as SimRegs;

/// The hal bundle the driver is tested with.
pub use hal::fake::FakePlatform as SimPlatform;

/// A device's answer to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// ACK; for IN the data sent.
    Ack(Vec<u8>),
    Nak,
    Stall,
    /// No answer (CRC/timeout).
    Timeout,
    /// More data than MaxLen (forced, whatever the device would send).
    Babble,
    /// Host-side overrun/underrun.
    DataBuffer,
}

/// One executed transaction, for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xact {
    pub addr: u8,
    pub ep: u8,
    pub pid: u8,
    pub toggle: bool,
    pub len: u16,
    pub frame: u16,
    pub low_speed: bool,
}

/// A scripted USB device: endpoint 0 answers GET_DESCRIPTOR(device), SET_ADDRESS and
/// SET_CONFIGURATION, stalls other requests; endpoint 1 is bulk IN from `bulk_in`, endpoint 2 bulk
/// OUT into `bulk_out`, endpoint 3 interrupt IN from `int_in` (NAK while empty).
pub struct TestDevice {
    pub addr: u8,
    pending_addr: Option<u8>,
    pub low_speed: bool,
    pub ep0_mps: u8,
    pub bulk_in: VecDeque<u8>,
    pub bulk_out: Vec<u8>,
    pub int_in: VecDeque<Vec<u8>>,
    /// Injected answers: (endpoint, pid, answer) for the next matching transaction.
    pub faults: VecDeque<(u8, u8, Resp)>,
    /// Expected data toggle of the bulk/interrupt endpoints by (number, is_in).
    toggles: [[bool; 2]; 16],
    /// Packets whose toggle did not match the device's (a correct host never causes one).
    pub toggle_errors: u32,
    setup: Option<[u8; 8]>,
    ctrl_in: VecDeque<u8>,
    /// Expected toggle of the next control data/status packet.
    ctrl_toggle: bool,
    ctrl_data_dir_seen: Option<u8>,
    pub configured: u8,
    pub resets: u32,
}

impl TestDevice {
    pub fn new(low_speed: bool) -> Self {
        TestDevice {
            addr: 0,
            pending_addr: None,
            low_speed,
            ep0_mps: 8,
            bulk_in: VecDeque::new(),
            bulk_out: Vec::new(),
            int_in: VecDeque::new(),
            faults: VecDeque::new(),
            toggles: [[false; 2]; 16],
            toggle_errors: 0,
            setup: None,
            ctrl_in: VecDeque::new(),
            ctrl_toggle: false,
            ctrl_data_dir_seen: None,
            configured: 0,
            resets: 0,
        }
    }

    fn bus_reset(&mut self) {
        self.addr = 0;
        self.pending_addr = None;
        self.setup = None;
        self.toggles = [[false; 2]; 16];
        self.configured = 0;
        self.resets += 1;
    }

    /// The device side of CLEAR_FEATURE(ENDPOINT_HALT): toggle back to DATA0.
    pub fn clear_halt(&mut self, ep: u8, is_in: bool) {
        self.toggles[ep as usize & 15][is_in as usize] = false;
    }

    pub fn descriptor_bytes(&self) -> Vec<u8> {
        self.descriptor()
    }

    /// Configuration 1: one vendor interface with bulk IN 0x81, bulk OUT 0x02 (64 bytes) and
    /// interrupt IN 0x83 (8 bytes, every 8 ms).
    fn config_descriptor() -> Vec<u8> {
        vec![
            9, 2, 39, 0, 1, 1, 0, 0x80, 50, // configuration
            9, 4, 0, 0, 3, 0xff, 0, 0, 0, // interface
            7, 5, 0x81, 2, 64, 0, 0, // bulk IN
            7, 5, 0x02, 2, 64, 0, 0, // bulk OUT
            7, 5, 0x83, 3, 8, 0, 8, // interrupt IN
        ]
    }

    fn descriptor(&self) -> Vec<u8> {
        vec![
            18,
            1,
            0x10,
            0x01,
            0,
            0,
            0,
            self.ep0_mps,
            0x34,
            0x12,
            0x78,
            0x56,
            0,
            1,
            0,
            0,
            0,
            1,
        ]
    }

    fn transact(&mut self, pid: u8, ep: u8, toggle: bool, out: &[u8], max_len: u16) -> Resp {
        if let Some(i) = self
            .faults
            .iter()
            .position(|(e, p, _)| *e == ep && *p == pid)
        {
            let (_, _, r) = self.faults.remove(i).expect("found");
            return r;
        }
        if ep == 0 {
            return self.control(pid, toggle, out, max_len);
        }
        let is_in = pid == PID_IN;
        let expect = &mut self.toggles[ep as usize][is_in as usize];
        let data = match (ep, pid) {
            (1, PID_IN) => {
                let n = (max_len as usize).min(self.bulk_in.len());
                self.bulk_in.drain(..n).collect()
            }
            (2, PID_OUT) => {
                if *expect == toggle {
                    self.bulk_out.extend_from_slice(out);
                }
                Vec::new()
            }
            (3, PID_IN) => match self.int_in.pop_front() {
                Some(r) => r,
                None => return Resp::Nak,
            },
            _ => return Resp::Stall,
        };
        let expect = &mut self.toggles[ep as usize][is_in as usize];
        if *expect != toggle {
            self.toggle_errors += 1;
        } else {
            *expect = !*expect;
        }
        Resp::Ack(data)
    }

    fn control(&mut self, pid: u8, toggle: bool, out: &[u8], max_len: u16) -> Resp {
        if pid == PID_SETUP {
            if toggle {
                self.toggle_errors += 1;
            }
            let mut s = [0u8; 8];
            s.copy_from_slice(&out[..8.min(out.len())]);
            self.setup = Some(s);
            self.ctrl_toggle = true;
            self.ctrl_data_dir_seen = None;
            self.ctrl_in.clear();
            match (s[0], s[1]) {
                (0x80, 6) if s[3] == 1 || s[3] == 2 => {
                    let len = u16::from_le_bytes([s[6], s[7]]) as usize;
                    let d = if s[3] == 1 {
                        self.descriptor()
                    } else {
                        Self::config_descriptor()
                    };
                    self.ctrl_in = d[..len.min(d.len())].iter().copied().collect();
                }
                (0x00, 5) => self.pending_addr = Some(s[2] & 0x7f),
                (0x00, 9) => self.configured = s[2],
                _ => {}
            }
            return Resp::Ack(Vec::new());
        }
        let Some(s) = self.setup else {
            return Resp::Stall;
        };
        let supported = matches!((s[0], s[1]), (0x80, 6) | (0x00, 5) | (0x00, 9))
            && !(s[1] == 6 && s[3] != 1 && s[3] != 2);
        if !supported {
            return Resp::Stall;
        }
        let dir_in = s[0] & 0x80 != 0;
        let is_status = (pid == PID_IN) != dir_in;
        if is_status {
            // Status stage is always DATA1 (USB 2.0 §8.5.3).
            if !toggle {
                self.toggle_errors += 1;
            }
            if let Some(a) = self.pending_addr.take() {
                self.addr = a;
            }
            self.setup = None;
            return Resp::Ack(Vec::new());
        }
        if toggle != self.ctrl_toggle {
            self.toggle_errors += 1;
        }
        self.ctrl_toggle = !self.ctrl_toggle;
        if pid == PID_IN {
            let n = (max_len as usize).min(self.ctrl_in.len());
            Resp::Ack(self.ctrl_in.drain(..n).collect())
        } else {
            Resp::Ack(Vec::new())
        }
    }
}

pub type Dev = Rc<RefCell<TestDevice>>;

#[derive(Default, Clone)]
pub struct SimPort {
    pub sc: u16,
    pub dev: Option<Dev>,
    pub pr_set_at: Option<u64>,
    /// Duration of the last reset signalling.
    pub last_reset_ns: Option<u64>,
    /// Time PE was set after the last reset.
    pub enabled_at: Option<u64>,
}

pub struct SimState {
    pub cmd: u16,
    pub sts: u16,
    pub intr: u16,
    pub frnum: u16,
    pub flbase: u32,
    pub sofmod: u8,
    pub ports: [SimPort; 2],
    last_frame_ns: u64,
    pub log: Vec<Xact>,
    pub frames: u64,
    /// Bytes per frame (QEMU: 1280).
    pub bandwidth: u32,
    /// Frames in which the frame budget was exhausted.
    pub full_frames: u64,
    /// Stop processing frames (to test timeouts and cancel races).
    pub frozen: bool,
}

/// The simulated controller with everything a driver instance needs.
pub struct Sim {
    pub regs: Rc<FakeRegs>,
    pub mem: FakeMemory,
    pub clock: FakeClock,
    pub irq: FakeIrq,
    pub state: Rc<RefCell<SimState>>,
}

const FRAME_NS: u64 = 1_000_000;

impl Sim {
    pub fn new() -> Sim {
        let regs = Rc::new(FakeRegs::new(regs::IO_SIZE));
        let mem = FakeMemory::new(0x10_0000, 0x80_0000);
        let clock = FakeClock::default();
        let irq = FakeIrq::default();
        let port = SimPort {
            sc: PortSc::RESERVED1.bits(),
            ..Default::default()
        };
        let state = Rc::new(RefCell::new(SimState {
            cmd: 0,
            sts: Sts::HCHALTED.bits(),
            intr: 0,
            frnum: 0,
            flbase: 0,
            sofmod: 64,
            ports: [port.clone(), port],
            last_frame_ns: 0,
            log: Vec::new(),
            frames: 0,
            bandwidth: 1280,
            full_frames: 0,
            frozen: false,
        }));
        {
            let st = state.clone();
            let (m, c, i) = (mem.clone(), clock.clone(), irq.clone());
            regs.set_on_read(move |r, _off, _w| {
                let mut s = st.borrow_mut();
                s.run_due(c.now_ns(), &m, &i);
                s.sync(r);
            });
        }
        {
            let st = state.clone();
            let c = clock.clone();
            regs.set_on_write(move |r, off, w, v| {
                let mut s = st.borrow_mut();
                s.write(off, w, v as u32, c.now_ns());
                s.sync(r);
            });
        }
        state.borrow().sync(&regs);
        Sim {
            regs,
            mem,
            clock,
            irq,
            state,
        }
    }

    pub fn platform(&self) -> (SimRegs, FakeDma, FakeClock, FakeIrq) {
        (
            SimRegs(self.regs.clone()),
            FakeDma::new(self.mem.clone()),
            self.clock.clone(),
            self.irq.clone(),
        )
    }

    /// Plug a device into root port `port` (0-based).
    pub fn attach(&self, port: usize, dev: Dev) {
        let mut s = self.state.borrow_mut();
        let low = dev.borrow().low_speed;
        let p = &mut s.ports[port];
        p.dev = Some(dev);
        let mut sc = PortSc::from_bits_retain(p.sc) | PortSc::CCS | PortSc::CSC;
        sc.set(PortSc::LSDA, low);
        p.sc = sc.bits();
        s.sync(&self.regs);
    }

    /// Unplug the device of root port `port`.
    pub fn detach(&self, port: usize) {
        let mut s = self.state.borrow_mut();
        let p = &mut s.ports[port];
        p.dev = None;
        let mut sc = PortSc::from_bits_retain(p.sc);
        if sc.contains(PortSc::CCS) {
            sc = (sc - PortSc::CCS) | PortSc::CSC;
        }
        if sc.contains(PortSc::PE) {
            sc = (sc - PortSc::PE) | PortSc::PEC;
        }
        p.sc = (sc - PortSc::LSDA).bits();
        s.sync(&self.regs);
    }

    /// Raise a host system error (a PCI master abort): the controller halts.
    pub fn host_system_error(&self) {
        let mut s = self.state.borrow_mut();
        s.sts |= (Sts::HSE | Sts::HCHALTED).bits();
        s.cmd &= !Cmd::RS.bits();
        s.sync(&self.regs);
        self.irq.raise();
    }

    pub fn clock_now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Advance time by `ms` milliseconds (frames run on the next register read).
    pub fn advance_ms(&self, ms: u64) {
        self.clock.advance_ns(ms * FRAME_NS);
    }
}

impl SimState {
    fn sync(&self, r: &FakeRegs) {
        r.poke(regs::USBCMD, 2, self.cmd as u64);
        r.poke(regs::USBSTS, 2, self.sts as u64);
        r.poke(regs::USBINTR, 2, self.intr as u64);
        r.poke(regs::FRNUM, 2, self.frnum as u64);
        r.poke(regs::FRBASEADD, 4, self.flbase as u64);
        r.poke(regs::SOFMOD, 1, self.sofmod as u64);
        for (i, p) in self.ports.iter().enumerate() {
            r.poke(regs::portsc(i), 2, p.sc as u64);
        }
    }

    fn write(&mut self, off: usize, width: u8, v: u32, now: u64) {
        match (off, width) {
            (regs::USBCMD, 2) => {
                let c = Cmd::from_bits_retain(v as u16);
                if c.contains(Cmd::GRESET) {
                    for p in self.ports.iter() {
                        if let Some(d) = &p.dev {
                            d.borrow_mut().bus_reset();
                        }
                    }
                }
                if c.contains(Cmd::HCRESET) {
                    self.cmd = 0;
                    self.sts = Sts::HCHALTED.bits();
                    self.intr = 0;
                    self.frnum = 0;
                    self.flbase = 0;
                    for p in self.ports.iter_mut() {
                        let keep = PortSc::from_bits_retain(p.sc) & (PortSc::CCS | PortSc::LSDA);
                        let mut sc = keep | PortSc::RESERVED1;
                        if keep.contains(PortSc::CCS) {
                            sc |= PortSc::CSC;
                        }
                        p.sc = sc.bits();
                    }
                    return;
                }
                let was_running = self.cmd & Cmd::RS.bits() != 0;
                self.cmd = (v as u16) & !Cmd::HCRESET.bits();
                if c.contains(Cmd::RS) {
                    if !was_running {
                        self.last_frame_ns = now;
                    }
                    self.sts &= !Sts::HCHALTED.bits();
                } else {
                    self.sts |= Sts::HCHALTED.bits();
                }
            }
            (regs::USBSTS, 2) => self.sts &= !((v as u16) & Sts::ACK_MASK.bits()),
            (regs::USBINTR, 2) => self.intr = v as u16,
            (regs::FRNUM, 2) if self.sts & Sts::HCHALTED.bits() != 0 => {
                self.frnum = v as u16 & regs::FRNUM_MASK;
            }
            (regs::FRBASEADD, 4) => self.flbase = v & !0xfff,
            (regs::SOFMOD, 1) => self.sofmod = v as u8,
            (o, 2) if (regs::PORTSC1..regs::PORTSC1 + 4).contains(&o) => {
                let p = &mut self.ports[(o - regs::PORTSC1) / 2];
                let mut val = PortSc::from_bits_retain(v as u16);
                let old = PortSc::from_bits_retain(p.sc);
                if val.contains(PortSc::PR) && !old.contains(PortSc::PR) {
                    p.pr_set_at = Some(now);
                    if let Some(d) = &p.dev {
                        d.borrow_mut().bus_reset();
                    }
                }
                if !val.contains(PortSc::PR) && old.contains(PortSc::PR) {
                    p.last_reset_ns = p.pr_set_at.map(|t| now - t);
                }
                if !old.contains(PortSc::CCS) {
                    val -= PortSc::PE;
                }
                if val.contains(PortSc::PE) && !old.contains(PortSc::PE) {
                    p.enabled_at = Some(now);
                }
                let ro = PortSc::CCS
                    | PortSc::CSC
                    | PortSc::PEC
                    | PortSc::LINE_DP
                    | PortSc::LINE_DM
                    | PortSc::RESERVED1
                    | PortSc::LSDA;
                let mut n = (old & ro) | (val & PortSc::RW);
                n -= val & PortSc::W1C;
                p.sc = n.bits();
            }
            _ => {}
        }
    }

    fn run_due(&mut self, now: u64, mem: &FakeMemory, irq: &FakeIrq) {
        let mut n = 0;
        while now >= self.last_frame_ns + FRAME_NS && n < 100_000 {
            self.last_frame_ns += FRAME_NS;
            n += 1;
            if self.cmd & Cmd::RS.bits() != 0 && !self.frozen {
                self.run_frame(mem, irq);
            }
        }
    }

    fn device(&self, addr: u8) -> Option<Dev> {
        self.ports.iter().find_map(|p| {
            let sc = PortSc::from_bits_retain(p.sc);
            let d = p.dev.as_ref()?;
            (sc.contains(PortSc::PE) && !sc.contains(PortSc::PR) && d.borrow().addr == addr)
                .then(|| d.clone())
        })
    }

    fn run_frame(&mut self, mem: &FakeMemory, irq: &FakeIrq) {
        self.frnum = (self.frnum + 1) & regs::FRNUM_MASK;
        self.frames += 1;
        let mut budget = self.bandwidth as i64;
        let mut link = Link(
            mem.read32(self.flbase as u64 + 4 * (self.frnum as u64 & 0x3ff))
                .unwrap_or(1),
        );
        let (mut ioc, mut short, mut err) = (false, false, false);
        let mut steps = 0;
        'walk: while !link.is_terminate() && steps < 1000 {
            steps += 1;
            if budget <= 0 {
                self.full_frames += 1;
                break;
            }
            if !link.is_qh() {
                // The driver never puts TDs directly into the frame list.
                panic!("sim: TD in horizontal list at {:#x}", link.addr());
            }
            let qh = link.addr() as u64;
            let (Some(head), Some(el)) = (mem.read32(qh), mem.read32(qh + 4)) else {
                self.sts |= (Sts::HSE | Sts::HCHALTED).bits();
                self.cmd &= !Cmd::RS.bits();
                break;
            };
            let mut e = Link(el);
            loop {
                if e.is_terminate() || e.is_qh() || budget <= 0 {
                    break;
                }
                let mut b = [0u8; 16];
                if !mem.read(e.addr() as u64, &mut b) {
                    self.sts |= (Sts::HSE | Sts::HCHALTED).bits();
                    self.cmd &= !Cmd::RS.bits();
                    break 'walk;
                }
                let td = Td::from_bytes(&b);
                if !td.ctrl.active() {
                    break;
                }
                let (ctrl, moved, outcome) = self.exec(&td, mem);
                mem.write(e.addr() as u64 + 4, &ctrl.to_le_bytes());
                let c = TdCtrl(ctrl);
                match outcome {
                    Outcome::Nak => break,
                    Outcome::Error => {
                        err = true;
                        ioc |= c.0 & TdCtrl::IOC != 0;
                        break;
                    }
                    Outcome::Retry => break,
                    Outcome::Done => {
                        budget -= moved.max(1) as i64;
                        ioc |= c.0 & TdCtrl::IOC != 0;
                        if td.token.pid() == PID_IN
                            && c.0 & TdCtrl::SPD != 0
                            && moved < td.token.max_len()
                        {
                            short = true;
                            break;
                        }
                        mem.write(qh + 4, &td.link.0.to_le_bytes());
                        e = td.link;
                        if !td.link.depth_first() {
                            break;
                        }
                    }
                }
            }
            link = Link(head);
        }
        if ioc || short {
            self.sts |= Sts::USBINT.bits();
        }
        if err {
            self.sts |= Sts::USBERRINT.bits();
        }
        let intr = Intr::from_bits_retain(self.intr);
        if (ioc && intr.contains(Intr::IOC))
            || (short && intr.contains(Intr::SHORT_PACKET))
            || (err && intr.contains(Intr::TIMEOUT_CRC))
            || self.sts & (Sts::HSE | Sts::HCPE).bits() != 0
        {
            irq.raise();
        }
    }

    /// Execute one TD; returns the new control/status dword, bytes moved and the outcome.
    fn exec(&mut self, td: &Td, mem: &FakeMemory) -> (u32, u16, Outcome) {
        let tok = td.token;
        let max_len = tok.max_len();
        let mut ctrl = td.ctrl.0 & !(0x7ff | TdCtrl::NAK);
        let done =
            |ctrl: u32, len: u16| (ctrl & !TdCtrl::ACTIVE) | crate::schedule::encode_len(len);
        let mut out = vec![0u8; max_len as usize];
        if tok.pid() != PID_IN && max_len > 0 && !mem.read(td.buffer as u64, &mut out) {
            return (
                done(ctrl | TdCtrl::STALLED | TdCtrl::DBE, 0),
                0,
                Outcome::Error,
            );
        }
        self.log.push(Xact {
            addr: tok.addr(),
            ep: tok.endpoint(),
            pid: tok.pid(),
            toggle: tok.toggle(),
            len: max_len,
            frame: self.frnum,
            low_speed: td.ctrl.0 & TdCtrl::LS != 0,
        });
        let resp = match self.device(tok.addr()) {
            Some(d) => {
                d.borrow_mut()
                    .transact(tok.pid(), tok.endpoint(), tok.toggle(), &out, max_len)
            }
            None => Resp::Timeout,
        };
        match resp {
            Resp::Ack(data) => {
                // A successful retry leaves no error bits behind.
                let ctrl = ctrl & !TdCtrl::ERROR_BITS;
                if tok.pid() == PID_IN {
                    if data.len() > max_len as usize {
                        return (
                            done(ctrl | TdCtrl::STALLED | TdCtrl::BABBLE, max_len),
                            max_len,
                            Outcome::Error,
                        );
                    }
                    if !data.is_empty() && !mem.write(td.buffer as u64, &data) {
                        return (
                            done(ctrl | TdCtrl::STALLED | TdCtrl::DBE, 0),
                            0,
                            Outcome::Error,
                        );
                    }
                    (
                        done(ctrl, data.len() as u16),
                        data.len() as u16,
                        Outcome::Done,
                    )
                } else {
                    (done(ctrl, max_len), max_len, Outcome::Done)
                }
            }
            Resp::Nak => (ctrl | TdCtrl::NAK, 0, Outcome::Nak),
            Resp::Stall => (done(ctrl | TdCtrl::STALLED, 0), 0, Outcome::Error),
            Resp::Babble => (
                done(ctrl | TdCtrl::STALLED | TdCtrl::BABBLE, max_len),
                0,
                Outcome::Error,
            ),
            Resp::DataBuffer => (
                done(ctrl | TdCtrl::STALLED | TdCtrl::DBE, 0),
                0,
                Outcome::Error,
            ),
            Resp::Timeout => {
                // C_ERR counts down; at zero the TD is retired stalled (§3.2.2).
                let cerr = (ctrl & TdCtrl::CERR_MASK) >> TdCtrl::CERR_SHIFT;
                ctrl |= TdCtrl::CRC_TIMEOUT;
                if cerr == 1 {
                    let c = (ctrl & !TdCtrl::CERR_MASK) | TdCtrl::STALLED;
                    (done(c, 0), 0, Outcome::Error)
                } else {
                    let c = (ctrl & !TdCtrl::CERR_MASK)
                        | (cerr.saturating_sub(1) << TdCtrl::CERR_SHIFT);
                    (c, 0, Outcome::Retry)
                }
            }
        }
    }
}

enum Outcome {
    Done,
    Nak,
    Retry,
    Error,
}
