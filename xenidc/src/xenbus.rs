//! The xenbus device state machine, for backends (the PVUSB backend) and for the test frontend.
//!
//! Each end of a split device publishes its `state` node in xenstore (Xen `io/xenbus.h`,
//! `enum xenbus_state`: Unknown 0 … Reconfigured 8) and watches the other end's. This module decides,
//! for every combination of *our* state and a *stimulus* — the other end's state (each of its nine
//! values, or anything out of range) or a local event — what our next state is and what the driver
//! must do. The decisions are two explicit tables, [`BACKEND_TABLE`] and [`FRONTEND_TABLE`], in
//! which every cell is written out; [`Machine`] applies them.
//!
//! Backend flow (`../shared/reference/pvusb-protocol.md` §1.13): Initialising → (config read:
//! [`Stimulus::Ready`]) InitWait → (frontend Initialised or Connected: [`Actions::CONNECT`], then
//! [`Stimulus::ConnectOk`]) Connected → (frontend Closing) Closing → (frontend Closed) Closed →
//! (frontend Initialising again) InitWait: reconnect. When the toolstack removes the device
//! ([`Stimulus::Remove`]: it wrote `online` = 0 / our `state` = 5), the backend disconnects, writes
//! Closed and waits in [`BackendState::Removing`]; it deletes its own directory
//! ([`Actions::REMOVE_DIR`]; libxl waits for that for backends in driver domains) once the
//! frontend has gone or the driver's grace period ([`Stimulus::GraceOver`]) is over — not at once,
//! because libxl first reads `state` = 6 and treats a vanished node as an error.
//!
//! Messages that cross are decided in the tables too: a frontend that restarts while we are
//! connected (it shows Initialising/InitWait) makes us disconnect and offer InitWait again; a
//! frontend still showing Connected after we closed is left to notice our Closing; a frontend that
//! went Closed and back to Initialising before we saw Closed is reconnected directly.
//!
//! Peer states Reconfiguring/Reconfigured (unused by `usbif`) and out-of-range values are protocol
//! errors: a backend closes the connection ([`Actions::PEER_PROTOCOL_ERROR`] tells the driver to log
//! it, rate-limited); the test frontend ignores them.
//!
//! The driver performs the actions of a step in this order: `DISCONNECT` (release every resource of
//! the connection; must be idempotent), write [`Step::write_state`] to our `state` node, `CONNECT`
//! (backend: map the rings and bind the event channel; frontend: allocate and grant the rings and
//! publish them), `REMOVE_DIR`. It reports the outcome of `CONNECT` with [`Stimulus::ConnectOk`] or
//! [`Stimulus::ConnectFailed`].
//!
//! ```
//! use xenidc::xenbus::{Actions, BackendState, Machine, Stimulus, XenbusState};
//! let mut m = Machine::backend();
//! m.handle(Stimulus::Peer(XenbusState::INITIALISING));   // frontend dir written by libxl
//! let s = m.handle(Stimulus::Ready);                    // we read num-ports / usb-ver
//! assert_eq!(s.write_state, Some(XenbusState::INIT_WAIT));
//! let s = m.handle(Stimulus::Peer(XenbusState::CONNECTED)); // xen-hcd published its rings
//! assert!(s.actions.contains(Actions::CONNECT));
//! let s = m.handle(Stimulus::ConnectOk);                // rings mapped, event channel bound
//! assert_eq!(s.write_state, Some(XenbusState::CONNECTED));
//! assert_eq!(m.state(), BackendState::Connected);
//! ```

use core::fmt;

use bitflags::bitflags;

/// A xenbus state value (`enum xenbus_state`) as read from a peer's `state` node: any `u32`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct XenbusState(pub u32);

impl XenbusState {
    pub const UNKNOWN: XenbusState = XenbusState(0);
    pub const INITIALISING: XenbusState = XenbusState(1);
    pub const INIT_WAIT: XenbusState = XenbusState(2);
    pub const INITIALISED: XenbusState = XenbusState(3);
    pub const CONNECTED: XenbusState = XenbusState(4);
    pub const CLOSING: XenbusState = XenbusState(5);
    pub const CLOSED: XenbusState = XenbusState(6);
    pub const RECONFIGURING: XenbusState = XenbusState(7);
    pub const RECONFIGURED: XenbusState = XenbusState(8);
    /// What [`XenbusState::parse`] returns for text that is not a number.
    pub const MALFORMED: XenbusState = XenbusState(u32::MAX);

    /// Whether this is one of the nine defined values.
    pub fn is_valid(self) -> bool {
        self.0 <= 8
    }

    /// The `io/xenbus.h` name of a defined value.
    pub fn name(self) -> Option<&'static str> {
        const N: [&str; 9] = [
            "Unknown",
            "Initialising",
            "InitWait",
            "Initialised",
            "Connected",
            "Closing",
            "Closed",
            "Reconfiguring",
            "Reconfigured",
        ];
        N.get(self.0 as usize).copied()
    }

    /// Parse the contents of a `state` node (decimal). Anything else is [`XenbusState::MALFORMED`].
    /// A missing node means [`XenbusState::UNKNOWN`] (the caller maps `ENOENT` to it, as Linux does).
    pub fn parse(bytes: &[u8]) -> XenbusState {
        crate::xenstore::wire::parse_u32(bytes).map_or(XenbusState::MALFORMED, XenbusState)
    }

    /// The decimal text written to a `state` node.
    pub fn to_text(self) -> heapless::String<10> {
        let mut s = heapless::String::new();
        let _ = core::fmt::write(&mut s, format_args!("{}", self.0));
        s
    }
}

impl fmt::Debug for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "XenbusState({})", self.0),
        }
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Something that happened, for the state machine to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stimulus {
    /// The other end's `state` node now reads this (missing node: [`XenbusState::UNKNOWN`]).
    Peer(XenbusState),
    /// Backend: the device configuration was read and accepted; we can offer InitWait.
    /// Frontend: restart (re-probe) after Closed.
    Ready,
    /// The `CONNECT` action completed.
    ConnectOk,
    /// The `CONNECT` action failed (bad ring reference, mapping refused, …).
    ConnectFailed,
    /// The toolstack (or the user) removes the device.
    Remove,
    /// Backend in [`BackendState::Removing`]: the grace period before deleting our directory is
    /// over.
    GraceOver,
    /// Our own device directory disappeared from xenstore (domain destruction, forced removal):
    /// release everything and write nothing more.
    DirRemoved,
}

/// Number of stimulus kinds: nine peer values, "out of range", and six local events.
pub const STIMULUS_KINDS: usize = 16;

impl Stimulus {
    /// Column of this stimulus in the tables.
    pub fn kind(self) -> usize {
        match self {
            Stimulus::Peer(s) if s.is_valid() => s.0 as usize,
            Stimulus::Peer(_) => 9,
            Stimulus::Ready => 10,
            Stimulus::ConnectOk => 11,
            Stimulus::ConnectFailed => 12,
            Stimulus::Remove => 13,
            Stimulus::GraceOver => 14,
            Stimulus::DirRemoved => 15,
        }
    }

    /// A representative stimulus of each column (column 9 uses the value 9).
    pub const REPRESENTATIVES: [Stimulus; STIMULUS_KINDS] = [
        Stimulus::Peer(XenbusState(0)),
        Stimulus::Peer(XenbusState(1)),
        Stimulus::Peer(XenbusState(2)),
        Stimulus::Peer(XenbusState(3)),
        Stimulus::Peer(XenbusState(4)),
        Stimulus::Peer(XenbusState(5)),
        Stimulus::Peer(XenbusState(6)),
        Stimulus::Peer(XenbusState(7)),
        Stimulus::Peer(XenbusState(8)),
        Stimulus::Peer(XenbusState(9)),
        Stimulus::Ready,
        Stimulus::ConnectOk,
        Stimulus::ConnectFailed,
        Stimulus::Remove,
        Stimulus::GraceOver,
        Stimulus::DirRemoved,
    ];
}

bitflags! {
    /// What the driver must do (in the order documented in the [module docs](self)).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Actions: u8 {
        /// Release every resource of the connection (idempotent).
        const DISCONNECT = 1 << 0;
        /// Backend: map the frontend's rings, bind its event channel. Frontend: allocate, grant
        /// and publish the rings and event channel. Report with `ConnectOk`/`ConnectFailed`.
        const CONNECT = 1 << 1;
        /// Delete our own device directory from xenstore.
        const REMOVE_DIR = 1 << 2;
        /// The peer showed a state it must not use here: log it (rate-limited).
        const PEER_PROTOCOL_ERROR = 1 << 3;
        /// A local event that makes no sense in this state (a driver bug): log it.
        const UNEXPECTED = 1 << 4;
    }
}

/// States of a backend device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Created by the toolstack; configuration not read yet. Wire: Initialising.
    Initialising,
    /// Waiting for the frontend to publish its rings. Wire: InitWait.
    InitWait,
    /// `CONNECT` in progress. Wire: InitWait.
    Connecting,
    /// Serving the frontend. Wire: Connected.
    Connected,
    /// Disconnected, waiting for the frontend to close. Wire: Closing.
    Closing,
    /// Closed; may reconnect. Wire: Closed.
    Closed,
    /// Removed by the toolstack: Closed written, our directory is deleted soon. Wire: Closed.
    Removing,
    /// Our directory is gone; nothing more happens. No wire state.
    Gone,
}

impl BackendState {
    /// All states, in table row order.
    pub const ALL: [BackendState; 8] = [
        BackendState::Initialising,
        BackendState::InitWait,
        BackendState::Connecting,
        BackendState::Connected,
        BackendState::Closing,
        BackendState::Closed,
        BackendState::Removing,
        BackendState::Gone,
    ];
}

/// States of a frontend device (the test frontend, shaped after Linux `xen-hcd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontendState {
    /// Waiting for the backend to offer InitWait. Wire: Initialising.
    Initialising,
    /// `CONNECT` (allocate, grant, publish) in progress. Wire: Initialising.
    Publishing,
    /// Connected (xen-hcd goes straight from Initialising to Connected). Wire: Connected.
    Connected,
    /// Closing, waiting for the backend to disconnect. Wire: Closing.
    Closing,
    /// Closed; [`Stimulus::Ready`] restarts. Wire: Closed.
    Closed,
    /// Our directory is gone. No wire state.
    Gone,
}

impl FrontendState {
    /// All states, in table row order.
    pub const ALL: [FrontendState; 6] = [
        FrontendState::Initialising,
        FrontendState::Publishing,
        FrontendState::Connected,
        FrontendState::Closing,
        FrontendState::Closed,
        FrontendState::Gone,
    ];
}

/// One cell of a table: the next state and the actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell<S> {
    pub next: S,
    pub actions: Actions,
}

/// A role's state set and table.
pub trait Role: Copy + PartialEq + fmt::Debug {
    /// The state a new device starts in.
    const INITIAL: Self;
    /// Row index of this state.
    fn row(self) -> usize;
    /// The value our `state` node shows in this state (`None`: no node any more).
    fn wire(self) -> Option<XenbusState>;
    /// The table cell for this state and stimulus.
    fn cell(self, stimulus: Stimulus) -> Cell<Self>;
}

const fn c<S>(next: S, actions: Actions) -> Cell<S> {
    Cell { next, actions }
}

const N: Actions = Actions::empty();
const DISC: Actions = Actions::DISCONNECT;
const CONN: Actions = Actions::CONNECT;
const RMDIR: Actions = Actions::REMOVE_DIR;
const PROTO: Actions = Actions::PEER_PROTOCOL_ERROR;
const UNEXP: Actions = Actions::UNEXPECTED;
const DISC_PROTO: Actions = Actions::DISCONNECT.union(Actions::PEER_PROTOCOL_ERROR);

use BackendState as B;
use FrontendState as F;

/// The backend table: `BACKEND_TABLE[state row][stimulus kind]`. Columns: peer Unknown,
/// Initialising, InitWait, Initialised, Connected, Closing, Closed, Reconfiguring, Reconfigured,
/// out-of-range; Ready, ConnectOk, ConnectFailed, Remove, GraceOver, DirRemoved.
#[rustfmt::skip]
pub const BACKEND_TABLE: [[Cell<BackendState>; STIMULUS_KINDS]; 8] = [
    // Initialising: peers are only remembered until we are ready (the machine re-evaluates).
    [c(B::Initialising, N), c(B::Initialising, N), c(B::Initialising, N), c(B::Initialising, N),
     c(B::Initialising, N), c(B::Initialising, N), c(B::Initialising, N),
     c(B::Initialising, PROTO), c(B::Initialising, PROTO), c(B::Initialising, PROTO),
     c(B::InitWait, N), c(B::Initialising, UNEXP), c(B::Initialising, UNEXP),
     c(B::Removing, N), c(B::Initialising, UNEXP), c(B::Gone, N)],
    // InitWait: a frontend not (yet) there is waited for.
    [c(B::InitWait, N), c(B::InitWait, N), c(B::InitWait, N), c(B::Connecting, CONN),
     c(B::Connecting, CONN), c(B::Closing, N), c(B::Closed, N),
     c(B::Closing, PROTO), c(B::Closing, PROTO), c(B::Closing, PROTO),
     c(B::InitWait, UNEXP), c(B::InitWait, UNEXP), c(B::InitWait, UNEXP),
     c(B::Removing, N), c(B::InitWait, UNEXP), c(B::Gone, N)],
    // Connecting
    [c(B::Closed, DISC), c(B::InitWait, DISC), c(B::InitWait, DISC), c(B::Connecting, N),
     c(B::Connecting, N), c(B::Closing, DISC), c(B::Closed, DISC),
     c(B::Closing, DISC_PROTO), c(B::Closing, DISC_PROTO), c(B::Closing, DISC_PROTO),
     c(B::Connecting, UNEXP), c(B::Connected, N), c(B::Closing, DISC),
     c(B::Removing, DISC), c(B::Connecting, UNEXP), c(B::Gone, DISC)],
    // Connected
    [c(B::Closed, DISC), c(B::InitWait, DISC), c(B::InitWait, DISC), c(B::Connected, N),
     c(B::Connected, N), c(B::Closing, DISC), c(B::Closed, DISC),
     c(B::Closing, DISC_PROTO), c(B::Closing, DISC_PROTO), c(B::Closing, DISC_PROTO),
     c(B::Connected, UNEXP), c(B::Connected, UNEXP), c(B::Connected, UNEXP),
     c(B::Removing, DISC), c(B::Connected, UNEXP), c(B::Gone, DISC)],
    // Closing
    [c(B::Closed, N), c(B::InitWait, N), c(B::InitWait, N), c(B::Closing, N),
     c(B::Closing, N), c(B::Closing, N), c(B::Closed, N),
     c(B::Closing, PROTO), c(B::Closing, PROTO), c(B::Closing, PROTO),
     c(B::Closing, UNEXP), c(B::Closing, UNEXP), c(B::Closing, UNEXP),
     c(B::Removing, N), c(B::Closing, UNEXP), c(B::Gone, N)],
    // Closed
    [c(B::Closed, N), c(B::InitWait, N), c(B::InitWait, N), c(B::Closed, N),
     c(B::Closed, N), c(B::Closed, N), c(B::Closed, N),
     c(B::Closed, PROTO), c(B::Closed, PROTO), c(B::Closed, PROTO),
     c(B::Closed, UNEXP), c(B::Closed, UNEXP), c(B::Closed, UNEXP),
     c(B::Removing, N), c(B::Closed, UNEXP), c(B::Gone, N)],
    // Removing: wait for the frontend to go away or for the grace period, then delete our dir.
    [c(B::Gone, RMDIR), c(B::Removing, N), c(B::Removing, N), c(B::Removing, N),
     c(B::Removing, N), c(B::Removing, N), c(B::Removing, N),
     c(B::Removing, PROTO), c(B::Removing, PROTO), c(B::Removing, PROTO),
     c(B::Removing, UNEXP), c(B::Removing, UNEXP), c(B::Removing, UNEXP),
     c(B::Removing, N), c(B::Gone, RMDIR), c(B::Gone, N)],
    // Gone: absorbing; late events are expected noise.
    [c(B::Gone, N), c(B::Gone, N), c(B::Gone, N), c(B::Gone, N),
     c(B::Gone, N), c(B::Gone, N), c(B::Gone, N),
     c(B::Gone, N), c(B::Gone, N), c(B::Gone, N),
     c(B::Gone, N), c(B::Gone, N), c(B::Gone, N),
     c(B::Gone, N), c(B::Gone, N), c(B::Gone, N)],
];

/// The frontend table: `FRONTEND_TABLE[state row][stimulus kind]`, columns as in
/// [`BACKEND_TABLE`].
#[rustfmt::skip]
pub const FRONTEND_TABLE: [[Cell<FrontendState>; STIMULUS_KINDS]; 6] = [
    // Initialising: publish when the backend offers InitWait (or is further, as xen-hcd accepts).
    [c(F::Initialising, N), c(F::Initialising, N), c(F::Publishing, CONN), c(F::Publishing, CONN),
     c(F::Publishing, CONN), c(F::Initialising, N), c(F::Initialising, N),
     c(F::Initialising, PROTO), c(F::Initialising, PROTO), c(F::Initialising, PROTO),
     c(F::Initialising, UNEXP), c(F::Initialising, UNEXP), c(F::Initialising, UNEXP),
     c(F::Closed, N), c(F::Initialising, UNEXP), c(F::Gone, N)],
    // Publishing
    [c(F::Initialising, DISC), c(F::Initialising, DISC), c(F::Publishing, N), c(F::Publishing, N),
     c(F::Publishing, N), c(F::Closed, DISC), c(F::Closed, DISC),
     c(F::Publishing, PROTO), c(F::Publishing, PROTO), c(F::Publishing, PROTO),
     c(F::Publishing, UNEXP), c(F::Connected, N), c(F::Closing, N),
     c(F::Closing, N), c(F::Publishing, UNEXP), c(F::Gone, DISC)],
    // Connected: a backend showing Initialising/InitWait is a stale read (the backend only goes
    // back there when we restart), so it is ignored, as xen-hcd does.
    [c(F::Closed, DISC), c(F::Connected, N), c(F::Connected, N), c(F::Connected, N),
     c(F::Connected, N), c(F::Closed, DISC), c(F::Closed, DISC),
     c(F::Connected, PROTO), c(F::Connected, PROTO), c(F::Connected, PROTO),
     c(F::Connected, UNEXP), c(F::Connected, UNEXP), c(F::Connected, UNEXP),
     c(F::Closing, N), c(F::Connected, UNEXP), c(F::Gone, DISC)],
    // Closing: free the rings only once the backend has let go of them.
    [c(F::Closed, DISC), c(F::Closing, N), c(F::Closing, N), c(F::Closing, N),
     c(F::Closing, N), c(F::Closed, DISC), c(F::Closed, DISC),
     c(F::Closing, PROTO), c(F::Closing, PROTO), c(F::Closing, PROTO),
     c(F::Closing, UNEXP), c(F::Closing, UNEXP), c(F::Closing, UNEXP),
     c(F::Closing, N), c(F::Closing, UNEXP), c(F::Gone, DISC)],
    // Closed
    [c(F::Closed, N), c(F::Closed, N), c(F::Closed, N), c(F::Closed, N),
     c(F::Closed, N), c(F::Closed, N), c(F::Closed, N),
     c(F::Closed, PROTO), c(F::Closed, PROTO), c(F::Closed, PROTO),
     c(F::Initialising, N), c(F::Closed, UNEXP), c(F::Closed, UNEXP),
     c(F::Closed, N), c(F::Closed, UNEXP), c(F::Gone, N)],
    // Gone
    [c(F::Gone, N), c(F::Gone, N), c(F::Gone, N), c(F::Gone, N),
     c(F::Gone, N), c(F::Gone, N), c(F::Gone, N),
     c(F::Gone, N), c(F::Gone, N), c(F::Gone, N),
     c(F::Gone, N), c(F::Gone, N), c(F::Gone, N),
     c(F::Gone, N), c(F::Gone, N), c(F::Gone, N)],
];

impl Role for BackendState {
    const INITIAL: Self = BackendState::Initialising;
    fn row(self) -> usize {
        self as usize
    }
    fn wire(self) -> Option<XenbusState> {
        Some(match self {
            B::Initialising => XenbusState::INITIALISING,
            B::InitWait | B::Connecting => XenbusState::INIT_WAIT,
            B::Connected => XenbusState::CONNECTED,
            B::Closing => XenbusState::CLOSING,
            B::Closed | B::Removing => XenbusState::CLOSED,
            B::Gone => return None,
        })
    }
    fn cell(self, stimulus: Stimulus) -> Cell<Self> {
        BACKEND_TABLE[self.row()][stimulus.kind()]
    }
}

impl Role for FrontendState {
    const INITIAL: Self = FrontendState::Initialising;
    fn row(self) -> usize {
        self as usize
    }
    fn wire(self) -> Option<XenbusState> {
        Some(match self {
            F::Initialising | F::Publishing => XenbusState::INITIALISING,
            F::Connected => XenbusState::CONNECTED,
            F::Closing => XenbusState::CLOSING,
            F::Closed => XenbusState::CLOSED,
            F::Gone => return None,
        })
    }
    fn cell(self, stimulus: Stimulus) -> Cell<Self> {
        FRONTEND_TABLE[self.row()][stimulus.kind()]
    }
}

/// The result of handling one stimulus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<S> {
    /// State before.
    pub from: S,
    /// State after.
    pub to: S,
    pub actions: Actions,
    /// Write this to our `state` node (`None`: leave it).
    pub write_state: Option<XenbusState>,
}

/// A device's state machine: the table of its role, plus the peer's last known state.
///
/// After a stimulus changes our state, the machine consults the table once more with the peer's
/// last known state, so a peer that was already further along (a frontend already Connected when
/// the backend becomes ready) is acted upon without waiting for another watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine<S: Role> {
    state: S,
    peer: XenbusState,
}

impl Machine<BackendState> {
    /// A backend device in Initialising.
    pub fn backend() -> Self {
        Machine::new()
    }
}

impl Machine<FrontendState> {
    /// A frontend device in Initialising.
    pub fn frontend() -> Self {
        Machine::new()
    }
}

impl<S: Role> Default for Machine<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Role> Machine<S> {
    /// A machine in the role's initial state, peer Unknown.
    pub fn new() -> Self {
        Machine {
            state: S::INITIAL,
            peer: XenbusState::UNKNOWN,
        }
    }

    /// Current state.
    pub fn state(&self) -> S {
        self.state
    }

    /// The peer's last reported state.
    pub fn peer(&self) -> XenbusState {
        self.peer
    }

    /// Decide on a stimulus; returns what to do.
    pub fn handle(&mut self, stimulus: Stimulus) -> Step<S> {
        let from = self.state;
        if let Stimulus::Peer(p) = stimulus {
            self.peer = p;
        }
        let cell = from.cell(stimulus);
        let mut actions = cell.actions;
        let mut state = cell.next;
        // Re-evaluate against the peer's state while that keeps changing ours (bounded: every
        // table path settles within a few steps; the bound keeps a table mistake from looping).
        let mut prev = from;
        for _ in 0..4 {
            if state == prev {
                break;
            }
            let again = state.cell(Stimulus::Peer(self.peer));
            prev = state;
            state = again.next;
            actions |= again.actions & !Actions::PEER_PROTOCOL_ERROR;
        }
        self.state = state;
        let write_state = match (from.wire(), state.wire()) {
            (a, Some(b)) if a != Some(b) => Some(b),
            _ => None,
        };
        Step {
            from,
            to: state,
            actions,
            write_state,
        }
    }
}

/// What a driver does for the connection-level actions of a step (see [`XenbusDevice::handle`]).
pub trait DeviceDriver {
    /// Release every resource of the connection; must be idempotent.
    fn disconnect(&mut self);
    /// Set up the connection (backend: read the ring references and event channel from the
    /// frontend's directory, map, bind; frontend: allocate, grant, publish). `true` on success.
    fn connect(&mut self) -> bool;
    /// The peer showed a state it must not use here. Rate-limit any logging.
    fn protocol_error(&mut self, _peer: XenbusState) {}
}

/// One device: its [`Machine`], our directory and the peer's, and the xenstore side of the
/// actions (writing our `state`, deleting our directory).
#[derive(Debug, Clone)]
pub struct XenbusDevice<S: Role> {
    machine: Machine<S>,
    dir: alloc::string::String,
    peer_dir: alloc::string::String,
}

impl<S: Role> XenbusDevice<S> {
    /// A device whose own directory is `dir` and whose peer's is `peer_dir` (absolute paths).
    pub fn new(dir: &str, peer_dir: &str) -> Self {
        XenbusDevice {
            machine: Machine::new(),
            dir: dir.into(),
            peer_dir: peer_dir.into(),
        }
    }

    /// The state machine.
    pub fn machine(&self) -> &Machine<S> {
        &self.machine
    }
    /// Our directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }
    /// The peer's directory.
    pub fn peer_dir(&self) -> &str {
        &self.peer_dir
    }
    /// Path of the peer's `state` node (watch it).
    pub fn peer_state_path(&self) -> alloc::string::String {
        alloc::format!("{}/state", self.peer_dir)
    }
    /// Path of our `state` node.
    pub fn state_path(&self) -> alloc::string::String {
        alloc::format!("{}/state", self.dir)
    }

    /// Read the peer's `state` (a missing or unreadable node is Unknown, garbage is out of range)
    /// and handle it. Only transport failures are errors.
    pub fn peer_changed<T: crate::xenstore::Transport>(
        &mut self,
        xs: &mut crate::xenstore::Client<T>,
        drv: &mut impl DeviceDriver,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<S, crate::xenstore::Error> {
        let peer = match xs.read(crate::xenstore::TxId::NONE, &self.peer_state_path(), wait) {
            Ok(v) => XenbusState::parse(&v),
            // Like Linux, any error from the server (ENOENT, or EACCES once the peer's directory
            // is gone and its parent is not readable) means Unknown.
            Err(e) if e.errno().is_some() => XenbusState::UNKNOWN,
            Err(e) => return Err(e),
        };
        self.handle(Stimulus::Peer(peer), xs, drv, wait)
    }

    /// Handle a stimulus and carry out its actions in order: `DISCONNECT` (driver), write our
    /// state, `CONNECT` (driver; its outcome is handled at once as `ConnectOk`/`ConnectFailed`),
    /// `REMOVE_DIR`. Returns the new state.
    pub fn handle<T: crate::xenstore::Transport>(
        &mut self,
        stimulus: Stimulus,
        xs: &mut crate::xenstore::Client<T>,
        drv: &mut impl DeviceDriver,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<S, crate::xenstore::Error> {
        let mut stimulus = stimulus;
        // A CONNECT leads to one more step (its outcome), which never asks to connect again.
        for _ in 0..2 {
            let step = self.machine.handle(stimulus);
            if step.actions.contains(Actions::DISCONNECT) {
                drv.disconnect();
            }
            if step.actions.contains(Actions::PEER_PROTOCOL_ERROR) {
                drv.protocol_error(self.machine.peer());
            }
            if step.actions.contains(Actions::UNEXPECTED) {
                log::warn!(
                    "xenbus {}: {:?} unexpected in {:?}",
                    self.dir,
                    stimulus,
                    step.from
                );
            }
            if let Some(w) = step.write_state {
                xs.write(
                    crate::xenstore::TxId::NONE,
                    &self.state_path(),
                    w.to_text().as_bytes(),
                    wait,
                )?;
            }
            if step.actions.contains(Actions::REMOVE_DIR) {
                xs.rm(crate::xenstore::TxId::NONE, &self.dir, wait)?;
            }
            if !step.actions.contains(Actions::CONNECT) {
                break;
            }
            stimulus = if drv.connect() {
                Stimulus::ConnectOk
            } else {
                Stimulus::ConnectFailed
            };
        }
        Ok(self.machine.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn code_b(s: BackendState) -> &'static str {
        match s {
            B::Initialising => "I",
            B::InitWait => "W",
            B::Connecting => "Cg",
            B::Connected => "C",
            B::Closing => "Cl",
            B::Closed => "X",
            B::Removing => "R",
            B::Gone => "G",
        }
    }

    fn code_f(s: FrontendState) -> &'static str {
        match s {
            F::Initialising => "I",
            F::Publishing => "P",
            F::Connected => "C",
            F::Closing => "Cl",
            F::Closed => "X",
            F::Gone => "G",
        }
    }

    fn code_cell(next: &str, a: Actions) -> String {
        let mut s = String::from(next);
        for (flag, ch) in [
            (Actions::DISCONNECT, "-d"),
            (Actions::CONNECT, "+c"),
            (Actions::REMOVE_DIR, "+rm"),
            (Actions::PEER_PROTOCOL_ERROR, "!p"),
            (Actions::UNEXPECTED, "!u"),
        ] {
            if a.contains(flag) {
                s.push_str(ch);
            }
        }
        s
    }

    // Expected cells, one line per state; columns: peer 0..8, peer out of range, Ready, ConnectOk,
    // ConnectFailed, Remove, GraceOver, DirRemoved. Codes: state (+c connect, -d disconnect,
    // +rm remove dir, !p peer protocol error, !u unexpected local event).
    const BACKEND_EXPECTED: [&str; 8] = [
        "I I I I I I I I!p I!p I!p | W I!u I!u R I!u G",
        "W W W Cg+c Cg+c Cl X Cl!p Cl!p Cl!p | W!u W!u W!u R W!u G",
        "X-d W-d W-d Cg Cg Cl-d X-d Cl-d!p Cl-d!p Cl-d!p | Cg!u C Cl-d R-d Cg!u G-d",
        "X-d W-d W-d C C Cl-d X-d Cl-d!p Cl-d!p Cl-d!p | C!u C!u C!u R-d C!u G-d",
        "X W W Cl Cl Cl X Cl!p Cl!p Cl!p | Cl!u Cl!u Cl!u R Cl!u G",
        "X W W X X X X X!p X!p X!p | X!u X!u X!u R X!u G",
        "G+rm R R R R R R R!p R!p R!p | R!u R!u R!u R G+rm G",
        "G G G G G G G G G G | G G G G G G",
    ];

    const FRONTEND_EXPECTED: [&str; 6] = [
        "I I P+c P+c P+c I I I!p I!p I!p | I!u I!u I!u X I!u G",
        "I-d I-d P P P X-d X-d P!p P!p P!p | P!u C Cl Cl P!u G-d",
        "X-d C C C C X-d X-d C!p C!p C!p | C!u C!u C!u Cl C!u G-d",
        "X-d Cl Cl Cl Cl X-d X-d Cl!p Cl!p Cl!p | Cl!u Cl!u Cl!u Cl Cl!u G-d",
        "X X X X X X X X!p X!p X!p | I X!u X!u X X!u G",
        "G G G G G G G G G G | G G G G G G",
    ];

    fn expected_cells(line: &str) -> Vec<&str> {
        line.split_whitespace().filter(|t| *t != "|").collect()
    }

    #[test]
    fn every_backend_cell_is_as_specified() {
        for (row, st) in BackendState::ALL.iter().enumerate() {
            assert_eq!(st.row(), row);
            let want = expected_cells(BACKEND_EXPECTED[row]);
            assert_eq!(want.len(), STIMULUS_KINDS);
            for (col, stim) in Stimulus::REPRESENTATIVES.iter().enumerate() {
                let cell = st.cell(*stim);
                assert_eq!(
                    code_cell(code_b(cell.next), cell.actions),
                    want[col],
                    "backend {st:?} × {stim:?}"
                );
            }
        }
    }

    #[test]
    fn every_frontend_cell_is_as_specified() {
        for (row, st) in FrontendState::ALL.iter().enumerate() {
            assert_eq!(st.row(), row);
            let want = expected_cells(FRONTEND_EXPECTED[row]);
            assert_eq!(want.len(), STIMULUS_KINDS);
            for (col, stim) in Stimulus::REPRESENTATIVES.iter().enumerate() {
                let cell = st.cell(*stim);
                assert_eq!(
                    code_cell(code_f(cell.next), cell.actions),
                    want[col],
                    "frontend {st:?} × {stim:?}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_peer_values_share_one_column() {
        for v in [9, 10, 255, 0x8000_0000, u32::MAX] {
            assert_eq!(Stimulus::Peer(XenbusState(v)).kind(), 9);
        }
        for v in 0..=8 {
            assert_eq!(Stimulus::Peer(XenbusState(v)).kind(), v as usize);
        }
        assert_eq!(XenbusState::parse(b"4"), XenbusState::CONNECTED);
        assert_eq!(XenbusState::parse(b" 4"), XenbusState::MALFORMED);
        assert_eq!(XenbusState::parse(b""), XenbusState::MALFORMED);
        assert_eq!(XenbusState::parse(b"99999999999"), XenbusState::MALFORMED);
        assert_eq!(XenbusState::CLOSED.to_text().as_str(), "6");
        assert_eq!(alloc::format!("{:?}", XenbusState(12)), "XenbusState(12)");
        assert_eq!(alloc::format!("{:?}", XenbusState(2)), "InitWait");
    }

    /// Whether the driver holds connection resources in this state.
    fn b_holds(s: BackendState) -> bool {
        matches!(s, B::Connecting | B::Connected)
    }
    fn f_holds(s: FrontendState) -> bool {
        matches!(s, F::Publishing | F::Connected | F::Closing)
    }

    #[test]
    fn resources_are_acquired_and_released_consistently_in_every_cell() {
        for st in BackendState::ALL {
            for stim in Stimulus::REPRESENTATIVES {
                let c = st.cell(stim);
                let a = c.actions;
                // CONNECT only from a state holding nothing, into Connecting.
                assert_eq!(
                    a.contains(Actions::CONNECT),
                    !b_holds(st) && c.next == B::Connecting,
                    "{st:?} {stim:?}"
                );
                // Leaving the holding states always disconnects.
                assert_eq!(
                    a.contains(Actions::DISCONNECT),
                    b_holds(st) && !b_holds(c.next),
                    "{st:?} {stim:?}"
                );
                // The directory is deleted only on the way into Gone from Removing.
                assert_eq!(
                    a.contains(Actions::REMOVE_DIR),
                    st == B::Removing && c.next == B::Gone && stim != Stimulus::DirRemoved
                );
                // Protocol errors only for peer values usbif never uses.
                if a.contains(Actions::PEER_PROTOCOL_ERROR) {
                    assert!(matches!(stim.kind(), 7..=9));
                }
                if a.contains(Actions::UNEXPECTED) {
                    assert!(stim.kind() >= 10);
                    assert_eq!(c.next, st);
                }
                if st == B::Gone {
                    assert_eq!((c.next, a), (B::Gone, Actions::empty()));
                }
                if stim == Stimulus::DirRemoved {
                    assert_eq!(c.next, B::Gone);
                }
            }
        }
        for st in FrontendState::ALL {
            for stim in Stimulus::REPRESENTATIVES {
                let c = st.cell(stim);
                let a = c.actions;
                assert_eq!(
                    a.contains(Actions::CONNECT),
                    !f_holds(st) && c.next == F::Publishing,
                    "{st:?} {stim:?}"
                );
                assert_eq!(
                    a.contains(Actions::DISCONNECT),
                    f_holds(st) && !f_holds(c.next),
                    "{st:?} {stim:?}"
                );
                assert!(!a.contains(Actions::REMOVE_DIR));
                if st == F::Gone {
                    assert_eq!((c.next, a), (F::Gone, Actions::empty()));
                }
            }
        }
    }

    #[test]
    fn backend_happy_path_close_and_reconnect() {
        let mut m = Machine::backend();
        assert_eq!(
            m.handle(Stimulus::Peer(XenbusState::INITIALISING))
                .write_state,
            None
        );
        let s = m.handle(Stimulus::Ready);
        assert_eq!(
            (s.to, s.write_state),
            (B::InitWait, Some(XenbusState::INIT_WAIT))
        );
        let s = m.handle(Stimulus::Peer(XenbusState::INITIALISED));
        assert_eq!(
            (s.to, s.actions, s.write_state),
            (B::Connecting, Actions::CONNECT, None)
        );
        let s = m.handle(Stimulus::Peer(XenbusState::CONNECTED));
        assert_eq!((s.to, s.actions), (B::Connecting, Actions::empty()));
        let s = m.handle(Stimulus::ConnectOk);
        assert_eq!(
            (s.to, s.write_state),
            (B::Connected, Some(XenbusState::CONNECTED))
        );
        let s = m.handle(Stimulus::Peer(XenbusState::CLOSING));
        assert_eq!(
            (s.to, s.actions, s.write_state),
            (B::Closing, Actions::DISCONNECT, Some(XenbusState::CLOSING))
        );
        let s = m.handle(Stimulus::Peer(XenbusState::CLOSED));
        assert_eq!(
            (s.to, s.write_state),
            (B::Closed, Some(XenbusState::CLOSED))
        );
        let s = m.handle(Stimulus::Peer(XenbusState::INITIALISING));
        assert_eq!(
            (s.to, s.write_state),
            (B::InitWait, Some(XenbusState::INIT_WAIT))
        );
        m.handle(Stimulus::Peer(XenbusState::CONNECTED));
        assert_eq!(m.handle(Stimulus::ConnectOk).to, B::Connected);
        // Removal: disconnect, Closed, then the directory after the grace period.
        let s = m.handle(Stimulus::Remove);
        assert_eq!(
            (s.to, s.actions, s.write_state),
            (B::Removing, Actions::DISCONNECT, Some(XenbusState::CLOSED))
        );
        let s = m.handle(Stimulus::GraceOver);
        assert_eq!(
            (s.to, s.actions, s.write_state),
            (B::Gone, Actions::REMOVE_DIR, None)
        );
        assert_eq!(
            m.handle(Stimulus::Peer(XenbusState::INITIALISING)).actions,
            Actions::empty()
        );
    }

    #[test]
    fn backend_ready_after_frontend_already_connected_connects_at_once() {
        let mut m = Machine::backend();
        m.handle(Stimulus::Peer(XenbusState::CONNECTED));
        let s = m.handle(Stimulus::Ready);
        assert_eq!(
            (s.to, s.actions, s.write_state),
            (
                B::Connecting,
                Actions::CONNECT,
                Some(XenbusState::INIT_WAIT)
            )
        );
        // A frontend that closed before we were ready: we go straight to Closed on readiness.
        let mut m = Machine::backend();
        m.handle(Stimulus::Peer(XenbusState::CLOSED));
        let s = m.handle(Stimulus::Ready);
        assert_eq!(
            (s.to, s.write_state),
            (B::Closed, Some(XenbusState::CLOSED))
        );
    }

    #[test]
    fn frontend_restart_while_connected_is_a_crossing_reconnect() {
        let mut m = Machine::backend();
        m.handle(Stimulus::Ready);
        m.handle(Stimulus::Peer(XenbusState::CONNECTED));
        m.handle(Stimulus::ConnectOk);
        let s = m.handle(Stimulus::Peer(XenbusState::INITIALISING));
        assert_eq!(
            (s.to, s.actions, s.write_state),
            (
                B::InitWait,
                Actions::DISCONNECT,
                Some(XenbusState::INIT_WAIT)
            )
        );
        // Invalid peer state closes the connection and says why.
        m.handle(Stimulus::Peer(XenbusState::CONNECTED));
        m.handle(Stimulus::ConnectOk);
        let s = m.handle(Stimulus::Peer(XenbusState(77)));
        assert_eq!(s.to, B::Closing);
        assert!(s
            .actions
            .contains(Actions::DISCONNECT | Actions::PEER_PROTOCOL_ERROR));
    }

    /// A simulated pair: each end's `state` node, watch deliveries in flight, and the resources
    /// each driver holds. The scheduler picks what happens next.
    struct Pair {
        b: Machine<BackendState>,
        f: Machine<FrontendState>,
        b_node: Option<XenbusState>,
        f_node: Option<XenbusState>,
        to_b: VecDeque<XenbusState>,
        to_f: VecDeque<XenbusState>,
        b_connect_pending: bool,
        f_connect_pending: bool,
        b_mapped: bool,
        f_granted: bool,
        b_dir: bool,
        connects: u32,
    }

    impl Pair {
        fn new() -> Pair {
            Pair {
                b: Machine::backend(),
                f: Machine::frontend(),
                b_node: Some(XenbusState::INITIALISING),
                f_node: Some(XenbusState::INITIALISING),
                // Registration fires each watch once.
                to_b: VecDeque::from([XenbusState::INITIALISING]),
                to_f: VecDeque::from([XenbusState::INITIALISING]),
                b_connect_pending: false,
                f_connect_pending: false,
                b_mapped: false,
                f_granted: false,
                b_dir: true,
                connects: 0,
            }
        }

        fn apply_b(&mut self, st: Stimulus) {
            let s = self.b.handle(st);
            if s.actions.contains(Actions::DISCONNECT) {
                self.b_mapped = false;
                self.b_connect_pending = false;
            }
            if let Some(w) = s.write_state {
                assert!(self.b_dir, "backend wrote state after its dir was removed");
                self.b_node = Some(w);
                self.to_f.push_back(w);
            }
            if s.actions.contains(Actions::CONNECT) {
                assert!(!self.b_mapped && !self.b_connect_pending);
                // The backend can only map what the frontend published.
                assert!(self.f_granted, "backend connects before frontend published");
                self.b_connect_pending = true;
            }
            if s.actions.contains(Actions::REMOVE_DIR) {
                self.b_dir = false;
                self.b_node = None;
                self.to_f.push_back(XenbusState::UNKNOWN);
            }
            assert!(!s.actions.contains(Actions::UNEXPECTED), "{s:?}");
            assert!(!s.actions.contains(Actions::PEER_PROTOCOL_ERROR), "{s:?}");
        }

        fn apply_f(&mut self, st: Stimulus) {
            let s = self.f.handle(st);
            if s.actions.contains(Actions::DISCONNECT) {
                // Grants may only be revoked when the backend no longer maps them.
                assert!(
                    !self.b_mapped,
                    "frontend revoked grants still mapped by the backend"
                );
                self.f_granted = false;
                self.f_connect_pending = false;
            }
            if s.actions.contains(Actions::CONNECT) {
                assert!(!self.f_granted && !self.f_connect_pending);
                self.f_connect_pending = true;
            }
            if let Some(w) = s.write_state {
                self.f_node = Some(w);
                self.to_b.push_back(w);
            }
            assert!(!s.actions.contains(Actions::UNEXPECTED), "{s:?}");
        }

        /// Do one thing chosen by `pick`; false when nothing is left to do.
        fn step(&mut self, pick: usize) -> bool {
            let mut options: Vec<u8> = Vec::new();
            if !self.to_b.is_empty() {
                options.push(0);
            }
            if !self.to_f.is_empty() {
                options.push(1);
            }
            if self.b_connect_pending {
                options.push(2);
            }
            if self.f_connect_pending {
                options.push(3);
            }
            if options.is_empty() {
                return false;
            }
            match options[pick % options.len()] {
                0 => {
                    let v = self.to_b.pop_front().unwrap();
                    // A watch event makes the driver read the node's current value.
                    let _ = v;
                    let cur = self.f_node.unwrap_or(XenbusState::UNKNOWN);
                    self.apply_b(Stimulus::Peer(cur));
                }
                1 => {
                    let _ = self.to_f.pop_front();
                    let cur = self.b_node.unwrap_or(XenbusState::UNKNOWN);
                    self.apply_f(Stimulus::Peer(cur));
                }
                2 => {
                    self.b_connect_pending = false;
                    self.b_mapped = true;
                    self.connects += 1;
                    self.apply_b(Stimulus::ConnectOk);
                }
                _ => {
                    self.f_connect_pending = false;
                    self.f_granted = true;
                    self.apply_f(Stimulus::ConnectOk);
                }
            }
            true
        }

        fn settle(&mut self, picks: &[usize], k: &mut usize) {
            let mut n = 0;
            while self.step(picks[*k % picks.len()]) {
                *k += 1;
                n += 1;
                assert!(n < 1000, "did not settle");
            }
        }
    }

    proptest! {
        /// For any interleaving of watch deliveries and connect completions, the pair connects,
        /// closes when the frontend is removed, reconnects when the frontend restarts, and the
        /// backend removes its directory after the toolstack removes the device. The frontend never
        /// revokes grants the backend still maps, and nobody acts on a protocol error.
        #[test]
        fn pair_converges_under_any_interleaving(picks in proptest::collection::vec(0usize..12, 1..64), ready_at in 0usize..6) {
            let mut p = Pair::new();
            let mut k = 0;
            for _ in 0..ready_at {
                let pick = picks[k % picks.len()];
                k += 1;
                p.step(pick);
            }
            p.apply_b(Stimulus::Ready);
            p.settle(&picks, &mut k);
            prop_assert_eq!(p.b.state(), B::Connected);
            prop_assert_eq!(p.f.state(), F::Connected);
            prop_assert!(p.b_mapped && p.f_granted);

            p.apply_f(Stimulus::Remove);
            p.settle(&picks, &mut k);
            prop_assert_eq!(p.b.state(), B::Closed);
            prop_assert_eq!(p.f.state(), F::Closed);
            prop_assert!(!p.b_mapped && !p.f_granted);

            p.apply_f(Stimulus::Ready);
            p.settle(&picks, &mut k);
            prop_assert_eq!(p.b.state(), B::Connected);
            prop_assert_eq!(p.f.state(), F::Connected);

            p.apply_b(Stimulus::Remove);
            p.settle(&picks, &mut k);
            prop_assert_eq!(p.b.state(), B::Removing);
            prop_assert_eq!(p.f.state(), F::Closed);
            prop_assert!(!p.b_mapped && !p.f_granted);
            prop_assert_eq!(p.b_node, Some(XenbusState::CLOSED));
            p.apply_b(Stimulus::GraceOver);
            prop_assert!(!p.b_dir);
            prop_assert_eq!(p.b.state(), B::Gone);
            prop_assert_eq!(p.connects, 2);
        }

        /// A backend fed arbitrary stimuli never panics, never writes after Gone, and never
        /// holds resources in a state that says it does not.
        #[test]
        fn backend_survives_arbitrary_stimuli(seq in proptest::collection::vec((0usize..16, any::<u32>()), 0..100)) {
            let mut m = Machine::backend();
            let mut holds = false;
            for (kind, v) in seq {
                let st = if kind == 9 { Stimulus::Peer(XenbusState(v.max(9))) } else { Stimulus::REPRESENTATIVES[kind] };
                let was_gone = m.state() == B::Gone;
                let s = m.handle(st);
                if was_gone {
                    prop_assert_eq!(s.write_state, None);
                    prop_assert_eq!(s.actions, Actions::empty());
                }
                if s.actions.contains(Actions::DISCONNECT) { holds = false; }
                if s.actions.contains(Actions::CONNECT) { holds = true; }
                prop_assert_eq!(holds && !b_holds(s.to), false, "{:?}", s);
                if s.to == B::Gone { prop_assert_eq!(s.write_state, None); }
            }
        }
    }
}

#[cfg(test)]
mod xenstore_tests {
    //! A backend and a frontend device connected through the simulated xenstore, with the
    //! directories and permissions libxl creates, driven only by watch events.
    use super::*;
    use crate::xenstore::server::{Server, SimTransport};
    use crate::xenstore::{Access, Client, Perm, TxId};
    use alloc::format;
    use alloc::rc::Rc;
    use alloc::string::String;
    use core::cell::RefCell;

    type Xs = Client<SimTransport>;
    const FE: &str = "/local/domain/2/device/vusb/0";
    const BE: &str = "/local/domain/1/backend/vusb/2/0";
    const T: TxId = TxId::NONE;

    fn w() -> impl FnMut() -> bool {
        || false
    }

    struct BeDrv {
        xs: Xs,
        mapped: bool,
        connects: u32,
    }
    impl DeviceDriver for BeDrv {
        fn disconnect(&mut self) {
            self.mapped = false;
        }
        fn connect(&mut self) -> bool {
            // Read what the frontend published, as a real backend would before mapping.
            let ok = self
                .xs
                .read_u32(T, &format!("{FE}/urb-ring-ref"), &mut w())
                .is_ok()
                && self
                    .xs
                    .read_u32(T, &format!("{FE}/event-channel"), &mut w())
                    .is_ok();
            self.mapped = ok;
            self.connects += u32::from(ok);
            ok
        }
    }

    struct FeDrv {
        xs: Xs,
        published: bool,
    }
    impl DeviceDriver for FeDrv {
        fn disconnect(&mut self) {
            self.published = false;
        }
        fn connect(&mut self) -> bool {
            let r = self.xs.transaction(4, &mut w(), |xs, tx, wt| {
                xs.write(tx, &format!("{FE}/urb-ring-ref"), b"8", wt)?;
                xs.write(tx, &format!("{FE}/conn-ring-ref"), b"9", wt)?;
                xs.write(tx, &format!("{FE}/event-channel"), b"5", wt)
            });
            self.published = r.is_ok();
            self.published
        }
    }

    struct World {
        server: Rc<RefCell<Server>>,
        ts: Xs,
        bx: Xs,
        fx: Xs,
        bdev: XenbusDevice<BackendState>,
        fdev: XenbusDevice<FrontendState>,
        bdrv: BeDrv,
        fdrv: FeDrv,
        removing: bool,
    }

    fn perms(owner: u16, reader: u16) -> [Perm; 2] {
        [
            Perm {
                domid: owner,
                access: Access::None,
            },
            Perm {
                domid: reader,
                access: Access::Read,
            },
        ]
    }

    impl World {
        fn new() -> World {
            let server = Rc::new(RefCell::new(Server::new()));
            server.borrow_mut().add_domain(1);
            server.borrow_mut().add_domain(2);
            let mut ts = Client::new(SimTransport::connect(&server, 0));
            // The toolstack creates both directories in one transaction, as libxl does.
            ts.transaction(3, &mut w(), |c, tx, wt| {
                c.mkdir(tx, FE, wt)?;
                c.set_perms(tx, FE, &perms(2, 1), wt)?;
                c.write(tx, &format!("{FE}/backend"), BE.as_bytes(), wt)?;
                c.write(tx, &format!("{FE}/backend-id"), b"1", wt)?;
                c.write(tx, &format!("{FE}/state"), b"1", wt)?;
                c.mkdir(tx, BE, wt)?;
                c.set_perms(tx, BE, &perms(1, 2), wt)?;
                c.write(tx, &format!("{BE}/frontend"), FE.as_bytes(), wt)?;
                c.write(tx, &format!("{BE}/frontend-id"), b"2", wt)?;
                c.write(tx, &format!("{BE}/online"), b"1", wt)?;
                c.write(tx, &format!("{BE}/num-ports"), b"8", wt)?;
                c.write(tx, &format!("{BE}/state"), b"1", wt)
            })
            .unwrap();
            let mut bx = Client::new(SimTransport::connect(&server, 1));
            let mut fx = Client::new(SimTransport::connect(&server, 2));
            let bdev = XenbusDevice::new(BE, FE);
            let fdev = XenbusDevice::new(FE, BE);
            bx.watch(&bdev.peer_state_path(), "fe", &mut w()).unwrap();
            bx.watch(BE, "own", &mut w()).unwrap();
            fx.watch(&fdev.peer_state_path(), "be", &mut w()).unwrap();
            let bdrv = BeDrv {
                xs: Client::new(SimTransport::connect(&server, 1)),
                mapped: false,
                connects: 0,
            };
            let fdrv = FeDrv {
                xs: Client::new(SimTransport::connect(&server, 2)),
                published: false,
            };
            World {
                server,
                ts,
                bx,
                fx,
                bdev,
                fdev,
                bdrv,
                fdrv,
                removing: false,
            }
        }

        /// Deliver watch events until there are none.
        fn pump(&mut self) {
            for _ in 0..200 {
                let mut any = false;
                self.bx.poll().unwrap();
                while let Some(ev) = self.bx.next_event() {
                    any = true;
                    if ev.token == "fe" {
                        self.bdev
                            .peer_changed(&mut self.bx, &mut self.bdrv, &mut w())
                            .unwrap();
                    } else if !self.removing {
                        // Our own directory: `online` = 0 means the toolstack removes the device.
                        match self.bx.read(T, &format!("{BE}/online"), &mut w()) {
                            Ok(v) if v == b"0" => {
                                self.removing = true;
                                self.bdev
                                    .handle(
                                        Stimulus::Remove,
                                        &mut self.bx,
                                        &mut self.bdrv,
                                        &mut w(),
                                    )
                                    .unwrap();
                            }
                            Ok(_) => {}
                            Err(e) if e.is_enoent() => {
                                self.bdev
                                    .handle(
                                        Stimulus::DirRemoved,
                                        &mut self.bx,
                                        &mut self.bdrv,
                                        &mut w(),
                                    )
                                    .unwrap();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                self.fx.poll().unwrap();
                while let Some(_ev) = self.fx.next_event() {
                    any = true;
                    self.fdev
                        .peer_changed(&mut self.fx, &mut self.fdrv, &mut w())
                        .unwrap();
                }
                if !any {
                    assert_eq!(self.bx.take_events_lost() + self.fx.take_events_lost(), 0);
                    return;
                }
            }
            panic!("watch events did not settle");
        }

        fn node(&self, p: &str) -> Option<String> {
            self.server
                .borrow()
                .admin_read(p)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        }
    }

    #[test]
    fn connect_close_reconnect_and_removal_through_xenstore() {
        let mut wd = World::new();
        wd.pump();
        // Nothing happens before the backend has read its configuration.
        assert_eq!(wd.node(&format!("{BE}/state")).as_deref(), Some("1"));
        assert_eq!(
            wd.bx
                .read_u32(T, &format!("{BE}/num-ports"), &mut w())
                .unwrap(),
            8
        );
        wd.bdev
            .handle(Stimulus::Ready, &mut wd.bx, &mut wd.bdrv, &mut w())
            .unwrap();
        wd.pump();
        assert_eq!(wd.bdev.machine().state(), BackendState::Connected);
        assert_eq!(wd.fdev.machine().state(), FrontendState::Connected);
        assert_eq!(wd.node(&format!("{BE}/state")).as_deref(), Some("4"));
        assert_eq!(wd.node(&format!("{FE}/state")).as_deref(), Some("4"));
        assert!(wd.bdrv.mapped && wd.fdrv.published);

        // The frontend goes away (module unload): both close.
        wd.fdev
            .handle(Stimulus::Remove, &mut wd.fx, &mut wd.fdrv, &mut w())
            .unwrap();
        wd.pump();
        assert_eq!(wd.bdev.machine().state(), BackendState::Closed);
        assert_eq!(wd.fdev.machine().state(), FrontendState::Closed);
        assert_eq!(wd.node(&format!("{BE}/state")).as_deref(), Some("6"));
        assert!(!wd.bdrv.mapped && !wd.fdrv.published);

        // It comes back: reconnect.
        wd.fdev
            .handle(Stimulus::Ready, &mut wd.fx, &mut wd.fdrv, &mut w())
            .unwrap();
        wd.pump();
        assert_eq!(wd.bdev.machine().state(), BackendState::Connected);
        assert_eq!(wd.fdev.machine().state(), FrontendState::Connected);
        assert_eq!(wd.bdrv.connects, 2);

        // The toolstack detaches the controller: online = 0 and backend state = 5 (libxl).
        wd.ts
            .transaction(3, &mut w(), |c, tx, wt| {
                c.write(tx, &format!("{BE}/online"), b"0", wt)?;
                c.write(tx, &format!("{BE}/state"), b"5", wt)
            })
            .unwrap();
        wd.pump();
        assert_eq!(wd.bdev.machine().state(), BackendState::Removing);
        assert_eq!(wd.node(&format!("{BE}/state")).as_deref(), Some("6"));
        assert_eq!(wd.fdev.machine().state(), FrontendState::Closed);
        assert!(!wd.bdrv.mapped);
        // After the grace period the backend deletes its own directory (libxl waits for that).
        wd.bdev
            .handle(Stimulus::GraceOver, &mut wd.bx, &mut wd.bdrv, &mut w())
            .unwrap();
        assert_eq!(wd.node(BE), None);
        wd.pump();
        assert_eq!(wd.bdev.machine().state(), BackendState::Gone);
        // The parent directories the toolstack made stay for the toolstack to clean.
        assert!(wd.node("/local/domain/1/backend/vusb/2").is_some());
    }
}
