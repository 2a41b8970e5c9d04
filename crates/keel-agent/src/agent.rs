//! Setting the clients up and serving them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_core::ring::RingError;
use keel_virtio::forward::{ClientRange, ForwardServer};
use keel_virtio::{BlockBackend, BlockError};

use crate::bell::{Bell, BellError};
use crate::cmdline::{self, ClientSpec, CmdlineError};
use crate::disk::{self, DiskError};
use crate::region::{Mapping, RegionError};
use keel_virtio::host::FileBackend;

/// Requests served per client per round: one flooding client waits its turn.
pub const BUDGET: usize = 8;
/// How long an idle agent sleeps before looking at the rings again without a doorbell
/// byte (a lost byte costs at most this).
pub const IDLE_POLL_MS: i32 = 1000;
/// How often a client whose response ring is full (it does not read its responses) is
/// looked at again: it cannot ring when it makes room.
pub const STALLED_POLL_MS: i32 = 20;
/// How often a broken request ring (wild producer index) is attached again, in case the
/// client VMM was restarted and reset it.
pub const REATTACH: Duration = Duration::from_secs(1);
/// How long disks and the doorbell may take to appear after boot (drivers probing).
pub const DEVICE_WAIT: Duration = Duration::from_secs(5);

/// What the agent is told to do: the kernel command line and the test overrides.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The kernel command line (`/proc/cmdline` unless overridden).
    pub cmdline: String,
    /// Test override: one regular file per client mapped instead of `/dev/mem`.
    pub region_files: Vec<PathBuf>,
    /// Test override: the doorbell's path instead of `keel.blkbell=`.
    pub bell: Option<PathBuf>,
    /// Test override: disks by serial instead of `/sys/block`.
    pub disks: Vec<(String, PathBuf)>,
    /// Where disks are looked up by serial (`/sys/block`).
    pub sys_block: PathBuf,
}

/// Why the agent cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No `keel.blk=`.
    #[error("no keel.blk= on the kernel command line: nothing to serve")]
    NoClients,
    /// Every client was refused.
    #[error("none of the {0} clients can be served (see above)")]
    NothingToServe(usize),
    /// No doorbell.
    #[error(
        "no keel.blkbell= on the kernel command line: clients cannot be told apart from silence"
    )]
    NoBell,
    /// The doorbell parameter is wrong.
    #[error("{0}")]
    BadBell(CmdlineError),
    /// The doorbell cannot be opened.
    #[error("{0}")]
    Bell(#[from] BellError),
    /// The doorbell failed while serving.
    #[error("doorbell {path}: {source}")]
    BellIo {
        /// The tty.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The region-file override does not match the clients.
    #[error("{files} --region-file given for {clients} keel.blk= clients")]
    RegionFiles {
        /// Files given.
        files: usize,
        /// Clients.
        clients: usize,
    },
}

/// Why one client is not served.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Its parameter is malformed.
    #[error("{0}")]
    Cmdline(#[from] CmdlineError),
    /// Its region cannot be mapped.
    #[error("region: {0}")]
    Region(#[from] RegionError),
    /// Its disk cannot be found or opened.
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
    /// Its range does not fit the disk.
    #[error(
        "range [{start:#x}, {end:#x}) does not fit disk {serial:?} ({path}, {size} bytes)",
        path = path.display()
    )]
    Range {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u128,
        /// The disk's serial.
        serial: String,
        /// Its path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The server refused for another reason.
    #[error("{0}")]
    Server(BlockError),
}

/// A client being served.
struct Client {
    index: usize,
    /// Declared before `mapping`: dropped first (its rings point into the mapping).
    server: ForwardServer<FileBackend>,
    mapping: Mapping,
    spec: ClientSpec,
    /// A notification byte still to write.
    notify: bool,
    /// Its response ring is full with requests waiting.
    stalled: bool,
    /// Its request ring broke at this time (served no more until attached again).
    broken: Option<Instant>,
}

fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "keel-agent: {line}");
}

fn warn(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "keel-agent: {line}");
}

/// Wait up to `until` for `f` to succeed (devices appearing after boot).
fn retry<T, E>(until: Instant, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn open_client(
    opts: &Options,
    index: usize,
    spec: &ClientSpec,
    until: Instant,
) -> Result<Client, ClientError> {
    let mapping = match opts.region_files.get(index) {
        Some(file) => Mapping::file(file, spec.region_len)?,
        None => Mapping::dev_mem(spec.gpa, spec.region_len)?,
    };
    let windows = mapping.windows(spec.geometry)?;
    let path = match opts.disks.iter().find(|(s, _)| *s == spec.serial) {
        Some((_, p)) => p.clone(),
        None => retry(until, || {
            disk::find_by_serial(&opts.sys_block, &spec.serial)
        })?,
    };
    let disk = retry(until, || disk::open(&path, spec.range.read_only))?;
    let size = disk.size();
    let range = spec.range;
    let server = ForwardServer::new(windows, spec.geometry, disk, range).map_err(|e| match e {
        BlockError::OutOfRange { .. } => ClientError::Range {
            start: range.start,
            end: u128::from(range.start) + u128::from(range.size),
            serial: spec.serial.clone(),
            path: path.clone(),
            size,
        },
        other => ClientError::Server(other),
    })?;
    Ok(Client {
        index,
        server,
        mapping,
        spec: spec.clone(),
        notify: false,
        stalled: false,
        broken: None,
    })
}

/// Warn about read-write ranges that overlap another client's range on the same disk.
fn warn_overlaps(clients: &[Client]) {
    for (i, a) in clients.iter().enumerate() {
        for b in &clients[i + 1..] {
            let (ra, rb): (ClientRange, ClientRange) = (a.spec.range, b.spec.range);
            let overlap = ra.start < rb.start + rb.size && rb.start < ra.start + ra.size;
            if a.spec.serial == b.spec.serial && overlap && !(ra.read_only && rb.read_only) {
                warn(format_args!(
                    "warning: clients {} and {} have overlapping ranges of disk {:?} and one \
                     may write",
                    a.index, b.index, a.spec.serial
                ));
            }
        }
    }
}

/// Set every client up and serve them for ever; returns only if nothing can be served or
/// the doorbell fails.
pub fn run(opts: &Options) -> Result<std::convert::Infallible, AgentError> {
    let parsed = cmdline::parse(&opts.cmdline);
    if parsed.clients.is_empty() {
        return Err(AgentError::NoClients);
    }
    if !opts.region_files.is_empty() && opts.region_files.len() != parsed.clients.len() {
        return Err(AgentError::RegionFiles {
            files: opts.region_files.len(),
            clients: parsed.clients.len(),
        });
    }
    let bell_path = match (&opts.bell, parsed.bell) {
        (Some(p), _) => p.clone(),
        (None, Ok(Some(p))) => PathBuf::from(p),
        (None, Ok(None)) => return Err(AgentError::NoBell),
        (None, Err(e)) => return Err(AgentError::BadBell(e)),
    };
    let until = Instant::now() + DEVICE_WAIT;

    let total = parsed.clients.len();
    let mut clients = Vec::new();
    for (index, spec) in parsed.clients.into_iter().enumerate() {
        let opened = spec
            .map_err(ClientError::Cmdline)
            .and_then(|spec| open_client(opts, index, &spec, until));
        match opened {
            Ok(c) => {
                let s = &c.spec;
                say(format_args!(
                    "client {index}: {} [{:#x}, {:#x}) {}, region {:#x}+{:#x}",
                    s.serial,
                    s.range.start,
                    s.range.start + s.range.size,
                    s.access(),
                    s.gpa,
                    s.region_len
                ));
                clients.push(c);
            }
            Err(e) => warn(format_args!("client {index}: not served: {e}")),
        }
    }
    if clients.is_empty() {
        return Err(AgentError::NothingToServe(total));
    }
    warn_overlaps(&clients);
    let bell = retry(until, || Bell::open(&bell_path))?;
    say(format_args!(
        "serving {} of {total} clients, doorbell {}",
        clients.len(),
        bell.path().display()
    ));
    serve(clients, bell)
}

/// Drop the client's server and make it again over the same region and disk (its request
/// ring broke; a restarted client VMM may have reset it).
fn reattach(c: &mut Client) -> Result<(), String> {
    let disk = c.server.disk().try_clone().map_err(|e| e.to_string())?;
    let windows = c
        .mapping
        .windows(c.spec.geometry)
        .map_err(|e| e.to_string())?;
    c.server = ForwardServer::new(windows, c.spec.geometry, disk, c.spec.range)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn broke(c: &mut Client, e: &RingError) {
    if c.broken.is_none() {
        warn(format_args!(
            "client {}: request ring broken ({e}): not served until its VMM resets it",
            c.index
        ));
    }
    c.broken = Some(Instant::now());
}

/// The serving loop (see docs/driver-vms.md): round-robin with a budget, notifications
/// as the clients asked, and sleeping on the doorbell when every client is idle.
fn serve(mut clients: Vec<Client>, mut bell: Bell) -> Result<std::convert::Infallible, AgentError> {
    let bell_err = |path: &Path, source| AgentError::BellIo {
        path: path.to_path_buf(),
        source,
    };
    loop {
        let mut busy = false;
        let mut stalled = false;
        for c in clients.iter_mut() {
            if let Some(at) = c.broken {
                if at.elapsed() < REATTACH {
                    continue;
                }
                if let Err(e) = reattach(c) {
                    warn(format_args!("client {}: cannot attach again: {e}", c.index));
                    c.broken = Some(Instant::now());
                    continue;
                }
            }
            match c.server.serve(BUDGET) {
                Ok(s) => {
                    if c.broken.take().is_some() {
                        warn(format_args!(
                            "client {}: request ring usable again",
                            c.index
                        ));
                    }
                    c.notify |= s.notify;
                    c.stalled = s.more && s.requests == 0;
                    stalled |= c.stalled;
                    busy |= s.requests > 0 || (s.more && !c.stalled);
                }
                Err(e) => broke(c, &e),
            }
        }
        let mut unsent = false;
        for c in clients.iter_mut().filter(|c| c.notify) {
            match bell.notify(c.index as u8) {
                Ok(true) => c.notify = false,
                Ok(false) => unsent = true,
                Err(e) => return Err(bell_err(bell.path(), e)),
            }
        }
        if busy {
            bell.drain().map_err(|e| bell_err(bell.path(), e))?;
            continue;
        }
        // Idle: ask each client to ring when it publishes, then sleep unless one did
        // meanwhile.
        let mut raced = false;
        let mut broken = false;
        for c in clients.iter_mut() {
            if c.broken.is_some() {
                broken = true;
                continue;
            }
            if c.stalled {
                continue;
            }
            match c.server.arm_wakeup() {
                Ok(true) => {}
                Ok(false) => raced = true,
                Err(e) => {
                    broke(c, &e);
                    broken = true;
                }
            }
        }
        if !raced {
            let timeout = if stalled || unsent {
                STALLED_POLL_MS
            } else if broken {
                REATTACH.as_millis() as i32
            } else {
                IDLE_POLL_MS
            };
            let ready = bell
                .wait(timeout, unsent)
                .map_err(|e| bell_err(bell.path(), e))?;
            if ready.hangup && !ready.readable {
                // The VMM end is gone (a pty closed in tests): nothing will ring again.
                return Err(bell_err(
                    bell.path(),
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "hung up"),
                ));
            }
        }
        for c in clients.iter_mut().filter(|c| c.broken.is_none()) {
            c.server.woken();
        }
        bell.drain().map_err(|e| bell_err(bell.path(), e))?;
    }
}
