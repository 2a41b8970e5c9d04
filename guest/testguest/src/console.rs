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
