//! A page-frame allocator over one contiguous range of frames: a bitmap, first fit, with runs of
//! several frames kept inside a power-of-two boundary (xHCI 1.2 §6: structures must not cross
//! 64 KiB). Used for PVH DMA memory (identity-mapped) and for PV pages (`pv::mm`).
//! Pure bookkeeping: no memory is touched here.

/// Maximum frames managed (256 MiB of 4 KiB pages; an 8 KiB bitmap).
pub const MAX_FRAMES: usize = 65536;

pub struct FrameAllocator {
    first: u64,
    count: usize,
    used: [u64; MAX_FRAMES / 64],
    free: usize,
}

impl FrameAllocator {
    pub const fn empty() -> Self {
        FrameAllocator {
            first: 0,
            count: 0,
            used: [0; MAX_FRAMES / 64],
            free: 0,
        }
    }

    /// Manage frames `[first, first + count)` (count clamped to [`MAX_FRAMES`]); all free.
    pub fn init(&mut self, first: u64, count: usize) {
        self.first = first;
        self.count = count.min(MAX_FRAMES);
        self.used = [0; MAX_FRAMES / 64];
        self.free = self.count;
    }

    pub fn free_frames(&self) -> usize {
        self.free
    }

    pub fn range(&self) -> (u64, usize) {
        (self.first, self.count)
    }

    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, used: bool) {
        if used {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Allocate `n` contiguous frames whose first frame number is a multiple of `align` frames and
    /// which do not cross a multiple of `boundary` frames (0 = no boundary). Returns the first
    /// frame number.
    pub fn alloc(&mut self, n: usize, align: usize, boundary: usize) -> Option<u64> {
        if n == 0 || n > self.free {
            return None;
        }
        let align = align.max(1) as u64;
        if boundary != 0 && n > boundary {
            return None;
        }
        let mut f = self.first.div_ceil(align) * align;
        while f + n as u64 <= self.first + self.count as u64 {
            if boundary != 0 {
                let b = boundary as u64;
                if f / b != (f + n as u64 - 1) / b {
                    f = (f / b + 1) * b;
                    f = f.div_ceil(align) * align;
                    continue;
                }
            }
            let start = (f - self.first) as usize;
            match (start..start + n).find(|&i| self.is_used(i)) {
                None => {
                    for i in start..start + n {
                        self.set(i, true);
                    }
                    self.free -= n;
                    return Some(f);
                }
                Some(busy) => {
                    f = self.first + busy as u64 + 1;
                    f = f.div_ceil(align) * align;
                }
            }
        }
        None
    }

    /// Mark `n` frames starting at `frame` as in use (frames outside the range are ignored).
    pub fn reserve(&mut self, frame: u64, n: usize) {
        for k in 0..n as u64 {
            let f = frame + k;
            if f < self.first || f >= self.first + self.count as u64 {
                continue;
            }
            let i = (f - self.first) as usize;
            if !self.is_used(i) {
                self.set(i, true);
                self.free -= 1;
            }
        }
    }

    /// Free `n` frames starting at `frame` (double frees and foreign frames are ignored).
    pub fn free(&mut self, frame: u64, n: usize) {
        for k in 0..n as u64 {
            let f = frame + k;
            if f < self.first || f >= self.first + self.count as u64 {
                continue;
            }
            let i = (f - self.first) as usize;
            if self.is_used(i) {
                self.set(i, false);
                self.free += 1;
            }
        }
    }
}
