//! Device, input and endpoint contexts (xHCI 1.2 §6.2): their layout for 32- and 64-byte contexts
//! (HCCPARAMS1.CSZ), the encoding of the slot context (§6.2.2) and endpoint context (§6.2.3), and
//! the input control context (§6.2.5.1).  Contexts live in DMA buffers; these helpers compute
//! offsets and dwords, never Rust references into device memory.

use usb_core::hc::{Direction, EndpointAddress, EndpointInfo, Speed, TransferType};

use crate::regs;

/// Number of contexts in a device context (slot + 31 endpoints).
pub const DEVICE_CONTEXTS: usize = 32;
/// Number of contexts in an input context (input control + slot + 31 endpoints).
pub const INPUT_CONTEXTS: usize = 33;

/// Byte offsets of the fields inside one context (the first 32 bytes; a 64-byte context has 32
/// reserved bytes after them).
pub mod off {
    // Slot context (§6.2.2).
    pub const SLOT_ROUTE_SPEED_ENTRIES: usize = 0x00;
    pub const SLOT_PORT_NPORTS: usize = 0x04;
    pub const SLOT_TT: usize = 0x08;
    pub const SLOT_ADDR_STATE: usize = 0x0c;
    // Endpoint context (§6.2.3).
    pub const EP_STATE_INTERVAL: usize = 0x00;
    pub const EP_TYPE_MPS: usize = 0x04;
    pub const EP_DEQUEUE: usize = 0x08;
    pub const EP_AVG_ESIT: usize = 0x10;
    // Input control context (§6.2.5.1).
    pub const ICC_DROP: usize = 0x00;
    pub const ICC_ADD: usize = 0x04;
    pub const ICC_CONFIG: usize = 0x1c;
}

// Layout asserts: the fields fit in the 32 bytes every context size has, in the spec's order.
const _: () = assert!(off::SLOT_ADDR_STATE + 4 <= 32);
const _: () = assert!(off::EP_DEQUEUE == 8 && off::EP_AVG_ESIT == 16);
const _: () = assert!(off::ICC_CONFIG == 7 * 4);
const _: () = assert!(INPUT_CONTEXTS * 64 == 2112 && DEVICE_CONTEXTS * 32 == 1024);

/// Context size and derived offsets for one controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// 32 or 64.
    pub csz: usize,
}

impl Layout {
    pub fn from_hccparams1(hcc: u32) -> Self {
        Layout {
            csz: if hcc & regs::HCC_CSZ != 0 { 64 } else { 32 },
        }
    }
    pub fn device_context_len(&self) -> usize {
        DEVICE_CONTEXTS * self.csz
    }
    pub fn input_context_len(&self) -> usize {
        INPUT_CONTEXTS * self.csz
    }
    /// Offset of the slot context in an input context.
    pub fn input_slot(&self) -> usize {
        self.csz
    }
    /// Offset of endpoint context `dci` (1..=31) in an input context.
    pub fn input_ep(&self, dci: u8) -> usize {
        (dci as usize + 1) * self.csz
    }
    /// Offset of endpoint context `dci` in a device (output) context; the slot context is at 0.
    pub fn output_ep(&self, dci: u8) -> usize {
        dci as usize * self.csz
    }
}

/// Device Context Index of an endpoint (§4.5.1): 1 for endpoint 0, `2 * n + (IN ? 1 : 0)` else.
pub fn dci(ep: EndpointAddress) -> u8 {
    if ep.is_ep0() {
        1
    } else {
        2 * ep.number() + (ep.direction() == Direction::In) as u8
    }
}

/// Slot context speed value (the default protocol speed IDs, §7.2.2.1.1).
pub fn speed_id(s: Speed) -> u32 {
    match s {
        Speed::Full => regs::SPEED_FULL,
        Speed::Low => regs::SPEED_LOW,
        Speed::High => regs::SPEED_HIGH,
        Speed::Super => regs::SPEED_SUPER,
    }
}

/// The slot context fields usbdom sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotContext {
    pub route: u32,
    pub speed: u32,
    pub multi_tt: bool,
    pub hub: bool,
    pub context_entries: u8,
    pub root_port: u8,
    pub num_ports: u8,
    pub tt_hub_slot: u8,
    pub tt_port: u8,
    pub tt_think_time: u8,
}

impl SlotContext {
    pub fn encode(&self) -> [u32; 4] {
        [
            (self.route & 0xf_ffff)
                | (self.speed & 0xf) << 20
                | (self.multi_tt as u32) << 25
                | (self.hub as u32) << 26
                | (self.context_entries as u32 & 0x1f) << 27,
            (self.root_port as u32) << 16 | (self.num_ports as u32) << 24,
            self.tt_hub_slot as u32
                | (self.tt_port as u32) << 8
                | (self.tt_think_time as u32 & 3) << 16,
            0,
        ]
    }
}

/// Slot state from dword 3 of an output slot context.
pub fn slot_state(dword3: u32) -> u8 {
    (dword3 >> 27) as u8
}

/// USB device address from dword 3 of an output slot context.
pub fn slot_address(dword3: u32) -> u8 {
    dword3 as u8
}

/// Endpoint context fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointContext {
    pub ep_type: u32,
    pub max_packet: u16,
    pub max_burst: u8,
    pub mult: u8,
    pub interval: u8,
    pub error_count: u8,
    pub dequeue: u64,
    pub dcs: bool,
    pub average_trb_length: u16,
    pub max_esit_payload: u32,
}

/// Endpoint types (§6.2.3, Table 6-9).
pub mod ep_type {
    pub const ISOCH_OUT: u32 = 1;
    pub const BULK_OUT: u32 = 2;
    pub const INTERRUPT_OUT: u32 = 3;
    pub const CONTROL: u32 = 4;
    pub const ISOCH_IN: u32 = 5;
    pub const BULK_IN: u32 = 6;
    pub const INTERRUPT_IN: u32 = 7;
}

/// Endpoint states (§6.2.3, Table 6-8).
pub mod ep_state {
    pub const DISABLED: u8 = 0;
    pub const RUNNING: u8 = 1;
    pub const HALTED: u8 = 2;
    pub const STOPPED: u8 = 3;
    pub const ERROR: u8 = 4;
}

impl EndpointContext {
    pub fn encode(&self) -> [u32; 5] {
        [
            (self.mult as u32 & 3) << 8
                | (self.interval as u32) << 16
                | (self.max_esit_payload >> 16) << 24,
            (self.error_count as u32 & 3) << 1
                | (self.ep_type & 7) << 3
                | (self.max_burst as u32) << 8
                | (self.max_packet as u32) << 16,
            (self.dequeue as u32 & !0xf) | self.dcs as u32,
            (self.dequeue >> 32) as u32,
            self.average_trb_length as u32 | (self.max_esit_payload & 0xffff) << 16,
        ]
    }

    /// The default control endpoint (§4.3.3, §6.2.3).
    pub fn control(max_packet: u16, ring: u64) -> Self {
        EndpointContext {
            ep_type: ep_type::CONTROL,
            max_packet,
            error_count: 3,
            dequeue: ring,
            dcs: true,
            average_trb_length: 8,
            ..Default::default()
        }
    }

    /// A non-control endpoint from its descriptors, at device speed `speed`.
    pub fn from_info(e: &EndpointInfo, speed: Speed, ring: u64) -> Self {
        let is_in = e.address.direction() == Direction::In;
        let ty = match (e.kind, is_in) {
            (TransferType::Isochronous, false) => ep_type::ISOCH_OUT,
            (TransferType::Isochronous, true) => ep_type::ISOCH_IN,
            (TransferType::Bulk, false) => ep_type::BULK_OUT,
            (TransferType::Bulk, true) => ep_type::BULK_IN,
            (TransferType::Interrupt, false) => ep_type::INTERRUPT_OUT,
            (TransferType::Interrupt, true) => ep_type::INTERRUPT_IN,
            (TransferType::Control, _) => ep_type::CONTROL,
        };
        let periodic = matches!(e.kind, TransferType::Interrupt | TransferType::Isochronous);
        let (burst, mult) = match speed {
            Speed::Super => (e.max_burst, e.mult),
            // High-speed periodic endpoints carry extra transactions in Max Burst (§6.2.3.4).
            Speed::High if periodic => (e.mult, 0),
            _ => (0, 0),
        };
        let esit = if !periodic {
            0
        } else if speed == Speed::Super && e.bytes_per_interval != 0 {
            e.bytes_per_interval as u32
        } else {
            e.max_packet as u32 * (burst as u32 + 1) * (mult as u32 + 1)
        };
        EndpointContext {
            ep_type: ty,
            max_packet: e.max_packet,
            max_burst: burst,
            mult,
            interval: interval(e, speed),
            error_count: if e.kind == TransferType::Isochronous {
                0
            } else {
                3
            },
            dequeue: ring,
            dcs: true,
            average_trb_length: if periodic {
                esit.clamp(1, 0xffff) as u16
            } else {
                3072
            },
            max_esit_payload: esit,
        }
    }
}

/// The Interval field (§6.2.3.6): a period of `2^interval` × 125 µs.
pub fn interval(e: &EndpointInfo, speed: Speed) -> u8 {
    let b = e.interval;
    match (e.kind, speed) {
        (TransferType::Bulk | TransferType::Control, _) => 0,
        // bInterval is an exponent 1..16 of 125 µs units.
        (_, Speed::High | Speed::Super) => b.clamp(1, 16) - 1,
        // Full-speed isochronous: 2^(bInterval-1) frames.
        (TransferType::Isochronous, _) => b.clamp(1, 16) + 2,
        // Low/full-speed interrupt: bInterval frames (1..255) → the largest power of two of
        // 125 µs units not above it, between 8 (1 ms) and 2^10.
        (_, _) => {
            let uframes = (b.max(1) as u32) * 8;
            (31 - uframes.leading_zeros()).clamp(3, 10) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: u8, kind: TransferType, mps: u16, interval: u8) -> EndpointInfo {
        EndpointInfo {
            address: EndpointAddress(addr),
            kind,
            max_packet: mps,
            mult: 0,
            max_burst: 0,
            interval,
            bytes_per_interval: 0,
        }
    }

    #[test]
    fn layout_offsets() {
        let l32 = Layout::from_hccparams1(0);
        let l64 = Layout::from_hccparams1(regs::HCC_CSZ);
        assert_eq!(l32.csz, 32);
        assert_eq!(l64.csz, 64);
        assert_eq!(l32.input_slot(), 0x20);
        assert_eq!(l32.input_ep(1), 0x40);
        assert_eq!(l64.input_ep(1), 0x80);
        assert_eq!(l64.input_ep(31), 32 * 64);
        assert_eq!(l32.output_ep(31), 31 * 32);
        assert_eq!(l64.device_context_len(), 2048);
        assert_eq!(l64.input_context_len(), 2112);
    }

    #[test]
    fn dci_numbering() {
        assert_eq!(dci(EndpointAddress(0)), 1);
        assert_eq!(dci(EndpointAddress(0x80)), 1);
        assert_eq!(dci(EndpointAddress(0x01)), 2);
        assert_eq!(dci(EndpointAddress(0x81)), 3);
        assert_eq!(dci(EndpointAddress(0x8f)), 31);
    }

    #[test]
    fn slot_and_endpoint_encoding() {
        let s = SlotContext {
            route: 0x21,
            speed: regs::SPEED_FULL,
            multi_tt: false,
            hub: true,
            context_entries: 3,
            root_port: 5,
            num_ports: 4,
            tt_hub_slot: 2,
            tt_port: 3,
            tt_think_time: 1,
        }
        .encode();
        assert_eq!(s[0], 0x21 | 1 << 20 | 1 << 26 | 3 << 27);
        assert_eq!(s[1], 5 << 16 | 4 << 24);
        assert_eq!(s[2], 2 | 3 << 8 | 1 << 16);
        let c = EndpointContext::control(64, 0x12340).encode();
        assert_eq!(c[1], 3 << 1 | 4 << 3 | 64 << 16);
        assert_eq!(c[2], 0x12341);
        assert_eq!(c[4] & 0xffff, 8);
        let bulk =
            EndpointContext::from_info(&ep(0x81, TransferType::Bulk, 512, 0), Speed::High, 0x5000);
        assert_eq!(bulk.ep_type, ep_type::BULK_IN);
        assert_eq!(bulk.interval, 0);
        let kbd =
            EndpointContext::from_info(&ep(0x81, TransferType::Interrupt, 8, 10), Speed::Full, 0);
        assert_eq!(kbd.ep_type, ep_type::INTERRUPT_IN);
        assert_eq!(kbd.interval, 6, "10 ms → 64 × 125 µs = 8 ms");
        assert_eq!(kbd.max_esit_payload, 8);
        let hs_int =
            EndpointContext::from_info(&ep(0x01, TransferType::Interrupt, 64, 4), Speed::High, 0);
        assert_eq!(hs_int.ep_type, ep_type::INTERRUPT_OUT);
        assert_eq!(hs_int.interval, 3);
        assert_eq!(slot_state(3 << 27 | 5), 3);
        assert_eq!(slot_address(3 << 27 | 5), 5);
    }
}
