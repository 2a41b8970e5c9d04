//! The per-VM payload: how one generic VMM ELF learns which VM it runs.
//!
//! `keel sel4 build` appends the payload to the prebuilt `keel-sel4-vmm` ELF as an extra
//! `PT_LOAD` segment at [`PAYLOAD_VADDR`] (see [`crate::elf`]); the Microkit tool maps it
//! into the VMM protection domain like any other segment, and the VMM finds it there at
//! start. The payload is a header with a magic, a version and a table of blobs: the VM's
//! plan (`keel_spec::plan::VmPlan`, exactly what `plan_vm` decided: the same device slots,
//! windows and interrupts as on KVM), the seL4 parameters next to it ([`Sel4Params`]), the
//! kernel `Image`, the initrd and one blob per virtio-blk disk (the disk's bytes, writable:
//! the block device works on them in place).
//!
//! The plan and the parameters are encoded with postcard (serde's data model, a standard
//! no_std format); the header and the blob table are little-endian integers. The format is
//! versioned: a VMM refuses a payload of another version instead of misreading it.

use alloc::string::String;
use alloc::vec::Vec;

use keel_spec::VmPlan;
use serde::{Deserialize, Serialize};

/// Where the payload sits in the VMM protection domain's address space (4 GiB).
pub const PAYLOAD_VADDR: u64 = 0x1_0000_0000;
/// Where the VMM maps its guest's RAM in its own address space (8 GiB).
pub const GUEST_RAM_VADDR: u64 = 0x2_0000_0000;
/// Where the VMM maps its console ring (12 GiB; [`crate::console::VMM_RING_VADDR`]).
pub const CONSOLE_RING_VADDR: u64 = crate::console::VMM_RING_VADDR;
/// The guest-physical address whose write makes a VMM with the fault test knob fault
/// ([`Sel4Params::test_fault`]): not RAM, no device, no shared region of the test systems
/// (Linux's `/dev/mem` lets busybox `devmem` write there).
pub const TEST_FAULT_GPA: u64 = 0x7000_0000;
/// First bytes of the payload.
pub const MAGIC: [u8; 8] = *b"KEELPAY\0";
/// Payload format version (2: the plan and [`Sel4Params`] in postcard replace the
/// hand-serialized configuration of version 1; 3: the console ring and the stall knob
/// replace the console lock and the line prefix; 4: the reboot policy; 5: the network
/// interfaces' rings and channels; 6: the fault test knob; 7: pool slots, the control
/// doorbell and the admin channel; 8: the plan's passed-through devices, block-forwarding
/// links and vsock device; 9: the block-forwarding links' windows and channels; 10: the
/// vsock peers' rings and channels).
pub const VERSION: u32 = 10;
/// Bytes of the fixed header before the blob table.
const HEADER_LEN: usize = 32;
/// Bytes of one blob-table entry.
const ENTRY_LEN: usize = 24;
/// Blobs start on this alignment inside the payload.
const BLOB_ALIGN: usize = 4096;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BlobKind {
    /// The VM's plan (`keel_spec::VmPlan`, postcard).
    Plan = 1,
    /// The kernel `Image`.
    Kernel = 2,
    /// The initrd.
    Initrd = 3,
    /// A disk image (the n-th disk of the plan, in order).
    Disk = 4,
    /// The seL4 parameters ([`Sel4Params`], postcard).
    Sel4 = 5,
}

impl BlobKind {
    fn from_u32(v: u32) -> Option<BlobKind> {
        Some(match v {
            1 => BlobKind::Plan,
            2 => BlobKind::Kernel,
            3 => BlobKind::Initrd,
            4 => BlobKind::Disk,
            5 => BlobKind::Sel4,
            _ => return None,
        })
    }
}

/// What the VMM protection domain needs besides the VM's plan: where things are in its own
/// address space and how it shares the board with other VMMs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sel4Params {
    /// Where guest RAM (the plan's one RAM region) is mapped in the VMM.
    pub ram_vaddr: u64,
    /// Where this VMM's console ring is mapped (0: no console PD, print directly on the
    /// debug console). The ring's region is shared with the console PD only; the console
    /// PD prefixes lines with the VM's name in systems of several VMs.
    pub console_ring: u64,
    /// The console ring's length in bytes.
    pub console_ring_len: u64,
    /// The Microkit channel that notifies the console PD.
    pub console_channel: u32,
    /// Test knob (`KEEL_SEL4_TEST_STALL_VMM`): at its VM's first fault the VMM writes
    /// `KEEL-STALL-PARTIAL` into its console ring without a newline and stops handling
    /// faults for ever.
    pub test_stall: bool,
    /// Test knob (`KEEL_SEL4_TEST_FAULT_VMM`): when its guest writes to guest-physical
    /// [`TEST_FAULT_GPA`], the VMM makes a data access to an address it does not map, a
    /// real seL4 fault of the VMM PD, which the admin PD receives.
    pub test_fault: bool,
    /// Whether the system starts the VM (`false`: a pool slot; the VMM waits until the
    /// admin PD restarts it, see docs/sel4.md "The admin PD").
    pub start: bool,
    /// Guest-physical address of the VM's control doorbell (0: not a control VM): a guest
    /// write there notifies the admin PD on [`Sel4Params::admin_channel`].
    pub control_doorbell: u64,
    /// The VMM's channel to the admin PD.
    pub admin_channel: u32,
    /// Where this VMM's console input ring is mapped (0: no input): the console PD writes
    /// what is typed for this VM there and notifies on [`Sel4Params::console_channel`].
    pub console_input_ring: u64,
    /// The input ring's length in bytes.
    pub console_input_ring_len: u64,
    /// Seed for the VMM's virtio-rng generator, drawn from the build host's entropy
    /// source when the image was built (the PD has no entropy source of its own).
    pub rng_seed: [u8; 32],
    /// A guest reset (PSCI `SYSTEM_RESET`) restarts the VM in place (spec `on_reboot =
    /// "restart"`); otherwise it stops the VM.
    pub restart_on_reboot: bool,
    /// The spec's `max_restarts_per_minute` (the VMM counts restarts within a minute of
    /// the generic timer's count).
    pub max_restarts: u32,
    /// The network interfaces' rings and channels, indexed like the plan's `nics`.
    pub nics: Vec<NicWindows>,
    /// The forwarding links of this VM's served disks (it is their client), in disk order.
    pub forwards: Vec<ForwardWindow>,
    /// The channel to each client this VM serves (a storage VM), in its plan's `serves`
    /// order: the doorbell's output byte `i` notifies `serves[i]`; a notification on any of
    /// them is one input byte.
    pub serves: Vec<u32>,
    /// The rings and channel of each vsock peer, indexed like the plan's `vsock.peers`
    /// (the device's CID, each peer's CID and which side is the pair's first are the
    /// plan's).
    pub vsock: Vec<VsockWindows>,
}

/// Where the two rings of one vsock peer link are mapped in the VMM, and its channel to
/// the peer's VMM (mapped into those two VMMs only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockWindows {
    /// The `[vsock] allow` pair (the plan's peer names it too: the VMM checks they agree).
    pub pair: u32,
    /// The ring this VMM produces (its guest's packets to the peer).
    pub tx: u64,
    /// The ring this VMM consumes (the peer's packets).
    pub rx: u64,
    /// Bytes of each ring window.
    pub ring_len: u64,
    /// Slots of each ring.
    pub slots: u32,
    /// The channel to the peer's VMM: the doorbell both ways, and the link's event source.
    pub channel: u32,
}

/// Where one served disk's forwarding region is mapped in the client's VMM, and its
/// channel to the storage VM's VMM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardWindow {
    /// The disk (index into the plan's `disks`).
    pub disk: u32,
    /// Where the region is mapped.
    pub vaddr: u64,
    /// Its bytes (at least the plan's `region_len`).
    pub len: u64,
    /// The channel to the storage VM's VMM: the bell, and the device's event source.
    pub channel: u32,
}

/// Where one network interface's port rings are mapped in the VMM, and its channel to the
/// network's switch PD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicWindows {
    /// The to-switch ring (this VMM produces).
    pub to_switch: u64,
    /// The from-switch ring (this VMM consumes).
    pub from_switch: u64,
    /// Bytes of each ring window.
    pub ring_len: u64,
    /// Slots of each ring.
    pub slots: u32,
    /// The channel to the switch PD: the doorbell, and the device's event source.
    pub channel: u32,
}

/// The kernel command line Keel gives an arm64 guest on seL4: the 8250 console first
/// (`ttyS0`, earlycon at the plan's UART), then the description's arguments without its
/// own `console=`.
pub fn guest_cmdline(plan_cmdline: &str) -> String {
    let mut line = String::from("console=ttyS0 earlycon=uart8250,mmio,0x9000000");
    for a in plan_cmdline
        .split_whitespace()
        .filter(|a| !a.starts_with("console="))
    {
        line.push(' ');
        line.push_str(a);
    }
    line
}

/// What is wrong with a payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The bytes do not start with [`MAGIC`].
    #[error("no Keel payload (bad magic)")]
    BadMagic,
    /// Another format version.
    #[error("payload version {found} is not the supported version {VERSION}")]
    Version {
        /// Version found.
        found: u32,
    },
    /// A length or offset points outside the payload.
    #[error("payload {what} is truncated or out of bounds")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// An unknown blob kind.
    #[error("unknown payload blob kind {0}")]
    UnknownBlob(u32),
    /// A required blob is missing.
    #[error("payload has no {0:?} blob")]
    Missing(BlobKind),
    /// The plan's disks do not match the disk blobs.
    #[error("the plan names {plan} disks but the payload carries {blobs}")]
    DiskCount {
        /// Disks in the plan.
        plan: usize,
        /// Disk blobs.
        blobs: usize,
    },
    /// A postcard blob does not decode (or has bytes left over).
    #[error("payload {blob:?} blob does not decode: {reason}")]
    Decode {
        /// Which blob.
        blob: BlobKind,
        /// What postcard said.
        reason: postcard::Error,
    },
    /// The plan or the parameters cannot be encoded (postcard).
    #[error("cannot encode the payload's {blob:?} blob: {reason}")]
    Encode {
        /// Which blob.
        blob: BlobKind,
        /// What postcard said.
        reason: postcard::Error,
    },
}

/// The header of a protection domain's configuration payload (the console's and the
/// admin's, each with its own magic and version): magic, version, total length. The
/// configuration follows in postcard. (The switch's header also carries its heap.)
pub const CONFIG_HEADER_LEN: usize = 16;

/// What is wrong with a PD configuration payload ([`encode_config`], [`decode_config`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The header (magic, version, length) or the bounds.
    #[error("{0}")]
    Header(#[from] PayloadError),
    /// The configuration does not decode (or has bytes left over).
    #[error("does not decode: {0}")]
    Decode(postcard::Error),
    /// The configuration cannot be encoded.
    #[error("cannot be encoded: {0}")]
    Encode(postcard::Error),
    /// The encoded configuration is longer than its header can say.
    #[error("{0} bytes is too large")]
    TooLarge(usize),
}

/// `value` framed as a PD configuration payload: magic, version, total length, postcard.
pub fn encode_config<T: Serialize>(
    value: &T,
    magic: &[u8; 8],
    version: u32,
) -> Result<Vec<u8>, ConfigError> {
    let body = postcard::to_allocvec(value).map_err(ConfigError::Encode)?;
    let total = CONFIG_HEADER_LEN + body.len();
    let total = u32::try_from(total).map_err(|_| ConfigError::TooLarge(total))?;
    let mut w = Writer(Vec::with_capacity(total as usize));
    w.0.extend_from_slice(magic);
    w.u32(version);
    w.u32(total);
    w.0.extend_from_slice(&body);
    Ok(w.0)
}

/// The total length recorded in the first [`CONFIG_HEADER_LEN`] bytes of a PD configuration
/// payload (allocates nothing: a PD reads it before its heap exists).
pub fn config_total_len(
    header: &[u8],
    magic: &[u8; 8],
    version: u32,
) -> Result<usize, ConfigError> {
    let mut r = Reader::after_header(header, magic, version)?;
    Ok(r.u32("total length")? as usize)
}

/// Parse what [`encode_config`] wrote (all of it: no bytes may be left over); `what` names
/// the payload in a truncation error.
pub fn decode_config<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    magic: &[u8; 8],
    version: u32,
    what: &'static str,
) -> Result<T, ConfigError> {
    let total = config_total_len(bytes, magic, version)?;
    let body = bytes
        .get(CONFIG_HEADER_LEN..total)
        .ok_or(PayloadError::Truncated { what })?;
    match postcard::take_from_bytes(body) {
        Ok((cfg, [])) => Ok(cfg),
        Ok(_) => Err(ConfigError::Decode(postcard::Error::DeserializeBadEncoding)),
        Err(e) => Err(ConfigError::Decode(e)),
    }
}

pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes` past their magic and version, which must be `magic`, `version`.
    pub(crate) fn after_header(
        bytes: &'a [u8],
        magic: &[u8; 8],
        version: u32,
    ) -> Result<Reader<'a>, PayloadError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(8, "magic")? != magic {
            return Err(PayloadError::BadMagic);
        }
        let found = r.u32("version")?;
        if found != version {
            return Err(PayloadError::Version { found });
        }
        Ok(r)
    }
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PayloadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(PayloadError::Truncated { what })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, PayloadError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, PayloadError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Encode `value` as blob `blob`.
fn encode<T: Serialize>(blob: BlobKind, value: &T) -> Result<Vec<u8>, PayloadError> {
    postcard::to_allocvec(value).map_err(|reason| PayloadError::Encode { blob, reason })
}

/// Decode blob `blob`, all of it.
fn decode<'a, T: Deserialize<'a>>(blob: BlobKind, bytes: &'a [u8]) -> Result<T, PayloadError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(PayloadError::Decode {
            blob,
            reason: postcard::Error::DeserializeBadEncoding,
        }),
        Err(reason) => Err(PayloadError::Decode { blob, reason }),
    }
}

/// Build a payload from the VM's plan, its seL4 parameters and its blobs.
pub fn build(
    plan: &VmPlan,
    params: &Sel4Params,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    disks: &[&[u8]],
) -> Result<Vec<u8>, PayloadError> {
    let plan_blob = encode(BlobKind::Plan, plan)?;
    let params_blob = encode(BlobKind::Sel4, params)?;
    let mut blobs: Vec<(BlobKind, &[u8])> = alloc::vec![
        (BlobKind::Plan, &plan_blob[..]),
        (BlobKind::Sel4, &params_blob[..]),
        (BlobKind::Kernel, kernel)
    ];
    if let Some(i) = initrd {
        blobs.push((BlobKind::Initrd, i));
    }
    for d in disks {
        blobs.push((BlobKind::Disk, d));
    }
    let table_end = HEADER_LEN + blobs.len() * ENTRY_LEN;
    let mut offsets = Vec::with_capacity(blobs.len());
    let mut pos = table_end.next_multiple_of(BLOB_ALIGN);
    for (_, b) in &blobs {
        offsets.push(pos);
        pos = (pos + b.len()).next_multiple_of(BLOB_ALIGN);
    }
    let total = pos;
    let mut w = Writer(Vec::with_capacity(total));
    w.0.extend_from_slice(&MAGIC);
    w.u32(VERSION);
    w.u32(table_end as u32);
    w.u64(total as u64);
    w.u32(blobs.len() as u32);
    w.u32(0);
    for ((kind, b), off) in blobs.iter().zip(&offsets) {
        w.u32(*kind as u32);
        w.u32(0);
        w.u64(*off as u64);
        w.u64(b.len() as u64);
    }
    for ((_, b), off) in blobs.iter().zip(&offsets) {
        w.0.resize(*off, 0);
        w.0.extend_from_slice(b);
    }
    w.0.resize(total, 0);
    Ok(w.0)
}

/// A parsed payload: the plan, the seL4 parameters and where each blob is (offset, length)
/// inside the payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The VM's plan.
    pub plan: VmPlan,
    /// Its seL4 parameters.
    pub params: Sel4Params,
    /// Kernel `(offset, len)`.
    pub kernel: (usize, usize),
    /// Initrd `(offset, len)`.
    pub initrd: Option<(usize, usize)>,
    /// Disks `(offset, len)`, in the plan's order.
    pub disks: Vec<(usize, usize)>,
    /// Total payload length.
    pub total: usize,
}

/// Read the fixed header and return the payload's total length, to bound a raw view of it
/// before parsing the rest.
pub fn total_len(header: &[u8]) -> Result<usize, PayloadError> {
    let mut r = Reader::after_header(header, &MAGIC, VERSION)?;
    let _ = r.u32("header length")?;
    usize::try_from(r.u64("total length")?).map_err(|_| PayloadError::Truncated {
        what: "total length",
    })
}

/// Parse a payload.
pub fn parse(bytes: &[u8]) -> Result<Layout, PayloadError> {
    let total = total_len(bytes)?;
    if total > bytes.len() {
        return Err(PayloadError::Truncated { what: "payload" });
    }
    let bytes = &bytes[..total];
    let mut r = Reader { bytes, pos: 24 };
    let count = r.u32("blob count")?;
    let _ = r.u32("reserved")?;
    let mut plan = None;
    let mut params = None;
    let mut kernel = None;
    let mut initrd = None;
    let mut disks = Vec::new();
    for _ in 0..count {
        let kind = r.u32("blob kind")?;
        let _flags = r.u32("blob flags")?;
        let off = usize::try_from(r.u64("blob offset")?)
            .map_err(|_| PayloadError::Truncated { what: "blob" })?;
        let len = usize::try_from(r.u64("blob length")?)
            .map_err(|_| PayloadError::Truncated { what: "blob" })?;
        if off.checked_add(len).is_none_or(|e| e > total) {
            return Err(PayloadError::Truncated { what: "blob" });
        }
        match BlobKind::from_u32(kind).ok_or(PayloadError::UnknownBlob(kind))? {
            BlobKind::Plan => plan = Some(decode(BlobKind::Plan, &bytes[off..off + len])?),
            BlobKind::Sel4 => params = Some(decode(BlobKind::Sel4, &bytes[off..off + len])?),
            BlobKind::Kernel => kernel = Some((off, len)),
            BlobKind::Initrd => initrd = Some((off, len)),
            BlobKind::Disk => disks.push((off, len)),
        }
    }
    let plan: VmPlan = plan.ok_or(PayloadError::Missing(BlobKind::Plan))?;
    let params = params.ok_or(PayloadError::Missing(BlobKind::Sel4))?;
    let kernel = kernel.ok_or(PayloadError::Missing(BlobKind::Kernel))?;
    if plan.disks.len() != disks.len() {
        return Err(PayloadError::DiskCount {
            plan: plan.disks.len(),
            blobs: disks.len(),
        });
    }
    Ok(Layout {
        plan,
        params,
        kernel,
        initrd,
        disks,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_spec::plan::{CpuPlan, serial};
    use keel_spec::{Arch, DeviceKind, DevicePlan, DiskPlan};

    fn plan() -> VmPlan {
        VmPlan {
            name: "linux".into(),
            arch: Arch::Aarch64,
            vcpus: 2,
            ram: alloc::vec![(0x4000_0000, 256 << 20)],
            cmdline: "quiet".into(),
            serial: serial(Arch::Aarch64),
            devices: alloc::vec![DevicePlan {
                kind: DeviceKind::Block { disk: 0 },
                slot: 0,
                base: 0x0a00_0000,
                size: 0x200,
                irq: 16,
            }],
            disks: alloc::vec![DiskPlan {
                read_only: false,
                id: "data".into(),
                served: None,
            }],
            cpus: CpuPlan {
                vcpu_pcpus: Some(alloc::vec![0.into(), 1.into()]),
                priority: 100,
                budget_us: 1000,
                period_us: 1000,
            },
            nics: alloc::vec::Vec::new(),
            shared: alloc::vec![keel_spec::SharedMapPlan {
                region: "x".into(),
                base: 0x1_0000_0000,
                size: 0x1000,
                access: keel_spec::Access::ReadOnly,
            }],
            serves: alloc::vec::Vec::new(),
            passthrough: alloc::vec![keel_spec::PassthroughPlan {
                name: "disk0".into(),
                mmio: alloc::vec![(0x0a00_3000, 0x1000)],
                irqs: alloc::vec![79],
                dt: Some(("virtio,mmio".into(), alloc::vec![(0x0a00_3e00, 0x200)])),
                dma_identity: true,
            }],
            vsock: Some(keel_spec::VsockPlan {
                cid: 3,
                socket: None,
                peers: alloc::vec![keel_spec::VsockPeerPlan {
                    pair: 2,
                    vm: "b".into(),
                    cid: 4,
                    first: true,
                }],
            }),
        }
    }

    fn params() -> Sel4Params {
        Sel4Params {
            ram_vaddr: GUEST_RAM_VADDR,
            console_ring: CONSOLE_RING_VADDR,
            console_ring_len: crate::console::RING_SIZE,
            console_channel: crate::console::VMM_CHANNEL,
            test_stall: true,
            test_fault: false,
            start: true,
            control_doorbell: 0,
            admin_channel: 0,
            console_input_ring: CONSOLE_RING_VADDR + crate::console::OUTPUT_RING_LEN,
            console_input_ring_len: crate::console::INPUT_RING_LEN,
            rng_seed: [5; 32],
            restart_on_reboot: true,
            max_restarts: 7,
            nics: alloc::vec![NicWindows {
                to_switch: 0x4_0000_0000,
                from_switch: 0x4_0008_1000,
                ring_len: 0x80100,
                slots: 256,
                channel: 3,
            }],
            forwards: alloc::vec![ForwardWindow {
                disk: 0,
                vaddr: 0x6_0000_0000,
                len: 0x42_0000,
                channel: 4,
            }],
            serves: alloc::vec![5, 6],
            vsock: alloc::vec![VsockWindows {
                pair: 2,
                tx: 0x7_0000_0000,
                rx: 0x7_0008_1000,
                ring_len: 0x80100,
                slots: 256,
                channel: 7,
            }],
        }
    }

    fn payload(disks: &[&[u8]]) -> Vec<u8> {
        build(&plan(), &params(), b"K", None, disks).unwrap()
    }

    #[test]
    fn plan_and_params_come_back_as_they_went_in() {
        let p = payload(&[&[0u8; 1]]);

        let l = parse(&p).unwrap();

        assert_eq!((l.plan, l.params), (plan(), params()));
    }

    #[test]
    fn payload_blobs_are_found_where_build_put_them() {
        let disk = [7u8; 5000];

        let p = build(&plan(), &params(), b"KERNEL", Some(b"INITRD"), &[&disk]).unwrap();
        let l = parse(&p).unwrap();

        assert_eq!(&p[l.kernel.0..l.kernel.0 + l.kernel.1], b"KERNEL");
        let (io, il) = l.initrd.unwrap();
        assert_eq!(&p[io..io + il], b"INITRD");
        assert_eq!(l.disks[0].0 % 4096, 0);
        assert_eq!(&p[l.disks[0].0..l.disks[0].0 + 5000], &disk[..]);
        assert_eq!(l.total, p.len());
    }

    #[test]
    fn other_version_is_refused() {
        let mut p = payload(&[&[0u8; 1]]);
        p[8] = 9;

        assert_eq!(parse(&p), Err(PayloadError::Version { found: 9 }));
    }

    #[test]
    fn bad_magic_is_refused() {
        assert_eq!(parse(&[0u8; 64]), Err(PayloadError::BadMagic));
    }

    #[test]
    fn blob_past_the_end_is_refused() {
        let mut p = payload(&[&[0u8; 1]]);
        // The kernel entry is the third one: its length field at 32 + 2 * 24 + 16.
        p[96..104].copy_from_slice(&u64::MAX.to_le_bytes());

        assert_eq!(parse(&p), Err(PayloadError::Truncated { what: "blob" }));
    }

    #[test]
    fn disk_count_mismatch_is_refused() {
        let p = payload(&[]);

        assert_eq!(
            parse(&p),
            Err(PayloadError::DiskCount { plan: 1, blobs: 0 })
        );
    }

    #[test]
    fn truncated_plan_is_refused() {
        let blob = postcard::to_allocvec(&plan()).unwrap();

        assert!(matches!(
            decode::<VmPlan>(BlobKind::Plan, &blob[..blob.len() - 1]),
            Err(PayloadError::Decode {
                blob: BlobKind::Plan,
                ..
            })
        ));
    }

    #[test]
    fn trailing_bytes_after_the_params_are_refused() {
        let mut blob = postcard::to_allocvec(&params()).unwrap();
        blob.push(0);

        assert!(matches!(
            decode::<Sel4Params>(BlobKind::Sel4, &blob),
            Err(PayloadError::Decode {
                blob: BlobKind::Sel4,
                ..
            })
        ));
    }

    #[test]
    fn guest_cmdline_puts_the_8250_console_first_and_drops_the_descriptions_console() {
        assert_eq!(
            guest_cmdline("console=hvc0 quiet  rdinit=/init"),
            "console=ttyS0 earlycon=uart8250,mmio,0x9000000 quiet rdinit=/init"
        );
    }
}
