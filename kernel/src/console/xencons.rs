//! Xen PV console ring (`include/public/io/console.h`, `struct xencons_interface`): we are the
//! producer of `out[2048]` (offset 1024) with indices `out_cons`/`out_prod` at 3080/3084, and notify
//! the console event channel after publishing. The page is shared with dom0's xenconsoled, so it is
//! only accessed with volatile operations and fences, never through a Rust reference.

use core::sync::atomic::{fence, Ordering};

const OUT: usize = 1024;
const OUT_SIZE: u32 = 2048;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;

pub struct XenConsole {
    page: usize,
    port: u32,
}

impl XenConsole {
    /// # Safety
    /// `page` is the mapped console ring page.
    pub unsafe fn new(page: usize, port: u32) -> Self {
        XenConsole { page, port }
    }

    fn rd(&self, off: usize) -> u32 {
        // SAFETY: `off` is one of the index offsets inside the mapped ring page (constructor contract).
        unsafe { core::ptr::read_volatile((self.page + off) as *const u32) }
    }

    fn wr(&self, off: usize, v: u32) {
        // SAFETY: as `rd`.
        unsafe { core::ptr::write_volatile((self.page + off) as *mut u32, v) }
    }

    fn put_byte(&self, idx: u32, b: u8) {
        let off = OUT + (idx % OUT_SIZE) as usize;
        // SAFETY: `off` < OUT + OUT_SIZE, inside the mapped page.
        unsafe { core::ptr::write_volatile((self.page + off) as *mut u8, b) }
    }

    pub fn write_str(&mut self, s: &str) {
        let mut bytes = s.bytes().peekable();
        let mut pending_cr = false;
        let mut spins = 0u32;
        while bytes.peek().is_some() || pending_cr {
            let cons = self.rd(OUT_CONS);
            fence(Ordering::Acquire);
            let mut prod = self.rd(OUT_PROD);
            if prod.wrapping_sub(cons) > OUT_SIZE {
                return; // corrupt indices from the peer: drop output rather than loop
            }
            let mut wrote = false;
            while prod.wrapping_sub(cons) < OUT_SIZE {
                let b = if pending_cr {
                    pending_cr = false;
                    b'\n'
                } else {
                    match bytes.next() {
                        Some(b'\n') => {
                            pending_cr = true;
                            b'\r'
                        }
                        Some(b) => b,
                        None => break,
                    }
                };
                self.put_byte(prod, b);
                prod = prod.wrapping_add(1);
                wrote = true;
            }
            fence(Ordering::Release);
            self.wr(OUT_PROD, prod);
            crate::pv::hcall::evtchn_send(self.port);
            if !wrote {
                // Ring full: let xenconsoled run. Give up after a while so a dead console daemon
                // cannot hang the domain.
                spins += 1;
                if spins > 10_000 {
                    return;
                }
                crate::pv::hcall::sched_yield();
            }
        }
    }
}
