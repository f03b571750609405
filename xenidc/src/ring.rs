//! Shared-ring endpoints with the semantics of Xen `io/ring.h`, over any [`SharedMem`] page and any
//! fixed-size plain request/response types.
//!
//! - Indices are free-running `u32`s that wrap; the slot of index `i` is `i & (size - 1)`.
//! - Producers write entries, then publish the producer index with a release store, then issue a
//!   full barrier and read the consumer's event index: a notification is needed only if the event
//!   index lies in the range just published (`RING_PUSH_*_AND_CHECK_NOTIFY`).
//! - Consumers that find nothing to do arm the event index (`cons + 1`), issue a full barrier and
//!   check again before sleeping (`RING_FINAL_CHECK_FOR_*`), so no notification is lost.
//! - The back end never trusts the front end: it snapshots `req_prod`, checks that no more than the
//!   ring size is outstanding and that the index did not move backwards, and copies each request out
//!   of shared memory exactly once before anyone looks at it. A violation is a [`RingError`] naming
//!   the peer's indices; the connection is then closed by the caller.
//! - The front end likewise checks the back end's `rsp_prod` against the requests it has sent.

use crate::abi::ring::{
    const_ring_size, ENTRIES_OFFSET, REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET,
    RSP_PROD_OFFSET,
};
use crate::shm::{SharedMem, ShmError};
use core::fmt;
use core::marker::PhantomData;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A fixed-size plain type that can live in a ring slot.
pub trait RingEntry: FromBytes + IntoBytes + Immutable + KnownLayout + Copy {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout + Copy> RingEntry for T {}

/// Errors of the ring layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// Shared-memory access failed (page too small for the layout).
    Shm(ShmError),
    /// The page cannot hold even one entry.
    PageTooSmall { page: usize, slot: usize },
    /// Protocol error by the front end: `req_prod` claims more outstanding requests than the ring
    /// holds, or moved backwards past requests we already consumed.
    BadReqProd {
        req_prod: u32,
        req_cons: u32,
        rsp_prod: u32,
        size: u32,
    },
    /// Protocol error by the back end: `rsp_prod` claims responses to requests never sent, or moved
    /// backwards.
    BadRspProd {
        rsp_prod: u32,
        rsp_cons: u32,
        req_prod: u32,
        size: u32,
    },
    /// Local misuse: no free request slot (front end) — at most `size` requests may be outstanding.
    Full,
    /// Local misuse: a response pushed without a consumed request to answer.
    NoRequestToAnswer,
}

impl From<ShmError> for RingError {
    fn from(e: ShmError) -> Self {
        RingError::Shm(e)
    }
}

impl RingError {
    /// True if the error is the peer's fault (the connection should be closed).
    pub fn is_peer_error(&self) -> bool {
        matches!(
            self,
            RingError::BadReqProd { .. } | RingError::BadRspProd { .. }
        )
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Shm(e) => write!(f, "ring page access: {e}"),
            RingError::PageTooSmall { page, slot } => {
                write!(f, "a {page}-byte page holds no {slot}-byte ring entry")
            }
            RingError::BadReqProd { req_prod, req_cons, rsp_prod, size } => write!(
                f,
                "peer protocol error: req_prod {req_prod} with req_cons {req_cons}, rsp_prod {rsp_prod}, ring size {size}"
            ),
            RingError::BadRspProd { rsp_prod, rsp_cons, req_prod, size } => write!(
                f,
                "peer protocol error: rsp_prod {rsp_prod} with rsp_cons {rsp_cons}, req_prod {req_prod}, ring size {size}"
            ),
            RingError::Full => write!(f, "ring full"),
            RingError::NoRequestToAnswer => write!(f, "response without an outstanding request"),
        }
    }
}

/// Slot size of a ring whose entries are the union of `Req` and `Rsp`.
pub const fn slot_size<Req, Rsp>() -> usize {
    let s = if core::mem::size_of::<Req>() > core::mem::size_of::<Rsp>() {
        core::mem::size_of::<Req>()
    } else {
        core::mem::size_of::<Rsp>()
    };
    let a = if core::mem::align_of::<Req>() > core::mem::align_of::<Rsp>() {
        core::mem::align_of::<Req>()
    } else {
        core::mem::align_of::<Rsp>()
    };
    s.div_ceil(a) * a
}

/// Number of entries of a ring of `Req`/`Rsp` on a page of `page_size` bytes.
pub const fn ring_size<Req, Rsp>(page_size: usize) -> usize {
    const_ring_size(page_size, slot_size::<Req, Rsp>())
}

fn geometry<M: SharedMem, Req, Rsp>(mem: &M) -> Result<(u32, usize), RingError> {
    let slot = slot_size::<Req, Rsp>();
    let n = const_ring_size(mem.size(), slot);
    if n == 0 || n > u32::MAX as usize / 2 {
        return Err(RingError::PageTooSmall {
            page: mem.size(),
            slot,
        });
    }
    Ok((n as u32, slot))
}

#[inline]
fn slot_offset(idx: u32, size: u32, slot: usize) -> usize {
    ENTRIES_OFFSET + (idx & (size - 1)) as usize * slot
}

#[inline]
fn needs_notify(new: u32, old: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// The back end (request consumer, response producer) of a shared ring.
pub struct BackRing<M, Req, Rsp> {
    mem: M,
    size: u32,
    slot: usize,
    /// Next request to consume.
    req_cons: u32,
    /// Responses produced, published or not.
    rsp_prod_pvt: u32,
    /// Last `rsp_prod` we published.
    rsp_prod_pub: u32,
    /// Validated snapshot of the peer's `req_prod`.
    req_prod_seen: u32,
    _t: PhantomData<(Req, Rsp)>,
}

impl<M: SharedMem, Req: RingEntry, Rsp: RingEntry> BackRing<M, Req, Rsp> {
    /// Attach to a ring the front end initialised (`BACK_RING_ATTACH`): start at the page's current
    /// `rsp_prod`, which is 0 on a fresh ring. The value is untrusted; a bogus one shows up as
    /// [`RingError::BadReqProd`] on the first consume.
    pub fn attach(mem: M) -> Result<Self, RingError> {
        Self::try_attach(mem).map_err(|(e, _)| e)
    }

    /// [`BackRing::attach`] that hands the page back on failure (so a mapping can be undone).
    pub fn try_attach(mem: M) -> Result<Self, (RingError, M)> {
        let (size, slot) = match geometry::<M, Req, Rsp>(&mem) {
            Ok(g) => g,
            Err(e) => return Err((e, mem)),
        };
        let start = match mem.load_u32_acquire(RSP_PROD_OFFSET) {
            Ok(v) => v,
            Err(e) => return Err((e.into(), mem)),
        };
        Ok(BackRing {
            mem,
            size,
            slot,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
            req_prod_seen: start,
            _t: PhantomData,
        })
    }

    /// Ring size (entries).
    pub fn size(&self) -> u32 {
        self.size
    }
    /// Index of the next request to consume.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }
    /// Responses produced so far (published or not).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }
    /// Requests consumed but not answered yet.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }
    /// The shared page.
    pub fn mem(&self) -> &M {
        &self.mem
    }
    /// Give back the shared page (to unmap it).
    pub fn into_mem(self) -> M {
        self.mem
    }

    /// Snapshot and validate the peer's `req_prod`; returns the number of unconsumed requests.
    pub fn unconsumed(&mut self) -> Result<u32, RingError> {
        let req_prod = self.mem.load_u32_acquire(REQ_PROD_OFFSET)?;
        let outstanding = req_prod.wrapping_sub(self.rsp_prod_pvt);
        if outstanding > self.size || outstanding < self.in_flight() {
            return Err(RingError::BadReqProd {
                req_prod,
                req_cons: self.req_cons,
                rsp_prod: self.rsp_prod_pvt,
                size: self.size,
            });
        }
        self.req_prod_seen = req_prod;
        Ok(req_prod.wrapping_sub(self.req_cons))
    }

    /// Copy the next request out of the ring (once), or `None` if there is none.
    pub fn next_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.req_cons == self.req_prod_seen && self.unconsumed()? == 0 {
            return Ok(None);
        }
        let mut req = Req::new_zeroed();
        let off = slot_offset(self.req_cons, self.size, self.slot);
        self.mem.read_bytes(off, req.as_mut_bytes())?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Write a response into the next response slot (not yet visible to the peer).
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if self.in_flight() == 0 {
            return Err(RingError::NoRequestToAnswer);
        }
        let off = slot_offset(self.rsp_prod_pvt, self.size, self.slot);
        self.mem.write_bytes(off, rsp.as_bytes())?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish the pushed responses; true if the peer must be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn publish_responses(&mut self) -> Result<bool, RingError> {
        let old = self.rsp_prod_pub;
        let new = self.rsp_prod_pvt;
        if old == new {
            return Ok(false);
        }
        self.mem.store_u32_release(RSP_PROD_OFFSET, new)?;
        self.rsp_prod_pub = new;
        self.mem.fence();
        let event = self.mem.read_u32(RSP_EVENT_OFFSET)?;
        Ok(needs_notify(new, old, event))
    }

    /// Before sleeping: true if requests are pending; otherwise arm `req_event` and check again
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`).
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed()? > 0 {
            return Ok(true);
        }
        self.mem
            .write_u32(REQ_EVENT_OFFSET, self.req_cons.wrapping_add(1))?;
        self.mem.fence();
        Ok(self.unconsumed()? > 0)
    }
}

/// The front end (request producer, response consumer) of a shared ring.
pub struct FrontRing<M, Req, Rsp> {
    mem: M,
    size: u32,
    slot: usize,
    req_prod_pvt: u32,
    req_prod_pub: u32,
    rsp_cons: u32,
    rsp_prod_seen: u32,
    _t: PhantomData<(Req, Rsp)>,
}

impl<M: SharedMem, Req: RingEntry, Rsp: RingEntry> FrontRing<M, Req, Rsp> {
    /// Initialise a fresh ring page (`SHARED_RING_INIT` + `FRONT_RING_INIT`).
    pub fn init(mem: M) -> Result<Self, RingError> {
        Self::init_at(mem, 0)
    }

    /// Initialise a ring page whose indices start at `start` instead of 0 (tests of the 2^32 wrap;
    /// a peer must accept any start value since it attaches at `rsp_prod`).
    pub fn init_at(mem: M, start: u32) -> Result<Self, RingError> {
        let (size, slot) = geometry::<M, Req, Rsp>(&mem)?;
        mem.fill(0, ENTRIES_OFFSET, 0)?;
        mem.write_u32(REQ_PROD_OFFSET, start)?;
        mem.write_u32(RSP_PROD_OFFSET, start)?;
        mem.write_u32(REQ_EVENT_OFFSET, start.wrapping_add(1))?;
        mem.write_u32(RSP_EVENT_OFFSET, start.wrapping_add(1))?;
        mem.fence();
        Ok(FrontRing {
            mem,
            size,
            slot,
            req_prod_pvt: start,
            req_prod_pub: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            _t: PhantomData,
        })
    }

    pub fn size(&self) -> u32 {
        self.size
    }
    /// Requests sent (pushed) and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }
    /// Free request slots.
    pub fn free_requests(&self) -> u32 {
        self.size - self.outstanding()
    }
    pub fn mem(&self) -> &M {
        &self.mem
    }
    pub fn into_mem(self) -> M {
        self.mem
    }

    /// Write a request into the next slot (not yet visible to the peer).
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full);
        }
        let off = slot_offset(self.req_prod_pvt, self.size, self.slot);
        self.mem.write_bytes(off, req.as_bytes())?;
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish pushed requests; true if the peer must be notified.
    pub fn publish_requests(&mut self) -> Result<bool, RingError> {
        let old = self.req_prod_pub;
        let new = self.req_prod_pvt;
        if old == new {
            return Ok(false);
        }
        self.mem.store_u32_release(REQ_PROD_OFFSET, new)?;
        self.req_prod_pub = new;
        self.mem.fence();
        let event = self.mem.read_u32(REQ_EVENT_OFFSET)?;
        Ok(needs_notify(new, old, event))
    }

    /// Snapshot and validate the peer's `rsp_prod`; returns the number of unconsumed responses.
    pub fn unconsumed(&mut self) -> Result<u32, RingError> {
        let rsp_prod = self.mem.load_u32_acquire(RSP_PROD_OFFSET)?;
        let avail = rsp_prod.wrapping_sub(self.rsp_cons);
        if avail > self.req_prod_pub.wrapping_sub(self.rsp_cons) {
            return Err(RingError::BadRspProd {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                req_prod: self.req_prod_pub,
                size: self.size,
            });
        }
        self.rsp_prod_seen = rsp_prod;
        Ok(avail)
    }

    /// Copy the next response out of the ring, or `None`.
    pub fn next_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.rsp_cons == self.rsp_prod_seen && self.unconsumed()? == 0 {
            return Ok(None);
        }
        let mut rsp = Rsp::new_zeroed();
        let off = slot_offset(self.rsp_cons, self.size, self.slot);
        self.mem.read_bytes(off, rsp.as_mut_bytes())?;
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Before sleeping: true if responses are pending; otherwise arm `rsp_event` and check again.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed()? > 0 {
            return Ok(true);
        }
        self.mem
            .write_u32(RSP_EVENT_OFFSET, self.rsp_cons.wrapping_add(1))?;
        self.mem.fence();
        Ok(self.unconsumed()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::usbif::{UrbRequest, UrbResponse};
    use crate::shm::HostMem;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    struct Req {
        id: u32,
        val: u32,
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    struct Rsp {
        id: u32,
    }

    type F = FrontRing<HostMem, Req, Rsp>;
    type B = BackRing<HostMem, Req, Rsp>;

    fn pair(start: u32) -> (F, B) {
        let page = HostMem::page();
        let f = F::init_at(page.clone(), start).unwrap();
        let b = B::attach(page).unwrap();
        (f, b)
    }

    #[test]
    fn geometry_matches_usbif() {
        assert_eq!(slot_size::<UrbRequest, UrbResponse>(), 148);
        assert_eq!(ring_size::<UrbRequest, UrbResponse>(4096), 16);
        assert_eq!(ring_size::<Req, Rsp>(4096), 256);
        let tiny = HostMem::new(64);
        assert!(matches!(
            B::attach(tiny),
            Err(RingError::PageTooSmall { page: 64, slot: 8 })
        ));
    }

    #[test]
    fn round_trip_and_notifications() {
        let (mut f, mut b) = pair(0);
        // Nothing pending: back end arms req_event = 1 and sleeps.
        assert!(!b.final_check_for_requests().unwrap());
        f.push_request(&Req { id: 1, val: 10 }).unwrap();
        assert!(
            f.publish_requests().unwrap(),
            "armed consumer must be notified"
        );
        f.push_request(&Req { id: 2, val: 20 }).unwrap();
        // Consumer has not re-armed: no notification needed for the second one.
        assert!(!f.publish_requests().unwrap());
        assert_eq!(b.next_request().unwrap(), Some(Req { id: 1, val: 10 }));
        assert_eq!(b.next_request().unwrap(), Some(Req { id: 2, val: 20 }));
        assert_eq!(b.next_request().unwrap(), None);
        assert!(!f.final_check_for_responses().unwrap());
        b.push_response(&Rsp { id: 1 }).unwrap();
        b.push_response(&Rsp { id: 2 }).unwrap();
        assert!(matches!(
            b.push_response(&Rsp { id: 3 }),
            Err(RingError::NoRequestToAnswer)
        ));
        assert!(b.publish_responses().unwrap());
        assert_eq!(f.next_response().unwrap(), Some(Rsp { id: 1 }));
        assert_eq!(f.next_response().unwrap(), Some(Rsp { id: 2 }));
        assert_eq!(f.next_response().unwrap(), None);
    }

    #[test]
    fn front_refuses_more_than_ring_size() {
        let (mut f, _b) = pair(u32::MAX - 3);
        for i in 0..256 {
            f.push_request(&Req { id: i, val: 0 }).unwrap();
        }
        assert_eq!(f.push_request(&Req { id: 0, val: 0 }), Err(RingError::Full));
    }

    #[test]
    fn overflowing_req_prod_is_a_peer_error_naming_the_indices() {
        let (_f, mut b) = pair(5);
        b.mem().write_u32(REQ_PROD_OFFSET, 5 + 257).unwrap();
        let e = b.next_request().unwrap_err();
        assert_eq!(
            e,
            RingError::BadReqProd {
                req_prod: 262,
                req_cons: 5,
                rsp_prod: 5,
                size: 256
            }
        );
        assert!(e.is_peer_error());
        // Exactly the ring size is fine.
        b.mem().write_u32(REQ_PROD_OFFSET, 5 + 256).unwrap();
        assert_eq!(b.unconsumed().unwrap(), 256);
    }

    #[test]
    fn req_prod_moving_backwards_is_a_peer_error() {
        let (mut f, mut b) = pair(0);
        for i in 0..4 {
            f.push_request(&Req { id: i, val: 0 }).unwrap();
        }
        f.publish_requests().unwrap();
        for _ in 0..4 {
            b.next_request().unwrap().unwrap();
        }
        b.mem().write_u32(REQ_PROD_OFFSET, 2).unwrap();
        assert!(matches!(
            b.next_request(),
            Err(RingError::BadReqProd { req_prod: 2, .. })
        ));
    }

    #[test]
    fn bogus_rsp_prod_is_a_peer_error_for_the_front() {
        let (mut f, _b) = pair(0);
        f.push_request(&Req { id: 0, val: 0 }).unwrap();
        f.publish_requests().unwrap();
        f.mem().write_u32(RSP_PROD_OFFSET, 2).unwrap();
        assert!(matches!(
            f.next_response(),
            Err(RingError::BadRspProd { rsp_prod: 2, .. })
        ));
    }

    #[test]
    fn request_is_copied_once_later_changes_do_not_matter() {
        let (mut f, mut b) = pair(0);
        f.push_request(&Req { id: 7, val: 1 }).unwrap();
        f.publish_requests().unwrap();
        let r = b.next_request().unwrap().unwrap();
        // The peer scribbles over the slot after we copied it.
        f.mem().write_u32(ENTRIES_OFFSET, 99).unwrap();
        assert_eq!(r, Req { id: 7, val: 1 });
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        PublishReq,
        Consume(u8),
        Respond(u8),
        PublishRsp,
        TakeResponses,
        BackSleep,
        FrontSleep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..40).prop_map(Op::Push),
            Just(Op::PublishReq),
            (1u8..40).prop_map(Op::Consume),
            (1u8..40).prop_map(Op::Respond),
            Just(Op::PublishRsp),
            Just(Op::TakeResponses),
            Just(Op::BackSleep),
            Just(Op::FrontSleep),
        ]
    }

    proptest! {
        /// Random interleavings of both ends across the 2^32 wrap: every request arrives once and in
        /// order, every response arrives once and in order, and a sleeping end is always woken.
        #[test]
        fn interleavings_across_the_wrap(start in prop_oneof![Just(u32::MAX - 300), Just(u32::MAX), any::<u32>()],
                                         ops in proptest::collection::vec(op(), 1..300)) {
            let (mut f, mut b) = pair(start);
            let mut next_id = 0u32;
            let mut back_queue = std::collections::VecDeque::new();
            let mut expect_req = 0u32;
            let mut expect_rsp = 0u32;
            let mut back_asleep = false;
            let mut front_asleep = false;
            for op in ops {
                match op {
                    Op::Push(n) => for _ in 0..n {
                        if f.free_requests() == 0 { prop_assert_eq!(f.push_request(&Req{id:0,val:0}), Err(RingError::Full)); break; }
                        f.push_request(&Req { id: next_id, val: !next_id }).unwrap();
                        next_id += 1;
                    },
                    Op::PublishReq => {
                        let pending_before = f.req_prod_pvt != f.req_prod_pub;
                        let notify = f.publish_requests().unwrap();
                        if back_asleep && pending_before { prop_assert!(notify, "lost wakeup of the back end"); back_asleep = false; }
                        if notify { back_asleep = false; }
                    }
                    Op::Consume(n) => for _ in 0..n {
                        match b.next_request().unwrap() {
                            Some(r) => { prop_assert_eq!(r, Req { id: expect_req, val: !expect_req }); expect_req += 1; back_queue.push_back(r.id); }
                            None => break,
                        }
                    },
                    Op::Respond(n) => for _ in 0..n {
                        match back_queue.pop_front() { Some(id) => b.push_response(&Rsp { id }).unwrap(), None => break }
                    },
                    Op::PublishRsp => {
                        let pending_before = b.rsp_prod_pvt != b.rsp_prod_pub;
                        let notify = b.publish_responses().unwrap();
                        if front_asleep && pending_before { prop_assert!(notify, "lost wakeup of the front end"); front_asleep = false; }
                        if notify { front_asleep = false; }
                    }
                    Op::TakeResponses => while let Some(r) = f.next_response().unwrap() {
                        prop_assert_eq!(r.id, expect_rsp); expect_rsp += 1;
                    },
                    Op::BackSleep => { if !b.final_check_for_requests().unwrap() { back_asleep = true; } }
                    Op::FrontSleep => { if !f.final_check_for_responses().unwrap() { front_asleep = true; } }
                }
                prop_assert!(b.in_flight() <= b.size());
                prop_assert!(f.outstanding() <= f.size());
            }
        }

        /// A hostile front end writing arbitrary indices and entries never makes the back end panic,
        /// hand out more than the ring holds, or accept an index that moved backwards.
        #[test]
        fn hostile_indices_never_panic(start in any::<u32>(),
                                       steps in proptest::collection::vec((any::<u32>(), any::<bool>(), 0u8..20, 0u8..20), 1..50)) {
            let page = HostMem::page();
            page.write_u32(RSP_PROD_OFFSET, start).unwrap();
            let mut b = B::attach(page.clone()).unwrap();
            let mut consumed = 0u64;
            let mut answered = 0u64;
            for (val, near, consume, answer) in steps {
                let req_prod = if near { b.req_cons().wrapping_add(val % 600).wrapping_sub(300) } else { val };
                page.write_u32(REQ_PROD_OFFSET, req_prod).unwrap();
                page.write_u32(REQ_EVENT_OFFSET, val).unwrap();
                for _ in 0..consume {
                    match b.next_request() {
                        Ok(Some(_)) => consumed += 1,
                        Ok(None) => break,
                        Err(e) => { prop_assert!(e.is_peer_error()); break; }
                    }
                }
                for _ in 0..answer {
                    if b.in_flight() == 0 { break; }
                    b.push_response(&Rsp { id: 0 }).unwrap();
                    answered += 1;
                }
                let _ = b.publish_responses().unwrap();
                let _ = b.final_check_for_requests();
                prop_assert!(b.in_flight() <= b.size());
                prop_assert!(consumed - answered <= b.size() as u64);
            }
        }
    }
}
