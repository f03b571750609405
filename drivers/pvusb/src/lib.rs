//! The PVUSB backend of usbdom: exports the USB devices of one host controller to Linux `xen-hcd`
//! frontends over Xen's PV USB protocol (`io/usbif.h`; facts in
//! `../shared/reference/pvusb-protocol.md`).
//!
//! [`Backend`] is generic over the [`Hypervisor`] (real Xen or the simulated one of the host tests)
//! and over its xenstore access ([`Store`]); its methods that touch the controller take any
//! [`HostController`] (xHCI, UHCI, or a fake). It contains no raw ring or grant code: it uses
//! xenidc's [`Connection`] (urb ring + data-buffer mapper) and, for the conn ring that shares the
//! urb ring's event channel, the thin adapter in [`shared_ring`].
//!
//! # What the owner (the kernel's event loop) does
//! - [`Backend::start`] once;
//! - when the xenstore port fires: [`Backend::process_xenstore`] (the backend's [`Store`] takes
//!   the events), or, when the owner shares one xenstore connection and dispatches events itself,
//!   [`Backend::handle_events`] with the events whose token [`Backend::owns_token`];
//! - when any other port fires: [`Backend::process_rings`] (all connected frontends are served;
//!   there are few);
//! - for each controller event: a [`HcEvent::Transfer`] goes to [`Backend::complete`]; devices
//!   the USB core enumerated or removed go to [`Backend::device_attached`] /
//!   [`Backend::device_detached`] (or the [`BusEvent`]s to [`Backend::handle_bus_events`]).
//!   With a usb-core [`Bus`], [`Backend::poll_bus`] does all of this.
//!
//! # Xenbus lifecycle (pvusb-protocol.md §1.12, §1.13)
//! The backend watches `backend/vusb` under its own home. For each `<feid>/<devid>` directory it
//! reads and validates `num-ports` (1–31) and `usb-ver` (1|2), watches the frontend's `state` and
//! goes to InitWait. It connects when the frontend is Initialised *or* Connected (xen-hcd goes
//! straight to Connected): maps `urb-ring-ref` and `conn-ring-ref`, binds `event-channel`, goes
//! to Connected and announces the devices assigned to its ports. Frontend Closing/Closed
//! disconnects it: every request still open is answered (`SHUTDOWN`) before the rings are
//! unmapped, waiting ones at once and those in the controller when it reported their cancel,
//! which is also when their data mappings go; the backend goes Closed and, when the frontend comes back to
//! Initialising, InitWait again. A frontend directory that vanished (domain death) also ends in
//! Closed, and the backend removes its own directory (no toolstack does it for a controller the
//! usbdom tool created). A toolstack close (`online` = 0, backend `state` = Closing) ends in
//! Closed too, and the backend's own directory (which libxl waits for) is removed once the frontend
//! is Closed as well, or after [`REMOVE_GRACE_NS`] ([`Backend::tick`]): libxl first reads
//! `state` = Closed and takes a vanished node for an error. A frontend that breaks the ring
//! protocol is disconnected alone (Closing).
//!
//! # Port assignment
//! `port/N` holds a physical port path ([`PortPath`], e.g. `1-3` or `1-3.2`); writing it attaches
//! that physical device to virtual port N, clearing it detaches it. A device is exported on at most
//! one frontend port: a second claim is refused (logged) until the first is cleared. Physical
//! devices are published under `data/usbdom/devices/<node>/{path,vid-pid,speed,product,assigned}`
//! of usbdom's home for the dom0 tool.
//!
//! A device that a connected frontend lets go (its port cleared, the frontend closed or its domain
//! destroyed) is reset and enumerated afresh before any frontend sees it again
//! ([`Backend::take_due_resets`], done by [`Backend::poll_bus`]): the next guest must not inherit
//! what the last one left in it, e.g. a mass-storage command cut off by `xl destroy` mid-read.
//! A guest's own port reset never reaches the backend (xen-hcd emulates the root hub), so this is
//! the only reset a device gets between guests.
//!
//! # Wiring into the kernel (Xen PV)
//! - `H`: the domain's `xenidc::xen::XenHypervisor`. The kernel shares it (`Rc<RefCell<Ctx>>`), so
//!   it passes a [`SharedHv`] (`SharedHv::new(ctx.clone(), |c| &c.hv, |c| &mut c.hv, xs_page_view,
//!   store_port)`), which borrows the shared one per call. The backend never holds a borrow across
//!   calls; the kernel must not hold one while calling the backend.
//! - `S`: a [`Store`] over the kernel's xenstore connection (`read`/`write`/`mkdir`/`rm`/
//!   `directory`/`watch`/`unwatch`; `take_events` may return nothing when the kernel takes the
//!   events itself and passes the backend's to [`Backend::handle_events`]).
//! - One backend per usbdom, over one controller (`Config::controller` = 1; `zero_copy` = true on
//!   PV with an IOMMU). Every backend instance watches all of `backend/vusb`, so two instances
//!   would both serve each frontend: exporting a second controller needs one backend driving
//!   several controllers (not done).
//! - Loop: xenstore events → `handle_events` (tokens [`Backend::owns_token`]); [`Backend::tick`]
//!   when the time it asked for has come; [`Backend::process_rings`] once per round (if it returns
//!   true, a ring had more than one round's budget: don't block this round — looping on it instead
//!   would let a frontend that keeps its ring full starve everything else); [`Backend::poll_bus`]
//!   (completions, root port changes); now and then `bus.poll_hubs()` →
//!   [`Backend::handle_bus_events`]; then block on all ports (xenstore, controller interrupt via
//!   `XenHypervisor::watch_port`, the ports the backend bound through the hypervisor) with a short
//!   timeout as the polling fallback. At start: [`Backend::start`], then `bus.scan()` →
//!   [`Backend::handle_bus_events`].
//!
//! # Limits
//! Isochronous transfers are refused (`USBIF_STATUS_INVAL`); SuperSpeed devices are shown as
//! high speed ([`superspeed`]); a high-speed device is not shown on a `usb-ver` 1 controller; the
//! guest can select only the configuration the USB core read (normally the only one); a device is
//! exported on one frontend port at a time.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod link;
pub mod path;
pub mod ratelimit;
pub mod shared;
pub mod shared_ring;
pub mod store;
pub mod superspeed;
pub mod urb;

#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use hal::{Clock, DmaAlloc};
use usb_core::descriptor::Configuration;
use usb_core::enumerate::{Bus, BusEvent};
use usb_core::hc::{Completion, DeviceId, HcEvent, HostController, Speed, TransferId};
use usb_core::registry::Registry;
use usb_core::registry::UsbDevice;
use xenidc::abi::usbif::{UsbifSpeed, MAX_PORTNR, MAX_SEGMENTS_PER_REQUEST};
use xenidc::abi::{DomId, GrantRef, Port};
use xenidc::channel::Connection;
use xenidc::hypervisor::Hypervisor;
use xenidc::xenstore::WatchEvent;

pub use link::{LinkStats, VPort};
pub use path::PortPath;
pub use shared::SharedHv;
pub use store::{ClientStore, Store, StoreError};

use link::{Env, Link};
use ratelimit::RateLimit;
use shared_ring::SharedPortRing;

/// Xenbus device states (`io/xenbus.h`): xenidc's type, re-exported for the backend's users.
pub use xenidc::xenbus::XenbusState;

/// Backend configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// This controller's number in port paths (`<controller>-<port>`), from 1.
    pub controller: u8,
    /// Move data by grant-mapping the frontend's pages for DMA (true) or by grant copy through
    /// bounce pages reserved per connection (false).
    pub zero_copy: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            controller: 1,
            zero_copy: true,
        }
    }
}

/// A physical device the backend can export.
#[derive(Debug, Clone)]
pub struct PhysDevice {
    pub path: PortPath,
    /// The controller's handle.
    pub device: DeviceId,
    pub speed: Speed,
    pub vendor: u16,
    pub product_id: u16,
    pub product: Option<String>,
    /// The active configuration as the USB core read it (the one the guest can select).
    pub config: Option<Configuration>,
}

impl PhysDevice {
    /// From the USB core's registry entry.
    pub fn from_usb_device(controller: u8, d: &UsbDevice) -> Self {
        PhysDevice {
            path: PortPath::new(controller, d.route()),
            device: d.id,
            speed: d.info.speed,
            vendor: d.descriptor.vendor,
            product_id: d.descriptor.product,
            product: d.product.clone(),
            config: d.config.clone(),
        }
    }
}

/// Errors of the backend (its own xenstore connection failing; peer errors never surface here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    Xenstore(StoreError),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Xenstore(e) => write!(f, "xenstore: {e}"),
        }
    }
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        BackendError::Xenstore(e)
    }
}

type Key = (u16, u32);

const WATCH_TOKEN: &str = "vusb";
const DEVICES_DIR: &str = "data/usbdom/devices";
/// How long a closed device's directory stays after a toolstack close (see [`Backend::tick`]).
pub const REMOVE_GRACE_NS: u64 = 2_000_000_000;
/// A device is reset at most this often (a frontend that connects and disconnects in a loop
/// must not keep the controller busy enumerating; the device just stays unannounced meanwhile).
pub const RESET_MIN_INTERVAL_NS: u64 = 1_000_000_000;
/// Requests taken off one ring per call before the others get their turn.
const RING_BUDGET: usize = 64;

/// One virtual controller (`backend/vusb/<feid>/<devid>`).
struct Vusb<H: Hypervisor> {
    be: String,
    fe: String,
    token: String,
    num_ports: u8,
    usb_ver: u32,
    state: XenbusState,
    ports: Vec<VPort>,
    link: Option<Link<H>>,
}

/// What the backend knows about one frontend device (for tests and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendInfo {
    pub frontend: u16,
    pub devid: u32,
    pub state: XenbusState,
    pub num_ports: u8,
    pub connected: bool,
    pub in_flight: usize,
    pub assigned: Vec<(u8, PortPath)>,
}

/// Counters of the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connects: u64,
    pub disconnects: u64,
    pub protocol_failures: u64,
    pub links: LinkStats,
}

/// The PVUSB backend. See the [crate documentation](crate).
pub struct Backend<H: Hypervisor, S: Store> {
    hv: H,
    xs: S,
    cfg: Config,
    devices: BTreeMap<PortPath, PhysDevice>,
    claims: BTreeMap<PortPath, (Key, u8)>,
    vusbs: BTreeMap<Key, Vusb<H>>,
    /// Links torn down while the controller still had their transfers.
    zombies: BTreeMap<u64, Link<H>>,
    owners: BTreeMap<TransferId, u64>,
    /// Devices closed by the toolstack whose directory goes at the given time.
    removals: BTreeMap<Key, u64>,
    /// Devices a frontend let go, to be reset before anyone sees them again (see
    /// [`Backend::take_due_resets`]).
    resets: BTreeSet<PortPath>,
    /// When each device was last handed out for a reset.
    last_reset: BTreeMap<PortPath, u64>,
    /// Of `resets`, those a guest asked for by re-enumerating its device: the frontend keeps
    /// the device (no disconnect on its conn ring) while it is reset.
    guest_resets: BTreeSet<PortPath>,
    /// The guest reset being carried out (its `Detached` is not shown to the frontend).
    quiet_reset: Option<PortPath>,
    next_gen: u64,
    limit: RateLimit,
    stats: Stats,
    /// Frontends with answers not yet published ([`Backend::answer`], [`Backend::publish`]).
    unpublished: Vec<Key>,
}

fn parse_dec(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn speed_name(s: Speed) -> &'static str {
    match s {
        Speed::Low => "low",
        Speed::Full => "full",
        Speed::High => "high",
        Speed::Super => "super",
    }
}

impl<H: Hypervisor, S: Store> Backend<H, S> {
    /// A backend over hypervisor `hv` and xenstore access `xs`.
    pub fn new(hv: H, xs: S, cfg: Config) -> Self {
        Backend {
            hv,
            xs,
            cfg,
            devices: BTreeMap::new(),
            claims: BTreeMap::new(),
            vusbs: BTreeMap::new(),
            zombies: BTreeMap::new(),
            owners: BTreeMap::new(),
            removals: BTreeMap::new(),
            resets: BTreeSet::new(),
            last_reset: BTreeMap::new(),
            guest_resets: BTreeSet::new(),
            quiet_reset: None,
            next_gen: 1,
            limit: RateLimit::new(20, 1_000_000_000),
            stats: Stats::default(),
            unpublished: Vec::new(),
        }
    }

    pub fn hv(&self) -> &H {
        &self.hv
    }
    pub fn hv_mut(&mut self) -> &mut H {
        &mut self.hv
    }
    pub fn xenstore(&mut self) -> &mut S {
        &mut self.xs
    }
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        for v in self.vusbs.values() {
            if let Some(l) = &v.link {
                add(&mut s.links, &l.stats);
            }
        }
        s
    }
    /// The last forwarded transfers of each connected frontend ([`link::UrbTrace`]), oldest
    /// first per frontend.
    pub fn recent_urbs(&self) -> Vec<(DomId, link::UrbTrace)> {
        self.vusbs
            .values()
            .filter_map(|v| v.link.as_ref())
            .flat_map(|l| l.recent().map(move |t| (l.peer(), *t)))
            .collect()
    }

    /// Links being torn down that wait for the controller to report cancelled transfers.
    pub fn draining(&self) -> usize {
        self.zombies.len()
    }
    /// The physical devices known.
    pub fn devices(&self) -> impl Iterator<Item = &PhysDevice> {
        self.devices.values()
    }

    /// The frontends known.
    pub fn frontends(&self) -> Vec<FrontendInfo> {
        self.vusbs
            .iter()
            .map(|(k, v)| FrontendInfo {
                frontend: k.0,
                devid: k.1,
                state: v.state,
                num_ports: v.num_ports,
                connected: v.link.is_some(),
                in_flight: v.link.as_ref().map_or(0, |l| l.in_flight()),
                assigned: v
                    .ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.assigned.map(|a| (i as u8 + 1, a)))
                    .collect(),
            })
            .collect()
    }

    // --- xenstore helpers ----------------------------------------------------------------------

    fn xs_read(&mut self, path: &str) -> Result<Option<String>, BackendError> {
        match self.xs.read(path) {
            Ok(v) => Ok(v),
            // Refused (e.g. a dead frontend's directory): as good as absent.
            Err(StoreError::Refused(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn xs_write(&mut self, path: &str, value: &str) -> Result<(), BackendError> {
        match self.xs.write(path, value) {
            Err(StoreError::Refused(e)) => {
                log::warn!("writing {path}: {e}");
                Ok(())
            }
            r => Ok(r?),
        }
    }

    fn xs_rm(&mut self, path: &str) -> Result<(), BackendError> {
        match self.xs.rm(path) {
            Err(StoreError::Refused(_)) => Ok(()),
            r => Ok(r?),
        }
    }

    fn xs_dir(&mut self, path: &str) -> Result<Vec<String>, BackendError> {
        match self.xs.directory(path) {
            Err(StoreError::Refused(_)) => Ok(Vec::new()),
            r => Ok(r?),
        }
    }

    fn set_state(&mut self, key: Key, s: XenbusState) -> Result<(), BackendError> {
        let Some(v) = self.vusbs.get_mut(&key) else {
            return Ok(());
        };
        if v.state == s {
            return Ok(());
        }
        v.state = s;
        let path = format!("{}/state", v.be);
        log::info!("vusb {}/{}: state {}", key.0, key.1, s.0);
        self.xs_write(&path, &s.0.to_string())
    }

    // --- start and xenstore events ---------------------------------------------------------------

    /// Watch `backend/vusb` and publish the device list directory.
    pub fn start(&mut self) -> Result<(), BackendError> {
        self.xs_rm(DEVICES_DIR)?;
        self.xs.mkdir(DEVICES_DIR)?;
        self.xs.watch("backend/vusb", WATCH_TOKEN)?;
        Ok(())
    }

    /// Whether a watch event with `token` is the backend's (for an owner that shares its
    /// xenstore connection and dispatches events itself).
    pub fn owns_token(&self, token: &str) -> bool {
        token == WATCH_TOKEN || self.vusbs.values().any(|v| v.token == token)
    }

    /// Take the xenstore events from the backend's [`Store`] and handle them.
    pub fn process_xenstore<C: HostController>(&mut self, hc: &mut C) -> Result<(), BackendError> {
        let (events, lost) = self.xs.take_events()?;
        self.handle_events(hc, &events, lost)
    }

    /// Handle watch events (those whose token [`Backend::owns_token`]); `lost`: some events
    /// were lost, rescan everything.
    pub fn handle_events<C: HostController>(
        &mut self,
        hc: &mut C,
        events: &[WatchEvent],
        lost: bool,
    ) -> Result<(), BackendError> {
        let mut keys: Vec<Key> = Vec::new();
        let mut rescan = lost;
        for ev in events {
            if ev.token == WATCH_TOKEN {
                let rest = ev
                    .path
                    .strip_prefix("backend/vusb")
                    .or_else(|| ev.path.split_once("/backend/vusb").map(|(_, r)| r))
                    .unwrap_or("");
                let mut it = rest.trim_start_matches('/').split('/');
                match (it.next().and_then(parse_dec), it.next().and_then(parse_dec)) {
                    (Some(fe), Some(dev)) if fe <= u16::MAX as u32 => keys.push((fe as u16, dev)),
                    _ => rescan = true,
                }
            } else if let Some(k) = self
                .vusbs
                .iter()
                .find(|(_, v)| v.token == ev.token)
                .map(|(k, _)| *k)
            {
                keys.push(k);
            }
        }
        if rescan {
            keys.extend(self.scan_keys()?);
            keys.extend(self.vusbs.keys().copied());
        }
        keys.sort();
        keys.dedup();
        for k in keys {
            self.refresh(hc, k)?;
        }
        Ok(())
    }

    fn scan_keys(&mut self) -> Result<Vec<Key>, BackendError> {
        let mut out = Vec::new();
        for fe in self.xs_dir("backend/vusb")? {
            let Some(feid) = parse_dec(&fe).filter(|&f| f <= u16::MAX as u32) else {
                continue;
            };
            for d in self.xs_dir(&format!("backend/vusb/{fe}"))? {
                if let Some(devid) = parse_dec(&d) {
                    out.push((feid as u16, devid));
                }
            }
        }
        Ok(out)
    }

    /// Re-read everything about `key` and act on it.
    fn refresh<C: HostController>(&mut self, hc: &mut C, key: Key) -> Result<(), BackendError> {
        let be = format!("backend/vusb/{}/{}", key.0, key.1);
        let frontend = self.xs_read(&format!("{be}/frontend"))?;
        let Some(frontend) = frontend else {
            // The directory is gone (toolstack removed it, or we did).
            if self.vusbs.contains_key(&key) {
                self.remove(hc, key)?;
            }
            return Ok(());
        };
        if !self.vusbs.contains_key(&key) && !self.create(key, &be, &frontend)? {
            return Ok(());
        }
        let fe = self.vusbs[&key].fe.clone();
        let online = self.xs_read(&format!("{be}/online"))?;
        let be_state = self
            .xs_read(&format!("{be}/state"))?
            .and_then(|s| parse_dec(&s))
            .map(XenbusState);
        // Absent: the frontend is gone. Present but not a number: a protocol error (below).
        let fe_state = self
            .xs_read(&format!("{fe}/state"))?
            .map(|s| XenbusState(parse_dec(&s).unwrap_or(u32::MAX)));
        let ours = self.vusbs[&key].state;
        let toolstack_close = be_state == Some(XenbusState::CLOSING)
            && ours != XenbusState::CLOSING
            && ours != XenbusState::CLOSED;
        if toolstack_close || online.as_deref() == Some("0") {
            if ours != XenbusState::CLOSED {
                self.disconnect(hc, key);
                self.vusbs.get_mut(&key).unwrap().state = XenbusState::CLOSING;
                self.set_state(key, XenbusState::CLOSED)?;
            }
        } else {
            match fe_state {
                None => {
                    // The frontend device is gone: its domain died (xenstored removed its home)
                    // or the toolstack removed it. libxl and the usbdom tool create the frontend
                    // directory before (or with) the backend one, so this is never "not yet".
                    // Nobody else will clean up after a frontend created by the usbdom tool:
                    // close and remove our directory now (libxl, if it manages the device,
                    // waits for exactly that).
                    self.disconnect(hc, key);
                    self.set_state(key, XenbusState::CLOSED)?;
                    log::info!("vusb {}/{}: frontend gone", key.0, key.1);
                    self.remove(hc, key)?;
                    self.xs_rm(&be)?;
                    return Ok(());
                }
                Some(XenbusState::CLOSED)
                | Some(XenbusState::CLOSING)
                | Some(XenbusState::UNKNOWN) => {
                    if ours == XenbusState::CONNECTED || self.vusbs[&key].link.is_some() {
                        self.disconnect(hc, key);
                        self.set_state(key, XenbusState::CLOSING)?;
                    }
                    self.set_state(key, XenbusState::CLOSED)?;
                }
                Some(XenbusState::INITIALISING) => {
                    if ours == XenbusState::CLOSED || ours == XenbusState::CLOSING {
                        // The frontend starts over (reconnect).
                        self.set_state(key, XenbusState::INIT_WAIT)?;
                    }
                }
                Some(XenbusState::INITIALISED) | Some(XenbusState::CONNECTED) => {
                    if ours == XenbusState::INIT_WAIT && self.vusbs[&key].link.is_none() {
                        self.connect(hc, key)?;
                    }
                }
                Some(other) => {
                    // Reconfiguring/Reconfigured (unused by usbif) or garbage: the frontend
                    // broke the protocol; close its connection.
                    if self.vusbs[&key].link.is_some() || ours == XenbusState::CONNECTED {
                        if self.limit.allow(self.hv.now_ns()).is_some() {
                            log::warn!(
                                "vusb {}/{}: frontend state {}: closing",
                                key.0,
                                key.1,
                                other.0
                            );
                        }
                        self.stats.protocol_failures += 1;
                        self.disconnect(hc, key);
                        self.set_state(key, XenbusState::CLOSING)?;
                    }
                }
            }
        }
        if self
            .vusbs
            .get(&key)
            .is_some_and(|v| v.state == XenbusState::CLOSED)
            && online.as_deref() != Some("1")
        {
            // Toolstack teardown: libxl waits for the backend directory to disappear, but first
            // reads `state` = Closed (a vanished node there is an error to it). So the directory
            // goes once the frontend has closed too, or after a grace period ([`Backend::tick`]).
            if matches!(fe_state, Some(XenbusState::CLOSED)) {
                self.remove(hc, key)?;
                self.xs_rm(&be)?;
                return Ok(());
            }
            let due = self.hv.now_ns().saturating_add(REMOVE_GRACE_NS);
            self.removals.entry(key).or_insert(due);
            return Ok(());
        }
        self.refresh_ports(hc, key)
    }

    /// Timed work: directories of closed devices whose grace period is over are removed. Call it
    /// from the event loop now and then (every second is plenty). Returns the earliest time it
    /// wants to be called again, if any.
    pub fn tick<C: HostController>(&mut self, hc: &mut C) -> Result<Option<u64>, BackendError> {
        let now = self.hv.now_ns();
        let due: Vec<Key> = self
            .removals
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            self.removals.remove(&key);
            let be = format!("backend/vusb/{}/{}", key.0, key.1);
            self.remove(hc, key)?;
            self.xs_rm(&be)?;
        }
        Ok(self.removals.values().min().copied())
    }

    /// A new `backend/vusb/<feid>/<devid>`: validate it and go to InitWait.
    fn create(&mut self, key: Key, be: &str, frontend: &str) -> Result<bool, BackendError> {
        let expect = format!("/local/domain/{}/device/vusb/{}", key.0, key.1);
        let num_ports = self
            .xs_read(&format!("{be}/num-ports"))?
            .and_then(|s| parse_dec(&s));
        let usb_ver = self
            .xs_read(&format!("{be}/usb-ver"))?
            .and_then(|s| parse_dec(&s));
        let valid = frontend == expect
            && matches!(num_ports, Some(n) if (1..=MAX_PORTNR).contains(&n))
            && matches!(usb_ver, Some(1 | 2));
        if !valid {
            if self.limit.allow(self.hv.now_ns()).is_some() {
                log::warn!(
                    "{be}: invalid (frontend {frontend:?}, num-ports {num_ports:?}, usb-ver {usb_ver:?}); not served"
                );
            }
            // Closed, written once: our own write fires our watch again.
            let st = format!("{be}/state");
            if self.xs_read(&st)?.as_deref() != Some("6") {
                self.xs_write(&st, "6")?;
            }
            return Ok(false);
        }
        let num_ports = num_ports.unwrap() as u8;
        let token = format!("fe/{}/{}", key.0, key.1);
        self.xs.watch(&format!("{expect}/state"), &token)?;
        self.vusbs.insert(
            key,
            Vusb {
                be: be.to_string(),
                fe: expect,
                token,
                num_ports,
                usb_ver: usb_ver.unwrap(),
                state: XenbusState::INITIALISING,
                ports: (0..num_ports).map(|_| VPort::default()).collect(),
                link: None,
            },
        );
        log::info!(
            "vusb {}/{}: {num_ports} ports, usb-ver {}",
            key.0,
            key.1,
            usb_ver.unwrap()
        );
        self.set_state(key, XenbusState::INIT_WAIT)?;
        Ok(true)
    }

    fn connect<C: HostController>(&mut self, hc: &mut C, key: Key) -> Result<(), BackendError> {
        let fe = self.vusbs[&key].fe.clone();
        let urb_ref = self
            .xs_read(&format!("{fe}/urb-ring-ref"))?
            .and_then(|s| parse_dec(&s));
        let conn_ref = self
            .xs_read(&format!("{fe}/conn-ring-ref"))?
            .and_then(|s| parse_dec(&s));
        let evtchn = self
            .xs_read(&format!("{fe}/event-channel"))?
            .and_then(|s| parse_dec(&s));
        let (Some(urb_ref), Some(conn_ref), Some(evtchn)) = (urb_ref, conn_ref, evtchn) else {
            if self.limit.allow(self.hv.now_ns()).is_some() {
                log::warn!(
                    "vusb {}/{}: ring references missing or malformed",
                    key.0,
                    key.1
                );
            }
            return self.set_state(key, XenbusState::CLOSING);
        };
        let peer = DomId(key.0);
        let bounce = if self.cfg.zero_copy {
            0
        } else {
            MAX_SEGMENTS_PER_REQUEST
        };
        let urb = match Connection::connect(
            &mut self.hv,
            peer,
            GrantRef(urb_ref),
            Port(evtchn),
            MAX_SEGMENTS_PER_REQUEST,
            bounce,
        ) {
            Ok(c) => c,
            Err(e) => {
                if self.limit.allow(self.hv.now_ns()).is_some() {
                    log::warn!("vusb {}/{}: urb ring: {e}", key.0, key.1);
                }
                return self.set_state(key, XenbusState::CLOSING);
            }
        };
        let conn = match SharedPortRing::connect(&mut self.hv, peer, GrantRef(conn_ref)) {
            Ok(c) => c,
            Err(e) => {
                let _ = urb.teardown(&mut self.hv);
                if self.limit.allow(self.hv.now_ns()).is_some() {
                    log::warn!("vusb {}/{}: conn ring: {e}", key.0, key.1);
                }
                return self.set_state(key, XenbusState::CLOSING);
            }
        };
        let gen = self.next_gen;
        self.next_gen += 1;
        let v = self.vusbs.get_mut(&key).unwrap();
        let mut link = Link::new(gen, peer, v.num_ports, urb, conn);
        for p in v.ports.iter_mut() {
            p.last_queued = 0;
            p.reset_guest_state();
        }
        for i in 0..v.ports.len() {
            if let Some(path) = v.ports[i].assigned {
                if let Some(d) = announceable(&self.devices, &self.resets, path) {
                    link.queue_conn(&mut v.ports, i as u8 + 1, visible_speed(v.usb_ver, d));
                }
            }
        }
        v.link = Some(link);
        self.stats.connects += 1;
        log::info!("vusb {}/{}: connected", key.0, key.1);
        self.set_state(key, XenbusState::CONNECTED)?;
        self.refresh_ports(hc, key)?;
        self.service(hc, key);
        Ok(())
    }

    /// Drop the connection of `key` (if any). Every open request is answered (`SHUTDOWN`):
    /// waiting ones now, transfers in the controller once it reported their cancel; the link is
    /// torn down now or, if the controller still has transfers of it, once it reported them.
    fn disconnect<C: HostController>(&mut self, hc: &mut C, key: Key) {
        let Some(v) = self.vusbs.get_mut(&key) else {
            return;
        };
        let Some(mut link) = v.link.take() else {
            return;
        };
        for p in v.ports.iter_mut() {
            p.last_queued = 0;
            p.reset_guest_state();
            if let Some(path) = p.assigned {
                if self.devices.contains_key(&path) {
                    self.resets.insert(path);
                }
            }
        }
        self.stats.disconnects += 1;
        add(&mut self.stats.links, &link.stats);
        let outstanding = link.abort(&mut self.hv, hc);
        log::info!(
            "vusb {}/{}: disconnected ({outstanding} transfers to drain)",
            key.0,
            key.1
        );
        if outstanding == 0 {
            link.teardown(&mut self.hv);
        } else {
            self.zombies.insert(link.gen, link);
        }
    }

    /// Forget `key` entirely (its directory is gone).
    fn remove<C: HostController>(&mut self, hc: &mut C, key: Key) -> Result<(), BackendError> {
        self.removals.remove(&key);
        self.disconnect(hc, key);
        let Some(v) = self.vusbs.remove(&key) else {
            return Ok(());
        };
        for (i, p) in v.ports.iter().enumerate() {
            if let Some(path) = p.assigned {
                if self.claims.get(&path) == Some(&(key, i as u8 + 1)) {
                    self.claims.remove(&path);
                    self.publish_assigned(path)?;
                }
            }
        }
        let _ = self.xs.unwatch(&format!("{}/state", v.fe), &v.token);
        log::info!("vusb {}/{}: removed", key.0, key.1);
        Ok(())
    }

    /// Apply `port/N` of `key`.
    fn refresh_ports<C: HostController>(
        &mut self,
        hc: &mut C,
        key: Key,
    ) -> Result<(), BackendError> {
        let Some(v) = self.vusbs.get(&key) else {
            return Ok(());
        };
        let be = v.be.clone();
        let n = v.num_ports;
        for port in 1..=n {
            let raw = self.xs_read(&format!("{be}/port/{port}"))?;
            let want = match raw.as_deref() {
                None | Some("") => None,
                Some(s) => match PortPath::parse(s) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        if self.limit.allow(self.hv.now_ns()).is_some() {
                            log::warn!("{be}/port/{port} = {s:?}: {e}");
                        }
                        None
                    }
                },
            };
            let current = self.vusbs[&key].ports[port as usize - 1].assigned;
            if want == current {
                continue;
            }
            if let Some(old) = current {
                self.unassign(hc, key, port, old)?;
            }
            if let Some(new) = want {
                if let Some((other, op)) = self.claims.get(&new) {
                    if self.limit.allow(self.hv.now_ns()).is_some() {
                        log::warn!(
                            "{be}/port/{port}: {new} is already exported to {}/{} port {op}",
                            other.0,
                            other.1
                        );
                    }
                    continue;
                }
                self.claims.insert(new, (key, port));
                let v = self.vusbs.get_mut(&key).unwrap();
                v.ports[port as usize - 1].assigned = Some(new);
                v.ports[port as usize - 1].reset_guest_state();
                let d = announceable(&self.devices, &self.resets, new);
                if let (Some(link), Some(d)) = (v.link.as_mut(), d) {
                    link.queue_conn(&mut v.ports, port, visible_speed(v.usb_ver, d));
                }
                log::info!("vusb {}/{} port {port}: {new}", key.0, key.1);
                self.publish_assigned(new)?;
            }
        }
        self.service(hc, key);
        Ok(())
    }

    fn unassign<C: HostController>(
        &mut self,
        hc: &mut C,
        key: Key,
        port: u8,
        old: PortPath,
    ) -> Result<(), BackendError> {
        self.port_gone(hc, key, port);
        if let Some(v) = self.vusbs.get_mut(&key) {
            v.ports[port as usize - 1].assigned = None;
            if v.link.is_some() && self.devices.contains_key(&old) {
                self.resets.insert(old);
            }
        }
        if self.claims.get(&old) == Some(&(key, port)) {
            self.claims.remove(&old);
        }
        log::info!("vusb {}/{} port {port}: {old} detached", key.0, key.1);
        self.publish_assigned(old)
    }

    /// The device on `key`'s port went away (unplugged or unassigned).
    fn port_gone<C: HostController>(&mut self, hc: &mut C, key: Key, port: u8) {
        let Some(v) = self.vusbs.get_mut(&key) else {
            return;
        };
        if let Some(link) = v.link.as_mut() {
            let mut env = Env {
                hv: &mut self.hv,
                hc,
                devices: &self.devices,
                owners: &mut self.owners,
                limit: &mut self.limit,
                zero_copy: self.cfg.zero_copy,
            };
            link.port_gone(&mut env, &mut v.ports, port);
            link.queue_conn(&mut v.ports, port, UsbifSpeed::NONE);
        } else {
            v.ports[port as usize - 1].reset_guest_state();
        }
    }

    fn publish_assigned(&mut self, path: PortPath) -> Result<(), BackendError> {
        if !self.devices.contains_key(&path) {
            return Ok(());
        }
        let value = match self.claims.get(&path) {
            Some(((fe, dev), port)) => format!("{fe}/{dev}/{port}"),
            None => String::new(),
        };
        self.xs_write(
            &format!("{DEVICES_DIR}/{}/assigned", path.node_name()),
            &value,
        )
    }

    // --- physical devices ------------------------------------------------------------------------

    /// A device was enumerated on the controller: publish it, and announce it to the frontend
    /// whose port it is assigned to.
    pub fn device_attached<C: HostController>(
        &mut self,
        hc: &mut C,
        dev: PhysDevice,
    ) -> Result<(), BackendError> {
        let path = dev.path;
        if self.devices.contains_key(&path) {
            self.device_detached(hc, path)?;
        }
        let node = format!("{DEVICES_DIR}/{}", path.node_name());
        let speed = dev.speed;
        let product = dev.product.clone().unwrap_or_default();
        let vidpid = format!("{:04x}:{:04x}", dev.vendor, dev.product_id);
        self.devices.insert(path, dev);
        log::info!(
            "device {path} ({vidpid}, {} speed) available",
            speed_name(speed)
        );
        self.xs_write(&format!("{node}/path"), &path.to_string())?;
        self.xs_write(&format!("{node}/vid-pid"), &vidpid)?;
        self.xs_write(&format!("{node}/speed"), speed_name(speed))?;
        self.xs_write(&format!("{node}/product"), &sanitize(&product))?;
        self.publish_assigned(path)?;
        if let Some(&(key, port)) = self.claims.get(&path) {
            if let Some(v) = self.vusbs.get_mut(&key) {
                v.ports[port as usize - 1].reset_guest_state();
                if let (Some(link), Some(d)) = (v.link.as_mut(), self.devices.get(&path)) {
                    link.queue_conn(&mut v.ports, port, visible_speed(v.usb_ver, d));
                }
            }
            self.service(hc, key);
        }
        Ok(())
    }

    /// A device went away: its frontend port sees a disconnect, its transfers in flight complete
    /// with an error.
    pub fn device_detached<C: HostController>(
        &mut self,
        hc: &mut C,
        path: PortPath,
    ) -> Result<(), BackendError> {
        // Whatever comes back on this path is enumerated afresh: no reset owed.
        self.resets.remove(&path);
        if self.devices.remove(&path).is_none() {
            return Ok(());
        }
        log::info!("device {path} gone");
        if self.quiet_reset == Some(path) {
            // Reset for its guest, which keeps the port: what the controller still had of it
            // completes with an error; the requests waiting for the reset run once it is back.
            return self.xs_rm(&format!("{DEVICES_DIR}/{}", path.node_name()));
        }
        if let Some(&(key, port)) = self.claims.get(&path) {
            self.port_gone(hc, key, port);
            self.service(hc, key);
        }
        self.xs_rm(&format!("{DEVICES_DIR}/{}", path.node_name()))
    }

    /// Apply what the USB core's enumeration reported: devices (not hubs: a hub cannot be
    /// exported, `usbif` has no hubs) become exportable, removed ones are detached.
    pub fn handle_bus_events<C: HostController>(
        &mut self,
        hc: &mut C,
        registry: &Registry,
        events: &[BusEvent],
    ) -> Result<(), BackendError> {
        for ev in events {
            match ev {
                BusEvent::Attached(id) => {
                    if let Some(d) = registry.get(*id) {
                        if d.hub.is_none() {
                            self.device_attached(
                                hc,
                                PhysDevice::from_usb_device(self.cfg.controller, d),
                            )?;
                        }
                    }
                }
                BusEvent::Detached(_, route) => {
                    self.device_detached(hc, PortPath::new(self.cfg.controller, *route))?;
                }
                BusEvent::Failed(route, e) => {
                    log::warn!("device at {}-{route} not usable: {e}", self.cfg.controller);
                }
            }
        }
        Ok(())
    }

    /// Devices to reset now: each was exported to a frontend that let it go (its port was
    /// cleared, or the frontend disconnected or vanished), so it may be in any state that guest
    /// left it in (a half-done mass-storage command after `xl destroy` in the middle of a read,
    /// an alternate setting, a halted endpoint). Until the owner resets it and reports the
    /// result through [`Backend::handle_bus_events`] (a `Detached` then an `Attached` on the same
    /// path; usb-core's `Bus::reset_device` does both), the device is not announced to any
    /// frontend. A device is handed out at most once per [`RESET_MIN_INTERVAL_NS`]; one that is
    /// not reported back is handed out again after that. [`Backend::poll_bus`] does all this.
    pub fn take_due_resets(&mut self) -> Vec<(PortPath, DeviceId)> {
        let now = self.hv.now_ns();
        let mut due = Vec::new();
        let pending: Vec<PortPath> = self.resets.iter().copied().collect();
        for path in pending {
            let Some(d) = self.devices.get(&path) else {
                self.resets.remove(&path);
                continue;
            };
            if let Some(&t) = self.last_reset.get(&path) {
                if now < t.saturating_add(RESET_MIN_INTERVAL_NS) {
                    continue;
                }
            }
            self.last_reset.insert(path, now);
            due.push((path, d.device));
        }
        due
    }

    /// The owner is about to reset `path` (one of [`Backend::take_due_resets`]) and report it
    /// through [`Backend::handle_bus_events`]; [`Backend::end_reset`] follows. Only needed for
    /// a reset a guest asked for: its frontend keeps the device meanwhile. Returns whether it is
    /// such a reset.
    pub fn begin_reset(&mut self, path: PortPath) -> bool {
        let guest = self.guest_resets.remove(&path);
        if guest {
            self.quiet_reset = Some(path);
        }
        guest
    }

    /// The reset of `path` was reported. If the device did not come back, its frontend now sees
    /// it go (what `device_detached` held back for a guest's reset).
    pub fn end_reset<C: HostController>(&mut self, hc: &mut C, path: PortPath) {
        if self.quiet_reset.take() != Some(path) {
            return;
        }
        if self.devices.contains_key(&path) {
            return;
        }
        if let Some(&(key, port)) = self.claims.get(&path) {
            self.port_gone(hc, key, port);
            self.service(hc, key);
        }
    }

    /// Devices waiting for their reset (not announced to any frontend meanwhile).
    pub fn resets_pending(&self) -> impl Iterator<Item = &PortPath> {
        self.resets.iter()
    }

    /// One round of the controller side for an owner that drives a usb-core [`Bus`]: completions
    /// go to the frontends, port changes are enumerated by the bus and applied. Returns whether
    /// anything happened.
    pub fn poll_bus<C: HostController, D: DmaAlloc, K: Clock>(
        &mut self,
        bus: &mut Bus<C, D, K>,
    ) -> Result<bool, BackendError> {
        let mut any = false;
        for (path, id) in self.take_due_resets() {
            any = true;
            if self.begin_reset(path) {
                log::info!("device {path}: reset, as its guest asked");
            } else {
                log::info!("device {path}: reset before it is exported again");
            }
            let evs = bus.reset_device(id);
            let r = self.handle_bus_events(&mut bus.hc, &bus.registry, &evs);
            self.end_reset(&mut bus.hc, path);
            r?;
            if !self.devices.contains_key(&path) {
                log::warn!("device {path} did not come back after its reset");
            }
        }
        // Every completion the controller has is answered first; each frontend that got one is
        // served once afterwards (its responses published with at most one notification, its
        // new requests taken), not once per completion.
        while let Some(ev) = bus.poll() {
            any = true;
            match ev {
                HcEvent::Transfer(c) => {
                    if !self.answer(&mut bus.hc, &c) {
                        log::debug!("completion {:?} is not the backend's", c.id);
                    }
                }
                HcEvent::PortChange(port) => {
                    let evs = bus.handle_root_port(port);
                    self.handle_bus_events(&mut bus.hc, &bus.registry, &evs)?;
                }
                HcEvent::ControllerDead => {
                    log::error!("controller {} stopped working", self.cfg.controller);
                }
            }
        }
        self.publish(&mut bus.hc);
        Ok(any)
    }

    // --- rings and completions ---------------------------------------------------------------------

    /// Serve every connected frontend's rings. Returns true if some ring had more work than one
    /// round allowed (call again).
    pub fn process_rings<C: HostController>(&mut self, hc: &mut C) -> bool {
        let keys: Vec<Key> = self.vusbs.keys().copied().collect();
        let mut more = false;
        for k in keys {
            more |= self.service(hc, k);
        }
        more
    }

    fn service<C: HostController>(&mut self, hc: &mut C, key: Key) -> bool {
        let Some(v) = self.vusbs.get_mut(&key) else {
            return false;
        };
        let Some(link) = v.link.as_mut() else {
            return false;
        };
        let mut env = Env {
            hv: &mut self.hv,
            hc,
            devices: &self.devices,
            owners: &mut self.owners,
            limit: &mut self.limit,
            zero_copy: self.cfg.zero_copy,
        };
        let r = link.service(&mut env, &mut v.ports, RING_BUDGET);
        for p in v.ports.iter() {
            if let (true, Some(path)) = (p.reset_wanted, p.assigned) {
                if self.devices.contains_key(&path) && self.resets.insert(path) {
                    self.guest_resets.insert(path);
                    log::info!("vusb {}/{}: the guest re-enumerates {path}", key.0, key.1);
                }
            }
        }
        match r {
            Ok(more) => more,
            Err(e) => {
                self.stats.protocol_failures += 1;
                log::warn!(
                    "vusb {}/{}: ring failure ({}), disconnecting it",
                    key.0,
                    key.1,
                    e.0
                );
                self.disconnect(hc, key);
                let _ = self.set_state(key, XenbusState::CLOSING);
                false
            }
        }
    }

    /// A controller completion: the request is answered and the frontend's ring served. Returns
    /// false if the transfer is not one of the backend's. (An owner with many completions at once
    /// does better with [`Backend::poll_bus`], which serves each frontend once for all of them.)
    pub fn complete<C: HostController>(&mut self, hc: &mut C, c: &Completion) -> bool {
        let ours = self.answer(hc, c);
        self.publish(hc);
        ours
    }

    /// A controller completion, answered but not published: the response waits on its frontend
    /// until [`Backend::publish`], so that a batch of completions costs each frontend one
    /// publication and at most one notification. Returns false if the transfer is not one of
    /// the backend's.
    pub fn answer<C: HostController>(&mut self, hc: &mut C, c: &Completion) -> bool {
        match self.answer_inner(hc, c) {
            None => false,
            Some(None) => true,
            Some(Some(key)) => {
                if !self.unpublished.contains(&key) {
                    self.unpublished.push(key);
                }
                true
            }
        }
    }

    /// Serve each frontend that [`Backend::answer`] answered since the last call, once: its
    /// responses are published (one notification if it asked for one) and its new requests
    /// taken.
    pub fn publish<C: HostController>(&mut self, hc: &mut C) {
        for key in core::mem::take(&mut self.unpublished) {
            self.service(hc, key);
        }
    }

    /// [`Backend::answer`]: `None` if the transfer is not the backend's, else the frontend to
    /// serve (none for a closed connection's transfer).
    fn answer_inner<C: HostController>(
        &mut self,
        hc: &mut C,
        c: &Completion,
    ) -> Option<Option<Key>> {
        let gen = self.owners.remove(&c.id)?;
        if let Some(z) = self.zombies.get_mut(&gen) {
            if z.complete_aborted(&mut self.hv, c) == 0 {
                let z = self.zombies.remove(&gen).unwrap();
                log::info!(
                    "frontend {}: the last transfer of its closed connection is back; connection released",
                    z.peer().0
                );
                z.teardown(&mut self.hv);
            }
            return Some(None);
        }
        let Some(key) = self
            .vusbs
            .iter()
            .find(|(_, v)| v.link.as_ref().is_some_and(|l| l.gen == gen))
            .map(|(k, _)| *k)
        else {
            return Some(None);
        };
        let v = self.vusbs.get_mut(&key).unwrap();
        let link = v.link.as_mut().unwrap();
        let mut env = Env {
            hv: &mut self.hv,
            hc,
            devices: &self.devices,
            owners: &mut self.owners,
            limit: &mut self.limit,
            zero_copy: self.cfg.zero_copy,
        };
        link.complete(&mut env, &mut v.ports, c);
        Some(Some(key))
    }
}

/// The device at `path`, if a frontend may be told about it: it is there and owes no reset (see
/// [`Backend::take_due_resets`]). A free function so that callers can hold a frontend's entry.
fn announceable<'a>(
    devices: &'a BTreeMap<PortPath, PhysDevice>,
    resets: &BTreeSet<PortPath>,
    path: PortPath,
) -> Option<&'a PhysDevice> {
    devices.get(&path).filter(|_| !resets.contains(&path))
}

/// The speed announced for `d` on a controller of `usb_ver`: a USB 1.1 virtual controller cannot
/// carry a high-speed device (the guest's hub code would drive it as full speed), so such a device
/// is not announced there (logged).
fn visible_speed(usb_ver: u32, d: &PhysDevice) -> UsbifSpeed {
    let s = link::usbif_speed(d.speed);
    if usb_ver == 1 && s == UsbifSpeed::HIGH {
        log::warn!(
            "{} is a {}-speed device: not shown on a USB 1.1 controller (use --version 2)",
            d.path,
            speed_name(d.speed)
        );
        return UsbifSpeed::NONE;
    }
    s
}

fn add(a: &mut LinkStats, b: &LinkStats) {
    a.requests += b.requests;
    a.rejected += b.rejected;
    a.forwarded += b.forwarded;
    a.virtualized += b.virtualized;
    a.unlinks += b.unlinks;
    a.completed += b.completed;
    a.conn_events += b.conn_events;
    a.deferred += b.deferred;
}

/// Product strings come from the device: keep printable ASCII only.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(126)
        .collect()
}
