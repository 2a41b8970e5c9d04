//! Keel's x86_64 test guest: a tiny PVH kernel that runs the tests named on
//! its command line against virtio-mmio devices, SMP and interrupts, prints
//! `keeltest: ...` lines on COM1 and leaves through the debug-exit port.
//!
//! Exit codes: 0 PASS, 10 a test failed, 11 panic or CPU exception,
//! 3 a `corrupt:` test saw the device report DEVICE_NEEDS_RESET.

#![no_std]
#![no_main]

mod apic;
mod blk;
mod blkbench;
mod boot;
mod cmdline;
mod console;
mod dma;
mod fail;
mod interrupts;
mod mem;
mod net;
mod nettest;
mod pvh;
mod rng;
mod serial;
mod smp;
mod virtio;
mod x86;

use cmdline::{Config, Test};
use core::fmt;
use fail::{Fail, TestResult};
use pvh::StartInfo;
use virtio::Transport;
use virtio::mmio::reg;
use x86::TscSource;

/// Exit code when every test passed.
const EXIT_PASS: u8 = 0;
/// Exit code when a test failed. Codes 1 and 2 are left to the VMM (`keel` uses them for
/// its own failures and for bad input), so a host test can tell the guest's verdict apart.
const EXIT_FAIL: u8 = 10;
/// Exit code for a panic or an unexpected CPU exception.
const EXIT_PANIC: u8 = 11;
/// Exit code when a negative test saw DEVICE_NEEDS_RESET.
const EXIT_NEEDS_RESET: u8 = 3;

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Blk => f.write_str("blk"),
            Test::Rng => f.write_str("rng"),
            Test::Console => f.write_str("console"),
            Test::ConsoleInput => f.write_str("console-input"),
            Test::Smp => f.write_str("smp"),
            Test::Irq => f.write_str("irq"),
            Test::All => f.write_str("all"),
            Test::Panic => f.write_str("panic"),
            Test::Fault => f.write_str("fault"),
            Test::MmioBench(n) => write!(f, "mmio-bench:{n}"),
            Test::Corrupt(cmdline::Corruption::Loop) => f.write_str("corrupt:loop"),
            Test::Corrupt(cmdline::Corruption::OutOfRange) => f.write_str("corrupt:oob"),
            Test::Corrupt(cmdline::Corruption::NoStatus) => f.write_str("corrupt:nostatus"),
            Test::BlkBench { kind, size, .. } => write!(f, "blkbench:{kind:?}:{size}"),
            Test::Pause(ms) => write!(f, "pause:{ms}"),
            Test::AwaitPoweroff(ms) => write!(f, "await-poweroff:{ms}"),
            Test::SerialEcho(ms) => write!(f, "serial-echo:{ms}"),
            Test::Halt => f.write_str("halt"),
            Test::Reboot => f.write_str("reboot"),
            Test::ResetLoop => f.write_str("reset-loop"),
            Test::Net => f.write_str("net"),
            Test::MemWrite { addr, value } => write!(f, "mem-write:{addr:#x}:{value:#x}"),
            Test::MemRead { addr, expect } => write!(f, "mem-read:{addr:#x}:{expect:#x}"),
            Test::MemWait { addr, expect, ms } => {
                write!(f, "mem-wait:{addr:#x}:{expect:#x}:{ms}")
            }
        }
    }
}

/// Everything the tests need.
struct Machine<'a> {
    start_info: &'a StartInfo,
    config: Config,
    transports: [Option<Transport>; cmdline::MAX_DEVICES],
    tsc_hz: u64,
}

impl Machine<'_> {
    /// The first transport with `device_id`.
    fn device(&self, device_id: u32) -> Option<&Transport> {
        self.transports
            .iter()
            .flatten()
            .find(|t| t.device_id == device_id)
    }

    fn require(&self, device_id: u32, test: Test) -> TestResult<&Transport> {
        match self.device(device_id) {
            Some(t) => Ok(t),
            None => fail!(
                "{test}: no virtio {} device on the command line",
                virtio::device_name(device_id)
            ),
        }
    }

    /// Runs one test.
    fn run(&self, test: Test) -> TestResult {
        match test {
            Test::Blk => blk::run(
                self.require(virtio::id::BLK, test)?,
                self.config.disk_pattern,
                self.config.disk_seed,
            ),
            Test::Rng => rng::run(self.require(virtio::id::RNG, test)?),
            Test::Console => console::run(self.require(virtio::id::CONSOLE, test)?),
            Test::ConsoleInput => console::run_input(self.require(virtio::id::CONSOLE, test)?),
            Test::Smp => smp::run(self.start_info, self.config.cpus),
            Test::Irq => blk::run_irq(self.require(virtio::id::BLK, test)?),
            Test::MmioBench(n) => self.mmio_bench(n),
            Test::Corrupt(kind) => blk::run_corrupt(self.require(virtio::id::BLK, test)?, kind),
            Test::BlkBench { kind, size, total } => blkbench::run(
                self.require(virtio::id::BLK, test)?,
                self.start_info,
                self.tsc_hz,
                kind,
                size,
                total,
            ),
            Test::Pause(ms) => blkbench::pause(ms),
            Test::AwaitPoweroff(ms) => serial::await_poweroff(ms),
            Test::SerialEcho(ms) => serial::echo(ms),
            Test::Halt => {
                say!("halt: halting with interrupts off until the host stops the VM");
                x86::halt()
            }
            Test::Reboot => match blk::reboot_marker(self.require(virtio::id::BLK, test)?)? {
                blk::Marker::Found => {
                    say!("reboot: marker found after the reset; cleared");
                    Ok(())
                }
                blk::Marker::Written => {
                    say!("reboot: marker written; resetting through the i8042");
                    x86::reset()
                }
            },
            Test::ResetLoop => {
                say!("reset-loop: resetting through the i8042");
                x86::reset()
            }
            Test::Net => nettest::run(self.require(virtio::id::NET, test)?, &self.config.net),
            Test::MemWrite { addr, value } => mem::write(addr, value),
            Test::MemRead { addr, expect } => mem::read(addr, expect),
            Test::MemWait { addr, expect, ms } => mem::wait(addr, expect, ms),
            Test::Panic => panic!("keeltest=panic asked for a panic"),
            Test::Fault => {
                // SAFETY: deliberately reads a non-canonical address: the CPU
                // raises #GP before any memory is touched and the exception
                // handler ends the run.
                let value =
                    unsafe { core::ptr::read_volatile(0x8000_0000_0000_0000 as *const u64) };
                fail!("fault: read of a non-canonical address returned {value:#x}")
            }
            Test::All => {
                for (id, sub) in [
                    (virtio::id::BLK, Test::Blk),
                    (virtio::id::RNG, Test::Rng),
                    (virtio::id::CONSOLE, Test::Console),
                    (virtio::id::BLK, Test::Irq),
                ] {
                    if self.device(id).is_some() {
                        self.run_timed(sub)?;
                    } else {
                        say!("{sub} skipped: no {} device", virtio::device_name(id));
                    }
                }
                self.run_timed(Test::Smp)
            }
        }
    }

    /// Runs one test and reports how long it took.
    fn run_timed(&self, test: Test) -> TestResult {
        let start = x86::rdtsc();
        self.run(test)?;
        // `all` reports its parts; a corrupt test's verdict line follows.
        if !matches!(test, Test::All | Test::Corrupt(_)) {
            let cycles = x86::rdtsc().wrapping_sub(start);
            match self.tsc_hz {
                0 => say!("{test} passed ({cycles} tsc cycles)"),
                hz => say!("{test} passed ({} ms)", cycles / (hz / 1000).max(1)),
            }
        }
        Ok(())
    }

    /// `mmio-bench:N`: N reads of the first device's MagicValue.
    fn mmio_bench(&self, n: u32) -> TestResult {
        let Some(t) = self.transports.iter().flatten().next() else {
            return fail!("mmio-bench: no virtio-mmio device on the command line");
        };
        let start = x86::rdtsc();
        let mut bad = 0u32;
        for _ in 0..n {
            if t.mmio.read32(reg::MAGIC_VALUE) != virtio::mmio::MAGIC {
                bad += 1;
            }
        }
        let cycles = x86::rdtsc().wrapping_sub(start);
        if bad != 0 {
            return fail!("mmio-bench: {bad} of {n} MagicValue reads were wrong");
        }
        say!("mmio-bench {n} reads in {cycles} tsc cycles");
        if self.tsc_hz != 0 && n != 0 {
            let ns = u128::from(cycles) * 1_000_000_000 / u128::from(self.tsc_hz);
            say!("mmio-bench {} ns per read", ns / u128::from(n));
        }
        Ok(())
    }
}

/// Prints the verdict and leaves the VM.
fn finish(result: Result<(), (Fail, u8)>) -> ! {
    match result {
        Ok(()) => {
            say!("PASS");
            x86::exit(EXIT_PASS)
        }
        Err((reason, code)) => {
            say!("FAIL {reason}");
            x86::exit(code)
        }
    }
}

/// Rust entry, called by boot.rs in long mode on the boot stack.
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info_paddr: u32) -> ! {
    serial::init();
    interrupts::init();
    apic::pic_mask_all();
    say!("boot ok");
    // Copied onto the boot stack (kmain never returns).
    let start_info = &StartInfo::parse(u64::from(start_info_paddr));
    if let Some(problem) = start_info.problem {
        say!("warning: {problem} (start info at {start_info_paddr:#x})");
    }
    say!("cmdline: {}", start_info.cmdline());
    let ram_kib: u64 = start_info
        .memmap()
        .iter()
        .filter(|r| r.kind == 1)
        .map(|r| r.size >> 10)
        .sum();
    say!(
        "memmap: {} entries, {ram_kib} KiB RAM",
        start_info.memmap().len()
    );
    let (tsc_hz, source) = x86::calibrate_tsc();
    match source {
        TscSource::Unknown => say!("tsc frequency unknown"),
        _ => say!("tsc {} kHz ({source:?})", tsc_hz / 1000),
    }
    finish(run(start_info, tsc_hz))
}

fn run(start_info: &StartInfo, tsc_hz: u64) -> Result<(), (Fail, u8)> {
    let failed = |f: Fail| (f, EXIT_FAIL);
    let config = match Config::parse(start_info.cmdline()) {
        Ok(config) => config,
        Err(e) => {
            return Err(failed(Fail::new(format_args!(
                "cmdline: {}: {}",
                e.what, e.word
            ))));
        }
    };
    let mut transports = [None; cmdline::MAX_DEVICES];
    for (slot, location) in transports.iter_mut().zip(config.devices()) {
        let t = virtio::probe(location).map_err(failed)?;
        say!(
            "virtio-mmio {:#x} irq {}: device {} ({})",
            location.base,
            location.irq,
            t.device_id,
            virtio::device_name(t.device_id)
        );
        *slot = Some(t);
    }
    if config.tests().next().is_none() {
        return Err(failed(Fail::new(format_args!(
            "no tests given: use keeltest=<test>[,<test>...]"
        ))));
    }
    let machine = Machine {
        start_info,
        config,
        transports,
        tsc_hz,
    };
    for test in machine.config.tests() {
        let result = machine.run_timed(test);
        match (test, result) {
            (Test::Corrupt(_), Ok(())) => {
                return Err((
                    Fail::new(format_args!(
                        "{test}: device needs reset (expected by this negative test)"
                    )),
                    EXIT_NEEDS_RESET,
                ));
            }
            (_, Err(reason)) => return Err(failed(reason)),
            (_, Ok(())) => {}
        }
    }
    Ok(())
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86::cli();
    match info.location() {
        Some(l) => say!(
            "FAIL panic: {} at {}:{}",
            info.message(),
            l.file(),
            l.line()
        ),
        None => say!("FAIL panic: {}", info.message()),
    }
    x86::exit(EXIT_PANIC)
}
