//! Hypercall numbers (`xen.h`, `__HYPERVISOR_*`). The hypercall page has one 32-byte stub per
//! number (stub n at offset n * 32).

pub const SET_TRAP_TABLE: usize = 0;
pub const MMU_UPDATE: usize = 1;
pub const SET_GDT: usize = 2;
pub const STACK_SWITCH: usize = 3;
pub const SET_CALLBACKS: usize = 4;
pub const FPU_TASKSWITCH: usize = 5;
pub const PLATFORM_OP: usize = 7;
pub const SET_DEBUGREG: usize = 8;
pub const GET_DEBUGREG: usize = 9;
pub const UPDATE_DESCRIPTOR: usize = 10;
pub const MEMORY_OP: usize = 12;
pub const MULTICALL: usize = 13;
pub const UPDATE_VA_MAPPING: usize = 14;
pub const SET_TIMER_OP: usize = 15;
pub const XEN_VERSION: usize = 17;
pub const CONSOLE_IO: usize = 18;
pub const GRANT_TABLE_OP: usize = 20;
pub const VM_ASSIST: usize = 21;
pub const UPDATE_VA_MAPPING_OTHERDOMAIN: usize = 22;
pub const IRET: usize = 23;
pub const VCPU_OP: usize = 24;
pub const SET_SEGMENT_BASE: usize = 25;
pub const MMUEXT_OP: usize = 26;
pub const XSM_OP: usize = 27;
pub const NMI_OP: usize = 28;
pub const SCHED_OP: usize = 29;
pub const CALLBACK_OP: usize = 30;
pub const XENOPROF_OP: usize = 31;
pub const EVENT_CHANNEL_OP: usize = 32;
pub const PHYSDEV_OP: usize = 33;
pub const HVM_OP: usize = 34;
pub const SYSCTL: usize = 35;
pub const DOMCTL: usize = 36;

/// Size of one stub in the hypercall page.
pub const STUB_SIZE: usize = 32;

/// `CONSOLEIO_*` commands of `HYPERVISOR_console_io`.
pub const CONSOLEIO_WRITE: u32 = 0;
pub const CONSOLEIO_READ: u32 = 1;

/// `UVMF_*` flags of `HYPERVISOR_update_va_mapping`.
pub const UVMF_NONE: u64 = 0;
pub const UVMF_TLB_FLUSH: u64 = 1;
pub const UVMF_INVLPG: u64 = 2;
pub const UVMF_LOCAL: u64 = 0;
pub const UVMF_ALL: u64 = 4;
