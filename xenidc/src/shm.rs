//! Shared memory access: the only way usbdom code touches a page shared with another domain (a
//! ring page, a granted data page, the xenstore or console page).
//!
//! Shared memory can change under our feet at any moment, written by a peer we do not trust, so it
//! is never a Rust reference: every access goes through a [`SharedMem`] method, which copies the
//! value in or out. Ring indices use [`SharedMem::load_u32_acquire`] and
//! [`SharedMem::store_u32_release`], and a full barrier ([`SharedMem::fence`], the `mb()` of Xen
//! `io/ring.h`) where the ring protocol demands one. Out-of-range or misaligned accesses return
//! [`ShmError`]; they are never undefined behaviour. Multi-byte values are little-endian (x86).
//!
//! [`HostMem`] is the safe implementation over owned memory used by the simulated hypervisor and
//! the host tests. The real-Xen implementation (a raw pointer to a mapped page) lives in
//! `crate::xen`.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// A failed shared-memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmError {
    /// `offset + len` lies outside the `size`-byte region.
    OutOfRange {
        offset: usize,
        len: usize,
        size: usize,
    },
    /// A multi-byte access at an offset that is not a multiple of its width.
    Misaligned { offset: usize, width: usize },
    /// A write through a read-only view (a grant mapped read-only).
    ReadOnly { offset: usize },
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmError::OutOfRange { offset, len, size } => write!(
                f,
                "shared memory access at {offset:#x}+{len} outside a region of {size:#x} bytes"
            ),
            ShmError::Misaligned { offset, width } => {
                write!(
                    f,
                    "misaligned {width}-byte shared memory access at {offset:#x}"
                )
            }
            ShmError::ReadOnly { offset } => {
                write!(f, "write at {offset:#x} through a read-only mapping")
            }
        }
    }
}

/// Result of a shared-memory access.
pub type ShmResult<T> = Result<T, ShmError>;

/// Check that `[offset, offset + len)` lies within `size` bytes and that `offset` is a multiple of
/// `align`. Implementations call this before every access.
#[inline]
pub fn check(offset: usize, len: usize, align: usize, size: usize) -> ShmResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => {}
        _ => return Err(ShmError::OutOfRange { offset, len, size }),
    }
    if align > 1 && !offset.is_multiple_of(align) {
        return Err(ShmError::Misaligned {
            offset,
            width: align,
        });
    }
    Ok(())
}

/// A region of memory shared with another domain (or with the hypervisor).
///
/// # What an implementation must guarantee
///
/// The real-Xen implementation (raw pointer to a mapped page, in `crate::xen`) must:
/// - check every access with [`check`] (bounds against [`SharedMem::size`] and natural alignment)
///   and return the error instead of touching memory — never undefined behaviour, never a panic;
/// - perform each scalar access as exactly one volatile access of that width
///   (`ptr::read_volatile`/`write_volatile` of a `u8`/`u16`/`u32`/`u64`), so the compiler neither
///   tears, merges, elides nor repeats it; multi-byte values are little-endian;
/// - implement [`SharedMem::read_bytes`]/[`SharedMem::write_bytes`] as volatile copies (any
///   granularity; the caller copies *once* and validates the copy, so tearing against a concurrent
///   peer write is harmless);
/// - make [`SharedMem::load_u32_acquire`] a 4-byte atomic load with at least acquire ordering (later
///   reads of the region are not performed before it; x86: plain `mov` plus a compiler fence) and
///   [`SharedMem::store_u32_release`] a 4-byte atomic store with release ordering (earlier writes are
///   visible before it) — the `rmb()`/`wmb()` of `io/ring.h`;
/// - make [`SharedMem::fence`] a full barrier (`mb()`, `mfence` or a locked instruction on x86)
///   ordering earlier stores before later loads;
/// - refuse writes through a read-only view (a grant mapped with `GNTMAP_readonly`) with
///   [`ShmError::ReadOnly`] instead of faulting;
/// - keep the memory mapped for as long as the value lives (a grant mapping is unmapped only by
///   consuming the mapping through `Hypervisor::unmap_grant`).
///
/// Methods take `&self`: shared memory is written concurrently by the peer anyway, and Rust never
/// holds a reference into it.
pub trait SharedMem {
    /// Size of the region in bytes.
    fn size(&self) -> usize;
    fn read_u8(&self, offset: usize) -> ShmResult<u8>;
    fn read_u16(&self, offset: usize) -> ShmResult<u16>;
    fn read_u32(&self, offset: usize) -> ShmResult<u32>;
    fn read_u64(&self, offset: usize) -> ShmResult<u64>;
    fn write_u8(&self, offset: usize, value: u8) -> ShmResult<()>;
    fn write_u16(&self, offset: usize, value: u16) -> ShmResult<()>;
    fn write_u32(&self, offset: usize, value: u32) -> ShmResult<()>;
    fn write_u64(&self, offset: usize, value: u64) -> ShmResult<()>;
    /// Acquire load of a ring index (4-byte aligned).
    fn load_u32_acquire(&self, offset: usize) -> ShmResult<u32>;
    /// Release store of a ring index (4-byte aligned).
    fn store_u32_release(&self, offset: usize, value: u32) -> ShmResult<()>;
    /// Copy `dst.len()` bytes out of the region, starting at `offset`.
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> ShmResult<()>;
    /// Copy `src` into the region at `offset`.
    fn write_bytes(&self, offset: usize, src: &[u8]) -> ShmResult<()>;
    /// Full memory barrier (`mb()`).
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
    /// Set `len` bytes at `offset` to `value`.
    fn fill(&self, offset: usize, len: usize, value: u8) -> ShmResult<()> {
        check(offset, len, 1, self.size())?;
        let chunk = [value; 64];
        let mut done = 0;
        while done < len {
            let n = core::cmp::min(64, len - done);
            self.write_bytes(offset + done, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }
}

/// Safe shared memory over owned, reference-counted storage (4-byte atomic words).
///
/// Clones share the same storage: the simulated hypervisor hands one clone to the granting domain
/// and another to a domain that maps the grant. Word accesses are single atomics; narrower and
/// unaligned byte copies are read-modify-write of the containing word, so concurrent byte writes
/// from two threads to the same word never lose each other's bytes.
#[derive(Clone)]
pub struct HostMem {
    words: Arc<[AtomicU32]>,
    size: usize,
    readonly: bool,
}

impl fmt::Debug for HostMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMem").field("size", &self.size).finish()
    }
}

impl HostMem {
    /// Zero-filled region of `size` bytes.
    pub fn new(size: usize) -> HostMem {
        let n = size.div_ceil(4);
        let words: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        HostMem {
            words: words.into(),
            size,
            readonly: false,
        }
    }

    /// One zero-filled 4 KiB page.
    pub fn page() -> HostMem {
        HostMem::new(crate::abi::PAGE_SIZE)
    }

    /// A read-only view of the same storage: every write through it fails with
    /// [`ShmError::ReadOnly`].
    pub fn read_only(&self) -> HostMem {
        HostMem {
            words: self.words.clone(),
            size: self.size,
            readonly: true,
        }
    }

    /// True for a view made by [`HostMem::read_only`].
    pub fn is_read_only(&self) -> bool {
        self.readonly
    }

    fn check_w(&self, offset: usize, len: usize, align: usize) -> ShmResult<()> {
        check(offset, len, align, self.size)?;
        if self.readonly {
            return Err(ShmError::ReadOnly { offset });
        }
        Ok(())
    }

    /// True if `self` and `other` share storage.
    pub fn same_storage(&self, other: &HostMem) -> bool {
        Arc::ptr_eq(&self.words, &other.words)
    }

    /// Number of handles sharing this storage (the simulator uses it to detect leaked views).
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.words)
    }

    fn byte(&self, offset: usize) -> u8 {
        let w = self.words[offset / 4].load(Ordering::Relaxed);
        (w >> ((offset % 4) * 8)) as u8
    }

    fn set_byte(&self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let word = &self.words[offset / 4];
        word.fetch_and(!(0xffu32 << shift), Ordering::Relaxed);
        word.fetch_or((value as u32) << shift, Ordering::Relaxed);
    }
}

impl SharedMem for HostMem {
    fn size(&self) -> usize {
        self.size
    }

    fn read_u8(&self, offset: usize) -> ShmResult<u8> {
        check(offset, 1, 1, self.size)?;
        Ok(self.byte(offset))
    }

    fn read_u16(&self, offset: usize) -> ShmResult<u16> {
        check(offset, 2, 2, self.size)?;
        let w = self.words[offset / 4].load(Ordering::Relaxed);
        Ok((w >> ((offset % 4) * 8)) as u16)
    }

    fn read_u32(&self, offset: usize) -> ShmResult<u32> {
        check(offset, 4, 4, self.size)?;
        Ok(self.words[offset / 4].load(Ordering::Relaxed))
    }

    fn read_u64(&self, offset: usize) -> ShmResult<u64> {
        check(offset, 8, 8, self.size)?;
        let lo = self.words[offset / 4].load(Ordering::Relaxed) as u64;
        let hi = self.words[offset / 4 + 1].load(Ordering::Relaxed) as u64;
        Ok(lo | (hi << 32))
    }

    fn write_u8(&self, offset: usize, value: u8) -> ShmResult<()> {
        self.check_w(offset, 1, 1)?;
        self.set_byte(offset, value);
        Ok(())
    }

    fn write_u16(&self, offset: usize, value: u16) -> ShmResult<()> {
        self.check_w(offset, 2, 2)?;
        let shift = (offset % 4) * 8;
        let word = &self.words[offset / 4];
        word.fetch_and(!(0xffffu32 << shift), Ordering::Relaxed);
        word.fetch_or((value as u32) << shift, Ordering::Relaxed);
        Ok(())
    }

    fn write_u32(&self, offset: usize, value: u32) -> ShmResult<()> {
        self.check_w(offset, 4, 4)?;
        self.words[offset / 4].store(value, Ordering::Relaxed);
        Ok(())
    }

    fn write_u64(&self, offset: usize, value: u64) -> ShmResult<()> {
        self.check_w(offset, 8, 8)?;
        self.words[offset / 4].store(value as u32, Ordering::Relaxed);
        self.words[offset / 4 + 1].store((value >> 32) as u32, Ordering::Relaxed);
        Ok(())
    }

    fn load_u32_acquire(&self, offset: usize) -> ShmResult<u32> {
        check(offset, 4, 4, self.size)?;
        Ok(self.words[offset / 4].load(Ordering::Acquire))
    }

    fn store_u32_release(&self, offset: usize, value: u32) -> ShmResult<()> {
        self.check_w(offset, 4, 4)?;
        self.words[offset / 4].store(value, Ordering::Release);
        Ok(())
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> ShmResult<()> {
        check(offset, dst.len(), 1, self.size)?;
        let mut i = 0;
        // Leading bytes up to a word boundary, whole words, trailing bytes.
        while i < dst.len() && !(offset + i).is_multiple_of(4) {
            dst[i] = self.byte(offset + i);
            i += 1;
        }
        let whole = (dst.len() - i) / 4;
        let first = (offset + i) / 4;
        for (chunk, word) in dst[i..i + whole * 4]
            .chunks_exact_mut(4)
            .zip(self.words[first..first + whole].iter())
        {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        i += whole * 4;
        while i < dst.len() {
            dst[i] = self.byte(offset + i);
            i += 1;
        }
        Ok(())
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) -> ShmResult<()> {
        self.check_w(offset, src.len(), 1)?;
        let mut i = 0;
        while i < src.len() && !(offset + i).is_multiple_of(4) {
            self.set_byte(offset + i, src[i]);
            i += 1;
        }
        let whole = (src.len() - i) / 4;
        let first = (offset + i) / 4;
        for (chunk, word) in src[i..i + whole * 4]
            .chunks_exact(4)
            .zip(self.words[first..first + whole].iter())
        {
            word.store(
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                Ordering::Relaxed,
            );
        }
        i += whole * 4;
        while i < src.len() {
            self.set_byte(offset + i, src[i]);
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scalar_round_trips_little_endian() {
        let m = HostMem::new(16);
        m.write_u32(4, 0x1122_3344).unwrap();
        assert_eq!(m.read_u8(4).unwrap(), 0x44);
        assert_eq!(m.read_u16(6).unwrap(), 0x1122);
        m.write_u16(4, 0xbeef).unwrap();
        assert_eq!(m.read_u32(4).unwrap(), 0x1122_beef);
        m.write_u64(8, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(m.read_u32(8).unwrap(), 0x0506_0708);
        assert_eq!(m.read_u64(8).unwrap(), 0x0102_0304_0506_0708);
        m.store_u32_release(0, 7).unwrap();
        assert_eq!(m.load_u32_acquire(0).unwrap(), 7);
    }

    #[test]
    fn out_of_range_and_misaligned_are_errors() {
        let m = HostMem::new(8);
        assert_eq!(
            m.read_u32(6),
            Err(ShmError::OutOfRange {
                offset: 6,
                len: 4,
                size: 8
            })
        );
        assert_eq!(
            m.read_u16(3),
            Err(ShmError::Misaligned {
                offset: 3,
                width: 2
            })
        );
        assert!(m.write_u64(8, 0).is_err());
        assert!(m.read_bytes(usize::MAX, &mut [0u8; 2]).is_err());
        assert!(m.write_bytes(7, &[1, 2]).is_err());
        assert!(m.fill(4, 5, 0).is_err());
        // Nothing was written by the failed calls.
        assert_eq!(m.read_u64(0).unwrap(), 0);
    }

    #[test]
    fn clones_share_storage() {
        let a = HostMem::page();
        let b = a.clone();
        a.write_u8(100, 9).unwrap();
        assert_eq!(b.read_u8(100).unwrap(), 9);
        assert!(a.same_storage(&b));
        assert!(!a.same_storage(&HostMem::page()));
        assert_eq!(a.handle_count(), 2);
        let ro = a.read_only();
        assert_eq!(ro.read_u8(100).unwrap(), 9);
        assert_eq!(ro.write_u8(100, 1), Err(ShmError::ReadOnly { offset: 100 }));
        assert_eq!(
            ro.write_bytes(0, &[1]),
            Err(ShmError::ReadOnly { offset: 0 })
        );
        assert_eq!(
            ro.store_u32_release(0, 1),
            Err(ShmError::ReadOnly { offset: 0 })
        );
        assert_eq!(a.read_u8(0).unwrap(), 0);
    }

    proptest! {
        #[test]
        fn byte_copies_match_a_plain_model(
            ops in proptest::collection::vec((0usize..70, proptest::collection::vec(any::<u8>(), 0..20)), 1..20)
        ) {
            let m = HostMem::new(64);
            let mut model = [0u8; 64];
            for (off, data) in ops {
                let r = m.write_bytes(off, &data);
                if off + data.len() <= 64 {
                    prop_assert!(r.is_ok());
                    model[off..off + data.len()].copy_from_slice(&data);
                } else {
                    prop_assert!(r.is_err());
                }
                let mut all = [0u8; 64];
                m.read_bytes(0, &mut all).unwrap();
                prop_assert_eq!(&all[..], &model[..]);
                let mut part = [0u8; 13];
                if off + 13 <= 64 {
                    m.read_bytes(off, &mut part).unwrap();
                    prop_assert_eq!(&part[..], &model[off..off + 13]);
                }
            }
        }
    }
}
