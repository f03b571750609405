//! Xenbus device state machine (placeholder: being written).
