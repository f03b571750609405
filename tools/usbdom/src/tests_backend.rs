//! The tool against usbdom's real backend (`pvusb`) over the simulated xenstore: both sides agree
//! on paths, formats and the lifecycle.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::tests::args;
use pvusb::{Backend, ClientStore, Config, PhysDevice, PortPath};
use usb_core::hc::*;
use xenidc::abi::DomId;
use xenidc::sim::{Sim, SimDomain};
use xenidc::xenstore::server::{Server, SimTransport};

/// The backend never reaches the controller in these tests (no frontend connects).
struct NoHc;

impl HostController for NoHc {
    fn num_ports(&self) -> u8 {
        4
    }
    fn port_status(&mut self, _: u8) -> Result<PortStatus, HcError> {
        Err(HcError::NotSupported("stub"))
    }
    fn clear_port_changes(&mut self, _: u8, _: PortChanges) -> Result<(), HcError> {
        Ok(())
    }
    fn reset_port(&mut self, _: u8) -> Result<(), HcError> {
        Ok(())
    }
    fn disable_port(&mut self, _: u8) -> Result<(), HcError> {
        Ok(())
    }
    fn create_device(&mut self, _: &DeviceInfo) -> Result<DeviceId, HcError> {
        Err(HcError::NotSupported("stub"))
    }
    fn address_device(&mut self, _: DeviceId) -> Result<u8, HcError> {
        Err(HcError::NotSupported("stub"))
    }
    fn set_ep0_max_packet(&mut self, _: DeviceId, _: u16) -> Result<(), HcError> {
        Ok(())
    }
    fn set_hub_info(&mut self, _: DeviceId, _: &HubInfo) -> Result<(), HcError> {
        Ok(())
    }
    fn configure_endpoints(&mut self, _: DeviceId, _: &[EndpointInfo]) -> Result<(), HcError> {
        Ok(())
    }
    fn submit(&mut self, _: &TransferRequest<'_>) -> Result<TransferId, HcError> {
        Err(HcError::NoDevice)
    }
    fn cancel(&mut self, _: TransferId) -> Result<bool, HcError> {
        Ok(false)
    }
    fn clear_halt(&mut self, _: DeviceId, _: EndpointAddress) -> Result<(), HcError> {
        Ok(())
    }
    fn release_device(&mut self, _: DeviceId) -> Result<(), HcError> {
        Ok(())
    }
    fn poll(&mut self) -> Option<HcEvent> {
        None
    }
}

type Be = Backend<SimDomain, ClientStore<SimTransport>>;

fn bounded() -> Box<dyn FnMut() -> bool> {
    let mut n = 0;
    Box::new(move || {
        n += 1;
        n < 100
    })
}

/// A simulated xenstore with dom0, usbdom (domain 1, named) and a frontend domain 3.
fn xenstore_with_usbdom() -> Rc<RefCell<Server>> {
    let server = Rc::new(RefCell::new(Server::new()));
    {
        let mut s = server.borrow_mut();
        s.add_domain(0);
        s.add_domain(1);
        s.add_domain(3);
        s.admin_write("/local/domain/1/name", b"usbdom", &[]);
    }
    server
}

#[test]
fn tool_and_backend_agree() {
    let sim = Sim::new();
    let server = xenstore_with_usbdom();
    let be: Rc<RefCell<Be>> = Rc::new(RefCell::new(Backend::new(
        sim.add_domain(DomId(1)),
        ClientStore::new(Client::new(SimTransport::connect(&server, 1)), bounded()),
        Config::default(),
    )));
    be.borrow_mut().start().unwrap();
    // One round of usbdom's event loop, half a second later than the last.
    let serve = {
        let be = be.clone();
        let sim = sim.clone();
        move || {
            sim.advance_ns(500_000_000);
            let mut b = be.borrow_mut();
            b.process_xenstore(&mut NoHc).unwrap();
            b.tick(&mut NoHc).unwrap();
        }
    };
    be.borrow_mut()
        .device_attached(
            &mut NoHc,
            PhysDevice {
                path: PortPath::parse("1-2").unwrap(),
                device: DeviceId(1),
                speed: Speed::High,
                vendor: 0x0781,
                product_id: 0x5567,
                product: Some("Cruzer\u{1}Blade".into()),
                config: None,
            },
        )
        .unwrap();
    let mut t = Tool::new(
        Client::new(SimTransport::connect(&server, 0)),
        bounded(),
        bounded(),
    );
    let out = run(&mut t, &args("list")).unwrap();
    assert!(
        out.contains("1-2") && out.contains("0781:5567") && out.contains("Cruzer?Blade"),
        "{out}"
    );

    // --wait: the tool polls while the backend works.
    let s1 = serve.clone();
    t.pause = Box::new(move || {
        s1();
        true
    });
    run(&mut t, &args("create-controller 3 --ports 2 --wait")).unwrap();
    let out = run(&mut t, &args("status")).unwrap();
    assert!(out.contains("backend InitWait(2)"), "{out}");

    run(&mut t, &args("attach 3 1 1-2 --wait")).unwrap();
    let out = run(&mut t, &args("list")).unwrap();
    assert!(out.contains("domain 3 controller 0 port 1"), "{out}");
    assert_eq!(
        be.borrow().frontends()[0].assigned,
        vec![(1, PortPath::parse("1-2").unwrap())]
    );
    assert!(matches!(
        run(&mut t, &args("attach 3 2 1-2")),
        Err(ToolError::DeviceBusy { .. })
    ));

    run(&mut t, &args("detach 3 1")).unwrap();
    serve();
    assert!(be.borrow().frontends()[0].assigned.is_empty());
    let out = run(&mut t, &args("list")).unwrap();
    assert!(out.lines().nth(1).unwrap().ends_with('-'), "{out}");

    // Removal: the tool waits while the backend closes and deletes its directory.
    let serve2 = serve.clone();
    t.pause = Box::new(move || {
        serve2();
        true
    });
    let out = run(&mut t, &args("remove-controller 3")).unwrap();
    assert!(!out.contains("note"), "{out}");
    assert!(be.borrow().frontends().is_empty());
    assert!(server
        .borrow()
        .admin_read("/local/domain/1/backend/vusb/3/0")
        .is_none());
    assert!(server
        .borrow()
        .admin_read("/local/domain/3/device/vusb/0")
        .is_none());

    // The device goes away: the tool says so.
    be.borrow_mut()
        .device_detached(&mut NoHc, PortPath::parse("1-2").unwrap())
        .unwrap();
    run(&mut t, &args("create-controller 3")).unwrap();
    assert_eq!(
        run(&mut t, &args("attach 3 1 1-2")).unwrap_err(),
        ToolError::DeviceGone("1-2".into())
    );
}

#[test]
fn wait_without_usbdom_is_a_clear_error() {
    let server = xenstore_with_usbdom();
    let mut t = Tool::new(
        Client::new(SimTransport::connect(&server, 0)),
        bounded(),
        bounded(),
    );
    match run(&mut t, &args("create-controller 3 --wait")) {
        Err(ToolError::NotServed(m)) => assert!(m.contains("is it running"), "{m}"),
        other => panic!("{other:?}"),
    }
}
