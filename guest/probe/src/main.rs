//! keel-probe: measurements taken from inside a Linux guest, against the wall clock.
//!
//! ```text
//! keel-probe runfrac <seconds> [<at>|now [<window_ms> [<part_s>]]]   share of its core the VM got
//! keel-probe work <MiB> <passes>        a fixed memory + cache workload, timed
//! keel-probe thrash <MiB> <seconds>     streaming writes over a buffer, for that long
//! keel-probe vsock-listen <port> [<connections>]            AF_VSOCK echo server
//! keel-probe vsock-connect <cid> <port> <bytes> [<retry_s>] send, read the echo back, timed
//! keel-probe unix-echo <path> <connections>                 host side: echo at <socket>_<port>
//! keel-probe unix-connect <path> <port> <bytes> <retry_s>   host side: CONNECT/OK, then echo
//! keel-probe tcp-listen <port> <connections>                the vsock echo server over TCP
//! keel-probe tcp-connect <ipv4> <port> <bytes> <retry_s>    the vsock client over TCP
//! ```
//!
//! Each mode prints one result line `KEEL-PROBE <mode> key=value ...` (`thrash` also prints
//! `KEEL-PROBE thrash-start ...` when its loop begins). The clock is the arm64 generic
//! timer's virtual counter (`CNTVCT_EL0`, frequency `CNTFRQ_EL0`), read directly from EL0:
//! it keeps counting while the vCPU does not run (seL4 without
//! `CONFIG_VTIMER_UPDATE_VOFFSET`, KVM), so it is the wall clock. On other architectures
//! (the probe's own unit tests on the build host) `std::time::Instant` stands in.

use std::fmt;
use std::hint::black_box;
use std::io::Write;

mod tcp;
mod vsock;

mod clock {
    /// Counter ticks now.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub fn now() -> u64 {
        let v: u64;
        // SAFETY: reads the virtual counter, which Linux lets EL0 read (CNTKCTL_EL1.EL0VCTEN);
        // the `isb` keeps the read from being hoisted above earlier instructions. No memory
        // is touched.
        unsafe {
            core::arch::asm!("isb", "mrs {v}, cntvct_el0", v = out(reg) v, options(nomem, nostack, preserves_flags));
        }
        v
    }

    /// Counter ticks per second.
    #[cfg(target_arch = "aarch64")]
    pub fn freq() -> u64 {
        let v: u64;
        // SAFETY: reads the counter frequency register, readable at EL0 whenever the
        // counter is; no memory is touched.
        unsafe {
            core::arch::asm!("mrs {v}, cntfrq_el0", v = out(reg) v, options(nomem, nostack, preserves_flags));
        }
        v
    }

    #[cfg(not(target_arch = "aarch64"))]
    fn origin() -> std::time::Instant {
        static O: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *O.get_or_init(std::time::Instant::now)
    }

    /// Nanoseconds since the first call (stand-in off arm64).
    #[cfg(not(target_arch = "aarch64"))]
    pub fn now() -> u64 {
        origin().elapsed().as_nanos() as u64
    }

    /// Nanosecond ticks (stand-in off arm64).
    #[cfg(not(target_arch = "aarch64"))]
    pub fn freq() -> u64 {
        1_000_000_000
    }
}

/// Why the probe cannot run as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ProbeError {
    /// No mode, or one the probe does not know.
    Usage(String),
    /// An argument is not a number in range.
    BadArg {
        /// Which argument.
        what: &'static str,
        /// What was given.
        value: String,
    },
    /// The counter frequency is 0 (no usable clock).
    NoClock,
    /// A system call failed.
    Os {
        /// Which.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Usage(m) => write!(
                f,
                "{m}; usage: keel-probe runfrac <seconds> [<at>|now [<window_ms> [<part_s>]]] | work <MiB> <passes> | thrash <MiB> <seconds> | vsock-listen <port> [<connections>] | vsock-connect <cid> <port> <bytes> [<retry_s>] | unix-echo <path> <connections> | unix-connect <path> <port> <bytes> <retry_s>"
            ),
            ProbeError::BadArg { what, value } => {
                write!(f, "{what} {value:?} is not a whole number in range")
            }
            ProbeError::NoClock => write!(f, "CNTFRQ_EL0 reads 0: no counter frequency"),
            ProbeError::Os { call, errno } => write!(f, "{call} failed: errno {errno}"),
        }
    }
}

/// Sums the gaps of a stream of clock reads: a step between consecutive reads longer than
/// the threshold is time the reader did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GapMeter {
    threshold: u64,
    first: u64,
    last: u64,
    gaps: u64,
    count: u64,
    longest: u64,
    /// (start, end) of each gap, when recording (at most [`MAX_GAP_LOG`]).
    log: Option<Vec<(u64, u64)>>,
}

/// Most gaps a recording [`GapMeter`] keeps (16 bytes each).
const MAX_GAP_LOG: usize = 1 << 20;

impl GapMeter {
    fn new(start: u64, threshold: u64) -> Self {
        GapMeter {
            threshold,
            first: start,
            last: start,
            gaps: 0,
            count: 0,
            longest: 0,
            log: None,
        }
    }

    /// A meter that also keeps each gap, for [`GapMeter::peak`].
    fn recording(start: u64, threshold: u64) -> Self {
        GapMeter {
            log: Some(Vec::new()),
            ..GapMeter::new(start, threshold)
        }
    }

    /// The most run time in any `window` ticks long inside the measured span, as a share
    /// of `window` (`None` without a log, or if the span is shorter than `window` or the
    /// log overflowed). The maximum is at a window that starts where running starts (the
    /// first read, a gap's end) or ends where it ends (a gap's start, the last read).
    fn peak(&self, window: u64) -> Option<f64> {
        let log = self.log.as_ref()?;
        if window == 0 || self.elapsed() < window || log.len() >= MAX_GAP_LOG {
            return None;
        }
        // Run time in [s, s + window): the gaps are sorted and disjoint.
        let run_from = |s: u64| {
            let e = s + window;
            let j = log.partition_point(|g| g.1 <= s);
            let gap: u64 = log[j..]
                .iter()
                .take_while(|g| g.0 < e)
                .map(|g| g.1.min(e) - g.0.max(s))
                .sum();
            window - gap
        };
        let starts = core::iter::once(self.first).chain(log.iter().map(|g| g.1));
        let ends = core::iter::once(self.last).chain(log.iter().map(|g| g.0));
        let best = starts
            .filter(|&s| s + window <= self.last)
            .chain(
                ends.filter(|&e| e >= self.first + window)
                    .map(|e| e - window),
            )
            .map(run_from)
            .max()?;
        Some(best as f64 / window as f64)
    }

    /// Record a read at `t` (ticks, not before the previous one; a counter that went
    /// backwards counts as no step).
    fn observe(&mut self, t: u64) {
        let step = t.saturating_sub(self.last);
        if step > self.threshold {
            self.gaps += step;
            self.count += 1;
            self.longest = self.longest.max(step);
            if let Some(log) = self.log.as_mut()
                && log.len() < MAX_GAP_LOG
            {
                log.push((self.last, t));
            }
        }
        self.last = self.last.max(t);
    }

    fn elapsed(&self) -> u64 {
        self.last - self.first
    }

    /// 1 - gaps / elapsed (1.0 before anything elapsed).
    fn run_fraction(&self) -> f64 {
        match self.elapsed() {
            0 => 1.0,
            e => 1.0 - self.gaps as f64 / e as f64,
        }
    }
}

/// The window of `runfrac`'s `peak=` when none is given, milliseconds.
const DEFAULT_WINDOW_MS: u64 = 20;

/// Gaps longer than this are time the vCPU did not run (a guest timer tick taken inside
/// the guest costs a few microseconds, one through the VMM under QEMU TCG tens).
const GAP_THRESHOLD_US: u64 = 200;

fn us(ticks: u64, freq: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(freq.max(1))) as u64
}

/// Wait until the counter reads `at` seconds: sleep until one second before, then spin
/// (the spin warms the loop up). Returns whether `at` had already passed.
fn wait_until(at: u64, freq: u64) -> bool {
    let target = freq.saturating_mul(at);
    let now = clock::now();
    if now >= target {
        return true;
    }
    let sleep_ticks = target.saturating_sub(freq).saturating_sub(now);
    if sleep_ticks > 0 {
        std::thread::sleep(std::time::Duration::from_micros(us(sleep_ticks, freq)));
    }
    while clock::now() < target {
        std::hint::spin_loop();
    }
    false
}

/// `runfrac`'s arguments.
struct RunFrac {
    seconds: u64,
    /// Start at this counter time (seconds), else at once.
    at: Option<u64>,
    /// The window of `peak=`.
    window_ms: u64,
    /// Print a `runfrac-part` line for each part this long (seconds), if given.
    part_s: Option<u64>,
}

/// The numbers of a finished [`GapMeter`], as `key=value` words.
fn meter_words(m: &GapMeter, freq: u64, window_ms: u64) -> String {
    format!(
        "secs={:.3} frac={:.4} gaps={} gap_us={} longest_us={} start={:.3} window_ms={window_ms} peak={}",
        m.elapsed() as f64 / freq as f64,
        m.run_fraction(),
        m.count,
        us(m.gaps, freq),
        us(m.longest, freq),
        m.first as f64 / freq as f64,
        m.peak(freq.saturating_mul(window_ms) / 1000)
            .map_or("none".into(), |p| format!("{p:.4}")),
    )
}

fn runfrac(a: RunFrac) -> Result<String, ProbeError> {
    let RunFrac {
        seconds,
        at,
        window_ms,
        part_s,
    } = a;
    let freq = clock::freq();
    if freq == 0 {
        return Err(ProbeError::NoClock);
    }
    println!(
        "KEEL-PROBE runfrac-start now={:.3} at={}",
        clock::now() as f64 / freq as f64,
        at.map_or("now".into(), |a| a.to_string())
    );
    let _ = std::io::stdout().flush();
    let late = at.is_some_and(|a| wait_until(a, freq));
    let threshold = freq * GAP_THRESHOLD_US / 1_000_000;
    let end_after = freq.saturating_mul(seconds);
    let t0 = clock::now();
    let mut m = GapMeter::new(t0, threshold);
    let part_ticks = part_s.map(|p| freq.saturating_mul(p));
    let mut part = GapMeter::recording(t0, threshold);
    let mut reads: u64 = 0;
    while m.elapsed() < end_after {
        let t = clock::now();
        m.observe(t);
        part.observe(t);
        reads += 1;
        if let Some(pt) = part_ticks
            && part.elapsed() >= pt
        {
            // The print is a gap of the next part (the console write traps to the VMM).
            println!(
                "KEEL-PROBE runfrac-part {}",
                meter_words(&part, freq, window_ms)
            );
            let _ = std::io::stdout().flush();
            part = GapMeter::recording(part.last, threshold);
        }
    }
    if part_ticks.is_some() && part.elapsed() > 0 {
        println!(
            "KEEL-PROBE runfrac-part {}",
            meter_words(&part, freq, window_ms)
        );
    }
    // Without parts, the one part is the whole run (its log gives the peak).
    let whole = if part_ticks.is_some() { &m } else { &part };
    Ok(format!(
        "KEEL-PROBE runfrac {} threshold_us={GAP_THRESHOLD_US} reads={reads} freq_hz={freq} late={}",
        meter_words(whole, freq, window_ms),
        u8::from(late),
    ))
}

/// Bytes of one element of the work buffer: one cache line.
const LINE: usize = 64;

/// xorshift64: the work's fixed pseudo-random sequence (same seed, same permutation).
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// A single cycle through `n` elements (Sattolo's algorithm, fixed seed): `next[i]` is the
/// element after `i`.
fn cycle(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        let j = (xorshift(&mut seed) % i as u64) as usize;
        order.swap(i, j);
    }
    let mut next = vec![0u32; n];
    for w in 0..n {
        next[order[w] as usize] = order[(w + 1) % n];
    }
    next
}

/// One cache line of the work buffer: the next line of the chase and a counter.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line {
    next: u32,
    _pad: u32,
    hits: u64,
    _rest: [u64; (LINE - 16) / 8],
}

/// Chase steps between two clock reads in [`chase`] (a few microseconds: far below the
/// gap threshold).
const CHUNK: usize = 64;

/// What [`chase`] measured.
struct Chase {
    /// Ticks from the first step to the last.
    ticks: u64,
    /// Ticks of that in gaps (the vCPU did not run), as [`runfrac`] counts them.
    gap_ticks: u64,
    /// Steps taken (each line's counter summed): `passes` × lines.
    steps: u64,
}

/// `passes` walks of a random single cycle through `mib` MiB of cache lines, each step a
/// dependent load and a read-modify-write of the line; the clock is read every [`CHUNK`]
/// steps to tell time run from time not run.
fn chase(mib: u64, passes: u64, threshold: u64) -> Chase {
    let n = (mib as usize) * (1 << 20) / LINE;
    let next = cycle(n);
    let mut buf: Vec<Line> = next
        .iter()
        .map(|&nx| Line {
            next: nx,
            _pad: 0,
            hits: 0,
            _rest: [0; (LINE - 16) / 8],
        })
        .collect();
    drop(next);
    let mut m = GapMeter::new(clock::now(), threshold);
    let mut i = 0usize;
    for _ in 0..passes {
        let mut left = n;
        while left > 0 {
            let k = left.min(CHUNK);
            for _ in 0..k {
                let l = &mut buf[i];
                l.hits = l.hits.wrapping_add(1);
                i = l.next as usize;
            }
            left -= k;
            m.observe(clock::now());
        }
    }
    let steps = buf.iter().fold(0u64, |a, l| a.wrapping_add(l.hits));
    Chase {
        ticks: m.elapsed(),
        gap_ticks: m.gaps,
        steps: black_box(steps),
    }
}

fn work(mib: u64, passes: u64) -> Result<String, ProbeError> {
    let freq = clock::freq();
    if freq == 0 {
        return Err(ProbeError::NoClock);
    }
    let c = chase(mib, passes, freq * GAP_THRESHOLD_US / 1_000_000);
    let ms = |t: u64| t as f64 * 1000.0 / freq as f64;
    Ok(format!(
        "KEEL-PROBE work mib={mib} passes={passes} ms={:.1} run_ms={:.1} gap_ms={:.1} steps={}",
        ms(c.ticks),
        ms(c.ticks - c.gap_ticks),
        ms(c.gap_ticks),
        c.steps
    ))
}

fn thrash(mib: u64, seconds: u64) -> Result<String, ProbeError> {
    let freq = clock::freq();
    if freq == 0 {
        return Err(ProbeError::NoClock);
    }
    let words = (mib as usize) * (1 << 20) / 8;
    let mut buf = vec![0u64; words];
    let t0 = clock::now();
    println!("KEEL-PROBE thrash-start mib={mib} secs={seconds}");
    let _ = std::io::stdout().flush();
    let end_after = freq.saturating_mul(seconds);
    let mut passes: u64 = 0;
    while clock::now().saturating_sub(t0) < end_after {
        for w in buf.iter_mut() {
            *w = w.wrapping_add(passes | 1);
        }
        black_box(&mut buf);
        passes += 1;
    }
    let secs = clock::now().saturating_sub(t0) as f64 / freq as f64;
    Ok(format!(
        "KEEL-PROBE thrash mib={mib} secs={secs:.3} passes={passes} mib_per_s={:.1}",
        (passes * mib) as f64 / secs.max(1e-9)
    ))
}

fn number(what: &'static str, arg: Option<&String>, max: u64) -> Result<u64, ProbeError> {
    let value = arg.cloned().unwrap_or_default();
    match value.parse::<u64>() {
        Ok(v) if (1..=max).contains(&v) => Ok(v),
        _ => Err(ProbeError::BadArg { what, value }),
    }
}

/// A TCP port (0 allowed).
fn u16_arg(what: &'static str, arg: Option<&String>) -> Result<u16, ProbeError> {
    let value = arg.cloned().unwrap_or_default();
    value
        .parse::<u16>()
        .map_err(|_| ProbeError::BadArg { what, value })
}

/// A 32-bit number (a vsock CID or port; 0 allowed).
fn u32_arg(what: &'static str, arg: Option<&String>) -> Result<u32, ProbeError> {
    let value = arg.cloned().unwrap_or_default();
    value
        .parse::<u32>()
        .map_err(|_| ProbeError::BadArg { what, value })
}

/// Most MiB a buffer may have (the guests have 128..256 MiB).
const MAX_MIB: u64 = 1024;
/// Longest run, seconds.
const MAX_SECONDS: u64 = 3600;

fn run(args: &[String]) -> Result<String, ProbeError> {
    match args.first().map(String::as_str) {
        Some("runfrac") if (2..=5).contains(&args.len()) => runfrac(RunFrac {
            seconds: number("seconds", args.get(1), MAX_SECONDS)?,
            at: match args.get(2).map(String::as_str) {
                Some("now") | None => None,
                Some(_) => Some(number("at", args.get(2), u64::MAX / 1_000_000_000)?),
            },
            window_ms: match args.get(3) {
                Some(_) => number("window_ms", args.get(3), 60_000)?,
                None => DEFAULT_WINDOW_MS,
            },
            part_s: match args.get(4) {
                Some(_) => Some(number("part_s", args.get(4), MAX_SECONDS)?),
                None => None,
            },
        }),
        Some("work") if args.len() == 3 => work(
            number("MiB", args.get(1), MAX_MIB)?,
            number("passes", args.get(2), 1_000_000)?,
        ),
        Some("thrash") if args.len() == 3 => thrash(
            number("MiB", args.get(1), MAX_MIB)?,
            number("seconds", args.get(2), MAX_SECONDS)?,
        ),
        Some("vsock-listen") if (2..=3).contains(&args.len()) => vsock::listen_echo(
            u32_arg("port", args.get(1))?,
            match args.get(2) {
                Some(_) => number("connections", args.get(2), 1_000_000)?,
                None => 1,
            },
        ),
        Some("vsock-connect") if (4..=5).contains(&args.len()) => vsock::connect_echo(
            u32_arg("cid", args.get(1))?,
            u32_arg("port", args.get(2))?,
            number("bytes", args.get(3), 1 << 40)?,
            match args.get(4).map(String::as_str) {
                Some("0") | None => 0,
                Some(_) => number("retry_s", args.get(4), MAX_SECONDS)?,
            },
        ),
        Some("unix-echo") if args.len() == 3 => {
            vsock::unix_echo(&args[1], number("connections", args.get(2), 1_000_000)?)
        }
        Some("unix-connect") if args.len() == 5 => vsock::unix_connect(
            &args[1],
            u32_arg("port", args.get(2))?,
            number("bytes", args.get(3), 1 << 40)?,
            match args.get(4).map(String::as_str) {
                Some("0") => 0,
                _ => number("retry_s", args.get(4), MAX_SECONDS)?,
            },
        ),
        Some("tcp-listen") if args.len() == 3 => tcp::listen_echo(
            u16_arg("port", args.get(1))?,
            number("connections", args.get(2), 1_000_000)?,
        ),
        Some("tcp-connect") if args.len() == 5 => tcp::connect_echo(
            {
                let value = args[1].clone();
                value.parse().map_err(|_| ProbeError::BadArg {
                    what: "ipv4",
                    value,
                })?
            },
            u16_arg("port", args.get(2))?,
            number("bytes", args.get(3), 1 << 40)?,
            match args.get(4).map(String::as_str) {
                Some("0") => 0,
                _ => number("retry_s", args.get(4), MAX_SECONDS)?,
            },
        ),
        Some(m) => Err(ProbeError::Usage(format!(
            "mode {m:?} with {} argument(s)",
            args.len() - 1
        ))),
        None => Err(ProbeError::Usage("no mode".into())),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("keel-probe: {e}");
            println!("KEEL-PROBE error msg={:?}", e.to_string());
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_under_the_threshold_are_not_gaps() {
        let mut m = GapMeter::new(0, 10);
        for t in (1..=100).map(|i| i * 10) {
            m.observe(t);
        }
        assert_eq!((m.count, m.gaps, m.run_fraction()), (0, 0, 1.0));
    }

    #[test]
    fn a_step_over_the_threshold_counts_whole_as_a_gap() {
        let mut m = GapMeter::new(0, 10);
        for t in [5, 80, 90, 100] {
            m.observe(t);
        }
        assert_eq!((m.count, m.gaps, m.longest), (1, 75, 75));
        assert!((m.run_fraction() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn peak_is_the_most_run_time_in_any_window() {
        // Runs 0..5, gap 5..20, runs 20..25, gap 25..40, runs 40..48, gap 48..60, runs
        // 60..100: the best 50 are the last 50.
        let mut m = GapMeter::recording(0, 1);
        for t in [1, 2, 3, 4, 5, 20, 21, 22, 23, 24, 25, 40, 44, 48, 60] {
            m.observe(t);
        }
        for t in 61..=100 {
            m.observe(t);
        }
        assert_eq!(m.peak(20), Some(1.0));
        assert_eq!(m.peak(50), Some(40.0 / 50.0));
    }

    #[test]
    fn a_counter_going_backwards_is_no_step() {
        let mut m = GapMeter::new(100, 10);
        m.observe(50);
        m.observe(105);
        assert_eq!((m.count, m.elapsed()), (0, 5));
    }

    #[test]
    fn the_chase_cycle_visits_every_element_once() {
        let next = cycle(1000);
        let mut seen = vec![false; 1000];
        let mut i = 0usize;
        for _ in 0..1000 {
            assert!(!seen[i], "element {i} visited twice");
            seen[i] = true;
            i = next[i] as usize;
        }
        assert_eq!(i, 0);
    }

    #[test]
    fn work_touches_each_line_once_per_pass() {
        let c = chase(1, 3, u64::MAX);
        assert_eq!(c.steps, 3 * (1 << 20) / LINE as u64);
    }

    #[test]
    fn an_unknown_mode_is_a_usage_error() {
        let e = run(&["spin".to_string()]).unwrap_err();
        assert!(matches!(e, ProbeError::Usage(m) if m.contains("spin")));
    }

    #[test]
    fn a_retry_time_of_zero_means_one_try() {
        let line = run(&[
            "unix-connect".into(),
            "/nonexistent/keel-probe.sock".into(),
            "5".into(),
            "1".into(),
            "0".into(),
        ])
        .unwrap();
        assert!(line.ends_with("refused=1"), "{line}");
    }

    #[test]
    fn vsock_modes_check_their_numbers_by_name() {
        let e = run(&["vsock-connect".into(), "x".into(), "1".into(), "1".into()]).unwrap_err();
        assert_eq!(
            e,
            ProbeError::BadArg {
                what: "cid",
                value: "x".into()
            }
        );
        let e = run(&["vsock-listen".into(), "4294967296".into()]).unwrap_err();
        assert_eq!(
            e,
            ProbeError::BadArg {
                what: "port",
                value: "4294967296".into()
            }
        );
    }

    #[test]
    fn tcp_modes_check_their_arguments_by_name() {
        let e = run(&[
            "tcp-connect".into(),
            "10.0.0".into(),
            "1".into(),
            "1".into(),
            "0".into(),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            ProbeError::BadArg {
                what: "ipv4",
                value: "10.0.0".into()
            }
        );
        let e = run(&["tcp-listen".into(), "65536".into(), "1".into()]).unwrap_err();
        assert_eq!(
            e,
            ProbeError::BadArg {
                what: "port",
                value: "65536".into()
            }
        );
    }

    #[test]
    fn a_zero_size_is_rejected_by_name() {
        let e = run(&["work".into(), "0".into(), "1".into()]).unwrap_err();
        assert_eq!(
            e,
            ProbeError::BadArg {
                what: "MiB",
                value: "0".into()
            }
        );
    }
}
