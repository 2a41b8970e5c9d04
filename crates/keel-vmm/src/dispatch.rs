//! Exit dispatch: vCPU exits go to the port-I/O and MMIO buses, answers come back, and
//! guest requests to stop are collected. One dispatcher serves every backend: KVM's vCPU
//! threads and seL4's single fault loop call the same [`ExitDispatcher::handle`].

use core::sync::atomic::{AtomicU64, Ordering};

use keel_core::{Bus, ExitAnswer, SystemEvent, VcpuExit, VcpuId};

use crate::log::{Level, Log, RateLimit};

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
    read_only: alloc::vec::Vec<ReadOnlyRegion>,
    read_only_writes: RateLimit,
}

/// A guest-physical range the guest may read but not write (a shared region mapped
/// `access = "ro"`): the hypervisor maps it read-only, so a write exits to the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnlyRegion {
    /// The region's name, for the report.
    pub name: alloc::string::String,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl ReadOnlyRegion {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa - self.base < self.size
    }
}

impl core::fmt::Debug for ExitDispatcher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ExitDispatcher")
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish()
    }
}

/// How many unmapped accesses (and, separately, writes to read-only regions) of a VM are
/// logged before they are only counted; past it every 2^k-th is logged with the count
/// suppressed ([`RateLimit`]).
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
            read_only: alloc::vec::Vec::new(),
            read_only_writes: RateLimit::new(UNMAPPED_LOG_LIMIT),
        }
    }

    /// Report writes into `region` (mapped read-only by the hypervisor) as writes to a
    /// read-only shared region, not as unmapped accesses; they change nothing.
    pub fn add_read_only(&mut self, region: ReadOnlyRegion) {
        self.read_only.push(region);
    }

    /// Writes to read-only shared regions seen so far (logged or not).
    pub fn read_only_writes(&self) -> u32 {
        self.read_only_writes.seen()
    }

    fn read_only_write(&self, vcpu: VcpuId, region: &ReadOnlyRegion, gpa: u64, len: u8) {
        let allowed = self.read_only_writes.allow();
        if !allowed.logs() {
            return;
        }
        self.log.log(
            Level::Warn,
            format_args!(
                "vcpu {vcpu}: write of {len} bytes to read-only shared region '{}' at {gpa:#x}: ignored{}",
                region.name,
                allowed.suffix()
            ),
        );
    }

    /// Unmapped accesses seen so far (logged or not).
    pub fn unmapped_accesses(&self) -> u32 {
        self.unmapped.seen()
    }

    /// An access to nothing: guest-physical (MMIO) ones are faults of the guest, reported as
    /// warnings naming the address; port ones (x86 drivers probe ports freely) are debug.
    fn unmapped(&self, vcpu: VcpuId, kind: &str, what: core::fmt::Arguments<'_>) {
        let (level, nothing) = if kind == "MMIO" {
            (
                Level::Warn,
                "unmapped guest-physical address (no RAM, device or shared region)",
            )
        } else {
            (Level::Debug, "no device")
        };
        let allowed = self.unmapped.allow();
        if !allowed.logs() {
            return;
        }
        self.log.log(
            level,
            format_args!("vcpu {vcpu}: {what}: {nothing}{}", allowed.suffix()),
        );
    }

    fn read(&self, bus: &Bus, vcpu: VcpuId, kind: &str, addr: u64, len: u8) -> u64 {
        let len = len.min(8);
        let mut data = [0u8; 8];
        match bus.read_by(vcpu, addr, &mut data[..usize::from(len)]) {
            Ok(()) => u64::from_le_bytes(data),
            Err(_) => {
                self.unmapped(
                    vcpu,
                    kind,
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
                kind,
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
                match self.read_only.iter().find(|r| r.contains(gpa)) {
                    Some(region) => self.read_only_write(vcpu, region, gpa, len),
                    None => self.write(&self.mmio, vcpu, "MMIO", gpa, len, data),
                }
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

    fn recording() -> (ExitDispatcher, Arc<crate::testing::RecordingLog>) {
        let log = Arc::new(crate::testing::RecordingLog::default());
        let mut h = ExitDispatcher::new(log.clone());
        let dev: SharedDevice = Arc::new(spin::Mutex::new(Reg(0)));
        h.mmio.insert(0xd000_0000, 0x1000, dev).unwrap();
        h.add_read_only(ReadOnlyRegion {
            name: "x".into(),
            base: 0x9000_0000,
            size: 0x1000,
        });
        (h, log)
    }

    #[test]
    fn write_to_a_read_only_region_is_reported_naming_region_and_address() {
        let (h, log) = recording();

        let next = h.handle(
            1,
            &VcpuExit::MmioWrite {
                gpa: 0x9000_0010,
                len: 4,
                data: 7,
            },
        );

        assert_eq!(next, Some(Next::run(ExitAnswer::None)));
        assert_eq!(
            log.0.lock().clone(),
            [(
                Level::Warn,
                "vcpu 1: write of 4 bytes to read-only shared region 'x' at 0x90000010: ignored"
                    .into()
            )]
        );
        assert_eq!((h.read_only_writes(), h.unmapped_accesses()), (1, 0));
    }

    #[test]
    fn unmapped_guest_physical_access_is_a_warning_naming_the_address() {
        let (h, log) = recording();

        let next = h.handle(
            0,
            &VcpuExit::MmioRead {
                gpa: 0x8000_0000,
                len: 4,
            },
        );

        assert_eq!(next, Some(Next::run(ExitAnswer::Read(0xffff_ffff))));
        assert_eq!(
            log.0.lock().clone(),
            [(
                Level::Warn,
                "vcpu 0: MMIO read of 4 bytes at 0x80000000 (reads all ones): unmapped \
                 guest-physical address (no RAM, device or shared region)"
                    .into()
            )]
        );
    }

    #[test]
    fn unmapped_port_access_stays_a_debug_message() {
        let (h, log) = recording();

        h.handle(0, &VcpuExit::PioRead { port: 0x80, len: 1 });

        assert_eq!(log.0.lock()[0].0, Level::Debug);
    }

    #[test]
    fn read_only_writes_past_the_limit_are_only_counted() {
        let (h, log) = recording();
        let write = VcpuExit::MmioWrite {
            gpa: 0x9000_0000,
            len: 1,
            data: 1,
        };

        for _ in 0..UNMAPPED_LOG_LIMIT + 4 {
            h.handle(0, &write);
        }

        assert_eq!(log.0.lock().len(), UNMAPPED_LOG_LIMIT as usize);
        assert_eq!(h.read_only_writes(), UNMAPPED_LOG_LIMIT + 4);
    }

    #[test]
    fn unmapped_access_flood_logs_first_n_then_a_dropped_count() {
        let (h, log) = recording();
        let read = VcpuExit::MmioRead {
            gpa: 0x8000_0000,
            len: 4,
        };

        for _ in 0..1000 {
            h.handle(0, &read);
        }

        let lines = log.0.lock().clone();
        // 16 first ones, then occurrences 32, 64, 128, 256 and 512.
        assert_eq!(lines.len(), UNMAPPED_LOG_LIMIT as usize + 5);
        assert!(
            lines[UNMAPPED_LOG_LIMIT as usize - 1]
                .1
                .ends_with("(further ones are only counted)")
        );
        assert!(lines.last().unwrap().1.ends_with("(255 more suppressed)"));
        assert_eq!(h.unmapped_accesses(), 1000);
    }

    #[test]
    fn read_only_write_flood_reports_the_dropped_count() {
        let (h, log) = recording();
        let write = VcpuExit::MmioWrite {
            gpa: 0x9000_0000,
            len: 1,
            data: 1,
        };

        for _ in 0..2 * UNMAPPED_LOG_LIMIT {
            h.handle(0, &write);
        }

        let lines = log.0.lock().clone();
        assert_eq!(lines.len(), UNMAPPED_LOG_LIMIT as usize + 1);
        assert!(lines.last().unwrap().1.ends_with("(15 more suppressed)"));
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
