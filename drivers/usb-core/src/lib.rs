//! USB core for usbdom: the host-controller trait ([`hc`]) shared by the xHCI and UHCI drivers and
//! the PVUSB backend, descriptor parsing, standard requests, enumeration, hub class support and a
//! device registry.
//!
//! * [`hc`] — the [`hc::HostController`] trait (split-phase `submit`/`poll`, cancel, ports,
//!   device slots, endpoint configuration, halt recovery) and its types and error enum;
//! * [`descriptor`] — device, configuration/interface/endpoint, SuperSpeed companion, string and
//!   BOS descriptors; malformed input is an error, never a panic (property-tested);
//! * [`request`] — standard SETUP packets (USB 2.0 §9.4); [`hub`] — hub descriptor, port status
//!   and hub class requests (USB 2.0 §11.24);
//! * [`enumerate`] — [`Bus`]: enumeration of root ports and hubs, hotplug, failure isolation;
//! * [`registry`] — the enumerated devices;
//! * `sim` (feature `sim`, and in tests) — a simulated host controller with simulated devices and
//!   hubs for other crates' host tests.
//!
//! References: USB 2.0 chapter 9 (device framework) and chapter 11 (hubs), USB 3.2 chapter 9 and
//! chapter 10, xHCI 1.2 §4.3 (device initialisation).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod descriptor;
pub mod enumerate;
pub mod hc;
pub mod hub;
pub mod registry;
pub mod request;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use enumerate::{Bus, BusEvent, UsbError};
