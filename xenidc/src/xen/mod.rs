//! The real-Xen side of xenidc (feature `xen`, x86_64 PV only): the raw hypercall instructions
//! ([`hypercall`], written by the kernel-core engineer), typed hypercalls ([`ops`]), the
//! [`SharedMem`](crate::shm::SharedMem) implementation over mapped pages ([`mem`]), our own grant
//! table ([`gnttab`]), the event-channel bitmaps of `shared_info` ([`events`]) and the
//! [`Hypervisor`](crate::hypervisor::Hypervisor) implementation built from them ([`hv`]).
//!
//! The only `unsafe` code of the crate lives here; every block states why it is sound.
#![allow(unsafe_code)]
pub mod events;
pub mod gnttab;
pub mod hv;
pub mod hypercall;
pub mod mem;
pub mod ops;

pub use hv::{GrantStats, PvEnv, XenHypervisor};
pub use mem::XenMem;
