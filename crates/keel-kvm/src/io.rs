//! The I/O thread: ioeventfd doorbells to virtio devices, host stdin to the serial port,
//! and device errors to the log.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use keel_core::SystemEvent;

use keel_virtio::QueueNotifier;
use keel_virtio::device::EventToken;
use keel_vmm::{StopSink, VmmCore};

/// One doorbell: the eventfd KVM signals for a QueueNotify of `queue` on device `device`.
#[derive(Debug)]
pub struct Doorbell {
    /// The eventfd.
    pub fd: EventFd,
    /// Index into the device list.
    pub device: usize,
    /// The queue index written to QueueNotify.
    pub queue: u16,
}

/// Where a QueueNotify write that trapped (KVM's ioeventfd did not catch it) goes: the
/// same eventfd as the queue's doorbell, so the device's worker processes the queue and the
/// vCPU thread returns at once.
#[derive(Debug)]
pub struct DoorbellNotifier {
    /// The doorbells of one device, by queue index (duplicates of the workers' eventfds).
    pub fds: Vec<EventFd>,
}

impl QueueNotifier for DoorbellNotifier {
    fn notify(&self, queue: u16) {
        if let Some(fd) = self.fds.get(usize::from(queue)) {
            // Cannot fail short of the counter overflowing, which the worker empties.
            let _ = fd.write(1);
        }
    }
}

/// What the I/O thread serves.
pub struct IoContext {
    /// The VM's devices (notifications, their errors, the UART).
    pub core: Arc<VmmCore>,
    /// The devices this thread serves (indices into the VM's devices): their doorbells
    /// and errors.
    pub devices: Vec<usize>,
    /// The doorbells of those devices.
    pub doorbells: Vec<Doorbell>,
    /// Host events those devices wait on: `(device index, token, file descriptor)`.
    pub events: Vec<(usize, EventToken, RawFd)>,
    /// Those of `events` whose descriptor is an eventfd that only wakes (a network port's
    /// notification): emptied before the event is delivered, and waited on again at once
    /// (the read makes it edge-like: the ring, not the eventfd, holds the work).
    pub eventfds: Vec<RawFd>,
    /// Whether host stdin goes to the UART (the serial is on stdio).
    pub serial_input: bool,
    /// Written to stop the thread.
    pub stop: Arc<EventFd>,
    /// Where the user's Ctrl-A x (on the serial console) stops the VM.
    pub user_stop: Arc<dyn StopSink>,
}

impl std::fmt::Debug for IoContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoContext")
            .field("doorbells", &self.doorbells.len())
            .finish()
    }
}

/// How often device errors are looked for when nothing else happens.
const ERROR_POLL_MS: i32 = 100;

/// Run an I/O loop until `ctx.stop` is written. A VM has one per virtio device (its
/// doorbells: the queue work of a slow disk stalls no other device and no vCPU thread) and
/// one for host stdin when the serial is on stdio.
pub fn run(ctx: IoContext) {
    let mut stdin_open = ctx.serial_input;
    let mut escape = Escape::default();
    // Built once: the stop eventfd, the doorbells, then stdin (its fd becomes -1, which
    // poll ignores, once stdin closes).
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(ctx.doorbells.len() + 2);
    fds.push(libc::pollfd {
        fd: ctx.stop.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    for d in &ctx.doorbells {
        fds.push(libc::pollfd {
            fd: d.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // Device event sources. poll is level-triggered and a device takes host input only as
    // far as the guest posted buffers: after an event its source is disarmed (fd -1) until
    // that device's doorbell rings or the next error poll, so unread input cannot spin.
    let events_index = fds.len();
    for &(_, _, fd) in &ctx.events {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let stdin_index = fds.len();
    // Events a device stopped serving after its batch limit (`backlogged_event`): delivered
    // again after the other pending work (one poll with no wait first), not at the idle poll.
    let mut backlog: Vec<(usize, EventToken)> = Vec::new();
    if stdin_open {
        fds.push(libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    loop {
        for fd in &mut fds {
            fd.revents = 0;
        }
        let timeout = if backlog.is_empty() { ERROR_POLL_MS } else { 0 };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            crate::log::error(format_args!("I/O thread: poll failed: {err}"));
            return;
        }
        if fds[0].revents != 0 {
            report_errors(&ctx);
            return;
        }
        // Only a real idle timeout re-arms sources and looks for errors.
        let idle = n == 0 && timeout != 0;
        let pending = std::mem::take(&mut backlog);
        let mut rang = false;
        for (i, d) in ctx.doorbells.iter().enumerate() {
            if fds[i + 1].revents & libc::POLLIN != 0 {
                // Reading clears the counter; several guest notifications coalesce.
                let _ = d.fd.read();
                ctx.core.notify(d.device, d.queue);
                note_backlog(&ctx, d.device, &mut backlog);
                rang = true;
            }
        }
        for (i, &(device, token, fd)) in ctx.events.iter().enumerate() {
            let slot = &mut fds[events_index + i];
            if ctx.eventfds.contains(&fd) {
                if slot.revents != 0 {
                    drain(fd);
                    if let Some(d) = ctx.core.devices().get(device) {
                        d.handle_event(token, ctx.core.log());
                        note_backlog(&ctx, device, &mut backlog);
                    }
                }
                continue;
            }
            if slot.fd >= 0 && slot.revents != 0 {
                if let Some(d) = ctx.core.devices().get(device) {
                    d.handle_event(token, ctx.core.log());
                    note_backlog(&ctx, device, &mut backlog);
                    // Still a source (input not ended)? Wait for the guest to make room.
                    let live = d.transport.event_sources().iter().any(|(t, _)| *t == token);
                    slot.fd = -1;
                    if !live {
                        // Ended for good: never armed again.
                        slot.events = 0;
                    }
                }
            } else if slot.fd < 0 && slot.events != 0 && (rang || idle) {
                slot.fd = fd;
            }
        }
        // The backlog of the previous round, after this round's doorbells and events.
        for (device, token) in pending {
            if backlog.contains(&(device, token)) {
                // Already delivered again this round.
                continue;
            }
            if let Some(d) = ctx.core.devices().get(device) {
                d.handle_event(token, ctx.core.log());
                note_backlog(&ctx, device, &mut backlog);
            }
        }
        if stdin_open && fds[stdin_index].revents != 0 {
            stdin_open = forward_stdin(&ctx.core, &mut escape);
            if !stdin_open {
                fds[stdin_index].fd = -1;
            }
            if escape.quit {
                crate::log::info(format_args!("Ctrl-A x: stopping the VM"));
                ctx.user_stop.guest_event(SystemEvent::Shutdown);
            }
        }
        if idle {
            report_errors(&ctx);
        }
    }
}

/// Remember `device`'s backlogged event, if it reports one (once per round).
fn note_backlog(ctx: &IoContext, device: usize, backlog: &mut Vec<(usize, EventToken)>) {
    let Some(d) = ctx.core.devices().get(device) else {
        return;
    };
    if let Some(token) = d.transport.backlogged_event() {
        if !backlog.contains(&(device, token)) {
            backlog.push((device, token));
        }
    }
}

/// Empty an eventfd's counter (non-blocking; nothing to read is fine).
fn drain(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reading 8 bytes into a valid u64 from a descriptor the context holds open.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// Log the pending errors of the devices `ctx` serves.
fn report_errors(ctx: &IoContext) {
    for &i in &ctx.devices {
        if let Some(d) = ctx.core.devices().get(i) {
            d.report_error(ctx.core.log());
        }
    }
}

/// The console escape: Ctrl-A x stops the VM, Ctrl-A Ctrl-A sends one Ctrl-A.
#[derive(Debug, Default)]
pub struct Escape {
    armed: bool,
    /// The user asked to stop.
    pub quit: bool,
}

/// Ctrl-A.
const ESCAPE_BYTE: u8 = 0x01;

impl Escape {
    /// Filter `input`, returning the bytes for the guest.
    pub fn filter(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => self.quit = true,
                    ESCAPE_BYTE => out.push(ESCAPE_BYTE),
                    other => out.extend_from_slice(&[ESCAPE_BYTE, other]),
                }
            } else if b == ESCAPE_BYTE {
                self.armed = true;
            } else {
                out.push(b);
            }
        }
        out
    }
}

/// Move what stdin has to the serial port. Returns whether stdin stays open.
fn forward_stdin(core: &VmmCore, escape: &mut Escape) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a valid buffer of `buf.len()` bytes.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    // The 16550 FIFO holds 64 bytes; what does not fit is dropped, as a real UART would.
    let bytes = escape.filter(&buf[..n as usize]);
    let _ = core.serial().lock().input(&bytes);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_is_not_forwarded() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"ab\x01x"), b"ab");
        assert!(e.quit);
    }

    #[test]
    fn doubled_ctrl_a_sends_one_and_split_reads_are_handled() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"\x01"), b"");
        assert_eq!(e.filter(b"\x01q\x01z"), b"\x01q\x01z");
        assert!(!e.quit);
    }
}
