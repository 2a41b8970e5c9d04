//! Ports: a VM's network device and the switch, connected by a pair of frame rings.
//!
//! A port is two [`crate::ring`] rings in shared memory ([`PortWindows`]): `to_switch`,
//! which the VMM produces and the switch consumes, and `from_switch`, the other way round.
//! Each side signals the other through a [`Doorbell`] (an eventfd write on Linux, a Microkit
//! notification on seL4) only when the ring protocol says the other side sleeps and asked to
//! be woken up. Everything here is the same on both backends; they only supply the windows,
//! the doorbells and the event the VMM waits on.
//!
//! - VMM side: [`VmmPort`] is a [`keel_virtio::net::NetBackend`], so `Net<VmmPort>` is a
//!   virtio-net card on the switch. Its [`NetBackend::recv`] keeps the device's
//!   edge-triggered event contract: once it returned `None`, the next frame the switch
//!   publishes rings the VMM's doorbell.
//! - Switch side: [`SwitchService`] owns the [`Switch`] and one [`SwitchPort`] per switch
//!   port. [`SwitchService::service`] moves frames from every `to_switch` ring through the
//!   switch into the `from_switch` rings and says whether the caller may sleep.
//!
//! Who notifies whom: a VMM rings the switch's doorbell when a frame it sent finds the
//! switch asleep ([`Sent::Queued`] with `notify`); the switch rings a port's doorbell (the
//! VMM's event) at most once per [`SwitchService::service`] call when frames it delivered
//! found that VMM's port asleep. Neither side ever blocks on the other: a full ring drops
//! the frame and counts it. docs/net.md has the whole picture.

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use keel_virtio::EventSource;
use keel_virtio::net::{NetBackend, NetError};

use crate::ring::{
    FrameConsumer, FrameError, FrameProducer, FrameWindow, MAX_FRAME, Recv, RxCounters, Sent,
    TxCounters,
};
use crate::switch::{FrameSource, PortCounters, PortId, Switch, SwitchError};

/// Ring steps (frames taken or skipped, wake-up re-checks) one [`VmmPort`] `recv` call does
/// at most. A `recv` that skipped this many unusable frames (longer than the device's buffer,
/// or bad slots) without finding one to deliver returns `None` and reports
/// [`NetBackend::backlogged`], so a switch that floods the ring with them cannot hold the
/// VMM's I/O loop (on seL4, the whole VMM protection domain).
pub const RECV_STEPS: usize = 64;

/// Signal the other side of a port: an eventfd write on Linux, a Microkit notification on
/// seL4. Called only when the ring protocol says the other side sleeps and asked to be woken
/// up; must not block.
pub trait Doorbell: Send + Sync {
    /// Wake the other side up (a spurious ring is harmless).
    fn ring(&self);
}

impl<D: Doorbell + ?Sized> Doorbell for Arc<D> {
    fn ring(&self) {
        (**self).ring()
    }
}

/// The two rings of one port.
#[derive(Debug)]
pub struct PortWindows {
    /// Frames from the VMM to the switch: the VMM produces, the switch consumes.
    pub to_switch: FrameWindow,
    /// Frames from the switch to the VMM: the switch produces, the VMM consumes.
    pub from_switch: FrameWindow,
}

/// Why a port set-up was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// [`SwitchService::new`] got a different number of ports than the switch has.
    #[error("{windows} port windows given for a switch with {ports} ports")]
    PortCount {
        /// Ports given (windows and doorbell).
        windows: usize,
        /// Ports the switch has.
        ports: usize,
    },
}

/// What a [`VmmPort`] moved and dropped (local numbers, trustworthy unless said otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmmPortCounters {
    /// The ring to the switch (this side produces it): frames sent, dropped because it was
    /// full or the switch's index was wild, refused because too long, doorbell rings.
    pub to_switch: TxCounters,
    /// The ring from the switch (this side consumes it): frames taken, bad slots skipped,
    /// wild switch indices seen.
    pub from_switch: RxCounters,
    /// Frames from the switch dropped because they were longer than the device's buffer.
    pub rx_too_long: u64,
    /// Whether the ring from the switch broke on a wild index: no frame comes from it again.
    pub rx_broken: bool,
    /// The switch's own count of frames it dropped on the ring to this port (untrusted, for
    /// reports only).
    pub switch_dropped: u64,
}

/// The VMM side of a port: a [`NetBackend`] over the port's rings.
///
/// - [`NetBackend::send`] puts the frame in `to_switch` and rings the switch's doorbell when
///   the switch sleeps. A full ring is [`NetError::Full`]; a frame longer than
///   [`MAX_FRAME`] is [`NetError::TooLong`]; a wild switch index is
///   [`NetError::Disconnected`] (for as long as it stays wild). Each is counted.
/// - [`NetBackend::recv`] takes the next frame from `from_switch`. When the ring is empty it
///   arms the wake-up (`c_arm`, `c_recheck` of the ring protocol) before returning `None`,
///   so the next frame published rings this port's event; a frame it takes disarms it again
///   (`c_wake`), so the switch does not ring while the device is busy. A frame longer than
///   the buffer is dropped and counted (never truncated) and the next one is looked at, for
///   at most [`RECV_STEPS`] steps (then `None` with [`NetBackend::backlogged`] set). A
///   broken ring (wild switch index) yields `None` for ever, counted once.
/// - [`NetBackend::event_source`] is the event given to [`VmmPort::new`]: what the switch's
///   doorbell for this port signals.
///
/// A new port is awake: it asks for a notification only after its first `recv` found the
/// ring empty (the device calls `recv` when the guest posts receive buffers, so nothing is
/// missed before that).
pub struct VmmPort {
    tx: FrameProducer,
    rx: FrameConsumer,
    bell: Box<dyn Doorbell>,
    event: Option<EventSource>,
    /// Whether `rx`'s wake-up is armed (this side sleeps as far as the switch knows).
    armed: bool,
    /// The last `recv` stopped after [`RECV_STEPS`] steps.
    backlog: bool,
    /// Frames land here when the device's buffer is shorter than [`MAX_FRAME`].
    scratch: Box<[u8; MAX_FRAME]>,
    rx_too_long: u64,
}

impl fmt::Debug for VmmPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmmPort")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .field("event", &self.event)
            .field("armed", &self.armed)
            .field("backlog", &self.backlog)
            .field("rx_too_long", &self.rx_too_long)
            .finish_non_exhaustive()
    }
}

impl VmmPort {
    /// The VMM side of the port in `windows`: it produces `to_switch` and consumes
    /// `from_switch` (attaching to the indices already there: a restarted VMM resumes),
    /// rings `bell` to wake the switch up, and declares `event` (what the switch's doorbell
    /// for this port signals) as the device's event source.
    pub fn new(windows: PortWindows, bell: Box<dyn Doorbell>, event: Option<EventSource>) -> Self {
        VmmPort {
            tx: FrameProducer::attach(windows.to_switch),
            rx: FrameConsumer::attach(windows.from_switch),
            bell,
            event,
            armed: false,
            backlog: false,
            scratch: Box::new([0; MAX_FRAME]),
            rx_too_long: 0,
        }
    }

    /// What the port moved and dropped so far.
    pub fn counters(&self) -> VmmPortCounters {
        VmmPortCounters {
            to_switch: self.tx.counters(),
            from_switch: self.rx.counters(),
            rx_too_long: self.rx_too_long,
            rx_broken: self.rx.is_broken(),
            switch_dropped: self.rx.producer_dropped(),
        }
    }

    /// `c_wake`: the port is busy taking frames, the switch need not ring.
    fn wake(&mut self) {
        if self.armed {
            self.rx.disarm();
            self.armed = false;
        }
    }
}

impl NetBackend for VmmPort {
    /// [`VmmPort::counters`] by name: `port_tx_*` for the ring to the switch, `port_rx_*`
    /// for the ring from it.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = VmmPort::counters(self);
        let (tx, rx) = (c.to_switch, c.from_switch);
        alloc::vec![
            ("port_tx_frames", tx.frames),
            ("port_tx_bytes", tx.bytes),
            ("port_tx_dropped_full", tx.dropped_full),
            ("port_tx_dropped_wild", tx.dropped_wild),
            ("port_tx_refused", tx.refused),
            ("port_tx_notifications", tx.notifications),
            ("port_rx_frames", rx.frames),
            ("port_rx_bytes", rx.bytes),
            ("port_rx_bad_length", rx.bad_length),
            ("port_rx_wild_index", rx.wild_index),
            ("port_rx_too_long", c.rx_too_long),
            ("port_rx_broken", u64::from(c.rx_broken)),
            ("port_switch_dropped", c.switch_dropped),
        ]
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        match self.tx.send(frame) {
            Ok(Sent::Queued { notify }) => {
                // model: p_notify
                if notify {
                    self.bell.ring();
                }
                Ok(())
            }
            Ok(Sent::Full) => Err(NetError::Full { len: frame.len() }),
            Err(FrameError::BadLength { len }) if len > MAX_FRAME => Err(NetError::TooLong {
                len,
                max: MAX_FRAME,
            }),
            Err(FrameError::BadLength { len }) => Err(NetError::Other(format!(
                "frame of {len} bytes is not 1..={MAX_FRAME} bytes long"
            ))),
            // A wild switch index: dropped and counted (`dropped_wild`).
            Err(FrameError::Ring(_)) => Err(NetError::Disconnected),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.backlog = false;
        for _ in 0..RECV_STEPS {
            // model: c_poll
            let got = match buf.first_chunk_mut::<MAX_FRAME>() {
                Some(direct) => self.rx.recv(direct),
                None => self.rx.recv(&mut self.scratch),
            };
            match got {
                Ok(Recv::Frame(n)) => {
                    self.wake();
                    if buf.len() >= MAX_FRAME {
                        return Some(n);
                    }
                    match (buf.get_mut(..n), self.scratch.get(..n)) {
                        (Some(dst), Some(src)) => {
                            dst.copy_from_slice(src);
                            return Some(n);
                        }
                        _ => self.rx_too_long += 1,
                    }
                }
                // Skipped and counted by the ring.
                Ok(Recv::BadLength { .. }) => self.wake(),
                Ok(Recv::Empty) => {
                    if self.armed {
                        // Armed and still empty: the switch rings for the next frame.
                        return None;
                    }
                    // model: c_arm, c_recheck
                    match self.rx.arm_wakeup() {
                        Ok(true) => {
                            self.armed = true;
                            return None;
                        }
                        // Frames arrived meanwhile (the request is withdrawn): take them.
                        Ok(false) => {}
                        // The ring broke (counted): nothing will come from it.
                        Err(_) => return None,
                    }
                }
                // A wild switch index (counted once, the ring is broken) or a broken ring.
                Err(_) => return None,
            }
        }
        self.backlog = true;
        None
    }

    fn event_source(&self) -> Option<EventSource> {
        self.event
    }

    fn backlogged(&self) -> bool {
        self.backlog
    }
}

/// The switch side of one port: it consumes `to_switch`, produces `from_switch` and rings
/// the port's VMM through its doorbell.
pub struct SwitchPort {
    rx: FrameConsumer,
    tx: FrameProducer,
    bell: Box<dyn Doorbell>,
    /// Whether `rx`'s wake-up is armed.
    armed: bool,
}

impl fmt::Debug for SwitchPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchPort")
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl SwitchPort {
    /// The switch side of the port in `windows` (attaching to the indices already there),
    /// ringing `bell` to wake the port's VMM up.
    pub fn new(windows: PortWindows, bell: Box<dyn Doorbell>) -> SwitchPort {
        SwitchPort {
            rx: FrameConsumer::attach(windows.to_switch),
            tx: FrameProducer::attach(windows.from_switch),
            bell,
            armed: false,
        }
    }
}

impl FrameSource for SwitchPort {
    /// The next frame of `to_switch` (a bad slot or a broken ring yields `None`, counted
    /// by the ring).
    fn next_frame(&mut self, buf: &mut [u8; MAX_FRAME]) -> Option<usize> {
        self.rx.next_frame(buf)
    }
}

/// What [`SwitchService::service`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// There may be more work: call again (after other work, if the caller has any).
    Busy,
    /// Every input ring was empty with its wake-up armed: sleep until a doorbell rings.
    Idle,
}

/// One port's figures as the switch sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortReport {
    /// The switch's counters for the port (frames in and out, drops by reason).
    pub switch: PortCounters,
    /// The ring from the port's VMM (the switch consumes it).
    pub to_switch: RxCounters,
    /// Whether that ring broke on a wild index written by the VMM.
    pub to_switch_broken: bool,
    /// The VMM's own count of frames it dropped on that ring (untrusted, for reports only).
    pub vmm_dropped: u64,
    /// The ring to the port's VMM (the switch produces it): frames delivered, dropped
    /// because it was full or the VMM's index was wild, doorbell rings asked for.
    pub from_switch: TxCounters,
}

/// The switch and its ports' rings: what a switch process (Linux) or protection domain
/// (seL4) runs.
///
/// The caller waits for any of the ports' doorbells to the switch (eventfds with poll or
/// epoll, Microkit notifications), then calls [`SwitchService::service`] until it returns
/// [`Service::Idle`], then waits again. Every call does bounded work, so the caller can
/// interleave other work between `Busy` calls.
pub struct SwitchService {
    switch: Switch,
    ports: Vec<SwitchPort>,
}

impl fmt::Debug for SwitchService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchService")
            .field("switch", &self.switch)
            .field("ports", &self.ports)
            .finish()
    }
}

impl SwitchService {
    /// Serve `switch` over `ports`: `ports[i]` holds the windows of switch port
    /// `PortId(i)` and the doorbell that wakes that port's VMM. The caller added every port
    /// to the switch (with its MAC, or as an uplink) and allowed the pairs; their number must
    /// match.
    pub fn new(
        switch: Switch,
        ports: Vec<(PortWindows, Box<dyn Doorbell>)>,
    ) -> Result<SwitchService, PortError> {
        if ports.len() != switch.ports() {
            return Err(PortError::PortCount {
                windows: ports.len(),
                ports: switch.ports(),
            });
        }
        Ok(SwitchService {
            switch,
            ports: ports
                .into_iter()
                .map(|(w, bell)| SwitchPort::new(w, bell))
                .collect(),
        })
    }

    /// The switch (MAC table, configuration, counters).
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// One round of work at `now_ms` (monotonic milliseconds):
    ///
    /// 1. Withdraw the wake-up requests of the last idle round (`c_wake`).
    /// 2. Take up to `budget` (at least 1) frames from the `to_switch` rings, round-robin
    ///    ([`Switch::poll`]), and switch them.
    /// 3. Move every frame queued for a port into its `from_switch` ring. A frame that finds
    ///    the ring full is **dropped** and counted there ([`TxCounters::dropped_full`]): the
    ///    switch queue is emptied on every call, so no frame waits for a "space available"
    ///    signal the rings do not have. Ring each port's doorbell once if any frame found its
    ///    VMM asleep.
    /// 4. If no frame was taken, arm the wake-up of every input ring: [`Service::Idle`] when
    ///    all were still empty (a frame sent later rings the switch's doorbell), else
    ///    [`Service::Busy`]. A broken input ring counts as empty.
    ///
    /// Work per call: O(`budget` × (ports + MAC table)) to switch, at most ports ×
    /// `queue_depth` frames to deliver, one arm per port.
    pub fn service(&mut self, now_ms: u64, budget: usize) -> Service {
        for p in &mut self.ports {
            if p.armed {
                // model: c_wake
                p.rx.disarm();
                p.armed = false;
            }
        }
        let taken = self.switch.poll(&mut self.ports, now_ms, budget);
        self.deliver();
        if taken > 0 {
            return Service::Busy;
        }
        let mut idle = true;
        for p in &mut self.ports {
            // model: c_arm, c_recheck
            match p.rx.arm_wakeup() {
                Ok(true) => p.armed = true,
                Ok(false) => idle = false,
                // Broken (counted): nothing comes from it again.
                Err(_) => {}
            }
        }
        if idle { Service::Idle } else { Service::Busy }
    }

    /// Move the switch's output queues into the ports' `from_switch` rings.
    fn deliver(&mut self) {
        for (i, port) in self.ports.iter_mut().enumerate() {
            // At most max_ports (<= 4096) ports.
            let id = PortId(i as u16);
            let mut notify = false;
            while let Some(frame) = self.switch.peek_output(id) {
                // Full ring, wild VMM index, bad length: dropped and counted by the ring.
                if let Ok(Sent::Queued { notify: n }) = port.tx.send(frame) {
                    notify |= n;
                }
                self.switch.pop_output(id);
            }
            if notify {
                // model: p_notify (once for the batch)
                port.bell.ring();
            }
        }
    }

    /// `port`'s figures: the switch's counters and both rings'.
    pub fn counters(&self, port: PortId) -> Result<PortReport, SwitchError> {
        let switch = self.switch.counters(port)?;
        let p = self
            .ports
            .get(usize::from(port.0))
            .ok_or(SwitchError::NoSuchPort { port })?;
        Ok(PortReport {
            switch,
            to_switch: p.rx.counters(),
            to_switch_broken: p.rx.is_broken(),
            vmm_dropped: p.rx.producer_dropped(),
            from_switch: p.tx.counters(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::window_len;
    use crate::switch::{Mac, SwitchConfig};
    use alloc::vec;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Byte offsets of ring header words a hostile party writes (see keel_core::ring).
    const HEAD: usize = 0;
    const TAIL: usize = 128;

    /// The shared memory of one port: two zeroed, 8-aligned heap windows.
    struct Shm {
        to_switch: Vec<u64>,
        from_switch: Vec<u64>,
        slots: u64,
    }

    impl Shm {
        fn new(slots: u64) -> Shm {
            let words = window_len(slots).unwrap() / 8;
            Shm {
                to_switch: vec![0; words],
                from_switch: vec![0; words],
                slots,
            }
        }

        /// Windows on this memory (each side of the port gets its own).
        fn windows(&mut self) -> PortWindows {
            let len = self.to_switch.len() * 8;
            // SAFETY: the vectors outlive every port of a test (`Lab` keeps them), are only
            // accessed through windows (and `poke` between calls), and are 8-aligned.
            let w = |v: &mut Vec<u64>| unsafe {
                FrameWindow::new(v.as_mut_ptr().cast(), len, self.slots).unwrap()
            };
            PortWindows {
                to_switch: w(&mut self.to_switch),
                from_switch: w(&mut self.from_switch),
            }
        }
    }

    /// A doorbell that counts its rings.
    #[derive(Debug, Default)]
    struct Count(AtomicU64);

    impl Doorbell for Count {
        fn ring(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn mac(n: u8) -> Mac {
        Mac([0x02, 0, 0, 0, 0, n])
    }

    /// An Ethernet frame from `src` to `dst` of `len` bytes (>= 16) with `tag` after the
    /// header.
    fn frame(dst: Mac, src: Mac, len: usize, tag: u16) -> Vec<u8> {
        let mut f = vec![0x5a; len];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14..16].copy_from_slice(&tag.to_le_bytes());
        f
    }

    fn cfg() -> SwitchConfig {
        SwitchConfig {
            max_ports: 4,
            mac_table: 8,
            queue_depth: 16,
            flood_depth: 8,
            // Storm control out of the way: these tests flood (unknown unicast to a VMM
            // that never sends) at a fixed time; keel_net::switch tests storm control.
            flood_rate: crate::switch::MAX_FLOOD_RATE,
            flood_burst: crate::switch::MAX_FLOOD_BURST,
            ..SwitchConfig::default()
        }
    }

    /// VMM ports with MACs 1..=n on one switch service, the pairs in `allow` allowed.
    struct Lab {
        vmm: Vec<VmmPort>,
        sw: SwitchService,
        /// The doorbell the VMMs ring (one switch process, one wait for all its ports).
        switch_bell: Arc<Count>,
        /// The doorbell the switch rings for each port's VMM.
        vmm_bells: Vec<Arc<Count>>,
        shm: Vec<Shm>,
    }

    impl Lab {
        fn new(n: u8, allow: &[(u16, u16)], slots: u64, cfg: SwitchConfig) -> Lab {
            let mut switch = Switch::new(cfg).unwrap();
            for i in 1..=n {
                switch.add_port(mac(i)).unwrap();
            }
            for &(a, b) in allow {
                switch.allow(PortId(a), PortId(b)).unwrap();
            }
            let mut shm: Vec<Shm> = (0..n).map(|_| Shm::new(slots)).collect();
            let switch_bell = Arc::new(Count::default());
            let vmm_bells: Vec<Arc<Count>> = (0..n).map(|_| Arc::default()).collect();
            let vmm = shm
                .iter_mut()
                .enumerate()
                .map(|(i, m)| {
                    let bell: Box<dyn Doorbell> = Box::new(Arc::clone(&switch_bell));
                    VmmPort::new(m.windows(), bell, Some(EventSource(100 + i as u64)))
                })
                .collect();
            let ports = shm
                .iter_mut()
                .zip(&vmm_bells)
                .map(|(m, b)| (m.windows(), Box::new(Arc::clone(b)) as Box<dyn Doorbell>))
                .collect();
            let sw = SwitchService::new(switch, ports).unwrap();
            Lab {
                vmm,
                sw,
                switch_bell,
                vmm_bells,
                shm,
            }
        }

        /// Ports 0..n, every pair allowed, 8-slot rings.
        fn all(n: u8) -> Lab {
            let mut allow = Vec::new();
            for a in 0..u16::from(n) {
                for b in a + 1..u16::from(n) {
                    allow.push((a, b));
                }
            }
            Lab::new(n, &allow, 8, cfg())
        }

        fn send(&mut self, port: usize, f: &[u8]) -> Result<(), NetError> {
            self.vmm[port].send(f)
        }

        fn recv(&mut self, port: usize) -> Option<Vec<u8>> {
            let mut buf = [0u8; MAX_FRAME];
            let n = self.vmm[port].recv(&mut buf)?;
            Some(buf[..n].to_vec())
        }

        /// Everything port `port` can receive now.
        fn drain(&mut self, port: usize) -> Vec<Vec<u8>> {
            core::iter::from_fn(|| self.recv(port)).collect()
        }

        /// Service the switch until it is idle; the calls it took.
        fn run(&mut self) -> usize {
            for calls in 1..=100 {
                if self.sw.service(0, 16) == Service::Idle {
                    return calls;
                }
            }
            panic!("the switch did not become idle in 100 calls");
        }

        fn report(&self, port: u16) -> PortReport {
            self.sw.counters(PortId(port)).unwrap()
        }
    }

    #[test]
    fn frame_from_one_vm_reaches_the_other() {
        let mut lab = Lab::all(2);
        let f = frame(mac(2), mac(1), 60, 7);

        lab.send(0, &f).unwrap();
        lab.run();

        assert_eq!(lab.drain(1), [f]);
        assert_eq!(lab.drain(0), Vec::<Vec<u8>>::new());
        assert_eq!(lab.report(1).from_switch.frames, 1);
        assert_eq!(lab.vmm[0].counters().to_switch.frames, 1);
    }

    #[test]
    fn vmm_port_names_its_ring_counters_for_the_device() {
        let mut lab = Lab::all(2);
        lab.send(0, &frame(mac(2), mac(1), 60, 7)).unwrap();
        lab.run();
        lab.drain(1);

        let sent = NetBackend::counters(&lab.vmm[0]);
        let got = NetBackend::counters(&lab.vmm[1]);

        assert!(sent.contains(&("port_tx_frames", 1)), "{sent:?}");
        assert!(sent.contains(&("port_tx_bytes", 60)), "{sent:?}");
        assert!(got.contains(&("port_rx_frames", 1)), "{got:?}");
        assert!(got.contains(&("port_tx_frames", 0)), "{got:?}");
    }

    #[test]
    fn vm_that_is_not_allowed_gets_nothing() {
        let mut lab = Lab::new(3, &[(0, 1)], 8, cfg());

        lab.send(0, &frame(Mac::BROADCAST, mac(1), 60, 1)).unwrap();
        lab.send(0, &frame(mac(3), mac(1), 60, 2)).unwrap();
        lab.run();

        assert_eq!(lab.drain(1).len(), 2); // the broadcast, and the unknown unicast flooded
        assert_eq!(lab.drain(2), Vec::<Vec<u8>>::new());
        assert_eq!(lab.report(2).switch.tx_frames, 0);
    }

    #[test]
    fn spoofed_source_is_dropped_and_counted_on_its_port() {
        let mut lab = Lab::all(3);

        lab.send(0, &frame(Mac::BROADCAST, mac(2), 60, 0)).unwrap();
        lab.run();

        assert_eq!(lab.drain(1), Vec::<Vec<u8>>::new());
        assert_eq!(lab.drain(2), Vec::<Vec<u8>>::new());
        assert_eq!(lab.report(0).switch.drop_spoofed, 1);
    }

    #[test]
    fn storm_from_one_port_does_not_starve_another() {
        let mut lab = Lab::all(3);
        let (storm, talker, listener) = (0, 1, 2);
        let mut heard = Vec::new();
        let mut storm_heard = 0;
        let mut calls = 0;

        // Each round the storm fills its ring with broadcasts, the talker sends one frame to
        // the listener, the switch gets one service call, and the VMMs take what came.
        for tag in 0..50 {
            let mut t = 0u16;
            while lab
                .send(storm, &frame(Mac::BROADCAST, mac(1), 60, t))
                .is_ok()
            {
                t += 1;
            }
            lab.send(talker, &frame(mac(3), mac(2), 60, tag)).unwrap();
            lab.sw.service(0, 8);
            calls += 1;
            for f in lab.drain(listener) {
                if f[6..12] == mac(2).0 {
                    heard.push(u16::from_le_bytes([f[14], f[15]]));
                } else {
                    storm_heard += 1;
                }
            }
            lab.drain(talker);
        }
        calls += lab.run();
        for f in lab.drain(listener) {
            if f[6..12] == mac(2).0 {
                heard.push(u16::from_le_bytes([f[14], f[15]]));
            }
        }

        std::println!(
            "talker: 50 frames in {calls} service calls; storm: {storm_heard} frames heard, {} \
             refused by its full ring",
            lab.vmm[storm].counters().to_switch.dropped_full
        );
        assert_eq!(heard, (0..50).collect::<Vec<u16>>());
        assert!(calls <= 50 + 3, "{calls} service calls");
        assert!(
            storm_heard >= 50,
            "the storm got {storm_heard} frames through"
        );
        assert!(
            lab.vmm[storm].counters().to_switch.dropped_full > 0,
            "the storm was not throttled"
        );
    }

    #[test]
    fn sleeping_vmm_is_rung_when_a_frame_arrives() {
        let mut lab = Lab::all(2);
        assert_eq!(lab.recv(1), None); // finds the ring empty: arms its wake-up
        lab.run();
        assert_eq!(lab.vmm_bells[1].get(), 0);

        lab.send(0, &frame(mac(2), mac(1), 60, 0)).unwrap();
        lab.run();

        assert_eq!(lab.vmm_bells[1].get(), 1);
        assert!(lab.recv(1).is_some());
    }

    #[test]
    fn busy_vmm_is_not_rung_until_it_finds_its_ring_empty_again() {
        let mut lab = Lab::all(2);
        assert_eq!(lab.recv(1), None);
        lab.send(0, &frame(mac(2), mac(1), 60, 0)).unwrap();
        lab.run();
        assert!(lab.recv(1).is_some()); // takes the frame: awake again

        lab.send(0, &frame(mac(2), mac(1), 60, 1)).unwrap();
        lab.run();
        let while_busy = lab.vmm_bells[1].get();
        lab.drain(1);
        lab.send(0, &frame(mac(2), mac(1), 60, 2)).unwrap();
        lab.run();

        assert_eq!(while_busy, 1);
        assert_eq!(lab.vmm_bells[1].get(), 2);
    }

    #[test]
    fn switch_rings_a_vmm_once_per_service_call_however_many_frames_it_delivers() {
        let mut lab = Lab::all(2);
        assert_eq!(lab.recv(1), None);
        for t in 0..5 {
            lab.send(0, &frame(mac(2), mac(1), 60, t)).unwrap();
        }

        lab.sw.service(0, 16);

        assert_eq!(lab.report(1).from_switch.frames, 5);
        assert_eq!(lab.report(1).from_switch.notifications, 5);
        assert_eq!(lab.vmm_bells[1].get(), 1);
    }

    #[test]
    fn idle_switch_is_rung_by_a_frame_sent_while_it_sleeps() {
        let mut lab = Lab::all(2);
        lab.run();
        assert_eq!(lab.switch_bell.get(), 0);

        lab.send(0, &frame(mac(2), mac(1), 60, 0)).unwrap();

        assert_eq!(lab.switch_bell.get(), 1);
        lab.run();
        assert_eq!(lab.drain(1).len(), 1);
    }

    #[test]
    fn switch_that_did_not_go_idle_is_not_rung() {
        let mut lab = Lab::all(2);

        lab.send(0, &frame(mac(2), mac(1), 60, 0)).unwrap();

        assert_eq!(lab.switch_bell.get(), 0);
        lab.run();
        assert_eq!(lab.drain(1).len(), 1);
    }

    #[test]
    fn switch_is_idle_only_once_every_input_ring_is_drained() {
        let mut lab = Lab::all(2);
        for t in 0..3 {
            lab.send(0, &frame(mac(2), mac(1), 60, t)).unwrap();
        }

        let rounds: Vec<Service> = (0..3).map(|_| lab.sw.service(0, 2)).collect();

        assert_eq!(rounds, [Service::Busy, Service::Busy, Service::Idle]);
        assert_eq!(lab.drain(1).len(), 3);
    }

    #[test]
    fn full_ring_to_a_vm_drops_and_counts_without_holding_the_switch() {
        let mut lab = Lab::new(2, &[(0, 1)], 2, cfg());
        for t in 0..2 {
            lab.send(0, &frame(mac(2), mac(1), 60, t)).unwrap();
        }
        lab.run();
        lab.send(0, &frame(mac(2), mac(1), 60, 2)).unwrap();

        let calls = lab.run();

        assert!(calls <= 2, "{calls} calls");
        assert_eq!(lab.report(1).from_switch.dropped_full, 1);
        assert_eq!(lab.vmm[1].counters().switch_dropped, 1);
        assert_eq!(lab.drain(1).len(), 2);
        assert_eq!(lab.sw.switch().queued(PortId(1)), Ok(0));
    }

    #[test]
    fn full_ring_to_the_switch_refuses_the_frame_as_full() {
        let mut lab = Lab::new(2, &[(0, 1)], 2, cfg());
        let f = frame(mac(2), mac(1), 60, 0);
        lab.send(0, &f).unwrap();
        lab.send(0, &f).unwrap();

        let third = lab.send(0, &f);

        assert_eq!(third, Err(NetError::Full { len: 60 }));
        assert_eq!(lab.vmm[0].counters().to_switch.dropped_full, 1);
        assert_eq!(lab.report(0).vmm_dropped, 1);
    }

    #[test]
    fn frame_longer_than_a_ring_slot_is_refused_as_too_long() {
        let mut lab = Lab::all(2);

        let r = lab.send(0, &frame(mac(2), mac(1), MAX_FRAME + 1, 0));

        assert_eq!(
            r,
            Err(NetError::TooLong {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
        assert_eq!(lab.vmm[0].counters().to_switch.refused, 1);
    }

    #[test]
    fn frame_longer_than_the_device_buffer_is_dropped_and_the_next_delivered() {
        let mut lab = Lab::all(2);
        lab.send(0, &frame(mac(2), mac(1), 1000, 0)).unwrap();
        let short = frame(mac(2), mac(1), 100, 1);
        lab.send(0, &short).unwrap();
        lab.run();
        let mut buf = [0u8; 500];

        let n = lab.vmm[1].recv(&mut buf);

        assert_eq!(n, Some(100));
        assert_eq!(buf[..100], short[..]);
        assert_eq!(lab.vmm[1].counters().rx_too_long, 1);
    }

    #[test]
    fn frame_fitting_a_buffer_longer_than_a_slot_is_delivered_whole() {
        let mut lab = Lab::all(2);
        let f = frame(mac(2), mac(1), MAX_FRAME, 3);
        lab.send(0, &f).unwrap();
        lab.run();
        let mut buf = vec![0u8; 65550]; // what Net gives without an MTU

        let n = lab.vmm[1].recv(&mut buf);

        assert_eq!(n, Some(MAX_FRAME));
        assert_eq!(buf[..MAX_FRAME], f[..]);
    }

    #[test]
    fn recv_stops_after_a_bounded_number_of_unusable_frames_and_reports_a_backlog() {
        let cfg = SwitchConfig {
            queue_depth: 128,
            flood_depth: 128,
            ..cfg()
        };
        let mut lab = Lab::new(2, &[(0, 1)], 128, cfg);
        for t in 0..RECV_STEPS + 6 {
            lab.send(0, &frame(mac(2), mac(1), 1000, t as u16)).unwrap();
        }
        let short = frame(mac(2), mac(1), 100, 999);
        lab.send(0, &short).unwrap();
        lab.run();
        let mut buf = [0u8; 500];

        let first = lab.vmm[1].recv(&mut buf);
        let backlogged = lab.vmm[1].backlogged();
        let second = lab.vmm[1].recv(&mut buf);

        assert_eq!((first, backlogged), (None, true));
        assert_eq!(second, Some(100));
        assert!(!lab.vmm[1].backlogged());
        assert_eq!(lab.vmm[1].counters().rx_too_long, RECV_STEPS as u64 + 6);
    }

    #[test]
    fn vmm_port_declares_the_event_it_was_given() {
        let lab = Lab::all(2);

        let events: Vec<_> = lab.vmm.iter().map(|p| p.event_source()).collect();

        assert_eq!(events, [Some(EventSource(100)), Some(EventSource(101))]);
    }

    #[test]
    fn hostile_vmm_writing_a_wild_index_breaks_only_its_own_port() {
        let mut lab = Lab::all(3);
        lab.send(0, &frame(Mac::BROADCAST, mac(1), 60, 0)).unwrap();
        lab.shm[0].to_switch[HEAD / 8] = 1 << 40;
        let f = frame(mac(3), mac(2), 60, 1);
        lab.send(1, &f).unwrap();

        let calls = lab.run();
        lab.send(1, &f).unwrap();
        lab.run();

        assert!(calls <= 3, "{calls} calls");
        assert_eq!(lab.drain(2), [f.clone(), f]);
        let r = lab.report(0);
        assert!(r.to_switch_broken);
        assert_eq!(r.to_switch.wild_index, 1);
        assert!(!lab.report(1).to_switch_broken);
    }

    #[test]
    fn hostile_vmm_writing_a_wild_consumer_index_loses_only_its_own_frames() {
        let mut lab = Lab::all(3);
        lab.shm[1].from_switch[TAIL / 8] = 77;

        lab.send(0, &frame(Mac::BROADCAST, mac(1), 60, 0)).unwrap();
        lab.run();

        assert_eq!(lab.drain(2).len(), 1);
        assert_eq!(lab.report(1).from_switch.dropped_wild, 1);
        assert_eq!(lab.report(2).from_switch.dropped_wild, 0);
    }

    #[test]
    fn hostile_switch_writing_a_wild_index_breaks_the_vmm_port_for_good() {
        let mut lab = Lab::all(2);
        lab.send(1, &frame(mac(1), mac(2), 60, 0)).unwrap();
        lab.run();
        lab.shm[0].from_switch[HEAD / 8] = 1 << 40;

        let first = lab.recv(0);
        let later = lab.recv(0);
        let sent = lab.send(0, &frame(mac(2), mac(1), 60, 1));

        assert_eq!((first, later), (None, None));
        let c = lab.vmm[0].counters();
        assert!(c.rx_broken);
        assert_eq!(c.from_switch.wild_index, 1);
        assert_eq!(sent, Ok(()));
    }

    #[test]
    fn wrong_number_of_port_windows_is_refused() {
        let mut switch = Switch::new(cfg()).unwrap();
        switch.add_port(mac(1)).unwrap();
        switch.add_port(mac(2)).unwrap();
        let mut shm = Shm::new(2);
        let bell: Box<dyn Doorbell> = Box::new(Count::default());

        let r = SwitchService::new(switch, vec![(shm.windows(), bell)]);

        assert_eq!(
            r.err(),
            Some(PortError::PortCount {
                windows: 1,
                ports: 2
            })
        );
    }

    #[test]
    fn uplink_port_is_served_like_a_vm_port() {
        let mut switch = Switch::new(cfg()).unwrap();
        let vm = switch.add_port(mac(1)).unwrap();
        let up = switch.add_uplink().unwrap();
        switch.allow(vm, up).unwrap();
        let mut shm = [Shm::new(8), Shm::new(8)];
        let bell = || -> Box<dyn Doorbell> { Box::new(Count::default()) };
        let ports = shm.iter_mut().map(|m| (m.windows(), bell())).collect();
        let mut sw = SwitchService::new(switch, ports).unwrap();
        let mut vm_port = VmmPort::new(shm[0].windows(), bell(), None);
        let mut tap = VmmPort::new(shm[1].windows(), bell(), None);
        let host = Mac([0x52, 0x54, 0, 0, 0, 9]);

        tap.send(&frame(mac(1), host, 60, 0)).unwrap();
        vm_port.send(&frame(host, mac(1), 60, 1)).unwrap();
        while sw.service(0, 16) == Service::Busy {}
        let mut buf = [0u8; MAX_FRAME];

        assert_eq!(vm_port.recv(&mut buf), Some(60));
        assert_eq!(tap.recv(&mut buf), Some(60));
        assert_eq!(buf[14..16], 1u16.to_le_bytes());
        assert_eq!(sw.switch().lookup(host, 0), Some(up));
    }

    /// A doorbell a thread sleeps on: a flag under a mutex and a condvar (an eventfd or a
    /// seL4 notification in the real backends).
    #[derive(Debug, Default)]
    struct Bell {
        rung: std::sync::Mutex<bool>,
        cv: std::sync::Condvar,
    }

    impl Doorbell for Bell {
        fn ring(&self) {
            *self.rung.lock().unwrap() = true;
            self.cv.notify_one();
        }
    }

    impl Bell {
        /// Sleep until rung; `false` when nothing rang for 2 s.
        fn wait(&self) -> bool {
            let mut rung = self.rung.lock().unwrap();
            while !*rung {
                let (g, t) = self
                    .cv
                    .wait_timeout(rung, std::time::Duration::from_secs(2))
                    .unwrap();
                rung = g;
                if t.timed_out() && !*rung {
                    return false;
                }
            }
            *rung = false;
            true
        }
    }

    #[test]
    fn threads_move_frames_vm_to_vm_through_the_switch_without_loss_or_lost_wakeup() {
        use std::sync::atomic::AtomicBool;
        // Under Miri (every access checked) a shorter run still makes every party sleep.
        const FRAMES: u32 = if cfg!(miri) { 200 } else { 20_000 };
        // Frames in flight at most: below every ring's and queue's size, so none is dropped
        // and every frame must arrive.
        const WINDOW: u32 = 4;
        let mut shm = [Shm::new(8), Shm::new(8)];
        let mut switch = Switch::new(cfg()).unwrap();
        switch.add_port(mac(1)).unwrap();
        switch.add_port(mac(2)).unwrap();
        switch.allow(PortId(0), PortId(1)).unwrap();
        let switch_bell = Arc::new(Bell::default());
        let vmm_bells = [Arc::new(Bell::default()), Arc::new(Bell::default())];
        let ports = shm
            .iter_mut()
            .zip(&vmm_bells)
            .map(|(m, b)| (m.windows(), Box::new(Arc::clone(b)) as Box<dyn Doorbell>))
            .collect();
        let mut sw = SwitchService::new(switch, ports).unwrap();
        let [mut a, mut b] = [0, 1].map(|i| {
            let bell: Box<dyn Doorbell> = Box::new(Arc::clone(&switch_bell));
            VmmPort::new(shm[i].windows(), bell, None)
        });
        let received = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let (received, stop) = (&received, &stop);
        let (switch_wait, b_wait) = (&switch_bell, &vmm_bells[1]);

        let (got, b_lost, b_sleeps, sw_lost, sw_sleeps) = std::thread::scope(|s| {
            s.spawn(move || {
                for seq in 0..FRAMES {
                    while u64::from(seq) - received.load(Ordering::SeqCst) >= u64::from(WINDOW) {
                        if stop.load(Ordering::SeqCst) {
                            return; // the receiver gave up: the test fails there
                        }
                        std::thread::yield_now();
                    }
                    let f = frame(mac(2), mac(1), 60 + (seq as usize % 1400), seq as u16);
                    while a.send(&f) == Err(NetError::Full { len: f.len() }) {
                        std::thread::yield_now();
                    }
                }
            });
            let switch = s.spawn(move || {
                let (mut lost, mut sleeps) = (0u32, 0u32);
                loop {
                    while sw.service(0, 16) == Service::Busy {}
                    if stop.load(Ordering::SeqCst) {
                        return (lost, sleeps);
                    }
                    sleeps += 1;
                    // A lost wake-up: nothing rang for 2 s, yet there was work.
                    if !switch_wait.wait() && sw.service(0, 16) == Service::Busy {
                        lost += 1;
                    }
                }
            });
            let receiver = s.spawn(move || {
                let mut buf = [0u8; MAX_FRAME];
                let (mut next, mut lost, mut sleeps) = (0u32, 0u32, 0u32);
                while next < FRAMES {
                    if let Some(n) = b.recv(&mut buf) {
                        let seq = u16::from_le_bytes([buf[14], buf[15]]);
                        assert_eq!(seq, next as u16, "frame lost, duplicated or reordered");
                        assert_eq!(n, 60 + (next as usize % 1400));
                        next += 1;
                        received.store(u64::from(next), Ordering::SeqCst);
                        continue;
                    }
                    sleeps += 1;
                    if !b_wait.wait() && b.recv(&mut buf).is_some() {
                        lost += 1;
                        break;
                    }
                }
                stop.store(true, Ordering::SeqCst);
                switch_wait.ring();
                (next, lost, sleeps)
            });
            let (got, b_lost, b_sleeps) = receiver.join().unwrap();
            let (sw_lost, sw_sleeps) = switch.join().unwrap();
            (got, b_lost, b_sleeps, sw_lost, sw_sleeps)
        });

        assert_eq!(got, FRAMES);
        assert_eq!((b_lost, sw_lost), (0, 0));
        std::println!(
            "{FRAMES} frames; the receiver slept {b_sleeps} times, the switch {sw_sleeps}"
        );
        drop(shm);
    }

    /// A guest driving a virtio-net device through `VirtioDevice` (no MMIO transport): 1 MiB
    /// of mock RAM, a receive and a transmit queue of 16 entries at 0x1000 and 0x2000
    /// (descriptors, available ring at +0x100, used ring at +0x200), one descriptor per
    /// buffer.
    struct Guest {
        net: keel_virtio::Net<VmmPort>,
        mem: Arc<keel_core::GuestRam>,
        posted: [u16; 2],
    }

    impl Guest {
        const QSIZE: u16 = 16;

        fn base(q: u16) -> u64 {
            0x1000 * (u64::from(q) + 1)
        }

        fn new(port: VmmPort, mac: Mac) -> Guest {
            use keel_core::GuestAddress;
            use keel_virtio::VirtioDevice;
            use keel_virtio::device::features::VIRTIO_F_VERSION_1;
            let mem = Arc::new(keel_core::GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap());
            let queues = (0..2)
                .map(|q| {
                    let mut dq = keel_virtio::Queue::new(Guest::QSIZE);
                    dq.set_desc_table(GuestAddress(Guest::base(q)));
                    dq.set_avail_ring(GuestAddress(Guest::base(q) + 0x100));
                    dq.set_used_ring(GuestAddress(Guest::base(q) + 0x200));
                    dq.set_ready(true);
                    dq
                })
                .collect();
            let mut net = keel_virtio::Net::new(port, mac.0);
            let memory: keel_core::GuestMemoryRef = mem.clone();
            net.activate(memory, queues, VIRTIO_F_VERSION_1).unwrap();
            Guest {
                net,
                mem,
                posted: [0; 2],
            }
        }

        /// Make `len` bytes at `addr` the next one-descriptor chain of queue `q`.
        fn post(&mut self, q: u16, addr: u64, len: u32, writable: bool) {
            use keel_core::{GuestAddress, GuestMemory};
            use keel_virtio::queue::VIRTQ_DESC_F_WRITE;
            let i = self.posted[usize::from(q)];
            let slot = i % Guest::QSIZE;
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            let flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            let base = Guest::base(q);
            let m = &*self.mem;
            m.write(GuestAddress(base + 16 * u64::from(slot)), &desc)
                .unwrap();
            m.write_u16(GuestAddress(base + 0x104 + 2 * u64::from(slot)), slot)
                .unwrap();
            self.posted[usize::from(q)] = i.wrapping_add(1);
            m.store_u16_release(GuestAddress(base + 0x102), i.wrapping_add(1))
                .unwrap();
        }

        fn used(&self, q: u16) -> u16 {
            use keel_core::{GuestAddress, GuestMemory};
            self.mem
                .read_u16(GuestAddress(Guest::base(q) + 0x202))
                .unwrap()
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            use keel_core::{GuestAddress, GuestMemory};
            let mut v = vec![0; len];
            self.mem.read(GuestAddress(addr), &mut v).unwrap();
            v
        }
    }

    #[test]
    fn frame_goes_guest_to_guest_through_two_net_devices_and_wakes_the_receiver() {
        use keel_core::{GuestAddress, GuestMemory};
        use keel_virtio::VirtioDevice;
        use keel_virtio::net::{NET_HDR_LEN, RECEIVEQ, RX_EVENT, TRANSMITQ};
        let Lab {
            mut vmm,
            mut sw,
            vmm_bells,
            shm,
            ..
        } = Lab::all(2);
        let b_port = vmm.pop().unwrap();
        let a_port = vmm.pop().unwrap();
        let mut a = Guest::new(a_port, mac(1));
        let mut b = Guest::new(b_port, mac(2));
        // B posts a receive buffer: the device finds the ring empty and arms its wake-up.
        b.post(RECEIVEQ, 0x10000, 2048, true);
        assert!(!b.net.process_queue(RECEIVEQ).unwrap());
        let f = frame(mac(2), mac(1), 98, 42);
        let mut chain = vec![0u8; NET_HDR_LEN];
        chain.extend(&f);
        a.mem.write(GuestAddress(0x10000), &chain).unwrap();
        a.post(TRANSMITQ, 0x10000, chain.len() as u32, false);

        a.net.process_queue(TRANSMITQ).unwrap();
        while sw.service(0, 16) == Service::Busy {}
        let rung = vmm_bells[1].get();
        let interrupt = b.net.handle_event(RX_EVENT).unwrap();

        assert_eq!(a.used(TRANSMITQ), 1);
        assert_eq!(rung, 1);
        assert!(interrupt);
        assert_eq!(b.used(RECEIVEQ), 1);
        assert_eq!(b.read(0x10000 + NET_HDR_LEN as u64, f.len()), f);
        assert_eq!(b.net.counters().rx_frames, 1);
        assert_eq!(a.net.counters().tx_frames, 1);
        drop(shm);
    }
}
