//! Throughput of `GuestRam::read`/`write` (relaxed atomic copies, `keel_core::memory::copy`)
//! against the plain `copy_nonoverlapping` they replaced, for 64 B to 1 MiB.
//!
//! `cargo run -p keel-core --release --example copy_bench` (figures in docs/security.md).
//! Single-threaded, no concurrent writer: this measures the cost of the copy itself.

use std::hint::black_box;
use std::time::Instant;

use keel_core::memory::{GuestAddress, GuestMemory, GuestRam};

const SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];
/// Bytes moved per measurement (per size and direction).
const VOLUME: usize = 2 << 30;

fn gbps(bytes: usize, f: impl FnMut()) -> f64 {
    let mut f = f;
    let rounds = VOLUME / bytes;
    for _ in 0..rounds / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..rounds {
        f();
    }
    (rounds * bytes) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let ram = GuestRam::anonymous(&[(0, 2 << 20)]).expect("guest RAM");
    println!("size      read old  read new  write old  write new  (GB/s)");
    for size in SIZES {
        let mut buf = vec![0x5au8; size];
        let gpa = GuestAddress(0);
        // The old copies look the region up too, as `read`/`write` did.
        let host = || {
            ram.host_address(black_box(gpa), size as u64)
                .expect("in RAM")
        };
        let read_old = gbps(size, || {
            // SAFETY: `host()` is `size` bytes of live guest RAM; `buf` is a distinct buffer of
            // `size` bytes. No other thread runs. This is the copy `GuestRam::read` used to do.
            unsafe { std::ptr::copy_nonoverlapping(host(), buf.as_mut_ptr(), size) };
            black_box(&mut buf);
        });
        let read_new = gbps(size, || {
            ram.read(gpa, black_box(&mut buf)).expect("read");
        });
        let write_old = gbps(size, || {
            // SAFETY: as above, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(black_box(&buf).as_ptr(), host(), size) };
        });
        let write_new = gbps(size, || {
            ram.write(gpa, black_box(&buf)).expect("write");
        });
        println!(
            "{:>7}  {read_old:>8.1}  {read_new:>8.1}  {write_old:>9.1}  {write_new:>9.1}",
            if size >= 1 << 20 {
                format!("{} MiB", size >> 20)
            } else if size >= 1 << 10 {
                format!("{} KiB", size >> 10)
            } else {
                format!("{size} B")
            }
        );
    }
}
