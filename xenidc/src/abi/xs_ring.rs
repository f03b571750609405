//! The xenstore ring page layout (`io/xs_wire.h`, `struct xenstore_domain_interface`).
//!
//! Only the page layout lives here; the message format (`xsd_sockmsg` and its payloads) belongs to
//! [`crate::xenstore`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of each of the two byte rings.
pub const RING_SIZE: usize = 1024;

/// The xenstore page: a request ring and a response ring of bytes with free-running indices.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to xenstored.
    pub req: [u8; RING_SIZE],
    /// Replies and watch events from xenstored.
    pub rsp: [u8; RING_SIZE],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*`, written by the server.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`, written by the server.
    pub error: u32,
}
layout!(XenstoreDomainInterface, size 2076,
    req @ 0, rsp @ 1024, req_cons @ 2048, req_prod @ 2052, rsp_cons @ 2056, rsp_prod @ 2060,
    server_features @ 2064, connection @ 2068, error @ 2072);

pub const REQ_OFFSET: usize = 0;
pub const RSP_OFFSET: usize = 1024;
pub const REQ_CONS_OFFSET: usize = 2048;
pub const REQ_PROD_OFFSET: usize = 2052;
pub const RSP_CONS_OFFSET: usize = 2056;
pub const RSP_PROD_OFFSET: usize = 2060;
pub const SERVER_FEATURES_OFFSET: usize = 2064;
pub const CONNECTION_OFFSET: usize = 2068;
pub const ERROR_OFFSET: usize = 2072;

/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`.
pub const SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_CONNECTED`.
pub const CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`.
pub const RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_NONE` / `COMM` / `RINGIDX` / `PROTO`.
pub const ERROR_NONE: u32 = 0;
pub const ERROR_COMM: u32 = 1;
pub const ERROR_RINGIDX: u32 = 2;
pub const ERROR_PROTO: u32 = 3;
