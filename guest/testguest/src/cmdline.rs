//! Kernel command line: `keeltest=...` options and `virtio_mmio.device=` entries.
//!
//! Syntax (space-separated words; unknown words are ignored):
//! - `keeltest=<test>[,<test>...]`: tests to run, in order. Tests: `blk`, `rng`,
//!   `console`, `smp`, `irq`, `mmio-bench:<N>`, `corrupt:<loop|oob|nostatus>`, `panic`, `fault`,
//!   `blkbench:<read|write|randread>:<size>[:<total>]`, `pause:<ms>`, `await-poweroff:<ms>`,
//!   `serial-echo:<ms>`,
//!   `reboot`, `reset-loop`,
//!   `net`, `mem-write:<addr>:<value>`, `mem-read:<addr>:<expect>`,
//!   `mem-wait:<addr>:<expect>[:<ms>]` and `all` (= every device test whose device is
//!   present, plus `smp`).
//! - The `mem-*` tests access one 32-bit word at guest-physical `<addr>` (identity
//!   mapped below 4 GiB; 4-byte aligned): `mem-write` stores `<value>`; `mem-read` passes
//!   iff the word reads `<expect>` (e.g. `0xffffffff` where nothing is mapped);
//!   `mem-wait` polls until the word reads `<expect>`, failing after `<ms>` (default
//!   10000) milliseconds.
//! - `keeltest.disk-pattern=<rw|write|check>`: what `blk` does with its pattern
//!   (default `rw`: write, flush, read back; `write`: the same, for a later
//!   `check` boot; `check`: only read and verify a pattern written earlier).
//! - `keeltest.disk-seed=<u32>`: varies the pattern (default 0x6b65656c).
//! - `keeltest.cpus=<N>`: CPU count when there is no MP table.
//! - `keeltest.net=<role>` and `keeltest.net-<option>=<value>`: what `net` does
//!   (see [`NetConfig`] and the README).
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
    /// Panic on purpose (checks the panic path: exit code 11).
    Panic,
    /// Take a CPU exception on purpose (checks the IDT path: exit code 11).
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
    /// `await-poweroff:<ms>`: read the serial port for up to `<ms>` ms; on a line
    /// `poweroff`, power off through the ACPI sleep control register (S5), as the admin's
    /// graceful shutdown asks (docs/admin.md); pass when the time is up without one.
    AwaitPoweroff(u32),
    /// `serial-echo:<ms>`: read the serial port for up to `<ms>` ms and print every line
    /// received as `keeltest: echo: <line>`; pass on the line `end`, fail when the time
    /// is up without it.
    SerialEcho(u32),
    /// `halt`: halt with interrupts off until the host stops the VM: a guest that stays
    /// up without using CPU (bench/api.py runs 50 of them).
    Halt,
    /// `reboot`: with no marker on the disk, write one and reset the machine; with the
    /// marker (the boot after the reset), clear it and pass.
    Reboot,
    /// `reset-loop`: reset the machine at once, on every boot.
    ResetLoop,
    /// `net`: the virtio-net role named by `keeltest.net=`.
    Net,
    /// `mem-write:<addr>:<value>`: store a 32-bit word at a guest-physical address.
    MemWrite {
        /// Guest-physical address (4-byte aligned, below 4 GiB).
        addr: u64,
        /// The word stored.
        value: u32,
    },
    /// `mem-read:<addr>:<expect>`: pass iff the word at `addr` reads `expect`.
    MemRead {
        /// Guest-physical address.
        addr: u64,
        /// The word expected.
        expect: u32,
    },
    /// `mem-wait:<addr>:<expect>[:<ms>]`: poll until the word at `addr` reads `expect`.
    MemWait {
        /// Guest-physical address.
        addr: u64,
        /// The word waited for.
        expect: u32,
        /// How long to wait, in milliseconds.
        ms: u32,
    },
}

/// Default `ms` of `mem-wait`.
pub const MEM_WAIT_MS: u32 = 10_000;

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];

/// Most `keeltest.net-stop=` addresses.
pub const MAX_STOP: usize = 4;
/// Shortest test frame (`keeltest.net-len`): an Ethernet minimum frame without FCS.
pub const NET_MIN_LEN: u16 = 60;
/// Longest test frame: 1500 bytes of payload and the Ethernet header.
pub const NET_MAX_LEN: u16 = 1514;

/// What the `net` test does (`keeltest.net=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetRole {
    /// Echo-requests to the peer, each retried until answered; pass iff all are.
    Ping,
    /// Echo-requests to the peer until the deadline; pass iff none is answered.
    PingExpectNone,
    /// Answer echo-requests addressed to this MAC until the deadline or a stop frame.
    Echo,
    /// Reach the peer (echo-requests), then send data frames, optionally from another MAC.
    Send,
    /// Broadcast data frames as fast as possible for a count or a duration.
    Storm,
    /// Count every frame received until the deadline or a stop frame; send nothing but stops.
    Listen,
    /// As `Listen`; pass iff no frame at all arrived.
    ListenExpectNone,
}

impl NetRole {
    /// The `keeltest.net=` word.
    pub fn name(self) -> &'static str {
        match self {
            NetRole::Ping => "ping",
            NetRole::PingExpectNone => "ping-expect-none",
            NetRole::Echo => "echo",
            NetRole::Send => "send",
            NetRole::Storm => "storm",
            NetRole::Listen => "listen",
            NetRole::ListenExpectNone => "listen-expect-none",
        }
    }

    fn needs_peer(self) -> bool {
        matches!(
            self,
            NetRole::Ping | NetRole::PingExpectNone | NetRole::Send
        )
    }
}

/// `keeltest.net*` options.
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    /// `keeltest.net=<role>`.
    pub role: Option<NetRole>,
    /// `keeltest.net-peer=<mac>`: destination of `ping`, `ping-expect-none` and `send`.
    pub peer: Option<Mac>,
    /// `keeltest.net-src=<mac>`: source address of `send`'s data frames and `storm`'s
    /// frames (default: the device's MAC).
    pub src: Option<Mac>,
    /// `keeltest.net-count=<n>`: requests (`ping`, default 10), data frames (`send`,
    /// default 10), frames (`storm`, default 0 = until the deadline).
    pub count: Option<u32>,
    /// `keeltest.net-len=<bytes>`: length of every frame sent (60..=1514, default 64).
    pub len: u16,
    /// `keeltest.net-time=<ms>`: overall deadline or duration (default 10000).
    pub time_ms: u32,
    /// `keeltest.net-try=<ms>`: how long one echo-request waits for its reply (default 200).
    pub try_ms: u32,
    /// `keeltest.net-stop=<mac>[,<mac>...]`: where `stop` frames go when the role is done.
    pub stop: [Option<Mac>; MAX_STOP],
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            role: None,
            peer: None,
            src: None,
            count: None,
            len: 64,
            time_ms: 10_000,
            try_ms: 200,
            stop: [None; MAX_STOP],
        }
    }
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
    /// `keeltest.net*`.
    pub net: NetConfig,
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
            net: NetConfig::default(),
        };
        let mut ntests = 0;
        let mut ndevices = 0;
        // The words that asked for `net` and named its role, for errors found at the end.
        let mut net_test_word = None;
        let mut net_role_word = None;
        let mut net_count_word = None;
        for word in cmdline.split_ascii_whitespace() {
            let err = |what| Error { what, word };
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "keeltest" => {
                    for name in value.split(',').filter(|n| !n.is_empty()) {
                        let test = parse_test(name).ok_or(err("unknown test"))?;
                        if test == Test::Net {
                            net_test_word = Some(word);
                        }
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
                "keeltest.net" => {
                    config.net.role = Some(parse_net_role(value).ok_or(err(
                        "net role must be ping, ping-expect-none, echo, send, storm, listen or listen-expect-none",
                    ))?);
                    net_role_word = Some(word);
                }
                "keeltest.net-peer" => {
                    config.net.peer = Some(
                        parse_mac(value)
                            .ok_or(err("net-peer is not a MAC address (xx:xx:xx:xx:xx:xx)"))?,
                    );
                }
                "keeltest.net-src" => {
                    config.net.src = Some(
                        parse_mac(value)
                            .ok_or(err("net-src is not a MAC address (xx:xx:xx:xx:xx:xx)"))?,
                    );
                }
                "keeltest.net-count" => {
                    net_count_word = Some(word);
                    config.net.count = Some(
                        parse_number(value)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or(err("net-count is not a 32-bit number"))?,
                    );
                }
                "keeltest.net-len" => {
                    config.net.len = parse_number(value)
                        .and_then(|v| u16::try_from(v).ok())
                        .filter(|l| (NET_MIN_LEN..=NET_MAX_LEN).contains(l))
                        .ok_or(err("net-len is not a frame length in 60..=1514"))?;
                }
                "keeltest.net-time" => {
                    config.net.time_ms = parse_number(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .filter(|&ms| ms >= 1)
                        .ok_or(err("net-time is not a number of milliseconds >= 1"))?;
                }
                "keeltest.net-try" => {
                    config.net.try_ms = parse_number(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .filter(|&ms| ms >= 1)
                        .ok_or(err("net-try is not a number of milliseconds >= 1"))?;
                }
                "keeltest.net-stop" => {
                    let mut stop = [None; MAX_STOP];
                    let mut macs = value.split(',');
                    for slot in &mut stop {
                        *slot = match macs.next() {
                            Some(mac) => Some(parse_mac(mac).ok_or(err(
                                "net-stop is not a list of MAC addresses (xx:xx:xx:xx:xx:xx,...)",
                            ))?),
                            None => None,
                        };
                    }
                    if macs.next().is_some() {
                        return Err(err("net-stop names more than 4 addresses"));
                    }
                    config.net.stop = stop;
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
        if let Some(word) = net_test_word {
            let Some(role) = config.net.role else {
                return Err(Error {
                    what: "the net test needs keeltest.net=<role>",
                    word,
                });
            };
            if role.needs_peer() && config.net.peer.is_none() {
                return Err(Error {
                    what: "this net role needs keeltest.net-peer=<mac>",
                    word: net_role_word.unwrap_or(word),
                });
            }
            if role == NetRole::Ping && config.net.count == Some(0) {
                return Err(Error {
                    what: "ping needs keeltest.net-count >= 1",
                    word: net_count_word.unwrap_or(word),
                });
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
        "halt" => Test::Halt,
        "reset-loop" => Test::ResetLoop,
        "net" => Test::Net,
        _ => {
            let (kind, arg) = name.split_once(':')?;
            match kind {
                "mmio-bench" => Test::MmioBench(u32::try_from(parse_number(arg)?).ok()?),
                "pause" => Test::Pause(u32::try_from(parse_number(arg)?).ok()?),
                "await-poweroff" => Test::AwaitPoweroff(u32::try_from(parse_number(arg)?).ok()?),
                "serial-echo" => Test::SerialEcho(u32::try_from(parse_number(arg)?).ok()?),
                "mem-write" | "mem-read" | "mem-wait" => {
                    let mut parts = arg.split(':');
                    let addr = parse_number(parts.next()?)?;
                    // Identity-mapped, and a whole aligned word.
                    if addr % 4 != 0 || addr >= (4 << 30) {
                        return None;
                    }
                    let word = u32::try_from(parse_number(parts.next()?)?).ok()?;
                    let ms = match (kind, parts.next()) {
                        ("mem-wait", Some(ms)) => u32::try_from(parse_number(ms)?).ok()?,
                        ("mem-wait", None) => MEM_WAIT_MS,
                        (_, Some(_)) => return None,
                        (_, None) => 0,
                    };
                    if parts.next().is_some() {
                        return None;
                    }
                    match kind {
                        "mem-write" => Test::MemWrite { addr, value: word },
                        "mem-read" => Test::MemRead { addr, expect: word },
                        _ => Test::MemWait {
                            addr,
                            expect: word,
                            ms,
                        },
                    }
                }
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

fn parse_net_role(name: &str) -> Option<NetRole> {
    Some(match name {
        "ping" => NetRole::Ping,
        "ping-expect-none" => NetRole::PingExpectNone,
        "echo" => NetRole::Echo,
        "send" => NetRole::Send,
        "storm" => NetRole::Storm,
        "listen" => NetRole::Listen,
        "listen-expect-none" => NetRole::ListenExpectNone,
        _ => return None,
    })
}

/// Parses `xx:xx:xx:xx:xx:xx` (two hex digits per byte, either case).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
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
