//! The restart limit of a VM whose guest resets: at most `max` restarts within a sliding
//! window, shared by the KVM and seL4 backends.
//!
//! The caller supplies the time (milliseconds from any fixed origin). A caller without a
//! clock passes the same time for every reset: then none leaves the window and every
//! restart of the VM's life counts.

use alloc::collections::VecDeque;

/// What to do about a guest reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartVerdict {
    /// Restart: this is restart number `count` within the window (1-based).
    Restart {
        /// Resets within the window, this one included.
        count: u32,
    },
    /// Stop the VM: `count` resets within the window, one more than allowed.
    Stop {
        /// Resets within the window, this one included.
        count: u32,
    },
}

/// Counts resets in a sliding window.
#[derive(Clone, Debug)]
pub struct RestartLimiter {
    max: u32,
    /// Window length in milliseconds.
    window_ms: u64,
    /// Times of the resets still inside the window, oldest first (at most `max + 1`).
    times: VecDeque<u64>,
}

impl RestartLimiter {
    /// The window of `max_restarts_per_minute`.
    pub const MINUTE_MS: u64 = 60_000;

    /// At most `max` restarts within any `window_ms` milliseconds.
    pub fn new(max: u32, window_ms: u64) -> RestartLimiter {
        RestartLimiter {
            max,
            window_ms,
            times: VecDeque::new(),
        }
    }

    /// The most restarts allowed within the window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Records a reset at `now_ms` (never earlier than the previous one) and says whether
    /// the VM may restart.
    pub fn record(&mut self, now_ms: u64) -> RestartVerdict {
        while self
            .times
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= self.window_ms)
        {
            self.times.pop_front();
        }
        // Only the count matters beyond the window's start: keep at most `max + 1` times.
        if self.times.len() > self.max as usize {
            self.times.pop_front();
        }
        self.times.push_back(now_ms);
        let count = u32::try_from(self.times.len()).unwrap_or(u32::MAX);
        if count > self.max {
            RestartVerdict::Stop { count }
        } else {
            RestartVerdict::Restart { count }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_up_to_the_limit_are_allowed_and_counted() {
        let mut l = RestartLimiter::new(3, 60_000);
        let verdicts: alloc::vec::Vec<_> = (0..3).map(|i| l.record(i * 1000)).collect();
        assert_eq!(
            verdicts,
            [
                RestartVerdict::Restart { count: 1 },
                RestartVerdict::Restart { count: 2 },
                RestartVerdict::Restart { count: 3 }
            ]
        );
    }

    #[test]
    fn one_reset_more_than_the_limit_within_the_window_stops() {
        let mut l = RestartLimiter::new(3, 60_000);
        for i in 0..3 {
            l.record(i * 1000);
        }
        assert_eq!(l.record(59_999), RestartVerdict::Stop { count: 4 });
    }

    #[test]
    fn resets_older_than_the_window_no_longer_count() {
        let mut l = RestartLimiter::new(2, 60_000);
        l.record(0);
        l.record(10_000);
        assert_eq!(l.record(60_000), RestartVerdict::Restart { count: 2 });
    }

    #[test]
    fn resets_at_one_time_all_count_without_a_clock() {
        let mut l = RestartLimiter::new(2, 60_000);
        l.record(0);
        l.record(0);
        assert_eq!(l.record(0), RestartVerdict::Stop { count: 3 });
    }
}
