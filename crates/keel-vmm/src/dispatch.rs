//! Exit dispatch: vCPU exits go to the port-I/O and MMIO buses, answers come back, and
//! guest requests to stop are collected. One dispatcher serves every backend: KVM's vCPU
//! threads and seL4's single fault loop call the same [`ExitDispatcher::handle`].

use core::sync::atomic::{AtomicU64, Ordering};

use keel_core::{Bus, ExitAnswer, SystemEvent, VcpuExit, VcpuId};

use crate::log::{Allowed, Level, Log, RateLimit};

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
    /// `hlt` / `wfi` exits.
    pub halts: AtomicU64,
    /// Runs interrupted by the host.
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

/// What happens after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Let the vCPU go on (run it, park it, or let it wait for an interrupt).
    Resume(keel_core::Resume),
    /// The VM stops.
    Stop(SystemEvent),
}

impl Next {
    /// Run the vCPU again with `answer`.
    pub const fn run(answer: ExitAnswer) -> Next {
        Next::Resume(keel_core::Resume::Run(answer))
    }
}

/// All ones of `len` bytes: what reads of nothing return, on every backend.
pub fn all_ones(len: u8) -> u64 {
    match len {
        8.. => u64::MAX,
        n => (1u64 << (u32::from(n) * 8)) - 1,
    }
}

/// The buses a VM's exits are dispatched to.
pub struct ExitDispatcher {
    /// Port I/O (x86 `in`/`out`).
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
    /// Counters.
    pub stats: alloc::sync::Arc<ExitStats>,
    log: Log,
    unmapped: RateLimit,
}

impl core::fmt::Debug for ExitDispatcher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ExitDispatcher")
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish()
    }
}

/// How many unmapped accesses of a VM are logged before they are only counted.
pub const UNMAPPED_LOG_LIMIT: u32 = 16;

impl ExitDispatcher {
    /// Empty buses logging to `log`.
    pub fn new(log: Log) -> ExitDispatcher {
        ExitDispatcher {
            pio: Bus::new(),
            mmio: Bus::new(),
            stats: Default::default(),
            log,
            unmapped: RateLimit::new(UNMAPPED_LOG_LIMIT),
        }
    }

    /// Unmapped accesses seen so far (logged or not).
    pub fn unmapped_accesses(&self) -> u32 {
        self.unmapped.seen()
    }

    fn unmapped(&self, vcpu: VcpuId, what: core::fmt::Arguments<'_>) {
        match self.unmapped.allow() {
            Allowed::Yes => self
                .log
                .log(Level::Debug, format_args!("vcpu {vcpu}: {what}: no device")),
            Allowed::Last => self.log.log(
                Level::Debug,
                format_args!(
                    "vcpu {vcpu}: {what}: no device (further unmapped accesses are only counted)"
                ),
            ),
            Allowed::No => {}
        }
    }

    fn read(&self, bus: &Bus, vcpu: VcpuId, kind: &str, addr: u64, len: u8) -> u64 {
        let len = len.min(8);
        let mut data = [0u8; 8];
        match bus.read_by(vcpu, addr, &mut data[..usize::from(len)]) {
            Ok(()) => u64::from_le_bytes(data),
            Err(_) => {
                self.unmapped(
                    vcpu,
                    format_args!("{kind} read of {len} bytes at {addr:#x} (reads all ones)"),
                );
                all_ones(len)
            }
        }
    }

    fn write(&self, bus: &Bus, vcpu: VcpuId, kind: &str, addr: u64, len: u8, value: u64) {
        let len = len.min(8);
        let bytes = value.to_le_bytes();
        if bus
            .write_by(vcpu, addr, &bytes[..usize::from(len)])
            .is_err()
        {
            self.unmapped(
                vcpu,
                format_args!("{kind} write of {len} bytes ({value:#x}) at {addr:#x} (ignored)"),
            );
        }
    }

    /// Handle one bus exit of `vcpu`; `None` for exits that are not bus accesses.
    pub fn handle(&self, vcpu: VcpuId, exit: &VcpuExit) -> Option<Next> {
        self.stats.count(exit);
        Some(match *exit {
            VcpuExit::PioRead { port, len } => Next::run(ExitAnswer::Read(self.read(
                &self.pio,
                vcpu,
                "port",
                port.into(),
                len,
            ))),
            VcpuExit::PioWrite { port, len, data } => {
                self.write(&self.pio, vcpu, "port", port.into(), len, data.into());
                Next::run(ExitAnswer::None)
            }
            VcpuExit::MmioRead { gpa, len } => Next::run(ExitAnswer::Read(
                self.read(&self.mmio, vcpu, "MMIO", gpa, len),
            )),
            VcpuExit::MmioWrite { gpa, len, data } => {
                self.write(&self.mmio, vcpu, "MMIO", gpa, len, data);
                Next::run(ExitAnswer::None)
            }
            VcpuExit::System(event) => Next::Stop(event),
            VcpuExit::Interrupted => Next::run(ExitAnswer::None),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
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

    fn dispatcher() -> ExitDispatcher {
        let mut h = ExitDispatcher::new(Arc::new(crate::log::NullLog));
        let dev: SharedDevice = Arc::new(spin::Mutex::new(Reg(0)));
        h.mmio.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        h.pio.insert(0x3f8, 8, dev).unwrap();
        h
    }

    #[test]
    fn mmio_write_then_read_reaches_the_device() {
        let h = dispatcher();
        let w = h.handle(
            0,
            &VcpuExit::MmioWrite {
                gpa: 0xd000_0070,
                len: 4,
                data: 0xf,
            },
        );
        assert_eq!(w, Some(Next::run(ExitAnswer::None)));
        let r = h.handle(
            0,
            &VcpuExit::MmioRead {
                gpa: 0xd000_0070,
                len: 4,
            },
        );
        assert_eq!(r, Some(Next::run(ExitAnswer::Read(0xf))));
        assert_eq!(h.stats.mmio_reads.load(Ordering::Relaxed), 1);
        assert_eq!(h.stats.mmio_writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unmapped_port_and_mmio_reads_are_all_ones_on_every_backend() {
        let h = dispatcher();
        assert_eq!(
            h.handle(0, &VcpuExit::PioRead { port: 0x80, len: 2 }),
            Some(Next::run(ExitAnswer::Read(0xffff)))
        );
        assert_eq!(
            h.handle(0, &VcpuExit::MmioRead { gpa: 0x10, len: 4 }),
            Some(Next::run(ExitAnswer::Read(0xffff_ffff)))
        );
        assert_eq!(h.unmapped_accesses(), 2);
    }

    #[test]
    fn unmapped_write_changes_nothing() {
        let h = dispatcher();
        let read = |port| h.handle(0, &VcpuExit::PioRead { port, len: 1 });
        let mapped_before = read(0x3f8);
        assert_eq!(
            h.handle(
                0,
                &VcpuExit::PioWrite {
                    port: 0x80,
                    len: 1,
                    data: 1
                }
            ),
            Some(Next::run(ExitAnswer::None))
        );
        assert_eq!(h.stats.pio_writes.load(Ordering::Relaxed), 1);
        assert_eq!(read(0x3f8), mapped_before);
        assert_eq!(read(0x80), Some(Next::run(ExitAnswer::Read(0xff))));
    }

    #[test]
    fn system_event_stops_the_vm() {
        let h = dispatcher();
        assert_eq!(
            h.handle(0, &VcpuExit::System(SystemEvent::Reset)),
            Some(Next::Stop(SystemEvent::Reset))
        );
    }

    #[test]
    fn non_bus_exits_are_left_to_the_caller() {
        let h = dispatcher();
        assert_eq!(h.handle(0, &VcpuExit::Halt), None);
    }

    #[test]
    fn all_ones_matches_the_width() {
        assert_eq!(
            [all_ones(1), all_ones(4), all_ones(8)],
            [0xff, 0xffff_ffff, u64::MAX]
        );
    }
}
