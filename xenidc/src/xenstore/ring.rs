//! The xenstore ring page as a byte [`Transport`].
//!
//! The page (`struct xenstore_domain_interface`, Xen `io/xs_wire.h`; offsets in
//! [`crate::abi::xs_ring`]) holds two 1024-byte rings: `req` (client → server) and `rsp` (server →
//! client), each with a producer and a consumer index. The indices are free-running `u32`s; the
//! byte at index `i` lives at `i mod 1024`. The producer writes data, then (release) publishes its
//! index; the consumer reads the other side's index (acquire), copies the data out, then a full
//! barrier orders those reads before it publishes its own index, so the producer never overwrites
//! bytes still being read. After moving an index the side notifies the other through the event
//! channel (the `notify` closure).
//!
//! The same type serves both ends: [`RingTransport::client`] is the guest (the kernel on real Xen,
//! or a simulated domain), [`RingTransport::server`] is the simulated xenstored's view of a domain's
//! page. Our own index is kept privately and only ever written to the page, never re-read from it;
//! the peer's index is validated on every read: a peer claiming more than 1024 bytes outstanding is
//! a [`TransportError::Protocol`] error, never an out-of-bounds access.

use super::client::{Transport, TransportError};
use crate::abi::xs_ring;
use crate::shm::SharedMem;

/// Ring size in bytes (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: u32 = super::wire::RING_SIZE;

const _: () = {
    use super::wire::ring_layout as l;
    assert!(xs_ring::RING_SIZE == RING_SIZE as usize);
    assert!(xs_ring::REQ_OFFSET == l::REQ);
    assert!(xs_ring::RSP_OFFSET == l::RSP);
    assert!(xs_ring::REQ_CONS_OFFSET == l::REQ_CONS);
    assert!(xs_ring::REQ_PROD_OFFSET == l::REQ_PROD);
    assert!(xs_ring::RSP_CONS_OFFSET == l::RSP_CONS);
    assert!(xs_ring::RSP_PROD_OFFSET == l::RSP_PROD);
    assert!(xs_ring::SERVER_FEATURES_OFFSET == l::SERVER_FEATURES);
    assert!(xs_ring::CONNECTION_OFFSET == l::CONNECTION);
    assert!(xs_ring::ERROR_OFFSET == l::ERROR);
};

#[derive(Debug, Clone, Copy)]
struct Side {
    /// Data ring we produce into, its producer (ours) and consumer (peer's) index offsets.
    out_data: usize,
    out_prod: usize,
    out_cons: usize,
    /// Data ring we consume from, its producer (peer's) and consumer (ours) index offsets.
    in_data: usize,
    in_prod: usize,
    in_cons: usize,
}

const CLIENT: Side = Side {
    out_data: xs_ring::REQ_OFFSET,
    out_prod: xs_ring::REQ_PROD_OFFSET,
    out_cons: xs_ring::REQ_CONS_OFFSET,
    in_data: xs_ring::RSP_OFFSET,
    in_prod: xs_ring::RSP_PROD_OFFSET,
    in_cons: xs_ring::RSP_CONS_OFFSET,
};

const SERVER: Side = Side {
    out_data: xs_ring::RSP_OFFSET,
    out_prod: xs_ring::RSP_PROD_OFFSET,
    out_cons: xs_ring::RSP_CONS_OFFSET,
    in_data: xs_ring::REQ_OFFSET,
    in_prod: xs_ring::REQ_PROD_OFFSET,
    in_cons: xs_ring::REQ_CONS_OFFSET,
};

fn shm_err(_: crate::shm::ShmError) -> TransportError {
    TransportError::Protocol("xenstore page access out of range")
}

/// One end of a xenstore ring page. See the [module documentation](self).
pub struct RingTransport<M: SharedMem, N: FnMut()> {
    mem: M,
    notify: N,
    side: Side,
    /// Our producer index on the outgoing ring (private copy).
    out_prod: u32,
    /// Our consumer index on the incoming ring (private copy).
    in_cons: u32,
}

impl<M: SharedMem, N: FnMut()> core::fmt::Debug for RingTransport<M, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingTransport")
            .field("out_prod", &self.out_prod)
            .field("in_cons", &self.in_cons)
            .finish()
    }
}

impl<M: SharedMem, N: FnMut()> RingTransport<M, N> {
    /// The guest's end: writes requests, reads replies and watch events. Our indices are taken
    /// from the page as the domain builder (or a previous user) left them.
    pub fn client(mem: M, notify: N) -> Result<Self, TransportError> {
        Self::new(mem, notify, CLIENT)
    }

    /// The server's end (used by the simulated xenstored): reads requests, writes replies.
    pub fn server(mem: M, notify: N) -> Result<Self, TransportError> {
        Self::new(mem, notify, SERVER)
    }

    fn new(mem: M, notify: N, side: Side) -> Result<Self, TransportError> {
        if mem.size() < xs_ring::ERROR_OFFSET + 4 {
            return Err(TransportError::Protocol("xenstore page too small"));
        }
        let out_prod = mem.load_u32_acquire(side.out_prod).map_err(shm_err)?;
        let in_cons = mem.load_u32_acquire(side.in_cons).map_err(shm_err)?;
        Ok(RingTransport {
            mem,
            notify,
            side,
            out_prod,
            in_cons,
        })
    }

    /// The shared memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Bytes we have produced that the peer has not consumed yet.
    pub fn unconsumed_out(&self) -> Result<u32, TransportError> {
        let cons = self
            .mem
            .load_u32_acquire(self.side.out_cons)
            .map_err(shm_err)?;
        let used = self.out_prod.wrapping_sub(cons);
        if used > RING_SIZE {
            return Err(TransportError::Protocol(
                "xenstore peer consumer index ahead of producer",
            ));
        }
        Ok(used)
    }
}

impl<M: SharedMem, N: FnMut()> Transport for RingTransport<M, N> {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        let mut done = 0usize;
        while done < bytes.len() {
            let used = self.unconsumed_out()?;
            let space = (RING_SIZE - used) as usize;
            if space == 0 {
                break;
            }
            let pos = (self.out_prod % RING_SIZE) as usize;
            let n = space.min(RING_SIZE as usize - pos).min(bytes.len() - done);
            // The consumer index was read before we overwrite the bytes it freed.
            self.mem.fence();
            self.mem
                .write_bytes(self.side.out_data + pos, &bytes[done..done + n])
                .map_err(shm_err)?;
            self.out_prod = self.out_prod.wrapping_add(n as u32);
            // Data before index.
            self.mem
                .store_u32_release(self.side.out_prod, self.out_prod)
                .map_err(shm_err)?;
            done += n;
        }
        if done > 0 {
            (self.notify)();
        }
        Ok(done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let mut done = 0usize;
        while done < buf.len() {
            let prod = self
                .mem
                .load_u32_acquire(self.side.in_prod)
                .map_err(shm_err)?;
            let avail = prod.wrapping_sub(self.in_cons);
            if avail > RING_SIZE {
                return Err(TransportError::Protocol(
                    "xenstore peer producer index more than a ring ahead",
                ));
            }
            if avail == 0 {
                break;
            }
            let pos = (self.in_cons % RING_SIZE) as usize;
            let n = (avail as usize)
                .min(RING_SIZE as usize - pos)
                .min(buf.len() - done);
            self.mem
                .read_bytes(self.side.in_data + pos, &mut buf[done..done + n])
                .map_err(shm_err)?;
            // Finish reading the bytes before handing the space back.
            self.mem.fence();
            self.in_cons = self.in_cons.wrapping_add(n as u32);
            self.mem
                .store_u32_release(self.side.in_cons, self.in_cons)
                .map_err(shm_err)?;
            done += n;
        }
        if done > 0 {
            (self.notify)();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::HostMem;
    use alloc::vec::Vec;
    use core::cell::Cell;
    use proptest::prelude::*;

    fn page_with_indices(req: u32, rsp: u32) -> HostMem {
        let m = HostMem::page();
        for (off, v) in [
            (xs_ring::REQ_CONS_OFFSET, req),
            (xs_ring::REQ_PROD_OFFSET, req),
            (xs_ring::RSP_CONS_OFFSET, rsp),
            (xs_ring::RSP_PROD_OFFSET, rsp),
        ] {
            m.write_u32(off, v).unwrap();
        }
        m
    }

    #[test]
    fn bytes_flow_both_ways_and_notify_only_on_progress() {
        let m = HostMem::page();
        let kicks = Cell::new(0);
        let mut c = RingTransport::client(m.clone(), || kicks.set(kicks.get() + 1)).unwrap();
        let mut s = RingTransport::server(m.clone(), || {}).unwrap();
        assert_eq!(c.send(b"hello").unwrap(), 5);
        assert_eq!(kicks.get(), 1);
        assert_eq!(m.read_u32(xs_ring::REQ_PROD_OFFSET).unwrap(), 5);
        let mut buf = [0u8; 16];
        assert_eq!(s.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(m.read_u32(xs_ring::REQ_CONS_OFFSET).unwrap(), 5);
        assert_eq!(s.send(b"ok").unwrap(), 2);
        assert_eq!(c.recv(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ok");
        assert_eq!(kicks.get(), 2);
        assert_eq!(c.recv(&mut buf).unwrap(), 0);
        assert_eq!(kicks.get(), 2);
    }

    #[test]
    fn full_ring_takes_no_more_bytes() {
        let m = HostMem::page();
        let mut c = RingTransport::client(m.clone(), || {}).unwrap();
        let big = [7u8; 1500];
        assert_eq!(c.send(&big).unwrap(), 1024);
        assert_eq!(c.send(&big).unwrap(), 0);
        let mut s = RingTransport::server(m, || {}).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(s.recv(&mut buf).unwrap(), 100);
        assert_eq!(c.send(&big).unwrap(), 100);
    }

    #[test]
    fn hostile_indices_are_protocol_errors() {
        // Server claims 5000 bytes of replies.
        let m = HostMem::page();
        let mut c = RingTransport::client(m.clone(), || {}).unwrap();
        m.write_u32(xs_ring::RSP_PROD_OFFSET, 5000).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(c.recv(&mut buf), Err(TransportError::Protocol(_))));
        // Server's consumer index ahead of what we produced.
        m.write_u32(xs_ring::REQ_CONS_OFFSET, 10).unwrap();
        assert!(matches!(c.send(b"x"), Err(TransportError::Protocol(_))));
        // A peer rewriting *our* index on the page is ignored: we keep our own copy.
        let m = HostMem::page();
        let mut c = RingTransport::client(m.clone(), || {}).unwrap();
        c.send(b"abc").unwrap();
        m.write_u32(xs_ring::REQ_PROD_OFFSET, 900).unwrap();
        c.send(b"d").unwrap();
        assert_eq!(m.read_u32(xs_ring::REQ_PROD_OFFSET).unwrap(), 4);
        // A page too small for the layout is refused.
        assert!(RingTransport::client(HostMem::new(2048), || {}).is_err());
    }

    /// The client over a real ring page, the simulated server behind the other end, pumped from
    /// the client's `wait` closure as an event loop would: values larger than the ring, watch
    /// events and replies all cross the page.
    #[test]
    fn client_and_server_over_the_ring_page() {
        use crate::xenstore::server::Server;
        use crate::xenstore::{Client, TxId};
        use core::cell::RefCell;

        let page = page_with_indices(u32::MAX - 100, u32::MAX - 50);
        let kicks = Cell::new(0u32);
        let ring = RingTransport::client(page.clone(), || kicks.set(kicks.get() + 1)).unwrap();
        let mut xs = Client::new(ring);
        let server = RefCell::new(Server::new());
        server.borrow_mut().add_domain(4);
        let conn = server.borrow_mut().connect(4);
        let srv_ring = RefCell::new(RingTransport::server(page.clone(), || {}).unwrap());
        let pending = RefCell::new(Vec::new());
        let waits = Cell::new(0u32);
        let mut pump = || {
            waits.set(waits.get() + 1);
            let mut buf = [0u8; 300];
            loop {
                let n = srv_ring.borrow_mut().recv(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                server.borrow_mut().feed(conn, &buf[..n]).unwrap();
            }
            pending
                .borrow_mut()
                .extend(server.borrow_mut().take_output(conn));
            let mut p = pending.borrow_mut();
            let n = srv_ring.borrow_mut().send(&p).unwrap();
            p.drain(..n);
            waits.get() < 1000
        };
        let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        xs.write(TxId::NONE, "data/big", &big, &mut pump).unwrap();
        xs.watch("data", "t", &mut pump).unwrap();
        assert_eq!(xs.read(TxId::NONE, "data/big", &mut pump).unwrap(), big);
        assert_eq!(
            xs.read(TxId::NONE, "data/missing", &mut pump)
                .unwrap_err()
                .errno(),
            Some(crate::xenstore::Errno::ENOENT)
        );
        assert_eq!(xs.next_event().unwrap().path, "data");
        assert!(kicks.get() > 0);
        assert!(waits.get() > 3);
        // The indices wrapped past 2^32 on the way.
        assert!(page.read_u32(xs_ring::REQ_PROD_OFFSET).unwrap() < 10_000);
    }

    proptest! {
        /// Random interleavings of producer and consumer chunks, starting near the 2^32 wrap,
        /// deliver exactly the bytes sent, in order, in both directions.
        #[test]
        fn stream_survives_wrap_and_any_chunking(
            start in prop_oneof![Just(u32::MAX - 700), Just(0u32), any::<u32>()],
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            steps in proptest::collection::vec((1usize..1100, 1usize..1100), 1..50),
        ) {
            let m = page_with_indices(start, start.wrapping_add(3));
            let mut c = RingTransport::client(m.clone(), || {}).unwrap();
            let mut s = RingTransport::server(m.clone(), || {}).unwrap();
            let (mut sent_c, mut sent_s) = (0usize, 0usize);
            let (mut got_s, mut got_c) = (Vec::new(), Vec::new());
            let mut i = 0;
            while got_s.len() < data.len() || got_c.len() < data.len() {
                let (a, b) = steps[i % steps.len()];
                i += 1;
                let end = (sent_c + a).min(data.len());
                sent_c += c.send(&data[sent_c..end]).unwrap();
                let end = (sent_s + b).min(data.len());
                sent_s += s.send(&data[sent_s..end]).unwrap();
                let mut buf = vec![0u8; b];
                let n = s.recv(&mut buf).unwrap();
                got_s.extend_from_slice(&buf[..n]);
                let mut buf = vec![0u8; a];
                let n = c.recv(&mut buf).unwrap();
                got_c.extend_from_slice(&buf[..n]);
                prop_assert!(i < 100_000);
            }
            prop_assert_eq!(&got_s, &data);
            prop_assert_eq!(&got_c, &data);
        }
    }
}
