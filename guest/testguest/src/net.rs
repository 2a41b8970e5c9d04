//! virtio-net driver (virtio 1.x over virtio-mmio): receiveq 0 and transmitq 1,
//! polled, no offloads.
//!
//! Negotiates VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC (required: the address is
//! read from the configuration), and if offered VIRTIO_NET_F_STATUS and
//! VIRTIO_NET_F_MRG_RXBUF. With VERSION_1 the `virtio_net_hdr_v1` is 12 bytes
//! on both queues; transmitted frames carry a zeroed one, and with
//! MRG_RXBUF a received frame must fit one buffer (`num_buffers` = 1; others
//! are discarded with their continuation buffers and counted as bad).
//!
//! Every descriptor of either queue owns one 2 KiB buffer (12-byte header and
//! up to 2036 bytes of frame), so a chain is always one descriptor and its
//! index names its buffer. Receive buffers are reposted as soon as the caller
//! releases a frame; the device is notified once the ring is drained (or half
//! the buffers are waiting), not for every buffer.

use crate::cmdline::Mac;
use crate::dma::{self, PAGE};
use crate::fail;
use crate::fail::TestResult;
use crate::virtio::mmio::{Mmio, reg, status};
use crate::virtio::queue::{Buffer, Virtqueue};
use crate::virtio::{self, Transport};
use crate::x86::Deadline;
use core::fmt;

/// VIRTIO_NET_F_MAC: the configuration holds the MAC address.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several buffers.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// VIRTIO_NET_F_STATUS: the configuration holds the link status.
pub const F_STATUS: u64 = 1 << 16;
/// VIRTIO_NET_S_LINK_UP in the configuration's `status`.
const S_LINK_UP: u16 = 1;

/// `virtio_net_hdr_v1` (VERSION_1: always 12 bytes, `num_buffers` included).
pub const HDR_LEN: usize = 12;
/// Ethernet header: destination, source, EtherType.
pub const ETH_HDR_LEN: usize = 14;
/// One buffer: header and frame.
const BUF_LEN: usize = 2048;
/// Longest frame a buffer holds.
pub const MAX_FRAME: usize = BUF_LEN - HDR_LEN;
/// Receive buffers posted (fewer if the device's queue is smaller).
const RX_BUFS: u16 = 16;
/// Transmit buffers (fewer if the device's queue is smaller).
const TX_SLOTS: u16 = 16;
const RECEIVEQ: u16 = 0;
const TRANSMITQ: u16 = 1;
/// How long a transmit waits for a free buffer.
const TX_WAIT_MS: u64 = 5000;

/// Link state from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// VIRTIO_NET_S_LINK_UP is set.
    Up,
    /// It is clear.
    Down,
    /// VIRTIO_NET_F_STATUS was not offered.
    Unknown,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Link::Up => "up",
            Link::Down => "down",
            Link::Unknown => "unknown",
        })
    }
}

/// Formats a MAC address as `xx:xx:xx:xx:xx:xx` (lower case).
#[derive(Clone, Copy, Debug)]
pub struct MacAddr(pub Mac);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A received frame the caller holds until [`NetDev::release`].
#[derive(Clone, Copy, Debug)]
pub struct Received {
    id: u16,
    /// Frame length (without the virtio header): at least [`ETH_HDR_LEN`].
    pub len: usize,
}

/// An initialised virtio-net device.
#[derive(Debug)]
pub struct NetDev {
    mmio: Mmio,
    /// The device's MAC address.
    pub mac: Mac,
    /// Negotiated features.
    pub features: u64,
    rx: Virtqueue,
    tx: Virtqueue,
    /// `nrx` receive buffers of BUF_LEN bytes (DMA pages).
    rx_area: *mut u8,
    /// `ntx` transmit buffers of BUF_LEN bytes (DMA pages).
    tx_area: *mut u8,
    nrx: u16,
    ntx: u16,
    /// Receive descriptors the device owns (bit i = descriptor i).
    rx_posted: u32,
    /// Receive buffers reposted since the last notification.
    rx_unnotified: u16,
    /// Continuation buffers of a multi-buffer frame still to discard.
    rx_skip: u16,
    /// Used receive entries that were not a frame (too short, several buffers).
    pub rx_bad: u32,
    /// Transmit descriptors the device owns.
    tx_busy: u32,
    /// The transmit slot to fill next (the device completes in order, mostly;
    /// a slot still busy just means "wait").
    tx_next: u16,
    /// Transmit buffers queued since the last notification.
    tx_unnotified: u16,
}

impl NetDev {
    /// Resets and initialises the device behind `transport`; receive buffers
    /// are posted and the device notified.
    pub fn init(transport: &Transport) -> TestResult<Self> {
        let mmio = transport.mmio;
        let features = virtio::negotiate(mmio, F_MAC | F_STATUS | F_MRG_RXBUF)?;
        if features & F_MAC == 0 {
            mmio.set_status(status::FAILED);
            return fail!(
                "net: device does not offer VIRTIO_NET_F_MAC (features {:#x})",
                mmio.device_features()
            );
        }
        let Ok(mut rx) = Virtqueue::with_max_size(mmio, RECEIVEQ, RX_BUFS) else {
            return fail!("net: receiveq could not be set up");
        };
        let Ok(mut tx) = Virtqueue::with_max_size(mmio, TRANSMITQ, TX_SLOTS) else {
            return fail!("net: transmitq could not be set up");
        };
        rx.suppress_interrupts();
        tx.suppress_interrupts();
        let (nrx, ntx) = (rx.size(), tx.size());
        let pages = |n: u16| (usize::from(n) * BUF_LEN).div_ceil(PAGE);
        let (Some(rx_pages), Some(tx_pages)) =
            (dma::alloc_pages(pages(nrx)), dma::alloc_pages(pages(ntx)))
        else {
            return fail!("net: out of DMA pages");
        };
        let mut dev = Self {
            mmio,
            mac: read_mac(mmio),
            features,
            rx,
            tx,
            rx_area: rx_pages.as_mut_ptr(),
            tx_area: tx_pages.as_mut_ptr(),
            nrx,
            ntx,
            rx_posted: 0,
            rx_unnotified: 0,
            rx_skip: 0,
            rx_bad: 0,
            tx_busy: 0,
            tx_next: 0,
            tx_unnotified: 0,
        };
        for id in 0..nrx {
            dev.post_rx(id);
        }
        virtio::driver_ok(mmio)?;
        dev.rx.notify();
        dev.rx_unnotified = 0;
        Ok(dev)
    }

    /// The link state (VIRTIO_NET_F_STATUS).
    pub fn link(&self) -> Link {
        if self.features & F_STATUS == 0 {
            Link::Unknown
        } else if self.mmio.config16(6) & S_LINK_UP != 0 {
            Link::Up
        } else {
            Link::Down
        }
    }

    fn rx_buf(&self, id: u16) -> *mut u8 {
        // Stays inside rx_area: id < nrx (checked by every caller).
        self.rx_area.wrapping_add(usize::from(id) * BUF_LEN)
    }

    fn tx_buf(&self, slot: u16) -> *mut u8 {
        // Stays inside tx_area: slot < ntx.
        self.tx_area.wrapping_add(usize::from(slot) * BUF_LEN)
    }

    fn post_rx(&mut self, id: u16) {
        let buffer = Buffer {
            addr: self.rx_buf(id) as u64,
            len: BUF_LEN as u32,
            device_writes: true,
        };
        self.rx.post(id, buffer);
        self.rx_posted |= 1 << id;
        self.rx_unnotified += 1;
        if self.rx_unnotified >= self.nrx / 2 {
            self.flush_rx();
        }
    }

    fn flush_rx(&mut self) {
        if self.rx_unnotified != 0 {
            self.rx.notify();
            self.rx_unnotified = 0;
        }
    }

    /// The next received frame, or None when the receive ring is empty (the
    /// buffers released so far are then handed back to the device).
    pub fn recv(&mut self) -> TestResult<Option<Received>> {
        loop {
            let Some(used) = self.rx.take_used() else {
                self.flush_rx();
                return Ok(None);
            };
            // Device-written values: checked before they index anything.
            if used.id >= u32::from(self.nrx) || self.rx_posted & (1 << used.id) == 0 {
                return fail!(
                    "net: device used receive descriptor {}, not one of the posted {:#x}",
                    used.id,
                    self.rx_posted
                );
            }
            let id = used.id as u16;
            self.rx_posted &= !(1 << id);
            let len = used.len as usize;
            if len > BUF_LEN {
                return fail!("net: device wrote {len} bytes into a {BUF_LEN}-byte receive buffer");
            }
            if self.rx_skip != 0 {
                self.rx_skip -= 1;
                self.post_rx(id);
                continue;
            }
            if len < HDR_LEN + ETH_HDR_LEN {
                self.rx_bad += 1;
                self.post_rx(id);
                continue;
            }
            if self.features & F_MRG_RXBUF != 0 {
                // SAFETY: num_buffers (bytes 10..12 of the header) lies in
                // buffer `id`, which the device has handed back (used) and
                // no longer writes.
                let num_buffers =
                    unsafe { core::ptr::read_unaligned(self.rx_buf(id).add(10).cast::<[u8; 2]>()) };
                let num_buffers = u16::from_le_bytes(num_buffers);
                if num_buffers != 1 {
                    self.rx_bad += 1;
                    self.rx_skip = num_buffers.saturating_sub(1);
                    self.post_rx(id);
                    continue;
                }
            }
            return Ok(Some(Received {
                id,
                len: len - HDR_LEN,
            }));
        }
    }

    /// The bytes of a received frame (Ethernet header first).
    pub fn frame(&self, r: Received) -> &[u8] {
        // SAFETY: `r` came from `recv`: descriptor r.id < nrx is used (the
        // device does not write it until `release` reposts it) and held
        // HDR_LEN + r.len <= BUF_LEN bytes.
        unsafe { core::slice::from_raw_parts(self.rx_buf(r.id).add(HDR_LEN), r.len) }
    }

    /// Gives a received frame's buffer back to the device.
    pub fn release(&mut self, r: Received) {
        self.post_rx(r.id);
    }

    /// Takes back the transmit buffers the device has used.
    fn reclaim_tx(&mut self) -> TestResult {
        while let Some(used) = self.tx.take_used() {
            if used.id >= u32::from(self.ntx) || self.tx_busy & (1 << used.id) == 0 {
                return fail!(
                    "net: device used transmit descriptor {}, not one in flight {:#x}",
                    used.id,
                    self.tx_busy
                );
            }
            self.tx_busy &= !(1 << used.id);
        }
        Ok(())
    }

    /// Queues one frame if a transmit buffer is free: `build` writes the
    /// frame into the buffer it is given ([`MAX_FRAME`] bytes) and returns its
    /// length. Returns false (without calling `build`) when every buffer is in
    /// flight. The device is notified by [`NetDev::kick`] (or when half the
    /// buffers wait).
    pub fn try_queue(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> TestResult<bool> {
        self.reclaim_tx()?;
        let slot = self.tx_next;
        if self.tx_busy & (1 << slot) != 0 {
            return Ok(false);
        }
        // SAFETY: slot < ntx: buffer `slot` lies in tx_area and is not in
        // flight (its bit is clear), so the device does not read it now.
        let buf = unsafe { core::slice::from_raw_parts_mut(self.tx_buf(slot), BUF_LEN) };
        let (header, frame) = buf.split_at_mut(HDR_LEN);
        header.fill(0);
        let len = build(frame);
        if !(ETH_HDR_LEN..=MAX_FRAME).contains(&len) {
            return fail!("net: refusing to send a {len}-byte frame");
        }
        let buffer = Buffer {
            addr: self.tx_buf(slot) as u64,
            len: (HDR_LEN + len) as u32,
            device_writes: false,
        };
        self.tx.post(slot, buffer);
        self.tx_busy |= 1 << slot;
        self.tx_next = (slot + 1) % self.ntx;
        self.tx_unnotified += 1;
        if self.tx_unnotified >= self.ntx / 2 {
            self.kick();
        }
        Ok(true)
    }

    /// Notifies the device of the frames queued since the last notification.
    pub fn kick(&mut self) {
        if self.tx_unnotified != 0 {
            self.tx.notify();
            self.tx_unnotified = 0;
        }
    }

    /// Queues one frame (waiting up to 5 s for a free buffer) and notifies.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> TestResult {
        let deadline = Deadline::after_ms(TX_WAIT_MS);
        let mut build = Some(build);
        loop {
            let queued = self.try_queue(|buf| build.take().map_or(0, |b| b(buf)))?;
            if queued {
                self.kick();
                return Ok(());
            }
            self.kick();
            if deadline.expired() {
                return fail!(
                    "net: no transmit buffer came back within {TX_WAIT_MS} ms (in flight {:#x})",
                    self.tx_busy
                );
            }
            core::hint::spin_loop();
        }
    }

    /// Sends a copy of received frame `r` after `patch` has edited it.
    pub fn reply(&mut self, r: Received, patch: impl FnOnce(&mut [u8])) -> TestResult {
        let rx = self.rx_buf(r.id);
        self.send(|buf| {
            // SAFETY: as for `frame`: the received buffer holds r.len bytes
            // after the header and is ours until released; it is a different
            // buffer (rx_area) from the transmit one being filled (tx_area).
            let frame = unsafe { core::slice::from_raw_parts(rx.add(HDR_LEN), r.len) };
            buf[..r.len].copy_from_slice(frame);
            patch(&mut buf[..r.len]);
            r.len
        })
    }

    /// Waits until the device has used every queued transmit buffer.
    pub fn drain_tx(&mut self, deadline: Deadline) -> TestResult {
        self.kick();
        loop {
            self.reclaim_tx()?;
            if self.tx_busy == 0 {
                return Ok(());
            }
            if deadline.expired() {
                return fail!(
                    "net: transmit buffers {:#x} not used by the device in time",
                    self.tx_busy
                );
            }
            core::hint::spin_loop();
        }
    }
}

/// Reads the MAC address byte by byte, retrying while ConfigGeneration
/// changes (bounded).
fn read_mac(mmio: Mmio) -> Mac {
    let mut mac = [0u8; 6];
    for _ in 0..8 {
        let generation = mmio.read32(reg::CONFIG_GENERATION);
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = mmio.config8(i);
        }
        if mmio.read32(reg::CONFIG_GENERATION) == generation {
            break;
        }
    }
    mac
}
