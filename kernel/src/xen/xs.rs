//! The xenstore connection of this domain: the client of `xenidc::xenstore` over the shared ring
//! page (`start_info.store_mfn`) and its event channel (`start_info.store_evtchn`), with blocking
//! operations that wait with `SCHEDOP_poll` on that port and give up after a timeout
//! (`docs/misc/xenstore.txt`, `io/xs_wire.h`).
//!
//! The domain has exactly one xenstore connection, shared by every user (pcifront, the
//! `control/shutdown` watch, the PVUSB backend through [`XsStore`]). Watch events are
//! demultiplexed by token: each user registers its watches with tokens starting with its own
//! prefix (`"pcifront:"`, `"usbdom:"`, `"pvusb:"`) and takes only the events with that prefix, so
//! nobody eats another user's events.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use xenidc::abi::Port;
use xenidc::xen::events::EventBits;
use xenidc::xen::{ops, XenMem};
use xenidc::xenstore::ring::RingTransport;
use xenidc::xenstore::{Client, Error, TransportError, TxId, WatchEvent};

use crate::time;

/// How long one xenstore request may take (dom0 under QEMU TCG is slow).
pub const OP_TIMEOUT_NS: u64 = 10_000_000_000;

type Notify = Box<dyn FnMut()>;

/// The client type over the ring.
pub type XsClient = Client<RingTransport<XenMem, Notify>>;

pub struct Xs {
    client: XsClient,
    port: Port,
    events: EventBits,
    /// Events received but not yet taken by their user.
    queued: Vec<WatchEvent>,
    /// Incremented whenever the client lost events; users compare with the value they last saw.
    lost_gen: u64,
    seen_lost_gen: Vec<(String, u64)>,
}

/// Wait for the xenstore port until `deadline` (kernel clock); false once the deadline passed.
fn wait_port(events: EventBits, port: Port, deadline: u64) -> bool {
    if time::now_ns() >= deadline {
        return false;
    }
    if !events.test_and_clear(port) {
        let _ = ops::sched_poll(&[port], time::to_xen_system_time(deadline));
        events.test_and_clear(port);
    }
    true
}

impl Xs {
    pub fn new(page: XenMem, port: Port, events: EventBits) -> Result<Xs, TransportError> {
        let notify: Notify = Box::new(move || {
            let _ = ops::evtchn_send(port);
        });
        let transport = RingTransport::client(page, notify)?;
        Ok(Xs {
            client: Client::new(transport),
            port,
            events,
            queued: Vec::new(),
            lost_gen: 0,
            seen_lost_gen: Vec::new(),
        })
    }

    /// Read `path`; `Ok(None)` if it does not exist.
    pub fn read(&mut self, path: &str) -> Result<Option<String>, Error> {
        let (events, port) = (self.events, self.port);
        let deadline = time::now_ns() + OP_TIMEOUT_NS;
        match self
            .client
            .read_string(TxId::NONE, path, &mut || wait_port(events, port, deadline))
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&mut self, path: &str, value: &str) -> Result<(), Error> {
        let (events, port) = (self.events, self.port);
        let deadline = time::now_ns() + OP_TIMEOUT_NS;
        self.client
            .write(TxId::NONE, path, value.as_bytes(), &mut || {
                wait_port(events, port, deadline)
            })
    }

    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), Error> {
        let (events, port) = (self.events, self.port);
        let deadline = time::now_ns() + OP_TIMEOUT_NS;
        self.client
            .watch(path, token, &mut || wait_port(events, port, deadline))
    }

    /// Process whatever the server sent; queue the watch events.
    fn pump(&mut self) -> Result<(), Error> {
        self.client.poll()?;
        while let Some(e) = self.client.next_event() {
            self.queued.push(e);
        }
        if self.client.take_events_lost() != 0 {
            self.lost_gen += 1;
        }
        Ok(())
    }

    /// The watch events whose token starts with `prefix`, and whether events may have been lost
    /// since this prefix last asked (then re-read everything watched).
    pub fn take_events(&mut self, prefix: &str) -> Result<(Vec<WatchEvent>, bool), Error> {
        self.pump()?;
        let mut mine = Vec::new();
        let mut i = 0;
        while i < self.queued.len() {
            if self.queued[i].token.starts_with(prefix) {
                mine.push(self.queued.remove(i));
            } else {
                i += 1;
            }
        }
        let gen = self.lost_gen;
        let lost = match self.seen_lost_gen.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, g)) => core::mem::replace(g, gen) != gen,
            None => {
                self.seen_lost_gen.push((String::from(prefix), gen));
                gen != 0
            }
        };
        Ok((mine, lost))
    }

    /// A `wait` closure for direct use of [`Xs::client`]: blocks on the xenstore port, gives up
    /// `timeout_ns` from now.
    pub fn waiter(&self, timeout_ns: u64) -> impl FnMut() -> bool {
        let (events, port) = (self.events, self.port);
        let deadline = time::now_ns() + timeout_ns;
        move || wait_port(events, port, deadline)
    }

    /// The client itself, for requests [`Xs`] has no helper for (use [`Xs::waiter`]; watch events
    /// it receives are still queued for [`Xs::take_events`] on the next pump).
    pub fn client(&mut self) -> &mut XsClient {
        &mut self.client
    }

    /// Block until the server may have sent something, or until `deadline` (kernel clock).
    pub fn wait(&mut self, deadline: u64) {
        wait_port(self.events, self.port, deadline);
    }
}
