//! xenstore: wire protocol, client state machine, ring transport and a simulated server.
pub mod wire;
