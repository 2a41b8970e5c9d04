//! Keel's portable virtio layer: the split virtqueue, the virtio-mmio transport and the
//! console, block, rng, net and vsock device models. `#![no_std]` + `alloc`; the `std` feature adds
//! host backends (`FileBackend`, `OsEntropy`, `FdConsoleInput` in `host`).
//!
//! # Public API
//!
//! ```text
//! queue::Queue::new(max_size: u16) -> Queue
//!   set_size / set_ready / set_desc_table / set_avail_ring / set_used_ring /
//!   set_event_idx / set_indirect, validate(&M) -> Result<(), QueueError>,
//!   pop(&mut self, &M) -> Result<Option<DescriptorChain>, QueueError>,
//!   add_used(&mut self, &M, head: u16, len: u32) -> Result<(), QueueError>,
//!   needs_notification(&mut self, &M) -> Result<bool, QueueError>      (M: GuestMemory + ?Sized)
//! queue::DescriptorChain: head(), segments(), readable(), writable(), readable_len(),
//!   writable_len(), require_readable_only(), require_writable_only(),
//!   read_at(&M, offset, &mut [u8]), read_all(&M) -> Vec<u8>, write_at(&M, offset, &[u8])
//!
//! device::VirtioDevice (trait): device_type(), name(), queue_max_sizes(), device_features(),
//!   read_config(offset, &mut [u8]), write_config(offset, &[u8]),
//!   active_queues() -> &mut Option<ActiveQueues> (the one required hook the defaults use),
//!   activate(GuestMemoryRef, Vec<Queue>, acked_features: u64) -> Result<(), DeviceError> (default:
//!   store them in active_queues()), reset() (default: clear it), process_queue(queue: u16) -> Result<bool, DeviceError>, poll() -> Result<bool, DeviceError>,
//!   event_sources() -> Vec<(EventToken, EventSource)> (default: none),
//!   handle_event(EventToken) -> Result<bool, DeviceError> (default: Err(NoSuchEvent)),
//!   backlogged_event() -> Option<EventToken> (default: None; a source to deliver again),
//!   poll_interval_ms() -> Option<u32> (default: None; how often the VMM must call poll())
//!   (also implemented for Box<dyn VirtioDevice>)
//! device::EventSource(pub u64) (fd number on Linux, Microkit channel on seL4), device::EventToken(pub u32)
//! device::ActiveQueues { memory, queues }: get(i) -> (&dyn GuestMemory, &mut Queue), needs_notification(i)
//! device::read_config_bytes(config: &[u8], offset, &mut [u8]); device::{device_type, features} consts
//! device::DeviceFailure { device: &'static str, error: DeviceError }  (Display: "virtio-blk: queue 0: …")
//!
//! mmio::MmioTransport::new(device: D, memory: GuestMemoryRef, irq: Arc<dyn IrqLine>) -> MmioTransport<D>
//!   (GuestMemoryRef = Arc<dyn GuestMemory + Send + Sync>; mapped RAM: Arc::new(ram))
//!   impl keel_core::SyncBusDevice (Bus::insert_sync) and keel_core::BusDevice; all &self:
//!   notify(queue: u16); poll(); event_sources(); handle_event(EventToken);
//!   backlogged_event() -> Option<EventToken>;
//!   take_error() -> Option<DeviceFailure>; reset(); set_notifier(Arc<dyn QueueNotifier>);
//!   lock_device() -> MutexGuard<D>; name(); num_queues(); status(); interrupt_status();
//!   is_active(); offered_features(); and device(&mut self) / device_mut(&mut self) -> &D / &mut D;
//!   mmio::QueueNotifier (trait: notify(&self, queue: u16)) for trapped QueueNotify writes;
//!   mmio::{MMIO_WINDOW_SIZE, VENDOR_ID, reg, status} consts. Locking: queue work holds the
//!   device side only; register accesses never wait for it (docs/virtio.md "Locking")
//!
//! console::Console::new(output: O: ConsoleOutput) [.with_size(cols, rows)] [.with_input(I: ConsoleInput)]
//!   -> Console<O, I = NoInput>; push_input(&[u8]) -> usize (accepted); ConsoleOutput::write(&mut self, &[u8]);
//!   ConsoleInput: event_source() -> Option<EventSource>, read(&mut [u8]) -> usize (non-blocking);
//!   its event is console::INPUT_EVENT
//! block::Block::new(backend: B: BlockBackend, id: impl AsRef<[u8]>);
//!   BlockBackend: size(), read_only(), read_at, write_at, flush, discard -> Result<(), BlockError>,
//!   optional read_vectored_at / write_vectored_at(offset, &[GuestIoSlice]) -> Result<Vectored, _>
//!   (straight between backend and guest RAM when GuestMemory::mapped() is Some; default
//!   Vectored::Unsupported, or memory without a mapping: bounce buffer)
//!   block::MemoryBackend::new(T) / ::read_only(T)   (T: AsRef<[u8]> + AsMut<[u8]> + Send)
//! forward_blk::ForwardBlock::new(ForwardDisk { server, geometry, size, read_only, timeout_ms,
//!   serial }, ForwardLink { windows, bell: Box<dyn ForwardBell>, wake: Option<EventSource>,
//!   clock: Box<dyn Clock>, first_id }): a served disk, asynchronous (docs/driver-vms.md);
//!   counters() -> ForwardBlockCounters; its event is forward_blk::RESPONSE_EVENT
//! forward::{ForwardClient (blocking BlockBackend), ForwardServer, ClientRange, ForwardGeometry}
//! net::Net::new(backend: B: NetBackend, mac: [u8; 6]) [.with_mtu(u16) -> Result<Net<B>, NetError>];
//!   counters() -> NetCounters { tx_frames, tx_bytes, rx_frames, rx_bytes, tx_dropped: TxDrops,
//!   rx_dropped: RxDrops }; NetBackend: send(&[u8]) -> Result<(), NetError>,
//!   recv(&mut [u8]) -> Option<usize> (non-blocking), event_source() -> Option<EventSource>,
//!   backlogged() -> bool (default false: recv's None stopped short, call again);
//!   its event is net::RX_EVENT
//! rng::Rng::new(source: E: EntropySource); EntropySource::fill(&mut [u8]) -> Result<(), EntropyError>
//! vsock::Vsock::new(cid: u32, host: H: VsockHost) [.with_peer(cid: u32, link: Box<dyn NetBackend>)];
//!   VsockHost: event_source(), accept() -> Option<(ConnId, port)>, accepted(conn, host_port),
//!   connect(port) -> Result<ConnId, VsockHostError>, read(conn, &mut [u8]) -> Result<HostRead, _>,
//!   write(conn, &[u8]) -> Result<usize, _>, shutdown_write(conn), close(conn) (none may block);
//!   vsock::NoHost refuses every host connection; host event vsock::HOST_EVENT, peer i's
//!   EventToken(PEER_EVENT_BASE + i); docs/vsock.md
//! std only: FileBackend::open(path, read_only: bool) -> io::Result<FileBackend>,
//!           OsEntropy::open() -> io::Result<OsEntropy>,
//!           FdConsoleInput::new(OwnedFd) / ::stdin() -> io::Result<FdConsoleInput>, has_ended()
//! ```
//!
//! A VMM wires a device as
//! `Arc::new(MmioTransport::new(Block::new(FileBackend::open(p, false)?, "disk0"), Arc::new(ram), irq))`,
//! inserts it on its MMIO bus (`insert_sync`), calls `notify(q)` from ioeventfd threads, and logs
//! `take_error()` after each access (`virtio-blk: queue 0: …`). See `docs/virtio.md`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod block;
mod boxed;
pub mod console;
pub mod device;
pub mod forward;
pub mod forward_blk;
#[cfg(feature = "std")]
pub mod host;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
/// A test-side guest driver over mock guest memory, shared by the unit tests, the bounded
/// exhaustive checks (`tests/exhaustive.rs`) and the fuzz targets (`crates/keel-fuzz`).
/// Not part of the device API: built only for tests or with the `testing` feature.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
#[allow(missing_debug_implementations)] // test scaffolding
pub mod testing;
pub mod vsock;

pub use block::{Block, BlockBackend, BlockError, GuestIoSlice, MemoryBackend, Vectored};
pub use console::{Console, ConsoleInput, ConsoleOutput, NoInput};
pub use device::{DeviceError, DeviceFailure, EventSource, EventToken, VirtioDevice};
pub use forward_blk::{ForwardBlock, ForwardDisk, ForwardLink};
#[cfg(feature = "std")]
pub use host::{FdConsoleInput, FileBackend, OsEntropy};
pub use mmio::{MmioTransport, QueueNotifier};
pub use net::{Net, NetBackend, NetCounters, NetError, RxDrops, TxDrops};
pub use queue::{ChainError, DescriptorChain, Queue, QueueError, Segment};
pub use rng::{EntropyError, EntropySource, Rng};
