//! The xenstore wire protocol: message header, message types, error strings, payload formats, and a
//! streaming decoder that turns an untrusted byte stream into frames.
//!
//! Facts from Xen `xen/include/public/io/xs_wire.h` and `docs/misc/xenstore.txt` (read, not copied):
//!
//! * every message is a 16-byte header `{type, req_id, tx_id, len}` (four little-endian `u32`s on
//!   x86) followed by `len` payload bytes, `len <= XENSTORE_PAYLOAD_MAX` (4096);
//! * payloads are sequences of NUL-terminated strings, except that the value of a `WRITE` request
//!   and of a `READ` reply is raw bytes without a terminator;
//! * an error reply has type `XS_ERROR` and carries the errno name (`"ENOENT\0"`);
//! * a watch event (`XS_WATCH_EVENT`, `req_id` 0) carries `"<path>\0<token>\0"`;
//! * the ring page shared with a xenstore server has `req[1024]@0`, `rsp[1024]@1024` and the
//!   free-running indices `req_cons@2048 req_prod@2052 rsp_cons@2056 rsp_prod@2060`
//!   (see [`ring_layout`]).
//!
//! Everything a peer sends is a newtype ([`MsgType`], [`Errno`]) or a byte slice; the decoder and the
//! payload parsers return error values for hostile input and never panic.

use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the message header (`struct xsd_sockmsg`).
pub const HEADER_LEN: usize = 16;
/// Largest payload a message may carry (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Longest absolute path the server accepts (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path the server accepts (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// Size of each of the two byte rings in the xenstore page (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: u32 = 1024;

/// Offsets in the xenstore ring page (`struct xenstore_domain_interface`).
pub mod ring_layout {
    /// Requests, client → server (1024 bytes).
    pub const REQ: usize = 0;
    /// Replies and watch events, server → client (1024 bytes).
    pub const RSP: usize = 1024;
    /// Server's consumer index into `req` (free-running `u32`).
    pub const REQ_CONS: usize = 2048;
    /// Client's producer index into `req`.
    pub const REQ_PROD: usize = 2052;
    /// Client's consumer index into `rsp`.
    pub const RSP_CONS: usize = 2056;
    /// Server's producer index into `rsp`.
    pub const RSP_PROD: usize = 2060;
    /// Bitmap of server features.
    pub const SERVER_FEATURES: usize = 2064;
    /// Connection state (reconnection feature).
    pub const CONNECTION: usize = 2068;
    /// Error state set by the server.
    pub const ERROR: usize = 2072;
    /// Bytes of the page the layout uses.
    pub const END: usize = 2076;
}

/// The message header (`struct xsd_sockmsg`), as it is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RawHeader {
    /// Message type ([`MsgType`]).
    pub ty: u32,
    /// Request identifier, echoed in the reply.
    pub req_id: u32,
    /// Transaction identifier (0 outside a transaction).
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

const _: () = {
    assert!(size_of::<RawHeader>() == HEADER_LEN);
    assert!(offset_of!(RawHeader, ty) == 0);
    assert!(offset_of!(RawHeader, req_id) == 4);
    assert!(offset_of!(RawHeader, tx_id) == 8);
    assert!(offset_of!(RawHeader, len) == 12);
    assert!(ring_layout::RSP == ring_layout::REQ + RING_SIZE as usize);
    assert!(ring_layout::REQ_CONS == ring_layout::RSP + RING_SIZE as usize);
};

impl RawHeader {
    /// Decode a header from its 16 wire bytes (little-endian, as on x86).
    pub fn from_wire(bytes: &[u8; HEADER_LEN]) -> Self {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        RawHeader {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// The 16 wire bytes of this header.
    pub fn to_wire(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.ty.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// A xenstore message type (`enum xsd_sockmsg_type`). Any value may arrive from a peer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgType(pub u32);

impl MsgType {
    pub const CONTROL: MsgType = MsgType(0);
    pub const DIRECTORY: MsgType = MsgType(1);
    pub const READ: MsgType = MsgType(2);
    pub const GET_PERMS: MsgType = MsgType(3);
    pub const WATCH: MsgType = MsgType(4);
    pub const UNWATCH: MsgType = MsgType(5);
    pub const TRANSACTION_START: MsgType = MsgType(6);
    pub const TRANSACTION_END: MsgType = MsgType(7);
    pub const INTRODUCE: MsgType = MsgType(8);
    pub const RELEASE: MsgType = MsgType(9);
    pub const GET_DOMAIN_PATH: MsgType = MsgType(10);
    pub const WRITE: MsgType = MsgType(11);
    pub const MKDIR: MsgType = MsgType(12);
    pub const RM: MsgType = MsgType(13);
    pub const SET_PERMS: MsgType = MsgType(14);
    pub const WATCH_EVENT: MsgType = MsgType(15);
    pub const ERROR: MsgType = MsgType(16);
    pub const IS_DOMAIN_INTRODUCED: MsgType = MsgType(17);
    pub const RESUME: MsgType = MsgType(18);
    pub const SET_TARGET: MsgType = MsgType(19);
    // 20 was XS_RESTRICT, removed.
    pub const RESET_WATCHES: MsgType = MsgType(21);
    pub const DIRECTORY_PART: MsgType = MsgType(22);
    /// Guaranteed never to be a valid type.
    pub const INVALID: MsgType = MsgType(0xffff);

    /// The `xs_wire.h` name of a known type, `None` for anything else.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 23] = [
            "CONTROL",
            "DIRECTORY",
            "READ",
            "GET_PERMS",
            "WATCH",
            "UNWATCH",
            "TRANSACTION_START",
            "TRANSACTION_END",
            "INTRODUCE",
            "RELEASE",
            "GET_DOMAIN_PATH",
            "WRITE",
            "MKDIR",
            "RM",
            "SET_PERMS",
            "WATCH_EVENT",
            "ERROR",
            "IS_DOMAIN_INTRODUCED",
            "RESUME",
            "SET_TARGET",
            "",
            "RESET_WATCHES",
            "DIRECTORY_PART",
        ];
        match NAMES.get(self.0 as usize) {
            Some(n) if !n.is_empty() => Some(n),
            _ => None,
        }
    }
}

impl fmt::Debug for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "XS_{n}"),
            None => write!(f, "MsgType({})", self.0),
        }
    }
}

/// An error reported by a xenstore server, identified by its Linux errno value. The server sends it
/// as a name (`"ENOENT"`); [`Errno::from_wire`] maps the names of `xs_wire.h`'s `xsd_errors` table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const EIO: Errno = Errno(5);
    pub const E2BIG: Errno = Errno(7);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EACCES: Errno = Errno(13);
    pub const EBUSY: Errno = Errno(16);
    pub const EEXIST: Errno = Errno(17);
    pub const EISDIR: Errno = Errno(21);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOSPC: Errno = Errno(28);
    pub const EROFS: Errno = Errno(30);
    pub const ENOSYS: Errno = Errno(38);
    pub const ENOTEMPTY: Errno = Errno(39);
    pub const EISCONN: Errno = Errno(106);

    const TABLE: [(Errno, &'static str); 16] = [
        (Errno::EINVAL, "EINVAL"),
        (Errno::EACCES, "EACCES"),
        (Errno::EEXIST, "EEXIST"),
        (Errno::EISDIR, "EISDIR"),
        (Errno::ENOENT, "ENOENT"),
        (Errno::ENOMEM, "ENOMEM"),
        (Errno::ENOSPC, "ENOSPC"),
        (Errno::EIO, "EIO"),
        (Errno::ENOTEMPTY, "ENOTEMPTY"),
        (Errno::ENOSYS, "ENOSYS"),
        (Errno::EROFS, "EROFS"),
        (Errno::EBUSY, "EBUSY"),
        (Errno::EAGAIN, "EAGAIN"),
        (Errno::EISCONN, "EISCONN"),
        (Errno::E2BIG, "E2BIG"),
        (Errno::EPERM, "EPERM"),
    ];

    /// The wire name of this error, `None` if it is not one xenstore can transmit.
    pub fn name(self) -> Option<&'static str> {
        Self::TABLE
            .iter()
            .find(|(e, _)| *e == self)
            .map(|(_, n)| *n)
    }

    /// Map an error name (without the NUL) to its errno, `None` for an unknown name.
    pub fn from_name(name: &[u8]) -> Option<Errno> {
        Self::TABLE
            .iter()
            .find(|(_, n)| n.as_bytes() == name)
            .map(|(e, _)| *e)
    }

    /// Parse the payload of an `XS_ERROR` reply (`"ENOENT\0"`).
    pub fn from_wire(payload: &[u8]) -> Result<Errno, PayloadError> {
        let name = match payload.split_last() {
            Some((0, name)) => name,
            _ => return Err(PayloadError::MissingNul),
        };
        Errno::from_name(name).ok_or(PayloadError::UnknownError)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A transaction identifier; [`TxId::NONE`] (0) means "not in a transaction".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxId(pub u32);

impl TxId {
    /// Outside any transaction.
    pub const NONE: TxId = TxId(0);
}

/// A decoded message header with its type as a newtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: MsgType,
    pub req_id: u32,
    pub tx_id: TxId,
    pub len: u32,
}

impl From<RawHeader> for Header {
    fn from(r: RawHeader) -> Self {
        Header {
            ty: MsgType(r.ty),
            req_id: r.req_id,
            tx_id: TxId(r.tx_id),
            len: r.len,
        }
    }
}

/// A complete message borrowed from a [`Decoder`] or a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Why a byte stream could not be decoded. After one of these the stream has lost framing: the
/// connection must be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A header announced a payload longer than [`PAYLOAD_MAX`].
    PayloadTooLong { ty: MsgType, req_id: u32, len: u32 },
    /// The decoder already failed; feed no more bytes.
    Failed,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::PayloadTooLong { ty, req_id, len } => write!(
                f,
                "xenstore message {ty:?} req_id {req_id} announces {len} payload bytes (max {PAYLOAD_MAX})"
            ),
            DecodeError::Failed => f.write_str("xenstore stream already lost framing"),
        }
    }
}

/// Streaming decoder of xenstore messages from an untrusted byte stream. Its memory is fixed
/// (one header and one maximal payload); it never panics, whatever the bytes.
///
/// ```
/// use xenidc::xenstore::wire::{Decoder, encode, MsgType, TxId};
/// let mut bytes = Vec::new();
/// encode(&mut bytes, MsgType::READ, 7, TxId::NONE, &[b"value"], true).unwrap();
/// let mut dec = Decoder::new();
/// let mut input = &bytes[..3];
/// assert!(dec.decode(&mut input).unwrap().is_none()); // partial header
/// let mut input = &bytes[3..];
/// let frame = dec.decode(&mut input).unwrap().unwrap();
/// assert_eq!(frame.header.req_id, 7);
/// assert_eq!(frame.payload, b"value");
/// ```
pub struct Decoder {
    header: [u8; HEADER_LEN],
    have_header: usize,
    payload: [u8; PAYLOAD_MAX],
    have_payload: usize,
    parsed: Option<Header>,
    complete: bool,
    failed: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("have_header", &self.have_header)
            .field("have_payload", &self.have_payload)
            .field("parsed", &self.parsed)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Decoder {
    /// A decoder at a message boundary.
    pub const fn new() -> Self {
        Decoder {
            header: [0; HEADER_LEN],
            have_header: 0,
            payload: [0; PAYLOAD_MAX],
            have_payload: 0,
            parsed: None,
            complete: false,
            failed: false,
        }
    }

    /// Forget any partial message and any failure (after the connection was reset).
    pub fn reset(&mut self) {
        self.have_header = 0;
        self.have_payload = 0;
        self.parsed = None;
        self.complete = false;
        self.failed = false;
    }

    /// True when no partial message is buffered.
    pub fn at_boundary(&self) -> bool {
        self.complete || (self.have_header == 0 && !self.failed)
    }

    /// Whether the decoder has failed (see [`DecodeError`]).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Consume bytes from the front of `input` until one message is complete, and return it; return
    /// `Ok(None)` when `input` ran out first (the partial message is kept). The returned frame is
    /// valid until the next call.
    pub fn decode<'s>(&'s mut self, input: &mut &[u8]) -> Result<Option<Frame<'s>>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        if self.complete {
            self.have_header = 0;
            self.have_payload = 0;
            self.parsed = None;
            self.complete = false;
        }
        if self.parsed.is_none() {
            let n = (HEADER_LEN - self.have_header).min(input.len());
            self.header[self.have_header..self.have_header + n].copy_from_slice(&input[..n]);
            self.have_header += n;
            *input = &input[n..];
            if self.have_header < HEADER_LEN {
                return Ok(None);
            }
            let h: Header = RawHeader::from_wire(&self.header).into();
            if h.len as usize > PAYLOAD_MAX {
                self.failed = true;
                return Err(DecodeError::PayloadTooLong {
                    ty: h.ty,
                    req_id: h.req_id,
                    len: h.len,
                });
            }
            self.parsed = Some(h);
        }
        let Some(h) = self.parsed else {
            return Ok(None);
        };
        let want = h.len as usize;
        let n = (want - self.have_payload).min(input.len());
        self.payload[self.have_payload..self.have_payload + n].copy_from_slice(&input[..n]);
        self.have_payload += n;
        *input = &input[n..];
        if self.have_payload < want {
            return Ok(None);
        }
        self.complete = true;
        Ok(Some(Frame {
            header: h,
            payload: &self.payload[..want],
        }))
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload would exceed [`PAYLOAD_MAX`] (the server would answer `E2BIG`).
    TooLong { len: usize },
    /// A string argument contains a NUL byte, which would break the framing.
    EmbeddedNul,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong { len } => {
                write!(f, "xenstore payload of {len} bytes exceeds {PAYLOAD_MAX}")
            }
            EncodeError::EmbeddedNul => f.write_str("xenstore string argument contains a NUL"),
        }
    }
}

/// Append one message to `out`: `strings` each followed by a NUL, except the last one when
/// `last_raw` is set (a `WRITE` value or a `READ` reply). Nothing is appended on error.
pub fn encode(
    out: &mut alloc::vec::Vec<u8>,
    ty: MsgType,
    req_id: u32,
    tx_id: TxId,
    strings: &[&[u8]],
    last_raw: bool,
) -> Result<(), EncodeError> {
    let mut len = 0usize;
    for (i, s) in strings.iter().enumerate() {
        let raw = last_raw && i + 1 == strings.len();
        if !raw && s.contains(&0) {
            return Err(EncodeError::EmbeddedNul);
        }
        len += s.len() + usize::from(!raw);
    }
    if len > PAYLOAD_MAX {
        return Err(EncodeError::TooLong { len });
    }
    let h = RawHeader {
        ty: ty.0,
        req_id,
        tx_id: tx_id.0,
        len: len as u32,
    };
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&h.to_wire());
    for (i, s) in strings.iter().enumerate() {
        out.extend_from_slice(s);
        if !(last_raw && i + 1 == strings.len()) {
            out.push(0);
        }
    }
    Ok(())
}

/// A payload that does not have the shape its message type requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// A string is not NUL-terminated.
    MissingNul,
    /// Fewer or more strings than the message type has.
    WrongCount { expected: usize, found: usize },
    /// A path or token is not UTF-8 or contains characters xenstore does not allow.
    BadString,
    /// An error reply names an error not in `xs_wire.h`.
    UnknownError,
    /// A permission entry is malformed.
    BadPerm,
    /// A number (transaction id, domid) is malformed.
    BadNumber,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::MissingNul => f.write_str("string without NUL terminator"),
            PayloadError::WrongCount { expected, found } => {
                write!(f, "expected {expected} strings, found {found}")
            }
            PayloadError::BadString => f.write_str("invalid path or token"),
            PayloadError::UnknownError => f.write_str("unknown error name"),
            PayloadError::BadPerm => f.write_str("malformed permission entry"),
            PayloadError::BadNumber => f.write_str("malformed number"),
        }
    }
}

/// The NUL-terminated strings of a payload (an empty payload has none). Fails if the payload does
/// not end in a NUL.
pub fn strings(payload: &[u8]) -> Result<impl Iterator<Item = &[u8]> + '_, PayloadError> {
    if let Some(&last) = payload.last() {
        if last != 0 {
            return Err(PayloadError::MissingNul);
        }
    }
    let body = payload.split_last().map(|(_, b)| b).unwrap_or(&[]);
    let mut parts = body.split(|&b| b == 0);
    // `split` of an empty body yields one empty part; an empty payload has no strings.
    let empty = payload.is_empty();
    Ok(core::iter::from_fn(
        move || if empty { None } else { parts.next() },
    ))
}

/// Exactly `N` NUL-terminated strings.
pub fn exact_strings<const N: usize>(payload: &[u8]) -> Result<[&[u8]; N], PayloadError> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut found = 0;
    for s in strings(payload)? {
        if found < N {
            out[found] = s;
        }
        found += 1;
    }
    if found != N {
        return Err(PayloadError::WrongCount { expected: N, found });
    }
    Ok(out)
}

/// Whether `c` may appear in a xenstore path (`A-Z a-z 0-9 - / _ @`).
pub fn is_path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Check a path (absolute `/a/b`, relative `a/b`, or special `@name`) for the characters and shape
/// xenstore accepts: no empty components, no trailing `/` except the root, length limits.
pub fn check_path(path: &[u8]) -> Result<&str, PayloadError> {
    if path.is_empty() || !path.iter().all(|&c| is_path_char(c)) {
        return Err(PayloadError::BadString);
    }
    let max = if path[0] == b'/' {
        ABS_PATH_MAX
    } else {
        REL_PATH_MAX
    };
    if path.len() > max {
        return Err(PayloadError::BadString);
    }
    if path != b"/" && (path.ends_with(b"/") || path.windows(2).any(|w| w == b"//")) {
        return Err(PayloadError::BadString);
    }
    core::str::from_utf8(path).map_err(|_| PayloadError::BadString)
}

/// A watch event: the path that changed and the token given at registration.
pub fn parse_watch_event(payload: &[u8]) -> Result<(&str, &[u8]), PayloadError> {
    let mut it = strings(payload)?;
    let path = it.next().ok_or(PayloadError::WrongCount {
        expected: 2,
        found: 0,
    })?;
    let token = it.next().ok_or(PayloadError::WrongCount {
        expected: 2,
        found: 1,
    })?;
    // Some servers append nothing else; extra strings are tolerated as Linux does.
    Ok((check_path(path)?, token))
}

/// Access rights in a permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub fn letter(self) -> u8 {
        match self {
            Access::None => b'n',
            Access::Read => b'r',
            Access::Write => b'w',
            Access::Both => b'b',
        }
    }
    /// Whether reading is allowed.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }
    /// Whether writing is allowed.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry. In a node's list the first entry names the owner and the access of every
/// domain not listed; the others grant `access` to `domid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    pub domid: u16,
    pub access: Access,
}

impl Perm {
    /// Parse `"r5"`-style entries.
    pub fn parse(s: &[u8]) -> Result<Perm, PayloadError> {
        let (&letter, digits) = s.split_first().ok_or(PayloadError::BadPerm)?;
        let access = match letter {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(PayloadError::BadPerm),
        };
        let domid = parse_u32(digits)?;
        let domid = u16::try_from(domid).map_err(|_| PayloadError::BadPerm)?;
        Ok(Perm { domid, access })
    }

    /// Write the wire form (`"r5"`) into `out`.
    pub fn write_to(&self, out: &mut alloc::vec::Vec<u8>) {
        out.push(self.access.letter());
        push_decimal(out, self.domid as u32);
    }
}

/// Parse a decimal `u32` (no sign, no spaces, at least one digit).
pub fn parse_u32(digits: &[u8]) -> Result<u32, PayloadError> {
    if digits.is_empty() || digits.len() > 10 {
        return Err(PayloadError::BadNumber);
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(PayloadError::BadNumber);
        }
        v = v * 10 + u64::from(d - b'0');
    }
    u32::try_from(v).map_err(|_| PayloadError::BadNumber)
}

/// Append the decimal form of `v`.
pub fn push_decimal(out: &mut alloc::vec::Vec<u8>, v: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip_is_little_endian() {
        let h = RawHeader {
            ty: 2,
            req_id: 0x01020304,
            tx_id: 5,
            len: 6,
        };
        let w = h.to_wire();
        assert_eq!(&w[..8], &[2, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(RawHeader::from_wire(&w), h);
        assert_eq!(h.as_bytes(), &w[..]);
    }

    #[test]
    fn errno_names_round_trip() {
        for (e, n) in Errno::TABLE {
            assert_eq!(Errno::from_name(n.as_bytes()), Some(e));
            assert_eq!(e.name(), Some(n));
        }
        assert_eq!(Errno::from_wire(b"ENOENT\0"), Ok(Errno::ENOENT));
        assert_eq!(Errno::from_wire(b"ENOENT"), Err(PayloadError::MissingNul));
        assert_eq!(
            Errno::from_wire(b"EWHAT\0"),
            Err(PayloadError::UnknownError)
        );
        assert_eq!(Errno::from_wire(b""), Err(PayloadError::MissingNul));
    }

    #[test]
    fn msg_type_names() {
        assert_eq!(MsgType::WATCH_EVENT.name(), Some("WATCH_EVENT"));
        assert_eq!(MsgType(20).name(), None);
        assert_eq!(MsgType(23).name(), None);
        assert_eq!(MsgType::INVALID.name(), None);
        assert_eq!(alloc::format!("{:?}", MsgType(99)), "MsgType(99)");
    }

    #[test]
    fn encode_write_and_watch() {
        let mut out = Vec::new();
        encode(
            &mut out,
            MsgType::WRITE,
            9,
            TxId(3),
            &[b"a/b", b"v\0x"],
            true,
        )
        .unwrap();
        let h = RawHeader::from_wire(out[..16].try_into().unwrap());
        assert_eq!((h.ty, h.req_id, h.tx_id, h.len), (11, 9, 3, 7));
        assert_eq!(&out[16..], b"a/b\0v\0x");
        out.clear();
        encode(
            &mut out,
            MsgType::WATCH,
            1,
            TxId::NONE,
            &[b"/x", b"tok"],
            false,
        )
        .unwrap();
        assert_eq!(&out[16..], b"/x\0tok\0");
        assert_eq!(
            encode(&mut out, MsgType::READ, 1, TxId::NONE, &[b"a\0b"], false),
            Err(EncodeError::EmbeddedNul)
        );
        let big = [b'a'; PAYLOAD_MAX];
        let before = out.len();
        assert_eq!(
            encode(&mut out, MsgType::READ, 1, TxId::NONE, &[&big], false),
            Err(EncodeError::TooLong {
                len: PAYLOAD_MAX + 1
            })
        );
        assert_eq!(out.len(), before);
        encode(
            &mut out,
            MsgType::WRITE,
            1,
            TxId::NONE,
            &[b"p", &big[..4094]],
            true,
        )
        .unwrap();
    }

    #[test]
    fn decoder_rejects_oversized_length_and_stays_failed() {
        let h = RawHeader {
            ty: 2,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        let bytes = h.to_wire();
        let mut d = Decoder::new();
        let mut input = &bytes[..];
        assert!(matches!(
            d.decode(&mut input),
            Err(DecodeError::PayloadTooLong { len: 4097, .. })
        ));
        let mut more = &b"x"[..];
        assert_eq!(d.decode(&mut more).unwrap_err(), DecodeError::Failed);
        d.reset();
        let mut ok = Vec::new();
        encode(&mut ok, MsgType::READ, 1, TxId::NONE, &[], false).unwrap();
        let mut input = &ok[..];
        assert_eq!(d.decode(&mut input).unwrap().unwrap().payload, b"");
    }

    #[test]
    fn decoder_accepts_maximal_payload() {
        let mut bytes = Vec::new();
        let big = [7u8; PAYLOAD_MAX];
        encode(&mut bytes, MsgType::READ, 1, TxId::NONE, &[&big], true).unwrap();
        let mut d = Decoder::new();
        let mut input = &bytes[..];
        assert_eq!(
            d.decode(&mut input).unwrap().unwrap().payload.len(),
            PAYLOAD_MAX
        );
        assert!(input.is_empty());
    }

    #[test]
    fn payload_strings() {
        assert_eq!(strings(b"").unwrap().count(), 0);
        assert_eq!(strings(b"\0").unwrap().collect::<Vec<_>>(), vec![&b""[..]]);
        assert_eq!(
            strings(b"a\0bc\0").unwrap().collect::<Vec<_>>(),
            vec![&b"a"[..], &b"bc"[..]]
        );
        assert!(strings(b"a\0b").is_err());
        assert_eq!(
            exact_strings::<2>(b"a\0b\0").unwrap(),
            [&b"a"[..], &b"b"[..]]
        );
        assert_eq!(
            exact_strings::<2>(b"a\0"),
            Err(PayloadError::WrongCount {
                expected: 2,
                found: 1
            })
        );
    }

    #[test]
    fn path_checks() {
        assert!(check_path(b"/").is_ok());
        assert!(check_path(b"/local/domain/0").is_ok());
        assert!(check_path(b"device/vusb/0").is_ok());
        assert!(check_path(b"@releaseDomain").is_ok());
        for bad in [
            &b""[..],
            b"/a/",
            b"//",
            b"/a//b",
            b"/a b",
            b"/\xff",
            b"/a.b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        let long = [b'a'; REL_PATH_MAX + 1];
        assert!(check_path(&long).is_err());
        let mut abs = vec![b'/'];
        abs.extend_from_slice(&long);
        assert!(check_path(&abs).is_ok());
    }

    #[test]
    fn watch_event_and_perm_parsing() {
        assert_eq!(
            parse_watch_event(b"/a/b\0tok\0").unwrap(),
            ("/a/b", &b"tok"[..])
        );
        assert!(parse_watch_event(b"/a/b\0").is_err());
        assert!(parse_watch_event(b"/a/b\0tok").is_err());
        assert!(parse_watch_event(b"/a b\0tok\0").is_err());
        assert_eq!(
            Perm::parse(b"r5").unwrap(),
            Perm {
                domid: 5,
                access: Access::Read
            }
        );
        assert_eq!(Perm::parse(b"b0").unwrap().access, Access::Both);
        for bad in [&b""[..], b"r", b"x5", b"r-1", b"r65536", b"r99999999999"] {
            assert!(Perm::parse(bad).is_err(), "{bad:?}");
        }
        let mut out = Vec::new();
        Perm {
            domid: 65535,
            access: Access::Write,
        }
        .write_to(&mut out);
        assert_eq!(out, b"w65535");
        assert_eq!(parse_u32(b"4294967295"), Ok(u32::MAX));
        assert!(parse_u32(b"4294967296").is_err());
    }

    proptest! {
        /// Any message split at any points decodes to the same frames as it was encoded from.
        #[test]
        fn split_stream_decodes(
            msgs in proptest::collection::vec((any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..6),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut bytes = Vec::new();
            for (i, (id, tx, body)) in msgs.iter().enumerate() {
                encode(&mut bytes, MsgType(i as u32), *id, TxId(*tx), &[body], true).unwrap();
            }
            let mut d = Decoder::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cut_i = 0;
            while pos < bytes.len() {
                let step = cuts[cut_i % cuts.len()].min(bytes.len() - pos);
                cut_i += 1;
                let mut input = &bytes[pos..pos + step];
                while !input.is_empty() {
                    if let Some(f) = d.decode(&mut input).unwrap() {
                        got.push((f.header.req_id, f.header.tx_id.0, f.payload.to_vec()));
                    }
                }
                pos += step;
            }
            let want: Vec<_> = msgs.iter().map(|(a, b, c)| (*a, *b, c.clone())).collect();
            prop_assert_eq!(got, want);
            prop_assert!(d.at_boundary());
        }

        /// Arbitrary bytes never panic the decoder or the payload parsers.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let mut d = Decoder::new();
            let mut input = &bytes[..];
            while !input.is_empty() {
                match d.decode(&mut input) {
                    Ok(Some(f)) => {
                        let _ = parse_watch_event(f.payload);
                        let _ = Errno::from_wire(f.payload);
                        let _ = exact_strings::<2>(f.payload);
                        if let Ok(it) = strings(f.payload) {
                            for s in it { let _ = Perm::parse(s); let _ = check_path(s); }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
