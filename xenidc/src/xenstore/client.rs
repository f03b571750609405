//! The xenstore client: a pure state machine over a byte [`Transport`].
//!
//! It encodes requests, matches replies to requests by `req_id`, queues watch events that arrive
//! interleaved with replies, and offers two ways to wait:
//!
//! * non-blocking: [`Client::submit`] a [`Request`], call [`Client::poll`] from the event loop, pick
//!   the answer up with [`Client::take_reply`] and the events with [`Client::next_event`];
//! * blocking helpers ([`Client::read`], [`Client::write`], …, [`Client::transaction`]) that poll and
//!   call a caller-supplied `wait` closure between polls (on real Xen it blocks on the xenstore event
//!   channel; on a host with a synchronous transport it does nothing). `wait` returns `false` to give
//!   up, which makes the operation fail with [`Error::WaitAborted`].
//!
//! Memory is bounded: at most [`MAX_IN_FLIGHT`] requests, at most [`MAX_QUEUED_EVENTS`] queued
//! events (further events are counted in [`Client::take_events_lost`] so the caller rescans instead
//! of missing a change), one decoder buffer, and the unsent tail of the requests in flight.
//!
//! Protocol: Xen `io/xs_wire.h`, `docs/misc/xenstore.txt`.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::wire::{
    self, encode, DecodeError, Decoder, EncodeError, Errno, Frame, MsgType, PayloadError, Perm,
    TxId,
};

/// Most requests the client keeps in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Most watch events queued before further ones are counted as lost.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// A byte stream to a xenstore server: the shared ring page, `/dev/xen/xenbus`, or a simulator.
pub trait Transport {
    /// Queue as many of `bytes` as fit; return how many were taken (0 when full). The transport
    /// notifies the server itself when it made bytes available.
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError>;
    /// Copy available bytes into `buf`; return how many (0 when none are available).
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        (**self).send(bytes)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        (**self).recv(buf)
    }
}

/// A transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The other end is gone.
    Closed,
    /// The peer broke the transport's own rules (for a ring: an impossible index).
    Protocol(&'static str),
    /// An operating-system error (errno), for the `/dev/xen/xenbus` transport.
    Os(i32),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Closed => f.write_str("xenstore transport closed"),
            TransportError::Protocol(what) => {
                write!(f, "xenstore transport protocol error: {what}")
            }
            TransportError::Os(e) => write!(f, "xenstore transport OS error {e}"),
        }
    }
}

/// Errors of the xenstore client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server answered the request with an error.
    Remote { op: MsgType, errno: Errno },
    /// The request could not be encoded (too long, NUL in a string, invalid path).
    Encode { op: MsgType, err: EncodeError },
    /// A path argument is not a valid xenstore path.
    BadPath,
    /// The reply to a request has the wrong shape.
    BadReply { op: MsgType, err: PayloadError },
    /// The server replied with a type other than the request's or `XS_ERROR`.
    WrongReplyType { op: MsgType, got: MsgType },
    /// The byte stream from the server lost framing; the client is broken.
    Decode(DecodeError),
    /// The transport failed; the client is broken.
    Transport(TransportError),
    /// [`MAX_IN_FLIGHT`] requests are already outstanding.
    Busy,
    /// An earlier fatal error broke the client; make a new one after resetting the connection.
    Broken,
    /// The `wait` closure gave up before the reply arrived.
    WaitAborted,
    /// A transaction still conflicted (`EAGAIN`) after the allowed number of attempts.
    TooManyRetries { attempts: u32 },
    /// The request id is not one of ours (already taken or never submitted).
    UnknownRequest,
}

impl Error {
    /// The server's errno if this is a remote error.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Remote { errno, .. } => Some(*errno),
            _ => None,
        }
    }
    /// Whether this is the server's `ENOENT`.
    pub fn is_enoent(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Remote { op, errno } => write!(f, "xenstore {op:?} failed: {errno}"),
            Error::Encode { op, err } => write!(f, "xenstore {op:?} not sent: {err}"),
            Error::BadPath => f.write_str("invalid xenstore path"),
            Error::BadReply { op, err } => write!(f, "malformed reply to xenstore {op:?}: {err}"),
            Error::WrongReplyType { op, got } => {
                write!(f, "xenstore {op:?} answered with {got:?}")
            }
            Error::Decode(e) => write!(f, "{e}"),
            Error::Transport(e) => write!(f, "{e}"),
            Error::Busy => f.write_str("too many xenstore requests in flight"),
            Error::Broken => f.write_str("xenstore client broken by an earlier error"),
            Error::WaitAborted => f.write_str("gave up waiting for a xenstore reply"),
            Error::TooManyRetries { attempts } => {
                write!(f, "xenstore transaction conflicted {attempts} times")
            }
            Error::UnknownRequest => f.write_str("unknown xenstore request id"),
        }
    }
}

/// One request. Paths may be absolute (`/local/domain/3/…`) or relative to the caller's home
/// directory (`device/vusb/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Read(&'a str),
    /// Create or overwrite a node (and any missing parents) with a value.
    Write(&'a str, &'a [u8]),
    /// Create an empty node if it does not exist.
    Mkdir(&'a str),
    /// Remove a node and everything below it.
    Rm(&'a str),
    /// List the children of a node.
    Directory(&'a str),
    GetPerms(&'a str),
    /// Replace a node's permissions; the first entry is the owner and the default access.
    SetPerms(&'a str, &'a [Perm]),
    /// Register a watch on a path (and everything below it) with a token.
    Watch(&'a str, &'a str),
    Unwatch(&'a str, &'a str),
    TransactionStart,
    /// End the request's transaction: commit (`true`) or abort.
    TransactionEnd(bool),
    /// Ask for a domain's home path (`/local/domain/<id>`).
    GetDomainPath(u16),
}

impl Request<'_> {
    /// The message type.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Read(_) => MsgType::READ,
            Request::Write(..) => MsgType::WRITE,
            Request::Mkdir(_) => MsgType::MKDIR,
            Request::Rm(_) => MsgType::RM,
            Request::Directory(_) => MsgType::DIRECTORY,
            Request::GetPerms(_) => MsgType::GET_PERMS,
            Request::SetPerms(..) => MsgType::SET_PERMS,
            Request::Watch(..) => MsgType::WATCH,
            Request::Unwatch(..) => MsgType::UNWATCH,
            Request::TransactionStart => MsgType::TRANSACTION_START,
            Request::TransactionEnd(_) => MsgType::TRANSACTION_END,
            Request::GetDomainPath(_) => MsgType::GET_DOMAIN_PATH,
        }
    }

    /// Append the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, req_id: u32, tx: TxId) -> Result<(), Error> {
        let op = self.msg_type();
        let path_ok = |p: &str| -> Result<(), Error> {
            wire::check_path(p.as_bytes())
                .map(|_| ())
                .map_err(|_| Error::BadPath)
        };
        let r = match *self {
            Request::Read(p)
            | Request::Mkdir(p)
            | Request::Rm(p)
            | Request::Directory(p)
            | Request::GetPerms(p) => {
                path_ok(p)?;
                encode(out, op, req_id, tx, &[p.as_bytes()], false)
            }
            Request::Write(p, v) => {
                path_ok(p)?;
                encode(out, op, req_id, tx, &[p.as_bytes(), v], true)
            }
            Request::SetPerms(p, perms) => {
                path_ok(p)?;
                let mut strs: Vec<u8> = Vec::new();
                let mut bounds = Vec::with_capacity(perms.len());
                for perm in perms {
                    let start = strs.len();
                    perm.write_to(&mut strs);
                    bounds.push((start, strs.len()));
                }
                let mut parts: Vec<&[u8]> = Vec::with_capacity(perms.len() + 1);
                parts.push(p.as_bytes());
                parts.extend(bounds.iter().map(|&(a, b)| &strs[a..b]));
                encode(out, op, req_id, tx, &parts, false)
            }
            Request::Watch(p, token) | Request::Unwatch(p, token) => {
                path_ok(p)?;
                encode(
                    out,
                    op,
                    req_id,
                    tx,
                    &[p.as_bytes(), token.as_bytes()],
                    false,
                )
            }
            Request::TransactionStart => encode(out, op, req_id, tx, &[b""], false),
            Request::TransactionEnd(commit) => encode(
                out,
                op,
                req_id,
                tx,
                &[if commit { b"T" } else { b"F" }],
                false,
            ),
            Request::GetDomainPath(domid) => {
                let mut d = Vec::new();
                wire::push_decimal(&mut d, domid as u32);
                encode(out, op, req_id, tx, &[&d], false)
            }
        };
        r.map_err(|err| Error::Encode { op, err })
    }
}

/// Handle of a submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReqId(pub u32);

/// A watch event: `path` changed (or is the watched path itself, once, at registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

#[derive(Debug)]
struct Pending {
    req_id: u32,
    op: MsgType,
    /// The caller no longer wants the reply (it gave up waiting).
    abandoned: bool,
    reply: Option<Result<Vec<u8>, Error>>,
}

/// Counters of peer misbehaviour the client tolerated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Replies whose `req_id` matched no request in flight (dropped).
    pub stray_replies: u64,
    /// Watch events that were malformed or did not fit the queue.
    pub events_lost: u64,
    /// Frames received.
    pub frames: u64,
}

/// The xenstore client. See the [module documentation](self).
pub struct Client<T: Transport> {
    transport: T,
    decoder: Box<Decoder>,
    out: Vec<u8>,
    pending: Vec<Pending>,
    events: VecDeque<WatchEvent>,
    events_lost_unreported: u64,
    stats: Stats,
    next_req_id: u32,
    broken: bool,
}

impl<T: Transport> fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("pending", &self.pending.len())
            .field("events", &self.events.len())
            .field("stats", &self.stats)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<T: Transport> Client<T> {
    /// A client over `transport`, which must be at a message boundary.
    pub fn new(transport: T) -> Self {
        Client {
            transport,
            decoder: Box::new(Decoder::new()),
            out: Vec::new(),
            pending: Vec::with_capacity(MAX_IN_FLIGHT),
            events: VecDeque::with_capacity(MAX_QUEUED_EVENTS),
            events_lost_unreported: 0,
            stats: Stats::default(),
            next_req_id: 1,
            broken: false,
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }
    /// The transport, mutably (for example to feed a simulated server).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    /// Give the transport back.
    pub fn into_transport(self) -> T {
        self.transport
    }
    /// Counters of tolerated peer misbehaviour.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Whether a fatal error (transport failure, lost framing) broke the client.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// Requests in flight (including abandoned ones still awaiting their reply).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Encode and queue a request; returns its handle. Does not wait.
    pub fn submit(&mut self, tx: TxId, req: Request<'_>) -> Result<ReqId, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.pending.len() >= MAX_IN_FLIGHT {
            return Err(Error::Busy);
        }
        let req_id = self.alloc_req_id();
        req.encode(&mut self.out, req_id, tx)?;
        self.pending.push(Pending {
            req_id,
            op: req.msg_type(),
            abandoned: false,
            reply: None,
        });
        self.flush()?;
        Ok(ReqId(req_id))
    }

    fn alloc_req_id(&mut self) -> u32 {
        loop {
            let id = self.next_req_id;
            self.next_req_id = self.next_req_id.wrapping_add(1);
            // 0 is what watch events carry; avoid it and ids still in flight.
            if id != 0 && !self.pending.iter().any(|p| p.req_id == id) {
                return id;
            }
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.broken = true;
        for p in &mut self.pending {
            if p.reply.is_none() {
                p.reply = Some(Err(e.clone()));
            }
        }
        e
    }

    fn flush(&mut self) -> Result<(), Error> {
        while !self.out.is_empty() {
            let n = match self.transport.send(&self.out) {
                Ok(n) => n.min(self.out.len()),
                Err(e) => return Err(self.fail(Error::Transport(e))),
            };
            if n == 0 {
                break;
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Send queued bytes, receive and dispatch everything available. Returns the number of
    /// complete messages received. Errors are fatal (the client is then broken); per-request
    /// errors are delivered through [`Client::take_reply`].
    pub fn poll(&mut self) -> Result<usize, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        self.flush()?;
        let mut frames = 0;
        let mut buf = [0u8; 512];
        loop {
            let n = match self.transport.recv(&mut buf) {
                Ok(n) => n.min(buf.len()),
                Err(e) => return Err(self.fail(Error::Transport(e))),
            };
            if n == 0 {
                break;
            }
            let mut input = &buf[..n];
            while !input.is_empty() {
                match self.decoder.decode(&mut input) {
                    Ok(Some(frame)) => {
                        frames += 1;
                        let frame = OwnedFrame::from(frame);
                        self.dispatch(frame);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(self.fail(Error::Decode(e))),
                }
            }
        }
        // Sending may have been blocked by a full ring that the server has now drained.
        self.flush()?;
        Ok(frames)
    }

    fn dispatch(&mut self, frame: OwnedFrame) {
        self.stats.frames += 1;
        if frame.ty == MsgType::WATCH_EVENT {
            self.queue_event(&frame.payload);
            return;
        }
        let Some(idx) = self
            .pending
            .iter()
            .position(|p| p.req_id == frame.req_id && p.reply.is_none())
        else {
            self.stats.stray_replies += 1;
            // Rate-limited: the 1st, 2nd, 4th, 8th, … occurrence.
            if self.stats.stray_replies.is_power_of_two() {
                log::warn!(
                    "xenstore: dropped reply {:?} for unknown req_id {} ({} so far)",
                    frame.ty,
                    frame.req_id,
                    self.stats.stray_replies
                );
            }
            return;
        };
        let op = self.pending[idx].op;
        let result = if frame.ty == MsgType::ERROR {
            match Errno::from_wire(&frame.payload) {
                Ok(errno) => Err(Error::Remote { op, errno }),
                Err(err) => Err(Error::BadReply { op, err }),
            }
        } else if frame.ty != op {
            Err(Error::WrongReplyType { op, got: frame.ty })
        } else {
            Ok(frame.payload)
        };
        if self.pending[idx].abandoned {
            self.pending.swap_remove(idx);
        } else {
            self.pending[idx].reply = Some(result);
        }
    }

    fn queue_event(&mut self, payload: &[u8]) {
        let parsed = wire::parse_watch_event(payload)
            .ok()
            .and_then(|(path, token)| {
                core::str::from_utf8(token)
                    .ok()
                    .map(|t| (String::from(path), String::from(t)))
            });
        match parsed {
            Some((path, token)) if self.events.len() < MAX_QUEUED_EVENTS => {
                self.events.push_back(WatchEvent { path, token });
            }
            _ => {
                self.stats.events_lost += 1;
                self.events_lost_unreported += 1;
            }
        }
    }

    /// Take the reply to `id` if it has arrived: the raw reply payload, or the error. Returns
    /// `None` while it is still outstanding.
    pub fn take_reply(&mut self, id: ReqId) -> Option<Result<Vec<u8>, Error>> {
        let idx = self
            .pending
            .iter()
            .position(|p| p.req_id == id.0 && !p.abandoned)?;
        self.pending[idx].reply.as_ref()?;
        self.pending.swap_remove(idx).reply
    }

    /// Stop waiting for `id`: its reply, when it comes, is dropped.
    pub fn abandon(&mut self, id: ReqId) {
        if let Some(idx) = self.pending.iter().position(|p| p.req_id == id.0) {
            if self.pending[idx].reply.is_some() || self.broken {
                self.pending.swap_remove(idx);
            } else {
                self.pending[idx].abandoned = true;
            }
        }
    }

    /// The next queued watch event.
    pub fn next_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// Number of watch events lost (malformed or queue full) since the last call. When it is not
    /// zero, the caller must re-read the state it watches.
    pub fn take_events_lost(&mut self) -> u64 {
        core::mem::take(&mut self.events_lost_unreported)
    }

    /// Poll until the reply to `id` arrives, calling `wait` between polls.
    pub fn wait_reply(
        &mut self,
        id: ReqId,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(r) = self.take_reply(id) {
                return r;
            }
            if !self.pending.iter().any(|p| p.req_id == id.0) {
                return Err(Error::UnknownRequest);
            }
            if let Err(e) = self.poll() {
                // The request was failed with the same error; drop it.
                self.abandon(id);
                return Err(e);
            }
            if let Some(r) = self.take_reply(id) {
                return r;
            }
            if !wait() {
                self.abandon(id);
                return Err(Error::WaitAborted);
            }
        }
    }

    /// Submit `req` and wait for its raw reply.
    pub fn request(
        &mut self,
        tx: TxId,
        req: Request<'_>,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<Vec<u8>, Error> {
        let id = self.submit(tx, req)?;
        self.wait_reply(id, wait)
    }

    /// Read a node's value.
    pub fn read(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<Vec<u8>, Error> {
        self.request(tx, Request::Read(path), wait)
    }

    /// Read a node's value; `None` if it does not exist.
    pub fn read_opt(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        match self.read(tx, path, wait) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Read a node's value as UTF-8 text.
    pub fn read_string(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<String, Error> {
        let v = self.read(tx, path, wait)?;
        String::from_utf8(v).map_err(|_| Error::BadReply {
            op: MsgType::READ,
            err: PayloadError::BadString,
        })
    }

    /// Read a node holding a decimal number (as xenbus keys such as `state` or `event-channel`
    /// do). Surrounding whitespace is not accepted.
    pub fn read_u32(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<u32, Error> {
        let v = self.read(tx, path, wait)?;
        wire::parse_u32(&v).map_err(|err| Error::BadReply {
            op: MsgType::READ,
            err,
        })
    }

    /// Write a node's value, creating it and missing parents.
    pub fn write(
        &mut self,
        tx: TxId,
        path: &str,
        value: &[u8],
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(tx, Request::Write(path, value), wait)
            .map(drop)
    }

    /// Create an empty node unless it exists.
    pub fn mkdir(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(tx, Request::Mkdir(path), wait).map(drop)
    }

    /// Remove a node and its subtree.
    pub fn rm(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(tx, Request::Rm(path), wait).map(drop)
    }

    /// The names of a node's children.
    pub fn directory(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<Vec<String>, Error> {
        let v = self.request(tx, Request::Directory(path), wait)?;
        parse_directory(&v)
    }

    /// A node's permissions (owner and default first).
    pub fn get_perms(
        &mut self,
        tx: TxId,
        path: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<Vec<Perm>, Error> {
        let v = self.request(tx, Request::GetPerms(path), wait)?;
        parse_perms(&v)
    }

    /// Replace a node's permissions.
    pub fn set_perms(
        &mut self,
        tx: TxId,
        path: &str,
        perms: &[Perm],
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(tx, Request::SetPerms(path, perms), wait)
            .map(drop)
    }

    /// Register a watch. The server fires it once right away; the event is queued.
    pub fn watch(
        &mut self,
        path: &str,
        token: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(TxId::NONE, Request::Watch(path, token), wait)
            .map(drop)
    }

    /// Remove a watch. Events already queued for it stay queued.
    pub fn unwatch(
        &mut self,
        path: &str,
        token: &str,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(TxId::NONE, Request::Unwatch(path, token), wait)
            .map(drop)
    }

    /// Start a transaction.
    pub fn transaction_start(&mut self, wait: &mut impl FnMut() -> bool) -> Result<TxId, Error> {
        let v = self.request(TxId::NONE, Request::TransactionStart, wait)?;
        parse_tx_id(&v)
    }

    /// End a transaction: commit or abort. A commit may fail with `EAGAIN` (conflict).
    pub fn transaction_end(
        &mut self,
        tx: TxId,
        commit: bool,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<(), Error> {
        self.request(tx, Request::TransactionEnd(commit), wait)
            .map(drop)
    }

    /// Run `body` in a transaction and commit it, starting over when the commit conflicts
    /// (`EAGAIN`), at most `max_attempts` times. If `body` fails, the transaction is aborted and
    /// its error returned.
    pub fn transaction<R, W: FnMut() -> bool>(
        &mut self,
        max_attempts: u32,
        wait: &mut W,
        mut body: impl FnMut(&mut Self, TxId, &mut W) -> Result<R, Error>,
    ) -> Result<R, Error> {
        for _ in 0..max_attempts {
            let tx = self.transaction_start(wait)?;
            let value = match body(self, tx, wait) {
                Ok(v) => v,
                Err(e) => {
                    if !self.broken {
                        // Best effort: the body's error is the one that matters.
                        let _ = self.transaction_end(tx, false, wait);
                    }
                    return Err(e);
                }
            };
            match self.transaction_end(tx, true, wait) {
                Ok(()) => return Ok(value),
                Err(e) if e.errno() == Some(Errno::EAGAIN) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::TooManyRetries {
            attempts: max_attempts,
        })
    }

    /// The home path of a domain (`/local/domain/<domid>`).
    pub fn get_domain_path(
        &mut self,
        domid: u16,
        wait: &mut impl FnMut() -> bool,
    ) -> Result<String, Error> {
        let v = self.request(TxId::NONE, Request::GetDomainPath(domid), wait)?;
        parse_single_string(MsgType::GET_DOMAIN_PATH, &v)
    }
}

struct OwnedFrame {
    ty: MsgType,
    req_id: u32,
    payload: Vec<u8>,
}

impl From<Frame<'_>> for OwnedFrame {
    fn from(f: Frame<'_>) -> Self {
        OwnedFrame {
            ty: f.header.ty,
            req_id: f.header.req_id,
            payload: f.payload.to_vec(),
        }
    }
}

/// Parse a `DIRECTORY` reply into child names.
pub fn parse_directory(payload: &[u8]) -> Result<Vec<String>, Error> {
    let bad = |err| Error::BadReply {
        op: MsgType::DIRECTORY,
        err,
    };
    let mut out = Vec::new();
    for name in wire::strings(payload).map_err(bad)? {
        if name.is_empty() || name.contains(&b'/') || !name.iter().all(|&c| wire::is_path_char(c)) {
            return Err(bad(PayloadError::BadString));
        }
        // Path characters are ASCII.
        out.push(name.iter().map(|&c| c as char).collect());
    }
    Ok(out)
}

/// Parse a `GET_PERMS` reply.
pub fn parse_perms(payload: &[u8]) -> Result<Vec<Perm>, Error> {
    let bad = |err| Error::BadReply {
        op: MsgType::GET_PERMS,
        err,
    };
    let perms = wire::strings(payload)
        .map_err(bad)?
        .map(Perm::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if perms.is_empty() {
        return Err(bad(PayloadError::WrongCount {
            expected: 1,
            found: 0,
        }));
    }
    Ok(perms)
}

/// Parse a `TRANSACTION_START` reply (`"<id>\0"`).
pub fn parse_tx_id(payload: &[u8]) -> Result<TxId, Error> {
    let bad = |err| Error::BadReply {
        op: MsgType::TRANSACTION_START,
        err,
    };
    let [id] = wire::exact_strings::<1>(payload).map_err(bad)?;
    let id = wire::parse_u32(id).map_err(bad)?;
    if id == 0 {
        return Err(bad(PayloadError::BadNumber));
    }
    Ok(TxId(id))
}

fn parse_single_string(op: MsgType, payload: &[u8]) -> Result<String, Error> {
    let bad = |err| Error::BadReply { op, err };
    let [s] = wire::exact_strings::<1>(payload).map_err(bad)?;
    let s = wire::check_path(s).map_err(bad)?;
    Ok(String::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::wire::{Access, RawHeader, HEADER_LEN};
    use alloc::vec;

    /// A scripted server: records what the client sent, hands out queued bytes in small chunks.
    #[derive(Default)]
    struct Script {
        sent: Vec<u8>,
        inbox: VecDeque<u8>,
        chunk: usize,
        send_room: Option<usize>,
        fail_recv: bool,
        /// Replies released into `inbox` only once their request has been sent.
        later: VecDeque<(MsgType, u32, Vec<u8>)>,
    }

    impl Transport for Script {
        fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
            let n = self.send_room.map_or(bytes.len(), |r| r.min(bytes.len()));
            if let Some(r) = &mut self.send_room {
                *r -= n;
            }
            self.sent.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
            if self.fail_recv {
                return Err(TransportError::Closed);
            }
            let sent_max = self.sent_messages().iter().map(|m| m.1).max().unwrap_or(0);
            while self.later.front().is_some_and(|r| r.1 <= sent_max) {
                let (ty, id, p) = self.later.pop_front().unwrap();
                self.reply(ty, id, &p);
            }
            let n = buf.len().min(self.inbox.len()).min(self.chunk.max(1));
            for b in buf.iter_mut().take(n) {
                *b = self.inbox.pop_front().unwrap();
            }
            Ok(n)
        }
    }

    impl Script {
        fn reply(&mut self, ty: MsgType, req_id: u32, payload: &[u8]) {
            let h = RawHeader {
                ty: ty.0,
                req_id,
                tx_id: 0,
                len: payload.len() as u32,
            };
            self.inbox.extend(h.to_wire());
            self.inbox.extend(payload.iter().copied());
        }
        fn reply_later(&mut self, ty: MsgType, req_id: u32, payload: &[u8]) {
            self.later.push_back((ty, req_id, payload.to_vec()));
        }
        /// The messages the client sent, as (type, req_id, tx_id, payload).
        fn sent_messages(&self) -> Vec<(MsgType, u32, u32, Vec<u8>)> {
            let mut d = Decoder::new();
            let mut input = &self.sent[..];
            let mut out = Vec::new();
            while let Some(f) = d.decode(&mut input).unwrap() {
                out.push((
                    f.header.ty,
                    f.header.req_id,
                    f.header.tx_id.0,
                    f.payload.to_vec(),
                ));
            }
            out
        }
    }

    fn no_wait() -> impl FnMut() -> bool {
        || false
    }

    #[test]
    fn requests_are_encoded_as_xs_wire_says() {
        let mut c = Client::new(Script::default());
        let perms = [
            Perm {
                domid: 3,
                access: Access::None,
            },
            Perm {
                domid: 0,
                access: Access::Read,
            },
        ];
        for r in [
            Request::Read("/a"),
            Request::Write("a/b", b"xyz"),
            Request::Mkdir("/m"),
            Request::Rm("/r"),
            Request::Directory("/"),
            Request::GetPerms("/p"),
            Request::SetPerms("/p", &perms),
            Request::Watch("/w", "tok"),
            Request::Unwatch("/w", "tok"),
            Request::TransactionStart,
            Request::TransactionEnd(true),
            Request::GetDomainPath(7),
        ] {
            c.submit(TxId(5), r).unwrap();
        }
        let sent = c.transport().sent_messages();
        let payloads: Vec<(u32, &[u8])> = sent.iter().map(|m| (m.0 .0, &m.3[..])).collect();
        assert_eq!(
            payloads,
            vec![
                (2, &b"/a\0"[..]),
                (11, b"a/b\0xyz"),
                (12, b"/m\0"),
                (13, b"/r\0"),
                (1, b"/\0"),
                (3, b"/p\0"),
                (14, b"/p\0n3\0r0\0"),
                (4, b"/w\0tok\0"),
                (5, b"/w\0tok\0"),
                (6, b"\0"),
                (7, b"T\0"),
                (10, b"7\0"),
            ]
        );
        assert!(sent.iter().all(|m| m.2 == 5));
        let ids: Vec<u32> = sent.iter().map(|m| m.1).collect();
        assert_eq!(ids, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn invalid_paths_and_oversized_values_are_refused_locally() {
        let mut c = Client::new(Script::default());
        assert_eq!(
            c.submit(TxId::NONE, Request::Read("/a b")),
            Err(Error::BadPath)
        );
        assert_eq!(
            c.submit(TxId::NONE, Request::Read("/a\0b")),
            Err(Error::BadPath)
        );
        let big = vec![0u8; 4096];
        assert!(matches!(
            c.submit(TxId::NONE, Request::Write("/a", &big)),
            Err(Error::Encode {
                err: EncodeError::TooLong { .. },
                ..
            })
        ));
        assert_eq!(c.in_flight(), 0);
        assert!(c.transport().sent.is_empty());
    }

    #[test]
    fn replies_match_by_req_id_with_events_interleaved() {
        let mut c = Client::new(Script {
            chunk: 3,
            ..Default::default()
        });
        let a = c.submit(TxId::NONE, Request::Read("/a")).unwrap();
        let b = c.submit(TxId::NONE, Request::Read("/b")).unwrap();
        let s = c.transport_mut();
        s.reply(MsgType::WATCH_EVENT, 0, b"/w/x\0tok\0");
        s.reply(MsgType::READ, b.0, b"B");
        s.reply(MsgType::WATCH_EVENT, 0, b"/w\0tok2\0");
        s.reply(MsgType::ERROR, a.0, b"ENOENT\0");
        assert_eq!(c.take_reply(a), None);
        c.poll().unwrap();
        assert_eq!(c.take_reply(b), Some(Ok(b"B".to_vec())));
        assert_eq!(
            c.take_reply(a),
            Some(Err(Error::Remote {
                op: MsgType::READ,
                errno: Errno::ENOENT
            }))
        );
        assert_eq!(c.take_reply(a), None);
        assert_eq!(
            c.next_event(),
            Some(WatchEvent {
                path: "/w/x".into(),
                token: "tok".into()
            })
        );
        assert_eq!(c.next_event().unwrap().token, "tok2");
        assert_eq!(c.next_event(), None);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn stray_and_wrong_type_replies_are_errors_not_panics() {
        let mut c = Client::new(Script::default());
        let a = c.submit(TxId::NONE, Request::Read("/a")).unwrap();
        let s = c.transport_mut();
        s.reply(MsgType::READ, 999, b"x");
        s.reply(MsgType::ERROR, a.0 + 1, b"ENOENT\0");
        s.reply(MsgType::DIRECTORY, a.0, b"x\0");
        c.poll().unwrap();
        assert_eq!(c.stats().stray_replies, 2);
        assert_eq!(
            c.take_reply(a),
            Some(Err(Error::WrongReplyType {
                op: MsgType::READ,
                got: MsgType::DIRECTORY
            }))
        );
        let b = c.submit(TxId::NONE, Request::Read("/b")).unwrap();
        c.transport_mut().reply(MsgType::ERROR, b.0, b"EWHAT\0");
        c.poll().unwrap();
        assert!(matches!(
            c.take_reply(b),
            Some(Err(Error::BadReply {
                err: PayloadError::UnknownError,
                ..
            }))
        ));
    }

    #[test]
    fn malformed_and_excess_events_are_counted_as_lost() {
        let mut c = Client::new(Script::default());
        let s = c.transport_mut();
        s.reply(MsgType::WATCH_EVENT, 0, b"/no-token\0");
        s.reply(MsgType::WATCH_EVENT, 0, b"/bad path\0t\0");
        for _ in 0..MAX_QUEUED_EVENTS + 3 {
            s.reply(MsgType::WATCH_EVENT, 0, b"/p\0t\0");
        }
        c.poll().unwrap();
        assert_eq!(c.take_events_lost(), 5);
        assert_eq!(c.take_events_lost(), 0);
        let mut n = 0;
        while c.next_event().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_QUEUED_EVENTS);
    }

    #[test]
    fn oversized_frame_breaks_the_client_and_fails_pending_requests() {
        let mut c = Client::new(Script::default());
        let a = c.submit(TxId::NONE, Request::Read("/a")).unwrap();
        let h = RawHeader {
            ty: 2,
            req_id: a.0,
            tx_id: 0,
            len: 5000,
        };
        c.transport_mut().inbox.extend(h.to_wire());
        assert!(matches!(
            c.poll(),
            Err(Error::Decode(DecodeError::PayloadTooLong { .. }))
        ));
        assert!(c.is_broken());
        assert!(matches!(c.take_reply(a), Some(Err(Error::Decode(_)))));
        assert_eq!(
            c.submit(TxId::NONE, Request::Read("/a")),
            Err(Error::Broken)
        );
        assert_eq!(c.poll(), Err(Error::Broken));
    }

    #[test]
    fn transport_failure_is_fatal() {
        let mut c = Client::new(Script {
            fail_recv: true,
            ..Default::default()
        });
        assert_eq!(
            c.read(TxId::NONE, "/a", &mut no_wait()),
            Err(Error::Transport(TransportError::Closed))
        );
        assert!(c.is_broken());
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn partial_sends_are_completed_by_poll() {
        let mut c = Client::new(Script {
            send_room: Some(5),
            ..Default::default()
        });
        c.submit(TxId::NONE, Request::Read("/abc")).unwrap();
        assert_eq!(c.transport().sent.len(), 5);
        c.transport_mut().send_room = Some(100);
        c.poll().unwrap();
        assert_eq!(c.transport().sent.len(), HEADER_LEN + 5);
        assert_eq!(c.transport().sent_messages().len(), 1);
    }

    #[test]
    fn in_flight_limit_and_abandoned_replies() {
        let mut c = Client::new(Script::default());
        let ids: Vec<ReqId> = (0..MAX_IN_FLIGHT)
            .map(|_| c.submit(TxId::NONE, Request::Read("/a")).unwrap())
            .collect();
        assert_eq!(c.submit(TxId::NONE, Request::Read("/a")), Err(Error::Busy));
        // Give up on the first one; its late reply must be dropped, not counted as stray.
        let mut calls = 0;
        let r = c.wait_reply(ids[0], &mut || {
            calls += 1;
            calls < 3
        });
        assert_eq!(r, Err(Error::WaitAborted));
        assert_eq!(calls, 3);
        c.transport_mut().reply(MsgType::READ, ids[0].0, b"late");
        c.poll().unwrap();
        assert_eq!(c.stats().stray_replies, 0);
        assert_eq!(c.in_flight(), MAX_IN_FLIGHT - 1);
        assert_eq!(c.take_reply(ids[0]), None);
        assert_eq!(
            c.wait_reply(ids[0], &mut no_wait()),
            Err(Error::UnknownRequest)
        );
    }

    #[test]
    fn req_ids_skip_zero_and_ids_in_flight() {
        let mut c = Client::new(Script::default());
        c.next_req_id = u32::MAX;
        let a = c.submit(TxId::NONE, Request::Read("/a")).unwrap();
        let b = c.submit(TxId::NONE, Request::Read("/a")).unwrap();
        assert_eq!((a.0, b.0), (u32::MAX, 1));
        c.next_req_id = u32::MAX;
        let d = c.submit(TxId::NONE, Request::Read("/a")).unwrap();
        assert_eq!(d.0, 2);
    }

    #[test]
    fn blocking_helpers_parse_replies() {
        // Replies are queued before the request is sent; ids are predictable (1, 2, …).
        let mut s = Script::default();
        s.reply_later(MsgType::DIRECTORY, 1, b"a\0bc\0");
        s.reply_later(MsgType::GET_PERMS, 2, b"b3\0r0\0");
        s.reply_later(MsgType::TRANSACTION_START, 3, b"42\0");
        s.reply_later(MsgType::GET_DOMAIN_PATH, 4, b"/local/domain/7\0");
        s.reply_later(MsgType::READ, 5, b"4");
        s.reply_later(MsgType::ERROR, 6, b"ENOENT\0");
        s.reply_later(MsgType::READ, 7, b"h");
        s.reply_later(MsgType::DIRECTORY, 8, b"a/b\0");
        s.reply_later(MsgType::TRANSACTION_START, 9, b"x\0");
        let mut c = Client::new(s);
        let w = &mut no_wait();
        assert_eq!(c.directory(TxId::NONE, "/", w).unwrap(), vec!["a", "bc"]);
        assert_eq!(
            c.get_perms(TxId::NONE, "/", w).unwrap(),
            vec![
                Perm {
                    domid: 3,
                    access: Access::Both
                },
                Perm {
                    domid: 0,
                    access: Access::Read
                }
            ]
        );
        assert_eq!(c.transaction_start(w).unwrap(), TxId(42));
        assert_eq!(c.get_domain_path(7, w).unwrap(), "/local/domain/7");
        assert_eq!(c.read_u32(TxId::NONE, "/s", w).unwrap(), 4);
        assert_eq!(c.read_opt(TxId::NONE, "/gone", w).unwrap(), None);
        assert_eq!(
            c.read_opt(TxId::NONE, "/here", w).unwrap(),
            Some(b"h".to_vec())
        );
        assert!(matches!(
            c.directory(TxId::NONE, "/", w),
            Err(Error::BadReply { .. })
        ));
        assert!(matches!(
            c.transaction_start(w),
            Err(Error::BadReply { .. })
        ));
    }

    #[test]
    fn transaction_retries_on_eagain_only() {
        let mut s = Script::default();
        // attempt 1: start → tx 1, write, commit → EAGAIN; attempt 2: start → tx 2, write, commit OK.
        s.reply_later(MsgType::TRANSACTION_START, 1, b"1\0");
        s.reply_later(MsgType::WRITE, 2, b"OK\0");
        s.reply_later(MsgType::ERROR, 3, b"EAGAIN\0");
        s.reply_later(MsgType::TRANSACTION_START, 4, b"2\0");
        s.reply_later(MsgType::WRITE, 5, b"OK\0");
        s.reply_later(MsgType::TRANSACTION_END, 6, b"OK\0");
        let mut c = Client::new(s);
        let mut runs = 0;
        let r = c.transaction(5, &mut no_wait(), |c, tx, w| {
            runs += 1;
            c.write(tx, "/k", b"v", w)?;
            Ok(tx)
        });
        assert_eq!(r, Ok(TxId(2)));
        assert_eq!(runs, 2);
        let sent = c.transport().sent_messages();
        assert_eq!(sent[2].0, MsgType::TRANSACTION_END);
        assert_eq!((sent[2].2, &sent[2].3[..]), (1, &b"T\0"[..]));
        assert_eq!(sent[4].2, 2);

        // A failing body aborts (F) and is not retried; other commit errors are not retried.
        let mut s = Script::default();
        s.reply_later(MsgType::TRANSACTION_START, 1, b"9\0");
        s.reply_later(MsgType::ERROR, 2, b"EACCES\0");
        s.reply_later(MsgType::TRANSACTION_END, 3, b"OK\0");
        let mut c = Client::new(s);
        let r: Result<(), _> =
            c.transaction(5, &mut no_wait(), |c, tx, w| c.write(tx, "/k", b"v", w));
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EACCES));
        let sent = c.transport().sent_messages();
        assert_eq!(
            (sent[2].0, sent[2].2, &sent[2].3[..]),
            (MsgType::TRANSACTION_END, 9, &b"F\0"[..])
        );

        // Always EAGAIN: gives up after max_attempts.
        let mut s = Script::default();
        for i in 0..3 {
            s.reply_later(MsgType::TRANSACTION_START, 2 * i + 1, b"1\0");
            s.reply_later(MsgType::ERROR, 2 * i + 2, b"EAGAIN\0");
        }
        let mut c = Client::new(s);
        let r = c.transaction(3, &mut no_wait(), |_, _, _| Ok(()));
        assert_eq!(r, Err(Error::TooManyRetries { attempts: 3 }));
    }
}
