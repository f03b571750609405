//! The PV USB protocol (`io/usbif.h`; `../shared/reference/pvusb-protocol.md` §1): the urb ring and
//! conn ring entry layouts, pipe encoding, transfer flags, status codes and speeds.

use super::GrantRef;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Ring pages are always 4 KiB (`USBIF_RING_SIZE`).
pub const RING_PAGE_SIZE: usize = 4096;
/// `USBIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 16;
/// `USBIF_MAX_PORTNR`.
pub const MAX_PORTNR: u32 = 31;
/// `USB_URB_RING_SIZE`: entries of the urb ring.
pub const URB_RING_SIZE: usize = 16;
/// `USB_CONN_RING_SIZE`: entries of the conn ring.
pub const CONN_RING_SIZE: usize = 512;

/// One data segment of a request (`usbif_request_segment`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RequestSegment {
    pub gref: GrantRef,
    /// Offset within the granted page.
    pub offset: u16,
    pub length: u16,
}
layout!(RequestSegment, size 8, gref @ 0, offset @ 4, length @ 6);

/// A USB pipe word (`pipe` of a urb request), as sent by the frontend: any bit pattern.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct UsbifPipe(pub u32);

impl UsbifPipe {
    pub const PORT_MASK: u32 = 0x1f;
    pub const UNLINK: u32 = 0x20;
    pub const RESERVED_BIT6: u32 = 0x40;
    pub const DIR_IN: u32 = 0x80;
    pub const DEV_MASK: u32 = 0x7f;
    pub const DEV_SHIFT: u32 = 8;
    pub const EP_MASK: u32 = 0xf;
    pub const EP_SHIFT: u32 = 15;
    pub const TYPE_MASK: u32 = 3;
    pub const TYPE_SHIFT: u32 = 30;
    /// Bits 6 and 19–29, which must be zero.
    pub const RESERVED_MASK: u32 = 0x40 | (0x7ff << 19);

    /// Root port number (1..=31 when valid; 0 is invalid).
    pub const fn port(self) -> u32 {
        self.0 & Self::PORT_MASK
    }
    /// True for an unlink (cancel) request.
    pub const fn is_unlink(self) -> bool {
        self.0 & Self::UNLINK != 0
    }
    /// True for device-to-host transfers.
    pub const fn is_in(self) -> bool {
        self.0 & Self::DIR_IN != 0
    }
    /// Device address as assigned by the guest.
    pub const fn device(self) -> u8 {
        ((self.0 >> Self::DEV_SHIFT) & Self::DEV_MASK) as u8
    }
    /// Endpoint number.
    pub const fn endpoint(self) -> u8 {
        ((self.0 >> Self::EP_SHIFT) & Self::EP_MASK) as u8
    }
    /// Transfer type (see [`PipeType`]).
    pub const fn pipe_type(self) -> PipeType {
        PipeType(((self.0 >> Self::TYPE_SHIFT) & Self::TYPE_MASK) as u8)
    }
    /// Build a pipe word.
    pub const fn new(port: u32, dev: u8, ep: u8, ty: PipeType, dir_in: bool) -> UsbifPipe {
        UsbifPipe(
            (port & Self::PORT_MASK)
                | if dir_in { Self::DIR_IN } else { 0 }
                | ((dev as u32 & Self::DEV_MASK) << Self::DEV_SHIFT)
                | ((ep as u32 & Self::EP_MASK) << Self::EP_SHIFT)
                | ((ty.0 as u32 & Self::TYPE_MASK) << Self::TYPE_SHIFT),
        )
    }
}

/// The usbif transfer type (bits 30–31 of the pipe). Not the Linux or xHCI numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipeType(pub u8);

impl PipeType {
    pub const ISOC: PipeType = PipeType(0);
    pub const INT: PipeType = PipeType(1);
    pub const CTRL: PipeType = PipeType(2);
    pub const BULK: PipeType = PipeType(3);
}

/// `transfer_flags` bits.
pub mod transfer_flags {
    /// `USBIF_SHORT_NOT_OK`: a short IN transfer is an error.
    pub const SHORT_NOT_OK: u16 = 0x0001;
}

/// A urb ring request (`usbif_urb_request`, 148 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct UrbRequest {
    /// Frontend's shadow id, echoed in the response.
    pub id: u16,
    /// Number of data-buffer segments (then, for ISO, frame-descriptor segments follow).
    pub nr_buffer_segs: u16,
    pub pipe: UsbifPipe,
    pub transfer_flags: u16,
    pub buffer_length: u16,
    /// The per-type union: control SETUP packet; isoc `interval`, `start_frame`,
    /// `number_of_packets`, `nr_frame_desc_segs`; intr `interval`; unlink `unlink_id`. See the
    /// accessor methods.
    pub u: [u8; 8],
    pub seg: [RequestSegment; MAX_SEGMENTS_PER_REQUEST],
}
layout!(UrbRequest, size 148, id @ 0, nr_buffer_segs @ 2, pipe @ 4, transfer_flags @ 8, buffer_length @ 10, u @ 12, seg @ 20);

impl UrbRequest {
    fn u16_at(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.u[2 * i], self.u[2 * i + 1]])
    }
    /// Control transfers: the 8-byte SETUP packet.
    pub fn setup(&self) -> [u8; 8] {
        self.u
    }
    /// Interrupt and isochronous transfers: `interval`.
    pub fn interval(&self) -> u16 {
        self.u16_at(0)
    }
    /// Isochronous: `start_frame`.
    pub fn isoc_start_frame(&self) -> u16 {
        self.u16_at(1)
    }
    /// Isochronous: `number_of_packets`.
    pub fn isoc_number_of_packets(&self) -> u16 {
        self.u16_at(2)
    }
    /// Isochronous: `nr_frame_desc_segs`.
    pub fn isoc_nr_frame_desc_segs(&self) -> u16 {
        self.u16_at(3)
    }
    /// Unlink requests: the id of the request to cancel.
    pub fn unlink_id(&self) -> u16 {
        self.u16_at(0)
    }
}

impl Default for UrbRequest {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

/// A urb ring response (`usbif_urb_response`, 16 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct UrbResponse {
    pub id: u16,
    /// Isochronous only.
    pub start_frame: u16,
    pub status: UsbifStatus,
    pub actual_length: i32,
    /// Isochronous only.
    pub error_count: i32,
}
layout!(UrbResponse, size 16, id @ 0, start_frame @ 2, status @ 4, actual_length @ 8, error_count @ 12);

/// `response.status`: 0 or a negative Linux errno.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct UsbifStatus(pub i32);

impl UsbifStatus {
    pub const OK: UsbifStatus = UsbifStatus(0);
    pub const NODEV: UsbifStatus = UsbifStatus(-19);
    pub const INVAL: UsbifStatus = UsbifStatus(-22);
    pub const STALL: UsbifStatus = UsbifStatus(-32);
    pub const IOERROR: UsbifStatus = UsbifStatus(-71);
    pub const BABBLE: UsbifStatus = UsbifStatus(-75);
    pub const SHUTDOWN: UsbifStatus = UsbifStatus(-108);
}

/// A conn ring request (`usbif_conn_request`, 2 bytes): an empty slot the frontend posts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ConnRequest {
    pub id: u16,
}
layout!(ConnRequest, size 2, id @ 0);

/// A conn ring response (`usbif_conn_response`, 4 bytes): a port's new speed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ConnResponse {
    pub id: u16,
    pub portnum: u8,
    pub speed: UsbifSpeed,
}
layout!(ConnResponse, size 4, id @ 0, portnum @ 2, speed @ 3);

/// A port speed on the conn ring (`USBIF_SPEED_*`; numerically Linux `enum usb_device_speed`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct UsbifSpeed(pub u8);

impl UsbifSpeed {
    /// No device (unplugged).
    pub const NONE: UsbifSpeed = UsbifSpeed(0);
    pub const LOW: UsbifSpeed = UsbifSpeed(1);
    pub const FULL: UsbifSpeed = UsbifSpeed(2);
    pub const HIGH: UsbifSpeed = UsbifSpeed(3);
}

/// The `usb-ver` xenstore value (`enum usb_spec_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsbVer(pub u32);

impl UsbVer {
    pub const UNKNOWN: UsbVer = UsbVer(0);
    pub const USB11: UsbVer = UsbVer(1);
    pub const USB20: UsbVer = UsbVer(2);
    /// "Not supported yet" in the header.
    pub const USB30: UsbVer = UsbVer(3);
}

const _: () =
    assert!(super::ring::page_ring_size(core::mem::size_of::<UrbRequest>()) == URB_RING_SIZE);
const _: () =
    assert!(super::ring::page_ring_size(core::mem::size_of::<ConnResponse>()) == CONN_RING_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn pipe_fields() {
        // Port 3, IN, device 0x55, endpoint 9, bulk.
        let p = UsbifPipe(3 | 0x80 | (0x55 << 8) | (9 << 15) | (3 << 30));
        assert_eq!(
            (p.port(), p.is_in(), p.device(), p.endpoint()),
            (3, true, 0x55, 9)
        );
        assert_eq!(p.pipe_type(), PipeType::BULK);
        assert!(!p.is_unlink());
        assert_eq!(UsbifPipe::new(3, 0x55, 9, PipeType::BULK, true), p);
        assert!(UsbifPipe(p.0 | UsbifPipe::UNLINK).is_unlink());
        assert_eq!(UsbifPipe(2 << 30).pipe_type(), PipeType::CTRL);
        assert_eq!(p.0 & UsbifPipe::RESERVED_MASK, 0);
        assert_ne!((1u32 << 19) & UsbifPipe::RESERVED_MASK, 0);
    }

    #[test]
    fn request_union_accessors_are_little_endian() {
        let mut r = UrbRequest {
            u: [1, 0, 2, 0, 3, 0, 4, 0],
            ..Default::default()
        };
        assert_eq!(
            (
                r.interval(),
                r.isoc_start_frame(),
                r.isoc_number_of_packets(),
                r.isoc_nr_frame_desc_segs()
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(r.unlink_id(), 1);
        r.id = 0x0102;
        r.seg[1].gref = GrantRef(0x0a0b0c0d);
        let bytes = r.as_bytes();
        assert_eq!(&bytes[0..2], &[2, 1]);
        assert_eq!(&bytes[28..32], &[0x0d, 0x0c, 0x0b, 0x0a]);
    }
}
