//! One connected virtual controller: the urb ring, the conn ring, the requests in flight, the
//! per-endpoint queues and the guest address table (`../shared/reference/pvusb-protocol.md`
//! §1.4–§1.10, §1.14).
//!
//! # Ordering (the integrity rule)
//! Every validated request joins the queue of its endpoint (root port, endpoint address) in ring
//! order and leaves it only when answered. Plain transfers are handed to the host controller at
//! once (the controller keeps them in order); a virtualised request (`SET_ADDRESS`,
//! `SET_CONFIGURATION`, `SET_INTERFACE`, `CLEAR_FEATURE(ENDPOINT_HALT)`) waits until everything
//! ahead of it on the endpoint has been answered, and what arrives behind it waits for it. When a
//! transfer fails, the controller completes the transfers queued behind it on that endpoint with
//! `EndpointHalted` without running them (see `usb_core::hc`); they are answered with
//! `USBIF_STATUS_STALL`, and so is everything the frontend sends to the endpoint afterwards, until
//! the guest's `CLEAR_FEATURE(ENDPOINT_HALT)` (which the backend turns into the controller's halt
//! recovery and forwards to the device): nothing queued behind a failure ever runs before it, so
//! the frontend retries them in order. Endpoint 0 is the exception (a control stall ends with the
//! next SETUP, USB 2.0 §8.5.3.4): once nothing is outstanding on it, the backend recovers it
//! itself before starting the next control request.
//!
//! # Answers
//! Every request is answered exactly once: rejections at once, transfers when the controller
//! completes them, after their buffer was unmapped (xenidc's `Connection::complete` releases the
//! buffer before it queues the response). An unlink is answered at once and its target later, when
//! the controller reports the cancelled (or finished) transfer.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use hal::DmaSegment;
use usb_core::hc::{
    Completion, DeviceId, EndpointAddress, HcError, HostController, Speed, TransferId,
    TransferRequest, TransferType,
};
use xenidc::abi::usbif::{
    ConnRequest, ConnResponse, PipeType, UrbRequest, UrbResponse, UsbifSpeed, UsbifStatus,
};
use xenidc::abi::DomId;
use xenidc::buffer::LocalBuffer;
use xenidc::channel::{ChannelError, Connection};
use xenidc::hypervisor::Hypervisor;

use crate::path::PortPath;
use crate::ratelimit::RateLimit;
use crate::shared_ring::SharedPortRing;
use crate::superspeed;
use crate::urb::{buffer_rejection, classify, status_of, Action, Urb};
use crate::PhysDevice;

/// Most conn-ring events kept while the frontend posts no slots; beyond it the queue is collapsed
/// to the last state of each port.
const MAX_CONN_EVENTS: usize = 256;

/// State of one virtual port of a controller.
#[derive(Debug, Clone, Default)]
pub struct VPort {
    /// The physical device exported on this port (its claim is held by this port).
    pub assigned: Option<PortPath>,
    /// The speed last queued for the frontend on the conn ring.
    pub last_queued: u8,
    /// Guest view of the device's configuration value (0 = unconfigured).
    pub config_value: u8,
    /// Guest's alternate settings (interface, alternate).
    pub alts: Vec<(u8, u8)>,
    /// The guest reset the port and enumerates the device again: nothing on the port starts
    /// until the owner has reset the physical device (see `Backend::take_due_resets`).
    pub reset_wanted: bool,
}

impl VPort {
    /// Forget what the guest did with the device (new device, or new connection).
    pub fn reset_guest_state(&mut self) {
        self.config_value = 0;
        self.alts.clear();
        self.reset_wanted = false;
    }
}

/// The usbif speed for a device speed (SuperSpeed is shown as high speed; see
/// [`crate::superspeed`]).
pub fn usbif_speed(s: Speed) -> UsbifSpeed {
    match s {
        Speed::Low => UsbifSpeed::LOW,
        Speed::Full => UsbifSpeed::FULL,
        Speed::High | Speed::Super => UsbifSpeed::HIGH,
    }
}

enum Stage {
    /// Validated, queued behind something on its endpoint.
    Waiting,
    /// Handed to the controller.
    Submitted(TransferId, Box<LocalBuffer>),
}

struct Inflight {
    urb: Urb,
    stage: Stage,
    /// Hypervisor clock when the request was taken off the ring, and when it was handed to the
    /// controller ([`UrbTiming`]).
    t_ring: u64,
    t_submit: u64,
    /// Time spent inside the controller's submit call.
    submit_call: u64,
}

/// Where the forwarded transfers a link answered spent their time, in the hypervisor's clock
/// ([`Hypervisor::now_ns`]). Sums over the transfers, so a mean is `sum / urbs`. Counts only
/// transfers answered after a controller completion (not rejections, virtualised requests or
/// transfers of a link being torn down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrbTiming {
    /// Transfers answered.
    pub urbs: u64,
    /// Taken off the ring → handed to the controller: validation, waiting behind the endpoint's
    /// queue, grant map or copy-in, the controller's submit.
    pub to_submit_ns: u64,
    /// Handed to the controller → its completion reached the link: the device and controller,
    /// the interrupt through Xen, the loop's wake-up and completion polling.
    pub in_controller_ns: u64,
    /// Completion → response pushed on the ring and the frontend notified: copy-out, unmap,
    /// the response, the notification.
    pub to_response_ns: u64,
    /// Of `to_submit_ns`: inside the controller driver's submit call (for xHCI the TRBs and the
    /// doorbell write; under QEMU the emulated controller may do its work inside that write).
    pub submit_call_ns: u64,
}

impl UrbTiming {
    fn add(&mut self, o: &UrbTiming) {
        self.urbs += o.urbs;
        self.to_submit_ns += o.to_submit_ns;
        self.in_controller_ns += o.in_controller_ns;
        self.to_response_ns += o.to_response_ns;
        self.submit_call_ns += o.submit_call_ns;
    }

    /// `self - earlier` (for a window of a running total).
    pub fn since(&self, earlier: &UrbTiming) -> UrbTiming {
        UrbTiming {
            urbs: self.urbs.wrapping_sub(earlier.urbs),
            to_submit_ns: self.to_submit_ns.wrapping_sub(earlier.to_submit_ns),
            in_controller_ns: self.in_controller_ns.wrapping_sub(earlier.in_controller_ns),
            to_response_ns: self.to_response_ns.wrapping_sub(earlier.to_response_ns),
            submit_call_ns: self.submit_call_ns.wrapping_sub(earlier.submit_call_ns),
        }
    }
}

/// One forwarded transfer's way through the backend, in the hypervisor's clock (ns): taken off
/// the ring, handed to the controller, completed, its response published. The kernel prints the
/// last ones of each link (`usbdom.trace=1`) beside the frontend's own timestamps (usbmon) for
/// the breakdown of a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrbTrace {
    pub id: u16,
    /// Endpoint address (bit 7: IN).
    pub ep: u8,
    /// Buffer length and bytes transferred.
    pub len: u32,
    pub actual: u32,
    pub t_ring: u64,
    pub t_submit: u64,
    pub t_done: u64,
    pub t_response: u64,
}

/// Transfers a link keeps in its [`Link::recent`] trace.
pub const TRACE_LEN: usize = 16;

/// [`UrbTiming`] of every link of the program (the kernel logs it with its loop statistics).
static TOTAL: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The running total of [`UrbTiming`] over all links since start.
pub fn urb_timing_total() -> UrbTiming {
    UrbTiming {
        urbs: TOTAL[0].load(Ordering::Relaxed),
        to_submit_ns: TOTAL[1].load(Ordering::Relaxed),
        in_controller_ns: TOTAL[2].load(Ordering::Relaxed),
        to_response_ns: TOTAL[3].load(Ordering::Relaxed),
        submit_call_ns: TOTAL[4].load(Ordering::Relaxed),
    }
}

/// Completed transfers whose responses are queued but not pushed yet.
#[derive(Debug, Default)]
struct Unpushed {
    /// Their timing so far (`to_response_ns` unset).
    timing: UrbTiming,
    /// Sum of their completion times.
    completed_at: u64,
    /// Their traces (`t_response` unset), at most [`TRACE_LEN`].
    traces: heapless::Vec<UrbTrace, TRACE_LEN>,
}

/// Counters of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub requests: u64,
    pub rejected: u64,
    pub forwarded: u64,
    pub virtualized: u64,
    pub unlinks: u64,
    pub completed: u64,
    pub conn_events: u64,
    /// Transfers that waited for room in the controller's ring for their endpoint.
    pub deferred: u64,
}

/// What the link needs from its owner while it works.
pub struct Env<'a, H: Hypervisor, C: HostController> {
    pub hv: &'a mut H,
    pub hc: &'a mut C,
    pub devices: &'a BTreeMap<PortPath, PhysDevice>,
    pub owners: &'a mut BTreeMap<TransferId, u64>,
    pub limit: &'a mut RateLimit,
    pub zero_copy: bool,
}

impl<H: Hypervisor, C: HostController> Env<'_, H, C> {
    fn peer_log(&mut self, peer: DomId, args: fmt::Arguments<'_>) {
        if let Some(suppressed) = self.limit.allow(self.hv.now_ns()) {
            if suppressed > 0 {
                log::warn!(
                    "frontend {}: {args} ({suppressed} similar lines suppressed)",
                    peer.0
                );
            } else {
                log::warn!("frontend {}: {args}", peer.0);
            }
        }
    }
}

/// A connected virtual controller.
pub struct Link<H: Hypervisor> {
    pub gen: u64,
    peer: DomId,
    num_ports: u8,
    urb: Connection<H, UrbRequest, UrbResponse>,
    conn: SharedPortRing<H, ConnRequest, ConnResponse>,
    inflight: BTreeMap<u16, Inflight>,
    queues: BTreeMap<(u8, u8), VecDeque<u16>>,
    /// Guest device address → virtual port (0: none).
    addr: [u8; 128],
    /// Virtual port → guest device address (0: not addressed yet).
    port_addr: [u8; 32],
    conn_events: VecDeque<(u8, u8)>,
    /// Endpoints whose controller side must be recovered once drained.
    needs_clear: BTreeSet<(u8, u8)>,
    pub stats: LinkStats,
    /// Where this link's forwarded transfers spent their time.
    pub timing: UrbTiming,
    unpushed: Unpushed,
    /// The last [`TRACE_LEN`] forwarded transfers answered, oldest first.
    recent: heapless::Deque<UrbTrace, TRACE_LEN>,
    /// Finished IN transfers whose data goes back to the frontend in one batched grant copy
    /// before their responses are queued ([`Link::flush`]).
    outbox: Vec<Outgoing>,
}

/// A finished transfer waiting for the batched copy-out of [`Link::flush`].
struct Outgoing {
    id: u16,
    status: UsbifStatus,
    actual: u32,
    buf: LocalBuffer,
}

/// Ring failure: the frontend broke the protocol or the ring could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFailed(pub ChannelError);

impl<H: Hypervisor> Link<H> {
    pub fn new(
        gen: u64,
        peer: DomId,
        num_ports: u8,
        urb: Connection<H, UrbRequest, UrbResponse>,
        conn: SharedPortRing<H, ConnRequest, ConnResponse>,
    ) -> Self {
        Link {
            gen,
            peer,
            num_ports,
            urb,
            conn,
            inflight: BTreeMap::new(),
            queues: BTreeMap::new(),
            addr: [0; 128],
            port_addr: [0; 32],
            conn_events: VecDeque::new(),
            needs_clear: BTreeSet::new(),
            stats: LinkStats::default(),
            timing: UrbTiming::default(),
            unpushed: Unpushed::default(),
            recent: heapless::Deque::new(),
            outbox: Vec::new(),
        }
    }

    /// The last forwarded transfers this link answered (at most [`TRACE_LEN`]), oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &UrbTrace> {
        self.recent.iter()
    }

    /// The frontend's domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// Requests received and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Requests handed to the controller and not completed yet.
    pub fn submitted(&self) -> usize {
        self.inflight
            .values()
            .filter(|i| matches!(i.stage, Stage::Submitted(..)))
            .count()
    }

    /// Grant mappings held for data buffers.
    pub fn mapped_now(&mut self) -> usize {
        self.urb.mapper().mapped_now()
    }

    // --- conn ring ---------------------------------------------------------------------------

    /// Queue a speed change of `port` for the frontend (dropped if it is no change).
    pub fn queue_conn(&mut self, ports: &mut [VPort], port: u8, speed: UsbifSpeed) {
        let vp = &mut ports[port as usize - 1];
        if vp.last_queued == speed.0 {
            return;
        }
        vp.last_queued = speed.0;
        self.conn_events.push_back((port, speed.0));
        if self.conn_events.len() > MAX_CONN_EVENTS {
            // The frontend posts no slots: keep only each port's latest state (a port that went
            // away and came back is announced as gone first, so the guest re-enumerates it).
            let old: Vec<(u8, u8)> = self.conn_events.drain(..).collect();
            let mut seen = BTreeSet::new();
            let mut latest = Vec::new();
            for &(p, s) in old.iter().rev() {
                if seen.insert(p) {
                    latest.push((p, s));
                }
            }
            for (p, s) in latest.into_iter().rev() {
                if s != 0 {
                    self.conn_events.push_back((p, 0));
                }
                self.conn_events.push_back((p, s));
            }
        }
    }

    /// Send queued conn events for which the frontend posted slots.
    pub fn pump_conn(&mut self, hv: &mut H) -> Result<(), LinkFailed> {
        let mut sent = false;
        while let Some(&(port, speed)) = self.conn_events.front() {
            match self.conn.receive().map_err(LinkFailed)? {
                None => break,
                Some(req) => {
                    let rsp = ConnResponse {
                        id: req.id,
                        portnum: port,
                        speed: UsbifSpeed(speed),
                    };
                    self.conn.respond(&rsp).map_err(LinkFailed)?;
                    self.conn_events.pop_front();
                    self.stats.conn_events += 1;
                    sent = true;
                }
            }
        }
        if sent {
            let port = self.urb.port();
            self.conn.flush(hv, port).map_err(LinkFailed)?;
        }
        Ok(())
    }

    // --- urb ring ----------------------------------------------------------------------------

    /// Take up to `budget` requests off the ring and act on them. Returns true if the ring may
    /// hold more (call again).
    pub fn service<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        ports: &mut [VPort],
        budget: usize,
    ) -> Result<bool, LinkFailed> {
        // Answers first: what the controller finished goes to the frontend before new
        // requests are taken (their submission can take long: an emulated controller runs the
        // transfer inside the doorbell write).
        self.flush_logged(env)?;
        let mut n = 0;
        let more = loop {
            if n >= budget {
                break true;
            }
            match self.urb.channel().receive() {
                Ok(Some(r)) => {
                    n += 1;
                    self.handle_request(env, ports, r);
                }
                Ok(None) => {
                    self.flush_logged(env)?;
                    match self.urb.channel().idle_check() {
                        Ok(true) => continue,
                        Ok(false) => break false,
                        Err(e) => return Err(LinkFailed(e)),
                    }
                }
                Err(e) => return Err(LinkFailed(e)),
            }
        };
        self.pump(env, ports);
        self.flush_logged(env)?;
        self.pump_conn(env.hv)?;
        Ok(more)
    }

    /// [`Link::flush`], saying (rate-limited) when data could not be copied back.
    fn flush_logged<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
    ) -> Result<(), LinkFailed> {
        let lost = self.flush(env.hv)?;
        if lost > 0 {
            env.peer_log(
                self.peer,
                format_args!(
                    "{lost} transfer(s): copying the data back failed (pages not granted any more?); answered SHUTDOWN"
                ),
            );
        }
        Ok(())
    }

    /// Copy the data of the finished IN transfers back (one batched grant copy for all of
    /// them), answer them, and publish the queued responses. Returns how many responses lost
    /// their data to a failed copy (answered `SHUTDOWN`: the frontend revoked or never granted
    /// the pages).
    pub fn flush(&mut self, hv: &mut H) -> Result<u32, LinkFailed> {
        let lost = self.answer_outbox(hv);
        self.urb.channel().flush(hv).map_err(LinkFailed)?;
        if self.unpushed.timing.urbs != 0 {
            let u = core::mem::take(&mut self.unpushed);
            let now = hv.now_ns();
            let mut t = u.timing;
            t.to_response_ns = t.urbs.saturating_mul(now).saturating_sub(u.completed_at);
            for mut tr in u.traces {
                tr.t_response = now;
                if self.recent.is_full() {
                    self.recent.pop_front();
                }
                let _ = self.recent.push_back(tr);
            }
            self.timing.add(&t);
            for (total, v) in TOTAL.iter().zip([
                t.urbs,
                t.to_submit_ns,
                t.in_controller_ns,
                t.to_response_ns,
                t.submit_call_ns,
            ]) {
                total.fetch_add(v, Ordering::Relaxed);
            }
        }
        Ok(lost)
    }

    /// The outbox: one grant-copy batch for the data of every finished IN transfer, then each
    /// answered (its buffer released). Returns the copies that failed.
    fn answer_outbox(&mut self, hv: &mut H) -> u32 {
        if self.outbox.is_empty() {
            return 0;
        }
        let out = core::mem::take(&mut self.outbox);
        let items: Vec<(&LocalBuffer, usize)> =
            out.iter().map(|o| (&o.buf, o.actual as usize)).collect();
        let copied = self.urb.mapper().copy_out_many(hv, &items);
        drop(items);
        let mut lost = 0;
        for (o, r) in out.into_iter().zip(copied) {
            let status = if r.is_err() {
                lost += 1;
                UsbifStatus::SHUTDOWN
            } else {
                o.status
            };
            self.respond(hv, o.id, status, o.actual, Some(o.buf));
        }
        lost
    }

    fn respond(
        &mut self,
        hv: &mut H,
        id: u16,
        status: UsbifStatus,
        actual: u32,
        buf: Option<LocalBuffer>,
    ) {
        let rsp = UrbResponse {
            id,
            start_frame: 0,
            status,
            actual_length: actual.min(i32::MAX as u32) as i32,
            error_count: 0,
        };
        if let Err(e) = self.urb.complete(hv, buf, &rsp) {
            log::error!("frontend {}: answering request {id}: {e}", self.peer.0);
        }
    }

    fn reject<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        id: u16,
        status: UsbifStatus,
        why: &str,
    ) {
        self.stats.rejected += 1;
        env.peer_log(
            self.peer,
            format_args!("request {id} refused ({}): {why}", status.0),
        );
        self.respond(env.hv, id, status, 0, None);
    }

    fn handle_request<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        ports: &mut [VPort],
        r: UrbRequest,
    ) {
        let t_ring = env.hv.now_ns();
        self.stats.requests += 1;
        if r.pipe.is_unlink() {
            self.unlink(env, ports, &r);
            return;
        }
        if self.inflight.contains_key(&r.id) {
            self.reject(env, r.id, UsbifStatus::INVAL, "id already in flight");
            return;
        }
        let urb = match classify(&r, self.peer, self.num_ports) {
            Ok(u) => u,
            Err(rej) => {
                self.reject(env, r.id, rej.status, rej.why);
                return;
            }
        };
        let vp = &ports[urb.port as usize - 1];
        let Some(path) = vp.assigned else {
            self.reject(
                env,
                r.id,
                UsbifStatus::NODEV,
                "no device assigned to the port",
            );
            return;
        };
        let Some(dev) = env.devices.get(&path) else {
            self.reject(env, r.id, UsbifStatus::NODEV, "device not connected");
            return;
        };
        if urb.devaddr != 0 && self.addr[urb.devaddr as usize] != urb.port {
            self.reject(env, r.id, UsbifStatus::NODEV, "unknown device address");
            return;
        }
        if !urb.ep.is_ep0() {
            let want = match urb.kind {
                PipeType::BULK => TransferType::Bulk,
                PipeType::INT => TransferType::Interrupt,
                _ => TransferType::Isochronous,
            };
            let ok = match (&dev.config, vp.config_value) {
                (Some(cfg), v) if v != 0 && cfg.value == v => cfg
                    .active_endpoint_iter(&vp.alts)
                    .any(|e| e.address == urb.ep && e.kind == want),
                _ => false,
            };
            if !ok {
                self.reject(
                    env,
                    r.id,
                    UsbifStatus::INVAL,
                    "no such endpoint in the active configuration",
                );
                return;
            }
        }
        let p = urb.port as usize;
        if urb.devaddr == 0 && self.port_addr[p] != 0 {
            // A request to address 0 for a device the guest had addressed: the guest reset the
            // port and enumerates again (usb_reset_device, e.g. mass-storage error recovery).
            // xen-hcd emulates the root hub, so the reset itself never reached us: have the
            // device reset for real before this request runs (pvusb-protocol.md §1.14).
            let old = self.port_addr[p] as usize;
            if self.addr[old] == urb.port {
                self.addr[old] = 0;
            }
            self.port_addr[p] = 0;
            let vp = &mut ports[p - 1];
            vp.reset_guest_state();
            vp.reset_wanted = true;
        }
        let key = urb.queue_key();
        let id = urb.id;
        let q = self.queues.entry(key).or_default();
        q.push_back(id);
        self.inflight.insert(
            id,
            Inflight {
                urb,
                stage: Stage::Waiting,
                t_ring,
                t_submit: 0,
                submit_call: 0,
            },
        );
        // Started by `pump`, which keeps the endpoint order.
        self.pump(env, ports);
    }

    fn unlink<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        ports: &mut [VPort],
        r: &UrbRequest,
    ) {
        self.stats.unlinks += 1;
        let target = r.unlink_id();
        let stage = self.inflight.get(&target).map(|i| match &i.stage {
            Stage::Waiting => None,
            Stage::Submitted(tid, _) => Some(*tid),
        });
        match stage {
            None => {
                // Already answered (or never sent): nothing to cancel.
                self.respond(env.hv, r.id, UsbifStatus::OK, 0, None);
            }
            Some(None) => {
                self.respond(env.hv, r.id, UsbifStatus::OK, 0, None);
                self.finish(env, target, UsbifStatus::IOERROR, 0, None);
                self.pump(env, ports);
            }
            Some(Some(tid)) => {
                // The target is answered when the controller reports it (cancelled or done).
                let status = match env.hc.cancel(tid) {
                    Ok(_) => UsbifStatus::OK,
                    Err(e) => status_of(&e),
                };
                self.respond(env.hv, r.id, status, 0, None);
            }
        }
    }

    /// Answer in-flight request `id` (removing it from its queue).
    fn finish<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        id: u16,
        status: UsbifStatus,
        actual: u32,
        buf: Option<LocalBuffer>,
    ) {
        if let Some(inf) = self.unqueue(id) {
            let buf = match (buf, inf.stage) {
                (Some(b), _) => Some(b),
                (None, Stage::Submitted(tid, b)) => {
                    env.owners.remove(&tid);
                    Some(*b)
                }
                (None, Stage::Waiting) => None,
            };
            self.stats.completed += 1;
            self.respond(env.hv, id, status, actual, buf);
        }
    }

    /// Take request `id` out of the in-flight table and its endpoint's queue.
    fn unqueue(&mut self, id: u16) -> Option<Inflight> {
        let inf = self.inflight.remove(&id)?;
        let key = inf.urb.queue_key();
        if let Some(q) = self.queues.get_mut(&key) {
            q.retain(|&x| x != id);
            if q.is_empty() {
                self.queues.remove(&key);
            }
        }
        Some(inf)
    }

    fn device<'d, C: HostController>(
        env: &'d Env<'_, H, C>,
        ports: &[VPort],
        port: u8,
    ) -> Option<&'d PhysDevice> {
        ports
            .get(port as usize - 1)
            .and_then(|vp| vp.assigned)
            .and_then(|p| env.devices.get(&p))
    }

    /// Start waiting requests whose turn has come, and recover drained halted endpoints.
    pub fn pump<C: HostController>(&mut self, env: &mut Env<'_, H, C>, ports: &mut [VPort]) {
        loop {
            let mut progressed = false;
            // Controller-side halt recovery once nothing of ours is outstanding on the endpoint.
            let drained: Vec<(u8, u8)> = self
                .needs_clear
                .iter()
                .copied()
                .filter(|k| {
                    self.queues.get(k).is_none_or(|q| {
                        q.iter()
                            .all(|id| matches!(self.inflight[id].stage, Stage::Waiting))
                    })
                })
                .collect();
            for k in drained {
                self.needs_clear.remove(&k);
                if let Some(dev) = Self::device(env, ports, k.0) {
                    let d: DeviceId = dev.device;
                    if let Err(e) = env.hc.clear_halt(d, EndpointAddress(k.1)) {
                        log::debug!("clearing halt of {:?} ep {:#x}: {e}", d, k.1);
                    }
                }
            }
            let keys: Vec<(u8, u8)> = self.queues.keys().copied().collect();
            for key in keys {
                if ports
                    .get((key.0 as usize).wrapping_sub(1))
                    .is_some_and(|p| p.reset_wanted)
                {
                    // Waits for the physical reset the guest asked for.
                    continue;
                }
                while let Some(q) = self.queues.get(&key) {
                    let Some(pos) = q
                        .iter()
                        .position(|id| matches!(self.inflight[id].stage, Stage::Waiting))
                    else {
                        break;
                    };
                    let id = q[pos];
                    let forward = self.inflight[&id].urb.action == Action::Forward;
                    // Virtualised requests wait for the queue ahead; so does every control
                    // transfer (one at a time on endpoint 0, so that a stalled request cannot
                    // fail the unrelated next one).
                    if pos > 0 && (!forward || key.1 == 0) {
                        break;
                    }
                    if self.needs_clear.contains(&key) {
                        // Endpoint 0 after an error: wait until recovered (above).
                        break;
                    }
                    self.start(env, ports, id);
                    if self
                        .inflight
                        .get(&id)
                        .is_some_and(|i| matches!(i.stage, Stage::Waiting))
                    {
                        // Not started (the controller's ring for the endpoint is full): it
                        // waits for the transfers ahead of it to finish.
                        break;
                    }
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Run request `id` now: the virtualised part, then the transfer.
    fn start<C: HostController>(&mut self, env: &mut Env<'_, H, C>, ports: &mut [VPort], id: u16) {
        let Some(inf) = self.inflight.get(&id) else {
            return;
        };
        let urb = inf.urb.clone();
        let port = urb.port;
        let Some(dev) = Self::device(env, ports, port) else {
            self.finish(env, id, UsbifStatus::NODEV, 0, None);
            return;
        };
        let device = dev.device;
        // Only the virtualised configuration requests need the descriptors (a clone, since the
        // device table is borrowed); a plain transfer copies nothing.
        let config = match urb.action {
            Action::Forward | Action::SetAddress(_) | Action::ClearHalt(_) => None,
            Action::SetConfiguration(_) | Action::SetInterface(..) => dev.config.clone(),
        };
        let vp = &mut ports[port as usize - 1];
        match urb.action {
            Action::Forward => {}
            Action::SetAddress(a) => {
                self.stats.virtualized += 1;
                let old = self.port_addr[port as usize];
                if old != 0 && self.addr[old as usize] == port {
                    self.addr[old as usize] = 0;
                }
                let other = self.addr[a as usize];
                if other != 0 && other != port {
                    self.port_addr[other as usize] = 0;
                }
                self.addr[a as usize] = port;
                self.port_addr[port as usize] = a;
                self.finish(env, id, UsbifStatus::OK, 0, None);
                return;
            }
            Action::SetConfiguration(v) => {
                self.stats.virtualized += 1;
                let eps = match (&config, v) {
                    (_, 0) => Vec::new(),
                    (Some(c), v) if c.value == v => c.active_endpoints(&[]),
                    _ => {
                        self.finish(env, id, UsbifStatus::INVAL, 0, None);
                        return;
                    }
                };
                if let Err(e) = env.hc.configure_endpoints(device, &eps) {
                    self.finish(env, id, status_of(&e), 0, None);
                    return;
                }
                // A (re)configured device starts with every endpoint running (USB 2.0 §9.4.7).
                for e in &eps {
                    let _ = env.hc.clear_halt(device, e.address);
                }
                vp.config_value = v;
                vp.alts.clear();
            }
            Action::SetInterface(i, a) => {
                self.stats.virtualized += 1;
                let cfg = match &config {
                    Some(c) if vp.config_value == c.value && c.interface(i, a).is_some() => c,
                    _ => {
                        self.finish(env, id, UsbifStatus::INVAL, 0, None);
                        return;
                    }
                };
                let mut alts: Vec<(u8, u8)> =
                    vp.alts.iter().copied().filter(|(n, _)| *n != i).collect();
                alts.push((i, a));
                let eps = cfg.active_endpoints(&alts);
                if let Err(e) = env.hc.configure_endpoints(device, &eps) {
                    self.finish(env, id, status_of(&e), 0, None);
                    return;
                }
                vp.alts = alts;
            }
            Action::ClearHalt(ep) => {
                self.stats.virtualized += 1;
                self.needs_clear.remove(&(port, ep.0));
                if let Err(e) = env.hc.clear_halt(device, ep) {
                    if e == HcError::NoDevice {
                        self.finish(env, id, UsbifStatus::NODEV, 0, None);
                        return;
                    }
                    log::debug!("clear_halt {:?} {:#x}: {e}", device, ep.0);
                }
            }
        }
        // The transfer itself.
        let mapper = self.urb.mapper();
        let buf = if env.zero_copy {
            mapper.map(env.hv, &urb.buffer)
        } else {
            match mapper.bounce(&urb.buffer) {
                Ok(b) if !urb.dir_in => match mapper.copy_in(env.hv, &b) {
                    Ok(()) => Ok(b),
                    Err(e) => {
                        let _ = mapper.release(env.hv, b);
                        Err(e)
                    }
                },
                r => r,
            }
        };
        let buf = match buf {
            Ok(b) => b,
            Err(e) => {
                let rej = buffer_rejection(&e);
                env.peer_log(self.peer, format_args!("request {id}: buffer: {e}"));
                self.stats.rejected += 1;
                self.finish(env, id, rej.status, 0, None);
                return;
            }
        };
        let mut segs: heapless::Vec<DmaSegment, 16> = heapless::Vec::new();
        let _ = self.urb.mapper().for_each_bus_segment(&buf, |a, l| {
            let _ = segs.push(DmaSegment {
                bus_addr: a,
                len: l as u32,
            });
        });
        let tr = TransferRequest {
            device,
            endpoint: urb.ep,
            setup: urb.setup,
            buffer: &segs,
            flags: urb.flags,
        };
        let t_call = env.hv.now_ns();
        match env.hc.submit(&tr) {
            Ok(tid) => {
                self.stats.forwarded += 1;
                env.owners.insert(tid, self.gen);
                let now = env.hv.now_ns();
                if let Some(inf) = self.inflight.get_mut(&id) {
                    inf.stage = Stage::Submitted(tid, Box::new(buf));
                    inf.t_submit = now;
                    inf.submit_call = now.saturating_sub(t_call);
                }
            }
            Err(HcError::NoResources)
                if urb.action == Action::Forward && self.endpoint_busy(urb.queue_key()) =>
            {
                // The controller's transfer ring for the endpoint is full (16 requests of 16
                // segments fill an xHCI ring of 255 TRBs): not an error of the request. It stays
                // first in line and starts when a transfer ahead of it completes (`pump`).
                let _ = self.urb.mapper().release(env.hv, buf);
                self.stats.deferred += 1;
            }
            Err(e) => {
                self.finish(env, id, status_of(&e), 0, Some(buf));
            }
        }
    }

    /// Whether the controller has transfers of this link on endpoint `key`.
    fn endpoint_busy(&self, key: (u8, u8)) -> bool {
        self.queues.get(&key).is_some_and(|q| {
            q.iter().any(|id| {
                self.inflight
                    .get(id)
                    .is_some_and(|i| matches!(i.stage, Stage::Submitted(..)))
            })
        })
    }

    /// A controller completion for one of our transfers.
    pub fn complete<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        ports: &mut [VPort],
        c: &Completion,
    ) {
        let Some(id) = self.inflight.iter().find_map(|(id, i)| match &i.stage {
            Stage::Submitted(tid, _) if *tid == c.id => Some(*id),
            _ => None,
        }) else {
            return;
        };
        let t_done = env.hv.now_ns();
        let inf = self.inflight.get_mut(&id).expect("found above");
        let Stage::Submitted(_, buf) = core::mem::replace(&mut inf.stage, Stage::Waiting) else {
            return;
        };
        let u = &mut self.unpushed;
        u.timing.urbs += 1;
        u.timing.to_submit_ns += inf.t_submit.saturating_sub(inf.t_ring);
        u.timing.in_controller_ns += t_done.saturating_sub(inf.t_submit);
        u.timing.submit_call_ns += inf.submit_call;
        u.completed_at += t_done;
        let _ = u.traces.push(UrbTrace {
            id,
            ep: inf.urb.ep.0,
            len: inf.urb.buffer.len(),
            actual: c.actual,
            t_ring: inf.t_ring,
            t_submit: inf.t_submit,
            t_done,
            t_response: 0,
        });
        let buf = *buf;
        let urb = inf.urb.clone();
        env.owners.remove(&c.id);
        let status = match c.result {
            Ok(()) => UsbifStatus::OK,
            Err(e) => status_of(&e),
        };
        if let Err(e) = c.result {
            // Endpoint 0 recovers by itself with the next SETUP (USB 2.0 §8.5.3.4): recover the
            // controller side once drained. Other endpoints stay halted (the controller refuses
            // new transfers, answered STALL) until the guest's CLEAR_FEATURE(ENDPOINT_HALT).
            if urb.ep.is_ep0() && !matches!(e, HcError::Cancelled | HcError::NoDevice) {
                self.needs_clear.insert(urb.queue_key());
            }
        }
        let actual = c.actual.min(urb.buffer.len());
        if urb.dir_in && actual > 0 {
            let ss = Self::device(env, ports, urb.port).is_some_and(|d| d.speed == Speed::Super);
            let mapper = self.urb.mapper();
            if let (true, Some(setup)) = (ss, urb.setup) {
                if superspeed::wants_rewrite(&setup) {
                    let mut data = alloc::vec![0u8; actual as usize];
                    if mapper.read(&buf, 0, &mut data).is_ok()
                        && superspeed::rewrite(&setup, &mut data)
                    {
                        let _ = mapper.write(&buf, 0, &data);
                    }
                }
            }
            // The data goes back with the round's other IN data in one grant-copy batch, and
            // the request is answered then ([`Link::flush`]); it is no longer in flight.
            self.unqueue(id);
            self.stats.completed += 1;
            self.outbox.push(Outgoing {
                id,
                status,
                actual,
                buf,
            });
        } else {
            self.finish(env, id, status, actual, Some(buf));
        }
        self.pump(env, ports);
    }

    /// The device on `port` went away or was unassigned: cancel what is in flight for it (the
    /// controller reports those transfers, and they are answered then) and answer what waits.
    pub fn port_gone<C: HostController>(
        &mut self,
        env: &mut Env<'_, H, C>,
        ports: &mut [VPort],
        port: u8,
    ) {
        let ids: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.urb.port == port)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            match &self.inflight[&id].stage {
                Stage::Waiting => self.finish(env, id, UsbifStatus::NODEV, 0, None),
                Stage::Submitted(tid, _) => {
                    let tid = *tid;
                    let _ = env.hc.cancel(tid);
                }
            }
        }
        let a = self.port_addr[port as usize];
        if a != 0 && self.addr[a as usize] == port {
            self.addr[a as usize] = 0;
        }
        self.port_addr[port as usize] = 0;
        self.needs_clear.retain(|k| k.0 != port);
        ports[port as usize - 1].reset_guest_state();
    }

    /// Stop (the frontend or the toolstack closes the controller). Every request is answered
    /// exactly once before the rings go: waiting ones now, with `SHUTDOWN`; submitted ones are
    /// cancelled and answered when the controller reports them ([`Link::complete_aborted`]), since
    /// their data buffers stay mapped until the controller let go of them. Returns the number of
    /// transfers the controller still has to report.
    pub fn abort<C: HostController>(&mut self, hv: &mut H, hc: &mut C) -> usize {
        let waiting: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, i)| matches!(i.stage, Stage::Waiting))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.inflight.remove(&id);
            self.stats.completed += 1;
            self.respond(hv, id, UsbifStatus::SHUTDOWN, 0, None);
        }
        self.queues.clear();
        self.conn_events.clear();
        for i in self.inflight.values() {
            if let Stage::Submitted(tid, _) = &i.stage {
                let _ = hc.cancel(*tid);
            }
        }
        self.flush_quietly(hv);
        self.inflight.len()
    }

    /// Publish responses of a link being torn down: a frontend that is gone or broke its ring
    /// cannot be answered, and that is no reason to keep anything.
    fn flush_quietly(&mut self, hv: &mut H) {
        if let Err(e) = self.flush(hv) {
            log::debug!(
                "frontend {}: final responses not sent: {:?}",
                self.peer.0,
                e.0
            );
        }
    }

    /// After [`Link::abort`]: a completion of a transfer of a link being torn down. Its buffer is
    /// released, then its request answered with `SHUTDOWN` (whatever the controller reported: the
    /// frontend is going away). Returns the transfers still outstanding.
    pub fn complete_aborted(&mut self, hv: &mut H, c: &Completion) -> usize {
        let id = self.inflight.iter().find_map(|(id, i)| match &i.stage {
            Stage::Submitted(tid, _) if *tid == c.id => Some(*id),
            _ => None,
        });
        if let Some(id) = id {
            if let Some(Inflight {
                stage: Stage::Submitted(_, buf),
                ..
            }) = self.inflight.remove(&id)
            {
                self.stats.completed += 1;
                self.respond(hv, id, UsbifStatus::SHUTDOWN, 0, Some(*buf));
                self.flush_quietly(hv);
            }
        }
        self.inflight.len()
    }

    /// Release everything: data mappings, bounce pages, both rings, the event channel.
    pub fn teardown(self, hv: &mut H) -> usize {
        let Link { urb, conn, .. } = self;
        let report = urb.teardown(hv);
        let _ = conn.disconnect(hv);
        report.mappings_released
    }
}

#[cfg(test)]
mod timing_tests {
    use super::UrbTiming;
    use crate::tests::{ctrl_pipe, request, Frontend, World};
    use usb_core::hc::Speed;
    use xenidc::abi::usbif::UsbifStatus;

    const FE: u16 = 5;

    fn timing(w: &World) -> UrbTiming {
        let v = w.be.vusbs.values().next().expect("one controller");
        v.link.as_ref().expect("connected").timing
    }

    /// A GET_DESCRIPTOR(device) at address 0 (forwarded to the controller) that the controller
    /// holds while the clock advances by `ns`.
    fn held_transfer(w: &mut World, f: &mut Frontend, id: u16, ns: u64) {
        let (_, g) = f.page(false);
        f.send(&request(
            id,
            ctrl_pipe(1, 0, true),
            [0x80, 6, 0, 1, 0, 0, 8, 0],
            &[(g, 0, 8)],
        ));
        w.hc.hold = true;
        w.run(&mut [&mut *f]);
        assert!(
            f.take(id).is_empty(),
            "not answered while the controller holds it"
        );
        w.sim.advance_ns(ns);
        w.hc.hold = false;
        w.run(&mut [&mut *f]);
        let r = f.take(id);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].status, r[0].actual_length), (UsbifStatus::OK, 8));
    }

    #[test]
    fn time_in_the_controller_is_attributed_to_it() {
        for zero_copy in [false, true] {
            let mut w = World::new(zero_copy);
            w.plug(1, Speed::High);
            w.toolstack_create(FE, 0, 4, 2);
            let mut f = Frontend::new(&mut w, FE, 0);
            w.assign(FE, 0, 1, "1-1");
            w.run(&mut [&mut f]);
            assert_eq!(f.state(), 4);
            assert_eq!(timing(&w), UrbTiming::default());
            held_transfer(&mut w, &mut f, 1, 7_000);
            assert_eq!(
                timing(&w),
                UrbTiming {
                    urbs: 1,
                    to_submit_ns: 0,
                    in_controller_ns: 7_000,
                    to_response_ns: 0,
                    submit_call_ns: 0,
                }
            );
            held_transfer(&mut w, &mut f, 2, 3_000);
            let t = timing(&w);
            assert_eq!((t.urbs, t.in_controller_ns), (2, 10_000));
            // The per-transfer trace: both, oldest first, with their time in the controller.
            let tr: Vec<_> = w.be.recent_urbs().into_iter().map(|(_, t)| t).collect();
            assert_eq!(tr.len(), 2);
            assert_eq!((tr[0].id, tr[0].ep, tr[0].len, tr[0].actual), (1, 0, 8, 8));
            assert_eq!(tr[0].t_done - tr[0].t_submit, 7_000);
            assert_eq!(tr[1].t_done - tr[1].t_submit, 3_000);
            assert!(tr[1].t_ring >= tr[0].t_response && tr[1].t_response >= tr[1].t_done);
            // A rejected request (no device at that port) is not a transfer.
            f.send(&request(
                3,
                ctrl_pipe(2, 0, true),
                [0x80, 6, 0, 1, 0, 0, 8, 0],
                &[],
            ));
            w.run(&mut [&mut f]);
            assert_eq!(f.take(3)[0].status, UsbifStatus::NODEV);
            assert_eq!(timing(&w).urbs, 2);
            // The program-wide total includes this link's transfers.
            let total = super::urb_timing_total();
            assert!(total.urbs >= 2 && total.in_controller_ns >= 10_000);
            assert_eq!(total.since(&total), UrbTiming::default());
        }
    }
}
