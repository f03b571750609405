//! xenstore wire protocol, client and simulated server (placeholder: being written).
