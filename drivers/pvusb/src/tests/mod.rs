//! Host tests of the backend: the simulated hypervisor and xenstore, a fake host controller with a
//! fake mass-storage stick, and simulated frontends that follow what Linux `xen-hcd` does.

mod fakehc;
mod scenarios;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use fakehc::{DmaMap, FakeHc, FakeStick, RecHv};
use usb_core::hc::{DeviceId, HcEvent, HostController, Route, Speed};
use xenidc::abi::usbif::*;
use xenidc::abi::{DomId, GrantRef};
use xenidc::channel::FrontChannel;
use xenidc::hypervisor::{Hypervisor, LocalPage};
use xenidc::shm::{HostMem, SharedMem};
use xenidc::sim::{Sim, SimDomain};
use xenidc::xenstore::server::{home_path, Server, SimTransport};
use xenidc::xenstore::{Access, Client, Perm, TxId};

use crate::{Backend, ClientStore, Config, PhysDevice, PortPath};

pub const BE: u16 = 1;

fn nowait() -> Box<dyn FnMut() -> bool> {
    let mut n = 0u32;
    Box::new(move || {
        n += 1;
        n < 1000
    })
}

pub struct World {
    pub sim: Sim,
    pub server: Rc<RefCell<Server>>,
    pub be: Backend<RecHv, ClientStore<SimTransport>>,
    pub hc: FakeHc,
    /// `run` performs the resets the backend asks for (on by default).
    pub auto_reset: bool,
}

impl World {
    pub fn new(zero_copy: bool) -> World {
        let _ = env_logger_init();
        let sim = Sim::new();
        let server = Rc::new(RefCell::new(Server::new()));
        server.borrow_mut().add_domain(BE);
        let dma = DmaMap::default();
        let hv = RecHv {
            inner: sim.add_domain(DomId(BE)),
            dma: dma.clone(),
        };
        let xs = Client::new(SimTransport::connect(&server, BE));
        let mut be = Backend::new(
            hv,
            ClientStore::new(xs, nowait()),
            Config {
                controller: 1,
                zero_copy,
            },
        );
        be.start().unwrap();
        World {
            sim,
            server,
            be,
            hc: FakeHc::new(dma),
            auto_reset: true,
        }
    }

    /// Plug a stick into root port `port` and tell the backend (as the USB core would after
    /// enumerating it).
    pub fn plug(&mut self, port: u8, speed: Speed) -> DeviceId {
        let stick = FakeStick::new(speed, 256);
        let cfg = usb_core::descriptor::Configuration::parse(&stick.config_descriptor()).unwrap();
        let id = self.hc.plug(port, stick);
        let dev = PhysDevice {
            path: PortPath::new(1, Route::root(port)),
            device: id,
            speed,
            vendor: fakehc::VID,
            product_id: fakehc::PID,
            product: Some("Fake Stick".into()),
            config: Some(cfg),
        };
        self.be.device_attached(&mut self.hc, dev).unwrap();
        id
    }

    /// Reset what the backend asks to reset (as `Backend::poll_bus` does with a usb-core bus).
    pub fn do_resets(&mut self) {
        for (path, id) in self.be.take_due_resets() {
            let port = path.route().root_port;
            let (old, stick) = self
                .hc
                .devices
                .get(&port)
                .expect("reset of an unplugged device");
            assert_eq!(*old, id, "reset handed out for the current device");
            let (speed, kbd) = (stick.speed, stick.keyboard);
            let cfg =
                usb_core::descriptor::Configuration::parse(&stick.config_descriptor()).unwrap();
            self.be.begin_reset(path);
            let new = self.hc.reset(port).unwrap();
            self.be.device_detached(&mut self.hc, path).unwrap();
            let (vendor, product_id, product) = if kbd {
                (0x0627, 0x0001, "QEMU USB Keyboard")
            } else {
                (fakehc::VID, fakehc::PID, "Fake Stick")
            };
            let dev = PhysDevice {
                path,
                device: new,
                speed,
                vendor,
                product_id,
                product: Some(product.into()),
                config: Some(cfg),
            };
            self.be.device_attached(&mut self.hc, dev).unwrap();
            self.be.end_reset(&mut self.hc, path);
        }
    }

    pub fn unplug(&mut self, port: u8) {
        self.hc.unplug(port);
        self.be
            .device_detached(&mut self.hc, PortPath::new(1, Route::root(port)))
            .unwrap();
    }

    /// What libxl does for `usbctrl` with `backend_domid` = usbdom (pvusb-protocol.md §1.12).
    pub fn toolstack_create(&mut self, fe: u16, devid: u32, ports: u32, ver: u32) {
        let mut s = self.server.borrow_mut();
        if s.admin_read(&home_path(fe)).is_none() {
            s.add_domain(fe);
        }
        let be = format!("{}/backend/vusb/{fe}/{devid}", home_path(BE));
        let fep = format!("{}/device/vusb/{devid}", home_path(fe));
        let be_perms = [
            Perm {
                domid: BE,
                access: Access::None,
            },
            Perm {
                domid: fe,
                access: Access::Read,
            },
        ];
        let fe_perms = [
            Perm {
                domid: fe,
                access: Access::None,
            },
            Perm {
                domid: BE,
                access: Access::Read,
            },
        ];
        s.admin_write(&fep, b"", &fe_perms);
        s.admin_write(&format!("{fep}/backend"), be.as_bytes(), &[]);
        s.admin_write(&format!("{fep}/backend-id"), BE.to_string().as_bytes(), &[]);
        s.admin_write(&format!("{fep}/state"), b"1", &[]);
        s.admin_write(&be, b"", &be_perms);
        s.admin_write(&format!("{be}/frontend"), fep.as_bytes(), &[]);
        s.admin_write(&format!("{be}/frontend-id"), fe.to_string().as_bytes(), &[]);
        s.admin_write(&format!("{be}/online"), b"1", &[]);
        s.admin_write(&format!("{be}/type"), b"pv", &[]);
        s.admin_write(&format!("{be}/usb-ver"), ver.to_string().as_bytes(), &[]);
        s.admin_write(
            &format!("{be}/num-ports"),
            ports.to_string().as_bytes(),
            &[],
        );
        s.admin_write(&format!("{be}/port"), b"", &[]);
        for p in 1..=ports {
            s.admin_write(&format!("{be}/port/{p}"), b"", &[]);
        }
        s.admin_write(&format!("{be}/state"), b"1", &[]);
    }

    pub fn be_path(fe: u16, devid: u32) -> String {
        format!("{}/backend/vusb/{fe}/{devid}", home_path(BE))
    }

    pub fn assign(&mut self, fe: u16, devid: u32, port: u8, path: &str) {
        let p = format!("{}/port/{port}", Self::be_path(fe, devid));
        self.server
            .borrow_mut()
            .admin_write(&p, path.as_bytes(), &[]);
    }

    pub fn be_state(&self, fe: u16, devid: u32) -> Option<u32> {
        let p = format!("{}/state", Self::be_path(fe, devid));
        let s = self.server.borrow();
        s.admin_read(&p)
            .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
    }

    pub fn read(&self, path: &str) -> Option<String> {
        self.server
            .borrow()
            .admin_read(path)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    /// Run the backend's event loop and the frontends until nothing changes.
    pub fn run(&mut self, fronts: &mut [&mut Frontend]) {
        for _ in 0..12 {
            self.be.process_xenstore(&mut self.hc).unwrap();
            for f in fronts.iter_mut() {
                f.react();
            }
            self.be.process_xenstore(&mut self.hc).unwrap();
            while self.be.process_rings(&mut self.hc) {}
            // As `Backend::poll_bus` does: every completion answered, then published once.
            while let Some(ev) = self.hc.poll() {
                if let HcEvent::Transfer(c) = ev {
                    assert!(
                        self.be.answer(&mut self.hc, &c),
                        "completion {c:?} not the backend's"
                    );
                }
            }
            self.be.publish(&mut self.hc);
            for f in fronts.iter_mut() {
                f.poll();
            }
            if self.auto_reset {
                self.do_resets();
            }
        }
        // Settled: the backend does not keep writing to xenstore in reaction to its own writes.
        self.be.process_xenstore(&mut self.hc).unwrap();
        let (events, _) = crate::Store::take_events(self.be.xenstore()).unwrap();
        assert!(events.is_empty(), "backend not quiescent: {events:?}");
    }

    pub fn be_stats(&self) -> xenidc::sim::DomStats {
        self.sim.stats(DomId(BE))
    }
}

fn env_logger_init() -> Result<(), ()> {
    Ok(())
}

/// A simulated `xen-hcd`: connects when the backend is InitWait (going straight to Connected),
/// keeps the conn ring full of slots, records responses and port speeds.
pub struct Frontend {
    pub dom: SimDomain,
    pub id: u16,
    pub devid: u32,
    pub xs: Client<SimTransport>,
    pub urb: Option<FrontChannel<SimDomain, UrbRequest, UrbResponse>>,
    pub conn: Option<FrontChannel<SimDomain, ConnRequest, ConnResponse>>,
    pub pages: Vec<(LocalPage<HostMem>, GrantRef)>,
    pub responses: Vec<UrbResponse>,
    pub speeds: BTreeMap<u8, u8>,
    pub conn_log: Vec<(u8, u8)>,
    /// Set to stop reacting to backend state (hostile or dead frontends).
    pub passive: bool,
    pub auto_connect: bool,
}

impl Frontend {
    pub fn new(w: &mut World, id: u16, devid: u32) -> Frontend {
        {
            let mut s = w.server.borrow_mut();
            if s.admin_read(&home_path(id)).is_none() {
                s.add_domain(id);
            }
        }
        let dom = w.sim.add_domain(DomId(id));
        let xs = Client::new(SimTransport::connect(&w.server, id));
        Frontend {
            dom,
            id,
            devid,
            xs,
            urb: None,
            conn: None,
            pages: Vec::new(),
            responses: Vec::new(),
            speeds: BTreeMap::new(),
            conn_log: Vec::new(),
            passive: false,
            auto_connect: true,
        }
    }

    pub fn path(&self) -> String {
        format!("{}/device/vusb/{}", home_path(self.id), self.devid)
    }

    fn be_state(&mut self) -> Option<u32> {
        let be = self
            .xs
            .read_string(TxId::NONE, &format!("{}/backend", self.path()), &mut || {
                true
            })
            .ok()?;
        let s = self
            .xs
            .read_string(TxId::NONE, &format!("{be}/state"), &mut || true)
            .ok()?;
        s.parse().ok()
    }

    pub fn set_state(&mut self, s: u32) {
        let p = format!("{}/state", self.path());
        self.xs
            .write(TxId::NONE, &p, s.to_string().as_bytes(), &mut || true)
            .unwrap();
    }

    pub fn state(&mut self) -> u32 {
        let p = format!("{}/state", self.path());
        self.xs
            .read_string(TxId::NONE, &p, &mut || true)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Allocate the rings and publish them, as xen-hcd does (then state 4).
    pub fn connect(&mut self) {
        let be = DomId(BE);
        let urb = FrontChannel::create(&mut self.dom, be).unwrap();
        let mut conn: FrontChannel<SimDomain, ConnRequest, ConnResponse> =
            FrontChannel::create(&mut self.dom, be).unwrap();
        for i in 0..CONN_RING_SIZE as u16 {
            conn.send(&ConnRequest { id: i }).unwrap();
        }
        conn.flush(&mut self.dom).unwrap();
        let p = self.path();
        let mut w = || true;
        self.xs
            .write(
                TxId::NONE,
                &format!("{p}/urb-ring-ref"),
                urb.ring_ref().0.to_string().as_bytes(),
                &mut w,
            )
            .unwrap();
        self.xs
            .write(
                TxId::NONE,
                &format!("{p}/conn-ring-ref"),
                conn.ring_ref().0.to_string().as_bytes(),
                &mut w,
            )
            .unwrap();
        self.xs
            .write(
                TxId::NONE,
                &format!("{p}/event-channel"),
                urb.port().0.to_string().as_bytes(),
                &mut w,
            )
            .unwrap();
        self.urb = Some(urb);
        self.conn = Some(conn);
        self.set_state(4);
    }

    /// React to the backend's state like xen-hcd.
    pub fn react(&mut self) {
        if self.passive {
            return;
        }
        let _ = self.xs.poll();
        while self.xs.next_event().is_some() {}
        let be = self.be_state();
        let me = self.state();
        match (be, me) {
            (Some(2), 1) if self.auto_connect => self.connect(),
            (Some(6), 5) | (Some(6), 4) => self.set_state(6),
            (Some(5), 4) => self.set_state(5),
            _ => {}
        }
    }

    /// Collect responses and conn events.
    pub fn poll(&mut self) {
        if let Some(urb) = self.urb.as_mut() {
            while let Ok(Some(r)) = urb.receive() {
                self.responses.push(r);
            }
        }
        if let Some(conn) = self.conn.as_mut() {
            let mut repost = Vec::new();
            while let Ok(Some(r)) = conn.receive() {
                self.conn_log.push((r.portnum, r.speed.0));
                self.speeds.insert(r.portnum, r.speed.0);
                repost.push(r.id);
            }
            for id in repost {
                conn.send(&ConnRequest { id }).unwrap();
            }
            let _ = conn.flush(&mut self.dom);
        }
    }

    /// A data page granted to the backend.
    pub fn page(&mut self, readonly: bool) -> (usize, GrantRef) {
        let p = self.dom.alloc_page().unwrap();
        let g = self.dom.grant_access(p.frame, DomId(BE), readonly).unwrap();
        self.pages.push((p, g));
        (self.pages.len() - 1, g)
    }

    pub fn page_mem(&self, i: usize) -> &HostMem {
        &self.pages[i].0.mem
    }

    pub fn send(&mut self, r: &UrbRequest) {
        let urb = self.urb.as_mut().unwrap();
        urb.send(r).unwrap();
        urb.flush(&mut self.dom).unwrap();
    }

    pub fn take(&mut self, id: u16) -> Vec<UrbResponse> {
        let (a, b): (Vec<_>, Vec<_>) = self.responses.drain(..).partition(|r| r.id == id);
        self.responses = b;
        a
    }
}

/// Build a request.
pub fn request(
    id: u16,
    pipe: UsbifPipe,
    setup: [u8; 8],
    segs: &[(GrantRef, u16, u16)],
) -> UrbRequest {
    let mut r = UrbRequest {
        id,
        pipe,
        u: setup,
        nr_buffer_segs: segs.len() as u16,
        ..Default::default()
    };
    let mut len = 0u32;
    for (i, &(gref, offset, length)) in segs.iter().enumerate() {
        r.seg[i] = RequestSegment {
            gref,
            offset,
            length,
        };
        len += length as u32;
    }
    r.buffer_length = len as u16;
    r
}

pub fn ctrl_pipe(port: u32, dev: u8, dir_in: bool) -> UsbifPipe {
    UsbifPipe::new(port, dev, 0, PipeType::CTRL, dir_in)
}

pub fn bulk_pipe(port: u32, dev: u8, ep: u8, dir_in: bool) -> UsbifPipe {
    UsbifPipe::new(port, dev, ep, PipeType::BULK, dir_in)
}

pub fn cbw(tag: u32, read: bool, lba: u32, blocks: u16) -> [u8; 31] {
    let mut c = [0u8; 31];
    c[0..4].copy_from_slice(b"USBC");
    c[4..8].copy_from_slice(&tag.to_le_bytes());
    c[8..12].copy_from_slice(&(blocks as u32 * 512).to_le_bytes());
    c[12] = if read { 0x80 } else { 0 };
    c[14] = 10;
    c[15] = if read { 0x28 } else { 0x2a };
    c[17..21].copy_from_slice(&lba.to_be_bytes());
    c[22..24].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[allow(dead_code)]
fn _unused(_: &dyn HostController) {}
#[allow(dead_code)]
fn _unused2(m: &HostMem) -> usize {
    m.size()
}
