//! Rate limiting of log lines a peer can trigger (DEVELOPERS.md: "Logs a peer can trigger are
//! rate-limited"). A token bucket over the hypervisor's clock: `burst` lines at once, then one per
//! `interval_ns`; suppressed lines are counted and reported with the next line that passes.

/// A token bucket for log lines.
#[derive(Debug, Clone)]
pub struct RateLimit {
    burst: u32,
    interval_ns: u64,
    tokens: u32,
    last_ns: u64,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(burst: u32, interval_ns: u64) -> Self {
        RateLimit {
            burst,
            interval_ns,
            tokens: burst,
            last_ns: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at time `now_ns`. `Some(n)`: yes, and `n` lines were
    /// suppressed before it; `None`: suppressed.
    pub fn allow(&mut self, now_ns: u64) -> Option<u64> {
        if let Some(refill) = now_ns
            .saturating_sub(self.last_ns)
            .checked_div(self.interval_ns)
        {
            if refill > 0 {
                self.tokens = (self.tokens as u64 + refill).min(self.burst as u64) as u32;
                self.last_ns = now_ns;
            }
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(core::mem::take(&mut self.suppressed))
    }

    /// Lines suppressed since the last one allowed.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval() {
        let mut r = RateLimit::new(3, 1000);
        assert_eq!(r.allow(0), Some(0));
        assert_eq!(r.allow(0), Some(0));
        assert_eq!(r.allow(0), Some(0));
        assert_eq!(r.allow(10), None);
        assert_eq!(r.allow(20), None);
        assert_eq!(r.suppressed(), 2);
        assert_eq!(r.allow(1000), Some(2));
        assert_eq!(r.allow(1500), None);
        // A long pause refills only up to the burst.
        for _ in 0..3 {
            assert!(r.allow(1_000_000).is_some());
        }
        assert_eq!(r.allow(1_000_000), None);
    }
}
