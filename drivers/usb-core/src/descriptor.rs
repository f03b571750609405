//! Parsing of standard USB descriptors: device, configuration (with its interfaces, endpoints and
//! SuperSpeed endpoint companions), string, BOS (USB 2.0 §9.5/§9.6, USB 3.2 §9.6).
//!
//! Descriptors come from devices, which are untrusted: every parser checks lengths and types and
//! returns a [`DescriptorError`] for anything malformed; none panics on any input (property-tested).
//! Class-specific descriptors inside a configuration are skipped but kept in the raw bytes.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::hc::{EndpointAddress, EndpointInfo, TransferType};

/// Descriptor type codes (USB 2.0 Table 9-5, USB 3.2 Table 9-6).
pub mod dtype {
    pub const DEVICE: u8 = 1;
    pub const CONFIGURATION: u8 = 2;
    pub const STRING: u8 = 3;
    pub const INTERFACE: u8 = 4;
    pub const ENDPOINT: u8 = 5;
    pub const DEVICE_QUALIFIER: u8 = 6;
    pub const INTERFACE_ASSOCIATION: u8 = 11;
    pub const BOS: u8 = 15;
    pub const DEVICE_CAPABILITY: u8 = 16;
    pub const SS_ENDPOINT_COMPANION: u8 = 48;
    /// USB 2.0 hub descriptor (§11.23.2.1).
    pub const HUB: u8 = 0x29;
    /// SuperSpeed hub descriptor (USB 3.2 §10.15.2.1).
    pub const SS_HUB: u8 = 0x2a;
}

/// Errors of descriptor parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorError {
    /// Fewer bytes than the descriptor needs.
    TooShort { expected: usize, got: usize },
    /// bDescriptorType is not the one expected.
    WrongType { expected: u8, got: u8 },
    /// bLength is smaller than the minimum for its type, or runs past the buffer.
    BadLength { offset: usize, length: u8 },
    /// wTotalLength disagrees with the bytes or is too small.
    BadTotalLength(u16),
    /// An endpoint descriptor appeared outside an interface, or a field has a reserved value.
    Malformed(&'static str),
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorError::TooShort { expected, got } => {
                write!(f, "descriptor too short: need {expected} bytes, got {got}")
            }
            DescriptorError::WrongType { expected, got } => {
                write!(f, "descriptor type {got:#x}, expected {expected:#x}")
            }
            DescriptorError::BadLength { offset, length } => {
                write!(f, "bad bLength {length} at offset {offset}")
            }
            DescriptorError::BadTotalLength(t) => write!(f, "bad wTotalLength {t}"),
            DescriptorError::Malformed(why) => write!(f, "malformed descriptor: {why}"),
        }
    }
}

fn header(bytes: &[u8], ty: u8, min: usize) -> Result<(), DescriptorError> {
    if bytes.len() < min.max(2) {
        return Err(DescriptorError::TooShort {
            expected: min.max(2),
            got: bytes.len(),
        });
    }
    if bytes[1] != ty {
        return Err(DescriptorError::WrongType {
            expected: ty,
            got: bytes[1],
        });
    }
    if (bytes[0] as usize) < min || bytes[0] as usize > bytes.len() {
        return Err(DescriptorError::BadLength {
            offset: 0,
            length: bytes[0],
        });
    }
    Ok(())
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// wTotalLength (bytes 2–3) of a descriptor set whose `header_len`-byte header has type `ty`
/// (configuration, BOS); at least the header itself.
fn total_length(header_bytes: &[u8], ty: u8, header_len: usize) -> Result<u16, DescriptorError> {
    header(header_bytes, ty, header_len)?;
    let t = le16(header_bytes, 2);
    if (t as usize) < header_len {
        return Err(DescriptorError::BadTotalLength(t));
    }
    Ok(t)
}

/// [`total_length`] of a set that must be complete in `bytes`.
fn whole_length(bytes: &[u8], ty: u8, header_len: usize) -> Result<usize, DescriptorError> {
    let total = total_length(bytes, ty, header_len)? as usize;
    if total > bytes.len() {
        return Err(DescriptorError::BadTotalLength(total as u16));
    }
    Ok(total)
}

/// Device descriptor (USB 2.0 §9.6.1), 18 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceDescriptor {
    pub usb_version: u16,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// bMaxPacketSize0 as sent (for USB 3 devices an exponent: the size is `1 << value`).
    pub max_packet0_raw: u8,
    pub vendor: u16,
    pub product: u16,
    pub device_version: u16,
    pub manufacturer_index: u8,
    pub product_index: u8,
    pub serial_index: u8,
    pub num_configurations: u8,
}

impl DeviceDescriptor {
    pub const LEN: usize = 18;

    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        header(bytes, dtype::DEVICE, Self::LEN)?;
        let d = DeviceDescriptor {
            usb_version: le16(bytes, 2),
            class: bytes[4],
            subclass: bytes[5],
            protocol: bytes[6],
            max_packet0_raw: bytes[7],
            vendor: le16(bytes, 8),
            product: le16(bytes, 10),
            device_version: le16(bytes, 12),
            manufacturer_index: bytes[14],
            product_index: bytes[15],
            serial_index: bytes[16],
            num_configurations: bytes[17],
        };
        d.max_packet0()?;
        Ok(d)
    }

    /// bMaxPacketSize0 from the first 8 bytes of the descriptor (what is read before the device's
    /// endpoint 0 size is known, USB 2.0 §9.1.2 / §5.5.3).
    pub fn parse_max_packet0(prefix: &[u8]) -> Result<u8, DescriptorError> {
        if prefix.len() < 8 {
            return Err(DescriptorError::TooShort {
                expected: 8,
                got: prefix.len(),
            });
        }
        if prefix[1] != dtype::DEVICE {
            return Err(DescriptorError::WrongType {
                expected: dtype::DEVICE,
                got: prefix[1],
            });
        }
        Ok(prefix[7])
    }

    /// Endpoint 0 maximum packet size in bytes, decoding the USB 3 exponent form (bcdUSB ≥ 3.0,
    /// value 9 = 512 bytes).  Rejects values the specification does not allow.
    pub fn max_packet0(&self) -> Result<u16, DescriptorError> {
        let raw = self.max_packet0_raw;
        // A USB 3 device enumerated at high speed reports a byte count, so 8..64 stay valid.
        match raw {
            8 | 16 | 32 | 64 => Ok(raw as u16),
            9 if self.usb_version >= 0x0300 => Ok(512),
            _ => Err(DescriptorError::Malformed("bMaxPacketSize0")),
        }
    }
}

/// Endpoint descriptor (USB 2.0 §9.6.6) plus its SuperSpeed companion (USB 3.2 §9.6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDescriptor {
    pub address: EndpointAddress,
    pub attributes: u8,
    /// Raw wMaxPacketSize (bits 12:11 additional transactions for high-speed periodic endpoints).
    pub max_packet_raw: u16,
    pub interval: u8,
    pub companion: Option<SsCompanion>,
}

/// SuperSpeed endpoint companion (USB 3.2 §9.6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsCompanion {
    pub max_burst: u8,
    pub attributes: u8,
    pub bytes_per_interval: u16,
}

impl EndpointDescriptor {
    pub const LEN: usize = 7;

    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        header(bytes, dtype::ENDPOINT, Self::LEN)?;
        let address = EndpointAddress(bytes[2]);
        if !address.is_valid() || address.is_ep0() {
            return Err(DescriptorError::Malformed("bEndpointAddress"));
        }
        Ok(EndpointDescriptor {
            address,
            attributes: bytes[3],
            max_packet_raw: le16(bytes, 4),
            interval: bytes[6],
            companion: None,
        })
    }

    pub fn kind(&self) -> TransferType {
        TransferType::from_attributes(self.attributes)
    }

    /// Maximum packet size in bytes (bits 10:0).
    pub fn max_packet(&self) -> u16 {
        self.max_packet_raw & 0x7ff
    }

    /// What a host controller needs to configure the endpoint.
    pub fn info(&self) -> EndpointInfo {
        let kind = self.kind();
        let periodic = matches!(kind, TransferType::Interrupt | TransferType::Isochronous);
        let (max_burst, mult, bpi) = match self.companion {
            Some(c) => (
                c.max_burst,
                if kind == TransferType::Isochronous {
                    c.attributes & 3
                } else {
                    0
                },
                if periodic { c.bytes_per_interval } else { 0 },
            ),
            None => (0, ((self.max_packet_raw >> 11) & 3) as u8, 0),
        };
        EndpointInfo {
            address: self.address,
            kind,
            max_packet: self.max_packet(),
            mult,
            max_burst,
            interval: self.interval,
            bytes_per_interval: bpi,
        }
    }
}

/// One alternate setting of an interface (USB 2.0 §9.6.5) with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub number: u8,
    pub alternate: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub string_index: u8,
    pub endpoints: Vec<EndpointDescriptor>,
}

/// A configuration descriptor with everything that follows it (USB 2.0 §9.6.3, §9.4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub value: u8,
    pub num_interfaces: u8,
    pub attributes: u8,
    /// bMaxPower in the descriptor's units (2 mA for USB 2, 8 mA for SuperSpeed).
    pub max_power: u8,
    pub string_index: u8,
    /// All interface alternate settings in descriptor order.
    pub interfaces: Vec<Interface>,
}

impl Configuration {
    pub const HEADER_LEN: usize = 9;

    /// wTotalLength from the 9-byte header (read first to learn how much to fetch).
    pub fn total_length(header_bytes: &[u8]) -> Result<u16, DescriptorError> {
        total_length(header_bytes, dtype::CONFIGURATION, Self::HEADER_LEN)
    }

    /// Parse a whole configuration (exactly wTotalLength bytes; trailing bytes are ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        let total = whole_length(bytes, dtype::CONFIGURATION, Self::HEADER_LEN)?;
        let bytes = &bytes[..total];
        let mut cfg = Configuration {
            num_interfaces: bytes[4],
            value: bytes[5],
            string_index: bytes[6],
            attributes: bytes[7],
            max_power: bytes[8],
            interfaces: Vec::new(),
        };
        let mut off = bytes[0] as usize;
        while off < total {
            let rest = &bytes[off..];
            if rest.len() < 2 {
                return Err(DescriptorError::TooShort {
                    expected: 2,
                    got: rest.len(),
                });
            }
            let len = rest[0] as usize;
            if len < 2 || len > rest.len() {
                return Err(DescriptorError::BadLength {
                    offset: off,
                    length: rest[0],
                });
            }
            let d = &rest[..len];
            match d[1] {
                dtype::INTERFACE => {
                    if len < 9 {
                        return Err(DescriptorError::BadLength {
                            offset: off,
                            length: rest[0],
                        });
                    }
                    cfg.interfaces.push(Interface {
                        number: d[2],
                        alternate: d[3],
                        class: d[5],
                        subclass: d[6],
                        protocol: d[7],
                        string_index: d[8],
                        endpoints: Vec::new(),
                    });
                }
                dtype::ENDPOINT => {
                    let ep = EndpointDescriptor::parse(d).map_err(|e| match e {
                        DescriptorError::BadLength { length, .. } => DescriptorError::BadLength {
                            offset: off,
                            length,
                        },
                        e => e,
                    })?;
                    let intf = cfg
                        .interfaces
                        .last_mut()
                        .ok_or(DescriptorError::Malformed("endpoint before any interface"))?;
                    if intf.endpoints.iter().any(|e| e.address == ep.address) {
                        return Err(DescriptorError::Malformed("duplicate endpoint"));
                    }
                    intf.endpoints.push(ep);
                }
                dtype::SS_ENDPOINT_COMPANION => {
                    if len < 6 {
                        return Err(DescriptorError::BadLength {
                            offset: off,
                            length: rest[0],
                        });
                    }
                    let ep = cfg
                        .interfaces
                        .last_mut()
                        .and_then(|i| i.endpoints.last_mut())
                        .ok_or(DescriptorError::Malformed("companion without endpoint"))?;
                    ep.companion = Some(SsCompanion {
                        max_burst: d[2],
                        attributes: d[3],
                        bytes_per_interval: le16(d, 4),
                    });
                }
                _ => {} // class-specific, IAD, …: skipped
            }
            off += len;
        }
        Ok(cfg)
    }

    /// The interface alternate setting `(number, alternate)`.
    pub fn interface(&self, number: u8, alternate: u8) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| i.number == number && i.alternate == alternate)
    }

    /// Endpoints active when every interface is in alternate setting 0 except those overridden
    /// in `alts` (pairs of interface number, alternate setting).
    pub fn active_endpoints(&self, alts: &[(u8, u8)]) -> Vec<EndpointInfo> {
        self.active_endpoint_iter(alts).collect()
    }

    /// [`Configuration::active_endpoints`] without collecting them (the per-request check of a
    /// backend allocates nothing).
    pub fn active_endpoint_iter<'a>(
        &'a self,
        alts: &'a [(u8, u8)],
    ) -> impl Iterator<Item = EndpointInfo> + 'a {
        self.interfaces
            .iter()
            .filter(move |i| {
                let want = alts
                    .iter()
                    .find(|(n, _)| *n == i.number)
                    .map(|(_, a)| *a)
                    .unwrap_or(0);
                i.alternate == want
            })
            .flat_map(|i| i.endpoints.iter().map(|e| e.info()))
    }
}

/// Decode a string descriptor (USB 2.0 §9.6.7): UTF-16LE, unpaired surrogates become U+FFFD.
pub fn parse_string(bytes: &[u8]) -> Result<String, DescriptorError> {
    header(bytes, dtype::STRING, 2)?;
    let len = bytes[0] as usize & !1;
    let units = bytes[2..len.max(2)]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    Ok(char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect())
}

/// The language IDs of string descriptor 0 (USB 2.0 §9.6.7).
pub fn parse_langids(bytes: &[u8]) -> Result<Vec<u16>, DescriptorError> {
    header(bytes, dtype::STRING, 2)?;
    let len = bytes[0] as usize & !1;
    Ok(bytes[2..len.max(2)]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// A device capability inside a BOS descriptor (USB 3.2 §9.6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// USB 2.0 extension (type 2): bmAttributes.
    Usb2Extension { attributes: u32 },
    /// SuperSpeed USB (type 3).
    SuperSpeed {
        attributes: u8,
        speeds_supported: u16,
        functionality_support: u8,
        u1_exit_latency: u8,
        u2_exit_latency: u16,
    },
    /// Any other capability type, with its bytes after the 3-byte header.
    Other { kind: u8, data: Vec<u8> },
}

/// Binary device Object Store (USB 3.2 §9.6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bos {
    pub capabilities: Vec<Capability>,
}

impl Bos {
    pub const HEADER_LEN: usize = 5;

    /// wTotalLength from the header.
    pub fn total_length(header_bytes: &[u8]) -> Result<u16, DescriptorError> {
        total_length(header_bytes, dtype::BOS, Self::HEADER_LEN)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        let total = whole_length(bytes, dtype::BOS, Self::HEADER_LEN)?;
        let mut caps = Vec::new();
        let mut off = bytes[0] as usize;
        while off < total {
            let rest = &bytes[off..total];
            if rest.len() < 3 || (rest[0] as usize) < 3 || rest[0] as usize > rest.len() {
                return Err(DescriptorError::BadLength {
                    offset: off,
                    length: rest.first().copied().unwrap_or(0),
                });
            }
            let d = &rest[..rest[0] as usize];
            if d[1] != dtype::DEVICE_CAPABILITY {
                return Err(DescriptorError::WrongType {
                    expected: dtype::DEVICE_CAPABILITY,
                    got: d[1],
                });
            }
            let cap = match (d[2], d.len()) {
                (2, n) if n >= 7 => Capability::Usb2Extension {
                    attributes: u32::from_le_bytes([d[3], d[4], d[5], d[6]]),
                },
                (3, n) if n >= 10 => Capability::SuperSpeed {
                    attributes: d[3],
                    speeds_supported: le16(d, 4),
                    functionality_support: d[6],
                    u1_exit_latency: d[7],
                    u2_exit_latency: le16(d, 8),
                },
                (2, _) | (3, _) => return Err(DescriptorError::Malformed("short capability")),
                (kind, _) => Capability::Other {
                    kind,
                    data: d[3..].to_vec(),
                },
            };
            caps.push(cap);
            off += d.len();
        }
        Ok(Bos { capabilities: caps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hc::Direction;
    use proptest::prelude::*;

    pub const KBD_DEV: [u8; 18] = [
        18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x27, 0x06, 0x01, 0x00, 0, 0, 1, 2, 3, 1,
    ];

    /// A mass-storage configuration: one interface, bulk IN 0x81 and bulk OUT 0x02, plus a
    /// class-specific descriptor that must be skipped, and SS companions.
    fn storage_config() -> Vec<u8> {
        let mut c = vec![9, 2, 0, 0, 1, 1, 0, 0xc0, 50];
        c.extend_from_slice(&[9, 4, 0, 0, 2, 8, 6, 0x50, 0]);
        c.extend_from_slice(&[5, 0x24, 1, 2, 3]); // class-specific junk
        c.extend_from_slice(&[7, 5, 0x81, 2, 0x00, 0x04, 0]);
        c.extend_from_slice(&[6, 48, 15, 0, 0, 0]);
        c.extend_from_slice(&[7, 5, 0x02, 2, 0x00, 0x04, 0]);
        c.extend_from_slice(&[6, 48, 15, 0, 0, 0]);
        let n = c.len() as u16;
        c[2..4].copy_from_slice(&n.to_le_bytes());
        c
    }

    #[test]
    fn device_descriptor() {
        let d = DeviceDescriptor::parse(&KBD_DEV).unwrap();
        assert_eq!(d.vendor, 0x0627);
        assert_eq!(d.product, 0x0001);
        assert_eq!(d.usb_version, 0x0200);
        assert_eq!(d.max_packet0(), Ok(64));
        assert_eq!(d.product_index, 2);
        assert_eq!(d.num_configurations, 1);
        assert!(DeviceDescriptor::parse(&KBD_DEV[..17]).is_err());
        let mut bad = KBD_DEV;
        bad[7] = 7;
        assert_eq!(
            DeviceDescriptor::parse(&bad),
            Err(DescriptorError::Malformed("bMaxPacketSize0"))
        );
        let mut ss = KBD_DEV;
        ss[2..4].copy_from_slice(&0x0300u16.to_le_bytes());
        ss[7] = 9;
        assert_eq!(DeviceDescriptor::parse(&ss).unwrap().max_packet0(), Ok(512));
        assert_eq!(DeviceDescriptor::parse_max_packet0(&KBD_DEV[..8]), Ok(64));
        let mut wrong = KBD_DEV;
        wrong[1] = 2;
        assert!(matches!(
            DeviceDescriptor::parse(&wrong),
            Err(DescriptorError::WrongType { .. })
        ));
    }

    #[test]
    fn configuration_with_companions() {
        let c = storage_config();
        assert_eq!(Configuration::total_length(&c[..9]), Ok(c.len() as u16));
        let cfg = Configuration::parse(&c).unwrap();
        assert_eq!(cfg.value, 1);
        assert_eq!(cfg.interfaces.len(), 1);
        let i = &cfg.interfaces[0];
        assert_eq!((i.class, i.subclass, i.protocol), (8, 6, 0x50));
        assert_eq!(i.endpoints.len(), 2);
        assert_eq!(
            i.endpoints[0].address,
            EndpointAddress::new(1, Direction::In)
        );
        assert_eq!(i.endpoints[0].max_packet(), 1024);
        assert_eq!(i.endpoints[1].companion.unwrap().max_burst, 15);
        let eps = cfg.active_endpoints(&[]);
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].kind, TransferType::Bulk);
        assert_eq!(eps[0].max_burst, 15);
    }

    #[test]
    fn malformed_configurations() {
        let good = storage_config();
        // bLength 0 inside would loop forever if not rejected.
        let mut zero = good.clone();
        zero[9] = 0;
        assert!(matches!(
            Configuration::parse(&zero),
            Err(DescriptorError::BadLength { offset: 9, .. })
        ));
        // wTotalLength beyond the data.
        let mut long = good.clone();
        long[2] = 0xff;
        assert!(matches!(
            Configuration::parse(&long),
            Err(DescriptorError::BadTotalLength(_))
        ));
        // An endpoint before any interface.
        let mut orphan = vec![9, 2, 16, 0, 1, 1, 0, 0x80, 50];
        orphan.extend_from_slice(&[7, 5, 0x81, 2, 64, 0, 0]);
        assert_eq!(
            Configuration::parse(&orphan),
            Err(DescriptorError::Malformed("endpoint before any interface"))
        );
        // Endpoint 0 in an endpoint descriptor.
        let mut ep0 = good.clone();
        ep0[25] = 0x80;
        assert_eq!(
            Configuration::parse(&ep0),
            Err(DescriptorError::Malformed("bEndpointAddress"))
        );
    }

    #[test]
    fn strings() {
        let s = [10, 3, b'Q', 0, b'E', 0, b'M', 0, b'U', 0];
        assert_eq!(parse_string(&s).unwrap(), "QEMU");
        assert_eq!(parse_langids(&[4, 3, 0x09, 0x04]).unwrap(), vec![0x0409]);
        // Odd bLength: the last byte is ignored; unpaired surrogate replaced.
        let odd = [7, 3, 0x00, 0xd8, b'A', 0, 0xff];
        assert_eq!(parse_string(&odd).unwrap(), "\u{fffd}A");
        assert!(parse_string(&[1, 3]).is_err());
    }

    #[test]
    fn bos() {
        let mut b = vec![5, 15, 0, 0, 2];
        b.extend_from_slice(&[7, 16, 2, 2, 0, 0, 0]);
        b.extend_from_slice(&[10, 16, 3, 0, 0x0e, 0, 1, 10, 0xff, 0x07]);
        let n = b.len() as u16;
        b[2..4].copy_from_slice(&n.to_le_bytes());
        let bos = Bos::parse(&b).unwrap();
        assert_eq!(bos.capabilities.len(), 2);
        assert_eq!(
            bos.capabilities[0],
            Capability::Usb2Extension { attributes: 2 }
        );
        assert!(matches!(
            bos.capabilities[1],
            Capability::SuperSpeed {
                speeds_supported: 0x0e,
                u2_exit_latency: 0x07ff,
                ..
            }
        ));
        let mut bad = b.clone();
        bad[5] = 2;
        assert!(Bos::parse(&bad).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = DeviceDescriptor::parse(&bytes);
            let _ = DeviceDescriptor::parse_max_packet0(&bytes);
            let _ = Configuration::parse(&bytes);
            let _ = parse_string(&bytes);
            let _ = parse_langids(&bytes);
            let _ = Bos::parse(&bytes);
            let _ = EndpointDescriptor::parse(&bytes);
            let _ = crate::hub::HubDescriptor::parse(&bytes);
        }

        #[test]
        fn config_parser_never_panics_on_plausible_headers(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            extra in 0usize..20,
        ) {
            let mut c = vec![9, 2, 0, 0, 1, 1, 0, 0x80, 50];
            c.extend_from_slice(&body);
            let n = (c.len() + extra).min(0xffff) as u16;
            c[2..4].copy_from_slice(&n.to_le_bytes());
            if let Ok(cfg) = Configuration::parse(&c) {
                // Whatever parsed is internally consistent.
                for i in &cfg.interfaces {
                    for e in &i.endpoints {
                        prop_assert!(e.address.is_valid() && !e.address.is_ep0());
                    }
                }
            }
        }
    }
}
