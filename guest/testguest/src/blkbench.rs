//! Benchmark modes for bench/run.sh: `blkbench:<kind>:<size>[:<total>]`
//! (virtio-blk throughput at queue depth 1) and `pause:<ms>` (stay alive so
//! the host can sample the VMM's memory).
//!
//! Every guest instruction here runs in kernel mode, which the software KVM
//! of the development machine emulates (~0.9 µs each), so the request loop
//! does as little as it can: it never touches the data buffer (writes send
//! whatever the RAM holds, reads are not checked), polls the used ring and
//! does not acknowledge interrupts (the IOAPIC pin stays masked).

use crate::cmdline::BenchKind;
use crate::dma;
use crate::fail::TestResult;
use crate::pvh::StartInfo;
use crate::virtio::queue::{Buffer, Virtqueue};
use crate::virtio::{self, Transport};
use crate::x86::{self, Deadline};
use crate::{fail, say};
use core::ptr::{read_volatile, write_volatile};

/// Guest-physical base of the data buffer: free RAM above the image.
const DATA_BASE: u64 = 4 << 20;
/// Largest request.
pub const MAX_REQUEST: u32 = 1 << 20;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
const SECTOR: u64 = 512;
const STATUS: usize = 64;
const REQUEST_TIMEOUT_MS: u64 = 5000;

unsafe extern "C" {
    /// End of the loaded image, bss included (link.ld).
    static __image_end: u8;
}

impl BenchKind {
    fn name(self) -> &'static str {
        match self {
            BenchKind::Read => "read",
            BenchKind::Write => "write",
            BenchKind::RandRead => "randread",
        }
    }
}

/// `blkbench:<kind>:<size>[:<total>]`: `total` bytes (default: the whole
/// disk) in requests of `size` bytes, one at a time; sequential from sector 0
/// for `read`/`write`, at xorshift-random `size`-aligned offsets for
/// `randread`.
pub fn run(
    transport: &Transport,
    start_info: &StartInfo,
    tsc_hz: u64,
    kind: BenchKind,
    size: u32,
    total: Option<u64>,
) -> TestResult {
    let name = kind.name();
    if size == 0 || u64::from(size) % SECTOR != 0 || size > MAX_REQUEST {
        return fail!("blkbench: request size {size} is not a multiple of 512 in 512..=1M");
    }
    // Only the symbol's address is taken (no read), which needs no unsafe.
    let image_end = (&raw const __image_end) as u64;
    if image_end > DATA_BASE || !start_info.is_ram(DATA_BASE, u64::from(MAX_REQUEST)) {
        return fail!(
            "blkbench: no free RAM for a 1 MiB buffer at {DATA_BASE:#x} (image ends at {image_end:#x})"
        );
    }
    let mmio = transport.mmio;
    let features = virtio::negotiate(mmio, crate::blk::F_RO)?;
    let Ok(mut queue) = Virtqueue::new(mmio, 0) else {
        return fail!("blkbench: request queue 0 could not be set up");
    };
    let Some(page) = dma::alloc_pages(1) else {
        return fail!("blkbench: out of DMA pages");
    };
    virtio::driver_ok(mmio)?;
    if kind == BenchKind::Write && features & crate::blk::F_RO != 0 {
        return fail!("blkbench: write on a read-only disk");
    }
    let capacity = mmio.config64(0).saturating_mul(SECTOR);
    let total = total.unwrap_or(capacity);
    let slots = capacity / u64::from(size);
    let requests = total / u64::from(size);
    if requests == 0 || slots == 0 {
        return fail!(
            "blkbench: {total} bytes in {size}-byte requests on a {capacity}-byte disk is nothing to do"
        );
    }
    if kind != BenchKind::RandRead && requests > slots {
        return fail!("blkbench: {total} bytes do not fit the {capacity}-byte disk");
    }
    let (request_type, device_writes) = match kind {
        BenchKind::Write => (T_OUT, false),
        BenchKind::Read | BenchKind::RandRead => (T_IN, true),
    };
    page[4..8].fill(0);
    page[..4].copy_from_slice(&request_type.to_le_bytes());
    let data = Buffer {
        addr: DATA_BASE,
        len: size,
        device_writes,
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let start = x86::rdtsc();
    for i in 0..requests {
        let slot = if kind == BenchKind::RandRead {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % slots
        } else {
            i
        };
        let sector = slot * (u64::from(size) / SECTOR);
        page[8..16].copy_from_slice(&sector.to_le_bytes());
        // SAFETY: in bounds of our DMA page; volatile so the marker is
        // stored before the device is notified.
        unsafe { write_volatile(&raw mut page[STATUS], 0xff) };
        let chain = [
            Buffer::readable(&page[0], 16),
            data,
            Buffer::writable(&page[STATUS], 1),
        ];
        if queue.submit(&chain).is_err() {
            return fail!("blkbench: queue of {} is too small", queue.size());
        }
        let deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        while queue.take_used().is_none() {
            if deadline.expired() {
                return fail!("blkbench: request {i} (sector {sector}) not completed in time");
            }
            core::hint::spin_loop();
        }
        // SAFETY: in bounds of our DMA page; the device wrote it.
        let status = unsafe { read_volatile(&raw const page[STATUS]) };
        if status != S_OK {
            return fail!("blkbench: request {i} (sector {sector}) returned status {status}");
        }
    }
    let cycles = x86::rdtsc().wrapping_sub(start);
    let bytes = requests * u64::from(size);
    say!("blkbench {name} {requests} x {size} bytes in {cycles} tsc cycles");
    if tsc_hz != 0 && cycles != 0 {
        let per_s = |n: u64| u128::from(n) * u128::from(tsc_hz) / u128::from(cycles);
        say!(
            "blkbench {name} {} KiB/s, {} IOPS",
            per_s(bytes) / 1024,
            per_s(requests)
        );
    }
    Ok(())
}

/// `pause:<ms>`: announces itself, then busy-waits `ms` milliseconds.
pub fn pause(ms: u32) -> TestResult {
    say!("pause {ms} ms");
    x86::delay_us(u64::from(ms) * 1000);
    Ok(())
}
