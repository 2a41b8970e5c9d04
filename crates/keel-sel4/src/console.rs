//! The console component: one protection domain per system that owns the seL4 debug
//! console's output. This module is its plain logic (host-tested); the program is
//! `console_pd` (seL4 only), the binary `keel-sel4-console`.
//!
//! Every VMM gets its own byte ring ([`keel_core::ring`], one memory region of
//! [`RING_SIZE`] bytes mapped into that VMM and into the console PD only) and one
//! notification channel to the console. The VMM writes its guest's console output and its
//! own log lines into its ring and notifies; the console drains the rings and prints
//! whole lines, prefixed `<vm>| ` in a system of several VMs, one line at a time, so
//! lines of different VMs never mix. A partial line is printed only when it reaches
//! [`LINE_MAX`] bytes or when the VMM flushed its ring; a VMM that stops mid-line leaves
//! its partial line in its own ring and stalls nobody.
//!
//! Input goes the other way: the console PD (`console_pd.rs`) reads the board's UART
//! and writes what is typed for the focused VM ([`keel_core::console_switch`]) into that
//! VM's input ring, the last [`INPUT_RING_LEN`] bytes of its ring region.
//!
//! The console learns the VMs' names, rings and channels from a small payload appended
//! to its ELF like the VMMs' ([`ConsoleConfig`], at [`crate::payload::PAYLOAD_VADDR`]).

use alloc::string::String;
use alloc::vec::Vec;

use keel_core::ring::{Consumer, RingError};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::payload::PayloadError;

/// Bytes of one VMM's console ring region (each ring header takes 256): its output ring
/// ([`OUTPUT_RING_LEN`] bytes, the VMM produces), then its input ring ([`INPUT_RING_LEN`]
/// bytes at offset [`OUTPUT_RING_LEN`], the console PD produces). The admin PD's region
/// is all output.
pub const RING_SIZE: u64 = 0x4000;
/// Bytes of a VMM's input ring, at the end of its console ring region.
pub const INPUT_RING_LEN: u64 = 0x1000;
/// Bytes of a VMM's output ring, at the start of its console ring region.
pub const OUTPUT_RING_LEN: u64 = RING_SIZE - INPUT_RING_LEN;
/// Where the console PD maps the board's UART (console input).
pub const CONSOLE_UART_VADDR: u64 = 0x3_1000_0000;
/// Where a VMM maps its console ring.
pub const VMM_RING_VADDR: u64 = 0x3_0000_0000;
/// Where the console PD maps the ring of VM `i`: here + `i` × [`RING_SIZE`].
pub const CONSOLE_RINGS_VADDR: u64 = 0x3_0000_0000;
/// The channel of a VMM's notifications to the console PD (in the VMM).
pub const VMM_CHANNEL: u32 = 2;
/// A partial line is printed once it reaches this many bytes.
pub const LINE_MAX: usize = 256;
/// Bytes the console takes from one ring before it looks at the others.
pub const DRAIN_BUDGET: usize = 4096;
/// First bytes of the console payload.
pub const MAGIC: [u8; 8] = *b"KEELCON\0";
/// Console payload format version (3: input rings and the UART).
pub const VERSION: u32 = 3;
/// Bytes of the console payload's fixed header (magic, version, total length).
pub const HEADER_LEN: usize = crate::payload::CONFIG_HEADER_LEN;

/// One VM as the console sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleVm {
    /// The VM's name (the line prefix).
    pub name: String,
    /// Where its ring is mapped in the console PD.
    pub ring_vaddr: u64,
    /// The ring's length in bytes.
    pub ring_len: u64,
    /// Where its input ring is mapped in the console PD (0: it takes no input).
    pub input_vaddr: u64,
    /// The input ring's length in bytes.
    pub input_len: u64,
    /// The console PD's channel to and from this VM's VMM.
    pub channel: u32,
}

/// The board's UART as the console PD reads typed input from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleUart {
    /// Where its registers are mapped (uncached).
    pub vaddr: u64,
    /// The channel its receive interrupt arrives on.
    pub channel: u32,
}

/// What the console PD needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Prefix each line with `<vm>| ` (systems of several VMs).
    pub prefix: bool,
    /// The VMs, in system order.
    pub vms: Vec<ConsoleVm>,
    /// The UART typed input comes from (none: no input).
    pub uart: Option<ConsoleUart>,
}

impl ConsoleConfig {
    /// The configuration of a system with VMs `names`: ring region `i` at
    /// [`CONSOLE_RINGS_VADDR`] + `i` × [`RING_SIZE`] (output, then input), channel `i`,
    /// prefixes when there are several VMs; no UART.
    pub fn for_vms<'a>(names: impl IntoIterator<Item = &'a str>) -> ConsoleConfig {
        let vms: Vec<ConsoleVm> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| ConsoleVm {
                name: name.into(),
                ring_vaddr: CONSOLE_RINGS_VADDR + i as u64 * RING_SIZE,
                ring_len: OUTPUT_RING_LEN,
                input_vaddr: CONSOLE_RINGS_VADDR + i as u64 * RING_SIZE + OUTPUT_RING_LEN,
                input_len: INPUT_RING_LEN,
                channel: i as u32,
            })
            .collect();
        ConsoleConfig {
            prefix: vms.len() > 1,
            vms,
            uart: None,
        }
    }

    /// The configuration of a system with VMs `names` and the admin PD: [`for_vms`]'s
    /// rings, then the admin PD's ring named `admin` (ring and channel `names.len()`, as
    /// `keel_spec::microkit::console_component` plans it: all output, no input); prefixes
    /// only when there are several VMs.
    ///
    /// [`for_vms`]: ConsoleConfig::for_vms
    pub fn for_system<'a>(names: impl IntoIterator<Item = &'a str>, admin: &str) -> ConsoleConfig {
        let vms: Vec<&str> = names.into_iter().collect();
        let prefix = vms.len() > 1;
        let mut cfg = ConsoleConfig::for_vms(vms.into_iter().chain(core::iter::once(admin)));
        cfg.prefix = prefix;
        if let Some(a) = cfg.vms.last_mut() {
            a.ring_len = RING_SIZE;
            a.input_vaddr = 0;
            a.input_len = 0;
        }
        cfg
    }

    /// Serialize: magic, version, total length (the fixed header of [`HEADER_LEN`] bytes),
    /// then the configuration in postcard ([`crate::payload::encode_config`]).
    pub fn encode(&self) -> Result<Vec<u8>, ConfigError> {
        crate::payload::encode_config(self, &MAGIC, VERSION)
    }

    /// The total length recorded in the first [`HEADER_LEN`] bytes.
    pub fn total_len(header: &[u8]) -> Result<usize, ConfigError> {
        crate::payload::config_total_len(header, &MAGIC, VERSION)
    }

    /// Parse what [`ConsoleConfig::encode`] wrote (all of it: no bytes may be left over).
    pub fn decode(bytes: &[u8]) -> Result<ConsoleConfig, ConfigError> {
        crate::payload::decode_config(bytes, &MAGIC, VERSION, "console payload")
    }
}

/// What is wrong with the console configuration (the framing every PD configuration shares).
pub use crate::payload::ConfigError;

/// One VM's line being assembled, and what was reported about its ring.
#[derive(Debug)]
struct VmLine {
    name: String,
    buf: [u8; LINE_MAX],
    len: usize,
    dropped_reported: u64,
    disabled: bool,
}

/// The console's state: each VM's partial line, and which VM's line is open on the
/// output (printed without its end).
#[derive(Debug)]
pub struct Console {
    prefix: bool,
    vms: Vec<VmLine>,
    /// The VM whose last printed chunk did not end its line.
    open: Option<usize>,
}

impl Console {
    /// A console for VMs `names` (in the order of their rings).
    pub fn new<'a>(prefix: bool, names: impl IntoIterator<Item = &'a str>) -> Console {
        Console {
            prefix,
            vms: names
                .into_iter()
                .map(|n| VmLine {
                    name: n.into(),
                    buf: [0; LINE_MAX],
                    len: 0,
                    dropped_reported: 0,
                    disabled: false,
                })
                .collect(),
            open: None,
        }
    }

    /// Take what VM `vm`'s ring holds (at most [`DRAIN_BUDGET`] bytes) and print its
    /// complete lines through `out`. Returns whether the ring may hold more (the budget ran
    /// out). A wild producer index disables the ring, with one line saying so.
    pub fn drain(&mut self, vm: usize, ring: &mut Consumer, out: &mut dyn FnMut(&[u8])) -> bool {
        if vm >= self.vms.len() || self.vms[vm].disabled {
            return false;
        }
        let mut taken = 0;
        let mut chunk = [0u8; 512];
        let more = loop {
            if taken >= DRAIN_BUDGET {
                break true;
            }
            let r = match ring.read(&mut chunk) {
                Ok(r) => r,
                Err(e) => {
                    self.ring_failed(vm, e, out);
                    break false;
                }
            };
            if r.len == 0 {
                break false;
            }
            taken += r.len;
            let (before, after) = chunk[..r.len].split_at(r.flush_at.unwrap_or(0));
            if r.flush_at.is_some() {
                self.feed(vm, before, out);
                self.flush(vm, out);
            }
            self.feed(vm, after, out);
        };
        let dropped = ring.producer_dropped();
        let v = &mut self.vms[vm];
        if dropped != v.dropped_reported {
            let n = dropped.wrapping_sub(v.dropped_reported);
            v.dropped_reported = dropped;
            let msg = alloc::format!(
                "keel-console: vm {}: {n} bytes of console output dropped (ring full)",
                v.name
            );
            self.own_line(&msg, out);
        }
        more
    }

    /// Print one line of the console's own (not prefixed), ending any open line first.
    pub fn own_line(&mut self, line: &str, out: &mut dyn FnMut(&[u8])) {
        if self.open.take().is_some() {
            out(b"\n");
        }
        out(line.as_bytes());
        out(b"\n");
    }

    fn ring_failed(&mut self, vm: usize, e: RingError, out: &mut dyn FnMut(&[u8])) {
        self.vms[vm].disabled = true;
        let msg = alloc::format!(
            "keel-console: vm {}: {e}; its console output is no longer read",
            self.vms[vm].name
        );
        self.own_line(&msg, out);
    }

    fn feed(&mut self, vm: usize, bytes: &[u8], out: &mut dyn FnMut(&[u8])) {
        for &b in bytes {
            let v = &mut self.vms[vm];
            v.buf[v.len] = b;
            v.len += 1;
            if b == b'\n' || v.len == LINE_MAX {
                self.flush(vm, out);
            }
        }
    }

    /// Print VM `vm`'s pending bytes (a whole line, or a partial one that is long or
    /// flushed).
    fn flush(&mut self, vm: usize, out: &mut dyn FnMut(&[u8])) {
        let v = &mut self.vms[vm];
        if v.len == 0 {
            return;
        }
        if self.open != Some(vm) {
            if self.open.is_some() {
                // Another VM's line is open: end it so the lines do not mix.
                out(b"\n");
            }
            if self.prefix {
                out(v.name.as_bytes());
                out(b"| ");
            }
        }
        let line = &v.buf[..v.len];
        out(line);
        self.open = (line.last() != Some(&b'\n')).then_some(vm);
        v.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use keel_core::ring::{HEADER_LEN as RING_HEADER, Producer, RingWindow};

    struct Mem(Vec<u64>);

    impl Mem {
        fn new(len: usize) -> Mem {
            Mem(vec![0; len / 8])
        }
        fn window(&mut self) -> RingWindow {
            // SAFETY: the vector outlives the test's windows, is 8-aligned and is only
            // accessed through them (or directly between calls, as a hostile producer).
            unsafe { RingWindow::new(self.0.as_mut_ptr().cast(), self.0.len() * 8) }.unwrap()
        }
    }

    struct Vm {
        mem: Mem,
        p: Producer,
        c: Consumer,
    }

    fn vm(len: usize) -> Vm {
        let mut mem = Mem::new(len);
        let p = Producer::attach(mem.window());
        let c = Consumer::attach(mem.window());
        Vm { mem, p, c }
    }

    fn drain(con: &mut Console, i: usize, v: &mut Vm, out: &mut Vec<u8>) -> bool {
        con.drain(i, &mut v.c, &mut |b| out.extend_from_slice(b))
    }

    fn text(out: &[u8]) -> &str {
        core::str::from_utf8(out).unwrap()
    }

    #[test]
    fn complete_lines_are_printed_with_the_vm_prefix() {
        let mut con = Console::new(true, ["a", "b"]);
        let mut a = vm(4096);
        a.p.write(b"hello\nworld\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(text(&out), "a| hello\na| world\n");
    }

    #[test]
    fn single_vm_lines_are_printed_as_they_are() {
        let mut con = Console::new(false, ["linux"]);
        let mut a = vm(4096);
        a.p.write(b"KEEL-GUEST-READY\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(text(&out), "KEEL-GUEST-READY\n");
    }

    #[test]
    fn partial_line_stays_until_its_end_arrives() {
        let mut con = Console::new(true, ["a"]);
        let mut a = vm(4096);
        a.p.write(b"half").unwrap();
        let mut out = Vec::new();
        drain(&mut con, 0, &mut a, &mut out);
        assert_eq!(text(&out), "");

        a.p.write(b" done\n").unwrap();
        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(text(&out), "a| half done\n");
    }

    #[test]
    fn stalled_partial_line_does_not_mix_into_another_vms_lines() {
        let mut con = Console::new(true, ["a", "b"]);
        let mut a = vm(4096);
        let mut b = vm(4096);
        a.p.write(b"KEEL-STALL-PARTIAL").unwrap();
        b.p.write(b"b line 1\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);
        drain(&mut con, 1, &mut b, &mut out);
        b.p.write(b"b line 2\n").unwrap();
        drain(&mut con, 1, &mut b, &mut out);

        assert_eq!(text(&out), "b| b line 1\nb| b line 2\n");
    }

    #[test]
    fn long_partial_line_is_printed_at_line_max() {
        let mut con = Console::new(true, ["a"]);
        let mut a = vm(4096);
        a.p.write(&[b'x'; LINE_MAX + 10]).unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(out.len(), 3 + LINE_MAX);
        assert!(out.starts_with(b"a| xxx"));
    }

    #[test]
    fn continuation_of_a_long_line_follows_without_a_new_prefix() {
        let mut con = Console::new(true, ["a"]);
        let mut a = vm(4096);
        a.p.write(&[b'x'; LINE_MAX]).unwrap();
        a.p.write(b"yz\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(out.len(), 3 + LINE_MAX + 3);
        assert!(out.ends_with(b"xyz\n"));
        assert_eq!(text(&out).matches("a| ").count(), 1);
    }

    #[test]
    fn another_vms_line_ends_an_open_long_line_first() {
        let mut con = Console::new(true, ["a", "b"]);
        let mut a = vm(4096);
        let mut b = vm(4096);
        a.p.write(&[b'x'; LINE_MAX]).unwrap();
        b.p.write(b"bee\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);
        drain(&mut con, 1, &mut b, &mut out);

        assert!(text(&out).ends_with("x\nb| bee\n"), "{}", text(&out));
    }

    #[test]
    fn flushed_partial_line_is_printed() {
        let mut con = Console::new(false, ["a"]);
        let mut a = vm(4096);
        a.p.write(b"login: ").unwrap();
        a.p.flush();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(text(&out), "login: ");
    }

    #[test]
    fn bytes_after_the_flush_mark_wait_for_their_line_end() {
        let mut con = Console::new(false, ["a"]);
        let mut a = vm(4096);
        a.p.write(b"one ").unwrap();
        a.p.flush();
        a.p.write(b"two").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(text(&out), "one ");
    }

    #[test]
    fn wild_producer_disables_its_ring_with_one_line_and_others_go_on() {
        let mut con = Console::new(true, ["a", "b"]);
        let mut a = vm(4096);
        let mut b = vm(4096);
        a.mem.0[0] = 1 << 40; // a's producer index, far ahead
        b.p.write(b"still here\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);
        drain(&mut con, 0, &mut a, &mut out);
        drain(&mut con, 1, &mut b, &mut out);

        let t = text(&out);
        assert_eq!(
            t.matches("keel-console: vm a: producer index").count(),
            1,
            "{t}"
        );
        assert!(t.ends_with("no longer read\nb| still here\n"), "{t}");
    }

    #[test]
    fn drops_are_reported_once_per_change() {
        let mut con = Console::new(true, ["a"]);
        let mut a = vm(RING_HEADER + 8);
        a.p.write(b"1234567\n").unwrap();
        a.p.write(b"lost\n").unwrap();
        let mut out = Vec::new();

        drain(&mut con, 0, &mut a, &mut out);
        drain(&mut con, 0, &mut a, &mut out);

        assert_eq!(
            text(&out),
            "a| 1234567\nkeel-console: vm a: 5 bytes of console output dropped (ring full)\n"
        );
    }

    #[test]
    fn drain_stops_at_its_budget_and_says_more_is_left() {
        let mut con = Console::new(false, ["a"]);
        let mut a = vm(RING_HEADER + 2 * DRAIN_BUDGET);
        a.p.write(&[b'\n'; DRAIN_BUDGET + 100]).unwrap();
        let mut out = Vec::new();

        let more = drain(&mut con, 0, &mut a, &mut out);
        let again = drain(&mut con, 0, &mut a, &mut out);

        assert!(more);
        assert!(!again);
        assert_eq!(out.len(), DRAIN_BUDGET + 100);
    }

    #[test]
    fn config_round_trips() {
        let c = ConsoleConfig::for_vms(["a", "b"]);

        assert_eq!(ConsoleConfig::decode(&c.encode().unwrap()), Ok(c.clone()));
        assert!(c.prefix);
        assert_eq!(c.vms[1].ring_vaddr, CONSOLE_RINGS_VADDR + RING_SIZE);
        assert_eq!(c.vms[1].channel, 1);
        assert_eq!(
            c.vms[1].input_vaddr,
            c.vms[1].ring_vaddr + c.vms[1].ring_len
        );
        assert_eq!(c.vms[1].ring_len + c.vms[1].input_len, RING_SIZE);
    }

    #[test]
    fn the_admin_ring_takes_no_input() {
        let c = ConsoleConfig::for_system(["a"], "admin");

        assert_eq!(c.vms[1].name, "admin");
        assert_eq!((c.vms[1].ring_len, c.vms[1].input_vaddr), (RING_SIZE, 0));
        assert_ne!(c.vms[0].input_vaddr, 0);
    }

    #[test]
    fn truncated_config_is_refused() {
        let e = ConsoleConfig::for_vms(["a"]).encode().unwrap();

        assert!(matches!(
            ConsoleConfig::decode(&e[..e.len() - 1]),
            Err(ConfigError::Header(PayloadError::Truncated { .. }))
        ));
    }
}
