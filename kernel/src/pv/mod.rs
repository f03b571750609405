//! Xen PV basics the kernel core needs itself: typed hypercalls, `start_info`, `shared_info`
//! (event-channel bits, vCPU time), and PV memory management (`mm`). Everything else Xen-specific
//! (pcifront, grant tables, BAR mapping policy, pirqs, xenstore) lives in `crate::xen`.

pub mod hcall;
pub mod mm;
pub mod shared_info;
pub mod start_info;

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicUsize, Ordering};

use shared_info::SharedInfo;
use start_info::StartInfo;

static SHARED_INFO_VA: AtomicUsize = AtomicUsize::new(0);

/// The mapped shared-info page (Xen PV only).
pub fn shared_info() -> Option<SharedInfo> {
    let va = SHARED_INFO_VA.load(Ordering::Relaxed);
    // SAFETY: only ever set by `boot_xen` after mapping the frame there.
    (va != 0).then(|| unsafe { SharedInfo::new(va) })
}

/// Early PV setup after the console: map `shared_info`, mask upcalls, start Xen time, set up the
/// PV memory manager. Returns a one-line description for the log.
pub fn boot_xen(si: &StartInfo) -> String {
    let va = boot::shared_info_page_addr();
    // SAFETY: `va` is the page boot/ reserved for this; nothing uses it as memory.
    let r = unsafe { hcall::update_va_mapping(va, si.shared_info | 0x7, hcall::UVMF_INVLPG) };
    if r != 0 {
        panic!("mapping shared_info (MA {:#x}) failed: {r}", si.shared_info);
    }
    SHARED_INFO_VA.store(va, Ordering::SeqCst);
    // SAFETY: just mapped.
    let sh = unsafe { SharedInfo::new(va) };
    sh.mask_upcalls();
    crate::time::init_xen(sh, va);
    mm::init(si);
    format!(
        "xen-pv: {} pages, start_info magic ok {}, flags {:#x}, pt_base {:#x} ({} frames), store evtchn {}, console evtchn {}, {} free pages",
        si.nr_pages,
        si.magic_ok(),
        si.flags,
        si.pt_base,
        si.nr_pt_frames,
        si.store_evtchn,
        si.console_evtchn,
        mm::free_pages()
    )
}
