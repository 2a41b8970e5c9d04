//! The real `keel-agent` binary on the build host: regular files stand in for the
//! forwarding regions (`--region-file`) and the storage VM's disk (`--disk`), a pty for
//! the doorbell (`--bell`). The test is the client VMMs: `ForwardClient`s over the same
//! region files, with a doorbell that writes to the pty master and waits for the agent's
//! bytes (demultiplexed per client by index, as a VMM does), and raw ring access where a
//! hostile client VMM is played.
#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_agent::bell::open_pty;
use keel_agent::region::Mapping;
use keel_core::ring::slot::{Pop, Push, SlotConsumer, SlotProducer};
use keel_virtio::forward::{
    Doorbell, ForwardClient, ForwardGeometry, Op, RESPONSE_HEADER_LEN, RequestHeader, Status,
};
use keel_virtio::{BlockBackend, BlockError};

/// 8 slots of 4 KiB per ring.
const G: ForwardGeometry = ForwardGeometry {
    slots: 8,
    max_data: 4096,
};
const MIB: u64 = 1 << 20;
const DISK_LEN: u64 = 4 * MIB;
/// The disk's bytes before any client writes.
const FILL: u8 = 0x5a;
/// Clients: (start, size) on disk "store0". Client 3 does not fit the disk and must be
/// refused; client 4 (after it) must keep its index.
const RANGES: [(u64, u64); 5] = [
    (0, MIB),
    (MIB, MIB),
    (2 * MIB, MIB / 2),
    (3 * MIB, 2 * MIB),
    (2 * MIB + MIB / 2, MIB / 2),
];
/// How long a client waits for the agent when it must answer (a loaded host: generous).
const PATIENT_MS: u32 = 5000;

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "keel-agent-it-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed ^ (i >> 9) as u8)
        .collect()
}

/// The agent process and what it printed.
struct Agent {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn lines(&self) -> (Vec<String>, Vec<String>) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU time (user + system) it has used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // Fields 14 and 15 of stat(5): after "pid (comm) " they are at 11 and 12.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads its argument.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>, echo: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            eprintln!("[agent {echo}] {line}");
            into.lock().unwrap().push(line);
        }
    });
}

/// The pty between the agent and the "VMM": per-client notification channels.
struct Pty {
    master: Arc<File>,
    /// Kept open so the master never sees a hangup while the agent is down.
    _slave: File,
    slave_path: PathBuf,
    senders: Arc<Mutex<Vec<Option<Sender<()>>>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Pty {
    fn new() -> Pty {
        let (master, slave_path) = open_pty().unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .unwrap();
        raw(&slave);
        nonblocking(&master);
        let master = Arc::new(master);
        let senders: Arc<Mutex<Vec<Option<Sender<()>>>>> = Arc::new(Mutex::new(vec![None; 256]));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, senders, stop) = (master.clone(), senders.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: master.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, alive for the call.
                    unsafe { libc::poll(&mut p, 1, 50) };
                    while let Ok(n) = (&*master).read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let s = senders.lock().unwrap();
                        for &b in &buf[..n] {
                            if let Some(tx) = &s[b as usize] {
                                let _ = tx.send(());
                            }
                        }
                    }
                }
            })
        };
        Pty {
            master,
            _slave: slave,
            slave_path,
            senders,
            stop,
            reader: Some(reader),
        }
    }

    /// A doorbell for client `index` (its notifications; rings the agent).
    fn bell(&self, index: usize) -> PtyBell {
        let (tx, rx) = mpsc::channel();
        self.senders.lock().unwrap()[index] = Some(tx);
        PtyBell {
            master: self.master.clone(),
            rx,
            woken: Arc::new(AtomicU64::new(0)),
        }
    }

    fn ring(&self) {
        let _ = (&*self.master).write(&[0xff]);
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn raw(f: &File) {
    // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw edits it, tcsetattr
    // reads it; the descriptor is open.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
}

fn nonblocking(f: &File) {
    // SAFETY: fcntl on an open descriptor with integer arguments.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        assert_eq!(
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK),
            0
        );
    }
}

/// A client VMM's doorbell over the pty.
struct PtyBell {
    master: Arc<File>,
    rx: Receiver<()>,
    /// Notifications received.
    woken: Arc<AtomicU64>,
}

impl Doorbell for PtyBell {
    fn ring(&mut self) {
        // The value is ignored by the agent; a full pty buffer (agent down) drops it.
        let _ = (&*self.master).write(&[0x42]);
    }

    fn wait(&mut self, timeout_ms: u32) -> bool {
        match self
            .rx
            .recv_timeout(Duration::from_millis(timeout_ms.into()))
        {
            Ok(()) => {
                self.woken.fetch_add(1, Ordering::Relaxed);
                while self.rx.try_recv().is_ok() {}
                true
            }
            Err(_) => false,
        }
    }
}

/// A storage VM (the agent) with its disk, regions and doorbell.
struct Rig {
    dir: PathBuf,
    disk: PathBuf,
    regions: Vec<PathBuf>,
    pty: Pty,
    agent: Option<Agent>,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let dir = temp_dir(name);
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![FILL; DISK_LEN as usize]).unwrap();
        let regions = (0..RANGES.len())
            .map(|i| {
                let p = dir.join(format!("region{i}"));
                File::create(&p)
                    .unwrap()
                    .set_len(G.region_len() as u64)
                    .unwrap();
                p
            })
            .collect();
        let mut rig = Rig {
            dir,
            disk,
            regions,
            pty: Pty::new(),
            agent: None,
        };
        rig.start();
        rig
    }

    fn cmdline(&self) -> String {
        let mut c = String::from("console=hvc0 keel.blkbell=hvc9");
        for (i, (start, size)) in RANGES.iter().enumerate() {
            let gpa = 0x5000_0000 + i as u64 * 0x10_0000;
            c += &format!(
                " keel.blk={gpa:#x},{:#x},{},{},store0,{start:#x},{size},rw",
                G.region_len(),
                G.slots,
                G.max_data
            );
        }
        c
    }

    /// Start the agent and wait until it serves.
    fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel-agent"));
        cmd.arg("--cmdline")
            .arg(self.cmdline())
            .arg("--bell")
            .arg(&self.pty.slave_path)
            .arg("--disk")
            .arg(format!("store0={}", self.disk.display()));
        for r in &self.regions {
            cmd.arg("--region-file").arg(r);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone(), "out");
        collect(child.stderr.take().unwrap(), stderr.clone(), "err");
        let agent = Agent {
            child,
            stdout,
            stderr,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !agent.lines().0.iter().any(|l| l.contains("serving")) {
            assert!(
                Instant::now() < until,
                "the agent did not start: {:?}",
                agent.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.agent = Some(agent);
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().unwrap()
    }

    fn map(&self, index: usize) -> Mapping {
        Mapping::file(&self.regions[index], G.region_len()).unwrap()
    }

    /// A client VMM of client `index` (waiting `timeout_ms` for each answer).
    fn client(&self, index: usize, timeout_ms: u32) -> Client {
        let map = self.map(index);
        let bell = self.pty.bell(index);
        let woken = bell.woken.clone();
        let fc = ForwardClient::new(
            "store",
            map.windows(G).unwrap(),
            G,
            bell,
            RANGES[index].1,
            false,
            timeout_ms,
            // Ids past any an earlier client of this region used (ForwardClient::new).
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        );
        Client {
            fc,
            woken,
            _map: map,
        }
    }

    /// A hostile client VMM of client `index`, writing raw records.
    fn raw(&self, index: usize) -> Raw {
        let map = self.map(index);
        let (req, resp) = map.windows(G).unwrap();
        let mut cons = SlotConsumer::attach(resp);
        cons.skip_to_head().unwrap();
        Raw {
            prod: SlotProducer::attach(req),
            cons,
            buf: vec![0; G.slot_size()],
            _map: map,
        }
    }

    fn disk_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(&File::open(&self.disk).unwrap(), &mut b, at)
            .unwrap();
        b
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.agent = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client VMM's backend (the mapping outlives the client's rings: declared after).
struct Client {
    fc: ForwardClient<PtyBell>,
    /// Notifications its doorbell received (the agent wrote its index).
    woken: Arc<AtomicU64>,
    _map: Mapping,
}

struct Raw {
    prod: SlotProducer,
    cons: SlotConsumer,
    buf: Vec<u8>,
    _map: Mapping,
}

impl Raw {
    fn send(&mut self, rec: &[u8], pty: &Pty) -> bool {
        let sent = matches!(self.prod.push(rec), Ok(Push::Sent { .. }));
        pty.ring();
        sent
    }

    /// The next response's (id, status, data length), waiting up to `ms`.
    fn response(&mut self, ms: u64) -> Option<(u64, u32, u32)> {
        let until = Instant::now() + Duration::from_millis(ms);
        loop {
            match self.cons.pop(&mut self.buf).unwrap() {
                Pop::Record(n) => {
                    assert!(n >= RESPONSE_HEADER_LEN);
                    let b = &self.buf;
                    return Some((
                        u64::from_le_bytes(b[0..8].try_into().unwrap()),
                        u32::from_le_bytes(b[8..12].try_into().unwrap()),
                        u32::from_le_bytes(b[12..16].try_into().unwrap()),
                    ));
                }
                Pop::BadLength { len } => panic!("bad response length {len}"),
                Pop::Empty if Instant::now() >= until => return None,
                Pop::Empty => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

fn request(op: Op, id: u64, offset: u64, len: u32) -> Vec<u8> {
    RequestHeader {
        op,
        id,
        offset,
        len,
    }
    .encode()
    .to_vec()
}

#[test]
fn two_clients_write_read_discard_and_flush_their_own_ranges() {
    let mut rig = Rig::new("rw");
    let mut a = rig.client(0, PATIENT_MS);
    let mut b = rig.client(1, PATIENT_MS);
    let mut e = rig.client(4, PATIENT_MS);
    // 40 KiB + 512: ten pieces of 4 KiB and a bit, more than the 8 slots.
    let (pa, pb, pe) = (
        pattern(40 * 1024 + 512, 1),
        pattern(40 * 1024 + 512, 2),
        pattern(8192, 3),
    );

    a.fc.write_at(4096, &pa).unwrap();
    b.fc.write_at(4096, &pb).unwrap();
    e.fc.write_at(MIB / 2 - 8192, &pe).unwrap();
    let (mut ra, mut rb) = (vec![0; pa.len()], vec![0; pb.len()]);
    a.fc.read_at(4096, &mut ra).unwrap();
    b.fc.read_at(4096, &mut rb).unwrap();
    a.fc.discard(8192, 8192).unwrap();
    a.fc.flush().unwrap();
    b.fc.flush().unwrap();

    assert_eq!(ra, pa);
    assert_eq!(rb, pb);
    assert_eq!(rig.disk_bytes(4096, 4096), pa[..4096]);
    assert_eq!(rig.disk_bytes(8192, 8192), vec![0; 8192]);
    assert_eq!(rig.disk_bytes(16384, pa.len() - 12288), pa[12288..]);
    assert_eq!(rig.disk_bytes(MIB + 4096, pb.len()), pb);
    assert_eq!(rig.disk_bytes(3 * MIB - 8192, 8192), pe);
    // Untouched around them.
    assert_eq!(rig.disk_bytes(0, 4096), vec![FILL; 4096]);
    assert_eq!(rig.disk_bytes(MIB, 4096), vec![FILL; 4096]);
    assert_eq!(a.fc.counters().failed, 0);
    // Each client was told about its responses by its own index (a client that is not
    // waits its whole timeout each time: 5 s).
    assert!(a.woken.load(Ordering::Relaxed) > 0);
    assert!(b.woken.load(Ordering::Relaxed) > 0);
    assert!(e.woken.load(Ordering::Relaxed) > 0);

    let (out, err) = rig.agent().lines();
    assert!(
        out.contains(
            &"keel-agent: client 0: store0 [0x0, 0x100000) rw, region 0x50000000+0x12000"
                .to_string()
        ),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("keel-agent: client 4: store0 [0x280000, 0x300000) rw")),
        "{out:?}"
    );
    let serving = format!(
        "keel-agent: serving 4 of 5 clients, doorbell {}",
        rig.pty.slave_path.display()
    );
    assert!(out.contains(&serving), "{out:?}");
    assert!(
        err.iter().any(|l| l.starts_with(
            "keel-agent: client 3: not served: range [0x300000, 0x500000) does not fit disk \"store0\""
        )),
        "{err:?}"
    );
}

#[test]
fn requests_outside_a_clients_range_are_refused_by_the_agent() {
    let rig = Rig::new("range");
    let mut raw = rig.raw(2);
    let size = RANGES[2].1;
    let mut write_past = request(Op::Write, 1, size, 512);
    write_past.extend_from_slice(&[0xee; 512]);
    let mut straddling = request(Op::Write, 2, size - 512, 1024);
    straddling.extend_from_slice(&[0xee; 1024]);
    let mut inside = request(Op::Write, 5, size - 512, 512);
    inside.extend_from_slice(&[0xcc; 512]);

    let mut got = Vec::new();
    for rec in [
        write_past,
        straddling,
        request(Op::Read, 3, u64::MAX - 100, 512),
        request(Op::Zero, 4, size, 4096),
        inside,
    ] {
        assert!(raw.send(&rec, &rig.pty));
        got.push(raw.response(10_000));
    }

    let out = Status::OutOfRange as u32;
    assert_eq!(
        got,
        [
            Some((1, out, 0)),
            Some((2, out, 0)),
            Some((3, out, 0)),
            Some((4, out, 0)),
            Some((5, Status::Ok as u32, 0)),
        ]
    );
    // The next client's range (client 4 starts where client 2 ends) is untouched.
    let end = RANGES[2].0 + size;
    assert_eq!(rig.disk_bytes(end, 8192), vec![FILL; 8192]);
    assert_eq!(rig.disk_bytes(end - 512, 512), vec![0xcc; 512]);
}

#[test]
fn a_flooding_client_does_not_stop_the_other_being_served() {
    let mut rig = Rig::new("flood");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // Client 2 floods: reads of 4 KiB, the ring always full, responses taken as they come.
    let flooder = {
        let mut raw = rig.raw(2);
        let (stop, answered) = (stop.clone(), answered.clone());
        let master = rig.pty.master.clone();
        std::thread::spawn(move || {
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while let Ok(Push::Sent { .. }) =
                    raw.prod
                        .push(&request(Op::Read, id, (id % 128) * 4096, 4096))
                {
                    id += 1;
                }
                let _ = (&*master).write(&[2]);
                while let Some((_, status, _)) = raw.response(0) {
                    assert_eq!(status, Status::Ok as u32);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::yield_now();
            }
        })
    };
    let mut a = rig.client(0, PATIENT_MS);
    while answered.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }

    let before = answered.load(Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..20u8 {
        let data = pattern(16 * 1024, i);
        a.fc.write_at(u64::from(i) * 16384, &data).unwrap();
        let mut back = vec![0; data.len()];
        a.fc.read_at(u64::from(i) * 16384, &mut back).unwrap();
        assert_eq!(back, data);
    }
    let took = started.elapsed();
    let during = answered.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();

    eprintln!("40 requests of client 0 took {took:?} while the flooder got {during} answers");
    assert_eq!(a.fc.counters().failed, 0);
    assert_eq!(a.fc.counters().timeouts, 0);
    assert!(during > 0, "the flooder was not served meanwhile");

    // A client that floods and never reads its responses: it stalls itself only, and the
    // agent does not spin on it.
    let mut stuck = rig.raw(2);
    // Its requests fill its response ring, then its request ring, which stays full.
    let mut id = 1000;
    let mut full_since = None;
    while full_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(300)) {
        if stuck.send(&request(Op::Read, id, 0, 512), &rig.pty) {
            id += 1;
            full_since = None;
        } else {
            full_since.get_or_insert_with(Instant::now);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(stuck.prod.pending().unwrap(), G.slots);
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = rig.agent().cpu();
    let t0 = Instant::now();
    for i in 0..5u8 {
        a.fc.write_at(0, &pattern(4096, i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = rig.agent().cpu() - cpu0;
    let wall = t0.elapsed();
    eprintln!("agent used {cpu:?} of CPU in {wall:?} with a stalled client");
    assert!(
        cpu < wall / 4,
        "the agent spins on a stalled client: {cpu:?} of CPU in {wall:?}"
    );
    assert_eq!(a.fc.counters().failed, 0);
}

#[test]
fn requests_fail_within_the_timeout_while_the_agent_is_down_and_work_after_restart() {
    let mut rig = Rig::new("restart");
    let mut a = rig.client(0, 1000);
    let data = pattern(8192, 9);
    a.fc.write_at(0, &data).unwrap();

    rig.agent().kill();
    let mut failures = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let got = a.fc.read_at(0, &mut [0; 4096]);
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(1000 + 2000),
            "failing took {took:?}"
        );
        failures.push(got);
    }
    for f in &failures {
        let Err(BlockError::Io { message, .. }) = f else {
            panic!("{failures:?}")
        };
        assert!(
            message.contains("did not answer within 1000 ms"),
            "{message}"
        );
    }

    rig.start();
    // The same client VMM, still running: its next requests are served (and answered
    // with a notification, not found after the timeout).
    let mut back = vec![0; data.len()];
    let t = Instant::now();
    a.fc.read_at(0, &mut back).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(back, data);
    a.fc.write_at(8192, &data).unwrap();
    a.fc.flush().unwrap();
    assert_eq!(rig.disk_bytes(8192, data.len()), data);
    assert_eq!(a.fc.counters().failed, 3);
}

#[test]
fn a_client_that_breaks_its_ring_is_served_again_once_its_vmm_resets_it() {
    let rig = Rig::new("broken");
    let map = rig.map(2);
    let word = |at: usize| {
        // SAFETY: offsets 0 (`head`) and 128 (`tail`) of the request ring: 8-aligned words
        // inside the mapping, which outlives these uses; the agent accesses them only as
        // atomics too.
        unsafe { &*map.as_ptr().add(at).cast::<AtomicU64>() }
    };
    // A hostile client VMM announces 1000 records in a ring of 8.
    let tail = word(128).load(Ordering::Acquire);
    word(0).store(tail + 1000, Ordering::Release);
    rig.pty.ring();
    let agent = rig.agent.as_ref().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !agent.lines().1.iter().any(|l| {
        l.starts_with("keel-agent: client 2: request ring broken")
            && l.ends_with("not served until its VMM resets it")
    }) {
        assert!(Instant::now() < until, "{:?}", agent.lines());
        std::thread::sleep(Duration::from_millis(10));
    }

    // The others are served meanwhile.
    let mut a = rig.client(0, PATIENT_MS);
    a.fc.write_at(0, &pattern(4096, 1)).unwrap();

    // Its VMM restarts: attaching resets the wild index; within a second the agent
    // attaches the ring again (skipping what was in it then) and serves it.
    let mut c = rig.client(2, PATIENT_MS);
    assert_eq!(word(0).load(Ordering::Relaxed), tail);
    let until = Instant::now() + Duration::from_secs(10);
    while !agent
        .lines()
        .1
        .contains(&"keel-agent: client 2: request ring usable again".to_string())
    {
        assert!(Instant::now() < until, "{:?}", agent.lines());
        std::thread::sleep(Duration::from_millis(10));
    }
    let data = pattern(8192, 2);
    c.fc.write_at(4096, &data).unwrap();
    assert_eq!(rig.disk_bytes(RANGES[2].0 + 4096, data.len()), data);
}
