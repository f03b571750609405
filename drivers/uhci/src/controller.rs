//! The UHCI controller: initialisation (UHCI 1.1 §2.1.1 reset sequence), the frame list and its
//! skeleton of queue heads (§3.1, §3.3), endpoint queues, transfer completion (§4: IOC and
//! short-packet interrupts, with polling as fallback), cancellation (§3.4: unlink, then wait for the
//! frame counter to move before the memory is reused) and the two root ports (§2.1.7 with the
//! USB 2.0 §7.1.7.5 reset timing).
//!
//! # Schedule
//! Every frame-list entry points at one of eight interrupt skeleton QHs, `int(2^k)` for
//! k = 7…0, chosen by the number of trailing zero bits of the frame index, so `int(2^k)` is visited
//! exactly once every 2^k frames.  The skeletons are chained `int128 → int64 → … → int1 → control →
//! bulk → terminate`; an endpoint QH is inserted behind the skeleton of its list and before the next
//! skeleton.  Each endpoint has one QH; its element pointer carries the TD chain of the one transfer
//! the controller works on (TDs are linked depth first, §3.2.1 Vf, so a whole transfer may move
//! in one frame); later transfers wait in software and are linked when the previous one finished,
//! with the data toggle it left.
//!
//! # Errors
//! A TD that fails stays inactive with its status bits set and the controller leaves the QH
//! pointing at it (§3.2.2).  The transfer completes with the mapped error, the endpoint is halted
//! (the rule of [`usb_core::hc`]) and the transfers queued behind it complete with
//! `EndpointHalted`; a short packet refused with `SHORT_NOT_OK` is the exception: it does not halt,
//! the next transfer starts with the toggle after the short packet.  Babble disables the device's root port: a babbling device is cut off.  A host
//! system or process error (§2.1.2 HSE/HCPE) stops the controller; every transfer completes with
//! `ControllerDead`.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use hal::{Clock, DmaAlloc, DmaBuf, DmaSegment, HalError, Interrupt, Platform, RegisterIo};
use log::{debug, info, warn};
use usb_core::hc::{
    Completion, DeviceId, DeviceInfo, Direction, EndpointAddress, EndpointInfo, HcError, HcEvent,
    HostController, HubInfo, PortChanges, PortStatus, Speed, TransferFlags, TransferId,
    TransferRequest, TransferType,
};

use crate::regs::{self, Cmd, Intr, PortSc, Sts};
use crate::schedule::{Link, Pool, Slot, Td, TdCtrl, TdToken, QH_ELEMENT, QH_HEAD, TD_CTRL};
use crate::transfer::{self, td_result, Plan, TdResult};

/// Number of interrupt skeleton lists (periods 1, 2, 4 … 128 frames).
const INT_LISTS: usize = 8;
/// List index of the control QHs (after the interrupt lists in traversal order).
const LIST_CONTROL: usize = INT_LISTS;
/// List index of the bulk QHs.
const LIST_BULK: usize = INT_LISTS + 1;
const LISTS: usize = INT_LISTS + 2;

/// Root-port reset: USB 2.0 §7.1.7.5 TDRSTR, at least 50 ms for a root port.
pub const PORT_RESET_NS: u64 = 50_000_000;
/// Reset recovery before the device must answer, USB 2.0 §7.1.7.5 TRSTRCY (10 ms).
pub const PORT_RECOVERY_NS: u64 = 10_000_000;
/// SET_ADDRESS recovery interval, USB 2.0 §9.2.6.3.
const SET_ADDRESS_RECOVERY_US: u64 = 2_000;
/// Limit for control-plane operations that wait for the device (SET_ADDRESS).
const CONTROL_TIMEOUT_NS: u64 = 1_000_000_000;
/// Frames to wait after unlinking before descriptor memory is reused.  Two frame-counter steps
/// guarantee the frame in progress at unlink time has ended (§3.4); QEMU also keeps a cancelled
/// queue's in-flight packets for up to 32 frames keyed by TD address, so TDs of cancelled transfers
/// are kept longer than that before their slots are reused.
const RETIRE_FRAMES: u64 = 2;
const RETIRE_CANCELLED_FRAMES: u64 = 40;
/// Least interval between two reads of USBSTS/FRNUM by [`Uhci::service`].
const STATUS_PERIOD_NS: u64 = 200_000;
/// Least interval between two looks at the root ports (connect changes are slow events).
const PORT_PERIOD_NS: u64 = 2_000_000;
/// Largest number of TDs one transfer may use.
const MAX_TDS_PER_TRANSFER: usize = 4096;
/// Pool limit: 128 pages of 4 KiB = 16384 descriptor slots.
const POOL_PAGES: usize = 128;

/// Counters for diagnostics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Interrupts whose USBSTS showed work of this controller.
    pub irq_ours: u64,
    /// Interrupts on a shared line that were not this controller's.
    pub irq_not_ours: u64,
    pub transfers_completed: u64,
    pub tds_completed: u64,
    pub bytes: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetPhase {
    Idle,
    /// PR is set until this time.
    Asserted {
        until: u64,
    },
    /// Port enabled; the device gets its recovery time until then.
    Recovery {
        until: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Port {
    reset: ResetPhase,
    /// Software change bit: a reset finished.
    reset_changed: bool,
    /// Changes already announced with a `PortChange` event.
    reported: PortChanges,
    /// Last seen connect state (to fail transfers of vanished devices).
    connected: bool,
}

struct Endpoint {
    kind: TransferType,
    /// Data direction (ignored for control endpoints).
    dir: Direction,
    max_packet: u16,
    list: usize,
    qh: Slot,
    toggle: bool,
    halted: bool,
    /// Transfers of this endpoint in order; the front one is on the hardware when `active`.
    queue: VecDeque<u32>,
    active: bool,
}

struct Device {
    info: DeviceInfo,
    address: u8,
    /// Endpoints by key: 0 for endpoint 0, else the bEndpointAddress byte.
    endpoints: BTreeMap<u8, Endpoint>,
    /// The device disconnected; new transfers are refused.
    gone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XferState {
    Waiting,
    Active,
    /// Unlinked by `cancel`; reported after the frame counter reached `until`.
    Cancelling {
        until: u64,
    },
}

struct Transfer {
    device: DeviceId,
    endpoint: EndpointAddress,
    key: u8,
    setup: Option<[u8; 8]>,
    segs: Vec<DmaSegment>,
    flags: TransferFlags,
    state: XferState,
    tds: Vec<Slot>,
    plan: Option<Plan>,
    /// First TD not yet seen complete.
    next: usize,
    actual: u32,
    /// Internal transfers (SET_ADDRESS) are not reported by `poll`.
    internal: bool,
    /// Result set when the transfer finished, kept for internal waiters.
    done: Option<Result<(), HcError>>,
}

/// A UHCI host controller.
pub struct Uhci<P: Platform> {
    regs: P::Regs,
    dma: P::Dma,
    clock: P::Clock,
    irq: P::Irq,
    pool: Pool<P::Dma>,
    frame_list: <P::Dma as DmaAlloc>::Buf,
    /// Skeleton QH of each list, in traversal order.
    skel: [Slot; LISTS],
    /// Endpoint QHs of each list, in link order.
    lists: [Vec<Slot>; LISTS],
    ports: [Port; regs::NUM_PORTS],
    devices: BTreeMap<u8, Device>,
    transfers: BTreeMap<u32, Transfer>,
    next_id: u32,
    events: VecDeque<HcEvent>,
    /// Descriptor slots waiting for the frame counter before reuse.
    retired: Vec<(u64, Slot)>,
    frame: u64,
    last_frnum: u16,
    dead: bool,
    /// HCHALTED as last read.
    halted: bool,
    /// An interrupt arrived and USBSTS has not been looked at since.
    irq_pending: bool,
    next_status_ns: u64,
    next_port_ns: u64,
    stats: Stats,
}

fn port_index(port: u8) -> Result<usize, HcError> {
    if port >= 1 && port as usize <= regs::NUM_PORTS {
        Ok(port as usize - 1)
    } else {
        Err(HcError::Invalid("no such root port"))
    }
}

fn ep_key(ep: EndpointAddress) -> u8 {
    if ep.is_ep0() {
        0
    } else {
        ep.0
    }
}

impl<P: Platform> Uhci<P> {
    /// Reset the controller and start it with an empty schedule (§2.1.1: global reset held
    /// 10 ms, then a host-controller reset; the frame list is programmed before Run).
    pub fn new(regs: P::Regs, dma: P::Dma, clock: P::Clock, irq: P::Irq) -> Result<Self, HcError> {
        if regs.size() < regs::IO_SIZE {
            return Err(HcError::Invalid("UHCI I/O window smaller than 32 bytes"));
        }
        // Stop, then reset the bus and the controller.
        regs.write16(regs::USBINTR, 0);
        regs.write16(regs::USBCMD, 0);
        regs.write16(regs::USBCMD, Cmd::GRESET.bits());
        clock.delay_us(10_000);
        regs.write16(regs::USBCMD, 0);
        clock.delay_us(10_000);
        regs.write16(regs::USBCMD, Cmd::HCRESET.bits());
        let start = clock.now_ns();
        while Cmd::from_bits_retain(regs.read16(regs::USBCMD)).contains(Cmd::HCRESET) {
            if clock.now_ns() - start > 10_000_000 {
                return Err(HcError::Timeout);
            }
            clock.delay_us(10);
        }

        let frame_list = dma.alloc(4096, 4096)?;
        if frame_list.bus_addr() > u32::MAX as u64 - 4096 {
            return Err(HalError::Unsupported("UHCI frame list above 4 GiB").into());
        }
        let mut pool = Pool::new(POOL_PAGES);
        let mut skel = [Slot(0); LISTS];
        for s in skel.iter_mut() {
            *s = pool.alloc(&dma)?;
        }
        // Chain the skeletons in traversal order: int128 … int1, control, bulk.
        for i in 0..LISTS {
            let next = if i + 1 < LISTS {
                Link::qh(pool.addr(skel[i + 1]))
            } else {
                Link::TERMINATE
            };
            pool.write32(skel[i], QH_ELEMENT, Link::TERMINATE.0);
            pool.write32(skel[i], QH_HEAD, next.0);
        }
        for f in 0..1024usize {
            // Trailing zeros of the frame index, capped at 7: int(2^k) is at traversal index 7-k.
            let k = if f == 0 {
                7
            } else {
                (f.trailing_zeros() as usize).min(7)
            };
            frame_list.write32(4 * f, Link::qh(pool.addr(skel[7 - k])).0);
        }

        regs.write32(regs::FRBASEADD, frame_list.bus_addr() as u32);
        regs.write16(regs::FRNUM, 0);
        regs.write8(regs::SOFMOD, 64);
        regs.write16(regs::USBSTS, Sts::ACK_MASK.bits());
        regs.write16(
            regs::USBINTR,
            (Intr::TIMEOUT_CRC | Intr::IOC | Intr::SHORT_PACKET).bits(),
        );
        regs.write16(regs::USBCMD, (Cmd::RS | Cmd::CF | Cmd::MAXP).bits());
        clock.delay_us(1_000);
        if Sts::from_bits_retain(regs.read16(regs::USBSTS)).contains(Sts::HCHALTED) {
            return Err(HcError::ControllerDead);
        }
        info!("uhci: running, frame list at {:#x}", frame_list.bus_addr());
        let port = Port {
            reset: ResetPhase::Idle,
            reset_changed: false,
            reported: PortChanges::empty(),
            connected: false,
        };
        Ok(Uhci {
            regs,
            dma,
            clock,
            irq,
            pool,
            frame_list,
            skel,
            lists: Default::default(),
            ports: [port; regs::NUM_PORTS],
            devices: BTreeMap::new(),
            transfers: BTreeMap::new(),
            next_id: 1,
            events: VecDeque::new(),
            retired: Vec::new(),
            frame: 0,
            last_frnum: 0,
            dead: false,
            halted: false,
            irq_pending: false,
            next_status_ns: 0,
            next_port_ns: 0,
            stats: Stats::default(),
        })
    }

    /// Frames the controller has run since it started (FRNUM extended to 64 bits; §2.1.4).  One
    /// frame is 1 ms of the controller's time, so bytes per frame measure throughput against the
    /// bus (or an emulator's per-frame cap) independently of the CPU clock.
    pub fn frames(&mut self) -> u64 {
        self.frame_now()
    }

    /// Whether the controller stopped (host system / process error).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Descriptor slots in use (skeleton QHs included), for leak checks.
    pub fn descriptors_in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// Bus address of the frame list (diagnostics and tests).
    pub fn frame_list_addr(&self) -> u64 {
        self.frame_list.bus_addr()
    }

    /// The frame counter, extended to 64 bits from FRNUM (§2.1.4); it never goes back.
    fn frame_now(&mut self) -> u64 {
        let f = self.regs.read16(regs::FRNUM) & regs::FRNUM_MASK;
        let delta = f.wrapping_sub(self.last_frnum) & regs::FRNUM_MASK;
        self.last_frnum = f;
        self.frame += delta as u64;
        self.frame
    }

    fn read_halted(&self) -> bool {
        Sts::from_bits_retain(self.regs.read16(regs::USBSTS)).contains(Sts::HCHALTED)
    }

    // ----- schedule lists ------------------------------------------------------------------

    fn list_link(&mut self, list: usize, qh: Slot) {
        let prev = *self.lists[list].last().unwrap_or(&self.skel[list]);
        let next = self.pool.read32(prev, QH_HEAD);
        self.pool.write32(qh, QH_HEAD, next);
        self.pool
            .write32(prev, QH_HEAD, Link::qh(self.pool.addr(qh)).0);
        self.lists[list].push(qh);
    }

    /// Unlink a QH from its list; its slot is retired (reused after the frame counter moved).
    fn list_unlink(&mut self, list: usize, qh: Slot, cancelled: bool) {
        let Some(pos) = self.lists[list].iter().position(|&q| q == qh) else {
            return;
        };
        let prev = if pos == 0 {
            self.skel[list]
        } else {
            self.lists[list][pos - 1]
        };
        let next = self.pool.read32(qh, QH_HEAD);
        self.pool.write32(prev, QH_HEAD, next);
        self.lists[list].remove(pos);
        self.retire(qh, cancelled);
    }

    fn retire(&mut self, slot: Slot, cancelled: bool) {
        let wait = if cancelled {
            RETIRE_CANCELLED_FRAMES
        } else {
            RETIRE_FRAMES
        };
        let due = self.frame + wait;
        self.retired.push((due, slot));
    }

    fn reap_retired(&mut self) {
        let now = self.frame;
        let dead = self.dead || self.halted;
        let mut i = 0;
        while i < self.retired.len() {
            if dead || self.retired[i].0 <= now {
                let (_, s) = self.retired.swap_remove(i);
                self.pool.free(s);
            } else {
                i += 1;
            }
        }
    }

    // ----- transfers -----------------------------------------------------------------------

    fn new_endpoint(&mut self, info: &EndpointInfo) -> Result<Endpoint, HcError> {
        let list = match info.kind {
            TransferType::Control => LIST_CONTROL,
            TransferType::Bulk => LIST_BULK,
            TransferType::Interrupt => {
                // bInterval in frames for full/low speed (USB 2.0 §9.6.6); largest power of two
                // not above it, capped at 128.
                let iv = info.interval.max(1) as u32;
                let k = (31 - iv.leading_zeros()).min(7) as usize;
                7 - k
            }
            TransferType::Isochronous => {
                return Err(HcError::NotSupported("UHCI isochronous endpoints"))
            }
        };
        if info.max_packet == 0 || info.max_packet > 1023 {
            return Err(HcError::Invalid("endpoint maximum packet size"));
        }
        let qh = self.pool.alloc(&self.dma)?;
        self.pool.write32(qh, QH_ELEMENT, Link::TERMINATE.0);
        self.list_link(list, qh);
        Ok(Endpoint {
            kind: info.kind,
            dir: info.address.direction(),
            max_packet: info.max_packet,
            list,
            qh,
            toggle: false,
            halted: false,
            queue: VecDeque::new(),
            active: false,
        })
    }

    /// Build the TDs of the transfer at the front of an endpoint queue and hang them on its QH.
    fn start_next(&mut self, dev: u8, key: u8) {
        loop {
            let Some(d) = self.devices.get(&dev) else {
                return;
            };
            let Some(ep) = d.endpoints.get(&key) else {
                return;
            };
            if ep.active {
                return;
            }
            let Some(&id) = ep.queue.front() else {
                return;
            };
            let low_speed = d.info.speed == Speed::Low;
            let address = d.address;
            let (kind, dir, mps, toggle, qh) = (ep.kind, ep.dir, ep.max_packet, ep.toggle, ep.qh);
            match self.build(id, address, low_speed, kind, dir, mps, toggle) {
                Ok(first) => {
                    let ep = self.ep_mut(dev, key).expect("looked up above");
                    ep.active = true;
                    self.pool.write32(qh, QH_ELEMENT, first.0);
                    return;
                }
                Err(e) => {
                    // Could not build (out of descriptors): fail this one and try the next.
                    warn!("uhci: transfer {id} not started: {e}");
                    self.ep_mut(dev, key)
                        .expect("looked up above")
                        .queue
                        .pop_front();
                    self.finish(id, Err(e));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        id: u32,
        address: u8,
        low_speed: bool,
        kind: TransferType,
        dir: Direction,
        mps: u16,
        toggle: bool,
    ) -> Result<Link, HcError> {
        let t = self.transfers.get(&id).expect("queued transfer exists");
        let flags = t.flags;
        let number = t.endpoint.number();
        let setup = t.setup;
        let segs = core::mem::take(&mut self.transfers.get_mut(&id).expect("exists").segs);
        let mut slots: Vec<Slot> = Vec::new();
        let result = (|| {
            // The SETUP packet lives in the software half of the SETUP TD's slot.
            let first = self.pool.alloc(&self.dma)?;
            slots.push(first);
            let plan = match (kind, setup) {
                (TransferType::Control, Some(s)) => {
                    self.pool.write_scratch(first, &s);
                    transfer::plan_control(self.pool.addr(first) + 16, &s, &segs, mps)?
                }
                _ => transfer::plan_data(
                    dir == Direction::In,
                    &segs,
                    mps,
                    toggle,
                    flags.contains(TransferFlags::ZERO_PACKET),
                )?,
            };
            if plan.packets.len() > MAX_TDS_PER_TRANSFER {
                return Err(HcError::NoResources);
            }
            while slots.len() < plan.packets.len() {
                slots.push(self.pool.alloc(&self.dma)?);
            }
            // Write from the last TD backwards so every link points at a finished TD.
            for i in (0..plan.packets.len()).rev() {
                let p = plan.packets[i];
                let last = i + 1 == plan.packets.len();
                let link = if last {
                    Link::TERMINATE
                } else {
                    Link::td(self.pool.addr(slots[i + 1]), true)
                };
                let spd = p.pid == crate::schedule::PID_IN && p.data && !last;
                let td = Td {
                    link,
                    ctrl: TdCtrl::new(low_speed, last, spd),
                    token: TdToken::new(p.pid, address, number, p.toggle, p.len),
                    buffer: p.buf,
                };
                self.pool.write_td(slots[i], &td);
            }
            Ok(plan)
        })();
        let t = self.transfers.get_mut(&id).expect("exists");
        t.segs = segs;
        match result {
            Ok(plan) => {
                let first = Link::td(self.pool.addr(slots[0]), true);
                t.plan = Some(plan);
                t.tds = slots;
                t.next = 0;
                t.state = XferState::Active;
                Ok(first)
            }
            Err(e) => {
                for s in slots {
                    self.pool.free(s);
                }
                Err(e)
            }
        }
    }

    fn ep_mut(&mut self, dev: u8, key: u8) -> Option<&mut Endpoint> {
        self.devices.get_mut(&dev)?.endpoints.get_mut(&key)
    }

    /// Record the end of a transfer and queue its completion (unless internal).
    fn finish(&mut self, id: u32, result: Result<(), HcError>) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let cancelled = matches!(t.state, XferState::Cancelling { .. });
        let tds = core::mem::take(&mut t.tds);
        t.done = Some(result);
        let completion = Completion {
            id: TransferId(id),
            device: t.device,
            endpoint: t.endpoint,
            actual: t.actual,
            result,
        };
        let internal = t.internal;
        for s in tds {
            self.retire(s, cancelled);
        }
        self.stats.transfers_completed += 1;
        self.stats.bytes += completion.actual as u64;
        if result.is_err() {
            self.stats.errors += 1;
        }
        if !internal {
            self.transfers.remove(&id);
            self.events.push_back(HcEvent::Transfer(completion));
        }
    }

    /// Fail every transfer queued on an endpoint behind the front one with `err`.
    fn flush_queue(&mut self, dev: u8, key: u8, err: HcError) {
        let waiting: Vec<u32> = match self.ep_mut(dev, key) {
            Some(ep) => ep.queue.drain(..).collect(),
            None => return,
        };
        for id in waiting {
            self.finish(id, Err(err));
        }
    }

    /// Look at the active transfer of one endpoint.
    fn scan_endpoint(&mut self, dev: u8, key: u8) {
        let Some(ep) = self.devices.get(&dev).and_then(|d| d.endpoints.get(&key)) else {
            return;
        };
        if !ep.active {
            return;
        }
        let id = *ep.queue.front().expect("active endpoint has a transfer");
        let qh = ep.qh;
        let is_control = ep.kind == TransferType::Control;
        let t = self.transfers.get_mut(&id).expect("queued transfer exists");
        if t.state != XferState::Active {
            return;
        }
        let plan = t.plan.as_ref().expect("active transfer has a plan");
        let mut outcome: Option<Result<(), HcError>> = None;
        let mut toggle_after: Option<bool> = None;
        while t.next < t.tds.len() {
            let i = t.next;
            let ctrl = TdCtrl(self.pool.read32(t.tds[i], TD_CTRL));
            let p = plan.packets[i];
            match td_result(ctrl) {
                TdResult::Active => break,
                TdResult::Err { err, len } => {
                    if p.data {
                        t.actual += len as u32;
                    }
                    toggle_after = Some(p.toggle);
                    outcome = Some(Err(err));
                    break;
                }
                TdResult::Ok { len } => {
                    self.stats.tds_completed += 1;
                    if p.data {
                        t.actual += len as u32;
                    }
                    toggle_after = Some(!p.toggle);
                    t.next += 1;
                    let short = p.data && len < p.len;
                    if short && t.flags.contains(TransferFlags::SHORT_NOT_OK) {
                        outcome = Some(Err(HcError::ShortPacket));
                        break;
                    }
                    if t.next == t.tds.len() {
                        outcome = Some(Ok(()));
                        break;
                    }
                    if short {
                        if let (true, Some(st)) = (is_control, plan.status) {
                            // Continue with the status stage (the controller stopped at the
                            // short TD, SPD).
                            t.next = st;
                            let link = Link::td(self.pool.addr(t.tds[st]), true);
                            self.pool.write32(qh, QH_ELEMENT, link.0);
                            continue;
                        }
                        outcome = Some(Ok(()));
                        break;
                    }
                }
            }
        }
        let Some(result) = outcome else {
            return;
        };
        // The transfer is over: take its TDs off the QH (the controller may still point at a
        // short or failed TD) and go on with the next one.
        self.pool.write32(qh, QH_ELEMENT, Link::TERMINATE.0);
        let mut port_to_disable = None;
        {
            let d = self.devices.get_mut(&dev).expect("exists");
            // A device on a root port is cut off there; one behind a hub is the hub driver's
            // business (its downstream port), the root port serves the other devices too.
            let root = (d.info.route.depth == 0).then_some(d.info.route.root_port);
            let ep = d.endpoints.get_mut(&key).expect("exists");
            ep.active = false;
            ep.queue.pop_front();
            if !is_control {
                if let Some(tg) = toggle_after {
                    ep.toggle = tg;
                }
            }
            // A short packet refused by SHORT_NOT_OK does not halt the endpoint (the rule of
            // usb_core::hc); every other error does.
            if let Err(e) = result {
                if e != HcError::ShortPacket {
                    ep.halted = true;
                }
                if e == HcError::Babble {
                    port_to_disable = root;
                }
            }
        }
        let result = match result {
            Err(HcError::Transaction) if self.device_unreachable(dev) => Err(HcError::NoDevice),
            r => r,
        };
        if let Err(e) = result {
            debug!("uhci: transfer {id} on device {dev} ep {key:#x} failed: {e}");
        }
        self.finish(id, result);
        if matches!(result, Err(e) if e != HcError::ShortPacket) {
            self.flush_queue(dev, key, HcError::EndpointHalted);
        }
        if let Some(port) = port_to_disable {
            warn!("uhci: device {dev} babbled; disabling root port {port}");
            let _ = self.disable_port(port);
        }
        self.start_next(dev, key);
    }

    fn device_unreachable(&self, dev: u8) -> bool {
        let Some(d) = self.devices.get(&dev) else {
            return true;
        };
        if d.gone {
            return true;
        }
        match port_index(d.info.route.root_port) {
            Ok(i) => {
                let sc = PortSc::from_bits_retain(self.regs.read16(regs::portsc(i)));
                !sc.contains(PortSc::CCS | PortSc::PE)
            }
            Err(_) => true,
        }
    }

    /// Finish cancellations whose wait is over.
    fn scan_cancelling(&mut self) {
        let now = self.frame;
        let dead = self.dead;
        let due: Vec<u32> = self
            .transfers
            .iter()
            .filter(
                |(_, t)| matches!(t.state, XferState::Cancelling { until } if dead || until <= now),
            )
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let t = self.transfers.get(&id).expect("listed");
            let (dev, key) = (t.device.0, t.key);
            // Work out how far the hardware got: the toggle continues after the last ACKed
            // packet, the actual length counts what moved.
            let plan = t
                .plan
                .as_ref()
                .expect("cancelled active transfer has a plan");
            let mut actual = 0u32;
            let mut toggle = None;
            let mut complete = true;
            let mut error = None;
            for (i, s) in t.tds.iter().enumerate() {
                let p = plan.packets[i];
                match td_result(TdCtrl(self.pool.read32(*s, TD_CTRL))) {
                    TdResult::Ok { len } => {
                        if p.data {
                            actual += len as u32;
                        }
                        toggle = Some(!p.toggle);
                        if p.data && len < p.len {
                            break;
                        }
                    }
                    TdResult::Active => {
                        complete = false;
                        break;
                    }
                    TdResult::Err { err, .. } => {
                        error = Some(err);
                        break;
                    }
                }
            }
            let t = self.transfers.get_mut(&id).expect("listed");
            t.actual = actual;
            let result = match (complete, error) {
                (true, None) => Ok(()),
                (_, Some(e)) => Err(e),
                (false, None) => Err(HcError::Cancelled),
            };
            if let Some(ep) = self.ep_mut(dev, key) {
                ep.active = false;
                ep.queue.retain(|&q| q != id);
                if ep.kind != TransferType::Control {
                    if let Some(tg) = toggle {
                        ep.toggle = tg;
                    }
                }
                if matches!(result, Err(e) if e != HcError::Cancelled) {
                    ep.halted = true;
                }
            }
            self.finish(id, result);
            if matches!(result, Err(e) if e != HcError::Cancelled) {
                self.flush_queue(dev, key, HcError::EndpointHalted);
            }
            self.start_next(dev, key);
        }
    }

    /// Complete everything with `err` (controller death).
    fn fail_all(&mut self, err: HcError) {
        let ids: Vec<u32> = self.transfers.keys().copied().collect();
        for d in self.devices.values_mut() {
            for ep in d.endpoints.values_mut() {
                ep.queue.clear();
                ep.active = false;
            }
        }
        for id in ids {
            if self.transfers.get(&id).is_some_and(|t| t.done.is_none()) {
                self.finish(id, Err(err));
            }
        }
    }

    /// Fail the outstanding transfers of one device (disconnect, release) with `err`.
    fn fail_device(&mut self, dev: u8, err: HcError) {
        let keys: Vec<u8> = match self.devices.get(&dev) {
            Some(d) => d.endpoints.keys().copied().collect(),
            None => return,
        };
        for key in keys {
            let (qh, ids) = {
                let ep = self.ep_mut(dev, key).expect("listed");
                ep.active = false;
                (ep.qh, ep.queue.drain(..).collect::<Vec<u32>>())
            };
            self.pool.write32(qh, QH_ELEMENT, Link::TERMINATE.0);
            for id in ids {
                if let Some(t) = self.transfers.get_mut(&id) {
                    if t.state == XferState::Active {
                        t.state = XferState::Cancelling { until: 0 };
                    }
                }
                self.finish(id, Err(err));
            }
        }
    }

    // ----- ports ---------------------------------------------------------------------------

    fn portsc(&self, i: usize) -> PortSc {
        PortSc::from_bits_retain(self.regs.read16(regs::portsc(i)))
    }

    fn write_portsc(&self, i: usize, v: PortSc) {
        self.regs.write16(regs::portsc(i), v.bits());
    }

    /// Advance the reset state machine of a port.
    fn step_reset(&mut self, i: usize) {
        let now = self.clock.now_ns();
        match self.ports[i].reset {
            ResetPhase::Idle => {}
            ResetPhase::Asserted { until } if now >= until => {
                // End reset signalling, then enable the port (§2.1.7: software enables the port
                // after reset; it does not enable itself).
                let base = self.portsc(i).rmw_base();
                self.write_portsc(i, base - PortSc::PR);
                self.clock.delay_us(10);
                for _ in 0..10 {
                    let base = self.portsc(i).rmw_base();
                    self.write_portsc(i, base | PortSc::PE);
                    self.clock.delay_us(10);
                    if self.portsc(i).contains(PortSc::PE) || !self.portsc(i).contains(PortSc::CCS)
                    {
                        break;
                    }
                }
                // The reset itself raises change bits that are no news to the caller.
                let sc = self.portsc(i);
                if sc.contains(PortSc::CCS) {
                    self.write_portsc(i, sc.rmw_base() | PortSc::W1C);
                }
                self.ports[i].reset = ResetPhase::Recovery {
                    until: now + PORT_RECOVERY_NS,
                };
            }
            ResetPhase::Recovery { until } if now >= until => {
                self.ports[i].reset = ResetPhase::Idle;
                self.ports[i].reset_changed = true;
            }
            _ => {}
        }
    }

    fn changes(&self, i: usize) -> PortChanges {
        let sc = self.portsc(i);
        let mut c = PortChanges::empty();
        if sc.contains(PortSc::CSC) {
            c |= PortChanges::CONNECT;
        }
        if sc.contains(PortSc::PEC) {
            c |= PortChanges::ENABLE;
        }
        if self.ports[i].reset_changed {
            c |= PortChanges::RESET;
        }
        c
    }

    fn service_ports(&mut self) {
        for i in 0..regs::NUM_PORTS {
            self.step_reset(i);
            let sc = self.portsc(i);
            let connected = sc.contains(PortSc::CCS);
            if self.ports[i].connected && !connected {
                info!("uhci: root port {} disconnected", i + 1);
                let port = (i + 1) as u8;
                let devs: Vec<u8> = self
                    .devices
                    .iter()
                    .filter(|(_, d)| d.info.route.root_port == port)
                    .map(|(&k, _)| k)
                    .collect();
                for d in devs {
                    self.devices.get_mut(&d).expect("listed").gone = true;
                    self.fail_device(d, HcError::NoDevice);
                }
            }
            self.ports[i].connected = connected;
            let c = self.changes(i);
            let new = c - self.ports[i].reported;
            self.ports[i].reported &= c;
            if !new.is_empty() {
                self.ports[i].reported |= new;
                self.events.push_back(HcEvent::PortChange((i + 1) as u8));
            }
        }
    }

    // ----- service -------------------------------------------------------------------------

    /// Do all pending work: acknowledge the interrupt (if it is ours: shared INTx), scan the
    /// active transfers (this is also the polling fallback), finish cancellations, reuse
    /// retired memory, look at the ports.
    pub fn service(&mut self) {
        let now = self.clock.now_ns();
        if self.irq.take() {
            self.irq_pending = true;
        }
        // Register reads are the expensive part (an I/O exit each, under QEMU one trip through its
        // big lock that the frame timer also needs), and under PVH the "interrupt" is polled and
        // always says "look": so USBSTS/FRNUM are read at most every STATUS_PERIOD_NS and the
        // ports every PORT_PERIOD_NS.  Completions are found in memory, without register reads.
        if now >= self.next_status_ns
            || self.irq_pending && now + STATUS_PERIOD_NS / 2 >= self.next_status_ns
        {
            self.next_status_ns = now + STATUS_PERIOD_NS;
            self.check_status();
        }
        if !self.dead {
            let active: Vec<(u8, u8)> = self
                .devices
                .iter()
                .flat_map(|(&d, dev)| {
                    dev.endpoints
                        .iter()
                        .filter(|(_, e)| e.active)
                        .map(move |(&k, _)| (d, k))
                })
                .collect();
            for (d, k) in active {
                self.scan_endpoint(d, k);
            }
        }
        self.scan_cancelling();
        self.reap_retired();
        let resetting = self.ports.iter().any(|p| p.reset != ResetPhase::Idle);
        if now >= self.next_port_ns || resetting {
            self.next_port_ns = now + PORT_PERIOD_NS;
            self.service_ports();
        }
    }

    /// Read and acknowledge USBSTS (shared INTx: an interrupt is ours only if a status bit is
    /// set), update the frame counter, notice a dead controller.
    fn check_status(&mut self) {
        let sts = Sts::from_bits_retain(self.regs.read16(regs::USBSTS));
        let ack = sts & Sts::ACK_MASK;
        if !ack.is_empty() {
            self.regs.write16(regs::USBSTS, ack.bits());
        }
        if self.irq_pending {
            self.irq_pending = false;
            if ack.is_empty() {
                self.stats.irq_not_ours += 1;
            } else {
                self.stats.irq_ours += 1;
            }
            self.irq.unmask();
        }
        self.halted = sts.contains(Sts::HCHALTED);
        if !self.dead && sts.intersects(Sts::HSE | Sts::HCPE) {
            warn!("uhci: controller stopped (status {:#x})", sts.bits());
            self.dead = true;
            self.fail_all(HcError::ControllerDead);
            self.events.push_back(HcEvent::ControllerDead);
        }
        self.frame_now();
    }

    fn submit_inner(
        &mut self,
        request: &TransferRequest<'_>,
        internal: bool,
    ) -> Result<u32, HcError> {
        if self.dead {
            return Err(HcError::ControllerDead);
        }
        if !request.endpoint.is_valid() {
            return Err(HcError::Invalid("endpoint address"));
        }
        let dev = request.device.0;
        let key = ep_key(request.endpoint);
        let d = self.devices.get(&dev).ok_or(HcError::NoDevice)?;
        if d.gone {
            return Err(HcError::NoDevice);
        }
        let ep = d
            .endpoints
            .get(&key)
            .ok_or(HcError::Invalid("endpoint not configured"))?;
        if ep.halted {
            return Err(HcError::EndpointHalted);
        }
        match (ep.kind, request.setup) {
            (TransferType::Control, None) => {
                return Err(HcError::Invalid("control transfer without SETUP"))
            }
            (TransferType::Control, Some(_)) => {}
            (_, Some(_)) => return Err(HcError::Invalid("SETUP on a non-control endpoint")),
            (_, None) => {}
        }
        if request.length() > (MAX_TDS_PER_TRANSFER as u64 - 2) * ep.max_packet as u64 {
            return Err(HcError::NoResources);
        }
        if request.buffer.len() > 4096 {
            return Err(HcError::Invalid("too many segments"));
        }
        // Validate the split now so that a bad buffer fails the submit, not the completion.
        transfer::split(request.buffer, ep.max_packet)?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.transfers.insert(
            id,
            Transfer {
                device: request.device,
                endpoint: request.endpoint,
                key,
                setup: request.setup,
                segs: request.buffer.to_vec(),
                flags: request.flags,
                state: XferState::Waiting,
                tds: Vec::new(),
                plan: None,
                next: 0,
                actual: 0,
                internal,
                done: None,
            },
        );
        self.ep_mut(dev, key).expect("checked").queue.push_back(id);
        self.start_next(dev, key);
        Ok(id)
    }

    /// Run an internal control transfer without data to completion (control-plane operations).
    fn control_sync(&mut self, device: DeviceId, setup: [u8; 8]) -> Result<(), HcError> {
        let id = self.submit_inner(
            &TransferRequest {
                device,
                endpoint: EndpointAddress::EP0,
                setup: Some(setup),
                buffer: &[],
                flags: TransferFlags::empty(),
            },
            true,
        )?;
        let start = self.clock.now_ns();
        loop {
            self.service();
            if let Some(r) = self.transfers.get(&id).and_then(|t| t.done) {
                self.transfers.remove(&id);
                return r;
            }
            if self.clock.now_ns() - start > CONTROL_TIMEOUT_NS {
                let _ = self.cancel(TransferId(id));
                // Wait for the unlink to take effect, bounded.
                let t0 = self.clock.now_ns();
                while self.transfers.get(&id).is_some_and(|t| t.done.is_none())
                    && self.clock.now_ns() - t0 < 100_000_000
                {
                    self.clock.delay_us(1_000);
                    self.service();
                }
                self.transfers.remove(&id);
                return Err(HcError::Timeout);
            }
            self.clock.delay_us(100);
        }
    }

    /// Busy-wait until the frame counter advanced by `n` (bounded: a halted controller runs no
    /// frames and needs no wait).
    fn wait_frames(&mut self, n: u64) {
        let target = self.frame_now() + n;
        let t0 = self.clock.now_ns();
        while self.frame_now() < target
            && !self.dead
            && !self.read_halted()
            && self.clock.now_ns() - t0 < (n + 5) * 1_000_000
        {
            self.clock.delay_us(250);
        }
    }

    fn free_address(&self) -> Option<u8> {
        (1..=127u8).find(|a| !self.devices.values().any(|d| d.address == *a))
    }

    fn remove_endpoint(&mut self, dev: u8, key: u8, err: HcError) {
        let Some(ep) = self.ep_mut(dev, key) else {
            return;
        };
        let was_active = ep.active;
        let qh = ep.qh;
        let list = ep.list;
        let ids: Vec<u32> = ep.queue.drain(..).collect();
        ep.active = false;
        self.pool.write32(qh, QH_ELEMENT, Link::TERMINATE.0);
        if was_active {
            // The controller may be working on the unlinked TDs in the current frame; the
            // caller may reuse the data buffers once the completion is reported (§3.4).
            self.wait_frames(RETIRE_FRAMES);
        }
        for (n, id) in ids.into_iter().enumerate() {
            if n == 0 && was_active {
                if let Some(t) = self.transfers.get_mut(&id) {
                    t.state = XferState::Cancelling { until: 0 };
                }
            }
            self.finish(id, Err(err));
        }
        self.list_unlink(list, qh, was_active);
        if let Some(d) = self.devices.get_mut(&dev) {
            d.endpoints.remove(&key);
        }
    }
}

impl<P: Platform> HostController for Uhci<P> {
    fn num_ports(&self) -> u8 {
        regs::NUM_PORTS as u8
    }

    fn port_status(&mut self, port: u8) -> Result<PortStatus, HcError> {
        let i = port_index(port)?;
        self.step_reset(i);
        let sc = self.portsc(i);
        let connected = sc.contains(PortSc::CCS);
        Ok(PortStatus {
            connected,
            enabled: sc.contains(PortSc::PE),
            resetting: self.ports[i].reset != ResetPhase::Idle,
            over_current: false,
            powered: true,
            speed: connected.then_some(if sc.contains(PortSc::LSDA) {
                Speed::Low
            } else {
                Speed::Full
            }),
            usb3: false,
            changes: self.changes(i),
        })
    }

    fn clear_port_changes(&mut self, port: u8, changes: PortChanges) -> Result<(), HcError> {
        let i = port_index(port)?;
        let mut w1c = PortSc::empty();
        if changes.contains(PortChanges::CONNECT) {
            w1c |= PortSc::CSC;
        }
        if changes.contains(PortChanges::ENABLE) {
            w1c |= PortSc::PEC;
        }
        if !w1c.is_empty() {
            let base = self.portsc(i).rmw_base();
            self.write_portsc(i, base | w1c);
        }
        if changes.contains(PortChanges::RESET) {
            self.ports[i].reset_changed = false;
        }
        self.ports[i].reported -= changes;
        Ok(())
    }

    fn reset_port(&mut self, port: u8) -> Result<(), HcError> {
        let i = port_index(port)?;
        if self.ports[i].reset != ResetPhase::Idle {
            return Ok(());
        }
        let base = self.portsc(i).rmw_base();
        self.write_portsc(i, (base - PortSc::PE) | PortSc::PR);
        self.ports[i].reset = ResetPhase::Asserted {
            until: self.clock.now_ns() + PORT_RESET_NS,
        };
        self.ports[i].reset_changed = false;
        Ok(())
    }

    fn disable_port(&mut self, port: u8) -> Result<(), HcError> {
        let i = port_index(port)?;
        let base = self.portsc(i).rmw_base();
        self.write_portsc(i, base - PortSc::PE - PortSc::PR);
        self.ports[i].reset = ResetPhase::Idle;
        Ok(())
    }

    fn create_device(&mut self, info: &DeviceInfo) -> Result<DeviceId, HcError> {
        if self.dead {
            return Err(HcError::ControllerDead);
        }
        if !matches!(info.speed, Speed::Low | Speed::Full) {
            return Err(HcError::NotSupported(
                "UHCI drives only low- and full-speed devices",
            ));
        }
        let i = port_index(info.route.root_port)?;
        if info.route.depth == 0 && !self.portsc(i).contains(PortSc::PE) {
            return Err(HcError::Invalid("root port not enabled"));
        }
        let id = (1..=255u8)
            .find(|k| !self.devices.contains_key(k))
            .ok_or(HcError::NoResources)?;
        let ep0 = self.new_endpoint(&EndpointInfo {
            address: EndpointAddress::EP0,
            kind: TransferType::Control,
            max_packet: info.speed.default_ep0_max_packet(),
            mult: 0,
            max_burst: 0,
            interval: 0,
            bytes_per_interval: 0,
        })?;
        let mut endpoints = BTreeMap::new();
        endpoints.insert(0, ep0);
        self.devices.insert(
            id,
            Device {
                info: *info,
                address: 0,
                endpoints,
                gone: false,
            },
        );
        Ok(DeviceId(id))
    }

    fn address_device(&mut self, device: DeviceId) -> Result<u8, HcError> {
        let d = self.devices.get(&device.0).ok_or(HcError::NoDevice)?;
        if d.address != 0 {
            return Ok(d.address);
        }
        let addr = self.free_address().ok_or(HcError::NoResources)?;
        // SET_ADDRESS (USB 2.0 §9.4.6), sent to address 0.
        self.control_sync(device, [0x00, 0x05, addr, 0, 0, 0, 0, 0])?;
        self.devices
            .get_mut(&device.0)
            .ok_or(HcError::NoDevice)?
            .address = addr;
        self.clock.delay_us(SET_ADDRESS_RECOVERY_US);
        Ok(addr)
    }

    fn set_ep0_max_packet(&mut self, device: DeviceId, max_packet: u16) -> Result<(), HcError> {
        if !matches!(max_packet, 8 | 16 | 32 | 64) {
            return Err(HcError::Invalid("endpoint 0 maximum packet size"));
        }
        let ep = self.ep_mut(device.0, 0).ok_or(HcError::NoDevice)?;
        ep.max_packet = max_packet;
        Ok(())
    }

    fn set_hub_info(&mut self, device: DeviceId, _hub: &HubInfo) -> Result<(), HcError> {
        self.devices
            .contains_key(&device.0)
            .then_some(())
            .ok_or(HcError::NoDevice)
    }

    fn configure_endpoints(
        &mut self,
        device: DeviceId,
        endpoints: &[EndpointInfo],
    ) -> Result<(), HcError> {
        let dev = device.0;
        let d = self.devices.get(&dev).ok_or(HcError::NoDevice)?;
        for e in endpoints {
            if e.address.is_ep0() || !e.address.is_valid() {
                return Err(HcError::Invalid("endpoint address"));
            }
            if e.kind == TransferType::Control || e.kind == TransferType::Isochronous {
                return Err(HcError::NotSupported(
                    "UHCI: only bulk and interrupt endpoints",
                ));
            }
        }
        let existing: Vec<u8> = d.endpoints.keys().copied().filter(|&k| k != 0).collect();
        for key in existing {
            let keep = endpoints.iter().any(|e| {
                e.address.0 == key && {
                    let ep = &self.devices[&dev].endpoints[&key];
                    ep.kind == e.kind && ep.max_packet == e.max_packet
                }
            });
            if !keep {
                self.remove_endpoint(dev, key, HcError::Cancelled);
            } else {
                // A new configuration starts the toggles at DATA0 (USB 2.0 §9.4.5).
                let ep = self.ep_mut(dev, key).expect("exists");
                ep.toggle = false;
                ep.halted = false;
            }
        }
        for e in endpoints {
            if self.devices[&dev].endpoints.contains_key(&e.address.0) {
                continue;
            }
            let ep = self.new_endpoint(e)?;
            self.devices
                .get_mut(&dev)
                .expect("exists")
                .endpoints
                .insert(e.address.0, ep);
        }
        Ok(())
    }

    fn submit(&mut self, request: &TransferRequest<'_>) -> Result<TransferId, HcError> {
        self.submit_inner(request, false).map(TransferId)
    }

    fn cancel(&mut self, id: TransferId) -> Result<bool, HcError> {
        let Some(t) = self.transfers.get(&id.0) else {
            return Ok(false);
        };
        if t.done.is_some() {
            return Ok(false);
        }
        let (dev, key) = (t.device.0, t.key);
        match t.state {
            XferState::Cancelling { .. } => Ok(true),
            XferState::Waiting => {
                if let Some(ep) = self.ep_mut(dev, key) {
                    ep.queue.retain(|&q| q != id.0);
                }
                self.finish(id.0, Err(HcError::Cancelled));
                Ok(true)
            }
            XferState::Active => {
                // Unlink the TDs (§3.4) and report once the frame counter moved on.
                let qh = self.ep_mut(dev, key).map(|e| e.qh);
                if let Some(qh) = qh {
                    self.pool.write32(qh, QH_ELEMENT, Link::TERMINATE.0);
                }
                self.frame_now();
                let until = self.frame + RETIRE_FRAMES;
                if let Some(t) = self.transfers.get_mut(&id.0) {
                    t.state = XferState::Cancelling { until };
                }
                Ok(true)
            }
        }
    }

    fn clear_halt(&mut self, device: DeviceId, endpoint: EndpointAddress) -> Result<(), HcError> {
        let ep = self
            .ep_mut(device.0, ep_key(endpoint))
            .ok_or(HcError::Invalid("endpoint not configured"))?;
        ep.halted = false;
        ep.toggle = false;
        Ok(())
    }

    fn release_device(&mut self, device: DeviceId) -> Result<(), HcError> {
        let dev = device.0;
        let keys: Vec<u8> = self
            .devices
            .get(&dev)
            .ok_or(HcError::NoDevice)?
            .endpoints
            .keys()
            .copied()
            .collect();
        for key in keys {
            self.remove_endpoint(dev, key, HcError::NoDevice);
        }
        self.devices.remove(&dev);
        Ok(())
    }

    fn poll(&mut self) -> Option<HcEvent> {
        if self.events.is_empty() {
            self.service();
        }
        self.events.pop_front()
    }
}
