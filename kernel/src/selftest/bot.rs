//! Test-side USB mass-storage reader/writer for the QEMU-tier self-tests: Bulk-Only Transport
//! (USB Mass Storage Class BOT 1.0: 31-byte CBW, data, 13-byte CSW; reset recovery §5.3.4) carrying
//! SCSI commands (SPC-4 INQUIRY / TEST UNIT READY / REQUEST SENSE, SBC-3 READ CAPACITY(10) /
//! READ(10) / WRITE(10)).  Generic over any [`HostController`] through usb-core's [`Bus`].
//!
//! This is not a storage driver for the product (the PVUSB frontend's own driver does that); it
//! exists to prove the host-controller drivers move data correctly.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hal::{Clock, DmaAlloc, DmaBuf, DmaSegment};
use usb_core::hc::{
    DeviceId, Direction, EndpointAddress, HcError, HostController, TransferFlags, TransferRequest,
    TransferType,
};
use usb_core::request::SetupPacket;
use usb_core::{Bus, UsbError};

const CBW_SIGNATURE: u32 = 0x4342_5355;
const CSW_SIGNATURE: u32 = 0x5342_5355;
/// Largest data phase of one command (the data buffer size).
pub const MAX_XFER: usize = 64 * 1024;
const TIMEOUT_MS: u64 = 10_000;

/// A mass-storage device found in the registry.
pub struct Bot<B: DmaBuf> {
    pub dev: DeviceId,
    interface: u8,
    ep_in: EndpointAddress,
    ep_out: EndpointAddress,
    tag: u32,
    cbw: B,
    csw: B,
    pub data: B,
    pub block_size: u32,
    pub blocks: u64,
}

/// FNV-1a 64 offset basis: the start value of [`fnv1a64`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `data`, continuing from `h` (the checksum xtask passes as `usbdom.disk_fnv`).
pub fn fnv1a64(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl<B: DmaBuf> Bot<B> {
    /// Find the first BOT (class 8, subclass 6 SCSI, protocol 0x50) interface in the registry.
    pub fn find<H: HostController, D: DmaAlloc<Buf = B>, C: Clock>(
        bus: &Bus<H, D, C>,
    ) -> Result<Self, String> {
        for d in bus.registry.iter() {
            let Some(cfg) = &d.config else { continue };
            for i in &cfg.interfaces {
                if i.class != 8 || i.subclass != 6 || i.protocol != 0x50 || i.alternate != 0 {
                    continue;
                }
                let bulk = |dir| {
                    i.endpoints
                        .iter()
                        .find(|e| e.kind() == TransferType::Bulk && e.address.direction() == dir)
                        .map(|e| e.address)
                };
                let (Some(ep_in), Some(ep_out)) = (bulk(Direction::In), bulk(Direction::Out))
                else {
                    continue;
                };
                let dma = bus.dma();
                let alloc = |n| dma.alloc(n, 64).map_err(|e| format!("DMA: {e}"));
                return Ok(Bot {
                    dev: d.id,
                    interface: i.number,
                    ep_in,
                    ep_out,
                    tag: 1,
                    cbw: alloc(64)?,
                    csw: alloc(64)?,
                    data: dma.alloc(MAX_XFER, 4096).map_err(|e| format!("DMA: {e}"))?,
                    block_size: 0,
                    blocks: 0,
                });
            }
        }
        Err(String::from(
            "no bulk-only mass-storage interface enumerated",
        ))
    }

    fn bulk<H: HostController, D: DmaAlloc, C: Clock>(
        &self,
        bus: &mut Bus<H, D, C>,
        ep: EndpointAddress,
        seg: DmaSegment,
    ) -> Result<u32, UsbError> {
        let segs = [seg];
        let id = bus.hc.submit(&TransferRequest {
            device: self.dev,
            endpoint: ep,
            setup: None,
            buffer: if seg.len > 0 { &segs } else { &[] },
            flags: TransferFlags::empty(),
        })?;
        bus.wait(id, TIMEOUT_MS)
    }

    /// Clear a halted bulk endpoint on both sides (BOT §6.7.2, USB 2.0 §9.4.1).
    fn unhalt<H: HostController, D: DmaAlloc, C: Clock>(
        &self,
        bus: &mut Bus<H, D, C>,
        ep: EndpointAddress,
    ) -> Result<(), String> {
        bus.hc
            .clear_halt(self.dev, ep)
            .map_err(|e| format!("clear halt {:#x}: {e}", ep.0))?;
        bus.control(self.dev, SetupPacket::clear_halt(ep), None, None)
            .map_err(|e| format!("CLEAR_FEATURE(HALT) {:#x}: {e}", ep.0))?;
        Ok(())
    }

    /// Bulk-Only Mass Storage Reset and halt clearing (BOT §5.3.4 reset recovery).
    pub fn reset_recovery<H: HostController, D: DmaAlloc, C: Clock>(
        &self,
        bus: &mut Bus<H, D, C>,
    ) -> Result<(), String> {
        let reset = SetupPacket {
            request_type: 0x21,
            request: 0xff,
            value: 0,
            index: self.interface as u16,
            length: 0,
        };
        bus.control(self.dev, reset, None, None)
            .map_err(|e| format!("BOT reset: {e}"))?;
        self.unhalt(bus, self.ep_in)?;
        self.unhalt(bus, self.ep_out)
    }

    /// One SCSI command: CBW, optional data phase of `len` bytes through `self.data` (IN when
    /// `dir_in`), CSW.  Returns the bytes moved.  For OUT, the data must already be in `self.data`.
    pub fn command<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
        cb: &[u8],
        dir_in: bool,
        len: usize,
    ) -> Result<usize, String> {
        assert!(cb.len() <= 16 && len <= MAX_XFER);
        let tag = self.tag;
        self.tag = self.tag.wrapping_add(1);
        let mut cbw = [0u8; 31];
        cbw[0..4].copy_from_slice(&CBW_SIGNATURE.to_le_bytes());
        cbw[4..8].copy_from_slice(&tag.to_le_bytes());
        cbw[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        cbw[12] = if dir_in { 0x80 } else { 0 };
        cbw[14] = cb.len() as u8;
        cbw[15..15 + cb.len()].copy_from_slice(cb);
        self.cbw.write_bytes(0, &cbw);
        let seg = |b: &B, n: usize| DmaSegment {
            bus_addr: b.bus_addr(),
            len: n as u32,
        };
        self.bulk(bus, self.ep_out, seg(&self.cbw, 31))
            .map_err(|e| format!("CBW (op {:#04x}): {e}", cb[0]))?;
        let mut moved = 0;
        if len > 0 {
            let ep = if dir_in { self.ep_in } else { self.ep_out };
            match self.bulk(bus, ep, seg(&self.data, len)) {
                Ok(n) => moved = n as usize,
                Err(UsbError::Hc(HcError::Stall)) => self.unhalt(bus, ep)?,
                Err(e) => return Err(format!("data phase (op {:#04x}): {e}", cb[0])),
            }
        }
        let csw = match self.bulk(bus, self.ep_in, seg(&self.csw, 13)) {
            Ok(n) => n,
            Err(UsbError::Hc(HcError::Stall)) => {
                // One retry after clearing the halt (BOT §6.7.2).
                self.unhalt(bus, self.ep_in)?;
                self.bulk(bus, self.ep_in, seg(&self.csw, 13))
                    .map_err(|e| format!("CSW retry (op {:#04x}): {e}", cb[0]))?
            }
            Err(e) => return Err(format!("CSW (op {:#04x}): {e}", cb[0])),
        };
        let mut b = [0u8; 13];
        self.csw.read_bytes(0, &mut b);
        let sig = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let rtag = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if csw != 13 || sig != CSW_SIGNATURE || rtag != tag {
            let _ = self.reset_recovery(bus);
            return Err(format!(
                "bad CSW (op {:#04x}): {csw} bytes, signature {sig:#x}, tag {rtag} want {tag}",
                cb[0]
            ));
        }
        match b[12] {
            0 => Ok(moved),
            1 => Err(format!("command {:#04x} failed (CSW status 1)", cb[0])),
            s => {
                let _ = self.reset_recovery(bus);
                Err(format!(
                    "command {:#04x}: phase error (CSW status {s})",
                    cb[0]
                ))
            }
        }
    }

    /// INQUIRY, TEST UNIT READY (retried while the unit becomes ready), READ CAPACITY(10).
    /// Returns the vendor/product string of the INQUIRY data.
    pub fn init<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
    ) -> Result<String, String> {
        let n = self.command(bus, &[0x12, 0, 0, 0, 36, 0], true, 36)?;
        let mut inq = [0u8; 36];
        self.data.read_bytes(0, &mut inq[..n.min(36)]);
        let ident: String = inq[8..36]
            .iter()
            .map(|&c| {
                if (0x20..0x7f).contains(&c) {
                    c as char
                } else {
                    '.'
                }
            })
            .collect();
        let mut ready = false;
        for _ in 0..5 {
            if self.command(bus, &[0; 6], false, 0).is_ok() {
                ready = true;
                break;
            }
            // REQUEST SENSE clears the unit attention.
            let _ = self.command(bus, &[0x03, 0, 0, 0, 18, 0], true, 18);
        }
        if !ready {
            return Err(String::from("unit never became ready"));
        }
        let n = self.command(bus, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], true, 8)?;
        if n < 8 {
            return Err(format!("READ CAPACITY returned {n} bytes"));
        }
        let mut cap = [0u8; 8];
        self.data.read_bytes(0, &mut cap);
        self.blocks = be32(&cap[0..4]) as u64 + 1;
        self.block_size = be32(&cap[4..8]);
        if self.block_size == 0 || self.block_size as usize > MAX_XFER {
            return Err(format!("implausible block size {}", self.block_size));
        }
        Ok(ident)
    }

    fn rw10(op: u8, lba: u64, count: u16) -> [u8; 10] {
        let l = (lba as u32).to_be_bytes();
        let c = count.to_be_bytes();
        [op, 0, l[0], l[1], l[2], l[3], 0, c[0], c[1], 0]
    }

    /// Blocks per command that fit the data buffer.
    pub fn max_blocks(&self) -> u16 {
        (MAX_XFER / self.block_size as usize).min(0xffff) as u16
    }

    /// READ(10) of `count` blocks at `lba` into `self.data`.
    pub fn read<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
        lba: u64,
        count: u16,
    ) -> Result<usize, String> {
        self.rw10_blocks(bus, 0x28, "READ(10)", true, lba, count)
    }

    /// WRITE(10) of `count` blocks at `lba` from `self.data`.
    pub fn write<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
        lba: u64,
        count: u16,
    ) -> Result<usize, String> {
        self.rw10_blocks(bus, 0x2a, "WRITE(10)", false, lba, count)
    }

    /// One READ(10)/WRITE(10) (`op`) of `count` blocks at `lba`; every byte must move.
    fn rw10_blocks<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
        op: u8,
        name: &str,
        data_in: bool,
        lba: u64,
        count: u16,
    ) -> Result<usize, String> {
        let len = count as usize * self.block_size as usize;
        let n = self.command(bus, &Self::rw10(op, lba, count), data_in, len)?;
        if n != len {
            return Err(format!("{name} at {lba}: {n} of {len} bytes"));
        }
        Ok(n)
    }

    /// Read the whole medium, [`Self::max_blocks`] per READ(10), and return its FNV-1a 64.
    pub fn image_fnv1a64<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
    ) -> Result<u64, String> {
        let mut chunk = alloc::vec![0u8; MAX_XFER];
        let per = self.max_blocks() as u64;
        let mut h = FNV_OFFSET;
        let mut lba = 0;
        while lba < self.blocks {
            let n = per.min(self.blocks - lba) as u16;
            let bytes = self.read(bus, lba, n)?;
            self.data.read_bytes(0, &mut chunk[..bytes]);
            h = fnv1a64(h, &chunk[..bytes]);
            lba += n as u64;
        }
        Ok(h)
    }

    /// WRITE(10) `pattern` (`blocks` blocks) at `at`, READ(10) it back into a zeroed buffer and
    /// require the same bytes. Returns the number of bytes compared.
    pub fn write_read_back<H: HostController, D: DmaAlloc, C: Clock>(
        &mut self,
        bus: &mut Bus<H, D, C>,
        at: u64,
        blocks: u16,
        pattern: &[u8],
    ) -> Result<usize, String> {
        let len = blocks as usize * self.block_size as usize;
        if pattern.len() != len {
            return Err(format!(
                "write/read-back: pattern of {} bytes for {blocks} blocks of {}",
                pattern.len(),
                self.block_size
            ));
        }
        self.data.write_bytes(0, pattern);
        self.write(bus, at, blocks)?;
        self.data.zero();
        self.read(bus, at, blocks)?;
        let mut back: Vec<u8> = alloc::vec![0u8; len];
        self.data.read_bytes(0, &mut back);
        if back != pattern {
            let first = back
                .iter()
                .zip(pattern)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "write/read-back mismatch at byte {first} of {len} (LBA {at})"
            ));
        }
        Ok(len)
    }
}
