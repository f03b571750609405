//! Device interrupts on Xen PV: the device's physical IRQ (INTx: the GSI pciback shows in the
//! Interrupt Line register, which is also its pirq number for a PV domU; or an MSI pirq from
//! pcifront) bound to an event channel with `EVTCHNOP_bind_pirq` (`event_channel.h`). An interrupt
//! is the port's pending bit; after handling, the port is unmasked (if it was masked) and, if Xen
//! says the pirq needs it (`PHYSDEVOP_irq_status_query`), the line is re-enabled with
//! `PHYSDEVOP_eoi` (`physdev.h`).

use core::sync::atomic::{AtomicU64, Ordering};

use xenidc::abi::physdev::XENIRQSTAT_NEEDS_EOI;
use xenidc::abi::Port;
use xenidc::xen::events::EventBits;
use xenidc::xen::ops;

/// How the interrupt reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Legacy INTx through its GSI.
    Intx { gsi: u32 },
    /// MSI enabled through pcifront.
    Msi,
}

/// One device interrupt bound to an event channel.
#[derive(Debug)]
pub struct XenIrq {
    pub pirq: u32,
    pub port: Port,
    needs_eoi: bool,
    events: EventBits,
    count: AtomicU64,
}

impl XenIrq {
    /// Bind `pirq`; `Err(errno)` when Xen refuses.
    pub fn bind(pirq: u32, source: Source, events: EventBits) -> Result<XenIrq, i32> {
        // Legacy lines below 16 are never shared; GSIs above may be.
        let share = matches!(source, Source::Intx { gsi } if gsi >= 16);
        let port = ops::evtchn_bind_pirq(pirq, share)?;
        let needs_eoi = ops::physdev_irq_status(pirq)
            .map(|f| f & XENIRQSTAT_NEEDS_EOI != 0)
            .unwrap_or(true);
        let _ = ops::evtchn_unmask(port);
        Ok(XenIrq {
            pirq,
            port,
            needs_eoi,
            events,
            count: AtomicU64::new(0),
        })
    }

    pub fn needs_eoi(&self) -> bool {
        self.needs_eoi
    }
}

impl hal::Interrupt for XenIrq {
    fn take(&self) -> bool {
        if self.events.test_and_clear(self.port) {
            self.count.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn unmask(&self) {
        // The port is bound unmasked and nothing masks it; the hypercall is for a port that is
        // masked (it re-raises a pending event). A read of the shared mask bit saves one
        // hypercall per interrupt.
        if self.events.is_masked(self.port) {
            let _ = ops::evtchn_unmask(self.port);
        }
        if self.needs_eoi {
            let _ = ops::physdev_eoi(self.pirq);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
