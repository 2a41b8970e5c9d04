//! The `--stats` report: peak RSS, guest memory touched, exits by kind, wall time.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_vmm::ExitStats;

/// What a run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Wall time from VM creation to stop.
    pub wall: Duration,
    /// Peak RSS of the VMM process (VmHWM), bytes.
    pub peak_rss: Option<u64>,
    /// Guest RAM pages resident at exit, bytes.
    pub guest_touched: u64,
    /// Guest RAM size, bytes.
    pub guest_ram: u64,
    /// MMIO reads.
    pub mmio_reads: u64,
    /// MMIO writes.
    pub mmio_writes: u64,
    /// Port reads.
    pub pio_reads: u64,
    /// Port writes.
    pub pio_writes: u64,
    /// Every exit to the VMM.
    pub exits: u64,
}

impl RunStats {
    /// Copy the counters out of `stats`.
    pub fn with_exits(mut self, stats: &ExitStats) -> RunStats {
        self.mmio_reads = stats.mmio_reads.load(Ordering::Relaxed);
        self.mmio_writes = stats.mmio_writes.load(Ordering::Relaxed);
        self.pio_reads = stats.pio_reads.load(Ordering::Relaxed);
        self.pio_writes = stats.pio_writes.load(Ordering::Relaxed);
        self.exits = stats.total();
        self
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

impl fmt::Display for RunStats {
    /// Stable `key: value` lines, each prefixed `keel: stats:`, for harnesses to parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.wall.as_secs_f64();
        let mmio = self.mmio_reads + self.mmio_writes;
        writeln!(f, "keel: stats: wall_time_s: {secs:.3}")?;
        match self.peak_rss {
            Some(rss) => writeln!(
                f,
                "keel: stats: peak_rss_kib: {} ({:.1} MiB)",
                rss / 1024,
                mib(rss)
            )?,
            None => writeln!(f, "keel: stats: peak_rss_kib: unknown")?,
        }
        writeln!(
            f,
            "keel: stats: guest_touched_kib: {} of {} ({:.1} MiB of {:.1} MiB)",
            self.guest_touched / 1024,
            self.guest_ram / 1024,
            mib(self.guest_touched),
            mib(self.guest_ram)
        )?;
        writeln!(f, "keel: stats: exits: {}", self.exits)?;
        writeln!(f, "keel: stats: mmio_reads: {}", self.mmio_reads)?;
        writeln!(f, "keel: stats: mmio_writes: {}", self.mmio_writes)?;
        writeln!(f, "keel: stats: pio_reads: {}", self.pio_reads)?;
        writeln!(f, "keel: stats: pio_writes: {}", self.pio_writes)?;
        let rate = if secs > 0.0 { mmio as f64 / secs } else { 0.0 };
        write!(f, "keel: stats: mmio_exits_per_s: {rate:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_one_parsable_line_per_figure() {
        let s = RunStats {
            wall: Duration::from_secs(2),
            peak_rss: Some(10 << 20),
            mmio_reads: 100,
            mmio_writes: 100,
            ..Default::default()
        };
        let text = s.to_string();
        assert!(text.contains("keel: stats: peak_rss_kib: 10240"));
        assert!(text.contains("keel: stats: mmio_exits_per_s: 100"));
        assert!(text.lines().all(|l| l.starts_with("keel: stats: ")));
    }
}
