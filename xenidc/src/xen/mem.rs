//! [`XenMem`]: the real-Xen [`SharedMem`] — a raw pointer to a mapped page (a granted page, a
//! page we grant, the xenstore ring), accessed only with bounds-checked volatile reads and writes,
//! atomics for ring indices and fences, never through a Rust reference (the peer writes it
//! concurrently). The guarantees listed on [`SharedMem`] are implemented here.

use crate::shm::{check, SharedMem, ShmResult};
use core::ptr::NonNull;
use core::sync::atomic::{compiler_fence, fence, AtomicU32, Ordering};

/// A mapped region of `size` bytes shared with another domain or with Xen.
#[derive(Debug)]
pub struct XenMem {
    ptr: NonNull<u8>,
    size: usize,
}

impl XenMem {
    /// View `size` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for volatile reads and writes of `size` bytes for as long as the
    /// returned value (and anything it is moved into) lives, must be at least 8-byte aligned, and
    /// must not be accessed through a Rust reference by anyone.
    pub unsafe fn new(ptr: NonNull<u8>, size: usize) -> XenMem {
        XenMem { ptr, size }
    }

    /// The virtual address of the region (for unmapping and diagnostics).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        // The caller checked `offset + size_of::<T>() <= self.size`; `add` stays in the region.
        self.ptr.as_ptr().wrapping_add(offset) as *mut T
    }

    fn rd<T: Copy>(&self, offset: usize) -> ShmResult<T> {
        let w = core::mem::size_of::<T>();
        check(offset, w, w, self.size)?;
        // SAFETY: in bounds and naturally aligned (checked above; base is 8-byte aligned), and the
        // region is valid for volatile access (constructor contract).
        Ok(unsafe { core::ptr::read_volatile(self.at::<T>(offset)) })
    }

    fn wr<T: Copy>(&self, offset: usize, value: T) -> ShmResult<()> {
        let w = core::mem::size_of::<T>();
        check(offset, w, w, self.size)?;
        // SAFETY: as `rd`.
        unsafe { core::ptr::write_volatile(self.at::<T>(offset), value) };
        Ok(())
    }

    fn atomic(&self, offset: usize) -> ShmResult<&AtomicU32> {
        check(offset, 4, 4, self.size)?;
        // SAFETY: in bounds, 4-byte aligned, valid for the life of `self`; an `AtomicU32` has the
        // layout of a `u32` and atomic access is sound for memory another agent writes.
        Ok(unsafe { AtomicU32::from_ptr(self.at::<u32>(offset)) })
    }
}

impl SharedMem for XenMem {
    fn size(&self) -> usize {
        self.size
    }
    fn read_u8(&self, offset: usize) -> ShmResult<u8> {
        self.rd(offset)
    }
    fn read_u16(&self, offset: usize) -> ShmResult<u16> {
        self.rd::<u16>(offset).map(u16::from_le)
    }
    fn read_u32(&self, offset: usize) -> ShmResult<u32> {
        self.rd::<u32>(offset).map(u32::from_le)
    }
    fn read_u64(&self, offset: usize) -> ShmResult<u64> {
        self.rd::<u64>(offset).map(u64::from_le)
    }
    fn write_u8(&self, offset: usize, value: u8) -> ShmResult<()> {
        self.wr(offset, value)
    }
    fn write_u16(&self, offset: usize, value: u16) -> ShmResult<()> {
        self.wr(offset, value.to_le())
    }
    fn write_u32(&self, offset: usize, value: u32) -> ShmResult<()> {
        self.wr(offset, value.to_le())
    }
    fn write_u64(&self, offset: usize, value: u64) -> ShmResult<()> {
        self.wr(offset, value.to_le())
    }
    fn load_u32_acquire(&self, offset: usize) -> ShmResult<u32> {
        let v = self.atomic(offset)?.load(Ordering::Acquire);
        compiler_fence(Ordering::Acquire);
        Ok(v)
    }
    fn store_u32_release(&self, offset: usize, value: u32) -> ShmResult<()> {
        compiler_fence(Ordering::Release);
        self.atomic(offset)?.store(value, Ordering::Release);
        Ok(())
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> ShmResult<()> {
        check(offset, dst.len(), 1, self.size)?;
        // Bytes up to an 8-byte boundary, then whole words, then the tail: each access is a
        // volatile access inside `[offset, offset + dst.len())`, which is in the region (checked).
        let mut i = 0;
        while i < dst.len() && !(offset + i).is_multiple_of(8) {
            // SAFETY: in bounds (see above).
            dst[i] = unsafe { core::ptr::read_volatile(self.at::<u8>(offset + i)) };
            i += 1;
        }
        while dst.len() - i >= 8 {
            // SAFETY: in bounds and 8-byte aligned (the base is 8-byte aligned).
            let w = unsafe { core::ptr::read_volatile(self.at::<u64>(offset + i)) };
            dst[i..i + 8].copy_from_slice(&w.to_le_bytes());
            i += 8;
        }
        while i < dst.len() {
            // SAFETY: in bounds.
            dst[i] = unsafe { core::ptr::read_volatile(self.at::<u8>(offset + i)) };
            i += 1;
        }
        Ok(())
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) -> ShmResult<()> {
        check(offset, src.len(), 1, self.size)?;
        // As `read_bytes`.
        let mut i = 0;
        while i < src.len() && !(offset + i).is_multiple_of(8) {
            // SAFETY: in bounds.
            unsafe { core::ptr::write_volatile(self.at::<u8>(offset + i), src[i]) };
            i += 1;
        }
        while src.len() - i >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[i..i + 8]);
            // SAFETY: in bounds and 8-byte aligned.
            unsafe { core::ptr::write_volatile(self.at::<u64>(offset + i), u64::from_le_bytes(w)) };
            i += 8;
        }
        while i < src.len() {
            // SAFETY: in bounds.
            unsafe { core::ptr::write_volatile(self.at::<u8>(offset + i), src[i]) };
            i += 1;
        }
        Ok(())
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_view_is_bounds_checked_and_little_endian() {
        let mut buf = alloc::vec![0u64; 4];
        let p = NonNull::new(buf.as_mut_ptr() as *mut u8).unwrap();
        // SAFETY: `buf` outlives `m` and is only accessed through it until the final check.
        let m = unsafe { XenMem::new(p, 32) };
        m.write_u32(4, 0x1122_3344).unwrap();
        assert_eq!(m.read_u8(4).unwrap(), 0x44);
        assert_eq!(m.read_u16(6).unwrap(), 0x1122);
        m.write_u64(8, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(m.read_u32(12).unwrap(), 0x0102_0304);
        m.store_u32_release(16, 9).unwrap();
        assert_eq!(m.load_u32_acquire(16).unwrap(), 9);
        m.write_bytes(29, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 3];
        m.read_bytes(29, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert!(m.read_u32(30).is_err());
        assert!(m.read_u16(3).is_err());
        assert!(m.write_bytes(31, &[1, 2]).is_err());
        assert!(m.read_bytes(usize::MAX, &mut out).is_err());
        assert!(m.load_u32_acquire(2).is_err());
        assert_eq!(buf[0], 0x1122_3344 << 32);
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn byte_copies_match_a_plain_model(
            ops in proptest::collection::vec((0usize..140, proptest::collection::vec(any::<u8>(), 0..40)), 1..20)
        ) {
            let mut buf = alloc::vec![0u64; 16];
            let p = NonNull::new(buf.as_mut_ptr() as *mut u8).unwrap();
            // SAFETY: `buf` outlives `m` and is only accessed through it.
            let m = unsafe { XenMem::new(p, 128) };
            let mut model = [0u8; 128];
            for (off, data) in ops {
                let r = m.write_bytes(off, &data);
                if off + data.len() <= 128 {
                    prop_assert!(r.is_ok());
                    model[off..off + data.len()].copy_from_slice(&data);
                } else {
                    prop_assert!(r.is_err());
                }
                let mut all = [0u8; 128];
                m.read_bytes(0, &mut all).unwrap();
                prop_assert_eq!(&all[..], &model[..]);
                if off + 21 <= 128 {
                    let mut part = [0u8; 21];
                    m.read_bytes(off, &mut part).unwrap();
                    prop_assert_eq!(&part[..], &model[off..off + 21]);
                }
            }
        }
    }
}
