//! The event loop: wait for the next event-channel notification or timer, *blocking* the vCPU
//! instead of spinning.
//!
//! On Xen it uses `SCHEDOP_poll` on the watched ports with the earliest timer as timeout (absolute
//! Xen system time, `include/public/sched.h`); this works with event upcalls masked, so the kernel
//! needs no callback/IDT machinery. A port counts as fired when its bit in `shared_info.evtchn_pending`
//! is set; we clear it when we return it. Under PVH there are no event channels and no interrupt
//! controller driver: the loop waits for the next timer with `pause` (polling fallback).

use alloc::vec::Vec;

use crate::platform::Kind;
use crate::{pv, time};

/// Maximum ports `SCHEDOP_poll` accepts at once (Xen limit 128; we use fewer).
pub const MAX_PORTS: usize = 64;

/// What woke the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Event channel `port` was notified (its pending bit is now cleared).
    Port(u32),
    /// Timer `id` expired.
    Timer(u32),
}

/// Ports and timers to wait on.
#[derive(Default)]
pub struct EventLoop {
    ports: Vec<u32>,
    /// (deadline ns on the kernel clock, id), unsorted; few entries.
    timers: Vec<(u64, u32)>,
}

impl EventLoop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wake on notifications of `port`. Returns false if too many ports are watched.
    pub fn watch(&mut self, port: u32) -> bool {
        if self.ports.contains(&port) {
            return true;
        }
        if self.ports.len() >= MAX_PORTS {
            return false;
        }
        self.ports.push(port);
        true
    }

    pub fn unwatch(&mut self, port: u32) {
        self.ports.retain(|&p| p != port);
    }

    /// Fire timer `id` at `deadline_ns` (kernel clock, `time::now_ns`). Re-adding an id replaces it.
    pub fn add_timer(&mut self, deadline_ns: u64, id: u32) {
        self.cancel_timer(id);
        self.timers.push((deadline_ns, id));
    }

    /// Fire timer `id` after `delay_ns`.
    pub fn add_timer_in(&mut self, delay_ns: u64, id: u32) {
        self.add_timer(time::now_ns().saturating_add(delay_ns), id);
    }

    pub fn cancel_timer(&mut self, id: u32) {
        self.timers.retain(|&(_, i)| i != id);
    }

    fn earliest(&self) -> Option<(usize, u64)> {
        self.timers
            .iter()
            .enumerate()
            .min_by_key(|(_, (d, _))| *d)
            .map(|(i, (d, _))| (i, *d))
    }

    fn take_ready(&mut self) -> Option<Event> {
        if let Some(si) = pv::shared_info() {
            for &p in &self.ports {
                if si.test_and_clear_pending(p) {
                    return Some(Event::Port(p));
                }
            }
        }
        if let Some((i, d)) = self.earliest() {
            if d <= time::now_ns() {
                let (_, id) = self.timers.swap_remove(i);
                return Some(Event::Timer(id));
            }
        }
        None
    }

    /// Block until the next event. `None` if there is nothing that could ever wake us (no ports,
    /// no timers).
    pub fn wait(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.take_ready() {
                return Some(e);
            }
            let deadline = self.earliest().map(|(_, d)| d);
            if deadline.is_none() && self.ports.is_empty() {
                return None;
            }
            match crate::exit::kind() {
                Some(Kind::XenPv) => {
                    let timeout = deadline.map(time::to_xen_system_time).unwrap_or(0);
                    pv::hcall::sched_poll(&self.ports, timeout);
                }
                _ => {
                    // PVH: no event channels; wait for the timer (polling fallback).
                    let d = deadline?;
                    while time::now_ns() < d {
                        crate::arch::pause();
                    }
                }
            }
        }
    }
}
