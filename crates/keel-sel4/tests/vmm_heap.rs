//! The VMM PD's heap (a small arena of `keel_sel4::heap::Heap` as this test program's
//! global allocator) exhausted through guest-driven paths: the guest's request fails, the
//! VMM (this program) goes on.
//!
//! Without the libtest harness (`harness = false`): the harness's own threads allocate
//! while a test runs, and a test that empties the heap on purpose would starve them.

use keel_core::GuestAddress;
use keel_core::memory::{GuestMemory, GuestRam};
use keel_sel4::heap::Heap;
use keel_virtio::queue::{ChainError, Queue, QueueError, VIRTQ_DESC_F_NEXT};

/// 16 MiB: the test harness and guest RAM fit, a guest request of 32 MiB does not.
const ARENA: usize = 16 << 20;

#[global_allocator]
static HEAP: Heap<ARENA> = Heap::new();

const RAM: u64 = 2 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const SIZE: u16 = 64;

/// A ready queue of `SIZE` over `ram`, with the chain of `bufs` (address, length) made
/// available at head 0.
fn queue_with_chain(ram: &GuestRam, bufs: &[(u64, u32)]) -> Queue {
    for (i, &(addr, len)) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT };
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        ram.write(GuestAddress(DESC + 16 * i as u64), &d).unwrap();
    }
    // avail ring: flags 0, idx 1, ring[0] = head 0.
    ram.write(GuestAddress(AVAIL), &[0, 0, 1, 0, 0, 0]).unwrap();
    let mut q = Queue::new(SIZE);
    q.set_desc_table(GuestAddress(DESC));
    q.set_avail_ring(GuestAddress(AVAIL));
    q.set_used_ring(GuestAddress(USED));
    q.set_ready(true);
    q
}

/// Take every block the heap has left (largest first), to be given back by dropping.
fn exhaust() -> Vec<Vec<u8>> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    hoard.try_reserve(4096).unwrap();
    let mut size = ARENA;
    while size >= 16 {
        let mut v = Vec::new();
        if hoard.len() < hoard.capacity() && v.try_reserve_exact(size).is_ok() {
            hoard.push(v);
        } else {
            size /= 2;
        }
    }
    hoard
}

fn exhausted_vmm_heap_fails_the_guest_request_only() {
    let ram = GuestRam::anonymous(&[(0, RAM)]).unwrap();
    // 32 descriptors over the same 1 MiB: a 32 MiB readable chain, more than the arena.
    let bufs = vec![(0x10_0000u64, 0x10_0000u32); 32];
    let mut q = queue_with_chain(&ram, &bufs);
    let chain = q.pop(&ram).unwrap().unwrap();

    let copy = chain.read_all_capped(&ram, u32::MAX);

    assert_eq!(
        copy,
        Err(ChainError::TooLargeToCopy {
            head: 0,
            len: 32 << 20,
            cap: u32::MAX
        })
    );
    // The VMM goes on: a request that fits is served.
    let small = vec![(0x10_0000u64, 16u32)];
    let mut q = queue_with_chain(&ram, &small);
    let chain = q.pop(&ram).unwrap().unwrap();
    assert_eq!(chain.read_all(&ram).map(|v| v.len()), Ok(16));
}

fn popping_a_chain_with_the_heap_full_fails_that_chain_and_the_vmm_goes_on() {
    let ram = GuestRam::anonymous(&[(0, RAM)]).unwrap();
    let bufs = vec![(0x10_0000u64, 16u32); 8];
    let mut q = queue_with_chain(&ram, &bufs);

    let hoard = exhaust();
    let full = q.pop(&ram);
    drop(hoard);

    assert!(
        matches!(full, Err(QueueError::OutOfMemory { head: 0, .. })),
        "{full:?}"
    );
    // The heap keeps a free list per power-of-two class and never splits a block: what
    // the failed request freed (its 4-segment list) serves the next short chain.
    let mut q = queue_with_chain(&ram, &bufs[..3]);
    let chain = q.pop(&ram).unwrap().unwrap();
    assert_eq!(chain.segments().len(), 3);
}

fn main() {
    let tests: [(&str, fn()); 2] = [
        (
            "exhausted_vmm_heap_fails_the_guest_request_only",
            exhausted_vmm_heap_fails_the_guest_request_only,
        ),
        (
            "popping_a_chain_with_the_heap_full_fails_that_chain_and_the_vmm_goes_on",
            popping_a_chain_with_the_heap_full_fails_that_chain_and_the_vmm_goes_on,
        ),
    ];
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
    // libtest's summary line, which scripts/test.sh counts (a failing test has already
    // ended the process with a panic before this line).
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        tests.len()
    );
}
