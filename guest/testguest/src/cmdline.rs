//! Kernel command line: `keeltest=...` options and `virtio_mmio.device=` entries.
//!
//! Syntax (space-separated words; unknown words are ignored):
//! - `keeltest=<test>[,<test>...]`: tests to run, in order. Tests: `blk`, `rng`,
//!   `console`, `smp`, `irq`, `mmio-bench:<N>`, `corrupt:<loop|oob|nostatus>`, `panic`, `fault`,
//!   `blkbench:<read|write|randread>:<size>[:<total>]`, `pause:<ms>`, `reboot`, `reset-loop`
//!   and `all` (= every device test whose device is present, plus `smp`).
//! - `keeltest.disk-pattern=<rw|write|check>`: what `blk` does with its pattern
//!   (default `rw`: write, flush, read back; `write`: the same, for a later
//!   `check` boot; `check`: only read and verify a pattern written earlier).
//! - `keeltest.disk-seed=<u32>`: varies the pattern (default 0x6b65656c).
//! - `keeltest.cpus=<N>`: CPU count when there is no MP table.
//! - `virtio_mmio.device=<size>@<base>:<irq>` (Linux syntax; K/M/G suffixes,
//!   0x-prefixed hex or decimal numbers).

/// Most virtio-mmio devices kept.
pub const MAX_DEVICES: usize = 8;
/// Most tests in one `keeltest=` list.
pub const MAX_TESTS: usize = 16;

/// One `virtio_mmio.device=` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Register window size.
    pub size: u64,
    /// Register window base (guest-physical).
    pub base: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

/// Ways to corrupt a block request (negative tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Descriptors whose `next` fields form a cycle.
    Loop,
    /// A data descriptor pointing outside guest RAM.
    OutOfRange,
    /// A chain with no device-writable status byte.
    NoStatus,
}

/// One test to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// virtio-blk read/write/flush/get-id.
    Blk,
    /// virtio-rng entropy.
    Rng,
    /// virtio-console transmit.
    Console,
    /// virtio-console receive: wait for host input on port 0 and print it.
    ConsoleInput,
    /// Start every CPU.
    Smp,
    /// Take a virtio-blk used-buffer interrupt through the IOAPIC.
    Irq,
    /// Time N reads of a virtio-mmio register.
    MmioBench(u32),
    /// Submit a corrupt blk request; expect DEVICE_NEEDS_RESET.
    Corrupt(Corruption),
    /// Panic on purpose (checks the panic path: exit code 2).
    Panic,
    /// Take a CPU exception on purpose (checks the IDT path: exit code 2).
    Fault,
    /// `all`: every test whose device is present.
    All,
    /// `blkbench:<kind>:<size>[:<total>]`: virtio-blk throughput (bench/run.sh).
    BlkBench {
        /// Access pattern.
        kind: BenchKind,
        /// Bytes per request.
        size: u32,
        /// Bytes in all (default: the disk's capacity).
        total: Option<u64>,
    },
    /// `pause:<ms>`: busy-wait so the host can sample the VMM (bench/run.sh).
    Pause(u32),
    /// `reboot`: with no marker on the disk, write one and reset the machine; with the
    /// marker (the boot after the reset), clear it and pass.
    Reboot,
    /// `reset-loop`: reset the machine at once, on every boot.
    ResetLoop,
}

/// Access pattern of `blkbench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchKind {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Reads at random request-aligned offsets.
    RandRead,
}

/// What `blk` does with its disk pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskPattern {
    /// Write, flush, read back, verify.
    ReadWrite,
    /// Same as `ReadWrite`; named for the first boot of a persistence test.
    Write,
    /// Only read and verify a pattern written by an earlier boot.
    Check,
}

/// Everything parsed from the command line.
#[derive(Debug)]
pub struct Config {
    /// Tests in order.
    pub tests: [Option<Test>; MAX_TESTS],
    /// Devices in command-line order.
    pub devices: [Option<MmioDevice>; MAX_DEVICES],
    /// `keeltest.disk-pattern`.
    pub disk_pattern: DiskPattern,
    /// `keeltest.disk-seed`.
    pub disk_seed: u32,
    /// `keeltest.cpus`.
    pub cpus: Option<u32>,
}

/// A command-line error, with the offending word.
#[derive(Clone, Copy, Debug)]
pub struct Error<'a> {
    /// What is wrong.
    pub what: &'static str,
    /// The word that was wrong.
    pub word: &'a str,
}

impl<'a> Config {
    /// Parses `cmdline`.
    pub fn parse(cmdline: &'a str) -> Result<Self, Error<'a>> {
        let mut config = Config {
            tests: [None; MAX_TESTS],
            devices: [None; MAX_DEVICES],
            disk_pattern: DiskPattern::ReadWrite,
            disk_seed: 0x6b65_656c,
            cpus: None,
        };
        let mut ntests = 0;
        let mut ndevices = 0;
        for word in cmdline.split_ascii_whitespace() {
            let err = |what| Error { what, word };
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "keeltest" => {
                    for name in value.split(',').filter(|n| !n.is_empty()) {
                        let test = parse_test(name).ok_or(err("unknown test"))?;
                        let slot = config.tests.get_mut(ntests).ok_or(err("too many tests"))?;
                        *slot = Some(test);
                        ntests += 1;
                    }
                }
                "keeltest.disk-pattern" => {
                    config.disk_pattern = match value {
                        "rw" => DiskPattern::ReadWrite,
                        "write" => DiskPattern::Write,
                        "check" => DiskPattern::Check,
                        _ => return Err(err("disk-pattern must be rw, write or check")),
                    }
                }
                "keeltest.disk-seed" => {
                    config.disk_seed = parse_number(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or(err("disk-seed is not a 32-bit number"))?;
                }
                "keeltest.cpus" => {
                    config.cpus = Some(
                        parse_number(value)
                            .and_then(|v| u32::try_from(v).ok())
                            .filter(|&n| n >= 1)
                            .ok_or(err("cpus is not a number >= 1"))?,
                    );
                }
                "virtio_mmio.device" => {
                    let device = parse_mmio_device(value).ok_or(err("bad virtio_mmio.device"))?;
                    let slot = config
                        .devices
                        .get_mut(ndevices)
                        .ok_or(err("too many devices"))?;
                    *slot = Some(device);
                    ndevices += 1;
                }
                _ => {}
            }
        }
        Ok(config)
    }

    /// The tests, in order.
    pub fn tests(&self) -> impl Iterator<Item = Test> + '_ {
        self.tests.iter().flatten().copied()
    }

    /// The devices, in order.
    pub fn devices(&self) -> impl Iterator<Item = MmioDevice> + '_ {
        self.devices.iter().flatten().copied()
    }
}

fn parse_test(name: &str) -> Option<Test> {
    Some(match name {
        "blk" => Test::Blk,
        "rng" => Test::Rng,
        "console" => Test::Console,
        "console-input" => Test::ConsoleInput,
        "smp" => Test::Smp,
        "irq" => Test::Irq,
        "panic" => Test::Panic,
        "fault" => Test::Fault,
        "all" => Test::All,
        "reboot" => Test::Reboot,
        "reset-loop" => Test::ResetLoop,
        _ => {
            let (kind, arg) = name.split_once(':')?;
            match kind {
                "mmio-bench" => Test::MmioBench(u32::try_from(parse_number(arg)?).ok()?),
                "pause" => Test::Pause(u32::try_from(parse_number(arg)?).ok()?),
                "blkbench" => {
                    let mut parts = arg.split(':');
                    let kind = match parts.next()? {
                        "read" => BenchKind::Read,
                        "write" => BenchKind::Write,
                        "randread" => BenchKind::RandRead,
                        _ => return None,
                    };
                    let size = u32::try_from(parse_size(parts.next()?)?).ok()?;
                    let total = match parts.next() {
                        Some(t) => Some(parse_size(t)?),
                        None => None,
                    };
                    if parts.next().is_some() {
                        return None;
                    }
                    Test::BlkBench { kind, size, total }
                }
                "corrupt" => Test::Corrupt(match arg {
                    "loop" => Corruption::Loop,
                    "oob" => Corruption::OutOfRange,
                    "nostatus" => Corruption::NoStatus,
                    _ => return None,
                }),
                _ => return None,
            }
        }
    })
}

/// Parses `0x`-prefixed hex or decimal.
pub fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() => s.parse().ok(),
        None => None,
    }
}

/// Parses a number with an optional K/M/G suffix (Linux `memparse`).
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_number(digits)?.checked_mul(1 << shift)
}

/// Parses `<size>@<base>:<irq>[:<id>]`.
fn parse_mmio_device(s: &str) -> Option<MmioDevice> {
    let (size, rest) = s.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split(':').next()?;
    let device = MmioDevice {
        size: parse_size(size)?,
        base: parse_size(base)?,
        irq: u32::try_from(parse_number(irq)?).ok()?,
    };
    (device.size >= 0x100).then_some(device)
}
