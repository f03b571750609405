//! Hub class support (USB 2.0 chapter 11, USB 3.2 chapter 10): the hub descriptor, hub class
//! requests, port status and change bits, and transaction-translator facts.
//!
//! Hub ports are driven with class requests on the hub's endpoint 0 (USB 2.0 §11.24.2); port
//! changes are announced on the hub's interrupt IN endpoint as a bitmap (§11.12.4), which the
//! enumeration code may also simply poll.

use crate::descriptor::{dtype, DescriptorError};
use crate::hc::{PortChanges, Speed};
use crate::request::{SetupPacket, DIR_IN, RECIP_DEVICE, RECIP_OTHER, TYPE_CLASS};

/// Hub class bRequest codes (USB 2.0 Table 11-16).
pub mod code {
    pub const GET_STATUS: u8 = 0;
    pub const CLEAR_FEATURE: u8 = 1;
    pub const SET_FEATURE: u8 = 3;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const CLEAR_TT_BUFFER: u8 = 8;
    pub const RESET_TT: u8 = 9;
    /// USB 3.2 §10.16.2.9.
    pub const SET_HUB_DEPTH: u8 = 12;
}

/// Port feature selectors (USB 2.0 Table 11-17).
pub mod feature {
    pub const PORT_CONNECTION: u16 = 0;
    pub const PORT_ENABLE: u16 = 1;
    pub const PORT_SUSPEND: u16 = 2;
    pub const PORT_OVER_CURRENT: u16 = 3;
    pub const PORT_RESET: u16 = 4;
    pub const PORT_POWER: u16 = 8;
    pub const PORT_LOW_SPEED: u16 = 9;
    pub const C_PORT_CONNECTION: u16 = 16;
    pub const C_PORT_ENABLE: u16 = 17;
    pub const C_PORT_SUSPEND: u16 = 18;
    pub const C_PORT_OVER_CURRENT: u16 = 19;
    pub const C_PORT_RESET: u16 = 20;
}

/// Hub descriptor (USB 2.0 §11.23.2.1; the SuperSpeed form, USB 3.2 §10.15.2.1, parses into the
/// same fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubDescriptor {
    pub ports: u8,
    pub characteristics: u16,
    /// Time from power-on to power-good, in 2 ms units.
    pub power_on_to_good: u8,
    pub superspeed: bool,
}

impl HubDescriptor {
    pub fn parse(b: &[u8]) -> Result<Self, DescriptorError> {
        if b.len() < 7 {
            return Err(DescriptorError::TooShort {
                expected: 7,
                got: b.len(),
            });
        }
        let superspeed = match b[1] {
            dtype::HUB => false,
            dtype::SS_HUB => true,
            got => {
                return Err(DescriptorError::WrongType {
                    expected: dtype::HUB,
                    got,
                })
            }
        };
        if (b[0] as usize) < 7 || b[0] as usize > b.len() {
            return Err(DescriptorError::BadLength {
                offset: 0,
                length: b[0],
            });
        }
        if b[2] == 0 || b[2] > 15 {
            return Err(DescriptorError::Malformed("bNbrPorts"));
        }
        Ok(HubDescriptor {
            ports: b[2],
            characteristics: u16::from_le_bytes([b[3], b[4]]),
            power_on_to_good: b[5],
            superspeed,
        })
    }

    /// TT think time, wHubCharacteristics bits 6:5 (USB 2.0 Table 11-13).
    pub fn tt_think_time(&self) -> u8 {
        ((self.characteristics >> 5) & 3) as u8
    }

    /// Milliseconds to wait after powering ports.
    pub fn power_on_delay_ms(&self) -> u32 {
        self.power_on_to_good as u32 * 2
    }
}

/// wPortStatus bits (USB 2.0 Table 11-21).
pub mod port_status {
    pub const CONNECTION: u16 = 1 << 0;
    pub const ENABLE: u16 = 1 << 1;
    pub const SUSPEND: u16 = 1 << 2;
    pub const OVER_CURRENT: u16 = 1 << 3;
    pub const RESET: u16 = 1 << 4;
    pub const POWER: u16 = 1 << 8;
    pub const LOW_SPEED: u16 = 1 << 9;
    pub const HIGH_SPEED: u16 = 1 << 10;
}

/// A hub port's status as returned by GetPortStatus (§11.24.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubPortStatus {
    pub status: u16,
    pub change: u16,
}

impl HubPortStatus {
    pub fn parse(b: &[u8]) -> Result<Self, DescriptorError> {
        if b.len() < 4 {
            return Err(DescriptorError::TooShort {
                expected: 4,
                got: b.len(),
            });
        }
        Ok(HubPortStatus {
            status: u16::from_le_bytes([b[0], b[1]]),
            change: u16::from_le_bytes([b[2], b[3]]),
        })
    }
    pub fn connected(&self) -> bool {
        self.status & port_status::CONNECTION != 0
    }
    pub fn enabled(&self) -> bool {
        self.status & port_status::ENABLE != 0
    }
    pub fn resetting(&self) -> bool {
        self.status & port_status::RESET != 0
    }
    /// Speed of the attached device on a USB 2.0 hub (§11.24.2.7.1.7/8); a SuperSpeed hub's
    /// devices are always SuperSpeed.
    pub fn speed(&self, superspeed_hub: bool) -> Speed {
        if superspeed_hub {
            Speed::Super
        } else if self.status & port_status::LOW_SPEED != 0 {
            Speed::Low
        } else if self.status & port_status::HIGH_SPEED != 0 {
            Speed::High
        } else {
            Speed::Full
        }
    }
    /// The change bits in the host-controller trait's terms.
    pub fn changes(&self) -> PortChanges {
        let mut c = PortChanges::empty();
        for (bit, f) in [
            (0, PortChanges::CONNECT),
            (1, PortChanges::ENABLE),
            (2, PortChanges::SUSPEND),
            (3, PortChanges::OVER_CURRENT),
            (4, PortChanges::RESET),
        ] {
            if self.change & (1 << bit) != 0 {
                c |= f;
            }
        }
        c
    }
}

/// GetHubDescriptor (§11.24.2.5).
pub fn get_hub_descriptor(superspeed: bool, length: u16) -> SetupPacket {
    let ty = if superspeed {
        dtype::SS_HUB
    } else {
        dtype::HUB
    };
    SetupPacket {
        request_type: DIR_IN | TYPE_CLASS | RECIP_DEVICE,
        request: code::GET_DESCRIPTOR,
        value: (ty as u16) << 8,
        index: 0,
        length,
    }
}

/// GetPortStatus (§11.24.2.7).
pub fn get_port_status(port: u8) -> SetupPacket {
    SetupPacket {
        request_type: DIR_IN | TYPE_CLASS | RECIP_OTHER,
        request: code::GET_STATUS,
        value: 0,
        index: port as u16,
        length: 4,
    }
}

/// SetPortFeature (§11.24.2.13).
pub fn set_port_feature(port: u8, feature: u16) -> SetupPacket {
    SetupPacket {
        request_type: TYPE_CLASS | RECIP_OTHER,
        request: code::SET_FEATURE,
        value: feature,
        index: port as u16,
        length: 0,
    }
}

/// ClearPortFeature (§11.24.2.2).
pub fn clear_port_feature(port: u8, feature: u16) -> SetupPacket {
    SetupPacket {
        request_type: TYPE_CLASS | RECIP_OTHER,
        request: code::CLEAR_FEATURE,
        value: feature,
        index: port as u16,
        length: 0,
    }
}

/// SetHubDepth for SuperSpeed hubs (USB 3.2 §10.16.2.9); depth 0 for a hub on a root port.
pub fn set_hub_depth(depth: u8) -> SetupPacket {
    SetupPacket {
        request_type: TYPE_CLASS | RECIP_DEVICE,
        request: code::SET_HUB_DEPTH,
        value: depth as u16,
        index: 0,
        length: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_descriptor_and_status() {
        // QEMU usb-hub: 8 ports, characteristics 0x000a.
        let d = HubDescriptor::parse(&[10, 0x29, 8, 0x0a, 0, 1, 0, 0, 0xff, 0xff]).unwrap();
        assert_eq!(d.ports, 8);
        assert!(!d.superspeed);
        assert_eq!(d.power_on_delay_ms(), 2);
        let tt = HubDescriptor::parse(&[9, 0x29, 4, 0x40, 0, 50, 0, 0, 0xff]).unwrap();
        assert_eq!(tt.tt_think_time(), 2);
        assert!(HubDescriptor::parse(&[9, 0x29, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(HubDescriptor::parse(&[9, 0x02, 4, 0, 0, 0, 0, 0, 0]).is_err());
        let s = HubPortStatus::parse(&[0x03, 0x02, 0x11, 0x00]).unwrap();
        assert!(s.connected() && s.enabled() && !s.resetting());
        assert_eq!(s.speed(false), Speed::Low);
        assert_eq!(s.changes(), PortChanges::CONNECT | PortChanges::RESET);
        let hs = HubPortStatus::parse(&[0x03, 0x05, 0, 0]).unwrap();
        assert_eq!(hs.speed(false), Speed::High);
        assert_eq!(
            set_port_feature(3, feature::PORT_RESET).to_bytes(),
            [0x23, 3, 4, 0, 3, 0, 0, 0]
        );
        assert_eq!(get_port_status(2).to_bytes(), [0xa3, 0, 0, 0, 2, 0, 4, 0]);
    }
}
