//! pcifront: the PV PCI frontend that gives a domU access to the PCI devices passed through with
//! `xl pci=[...]`.
//!
//! Protocol (Xen `xen/include/public/io/pciif.h`; the connection follows the xenbus handshake of
//! `io/xenbus.h`):
//!
//! 1. The toolstack creates the frontend node `device/pci/0` (with `backend` and `backend-id`) and
//!    the backend (dom0's pciback) publishes the virtual PCI roots as `root_num` and `root-<i>`
//!    (`"dddd:bb"`, hex) in its own directory.
//! 2. The frontend shares one page holding a `xen_pci_sharedinfo`, allocates an unbound event
//!    channel for the backend, writes `pci-op-ref`, `event-channel` and `magic` (= `"7"`) and
//!    switches to Initialised (3).
//! 3. The backend maps the page, binds the channel and switches to Connected (4); the frontend
//!    reads the roots and switches to Connected.
//! 4. Each operation (configuration read or write, MSI enable, ...) is written to the `op` field of
//!    the shared page; the frontend then sets bit 0 (`_XEN_PCIF_active`) of `flags`, notifies the
//!    backend and waits for the backend to clear the bit again, after which `op.err` and
//!    `op.value` hold the result.
//!
//! Everything a real domain needs from Xen (xenstore, granting a page, event channels, a clock) is
//! reached through the [`PcifrontHost`] trait, so this module is safe code tested on the host
//! against a simulated pciback (see the tests at the end of this file). Every wait has a deadline;
//! every value read from the backend is validated; failures are values ([`PcifrontError`]).
//!
//! The `xen_pci_sharedinfo` layout is defined here as offsets with compile-time checks
//! ([`layout`]); it mirrors `struct xen_pci_sharedinfo` of `io/pciif.h` (x86_64).

use crate::abi::{DomId, GrantRef, Port};
use crate::shm::{SharedMem, ShmError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Byte offsets into the shared page of the `xen_pci_sharedinfo` fields pcifront uses, derived from
/// the ABI structs of [`crate::abi::pciif`].
pub mod layout {
    use crate::abi::pciif::{self, XenPciOp, XenPciSharedInfo};
    use core::mem::offset_of;

    pub const FLAGS: usize = pciif::FLAGS_OFFSET;
    pub const OP: usize = pciif::OP_OFFSET;
    pub const OP_CMD: usize = offset_of!(XenPciOp, cmd);
    pub const OP_ERR: usize = offset_of!(XenPciOp, err);
    pub const OP_DOMAIN: usize = offset_of!(XenPciOp, domain);
    pub const OP_BUS: usize = offset_of!(XenPciOp, bus);
    pub const OP_DEVFN: usize = offset_of!(XenPciOp, devfn);
    pub const OP_OFFSET: usize = offset_of!(XenPciOp, offset);
    pub const OP_SIZE: usize = offset_of!(XenPciOp, size);
    pub const OP_VALUE: usize = offset_of!(XenPciOp, value);
    pub const OP_INFO: usize = offset_of!(XenPciOp, info);

    const _: () = assert!(offset_of!(XenPciSharedInfo, flags) == FLAGS);
    const _: () = assert!(offset_of!(XenPciSharedInfo, op) == OP);
    const _: () = assert!(core::mem::size_of::<XenPciSharedInfo>() <= crate::abi::PAGE_SIZE);
}

/// `_XEN_PCIF_active`: bit 0 of `flags`, set by the frontend, cleared by the backend.
pub use crate::abi::pciif::XEN_PCIF_ACTIVE;
/// `XEN_PCI_MAGIC` as written to xenstore.
pub const XEN_PCI_MAGIC: &str = "7";
/// The frontend node the toolstack creates for the first (only) PCI frontend.
pub const FRONTEND_PATH: &str = "device/pci/0";

/// `xen_pci_op` commands (`XEN_PCI_OP_*`). A wire value: an integer, not an enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciOpCmd(pub u32);

impl PciOpCmd {
    pub const CONF_READ: PciOpCmd = PciOpCmd(0);
    pub const CONF_WRITE: PciOpCmd = PciOpCmd(1);
    pub const ENABLE_MSI: PciOpCmd = PciOpCmd(2);
    pub const DISABLE_MSI: PciOpCmd = PciOpCmd(3);
    pub const ENABLE_MSIX: PciOpCmd = PciOpCmd(4);
    pub const DISABLE_MSIX: PciOpCmd = PciOpCmd(5);

    fn name(self) -> &'static str {
        match self.0 {
            0 => "conf_read",
            1 => "conf_write",
            2 => "enable_msi",
            3 => "disable_msi",
            4 => "enable_msix",
            5 => "disable_msix",
            _ => "unknown",
        }
    }
}

impl fmt::Display for PciOpCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// `xen_pci_op.err` values (`XEN_PCI_ERR_*`). A wire value from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciOpErr(pub i32);

impl PciOpErr {
    pub const SUCCESS: PciOpErr = PciOpErr(0);
    pub const DEV_NOT_FOUND: PciOpErr = PciOpErr(-1);
    pub const INVALID_OFFSET: PciOpErr = PciOpErr(-2);
    pub const ACCESS_DENIED: PciOpErr = PciOpErr(-3);
    pub const NOT_IMPLEMENTED: PciOpErr = PciOpErr(-4);
    pub const OP_FAILED: PciOpErr = PciOpErr(-5);
}

impl fmt::Display for PciOpErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0 => "success",
            -1 => "device not found",
            -2 => "invalid offset",
            -3 => "access denied",
            -4 => "not implemented",
            -5 => "operation failed",
            _ => "unknown error",
        };
        write!(f, "{} ({})", name, self.0)
    }
}

/// Xenbus states used by the handshake (`enum xenbus_state`, `io/xenbus.h`).
pub mod state {
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

/// A PCI function address (segment, bus, device, function) as seen by this domain: the virtual
/// topology pciback presents, not dom0's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Self {
        PciAddress {
            segment,
            bus,
            device: device & 0x1f,
            function: function & 7,
        }
    }

    /// `devfn` as in the PCI spec and `xen_pci_op.devfn`: device << 3 | function.
    pub fn devfn(&self) -> u32 {
        ((self.device as u32) << 3) | self.function as u32
    }

    /// Parse `"ssss:bb:dd.f"` (hex, as the toolstack and pciback write them).
    pub fn parse(s: &str) -> Option<PciAddress> {
        let (seg, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (dev, func) = rest.split_once('.')?;
        let segment = parse_hex(seg, 0xffff)? as u16;
        let bus = parse_hex(bus, 0xff)? as u8;
        let device = parse_hex(dev, 0x1f)? as u8;
        let function = parse_hex(func, 7)? as u8;
        Some(PciAddress {
            segment,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// One virtual PCI root (segment and bus) published by pciback as `root-<i>` = `"dddd:bb"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRoot {
    pub segment: u16,
    pub bus: u8,
}

impl PciRoot {
    pub fn parse(s: &str) -> Option<PciRoot> {
        let (seg, bus) = s.split_once(':')?;
        Some(PciRoot {
            segment: parse_hex(seg, 0xffff)? as u16,
            bus: parse_hex(bus, 0xff)? as u8,
        })
    }
}

/// Strict hex parse: 1..=8 hex digits, no sign, no prefix, value ≤ `max`.
fn parse_hex(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(s, 16).ok()?;
    (v <= max).then_some(v)
}

/// Strict decimal parse of a xenstore integer (surrounding whitespace and a trailing NUL are
/// tolerated, as some writers include them).
fn parse_dec(s: &str) -> Option<u32> {
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The identity of a function as read from its configuration header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciFunctionInfo {
    pub addr: PciAddress,
    pub vendor: u16,
    pub device: u16,
    /// class << 16 | subclass << 8 | prog-if
    pub class: u32,
    /// Header type (0x0e) without the multi-function bit.
    pub header_type: u8,
}

/// Errors of the xenstore / grant / event-channel layer below pcifront, with context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// What was being done, e.g. `"xenstore write device/pci/0/magic"`.
    pub what: String,
    /// The underlying error code (negative errno from Xen / xenstore error), if any.
    pub code: i32,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed (error {})", self.what, self.code)
    }
}

/// What pcifront needs from the domain it runs in.
///
/// The kernel implements it with the real hypervisor and xenstore client; host tests implement it
/// with a simulated pciback.
pub trait PcifrontHost {
    type Page: SharedMem;
    /// Read a xenstore node (path relative to our home, or absolute); `Ok(None)` when it does not
    /// exist.
    fn xs_read(&mut self, path: &str) -> Result<Option<String>, HostError>;
    fn xs_write(&mut self, path: &str, value: &str) -> Result<(), HostError>;
    /// Allocate a zeroed page, grant `backend` read-write access to it and return it with the
    /// grant reference.
    fn share_page(&mut self, backend: DomId) -> Result<(Self::Page, GrantRef), HostError>;
    /// Allocate an event channel port that `backend` may bind.
    fn alloc_unbound(&mut self, backend: DomId) -> Result<Port, HostError>;
    /// Send an event on `port`.
    fn notify(&mut self, port: Port);
    /// Block until an event may have arrived on `port` or until `deadline_ns` (in [`now_ns`]
    /// time), whichever is first. Spurious early returns are allowed.
    ///
    /// [`now_ns`]: PcifrontHost::now_ns
    fn wait_event(&mut self, port: Port, deadline_ns: u64);
    /// Block until the xenstore node `path` may have changed or until `deadline_ns`. Spurious
    /// early returns are allowed.
    fn wait_xs(&mut self, path: &str, deadline_ns: u64);
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
}

/// Errors of pcifront. Each displays as one line naming the cause (and the fix where there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcifrontError {
    /// `device/pci/0` does not exist: the domain was created without `pci=[...]`.
    NoDevice,
    /// A xenstore, grant or event-channel operation failed.
    Host(HostError),
    /// The backend (or toolstack) wrote a value we cannot use.
    BadValue { path: String, value: String },
    /// The backend did not reach Connected in time.
    ConnectTimeout { backend_state: Option<u32> },
    /// The backend is closing or closed.
    BackendGone { backend_state: u32 },
    /// The frontend is not connected (connect failed or was never attempted).
    NotConnected,
    /// The backend did not complete an operation in time.
    OpTimeout { cmd: PciOpCmd, addr: PciAddress },
    /// The previous operation timed out and the backend still has not completed it.
    Busy,
    /// The backend completed the operation with an error.
    Op {
        cmd: PciOpCmd,
        addr: PciAddress,
        err: PciOpErr,
    },
    /// A configuration access with a bad size or misaligned offset (a caller bug).
    BadAccess { offset: u16, size: u8 },
    /// MSI was enabled but the backend returned no usable pirq.
    BadPirq { value: u32 },
    /// An access to the shared page failed (cannot happen with a page-sized region).
    Shm(ShmError),
}

impl From<ShmError> for PcifrontError {
    fn from(e: ShmError) -> Self {
        PcifrontError::Shm(e)
    }
}

impl From<HostError> for PcifrontError {
    fn from(e: HostError) -> Self {
        PcifrontError::Host(e)
    }
}

impl fmt::Display for PcifrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcifrontError::NoDevice => write!(
                f,
                "no PCI device passed through: add pci=['BDF'] to the domain config"
            ),
            PcifrontError::Host(e) => write!(f, "pcifront: {e}"),
            PcifrontError::BadValue { path, value } => write!(
                f,
                "pcifront: unusable value {value:?} in xenstore {path}: is dom0's pciback working?"
            ),
            PcifrontError::ConnectTimeout { backend_state } => match backend_state {
                Some(s) => write!(
                    f,
                    "pcifront: backend did not connect in time (backend state {s}): is xen-pciback loaded in dom0?"
                ),
                None => write!(
                    f,
                    "pcifront: backend did not connect in time (no backend state): is xen-pciback loaded in dom0?"
                ),
            },
            PcifrontError::BackendGone { backend_state } => write!(
                f,
                "pcifront: backend is closing (state {backend_state}): was the device detached?"
            ),
            PcifrontError::NotConnected => write!(f, "pcifront: not connected"),
            PcifrontError::OpTimeout { cmd, addr } => {
                write!(f, "pcifront: backend did not answer {cmd} for {addr} in time")
            }
            PcifrontError::Busy => write!(
                f,
                "pcifront: backend still busy with a timed-out operation"
            ),
            PcifrontError::Op { cmd, addr, err } => {
                write!(f, "pcifront: {cmd} for {addr} failed: {err}")
            }
            PcifrontError::BadAccess { offset, size } => write!(
                f,
                "pcifront: bad configuration access of {size} bytes at {offset:#x}"
            ),
            PcifrontError::BadPirq { value } => {
                write!(f, "pcifront: backend returned no usable pirq ({value})")
            }
            PcifrontError::Shm(e) => write!(f, "pcifront: shared page: {e}"),
        }
    }
}

/// Timeouts of the handshake and of each operation.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From writing Initialised until the backend is Connected.
    pub connect_ns: u64,
    /// For each operation on the shared page.
    pub op_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Generous: under QEMU TCG dom0 is slow; Linux's pcifront allows 10 s per operation.
        Timeouts {
            connect_ns: 30_000_000_000,
            op_ns: 10_000_000_000,
        }
    }
}

/// Maximum number of roots we accept from the backend (pciback publishes one per virtual bus).
pub const MAX_ROOTS: u32 = 32;

/// A connected (or connecting) PCI frontend.
pub struct Pcifront<H: PcifrontHost> {
    host: H,
    page: H::Page,
    gref: GrantRef,
    port: Port,
    backend_id: DomId,
    backend_path: String,
    roots: Vec<PciRoot>,
    connected: bool,
    timeouts: Timeouts,
    /// Set when an operation timed out; cleared when the backend finally clears the flag.
    stuck: bool,
}

impl<H: PcifrontHost> Pcifront<H> {
    /// Run the whole handshake with default timeouts.
    pub fn connect(host: H) -> Result<Self, PcifrontError> {
        Self::connect_with(host, Timeouts::default())
    }

    /// Run the whole handshake: publish our page and channel, wait for the backend to connect, read
    /// the roots, switch to Connected.
    pub fn connect_with(mut host: H, timeouts: Timeouts) -> Result<Self, PcifrontError> {
        let backend_path_node = format!("{FRONTEND_PATH}/backend");
        let backend_path = match host.xs_read(&backend_path_node)? {
            Some(p) => p,
            None => return Err(PcifrontError::NoDevice),
        };
        let backend_path = String::from(backend_path.trim_end_matches('\0'));
        if !backend_path.starts_with('/') || backend_path.len() > 256 {
            return Err(PcifrontError::BadValue {
                path: backend_path_node,
                value: backend_path,
            });
        }
        let backend_id_node = format!("{FRONTEND_PATH}/backend-id");
        let backend_id = match host.xs_read(&backend_id_node)? {
            Some(v) => match parse_dec(&v) {
                Some(id) if DomId(id as u16).is_normal() && id <= 0xffff => DomId(id as u16),
                _ => {
                    return Err(PcifrontError::BadValue {
                        path: backend_id_node,
                        value: v,
                    })
                }
            },
            None => return Err(PcifrontError::NoDevice),
        };

        let (page, gref) = host.share_page(backend_id)?;
        let port = host.alloc_unbound(backend_id)?;
        page.write_u32(layout::FLAGS, 0)?;
        page.fence();

        host.xs_write(
            &format!("{FRONTEND_PATH}/pci-op-ref"),
            &format!("{}", gref.0),
        )?;
        host.xs_write(
            &format!("{FRONTEND_PATH}/event-channel"),
            &format!("{}", port.0),
        )?;
        host.xs_write(&format!("{FRONTEND_PATH}/magic"), XEN_PCI_MAGIC)?;
        host.xs_write(
            &format!("{FRONTEND_PATH}/state"),
            &format!("{}", state::INITIALISED),
        )?;

        let mut front = Pcifront {
            host,
            page,
            gref,
            port,
            backend_id,
            backend_path,
            roots: Vec::new(),
            connected: false,
            timeouts,
            stuck: false,
        };
        front.wait_backend_connected()?;
        front.read_roots()?;
        front.host.xs_write(
            &format!("{FRONTEND_PATH}/state"),
            &format!("{}", state::CONNECTED),
        )?;
        front.connected = true;
        Ok(front)
    }

    fn wait_backend_connected(&mut self) -> Result<(), PcifrontError> {
        let path = format!("{}/state", self.backend_path);
        let deadline = self.host.now_ns().saturating_add(self.timeouts.connect_ns);
        loop {
            let st = match self.host.xs_read(&path)? {
                Some(v) => match parse_dec(&v) {
                    Some(s) => Some(s),
                    None => return Err(PcifrontError::BadValue { path, value: v }),
                },
                None => None,
            };
            match st {
                Some(state::CONNECTED) => return Ok(()),
                Some(s) if s >= state::CLOSING => {
                    return Err(PcifrontError::BackendGone { backend_state: s })
                }
                _ => {}
            }
            if self.host.now_ns() >= deadline {
                return Err(PcifrontError::ConnectTimeout { backend_state: st });
            }
            self.host.wait_xs(&path, deadline);
        }
    }

    fn read_roots(&mut self) -> Result<(), PcifrontError> {
        let num_path = format!("{}/root_num", self.backend_path);
        let n = match self.host.xs_read(&num_path)? {
            Some(v) => match parse_dec(&v) {
                Some(n) if n <= MAX_ROOTS => n,
                _ => {
                    return Err(PcifrontError::BadValue {
                        path: num_path,
                        value: v,
                    })
                }
            },
            // pciback always publishes root_num; without it there is nothing to scan.
            None => 0,
        };
        let mut roots = Vec::new();
        for i in 0..n {
            let path = format!("{}/root-{i}", self.backend_path);
            let v = match self.host.xs_read(&path)? {
                Some(v) => v,
                None => {
                    return Err(PcifrontError::BadValue {
                        path,
                        value: String::new(),
                    })
                }
            };
            match PciRoot::parse(v.trim_end_matches('\0')) {
                Some(r) => {
                    if !roots.contains(&r) {
                        roots.push(r)
                    }
                }
                None => return Err(PcifrontError::BadValue { path, value: v }),
            }
        }
        self.roots = roots;
        Ok(())
    }

    /// The virtual roots (segment:bus) the backend published.
    pub fn roots(&self) -> &[PciRoot] {
        &self.roots
    }

    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }

    pub fn backend_path(&self) -> &str {
        &self.backend_path
    }

    /// The grant reference of the shared page and our event-channel port.
    pub fn channel(&self) -> (GrantRef, Port) {
        (self.gref, self.port)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Access to the host (for the kernel: to reuse the xenstore connection).
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// One operation on the shared page. Returns `(err, value)` as the backend left them.
    fn do_op(
        &mut self,
        cmd: PciOpCmd,
        addr: PciAddress,
        offset: i32,
        size: i32,
        value: u32,
    ) -> Result<(PciOpErr, u32), PcifrontError> {
        if !self.connected {
            return Err(PcifrontError::NotConnected);
        }
        let p = &self.page;
        if self.stuck {
            if p.load_u32_acquire(layout::FLAGS)? & XEN_PCIF_ACTIVE != 0 {
                return Err(PcifrontError::Busy);
            }
            self.stuck = false;
        }
        let o = layout::OP;
        p.write_u32(o + layout::OP_CMD, cmd.0)?;
        p.write_u32(o + layout::OP_ERR, 0)?;
        p.write_u32(o + layout::OP_DOMAIN, addr.segment as u32)?;
        p.write_u32(o + layout::OP_BUS, addr.bus as u32)?;
        p.write_u32(o + layout::OP_DEVFN, addr.devfn())?;
        p.write_u32(o + layout::OP_OFFSET, offset as u32)?;
        p.write_u32(o + layout::OP_SIZE, size as u32)?;
        p.write_u32(o + layout::OP_VALUE, value)?;
        p.write_u32(o + layout::OP_INFO, 0)?;
        // Hand the op to the backend: the release store makes the op visible before the flag. Only
        // the frontend sets bits in `flags` (we never register an AER handler, so the backend's
        // AER bits stay clear) and the backend only clears bit 0 after we set it, so a plain
        // store of the whole word cannot lose a concurrent update.
        let flags = p.load_u32_acquire(layout::FLAGS)?;
        p.store_u32_release(layout::FLAGS, flags | XEN_PCIF_ACTIVE)?;
        p.fence();
        self.host.notify(self.port);

        let deadline = self.host.now_ns().saturating_add(self.timeouts.op_ns);
        loop {
            // Acquire: the result is read only after the backend's clearing of the flag.
            if self.page.load_u32_acquire(layout::FLAGS)? & XEN_PCIF_ACTIVE == 0 {
                break;
            }
            if self.host.now_ns() >= deadline {
                // Leave the flag to the backend: clearing it here could let a late completion
                // overwrite the next operation. Further operations fail fast until it clears.
                self.stuck = true;
                return Err(PcifrontError::OpTimeout { cmd, addr });
            }
            self.host.wait_event(self.port, deadline);
        }
        let err = PciOpErr(self.page.read_u32(o + layout::OP_ERR)? as i32);
        let value = self.page.read_u32(o + layout::OP_VALUE)?;
        Ok((err, value))
    }

    /// Configuration-space read of `size` (1, 2 or 4) bytes at `offset` (aligned to `size`).
    pub fn conf_read(
        &mut self,
        addr: PciAddress,
        offset: u16,
        size: u8,
    ) -> Result<u32, PcifrontError> {
        check_access(offset, size)?;
        let (err, value) = self.do_op(PciOpCmd::CONF_READ, addr, offset as i32, size as i32, 0)?;
        if err != PciOpErr::SUCCESS {
            return Err(PcifrontError::Op {
                cmd: PciOpCmd::CONF_READ,
                addr,
                err,
            });
        }
        // Never hand the caller bits outside the access width, whatever the backend wrote.
        Ok(match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        })
    }

    /// Configuration-space write of `size` (1, 2 or 4) bytes at `offset` (aligned to `size`).
    pub fn conf_write(
        &mut self,
        addr: PciAddress,
        offset: u16,
        size: u8,
        value: u32,
    ) -> Result<(), PcifrontError> {
        check_access(offset, size)?;
        let (err, _) = self.do_op(
            PciOpCmd::CONF_WRITE,
            addr,
            offset as i32,
            size as i32,
            value,
        )?;
        if err != PciOpErr::SUCCESS {
            return Err(PcifrontError::Op {
                cmd: PciOpCmd::CONF_WRITE,
                addr,
                err,
            });
        }
        Ok(())
    }

    /// Ask the backend to enable MSI for `addr`; returns the pirq Xen bound it to.
    pub fn enable_msi(&mut self, addr: PciAddress) -> Result<u32, PcifrontError> {
        let (err, value) = self.do_op(PciOpCmd::ENABLE_MSI, addr, 0, 0, 0)?;
        if err != PciOpErr::SUCCESS {
            return Err(PcifrontError::Op {
                cmd: PciOpCmd::ENABLE_MSI,
                addr,
                err,
            });
        }
        // A pirq is a positive int; anything else means the backend could not set it up.
        if value == 0 || value > i32::MAX as u32 {
            return Err(PcifrontError::BadPirq { value });
        }
        Ok(value)
    }

    /// Ask the backend to disable MSI for `addr`.
    pub fn disable_msi(&mut self, addr: PciAddress) -> Result<(), PcifrontError> {
        let (err, _) = self.do_op(PciOpCmd::DISABLE_MSI, addr, 0, 0, 0)?;
        if err != PciOpErr::SUCCESS {
            return Err(PcifrontError::Op {
                cmd: PciOpCmd::DISABLE_MSI,
                addr,
                err,
            });
        }
        Ok(())
    }

    /// Read the identity of `addr`; `Ok(None)` when there is no function there.
    pub fn probe(&mut self, addr: PciAddress) -> Result<Option<PciFunctionInfo>, PcifrontError> {
        let id = match self.conf_read(addr, 0, 4) {
            Ok(v) => v,
            Err(PcifrontError::Op { err, .. }) if err == PciOpErr::DEV_NOT_FOUND => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return Ok(None);
        }
        let class_rev = self.conf_read(addr, 0x08, 4)?;
        let header = self.conf_read(addr, 0x0e, 1)? as u8;
        Ok(Some(PciFunctionInfo {
            addr,
            vendor,
            device: (id >> 16) as u16,
            class: class_rev >> 8,
            header_type: header & 0x7f,
        }))
    }

    /// Scan every device and function on every root bus. Functions 1..7 are probed only when
    /// function 0 says it is multi-function (header type bit 7).
    pub fn scan(&mut self) -> Result<Vec<PciFunctionInfo>, PcifrontError> {
        let mut found = Vec::new();
        let roots = self.roots.clone();
        for root in roots {
            for dev in 0..32u8 {
                let f0 = PciAddress::new(root.segment, root.bus, dev, 0);
                let Some(info) = self.probe(f0)? else {
                    continue;
                };
                found.push(info);
                let multi = self.conf_read(f0, 0x0e, 1)? & 0x80 != 0;
                if multi {
                    for func in 1..8u8 {
                        let a = PciAddress::new(root.segment, root.bus, dev, func);
                        if let Some(info) = self.probe(a)? {
                            found.push(info);
                        }
                    }
                }
            }
        }
        Ok(found)
    }
}

fn check_access(offset: u16, size: u8) -> Result<(), PcifrontError> {
    let ok = matches!(size, 1 | 2 | 4)
        && offset.is_multiple_of(size as u16)
        && (offset as usize) + (size as usize) <= 4096;
    if ok {
        Ok(())
    } else {
        Err(PcifrontError::BadAccess { offset, size })
    }
}

#[cfg(test)]
mod tests {
    //! pcifront against a simulated pciback: a xenstore map, a shared page both sides see, and a
    //! backend that follows the handshake and answers operations from per-function configuration
    //! spaces. Time is simulated; every wait advances it, so timeouts are exercised without real
    //! delays.
    use super::*;
    use crate::shm::HostMem;
    use alloc::collections::BTreeMap;
    use alloc::rc::Rc;
    use alloc::string::ToString;
    use alloc::vec;
    use core::cell::RefCell;

    const BACKEND: &str = "/local/domain/0/backend/pci/7/0";
    const STEP_NS: u64 = 1_000_000;

    type SimPage = HostMem;

    /// One operation as the backend saw it.
    #[derive(Debug, Clone, PartialEq)]
    struct SeenOp {
        cmd: u32,
        domain: u32,
        bus: u32,
        devfn: u32,
        offset: i32,
        size: i32,
        value: u32,
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Answer {
        /// Answer every op.
        Always,
        /// Never answer (a hung backend).
        Never,
        /// Answer only after this many waits of the frontend.
        After(u32),
    }

    struct Backend {
        state: u32,
        /// Goes to Connected when the frontend is Initialised and everything checks out.
        will_connect: bool,
        /// Switch to Closing instead of Connected.
        close_instead: bool,
        answer: Answer,
        waits_since_notify: u32,
        /// (segment, bus, devfn) → 256 bytes of configuration space.
        functions: BTreeMap<(u32, u32, u32), Vec<u8>>,
        /// Error to return for the next op instead of processing it.
        next_err: Option<i32>,
        /// Garbage the backend ORs into the value of reads (above the access width).
        read_noise: u32,
        msi_pirq: u32,
        seen: Vec<SeenOp>,
        /// Why the backend refused to connect, if it did.
        refused: Option<String>,
        pending_notify: bool,
        /// A hostile backend: answers (err, value) from this script instead of the devices.
        script: Option<alloc::collections::VecDeque<(i32, u32)>>,
    }

    struct Sim {
        xs: BTreeMap<String, String>,
        now: u64,
        grants: Vec<(GrantRef, DomId, SimPage)>,
        ports: Vec<(Port, DomId)>,
        be: Backend,
        fail_write: Option<String>,
    }

    #[derive(Clone)]
    struct SimHost(Rc<RefCell<Sim>>);

    impl Sim {
        fn page(&self) -> Option<SimPage> {
            let gref: u32 = self.xs.get("device/pci/0/pci-op-ref")?.parse().ok()?;
            self.grants
                .iter()
                .find(|(g, d, _)| g.0 == gref && *d == DomId::DOM0)
                .map(|(_, _, p)| p.clone())
        }

        /// One step of the simulated pciback.
        fn backend_step(&mut self) {
            let fe_state = self.xs.get("device/pci/0/state").cloned();
            if self.be.state == state::INIT_WAIT && fe_state.as_deref() == Some("3") {
                if self.be.close_instead {
                    self.set_be_state(state::CLOSING);
                    return;
                }
                if !self.be.will_connect {
                    return;
                }
                // What pciback checks before mapping the page and binding the channel.
                let magic_ok = self.xs.get("device/pci/0/magic").map(String::as_str) == Some("7");
                let page_ok = self.page().is_some();
                let port_ok = self
                    .xs
                    .get("device/pci/0/event-channel")
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| {
                        self.ports
                            .iter()
                            .any(|(q, d)| q.0 == p && *d == DomId::DOM0)
                    });
                if magic_ok && page_ok && port_ok {
                    self.set_be_state(state::CONNECTED);
                } else {
                    self.be.refused =
                        Some(format!("magic {magic_ok} page {page_ok} port {port_ok}"));
                    self.set_be_state(state::CLOSED);
                }
                return;
            }
            if self.be.state != state::CONNECTED || !self.be.pending_notify {
                return;
            }
            let Some(page) = self.page() else { return };
            if page.read_u32(layout::FLAGS).unwrap() & XEN_PCIF_ACTIVE == 0 {
                return;
            }
            self.be.waits_since_notify += 1;
            match self.be.answer {
                Answer::Never => return,
                Answer::After(n) if self.be.waits_since_notify <= n => return,
                _ => {}
            }
            self.be.pending_notify = false;
            let o = layout::OP;
            let op = SeenOp {
                cmd: page.read_u32(o + layout::OP_CMD).unwrap(),
                domain: page.read_u32(o + layout::OP_DOMAIN).unwrap(),
                bus: page.read_u32(o + layout::OP_BUS).unwrap(),
                devfn: page.read_u32(o + layout::OP_DEVFN).unwrap(),
                offset: page.read_u32(o + layout::OP_OFFSET).unwrap() as i32,
                size: page.read_u32(o + layout::OP_SIZE).unwrap() as i32,
                value: page.read_u32(o + layout::OP_VALUE).unwrap(),
            };
            self.be.seen.push(op.clone());
            let (err, value) = self.process(&op);
            page.write_u32(o + layout::OP_ERR, err as u32).unwrap();
            page.write_u32(o + layout::OP_VALUE, value).unwrap();
            let flags = page.read_u32(layout::FLAGS).unwrap();
            page.store_u32_release(layout::FLAGS, flags & !XEN_PCIF_ACTIVE)
                .unwrap();
        }

        fn process(&mut self, op: &SeenOp) -> (i32, u32) {
            if let Some(script) = self.be.script.as_mut() {
                return script.pop_front().unwrap_or((0, 0));
            }
            if let Some(e) = self.be.next_err.take() {
                return (e, 0);
            }
            let key = (op.domain, op.bus, op.devfn);
            let noise = self.be.read_noise;
            let pirq = self.be.msi_pirq;
            let Some(cfg) = self.be.functions.get_mut(&key) else {
                return (PciOpErr::DEV_NOT_FOUND.0, 0);
            };
            let off = op.offset as usize;
            let size = op.size as usize;
            match PciOpCmd(op.cmd) {
                PciOpCmd::CONF_READ => {
                    if off + size > cfg.len() {
                        return (PciOpErr::INVALID_OFFSET.0, 0);
                    }
                    let mut v = 0u32;
                    for i in 0..size {
                        v |= (cfg[off + i] as u32) << (8 * i);
                    }
                    let noise = if size < 4 { noise << (8 * size) } else { 0 };
                    (0, v | noise)
                }
                PciOpCmd::CONF_WRITE => {
                    if off + size > cfg.len() {
                        return (PciOpErr::INVALID_OFFSET.0, 0);
                    }
                    for i in 0..size {
                        cfg[off + i] = (op.value >> (8 * i)) as u8;
                    }
                    (0, 0)
                }
                PciOpCmd::ENABLE_MSI => (0, pirq),
                _ => (PciOpErr::NOT_IMPLEMENTED.0, 0),
            }
        }

        fn set_be_state(&mut self, s: u32) {
            self.be.state = s;
            self.xs.insert(format!("{BACKEND}/state"), s.to_string());
        }

        fn tick(&mut self, deadline: u64) {
            // Advance time but never jump far past the deadline, like a real timed wait.
            self.now = (self.now + STEP_NS).min(deadline.max(self.now + 1));
            self.backend_step();
        }
    }

    impl PcifrontHost for SimHost {
        type Page = SimPage;
        fn xs_read(&mut self, path: &str) -> Result<Option<String>, HostError> {
            Ok(self.0.borrow().xs.get(path).cloned())
        }
        fn xs_write(&mut self, path: &str, value: &str) -> Result<(), HostError> {
            let mut s = self.0.borrow_mut();
            if s.fail_write.as_deref() == Some(path) {
                return Err(HostError {
                    what: format!("xenstore write {path}"),
                    code: -13,
                });
            }
            s.xs.insert(path.to_string(), value.to_string());
            Ok(())
        }
        fn share_page(&mut self, backend: DomId) -> Result<(SimPage, GrantRef), HostError> {
            let mut s = self.0.borrow_mut();
            let page = HostMem::page();
            let gref = GrantRef(8 + s.grants.len() as u32);
            s.grants.push((gref, backend, page.clone()));
            Ok((page, gref))
        }
        fn alloc_unbound(&mut self, backend: DomId) -> Result<Port, HostError> {
            let mut s = self.0.borrow_mut();
            let port = Port(3 + s.ports.len() as u32);
            s.ports.push((port, backend));
            Ok(port)
        }
        fn notify(&mut self, port: Port) {
            let mut s = self.0.borrow_mut();
            let ours = s.xs.get("device/pci/0/event-channel").cloned();
            if ours == Some(port.0.to_string()) {
                s.be.pending_notify = true;
                s.be.waits_since_notify = 0;
            }
        }
        fn wait_event(&mut self, _port: Port, deadline_ns: u64) {
            self.0.borrow_mut().tick(deadline_ns);
        }
        fn wait_xs(&mut self, _path: &str, deadline_ns: u64) {
            self.0.borrow_mut().tick(deadline_ns);
        }
        fn now_ns(&self) -> u64 {
            self.0.borrow().now
        }
    }

    /// A configuration header for vendor:device, class, header type.
    fn cfg(vendor: u16, device: u16, class: u32, header: u8) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..2].copy_from_slice(&vendor.to_le_bytes());
        c[2..4].copy_from_slice(&device.to_le_bytes());
        c[8] = 0x01; // revision
        c[9] = class as u8;
        c[10] = (class >> 8) as u8;
        c[11] = (class >> 16) as u8;
        c[0x0e] = header;
        c[0x10..0x14].copy_from_slice(&0xfeb0_0004u32.to_le_bytes());
        c
    }

    fn devfn(dev: u32, func: u32) -> u32 {
        (dev << 3) | func
    }

    /// A toolstack-created frontend, a pciback in InitWait with one root `0000:00` holding an xHCI at
    /// 00.0.
    fn sim() -> SimHost {
        let mut xs = BTreeMap::new();
        xs.insert("device/pci/0/backend".to_string(), BACKEND.to_string());
        xs.insert("device/pci/0/backend-id".to_string(), "0".to_string());
        xs.insert("device/pci/0/state".to_string(), "1".to_string());
        xs.insert(format!("{BACKEND}/state"), "2".to_string());
        xs.insert(format!("{BACKEND}/root_num"), "1".to_string());
        xs.insert(format!("{BACKEND}/root-0"), "0000:00".to_string());
        let mut functions = BTreeMap::new();
        functions.insert((0, 0, devfn(0, 0)), cfg(0x1b36, 0x000d, 0x0c0330, 0));
        SimHost(Rc::new(RefCell::new(Sim {
            xs,
            now: 1_000,
            grants: Vec::new(),
            ports: Vec::new(),
            be: Backend {
                state: state::INIT_WAIT,
                will_connect: true,
                close_instead: false,
                answer: Answer::Always,
                waits_since_notify: 0,
                functions,
                next_err: None,
                read_noise: 0,
                msi_pirq: 55,
                seen: Vec::new(),
                refused: None,
                pending_notify: false,
                script: None,
            },
            fail_write: None,
        })))
    }

    fn quick() -> Timeouts {
        Timeouts {
            connect_ns: 50 * STEP_NS,
            op_ns: 20 * STEP_NS,
        }
    }

    fn connected(h: &SimHost) -> Pcifront<SimHost> {
        Pcifront::connect_with(h.clone(), quick()).expect("connect")
    }

    #[test]
    fn no_device_pci_node_is_the_agreed_error() {
        let h = sim();
        h.0.borrow_mut()
            .xs
            .retain(|k, _| !k.starts_with("device/pci"));
        let e = Pcifront::connect_with(h.clone(), quick()).err().unwrap();
        assert_eq!(e, PcifrontError::NoDevice);
        assert_eq!(
            e.to_string(),
            "no PCI device passed through: add pci=['BDF'] to the domain config"
        );
        // Nothing was granted or allocated for a device that is not there.
        assert!(h.0.borrow().grants.is_empty());
        assert!(h.0.borrow().ports.is_empty());
    }

    #[test]
    fn handshake_publishes_page_channel_magic_and_connects() {
        let h = sim();
        let f = connected(&h);
        let s = h.0.borrow();
        assert_eq!(s.be.refused, None);
        assert_eq!(s.be.state, state::CONNECTED);
        let (gref, port) = f.channel();
        assert_eq!(s.xs["device/pci/0/pci-op-ref"], gref.0.to_string());
        assert_eq!(s.xs["device/pci/0/event-channel"], port.0.to_string());
        assert_eq!(s.xs["device/pci/0/magic"], "7");
        assert_eq!(s.xs["device/pci/0/state"], "4");
        // The page went to the backend domain, the port is for the backend domain.
        assert_eq!(s.grants.len(), 1);
        assert_eq!((s.grants[0].0, s.grants[0].1), (gref, DomId::DOM0));
        assert_eq!(s.ports, vec![(port, DomId::DOM0)]);
        assert_eq!(f.roots(), &[PciRoot { segment: 0, bus: 0 }]);
        assert_eq!(f.backend_path(), BACKEND);
        assert!(f.is_connected());
    }

    #[test]
    fn conf_read_fills_the_op_and_returns_the_backend_value() {
        let h = sim();
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        assert_eq!(f.conf_read(a, 0, 4).unwrap(), 0x000d_1b36);
        assert_eq!(f.conf_read(a, 0, 2).unwrap(), 0x1b36);
        assert_eq!(f.conf_read(a, 2, 2).unwrap(), 0x000d);
        assert_eq!(f.conf_read(a, 0x0b, 1).unwrap(), 0x0c);
        let s = h.0.borrow();
        assert_eq!(s.be.seen.len(), 4);
        assert_eq!(
            s.be.seen[2],
            SeenOp {
                cmd: 0,
                domain: 0,
                bus: 0,
                devfn: 0,
                offset: 2,
                size: 2,
                value: 0
            }
        );
        // The flag is clear after each completed op.
        let page = s.page().unwrap();
        assert_eq!(page.read_u32(layout::FLAGS).unwrap() & XEN_PCIF_ACTIVE, 0);
    }

    #[test]
    fn conf_write_reaches_the_device_and_reads_back() {
        let h = sim();
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        f.conf_write(a, 0x04, 2, 0x0006).unwrap();
        assert_eq!(f.conf_read(a, 0x04, 2).unwrap(), 0x0006);
        f.conf_write(a, 0x10, 4, 0xffff_ffff).unwrap();
        assert_eq!(f.conf_read(a, 0x10, 4).unwrap(), 0xffff_ffff);
        let s = h.0.borrow();
        assert_eq!(s.be.seen[0].cmd, 1);
        assert_eq!(s.be.seen[0].value, 6);
        assert_eq!(s.be.functions[&(0, 0, 0)][4], 6);
    }

    #[test]
    fn reads_are_masked_to_the_access_width() {
        let h = sim();
        h.0.borrow_mut().be.read_noise = 0xdead_beef;
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        assert_eq!(f.conf_read(a, 0, 1).unwrap(), 0x36);
        assert_eq!(f.conf_read(a, 0, 2).unwrap(), 0x1b36);
    }

    #[test]
    fn bad_access_is_refused_before_reaching_the_backend() {
        let h = sim();
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        for (off, size) in [(1u16, 2u8), (2, 4), (0, 3), (0, 0), (4094, 4), (4095, 2)] {
            assert_eq!(
                f.conf_read(a, off, size),
                Err(PcifrontError::BadAccess { offset: off, size })
            );
        }
        assert!(h.0.borrow().be.seen.is_empty());
    }

    #[test]
    fn scan_finds_functions_on_all_roots_and_honours_multifunction() {
        let h = sim();
        {
            let mut s = h.0.borrow_mut();
            s.xs.insert(format!("{BACKEND}/root_num"), "2".to_string());
            s.xs.insert(format!("{BACKEND}/root-1"), "0001:02".to_string());
            // 00:03 is multi-function with functions 0 and 2; function 5 exists but must be found too.
            s.be.functions
                .insert((0, 0, devfn(3, 0)), cfg(0x8086, 0x7020, 0x0c0300, 0x80));
            s.be.functions
                .insert((0, 0, devfn(3, 2)), cfg(0x8086, 0x7112, 0x068000, 0));
            // 00:04 is single-function: its function 1 must not be probed.
            s.be.functions
                .insert((0, 0, devfn(4, 0)), cfg(0x8086, 0x100e, 0x020000, 0));
            s.be.functions
                .insert((0, 0, devfn(4, 1)), cfg(0x8086, 0x100f, 0x020000, 0));
            s.be.functions
                .insert((1, 2, devfn(31, 7)), cfg(0x1033, 0x0194, 0x0c0330, 0x80));
            s.be.functions
                .insert((1, 2, devfn(31, 0)), cfg(0x1033, 0x0194, 0x0c0330, 0x80));
        }
        let mut f = connected(&h);
        let found = f.scan().unwrap();
        let addrs: Vec<String> = found.iter().map(|i| i.addr.to_string()).collect();
        assert_eq!(
            addrs,
            vec![
                "0000:00:00.0",
                "0000:00:03.0",
                "0000:00:03.2",
                "0000:00:04.0",
                "0001:02:1f.0",
                "0001:02:1f.7"
            ]
        );
        assert_eq!(found[0].vendor, 0x1b36);
        assert_eq!(found[0].device, 0x000d);
        assert_eq!(found[0].class, 0x0c0330);
        assert_eq!(found[1].header_type, 0);
        assert_eq!(found[3].class, 0x020000);
        // Function 1 of the single-function device was never asked for.
        assert!(!h
            .0
            .borrow()
            .be
            .seen
            .iter()
            .any(|o| o.domain == 0 && o.devfn == devfn(4, 1)));
    }

    #[test]
    fn backend_that_never_connects_times_out() {
        let h = sim();
        h.0.borrow_mut().be.will_connect = false;
        let start = h.0.borrow().now;
        let e = Pcifront::connect_with(h.clone(), quick()).err().unwrap();
        assert_eq!(
            e,
            PcifrontError::ConnectTimeout {
                backend_state: Some(state::INIT_WAIT)
            }
        );
        let waited = h.0.borrow().now - start;
        assert!(waited >= quick().connect_ns && waited <= quick().connect_ns + STEP_NS);
        assert!(e.to_string().contains("xen-pciback"));
    }

    #[test]
    fn backend_closing_is_an_error_not_a_hang() {
        let h = sim();
        h.0.borrow_mut().be.close_instead = true;
        let e = Pcifront::connect_with(h, quick()).err().unwrap();
        assert_eq!(e, PcifrontError::BackendGone { backend_state: 5 });
    }

    #[test]
    fn unusable_roots_are_rejected() {
        for (num, root) in [
            ("1", "zz:00"),
            ("1", "0000:100"),
            ("1", "0000"),
            ("99999", "0000:00"),
            ("-1", "0000:00"),
            ("1", ""),
        ] {
            let h = sim();
            {
                let mut s = h.0.borrow_mut();
                s.xs.insert(format!("{BACKEND}/root_num"), num.to_string());
                s.xs.insert(format!("{BACKEND}/root-0"), root.to_string());
            }
            let e = Pcifront::connect_with(h, quick()).err().unwrap();
            assert!(
                matches!(e, PcifrontError::BadValue { .. }),
                "{num} {root}: {e:?}"
            );
        }
    }

    #[test]
    fn missing_root_entry_is_rejected() {
        let h = sim();
        h.0.borrow_mut()
            .xs
            .insert(format!("{BACKEND}/root_num"), "2".to_string());
        let e = Pcifront::connect_with(h, quick()).err().unwrap();
        assert_eq!(
            e,
            PcifrontError::BadValue {
                path: format!("{BACKEND}/root-1"),
                value: String::new()
            }
        );
    }

    #[test]
    fn bad_backend_id_and_path_are_rejected() {
        let h = sim();
        h.0.borrow_mut()
            .xs
            .insert("device/pci/0/backend-id".to_string(), "0x0".to_string());
        assert!(matches!(
            Pcifront::connect_with(h, quick()),
            Err(PcifrontError::BadValue { .. })
        ));
        let h = sim();
        h.0.borrow_mut()
            .xs
            .insert("device/pci/0/backend".to_string(), "relative".to_string());
        assert!(matches!(
            Pcifront::connect_with(h, quick()),
            Err(PcifrontError::BadValue { .. })
        ));
    }

    #[test]
    fn xenstore_write_failure_is_reported_with_context() {
        let h = sim();
        h.0.borrow_mut().fail_write = Some("device/pci/0/magic".to_string());
        let e = Pcifront::connect_with(h, quick()).err().unwrap();
        assert_eq!(
            e.to_string(),
            "pcifront: xenstore write device/pci/0/magic failed (error -13)"
        );
    }

    #[test]
    fn hung_backend_times_out_then_busy_then_recovers() {
        let h = sim();
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        h.0.borrow_mut().be.answer = Answer::Never;
        assert_eq!(
            f.conf_read(a, 0, 4),
            Err(PcifrontError::OpTimeout {
                cmd: PciOpCmd::CONF_READ,
                addr: a
            })
        );
        // Still not done: the next op must not overwrite the pending one.
        assert_eq!(f.conf_read(a, 0, 4), Err(PcifrontError::Busy));
        assert_eq!(h.0.borrow().be.seen.len(), 0);
        // The backend finally completes the stale op.
        h.0.borrow_mut().be.answer = Answer::Always;
        h.0.borrow_mut().backend_step();
        assert_eq!(h.0.borrow().be.seen.len(), 1);
        assert_eq!(f.conf_read(a, 2, 2).unwrap(), 0x000d);
    }

    #[test]
    fn slow_backend_within_the_timeout_succeeds() {
        let h = sim();
        let mut f = connected(&h);
        h.0.borrow_mut().be.answer = Answer::After(10);
        let a = PciAddress::new(0, 0, 0, 0);
        assert_eq!(f.conf_read(a, 0, 2).unwrap(), 0x1b36);
    }

    #[test]
    fn backend_errors_are_values() {
        let h = sim();
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        h.0.borrow_mut().be.next_err = Some(PciOpErr::ACCESS_DENIED.0);
        let e = f.conf_write(a, 0x40, 4, 1).unwrap_err();
        assert_eq!(
            e,
            PcifrontError::Op {
                cmd: PciOpCmd::CONF_WRITE,
                addr: a,
                err: PciOpErr::ACCESS_DENIED
            }
        );
        assert_eq!(
            e.to_string(),
            "pcifront: conf_write for 0000:00:00.0 failed: access denied (-3)"
        );
        // Absent function: probe says None instead of failing.
        assert_eq!(f.probe(PciAddress::new(0, 0, 9, 0)).unwrap(), None);
    }

    #[test]
    fn enable_msi_returns_the_pirq_and_rejects_zero() {
        let h = sim();
        let mut f = connected(&h);
        let a = PciAddress::new(0, 0, 0, 0);
        assert_eq!(f.enable_msi(a).unwrap(), 55);
        assert_eq!(h.0.borrow().be.seen.last().unwrap().cmd, 2);
        h.0.borrow_mut().be.msi_pirq = 0;
        assert_eq!(f.enable_msi(a), Err(PcifrontError::BadPirq { value: 0 }));
        h.0.borrow_mut().be.msi_pirq = 0xffff_ffff;
        assert_eq!(
            f.enable_msi(a),
            Err(PcifrontError::BadPirq { value: 0xffff_ffff })
        );
    }

    #[test]
    fn address_parse_and_display() {
        let a = PciAddress::parse("0000:00:03.0").unwrap();
        assert_eq!(a, PciAddress::new(0, 0, 3, 0));
        assert_eq!(a.devfn(), 0x18);
        assert_eq!(
            PciAddress::new(1, 0xab, 0x1f, 7).to_string(),
            "0001:ab:1f.7"
        );
        for bad in [
            "",
            "0000:00:20.0",
            "0000:00:00.8",
            "x:00:00.0",
            "0000:00:00",
            "0:0:0.0.0",
        ] {
            assert_eq!(PciAddress::parse(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn hostile_backend_answers_are_values(
            answers in proptest::collection::vec((proptest::prelude::any::<i32>(), proptest::prelude::any::<u32>()), 0..40),
            reads in proptest::collection::vec((0u16..64, 0usize..3), 1..20),
        ) {
            let h = sim();
            let mut f = connected(&h);
            h.0.borrow_mut().be.script = Some(answers.iter().copied().collect());
            let a = PciAddress::new(0, 0, 0, 0);
            let mut expect = answers.iter().copied();
            for (slot, sz) in reads {
                let size = [1u8, 2, 4][sz];
                let offset = slot * 4;
                let (err, value) = expect.next().unwrap_or((0, 0));
                match f.conf_read(a, offset, size) {
                    Ok(v) => {
                        proptest::prop_assert_eq!(err, 0);
                        let mask = if size == 4 { u32::MAX } else { (1u32 << (8 * size)) - 1 };
                        proptest::prop_assert_eq!(v, value & mask);
                    }
                    Err(PcifrontError::Op { err: e, .. }) => {
                        proptest::prop_assert_ne!(err, 0);
                        proptest::prop_assert_eq!(e.0, err);
                    }
                    Err(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
                }
            }
            // A scan against garbage answers ends, with a bounded number of operations (at most
            // 32 devices x (3 reads + header) + 7 functions x 3 reads each, per root).
            h.0.borrow_mut().be.seen.clear();
            let _ = f.scan();
            proptest::prop_assert!(h.0.borrow().be.seen.len() <= 32 * (4 + 7 * 3));
        }

        #[test]
        fn address_roundtrips(seg: u16, bus: u8, dev in 0u8..32, func in 0u8..8) {
            let a = PciAddress::new(seg, bus, dev, func);
            proptest::prop_assert_eq!(PciAddress::parse(&a.to_string()), Some(a));
        }

        #[test]
        fn arbitrary_backend_roots_never_panic(num in "\\PC{0,12}", root in "\\PC{0,20}") {
            let h = sim();
            {
                let mut s = h.0.borrow_mut();
                s.xs.insert(format!("{BACKEND}/root_num"), num.clone());
                s.xs.insert(format!("{BACKEND}/root-0"), root.clone());
            }
            match Pcifront::connect_with(h, quick()) {
                Ok(f) => {
                    proptest::prop_assert!(f.roots().len() <= 1);
                }
                Err(e) => {
                    let is_bad_value = matches!(e, PcifrontError::BadValue { .. });
                    proptest::prop_assert!(is_bad_value);
                }
            }
        }
    }
}
