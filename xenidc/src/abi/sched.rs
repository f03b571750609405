//! Scheduler operations (`sched.h`): block, poll, shutdown.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `SCHEDOP_*` command numbers of `HYPERVISOR_sched_op`.
pub mod op {
    pub const YIELD: u32 = 0;
    /// Block until an event is pending (events must be unmasked in `vcpu_info`).
    pub const BLOCK: u32 = 1;
    pub const SHUTDOWN: u32 = 2;
    /// Block until one of the listed ports is pending or the timeout passes.
    pub const POLL: u32 = 3;
    pub const REMOTE_SHUTDOWN: u32 = 4;
    pub const SHUTDOWN_CODE: u32 = 5;
    pub const WATCHDOG: u32 = 6;
}

/// `SHUTDOWN_*` reasons.
pub mod shutdown {
    pub const POWEROFF: u32 = 0;
    pub const REBOOT: u32 = 1;
    pub const SUSPEND: u32 = 2;
    pub const CRASH: u32 = 3;
    pub const WATCHDOG: u32 = 4;
    pub const SOFT_RESET: u32 = 5;
}

/// `SCHEDOP_shutdown` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedShutdown {
    pub reason: u32,
}
layout!(SchedShutdown, size 4, reason @ 0);

/// `SCHEDOP_poll` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SchedPoll {
    /// Guest handle (virtual address) of an `evtchn_port_t` array.
    pub ports: u64,
    pub nr_ports: u32,
    pub pad: [u8; 4],
    /// Absolute system time (ns) at which to give up; 0 = no timeout.
    pub timeout: u64,
}
layout!(SchedPoll, size 24, ports @ 0, nr_ports @ 8, timeout @ 16);
