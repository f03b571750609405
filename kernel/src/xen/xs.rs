//! The xenstore connection of this domain: the client of `xenidc::xenstore` over the shared ring
//! page (`start_info.store_mfn`) and its event channel (`start_info.store_evtchn`), with blocking
//! operations that wait with `SCHEDOP_poll` on that port and give up after a timeout
//! (`docs/misc/xenstore.txt`, `io/xs_wire.h`).

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

pub struct Xs {
    client: Client<RingTransport<XenMem, Notify>>,
    port: Port,
    events: EventBits,
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

    /// Process whatever the server sent and return the queued watch events. If events were lost,
    /// a synthetic event with an empty path is returned so the caller re-reads what it watches.
    pub fn take_events(&mut self) -> Result<Vec<WatchEvent>, Error> {
        self.client.poll()?;
        let mut out = Vec::new();
        while let Some(e) = self.client.next_event() {
            out.push(e);
        }
        if self.client.take_events_lost() != 0 {
            out.push(WatchEvent {
                path: String::new(),
                token: String::new(),
            });
        }
        Ok(out)
    }

    /// Block until the server may have sent something, or until `deadline` (kernel clock).
    pub fn wait(&mut self, deadline: u64) {
        wait_port(self.events, self.port, deadline);
    }
}
