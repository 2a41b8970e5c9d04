//! virtio-rng test: two 64-byte requests, non-zero and different.

use crate::dma;
use crate::fail::TestResult;
use crate::virtio::queue::{Buffer, Virtqueue};
use crate::virtio::{self, Transport};
use crate::x86::Deadline;
use crate::{fail, say};

const REQUEST: usize = 64;

/// Fills `out` from the device's queue, re-requesting if the device returns
/// fewer bytes than asked for (allowed by the spec). Bounded.
fn fill(queue: &mut Virtqueue, out: &mut [u8]) -> TestResult {
    let deadline = Deadline::after_ms(5000);
    let mut have = 0;
    while have < out.len() {
        let rest = &mut out[have..];
        if queue
            .submit(&[Buffer::writable(&rest[0], rest.len())])
            .is_err()
        {
            return fail!("rng: queue refused a 1-descriptor chain");
        }
        let Some(used) = queue.wait_used(deadline) else {
            return fail!(
                "rng: request not completed within 5000 ms ({have} of {} bytes)",
                out.len()
            );
        };
        let got = used.len as usize;
        if got > rest.len() {
            return fail!(
                "rng: device claims {got} bytes written into a {}-byte buffer",
                rest.len()
            );
        }
        have += got;
    }
    Ok(())
}

/// The `rng` test.
pub fn run(transport: &Transport) -> TestResult {
    let mmio = transport.mmio;
    virtio::negotiate(mmio, 0)?;
    let Ok(mut queue) = Virtqueue::new(mmio, 0) else {
        return fail!("rng: requestq could not be set up");
    };
    let Some(page) = dma::alloc_pages(1) else {
        return fail!("rng: out of DMA pages");
    };
    virtio::driver_ok(mmio)?;
    let (first, rest) = page.split_at_mut(REQUEST);
    let second = &mut rest[..REQUEST];
    fill(&mut queue, first)?;
    fill(&mut queue, second)?;
    if first.iter().all(|&b| b == 0) || second.iter().all(|&b| b == 0) {
        return fail!("rng: a 64-byte read returned only zeros");
    }
    if first == second {
        return fail!("rng: two 64-byte reads returned the same bytes");
    }
    say!(
        "rng ok: 2 x {REQUEST} bytes, first bytes {:02x}{:02x}{:02x}{:02x} / {:02x}{:02x}{:02x}{:02x}",
        first[0],
        first[1],
        first[2],
        first[3],
        second[0],
        second[1],
        second[2],
        second[3]
    );
    Ok(())
}
