//! The PV console ring page (`io/console.h`, `struct xencons_interface`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the guest-input ring.
pub const IN_SIZE: usize = 1024;
/// Size of the guest-output ring.
pub const OUT_SIZE: usize = 2048;

/// The console page: two byte rings with free-running u32 indices (masked by the ring size).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenconsInterface {
    pub input: [u8; IN_SIZE],
    pub output: [u8; OUT_SIZE],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}
layout!(XenconsInterface, size 3088, input @ 0, output @ 1024, in_cons @ 3072, in_prod @ 3076, out_cons @ 3080, out_prod @ 3084);

pub const IN_OFFSET: usize = 0;
pub const OUT_OFFSET: usize = 1024;
pub const IN_CONS_OFFSET: usize = 3072;
pub const IN_PROD_OFFSET: usize = 3076;
pub const OUT_CONS_OFFSET: usize = 3080;
pub const OUT_PROD_OFFSET: usize = 3084;
