//! USB core for usbdom: the host-controller trait ([`hc`]) shared by the xHCI and UHCI drivers and
//! the PVUSB backend, descriptor parsing, standard requests, enumeration, hub class support and a
//! device registry.
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
