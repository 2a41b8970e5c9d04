//! Where a VMM's messages go. Each VMM is handed its sink by its backend (stderr on Linux,
//! the console component's ring on seL4): the library keeps no process-wide logger.

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// How much a message matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The VM or a device stopped working.
    Error,
    /// Something the integrator should know (a guest bug, a refused request).
    Warn,
    /// Progress.
    Info,
    /// Every unhandled guest access.
    Debug,
}

/// A sink for one VMM's messages, one line each (without the newline).
pub trait LogSink: Send + Sync {
    /// Record one message.
    fn log(&self, level: Level, args: fmt::Arguments<'_>);
}

/// A sink that drops everything (tests, benchmarks).
#[derive(Debug, Default)]
pub struct NullLog;

impl LogSink for NullLog {
    fn log(&self, _level: Level, _args: fmt::Arguments<'_>) {}
}

/// The shared handle devices and handlers keep.
pub type Log = Arc<dyn LogSink>;

/// A budget for messages a guest can cause (unmapped accesses, trapped registers, bad
/// descriptor chains, writes to read-only regions): the first `limit` are logged; after
/// that only the occurrences numbered by a power of two (`2^k > limit`) are, each with the
/// count suppressed since the previous logged one ([`Allowed::Again`]). So a guest that
/// floods bad accesses costs its own time, not the log's: `n` occurrences give at most
/// `limit + log2(n)` lines, and no occurrence goes unaccounted.
///
/// The limit is count-based, not time-based: the seL4 protection domains have no clock
/// they may read cheaply, and a count works the same on every backend.
#[derive(Debug)]
pub struct RateLimit {
    limit: u32,
    seen: AtomicU64,
}

impl RateLimit {
    /// Log the first `limit` messages, then every 2^k-th with the count dropped.
    pub const fn new(limit: u32) -> RateLimit {
        RateLimit {
            limit,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this occurrence may be logged; the one that reaches the limit says so, and
    /// the 2^k-th ones after it carry the count suppressed since the last logged one.
    pub fn allow(&self) -> Allowed {
        // The occurrence number, from 1 (a u64: cannot wrap in the life of a VM).
        let n = self.seen.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let limit = u64::from(self.limit);
        if n < limit {
            return Allowed::Yes;
        }
        if n == limit {
            return Allowed::Last;
        }
        if !n.is_power_of_two() {
            return Allowed::No;
        }
        // The previous logged occurrence: n / 2 if that was a power of two past the
        // limit, else the limit itself.
        let previous = (n / 2).max(limit);
        Allowed::Again {
            suppressed: n - previous - 1,
        }
    }

    /// How many occurrences were seen, logged or not (saturating at `u32::MAX`).
    pub fn seen(&self) -> u32 {
        u32::try_from(self.seen.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }
}

/// The answer of [`RateLimit::allow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Log it.
    Yes,
    /// Log it, and say that later ones are only counted.
    Last,
    /// Log it with how many were suppressed since the last logged one.
    Again {
        /// Occurrences counted but not logged since the previous line.
        suppressed: u64,
    },
    /// Count it only.
    No,
}

impl Allowed {
    /// Whether to log this occurrence.
    pub fn logs(self) -> bool {
        !matches!(self, Allowed::No)
    }

    /// What to append to the logged line: nothing, the notice that further ones are only
    /// counted, or the count suppressed since the previous line.
    pub fn suffix(self) -> Suffix {
        Suffix(self)
    }
}

/// The tail of a rate-limited line ([`Allowed::suffix`]).
#[derive(Clone, Copy, Debug)]
pub struct Suffix(Allowed);

impl fmt::Display for Suffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Allowed::Yes | Allowed::No => Ok(()),
            Allowed::Last => f.write_str(" (further ones are only counted)"),
            Allowed::Again { suppressed } => write!(f, " ({suppressed} more suppressed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_the_first_n_and_marks_the_last() {
        let r = RateLimit::new(3);

        let got: alloc::vec::Vec<_> = (0..5).map(|_| r.allow()).collect();

        assert_eq!(
            got,
            [
                Allowed::Yes,
                Allowed::Yes,
                Allowed::Last,
                Allowed::Again { suppressed: 0 },
                Allowed::No,
            ]
        );
        assert_eq!(r.seen(), 5);
    }

    #[test]
    fn rate_limit_past_the_limit_logs_powers_of_two_with_the_dropped_count() {
        let r = RateLimit::new(16);

        let logged: alloc::vec::Vec<(u64, Allowed)> = (1..=1000u64)
            .map(|n| (n, r.allow()))
            .filter(|(n, a)| *n > 16 && a.logs())
            .collect();

        assert_eq!(
            logged,
            [
                (32, Allowed::Again { suppressed: 15 }),
                (64, Allowed::Again { suppressed: 31 }),
                (128, Allowed::Again { suppressed: 63 }),
                (256, Allowed::Again { suppressed: 127 }),
                (512, Allowed::Again { suppressed: 255 }),
            ]
        );
    }

    #[test]
    fn suffix_names_the_suppressed_count() {
        let got = alloc::format!("{}", Allowed::Again { suppressed: 1234 }.suffix());

        assert_eq!(got, " (1234 more suppressed)");
    }
}
