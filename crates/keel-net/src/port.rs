//! STAND-IN for branch wip-port's `keel_net::port` (same API, minimal behaviour) so that
//! the Linux glue of `keel up` builds and runs before that branch lands. Replaced by the
//! real module at the merge.

use alloc::boxed::Box;
use alloc::vec::Vec;

use keel_virtio::device::EventSource;
use keel_virtio::net::{NetBackend, NetError};

use crate::ring::{FrameConsumer, FrameProducer, FrameWindow, MAX_FRAME, Recv, Sent};
use crate::switch::{PortCounters, PortId, Switch, SwitchError};

/// How one side of a port wakes the other.
pub trait Doorbell: Send {
    /// Wake the peer.
    fn ring(&self);
}

/// The two ring windows of a port.
#[derive(Debug)]
pub struct PortWindows {
    /// VMM → switch.
    pub to_switch: FrameWindow,
    /// Switch → VMM.
    pub from_switch: FrameWindow,
}

/// The VMM's side of a port, as a virtio-net backend.
pub struct VmmPort {
    tx: FrameProducer,
    rx: FrameConsumer,
    bell: Box<dyn Doorbell>,
    event: Option<EventSource>,
}

impl core::fmt::Debug for VmmPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmmPort").finish_non_exhaustive()
    }
}

impl VmmPort {
    /// The VMM side of the port over `windows`.
    pub fn new(windows: PortWindows, bell: Box<dyn Doorbell>, event: Option<EventSource>) -> Self {
        VmmPort {
            tx: FrameProducer::attach(windows.to_switch),
            rx: FrameConsumer::attach(windows.from_switch),
            bell,
            event,
        }
    }
}

impl NetBackend for VmmPort {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        match self.tx.send(frame) {
            Ok(Sent::Queued { notify }) => {
                if notify {
                    self.bell.ring();
                }
                Ok(())
            }
            Ok(Sent::Full) => Err(NetError::Full { len: frame.len() }),
            Err(e) => Err(NetError::Other(alloc::format!("{e}"))),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut tmp = [0u8; MAX_FRAME];
        self.rx.disarm();
        loop {
            match self.rx.recv(&mut tmp) {
                Ok(Recv::Frame(n)) => {
                    if n > buf.len() {
                        continue;
                    }
                    buf[..n].copy_from_slice(&tmp[..n]);
                    return Some(n);
                }
                Ok(Recv::BadLength { .. }) => continue,
                Ok(Recv::Empty) => match self.rx.arm_wakeup() {
                    Ok(true) => return None,
                    Ok(false) => self.rx.disarm(),
                    Err(_) => return None,
                },
                Err(_) => return None,
            }
        }
    }

    fn event_source(&self) -> Option<EventSource> {
        self.event
    }
}

/// What a service call found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// More work may be waiting: call again.
    Busy,
    /// Every input ring is empty and armed: sleep until a doorbell.
    Idle,
}

struct SwitchPort {
    rx: FrameConsumer,
    tx: FrameProducer,
    bell: Box<dyn Doorbell>,
}

/// The switch's side of all ports of one network.
pub struct SwitchService {
    switch: Switch,
    ports: Vec<SwitchPort>,
}

impl core::fmt::Debug for SwitchService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SwitchService").finish_non_exhaustive()
    }
}

impl SwitchService {
    /// The switch `switch` serving `ports` (port `i` of the switch is `ports[i]`).
    pub fn new(switch: Switch, ports: Vec<(PortWindows, Box<dyn Doorbell>)>) -> Self {
        SwitchService {
            switch,
            ports: ports
                .into_iter()
                .map(|(w, bell)| SwitchPort {
                    rx: FrameConsumer::attach(w.to_switch),
                    tx: FrameProducer::attach(w.from_switch),
                    bell,
                })
                .collect(),
        }
    }

    /// Move up to `budget` input frames through the switch and flush output queues.
    pub fn service(&mut self, now_ms: u64, budget: usize) -> Service {
        for p in &mut self.ports {
            p.rx.disarm();
        }
        let mut sources: Vec<&mut FrameConsumer> =
            self.ports.iter_mut().map(|p| &mut p.rx).collect();
        let taken = self.switch.poll(&mut sources[..], now_ms, budget);
        drop(sources);
        for (i, p) in self.ports.iter_mut().enumerate() {
            let id = PortId(i as u16);
            let mut notify = false;
            while let Some(f) = self.switch.peek_output(id) {
                match p.tx.send(f) {
                    Ok(Sent::Queued { notify: n }) => notify |= n,
                    Ok(Sent::Full) => break,
                    Err(_) => {}
                }
                self.switch.pop_output(id);
            }
            if notify {
                p.bell.ring();
            }
        }
        if taken >= budget {
            return Service::Busy;
        }
        for p in &mut self.ports {
            if !matches!(p.rx.arm_wakeup(), Ok(true) | Err(_)) {
                return Service::Busy;
            }
        }
        Service::Idle
    }

    /// Counters of `port`.
    pub fn counters(&self, port: PortId) -> Result<PortCounters, SwitchError> {
        self.switch.counters(port)
    }
}

impl crate::switch::FrameSource for &mut FrameConsumer {
    fn next_frame(&mut self, buf: &mut [u8; MAX_FRAME]) -> Option<usize> {
        (**self).next_frame(buf)
    }
}
