//! Xen ABI definitions with compile-time layout asserts (placeholder: being written).
