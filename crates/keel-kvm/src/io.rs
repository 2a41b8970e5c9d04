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

/// What an I/O thread drives: the VM's devices and UART ([`VmmCore`]; a fake in tests).
pub trait IoTarget: Send + Sync {
    /// Deliver a QueueNotify of `queue` to device `device` (and log its error).
    fn notify(&self, device: usize, queue: u16);
    /// Deliver host event `token` to device `device` (and log its error).
    fn handle_event(&self, device: usize, token: EventToken);
    /// The event device `device` stopped serving after its batch limit, if any.
    fn backlogged_event(&self, device: usize) -> Option<EventToken>;
    /// Whether device `device` still waits on event `token` (its input has not ended).
    fn event_live(&self, device: usize, token: EventToken) -> bool;
    /// Log device `device`'s pending error.
    fn report_error(&self, device: usize);
    /// Host input for the UART.
    fn serial_input(&self, bytes: &[u8]);
    /// How often device `device` must be polled without events (its timeouts), if at all.
    fn poll_interval_ms(&self, device: usize) -> Option<u32> {
        let _ = device;
        None
    }
    /// Poll device `device` (and log its error).
    fn poll(&self, device: usize) {
        let _ = device;
    }
}

impl IoTarget for VmmCore {
    fn notify(&self, device: usize, queue: u16) {
        VmmCore::notify(self, device, queue);
    }
    fn handle_event(&self, device: usize, token: EventToken) {
        if let Some(d) = self.devices().get(device) {
            d.handle_event(token, self.log());
        }
    }
    fn backlogged_event(&self, device: usize) -> Option<EventToken> {
        self.devices().get(device)?.transport.backlogged_event()
    }
    fn event_live(&self, device: usize, token: EventToken) -> bool {
        self.devices()
            .get(device)
            .is_some_and(|d| d.transport.event_sources().iter().any(|(t, _)| *t == token))
    }
    fn report_error(&self, device: usize) {
        if let Some(d) = self.devices().get(device) {
            d.report_error(self.log());
        }
    }
    fn serial_input(&self, bytes: &[u8]) {
        let _ = self.serial().lock().input(bytes);
    }
    fn poll_interval_ms(&self, device: usize) -> Option<u32> {
        self.devices().get(device)?.transport.poll_interval_ms()
    }
    fn poll(&self, device: usize) {
        if let Some(d) = self.devices().get(device) {
            d.poll(self.log());
        }
    }
}

/// What the I/O thread serves.
pub struct IoContext {
    /// The VM's devices (notifications, their errors, the UART).
    pub core: Arc<dyn IoTarget>,
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
    // Devices with deadlines of their own (a forwarded disk's timeouts): polled at their
    // interval whatever else happens, so a silent peer cannot leave a request hanging.
    let polled: Vec<(usize, std::time::Duration)> = ctx
        .devices
        .iter()
        .filter_map(|&i| {
            let ms = ctx.core.poll_interval_ms(i)?;
            Some((i, std::time::Duration::from_millis(u64::from(ms.max(1)))))
        })
        .collect();
    let poll_every = polled.iter().map(|&(_, d)| d).min();
    let mut last_poll = std::time::Instant::now();
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
        let timeout = match (backlog.is_empty(), poll_every) {
            (false, _) => 0,
            (true, None) => ERROR_POLL_MS,
            (true, Some(every)) => {
                let left = every.saturating_sub(last_poll.elapsed());
                i32::try_from(left.as_millis()).map_or(ERROR_POLL_MS, |ms| ms.min(ERROR_POLL_MS))
            }
        };
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
                note_backlog(ctx.core.as_ref(), d.device, &mut backlog);
                rang = true;
            }
        }
        for (i, &(device, token, fd)) in ctx.events.iter().enumerate() {
            let slot = &mut fds[events_index + i];
            if ctx.eventfds.contains(&fd) {
                if slot.revents != 0 {
                    drain(fd);
                    ctx.core.handle_event(device, token);
                    note_backlog(ctx.core.as_ref(), device, &mut backlog);
                }
                continue;
            }
            if slot.fd >= 0 && slot.revents != 0 {
                ctx.core.handle_event(device, token);
                note_backlog(ctx.core.as_ref(), device, &mut backlog);
                // Still a source (input not ended)? Wait for the guest to make room.
                slot.fd = -1;
                if !ctx.core.event_live(device, token) {
                    // Ended for good: never armed again.
                    slot.events = 0;
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
            ctx.core.handle_event(device, token);
            note_backlog(ctx.core.as_ref(), device, &mut backlog);
        }
        if stdin_open && fds[stdin_index].revents != 0 {
            stdin_open = forward_stdin(ctx.core.as_ref(), &mut escape);
            if !stdin_open {
                fds[stdin_index].fd = -1;
            }
            if escape.quit {
                crate::log::info(format_args!("Ctrl-A x: stopping the VM"));
                ctx.user_stop.guest_event(SystemEvent::Shutdown);
            }
        }
        if let Some(every) = poll_every {
            if last_poll.elapsed() >= every {
                last_poll = std::time::Instant::now();
                for &(device, _) in &polled {
                    ctx.core.poll(device);
                }
            }
        }
        if idle {
            report_errors(&ctx);
        }
    }
}

/// Remember `device`'s backlogged event, if it reports one (once per round).
fn note_backlog(core: &dyn IoTarget, device: usize, backlog: &mut Vec<(usize, EventToken)>) {
    if let Some(token) = core.backlogged_event(device) {
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
        ctx.core.report_error(i);
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
fn forward_stdin(core: &dyn IoTarget, escape: &mut Escape) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a valid buffer of `buf.len()` bytes.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    // The 16550 FIFO holds 64 bytes; what does not fit is dropped, as a real UART would.
    let bytes = escape.filter(&buf[..n as usize]);
    core.serial_input(&bytes);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const NET: usize = 0;
    const DISK: usize = 1;
    const RX: EventToken = EventToken(0);
    const BATCH: usize = 2;

    /// Device 0 takes at most BATCH of its pending frames per event and reports a backlog
    /// while some are left; its first event also rings device 1's doorbell (other work
    /// arriving meanwhile). Every call is recorded.
    struct Fake {
        pending: AtomicUsize,
        backlog: Mutex<bool>,
        disk_bell: EventFd,
        calls: Mutex<Vec<&'static str>>,
    }

    impl IoTarget for Fake {
        fn notify(&self, device: usize, _queue: u16) {
            assert_eq!(device, DISK);
            self.calls.lock().unwrap().push("disk notify");
        }
        fn handle_event(&self, device: usize, _token: EventToken) {
            assert_eq!(device, NET);
            let mut calls = self.calls.lock().unwrap();
            if calls.is_empty() {
                self.disk_bell.write(1).unwrap();
            }
            calls.push("net event");
            let left = self.pending.load(Ordering::SeqCst);
            let taken = left.min(BATCH);
            self.pending.store(left - taken, Ordering::SeqCst);
            *self.backlog.lock().unwrap() = taken == BATCH && left > taken;
        }
        fn backlogged_event(&self, device: usize) -> Option<EventToken> {
            (device == NET && *self.backlog.lock().unwrap()).then_some(RX)
        }
        fn event_live(&self, _device: usize, _token: EventToken) -> bool {
            true
        }
        fn report_error(&self, _device: usize) {
            self.calls.lock().unwrap().push("idle");
        }
        fn serial_input(&self, _bytes: &[u8]) {}
    }

    struct NoStop;

    impl StopSink for NoStop {
        fn guest_event(&self, _event: SystemEvent) {}
        fn stopping(&self) -> bool {
            false
        }
    }

    /// Run an I/O loop over `Fake` with `frames` pending and the net eventfd signalled,
    /// until the first idle poll; the calls it made.
    fn run_backlog(frames: usize) -> Vec<&'static str> {
        let net_fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let disk_fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fake = Arc::new(Fake {
            pending: AtomicUsize::new(frames),
            backlog: Mutex::new(false),
            disk_bell: disk_fd.try_clone().unwrap(),
            calls: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let ctx = IoContext {
            core: fake.clone(),
            devices: vec![NET, DISK],
            doorbells: vec![Doorbell {
                fd: disk_fd,
                device: DISK,
                queue: 0,
            }],
            events: vec![(NET, RX, net_fd.as_raw_fd())],
            eventfds: vec![net_fd.as_raw_fd()],
            serial_input: false,
            stop: stop.clone(),
            user_stop: Arc::new(NoStop),
        };
        net_fd.write(1).unwrap();
        let t = std::thread::spawn(move || run(ctx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fake.calls.lock().unwrap().contains(&"idle") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.write(1).unwrap();
        t.join().unwrap();
        let calls = fake.calls.lock().unwrap().clone();
        drop(fake);
        calls
    }

    #[test]
    fn backlogged_event_is_delivered_again_before_the_idle_poll() {
        let calls = run_backlog(5);

        let before_idle: Vec<_> = calls.iter().take_while(|c| **c != "idle").collect();
        let events = before_idle.iter().filter(|c| ***c == "net event").count();

        assert_eq!(events, 3, "5 frames in batches of 2: {calls:?}");
    }

    #[test]
    fn other_pending_work_is_served_before_the_backlogged_event() {
        let calls = run_backlog(5);

        assert_eq!(
            &calls[..4],
            ["net event", "disk notify", "net event", "net event"],
            "{calls:?}"
        );
    }

    /// Device 0 wants a poll every 20 ms; device 1 none. Polls are counted by device.
    struct Timed {
        polls: [AtomicUsize; 2],
    }

    impl IoTarget for Timed {
        fn notify(&self, _device: usize, _queue: u16) {}
        fn handle_event(&self, _device: usize, _token: EventToken) {}
        fn backlogged_event(&self, _device: usize) -> Option<EventToken> {
            None
        }
        fn event_live(&self, _device: usize, _token: EventToken) -> bool {
            true
        }
        fn report_error(&self, _device: usize) {}
        fn serial_input(&self, _bytes: &[u8]) {}
        fn poll_interval_ms(&self, device: usize) -> Option<u32> {
            (device == 0).then_some(20)
        }
        fn poll(&self, device: usize) {
            self.polls[device].fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_device_with_deadlines_is_polled_at_its_interval_when_nothing_happens() {
        let timed = Arc::new(Timed {
            polls: [AtomicUsize::new(0), AtomicUsize::new(0)],
        });
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let ctx = IoContext {
            core: timed.clone(),
            devices: vec![0, 1],
            doorbells: Vec::new(),
            events: Vec::new(),
            eventfds: Vec::new(),
            serial_input: false,
            stop: stop.clone(),
            user_stop: Arc::new(NoStop),
        };
        let t = std::thread::spawn(move || run(ctx));
        std::thread::sleep(Duration::from_millis(300));
        stop.write(1).unwrap();
        t.join().unwrap();

        let polls = timed.polls[0].load(Ordering::SeqCst);
        // 300 ms at 20 ms: about 15 (not 3, the idle timeout's pace); loose for slow hosts.
        assert!((5..=16).contains(&polls), "{polls} polls");
        assert_eq!(timed.polls[1].load(Ordering::SeqCst), 0);
    }

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
