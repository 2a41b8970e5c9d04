//! Keel's logging: one line per message on stderr with the `keel:` prefix, filtered by a
//! process-wide level the CLI sets.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// How much to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only errors.
    Error = 0,
    /// Errors and warnings.
    Warn = 1,
    /// Progress and notes (the default).
    Info = 2,
    /// Everything, including every unhandled guest access.
    Debug = 3,
}

impl Level {
    /// Parse `error`, `warn`, `info` or `debug`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    /// The name [`Level::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);

/// Set the process-wide level.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether messages at `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

fn emit(level: Level, prefix: &str, args: fmt::Arguments<'_>) {
    if enabled(level) {
        // One write call per line so that lines of different threads do not interleave.
        let line = format!("keel: {prefix}{args}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Log an error.
pub fn error(args: fmt::Arguments<'_>) {
    emit(Level::Error, "error: ", args);
}

/// Log a warning.
pub fn warn(args: fmt::Arguments<'_>) {
    emit(Level::Warn, "warning: ", args);
}

/// Log progress or a note.
pub fn info(args: fmt::Arguments<'_>) {
    emit(Level::Info, "", args);
}

/// Log detail for debugging.
pub fn debug(args: fmt::Arguments<'_>) {
    emit(Level::Debug, "debug: ", args);
}

/// Log a line that is shown at every level, without a severity word (e.g. why a VM was
/// stopped when that is not a VMM error).
pub fn notice(args: fmt::Arguments<'_>) {
    emit(Level::Error, "", args);
}
