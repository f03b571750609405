//! UHCI 1.1 host controller driver.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod regs;
pub mod schedule;
pub mod transfer;
