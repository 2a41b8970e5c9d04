//! virtio-blk driver and tests: read/write/flush/get-id, the persistence
//! pattern, read-only disks, the interrupt path and malformed requests.

use crate::cmdline::{Corruption, DiskPattern};
use crate::dma::{self, PAGE};
use crate::fail::TestResult;
use crate::virtio::mmio::{Mmio, status};
use crate::virtio::queue::{Buffer, DESC_F_NEXT, DESC_F_WRITE, Desc, Virtqueue};
use crate::virtio::{self, Transport};
use crate::x86::Deadline;
use crate::{fail, say};
use core::ptr::{read_volatile, write_volatile};

/// Device is read-only.
pub const F_RO: u64 = 1 << 5;
/// Device supports FLUSH.
pub const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_UNSUPP: u8 = 2;

const SECTOR: usize = 512;
/// Sector written with a single data descriptor.
const SINGLE_SECTOR: u64 = 0;
/// First of the sectors written with one descriptor per sector.
const MULTI_SECTOR: u64 = 8;
const MULTI_COUNT: usize = 4;
/// Smallest disk the pattern fits on.
const MIN_SECTORS: u64 = MULTI_SECTOR + MULTI_COUNT as u64;

const REQUEST_TIMEOUT_MS: u64 = 5000;

// Layout of the request page: header, status byte, GET_ID buffer.
const HDR: usize = 0;
const STATUS: usize = 64;
const ID: usize = 128;
const ID_LEN: usize = 20;

/// An initialised virtio-blk device with one request queue.
#[derive(Debug)]
pub struct Blk {
    mmio: Mmio,
    queue: Virtqueue,
    features: u64,
    /// Page 0: header/status/id; page 1: up to 8 sectors of data.
    buf: &'static mut [u8],
}

impl Blk {
    /// Resets and initialises the device behind `transport`.
    pub fn init(transport: &Transport) -> TestResult<Self> {
        let mmio = transport.mmio;
        let features = virtio::negotiate(mmio, F_RO | F_FLUSH)?;
        let Ok(queue) = Virtqueue::new(mmio, 0) else {
            return fail!("blk: request queue 0 could not be set up");
        };
        let Some(buf) = dma::alloc_pages(2) else {
            return fail!("blk: out of DMA pages");
        };
        virtio::driver_ok(mmio)?;
        Ok(Self {
            mmio,
            queue,
            features,
            buf,
        })
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.features & F_RO != 0
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.mmio.config64(0)
    }

    /// The data area (8 sectors).
    fn data(&mut self) -> &mut [u8] {
        &mut self.buf[PAGE..PAGE + 8 * SECTOR]
    }

    fn status_byte(&self) -> u8 {
        // SAFETY: in bounds of our DMA page; volatile because the device wrote it.
        unsafe { read_volatile(&raw const self.buf[STATUS]) }
    }

    /// Queues a request without waiting: header, `segments` sectors of data
    /// (one descriptor per `segments` entry, each `lens[i]` bytes), status.
    fn submit(&mut self, kind: u32, sector: u64, lens: &[usize]) -> TestResult {
        self.buf[HDR..HDR + 16].copy_from_slice(&request_header(kind, sector));
        // SAFETY: in bounds of our DMA page; volatile so the 0xff marker is
        // really stored before the device is notified.
        unsafe { write_volatile(&raw mut self.buf[STATUS], 0xff) };
        let device_writes = kind == T_IN || kind == T_GET_ID;
        let mut chain = [Buffer::readable(&self.buf[HDR], 16); 8];
        let mut n = 1;
        let mut offset = if kind == T_GET_ID { ID } else { PAGE };
        for &len in lens {
            let Some(slot) = chain.get_mut(n) else {
                return fail!("blk: request with {} segments is too long", lens.len());
            };
            *slot = Buffer {
                device_writes,
                ..Buffer::readable(&self.buf[offset], len)
            };
            offset += len;
            n += 1;
        }
        let Some(slot) = chain.get_mut(n) else {
            return fail!("blk: request with {} segments is too long", lens.len());
        };
        *slot = Buffer::writable(&self.buf[STATUS], 1);
        if self.queue.submit(&chain[..=n]).is_err() {
            return fail!(
                "blk: chain of {} descriptors exceeds queue size {}",
                n + 1,
                self.queue.size()
            );
        }
        Ok(())
    }

    /// Runs one request synchronously (polling); returns the status byte.
    fn request(&mut self, kind: u32, sector: u64, lens: &[usize]) -> TestResult<u8> {
        self.submit(kind, sector, lens)?;
        let Some(used) = self.queue.wait_used(Deadline::after_ms(REQUEST_TIMEOUT_MS)) else {
            return fail!(
                "blk: request type {kind} sector {sector} not completed within {REQUEST_TIMEOUT_MS} ms (device status {:#x})",
                self.mmio.status()
            );
        };
        if used.id != 0 {
            return fail!(
                "blk: used element names descriptor {}, submitted 0",
                used.id
            );
        }
        Ok(self.status_byte())
    }

    fn expect_ok(&mut self, what: &str, kind: u32, sector: u64, lens: &[usize]) -> TestResult {
        match self.request(kind, sector, lens)? {
            S_OK => Ok(()),
            s => fail!("blk: {what} of sector {sector} returned status {s}"),
        }
    }

    /// GET_ID: the device's serial (None if unsupported).
    fn get_id(&mut self) -> TestResult<Option<[u8; ID_LEN]>> {
        match self.request(T_GET_ID, 0, &[ID_LEN])? {
            S_OK => {
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(&self.buf[ID..ID + ID_LEN]);
                Ok(Some(id))
            }
            S_UNSUPP => Ok(None),
            s => fail!("blk: GET_ID returned status {s}"),
        }
    }

    /// Reads the single-descriptor sector then the multi-descriptor ones into
    /// the data area (sector 0 of the pattern at data[0], the others after).
    fn read_pattern_sectors(&mut self) -> TestResult {
        self.data().fill(0);
        self.expect_ok("read", T_IN, SINGLE_SECTOR, &[SECTOR])?;
        let first = {
            let mut copy = [0u8; SECTOR];
            copy.copy_from_slice(&self.data()[..SECTOR]);
            copy
        };
        self.expect_ok("read", T_IN, MULTI_SECTOR, &[SECTOR; MULTI_COUNT])?;
        // Shift the multi-sector read up by one sector and put sector 0 first.
        self.data().copy_within(0..MULTI_COUNT * SECTOR, SECTOR);
        self.data()[..SECTOR].copy_from_slice(&first);
        Ok(())
    }
}

/// A `virtio_blk_req` header: type, reserved, sector (little endian).
fn request_header(kind: u32, sector: u64) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    header
}

/// The byte at `offset` of `sector` in the pattern for `seed`.
fn pattern_byte(seed: u32, sector: u64, offset: usize) -> u8 {
    let mut x = seed
        ^ (sector as u32).wrapping_mul(0x9e37_79b1)
        ^ (offset as u32).wrapping_mul(0x85eb_ca6b);
    x ^= x >> 15;
    x = x.wrapping_mul(0x2c1b_3c6d);
    (x >> 24) as u8
}

/// The pattern sectors in the order the data area holds them.
fn pattern_sectors() -> impl Iterator<Item = u64> {
    core::iter::once(SINGLE_SECTOR).chain(MULTI_SECTOR..MULTI_SECTOR + MULTI_COUNT as u64)
}

fn fill_pattern(data: &mut [u8], seed: u32) {
    for (chunk, sector) in data.chunks_mut(SECTOR).zip(pattern_sectors()) {
        for (offset, b) in chunk.iter_mut().enumerate() {
            *b = pattern_byte(seed, sector, offset);
        }
    }
}

fn verify_pattern(data: &[u8], seed: u32) -> TestResult {
    for (chunk, sector) in data.chunks(SECTOR).zip(pattern_sectors()) {
        for (offset, &got) in chunk.iter().enumerate() {
            let want = pattern_byte(seed, sector, offset);
            if got != want {
                return fail!("blk: sector {sector} byte {offset} is {got:#04x}, want {want:#04x}");
            }
        }
    }
    Ok(())
}

/// The `blk` test.
pub fn run(transport: &Transport, mode: DiskPattern, seed: u32) -> TestResult {
    let mut blk = Blk::init(transport)?;
    let capacity = blk.capacity();
    say!(
        "blk capacity {capacity} sectors{}",
        if blk.read_only() { " (read-only)" } else { "" }
    );
    if capacity < MIN_SECTORS {
        return fail!("blk: capacity {capacity} sectors, need at least {MIN_SECTORS}");
    }
    match blk.get_id()? {
        Some(id) => {
            let len = id.iter().position(|&b| b == 0).unwrap_or(ID_LEN);
            let printable = id[..len].iter().all(|b| b.is_ascii_graphic() || *b == b' ');
            let text = if printable {
                core::str::from_utf8(&id[..len]).unwrap_or("?")
            } else {
                "<binary>"
            };
            say!("blk id \"{text}\"");
        }
        None => say!("blk id unsupported"),
    }
    let pattern_len = (1 + MULTI_COUNT) * SECTOR;
    match mode {
        DiskPattern::Check => {
            blk.read_pattern_sectors()?;
            verify_pattern(&blk.data()[..pattern_len], seed)?;
            say!(
                "blk pattern verified ({} sectors, seed {seed:#x})",
                1 + MULTI_COUNT
            );
        }
        DiskPattern::Write if blk.read_only() => {
            return fail!(
                "blk: disk is read-only, cannot write the pattern (keeltest.disk-pattern=write)"
            );
        }
        DiskPattern::ReadWrite if blk.read_only() => {
            blk.expect_ok("read", T_IN, SINGLE_SECTOR, &[SECTOR])?;
            match blk.request(T_OUT, SINGLE_SECTOR, &[SECTOR])? {
                S_OK => return fail!("blk: write to a read-only disk returned OK"),
                s => say!("blk read-only: write rejected with status {s}"),
            }
        }
        DiskPattern::ReadWrite | DiskPattern::Write => {
            fill_pattern(&mut blk.data()[..pattern_len], seed);
            // Sector 0 in one data descriptor ...
            blk.expect_ok("write", T_OUT, SINGLE_SECTOR, &[SECTOR])?;
            // ... the others one descriptor per sector (6-descriptor chain).
            blk.data().copy_within(SECTOR..pattern_len, 0);
            blk.expect_ok("write", T_OUT, MULTI_SECTOR, &[SECTOR; MULTI_COUNT])?;
            if blk.features & F_FLUSH != 0 {
                blk.expect_ok("flush", T_FLUSH, 0, &[])?;
            } else {
                say!("blk: device does not offer FLUSH");
            }
            blk.read_pattern_sectors()?;
            verify_pattern(&blk.data()[..pattern_len], seed)?;
            say!(
                "blk pattern written and read back ({} sectors, seed {seed:#x})",
                1 + MULTI_COUNT
            );
        }
    }
    Ok(())
}

/// The reboot marker at the start of sector 0 (the rest of the sector is zero).
const REBOOT_MARKER: &[u8] = b"keeltest reboot marker v1\n";

/// What [`reboot_marker`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// No marker: it is written now (and flushed): the caller resets the machine.
    Written,
    /// The marker, written before a reset: it is cleared now (and flushed).
    Found,
}

/// The `reboot` test's disk step: sector 0 holds the marker after the first boot.
pub fn reboot_marker(transport: &Transport) -> TestResult<Marker> {
    let mut blk = Blk::init(transport)?;
    if blk.read_only() {
        return fail!("reboot: the disk is read-only, cannot write the marker");
    }
    blk.data()[..SECTOR].fill(0);
    blk.expect_ok("read", T_IN, SINGLE_SECTOR, &[SECTOR])?;
    let found = blk.data()[..SECTOR].starts_with(REBOOT_MARKER);
    blk.data()[..SECTOR].fill(0);
    if !found {
        blk.data()[..REBOOT_MARKER.len()].copy_from_slice(REBOOT_MARKER);
    }
    blk.expect_ok("write", T_OUT, SINGLE_SECTOR, &[SECTOR])?;
    if blk.features & F_FLUSH != 0 {
        blk.expect_ok("flush", T_FLUSH, 0, &[])?;
    }
    Ok(if found {
        Marker::Found
    } else {
        Marker::Written
    })
}

/// The `irq` test: one blk read completed through a real device interrupt
/// (IOAPIC level-triggered, active high, LAPIC EOI).
pub fn run_irq(transport: &Transport) -> TestResult {
    use crate::interrupts::{
        self, DEVICE_IRQ_STATUS, DEVICE_IRQS, DEVICE_VECTOR, TIMER_IRQS, TIMER_VECTOR,
    };
    use crate::{apic, x86};
    use core::sync::atomic::Ordering;

    let gsi = transport.location.irq;
    let mut blk = Blk::init(transport)?;
    if let Err(base) = apic::lapic_enable() {
        return fail!("irq: local APIC not usable in xAPIC mode (IA32_APIC_BASE {base:#x})");
    }
    apic::pic_mask_all();
    let entries = apic::ioapic_entries();
    if gsi >= entries {
        return fail!("irq: GSI {gsi} beyond the IOAPIC's {entries} entries");
    }
    blk.mmio.ack_interrupts();
    interrupts::set_device(blk.mmio.base());
    DEVICE_IRQS.store(0, Ordering::SeqCst);
    DEVICE_IRQ_STATUS.store(0, Ordering::SeqCst);
    apic::ioapic_route(gsi, DEVICE_VECTOR, apic::lapic_id(), true);
    // Wake-up source so each hlt is bounded even if the device stays silent.
    apic::timer_start_periodic(TIMER_VECTOR, 1_000_000);
    let outcome = (|| {
        blk.submit(T_IN, SINGLE_SECTOR, &[SECTOR])?;
        let deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        loop {
            if DEVICE_IRQS.load(Ordering::SeqCst) != 0
                && let Some(used) = blk.queue.take_used()
            {
                return Ok(used);
            }
            if deadline.expired() {
                return fail!(
                    "irq: no used-buffer interrupt from GSI {gsi} within {REQUEST_TIMEOUT_MS} ms ({} device irqs, {} timer irqs, InterruptStatus {:#x})",
                    DEVICE_IRQS.load(Ordering::SeqCst),
                    TIMER_IRQS.load(Ordering::SeqCst),
                    blk.mmio.read32(crate::virtio::mmio::reg::INTERRUPT_STATUS)
                );
            }
            x86::sti_hlt_cli();
        }
    })();
    apic::timer_stop();
    apic::ioapic_mask(gsi);
    interrupts::set_device(0);
    outcome?;
    if blk.status_byte() != S_OK {
        return fail!("irq: read completed with status {}", blk.status_byte());
    }
    let irq_status = DEVICE_IRQ_STATUS.load(Ordering::SeqCst);
    if irq_status & 1 == 0 {
        return fail!(
            "irq: interrupt taken but InterruptStatus had no used-buffer bit ({irq_status:#x})"
        );
    }
    say!(
        "irq: gsi {gsi} vector {DEVICE_VECTOR:#x}, {} device interrupts",
        DEVICE_IRQS.load(Ordering::SeqCst)
    );
    say!("irq ok");
    Ok(())
}

/// The `corrupt:<kind>` test: submits a malformed request and waits for the
/// device to set DEVICE_NEEDS_RESET. Ok means the device did.
pub fn run_corrupt(transport: &Transport, kind: Corruption) -> TestResult {
    let mut blk = Blk::init(transport)?;
    blk.buf[HDR..HDR + 16].copy_from_slice(&request_header(T_IN, 0));
    let hdr = dma::paddr(&blk.buf[HDR]);
    let data = dma::paddr(&blk.buf[PAGE]);
    let status_addr = dma::paddr(&blk.buf[STATUS]);
    let (descs, name): ([Desc; 3], &str) = match kind {
        // 0 -> 1 -> 2 -> 1 -> 2 -> ...: the cycle is among the writable
        // descriptors, so only loop detection (not ordering) can stop it.
        Corruption::Loop => (
            [
                Desc {
                    addr: hdr,
                    len: 16,
                    flags: DESC_F_NEXT,
                    next: 1,
                },
                Desc {
                    addr: data,
                    len: SECTOR as u32,
                    flags: DESC_F_NEXT | DESC_F_WRITE,
                    next: 2,
                },
                Desc {
                    addr: status_addr,
                    len: 1,
                    flags: DESC_F_NEXT | DESC_F_WRITE,
                    next: 1,
                },
            ],
            "descriptor loop",
        ),
        // 16 sectors of data buffer at 1 TiB: outside any RAM this guest
        // has. (More than a page: QEMU bounce-buffers one page of unassigned
        // memory instead of failing.)
        Corruption::OutOfRange => (
            [
                Desc {
                    addr: hdr,
                    len: 16,
                    flags: DESC_F_NEXT,
                    next: 1,
                },
                Desc {
                    addr: 1 << 40,
                    len: 16 * SECTOR as u32,
                    flags: DESC_F_NEXT | DESC_F_WRITE,
                    next: 2,
                },
                Desc {
                    addr: status_addr,
                    len: 1,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            ],
            "descriptor outside RAM",
        ),
        // A read request whose every descriptor is device-readable.
        Corruption::NoStatus => (
            [
                Desc {
                    addr: hdr,
                    len: 16,
                    flags: DESC_F_NEXT,
                    next: 1,
                },
                Desc {
                    addr: data,
                    len: SECTOR as u32,
                    flags: DESC_F_NEXT,
                    next: 2,
                },
                Desc {
                    addr: status_addr,
                    len: 1,
                    flags: 0,
                    next: 0,
                },
            ],
            "chain without a writable status byte",
        ),
    };
    say!("corrupt: submitting a blk request with a {name}");
    if blk.queue.submit_raw(&descs, 0).is_err() {
        return fail!("corrupt: queue too small for 3 descriptors");
    }
    let deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
    loop {
        let now = blk.mmio.status();
        if now & status::DEVICE_NEEDS_RESET != 0 {
            say!("device reported NEEDS_RESET (status {now:#x})");
            return Ok(());
        }
        if let Some(used) = blk.queue.take_used() {
            return fail!(
                "corrupt: device completed the {name} (used len {}, status byte {:#x}) instead of NEEDS_RESET",
                used.len,
                blk.status_byte()
            );
        }
        if deadline.expired() {
            return fail!(
                "corrupt: no NEEDS_RESET within {REQUEST_TIMEOUT_MS} ms after a {name} (status {now:#x})"
            );
        }
    }
}
