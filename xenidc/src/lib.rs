//! xenidc: the inter-domain communication library of usbdom.
//!
//! Xen ABI definitions, the `Hypervisor` trait (real Xen behind the `xen` feature, a simulated
//! hypervisor for host tests), shared rings, grants, event channels, xenstore, the xenbus device state
//! machine, and the high-level channel / remote-buffer API that backends use instead of raw rings and
//! grants.
//!
//! A backend uses it like this (see `tests/channel_sim.rs` for a complete one):
//! 1. read the frontend's ring reference and event channel from xenstore ([`xenstore`], [`xenbus`]);
//! 2. [`channel::Connection::connect`] maps the ring, binds the port and reserves mapping slots and
//!    bounce pages for every ring slot;
//! 3. on an event for [`channel::Connection::port`]: `receive()` requests (copied out once), build
//!    a [`buffer::RemoteBuffer`] from the segments (validated), `map` it (bus addresses for DMA) or
//!    `bounce` it, do the work, then [`channel::Connection::complete`] (unmaps, then queues the
//!    response), `flush()` (notifies if asked) and `idle_check()` before sleeping;
//! 4. a peer protocol error fails that channel alone; [`channel::Connection::teardown`] releases
//!    everything at any moment.
//!
//! Code is generic over [`hypervisor::Hypervisor`]: [`sim::SimDomain`] on the host, `xen` in the
//! kernel.
#![cfg_attr(not(test), no_std)]
// Only the real-Xen module (`xen`) contains `unsafe`; everything else is safe code.
#![deny(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod bench;
pub mod buffer;
pub mod channel;
pub mod hypervisor;
pub mod pcifront;
pub mod ring;
pub mod shm;
pub mod sim;
pub mod xenbus;
pub mod xenstore;

#[cfg(feature = "xen")]
pub mod xen;
