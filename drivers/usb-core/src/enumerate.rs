//! Enumeration (USB 2.0 §9.1.2 bus enumeration, §9.2.6 timing; USB 2.0 §11.24 for hub ports;
//! xHCI 1.2 §4.3 for how a controller with device slots fits in): reset the port, create the
//! device, give it an address, read its descriptors and strings, configure it, and for hubs
//! power and enumerate their ports.
//!
//! [`Bus`] owns a [`HostController`], a one-page DMA scratch buffer for control transfers and the
//! [`Registry`].  Its control transfers wait for their completion (bounded by a timeout, checked
//! with the platform [`Clock`]); completions and port events for other users that arrive meanwhile
//! are kept and handed out by [`Bus::poll`].  Enumeration is meant to run from the event loop when
//! a port changes; it blocks that loop for the duration of the USB timing rules (tens of
//! milliseconds per device), which usbdom accepts.
//!
//! A misbehaving device (malformed descriptors, stalls, no answer) never panics or hangs anything:
//! the error is logged, the device's slot released and its port disabled; other ports continue.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hal::{Clock, DmaAlloc, DmaBuf, DmaSegment};

use crate::descriptor::{
    parse_langids, parse_string, Configuration, DescriptorError, DeviceDescriptor,
};
use crate::hc::{
    DeviceId, DeviceInfo, EndpointAddress, HcError, HcEvent, HostController, HubInfo, PortChanges,
    Route, Speed, TransferFlags, TransferId, TransferRequest, TtInfo,
};
use crate::hub::{self, feature, HubDescriptor, HubPortStatus};
use crate::registry::{Registry, UsbDevice};
use crate::request::SetupPacket;

/// Limit on a control transfer's completion (USB 2.0 §9.2.6.4: 5 s for requests with a data
/// stage; usbdom uses less because QEMU and real devices answer in milliseconds).
pub const CONTROL_TIMEOUT_MS: u64 = 1000;
/// Limit on a port reset (USB 2.0 §7.1.7.5 allows 10–20 ms for root ports; hubs take longer).
pub const RESET_TIMEOUT_MS: u64 = 500;
/// Reset recovery time (USB 2.0 §7.1.7.5 TRSTRCY).
pub const RESET_RECOVERY_MS: u64 = 10;
/// Largest configuration descriptor read.
pub const MAX_CONFIG_LEN: usize = 4096;
/// Hub tiers below the root (USB 2.0 §4.1.1: at most 5 hubs between host and device).
pub const MAX_HUB_DEPTH: u8 = 5;

/// Errors of the enumeration layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbError {
    /// The host controller failed the operation.
    Hc(HcError),
    /// The device sent a malformed descriptor.
    Descriptor(DescriptorError),
    /// A step did not finish in time.
    Timeout(&'static str),
    /// Nothing is connected, or the device went away during enumeration.
    NotConnected,
    /// The device answered something usbdom cannot use.
    Unsupported(&'static str),
}

impl From<HcError> for UsbError {
    fn from(e: HcError) -> Self {
        UsbError::Hc(e)
    }
}

impl From<DescriptorError> for UsbError {
    fn from(e: DescriptorError) -> Self {
        UsbError::Descriptor(e)
    }
}

impl fmt::Display for UsbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsbError::Hc(e) => write!(f, "host controller: {e}"),
            UsbError::Descriptor(e) => write!(f, "{e}"),
            UsbError::Timeout(what) => write!(f, "timeout: {what}"),
            UsbError::NotConnected => write!(f, "not connected"),
            UsbError::Unsupported(what) => write!(f, "unsupported device: {what}"),
        }
    }
}

/// What happened on the bus, for the owner of the [`Bus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A device was enumerated and configured.
    Attached(DeviceId),
    /// A device (and its subtree, reported one by one) was removed.
    Detached(DeviceId, Route),
    /// A device could not be enumerated; its port was disabled.
    Failed(Route, UsbError),
}

/// A USB bus: one host controller, its devices, and the code that enumerates them.
pub struct Bus<H: HostController, D: DmaAlloc, C: Clock> {
    pub hc: H,
    pub clock: C,
    pub registry: Registry,
    dma: D,
    scratch: D::Buf,
    stash: VecDeque<HcEvent>,
}

impl<H: HostController, D: DmaAlloc, C: Clock> Bus<H, D, C> {
    pub fn new(hc: H, dma: D, clock: C) -> Result<Self, UsbError> {
        let scratch = dma.alloc(4096, 4096).map_err(HcError::from)?;
        Ok(Bus {
            hc,
            clock,
            registry: Registry::new(),
            dma,
            scratch,
            stash: VecDeque::new(),
        })
    }

    /// The DMA allocator (for clients that need buffers of their own).
    pub fn dma(&self) -> &D {
        &self.dma
    }

    /// Next controller event not consumed by the bus's own control transfers.
    pub fn poll(&mut self) -> Option<HcEvent> {
        self.stash.pop_front().or_else(|| self.hc.poll())
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ns() / 1_000_000
    }

    /// Wait for the completion of `id`, keeping other events.  On timeout the transfer is
    /// cancelled (and its cancellation completion awaited, bounded).
    pub fn wait(&mut self, id: TransferId, timeout_ms: u64) -> Result<u32, UsbError> {
        let mut deadline = self.now_ms() + timeout_ms;
        let mut cancelled = false;
        loop {
            match self.hc.poll() {
                Some(HcEvent::Transfer(c)) if c.id == id => {
                    return match c.result {
                        Ok(()) => Ok(c.actual),
                        Err(HcError::Cancelled) if cancelled => Err(UsbError::Timeout("transfer")),
                        Err(e) => Err(UsbError::Hc(e)),
                    };
                }
                Some(HcEvent::ControllerDead) => {
                    self.stash.push_back(HcEvent::ControllerDead);
                    return Err(UsbError::Hc(HcError::ControllerDead));
                }
                Some(e) => self.stash.push_back(e),
                None if self.now_ms() < deadline => self.clock.delay_us(50),
                None if cancelled => {
                    log::error!("transfer {id:?}: no completion even after cancel");
                    return Err(UsbError::Timeout("transfer cancel"));
                }
                None => {
                    // Whether or not it was still outstanding, its completion comes from poll.
                    cancelled = true;
                    self.hc.cancel(id)?;
                    deadline = self.now_ms() + 100;
                }
            }
        }
    }

    /// A control transfer on endpoint 0 of `dev` through the scratch page.  For IN requests the
    /// data is copied to `data_in` (which bounds the length); for OUT the data is `data_out`.
    /// A stall is recovered on the controller side (endpoint 0 needs no device-side clear).
    pub fn control(
        &mut self,
        dev: DeviceId,
        setup: SetupPacket,
        data_in: Option<&mut [u8]>,
        data_out: Option<&[u8]>,
    ) -> Result<usize, UsbError> {
        let len = match (&data_in, data_out) {
            (Some(b), _) => b.len().min(setup.length as usize),
            (None, Some(b)) => b.len().min(setup.length as usize),
            (None, None) => 0,
        };
        if len > self.scratch.len() {
            return Err(UsbError::Hc(HcError::Invalid("control transfer too long")));
        }
        if let Some(b) = data_out {
            self.scratch.write_bytes(0, &b[..len]);
        }
        let mut setup = setup;
        setup.length = len as u16;
        let seg = [DmaSegment {
            bus_addr: self.scratch.bus_addr(),
            len: len as u32,
        }];
        let req = TransferRequest {
            device: dev,
            endpoint: EndpointAddress::EP0,
            setup: Some(setup.to_bytes()),
            buffer: if len > 0 { &seg } else { &[] },
            flags: TransferFlags::empty(),
        };
        let id = self.hc.submit(&req)?;
        let res = self.wait(id, CONTROL_TIMEOUT_MS);
        if matches!(
            res,
            Err(UsbError::Hc(
                HcError::Stall | HcError::Babble | HcError::Transaction
            ))
        ) {
            if let Err(e) = self.hc.clear_halt(dev, EndpointAddress::EP0) {
                log::warn!("device {dev:?}: clearing endpoint 0 halt failed: {e}");
            }
        }
        let actual = (res? as usize).min(len);
        if let Some(b) = data_in {
            self.scratch.read_bytes(0, &mut b[..actual]);
        }
        Ok(actual)
    }

    fn control_in(
        &mut self,
        dev: DeviceId,
        setup: SetupPacket,
        buf: &mut [u8],
    ) -> Result<usize, UsbError> {
        self.control(dev, setup, Some(buf), None)
    }

    fn control_nodata(&mut self, dev: DeviceId, setup: SetupPacket) -> Result<(), UsbError> {
        self.control(dev, setup, None, None).map(|_| ())
    }

    /// Enumerate whatever is connected on every root port.  Returns what happened.
    pub fn scan(&mut self) -> Vec<BusEvent> {
        let mut events = Vec::new();
        for port in 1..=self.hc.num_ports() {
            events.extend(self.handle_root_port(port));
        }
        events
    }

    /// Handle a (possible) change on root port `port`: remove what was there if it went away or
    /// was replaced, enumerate what is connected now.
    pub fn handle_root_port(&mut self, port: u8) -> Vec<BusEvent> {
        let mut events = Vec::new();
        let st = match self.hc.port_status(port) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("port {port}: status: {e}");
                return events;
            }
        };
        if !st.changes.is_empty() {
            let _ = self.hc.clear_port_changes(port, st.changes);
        }
        let route = Route::root(port);
        let existing = self.registry.by_route(&route).map(|d| d.id);
        if let Some(id) = existing {
            if st.connected && !st.changes.contains(PortChanges::CONNECT) {
                return events; // still there
            }
            self.detach(id, &mut events);
        }
        if st.connected {
            self.enumerate_root_port_or_disable(port, &mut events);
        }
        events
    }

    /// Enumerate what is on root port `port`; if that fails, disable the port and report it.
    fn enumerate_root_port_or_disable(&mut self, port: u8, events: &mut Vec<BusEvent>) {
        match self.enumerate_root_port(port) {
            Ok(mut evs) => events.append(&mut evs),
            Err(e) => {
                log::error!("port {port}: enumeration failed: {e}; disabling the port");
                let _ = self.hc.disable_port(port);
                events.push(BusEvent::Failed(Route::root(port), e));
            }
        }
    }

    /// Enumerate what is on port `port` of `hub` (at `route`); if that fails, disable the hub
    /// port and report it.
    fn enumerate_hub_port_or_disable(
        &mut self,
        hub: DeviceId,
        port: u8,
        route: Route,
        events: &mut Vec<BusEvent>,
    ) {
        if let Err(e) = self.enumerate_hub_port(hub, port, route, events) {
            log::error!("usb {route}: enumeration failed: {e}; disabling the hub port");
            let _ = self.control_nodata(hub, hub::clear_port_feature(port, feature::PORT_ENABLE));
            events.push(BusEvent::Failed(route, e));
        }
    }

    /// Reset device `id` and enumerate it afresh, as if it had been unplugged and plugged in again:
    /// it is detached (the controller fails its transfers still queued, its slot is released),
    /// its port is reset (root port: xHCI 1.2 §4.19.5 / UHCI 1.1 §2.1.7 PORTSC reset; hub port:
    /// USB 2.0 §11.24.2.13 SetPortFeature(PORT_RESET)), which puts the device back in the
    /// Default state (USB 2.0 §9.1.1.5), and whatever answers there is enumerated as a new device.
    ///
    /// Used when a device changes hands (a PVUSB frontend let it go): the next user must not
    /// inherit the state the previous one left in it (a half-done mass-storage command, a
    /// selected alternate setting, a halted endpoint). A hub is reset with its subtree.
    /// Returns what happened: `Detached` for the old device (and its subtree), then `Attached` or
    /// `Failed`; nothing if `id` is unknown.
    pub fn reset_device(&mut self, id: DeviceId) -> Vec<BusEvent> {
        let mut events = Vec::new();
        let Some(dev) = self.registry.get(id) else {
            return events;
        };
        let route = dev.info.route;
        let parent = dev.parent;
        log::info!("usb {route}: resetting device {id:?}");
        self.detach(id, &mut events);
        match parent {
            None => self.enumerate_root_port_or_disable(route.root_port, &mut events),
            Some(hub) => {
                let port = route.port_at(route.depth).unwrap_or(0);
                self.enumerate_hub_port_or_disable(hub, port, route, &mut events);
            }
        }
        events
    }

    fn detach(&mut self, id: DeviceId, events: &mut Vec<BusEvent>) {
        let routes: Vec<(DeviceId, Route)> =
            self.registry.iter().map(|d| (d.id, d.info.route)).collect();
        for gone in self.registry.remove_subtree(id) {
            if let Err(e) = self.hc.release_device(gone) {
                log::warn!("releasing device {gone:?}: {e}");
            }
            let route = routes
                .iter()
                .find(|(d, _)| *d == gone)
                .map(|(_, r)| *r)
                .unwrap_or_default();
            log::info!("usb {route}: device {gone:?} detached");
            events.push(BusEvent::Detached(gone, route));
        }
    }

    fn enumerate_root_port(&mut self, port: u8) -> Result<Vec<BusEvent>, UsbError> {
        self.hc.reset_port(port)?;
        let deadline = self.now_ms() + RESET_TIMEOUT_MS;
        let st = loop {
            let st = self.hc.port_status(port)?;
            if !st.connected {
                return Err(UsbError::NotConnected);
            }
            if !st.resetting && st.enabled {
                break st;
            }
            if self.now_ms() >= deadline {
                return Err(UsbError::Timeout("root port reset"));
            }
            self.clock.delay_us(1000);
        };
        if !st.changes.is_empty() {
            let _ = self.hc.clear_port_changes(port, st.changes);
        }
        self.clock.delay_us(RESET_RECOVERY_MS * 1000);
        let speed = st
            .speed
            .ok_or(UsbError::Unsupported("port reports no speed"))?;
        let info = DeviceInfo {
            route: Route::root(port),
            speed,
            tt: None,
        };
        let mut events = Vec::new();
        self.enumerate_device(info, None, &mut events)?;
        Ok(events)
    }

    /// Enumerate one device that sits on a reset, enabled port, and (for hubs) its subtree.
    fn enumerate_device(
        &mut self,
        info: DeviceInfo,
        parent: Option<DeviceId>,
        events: &mut Vec<BusEvent>,
    ) -> Result<DeviceId, UsbError> {
        let id = self.hc.create_device(&info)?;
        match self.setup_device(id, info, parent) {
            Ok(dev) => {
                let is_hub = dev.descriptor.class == 9;
                log::info!(
                    "usb {}: {:04x}:{:04x} {:?} addr {} {} / {}",
                    info.route,
                    dev.descriptor.vendor,
                    dev.descriptor.product,
                    info.speed,
                    dev.address,
                    dev.manufacturer.as_deref().unwrap_or("?"),
                    dev.product.as_deref().unwrap_or("?"),
                );
                self.registry.insert(dev);
                events.push(BusEvent::Attached(id));
                if is_hub {
                    if let Err(e) = self.setup_hub(id, events) {
                        log::error!("usb {}: hub setup failed: {e}", info.route);
                    }
                }
                Ok(id)
            }
            Err(e) => {
                if let Err(e2) = self.hc.release_device(id) {
                    log::warn!("releasing device {id:?} after failure: {e2}");
                }
                Err(e)
            }
        }
    }

    fn setup_device(
        &mut self,
        id: DeviceId,
        info: DeviceInfo,
        parent: Option<DeviceId>,
    ) -> Result<UsbDevice, UsbError> {
        let address = self.hc.address_device(id)?;
        let mut prefix = [0u8; 8];
        let n = self.control_in(id, SetupPacket::get_device_descriptor(8), &mut prefix)?;
        let mps_raw = DeviceDescriptor::parse_max_packet0(&prefix[..n])?;
        let mps = if info.speed == Speed::Super {
            if mps_raw != 9 {
                return Err(UsbError::Descriptor(DescriptorError::Malformed(
                    "bMaxPacketSize0",
                )));
            }
            512
        } else {
            match mps_raw {
                8 | 16 | 32 | 64 => mps_raw as u16,
                _ => {
                    return Err(UsbError::Descriptor(DescriptorError::Malformed(
                        "bMaxPacketSize0",
                    )))
                }
            }
        };
        if mps != info.speed.default_ep0_max_packet() {
            self.hc.set_ep0_max_packet(id, mps)?;
        }
        let mut dd = [0u8; DeviceDescriptor::LEN];
        let n = self.control_in(id, SetupPacket::get_device_descriptor(18), &mut dd)?;
        let descriptor = DeviceDescriptor::parse(&dd[..n])?;

        let (manufacturer, product, serial) = self.read_strings(id, &descriptor);

        let mut config_raw = Vec::new();
        let mut config = None;
        if descriptor.num_configurations > 0 {
            let mut head = [0u8; Configuration::HEADER_LEN];
            let n = self.control_in(id, SetupPacket::get_config_descriptor(0, 9), &mut head)?;
            let total = (Configuration::total_length(&head[..n])? as usize).min(MAX_CONFIG_LEN);
            let mut raw = vec![0u8; total];
            let n = self.control_in(
                id,
                SetupPacket::get_config_descriptor(0, total as u16),
                &mut raw,
            )?;
            raw.truncate(n);
            let cfg = Configuration::parse(&raw)?;
            self.hc
                .configure_endpoints(id, &cfg.active_endpoints(&[]))?;
            self.control_nodata(id, SetupPacket::set_configuration(cfg.value))?;
            config_raw = raw;
            config = Some(cfg);
        }
        Ok(UsbDevice {
            id,
            info,
            address,
            descriptor,
            config_raw,
            config,
            manufacturer,
            product,
            serial,
            parent,
            hub: None,
        })
    }

    /// Read manufacturer, product and serial strings; failures only cost the strings.
    fn read_strings(
        &mut self,
        id: DeviceId,
        d: &DeviceDescriptor,
    ) -> (Option<String>, Option<String>, Option<String>) {
        if d.manufacturer_index == 0 && d.product_index == 0 && d.serial_index == 0 {
            return (None, None, None);
        }
        let mut buf = [0u8; 255];
        let lang = match self.control_in(id, SetupPacket::get_string(0, 0, 255), &mut buf) {
            Ok(n) => parse_langids(&buf[..n])
                .ok()
                .and_then(|l| l.first().copied())
                .unwrap_or(0x0409),
            Err(_) => return (None, None, None),
        };
        let mut get = |index: u8| -> Option<String> {
            if index == 0 {
                return None;
            }
            let mut buf = [0u8; 255];
            let n = self
                .control_in(id, SetupPacket::get_string(index, lang, 255), &mut buf)
                .ok()?;
            parse_string(&buf[..n]).ok()
        };
        (
            get(d.manufacturer_index),
            get(d.product_index),
            get(d.serial_index),
        )
    }

    fn hub_control_in(
        &mut self,
        hub: DeviceId,
        setup: SetupPacket,
        buf: &mut [u8],
    ) -> Result<usize, UsbError> {
        self.control_in(hub, setup, buf)
    }

    /// Set up a freshly configured hub and enumerate the devices on its ports (USB 2.0 §11.24).
    fn setup_hub(&mut self, hub: DeviceId, events: &mut Vec<BusEvent>) -> Result<(), UsbError> {
        let (info, protocol) = {
            let d = self.registry.get(hub).ok_or(UsbError::NotConnected)?;
            (d.info, d.descriptor.protocol)
        };
        if info.route.depth >= MAX_HUB_DEPTH {
            return Err(UsbError::Unsupported("hub too deep"));
        }
        let superspeed = info.speed == Speed::Super;
        if superspeed {
            self.control_nodata(hub, hub::set_hub_depth(info.route.depth))?;
        }
        let mut b = [0u8; 12];
        let n = self.hub_control_in(hub, hub::get_hub_descriptor(superspeed, 12), &mut b)?;
        let hd = HubDescriptor::parse(&b[..n])?;
        let hub_info = HubInfo {
            ports: hd.ports,
            multi_tt: protocol == 2,
            think_time: hd.tt_think_time(),
        };
        self.hc.set_hub_info(hub, &hub_info)?;
        if let Some(d) = self.registry.get_mut(hub) {
            d.hub = Some(hub_info);
        }
        for port in 1..=hd.ports {
            self.control_nodata(hub, hub::set_port_feature(port, feature::PORT_POWER))?;
        }
        self.clock
            .delay_us((hd.power_on_delay_ms() as u64).max(20) * 1000);
        for port in 1..=hd.ports {
            events.extend(self.handle_hub_port(hub, port));
        }
        Ok(())
    }

    fn hub_port_status(&mut self, hub: DeviceId, port: u8) -> Result<HubPortStatus, UsbError> {
        let mut b = [0u8; 4];
        let n = self.hub_control_in(hub, hub::get_port_status(port), &mut b)?;
        Ok(HubPortStatus::parse(&b[..n])?)
    }

    /// Re-read the status of every port of every hub and handle changes (the polling fallback for
    /// the hubs' status-change endpoints, USB 2.0 §11.12.4).
    pub fn poll_hubs(&mut self) -> Vec<BusEvent> {
        let hubs: Vec<(DeviceId, u8)> = self
            .registry
            .iter()
            .filter_map(|d| d.hub.map(|h| (d.id, h.ports)))
            .collect();
        let mut events = Vec::new();
        for (hub, ports) in hubs {
            for port in 1..=ports {
                if self.registry.get(hub).is_none() {
                    break;
                }
                events.extend(self.handle_hub_port(hub, port));
            }
        }
        events
    }

    /// Handle hub port `port`: detach what went away, enumerate what is new.
    pub fn handle_hub_port(&mut self, hub: DeviceId, port: u8) -> Vec<BusEvent> {
        let mut events = Vec::new();
        let Some(hubdev) = self.registry.get(hub) else {
            return events;
        };
        let hub_route = hubdev.info.route;
        let Some(route) = hub_route.child(port) else {
            return events;
        };
        let st = match self.hub_port_status(hub, port) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("hub {hub_route} port {port}: status: {e}");
                return events;
            }
        };
        if st.change & 1 != 0 {
            let _ = self.control_nodata(
                hub,
                hub::clear_port_feature(port, feature::C_PORT_CONNECTION),
            );
        }
        let existing = self.registry.by_route(&route).map(|d| d.id);
        if let Some(id) = existing {
            if st.connected() && st.change & 1 == 0 {
                return events;
            }
            self.detach(id, &mut events);
        }
        if st.connected() {
            self.enumerate_hub_port_or_disable(hub, port, route, &mut events);
        }
        events
    }

    fn enumerate_hub_port(
        &mut self,
        hub: DeviceId,
        port: u8,
        route: Route,
        events: &mut Vec<BusEvent>,
    ) -> Result<(), UsbError> {
        self.control_nodata(hub, hub::set_port_feature(port, feature::PORT_RESET))?;
        let deadline = self.now_ms() + RESET_TIMEOUT_MS;
        let st = loop {
            self.clock.delay_us(10_000);
            let st = self.hub_port_status(hub, port)?;
            if !st.connected() {
                return Err(UsbError::NotConnected);
            }
            if !st.resetting() && st.enabled() {
                break st;
            }
            if self.now_ms() >= deadline {
                return Err(UsbError::Timeout("hub port reset"));
            }
        };
        if st.change & (1 << 4) != 0 {
            self.control_nodata(hub, hub::clear_port_feature(port, feature::C_PORT_RESET))?;
        }
        self.clock.delay_us(RESET_RECOVERY_MS * 1000);
        let parent = self.registry.get(hub).ok_or(UsbError::NotConnected)?;
        let superspeed_hub = parent.info.speed == Speed::Super;
        let speed = st.speed(superspeed_hub);
        let tt = match (speed, parent.info.speed) {
            (Speed::Low | Speed::Full, Speed::High) => Some(TtInfo {
                hub,
                port,
                multi_tt: parent.hub.map(|h| h.multi_tt).unwrap_or(false),
            }),
            (Speed::Low | Speed::Full, _) => parent.info.tt,
            _ => None,
        };
        let info = DeviceInfo { route, speed, tt };
        self.enumerate_device(info, Some(hub), events)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
