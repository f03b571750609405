//! The hypervisor object of this domain: [`xenidc::xen::XenHypervisor`] over the kernel's PV memory
//! management (`crate::pv::mm`), with our grant table set up (`GNTTABOP_setup_table`, frames mapped
//! into the I/O window) and the xenstore ring page from `start_info`.

use alloc::vec::Vec;
use core::ptr::NonNull;

use xenidc::abi::{Port, PAGE_SIZE};
use xenidc::xen::events::EventBits;
use xenidc::xen::gnttab::GrantTable;
use xenidc::xen::{ops, PvEnv, XenHypervisor, XenMem};

use crate::pv::{self, mm};
use crate::time;

/// Grant-table frames we ask for (512 references each).
const GNTTAB_FRAMES: u32 = 4;

/// [`PvEnv`] over `crate::pv::mm`.
pub struct KernelPvEnv {
    /// Grant-mapping slots given back, reused before new VA is reserved.
    free_slots: Vec<NonNull<u8>>,
}

impl PvEnv for KernelPvEnv {
    fn now_ns(&self) -> u64 {
        time::xen_system_time_ns()
    }

    fn alloc_page(&mut self) -> Option<(NonNull<u8>, u64)> {
        let va = mm::alloc_pages(1).ok()?;
        let mfn = mm::va_to_mfn(va)?;
        Some((NonNull::new(va as *mut u8)?, mfn))
    }

    unsafe fn free_page(&mut self, va: NonNull<u8>, _mfn: u64) {
        mm::free_pages_at(va.as_ptr() as usize, 1);
    }

    fn reserve_map_slot(&mut self) -> Option<NonNull<u8>> {
        if let Some(s) = self.free_slots.pop() {
            return Some(s);
        }
        NonNull::new(mm::reserve_va(1).ok()? as *mut u8)
    }

    fn release_map_slot(&mut self, va: NonNull<u8>) {
        self.free_slots.push(va);
    }
}

pub type Hv = XenHypervisor<KernelPvEnv>;

/// Errors of setting up the hypervisor services, for the log.
#[derive(Debug)]
pub enum SetupError {
    QuerySize(i32),
    SetupTable(i32),
    MapTable(mm::MmError),
    NoSharedInfo,
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::QuerySize(e) => write!(f, "GNTTABOP_query_size failed ({e})"),
            SetupError::SetupTable(e) => write!(f, "GNTTABOP_setup_table failed ({e})"),
            SetupError::MapTable(e) => write!(f, "mapping the grant table failed: {e}"),
            SetupError::NoSharedInfo => write!(f, "shared_info is not mapped"),
        }
    }
}

/// The event bitmaps of our shared-info page.
pub fn event_bits() -> Result<EventBits, SetupError> {
    // `pv::boot_xen` maps shared_info over boot's reserved page; `shared_info()` says it did.
    pv::shared_info().ok_or(SetupError::NoSharedInfo)?;
    let va = boot::shared_info_page_addr();
    let p = NonNull::new(va as *mut u8).ok_or(SetupError::NoSharedInfo)?;
    // SAFETY: the shared-info page is mapped at `va` by `pv::boot_xen` for the rest of the run.
    Ok(unsafe { EventBits::new(p) })
}

/// A view of the xenstore ring page (`start_info.store_mfn`, mapped by the domain builder at its
/// pfn's address).
pub fn xenstore_page(store_mfn: u64) -> XenMem {
    let va = mm::pfn_to_va(mm::mfn_to_pfn(store_mfn));
    // SAFETY: the xenstore frame is ours, mapped writable by the domain builder at `va` for the
    // life of the domain, and only accessed through these volatile views.
    unsafe {
        XenMem::new(
            NonNull::new(va as *mut u8).expect("xenstore page at 0"),
            PAGE_SIZE,
        )
    }
}

/// Set up the grant table and assemble the hypervisor object.
pub fn setup(store_mfn: u64, store_port: Port) -> Result<Hv, SetupError> {
    let (_cur, max) = ops::gnttab_query_size().map_err(SetupError::QuerySize)?;
    let n = GNTTAB_FRAMES.min(max.max(1));
    let mut frames = [0u64; GNTTAB_FRAMES as usize];
    ops::gnttab_setup_table(&mut frames[..n as usize]).map_err(SetupError::SetupTable)?;
    let va = mm::reserve_va(n as usize).map_err(SetupError::MapTable)?;
    // SAFETY: `va` was just reserved for us alone; the frames are our grant table, which Xen lets
    // us map writable.
    unsafe {
        mm::map_frames(
            va,
            &frames[..n as usize],
            mm::PAGE_RW,
            pv::hcall::DOMID_SELF,
        )
    }
    .map_err(SetupError::MapTable)?;
    // SAFETY: `n` grant-table frames are mapped at `va` for the rest of the run; only the grant
    // table accesses them.
    let gnttab = unsafe { GrantTable::new(NonNull::new(va as *mut u8).unwrap(), n) };
    let env = KernelPvEnv {
        free_slots: Vec::new(),
    };
    Ok(XenHypervisor::new(
        env,
        gnttab,
        event_bits()?,
        xenstore_page(store_mfn),
        store_port,
    ))
}
