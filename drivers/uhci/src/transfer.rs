//! Turning a transfer request into a chain of TDs and TD status back into a result
//! (UHCI 1.1 §3.2, §4; USB 2.0 §5.5 control transfers, §8.6 data toggle).
//!
//! UHCI moves one packet per TD: a transfer of `n` bytes on an endpoint with maximum packet size
//! `mps` is `ceil(n / mps)` TDs (at least one), each pointing at a piece of the caller's buffer that
//! is contiguous in bus addresses. The data toggle alternates from TD to TD, starting at the value
//! the endpoint was left with by the previous transfer (control transfers: SETUP is DATA0, the data
//! stage starts with DATA1 and the status stage is always DATA1, USB 2.0 §8.5.3).
//!
//! The controller cannot split one packet over two memory pieces, so a packet that would straddle
//! the end of a segment whose next segment is not contiguous in bus addresses is refused.

use alloc::vec::Vec;

use hal::DmaSegment;
use usb_core::hc::HcError;

use crate::schedule::{TdCtrl, PID_IN, PID_OUT, PID_SETUP};

/// One TD to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub pid: u8,
    /// Bus address of the data (for SETUP: of the 8-byte setup packet).
    pub buf: u32,
    pub len: u16,
    pub toggle: bool,
    /// Whether the packet belongs to the data stage (counted in the actual length).
    pub data: bool,
}

/// The TDs of a transfer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub packets: Vec<Packet>,
    /// Index of the status-stage TD of a control transfer.
    pub status: Option<usize>,
    /// The toggle the endpoint has after the whole plan completed (bulk/interrupt).
    pub next_toggle: bool,
}

/// Split `segs` into packets of at most `mps` bytes, each contiguous in bus addresses.
pub fn split(segs: &[DmaSegment], mps: u16) -> Result<Vec<(u32, u16)>, HcError> {
    if mps == 0 {
        return Err(HcError::Invalid("maximum packet size 0"));
    }
    let mut out: Vec<(u32, u16)> = Vec::new();
    // Start and remaining length of the packet being filled.
    let mut cur: Option<(u64, u64)> = None;
    for s in segs {
        if s.len == 0 {
            continue;
        }
        let end = s
            .bus_addr
            .checked_add(s.len as u64)
            .filter(|&e| e <= 1 << 32)
            .ok_or(HcError::Invalid("UHCI buffers must lie below 4 GiB"))?;
        let mut addr = s.bus_addr;
        if let Some((start, len)) = cur {
            if start + len != addr {
                return Err(HcError::Invalid(
                    "a packet would straddle two non-contiguous buffer segments",
                ));
            }
            let take = (mps as u64 - len).min(end - addr);
            addr += take;
            if len + take == mps as u64 {
                out.push((start as u32, mps));
                cur = None;
            } else {
                cur = Some((start, len + take));
            }
        }
        while addr < end {
            let take = (mps as u64).min(end - addr);
            if take == mps as u64 {
                out.push((addr as u32, mps));
            } else {
                cur = Some((addr, take));
            }
            addr += take;
        }
    }
    if let Some((start, len)) = cur {
        out.push((start as u32, len as u16));
    }
    Ok(out)
}

/// A control transfer: SETUP (DATA0) from `setup_addr`, the data stage in the direction of
/// bmRequestType bit 7 starting with DATA1, the status stage in the other direction with DATA1.
pub fn plan_control(
    setup_addr: u32,
    setup: &[u8; 8],
    segs: &[DmaSegment],
    mps: u16,
) -> Result<Plan, HcError> {
    let w_length = u16::from_le_bytes([setup[6], setup[7]]) as u64;
    let total: u64 = segs.iter().map(|s| s.len as u64).sum();
    if total > w_length {
        return Err(HcError::Invalid("control data longer than wLength"));
    }
    let dir_in = setup[0] & 0x80 != 0;
    let mut packets = Vec::new();
    packets.push(Packet {
        pid: PID_SETUP,
        buf: setup_addr,
        len: 8,
        toggle: false,
        data: false,
    });
    let mut toggle = true;
    for (buf, len) in split(segs, mps)? {
        packets.push(Packet {
            pid: if dir_in { PID_IN } else { PID_OUT },
            buf,
            len,
            toggle,
            data: true,
        });
        toggle = !toggle;
    }
    // Status stage: opposite direction of the data stage; IN when there is no data stage.
    let status_in = !(dir_in && total > 0);
    packets.push(Packet {
        pid: if status_in { PID_IN } else { PID_OUT },
        buf: 0,
        len: 0,
        toggle: true,
        data: false,
    });
    Ok(Plan {
        status: Some(packets.len() - 1),
        packets,
        next_toggle: false,
    })
}

/// A bulk or interrupt transfer starting with data toggle `toggle`. An empty buffer is one
/// zero-length packet; `zero_packet` adds a zero-length packet after an OUT transfer that is a
/// non-zero multiple of `mps` (USB 2.0 §5.8.3).
pub fn plan_data(
    dir_in: bool,
    segs: &[DmaSegment],
    mps: u16,
    toggle: bool,
    zero_packet: bool,
) -> Result<Plan, HcError> {
    let pid = if dir_in { PID_IN } else { PID_OUT };
    let mut pieces = split(segs, mps)?;
    let total: u64 = pieces.iter().map(|p| p.1 as u64).sum();
    if pieces.is_empty() || (!dir_in && zero_packet && total.is_multiple_of(mps as u64)) {
        pieces.push((0, 0));
    }
    let mut t = toggle;
    let packets = pieces
        .into_iter()
        .map(|(buf, len)| {
            let p = Packet {
                pid,
                buf,
                len,
                toggle: t,
                data: true,
            };
            t = !t;
            p
        })
        .collect();
    Ok(Plan {
        packets,
        status: None,
        next_toggle: t,
    })
}

/// What a completed (inactive) TD says (UHCI 1.1 §3.2.2 status field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdResult {
    /// Still owned by the controller.
    Active,
    /// Done without error; `len` bytes moved.
    Ok { len: u16 },
    /// Done with an error.
    Err { err: HcError, len: u16 },
}

/// Classify a TD's control/status dword.
pub fn td_result(ctrl: TdCtrl) -> TdResult {
    if ctrl.active() {
        return TdResult::Active;
    }
    let len = ctrl.actual_len();
    match map_status(ctrl) {
        None => TdResult::Ok { len },
        Some(err) => TdResult::Err { err, len },
    }
}

/// The error a TD's status bits stand for, most specific first: babble and data-buffer errors are
/// reported with the Stalled bit set (§3.2.2), as is a CRC/timeout or bit-stuff error that
/// exhausted the error counter; Stalled alone is a STALL handshake from the device.
pub fn map_status(ctrl: TdCtrl) -> Option<HcError> {
    let e = ctrl.errors();
    if e == 0 {
        None
    } else if e & TdCtrl::BABBLE != 0 {
        Some(HcError::Babble)
    } else if e & TdCtrl::DBE != 0 {
        Some(HcError::DataBuffer)
    } else if e & (TdCtrl::CRC_TIMEOUT | TdCtrl::BITSTUFF) != 0 {
        Some(HcError::Transaction)
    } else {
        Some(HcError::Stall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(a: u64, l: u32) -> DmaSegment {
        DmaSegment {
            bus_addr: a,
            len: l,
        }
    }

    #[test]
    fn split_merges_contiguous_segments() {
        let p = split(&[seg(0x1000, 100), seg(0x1064, 60)], 64).unwrap();
        assert_eq!(p, vec![(0x1000, 64), (0x1040, 64), (0x1080, 32)]);
        let p = split(&[seg(0x1000, 128), seg(0x9000, 10)], 64).unwrap();
        assert_eq!(p, vec![(0x1000, 64), (0x1040, 64), (0x9000, 10)]);
        assert!(split(&[seg(0x1000, 100), seg(0x9000, 10)], 64).is_err());
        assert!(split(&[seg(0xffff_fff0, 0x20)], 64).is_err(), "above 4 GiB");
        assert_eq!(split(&[], 64).unwrap(), vec![]);
    }

    #[test]
    fn control_in_plan() {
        let setup = [0x80, 6, 0, 1, 0, 0, 18, 0];
        let p = plan_control(0x100, &setup, &[seg(0x2000, 18)], 8).unwrap();
        let pids: Vec<_> = p.packets.iter().map(|p| (p.pid, p.len, p.toggle)).collect();
        assert_eq!(
            pids,
            vec![
                (PID_SETUP, 8, false),
                (PID_IN, 8, true),
                (PID_IN, 8, false),
                (PID_IN, 2, true),
                (PID_OUT, 0, true)
            ]
        );
        assert_eq!(p.status, Some(4));
        let too_long = plan_control(0x100, &setup, &[seg(0x2000, 19)], 8);
        assert!(too_long.is_err());
    }

    #[test]
    fn control_no_data_status_is_in() {
        let setup = [0x00, 5, 3, 0, 0, 0, 0, 0];
        let p = plan_control(0x100, &setup, &[], 64).unwrap();
        assert_eq!(p.packets.len(), 2);
        assert_eq!(p.packets[1].pid, PID_IN);
        assert!(p.packets[1].toggle);
    }

    #[test]
    fn data_plan_zlp_and_toggles() {
        let p = plan_data(false, &[seg(0x3000, 128)], 64, true, true).unwrap();
        let t: Vec<_> = p.packets.iter().map(|p| (p.len, p.toggle)).collect();
        assert_eq!(t, vec![(64, true), (64, false), (0, true)]);
        assert!(!p.next_toggle);
        let p = plan_data(true, &[], 64, false, false).unwrap();
        assert_eq!(p.packets.len(), 1);
        assert_eq!(p.packets[0].len, 0);
        assert!(p.next_toggle);
    }

    #[test]
    fn status_mapping() {
        let c = |bits: u32| TdCtrl(bits | 0x7ff);
        assert_eq!(td_result(TdCtrl(TdCtrl::ACTIVE)), TdResult::Active);
        assert_eq!(td_result(TdCtrl(7)), TdResult::Ok { len: 8 });
        assert_eq!(td_result(c(TdCtrl::NAK)), TdResult::Ok { len: 0 });
        assert_eq!(map_status(c(TdCtrl::STALLED)), Some(HcError::Stall));
        assert_eq!(
            map_status(c(TdCtrl::STALLED | TdCtrl::BABBLE)),
            Some(HcError::Babble)
        );
        assert_eq!(
            map_status(c(TdCtrl::STALLED | TdCtrl::DBE)),
            Some(HcError::DataBuffer)
        );
        assert_eq!(
            map_status(c(TdCtrl::STALLED | TdCtrl::CRC_TIMEOUT)),
            Some(HcError::Transaction)
        );
        assert_eq!(
            map_status(c(TdCtrl::CRC_TIMEOUT)),
            Some(HcError::Transaction),
            "QEMU reports a vanished device as timeout without Stalled"
        );
        assert_eq!(map_status(c(TdCtrl::BITSTUFF)), Some(HcError::Transaction));
    }

    proptest! {
        #[test]
        fn split_covers_buffer_exactly(
            start in 0u64..0x10000,
            lens in proptest::collection::vec(1u32..300, 1..8),
            mps in prop_oneof![Just(8u16), Just(16), Just(32), Just(64)],
        ) {
            // Contiguous segments: always splittable, packets tile the buffer in order.
            let mut segs = Vec::new();
            let mut a = start;
            for l in &lens { segs.push(seg(a, *l)); a += *l as u64; }
            let total: u64 = lens.iter().map(|l| *l as u64).sum();
            let p = split(&segs, mps).unwrap();
            let mut next = start;
            for (i, (b, l)) in p.iter().enumerate() {
                prop_assert_eq!(*b as u64, next);
                if i + 1 < p.len() { prop_assert_eq!(*l, mps); } else { prop_assert!(*l >= 1 && *l <= mps); }
                next += *l as u64;
            }
            prop_assert_eq!(next, start + total);
        }

        #[test]
        fn toggles_alternate(n in 0u32..2000, mps in prop_oneof![Just(8u16), Just(64)], t0: bool) {
            let p = plan_data(true, &[seg(0x10000, n)], mps, t0, false).unwrap();
            for (i, pk) in p.packets.iter().enumerate() {
                prop_assert_eq!(pk.toggle, t0 ^ (i % 2 == 1));
            }
            prop_assert_eq!(p.next_toggle, t0 ^ (p.packets.len() % 2 == 1));
        }
    }
}
