//! Validation and classification of one urb request (`io/usbif.h`;
//! `../shared/reference/pvusb-protocol.md` §1.4–§1.9, §1.14).
//!
//! The request is the backend's own copy (taken out of the ring once by xenidc). Everything in it
//! is checked here before anything acts on it: reserved pipe bits, port range, segment count and
//! shape (through [`RemoteBuffer::new`]: ≤ 16 segments, each within its page, lengths adding up to
//! `buffer_length`), overlapping segments, the transfer type against the endpoint, the control
//! SETUP packet against the data stage. The result names what the backend must do: forward the
//! transfer, or one of the virtualised standard requests.

use usb_core::hc::{Direction as UsbDir, EndpointAddress, TransferFlags};
use usb_core::request::{code as req, FEATURE_ENDPOINT_HALT, RECIP_ENDPOINT};
use xenidc::abi::usbif::{transfer_flags, PipeType, UrbRequest, UsbifStatus, MAX_PORTNR};
use xenidc::abi::DomId;
use xenidc::buffer::{BufferError, Direction, RemoteBuffer};

/// What to do with a validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Pass the transfer to the device.
    Forward,
    /// `SET_ADDRESS(a)`: only the per-port guest address table changes; nothing reaches the device.
    SetAddress(u8),
    /// `SET_CONFIGURATION(v)`: configure the controller's endpoints, then forward.
    SetConfiguration(u8),
    /// `SET_INTERFACE(interface, alternate)`: reconfigure endpoints, then forward.
    SetInterface(u8, u8),
    /// `CLEAR_FEATURE(ENDPOINT_HALT)` of an endpoint: recover the controller side, then forward.
    ClearHalt(EndpointAddress),
}

/// A validated urb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urb {
    pub id: u16,
    pub port: u8,
    /// The guest's device address in the pipe.
    pub devaddr: u8,
    /// Endpoint (endpoint 0 always as `EndpointAddress(0)`).
    pub ep: EndpointAddress,
    pub kind: PipeType,
    pub dir_in: bool,
    pub setup: Option<[u8; 8]>,
    pub buffer: RemoteBuffer,
    pub flags: TransferFlags,
    pub action: Action,
}

impl Urb {
    /// The key of the endpoint queue this urb belongs to.
    pub fn queue_key(&self) -> (u8, u8) {
        (self.port, self.ep.0)
    }
}

/// Why a request was refused, with the status to answer it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: UsbifStatus,
    pub why: &'static str,
}

fn inval(why: &'static str) -> Rejection {
    Rejection {
        status: UsbifStatus::INVAL,
        why,
    }
}

/// Map a buffer validation error to a rejection.
pub fn buffer_rejection(e: &BufferError) -> Rejection {
    match e {
        BufferError::TooManySegments { .. } => inval("too many segments"),
        BufferError::SegmentCrossesPage { .. } => inval("segment crosses its page"),
        BufferError::LengthMismatch { .. } => inval("segment lengths do not add up"),
        BufferError::Grant { .. } => inval("bad grant reference"),
        BufferError::NoResources { .. } => Rejection {
            status: UsbifStatus::SHUTDOWN,
            why: "no mapping resources",
        },
        _ => Rejection {
            status: UsbifStatus::SHUTDOWN,
            why: "buffer error",
        },
    }
}

/// Validate the shape of `r` for a virtual controller with `num_ports` ports. Port assignment,
/// addresses and endpoints are checked by the caller, which knows the devices.
pub fn classify(r: &UrbRequest, peer: DomId, num_ports: u8) -> Result<Urb, Rejection> {
    let pipe = r.pipe;
    if pipe.0 & xenidc::abi::usbif::UsbifPipe::RESERVED_MASK != 0 {
        return Err(inval("reserved pipe bits set"));
    }
    let port = pipe.port();
    if port == 0 || port > num_ports as u32 || port > MAX_PORTNR {
        return Err(inval("port out of range"));
    }
    let kind = pipe.pipe_type();
    let dir_in = pipe.is_in();
    let nsegs = r.nr_buffer_segs as usize;
    if nsegs > r.seg.len() {
        return Err(inval("too many segments"));
    }
    if kind == PipeType::ISOC {
        // Validated like the others, then refused: isochronous transfers are not supported.
        return Err(inval("isochronous transfers are not supported"));
    }
    let segs = &r.seg[..nsegs];
    // Overlapping pieces of one granted page would let the device write the same bytes twice
    // (or read data the guest is changing): refuse them.
    for (i, a) in segs.iter().enumerate() {
        for b in &segs[i + 1..] {
            if a.gref == b.gref {
                let (a0, a1) = (a.offset as u32, a.offset as u32 + a.length as u32);
                let (b0, b1) = (b.offset as u32, b.offset as u32 + b.length as u32);
                if a0 < b1 && b0 < a1 {
                    return Err(inval("overlapping segments"));
                }
            }
        }
    }
    let dir = if dir_in {
        Direction::FromDevice
    } else {
        Direction::ToDevice
    };
    // `buffer_length` is 16 bits while a URB may have 16 full pages: xen-hcd then sends 0 for
    // 65536 bytes (pvusb-protocol.md §1.11). Only that case is taken as 65536.
    let sum: u32 = segs.iter().map(|s| s.length as u32).sum();
    let declared = if r.buffer_length == 0 && sum == 0x1_0000 {
        sum
    } else {
        r.buffer_length as u32
    };
    let buffer = RemoteBuffer::new(peer, dir, segs, declared).map_err(|e| buffer_rejection(&e))?;
    let epnum = pipe.endpoint();
    let devaddr = pipe.device();
    let mut flags = TransferFlags::empty();
    if r.transfer_flags & transfer_flags::SHORT_NOT_OK != 0 && dir_in && kind != PipeType::CTRL {
        flags |= TransferFlags::SHORT_NOT_OK;
    }
    let mut action = Action::Forward;
    let (ep, setup) = if kind == PipeType::CTRL {
        if epnum != 0 {
            return Err(inval("control transfers only on endpoint 0"));
        }
        let s = r.setup();
        let w_length = u16::from_le_bytes([s[6], s[7]]);
        let setup_in = s[0] & 0x80 != 0;
        if buffer.len() > w_length as u32 {
            return Err(inval("data stage longer than wLength"));
        }
        if !buffer.is_empty() && setup_in != dir_in {
            return Err(inval("pipe direction differs from the SETUP packet"));
        }
        let w_value = u16::from_le_bytes([s[2], s[3]]);
        let w_index = u16::from_le_bytes([s[4], s[5]]);
        match (s[0], s[1]) {
            (0x00, req::SET_ADDRESS) => {
                if w_value == 0 || w_value > 127 || !buffer.is_empty() {
                    return Err(inval("bad SET_ADDRESS"));
                }
                action = Action::SetAddress(w_value as u8);
            }
            (0x00, req::SET_CONFIGURATION) => {
                if w_value > 255 || !buffer.is_empty() {
                    return Err(inval("bad SET_CONFIGURATION"));
                }
                action = Action::SetConfiguration(w_value as u8);
            }
            (0x01, req::SET_INTERFACE) => {
                if w_value > 255 || w_index > 255 || !buffer.is_empty() {
                    return Err(inval("bad SET_INTERFACE"));
                }
                action = Action::SetInterface(w_index as u8, w_value as u8);
            }
            (t, req::CLEAR_FEATURE) if t == RECIP_ENDPOINT && w_value == FEATURE_ENDPOINT_HALT => {
                let ep = EndpointAddress(w_index as u8);
                if w_index > 0xff || !ep.is_valid() || !buffer.is_empty() {
                    return Err(inval("bad CLEAR_FEATURE(ENDPOINT_HALT)"));
                }
                action = Action::ClearHalt(if ep.is_ep0() {
                    EndpointAddress::EP0
                } else {
                    ep
                });
            }
            _ => {}
        }
        (EndpointAddress::EP0, Some(s))
    } else {
        if epnum == 0 {
            return Err(inval("bulk/interrupt transfer on endpoint 0"));
        }
        let d = if dir_in { UsbDir::In } else { UsbDir::Out };
        (EndpointAddress::new(epnum, d), None)
    };
    if devaddr == 0 {
        // Address 0 is the device on this port before the guest addressed it: only descriptor
        // reads and the SET_ADDRESS itself make sense there.
        let ok = match (action, setup) {
            (Action::SetAddress(_), _) => true,
            (Action::Forward, Some(s)) => s[0] == 0x80 && s[1] == req::GET_DESCRIPTOR,
            _ => false,
        };
        if !ok {
            return Err(inval("only GET_DESCRIPTOR and SET_ADDRESS at address 0"));
        }
    }
    Ok(Urb {
        id: r.id,
        port: port as u8,
        devaddr,
        ep,
        kind,
        dir_in,
        setup,
        buffer,
        flags,
        action,
    })
}

/// The usbif status for a host-controller error (`../shared/reference/pvusb-protocol.md` §1.9).
pub fn status_of(e: &usb_core::hc::HcError) -> UsbifStatus {
    use usb_core::hc::HcError as E;
    match e {
        E::Stall | E::EndpointHalted => UsbifStatus::STALL,
        E::Babble => UsbifStatus::BABBLE,
        E::Transaction | E::DataBuffer | E::Timeout | E::Cancelled => UsbifStatus::IOERROR,
        E::NoDevice => UsbifStatus::NODEV,
        E::Invalid(_) | E::NotSupported(_) => UsbifStatus::INVAL,
        // A short packet with SHORT_NOT_OK (Linux -EREMOTEIO) has no usbif code.
        E::ShortPacket | E::NoResources | E::Controller(_) | E::ControllerDead | E::Hal(_) => {
            UsbifStatus::SHUTDOWN
        }
    }
}
