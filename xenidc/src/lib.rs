//! xenidc: the inter-domain communication library of usbdom.
//!
//! Xen ABI definitions, the `Hypervisor` trait (real Xen behind the `xen` feature, a simulated
//! hypervisor for host tests), shared rings, grants, event channels, xenstore, the xenbus device state
//! machine, and the high-level channel / remote-buffer API that backends use instead of raw rings and
//! grants.
#![cfg_attr(not(test), no_std)]
// Only the real-Xen module (`xen`) contains `unsafe`; everything else is safe code.
#![deny(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod bench;
pub mod buffer;
pub mod channel;
pub mod hypervisor;
pub mod shm;
pub mod pcifront;
pub mod ring;
pub mod sim;
pub mod xenbus;
pub mod xenstore;

#[cfg(feature = "xen")]
pub mod xen;
