//! SuperSpeed devices shown to the frontend as high-speed.
//!
//! `usbif` has no SuperSpeed (`USBIF_SPEED_HIGH` is the highest, `usb-ver` 3 is "not supported
//! yet"; `../shared/reference/pvusb-protocol.md` §1.10), so usbdom reports a SuperSpeed device as
//! HIGH and makes the descriptors the guest reads consistent with that, after the device answered
//! and before the data is given back:
//!
//! - device descriptor (USB 3.2 §9.6.1): `bcdUSB` ≥ 3.00 becomes 2.10; `bMaxPacketSize0` 9 (an
//!   exponent, 512 bytes) becomes 64 — the controller still uses 512 on the wire, the guest's value
//!   only affects how it splits nothing (usbif carries whole transfers);
//! - configuration and other-speed descriptors: bulk endpoints with `wMaxPacketSize` above 512
//!   (SuperSpeed uses 1024) are shown as 512 (the high-speed bulk size, USB 2.0 §5.8.3); interrupt
//!   endpoints above 1024 are shown as 1024. SuperSpeed endpoint companion descriptors stay: a
//!   high-speed host skips descriptors it does not expect (Linux does).
//!
//! Only the bytes actually returned are rewritten, so partial reads (the first 8 bytes of the device
//! descriptor) are handled. Devices that only work at SuperSpeed rates with large bursts still
//! work: the controller moves whole transfers, the packet size the guest believes in only matters
//! for its short-packet and zero-length-packet decisions.

const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;
const DT_OTHER_SPEED: u8 = 7;
const DT_ENDPOINT: u8 = 5;

/// Whether `setup` is a standard GET_DESCRIPTOR whose answer [`rewrite`] may change.
pub fn wants_rewrite(setup: &[u8; 8]) -> bool {
    setup[0] == 0x80 && setup[1] == 6 && matches!(setup[3], DT_DEVICE | DT_CONFIG | DT_OTHER_SPEED)
}

/// Rewrite the answer `data` to a GET_DESCRIPTOR `setup` (see the module documentation). Returns
/// whether anything changed.
pub fn rewrite(setup: &[u8; 8], data: &mut [u8]) -> bool {
    if !wants_rewrite(setup) {
        return false;
    }
    let mut changed = false;
    match setup[3] {
        DT_DEVICE => {
            if data.len() >= 4 && data[1] == DT_DEVICE {
                let bcd = u16::from_le_bytes([data[2], data[3]]);
                if bcd >= 0x0300 {
                    data[2..4].copy_from_slice(&0x0210u16.to_le_bytes());
                    changed = true;
                }
            }
            if data.len() >= 8 && data[1] == DT_DEVICE && data[7] == 9 {
                data[7] = 64;
                changed = true;
            }
        }
        _ => {
            let mut at = 0usize;
            while at + 2 <= data.len() {
                let len = data[at] as usize;
                if len < 2 {
                    break;
                }
                if data[at + 1] == DT_ENDPOINT && len >= 7 && at + 6 <= data.len() {
                    let mps = u16::from_le_bytes([data[at + 4], data[at + 5]]);
                    let size = mps & 0x7ff;
                    let limit = match data.get(at + 3).map(|a| a & 3) {
                        Some(2) => 512,
                        Some(3) => 1024,
                        _ => u16::MAX,
                    };
                    if size > limit {
                        let new = (mps & !0x7ff) | limit;
                        data[at + 4..at + 6].copy_from_slice(&new.to_le_bytes());
                        changed = true;
                    }
                }
                at += len;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_DEV: [u8; 8] = [0x80, 6, 0, 1, 0, 0, 18, 0];
    const GET_CFG: [u8; 8] = [0x80, 6, 0, 2, 0, 0, 0xff, 0];

    #[test]
    fn device_descriptor_becomes_usb2() {
        let mut d = [
            18, 1, 0x20, 0x03, 0, 0, 0, 9, 0x81, 0x07, 0x67, 0x55, 0, 1, 1, 2, 3, 1,
        ];
        assert!(rewrite(&GET_DEV, &mut d));
        assert_eq!(&d[2..4], &[0x10, 0x02]);
        assert_eq!(d[7], 64);
        assert_eq!(d[8], 0x81, "vendor untouched");
        // Partial read of 8 bytes.
        let mut p = [18, 1, 0x00, 0x03, 0, 0, 0, 9];
        assert!(rewrite(&GET_DEV, &mut p));
        assert_eq!(p, [18, 1, 0x10, 0x02, 0, 0, 0, 64]);
        // A USB 2 device is left alone.
        let mut h = [18, 1, 0x00, 0x02, 0, 0, 0, 64];
        assert!(!rewrite(&GET_DEV, &mut h));
    }

    #[test]
    fn bulk_1024_becomes_512_and_companions_stay() {
        let mut c = [
            9, 2, 44, 0, 1, 1, 0, 0x80, 50, // config
            9, 4, 0, 0, 2, 8, 6, 80, 0, // interface
            7, 5, 0x81, 2, 0x00, 0x04, 0, // bulk in 1024
            6, 0x30, 15, 0, 0, 0, // SS companion
            7, 5, 0x02, 2, 0x00, 0x04, 0, // bulk out 1024
            6, 0x30, 15, 0, 0, 0,
        ];
        assert!(rewrite(&GET_CFG, &mut c));
        assert_eq!(&c[22..24], &[0x00, 0x02]);
        assert_eq!(&c[35..37], &[0x00, 0x02]);
        assert_eq!(c[26], 0x30);
        // Truncated descriptor lists are walked only as far as they go.
        let mut t = [9, 2, 44, 0, 1, 1, 0, 0x80, 50, 9, 4];
        assert!(!rewrite(&GET_CFG, &mut t));
        // Zero-length descriptor garbage does not loop.
        let mut z = [9, 2, 20, 0, 1, 1, 0, 0x80, 50, 0, 0];
        assert!(!rewrite(&GET_CFG, &mut z));
    }

    #[test]
    fn other_requests_untouched() {
        let mut d = [18, 1, 0x20, 0x03, 0, 0, 0, 9];
        assert!(!rewrite(&[0x80, 6, 0, 3, 0, 0, 8, 0], &mut d));
        assert!(!rewrite(&[0x00, 9, 1, 0, 0, 0, 0, 0], &mut d));
    }
}
