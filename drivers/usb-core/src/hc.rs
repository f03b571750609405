//! The host-controller trait: what a USB host-controller driver (xHCI, UHCI) offers to the USB core
//! and to the PVUSB backend.
//!
//! # Model
//!
//! * **Data transfers are split-phase** (in the style of Tock's HILs): [`HostController::submit`]
//!   queues a transfer on the hardware and returns a [`TransferId`] at once; the result arrives
//!   later as an [`HcEvent::Transfer`] from [`HostController::poll`], which the owner calls from its
//!   event loop (after an interrupt, or periodically as a polling fallback).  Every accepted
//!   transfer completes exactly once: with its result, with [`HcError::Cancelled`] after
//!   [`HostController::cancel`], with [`HcError::EndpointHalted`] when an earlier transfer on the
//!   same endpoint failed, or with [`HcError::NoDevice`] when the device went away.
//! * **Data memory is not owned by the driver.**  A transfer's buffer is a list of
//!   [`hal::DmaSegment`]s (bus addresses): the PVUSB backend passes grant-mapped frontend pages
//!   or bounce pages, the USB core passes its own DMA buffers.  The caller keeps the memory alive
//!   until the completion is polled.  The driver only owns its own control structures (rings,
//!   contexts, TDs/QHs).
//! * **Control-plane operations** (device slots, addressing, endpoint configuration, halt
//!   recovery, cancel) complete before they return.  They involve the controller (xHCI command
//!   ring, UHCI control transfers to address 0) but are bounded by a driver timeout
//!   ([`HcError::Timeout`]) and never wait for a device that does not answer longer than that.
//!   Transfer completions that arrive meanwhile are queued and returned by the next `poll`.
//! * **Ports** are the root-hub ports, numbered from 1.  Devices behind external hubs are reached
//!   through a [`DeviceInfo`] whose [`Route`] names the path and whose [`TtInfo`] names the
//!   transaction translator (USB 2.0 §11.14) for low/full-speed devices behind a high-speed hub.
//!   Hub ports themselves are driven by class requests through the hub's control endpoint (see
//!   [`crate::hub`]).
//!
//! # Endpoint error rule (the integrity rule of the xenidc design)
//! When a transfer fails, the driver leaves the endpoint *halted*: the failed transfer completes
//! with its error, every transfer queued behind it on that endpoint completes with
//! [`HcError::EndpointHalted`] without having moved data, and new submissions to the endpoint are
//! refused with [`HcError::EndpointHalted`] until [`HostController::clear_halt`] is called.  This
//! keeps the order of transfers on an endpoint intact: a client re-submits the failed ones in
//! order.  (Clearing the halt on the *device* side, `CLEAR_FEATURE(ENDPOINT_HALT)`, is the
//! caller's business, USB 2.0 §9.4.1; control endpoints need none, §8.5.3.4.)  A short IN transfer
//! reported as [`HcError::ShortPacket`] (because of [`TransferFlags::SHORT_NOT_OK`]) does not halt
//! the endpoint: the hardware moves on to the next transfer by itself.
//!
//! # Cancel
//! [`HostController::cancel`] stops the endpoint, removes the transfer and restarts the endpoint
//! at the first transfer still queued.  If that transfer had been started and was cut off by the
//! stop, it is executed again from its beginning (the controllers usbdom drives report no partial
//! progress of a stopped transfer that could be resumed safely).
//!
//! How xHCI and UHCI map onto this: xHCI 1.2 §4.3 (device slot initialisation: Enable Slot,
//! Address Device), §4.6.6 (Configure Endpoint), §4.6.8 / §4.6.9 / §4.6.10 (Reset Endpoint, Stop
//! Endpoint, Set TR Dequeue Pointer), §4.8.3 (halted endpoint recovery).  UHCI 1.1 has no device
//! commands: `address_device` sends `SET_ADDRESS` (USB 2.0 §9.4.6) as a control transfer to address
//! 0 and `configure_endpoints` only records endpoint state (data toggles).

use core::fmt;

use hal::{DmaSegment, HalError};

/// Device speed (USB 2.0 §7.1.11, USB 3.2 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Speed {
    /// 1.5 Mbit/s.
    Low,
    /// 12 Mbit/s.
    Full,
    /// 480 Mbit/s.
    High,
    /// 5 Gbit/s (and faster SuperSpeedPlus links; usbdom treats them alike).
    Super,
}

impl Speed {
    /// Default maximum packet size of endpoint 0 before the device descriptor is read
    /// (USB 2.0 §5.5.3, USB 3.2 §9.6.1: 512 bytes for SuperSpeed).  For full speed the true value
    /// (8..64) is learnt from the first 8 bytes of the device descriptor.
    pub fn default_ep0_max_packet(self) -> u16 {
        match self {
            Speed::Low => 8,
            Speed::Full => 64,
            Speed::High => 64,
            Speed::Super => 512,
        }
    }
}

/// Transfer type of an endpoint (USB 2.0 §5.4–§5.8, bmAttributes bits 1:0 of the endpoint
/// descriptor have the same numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferType {
    Control,
    /// Not supported by the drivers yet; the type exists so the trait need not change when it is.
    Isochronous,
    Bulk,
    Interrupt,
}

impl TransferType {
    /// From bmAttributes bits 1:0 of an endpoint descriptor.
    pub fn from_attributes(bm_attributes: u8) -> Self {
        match bm_attributes & 3 {
            0 => TransferType::Control,
            1 => TransferType::Isochronous,
            2 => TransferType::Bulk,
            _ => TransferType::Interrupt,
        }
    }
}

/// Data direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to device.
    Out,
    /// Device to host.
    In,
}

/// An endpoint address as in bEndpointAddress (USB 2.0 §9.6.6): bits 3:0 the number, bit 7 the
/// direction (1 = IN).  Endpoint 0 is bidirectional; it is written `EndpointAddress(0)` (an
/// `0x80` address is treated as the same endpoint 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointAddress(pub u8);

impl EndpointAddress {
    /// The default control endpoint.
    pub const EP0: EndpointAddress = EndpointAddress(0);

    pub fn new(number: u8, dir: Direction) -> Self {
        let d = if dir == Direction::In { 0x80 } else { 0 };
        EndpointAddress((number & 0xf) | d)
    }
    /// Endpoint number 0..=15.
    pub fn number(self) -> u8 {
        self.0 & 0xf
    }
    pub fn direction(self) -> Direction {
        if self.0 & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }
    /// Whether this is endpoint 0 (either direction bit).
    pub fn is_ep0(self) -> bool {
        self.number() == 0
    }
    /// Whether reserved bits (6:4) are clear.
    pub fn is_valid(self) -> bool {
        self.0 & 0x70 == 0
    }
}

/// Position of a device in the topology: the root port it hangs off and the ports of the hubs on
/// the way, one per tier (xHCI 1.2 §8.9 route string; USB 3.2 §10.1.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Route {
    /// Root-hub port, from 1.
    pub root_port: u8,
    /// Hub downstream port numbers below the root port, 4 bits per tier, tier 1 in bits 3:0
    /// (the xHCI route string format).  A port number above 15 cannot be expressed (spec limit).
    pub string: u32,
    /// Number of hub tiers below the root port (0 for a device on a root port, at most 5).
    pub depth: u8,
}

impl Route {
    /// A device directly on root port `port`.
    pub fn root(port: u8) -> Self {
        Route {
            root_port: port,
            string: 0,
            depth: 0,
        }
    }
    /// The route of the device on downstream port `port` of the hub at `self`.  `None` when the
    /// topology would be deeper than five hubs or the port number does not fit in 4 bits.
    pub fn child(&self, port: u8) -> Option<Route> {
        if self.depth >= 5 || port == 0 || port > 15 {
            return None;
        }
        Some(Route {
            root_port: self.root_port,
            string: self.string | ((port as u32) << (4 * self.depth as u32)),
            depth: self.depth + 1,
        })
    }
    /// Downstream port at tier `tier` (1-based), if the route is that deep.
    pub fn port_at(&self, tier: u8) -> Option<u8> {
        (tier >= 1 && tier <= self.depth).then(|| ((self.string >> (4 * (tier - 1))) & 0xf) as u8)
    }
}

impl fmt::Display for Route {
    /// `root[.p1[.p2…]]`, the controller-relative port path the PVUSB tool shows (`1-3.2` style
    /// without the bus prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root_port)?;
        for t in 1..=self.depth {
            write!(f, ".{}", self.port_at(t).unwrap_or(0))?;
        }
        Ok(())
    }
}

/// The transaction translator a low/full-speed device behind a high-speed hub is reached through
/// (USB 2.0 §11.14; xHCI 1.2 §6.2.2 slot context TT fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TtInfo {
    /// The high-speed hub that holds the TT.
    pub hub: DeviceId,
    /// The hub's downstream port the device (or its parent low/full-speed hub chain) is on.
    pub port: u8,
    /// Whether the hub has one TT per port (hub device descriptor bDeviceProtocol 2).
    pub multi_tt: bool,
}

/// What the driver needs to know to create a device (before it has an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    pub route: Route,
    pub speed: Speed,
    /// Present for low/full-speed devices behind a high-speed hub.
    pub tt: Option<TtInfo>,
}

/// Hub properties a driver may need for the hub device itself (xHCI 1.2 §6.2.2: Hub, Number of
/// Ports, MTT and TT Think Time in the slot context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HubInfo {
    pub ports: u8,
    pub multi_tt: bool,
    /// TT think time, wHubCharacteristics bits 6:5 (0 = 8 FS bit times … 3 = 32).
    pub think_time: u8,
}

/// A device handle given out by the driver (xHCI: the slot ID; UHCI: an index of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u8);

/// An endpoint to configure, taken from its descriptors (USB 2.0 §9.6.6, USB 3.2 §9.6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    pub address: EndpointAddress,
    pub kind: TransferType,
    /// wMaxPacketSize bits 10:0.
    pub max_packet: u16,
    /// Additional transactions per microframe for high-speed periodic endpoints
    /// (wMaxPacketSize bits 12:11), or the SuperSpeed companion's Mult for isochronous.
    pub mult: u8,
    /// SuperSpeed bMaxBurst (0 otherwise).
    pub max_burst: u8,
    /// Raw bInterval.
    pub interval: u8,
    /// SuperSpeed companion wBytesPerInterval for periodic endpoints (0 otherwise).
    pub bytes_per_interval: u16,
}

bitflags::bitflags! {
    /// Transfer request flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TransferFlags: u8 {
        /// A short IN transfer is an error ([`HcError::ShortPacket`]) rather than success with a
        /// smaller actual length (`URB_SHORT_NOT_OK`, `USBIF_SHORT_NOT_OK`).
        const SHORT_NOT_OK = 1 << 0;
        /// Terminate a bulk OUT transfer whose length is a multiple of the maximum packet size
        /// with a zero-length packet (USB 2.0 §5.8.3).
        const ZERO_PACKET = 1 << 1;
    }
}

/// A transfer to submit.
#[derive(Debug, Clone, Copy)]
pub struct TransferRequest<'a> {
    pub device: DeviceId,
    pub endpoint: EndpointAddress,
    /// The SETUP packet (USB 2.0 §9.3) for control transfers; `None` otherwise.  For a control
    /// transfer the data stage direction is bit 7 of bmRequestType and its length must equal the
    /// sum of `buffer`'s segment lengths (which may be less than wLength).
    pub setup: Option<[u8; 8]>,
    /// The data buffer, in order.  Empty for a transfer without data.  Segments may cross page
    /// boundaries; the driver splits them as its hardware requires.
    pub buffer: &'a [DmaSegment],
    pub flags: TransferFlags,
}

impl TransferRequest<'_> {
    /// Total data length.
    pub fn length(&self) -> u64 {
        self.buffer.iter().map(|s| s.len as u64).sum()
    }
}

/// Identifies a submitted transfer until its completion is polled.  Never reused while the
/// transfer is outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u32);

/// The outcome of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub id: TransferId,
    pub device: DeviceId,
    pub endpoint: EndpointAddress,
    /// Bytes actually transferred in the data stage (also meaningful for some errors, e.g. a
    /// stall after partial data).
    pub actual: u32,
    pub result: Result<(), HcError>,
}

/// What [`HostController::poll`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcEvent {
    /// A transfer finished (exactly once per accepted transfer).
    Transfer(Completion),
    /// Something changed on a root port (connect, disconnect, reset done, over-current…); read
    /// [`HostController::port_status`] and acknowledge with
    /// [`HostController::clear_port_changes`].
    PortChange(u8),
    /// The controller stopped working (xHCI Host System Error, UHCI process error).  All transfers
    /// have been completed with [`HcError::ControllerDead`].
    ControllerDead,
}

bitflags::bitflags! {
    /// Change bits of a port (USB 2.0 §11.24.2.7.2 wPortChange, xHCI 1.2 §5.4.8 PORTSC RW1C bits).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PortChanges: u8 {
        const CONNECT = 1 << 0;
        const ENABLE = 1 << 1;
        const RESET = 1 << 2;
        const OVER_CURRENT = 1 << 3;
        const SUSPEND = 1 << 4;
        /// USB3 link state change (xHCI PLC) and other link-level changes.
        const LINK = 1 << 5;
    }
}

/// State of a root port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStatus {
    pub connected: bool,
    pub enabled: bool,
    /// A reset is in progress.
    pub resetting: bool,
    pub over_current: bool,
    pub powered: bool,
    /// Speed of the attached device; meaningful when connected (for USB2 ports reliably only after
    /// the reset completed).
    pub speed: Option<Speed>,
    /// Whether this is a USB3 (SuperSpeed) port (xHCI supported-protocol capability).
    pub usb3: bool,
    pub changes: PortChanges,
}

/// Errors of the host-controller layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcError {
    /// The device answered STALL (USB 2.0 §8.4.5): halted endpoint or unsupported request.
    Stall,
    /// The device sent more data than expected (USB 2.0 §8.7.1).
    Babble,
    /// Transaction error: CRC, bit stuffing, timeout without answer after retries (USB 2.0 §8.7;
    /// xHCI USB Transaction Error, UHCI CRC/Timeout).
    Transaction,
    /// A short IN transfer with [`TransferFlags::SHORT_NOT_OK`].
    ShortPacket,
    /// Host-side buffer overrun or underrun (xHCI Data Buffer Error, UHCI Data Buffer Error).
    DataBuffer,
    /// The device is gone (disconnected, slot disabled) or the handle is unknown.
    NoDevice,
    /// The transfer was cancelled with [`HostController::cancel`].
    Cancelled,
    /// The endpoint is halted after an earlier error; the transfer was not executed.
    EndpointHalted,
    /// A controller operation did not complete within the driver's limit, or the device never
    /// answered.
    Timeout,
    /// No resources: ring full, no free device slot, no DMA memory.
    NoResources,
    /// The request is malformed (bad endpoint, length mismatch, too many segments…).
    Invalid(&'static str),
    /// The operation or transfer type is not supported by this driver.
    NotSupported(&'static str),
    /// The controller reported a condition usbdom does not map (the raw completion code).
    Controller(u8),
    /// The controller is not running (halted by a host system error, or not started).
    ControllerDead,
    /// The hardware-access layer failed.
    Hal(HalError),
}

impl From<HalError> for HcError {
    fn from(e: HalError) -> Self {
        match e {
            HalError::OutOfDmaMemory { .. } => HcError::NoResources,
            e => HcError::Hal(e),
        }
    }
}

impl fmt::Display for HcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HcError::Stall => write!(f, "stall"),
            HcError::Babble => write!(f, "babble"),
            HcError::Transaction => write!(f, "transaction error"),
            HcError::ShortPacket => write!(f, "short packet"),
            HcError::DataBuffer => write!(f, "data buffer error"),
            HcError::NoDevice => write!(f, "no such device"),
            HcError::Cancelled => write!(f, "cancelled"),
            HcError::EndpointHalted => write!(f, "endpoint halted"),
            HcError::Timeout => write!(f, "timeout"),
            HcError::NoResources => write!(f, "no resources"),
            HcError::Invalid(why) => write!(f, "invalid request: {why}"),
            HcError::NotSupported(what) => write!(f, "not supported: {what}"),
            HcError::Controller(code) => write!(f, "controller completion code {code}"),
            HcError::ControllerDead => write!(f, "controller not running"),
            HcError::Hal(e) => write!(f, "hardware access: {e}"),
        }
    }
}

/// A USB host controller driver.
///
/// One instance per controller, owned by one event loop (`&mut self` everywhere; no internal
/// locking).  See the module documentation for the model.
pub trait HostController {
    /// Number of root ports (ports are numbered `1..=num_ports()`).
    fn num_ports(&self) -> u8;

    /// Current state of root port `port`.
    fn port_status(&mut self, port: u8) -> Result<PortStatus, HcError>;

    /// Acknowledge change bits of a root port.
    fn clear_port_changes(&mut self, port: u8, changes: PortChanges) -> Result<(), HcError>;

    /// Start a reset of root port `port` (USB 2.0 §7.1.7.5, xHCI 1.2 §4.3.1).  Returns at once;
    /// completion shows as `resetting == false` with [`PortChanges::RESET`] in
    /// [`Self::port_status`] (and an [`HcEvent::PortChange`]).  USB3 ports train by themselves and
    /// are enabled without a reset; resetting them is allowed (warm reset is not used).
    fn reset_port(&mut self, port: u8) -> Result<(), HcError>;

    /// Disable root port `port` (a misbehaving device is cut off this way).  Devices created on the
    /// port should be released with [`Self::release_device`].
    fn disable_port(&mut self, port: u8) -> Result<(), HcError>;

    /// Create a device on a reset, enabled port, with endpoint 0 at the speed's default maximum
    /// packet size.  The device still answers at address 0 until [`Self::address_device`].
    /// (xHCI: Enable Slot; UHCI: bookkeeping only.)
    fn create_device(&mut self, info: &DeviceInfo) -> Result<DeviceId, HcError>;

    /// Give the device its address (xHCI: Address Device command, the controller picks the
    /// address; UHCI: `SET_ADDRESS` to address 0, then the 2 ms recovery interval of USB 2.0
    /// §9.2.6.3).  Returns the USB address now in use.
    fn address_device(&mut self, device: DeviceId) -> Result<u8, HcError>;

    /// Change endpoint 0's maximum packet size after reading bMaxPacketSize0 (xHCI: Evaluate
    /// Context).
    fn set_ep0_max_packet(&mut self, device: DeviceId, max_packet: u16) -> Result<(), HcError>;

    /// Tell the driver the device is a hub (xHCI: slot context Hub fields, via Evaluate Context /
    /// Configure Endpoint).  Drivers without hub state accept and ignore it.
    fn set_hub_info(&mut self, device: DeviceId, hub: &HubInfo) -> Result<(), HcError>;

    /// Make `endpoints` the set of non-zero endpoints of the device (dropping those not listed,
    /// adding new ones, reconfiguring changed ones; xHCI: Configure Endpoint).  Called before the
    /// caller sends `SET_CONFIGURATION` / `SET_INTERFACE` to the device.  An empty list
    /// deconfigures.  Outstanding transfers on dropped endpoints complete with
    /// [`HcError::Cancelled`].
    fn configure_endpoints(
        &mut self,
        device: DeviceId,
        endpoints: &[EndpointInfo],
    ) -> Result<(), HcError>;

    /// Queue a transfer; see the module documentation for the completion rules.  Fails at once
    /// (and will not complete later) for an unknown device or endpoint, a halted endpoint, a full
    /// ring or a malformed request.
    fn submit(&mut self, request: &TransferRequest<'_>) -> Result<TransferId, HcError>;

    /// Cancel an outstanding transfer.  Returns `Ok(true)` when it was still outstanding: its
    /// completion with [`HcError::Cancelled`] (or with its real result, if the hardware finished it
    /// meanwhile) will be reported by [`Self::poll`].  `Ok(false)` when it already completed (its
    /// completion may still be waiting in `poll`).  Other transfers on the endpoint continue.
    fn cancel(&mut self, id: TransferId) -> Result<bool, HcError>;

    /// Recover a halted endpoint (xHCI: Reset Endpoint + Set TR Dequeue Pointer; UHCI: reset the
    /// data toggle).  Afterwards submissions are accepted again; the data toggle / sequence number
    /// starts at 0, as the device's does after `CLEAR_FEATURE(ENDPOINT_HALT)`.
    fn clear_halt(&mut self, device: DeviceId, endpoint: EndpointAddress) -> Result<(), HcError>;

    /// Release a device: outstanding transfers complete with [`HcError::NoDevice`] and the slot is
    /// freed (xHCI: Stop Endpoint(s) + Disable Slot).
    fn release_device(&mut self, device: DeviceId) -> Result<(), HcError>;

    /// Service the controller (interrupt or polling) and return the next event, if any.  Call it
    /// until it returns `None`.
    fn poll(&mut self) -> Option<HcEvent>;
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn route_string_tiers() {
        let r = Route::root(3);
        assert_eq!(r.to_string(), "3");
        let a = r.child(2).unwrap();
        let b = a.child(15).unwrap();
        assert_eq!(b.string, 0xf2);
        assert_eq!(b.depth, 2);
        assert_eq!(b.port_at(1), Some(2));
        assert_eq!(b.port_at(2), Some(15));
        assert_eq!(b.port_at(3), None);
        assert_eq!(b.to_string(), "3.2.15");
        assert_eq!(r.child(16), None);
        assert_eq!(r.child(0), None);
        let deep = (0..5).fold(r, |r, _| r.child(1).unwrap());
        assert_eq!(deep.string, 0x11111);
        assert_eq!(deep.child(1), None, "six tiers of hubs are not allowed");
    }

    #[test]
    fn endpoint_address() {
        let e = EndpointAddress::new(2, Direction::In);
        assert_eq!(e.0, 0x82);
        assert_eq!(e.number(), 2);
        assert_eq!(e.direction(), Direction::In);
        assert!(EndpointAddress(0x80).is_ep0());
        assert!(!EndpointAddress(0x10).is_valid());
        assert_eq!(TransferType::from_attributes(0x02), TransferType::Bulk);
        assert_eq!(TransferType::from_attributes(0x03), TransferType::Interrupt);
    }
}
