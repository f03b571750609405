//! Event channels (`event_channel.h`): the `EVTCHNOP_*` argument structures.

use super::{DomId, Port};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `EVTCHNOP_*` command numbers of `HYPERVISOR_event_channel_op`.
pub mod op {
    pub const BIND_INTERDOMAIN: u32 = 0;
    pub const BIND_VIRQ: u32 = 1;
    pub const BIND_PIRQ: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const SEND: u32 = 4;
    pub const STATUS: u32 = 5;
    pub const ALLOC_UNBOUND: u32 = 6;
    pub const BIND_IPI: u32 = 7;
    pub const BIND_VCPU: u32 = 8;
    pub const UNMASK: u32 = 9;
    pub const RESET: u32 = 10;
}

/// Number of event channels of the 2-level ABI on x86_64 (64 × 64).
pub const NR_EVENT_CHANNELS_2L: u32 = 4096;

/// `VIRQ_*` numbers.
pub mod virq {
    pub const TIMER: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const CONSOLE: u32 = 2;
    pub const DOM_EXC: u32 = 3;
}

/// `EVTCHNOP_alloc_unbound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct AllocUnbound {
    pub dom: DomId,
    pub remote_dom: DomId,
    /// OUT.
    pub port: Port,
}
layout!(AllocUnbound, size 8, dom @ 0, remote_dom @ 2, port @ 4);

/// `EVTCHNOP_bind_interdomain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindInterdomain {
    pub remote_dom: DomId,
    pub pad: [u8; 2],
    pub remote_port: Port,
    /// OUT.
    pub local_port: Port,
}
layout!(BindInterdomain, size 12, remote_dom @ 0, remote_port @ 4, local_port @ 8);

/// `EVTCHNOP_bind_virq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindVirq {
    pub virq: u32,
    pub vcpu: u32,
    /// OUT.
    pub port: Port,
}
layout!(BindVirq, size 12, virq @ 0, vcpu @ 4, port @ 8);

/// `EVTCHNOP_bind_pirq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BindPirq {
    pub pirq: u32,
    /// `BIND_PIRQ__WILL_SHARE`.
    pub flags: u32,
    /// OUT.
    pub port: Port,
}
layout!(BindPirq, size 12, pirq @ 0, flags @ 4, port @ 8);

/// [`BindPirq::flags`]: the IRQ may be shared with other domains.
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `EVTCHNOP_send`, `EVTCHNOP_close` and `EVTCHNOP_unmask` all take just a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PortOp {
    pub port: Port,
}
layout!(PortOp, size 4, port @ 0);

/// `EVTCHNOP_send` argument.
pub type Send = PortOp;
/// `EVTCHNOP_close` argument.
pub type Close = PortOp;
/// `EVTCHNOP_unmask` argument.
pub type Unmask = PortOp;
