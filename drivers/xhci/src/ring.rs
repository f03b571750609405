//! Rings (xHCI 1.2 §4.9): producer rings (the command ring and transfer rings, one segment closed by
//! a Link TRB with Toggle Cycle, §4.9.2) and the event ring consumer (one segment described by an
//! Event Ring Segment Table, §4.9.4, §6.5).
//!
//! Ownership of a TRB is given by its cycle bit: the producer writes TRBs with its Producer Cycle
//! State and flips the state when it follows the link back to the start; the consumer compares
//! with its Consumer Cycle State (§4.9.2.2).  A TD is published by writing its first TRB's cycle bit
//! last, so the controller never sees half a TD.

use alloc::vec::Vec;

use hal::DmaBuf;

use crate::trb::{Trb, CHAIN, CYCLE, TRB_SIZE};

/// TRBs per ring segment (one 4 KiB page).
pub const RING_TRBS: usize = 256;

/// Where a TD sits in a producer ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdPos {
    /// Index of the first TRB and the cycle state it was written with.
    pub start: usize,
    pub start_cycle: bool,
    /// Index just after the last TRB (where the next TD starts) and the cycle state there.
    pub end: usize,
    pub end_cycle: bool,
    /// Ring indices of the TD's TRBs, in order (link TRBs excluded).
    pub indices: Vec<usize>,
}

/// A producer ring of one segment.
pub struct ProducerRing<B: DmaBuf> {
    buf: B,
    enq: usize,
    cycle: bool,
    /// First TRB not yet known to be consumed (for free-space accounting).
    deq: usize,
}

impl<B: DmaBuf> ProducerRing<B> {
    /// Initialise over a zeroed buffer of at least `RING_TRBS * 16` bytes: the last TRB becomes the
    /// link back to the start.
    pub fn new(buf: B) -> Self {
        assert!(buf.len() >= RING_TRBS * TRB_SIZE);
        let r = ProducerRing {
            buf,
            enq: 0,
            cycle: true,
            deq: 0,
        };
        // The link's cycle bit is written when the producer reaches it.
        r.write(RING_TRBS - 1, &Trb::link(r.base(), true));
        r
    }

    pub fn base(&self) -> u64 {
        self.buf.bus_addr()
    }

    pub fn addr(&self, index: usize) -> u64 {
        self.base() + (index * TRB_SIZE) as u64
    }

    /// Ring index of a TRB bus address inside this ring (not the link).
    pub fn index_of(&self, addr: u64) -> Option<usize> {
        let off = addr.checked_sub(self.base())? as usize;
        (off.is_multiple_of(TRB_SIZE) && off / TRB_SIZE < RING_TRBS - 1).then_some(off / TRB_SIZE)
    }

    /// Current enqueue position and producer cycle state.
    pub fn enqueue(&self) -> (usize, bool) {
        (self.enq, self.cycle)
    }

    /// Usable TRB slots left (one is kept empty so full and empty differ).
    pub fn free(&self) -> usize {
        let n = RING_TRBS - 1;
        let used = (self.enq + n - self.deq) % n;
        n - 1 - used
    }

    /// Record that the consumer has moved past everything before `index`.
    pub fn set_dequeue(&mut self, index: usize) {
        self.deq = index % (RING_TRBS - 1);
    }

    pub fn read(&self, index: usize) -> Trb {
        let mut b = [0u8; 16];
        self.buf.read_bytes(index * TRB_SIZE, &mut b);
        Trb::from_bytes(&b)
    }

    fn write(&self, index: usize, t: &Trb) {
        // Parameter and status first, control (with the cycle bit) last.
        let b = t.to_bytes();
        self.buf.write_bytes(index * TRB_SIZE, &b[..12]);
        self.buf.write32(index * TRB_SIZE + 12, t.control);
    }

    /// Rewrite the control dword of TRB `index` (used to turn a cancelled TD into No-ops).
    pub fn rewrite_control(&self, index: usize, control: u32) {
        self.buf.write32(index * TRB_SIZE + 12, control);
    }

    /// Queue the TRBs of one TD (cycle bits are set here).  Returns `None` without writing anything
    /// when there is not enough room.
    pub fn push_td(&mut self, trbs: &[Trb]) -> Option<TdPos> {
        if trbs.is_empty() || trbs.len() > self.free() {
            return None;
        }
        let start = self.enq;
        let start_cycle = self.cycle;
        let mut indices = Vec::with_capacity(trbs.len());
        for (i, t) in trbs.iter().enumerate() {
            let mut t = *t;
            t.control &= !CYCLE;
            // The first TRB is written with the wrong cycle bit and fixed at the end.
            let owned = if i == 0 { !self.cycle } else { self.cycle };
            if owned {
                t.control |= CYCLE;
            }
            self.write(self.enq, &t);
            indices.push(self.enq);
            self.enq += 1;
            if self.enq == RING_TRBS - 1 {
                // Hand the link over; keep the chain going if the TD continues (§4.11.5.1).
                let mut link = Trb::link(self.base(), true);
                if t.control & CHAIN != 0 {
                    link.control |= CHAIN;
                }
                if self.cycle {
                    link.control |= CYCLE;
                }
                self.write(RING_TRBS - 1, &link);
                self.cycle = !self.cycle;
                self.enq = 0;
            }
        }
        let first = self.read(start);
        let fixed = (first.control & !CYCLE) | if start_cycle { CYCLE } else { 0 };
        self.rewrite_control(start, fixed);
        Some(TdPos {
            start,
            start_cycle,
            end: self.enq,
            end_cycle: self.cycle,
            indices,
        })
    }
}

/// Size of one Event Ring Segment Table entry (§6.5).
pub const ERST_ENTRY_SIZE: usize = 16;

/// The consumer side of an event ring with one segment.
pub struct EventRing<B: DmaBuf> {
    seg: B,
    erst: B,
    deq: usize,
    cycle: bool,
}

impl<B: DmaBuf> EventRing<B> {
    /// `seg` holds `RING_TRBS` TRBs, `erst` at least one 16-byte entry; both zeroed.
    pub fn new(seg: B, erst: B) -> Self {
        assert!(seg.len() >= RING_TRBS * TRB_SIZE && erst.len() >= ERST_ENTRY_SIZE);
        erst.write64(0, seg.bus_addr());
        erst.write32(8, RING_TRBS as u32);
        erst.write32(12, 0);
        EventRing {
            seg,
            erst,
            deq: 0,
            cycle: true,
        }
    }

    pub fn erst_addr(&self) -> u64 {
        self.erst.bus_addr()
    }

    /// Number of ERST entries.
    pub fn erst_size(&self) -> u32 {
        1
    }

    /// The dequeue pointer to write to ERDP.
    pub fn dequeue_addr(&self) -> u64 {
        self.seg.bus_addr() + (self.deq * TRB_SIZE) as u64
    }

    /// The next event, if the controller has written one.
    pub fn pop(&mut self) -> Option<Trb> {
        // The controller may be writing this TRB while we look (QEMU completes asynchronous
        // transfers from its I/O thread): read the dword with the cycle bit first and the rest
        // only once it says the TRB is ours (§4.9.4), else one read of all 16 bytes can pair the
        // new cycle bit with the previous lap's parameter, and the completion is lost as stray.
        let control = self.seg.read32(self.deq * TRB_SIZE + 12);
        if (control & 1 != 0) != self.cycle {
            return None;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let mut b = [0u8; 16];
        self.seg.read_bytes(self.deq * TRB_SIZE, &mut b);
        let t = Trb::from_bytes(&b);
        if t.cycle() != self.cycle {
            return None;
        }
        self.deq += 1;
        if self.deq == RING_TRBS {
            self.deq = 0;
            self.cycle = !self.cycle;
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trb::ty;
    use hal::fake::{FakeDma, FakeMemory};
    use hal::DmaAlloc;

    /// A consumer that follows the ring as a controller would (§4.9.2.2).
    struct Consumer {
        idx: usize,
        ccs: bool,
    }

    impl Consumer {
        fn next<B: DmaBuf>(&mut self, r: &ProducerRing<B>) -> Option<Trb> {
            loop {
                let t = r.read(self.idx);
                if t.cycle() != self.ccs {
                    return None;
                }
                if t.ty() == ty::LINK {
                    assert_eq!(t.parameter, r.base());
                    if t.control & crate::trb::LINK_TC != 0 {
                        self.ccs = !self.ccs;
                    }
                    self.idx = 0;
                    continue;
                }
                self.idx += 1;
                return Some(t);
            }
        }
    }

    #[test]
    fn producer_wraps_with_cycle_toggle() {
        let mem = FakeMemory::new(0x10_0000, 0x10000);
        let dma = FakeDma::new(mem);
        let mut r = ProducerRing::new(dma.alloc(4096, 64).unwrap());
        let mut c = Consumer { idx: 0, ccs: true };
        let mut seq = 0u64;
        // 3-TRB TDs across several wraps; the consumer sees exactly what was produced, in order.
        for round in 0..300 {
            let td: Vec<Trb> = (0..3)
                .map(|i| {
                    let mut t = Trb::with_type(ty::NORMAL);
                    t.parameter = seq + i;
                    if i < 2 {
                        t.control |= CHAIN;
                    }
                    t
                })
                .collect();
            let pos = r.push_td(&td).expect("room");
            assert_eq!(pos.indices.len(), 3);
            for i in 0..3 {
                let t = c
                    .next(&r)
                    .unwrap_or_else(|| panic!("round {round} trb {i} missing"));
                assert_eq!(t.parameter, seq + i);
            }
            assert!(c.next(&r).is_none(), "nothing beyond the TD");
            seq += 3;
            r.set_dequeue(pos.end);
            assert_eq!((pos.end, pos.end_cycle), r.enqueue());
        }
        assert!(seq > 3 * RING_TRBS as u64, "wrapped more than once");
    }

    proptest::proptest! {
        /// Any sequence of TD sizes, consumed with any lag, arrives at a controller-like consumer
        /// complete and in order across any number of wraps; a full ring refuses, never
        /// overwrites.
        #[test]
        fn random_tds_arrive_in_order(sizes in proptest::collection::vec((1usize..40, 0usize..4), 1..200)) {
            let mem = FakeMemory::new(0x10_0000, 0x10000);
            let dma = FakeDma::new(mem);
            let mut r = ProducerRing::new(dma.alloc(4096, 64).unwrap());
            let mut c = Consumer { idx: 0, ccs: true };
            let mut queued: std::collections::VecDeque<(TdPos, u64, usize)> = Default::default();
            let mut seq = 0u64;
            for (n, lag) in sizes {
                let td: Vec<Trb> = (0..n as u64).map(|i| {
                    let mut t = Trb::with_type(ty::NORMAL);
                    t.parameter = seq + i;
                    if i + 1 < n as u64 { t.control |= CHAIN; }
                    t
                }).collect();
                match r.push_td(&td) {
                    Some(pos) => { queued.push_back((pos, seq, n)); seq += n as u64; }
                    None => proptest::prop_assert!(r.free() < n, "refused with room"),
                }
                // The consumer catches up except for the last `lag` TDs.
                while queued.len() > lag {
                    let (pos, first, n) = queued.pop_front().unwrap();
                    for i in 0..n as u64 {
                        let t = c.next(&r);
                        proptest::prop_assert_eq!(t.map(|t| t.parameter), Some(first + i));
                    }
                    r.set_dequeue(pos.end);
                }
            }
            while let Some((pos, first, n)) = queued.pop_front() {
                for i in 0..n as u64 {
                    proptest::prop_assert_eq!(c.next(&r).map(|t| t.parameter), Some(first + i));
                }
                r.set_dequeue(pos.end);
            }
            proptest::prop_assert!(c.next(&r).is_none());
        }
    }

    #[test]
    fn td_is_published_atomically_and_full_ring_refuses() {
        let mem = FakeMemory::new(0x10_0000, 0x10000);
        let dma = FakeDma::new(mem);
        let mut r = ProducerRing::new(dma.alloc(4096, 64).unwrap());
        assert_eq!(r.free(), RING_TRBS - 2);
        let t = Trb::with_type(ty::NORMAL);
        let big = vec![t; RING_TRBS - 2];
        assert!(r.push_td(&vec![t; RING_TRBS - 1]).is_none());
        let pos = r.push_td(&big).unwrap();
        assert_eq!(r.free(), 0);
        assert!(r.push_td(&[t]).is_none(), "full");
        assert_eq!(pos.start, 0);
        assert!(r.read(0).cycle());
        r.set_dequeue(pos.end);
        assert_eq!(r.free(), RING_TRBS - 2);
        assert_eq!(r.index_of(r.addr(7)), Some(7));
        assert_eq!(
            r.index_of(r.addr(RING_TRBS - 1)),
            None,
            "the link is not a TD TRB"
        );
        assert_eq!(r.index_of(r.base() + 3), None);
    }

    #[test]
    fn chained_td_across_link_sets_chain_on_link() {
        let mem = FakeMemory::new(0x10_0000, 0x10000);
        let dma = FakeDma::new(mem);
        let mut r = ProducerRing::new(dma.alloc(4096, 64).unwrap());
        let t = Trb::with_type(ty::NORMAL);
        let pos = r.push_td(&vec![t; RING_TRBS - 3]).unwrap();
        r.set_dequeue(pos.end);
        let mut a = Trb::with_type(ty::NORMAL);
        a.control |= CHAIN;
        let pos = r.push_td(&[a, a, t]).unwrap();
        assert_eq!(pos.indices, vec![RING_TRBS - 3, RING_TRBS - 2, 0]);
        let link = r.read(RING_TRBS - 1);
        assert_eq!(link.ty(), ty::LINK);
        assert!(link.control & CHAIN != 0);
        assert!(link.cycle(), "link handed over with the old cycle");
        assert!(!r.read(0).cycle(), "after the toggle the cycle is 0");
        assert_eq!((pos.end, pos.end_cycle), (1, false));
    }

    #[test]
    fn event_ring_consumes_by_cycle_across_wrap() {
        let mem = FakeMemory::new(0x10_0000, 0x10000);
        let dma = FakeDma::new(mem.clone());
        let seg = dma.alloc(4096, 64).unwrap();
        let seg_addr = seg.bus_addr();
        let mut er = EventRing::new(seg, dma.alloc(64, 64).unwrap());
        assert_eq!(mem.read64(er.erst_addr()), Some(seg_addr));
        assert_eq!(mem.read32(er.erst_addr() + 8), Some(RING_TRBS as u32));
        let mut pcs = true;
        let mut widx = 0usize;
        for n in 0..600u64 {
            let mut t = Trb::with_type(ty::TRANSFER_EVENT);
            t.parameter = n;
            if pcs {
                t.control |= CYCLE;
            }
            mem.write(seg_addr + (widx * 16) as u64, &t.to_bytes());
            widx += 1;
            if widx == RING_TRBS {
                widx = 0;
                pcs = !pcs;
            }
            assert_eq!(er.pop().map(|t| t.parameter), Some(n));
            assert_eq!(er.pop(), None);
            assert_eq!(er.dequeue_addr(), seg_addr + (widx * 16) as u64);
        }
    }

    /// A segment the controller writes while the driver reads it (QEMU completes transfers from
    /// its I/O thread): one staged event TRB lands right after the driver's first read that
    /// touches its slot, between two reads of that slot. The bug fixed in 1903c9f: reading all 16
    /// bytes in one go (parameter first) paired last lap's parameter with the new cycle bit.
    struct RacyBuf {
        inner: hal::fake::FakeDmaBuf,
        /// (offset, bytes) of a TRB the controller writes during the next read of that slot.
        staged: core::cell::RefCell<Option<(usize, [u8; 16])>>,
    }

    impl RacyBuf {
        fn land_if_touched(&self, offset: usize, len: usize) {
            let mut st = self.staged.borrow_mut();
            if let Some((at, bytes)) = *st {
                if offset < at + 16 && at < offset + len {
                    self.inner.write_bytes(at, &bytes);
                    *st = None;
                }
            }
        }
    }

    impl DmaBuf for RacyBuf {
        fn bus_addr(&self) -> u64 {
            self.inner.bus_addr()
        }
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn read_bytes(&self, offset: usize, out: &mut [u8]) {
            // Byte by byte in address order, as a CPU copying the TRB would; the controller's
            // write lands after the first byte of the slot was read.
            for (i, b) in out.iter_mut().enumerate() {
                let mut one = [0u8; 1];
                self.inner.read_bytes(offset + i, &mut one);
                *b = one[0];
                self.land_if_touched(offset + i, 1);
            }
        }
        fn write_bytes(&self, offset: usize, data: &[u8]) {
            self.inner.write_bytes(offset, data)
        }
    }

    #[test]
    fn event_read_racing_the_controller_never_pairs_a_new_cycle_with_old_contents() {
        let mem = FakeMemory::new(0x10_0000, 0x10000);
        let dma = FakeDma::new(mem.clone());
        let racy = |size| RacyBuf {
            inner: dma.alloc(size, 64).unwrap(),
            staged: core::cell::RefCell::new(None),
        };
        let mut er = EventRing::new(racy(4096), racy(64));
        let (mut pcs, mut widx) = (true, 0usize);
        let mut seen = Vec::new();
        // Three laps: from the second on, each slot holds last lap's TRB (old cycle, old
        // parameter) when the new one lands in the middle of the driver's read.
        for n in 0..(3 * RING_TRBS as u64) {
            let mut t = Trb::with_type(ty::TRANSFER_EVENT);
            t.parameter = 0x1000 + n;
            if pcs {
                t.control |= CYCLE;
            }
            *er.seg.staged.borrow_mut() = Some((widx * 16, t.to_bytes()));
            widx += 1;
            if widx == RING_TRBS {
                widx = 0;
                pcs = !pcs;
            }
            // The driver may see nothing yet (it looked just before the write) but never a
            // torn TRB; by the second look the event is there.
            let mut got = None;
            for _ in 0..2 {
                if let Some(t) = er.pop() {
                    got = Some(t);
                    break;
                }
            }
            let t = got.unwrap_or_else(|| panic!("event {n} never seen"));
            assert_eq!(t.parameter, 0x1000 + n, "torn event TRB at {n}");
            seen.push(t.parameter);
            assert_eq!(er.pop(), None);
        }
        assert_eq!(seen.len(), 3 * RING_TRBS);
    }
}
