//! Remote buffer references and the mapper/copier that turns them into local buffers.
//!
//! A peer describes a data buffer as a list of grant segments (grant reference, offset within the
//! page, length), as in `usbif` (`usbif_request_segment`, at most 16 per request, each within one
//! 4 KiB page). [`RemoteBuffer::new`] validates such a list *once*, from the copy of the request:
//! segment count, `offset + length <= 4096`, and the sum of lengths equal to the declared length.
//!
//! A [`Mapper`] (one per connection) turns a validated remote buffer into a [`LocalBuffer`]:
//! - [`Mapper::map`] grant-maps every segment and exposes bus addresses for DMA (zero copy; on x86
//!   PV with an IOMMU, Xen installs a 1:1 IOMMU entry for each mapped frame);
//! - [`Mapper::bounce`] uses bounce pages of our own and grant copy instead (copy in with
//!   [`Mapper::copy_in`] before an OUT transfer, copy out with [`Mapper::copy_out`] after an IN
//!   transfer).
//!
//! All resources — mapping slots and bounce pages — are reserved when the mapper is created, so
//! normal operation never allocates and cannot fail for lack of memory; running out of slots is an
//! error value (the request is answered with an error), never a panic. [`Mapper::release`] unmaps a
//! buffer (it must be called before the response is pushed — the Linux frontend treats a grant
//! still mapped after the response as fatal), and [`Mapper::teardown`] releases everything at once
//! when the connection goes away.

use crate::abi::grant::GntStatus;
use crate::abi::usbif::RequestSegment;
use crate::abi::{DomId, GrantRef, PAGE_SIZE};
use crate::hypervisor::{
    CopyOp, CopyPtr, Hypervisor, LocalPage, MapRequest, MapResult, Mapping, XenCode, XenError,
    XenOp,
};
use crate::shm::{SharedMem, ShmError};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

/// Maximum segments of one remote buffer (`USBIF_MAX_SEGMENTS_PER_REQUEST`).
pub const MAX_SEGMENTS: usize = 16;

/// Errors of the buffer layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferError {
    /// Peer error: more segments than allowed.
    TooManySegments { count: usize, max: usize },
    /// Peer error: a segment crosses its page end.
    SegmentCrossesPage {
        index: usize,
        offset: u16,
        length: u16,
    },
    /// Peer error: the segment lengths do not add up to the declared length.
    LengthMismatch { declared: u32, sum: u32 },
    /// Peer error (or revoked grant): the hypervisor refused to map or copy a segment.
    Grant {
        index: usize,
        gref: GrantRef,
        status: GntStatus,
    },
    /// The hypervisor call itself failed.
    Xen(XenError),
    /// All reserved mapping slots or bounce pages are in use.
    NoResources { needed: usize, free: usize },
    /// The buffer belongs to another mapper (another connection).
    WrongMapper,
    /// An access outside the buffer.
    OutOfRange {
        offset: usize,
        len: usize,
        size: usize,
    },
    /// Shared-memory access failed.
    Shm(ShmError),
}

impl BufferError {
    /// True if the peer caused the error (answer the request with an error status).
    pub fn is_peer_error(&self) -> bool {
        matches!(
            self,
            BufferError::TooManySegments { .. }
                | BufferError::SegmentCrossesPage { .. }
                | BufferError::LengthMismatch { .. }
                | BufferError::Grant { .. }
        )
    }
}

impl From<ShmError> for BufferError {
    fn from(e: ShmError) -> Self {
        BufferError::Shm(e)
    }
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferError::TooManySegments { count, max } => {
                write!(f, "{count} segments, at most {max} allowed")
            }
            BufferError::SegmentCrossesPage {
                index,
                offset,
                length,
            } => {
                write!(
                    f,
                    "segment {index} ({offset}+{length}) crosses the page end"
                )
            }
            BufferError::LengthMismatch { declared, sum } => {
                write!(f, "segments add up to {sum} bytes, {declared} declared")
            }
            BufferError::Grant {
                index,
                gref,
                status,
            } => {
                write!(f, "segment {index} ({gref}): {}", status.describe())
            }
            BufferError::Xen(e) => write!(f, "{e}"),
            BufferError::NoResources { needed, free } => {
                write!(f, "{needed} slots needed, {free} free")
            }
            BufferError::WrongMapper => write!(f, "buffer belongs to another connection"),
            BufferError::OutOfRange { offset, len, size } => {
                write!(f, "access {offset}+{len} outside a {size}-byte buffer")
            }
            BufferError::Shm(e) => write!(f, "{e}"),
        }
    }
}

/// Which way data moves between the device (or backend) and the peer's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We only read the peer's buffer (OUT transfers): mapped read-only.
    ToDevice,
    /// We write the peer's buffer (IN transfers): mapped writable.
    FromDevice,
}

/// A validated list of a peer's grant segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBuffer {
    dom: DomId,
    dir: Direction,
    segs: heapless::Vec<RequestSegment, MAX_SEGMENTS>,
    len: u32,
}

impl RemoteBuffer {
    /// Validate `segs` (copied out of the ring) against `declared_len`.
    pub fn new(
        dom: DomId,
        dir: Direction,
        segs: &[RequestSegment],
        declared_len: u32,
    ) -> Result<RemoteBuffer, BufferError> {
        if segs.len() > MAX_SEGMENTS {
            return Err(BufferError::TooManySegments {
                count: segs.len(),
                max: MAX_SEGMENTS,
            });
        }
        let mut sum = 0u32;
        for (index, s) in segs.iter().enumerate() {
            if s.offset as usize + s.length as usize > PAGE_SIZE {
                return Err(BufferError::SegmentCrossesPage {
                    index,
                    offset: s.offset,
                    length: s.length,
                });
            }
            sum += s.length as u32;
        }
        if sum != declared_len {
            return Err(BufferError::LengthMismatch {
                declared: declared_len,
                sum,
            });
        }
        let mut v = heapless::Vec::new();
        // Cannot fail: length checked above.
        let _ = v.extend_from_slice(segs);
        Ok(RemoteBuffer {
            dom,
            dir,
            segs: v,
            len: sum,
        })
    }

    pub fn dom(&self) -> DomId {
        self.dom
    }
    pub fn direction(&self) -> Direction {
        self.dir
    }
    pub fn segments(&self) -> &[RequestSegment] {
        &self.segs
    }
    /// Total length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mapped,
    Bounced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    slot: u16,
    offset: u16,
    len: u16,
    gref: GrantRef,
}

/// A remote buffer made local by a [`Mapper`]: a list of pieces, each within one page, with bus
/// addresses for DMA. Not `Clone`: it is given back exactly once with [`Mapper::release`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a LocalBuffer must be given back with Mapper::release before responding"]
pub struct LocalBuffer {
    owner: u32,
    kind: Kind,
    dom: DomId,
    len: u32,
    parts: heapless::Vec<Part, MAX_SEGMENTS>,
}

impl LocalBuffer {
    /// Total length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// True if the buffer is the peer's pages mapped (zero copy), false if bounce pages.
    pub fn is_zero_copy(&self) -> bool {
        self.kind == Kind::Mapped
    }
    /// Number of pieces (one per remote segment).
    pub fn piece_count(&self) -> usize {
        self.parts.len()
    }
}

static NEXT_MAPPER_ID: AtomicU32 = AtomicU32::new(1);

/// Per-connection mapping slots and bounce pages, reserved up front.
pub struct Mapper<H: Hypervisor> {
    id: u32,
    dom: DomId,
    maps: Vec<Option<Mapping<H::Mem>>>,
    free_maps: Vec<u16>,
    bounce: Vec<LocalPage<H::Page>>,
    free_bounce: Vec<u16>,
    copy_ops: Vec<CopyOp>,
    /// Reused by [`Mapper::map`] and the releases, so the data path does not allocate.
    map_results: Vec<MapResult<H::Mem>>,
    unmap_batch: Vec<Mapping<H::Mem>>,
}

impl<H: Hypervisor> Mapper<H> {
    /// Reserve `map_slots` mapping slots and allocate `bounce_pages` bounce pages for buffers of
    /// peer `dom`.
    pub fn new(
        hv: &mut H,
        dom: DomId,
        map_slots: usize,
        bounce_pages: usize,
    ) -> Result<Self, BufferError> {
        let map_slots = map_slots.min(u16::MAX as usize);
        let bounce_pages = bounce_pages.min(u16::MAX as usize);
        let mut bounce = Vec::with_capacity(bounce_pages);
        for _ in 0..bounce_pages {
            match hv.alloc_page() {
                Ok(p) => bounce.push(p),
                Err(e) => {
                    for p in bounce {
                        hv.free_page(p);
                    }
                    return Err(BufferError::Xen(e));
                }
            }
        }
        let mut maps = Vec::with_capacity(map_slots);
        maps.resize_with(map_slots, || None);
        Ok(Mapper {
            id: NEXT_MAPPER_ID.fetch_add(1, Ordering::Relaxed),
            dom,
            maps,
            free_maps: (0..map_slots as u16).rev().collect(),
            bounce,
            free_bounce: (0..bounce_pages as u16).rev().collect(),
            copy_ops: Vec::with_capacity(MAX_SEGMENTS),
            map_results: Vec::with_capacity(MAX_SEGMENTS),
            unmap_batch: Vec::with_capacity(MAX_SEGMENTS),
        })
    }

    /// Mapping slots currently holding a mapping.
    pub fn mapped_now(&self) -> usize {
        self.maps.len() - self.free_maps.len()
    }
    /// Bounce pages currently in use.
    pub fn bounce_in_use(&self) -> usize {
        self.bounce.len() - self.free_bounce.len()
    }

    fn check_owner(&self, buf: &LocalBuffer) -> Result<(), BufferError> {
        if buf.owner != self.id {
            return Err(BufferError::WrongMapper);
        }
        Ok(())
    }

    /// Grant-map every segment of `rb` (read-only for [`Direction::ToDevice`]) with one batched
    /// map call. On failure nothing stays mapped: the segments that did map are unmapped again in
    /// one batch, and the first failed segment is reported.
    pub fn map(&mut self, hv: &mut H, rb: &RemoteBuffer) -> Result<LocalBuffer, BufferError> {
        let n = rb.segs.len();
        if n > self.free_maps.len() {
            return Err(BufferError::NoResources {
                needed: n,
                free: self.free_maps.len(),
            });
        }
        let readonly = rb.dir == Direction::ToDevice;
        let mut reqs: heapless::Vec<MapRequest, MAX_SEGMENTS> = heapless::Vec::new();
        for s in rb.segs.iter() {
            // Cannot fail: a RemoteBuffer has at most MAX_SEGMENTS segments.
            let _ = reqs.push(MapRequest {
                dom: rb.dom,
                gref: s.gref,
                readonly,
            });
        }
        self.map_results.clear();
        hv.map_grants(&reqs, &mut self.map_results);
        let mut buf = LocalBuffer {
            owner: self.id,
            kind: Kind::Mapped,
            dom: rb.dom,
            len: rb.len,
            parts: heapless::Vec::new(),
        };
        let mut failed = None;
        let mut results = core::mem::take(&mut self.map_results);
        for (index, r) in results.drain(..).enumerate() {
            match (r, rb.segs.get(index)) {
                (Ok(m), Some(s)) if failed.is_none() => {
                    let slot = self.free_maps.pop().expect("checked above");
                    self.maps[slot as usize] = Some(m);
                    let _ = buf.parts.push(Part {
                        slot,
                        offset: s.offset,
                        len: s.length,
                        gref: s.gref,
                    });
                }
                // After a failure (or beyond the request, from a misbehaving implementation):
                // not kept; unmapped with the others below.
                (Ok(m), _) => self.unmap_batch.push(m),
                (Err(e), _) => {
                    failed.get_or_insert(match e.code {
                        XenCode::Grant(status) => BufferError::Grant {
                            index,
                            gref: rb.segs.get(index).map_or(GrantRef(0), |s| s.gref),
                            status,
                        },
                        _ => BufferError::Xen(e),
                    });
                }
            }
        }
        self.map_results = results;
        if failed.is_none() && buf.parts.len() != n {
            // The hypervisor answered fewer requests than it was given.
            failed = Some(BufferError::Xen(XenError::errno(
                XenOp::GrantMap {
                    dom: rb.dom,
                    gref: rb.segs[buf.parts.len()].gref,
                    readonly,
                },
                crate::abi::errno::EINVAL,
            )));
        }
        match failed {
            None => {
                if !self.unmap_batch.is_empty() {
                    // Mappings beyond the request (a misbehaving implementation): not ours.
                    let _ = hv.unmap_grants(self.unmap_batch.drain(..));
                }
                Ok(buf)
            }
            Some(e) => {
                self.take_mappings(&buf);
                let _ = hv.unmap_grants(self.unmap_batch.drain(..));
                Err(e)
            }
        }
    }

    /// Move the mappings of `buf`'s pieces into `unmap_batch` and free their slots.
    fn take_mappings(&mut self, buf: &LocalBuffer) {
        for p in buf.parts.iter() {
            if let Some(m) = self.maps[p.slot as usize].take() {
                self.unmap_batch.push(m);
                self.free_maps.push(p.slot);
            }
        }
    }

    /// Reserve one bounce page per segment of `rb` (same in-page offsets, so the pieces have the
    /// same DMA shape as the peer's). No data is copied yet.
    pub fn bounce(&mut self, rb: &RemoteBuffer) -> Result<LocalBuffer, BufferError> {
        let n = rb.segs.len();
        if n > self.free_bounce.len() {
            return Err(BufferError::NoResources {
                needed: n,
                free: self.free_bounce.len(),
            });
        }
        let mut buf = LocalBuffer {
            owner: self.id,
            kind: Kind::Bounced,
            dom: rb.dom,
            len: rb.len,
            parts: heapless::Vec::new(),
        };
        for s in rb.segs.iter() {
            let slot = self.free_bounce.pop().expect("checked above");
            let _ = buf.parts.push(Part {
                slot,
                offset: s.offset,
                len: s.length,
                gref: s.gref,
            });
        }
        Ok(buf)
    }

    /// Append the grant-copy operations that move the first `limit` bytes of `buf` between its
    /// bounce pages and the peer's pages (none for a mapped buffer).
    fn push_copy_ops(
        &mut self,
        buf: &LocalBuffer,
        to_local: bool,
        limit: usize,
    ) -> Result<(), BufferError> {
        self.check_owner(buf)?;
        if buf.kind != Kind::Bounced {
            return Ok(());
        }
        let mut left = limit;
        for p in buf.parts.iter() {
            if left == 0 {
                break;
            }
            let len = (p.len as usize).min(left);
            left -= len;
            let remote = CopyPtr::Grant {
                dom: buf.dom,
                gref: p.gref,
                offset: p.offset,
            };
            let local = CopyPtr::Local {
                frame: self.bounce[p.slot as usize].frame,
                offset: p.offset,
            };
            let (src, dst) = if to_local {
                (remote, local)
            } else {
                (local, remote)
            };
            self.copy_ops.push(CopyOp::new(src, dst, len as u16));
        }
        Ok(())
    }

    /// The outcome of the operations `ops` (pushed by [`Mapper::push_copy_ops`] for `buf`) after
    /// the hypercall: the first piece that failed, with its grant status.
    fn copy_result(buf: &LocalBuffer, ops: &[CopyOp]) -> Result<(), BufferError> {
        for (index, op) in ops.iter().enumerate() {
            if op.status != GntStatus::OKAY {
                return Err(BufferError::Grant {
                    index,
                    gref: buf.parts[index].gref,
                    status: op.status,
                });
            }
        }
        Ok(())
    }

    /// Copy the first `limit` bytes of the buffer between the bounce pages and the peer's.
    fn copy(
        &mut self,
        hv: &mut H,
        buf: &LocalBuffer,
        to_local: bool,
        limit: usize,
    ) -> Result<(), BufferError> {
        self.copy_ops.clear();
        self.push_copy_ops(buf, to_local, limit)?;
        if self.copy_ops.is_empty() {
            return Ok(());
        }
        hv.grant_copy(&mut self.copy_ops)
            .map_err(BufferError::Xen)?;
        Self::copy_result(buf, &self.copy_ops)
    }

    /// Bounce buffers, after IN transfers: copy back the first `len` bytes of each buffer, what
    /// its transfer delivered, with the pieces of all of them in as few grant-copy hypercalls as
    /// the hypervisor layer allows, instead of one or more per buffer. The peer's bytes past
    /// `len` are not written (nor is anything earlier transfers left in the bounce pages copied
    /// to it), a short transfer costs no copy of what it did not fill, and nothing to copy makes
    /// no hypercall. Mapped buffers need no copy. Returns one result per buffer, in order.
    pub fn copy_out_many(
        &mut self,
        hv: &mut H,
        items: &[(&LocalBuffer, usize)],
    ) -> Vec<Result<(), BufferError>> {
        self.copy_ops.clear();
        let mut ranges = Vec::with_capacity(items.len());
        for (buf, len) in items {
            let start = self.copy_ops.len();
            let r = self.push_copy_ops(buf, false, (*len).min(buf.len as usize));
            ranges.push(r.map(|()| start..self.copy_ops.len()));
        }
        let call = if self.copy_ops.is_empty() {
            Ok(())
        } else {
            hv.grant_copy(&mut self.copy_ops)
        };
        items
            .iter()
            .zip(ranges)
            .map(|((buf, _), range)| {
                let range = range?;
                call.map_err(BufferError::Xen)?;
                Self::copy_result(buf, &self.copy_ops[range])
            })
            .collect()
    }

    /// Bounce buffers: copy the peer's data into the bounce pages (before an OUT transfer).
    /// No-op for mapped buffers.
    pub fn copy_in(&mut self, hv: &mut H, buf: &LocalBuffer) -> Result<(), BufferError> {
        self.copy(hv, buf, true, buf.len as usize)
    }

    /// Bounce buffers: copy the bounce pages back to the peer (after an IN transfer).
    /// No-op for mapped buffers.
    pub fn copy_out(&mut self, hv: &mut H, buf: &LocalBuffer) -> Result<(), BufferError> {
        self.copy(hv, buf, false, buf.len as usize)
    }

    /// Call `f(bus_addr, len)` for each piece, in order: the DMA scatter list.
    pub fn for_each_bus_segment(
        &self,
        buf: &LocalBuffer,
        mut f: impl FnMut(u64, u16),
    ) -> Result<(), BufferError> {
        self.check_owner(buf)?;
        for p in buf.parts.iter() {
            let base = match buf.kind {
                Kind::Mapped => self.maps[p.slot as usize]
                    .as_ref()
                    .map(|m| m.bus_addr)
                    .unwrap_or(0),
                Kind::Bounced => self.bounce[p.slot as usize].bus_addr,
            };
            f(base + p.offset as u64, p.len);
        }
        Ok(())
    }

    fn piece_mem(&self, kind: Kind, slot: u16) -> Option<&dyn SharedMemDyn> {
        match kind {
            Kind::Mapped => self.maps[slot as usize]
                .as_ref()
                .map(|m| &m.mem as &dyn SharedMemDyn),
            Kind::Bounced => Some(&self.bounce[slot as usize].mem as &dyn SharedMemDyn),
        }
    }

    fn walk(
        &self,
        buf: &LocalBuffer,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&dyn SharedMemDyn, usize, core::ops::Range<usize>) -> Result<(), ShmError>,
    ) -> Result<(), BufferError> {
        self.check_owner(buf)?;
        if offset.checked_add(len).is_none_or(|e| e > buf.len as usize) {
            return Err(BufferError::OutOfRange {
                offset,
                len,
                size: buf.len as usize,
            });
        }
        let mut pos = 0usize; // start of the current piece in buffer coordinates
        let mut done = 0usize;
        for p in buf.parts.iter() {
            let plen = p.len as usize;
            let want = offset + done;
            if done < len && want < pos + plen {
                let within = want - pos;
                let n = core::cmp::min(plen - within, len - done);
                let mem = self
                    .piece_mem(buf.kind, p.slot)
                    .ok_or(BufferError::WrongMapper)?;
                f(mem, p.offset as usize + within, done..done + n)?;
                done += n;
            }
            pos += plen;
        }
        Ok(())
    }

    /// CPU read of `dst.len()` bytes at `offset` of the buffer (for data the backend itself
    /// consumes, e.g. a control request's OUT data).
    pub fn read(
        &self,
        buf: &LocalBuffer,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), BufferError> {
        let len = dst.len();
        let cell = core::cell::RefCell::new(dst);
        self.walk(buf, offset, len, |mem, at, r| {
            mem.dyn_read(at, &mut cell.borrow_mut()[r])
        })
    }

    /// CPU write of `src` at `offset` of the buffer (for data the backend produces itself, e.g. a
    /// virtualised descriptor). Mapped read-only buffers refuse writes.
    pub fn write(&self, buf: &LocalBuffer, offset: usize, src: &[u8]) -> Result<(), BufferError> {
        self.walk(buf, offset, src.len(), |mem, at, r| {
            mem.dyn_write(at, &src[r])
        })
    }

    /// Give a buffer back: unmap its segments (one batched unmap call) or free its bounce pages.
    /// Call before responding. Every piece is released even if some unmap fails; the first error
    /// is returned.
    pub fn release(&mut self, hv: &mut H, buf: LocalBuffer) -> Result<(), BufferError> {
        self.check_owner(&buf)?;
        match buf.kind {
            Kind::Mapped => {
                self.take_mappings(&buf);
                if self.unmap_batch.is_empty() {
                    return Ok(());
                }
                hv.unmap_grants(self.unmap_batch.drain(..))
                    .map_err(BufferError::Xen)
            }
            Kind::Bounced => {
                for p in buf.parts.iter() {
                    self.free_bounce.push(p.slot);
                }
                Ok(())
            }
        }
    }

    /// The connection is going away: unmap every mapping still held (batched) and free the
    /// bounce pages. Returns the number of mappings that were still held. Outstanding
    /// [`LocalBuffer`]s of this mapper become invalid (their use returns
    /// [`BufferError::WrongMapper`]).
    pub fn teardown(mut self, hv: &mut H) -> usize {
        let n = self.maps.iter().filter(|m| m.is_some()).count();
        if n > 0 {
            let _ = hv.unmap_grants(self.maps.iter_mut().filter_map(Option::take));
        }
        for p in self.bounce.drain(..) {
            hv.free_page(p);
        }
        n
    }

    /// The peer domain of this mapper.
    pub fn dom(&self) -> DomId {
        self.dom
    }
}

/// Object-safe byte access used internally to walk buffers of either kind.
trait SharedMemDyn {
    fn dyn_read(&self, at: usize, dst: &mut [u8]) -> Result<(), ShmError>;
    fn dyn_write(&self, at: usize, src: &[u8]) -> Result<(), ShmError>;
}

impl<M: SharedMem> SharedMemDyn for M {
    fn dyn_read(&self, at: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        self.read_bytes(at, dst)
    }
    fn dyn_write(&self, at: usize, src: &[u8]) -> Result<(), ShmError> {
        self.write_bytes(at, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Sim, SimDomain};

    const FE: DomId = DomId(2);
    const BE: DomId = DomId(1);

    fn seg(gref: GrantRef, offset: u16, length: u16) -> RequestSegment {
        RequestSegment {
            gref,
            offset,
            length,
        }
    }

    /// Frontend pages granted to the backend; page i holds byte i + 1.
    fn granted(fe: &mut SimDomain, n: usize, readonly: bool) -> Vec<GrantRef> {
        (0..n)
            .map(|i| {
                let p = fe.alloc_page().unwrap();
                p.mem.fill(0, PAGE_SIZE, i as u8 + 1).unwrap();
                fe.grant_access(p.frame, BE, readonly).unwrap()
            })
            .collect()
    }

    fn setup() -> (Sim, SimDomain, SimDomain) {
        let sim = Sim::new();
        let be = sim.add_domain(BE);
        let fe = sim.add_domain(FE);
        (sim, be, fe)
    }

    #[test]
    fn a_request_is_mapped_and_released_with_one_call_each() {
        let (sim, mut be, mut fe) = setup();
        let grefs = granted(&mut fe, MAX_SEGMENTS, false);
        let segs: Vec<_> = grefs.iter().map(|g| seg(*g, 0, 512)).collect();
        let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 512 * 16).unwrap();
        let mut mapper = Mapper::new(&mut be, FE, 32, 0).unwrap();
        let lb = mapper.map(&mut be, &rb).unwrap();
        let s = be.stats();
        assert_eq!((s.map_calls, s.maps_total, s.foreign_maps), (1, 16, 16));
        // Each piece is its own page, in order.
        let mut b = [0u8; 1];
        for i in 0..MAX_SEGMENTS {
            mapper.read(&lb, i * 512, &mut b).unwrap();
            assert_eq!(b[0], i as u8 + 1);
        }
        assert_eq!(sim.stats(FE).grants_mapped_by_others, 16);
        mapper.release(&mut be, lb).unwrap();
        let s = be.stats();
        assert_eq!((s.unmap_calls, s.unmaps_total, s.foreign_maps), (1, 16, 0));
        assert_eq!(sim.stats(FE).grants_mapped_by_others, 0);
        assert_eq!(mapper.mapped_now(), 0);
    }

    #[test]
    fn one_bad_grant_among_good_ones_leaves_nothing_mapped() {
        let (sim, mut be, mut fe) = setup();
        let good = granted(&mut fe, 3, false);
        let bad = GrantRef(1500);
        let segs = [
            seg(good[0], 0, 8),
            seg(bad, 0, 8),
            seg(good[1], 0, 8),
            seg(good[2], 0, 8),
        ];
        let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 32).unwrap();
        let mut mapper = Mapper::new(&mut be, FE, 4, 0).unwrap();
        let e = mapper.map(&mut be, &rb).unwrap_err();
        assert_eq!(
            e,
            BufferError::Grant {
                index: 1,
                gref: bad,
                status: GntStatus::GENERAL_ERROR
            }
        );
        assert!(e.is_peer_error());
        let s = be.stats();
        // One batch to map (three succeed, one fails), one batch to undo the three.
        assert_eq!((s.map_calls, s.maps_total, s.map_failures), (1, 3, 1));
        assert_eq!((s.unmap_calls, s.unmaps_total, s.foreign_maps), (1, 3, 0));
        assert_eq!(sim.stats(FE).grants_mapped_by_others, 0);
        assert_eq!(mapper.mapped_now(), 0);
        // Every slot is free again: a good 4-segment buffer fits into the 4 slots.
        let segs: Vec<_> = [good[0], good[1], good[2], good[0]]
            .iter()
            .map(|g| seg(*g, 0, 8))
            .collect();
        let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 32).unwrap();
        let lb = mapper.map(&mut be, &rb).unwrap();
        assert_eq!(mapper.mapped_now(), 4);
        mapper.release(&mut be, lb).unwrap();
        assert_eq!(be.stats().foreign_maps, 0);
    }

    #[test]
    fn a_read_only_grant_mapped_for_writing_fails_its_batch_cleanly() {
        let (sim, mut be, mut fe) = setup();
        let rw = granted(&mut fe, 1, false);
        let ro = granted(&mut fe, 1, true);
        // An IN transfer writes the peer's pages: the read-only grant is refused.
        let segs = [seg(rw[0], 0, 8), seg(ro[0], 0, 8)];
        let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 16).unwrap();
        let mut mapper = Mapper::new(&mut be, FE, 4, 0).unwrap();
        let e = mapper.map(&mut be, &rb).unwrap_err();
        assert!(matches!(e, BufferError::Grant { index: 1, gref, .. } if gref == ro[0]));
        assert_eq!(be.stats().foreign_maps, 0);
        assert_eq!(sim.stats(FE).grants_mapped_by_others, 0);
        // The same segments for an OUT transfer (read-only maps) are fine.
        let rb = RemoteBuffer::new(FE, Direction::ToDevice, &segs, 16).unwrap();
        let lb = mapper.map(&mut be, &rb).unwrap();
        assert!(mapper.write(&lb, 0, &[1]).is_err(), "read-only mapping");
        mapper.release(&mut be, lb).unwrap();
    }

    #[test]
    fn teardown_unmaps_everything_still_held_in_one_call() {
        let (sim, mut be, mut fe) = setup();
        let grefs = granted(&mut fe, 6, false);
        let mut mapper = Mapper::new(&mut be, FE, 16, 2).unwrap();
        let mut held = Vec::new();
        for c in grefs.chunks(3) {
            let segs: Vec<_> = c.iter().map(|g| seg(*g, 0, 4)).collect();
            let rb = RemoteBuffer::new(FE, Direction::FromDevice, &segs, 12).unwrap();
            held.push(mapper.map(&mut be, &rb).unwrap());
        }
        let before = be.stats().unmap_calls;
        assert_eq!(mapper.teardown(&mut be), 6);
        let s = be.stats();
        assert_eq!((s.unmap_calls - before, s.foreign_maps, s.pages), (1, 0, 0));
        assert_eq!(sim.stats(FE).grants_mapped_by_others, 0);
        drop(held);
    }

    #[test]
    fn releasing_a_bounced_buffer_makes_no_grant_call() {
        let (_sim, mut be, mut fe) = setup();
        let grefs = granted(&mut fe, 2, false);
        let segs = [seg(grefs[0], 0, 8), seg(grefs[1], 0, 8)];
        let rb = RemoteBuffer::new(FE, Direction::ToDevice, &segs, 16).unwrap();
        let mut mapper = Mapper::new(&mut be, FE, 4, 2).unwrap();
        let lb = mapper.bounce(&rb).unwrap();
        mapper.copy_in(&mut be, &lb).unwrap();
        let mut b = [0u8; 1];
        mapper.read(&lb, 8, &mut b).unwrap();
        assert_eq!(b[0], 2);
        mapper.release(&mut be, lb).unwrap();
        let s = be.stats();
        assert_eq!((s.map_calls, s.unmap_calls, s.copies_total), (0, 0, 2));
        assert_eq!(mapper.bounce_in_use(), 0);
    }
}
