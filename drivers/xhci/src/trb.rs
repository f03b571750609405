//! Transfer Request Blocks (xHCI 1.2 §4.11, §6.4): the 16-byte records of every ring, their types,
//! the control-field bits, and the mapping of completion codes (§6.4.5) to [`HcError`].

use usb_core::hc::HcError;

/// Size of a TRB in bytes (§6.4).
pub const TRB_SIZE: usize = 16;

/// A TRB as four little-endian dwords: parameter (low, high), status, control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trb {
    pub parameter: u64,
    pub status: u32,
    pub control: u32,
}

const _: () = assert!(TRB_SIZE == 16);

/// TRB types (§6.4.6, Table 6-91).
pub mod ty {
    pub const NORMAL: u32 = 1;
    pub const SETUP: u32 = 2;
    pub const DATA: u32 = 3;
    pub const STATUS: u32 = 4;
    pub const ISOCH: u32 = 5;
    pub const LINK: u32 = 6;
    pub const EVENT_DATA: u32 = 7;
    pub const NOOP: u32 = 8;
    pub const ENABLE_SLOT: u32 = 9;
    pub const DISABLE_SLOT: u32 = 10;
    pub const ADDRESS_DEVICE: u32 = 11;
    pub const CONFIGURE_ENDPOINT: u32 = 12;
    pub const EVALUATE_CONTEXT: u32 = 13;
    pub const RESET_ENDPOINT: u32 = 14;
    pub const STOP_ENDPOINT: u32 = 15;
    pub const SET_TR_DEQUEUE: u32 = 16;
    pub const RESET_DEVICE: u32 = 17;
    pub const NOOP_COMMAND: u32 = 23;
    pub const TRANSFER_EVENT: u32 = 32;
    pub const COMMAND_COMPLETION: u32 = 33;
    pub const PORT_STATUS_CHANGE: u32 = 34;
    pub const HOST_CONTROLLER: u32 = 37;
}

// Control-field bits.
pub const CYCLE: u32 = 1 << 0;
/// Link TRB: toggle cycle.
pub const LINK_TC: u32 = 1 << 1;
pub const ENT: u32 = 1 << 1;
/// Interrupt on short packet.
pub const ISP: u32 = 1 << 2;
pub const CHAIN: u32 = 1 << 4;
pub const IOC: u32 = 1 << 5;
/// Immediate data (setup stage).
pub const IDT: u32 = 1 << 6;
/// Data/status stage direction IN.
pub const DIR_IN: u32 = 1 << 16;
/// Setup stage transfer type (TRT) bits 17:16.
pub const TRT_NO_DATA: u32 = 0 << 16;
pub const TRT_OUT: u32 = 2 << 16;
pub const TRT_IN: u32 = 3 << 16;
/// Address Device: block SET_ADDRESS request.
pub const BSR: u32 = 1 << 9;

impl Trb {
    pub fn ty(&self) -> u32 {
        (self.control >> 10) & 0x3f
    }
    pub fn cycle(&self) -> bool {
        self.control & CYCLE != 0
    }
    pub fn with_type(ty: u32) -> Self {
        Trb {
            parameter: 0,
            status: 0,
            control: ty << 10,
        }
    }
    /// Completion code of an event TRB (status bits 31:24).
    pub fn completion_code(&self) -> u8 {
        (self.status >> 24) as u8
    }
    /// Slot ID of an event or command TRB (control bits 31:24).
    pub fn slot_id(&self) -> u8 {
        (self.control >> 24) as u8
    }
    /// Endpoint ID (DCI) of a transfer event (control bits 20:16).
    pub fn endpoint_id(&self) -> u8 {
        ((self.control >> 16) & 0x1f) as u8
    }
    /// Transfer event residual length (status bits 23:0).
    pub fn transfer_residual(&self) -> u32 {
        self.status & 0x00ff_ffff
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.parameter.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Trb {
            parameter: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            status: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            control: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        }
    }

    // Commands (§6.4.3).
    pub fn enable_slot(slot_type: u8) -> Self {
        let mut t = Trb::with_type(ty::ENABLE_SLOT);
        t.control |= (slot_type as u32 & 0x1f) << 16;
        t
    }
    pub fn disable_slot(slot: u8) -> Self {
        let mut t = Trb::with_type(ty::DISABLE_SLOT);
        t.control |= (slot as u32) << 24;
        t
    }
    pub fn address_device(input_ctx: u64, slot: u8, bsr: bool) -> Self {
        let mut t = Trb::with_type(ty::ADDRESS_DEVICE);
        t.parameter = input_ctx;
        t.control |= (slot as u32) << 24 | if bsr { BSR } else { 0 };
        t
    }
    pub fn configure_endpoint(input_ctx: u64, slot: u8) -> Self {
        let mut t = Trb::with_type(ty::CONFIGURE_ENDPOINT);
        t.parameter = input_ctx;
        t.control |= (slot as u32) << 24;
        t
    }
    pub fn evaluate_context(input_ctx: u64, slot: u8) -> Self {
        let mut t = Trb::with_type(ty::EVALUATE_CONTEXT);
        t.parameter = input_ctx;
        t.control |= (slot as u32) << 24;
        t
    }
    pub fn reset_endpoint(slot: u8, dci: u8) -> Self {
        let mut t = Trb::with_type(ty::RESET_ENDPOINT);
        t.control |= (slot as u32) << 24 | (dci as u32) << 16;
        t
    }
    pub fn stop_endpoint(slot: u8, dci: u8) -> Self {
        let mut t = Trb::with_type(ty::STOP_ENDPOINT);
        t.control |= (slot as u32) << 24 | (dci as u32) << 16;
        t
    }
    /// Set TR Dequeue Pointer with the dequeue cycle state in bit 0 (stream context type 0).
    pub fn set_tr_dequeue(slot: u8, dci: u8, ptr: u64, cycle: bool) -> Self {
        let mut t = Trb::with_type(ty::SET_TR_DEQUEUE);
        t.parameter = (ptr & !0xf) | cycle as u64;
        t.control |= (slot as u32) << 24 | (dci as u32) << 16;
        t
    }
    pub fn noop_command() -> Self {
        Trb::with_type(ty::NOOP_COMMAND)
    }
    /// Link TRB to `target` with toggle cycle.
    pub fn link(target: u64, toggle: bool) -> Self {
        let mut t = Trb::with_type(ty::LINK);
        t.parameter = target;
        if toggle {
            t.control |= LINK_TC;
        }
        t
    }
}

/// Completion codes (§6.4.5, Table 6-90).
pub mod cc {
    pub const SUCCESS: u8 = 1;
    pub const DATA_BUFFER: u8 = 2;
    pub const BABBLE: u8 = 3;
    pub const TRANSACTION: u8 = 4;
    pub const TRB: u8 = 5;
    pub const STALL: u8 = 6;
    pub const RESOURCE: u8 = 7;
    pub const BANDWIDTH: u8 = 8;
    pub const NO_SLOTS: u8 = 9;
    pub const SLOT_NOT_ENABLED: u8 = 11;
    pub const EP_NOT_ENABLED: u8 = 12;
    pub const SHORT_PACKET: u8 = 13;
    pub const RING_UNDERRUN: u8 = 14;
    pub const RING_OVERRUN: u8 = 15;
    pub const PARAMETER: u8 = 17;
    pub const CONTEXT_STATE: u8 = 19;
    pub const EVENT_RING_FULL: u8 = 21;
    pub const INCOMPATIBLE_DEVICE: u8 = 22;
    pub const MISSED_SERVICE: u8 = 23;
    pub const COMMAND_RING_STOPPED: u8 = 24;
    pub const COMMAND_ABORTED: u8 = 25;
    pub const STOPPED: u8 = 26;
    pub const STOPPED_LENGTH_INVALID: u8 = 27;
    pub const STOPPED_SHORT_PACKET: u8 = 28;
    pub const SPLIT_TRANSACTION: u8 = 36;
}

/// Map a completion code to the host-controller error (`Ok` for success and short packet, which
/// the transfer code judges with the transfer's flags).
pub fn completion_to_result(code: u8) -> Result<(), HcError> {
    match code {
        cc::SUCCESS | cc::SHORT_PACKET => Ok(()),
        cc::DATA_BUFFER | cc::RING_UNDERRUN | cc::RING_OVERRUN => Err(HcError::DataBuffer),
        cc::BABBLE => Err(HcError::Babble),
        cc::TRANSACTION | cc::SPLIT_TRANSACTION | cc::MISSED_SERVICE => Err(HcError::Transaction),
        cc::STALL => Err(HcError::Stall),
        cc::RESOURCE | cc::BANDWIDTH | cc::NO_SLOTS => Err(HcError::NoResources),
        cc::SLOT_NOT_ENABLED | cc::EP_NOT_ENABLED | cc::INCOMPATIBLE_DEVICE => {
            Err(HcError::NoDevice)
        }
        cc::STOPPED | cc::STOPPED_LENGTH_INVALID | cc::STOPPED_SHORT_PACKET => {
            Err(HcError::Cancelled)
        }
        cc::COMMAND_ABORTED | cc::COMMAND_RING_STOPPED => Err(HcError::Timeout),
        cc::TRB | cc::PARAMETER | cc::CONTEXT_STATE => {
            Err(HcError::Invalid("rejected by controller"))
        }
        other => Err(HcError::Controller(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_bytes() {
        let t = Trb::set_tr_dequeue(3, 5, 0x1234_5670, true);
        assert_eq!(t.ty(), ty::SET_TR_DEQUEUE);
        assert_eq!(t.slot_id(), 3);
        assert_eq!(t.endpoint_id(), 5);
        assert_eq!(t.parameter, 0x1234_5671);
        let b = t.to_bytes();
        assert_eq!(&b[12..16], &(t.control).to_le_bytes());
        assert_eq!(Trb::from_bytes(&b), t);
        let a = Trb::address_device(0x8000, 1, true);
        assert_eq!(a.control, (11 << 10) | BSR | (1 << 24));
        let ev = Trb {
            parameter: 0,
            status: (6 << 24) | 0x123,
            control: 32 << 10,
        };
        assert_eq!(ev.completion_code(), cc::STALL);
        assert_eq!(ev.transfer_residual(), 0x123);
    }

    #[test]
    fn completion_codes() {
        assert_eq!(completion_to_result(cc::SUCCESS), Ok(()));
        assert_eq!(completion_to_result(cc::SHORT_PACKET), Ok(()));
        assert_eq!(completion_to_result(cc::STALL), Err(HcError::Stall));
        assert_eq!(completion_to_result(cc::BABBLE), Err(HcError::Babble));
        assert_eq!(
            completion_to_result(cc::TRANSACTION),
            Err(HcError::Transaction)
        );
        assert_eq!(
            completion_to_result(cc::DATA_BUFFER),
            Err(HcError::DataBuffer)
        );
        assert_eq!(completion_to_result(cc::STOPPED), Err(HcError::Cancelled));
        assert_eq!(completion_to_result(200), Err(HcError::Controller(200)));
    }
}
