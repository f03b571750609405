//! What the controller self-tests ([`super::uhci`], [`super::xhci`], [`super::bench`]) share: the
//! hal bundle a host-controller driver is instantiated with on the kernel platform, whose
//! allocator and clock are the platform's, borrowed (the driver and usb-core's `Bus` each want
//! one by value).

use core::marker::PhantomData;

use hal::{Clock, DmaAlloc, HalError};

use crate::platform::{Platform, Regs};

/// The platform's allocator, borrowed.
pub struct DmaRef<'a, D>(pub &'a D);

impl<D> Clone for DmaRef<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for DmaRef<'_, D> {}

impl<D: DmaAlloc> DmaAlloc for DmaRef<'_, D> {
    type Buf = D::Buf;
    fn alloc(&self, size: usize, align: usize) -> Result<D::Buf, HalError> {
        self.0.alloc(size, align)
    }
}

/// The platform's clock, borrowed.
pub struct ClockRef<'a, C>(pub &'a C);

impl<C> Clone for ClockRef<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for ClockRef<'_, C> {}

impl<C: Clock> Clock for ClockRef<'_, C> {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
    fn delay_us(&self, us: u64) {
        self.0.delay_us(us)
    }
}

/// The hal bundle a driver is instantiated with on platform `P`.
pub struct On<'a, P>(PhantomData<&'a P>);

impl<'a, P: Platform> hal::Platform for On<'a, P> {
    type Regs = Regs;
    type Dma = DmaRef<'a, P::Dma>;
    type Clock = ClockRef<'a, P::Clock>;
    type Irq = P::Irq;
}
