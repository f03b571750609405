//! The commands of the dom0 tool, over any xenstore [`Transport`] (the real one or the simulated
//! server of the tests).
//!
//! `create-controller` writes the frontend and backend directories the way libxl does for a
//! `usbctrl` with `backend_domid` set (`../shared/reference/pvusb-protocol.md` §1.12, §2.4): the
//! frontend directory `/local/domain/<fe>/device/vusb/<devid>` owned by the frontend and readable
//! by the backend, with `backend`, `backend-id` and `state` = 1; the backend directory
//! `/local/domain/<be>/backend/vusb/<fe>/<devid>` owned by the backend and readable by the
//! frontend, with `frontend`, `frontend-id`, `online` = 1, `state` = 1, `type` = pv, `usb-ver`,
//! `num-ports` and empty `port/1..N`. `attach`/`detach` write `port/N` (what `xl usbdev-attach`
//! cannot do for a driver domain). The device list is what usbdom publishes under
//! `/local/domain/<be>/data/usbdom/devices`.

use std::fmt;
use std::fmt::Write as _;

use xenidc::xenstore::{Access, Client, Error as XsError, Perm, Transport, TxId};

/// A tool error: a message for the user; exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// A domain id or name that does not exist.
    UnknownDomain(String),
    /// The backend driver domain could not be determined.
    NoBackend(String),
    /// No such virtual controller.
    NoController { frontend: u16, devid: u32 },
    /// Port outside 1..=num-ports.
    BadPort { port: u32, ports: u32 },
    /// The port already carries a device.
    PortInUse { port: u32, device: String },
    /// The port carries no device.
    PortEmpty { port: u32 },
    /// The device is not (any more) published by the driver domain.
    DeviceGone(String),
    /// The device is exported elsewhere.
    DeviceBusy { device: String, by: String },
    /// Malformed argument.
    BadArgument(String),
    /// usbdom did not do what was asked in time (with `--wait`).
    NotServed(String),
    /// xenstore failed.
    Xenstore(String),
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::UnknownDomain(d) => write!(f, "unknown domain {d}"),
            ToolError::NoBackend(why) => write!(f, "cannot find the usbdom driver domain: {why} (use --backend DOM)"),
            ToolError::NoController { frontend, devid } => {
                write!(f, "domain {frontend} has no usbdom controller {devid} (create-controller first)")
            }
            ToolError::BadPort { port, ports } => write!(f, "port {port} out of range 1..{ports}"),
            ToolError::PortInUse { port, device } => write!(f, "port {port} is in use (device {device}); detach it first"),
            ToolError::PortEmpty { port } => write!(f, "port {port} has no device"),
            ToolError::DeviceGone(d) => write!(f, "device {d} is not present in the driver domain (gone or never seen; see `usbdom list`)"),
            ToolError::DeviceBusy { device, by } => write!(f, "device {device} is already attached to {by}"),
            ToolError::BadArgument(a) => write!(f, "{a}"),
            ToolError::NotServed(e) => write!(f, "{e}"),
            ToolError::Xenstore(e) => write!(f, "xenstore: {e}"),
        }
    }
}

impl From<XsError> for ToolError {
    fn from(e: XsError) -> Self {
        ToolError::Xenstore(e.to_string())
    }
}

/// A physical device published by usbdom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub node: String,
    pub path: String,
    pub vid_pid: String,
    pub speed: String,
    pub product: String,
    pub assigned: String,
}

/// A wait policy. Each wait (one xenstore request, one polling loop) starts with
/// [`Wait::begin`], which gives it a budget of its own; [`Wait::more`] is called between polls and
/// returns false once that wait should give up. A plain closure is a policy whose budget never
/// restarts.
pub trait Wait {
    /// A new wait starts.
    fn begin(&mut self) {}
    /// Pause before the next poll; false gives up.
    fn more(&mut self) -> bool;
}

impl<F: FnMut() -> bool> Wait for F {
    fn more(&mut self) -> bool {
        self()
    }
}

/// Start a wait of `w` and return it as the closure the xenstore client calls between polls.
fn waiting(w: &mut Box<dyn Wait>) -> impl FnMut() -> bool + '_ {
    w.begin();
    move || w.more()
}

/// The tool: a xenstore client plus its wait policies.
pub struct Tool<T: Transport> {
    pub xs: Client<T>,
    /// Used while a xenstore reply is outstanding (one wait per request or transaction).
    pub wait: Box<dyn Wait>,
    /// Used between polls of a condition, e.g. the backend removing its directory (one wait per
    /// polling loop).
    pub pause: Box<dyn Wait>,
}

/// Validate a port path (`<controller>-<port>[.<port>…]`); same rules as the backend.
pub fn valid_path(s: &str) -> bool {
    let Some((c, rest)) = s.split_once('-') else {
        return false;
    };
    let num = |x: &str, max: u32| {
        !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()) && {
            let v: u32 = x.parse().unwrap_or(0);
            v >= 1 && v <= max
        }
    };
    let parts: Vec<&str> = rest.split('.').collect();
    num(c, 255) && num(parts[0], 255) && parts.len() <= 6 && parts[1..].iter().all(|p| num(p, 15))
}

fn parse_num(s: &str) -> Option<u32> {
    (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

impl<T: Transport> Tool<T> {
    pub fn new(xs: Client<T>, wait: impl Wait + 'static, pause: impl Wait + 'static) -> Self {
        Tool {
            xs,
            wait: Box::new(wait),
            pause: Box::new(pause),
        }
    }

    fn read(&mut self, path: &str) -> Result<Option<String>, ToolError> {
        match self
            .xs
            .read_string(TxId::NONE, path, &mut waiting(&mut self.wait))
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn dir(&mut self, path: &str) -> Result<Vec<String>, ToolError> {
        match self
            .xs
            .directory(TxId::NONE, path, &mut waiting(&mut self.wait))
        {
            Ok(v) => Ok(v),
            Err(e) if e.is_enoent() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// A domain given as a number or a name → its id, if it exists.
    pub fn domain(&mut self, spec: &str) -> Result<u16, ToolError> {
        if let Some(id) = parse_num(spec) {
            if id <= 0x7fef && self.read(&format!("/local/domain/{id}"))?.is_some() {
                return Ok(id as u16);
            }
            return Err(ToolError::UnknownDomain(spec.to_string()));
        }
        for d in self.dir("/local/domain")? {
            if self.read(&format!("/local/domain/{d}/name"))?.as_deref() == Some(spec) {
                if let Some(id) = parse_num(&d) {
                    return Ok(id as u16);
                }
            }
        }
        Err(ToolError::UnknownDomain(spec.to_string()))
    }

    /// The driver domain: `--backend` or the domain named `usbdom`.
    pub fn backend(&mut self, spec: Option<&str>) -> Result<u16, ToolError> {
        match spec {
            Some(s) => self.domain(s),
            None => self
                .domain("usbdom")
                .map_err(|_| ToolError::NoBackend("no domain named usbdom".into())),
        }
    }

    /// Devices published by the driver domain `be`.
    pub fn devices(&mut self, be: u16) -> Result<Vec<Device>, ToolError> {
        let base = format!("/local/domain/{be}/data/usbdom/devices");
        let mut out = Vec::new();
        for node in self.dir(&base)? {
            let get = |t: &mut Self, k: &str| -> Result<String, ToolError> {
                Ok(t.read(&format!("{base}/{node}/{k}"))?.unwrap_or_default())
            };
            let path = get(self, "path")?;
            if path.is_empty() {
                continue;
            }
            out.push(Device {
                path,
                vid_pid: get(self, "vid-pid")?,
                speed: get(self, "speed")?,
                product: get(self, "product")?,
                assigned: get(self, "assigned")?,
                node,
            });
        }
        Ok(out)
    }

    pub fn list(&mut self, be: u16) -> Result<String, ToolError> {
        let devs = self.devices(be)?;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<10} {:<10} {:<6} {:<24} ATTACHED TO",
            "PATH", "VID:PID", "SPEED", "PRODUCT"
        );
        for d in devs {
            let by = if d.assigned.is_empty() {
                "-".to_string()
            } else {
                describe_assigned(&d.assigned)
            };
            let _ = writeln!(
                s,
                "{:<10} {:<10} {:<6} {:<24} {by}",
                d.path, d.vid_pid, d.speed, d.product
            );
        }
        Ok(s)
    }

    /// Create a virtual controller for frontend `fe` served by `be`; returns its devid.
    pub fn create_controller(
        &mut self,
        fe: u16,
        be: u16,
        ports: u32,
        version: u32,
    ) -> Result<u32, ToolError> {
        if !(1..=31).contains(&ports) {
            return Err(ToolError::BadArgument(format!(
                "--ports {ports}: must be 1..31"
            )));
        }
        if !(1..=2).contains(&version) {
            return Err(ToolError::BadArgument(format!(
                "--version {version}: must be 1 or 2"
            )));
        }
        if fe == be {
            return Err(ToolError::BadArgument(
                "the frontend cannot be the driver domain itself".into(),
            ));
        }
        let used: Vec<u32> = self
            .dir(&format!("/local/domain/{fe}/device/vusb"))?
            .iter()
            .filter_map(|d| parse_num(d))
            .collect();
        let devid = (0..).find(|d| !used.contains(d)).unwrap();
        let fe_path = format!("/local/domain/{fe}/device/vusb/{devid}");
        let be_path = format!("/local/domain/{be}/backend/vusb/{fe}/{devid}");
        let fe_perms = [
            Perm {
                domid: fe,
                access: Access::None,
            },
            Perm {
                domid: be,
                access: Access::Read,
            },
        ];
        let be_perms = [
            Perm {
                domid: be,
                access: Access::None,
            },
            Perm {
                domid: fe,
                access: Access::Read,
            },
        ];
        // One wait for the whole transaction.
        let r = self
            .xs
            .transaction(10, &mut waiting(&mut self.wait), |xs, tx, w| {
                xs.mkdir(tx, &fe_path, w)?;
                xs.set_perms(tx, &fe_path, &fe_perms, w)?;
                xs.write(tx, &format!("{fe_path}/backend"), be_path.as_bytes(), w)?;
                xs.write(
                    tx,
                    &format!("{fe_path}/backend-id"),
                    be.to_string().as_bytes(),
                    w,
                )?;
                xs.write(tx, &format!("{fe_path}/state"), b"1", w)?;
                xs.mkdir(tx, &be_path, w)?;
                xs.set_perms(tx, &be_path, &be_perms, w)?;
                for (k, v) in [
                    ("frontend", fe_path.clone()),
                    ("frontend-id", fe.to_string()),
                    ("online", "1".into()),
                    ("type", "pv".into()),
                    ("usb-ver", version.to_string()),
                    ("num-ports", ports.to_string()),
                    ("port", String::new()),
                ] {
                    xs.write(tx, &format!("{be_path}/{k}"), v.as_bytes(), w)?;
                }
                for p in 1..=ports {
                    xs.write(tx, &format!("{be_path}/port/{p}"), b"", w)?;
                }
                // Last: the backend reacts to the directory once it is complete.
                xs.write(tx, &format!("{be_path}/state"), b"1", w)?;
                Ok(())
            });
        r?;
        Ok(devid)
    }

    fn controller(&mut self, fe: u16, devid: u32, be: u16) -> Result<(String, u32), ToolError> {
        let be_path = format!("/local/domain/{be}/backend/vusb/{fe}/{devid}");
        let ports = self
            .read(&format!("{be_path}/num-ports"))?
            .and_then(|s| parse_num(&s))
            .ok_or(ToolError::NoController {
                frontend: fe,
                devid,
            })?;
        Ok((be_path, ports))
    }

    /// Attach the physical device `path` to port `port` of controller `devid` of `fe`.
    pub fn attach(
        &mut self,
        fe: u16,
        devid: u32,
        port: u32,
        path: &str,
        be: u16,
    ) -> Result<(), ToolError> {
        if !valid_path(path) {
            return Err(ToolError::BadArgument(format!(
                "{path:?} is not a device path (<controller>-<port>[.<port>...], see `usbdom list`)"
            )));
        }
        let (be_path, ports) = self.controller(fe, devid, be)?;
        if port == 0 || port > ports {
            return Err(ToolError::BadPort { port, ports });
        }
        let dev = self
            .devices(be)?
            .into_iter()
            .find(|d| d.path == path)
            .ok_or_else(|| ToolError::DeviceGone(path.to_string()))?;
        let current = self
            .read(&format!("{be_path}/port/{port}"))?
            .unwrap_or_default();
        if !current.is_empty() {
            return Err(ToolError::PortInUse {
                port,
                device: current,
            });
        }
        if !dev.assigned.is_empty() {
            return Err(ToolError::DeviceBusy {
                device: path.into(),
                by: describe_assigned(&dev.assigned),
            });
        }
        // Also refuse a device written into another port but not yet taken up by usbdom.
        for (ofe, odev, oport, val) in self.all_ports(be)? {
            if val == path {
                return Err(ToolError::DeviceBusy {
                    device: path.into(),
                    by: describe_assigned(&format!("{ofe}/{odev}/{oport}")),
                });
            }
        }
        self.xs.write(
            TxId::NONE,
            &format!("{be_path}/port/{port}"),
            path.as_bytes(),
            &mut waiting(&mut self.wait),
        )?;
        Ok(())
    }

    /// Detach whatever is on port `port`.
    pub fn detach(&mut self, fe: u16, devid: u32, port: u32, be: u16) -> Result<String, ToolError> {
        let (be_path, ports) = self.controller(fe, devid, be)?;
        if port == 0 || port > ports {
            return Err(ToolError::BadPort { port, ports });
        }
        let current = self
            .read(&format!("{be_path}/port/{port}"))?
            .unwrap_or_default();
        if current.is_empty() {
            return Err(ToolError::PortEmpty { port });
        }
        self.xs.write(
            TxId::NONE,
            &format!("{be_path}/port/{port}"),
            b"",
            &mut waiting(&mut self.wait),
        )?;
        Ok(current)
    }

    /// Remove controller `devid` of `fe` as libxl removes a device: backend `online` = 0 and
    /// `state` = Closing, wait for usbdom to close and delete its directory, then delete the
    /// frontend directory. Returns a note if usbdom did not answer (the directories are removed
    /// anyway).
    pub fn remove_controller(
        &mut self,
        fe: u16,
        devid: u32,
        be: u16,
    ) -> Result<Option<String>, ToolError> {
        let (be_path, _) = self.controller(fe, devid, be)?;
        let fe_path = self
            .read(&format!("{be_path}/frontend"))?
            .unwrap_or_else(|| format!("/local/domain/{fe}/device/vusb/{devid}"));
        self.xs.write(
            TxId::NONE,
            &format!("{be_path}/online"),
            b"0",
            &mut waiting(&mut self.wait),
        )?;
        self.xs.write(
            TxId::NONE,
            &format!("{be_path}/state"),
            b"5",
            &mut waiting(&mut self.wait),
        )?;
        let mut note = None;
        self.pause.begin();
        loop {
            if self.read(&format!("{be_path}/frontend"))?.is_none() {
                break;
            }
            if !self.pause.more() {
                note = Some(format!(
                    "usbdom did not remove {be_path} (not running?); removed it here"
                ));
                self.xs
                    .rm(TxId::NONE, &be_path, &mut waiting(&mut self.wait))?;
                break;
            }
        }
        match self
            .xs
            .rm(TxId::NONE, &fe_path, &mut waiting(&mut self.wait))
        {
            Err(e) if !e.is_enoent() => return Err(e.into()),
            _ => {}
        }
        Ok(note)
    }

    /// Wait (with `pause` between polls) until usbdom took controller `devid` of `fe` up: its
    /// backend `state` is InitWait or later. Returns the state reached.
    pub fn wait_backend_ready(&mut self, fe: u16, devid: u32, be: u16) -> Result<u32, ToolError> {
        let p = format!("/local/domain/{be}/backend/vusb/{fe}/{devid}/state");
        self.pause.begin();
        loop {
            let st = self.read(&p)?.and_then(|s| parse_num(&s)).unwrap_or(0);
            if (2..=4).contains(&st) {
                return Ok(st);
            }
            if st >= 5 {
                return Err(ToolError::NotServed(format!(
                    "usbdom closed controller {devid} of domain {fe} (state {st}); see its console"
                )));
            }
            if !self.pause.more() {
                return Err(ToolError::NotServed(format!(
                    "usbdom (domain {be}) did not take up controller {devid} of domain {fe}: is it running?"
                )));
            }
        }
    }

    /// Wait until usbdom reports device `path` exported on `fe`/`devid`/`port`.
    pub fn wait_attached(
        &mut self,
        fe: u16,
        devid: u32,
        port: u32,
        path: &str,
        be: u16,
    ) -> Result<(), ToolError> {
        let want = format!("{fe}/{devid}/{port}");
        self.pause.begin();
        loop {
            let d = self.devices(be)?.into_iter().find(|d| d.path == path);
            match d {
                None => return Err(ToolError::DeviceGone(path.to_string())),
                Some(d) if d.assigned == want => return Ok(()),
                Some(_) => {}
            }
            if !self.pause.more() {
                return Err(ToolError::NotServed(format!(
                    "usbdom did not take up {path} on port {port}: is it running?"
                )));
            }
        }
    }

    /// Every `port/N` of every controller served by `be`: (frontend, devid, port, value).
    fn all_ports(&mut self, be: u16) -> Result<Vec<(String, String, u32, String)>, ToolError> {
        let base = format!("/local/domain/{be}/backend/vusb");
        let mut out = Vec::new();
        for fe in self.dir(&base)? {
            for dev in self.dir(&format!("{base}/{fe}"))? {
                let n = self
                    .read(&format!("{base}/{fe}/{dev}/num-ports"))?
                    .and_then(|s| parse_num(&s))
                    .unwrap_or(0)
                    .min(31);
                for p in 1..=n {
                    let v = self
                        .read(&format!("{base}/{fe}/{dev}/port/{p}"))?
                        .unwrap_or_default();
                    out.push((fe.clone(), dev.clone(), p, v));
                }
            }
        }
        Ok(out)
    }

    /// Controllers served by `be`, with states and ports.
    pub fn status(&mut self, be: u16) -> Result<String, ToolError> {
        let base = format!("/local/domain/{be}/backend/vusb");
        let mut s = String::new();
        let name = self
            .read(&format!("/local/domain/{be}/name"))?
            .unwrap_or_default();
        let _ = writeln!(s, "driver domain {be} ({name})");
        let fes = self.dir(&base)?;
        if fes.is_empty() {
            let _ = writeln!(s, "  no controllers");
        }
        for fe in fes {
            for dev in self.dir(&format!("{base}/{fe}"))? {
                let p = format!("{base}/{fe}/{dev}");
                let bstate = self.read(&format!("{p}/state"))?.unwrap_or_default();
                let fpath = self.read(&format!("{p}/frontend"))?.unwrap_or_default();
                let fstate = if fpath.is_empty() {
                    String::new()
                } else {
                    self.read(&format!("{fpath}/state"))?
                        .unwrap_or_else(|| "gone".into())
                };
                let ver = self.read(&format!("{p}/usb-ver"))?.unwrap_or_default();
                let n = self
                    .read(&format!("{p}/num-ports"))?
                    .and_then(|x| parse_num(&x))
                    .unwrap_or(0);
                let _ = writeln!(
                    s,
                    "  domain {fe} controller {dev}: usb-ver {ver}, {n} ports, backend {}, frontend {}",
                    state_name(&bstate),
                    state_name(&fstate)
                );
                for port in 1..=n.min(31) {
                    let v = self.read(&format!("{p}/port/{port}"))?.unwrap_or_default();
                    if !v.is_empty() {
                        let _ = writeln!(s, "    port {port}: {v}");
                    }
                }
            }
        }
        Ok(s)
    }
}

fn describe_assigned(a: &str) -> String {
    let parts: Vec<&str> = a.split('/').collect();
    match parts.as_slice() {
        [fe, dev, port] => format!("domain {fe} controller {dev} port {port}"),
        _ => a.to_string(),
    }
}

fn state_name(s: &str) -> String {
    let n = match s {
        "1" => "Initialising",
        "2" => "InitWait",
        "3" => "Initialised",
        "4" => "Connected",
        "5" => "Closing",
        "6" => "Closed",
        "" => "-",
        other => return other.to_string(),
    };
    format!("{n}({s})")
}
