//! The agent in the real arm64 guest image under QEMU (TCG), mapping its regions from
//! `/dev/mem` as Device memory: the forwarding regions are an `ivshmem-plain` BAR (outside
//! the guest's RAM, claimed by no driver) backed by a host file this test maps too, the
//! doorbell a virtconsole port on a unix socket, the disk a virtio-blk device found by its
//! serial. Two client VMMs (this test) write, read, discard and flush through it.
//!
//! Slow and needs `qemu-system-aarch64` and the image (it runs `guest/linux/build.sh arm64`),
//! so it is ignored by default: `cargo test -p keel-agent --test qemu -- --ignored`.
#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_agent::region::Mapping;
use keel_core::ring::slot::{Pop, SlotConsumer, SlotProducer};
use keel_virtio::BlockBackend;
use keel_virtio::forward::{
    Doorbell, ForwardClient, ForwardGeometry, Op, RESPONSE_HEADER_LEN, RequestHeader, Status,
};

const G: ForwardGeometry = ForwardGeometry {
    slots: 8,
    max_data: 4096,
};
/// The ivshmem BAR: both regions, one at 0 and one at `SECOND`.
const BAR_LEN: u64 = 1 << 20;
const SECOND: usize = 0x4_0000;
const MIB: u64 = 1 << 20;
const FILL: u8 = 0x5a;
/// Client ranges on disk "store0" (8 MiB).
const RANGES: [(u64, u64); 2] = [(MIB, 2 * MIB), (4 * MIB, MIB)];

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct SockBell {
    sock: UnixStream,
    rx: Receiver<()>,
}

impl Doorbell for SockBell {
    fn ring(&mut self) {
        let _ = self.sock.write_all(&[0x77]);
    }
    fn wait(&mut self, timeout_ms: u32) -> bool {
        match self
            .rx
            .recv_timeout(Duration::from_millis(timeout_ms.into()))
        {
            Ok(()) => {
                while self.rx.try_recv().is_ok() {}
                true
            }
            Err(_) => false,
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 10) as u8)
        .collect()
}

#[test]
#[ignore = "boots the arm64 guest image under QEMU: run with --ignored"]
fn the_agent_serves_two_clients_from_dev_mem_in_the_arm64_guest() {
    let out = Command::new("bash")
        .arg(repo().join("guest/linux/build.sh"))
        .arg("arm64")
        .stderr(Stdio::inherit())
        .output()
        .expect("guest/linux/build.sh");
    assert!(out.status.success(), "build.sh failed");
    let img = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );

    let dir = std::env::temp_dir().join(format!("keel-agent-qemu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let region = dir.join("region");
    File::create(&region).unwrap().set_len(BAR_LEN).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![FILL; 8 * MIB as usize]).unwrap();
    let sock = dir.join("bell.sock");

    // In the guest: enable the ivshmem device's memory decoding (no driver does), read its
    // BAR 2 (the shared memory) and run the agent on it with the real /dev/mem.
    let blk = |gpa: &str, (start, size): (u64, u64)| {
        format!(
            "keel.blk={gpa},{},{},{},store0,{start},{size},rw",
            G.region_len(),
            G.slots,
            G.max_data
        )
    };
    let snippet = format!(
        "d=$(grep -l 0x1110 /sys/bus/pci/devices/*/device); d=${{d%/device}}\n\
         echo 1 > $d/enable\n\
         gpa=$(sed -n 3p $d/resource | cut -d' ' -f1)\n\
         gpa2=$((gpa + {SECOND}))\n\
         keel-agent --cmdline \"{} {} keel.blkbell=hvc0\"\n",
        blk("$gpa", RANGES[0]),
        blk("$gpa2", RANGES[1]),
    );
    let b64 = {
        let mut c = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(snippet.as_bytes())
            .unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
    };
    let mut child =
        Command::new(std::env::var("QEMU_SYSTEM").unwrap_or("qemu-system-aarch64".into()))
            .args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a57",
                "-m",
                "256M",
                "-smp",
                "1",
            ])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(img.join("vmlinuz"))
            .arg("-initrd")
            .arg(img.join("initrd.cpio.gz"))
            .arg("-append")
            .arg(format!("console=ttyAMA0 quiet keel.cmd={b64}"))
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=hm,share=on,mem-path={},size={BAR_LEN}",
                region.display()
            ))
            .args(["-device", "ivshmem-plain,memdev=hm"])
            .arg("-drive")
            .arg(format!("if=none,id=d1,file={},format=raw", disk.display()))
            .args(["-device", "virtio-blk-device,drive=d1,serial=store0"])
            .args(["-device", "virtio-serial-device"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=bell,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["-device", "virtconsole,chardev=bell"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-aarch64");
    let console = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (out, console) = (child.stdout.take().unwrap(), console.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("[guest] {line}");
                console.lock().unwrap().push(line);
            }
        });
    }
    let _qemu = Qemu(child);
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        let lines = console.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("keel-agent: serving")) {
            break;
        }
        assert!(
            !lines.iter().any(|l| l.contains("KEEL-CMD-EXIT")),
            "the agent ended: {lines:#?}"
        );
        assert!(Instant::now() < until, "no agent: {lines:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The VMM side: the doorbell socket, demultiplexed by client index.
    let stream = UnixStream::connect(&sock).unwrap();
    let senders: Vec<Sender<()>>;
    let mut receivers = Vec::new();
    {
        let (a, b) = (mpsc::channel(), mpsc::channel());
        senders = vec![a.0, b.0];
        receivers.push(a.1);
        receivers.push(b.1);
    }
    {
        let mut r = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if let Some(tx) = senders.get(b as usize) {
                        let _ = tx.send(());
                    }
                }
            }
        });
    }
    let map = Mapping::file(&region, BAR_LEN as usize).unwrap();
    let windows = |off: usize| {
        // SAFETY: `off + region_len <= BAR_LEN`: inside the mapping, which outlives every
        // client of this test (dropped at its end, after them); reached only through rings.
        unsafe { G.windows(map.as_ptr().add(off), G.region_len()) }.unwrap()
    };
    let mut clients: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let bell = SockBell {
                sock: stream.try_clone().unwrap(),
                rx,
            };
            ForwardClient::new(
                "storage-vm",
                windows(i * SECOND),
                G,
                bell,
                RANGES[i].1,
                false,
                20_000,
                1 + i as u64 * (1 << 40),
            )
        })
        .collect();

    let (pa, pb) = (pattern(64 * 1024 + 512, 1), pattern(20 * 1024, 2));
    clients[0].write_at(512, &pa).unwrap();
    clients[1]
        .write_at(RANGES[1].1 - pb.len() as u64, &pb)
        .unwrap();
    let mut back = vec![0; pa.len()];
    clients[0].read_at(512, &mut back).unwrap();
    assert_eq!(back, pa);
    clients[0].discard(8192, 8192).unwrap();
    clients[0].flush().unwrap();
    clients[1].flush().unwrap();

    let bytes = std::fs::read(&disk).unwrap();
    let a0 = RANGES[0].0 as usize;
    assert_eq!(bytes[a0 + 512..a0 + 8192], pa[..8192 - 512]);
    assert!(bytes[a0 + 8192..a0 + 16384].iter().all(|&b| b == 0));
    assert_eq!(bytes[a0 + 16384..a0 + 512 + pa.len()], pa[16384 - 512..]);
    let b_end = (RANGES[1].0 + RANGES[1].1) as usize;
    assert_eq!(bytes[b_end - pb.len()..b_end], pb);
    assert_eq!(bytes[a0 - 512..a0], [FILL; 512]);
    assert_eq!(bytes[b_end..b_end + 512], [FILL; 512]);

    // A hostile client VMM writes past its range: refused in the guest.
    drop(clients);
    let (req, resp) = windows(SECOND);
    let mut p = SlotProducer::attach(req);
    let mut c = SlotConsumer::attach(resp);
    c.skip_to_head().unwrap();
    let mut rec = RequestHeader {
        op: Op::Write,
        id: 77,
        offset: RANGES[1].1,
        len: 512,
    }
    .encode()
    .to_vec();
    rec.extend_from_slice(&[0xee; 512]);
    p.push(&rec).unwrap();
    (&stream).write_all(&[1]).unwrap();
    let mut buf = vec![0; G.slot_size()];
    let until = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match c.pop(&mut buf).unwrap() {
            Pop::Record(n) => break n,
            _ if Instant::now() > until => panic!("no answer"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert!(got >= RESPONSE_HEADER_LEN);
    assert_eq!(u64::from_le_bytes(buf[0..8].try_into().unwrap()), 77);
    assert_eq!(
        u32::from_le_bytes(buf[8..12].try_into().unwrap()),
        Status::OutOfRange as u32
    );
    let lines = console.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("keel-agent: client 1: store0 [0x400000, 0x500000) rw, region 0x")),
        "{lines:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
