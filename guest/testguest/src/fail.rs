//! Test failure reasons: short formatted messages without an allocator.

use core::fmt;

const CAPACITY: usize = 160;

/// Why a test failed (truncated to 160 bytes).
#[derive(Clone, Copy)]
pub struct Fail {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Fail {
    /// Formats a reason.
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut fail = Fail {
            buf: [0; CAPACITY],
            len: 0,
        };
        let _ = fmt::Write::write_fmt(&mut fail, args);
        fail
    }

    /// The reason text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("(garbled reason)")
    }
}

impl fmt::Write for Fail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == CAPACITY {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fail({:?})", self.as_str())
    }
}

/// Result of a test step.
pub type TestResult<T = ()> = Result<T, Fail>;

/// `Err(Fail)` with a formatted reason.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        Err($crate::fail::Fail::new(format_args!($($arg)*)))
    };
}
