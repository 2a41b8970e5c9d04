//! Where a VMM's messages go. Each VMM is handed its sink by its backend (stderr on Linux,
//! the console component's ring on seL4): the library keeps no process-wide logger.

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

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

/// A budget for messages a guest can cause (unmapped accesses, trapped registers): the
/// first `limit` are logged, the rest only counted, so a guest that floods bad accesses
/// costs its own time, not the log's.
#[derive(Debug)]
pub struct RateLimit {
    limit: u32,
    seen: AtomicU32,
}

impl RateLimit {
    /// Log at most `limit` messages.
    pub const fn new(limit: u32) -> RateLimit {
        RateLimit {
            limit,
            seen: AtomicU32::new(0),
        }
    }

    /// Whether this occurrence may be logged; the one that reaches the limit says so.
    pub fn allow(&self) -> Allowed {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        match n.checked_add(1) {
            Some(m) if m < self.limit => Allowed::Yes,
            Some(m) if m == self.limit => Allowed::Last,
            _ => Allowed::No,
        }
    }

    /// How many occurrences were seen, logged or not.
    pub fn seen(&self) -> u32 {
        self.seen.load(Ordering::Relaxed)
    }
}

/// The answer of [`RateLimit::allow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Log it.
    Yes,
    /// Log it, and say that later ones are only counted.
    Last,
    /// Count it only.
    No,
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
                Allowed::No,
                Allowed::No
            ]
        );
        assert_eq!(r.seen(), 5);
    }
}
