//! Standard device requests (USB 2.0 §9.3, §9.4) and their SETUP packets.

use crate::descriptor::dtype;
use crate::hc::{Direction, EndpointAddress};

/// bmRequestType bit 7: device to host.
pub const DIR_IN: u8 = 0x80;
/// bmRequestType type bits 6:5.
pub const TYPE_STANDARD: u8 = 0x00;
pub const TYPE_CLASS: u8 = 0x20;
pub const TYPE_VENDOR: u8 = 0x40;
/// bmRequestType recipient bits 4:0.
pub const RECIP_DEVICE: u8 = 0x00;
pub const RECIP_INTERFACE: u8 = 0x01;
pub const RECIP_ENDPOINT: u8 = 0x02;
pub const RECIP_OTHER: u8 = 0x03;

/// bRequest codes (USB 2.0 Table 9-4).
pub mod code {
    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_FEATURE: u8 = 3;
    pub const SET_ADDRESS: u8 = 5;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const SET_DESCRIPTOR: u8 = 7;
    pub const GET_CONFIGURATION: u8 = 8;
    pub const SET_CONFIGURATION: u8 = 9;
    pub const GET_INTERFACE: u8 = 10;
    pub const SET_INTERFACE: u8 = 11;
    pub const SYNCH_FRAME: u8 = 12;
    /// USB 3.2 §9.4.12.
    pub const SET_SEL: u8 = 48;
    pub const SET_ISOCH_DELAY: u8 = 49;
}

/// Feature selector ENDPOINT_HALT (USB 2.0 Table 9-6).
pub const FEATURE_ENDPOINT_HALT: u16 = 0;

/// A SETUP packet (USB 2.0 §9.3, Table 9-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupPacket {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl SetupPacket {
    pub fn to_bytes(&self) -> [u8; 8] {
        let v = self.value.to_le_bytes();
        let i = self.index.to_le_bytes();
        let l = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            v[0],
            v[1],
            i[0],
            i[1],
            l[0],
            l[1],
        ]
    }

    pub fn from_bytes(b: [u8; 8]) -> Self {
        SetupPacket {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// Direction of the data stage (meaningful when `length > 0`).
    pub fn direction(&self) -> Direction {
        if self.request_type & DIR_IN != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }

    pub fn is_standard(&self) -> bool {
        self.request_type & 0x60 == TYPE_STANDARD
    }

    /// GET_DESCRIPTOR (§9.4.3) for a device-level descriptor.
    pub fn get_descriptor(ty: u8, index: u8, lang: u16, length: u16) -> Self {
        SetupPacket {
            request_type: DIR_IN | TYPE_STANDARD | RECIP_DEVICE,
            request: code::GET_DESCRIPTOR,
            value: ((ty as u16) << 8) | index as u16,
            index: lang,
            length,
        }
    }

    pub fn get_device_descriptor(length: u16) -> Self {
        Self::get_descriptor(dtype::DEVICE, 0, 0, length)
    }

    pub fn get_config_descriptor(index: u8, length: u16) -> Self {
        Self::get_descriptor(dtype::CONFIGURATION, index, 0, length)
    }

    pub fn get_string(index: u8, lang: u16, length: u16) -> Self {
        Self::get_descriptor(dtype::STRING, index, lang, length)
    }

    /// SET_ADDRESS (§9.4.6).
    pub fn set_address(address: u8) -> Self {
        SetupPacket {
            request_type: RECIP_DEVICE,
            request: code::SET_ADDRESS,
            value: address as u16,
            index: 0,
            length: 0,
        }
    }

    /// SET_CONFIGURATION (§9.4.7).
    pub fn set_configuration(value: u8) -> Self {
        SetupPacket {
            request_type: RECIP_DEVICE,
            request: code::SET_CONFIGURATION,
            value: value as u16,
            index: 0,
            length: 0,
        }
    }

    /// SET_INTERFACE (§9.4.10).
    pub fn set_interface(interface: u8, alternate: u8) -> Self {
        SetupPacket {
            request_type: RECIP_INTERFACE,
            request: code::SET_INTERFACE,
            value: alternate as u16,
            index: interface as u16,
            length: 0,
        }
    }

    /// CLEAR_FEATURE(ENDPOINT_HALT) (§9.4.1, §9.4.5).
    pub fn clear_halt(ep: EndpointAddress) -> Self {
        SetupPacket {
            request_type: RECIP_ENDPOINT,
            request: code::CLEAR_FEATURE,
            value: FEATURE_ENDPOINT_HALT,
            index: ep.0 as u16,
            length: 0,
        }
    }

    /// GET_STATUS of the device (§9.4.5).
    pub fn get_status() -> Self {
        SetupPacket {
            request_type: DIR_IN | RECIP_DEVICE,
            request: code::GET_STATUS,
            value: 0,
            index: 0,
            length: 2,
        }
    }

    /// If this is a standard CLEAR_FEATURE(ENDPOINT_HALT), the endpoint it names.
    pub fn as_clear_halt(&self) -> Option<EndpointAddress> {
        (self.request_type == RECIP_ENDPOINT
            && self.request == code::CLEAR_FEATURE
            && self.value == FEATURE_ENDPOINT_HALT)
            .then_some(EndpointAddress(self.index as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_bytes() {
        let s = SetupPacket::get_device_descriptor(18);
        assert_eq!(s.to_bytes(), [0x80, 6, 0, 1, 0, 0, 18, 0]);
        assert_eq!(SetupPacket::from_bytes(s.to_bytes()), s);
        assert_eq!(
            SetupPacket::set_address(5).to_bytes(),
            [0, 5, 5, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            SetupPacket::get_string(2, 0x409, 255).to_bytes(),
            [0x80, 6, 2, 3, 0x09, 0x04, 255, 0]
        );
        let ch = SetupPacket::clear_halt(EndpointAddress(0x81));
        assert_eq!(ch.to_bytes(), [2, 1, 0, 0, 0x81, 0, 0, 0]);
        assert_eq!(ch.as_clear_halt(), Some(EndpointAddress(0x81)));
        assert_eq!(SetupPacket::set_configuration(1).as_clear_halt(), None);
        assert_eq!(SetupPacket::get_status().direction(), Direction::In);
        assert_eq!(
            SetupPacket::set_interface(1, 2).to_bytes(),
            [1, 11, 2, 0, 1, 0, 0, 0]
        );
    }
}
