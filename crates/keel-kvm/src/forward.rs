//! Linux plumbing of block forwarding (docs/driver-vms.md): a client VMM's served disks and
//! a storage VM's doorbell, over what `keel up` hands each VMM process.
//!
//! Per link `keel up` creates one memory file (the forwarding region, mapped by the client
//! VMM in its own address space and by the storage VMM as guest memory of the storage VM)
//! and one eventfd the client waits on (`wake`); per storage VM one eventfd all its clients
//! ring (`bell`). A client VMM inherits, per served disk in disk order, `--blk
//! <region>,<bell>,<wake>`; a storage VMM inherits `--bell <bell>` and, per client in
//! [`keel_spec::plan::VmPlan::serves`] order, `--serve <wake>` (its regions come as
//! ordinary `--shared` memory files).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use keel_virtio::device::EventSource;
use keel_virtio::{ConsoleInput, ConsoleOutput};
use vmm_sys_util::eventfd::EventFd;

use crate::net::{FdArgError, SharedMemory, new_eventfd, take_inherited_fd as take};

fn eventfd_of(fd: OwnedFd) -> EventFd {
    // SAFETY: an owned, open descriptor (an eventfd by the parent's contract; a wrong kind
    // only makes reads and writes fail).
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

fn numbers<const N: usize>(arg: &str) -> Result<[RawFd; N], FdArgError> {
    let syntax = || FdArgError::Syntax { arg: arg.into() };
    let nums: Vec<RawFd> = arg
        .split(',')
        .map(|s| s.trim().parse::<RawFd>().map_err(|_| syntax()))
        .collect::<Result<_, _>>()?;
    <[RawFd; N]>::try_from(nums).map_err(|_| syntax())
}

/// A client VMM's end of one link: the region, the storage VM's bell, its own wake-up.
#[derive(Debug)]
pub struct ClientLinkFds {
    /// The forwarding region.
    pub region: SharedMemory,
    /// Rung to tell the storage VM about requests.
    pub bell: EventFd,
    /// Rung by the storage VM when responses are ready.
    pub wake: EventFd,
}

impl ClientLinkFds {
    /// The three descriptor numbers, in `--blk` order.
    pub fn raw(region: &SharedMemory, bell: &EventFd, wake: &EventFd) -> [RawFd; 3] {
        [region.fd().as_raw_fd(), bell.as_raw_fd(), wake.as_raw_fd()]
    }

    /// Take the descriptors a `--blk` argument names.
    pub fn take_inherited(arg: &str, taken: &mut Vec<RawFd>) -> Result<ClientLinkFds, FdArgError> {
        let [r, b, w] = numbers::<3>(arg)?;
        let region = take(r, taken)?;
        let region = SharedMemory::from_fd(region).map_err(|e| FdArgError::Fd {
            fd: r,
            reason: e.to_string(),
        })?;
        Ok(ClientLinkFds {
            region,
            bell: eventfd_of(take(b, taken)?),
            wake: eventfd_of(take(w, taken)?),
        })
    }
}

/// A storage VMM's doorbell descriptors: its bell, and each client's wake-up.
#[derive(Debug)]
pub struct ServerFds {
    /// Rung by every client.
    pub bell: EventFd,
    /// Client `i`'s wake-up, rung when the agent writes byte `i`.
    pub clients: Vec<EventFd>,
}

impl ServerFds {
    /// Take the descriptors of `--bell` and the `--serve` arguments.
    pub fn take_inherited(
        bell: &str,
        serves: &[String],
        taken: &mut Vec<RawFd>,
    ) -> Result<ServerFds, FdArgError> {
        let [b] = numbers::<1>(bell)?;
        let bell = eventfd_of(take(b, taken)?);
        let clients = serves
            .iter()
            .map(|a| numbers::<1>(a).and_then(|[w]| take(w, taken).map(eventfd_of)))
            .collect::<Result<_, _>>()?;
        Ok(ServerFds { bell, clients })
    }
}

/// What `keel up` creates for a system's links: per link a wake-up eventfd, per storage VM
/// a bell (the regions are the plan's shared memory files).
#[derive(Debug)]
pub struct LinkSet {
    /// Per link (in `SystemPlan::links` order): the client's wake-up.
    pub wakes: Vec<EventFd>,
    /// Per storage VM name: its bell.
    pub bells: Vec<(String, EventFd)>,
}

impl LinkSet {
    /// New eventfds for `links` (close-on-exec, non-blocking).
    pub fn create(links: &[keel_spec::plan::LinkPlan]) -> io::Result<LinkSet> {
        let mut bells: Vec<(String, EventFd)> = Vec::new();
        let mut wakes = Vec::with_capacity(links.len());
        for l in links {
            wakes.push(new_eventfd()?);
            if !bells.iter().any(|(s, _)| *s == l.server) {
                bells.push((l.server.clone(), new_eventfd()?));
            }
        }
        Ok(LinkSet { wakes, bells })
    }

    /// Storage VM `server`'s bell.
    pub fn bell(&self, server: &str) -> Option<&EventFd> {
        self.bells.iter().find(|(s, _)| s == server).map(|(_, b)| b)
    }
}

/// The storage VM's doorbell output: byte `i` written by the agent rings client `i`.
#[derive(Debug)]
pub struct DoorbellOutput {
    clients: Vec<EventFd>,
    /// Bytes naming no client (a confused or hostile agent), counted.
    pub unknown: u64,
}

impl DoorbellOutput {
    /// Ringing `clients` (index = byte value).
    pub fn new(clients: Vec<EventFd>) -> DoorbellOutput {
        DoorbellOutput {
            clients,
            unknown: 0,
        }
    }
}

impl ConsoleOutput for DoorbellOutput {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.clients.get(usize::from(b)) {
                Some(e) => {
                    let _ = e.write(1);
                }
                None => self.unknown = self.unknown.saturating_add(1),
            }
        }
    }
}

/// The storage VM's doorbell input: one byte (`!`) whenever a client rang the bell since
/// the last read.
#[derive(Debug)]
pub struct DoorbellInput {
    bell: EventFd,
}

impl DoorbellInput {
    /// Reading `bell`.
    pub fn new(bell: EventFd) -> DoorbellInput {
        DoorbellInput { bell }
    }
}

impl ConsoleInput for DoorbellInput {
    fn event_source(&self) -> Option<EventSource> {
        Some(EventSource(self.bell.as_raw_fd() as u64))
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        match self.bell.read() {
            Ok(n) if n > 0 => {
                buf[0] = b'!';
                1
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_output_rings_the_client_its_byte_names_and_counts_others() {
        let clients: Vec<EventFd> = (0..2).map(|_| new_eventfd().unwrap()).collect();
        let peers: Vec<EventFd> = clients.iter().map(|c| c.try_clone().unwrap()).collect();
        let mut out = DoorbellOutput::new(clients);

        out.write(&[1, 7, 1]);

        assert!(peers[0].read().is_err(), "client 0 was not rung");
        assert_eq!(peers[1].read().unwrap(), 2);
        assert_eq!(out.unknown, 1);
    }

    #[test]
    fn doorbell_input_gives_one_byte_per_ringing_burst() {
        let bell = new_eventfd().unwrap();
        let peer = bell.try_clone().unwrap();
        let mut input = DoorbellInput::new(bell);
        let mut buf = [0u8; 8];

        let idle = input.read(&mut buf);
        peer.write(1).unwrap();
        peer.write(1).unwrap();
        let rung = input.read(&mut buf);
        let again = input.read(&mut buf);

        assert_eq!((idle, rung, again), (0, 1, 0));
        assert_eq!(buf[0], b'!');
    }
}
