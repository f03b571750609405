//! xHCI register layout (xHCI 1.2 §5): capability registers (§5.3), operational registers (§5.4),
//! runtime and interrupter registers (§5.5), doorbells (§5.6) and the extended capabilities the
//! driver reads (§7.1 USB legacy support, §7.2 supported protocol).

// Capability registers (offsets from the BAR start).
pub const CAPLENGTH: usize = 0x00;
pub const HCIVERSION: usize = 0x02;
pub const HCSPARAMS1: usize = 0x04;
pub const HCSPARAMS2: usize = 0x08;
pub const HCCPARAMS1: usize = 0x10;
pub const DBOFF: usize = 0x14;
pub const RTSOFF: usize = 0x18;

/// HCCPARAMS1 bits.
pub const HCC_AC64: u32 = 1 << 0;
pub const HCC_CSZ: u32 = 1 << 2;

// Operational registers (offsets from CAPLENGTH).
pub const USBCMD: usize = 0x00;
pub const USBSTS: usize = 0x04;
pub const PAGESIZE: usize = 0x08;
pub const DNCTRL: usize = 0x14;
pub const CRCR: usize = 0x18;
pub const DCBAAP: usize = 0x30;
pub const CONFIG: usize = 0x38;
/// PORTSC of port `n` (1-based) is at `PORT_BASE + 0x10 * (n - 1)`.
pub const PORT_BASE: usize = 0x400;

pub const CMD_RUN: u32 = 1 << 0;
pub const CMD_HCRST: u32 = 1 << 1;
pub const CMD_INTE: u32 = 1 << 2;
pub const CMD_HSEE: u32 = 1 << 3;

pub const STS_HCH: u32 = 1 << 0;
pub const STS_HSE: u32 = 1 << 2;
pub const STS_EINT: u32 = 1 << 3;
pub const STS_PCD: u32 = 1 << 4;
pub const STS_CNR: u32 = 1 << 11;
pub const STS_HCE: u32 = 1 << 12;

pub const CRCR_RCS: u64 = 1 << 0;
pub const CRCR_CA: u64 = 1 << 2;
pub const CRCR_CRR: u64 = 1 << 3;

// PORTSC (§5.4.8).
pub const PORT_CCS: u32 = 1 << 0;
pub const PORT_PED: u32 = 1 << 1;
pub const PORT_OCA: u32 = 1 << 3;
pub const PORT_PR: u32 = 1 << 4;
pub const PORT_PLS_MASK: u32 = 0xf << 5;
pub const PORT_PP: u32 = 1 << 9;
pub const PORT_SPEED_SHIFT: u32 = 10;
pub const PORT_PIC_MASK: u32 = 3 << 14;
pub const PORT_CSC: u32 = 1 << 17;
pub const PORT_PEC: u32 = 1 << 18;
pub const PORT_WRC: u32 = 1 << 19;
pub const PORT_OCC: u32 = 1 << 20;
pub const PORT_PRC: u32 = 1 << 21;
pub const PORT_PLC: u32 = 1 << 22;
pub const PORT_CEC: u32 = 1 << 23;
pub const PORT_CAS: u32 = 1 << 24;
pub const PORT_WAKE_MASK: u32 = 7 << 25;
pub const PORT_DR: u32 = 1 << 30;
/// All RW1C change bits.
pub const PORT_CHANGE_MASK: u32 =
    PORT_CSC | PORT_PEC | PORT_WRC | PORT_OCC | PORT_PRC | PORT_PLC | PORT_CEC;
/// Bits that keep their value when written back (read-only or read/write-preserve); everything
/// else (RW1C change bits, PED which disables on a 1, PR, LWS) is written as 0 unless intended.
pub const PORT_PRESERVE: u32 = PORT_CCS
    | PORT_OCA
    | (0xf << PORT_SPEED_SHIFT)
    | PORT_CAS
    | PORT_DR
    | PORT_PLS_MASK
    | PORT_PP
    | PORT_PIC_MASK
    | PORT_WAKE_MASK;

/// Port speed IDs of the default protocol speed ID mapping (§7.2.2.1.1).
pub const SPEED_FULL: u32 = 1;
pub const SPEED_LOW: u32 = 2;
pub const SPEED_HIGH: u32 = 3;
pub const SPEED_SUPER: u32 = 4;
pub const SPEED_SUPER_PLUS: u32 = 5;

// Runtime registers (offsets from RTSOFF): interrupter `i` at 0x20 + 32 * i.
pub const IR0: usize = 0x20;
pub const IMAN: usize = 0x00;
pub const IMOD: usize = 0x04;
pub const ERSTSZ: usize = 0x08;
pub const ERSTBA: usize = 0x10;
pub const ERDP: usize = 0x18;

pub const IMAN_IP: u32 = 1 << 0;
pub const IMAN_IE: u32 = 1 << 1;
pub const ERDP_EHB: u64 = 1 << 3;

// Extended capabilities (§7).
pub const XCAP_LEGACY: u8 = 1;
pub const XCAP_PROTOCOL: u8 = 2;
pub const LEGACY_BIOS_OWNED: u32 = 1 << 16;
pub const LEGACY_OS_OWNED: u32 = 1 << 24;
