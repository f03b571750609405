//! The tool against the simulated xenstore server.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use xenidc::xenstore::server::{Server, SimTransport};
use xenidc::xenstore::{Access, Perm};

const BE: u16 = 1;
const FE: u16 = 3;

fn setup() -> (Rc<RefCell<Server>>, Tool<SimTransport>) {
    let server = Rc::new(RefCell::new(Server::new()));
    {
        let mut s = server.borrow_mut();
        s.add_domain(0);
        s.add_domain(BE);
        s.add_domain(FE);
        s.admin_write("/local/domain/1/name", b"usbdom", &[]);
        s.admin_write("/local/domain/3/name", b"guest", &[]);
    }
    let mut n = 0;
    let mut pauses = 0;
    let t = Tool::new(
        Client::new(SimTransport::connect(&server, 0)),
        Box::new(move || {
            n += 1;
            n < 100
        }),
        Box::new(move || {
            pauses += 1;
            pauses < 3
        }),
    );
    (server, t)
}

/// What usbdom publishes for a device.
fn publish(server: &Rc<RefCell<Server>>, node: &str, path: &str, assigned: &str) {
    let mut s = server.borrow_mut();
    let base = format!("/local/domain/{BE}/data/usbdom/devices/{node}");
    s.admin_write(&format!("{base}/path"), path.as_bytes(), &[]);
    s.admin_write(&format!("{base}/vid-pid"), b"0781:5567", &[]);
    s.admin_write(&format!("{base}/speed"), b"high", &[]);
    s.admin_write(&format!("{base}/product"), b"Fake Stick", &[]);
    s.admin_write(&format!("{base}/assigned"), assigned.as_bytes(), &[]);
}

pub(crate) fn args(s: &str) -> Args {
    let v: Vec<String> = s.split_whitespace().map(String::from).collect();
    parse_args(&v).unwrap()
}

fn read(server: &Rc<RefCell<Server>>, p: &str) -> Option<String> {
    server
        .borrow()
        .admin_read(p)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn argument_parsing() {
    let a = args("create-controller 3 --ports 4 --version 1 --backend usbdom");
    assert_eq!(
        (a.cmd.as_str(), a.ports, a.version),
        ("create-controller", 4, 1)
    );
    assert_eq!(a.backend.as_deref(), Some("usbdom"));
    let a = args("attach guest 2 1-3.2 --controller 1");
    assert_eq!(a.pos, vec!["guest", "2", "1-3.2"]);
    assert_eq!(a.controller, 1);
    let bad = |s: &str| {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>()).unwrap_err()
    };
    assert!(bad("frobnicate").contains("unknown command"));
    assert!(bad("attach 3 1").contains("expected 3 arguments"));
    assert!(bad("list --ports").contains("needs a value"));
    assert!(bad("list --ports x").contains("not a number"));
    assert!(bad("list --bogus").contains("unknown option"));
    assert!(bad("").contains("no command"));
}

#[test]
fn create_controller_writes_what_libxl_would() {
    let (server, mut t) = setup();
    let out = run(&mut t, &args("create-controller 3 --ports 4")).unwrap();
    assert!(out.contains("controller 0 for domain 3"), "{out}");
    let fe = "/local/domain/3/device/vusb/0";
    let be = "/local/domain/1/backend/vusb/3/0";
    assert_eq!(read(&server, &format!("{fe}/backend")).as_deref(), Some(be));
    assert_eq!(
        read(&server, &format!("{fe}/backend-id")).as_deref(),
        Some("1")
    );
    assert_eq!(read(&server, &format!("{fe}/state")).as_deref(), Some("1"));
    assert_eq!(
        read(&server, &format!("{be}/frontend")).as_deref(),
        Some(fe)
    );
    assert_eq!(
        read(&server, &format!("{be}/frontend-id")).as_deref(),
        Some("3")
    );
    assert_eq!(read(&server, &format!("{be}/online")).as_deref(), Some("1"));
    assert_eq!(read(&server, &format!("{be}/state")).as_deref(), Some("1"));
    assert_eq!(
        read(&server, &format!("{be}/usb-ver")).as_deref(),
        Some("2")
    );
    assert_eq!(
        read(&server, &format!("{be}/num-ports")).as_deref(),
        Some("4")
    );
    assert_eq!(read(&server, &format!("{be}/port/4")).as_deref(), Some(""));
    assert_eq!(read(&server, &format!("{be}/port/5")), None);
    let s = server.borrow();
    assert_eq!(
        s.admin_perms(fe).unwrap(),
        &[
            Perm {
                domid: FE,
                access: Access::None
            },
            Perm {
                domid: BE,
                access: Access::Read
            }
        ]
    );
    assert_eq!(
        s.admin_perms(be).unwrap(),
        &[
            Perm {
                domid: BE,
                access: Access::None
            },
            Perm {
                domid: FE,
                access: Access::Read
            }
        ]
    );
    // Keys below inherit: the frontend may write its own ring keys, the backend its state.
    assert_eq!(s.admin_perms(&format!("{be}/port/1")).unwrap()[0].domid, BE);
    drop(s);
    // A second controller gets the next devid.
    let out = run(
        &mut t,
        &args("create-controller guest --version 1 --ports 2"),
    )
    .unwrap();
    assert!(out.contains("controller 1 for domain 3"), "{out}");
    assert_eq!(
        read(&server, "/local/domain/1/backend/vusb/3/1/usb-ver").as_deref(),
        Some("1")
    );
}

#[test]
fn clear_errors() {
    let (server, mut t) = setup();
    let e = |t: &mut Tool<SimTransport>, s: &str| run(t, &args(s)).unwrap_err();
    assert_eq!(
        e(&mut t, "create-controller 42"),
        ToolError::UnknownDomain("42".into())
    );
    assert_eq!(
        e(&mut t, "create-controller 3 --backend 9"),
        ToolError::UnknownDomain("9".into())
    );
    assert!(matches!(
        e(&mut t, "create-controller 3 --ports 32"),
        ToolError::BadArgument(_)
    ));
    assert!(matches!(
        e(&mut t, "create-controller 3 --version 3"),
        ToolError::BadArgument(_)
    ));
    assert!(matches!(
        e(&mut t, "create-controller 1"),
        ToolError::BadArgument(_)
    ));
    assert_eq!(
        e(&mut t, "attach 3 1 1-1"),
        ToolError::NoController {
            frontend: 3,
            devid: 0
        }
    );
    run(&mut t, &args("create-controller 3 --ports 2")).unwrap();
    assert_eq!(
        e(&mut t, "attach 3 1 1-1"),
        ToolError::DeviceGone("1-1".into())
    );
    assert!(matches!(
        e(&mut t, "attach 3 1 usb1"),
        ToolError::BadArgument(_)
    ));
    publish(&server, "1-1", "1-1", "");
    publish(&server, "1-2_3", "1-2.3", "7/0/1");
    assert_eq!(
        e(&mut t, "attach 3 3 1-1"),
        ToolError::BadPort { port: 3, ports: 2 }
    );
    assert!(matches!(
        e(&mut t, "attach 3 1 1-2.3"),
        ToolError::DeviceBusy { .. }
    ));
    run(&mut t, &args("attach 3 1 1-1")).unwrap();
    assert_eq!(
        read(&server, "/local/domain/1/backend/vusb/3/0/port/1").as_deref(),
        Some("1-1")
    );
    publish(&server, "1-4", "1-4", "");
    assert_eq!(
        e(&mut t, "attach 3 1 1-4"),
        ToolError::PortInUse {
            port: 1,
            device: "1-1".into()
        }
    );
    // Written to a port but not taken up by usbdom yet: still refused elsewhere.
    assert!(matches!(
        e(&mut t, "attach 3 2 1-1"),
        ToolError::DeviceBusy { .. }
    ));
    assert_eq!(e(&mut t, "detach 3 2"), ToolError::PortEmpty { port: 2 });
    let out = run(&mut t, &args("detach guest 1")).unwrap();
    assert!(out.contains("detached 1-1"), "{out}");
    assert_eq!(
        read(&server, "/local/domain/1/backend/vusb/3/0/port/1").as_deref(),
        Some("")
    );
    // Messages are readable.
    assert!(ToolError::PortInUse {
        port: 1,
        device: "1-1".into()
    }
    .to_string()
    .contains("in use"));
    assert!(ToolError::DeviceGone("1-9".into())
        .to_string()
        .contains("not present"));
}

#[test]
fn backend_by_name_or_missing() {
    let (server, mut t) = setup();
    assert_eq!(t.backend(None).unwrap(), BE);
    assert_eq!(t.backend(Some("1")).unwrap(), BE);
    server
        .borrow_mut()
        .admin_write("/local/domain/1/name", b"other", &[]);
    assert!(matches!(t.backend(None), Err(ToolError::NoBackend(_))));
    assert_eq!(t.backend(Some("other")).unwrap(), BE);
}

#[test]
fn list_and_status() {
    let (server, mut t) = setup();
    publish(&server, "1-1", "1-1", "3/0/1");
    publish(&server, "1-2_3", "1-2.3", "");
    let out = run(&mut t, &args("list")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].starts_with("1-1")
            && lines[1].contains("0781:5567")
            && lines[1].contains("domain 3 controller 0 port 1")
    );
    assert!(lines[2].starts_with("1-2.3") && lines[2].ends_with("-"));
    run(&mut t, &args("create-controller 3 --ports 2")).unwrap();
    run(&mut t, &args("attach 3 2 1-2.3")).unwrap();
    server
        .borrow_mut()
        .admin_write("/local/domain/1/backend/vusb/3/0/state", b"4", &[]);
    let out = run(&mut t, &args("status")).unwrap();
    assert!(out.contains("driver domain 1 (usbdom)"), "{out}");
    assert!(out.contains("domain 3 controller 0: usb-ver 2, 2 ports, backend Connected(4), frontend Initialising(1)"), "{out}");
    assert!(out.contains("port 2: 1-2.3"), "{out}");
}

#[test]
fn path_syntax_matches_the_backend() {
    for ok in ["1-1", "1-3.2", "2-255", "1-1.15.1.1.1.1"] {
        assert!(tool::valid_path(ok), "{ok}");
    }
    for bad in [
        "",
        "1",
        "1-",
        "1-0",
        "0-1",
        "1-3.16",
        "1-1.1.1.1.1.1.1",
        "1-a",
        "1-3.",
        "x-1",
    ] {
        assert!(!tool::valid_path(bad), "{bad}");
    }
}

#[test]
fn remove_controller_like_libxl() {
    let (server, mut t) = setup();
    run(&mut t, &args("create-controller 3 --ports 2")).unwrap();
    let be = "/local/domain/1/backend/vusb/3/0";
    // A usbdom that answers: it closes and removes its directory while the tool waits.
    let srv = server.clone();
    t.pause = Box::new(move || {
        let mut s = srv.borrow_mut();
        assert_eq!(s.admin_read(&format!("{be}/online")), Some(&b"0"[..]));
        assert_eq!(s.admin_read(&format!("{be}/state")), Some(&b"5"[..]));
        s.admin_rm(be);
        true
    });
    let out = run(&mut t, &args("remove-controller 3")).unwrap();
    assert!(!out.contains("note"), "{out}");
    assert!(read(&server, be).is_none());
    assert!(read(&server, "/local/domain/3/device/vusb/0").is_none());
    // No usbdom: the tool gives up waiting and removes both directories itself.
    run(&mut t, &args("create-controller 3 --ports 2")).unwrap();
    let mut n = 0;
    t.pause = Box::new(move || {
        n += 1;
        n < 3
    });
    let out = run(&mut t, &args("remove-controller 3")).unwrap();
    assert!(out.contains("note: usbdom did not remove"), "{out}");
    assert!(read(&server, be).is_none());
    assert!(read(&server, "/local/domain/3/device/vusb/0").is_none());
    assert_eq!(
        run(&mut t, &args("remove-controller 3")).unwrap_err(),
        ToolError::NoController {
            frontend: 3,
            devid: 0
        }
    );
}

/// Time that passes only when the tool sleeps.
#[derive(Clone)]
struct FakeClock(Rc<std::cell::Cell<Duration>>);

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.0.get()
    }
    fn sleep(&mut self, d: Duration) {
        self.0.set(self.0.get() + d);
    }
}

/// A xenstore whose reply is never there at the first look after a request: every request waits
/// at least once.
/// `mute` makes it answer nothing at all.
struct Slow {
    inner: SimTransport,
    skip: bool,
    mute: Rc<std::cell::Cell<bool>>,
}

impl xenidc::xenstore::Transport for Slow {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, xenidc::xenstore::TransportError> {
        self.skip = true;
        self.inner.send(bytes)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, xenidc::xenstore::TransportError> {
        if std::mem::take(&mut self.skip) || self.mute.get() {
            return Ok(0);
        }
        self.inner.recv(buf)
    }
}

#[test]
fn each_request_and_each_polling_loop_has_its_own_deadline() {
    let (server, _) = setup();
    let clock = FakeClock(Rc::new(std::cell::Cell::new(Duration::ZERO)));
    let mute = Rc::new(std::cell::Cell::new(false));
    let (wait, pause) = policies(|| clock.clone());
    let slow = Slow {
        inner: SimTransport::connect(&server, 0),
        skip: false,
        mute: mute.clone(),
    };
    let mut t = Tool::new(Client::new(slow), wait, pause);
    run(&mut t, &args("create-controller 3 --ports 2")).unwrap();
    // No usbdom: polling for the backend directory to go spends a whole budget, and the requests
    // after it (removing both directories) still get their replies.
    let before = clock.now();
    let out = run(&mut t, &args("remove-controller 3")).unwrap();
    assert!(out.contains("note: usbdom did not remove"), "{out}");
    assert!(
        clock.now() - before >= WAIT_BUDGET,
        "the pause used its budget"
    );
    assert!(read(&server, "/local/domain/3/device/vusb/0").is_none());
    // A second polling loop gets a full budget too: creating and waiting for a backend that never
    // comes takes another whole budget, not zero.
    let before = clock.now();
    match run(&mut t, &args("create-controller 3 --wait")) {
        Err(ToolError::NotServed(m)) => assert!(m.contains("is it running"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(clock.now() - before >= WAIT_BUDGET);
    // A reply that never comes: that request gives up after its budget, with a clear error.
    mute.set(true);
    let before = clock.now();
    let e = run(&mut t, &args("status --backend 1")).unwrap_err();
    assert!(e.to_string().contains("gave up waiting"), "{e}");
    let spent = clock.now() - before;
    assert!(
        spent >= WAIT_BUDGET && spent < WAIT_BUDGET + Duration::from_secs(1),
        "{spent:?}"
    );
}
