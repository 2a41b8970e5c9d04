//! The virtio-vsock device over the Linux host side, with real Unix sockets: a mock guest
//! driver on one side, host programs (a listener at `<socket>_<port>`, a client of the VM's
//! socket) on the other.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_core::GuestAddress;
use keel_kvm::vsock::{SharedVsockHost, UnixVsockHost};
use keel_virtio::mmio::reg;
use keel_virtio::testing::GuestDriver;
use keel_virtio::vsock::{
    HDR_LEN, HOST_CID, HOST_EVENT, Header, RXQ, TXQ, TYPE_STREAM, Vsock, VsockHost, op,
};

const GUEST: u64 = 3;
const RX_LEN: u32 = 4096 + HDR_LEN as u32;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("keel-vsock-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Guest {
    d: GuestDriver<Vsock<Box<dyn VsockHost>>>,
    tx: u64,
    rx_bufs: Vec<u64>,
    next_rx: usize,
    rx_by_head: BTreeMap<u16, u64>,
    rx_seen: u16,
    /// The RW payloads received, in order (one connection at a time).
    got: Vec<u8>,
}

impl Guest {
    fn new(host: Box<dyn VsockHost>) -> Guest {
        Guest::with_device(Vsock::new(GUEST as u32, host))
    }

    fn with_device(device: Vsock<Box<dyn VsockHost>>) -> Guest {
        let mut d = GuestDriver::start(device);
        let tx = d.alloc(HDR_LEN as u32 + 4096);
        let rx_bufs = (0..8).map(|_| d.alloc(RX_LEN)).collect();
        Guest {
            d,
            tx,
            rx_bufs,
            next_rx: 0,
            rx_by_head: BTreeMap::new(),
            rx_seen: 0,
            got: Vec::new(),
        }
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.rx_bufs[self.next_rx % self.rx_bufs.len()];
            self.next_rx += 1;
            let head = self.d.post(RXQ, &[(at, RX_LEN, true)]);
            self.rx_by_head.insert(head, at);
        }
        self.d.write_reg(reg::QUEUE_NOTIFY, u32::from(RXQ));
    }

    fn send(&mut self, op: u16, src_port: u32, dst_port: u32, payload: &[u8]) {
        self.send_as(GUEST, HOST_CID, op, src_port, dst_port, payload);
    }

    fn send_as(
        &mut self,
        src: u64,
        dst: u64,
        op: u16,
        src_port: u32,
        dst_port: u32,
        payload: &[u8],
    ) {
        let h = Header {
            src_cid: src,
            dst_cid: dst,
            src_port,
            dst_port,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: self.got.len() as u32,
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(payload);
        self.d.mem.write(GuestAddress(self.tx), &bytes).unwrap();
        self.d.submit(TXQ, &[(self.tx, bytes.len() as u32, false)]);
    }

    /// Packets received since the last call (a receive buffer is posted again for each);
    /// RW payloads are appended to `got`.
    fn recv(&mut self) -> Vec<Header> {
        let mut out = Vec::new();
        loop {
            let q = &self.d.queues[usize::from(RXQ)];
            let idx = q.used_idx(&*self.d.mem);
            if self.rx_seen == idx {
                break;
            }
            let (id, len) = q.used_elem(&*self.d.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let at = self.rx_by_head[&(id as u16)];
            let bytes = self.d.read_mem(at, len as usize);
            let h = Header::decode(bytes[..HDR_LEN].try_into().unwrap());
            if h.op == op::RW {
                self.got.extend_from_slice(&bytes[HDR_LEN..]);
            }
            out.push(h);
            self.post_rx(1);
        }
        out
    }

    /// Deliver the host event until `done` holds (at most 5 s).
    fn until(&mut self, mut done: impl FnMut(&mut Guest, &[Header]) -> bool) {
        let start = Instant::now();
        loop {
            self.d.transport.handle_event(HOST_EVENT);
            let got = self.recv();
            if done(self, &got) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn guest_connects_to_a_host_listener_and_echoes_through_it() {
    let dir = Dir::new("echo");
    let path = dir.0.join("vm.vsock");
    let host = SharedVsockHost::new(UnixVsockHost::bind(&path).unwrap());
    let listener = UnixListener::bind(dir.0.join("vm.vsock_5000")).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let mut g = Guest::new(host.attach());
    g.post_rx(8);

    g.send(op::REQUEST, 1234, 5000, &[]);
    assert_eq!(
        g.recv().iter().map(|h| h.op).collect::<Vec<_>>(),
        [op::RESPONSE]
    );
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    g.send(op::RW, 1234, 5000, &data);
    g.until(|g, _| g.got.len() >= data.len());
    assert_eq!(g.got, data);
    // The guest closes: SHUTDOWN with both flags, answered with RST.
    let h = Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 5000,
        kind: TYPE_STREAM,
        op: op::SHUTDOWN,
        flags: 3,
        ..Header::default()
    };
    let bytes = h.encode();
    g.d.mem.write(GuestAddress(g.tx), &bytes).unwrap();
    g.d.submit(TXQ, &[(g.tx, HDR_LEN as u32, false)]);

    g.until(|_, got| got.iter().any(|h| h.op == op::RST));
    assert_eq!(echo.join().unwrap(), data.len());
}

#[test]
fn host_client_connects_with_a_connect_line_and_talks_to_the_guest() {
    let dir = Dir::new("client");
    let path = dir.0.join("vm.vsock");
    let host = SharedVsockHost::new(UnixVsockHost::bind(&path).unwrap());
    let mut g = Guest::new(host.attach());
    g.post_rx(8);
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();

    let mut req = None;
    g.until(|_, got| {
        req = got.iter().find(|h| h.op == op::REQUEST).copied();
        req.is_some()
    });
    let req = req.unwrap();
    assert_eq!((req.src_cid, req.dst_port), (HOST_CID, 52));
    g.send(op::RESPONSE, 52, req.src_port, &[]);

    let mut line = String::new();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));
    client.write_all(b"from the host").unwrap();
    g.until(|g, _| g.got.len() >= 13);
    assert_eq!(g.got, b"from the host");
    g.send(op::RW, 52, req.src_port, b"from the guest");
    let mut back = [0u8; 14];
    reader.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"from the guest");
    drop(reader);
    drop(client);
    g.until(|_, got| got.iter().any(|h| h.op == op::SHUTDOWN));
}

#[test]
fn a_guest_connection_to_a_host_port_without_a_listener_is_reset() {
    let dir = Dir::new("refused");
    let path = dir.0.join("vm.vsock");
    let host = SharedVsockHost::new(UnixVsockHost::bind(&path).unwrap());
    let mut g = Guest::new(host.attach());
    g.post_rx(2);

    g.send(op::REQUEST, 1234, 9999, &[]);

    let got = g.recv();
    assert_eq!(got.iter().map(|h| h.op).collect::<Vec<_>>(), [op::RST]);
    assert_eq!((got[0].src_port, got[0].dst_port), (9999, 1234));
}

/// Guest `cid`'s device, linked to `peer` over `link` (its view of a pair's rings).
fn linked_guest(
    cid: u32,
    peer: u32,
    link: keel_kvm::net::PortFds,
) -> (Guest, Vec<keel_kvm::net::Mapping>) {
    let slots = u64::from(keel_spec::plan::VSOCK_RING_SLOTS);
    let to = link.to_switch.map().unwrap();
    let from = link.from_switch.map().unwrap();
    // SAFETY: the mappings are returned to the test and outlive the device.
    let windows = unsafe {
        keel_net::port::PortWindows {
            to_switch: to.frame_window(slots).unwrap(),
            from_switch: from.frame_window(slots).unwrap(),
        }
    };
    let event =
        keel_virtio::device::EventSource(std::os::fd::AsRawFd::as_raw_fd(&link.wait_on) as u64);
    let port = keel_net::port::VmmPort::new(
        windows,
        Box::new(keel_kvm::net::EventFdBell(link.ring_peer)),
        Some(event),
    );
    let device = Vsock::new(
        cid,
        Box::new(keel_virtio::vsock::NoHost) as Box<dyn VsockHost>,
    )
    .with_peer(peer, Box::new(port));
    (Guest::with_device(device), vec![to, from])
}

#[test]
fn two_guests_of_an_allowed_pair_talk_over_their_shared_rings() {
    let len = keel_spec::plan::ring_window_len(keel_spec::plan::VSOCK_RING_SLOTS) as usize;
    let link = keel_kvm::net::PortFds::create("vsock-test", len).unwrap();
    // The second VM's view: the rings and eventfds the other way round.
    let dup = |m: &keel_kvm::net::SharedMemory| {
        keel_kvm::net::SharedMemory::from_fd(m.fd().try_clone().unwrap()).unwrap()
    };
    let other = keel_kvm::net::PortFds {
        to_switch: dup(&link.from_switch),
        from_switch: dup(&link.to_switch),
        ring_peer: link.wait_on.try_clone().unwrap(),
        wait_on: link.ring_peer.try_clone().unwrap(),
    };
    let (mut a, _ma) = linked_guest(3, 4, link);
    let (mut b, _mb) = linked_guest(4, 3, other);
    a.post_rx(4);
    b.post_rx(4);
    let peer_event = keel_virtio::device::EventToken(keel_virtio::vsock::PEER_EVENT_BASE);

    a.send_as(3, 4, op::REQUEST, 1000, 80, &[]);
    b.d.transport.handle_event(peer_event);
    let got = b.recv();
    assert_eq!(
        got.iter()
            .map(|h| (h.op, h.src_cid, h.src_port))
            .collect::<Vec<_>>(),
        [(op::REQUEST, 3, 1000)]
    );
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    b.send_as(4, 3, op::RESPONSE, 80, 1000, &[]);
    b.send_as(4, 3, op::RW, 80, 1000, &data);
    a.d.transport.handle_event(peer_event);
    let got = a.recv();

    assert_eq!(got[0].op, op::RESPONSE);
    assert!(got[1..].iter().all(|h| h.op == op::RW && h.src_cid == 4));
    assert_eq!(a.got, data);
}
