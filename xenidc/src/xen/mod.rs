//! Real-Xen implementation: hypercalls (placeholder: being written).
#![allow(unsafe_code)]
pub mod hypercall;
