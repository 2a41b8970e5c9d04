//! `x86_pio`: the x86 port I/O a guest reaches, as sequences of `IN`/`OUT` of width 1, 2 or
//! 4 (and malformed widths 0, 3, 8) at any port. The first input byte chooses the part.
//!
//! - **The VMM's port devices** (even first byte): a real [`keel_vmm::VmmCore`] built for an
//!   x86 plan on the `testing` fake hypervisor, so the device set is the one the VMM
//!   installs: COM1 at 0x3f8 (`keel_vmm::serial::Serial8250` over `uart::Uart8250`), the
//!   i8042 at 0x60..0x64 (`x86::i8042`), the debug-exit port 0xf4 (`x86::debug_exit`) and
//!   the ACPI power-management ports 0x600..0x602 (`x86::acpi_power`); every other port
//!   (PIC, PIT, CMOS, VGA, …) is owned by nothing. Accesses go through
//!   `VmmCore::handle` → `ExitDispatcher::handle` → `keel_core::Bus`, interleaved with host
//!   input to COM1. Checked against a model:
//!   - a read of a port no device decodes entirely returns all ones of its width, a write
//!     there changes nothing (`ExitDispatcher::read` / `write`, `all_ones`);
//!   - owned ports read what their device documents: i8042 status 0x04 at 0x64 and 0 at
//!     0x60..0x63, debug exit 0xff, ACPI 0, and COM1's registers as the UART model says;
//!   - COM1's output is exactly the bytes written to THR with DLAB and loopback clear, its
//!     receive queue never exceeds 4096 bytes and returns input in order, and its interrupt
//!     line is low while IER is zero (`Uart8250::{read, write, push_input}`,
//!     `Serial8250::sync_line`);
//!   - the stop requests are exactly: `Reset` for a one-byte 0xfe to 0x64
//!     (`I8042::write`), `Shutdown` for a sleep-control byte with `SLP_EN` and sleep type 5,
//!     `Reset` for 0x06 to the ACPI reset register (`AcpiPower::write`), and `ExitCode(v)`
//!     for a byte v to 0xf4 (`DebugExit::write`) — nothing else requests anything;
//!   - the log stays bounded however many bad accesses the guest makes: at most
//!     `UNMAPPED_LOG_LIMIT` unmapped-access lines, one unsupported-sleep warning, and a
//!     bounded number of ignored-reset lines (`ExitDispatcher::unmapped`, `AcpiPower`).
//! - **Port dispatch** (odd first byte): arbitrary non-overlapping spy devices on an
//!   `ExitDispatcher`'s port bus, then arbitrary `IN`/`OUT`: an access reaches a device only
//!   when the device's range contains all of it, at the right offset and width; everything
//!   else reads all ones and reaches nothing.

use std::collections::VecDeque;
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use keel_core::{ExitAnswer, SystemEvent, VcpuExit, VcpuId};
use keel_spec::{Arch, HostPath, Memory, VmSpec, plan::plan_vm};
use keel_vmm::dispatch::{ExitDispatcher, Next, UNMAPPED_LOG_LIMIT, all_ones};
use keel_vmm::testing::{Collected, FakeVm, MemoryBackends, RecordingLog, RecordingStop};
use keel_vmm::{Interrupts, VmmCore};

use crate::arm64::{Spy, SpyLog, containing, spy_read, spy_reads};

/// Operations per input, at most.
const MAX_OPS: usize = 512;
const COM1: u16 = 0x3f8;
const COM1_GSI: u32 = 4;
const I8042: u16 = 0x60;
const DEBUG_EXIT: u16 = 0xf4;
const PM: u16 = 0x600;
/// The UART's documented receive limit.
const INPUT_LIMIT: usize = 4096;
/// The most lines `keel_vmm::log::RateLimit` with a limit of `limit` (a power of two) may
/// log for `n` occurrences: the first `limit`, then only occurrences 2^k, so at most
/// `limit + log2(n)` lines however long the guest floods.
fn rate_limited_lines(limit: usize, n: usize) -> usize {
    let mut lines = n.min(limit);
    let mut at = limit.max(1) * 2;
    while at <= n {
        lines += 1;
        at *= 2;
    }
    lines
}

/// Most ignored-reset-value lines the ACPI device may log before it only counts.
const ACPI_RESET_LOG_LIMIT: usize = keel_vmm::x86::acpi_power::BAD_RESET_LOG_LIMIT as usize;

/// The body of the `x86_pio` target.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    // Running out of input ends a run.
    let _ = if which % 2 == 0 {
        vmm_ports(&mut u)
    } else {
        port_dispatch(&mut u)
    };
}

/// Ports worth hitting: every owned range, its edges, and well-known unowned ones.
const PORTS: &[u16] = &[
    COM1, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x400, 0x3f7, 0x60, 0x61, 0x64, 0x65,
    0x5f, DEBUG_EXIT, 0xf3, 0xf5, PM, 0x601, 0x602, 0x603, 0x5ff, 0x20, 0x21, 0xa0, 0x40, 0x43,
    0x70, 0x71, 0x80, 0xcf8, 0xcfc, 0x2f8, 0x3d4, 0xffff, 0,
];

/// The UART registers the model follows.
#[derive(Default)]
struct UartModel {
    lcr: u8,
    mcr: u8,
    ier: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    input: VecDeque<u8>,
    out: Vec<u8>,
}

impl UartModel {
    fn write(&mut self, offset: u16, value: u8) {
        let dlab = self.lcr & 0x80 != 0;
        match offset {
            0 if dlab => self.dll = value,
            // Loopback: the byte is received, if there is room.
            0 if self.mcr & 0x10 != 0 => {
                let room = self.input.len() < INPUT_LIMIT;
                self.input.extend(Some(value).filter(|_| room));
            }
            0 => self.out.push(value),
            1 if dlab => self.dlm = value,
            1 => self.ier = value & 0x0f,
            2 if value & 2 != 0 => self.input.clear(),
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {}
        }
    }

    /// The byte a read returns, where the model knows it.
    fn read(&mut self, offset: u16) -> Option<u8> {
        let dlab = self.lcr & 0x80 != 0;
        match offset {
            0 if dlab => Some(self.dll),
            0 => Some(self.input.pop_front().unwrap_or(0)),
            1 if dlab => Some(self.dlm),
            1 => Some(self.ier),
            3 => Some(self.lcr),
            4 => Some(self.mcr),
            5 => Some(0x60 | u8::from(!self.input.is_empty())),
            7 => Some(self.scr),
            _ => None,
        }
    }
}

/// The owned port ranges `(base, len)` of the x86 platform.
const OWNED: [(u64, u64); 4] = [
    (COM1 as u64, 8),
    (I8042 as u64, 5),
    (DEBUG_EXIT as u64, 1),
    (PM as u64, 3),
];

fn vmm_ports(u: &mut Unstructured<'_>) -> Result<()> {
    let vcpus = u.int_in_range(1..=4u32)?;
    let mut spec = VmSpec::new(
        "f",
        Arch::X86_64,
        HostPath::new("/k"),
        Memory::Size(1 << 20),
    );
    spec.vcpus = vcpus;
    let plan = plan_vm(&spec).unwrap_or_else(|e| panic!("plan: {e}"));
    let vm = FakeVm::new(&plan.ram).unwrap_or_else(|e| panic!("fake VM: {e}"));
    let serial = Collected::default();
    let stop = Arc::new(RecordingStop::default());
    let log = Arc::new(RecordingLog::default());
    let core = VmmCore::build(
        &plan,
        &vm,
        Interrupts::InKernel,
        &mut MemoryBackends::default(),
        Box::new(serial.clone()),
        stop.clone(),
        log.clone(),
    )
    .unwrap_or_else(|e| panic!("VMM: {e}"));
    let mut uart = UartModel {
        dll: 12,
        ..UartModel::default()
    };
    let mut events = Vec::new();
    let mut unsupported_sleep = false;
    let mut unmapped = 0usize;
    let mut bad_resets = 0usize;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let port: u16 = if u.ratio(3, 4)? {
            *u.choose(PORTS)?
        } else {
            u.arbitrary()?
        };
        let len: u8 = *u.choose(&[1, 1, 1, 2, 4, 0, 3, 8])?;
        let vcpu: VcpuId = u.int_in_range(0..=vcpus)?;
        let eff = u64::from(len.min(8));
        let owner = containing(&OWNED, u64::from(port), eff);
        match u.int_in_range(0..=4u8)? {
            0 | 1 => {
                let data: u32 = u.arbitrary()?;
                let next = core.handle(&vm, vcpu, VcpuExit::PioWrite { port, len, data });
                assert_eq!(next, Next::run(ExitAnswer::None), "OUT answers nothing");
                let byte = data as u8;
                match owner {
                    None => unmapped += 1,
                    Some((_, _)) if len == 0 => {}
                    Some((0, off)) => uart.write(off as u16, byte),
                    Some((1, 4)) if byte == 0xfe => events.push(SystemEvent::Reset),
                    Some((2, _)) => events.push(SystemEvent::ExitCode(byte)),
                    Some((3, 0)) if byte & 0x20 != 0 => {
                        if (byte >> 2) & 7 == 5 {
                            events.push(SystemEvent::Shutdown);
                        } else {
                            unsupported_sleep = true;
                        }
                    }
                    Some((3, 2)) if byte == 0x06 => events.push(SystemEvent::Reset),
                    Some((3, 2)) => bad_resets += 1,
                    Some(_) => {}
                }
            }
            2 | 3 => {
                let next = core.handle(&vm, vcpu, VcpuExit::PioRead { port, len });
                let Next::Resume(keel_core::Resume::Run(ExitAnswer::Read(v))) = next else {
                    panic!("IN of {len} at {port:#x} answered {next:?}");
                };
                let want: Option<u64> = match owner {
                    None => {
                        unmapped += 1;
                        Some(all_ones(len))
                    }
                    Some(_) if len == 0 => Some(0),
                    Some((0, off)) => uart.read(off as u16).map(u64::from),
                    Some((1, 4)) => Some(0x04),
                    Some((1, _)) => Some(0),
                    Some((2, _)) => Some(all_ones(len)),
                    Some(_) => Some(0),
                };
                match want {
                    Some(w) => assert_eq!(v, w, "IN of {len} at {port:#x}"),
                    // IIR / MSR: one byte, the rest zero.
                    None => assert_eq!(v >> 8, 0, "IN of {len} at {port:#x}: {v:#x}"),
                }
            }
            _ => {
                let n = u.int_in_range(0..=700usize)?;
                let bytes = u.bytes(n.min(u.len()))?;
                let took = core.serial().lock().input(bytes);
                let room = INPUT_LIMIT - uart.input.len();
                assert_eq!(took, bytes.len().min(room), "host input accepted");
                uart.input.extend(&bytes[..took]);
            }
        }
        assert!(
            uart.input.len() <= INPUT_LIMIT,
            "COM1 input beyond its limit"
        );
        assert_eq!(
            *serial.0.lock(),
            uart.out,
            "COM1 output is exactly the THR writes with DLAB and loopback clear"
        );
        assert_eq!(
            *stop.0.lock(),
            events,
            "stop requests are exactly the documented ones"
        );
        if uart.ier == 0 {
            let line = vm.line(COM1_GSI).expect("COM1 has an interrupt line");
            assert!(!line.is_high(), "COM1's line is high with IER clear");
        }
        let lines = log.0.lock();
        let unmapped_lines = lines
            .iter()
            .filter(|(_, l)| l.contains("no device"))
            .count();
        assert!(
            unmapped_lines <= rate_limited_lines(UNMAPPED_LOG_LIMIT as usize, unmapped),
            "{unmapped_lines} unmapped-port lines logged for {unmapped} accesses"
        );
        let sleep_lines = lines
            .iter()
            .filter(|(_, l)| l.contains("sleep type"))
            .count();
        assert!(
            sleep_lines <= usize::from(unsupported_sleep),
            "{sleep_lines} unsupported-sleep warnings"
        );
        let reset_lines = lines
            .iter()
            .filter(|(_, l)| l.contains("reset register"))
            .count();
        assert!(
            reset_lines <= rate_limited_lines(ACPI_RESET_LOG_LIMIT, bad_resets),
            "{reset_lines} ignored-reset lines for {bad_resets} writes: a guest can flood the log"
        );
    }
    Ok(())
}

fn port_dispatch(u: &mut Unstructured<'_>) -> Result<()> {
    let mut d = ExitDispatcher::new(Arc::new(keel_vmm::log::NullLog));
    let log: SpyLog = Arc::default();
    let mut ranges = Vec::new();
    for _ in 0..u.int_in_range(0..=6usize)? {
        let base = u64::from(u.arbitrary::<u16>()?);
        let size: u64 = u.int_in_range(1..=0x20)?;
        let dev = Arc::new(spin::Mutex::new(Spy {
            id: ranges.len(),
            log: log.clone(),
        }));
        if d.pio.insert(base, size, dev).is_ok() {
            ranges.push((base, size));
        }
    }
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let port: u16 = match ranges.as_slice() {
            [] => u.arbitrary()?,
            r if u.ratio(3, 4)? => {
                let &(base, size) = u.choose(r)?;
                (base + u.int_in_range(0..=size)?).wrapping_sub(u.int_in_range(0..=3)?) as u16
            }
            _ => u.arbitrary()?,
        };
        let len: u8 = *u.choose(&[1, 2, 4, 0, 3, 8])?;
        let eff = len.min(8);
        let hit = containing(&ranges, u64::from(port), u64::from(eff));
        if u.arbitrary()? {
            let next = d.handle(0, &VcpuExit::PioRead { port, len });
            let want = spy_read(hit, eff);
            assert_eq!(
                next,
                Some(Next::run(ExitAnswer::Read(want))),
                "IN of {len} at {port:#x}"
            );
            let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
            assert_eq!(
                seen,
                spy_reads(hit, eff),
                "devices reached by IN of {len} at {port:#x}"
            );
        } else {
            let data: u32 = u.arbitrary()?;
            let next = d.handle(0, &VcpuExit::PioWrite { port, len, data });
            assert_eq!(next, Some(Next::run(ExitAnswer::None)));
            let seen: Vec<_> = log.lock().unwrap().drain(..).collect();
            let expect: Vec<_> = hit
                .map(|(id, off)| {
                    let bytes = u64::from(data).to_le_bytes()[..usize::from(eff)].to_vec();
                    (id, off, usize::from(eff), Some(bytes))
                })
                .into_iter()
                .collect();
            assert_eq!(seen, expect, "devices reached by OUT of {len} at {port:#x}");
        }
    }
    Ok(())
}
