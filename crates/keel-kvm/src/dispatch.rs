//! Exit dispatch: vCPU exits go to the port-I/O and MMIO buses, answers come back, and
//! guest requests to stop are collected. Uses keel-core types only, so it can move to a
//! portable crate unchanged; the KVM specifics stay in `hv.rs` and `vcpu.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_core::{Bus, ExitAnswer, HvError, SystemEvent, Vcpu, VcpuExit, VcpuId};

use crate::log;

/// Where devices and vCPU threads report that the VM must stop.
pub trait StopSink: Send + Sync {
    /// The guest asked to stop (power-off, reset, exit code, crash).
    fn guest_event(&self, event: SystemEvent);
    /// Whether a stop has been requested (vCPU loops poll this after every exit).
    fn stopping(&self) -> bool;
}

/// Exit counters, for `keel run --stats` and the benchmarks.
#[derive(Debug, Default)]
pub struct ExitStats {
    /// MMIO reads handled by the VMM.
    pub mmio_reads: AtomicU64,
    /// MMIO writes handled by the VMM.
    pub mmio_writes: AtomicU64,
    /// Port reads.
    pub pio_reads: AtomicU64,
    /// Port writes.
    pub pio_writes: AtomicU64,
    /// `hlt` exits.
    pub halts: AtomicU64,
    /// Runs interrupted by a signal.
    pub interrupted: AtomicU64,
    /// Any other exit.
    pub other: AtomicU64,
}

impl ExitStats {
    fn count(&self, exit: &VcpuExit) {
        let c = match exit {
            VcpuExit::MmioRead { .. } => &self.mmio_reads,
            VcpuExit::MmioWrite { .. } => &self.mmio_writes,
            VcpuExit::PioRead { .. } => &self.pio_reads,
            VcpuExit::PioWrite { .. } => &self.pio_writes,
            VcpuExit::Halt => &self.halts,
            VcpuExit::Interrupted => &self.interrupted,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// All exits counted.
    pub fn total(&self) -> u64 {
        [
            &self.mmio_reads,
            &self.mmio_writes,
            &self.pio_reads,
            &self.pio_writes,
            &self.halts,
            &self.interrupted,
            &self.other,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// What the vCPU loop does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run again with this answer.
    Resume(ExitAnswer),
    /// The VM stops.
    Stop(SystemEvent),
}

/// The buses a VM's exits are dispatched to.
#[derive(Debug, Default)]
pub struct ExitHandler {
    /// Port I/O (x86 `in`/`out`).
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
    /// Counters.
    pub stats: Arc<ExitStats>,
}

/// All ones of `len` bytes: what reads of nothing return on a PC.
fn all_ones(len: u8) -> u64 {
    match len {
        8.. => u64::MAX,
        n => (1u64 << (u32::from(n) * 8)) - 1,
    }
}

fn read_bus(bus: &Bus, kind: &str, addr: u64, len: u8) -> u64 {
    let len = len.min(8);
    let mut data = [0u8; 8];
    match bus.read(addr, &mut data[..usize::from(len)]) {
        Ok(()) => u64::from_le_bytes(data),
        Err(_) => {
            log::debug(format_args!(
                "{kind} read of {len} bytes at {addr:#x}: no device"
            ));
            all_ones(len)
        }
    }
}

fn write_bus(bus: &Bus, kind: &str, addr: u64, len: u8, value: u64) {
    let len = len.min(8);
    let bytes = value.to_le_bytes();
    if bus.write(addr, &bytes[..usize::from(len)]).is_err() {
        log::debug(format_args!(
            "{kind} write of {len} bytes ({value:#x}) at {addr:#x}: no device, ignored"
        ));
    }
}

impl ExitHandler {
    /// Handle one exit of `vcpu`.
    pub fn handle(&self, vcpu: VcpuId, exit: VcpuExit) -> Next {
        self.stats.count(&exit);
        match exit {
            VcpuExit::PioRead { port, len } => Next::Resume(ExitAnswer::Read(read_bus(
                &self.pio,
                "port",
                port.into(),
                len,
            ))),
            VcpuExit::PioWrite { port, len, data } => {
                write_bus(&self.pio, "port", port.into(), len, data.into());
                Next::Resume(ExitAnswer::None)
            }
            VcpuExit::MmioRead { gpa, len } => {
                Next::Resume(ExitAnswer::Read(read_bus(&self.mmio, "MMIO", gpa, len)))
            }
            VcpuExit::MmioWrite { gpa, len, data } => {
                write_bus(&self.mmio, "MMIO", gpa, len, data);
                Next::Resume(ExitAnswer::None)
            }
            VcpuExit::System(event) => Next::Stop(event),
            VcpuExit::Halt | VcpuExit::Interrupted => Next::Resume(ExitAnswer::None),
            other => {
                log::debug(format_args!("vcpu {vcpu}: ignoring exit {other:?}"));
                Next::Resume(ExitAnswer::None)
            }
        }
    }
}

/// Run `vcpu` until the guest stops the VM, `stop` says so, or the hypervisor fails.
/// Returns the guest's event if this vCPU saw it.
pub fn run_vcpu<V: Vcpu>(
    vcpu: &mut V,
    handler: &ExitHandler,
    stop: &dyn StopSink,
) -> Result<Option<SystemEvent>, HvError> {
    let mut answer = ExitAnswer::None;
    loop {
        if stop.stopping() {
            return Ok(None);
        }
        let exit = vcpu.run(answer)?;
        match handler.handle(vcpu.id(), exit) {
            Next::Resume(a) => answer = a,
            Next::Stop(event) => return Ok(Some(event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::BusDevice;
    use keel_core::bus::SharedDevice;

    struct Reg(u32);
    impl BusDevice for Reg {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            let b = self.0.to_le_bytes();
            let n = data.len().min(4);
            data[..n].copy_from_slice(&b[..n]);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            let mut b = [0u8; 4];
            let n = data.len().min(4);
            b[..n].copy_from_slice(&data[..n]);
            self.0 = u32::from_le_bytes(b);
        }
    }

    fn handler() -> ExitHandler {
        let mut h = ExitHandler::default();
        let dev: SharedDevice = Arc::new(spin::Mutex::new(Reg(0)));
        h.mmio.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        h.pio.insert(0x3f8, 8, dev).unwrap();
        h
    }

    #[test]
    fn mmio_write_then_read_reaches_the_device() {
        let h = handler();
        let w = h.handle(
            0,
            VcpuExit::MmioWrite {
                gpa: 0xd000_0070,
                len: 4,
                data: 0xf,
            },
        );
        assert_eq!(w, Next::Resume(ExitAnswer::None));
        let r = h.handle(
            0,
            VcpuExit::MmioRead {
                gpa: 0xd000_0070,
                len: 4,
            },
        );
        assert_eq!(r, Next::Resume(ExitAnswer::Read(0xf)));
        assert_eq!(h.stats.mmio_reads.load(Ordering::Relaxed), 1);
        assert_eq!(h.stats.mmio_writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unmapped_port_reads_all_ones() {
        let h = handler();
        assert_eq!(
            h.handle(0, VcpuExit::PioRead { port: 0x80, len: 2 }),
            Next::Resume(ExitAnswer::Read(0xffff))
        );
    }

    #[test]
    fn unmapped_write_is_ignored() {
        let h = handler();
        let read = |port| h.handle(0, VcpuExit::PioRead { port, len: 1 });
        let mapped_before = read(0x3f8);
        assert_eq!(
            h.handle(
                0,
                VcpuExit::PioWrite {
                    port: 0x80,
                    len: 1,
                    data: 1
                }
            ),
            Next::Resume(ExitAnswer::None)
        );
        assert_eq!(h.stats.pio_writes.load(Ordering::Relaxed), 1);
        // Nothing took the write: the mapped port is unchanged, 0x80 still reads all ones.
        assert_eq!(read(0x3f8), mapped_before);
        assert_eq!(read(0x80), Next::Resume(ExitAnswer::Read(0xff)));
    }

    #[test]
    fn system_event_stops_the_vm() {
        let h = handler();
        assert_eq!(
            h.handle(0, VcpuExit::System(SystemEvent::Reset)),
            Next::Stop(SystemEvent::Reset)
        );
    }

    #[test]
    fn all_ones_matches_the_width() {
        assert_eq!(
            [all_ones(1), all_ones(4), all_ones(8)],
            [0xff, 0xffff_ffff, u64::MAX]
        );
    }
}
