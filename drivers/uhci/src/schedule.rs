//! The in-memory schedule of a UHCI controller (UHCI 1.1 §3): frame-list pointers, transfer
//! descriptors (TDs, §3.2) and queue heads (QHs, §3.3), encoded as the little-endian dwords the
//! controller fetches by bus address, plus the DMA pool the descriptors live in.
//!
//! All values read back from DMA memory are wire values written by the device; they are decoded
//! through accessor methods of integer newtypes, never trusted as Rust enums.
//!
//! Layout (§3.2, §3.3): a TD is four dwords (link, control/status, token, buffer) on a 16-byte
//! boundary; a QH is two dwords (head link, element link) on a 16-byte boundary. The pool hands out
//! 32-byte slots (the spec leaves the upper half of a TD slot to software) carved from 4 KiB DMA
//! pages, so every descriptor is 16-byte aligned and never straddles a page.

use alloc::vec::Vec;

use hal::{DmaAlloc, DmaBuf, HalError};

/// PIDs (USB 2.0 §8.3.1) as they appear in the TD token (§3.2.3).
pub const PID_SETUP: u8 = 0x2d;
pub const PID_IN: u8 = 0x69;
pub const PID_OUT: u8 = 0xe1;

/// A frame-list entry, TD link or QH link pointer (§3.1, §3.2.1, §3.3.1): bits 31:4 address, bit 2
/// depth-first (TD links only), bit 1 QH, bit 0 terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link(pub u32);

impl Link {
    pub const TERMINATE: Link = Link(1);
    const T: u32 = 1 << 0;
    const Q: u32 = 1 << 1;
    const VF: u32 = 1 << 2;

    /// A pointer to the QH at `addr` (16-byte aligned).
    pub fn qh(addr: u32) -> Link {
        debug_assert_eq!(addr & 0xf, 0);
        Link(addr | Self::Q)
    }
    /// A pointer to the TD at `addr`; `depth_first` makes the controller continue down the queue
    /// in the same frame (§3.2.1 Vf) instead of moving to the next QH.
    pub fn td(addr: u32, depth_first: bool) -> Link {
        debug_assert_eq!(addr & 0xf, 0);
        Link(addr | if depth_first { Self::VF } else { 0 })
    }
    pub fn is_terminate(self) -> bool {
        self.0 & Self::T != 0
    }
    pub fn is_qh(self) -> bool {
        self.0 & Self::Q != 0
    }
    pub fn depth_first(self) -> bool {
        self.0 & Self::VF != 0
    }
    pub fn addr(self) -> u32 {
        self.0 & !0xf
    }
}

/// Encoding of a length in the n−1 form of ActLen and MaxLen (§3.2.2, §3.2.3): 0x7ff means zero.
pub fn encode_len(n: u16) -> u32 {
    (n as u32).wrapping_sub(1) & 0x7ff
}

/// Decoding of an n−1 length field.
pub fn decode_len(field: u32) -> u16 {
    ((field + 1) & 0x7ff) as u16
}

/// TD dword 1, control and status (§3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdCtrl(pub u32);

impl TdCtrl {
    /// Short Packet Detect: a short IN packet stops the queue and raises USBINT.
    pub const SPD: u32 = 1 << 29;
    pub const CERR_SHIFT: u32 = 27;
    pub const CERR_MASK: u32 = 3 << 27;
    /// Low Speed device.
    pub const LS: u32 = 1 << 26;
    /// Isochronous Select.
    pub const IOS: u32 = 1 << 25;
    /// Interrupt On Complete.
    pub const IOC: u32 = 1 << 24;
    pub const ACTIVE: u32 = 1 << 23;
    pub const STALLED: u32 = 1 << 22;
    pub const DBE: u32 = 1 << 21;
    pub const BABBLE: u32 = 1 << 20;
    pub const NAK: u32 = 1 << 19;
    pub const CRC_TIMEOUT: u32 = 1 << 18;
    pub const BITSTUFF: u32 = 1 << 17;
    /// The status bits that mean the TD failed (NAK alone is not a failure).
    pub const ERROR_BITS: u32 =
        Self::STALLED | Self::DBE | Self::BABBLE | Self::CRC_TIMEOUT | Self::BITSTUFF;

    /// A fresh active TD: three retries on errors (§3.2.2 C_ERR), zero actual length.
    pub fn new(low_speed: bool, ioc: bool, spd: bool) -> TdCtrl {
        let mut v = Self::ACTIVE | (3 << Self::CERR_SHIFT) | encode_len(0);
        if low_speed {
            v |= Self::LS;
        }
        if ioc {
            v |= Self::IOC;
        }
        if spd {
            v |= Self::SPD;
        }
        TdCtrl(v)
    }
    pub fn active(self) -> bool {
        self.0 & Self::ACTIVE != 0
    }
    pub fn errors(self) -> u32 {
        self.0 & Self::ERROR_BITS
    }
    /// Bytes actually transferred (ActLen, §3.2.2).
    pub fn actual_len(self) -> u16 {
        decode_len(self.0 & 0x7ff)
    }
    pub fn cerr(self) -> u32 {
        (self.0 & Self::CERR_MASK) >> Self::CERR_SHIFT
    }
}

/// TD dword 2, token (§3.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdToken(pub u32);

impl TdToken {
    pub const TOGGLE: u32 = 1 << 19;

    pub fn new(pid: u8, addr: u8, endpoint: u8, toggle: bool, max_len: u16) -> TdToken {
        TdToken(
            (encode_len(max_len) << 21)
                | if toggle { Self::TOGGLE } else { 0 }
                | ((endpoint as u32 & 0xf) << 15)
                | ((addr as u32 & 0x7f) << 8)
                | pid as u32,
        )
    }
    pub fn pid(self) -> u8 {
        self.0 as u8
    }
    pub fn addr(self) -> u8 {
        ((self.0 >> 8) & 0x7f) as u8
    }
    pub fn endpoint(self) -> u8 {
        ((self.0 >> 15) & 0xf) as u8
    }
    pub fn toggle(self) -> bool {
        self.0 & Self::TOGGLE != 0
    }
    /// Maximum length of the packet (MaxLen, §3.2.3).
    pub fn max_len(self) -> u16 {
        decode_len(self.0 >> 21)
    }
    pub fn with_toggle(self, toggle: bool) -> TdToken {
        TdToken(if toggle {
            self.0 | Self::TOGGLE
        } else {
            self.0 & !Self::TOGGLE
        })
    }
}

/// A TD as the controller sees it (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Td {
    pub link: Link,
    pub ctrl: TdCtrl,
    pub token: TdToken,
    pub buffer: u32,
}

impl Td {
    pub const SIZE: usize = 16;
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.link.0.to_le_bytes());
        b[4..8].copy_from_slice(&self.ctrl.0.to_le_bytes());
        b[8..12].copy_from_slice(&self.token.0.to_le_bytes());
        b[12..16].copy_from_slice(&self.buffer.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 16]) -> Td {
        let d = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Td {
            link: Link(d(0)),
            ctrl: TdCtrl(d(4)),
            token: TdToken(d(8)),
            buffer: d(12),
        }
    }
}

/// Byte offsets of the dwords of a QH (§3.3).
pub const QH_HEAD: usize = 0;
pub const QH_ELEMENT: usize = 4;
/// Byte offsets of the dwords of a TD (§3.2).
pub const TD_LINK: usize = 0;
pub const TD_CTRL: usize = 4;
pub const TD_TOKEN: usize = 8;
pub const TD_BUFFER: usize = 12;

/// Size of one pool slot.
pub const SLOT_SIZE: usize = 32;
const PAGE: usize = 4096;
const SLOTS_PER_PAGE: usize = PAGE / SLOT_SIZE;

/// Index of a descriptor slot in a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// A pool of 32-byte descriptor slots in DMA memory, grown page by page up to a limit.
pub struct Pool<D: DmaAlloc> {
    pages: Vec<D::Buf>,
    free: Vec<Slot>,
    max_pages: usize,
}

impl<D: DmaAlloc> Pool<D> {
    pub fn new(max_pages: usize) -> Self {
        Pool {
            pages: Vec::new(),
            free: Vec::new(),
            max_pages,
        }
    }

    /// A zeroed slot.
    pub fn alloc(&mut self, dma: &D) -> Result<Slot, HalError> {
        if self.free.is_empty() {
            if self.pages.len() >= self.max_pages {
                return Err(HalError::OutOfDmaMemory {
                    size: SLOT_SIZE,
                    align: 16,
                });
            }
            let page = dma.alloc(PAGE, PAGE)?;
            if page.bus_addr() > u32::MAX as u64 - PAGE as u64 {
                // UHCI is a 32-bit bus master (§3: all pointers are 32 bit).
                return Err(HalError::Unsupported("DMA page above 4 GiB for UHCI"));
            }
            let p = self.pages.len() as u32;
            self.pages.push(page);
            for i in (0..SLOTS_PER_PAGE as u32).rev() {
                self.free.push(Slot(p * SLOTS_PER_PAGE as u32 + i));
            }
        }
        let s = self.free.pop().expect("free list refilled above");
        let (page, off) = self.locate(s);
        page.write_bytes(off, &[0u8; SLOT_SIZE]);
        Ok(s)
    }

    /// Return a slot. The caller guarantees the controller no longer references it (§3.4: unlink,
    /// then wait for the frame counter to advance).
    pub fn free(&mut self, s: Slot) {
        debug_assert!(!self.free.contains(&s), "double free of {s:?}");
        self.free.push(s);
    }

    /// Slots handed out and not yet returned.
    pub fn in_use(&self) -> usize {
        self.pages.len() * SLOTS_PER_PAGE - self.free.len()
    }

    fn locate(&self, s: Slot) -> (&D::Buf, usize) {
        let i = s.0 as usize;
        (
            &self.pages[i / SLOTS_PER_PAGE],
            (i % SLOTS_PER_PAGE) * SLOT_SIZE,
        )
    }

    /// Bus address of a slot (fits in 32 bits, checked when the page was allocated).
    pub fn addr(&self, s: Slot) -> u32 {
        let (p, off) = self.locate(s);
        (p.bus_addr() + off as u64) as u32
    }
    pub fn read32(&self, s: Slot, off: usize) -> u32 {
        let (p, o) = self.locate(s);
        p.read32(o + off)
    }
    pub fn write32(&self, s: Slot, off: usize, v: u32) {
        let (p, o) = self.locate(s);
        p.write32(o + off, v)
    }
    /// Write a whole TD. The link and token go first and the control dword (with Active) last, so
    /// the controller never sees an active TD with stale fields.
    pub fn write_td(&self, s: Slot, td: &Td) {
        self.write32(s, TD_LINK, td.link.0);
        self.write32(s, TD_TOKEN, td.token.0);
        self.write32(s, TD_BUFFER, td.buffer);
        self.write32(s, TD_CTRL, td.ctrl.0);
    }
    pub fn read_td(&self, s: Slot) -> Td {
        let (p, o) = self.locate(s);
        let mut b = [0u8; 16];
        p.read_bytes(o, &mut b);
        Td::from_bytes(&b)
    }
    /// Scratch bytes in the software half of a slot (offset 16..32), e.g. a SETUP packet.
    pub fn write_scratch(&self, s: Slot, data: &[u8]) {
        assert!(data.len() <= SLOT_SIZE - 16);
        let (p, o) = self.locate(s);
        p.write_bytes(o + 16, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hal::fake::{FakeDma, FakeMemory};

    #[test]
    fn length_encoding() {
        assert_eq!(encode_len(0), 0x7ff);
        assert_eq!(encode_len(1), 0);
        assert_eq!(encode_len(64), 63);
        assert_eq!(decode_len(0x7ff), 0);
        assert_eq!(decode_len(63), 64);
        for n in 0..=1280u16 {
            assert_eq!(decode_len(encode_len(n)), n);
        }
    }

    #[test]
    fn token_fields() {
        let t = TdToken::new(PID_IN, 0x55, 0xa, true, 64);
        assert_eq!(t.pid(), PID_IN);
        assert_eq!(t.addr(), 0x55);
        assert_eq!(t.endpoint(), 0xa);
        assert!(t.toggle());
        assert_eq!(t.max_len(), 64);
        assert_eq!(t.0 >> 21, 63);
        assert!(!t.with_toggle(false).toggle());
        let z = TdToken::new(PID_OUT, 0, 0, false, 0);
        assert_eq!(z.0 >> 21, 0x7ff, "zero-length packet is MaxLen 0x7ff");
    }

    #[test]
    fn link_bits() {
        let l = Link::td(0x1230, true);
        assert_eq!(l.0, 0x1234);
        assert!(l.depth_first() && !l.is_qh() && !l.is_terminate());
        let q = Link::qh(0x2000);
        assert_eq!(q.0, 0x2002);
        assert!(q.is_qh());
        assert_eq!(q.addr(), 0x2000);
        assert!(Link::TERMINATE.is_terminate());
    }

    #[test]
    fn td_roundtrip_and_ctrl() {
        let td = Td {
            link: Link::td(0x4000, true),
            ctrl: TdCtrl::new(true, true, true),
            token: TdToken::new(PID_SETUP, 1, 0, false, 8),
            buffer: 0xdead_bee0,
        };
        assert_eq!(Td::from_bytes(&td.to_bytes()), td);
        assert!(td.ctrl.active());
        assert_eq!(td.ctrl.cerr(), 3);
        assert_eq!(td.ctrl.actual_len(), 0);
        assert_eq!(td.ctrl.0 & TdCtrl::LS, TdCtrl::LS);
    }

    #[test]
    fn pool_slots_aligned_unique_and_reused() {
        let mem = FakeMemory::new(0x10_0000, 0x10_0000);
        let dma = FakeDma::new(mem.clone());
        let mut pool: Pool<FakeDma> = Pool::new(2);
        let mut seen = Vec::new();
        for _ in 0..2 * SLOTS_PER_PAGE {
            let s = pool.alloc(&dma).unwrap();
            let a = pool.addr(s);
            assert_eq!(a % 16, 0);
            assert!(!seen.contains(&a));
            seen.push(a);
        }
        assert!(pool.alloc(&dma).is_err(), "limit of two pages");
        let s = Slot(5);
        pool.write32(s, 4, 0xffff_ffff);
        assert_eq!(mem.read32(pool.addr(s) as u64 + 4), Some(0xffff_ffff));
        pool.free(s);
        assert_eq!(pool.in_use(), 2 * SLOTS_PER_PAGE - 1);
        let again = pool.alloc(&dma).unwrap();
        assert_eq!(again, s);
        assert_eq!(pool.read32(again, 4), 0, "reallocated slot is zeroed");
    }
}
