//! xenstore: the wire protocol, a client, the ring-page transport and a simulated server.
//!
//! Spec: Xen `xen/include/public/io/xs_wire.h` (message header, types, error names, ring page) and
//! `docs/misc/xenstore.txt` (operations, permissions, watches, transactions); the C `xenstored`
//! for the behaviour the simulated server reproduces.
//!
//! * [`wire`] — the 16-byte header, [`MsgType`] and [`Errno`] newtypes, the encoder, a streaming
//!   [`wire::Decoder`] that returns error values for hostile bytes, and payload parsers.
//! * [`client`] — [`Client`], a pure state machine over any byte [`Transport`]: requests matched to
//!   replies by `req_id`, watch events queued, a non-blocking API (`submit`/`poll`/`take_reply`/
//!   `next_event`) for the event loop and blocking helpers that take a `wait` closure, transactions
//!   retried on `EAGAIN`.
//! * [`ring`] — [`ring::RingTransport`], the transport over the xenstore ring page
//!   (`start_info.store_mfn`) through [`crate::shm::SharedMem`]; both ends.
//! * [`server`] — [`server::Server`], a simulated `xenstored` driven by raw messages, and
//!   [`server::SimTransport`], a client transport straight into it, for host tests.
//!
//! # Usage
//!
//! The same client code runs over every transport. With the simulator:
//!
//! ```
//! use std::{cell::RefCell, rc::Rc};
//! use xenidc::xenstore::{server::{Server, SimTransport}, Client, TxId};
//!
//! let server = Rc::new(RefCell::new(Server::new()));
//! server.borrow_mut().add_domain(3);
//! let mut xs = Client::new(SimTransport::connect(&server, 3));
//! // The simulator answers at once, so the `wait` closure is never needed; it gives up.
//! let wait = &mut || false;
//!
//! let home = xs.get_domain_path(3, wait).unwrap();
//! assert_eq!(home, "/local/domain/3");
//! xs.write(TxId::NONE, "data/greeting", b"hello", wait).unwrap(); // relative to the home
//! assert_eq!(xs.read(TxId::NONE, "/local/domain/3/data/greeting", wait).unwrap(), b"hello");
//!
//! // Watches: the registration fires once, then every change at or below the path.
//! xs.watch("data", "my-token", wait).unwrap();
//! xs.write(TxId::NONE, "data/x", b"1", wait).unwrap();
//! xs.poll().unwrap();
//! assert_eq!(xs.next_event().unwrap().path, "data");
//! assert_eq!(xs.next_event().unwrap().path, "data/x");
//!
//! // A transaction, retried if it conflicts.
//! xs.transaction(8, wait, |xs, tx, wait| {
//!     xs.write(tx, "data/a", b"1", wait)?;
//!     xs.write(tx, "data/b", b"2", wait)
//! })
//! .unwrap();
//! ```
//!
//! On real Xen the kernel builds the client over its ring page and blocks on the xenstore event
//! channel between polls:
//!
//! ```ignore
//! let page = hv.xenstore_page().clone();              // SharedMem over start_info.store_mfn
//! let port = hv.xenstore_port();
//! let ring = RingTransport::client(page, move || notify(port))?;  // notify = EVTCHNOP_send
//! let mut xs = Client::new(ring);
//! let state = xs.read(TxId::NONE, "device/vusb/0/state", &mut || { block_on(port); true })?;
//! ```
//!
//! In the event loop, use [`Client::submit`], call [`Client::poll`] when the xenstore port fires,
//! then drain [`Client::take_reply`] and [`Client::next_event`] (and check
//! [`Client::take_events_lost`]: when it is non-zero, re-read what you watch). The dom0 tool
//! implements [`Transport`] over `/dev/xen/xenbus` (`write` the message bytes, non-blocking `read`
//! the replies).
pub mod client;
pub mod ring;
pub mod server;
pub mod wire;

pub use client::{Client, Error, ReqId, Request, Transport, TransportError, WatchEvent};
pub use wire::{Access, Errno, MsgType, Perm, TxId};
