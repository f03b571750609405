//! xenstore: wire protocol, client state machine, ring transport and a simulated server.
pub mod client;
pub mod ring;
pub mod server;
pub mod wire;

pub use client::{Client, Error, ReqId, Request, Transport, TransportError, WatchEvent};
pub use wire::{Access, Errno, MsgType, Perm, TxId};
