//! virtio-console test: one line through port 0's transmitq.

use crate::dma;
use crate::fail::TestResult;
use crate::virtio::queue::{Buffer, Virtqueue};
use crate::virtio::{self, Transport};
use crate::x86::Deadline;
use crate::{fail, say};

/// What the host test looks for on the console's output.
pub const LINE: &[u8] = b"keeltest: hello from virtio-console\n";
/// Port 0's transmitq (receiveq is 0).
const TRANSMITQ: u16 = 1;
/// Port 0's receiveq.
const RECEIVEQ: u16 = 0;
/// How long `console-input` waits for the host's input.
const INPUT_WAIT_MS: u64 = 20_000;

/// The `console` test.
pub fn run(transport: &Transport) -> TestResult {
    let mmio = transport.mmio;
    virtio::negotiate(mmio, 0)?;
    let Ok(mut queue) = Virtqueue::new(mmio, TRANSMITQ) else {
        return fail!("console: transmitq could not be set up");
    };
    let Some(page) = dma::alloc_pages(1) else {
        return fail!("console: out of DMA pages");
    };
    virtio::driver_ok(mmio)?;
    page[..LINE.len()].copy_from_slice(LINE);
    if queue
        .submit(&[Buffer::readable(&page[0], LINE.len())])
        .is_err()
    {
        return fail!("console: queue refused a 1-descriptor chain");
    }
    if queue.wait_used(Deadline::after_ms(5000)).is_none() {
        return fail!("console: transmit not completed within 5000 ms");
    }
    say!("console sent {} bytes", LINE.len());
    Ok(())
}

/// The `console-input` test: post one 64-byte receive buffer on port 0, wait for what the
/// host types, and print it (`console received "..."`).
pub fn run_input(transport: &Transport) -> TestResult {
    let mmio = transport.mmio;
    virtio::negotiate(mmio, 0)?;
    let Ok(mut queue) = Virtqueue::new(mmio, RECEIVEQ) else {
        return fail!("console-input: receiveq could not be set up");
    };
    let Some(page) = dma::alloc_pages(1) else {
        return fail!("console-input: out of DMA pages");
    };
    virtio::driver_ok(mmio)?;
    const LEN: usize = 64;
    if queue.submit(&[Buffer::writable(&page[0], LEN)]).is_err() {
        return fail!("console-input: queue refused a 1-descriptor chain");
    }
    let Some(used) = queue.wait_used(Deadline::after_ms(INPUT_WAIT_MS)) else {
        return fail!("console-input: no input within {INPUT_WAIT_MS} ms");
    };
    let got = used.len as usize;
    if got == 0 || got > LEN {
        return fail!("console-input: device reports {got} bytes in a {LEN}-byte buffer");
    }
    let text = core::str::from_utf8(&page[..got]).unwrap_or("<not UTF-8>");
    say!("console received {:?}", text.trim_end());
    Ok(())
}
