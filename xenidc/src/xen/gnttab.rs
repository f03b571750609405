//! Our own grant table, version 1 (Xen `grant_table.h`): the frames Xen gives us with
//! `GNTTABOP_setup_table`, mapped into our address space, and the allocation of grant references
//! in them.
//!
//! Granting: write `domid` and `frame`, a write barrier, then `flags = GTF_permit_access` (plus
//! `GTF_readonly`) — Xen may read the entry as soon as the flags say it is valid. Revoking:
//! atomically replace the flags with 0 unless Xen has set `GTF_reading`/`GTF_writing` (the peer
//! still has the frame mapped), in which case the entry must stay valid.

use crate::abi::grant::{gtf, ENTRIES_PER_FRAME, NR_RESERVED_ENTRIES};
use crate::abi::{DomId, GrantRef, PAGE_SIZE};
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU16, Ordering};

/// Errors of the grant table itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GnttabError {
    /// All references are in use.
    Full,
    /// The reference is not one we handed out.
    NotGranted,
    /// The grantee still has the frame mapped (`GTF_reading`/`GTF_writing`).
    InUse,
    /// The frame does not fit the 32-bit v1 entry.
    FrameTooLarge,
}

/// The mapped grant-table frames and the free list of references.
pub struct GrantTable {
    base: NonNull<u8>,
    nr_entries: u32,
    free: Vec<u32>,
    granted: Vec<bool>,
}

const ENTRY_SIZE: usize = 8;
const FLAGS: usize = 0;
const DOMID: usize = 2;
const FRAME: usize = 4;

impl GrantTable {
    /// Take over `nr_frames` grant-table frames mapped contiguously at `base`.
    ///
    /// # Safety
    /// `base` must map our grant-table frames (from `GNTTABOP_setup_table`), `nr_frames` pages,
    /// writable, for the rest of the program, and nothing else may write them.
    pub unsafe fn new(base: NonNull<u8>, nr_frames: u32) -> GrantTable {
        let nr_entries = nr_frames * ENTRIES_PER_FRAME as u32;
        // Hand out low references first (pop from the end).
        let free: Vec<u32> = (NR_RESERVED_ENTRIES..nr_entries).rev().collect();
        GrantTable {
            base,
            nr_entries,
            free,
            granted: alloc::vec![false; nr_entries as usize],
        }
    }

    /// Number of references (including the reserved ones).
    pub fn capacity(&self) -> u32 {
        self.nr_entries
    }

    /// References still free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    fn entry(&self, gref: u32) -> *mut u8 {
        debug_assert!(gref < self.nr_entries);
        self.base.as_ptr().wrapping_add(gref as usize * ENTRY_SIZE)
    }

    fn flags(&self, gref: u32) -> &AtomicU16 {
        // SAFETY: `gref < nr_entries`, so the entry lies in the mapped frames (constructor
        // contract); the flags field is 2-byte aligned; Xen updates it concurrently, so it is
        // only accessed atomically.
        unsafe { AtomicU16::from_ptr(self.entry(gref).add(FLAGS) as *mut u16) }
    }

    /// Grant `to` access to machine frame `frame`.
    pub fn grant(
        &mut self,
        frame: u64,
        to: DomId,
        readonly: bool,
    ) -> Result<GrantRef, GnttabError> {
        let frame: u32 = frame.try_into().map_err(|_| GnttabError::FrameTooLarge)?;
        let gref = self.free.pop().ok_or(GnttabError::Full)?;
        let e = self.entry(gref);
        // SAFETY: the entry is inside the mapped frames and free (flags 0: Xen does not use it);
        // domid and frame are naturally aligned fields of the 8-byte entry.
        unsafe {
            core::ptr::write_volatile(e.add(DOMID) as *mut u16, to.0);
            core::ptr::write_volatile(e.add(FRAME) as *mut u32, frame);
        }
        // The entry must be complete before Xen can see it valid.
        fence(Ordering::Release);
        let flags = gtf::PERMIT_ACCESS | if readonly { gtf::READONLY } else { 0 };
        self.flags(gref).store(flags, Ordering::Release);
        self.granted[gref as usize] = true;
        Ok(GrantRef(gref))
    }

    /// Revoke a grant. Fails with [`GnttabError::InUse`] while the grantee has it mapped; the
    /// entry then stays valid and the reference stays allocated.
    pub fn end(&mut self, gref: GrantRef) -> Result<(), GnttabError> {
        let g = gref.0;
        if g >= self.nr_entries || !self.granted[g as usize] {
            return Err(GnttabError::NotGranted);
        }
        let f = self.flags(g);
        let mut cur = f.load(Ordering::Acquire);
        loop {
            if cur & (gtf::READING | gtf::WRITING) != 0 {
                return Err(GnttabError::InUse);
            }
            match f.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.granted[g as usize] = false;
        self.free.push(g);
        Ok(())
    }

    /// Whether the grantee currently has `gref` mapped or is copying it.
    pub fn in_use(&self, gref: GrantRef) -> bool {
        let g = gref.0;
        if g >= self.nr_entries || !self.granted[g as usize] {
            return false;
        }
        self.flags(g).load(Ordering::Acquire) & (gtf::READING | gtf::WRITING) != 0
    }
}

/// Size in bytes of `nr_frames` grant-table frames.
pub const fn table_bytes(nr_frames: u32) -> usize {
    nr_frames as usize * PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant-table frame in host memory; `entry(i)` reads what Xen would see.
    struct Frame(Vec<u64>);

    impl Frame {
        fn new() -> Frame {
            Frame(alloc::vec![0u64; PAGE_SIZE / 8])
        }
        fn table(&mut self) -> GrantTable {
            let p = NonNull::new(self.0.as_mut_ptr() as *mut u8).unwrap();
            // SAFETY: the frame outlives the table in each test and is accessed only through it
            // (and through `entry`, which reads after the table's writes).
            unsafe { GrantTable::new(p, 1) }
        }
        fn entry(&self, g: GrantRef) -> (u16, u16, u32) {
            let v = self.0[g.0 as usize];
            (v as u16, (v >> 16) as u16, (v >> 32) as u32)
        }
    }

    #[test]
    fn grant_writes_a_valid_v1_entry_outside_the_reserved_range() {
        let mut f = Frame::new();
        let mut t = f.table();
        let g = t.grant(0x1234_5678, DomId(3), false).unwrap();
        assert_eq!(g, GrantRef(NR_RESERVED_ENTRIES));
        let ro = t.grant(0x42, DomId(0), true).unwrap();
        assert_eq!(ro, GrantRef(NR_RESERVED_ENTRIES + 1));
        assert_eq!(t.available(), 512 - 8 - 2);
        drop(t);
        assert_eq!(f.entry(g), (gtf::PERMIT_ACCESS, 3, 0x1234_5678));
        assert_eq!(f.entry(ro), (gtf::PERMIT_ACCESS | gtf::READONLY, 0, 0x42));
        // Reserved entries untouched.
        assert_eq!(f.entry(GrantRef(0)), (0, 0, 0));
    }

    #[test]
    fn end_access_refuses_while_mapped_and_recycles_after() {
        let mut f = Frame::new();
        let p = f.0.as_mut_ptr();
        let mut t = f.table();
        let g = t.grant(9, DomId(1), false).unwrap();
        // Xen sets GTF_reading while the peer has the frame mapped.
        // SAFETY: test-only write of the entry's flags word, standing in for Xen.
        unsafe { *(p.add(g.0 as usize) as *mut u16) |= gtf::READING };
        assert!(t.in_use(g));
        assert_eq!(t.end(g), Err(GnttabError::InUse));
        // The entry stayed valid.
        // SAFETY: test-only read, as above.
        assert_eq!(
            unsafe { *(p.add(g.0 as usize) as *const u16) },
            gtf::PERMIT_ACCESS | gtf::READING
        );
        // The peer unmaps.
        // SAFETY: as above.
        unsafe { *(p.add(g.0 as usize) as *mut u16) &= !gtf::READING };
        assert!(!t.in_use(g));
        assert_eq!(t.end(g), Ok(()));
        assert_eq!(t.end(g), Err(GnttabError::NotGranted));
        // The reference is handed out again, with the new contents.
        assert_eq!(t.grant(10, DomId(2), false).unwrap(), g);
        drop(t);
        assert_eq!(f.entry(g), (gtf::PERMIT_ACCESS, 2, 10));
    }

    #[test]
    fn table_full_and_bad_frames_are_errors() {
        let mut f = Frame::new();
        let mut t = f.table();
        assert_eq!(
            t.grant(1 << 32, DomId(1), false),
            Err(GnttabError::FrameTooLarge)
        );
        for _ in 0..(512 - 8) {
            t.grant(1, DomId(1), true).unwrap();
        }
        assert_eq!(t.grant(1, DomId(1), true), Err(GnttabError::Full));
        assert_eq!(t.end(GrantRef(600)), Err(GnttabError::NotGranted));
        assert!(!t.in_use(GrantRef(600)));
    }
}
