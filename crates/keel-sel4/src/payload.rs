//! The per-VM payload: how one generic VMM ELF learns which VM it runs.
//!
//! `keel sel4 build` appends the payload to the prebuilt `keel-sel4-vmm` ELF as an extra
//! `PT_LOAD` segment at [`PAYLOAD_VADDR`] (see [`crate::elf`]); the Microkit tool maps it
//! into the VMM protection domain like any other segment, and the VMM finds it there at
//! start. The payload is a header with a magic, a version and a table of blobs:
//! the VM configuration ([`VmConfig`], serialized here), the kernel `Image`, the initrd
//! and one blob per virtio-blk disk (the disk's bytes, writable: the block device works
//! on them in place).
//!
//! All integers are little endian. The format is versioned: a VMM refuses a payload of
//! another version instead of misreading it.

use alloc::string::String;
use alloc::vec::Vec;

/// Where the payload sits in the VMM protection domain's address space (4 GiB).
pub const PAYLOAD_VADDR: u64 = 0x1_0000_0000;
/// Where the VMM maps its guest's RAM in its own address space (8 GiB).
pub const GUEST_RAM_VADDR: u64 = 0x2_0000_0000;
/// Where the console-lock page shared by the VMMs of a multi-VM system is mapped (12 GiB).
pub const CONSOLE_LOCK_VADDR: u64 = 0x3_0000_0000;
/// Where the first VM's VMM maps the board's PL011 for console input.
pub const INPUT_UART_VADDR: u64 = 0x3_0001_0000;
/// First bytes of the payload.
pub const MAGIC: [u8; 8] = *b"KEELPAY\0";
/// Payload format version.
pub const VERSION: u32 = 2;
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
    /// The serialized [`VmConfig`].
    Config = 1,
    /// The kernel `Image`.
    Kernel = 2,
    /// The initrd.
    Initrd = 3,
    /// A disk image (the n-th disk of the configuration, in order).
    Disk = 4,
}

impl BlobKind {
    fn from_u32(v: u32) -> Option<BlobKind> {
        Some(match v {
            1 => BlobKind::Config,
            2 => BlobKind::Kernel,
            3 => BlobKind::Initrd,
            4 => BlobKind::Disk,
            _ => return None,
        })
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Serial (`VIRTIO_BLK_T_GET_ID`).
    pub id: String,
    /// The guest may not write.
    pub read_only: bool,
}

/// What the VMM needs to know about its VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// VM name (for messages).
    pub name: String,
    /// vCPUs (Microkit `<vcpu id="0..n">`).
    pub vcpus: u32,
    /// Guest-physical base of RAM.
    pub ram_gpa: u64,
    /// RAM size in bytes.
    pub ram_size: u64,
    /// Where guest RAM is mapped in the VMM.
    pub ram_vaddr: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// virtio-blk disks, in the order of their blobs.
    pub disks: Vec<DiskConfig>,
    /// Offer a virtio-rng device.
    pub rng: bool,
    /// Offer a virtio-console device (output to the debug console).
    pub virtio_console: bool,
    /// Prefix each line of guest console output with `<name>| ` (systems of several VMs
    /// share the one debug console).
    pub console_prefix: bool,
    /// Where the page shared by every VMM of the system for the console lock is mapped
    /// (0: no other VMM, no lock). Lines are printed under the lock so that VMMs sharing
    /// the debug console never interleave characters.
    pub console_lock: u64,
    /// Where the board's PL011 UART is mapped in this VMM for console input (0: this VM
    /// gets no input).
    pub input_uart: u64,
    /// The Microkit channel of that UART's receive interrupt.
    pub input_channel: u32,
    /// Seed for the VMM's virtio-rng generator, drawn from the build host's entropy
    /// source when the image was built (the PD has no entropy source of its own).
    pub rng_seed: [u8; 32],
    /// A guest reset (PSCI `SYSTEM_RESET`) restarts the VM in place (spec `on_reboot =
    /// "restart"`); otherwise it stops the VM.
    pub restart_on_reboot: bool,
    /// The spec's `max_restarts_per_minute`; the VMM has no clock, so it counts restarts
    /// over the VM's whole life against this number.
    pub max_restarts: u32,
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
    /// The configuration's disks do not match the disk blobs.
    #[error("configuration names {config} disks but the payload carries {blobs}")]
    DiskCount {
        /// Disks in the configuration.
        config: usize,
        /// Disk blobs.
        blobs: usize,
    },
    /// A string is not UTF-8.
    #[error("payload {0} is not UTF-8")]
    Utf8(&'static str),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PayloadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(PayloadError::Truncated { what })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, PayloadError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, PayloadError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, PayloadError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self, what: &'static str) -> Result<String, PayloadError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        core::str::from_utf8(b)
            .map(String::from)
            .map_err(|_| PayloadError::Utf8(what))
    }
}

impl VmConfig {
    /// Serialize (format version [`VERSION`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u32(VERSION);
        w.str(&self.name);
        w.u32(self.vcpus);
        w.u64(self.ram_gpa);
        w.u64(self.ram_size);
        w.u64(self.ram_vaddr);
        w.str(&self.cmdline);
        w.u32(self.disks.len() as u32);
        for d in &self.disks {
            w.str(&d.id);
            w.u8(u8::from(d.read_only));
        }
        w.u8(u8::from(self.rng));
        w.u8(u8::from(self.virtio_console));
        w.u8(u8::from(self.console_prefix));
        w.u64(self.console_lock);
        w.u64(self.input_uart);
        w.u32(self.input_channel);
        w.0.extend_from_slice(&self.rng_seed);
        w.u8(u8::from(self.restart_on_reboot));
        w.u32(self.max_restarts);
        w.0
    }

    /// Parse what [`VmConfig::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<VmConfig, PayloadError> {
        let mut r = Reader { bytes, pos: 0 };
        let found = r.u32("config version")?;
        if found != VERSION {
            return Err(PayloadError::Version { found });
        }
        let name = r.str("VM name")?;
        let vcpus = r.u32("vcpus")?;
        let ram_gpa = r.u64("RAM base")?;
        let ram_size = r.u64("RAM size")?;
        let ram_vaddr = r.u64("RAM vaddr")?;
        let cmdline = r.str("cmdline")?;
        let n = r.u32("disk count")?;
        let mut disks = Vec::new();
        for _ in 0..n {
            let id = r.str("disk id")?;
            let read_only = r.u8("disk flags")? != 0;
            disks.push(DiskConfig { id, read_only });
        }
        let rng = r.u8("rng flag")? != 0;
        let virtio_console = r.u8("console flag")? != 0;
        let console_prefix = r.u8("console prefix flag")? != 0;
        let console_lock = r.u64("console lock address")?;
        let input_uart = r.u64("input UART address")?;
        let input_channel = r.u32("input channel")?;
        let mut rng_seed = [0u8; 32];
        rng_seed.copy_from_slice(r.take(32, "rng seed")?);
        let restart_on_reboot = r.u8("reboot policy")? != 0;
        let max_restarts = r.u32("restart limit")?;
        Ok(VmConfig {
            name,
            vcpus,
            ram_gpa,
            ram_size,
            ram_vaddr,
            cmdline,
            disks,
            rng,
            virtio_console,
            console_prefix,
            console_lock,
            input_uart,
            input_channel,
            rng_seed,
            restart_on_reboot,
            max_restarts,
        })
    }
}

/// Build a payload from its configuration and blobs.
pub fn build(config: &VmConfig, kernel: &[u8], initrd: Option<&[u8]>, disks: &[&[u8]]) -> Vec<u8> {
    let cfg = config.encode();
    let mut blobs: Vec<(BlobKind, &[u8])> =
        alloc::vec![(BlobKind::Config, &cfg[..]), (BlobKind::Kernel, kernel)];
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
    w.0
}

/// A parsed payload: the configuration and where each blob is (offset, length) inside the
/// payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The VM configuration.
    pub config: VmConfig,
    /// Kernel `(offset, len)`.
    pub kernel: (usize, usize),
    /// Initrd `(offset, len)`.
    pub initrd: Option<(usize, usize)>,
    /// Disks `(offset, len)`, in configuration order.
    pub disks: Vec<(usize, usize)>,
    /// Total payload length.
    pub total: usize,
}

/// Read the fixed header and return the payload's total length, to bound a raw view of it
/// before parsing the rest.
pub fn total_len(header: &[u8]) -> Result<usize, PayloadError> {
    let mut r = Reader {
        bytes: header,
        pos: 0,
    };
    if r.take(8, "magic")? != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    let found = r.u32("version")?;
    if found != VERSION {
        return Err(PayloadError::Version { found });
    }
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
    let mut config = None;
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
            BlobKind::Config => config = Some(VmConfig::decode(&bytes[off..off + len])?),
            BlobKind::Kernel => kernel = Some((off, len)),
            BlobKind::Initrd => initrd = Some((off, len)),
            BlobKind::Disk => disks.push((off, len)),
        }
    }
    let config = config.ok_or(PayloadError::Missing(BlobKind::Config))?;
    let kernel = kernel.ok_or(PayloadError::Missing(BlobKind::Kernel))?;
    if config.disks.len() != disks.len() {
        return Err(PayloadError::DiskCount {
            config: config.disks.len(),
            blobs: disks.len(),
        });
    }
    Ok(Layout {
        config,
        kernel,
        initrd,
        disks,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            name: "linux".into(),
            vcpus: 2,
            ram_gpa: 0x4000_0000,
            ram_size: 256 << 20,
            ram_vaddr: GUEST_RAM_VADDR,
            cmdline: "console=ttyS0".into(),
            disks: alloc::vec![DiskConfig {
                id: "data".into(),
                read_only: false
            }],
            rng: true,
            virtio_console: false,
            console_prefix: true,
            console_lock: CONSOLE_LOCK_VADDR,
            input_uart: INPUT_UART_VADDR,
            input_channel: 1,
            rng_seed: [5; 32],
            restart_on_reboot: true,
            max_restarts: 7,
        }
    }

    #[test]
    fn config_round_trips() {
        let c = config();

        assert_eq!(VmConfig::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn payload_blobs_are_found_where_build_put_them() {
        let disk = [7u8; 5000];

        let p = build(&config(), b"KERNEL", Some(b"INITRD"), &[&disk]);
        let l = parse(&p).unwrap();

        assert_eq!(&p[l.kernel.0..l.kernel.0 + l.kernel.1], b"KERNEL");
        let (io, il) = l.initrd.unwrap();
        assert_eq!(&p[io..io + il], b"INITRD");
        assert_eq!(l.disks[0].0 % 4096, 0);
        assert_eq!(&p[l.disks[0].0..l.disks[0].0 + 5000], &disk[..]);
        assert_eq!(l.config, config());
        assert_eq!(l.total, p.len());
    }

    #[test]
    fn other_version_is_refused() {
        let mut p = build(&config(), b"K", None, &[&[0u8; 1]]);
        p[8] = 9;

        assert_eq!(parse(&p), Err(PayloadError::Version { found: 9 }));
    }

    #[test]
    fn bad_magic_is_refused() {
        assert_eq!(parse(&[0u8; 64]), Err(PayloadError::BadMagic));
    }

    #[test]
    fn blob_past_the_end_is_refused() {
        let mut p = build(&config(), b"K", None, &[&[0u8; 1]]);
        // Kernel entry is the second one: its length field at 32 + 24 + 16.
        p[72..80].copy_from_slice(&u64::MAX.to_le_bytes());

        assert_eq!(parse(&p), Err(PayloadError::Truncated { what: "blob" }));
    }

    #[test]
    fn disk_count_mismatch_is_refused() {
        let p = build(&config(), b"K", None, &[]);

        assert_eq!(
            parse(&p),
            Err(PayloadError::DiskCount {
                config: 1,
                blobs: 0
            })
        );
    }

    #[test]
    fn truncated_config_is_refused() {
        let c = config().encode();

        assert!(matches!(
            VmConfig::decode(&c[..c.len() - 1]),
            Err(PayloadError::Truncated { .. })
        ));
    }
}
