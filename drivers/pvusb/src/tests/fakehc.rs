//! Test doubles: a recording hypervisor wrapper that lets a fake controller reach the memory the
//! backend hands it by bus address, and a fake host controller with a fake USB mass-storage device
//! (descriptors, Bulk-Only Transport with SCSI READ(10)/WRITE(10)).
//!
//! The fake controller follows `usb_core::hc`'s rules: split-phase transfers completed from
//! `poll` (or held back while `hold` is set), in order per endpoint; a failed transfer halts its
//! endpoint: the ones queued behind it complete with `EndpointHalted`, new submissions are
//! refused until `clear_halt`; cancel and device release complete what they remove.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use hal::DmaSegment;
use usb_core::hc::*;
use xenidc::abi::{DomId, GrantRef, Port};
use xenidc::hypervisor::{CopyOp, Hypervisor, LocalPage, Mapping, XenError};
use xenidc::shm::{HostMem, SharedMem};
use xenidc::sim::SimDomain;

/// Pages the controller can reach: bus address of the page → (memory, number of mappings).
#[derive(Clone, Default)]
pub struct DmaMap(Rc<RefCell<BTreeMap<u64, (HostMem, usize)>>>);

impl DmaMap {
    fn add(&self, bus: u64, mem: &HostMem) {
        let mut m = self.0.borrow_mut();
        let e = m.entry(bus).or_insert_with(|| (mem.clone(), 0));
        // A writable view wins over a read-only one for the same frame.
        if !mem.is_read_only() {
            e.0 = mem.clone();
        }
        e.1 += 1;
    }
    fn remove(&self, bus: u64) {
        let mut m = self.0.borrow_mut();
        if let Some(e) = m.get_mut(&bus) {
            e.1 -= 1;
            if e.1 == 0 {
                m.remove(&bus);
            }
        }
    }
    fn page(&self, bus: u64) -> Option<HostMem> {
        self.0.borrow().get(&(bus & !0xfff)).map(|e| e.0.clone())
    }
    /// Copy `data` to the scatter list; false if some piece is not reachable or not writable.
    pub fn write(&self, segs: &[DmaSegment], data: &[u8]) -> bool {
        let mut done = 0;
        for s in segs {
            if done >= data.len() {
                break;
            }
            let n = (s.len as usize).min(data.len() - done);
            let Some(p) = self.page(s.bus_addr) else {
                return false;
            };
            if p.write_bytes((s.bus_addr & 0xfff) as usize, &data[done..done + n])
                .is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }
    pub fn read(&self, segs: &[DmaSegment]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for s in segs {
            let p = self.page(s.bus_addr)?;
            let mut b = vec![0u8; s.len as usize];
            p.read_bytes((s.bus_addr & 0xfff) as usize, &mut b).ok()?;
            out.extend(b);
        }
        Some(out)
    }
}

/// The backend's hypervisor: a simulated domain whose mappings and pages are recorded in a
/// [`DmaMap`].
#[derive(Clone)]
pub struct RecHv {
    pub inner: SimDomain,
    pub dma: DmaMap,
}

impl Hypervisor for RecHv {
    type Mem = HostMem;
    type Page = HostMem;
    fn map_grant(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping<HostMem>, XenError> {
        let m = self.inner.map_grant(dom, gref, readonly)?;
        self.dma.add(m.bus_addr, &m.mem);
        Ok(m)
    }
    fn unmap_grant(&mut self, mapping: Mapping<HostMem>) -> Result<(), XenError> {
        self.dma.remove(mapping.bus_addr);
        self.inner.unmap_grant(mapping)
    }
    fn grant_copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        self.inner.grant_copy(ops)
    }
    fn alloc_page(&mut self) -> Result<LocalPage<HostMem>, XenError> {
        let p = self.inner.alloc_page()?;
        self.dma.add(p.bus_addr, &p.mem);
        Ok(p)
    }
    fn free_page(&mut self, page: LocalPage<HostMem>) {
        self.dma.remove(page.bus_addr);
        self.inner.free_page(page)
    }
    fn grant_access(
        &mut self,
        frame: u64,
        to: DomId,
        readonly: bool,
    ) -> Result<GrantRef, XenError> {
        self.inner.grant_access(frame, to, readonly)
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), XenError> {
        self.inner.end_access(gref)
    }
    fn grant_in_use(&self, gref: GrantRef) -> bool {
        self.inner.grant_in_use(gref)
    }
    fn evtchn_alloc_unbound(&mut self, remote: DomId) -> Result<Port, XenError> {
        self.inner.evtchn_alloc_unbound(remote)
    }
    fn evtchn_bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, XenError> {
        self.inner.evtchn_bind_interdomain(remote, remote_port)
    }
    fn evtchn_send(&mut self, port: Port) -> Result<(), XenError> {
        self.inner.evtchn_send(port)
    }
    fn evtchn_unmask(&mut self, port: Port) -> Result<(), XenError> {
        self.inner.evtchn_unmask(port)
    }
    fn evtchn_close(&mut self, port: Port) -> Result<(), XenError> {
        self.inner.evtchn_close(port)
    }
    fn take_pending(&mut self, f: &mut dyn FnMut(Port)) {
        self.inner.take_pending(f)
    }
    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }
    fn block(&mut self, deadline_ns: Option<u64>) -> Result<(), XenError> {
        self.inner.block(deadline_ns)
    }
    fn poll(&mut self, ports: &[Port], deadline_ns: Option<u64>) -> Result<(), XenError> {
        self.inner.poll(ports, deadline_ns)
    }
    fn xenstore_page(&self) -> &HostMem {
        self.inner.xenstore_page()
    }
    fn xenstore_port(&self) -> Port {
        self.inner.xenstore_port()
    }
}

pub const SECTOR: usize = 512;
pub const VID: u16 = 0x0781;
pub const PID: u16 = 0x5567;

/// A fake USB mass-storage stick (Bulk-Only Transport, SCSI READ(10)/WRITE(10)).
pub struct FakeStick {
    pub speed: Speed,
    pub disk: Vec<u8>,
    /// Data the next bulk IN transfers return, then the CSW.
    pending_in: VecDeque<u8>,
    csw: Option<[u8; 13]>,
    /// Expected bulk OUT data (WRITE(10)): (byte offset, remaining bytes, tag).
    write: Option<(usize, usize, u32)>,
    pub set_address_seen: u32,
    pub set_config_seen: Vec<u8>,
    pub clear_halt_seen: Vec<u16>,
    /// A boot keyboard instead of a stick: one interrupt IN endpoint 0x81 whose transfers wait
    /// (NAK) until a report is queued.
    pub keyboard: bool,
    pub reports: VecDeque<[u8; 8]>,
    /// Bus resets seen.
    pub resets: u32,
}

impl FakeStick {
    pub fn new(speed: Speed, sectors: usize) -> Self {
        let disk = (0..sectors * SECTOR)
            .map(|i| ((i / SECTOR) as u8) ^ (i as u8).wrapping_mul(7))
            .collect();
        FakeStick {
            speed,
            disk,
            pending_in: VecDeque::new(),
            csw: None,
            write: None,
            set_address_seen: 0,
            set_config_seen: Vec::new(),
            clear_halt_seen: Vec::new(),
            keyboard: false,
            reports: VecDeque::new(),
            resets: 0,
        }
    }

    pub fn keyboard(speed: Speed) -> Self {
        FakeStick {
            keyboard: true,
            ..FakeStick::new(speed, 0)
        }
    }

    pub fn device_descriptor(&self) -> [u8; 18] {
        let (bcd, mps0) = if self.speed == Speed::Super {
            (0x0320u16, 9u8)
        } else {
            (0x0200, 64)
        };
        let mut d = [18, 1, 0, 0, 0, 0, 0, mps0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 1];
        d[2..4].copy_from_slice(&bcd.to_le_bytes());
        d[8..10].copy_from_slice(&VID.to_le_bytes());
        d[10..12].copy_from_slice(&PID.to_le_bytes());
        d
    }

    pub fn config_descriptor(&self) -> Vec<u8> {
        if self.keyboard {
            return vec![
                9, 2, 25, 0, 1, 1, 0, 0xa0, 50, // config
                9, 4, 0, 0, 1, 3, 1, 1, 0, // HID boot keyboard
                7, 5, 0x81, 3, 8, 0, 10, // interrupt IN, 8 bytes, 10 ms
            ];
        }
        let mps: u16 = match self.speed {
            Speed::Super => 1024,
            Speed::High => 512,
            _ => 64,
        };
        let mut c = vec![9, 2, 32, 0, 1, 1, 0, 0x80, 50, 9, 4, 0, 0, 2, 8, 6, 0x50, 0];
        for addr in [0x81u8, 0x02] {
            c.extend([7, 5, addr, 2]);
            c.extend(mps.to_le_bytes());
            c.push(0);
        }
        c
    }

    /// A control transfer: Ok(IN data) or Err(stall).
    fn control(&mut self, setup: [u8; 8]) -> Result<Vec<u8>, HcError> {
        let w_value = u16::from_le_bytes([setup[2], setup[3]]);
        let w_index = u16::from_le_bytes([setup[4], setup[5]]);
        let w_length = u16::from_le_bytes([setup[6], setup[7]]) as usize;
        let mut data = match (setup[0], setup[1]) {
            (0x80, 6) => match w_value >> 8 {
                1 => self.device_descriptor().to_vec(),
                2 => self.config_descriptor(),
                3 if w_value & 0xff == 0 => vec![4, 3, 0x09, 0x04],
                3 if w_value & 0xff == 2 => {
                    let mut s = vec![0, 3];
                    for ch in "Fake Stick".encode_utf16() {
                        s.extend(ch.to_le_bytes());
                    }
                    s[0] = s.len() as u8;
                    s
                }
                _ => return Err(HcError::Stall),
            },
            (0x00, 5) => {
                self.set_address_seen += 1;
                vec![]
            }
            (0x00, 9) => {
                self.set_config_seen.push(w_value as u8);
                vec![]
            }
            (0x01, 11) => vec![],
            (0x02, 1) if w_value == 0 => {
                self.clear_halt_seen.push(w_index);
                vec![]
            }
            (0x80, 0) => vec![0, 0],
            _ => return Err(HcError::Stall),
        };
        data.truncate(w_length);
        Ok(data)
    }

    /// A bulk OUT transfer (CBW or WRITE data).
    fn bulk_out(&mut self, data: &[u8]) -> Result<(), HcError> {
        if let Some((off, remaining, tag)) = self.write.take() {
            let n = data.len().min(remaining);
            self.disk[off..off + n].copy_from_slice(&data[..n]);
            if remaining > n {
                self.write = Some((off + n, remaining - n, tag));
            } else {
                self.csw = Some(csw(tag, 0, 0));
            }
            return Ok(());
        }
        if data.len() != 31 || &data[0..4] != b"USBC" {
            return Err(HcError::Stall);
        }
        let tag = u32::from_le_bytes(data[4..8].try_into().unwrap());
        let cb = &data[15..31];
        let lba = u32::from_be_bytes(cb[2..6].try_into().unwrap()) as usize;
        let count = u16::from_be_bytes(cb[7..9].try_into().unwrap()) as usize;
        match cb[0] {
            0x28 => {
                let end = ((lba + count) * SECTOR).min(self.disk.len());
                let start = (lba * SECTOR).min(end);
                self.pending_in = self.disk[start..end].iter().copied().collect();
                self.csw = Some(csw(tag, 0, 0));
            }
            0x2a => {
                self.write = Some((lba * SECTOR, count * SECTOR, tag));
            }
            0x00 => self.csw = Some(csw(tag, 0, 0)),
            _ => self.csw = Some(csw(tag, 0, 1)),
        }
        Ok(())
    }

    fn bulk_in(&mut self, len: usize) -> Vec<u8> {
        if !self.pending_in.is_empty() {
            let n = len.min(self.pending_in.len());
            return self.pending_in.drain(..n).collect();
        }
        match self.csw.take() {
            Some(c) => c[..len.min(13)].to_vec(),
            None => vec![],
        }
    }
}

fn csw(tag: u32, residue: u32, status: u8) -> [u8; 13] {
    let mut c = [0u8; 13];
    c[0..4].copy_from_slice(b"USBS");
    c[4..8].copy_from_slice(&tag.to_le_bytes());
    c[8..12].copy_from_slice(&residue.to_le_bytes());
    c[12] = status;
    c
}

struct Queued {
    id: TransferId,
    device: DeviceId,
    ep: u8,
    setup: Option<[u8; 8]>,
    segs: Vec<DmaSegment>,
}

/// A fake host controller: one [`FakeStick`] per root port at most.
pub struct FakeHc {
    pub dma: DmaMap,
    pub devices: BTreeMap<u8, (DeviceId, FakeStick)>,
    next_dev: u8,
    next_tid: u32,
    queue: VecDeque<Queued>,
    /// NAKed transfers waiting for data (interrupt IN of a keyboard).
    parked: VecDeque<Queued>,
    events: VecDeque<HcEvent>,
    halted: BTreeSet<(DeviceId, u8)>,
    /// While set, `poll` runs nothing (transfers stay in flight).
    pub hold: bool,
    /// Fail the next transfer on (device, endpoint) with this error.
    pub fail_next: BTreeMap<(DeviceId, u8), HcError>,
    pub configured: Vec<(DeviceId, Vec<EndpointAddress>)>,
    pub clear_halts: Vec<(DeviceId, u8)>,
    /// Transfers whose memory was not reachable (must stay 0).
    pub dma_faults: u32,
    /// Transfers executed, per endpoint, in order: (device, ep, TransferId).
    pub executed: Vec<(DeviceId, u8, TransferId)>,
    /// Most transfers queued per endpoint; more are refused with `NoResources` (a full xHCI
    /// transfer ring).
    pub ring_capacity: Option<usize>,
}

impl FakeHc {
    pub fn new(dma: DmaMap) -> Self {
        FakeHc {
            dma,
            devices: BTreeMap::new(),
            next_dev: 1,
            next_tid: 1,
            queue: VecDeque::new(),
            parked: VecDeque::new(),
            events: VecDeque::new(),
            halted: BTreeSet::new(),
            hold: false,
            fail_next: BTreeMap::new(),
            configured: Vec::new(),
            clear_halts: Vec::new(),
            dma_faults: 0,
            executed: Vec::new(),
            ring_capacity: None,
        }
    }

    /// Plug a stick into root port `port`; returns its handle (as enumeration would).
    pub fn plug(&mut self, port: u8, stick: FakeStick) -> DeviceId {
        let id = DeviceId(self.next_dev);
        self.next_dev += 1;
        self.devices.insert(port, (id, stick));
        id
    }

    /// Pull the device out of `port`: its transfers complete with `NoDevice`.
    pub fn unplug(&mut self, port: u8) {
        if let Some((id, _)) = self.devices.remove(&port) {
            let _ = self.release_device(id);
        }
    }

    /// A bus reset of the device on `port` followed by a fresh enumeration (what usb-core's
    /// `Bus::reset_device` does): its transfers complete with `NoDevice`, its protocol state is
    /// back to idle (the disk stays), and it comes back under a new handle.
    pub fn reset(&mut self, port: u8) -> Option<DeviceId> {
        let (id, mut stick) = self.devices.remove(&port)?;
        let _ = self.release_device(id);
        stick.pending_in.clear();
        stick.csw = None;
        stick.write = None;
        stick.resets += 1;
        Some(self.plug(port, stick))
    }

    pub fn stick(&mut self, port: u8) -> &mut FakeStick {
        &mut self.devices.get_mut(&port).unwrap().1
    }

    pub fn queued(&self) -> usize {
        self.queue.len() + self.parked.len()
    }

    fn dev_mut(&mut self, id: DeviceId) -> Option<&mut FakeStick> {
        self.devices
            .values_mut()
            .find(|(d, _)| *d == id)
            .map(|(_, s)| s)
    }

    fn run(&mut self, q: Queued) {
        let key = (q.device, q.ep);
        let nak = self
            .dev_mut(q.device)
            .is_some_and(|d| d.keyboard && q.ep == 0x81 && d.reports.is_empty());
        if nak && !self.fail_next.contains_key(&key) {
            self.parked.push_back(q);
            return;
        }
        let len: usize = q.segs.iter().map(|s| s.len as usize).sum();
        let injected = self.fail_next.remove(&key);
        let dma = self.dma.clone();
        let Some(dev) = self.dev_mut(q.device) else {
            self.done(q, 0, Err(HcError::NoDevice));
            return;
        };
        let mut result: Result<u32, HcError> = match injected {
            Some(e) => Err(e),
            None => Ok(0),
        };
        if result.is_ok() {
            result = if let Some(setup) = q.setup {
                if setup[0] & 0x80 != 0 {
                    dev.control(setup).and_then(|d| {
                        let n = d.len().min(len);
                        if dma.write(&q.segs, &d[..n]) {
                            Ok(n as u32)
                        } else {
                            Err(HcError::DataBuffer)
                        }
                    })
                } else {
                    match dma.read(&q.segs) {
                        Some(_) => dev.control(setup).map(|_| len as u32),
                        None => Err(HcError::DataBuffer),
                    }
                }
            } else if dev.keyboard {
                let r = dev.reports.pop_front().unwrap_or_default();
                let n = r.len().min(len);
                if dma.write(&q.segs, &r[..n]) {
                    Ok(n as u32)
                } else {
                    Err(HcError::DataBuffer)
                }
            } else if q.ep & 0x80 != 0 {
                let d = dev.bulk_in(len);
                if dma.write(&q.segs, &d) {
                    Ok(d.len() as u32)
                } else {
                    Err(HcError::DataBuffer)
                }
            } else {
                match dma.read(&q.segs) {
                    Some(d) => dev.bulk_out(&d).map(|_| len as u32),
                    None => Err(HcError::DataBuffer),
                }
            };
        }
        if result == Err(HcError::DataBuffer) {
            self.dma_faults += 1;
        }
        self.executed.push((q.device, q.ep, q.id));
        match result {
            Ok(n) => self.done(q, n, Ok(())),
            Err(e) => {
                self.done(q, 0, Err(e));
                // Halt rule: everything queued behind on the endpoint fails without running.
                {
                    self.halted.insert(key);
                    let (behind, rest): (Vec<Queued>, Vec<Queued>) =
                        self.queue.drain(..).partition(|x| (x.device, x.ep) == key);
                    self.queue = rest.into();
                    for b in behind {
                        self.done(b, 0, Err(HcError::EndpointHalted));
                    }
                }
            }
        }
    }

    fn done(&mut self, q: Queued, actual: u32, result: Result<(), HcError>) {
        self.events.push_back(HcEvent::Transfer(Completion {
            id: q.id,
            device: q.device,
            endpoint: EndpointAddress(q.ep),
            actual,
            result,
        }));
    }
}

impl HostController for FakeHc {
    fn num_ports(&self) -> u8 {
        4
    }
    fn port_status(&mut self, port: u8) -> Result<PortStatus, HcError> {
        let d = self.devices.get(&port);
        Ok(PortStatus {
            connected: d.is_some(),
            enabled: d.is_some(),
            powered: true,
            speed: d.map(|(_, s)| s.speed),
            ..Default::default()
        })
    }
    fn clear_port_changes(&mut self, _port: u8, _changes: PortChanges) -> Result<(), HcError> {
        Ok(())
    }
    fn reset_port(&mut self, _port: u8) -> Result<(), HcError> {
        Ok(())
    }
    fn disable_port(&mut self, _port: u8) -> Result<(), HcError> {
        Ok(())
    }
    fn create_device(&mut self, _info: &DeviceInfo) -> Result<DeviceId, HcError> {
        Err(HcError::NotSupported("fake: use plug()"))
    }
    fn address_device(&mut self, _device: DeviceId) -> Result<u8, HcError> {
        Err(HcError::NotSupported("fake"))
    }
    fn set_ep0_max_packet(&mut self, _device: DeviceId, _max_packet: u16) -> Result<(), HcError> {
        Ok(())
    }
    fn set_hub_info(&mut self, _device: DeviceId, _hub: &HubInfo) -> Result<(), HcError> {
        Ok(())
    }
    fn configure_endpoints(
        &mut self,
        device: DeviceId,
        endpoints: &[EndpointInfo],
    ) -> Result<(), HcError> {
        if self.dev_mut(device).is_none() {
            return Err(HcError::NoDevice);
        }
        self.configured
            .push((device, endpoints.iter().map(|e| e.address).collect()));
        Ok(())
    }
    fn submit(&mut self, r: &TransferRequest<'_>) -> Result<TransferId, HcError> {
        if self.dev_mut(r.device).is_none() {
            return Err(HcError::NoDevice);
        }
        let ep = if r.endpoint.is_ep0() { 0 } else { r.endpoint.0 };
        if self.halted.contains(&(r.device, ep)) {
            return Err(HcError::EndpointHalted);
        }
        let queued = self
            .queue
            .iter()
            .chain(self.parked.iter())
            .filter(|q| q.device == r.device && q.ep == ep)
            .count();
        if self.ring_capacity.is_some_and(|c| queued >= c) {
            return Err(HcError::NoResources);
        }
        let id = TransferId(self.next_tid);
        self.next_tid += 1;
        self.queue.push_back(Queued {
            id,
            device: r.device,
            ep,
            setup: r.setup,
            segs: r.buffer.to_vec(),
        });
        Ok(id)
    }
    fn cancel(&mut self, id: TransferId) -> Result<bool, HcError> {
        if let Some(pos) = self.queue.iter().position(|q| q.id == id) {
            let q = self.queue.remove(pos).unwrap();
            self.done(q, 0, Err(HcError::Cancelled));
            return Ok(true);
        }
        if let Some(pos) = self.parked.iter().position(|q| q.id == id) {
            let q = self.parked.remove(pos).unwrap();
            self.done(q, 0, Err(HcError::Cancelled));
            return Ok(true);
        }
        Ok(false)
    }
    fn clear_halt(&mut self, device: DeviceId, endpoint: EndpointAddress) -> Result<(), HcError> {
        let ep = if endpoint.is_ep0() { 0 } else { endpoint.0 };
        self.clear_halts.push((device, ep));
        self.halted.remove(&(device, ep));
        Ok(())
    }
    fn release_device(&mut self, device: DeviceId) -> Result<(), HcError> {
        let (gone, rest): (Vec<Queued>, Vec<Queued>) =
            self.queue.drain(..).partition(|q| q.device == device);
        self.queue = rest.into();
        for q in gone {
            self.done(q, 0, Err(HcError::NoDevice));
        }
        self.halted.retain(|(d, _)| *d != device);
        Ok(())
    }
    fn poll(&mut self) -> Option<HcEvent> {
        if !self.hold {
            // Parked (NAKed) transfers are retried first: they were submitted earlier.
            let parked: Vec<Queued> = self.parked.drain(..).collect();
            for q in parked.into_iter().rev() {
                self.queue.push_front(q);
            }
            while let Some(q) = self.queue.pop_front() {
                self.run(q);
            }
        }
        self.events.pop_front()
    }
}
