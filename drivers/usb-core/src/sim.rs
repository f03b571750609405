//! A simulated host controller with simulated devices and hubs, for host tests of code that sits
//! on the [`HostController`] trait (enumeration here, the PVUSB backend elsewhere).  Enabled in
//! tests and with the `sim` feature.
//!
//! Devices answer the standard requests of USB 2.0 §9.4 from their descriptor bytes, hubs the
//! class requests of §11.24.2; bulk and interrupt IN transfers are served from a queue of canned
//! answers and OUT data is recorded.  Faults (stall, no answer) can be injected per device.
//! Data moves through [`hal::fake::FakeMemory`] at the bus addresses of the request's segments,
//! so the code under test uses real DMA buffers.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use hal::fake::FakeMemory;
use hal::DmaSegment;

use crate::descriptor::dtype;
use crate::hc::*;
use crate::hub::{feature, port_status};
use crate::request::{code, SetupPacket};

/// Injected misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every control transfer stalls after the first `after` succeeded.
    StallControlAfter(u32),
    /// Control transfers after the first `after` never complete.
    SilentAfter(u32),
}

/// A simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub speed: Speed,
    pub device_desc: Vec<u8>,
    pub config: Vec<u8>,
    /// String descriptors by index (index 0: the language IDs), raw.
    pub strings: Vec<Vec<u8>>,
    pub hub: Option<SimHub>,
    pub fault: Fault,
    /// Answers for IN transfers on non-zero endpoints, in order.
    pub in_data: VecDeque<Vec<u8>>,
    /// Data received on OUT endpoints: (endpoint address, bytes).
    pub out_data: Vec<(u8, Vec<u8>)>,
    pub address: u8,
    pub configuration: u8,
    /// Endpoint addresses whose transfers stall.
    pub stall_eps: Vec<u8>,
    /// Bus resets seen (root or hub port reset).
    pub resets: u32,
    control_count: u32,
}

/// A simulated USB 2.0 hub's ports.
#[derive(Debug, Clone)]
pub struct SimHub {
    pub ports: Vec<SimHubPort>,
}

#[derive(Debug, Clone, Default)]
pub struct SimHubPort {
    pub device: Option<SimDevice>,
    pub status: u16,
    pub change: u16,
}

fn string_desc(s: &str) -> Vec<u8> {
    let mut v = vec![0, dtype::STRING];
    for u in s.encode_utf16() {
        v.extend_from_slice(&u.to_le_bytes());
    }
    v[0] = v.len() as u8;
    v
}

impl SimDevice {
    /// A mass-storage stick as QEMU's `usb-storage` presents it (46f4:0001, class 8, bulk IN 0x81
    /// and OUT 0x02 with 1024-byte packets at SuperSpeed, 512 otherwise).
    pub fn qemu_storage(speed: Speed) -> Self {
        let mps = if speed == Speed::Super { 1024 } else { 512 };
        SimDevice::new(
            speed,
            0x46f4,
            0x0001,
            8,
            &[(0x81, 2, mps), (0x02, 2, mps)],
            "QEMU USB HARDDRIVE",
        )
    }

    /// A full-speed keyboard as QEMU's `usb-kbd` presents it (0627:0001, class 3, interrupt IN
    /// 0x81 of 8 bytes).
    pub fn qemu_keyboard() -> Self {
        SimDevice::new(
            Speed::Full,
            0x0627,
            0x0001,
            3,
            &[(0x81, 3, 8)],
            "QEMU USB Keyboard",
        )
    }

    /// A device with the given IDs, one configuration with one interface of `class` and the
    /// given endpoints (address, attributes, max packet), and product string `product`.
    pub fn new(
        speed: Speed,
        vendor: u16,
        product_id: u16,
        class: u8,
        endpoints: &[(u8, u8, u16)],
        product: &str,
    ) -> Self {
        let (bcd, mps0): (u16, u8) = match speed {
            Speed::Super => (0x0300, 9),
            Speed::Low => (0x0110, 8),
            _ => (0x0200, 64),
        };
        let mut dd = vec![18, dtype::DEVICE];
        dd.extend_from_slice(&bcd.to_le_bytes());
        dd.extend_from_slice(&[0, 0, 0, mps0]);
        dd.extend_from_slice(&vendor.to_le_bytes());
        dd.extend_from_slice(&product_id.to_le_bytes());
        dd.extend_from_slice(&[0x00, 0x01, 1, 2, 0, 1]);
        let mut cfg = vec![9, dtype::CONFIGURATION, 0, 0, 1, 1, 0, 0x80, 50];
        cfg.extend_from_slice(&[
            9,
            dtype::INTERFACE,
            0,
            0,
            endpoints.len() as u8,
            class,
            0,
            0,
            0,
        ]);
        for &(addr, attr, mps) in endpoints {
            let interval = if attr & 3 == 3 { 10 } else { 0 };
            cfg.extend_from_slice(&[7, dtype::ENDPOINT, addr, attr]);
            cfg.extend_from_slice(&mps.to_le_bytes());
            cfg.push(interval);
            if speed == Speed::Super {
                cfg.extend_from_slice(&[6, dtype::SS_ENDPOINT_COMPANION, 0, 0, 0, 0]);
            }
        }
        let n = cfg.len() as u16;
        cfg[2..4].copy_from_slice(&n.to_le_bytes());
        SimDevice {
            speed,
            device_desc: dd,
            config: cfg,
            strings: vec![
                vec![4, dtype::STRING, 0x09, 0x04],
                string_desc("usbdom-sim"),
                string_desc(product),
            ],
            hub: None,
            fault: Fault::None,
            in_data: VecDeque::new(),
            out_data: Vec::new(),
            address: 0,
            configuration: 0,
            stall_eps: Vec::new(),
            resets: 0,
            control_count: 0,
        }
    }

    /// A high-speed hub with `ports` downstream ports (single TT).
    pub fn hub(ports: u8) -> Self {
        let mut d = SimDevice::new(Speed::High, 0x0409, 0x55aa, 9, &[(0x81, 3, 1)], "sim hub");
        d.device_desc[4] = 9;
        d.device_desc[6] = 1;
        d.hub = Some(SimHub {
            ports: vec![SimHubPort::default(); ports as usize],
        });
        d
    }

    /// Handle a control transfer as the device would, counting it for [`Fault`] injection:
    /// `None` when the device does not answer at all.
    pub fn control(&mut self, setup: SetupPacket, out: &[u8]) -> Option<Result<Vec<u8>, HcError>> {
        self.control_count += 1;
        match self.fault {
            Fault::SilentAfter(n) if self.control_count > n => None,
            Fault::StallControlAfter(n) if self.control_count > n => Some(Err(HcError::Stall)),
            _ => Some(SimHc::device_control(self, setup, out)),
        }
    }

    /// The device `route` leads to, starting at this device as the one on the root port.
    pub fn descend(&mut self, route: &Route) -> Option<&mut SimDevice> {
        let mut d = self;
        for t in 1..=route.depth {
            let port = route.port_at(t)? as usize;
            d = d
                .hub
                .as_mut()?
                .ports
                .get_mut(port.checked_sub(1)?)?
                .device
                .as_mut()?;
        }
        Some(d)
    }

    fn hub_descriptor(&self) -> Vec<u8> {
        let n = self.hub.as_ref().map_or(0, |h| h.ports.len()) as u8;
        vec![9, dtype::HUB, n, 0x00, 0x00, 5, 0, 0, 0xff]
    }
}

struct RootPort {
    device: Option<SimDevice>,
    enabled: bool,
    changes: PortChanges,
    usb3: bool,
}

struct Slot {
    route: Route,
    endpoints: Vec<EndpointInfo>,
    halted: Vec<EndpointAddress>,
    ep0_mps: u16,
}

/// The simulated controller.
pub struct SimHc {
    pub mem: FakeMemory,
    ports: Vec<RootPort>,
    slots: Vec<Option<Slot>>,
    events: VecDeque<HcEvent>,
    /// Transfers that will never complete on their own (silent devices).
    silent: Vec<Completion>,
    next_id: u32,
    next_address: u8,
    /// Number of transfers submitted (for assertions).
    pub submitted: u32,
}

impl SimHc {
    pub fn new(mem: FakeMemory, ports: u8) -> Self {
        SimHc {
            mem,
            ports: (0..ports)
                .map(|_| RootPort {
                    device: None,
                    enabled: false,
                    changes: PortChanges::empty(),
                    usb3: false,
                })
                .collect(),
            slots: (0..32).map(|_| None).collect(),
            events: VecDeque::new(),
            silent: Vec::new(),
            next_id: 1,
            next_address: 1,
            submitted: 0,
        }
    }

    /// Plug `dev` into root port `port` (or unplug with `None`), raising a port change.
    pub fn plug(&mut self, port: u8, dev: Option<SimDevice>) {
        let p = &mut self.ports[port as usize - 1];
        p.usb3 = dev.as_ref().is_some_and(|d| d.speed == Speed::Super);
        p.device = dev;
        p.enabled = false;
        p.changes |= PortChanges::CONNECT;
        self.events.push_back(HcEvent::PortChange(port));
    }

    /// Plug a device into a hub's port (the hub at `hub_route`).
    pub fn plug_behind_hub(&mut self, hub_route: Route, port: u8, dev: Option<SimDevice>) {
        let h = self
            .device_at(&hub_route)
            .and_then(|d| d.hub.as_mut())
            .unwrap();
        let p = &mut h.ports[port as usize - 1];
        p.status = if dev.is_some() {
            port_status::CONNECTION | port_status::POWER
        } else {
            port_status::POWER
        };
        p.change |= 1;
        p.device = dev;
    }

    /// The simulated device at `route`.
    pub fn device_at(&mut self, route: &Route) -> Option<&mut SimDevice> {
        let mut d = self
            .ports
            .get_mut(route.root_port as usize - 1)?
            .device
            .as_mut()?;
        for t in 1..=route.depth {
            let port = route.port_at(t)? as usize;
            d = d.hub.as_mut()?.ports.get_mut(port - 1)?.device.as_mut()?;
        }
        Some(d)
    }

    /// Number of device slots in use.
    pub fn slots_in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether root port `port` is enabled.
    pub fn port_enabled(&self, port: u8) -> bool {
        self.ports[port as usize - 1].enabled
    }

    fn slot(&mut self, dev: DeviceId) -> Result<&mut Slot, HcError> {
        self.slots
            .get_mut(dev.0 as usize)
            .and_then(|s| s.as_mut())
            .ok_or(HcError::NoDevice)
    }

    fn gather(&self, segs: &[DmaSegment]) -> Vec<u8> {
        let mut v = Vec::new();
        for s in segs {
            let mut b = vec![0u8; s.len as usize];
            assert!(self.mem.read(s.bus_addr, &mut b), "segment outside memory");
            v.extend_from_slice(&b);
        }
        v
    }

    fn scatter(&self, segs: &[DmaSegment], data: &[u8]) -> u32 {
        let mut off = 0;
        for s in segs {
            if off >= data.len() {
                break;
            }
            let n = (s.len as usize).min(data.len() - off);
            assert!(self.mem.write(s.bus_addr, &data[off..off + n]));
            off += n;
        }
        off as u32
    }

    /// Run a control request against device `d`: the IN data (empty for OUT / no data), or the
    /// error the device answers with.
    pub fn device_control(
        d: &mut SimDevice,
        s: SetupPacket,
        out: &[u8],
    ) -> Result<Vec<u8>, HcError> {
        let ty = (s.value >> 8) as u8;
        let idx = s.value as u8;
        match (s.request_type, s.request) {
            (0x80, code::GET_DESCRIPTOR) => match ty {
                dtype::DEVICE => Ok(d.device_desc.clone()),
                dtype::CONFIGURATION if idx == 0 => Ok(d.config.clone()),
                dtype::STRING => d.strings.get(idx as usize).cloned().ok_or(HcError::Stall),
                _ => Err(HcError::Stall),
            },
            (0x00, code::SET_CONFIGURATION) => {
                d.configuration = s.value as u8;
                Ok(Vec::new())
            }
            (0x01, code::SET_INTERFACE) | (0x02, code::CLEAR_FEATURE) => Ok(Vec::new()),
            (0xa0, code::GET_DESCRIPTOR) if d.hub.is_some() => Ok(d.hub_descriptor()),
            (0x23, code::SET_FEATURE) | (0x23, code::CLEAR_FEATURE) | (0xa3, code::GET_STATUS) => {
                let h = d.hub.as_mut().ok_or(HcError::Stall)?;
                let p = h
                    .ports
                    .get_mut((s.index as usize).wrapping_sub(1))
                    .ok_or(HcError::Stall)?;
                let _ = out;
                match (s.request, s.value) {
                    (code::GET_STATUS, _) => {
                        let mut v = p.status.to_le_bytes().to_vec();
                        v.extend_from_slice(&p.change.to_le_bytes());
                        Ok(v)
                    }
                    (code::SET_FEATURE, feature::PORT_POWER) => {
                        p.status |= port_status::POWER;
                        if p.device.is_some() && p.status & port_status::CONNECTION == 0 {
                            p.status |= port_status::CONNECTION;
                            p.change |= 1;
                        }
                        Ok(Vec::new())
                    }
                    (code::SET_FEATURE, feature::PORT_RESET) => {
                        // Reset completes at once in the simulation.
                        if let Some(dev) = p.device.as_mut() {
                            p.status |= port_status::ENABLE;
                            p.status &= !(port_status::LOW_SPEED | port_status::HIGH_SPEED);
                            p.status |= match dev.speed {
                                Speed::Low => port_status::LOW_SPEED,
                                Speed::High => port_status::HIGH_SPEED,
                                _ => 0,
                            };
                            p.change |= 1 << 4;
                            // A bus reset leaves the device in the Default state (USB 2.0 §9.1.1.5).
                            dev.address = 0;
                            dev.configuration = 0;
                            dev.resets += 1;
                        }
                        Ok(Vec::new())
                    }
                    (code::CLEAR_FEATURE, f) if f >= 16 => {
                        p.change &= !(1 << (f - 16));
                        Ok(Vec::new())
                    }
                    (code::CLEAR_FEATURE, feature::PORT_ENABLE) => {
                        p.status &= !port_status::ENABLE;
                        Ok(Vec::new())
                    }
                    _ => Err(HcError::Stall),
                }
            }
            _ => Err(HcError::Stall),
        }
    }
}

impl HostController for SimHc {
    fn num_ports(&self) -> u8 {
        self.ports.len() as u8
    }

    fn port_status(&mut self, port: u8) -> Result<PortStatus, HcError> {
        let p = self
            .ports
            .get((port as usize).wrapping_sub(1))
            .ok_or(HcError::Invalid("port"))?;
        Ok(PortStatus {
            connected: p.device.is_some(),
            enabled: p.enabled,
            resetting: false,
            over_current: false,
            powered: true,
            speed: p.device.as_ref().map(|d| d.speed),
            usb3: p.usb3,
            changes: p.changes,
        })
    }

    fn clear_port_changes(&mut self, port: u8, changes: PortChanges) -> Result<(), HcError> {
        let p = self
            .ports
            .get_mut((port as usize).wrapping_sub(1))
            .ok_or(HcError::Invalid("port"))?;
        p.changes.remove(changes);
        Ok(())
    }

    fn reset_port(&mut self, port: u8) -> Result<(), HcError> {
        let p = self
            .ports
            .get_mut((port as usize).wrapping_sub(1))
            .ok_or(HcError::Invalid("port"))?;
        if let Some(d) = p.device.as_mut() {
            p.enabled = true;
            p.changes |= PortChanges::RESET;
            // A bus reset leaves the device in the Default state (USB 2.0 §9.1.1.5).
            d.address = 0;
            d.configuration = 0;
            d.resets += 1;
        }
        Ok(())
    }

    fn disable_port(&mut self, port: u8) -> Result<(), HcError> {
        let p = self
            .ports
            .get_mut((port as usize).wrapping_sub(1))
            .ok_or(HcError::Invalid("port"))?;
        p.enabled = false;
        Ok(())
    }

    fn create_device(&mut self, info: &DeviceInfo) -> Result<DeviceId, HcError> {
        let i = (1..self.slots.len())
            .find(|&i| self.slots[i].is_none())
            .ok_or(HcError::NoResources)?;
        self.slots[i] = Some(Slot {
            route: info.route,
            endpoints: Vec::new(),
            halted: Vec::new(),
            ep0_mps: info.speed.default_ep0_max_packet(),
        });
        Ok(DeviceId(i as u8))
    }

    fn address_device(&mut self, device: DeviceId) -> Result<u8, HcError> {
        let route = self.slot(device)?.route;
        let a = self.next_address;
        self.next_address = self.next_address % 127 + 1;
        let d = self.device_at(&route).ok_or(HcError::Transaction)?;
        d.address = a;
        Ok(a)
    }

    fn set_ep0_max_packet(&mut self, device: DeviceId, max_packet: u16) -> Result<(), HcError> {
        self.slot(device)?.ep0_mps = max_packet;
        Ok(())
    }

    fn set_hub_info(&mut self, device: DeviceId, _hub: &HubInfo) -> Result<(), HcError> {
        self.slot(device).map(|_| ())
    }

    fn configure_endpoints(
        &mut self,
        device: DeviceId,
        endpoints: &[EndpointInfo],
    ) -> Result<(), HcError> {
        let s = self.slot(device)?;
        s.endpoints = endpoints.to_vec();
        s.halted.clear();
        Ok(())
    }

    fn submit(&mut self, r: &TransferRequest<'_>) -> Result<TransferId, HcError> {
        let slot = self.slot(r.device)?;
        let route = slot.route;
        let ep = if r.endpoint.is_ep0() {
            EndpointAddress::EP0
        } else {
            r.endpoint
        };
        if slot.halted.contains(&ep) {
            return Err(HcError::EndpointHalted);
        }
        if !ep.is_ep0() && !slot.endpoints.iter().any(|e| e.address == ep) {
            return Err(HcError::Invalid("endpoint not configured"));
        }
        if ep.is_ep0() != r.setup.is_some() {
            return Err(HcError::Invalid("setup packet"));
        }
        let id = TransferId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.submitted += 1;
        let out = self.gather(r.buffer);
        let mut comp = Completion {
            id,
            device: r.device,
            endpoint: ep,
            actual: 0,
            result: Ok(()),
        };
        let result: Result<Vec<u8>, HcError> = match self.device_at(&route) {
            None => Err(HcError::Transaction),
            Some(d) => {
                if let Some(setup) = r.setup {
                    match d.control(SetupPacket::from_bytes(setup), &out) {
                        None => {
                            self.silent.push(comp);
                            return Ok(id);
                        }
                        Some(res) => res,
                    }
                } else if d.stall_eps.contains(&ep.0) {
                    Err(HcError::Stall)
                } else if ep.direction() == Direction::In {
                    d.in_data.pop_front().ok_or(HcError::Transaction)
                } else {
                    d.out_data.push((ep.0, out.clone()));
                    Ok(Vec::new())
                }
            }
        };
        match result {
            Ok(data) => {
                let is_in = r
                    .setup
                    .map_or(ep.direction() == Direction::In, |s| s[0] & 0x80 != 0);
                comp.actual = if is_in {
                    let limit = r.length() as usize;
                    if data.len() > limit && r.setup.is_none() {
                        comp.result = Err(HcError::Babble);
                    }
                    self.scatter(r.buffer, &data[..data.len().min(limit)])
                } else {
                    out.len() as u32
                };
                if is_in
                    && r.flags.contains(TransferFlags::SHORT_NOT_OK)
                    && (comp.actual as u64) < r.length()
                {
                    comp.result = Err(HcError::ShortPacket);
                }
            }
            Err(e) => comp.result = Err(e),
        }
        if comp.result.is_err() && comp.result != Err(HcError::ShortPacket) {
            self.slot(r.device)?.halted.push(ep);
        }
        self.events.push_back(HcEvent::Transfer(comp));
        Ok(id)
    }

    fn cancel(&mut self, id: TransferId) -> Result<bool, HcError> {
        if let Some(i) = self.silent.iter().position(|c| c.id == id) {
            let mut c = self.silent.remove(i);
            c.result = Err(HcError::Cancelled);
            self.events.push_back(HcEvent::Transfer(c));
            return Ok(true);
        }
        Ok(false)
    }

    fn clear_halt(&mut self, device: DeviceId, endpoint: EndpointAddress) -> Result<(), HcError> {
        let ep = if endpoint.is_ep0() {
            EndpointAddress::EP0
        } else {
            endpoint
        };
        self.slot(device)?.halted.retain(|e| *e != ep);
        Ok(())
    }

    fn release_device(&mut self, device: DeviceId) -> Result<(), HcError> {
        self.slot(device)?;
        let mut i = 0;
        while i < self.silent.len() {
            if self.silent[i].device == device {
                let mut c = self.silent.remove(i);
                c.result = Err(HcError::NoDevice);
                self.events.push_back(HcEvent::Transfer(c));
            } else {
                i += 1;
            }
        }
        self.slots[device.0 as usize] = None;
        Ok(())
    }

    fn poll(&mut self) -> Option<HcEvent> {
        self.events.pop_front()
    }
}
