//! ACPI tables for x86_64 guests: how a Linux guest without `virtio_mmio.device=` support
//! on its command line (Debian's kernel) finds its virtio-mmio devices and powers off.
//!
//! The tables describe a *hardware-reduced* ACPI platform, as Firecracker and Cloud
//! Hypervisor give their microVMs: no PM1 blocks, no SCI, no FACS. Power-off and reset go
//! through the FADT's sleep control and reset registers, three ports at [`PM_PORT_BASE`]
//! that the VMM emulates.
//!
//! ```text
//! 0x000e_0000  RSDP (Linux scans 0xe0000..0xfffff for it; the boot protocols also get its address)
//!      +0x30   XSDT → FADT, MADT
//!              FADT → DSDT (hardware-reduced, sleep control/status and reset registers)
//!              MADT: one local APIC per vCPU (APIC id = vCPU index), the IOAPIC (id as in
//!                    the MP table), LINT1 = NMI
//!              DSDT: \_SB_.COM1 (PNP0501), \_SB_.Vnnn (LNRO0005, one per virtio-mmio device),
//!                    \_S5_
//! ```
//!
//! The region lies in `[EBDA, 1 MiB)`, which [`super::e820::memory_map`] reserves.
//! Every table is written by hand; [`aml`] is the small AML encoder the DSDT needs.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::hv::BootEntry;
use crate::memory::{GuestAddress, GuestMemory, GuestMemoryError};

use super::layout::{
    COM1_GSI, COM1_PORT, IOAPIC_GPA, LAPIC_GPA, LOW_RESERVED_END, VIRTIO_MMIO_MAX_DEVICES,
};
use super::mptable::{IOAPIC_PINS, MAX_VCPUS, checksum};

/// Where the tables start (the RSDP comes first, 16-byte aligned as the spec asks).
pub const ACPI_TABLES_GPA: u64 = 0xe_0000;
/// One past the last byte the tables may use (the end of the BIOS area).
pub const ACPI_TABLES_END: u64 = LOW_RESERVED_END;

/// The first of the power-management ports: sleep control, sleep status, reset.
pub const PM_PORT_BASE: u16 = 0x600;
/// How many ports the power-management device decodes.
pub const PM_PORT_LEN: u64 = 3;
/// Offset of the sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register (FADT `SLEEP_STATUS_REG`).
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register (FADT `RESET_REG`).
pub const RESET_OFFSET: u64 = 2;
/// The value the guest writes to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 0x06;
/// Sleep control register: "sleep enable", the bit that makes the write take effect.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control register: position of the 3-bit sleep type.
pub const SLP_TYP_SHIFT: u8 = 2;
/// The sleep type of S5 (soft off), as the DSDT's `\_S5_` package says.
pub const S5_SLP_TYP: u8 = 5;

/// The OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"KEEL  ";

/// The sleep type a sleep-control register write asks for, if it sets `SLP_EN`.
pub fn requested_sleep_type(value: u8) -> Option<u8> {
    (value & SLP_EN != 0).then_some((value >> SLP_TYP_SHIFT) & 0b111)
}

/// Why the ACPI tables could not be built or written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcpiError {
    /// The vCPU count does not fit the MADT (APIC ids must stay below the IOAPIC's id).
    #[error("{vcpus} vCPUs do not fit the MADT (1..={max})")]
    TooManyVcpus {
        /// vCPUs asked for.
        vcpus: u32,
        /// The maximum.
        max: u32,
    },
    /// More virtio-mmio devices than the platform has windows for.
    #[error("{devices} virtio-mmio devices, the platform has room for {max}")]
    TooManyDevices {
        /// Devices asked for.
        devices: usize,
        /// The maximum.
        max: u32,
    },
    /// A device window does not fit a 32-bit `Memory32Fixed` descriptor.
    #[error("virtio-mmio device {index} at {base:#x} (size {size:#x}) is not below 4 GiB")]
    DeviceAbove4G {
        /// Device index.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// A device's GSI is not an IOAPIC pin.
    #[error("virtio-mmio device {index} has GSI {gsi}, the IOAPIC has pins 0..{pins}")]
    GsiBeyondIoapic {
        /// Device index.
        index: usize,
        /// Its GSI.
        gsi: u32,
        /// IOAPIC pins.
        pins: u8,
    },
    /// The AML encoder refused a name, string or length.
    #[error("AML: {0}")]
    Aml(#[from] aml::AmlError),
    /// The tables are larger than their region.
    #[error("ACPI tables of {len:#x} bytes do not fit the {room:#x} bytes at {base:#x}")]
    TooLarge {
        /// Bytes needed.
        len: u64,
        /// Bytes available.
        room: u64,
        /// Where they would start.
        base: u64,
    },
    /// A guest-memory write failed.
    #[error("writing the {what}: {source}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// A virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its GSI (an IOAPIC pin, level-triggered, active high).
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiInput<'a> {
    /// vCPU count (APIC ids `0..vcpus`).
    pub vcpus: u32,
    /// The virtio-mmio devices, in placement order (`_UID` = index).
    pub virtio_mmio: &'a [VirtioMmioDevice],
}

/// The tables as built for one base address, with where each one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest-physical address of the first byte of `bytes` (the RSDP).
    pub base: u64,
    /// RSDP, XSDT, FADT, MADT and DSDT, each at its address minus `base`.
    pub bytes: Vec<u8>,
    /// Address of the XSDT.
    pub xsdt: u64,
    /// Address of the FADT.
    pub fadt: u64,
    /// Address of the MADT.
    pub madt: u64,
    /// Address of the DSDT.
    pub dsdt: u64,
}

impl AcpiTables {
    /// Address of the RSDP (the first structure).
    pub fn rsdp(&self) -> u64 {
        self.base
    }

    /// The bytes of the table at `gpa` (whose header gives its length), if it is inside.
    pub fn table_at(&self, gpa: u64) -> Option<&[u8]> {
        let start = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        let len_bytes = self.bytes.get(start + 4..start + 8)?;
        let len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

const HEADER_SIZE: usize = 36;
const RSDP_SIZE: usize = 36;
const FADT_SIZE: usize = 276;
const TABLE_ALIGN: u64 = 16;

/// FADT flags: no fixed-feature power button, no fixed-feature sleep button, the reset
/// register is valid, hardware-reduced ACPI.
const FADT_F_PWR_BUTTON: u32 = 1 << 4;
const FADT_F_SLP_BUTTON: u32 = 1 << 5;
const FADT_F_RESET_REG_SUP: u32 = 1 << 10;
/// FADT flag: the platform has no ACPI fixed hardware (no PM1 blocks, no SCI, no FACS).
pub const FADT_F_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IA-PC boot architecture flags: no VGA, no MSI (no PCI at all), no CMOS RTC. The 8042
/// bit stays clear: Keel's i8042 only takes the reset command.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

const MADT_LOCAL_APIC: u8 = 0;
const MADT_IOAPIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;
/// ACPI processor UID meaning "every processor".
const MADT_ALL_PROCESSORS: u8 = 0xff;

/// Generic address structure: address space id of system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// Generic address structure: byte access.
const GAS_ACCESS_BYTE: u8 = 1;

/// A generic address structure for the byte-wide I/O port `port`.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; // register bit width
    g[2] = 0; // bit offset
    g[3] = GAS_ACCESS_BYTE;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// A system description table: the 36-byte header (checksum filled in) and `body`.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_SIZE + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(&OEM_ID);
    // OEM table id: "KEEL" and the signature, e.g. "KEELFACP".
    t.extend_from_slice(b"KEEL");
    t.extend_from_slice(signature);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"KEEL"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn rsdp(xsdt: u64) -> [u8; RSDP_SIZE] {
    let mut r = [0u8; RSDP_SIZE];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2; // revision: ACPI 2.0+, with the XSDT
    // RSDT address (16..20) stays 0: the XSDT alone lists the tables.
    r[20..24].copy_from_slice(&(RSDP_SIZE as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut body = [0u8; FADT_SIZE - HEADER_SIZE];
    let mut put = |off: usize, v: &[u8]| {
        let at = off - HEADER_SIZE;
        body[at..at + v.len()].copy_from_slice(v);
    };
    // FIRMWARE_CTRL, DSDT (32-bit), SCI_INT, SMI_CMD and every PM block stay 0: a
    // hardware-reduced platform has none of them.
    put(
        109,
        &(IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).to_le_bytes(),
    );
    put(
        112,
        &(FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON | FADT_F_RESET_REG_SUP | FADT_F_HW_REDUCED_ACPI)
            .to_le_bytes(),
    );
    put(116, &gas_io_byte(PM_PORT_BASE + RESET_OFFSET as u16));
    put(128, &[RESET_VALUE]);
    put(131, &[5]); // FADT minor version: ACPI 6.5
    put(140, &dsdt.to_le_bytes()); // X_DSDT
    put(
        244,
        &gas_io_byte(PM_PORT_BASE + SLEEP_CONTROL_OFFSET as u16),
    );
    put(256, &gas_io_byte(PM_PORT_BASE + SLEEP_STATUS_OFFSET as u16));
    put(268, b"KEELVMM "); // hypervisor vendor identity
    sdt(b"FACP", 6, &body)
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_GPA as u32).to_le_bytes());
    // Flags: no PCAT_COMPAT. Hardware-reduced Linux ignores the 8259s anyway.
    body.extend_from_slice(&0u32.to_le_bytes());
    for id in 0..vcpus {
        // ACPI processor UID and APIC id are both the vCPU index (< MAX_VCPUS < 255).
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, id as u8, id as u8]);
        body.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    // The IOAPIC takes the id after the last vCPU, as in the MP table; its pins are GSIs 0..24.
    body.extend_from_slice(&[MADT_IOAPIC, 12, vcpus as u8, 0]);
    body.extend_from_slice(&(IOAPIC_GPA as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // LINT1 is NMI on every local APIC (flags 0: conforming), as in the MP table. No
    // interrupt source overrides: ISA IRQs map 1:1 onto IOAPIC pins (as in Firecracker),
    // and every device's trigger mode comes from its _CRS.
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, MADT_ALL_PROCESSORS, 0, 0, 1]);
    sdt(b"APIC", 5, &body)
}

/// The DSDT's AML: COM1 and the virtio-mmio devices in `\_SB_`, and `\_S5_`.
fn dsdt_aml(devices: &[VirtioMmioDevice]) -> Result<Vec<u8>, AcpiError> {
    use aml::{Polarity, Trigger};

    let mut sb = Vec::new();
    let com1 = [
        aml::name("_HID", &aml::integer(u64::from(aml::eisa_id("PNP0501")?)))?,
        aml::name("_UID", &aml::integer(0))?,
        aml::name(
            "_CRS",
            &aml::resource_template(&[
                &aml::io(COM1_PORT, COM1_PORT, 0, 8),
                // Keel pulses the serial line (an edge per interrupt).
                &aml::interrupt(COM1_GSI, Trigger::Edge, Polarity::ActiveHigh),
            ])?,
        )?,
    ]
    .concat();
    sb.extend_from_slice(&aml::device("COM1", &com1)?);

    for (index, dev) in devices.iter().enumerate() {
        let above_4g = AcpiError::DeviceAbove4G {
            index,
            base: dev.base,
            size: dev.size,
        };
        let fits = dev
            .base
            .checked_add(dev.size)
            .is_some_and(|end| end <= 1 << 32);
        let (true, Ok(base), Ok(size)) = (fits, u32::try_from(dev.base), u32::try_from(dev.size))
        else {
            return Err(above_4g);
        };
        if dev.gsi >= u32::from(IOAPIC_PINS) {
            return Err(AcpiError::GsiBeyondIoapic {
                index,
                gsi: dev.gsi,
                pins: IOAPIC_PINS,
            });
        }
        let body = [
            aml::name("_HID", &aml::string("LNRO0005")?)?,
            aml::name("_UID", &aml::integer(index as u64))?,
            aml::name(
                "_CRS",
                &aml::resource_template(&[
                    &aml::memory32_fixed(true, base, size),
                    // Keel holds a virtio-mmio line high until the driver acknowledges
                    // the interrupt (KVM_IRQ_LINE on a level-triggered IOAPIC pin).
                    &aml::interrupt(dev.gsi, Trigger::Level, Polarity::ActiveHigh),
                ])?,
            )?,
        ]
        .concat();
        sb.extend_from_slice(&aml::device(&alloc::format!("V{index:03}"), &body)?);
    }

    let mut out = aml::scope("_SB_", &sb)?;
    // SLP_TYPa = 5 for S5; SLP_TYPb is unused on a hardware-reduced platform.
    out.extend_from_slice(&aml::name(
        "_S5_",
        &aml::package(&[aml::integer(u64::from(S5_SLP_TYP)), aml::integer(0)])?,
    )?);
    Ok(out)
}

fn align(gpa: u64) -> u64 {
    gpa.next_multiple_of(TABLE_ALIGN)
}

/// Build the tables as they would sit at `base`.
pub fn build(input: &AcpiInput<'_>, base: u64) -> Result<AcpiTables, AcpiError> {
    if input.vcpus == 0 || input.vcpus > MAX_VCPUS {
        return Err(AcpiError::TooManyVcpus {
            vcpus: input.vcpus,
            max: MAX_VCPUS,
        });
    }
    if input.virtio_mmio.len() > VIRTIO_MMIO_MAX_DEVICES as usize {
        return Err(AcpiError::TooManyDevices {
            devices: input.virtio_mmio.len(),
            max: VIRTIO_MMIO_MAX_DEVICES,
        });
    }
    let dsdt = sdt(b"DSDT", 2, &dsdt_aml(input.virtio_mmio)?);
    let madt = madt(input.vcpus);

    let xsdt_gpa = align(base + RSDP_SIZE as u64);
    let xsdt_len = HEADER_SIZE as u64 + 2 * 8;
    let fadt_gpa = align(xsdt_gpa + xsdt_len);
    let madt_gpa = align(fadt_gpa + FADT_SIZE as u64);
    let dsdt_gpa = align(madt_gpa + madt.len() as u64);
    let end = dsdt_gpa + dsdt.len() as u64;

    let mut bytes = alloc::vec![0u8; (end - base) as usize];
    let mut place = |gpa: u64, table: &[u8]| {
        let at = (gpa - base) as usize;
        bytes[at..at + table.len()].copy_from_slice(table);
    };
    place(base, &rsdp(xsdt_gpa));
    place(xsdt_gpa, &xsdt(&[fadt_gpa, madt_gpa]));
    place(fadt_gpa, &fadt(dsdt_gpa));
    place(madt_gpa, &madt);
    place(dsdt_gpa, &dsdt);
    Ok(AcpiTables {
        base,
        bytes,
        xsdt: xsdt_gpa,
        fadt: fadt_gpa,
        madt: madt_gpa,
        dsdt: dsdt_gpa,
    })
}

/// Build the tables for `input` and write them at [`ACPI_TABLES_GPA`]. Returns the RSDP's
/// address, for [`publish_rsdp`].
pub fn write_acpi_tables<M: GuestMemory + ?Sized>(
    mem: &M,
    input: &AcpiInput<'_>,
) -> Result<u64, AcpiError> {
    let tables = build(input, ACPI_TABLES_GPA)?;
    let len = tables.bytes.len() as u64;
    let room = ACPI_TABLES_END - ACPI_TABLES_GPA;
    if len > room {
        return Err(AcpiError::TooLarge {
            len,
            room,
            base: ACPI_TABLES_GPA,
        });
    }
    mem.write(GuestAddress(ACPI_TABLES_GPA), &tables.bytes)
        .map_err(|source| AcpiError::Memory {
            what: "ACPI tables",
            source,
        })?;
    Ok(tables.rsdp())
}

/// Offset of `acpi_rsdp_addr` in Linux's `boot_params`.
pub const BOOT_PARAMS_RSDP_OFFSET: u64 = 0x70;
/// Offset of `rsdp_paddr` in `hvm_start_info`.
pub const PVH_START_INFO_RSDP_OFFSET: u64 = 32;

/// Tell the kernel where the RSDP is through its boot protocol, after the loader has
/// written the boot structures `entry` points at: `hvm_start_info.rsdp_paddr` for PVH,
/// `boot_params.acpi_rsdp_addr` for the 64-bit entry. Other entries have no such field
/// and are left alone (the guest can still find the RSDP by scanning the BIOS area).
pub fn publish_rsdp<M: GuestMemory + ?Sized>(
    mem: &M,
    entry: &BootEntry,
    rsdp: u64,
) -> Result<(), AcpiError> {
    let (gpa, what) = match *entry {
        BootEntry::X86Pvh { ebx, .. } => (
            u64::from(ebx) + PVH_START_INFO_RSDP_OFFSET,
            "hvm_start_info.rsdp_paddr",
        ),
        BootEntry::X86Long { rsi, .. } => (
            rsi.saturating_add(BOOT_PARAMS_RSDP_OFFSET),
            "boot_params.acpi_rsdp_addr",
        ),
        _ => return Ok(()),
    };
    mem.write_u64(GuestAddress(gpa), rsdp)
        .map_err(|source| AcpiError::Memory { what, source })
}

pub mod aml {
    //! A small encoder for the ACPI Machine Language the DSDT needs: names, integers,
    //! strings, packages, scopes, devices and resource templates (ACPI 6.5 §20.2, §6.4).
    //! No methods: Keel's devices are static.

    use super::{String, ToString, Vec};

    /// Why a piece of AML could not be encoded.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    #[non_exhaustive]
    pub enum AmlError {
        /// A name segment is not 1–4 characters of `A-Z`, `0-9`, `_` (not starting with a digit).
        #[error("invalid AML name {0:?}")]
        BadName(String),
        /// A string holds a byte outside 0x01..=0x7f.
        #[error("AML string {0:?} holds a byte outside ASCII 0x01..=0x7f")]
        BadString(String),
        /// An EISA id is not three capitals and four hex digits.
        #[error("invalid EISA id {0:?} (want three capitals and four hex digits)")]
        BadEisaId(String),
        /// An object is longer than a PkgLength encodes (2^28 bytes).
        #[error("AML object of {0} bytes is too long for a PkgLength")]
        TooLong(usize),
        /// A package has more than 255 elements.
        #[error("AML package of {0} elements (at most 255)")]
        TooManyElements(usize),
    }

    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const BYTE_PREFIX: u8 = 0x0a;
    const WORD_PREFIX: u8 = 0x0b;
    const DWORD_PREFIX: u8 = 0x0c;
    const STRING_PREFIX: u8 = 0x0d;
    const QWORD_PREFIX: u8 = 0x0e;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const DUAL_NAME_PREFIX: u8 = 0x2e;
    const MULTI_NAME_PREFIX: u8 = 0x2f;
    const ROOT_CHAR: u8 = b'\\';
    const EXT_OP_PREFIX: u8 = 0x5b;
    const DEVICE_OP: u8 = 0x82;
    const END_TAG: u8 = 0x79;

    /// The PkgLength of an object whose contents after the PkgLength are `len` bytes: the
    /// encoded length counts its own bytes.
    pub fn pkg_length(len: usize) -> Result<Vec<u8>, AmlError> {
        for extra in 0..4usize {
            let total = len + 1 + extra;
            let fits = match extra {
                0 => total < 1 << 6,
                n => total < 1 << (4 + 8 * n),
            };
            if fits {
                if extra == 0 {
                    return Ok(alloc::vec![total as u8]);
                }
                let mut out = alloc::vec![((extra as u8) << 6) | (total & 0xf) as u8];
                for i in 0..extra {
                    out.push((total >> (4 + 8 * i)) as u8);
                }
                return Ok(out);
            }
        }
        Err(AmlError::TooLong(len))
    }

    /// One 4-character name segment; shorter names are padded with `_`.
    pub fn name_seg(seg: &str) -> Result<[u8; 4], AmlError> {
        let bad = || AmlError::BadName(seg.to_string());
        let b = seg.as_bytes();
        if b.is_empty() || b.len() > 4 || b[0].is_ascii_digit() {
            return Err(bad());
        }
        let mut out = [b'_'; 4];
        for (o, &c) in out.iter_mut().zip(b) {
            if !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_') {
                return Err(bad());
            }
            *o = c;
        }
        Ok(out)
    }

    /// A name string: an optional root `\` and dot-separated segments (`\_SB_.COM1`).
    pub fn name_string(path: &str) -> Result<Vec<u8>, AmlError> {
        let mut out = Vec::new();
        let rel = match path.strip_prefix('\\') {
            Some(rest) => {
                out.push(ROOT_CHAR);
                rest
            }
            None => path,
        };
        let segs = rel
            .split('.')
            .map(name_seg)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AmlError::BadName(path.to_string()))?;
        match segs.len() {
            1 => {}
            2 => out.push(DUAL_NAME_PREFIX),
            n => {
                let n = u8::try_from(n).map_err(|_| AmlError::BadName(path.to_string()))?;
                out.extend_from_slice(&[MULTI_NAME_PREFIX, n]);
            }
        }
        out.extend(segs.iter().flatten());
        Ok(out)
    }

    /// An integer in the shortest encoding.
    pub fn integer(v: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        match v {
            0 => out.push(ZERO_OP),
            1 => out.push(ONE_OP),
            2..=0xff => out.extend_from_slice(&[BYTE_PREFIX, v as u8]),
            0x100..=0xffff => {
                out.push(WORD_PREFIX);
                out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(DWORD_PREFIX);
                out.extend_from_slice(&(v as u32).to_le_bytes());
            }
            _ => {
                out.push(QWORD_PREFIX);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// A string constant.
    pub fn string(s: &str) -> Result<Vec<u8>, AmlError> {
        if s.bytes().any(|b| b == 0 || b > 0x7f) {
            return Err(AmlError::BadString(s.to_string()));
        }
        let mut out = Vec::with_capacity(s.len() + 2);
        out.push(STRING_PREFIX);
        out.extend_from_slice(s.as_bytes());
        out.push(0);
        Ok(out)
    }

    /// The compressed EISA id of `id` (`"PNP0501"` → 0x0105_d041), as ASL's `EisaId()`.
    pub fn eisa_id(id: &str) -> Result<u32, AmlError> {
        let bad = || AmlError::BadEisaId(id.to_string());
        let b = id.as_bytes();
        if b.len() != 7 || !b[..3].iter().all(u8::is_ascii_uppercase) {
            return Err(bad());
        }
        let vendor = b[..3]
            .iter()
            .fold(0u16, |acc, &c| (acc << 5) | u16::from(c - b'@'));
        let product = u16::from_str_radix(&id[3..], 16).map_err(|_| bad())?;
        let [v0, v1] = vendor.to_be_bytes();
        let [p0, p1] = product.to_be_bytes();
        Ok(u32::from_le_bytes([v0, v1, p0, p1]))
    }

    /// `Name(path, value)`, where `value` is an encoded data object.
    pub fn name(path: &str, value: &[u8]) -> Result<Vec<u8>, AmlError> {
        let mut out = alloc::vec![NAME_OP];
        out.extend_from_slice(&name_string(path)?);
        out.extend_from_slice(value);
        Ok(out)
    }

    /// `Package() { elements }`, each element an encoded data object.
    pub fn package(elements: &[Vec<u8>]) -> Result<Vec<u8>, AmlError> {
        let count =
            u8::try_from(elements.len()).map_err(|_| AmlError::TooManyElements(elements.len()))?;
        let mut contents = alloc::vec![count];
        for e in elements {
            contents.extend_from_slice(e);
        }
        with_pkg_length(&[PACKAGE_OP], &contents)
    }

    /// `Scope(path) { body }`.
    pub fn scope(path: &str, body: &[u8]) -> Result<Vec<u8>, AmlError> {
        let mut contents = name_string(path)?;
        contents.extend_from_slice(body);
        with_pkg_length(&[SCOPE_OP], &contents)
    }

    /// `Device(name) { body }`.
    pub fn device(name: &str, body: &[u8]) -> Result<Vec<u8>, AmlError> {
        let mut contents = name_string(name)?;
        contents.extend_from_slice(body);
        with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &contents)
    }

    /// `Buffer() { bytes }`.
    pub fn buffer(bytes: &[u8]) -> Result<Vec<u8>, AmlError> {
        let mut contents = integer(bytes.len() as u64);
        contents.extend_from_slice(bytes);
        with_pkg_length(&[BUFFER_OP], &contents)
    }

    fn with_pkg_length(op: &[u8], contents: &[u8]) -> Result<Vec<u8>, AmlError> {
        let mut out = op.to_vec();
        out.extend_from_slice(&pkg_length(contents.len())?);
        out.extend_from_slice(contents);
        Ok(out)
    }

    /// `ResourceTemplate() { descriptors }`: a buffer of the descriptors and the end tag
    /// (its checksum 0, which means "treat as valid").
    pub fn resource_template(descriptors: &[&[u8]]) -> Result<Vec<u8>, AmlError> {
        let mut bytes: Vec<u8> = descriptors.concat();
        bytes.extend_from_slice(&[END_TAG, 0]);
        buffer(&bytes)
    }

    /// `Memory32Fixed(ReadWrite or ReadOnly, base, len)`.
    pub fn memory32_fixed(writeable: bool, base: u32, len: u32) -> [u8; 12] {
        let mut d = [0u8; 12];
        d[0] = 0x86;
        d[1..3].copy_from_slice(&9u16.to_le_bytes());
        d[3] = u8::from(writeable);
        d[4..8].copy_from_slice(&base.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d
    }

    /// `IO(Decode16, min, max, align, len)`.
    pub fn io(min: u16, max: u16, align: u8, len: u8) -> [u8; 8] {
        let [a, b] = min.to_le_bytes();
        let [c, d] = max.to_le_bytes();
        [0x47, 1, a, b, c, d, align, len]
    }

    /// How an interrupt is triggered.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Trigger {
        /// Level-triggered.
        Level,
        /// Edge-triggered.
        Edge,
    }

    /// An interrupt's active level.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Polarity {
        /// Active high.
        ActiveHigh,
        /// Active low.
        ActiveLow,
    }

    /// `Interrupt(ResourceConsumer, trigger, polarity, Exclusive) { gsi }`: the extended
    /// interrupt descriptor with one interrupt.
    pub fn interrupt(gsi: u32, trigger: Trigger, polarity: Polarity) -> [u8; 9] {
        let mut flags = 1; // resource consumer; exclusive, not wake-capable
        if trigger == Trigger::Edge {
            flags |= 1 << 1;
        }
        if polarity == Polarity::ActiveLow {
            flags |= 1 << 2;
        }
        let mut d = [0u8; 9];
        d[0] = 0x89;
        d[1..3].copy_from_slice(&6u16.to_le_bytes());
        d[3] = flags;
        d[4] = 1; // one interrupt
        d[5..9].copy_from_slice(&gsi.to_le_bytes());
        d
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pkg_length_counts_its_own_bytes() {
            assert_eq!(pkg_length(0).unwrap(), [1]);
            assert_eq!(pkg_length(62).unwrap(), [63]);
            // 63 content bytes + 2 length bytes = 65 = 0x41: lead 0x41, then 0x04.
            assert_eq!(pkg_length(63).unwrap(), [0x41, 0x04]);
            assert_eq!(pkg_length(0xffd).unwrap(), [0x4f, 0xff]);
            assert_eq!(pkg_length(0xffe).unwrap(), [0x81, 0x00, 0x01]);
        }

        #[test]
        fn pkg_length_beyond_28_bits_is_rejected() {
            assert_eq!(pkg_length(1 << 28), Err(AmlError::TooLong(1 << 28)));
        }

        #[test]
        fn integers_take_the_shortest_encoding() {
            assert_eq!(integer(0), [0x00]);
            assert_eq!(integer(1), [0x01]);
            assert_eq!(integer(5), [0x0a, 5]);
            assert_eq!(integer(0x3f8), [0x0b, 0xf8, 0x03]);
            assert_eq!(integer(0xd000_0000), [0x0c, 0, 0, 0, 0xd0]);
            assert_eq!(integer(1 << 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        }

        #[test]
        fn eisa_id_compresses_as_asl_does() {
            assert_eq!(eisa_id("PNP0501").unwrap(), 0x0105_d041);
            assert_eq!(eisa_id("PNP0A03").unwrap(), 0x030a_d041);
        }

        #[test]
        fn malformed_eisa_id_is_rejected() {
            assert!(eisa_id("pnp0501").is_err());
            assert!(eisa_id("PNP050").is_err());
            assert!(eisa_id("PNP05G1").is_err());
        }

        #[test]
        fn short_names_are_padded_and_paths_get_prefixes() {
            assert_eq!(name_string("_SB").unwrap(), b"_SB_");
            assert_eq!(name_string("\\_S5_").unwrap(), b"\\_S5_");
            assert_eq!(name_string("\\_SB_.COM1").unwrap(), b"\\\x2e_SB_COM1");
            assert_eq!(name_string("A.B.C").unwrap(), b"\x2f\x03A___B___C___");
        }

        #[test]
        fn invalid_names_are_rejected() {
            for bad in ["", "TOOLONG", "1ABC", "ab", "A-B", "\\", "A..B"] {
                assert!(name_string(bad).is_err(), "{bad:?} accepted");
            }
        }

        #[test]
        fn string_is_nul_terminated_and_rejects_non_ascii() {
            assert_eq!(string("LNRO0005").unwrap(), b"\x0dLNRO0005\0");
            assert!(string("a\0b").is_err());
            assert!(string("é").is_err());
        }

        #[test]
        fn package_holds_its_element_count() {
            let p = package(&[integer(5), integer(0)]).unwrap();
            assert_eq!(p, [0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]);
        }

        #[test]
        fn device_wraps_name_and_body_in_a_pkg_length() {
            let d = device("COM1", &name("_UID", &integer(0)).unwrap()).unwrap();
            assert_eq!(d, b"\x5b\x82\x0bCOM1\x08_UID\x00");
        }

        #[test]
        fn resource_template_ends_with_the_end_tag() {
            let rt = resource_template(&[&io(0x3f8, 0x3f8, 0, 8)]).unwrap();
            // Buffer, PkgLength, BufferSize 10, IO descriptor, end tag.
            assert_eq!(
                rt,
                [
                    0x11, 0x0d, 0x0a, 10, 0x47, 1, 0xf8, 3, 0xf8, 3, 0, 8, 0x79, 0
                ]
            );
        }

        #[test]
        fn interrupt_flags_encode_trigger_and_polarity() {
            assert_eq!(
                interrupt(5, Trigger::Level, Polarity::ActiveHigh),
                [0x89, 6, 0, 0x01, 1, 5, 0, 0, 0]
            );
            assert_eq!(interrupt(4, Trigger::Edge, Polarity::ActiveLow)[3], 0x07);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::{E820_RESERVED, memory_map};
    use crate::arch::x86_64::layout::{VIRTIO_MMIO_SIZE, virtio_mmio_base, virtio_mmio_gsi};
    use crate::arch::x86_64::mptable;
    use crate::memory::GuestRam;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn devices(n: u32) -> Vec<VirtioMmioDevice> {
        (0..n)
            .map(|i| VirtioMmioDevice {
                base: virtio_mmio_base(i).unwrap(),
                size: VIRTIO_MMIO_SIZE,
                gsi: virtio_mmio_gsi(i).unwrap(),
            })
            .collect()
    }

    fn tables(vcpus: u32, n: u32) -> AcpiTables {
        let devs = devices(n);
        build(
            &AcpiInput {
                vcpus,
                virtio_mmio: &devs,
            },
            ACPI_TABLES_GPA,
        )
        .unwrap()
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn rsdp_checksums_verify_and_it_points_at_the_xsdt() {
        let t = tables(2, 3);
        let r = &t.bytes[..RSDP_SIZE];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(r), 0);
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(r, 20), RSDP_SIZE as u32);
        assert_eq!(u64_at(r, 24), t.xsdt);
        assert_eq!(t.rsdp() % 16, 0);
    }

    #[test]
    fn every_table_checksum_and_length_verify() {
        let t = tables(4, 5);
        for (gpa, sig) in [
            (t.xsdt, b"XSDT"),
            (t.fadt, b"FACP"),
            (t.madt, b"APIC"),
            (t.dsdt, b"DSDT"),
        ] {
            let table = t.table_at(gpa).unwrap();
            assert_eq!(&table[..4], sig);
            assert_eq!(
                sum(table),
                0,
                "{} checksum",
                core::str::from_utf8(sig).unwrap()
            );
            assert_eq!(&table[10..16], b"KEEL  ");
            assert!(table.len() >= HEADER_SIZE);
        }
        assert_eq!(t.table_at(t.fadt).unwrap().len(), FADT_SIZE);
    }

    #[test]
    fn tables_do_not_overlap_and_end_where_the_blob_ends() {
        let t = tables(3, 2);
        let mut spans: Vec<(u64, u64)> = [t.xsdt, t.fadt, t.madt, t.dsdt]
            .iter()
            .map(|&g| (g, g + t.table_at(g).unwrap().len() as u64))
            .collect();
        spans.insert(0, (t.base, t.base + RSDP_SIZE as u64));
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:#x?} overlaps {:#x?}", w[0], w[1]);
        }
        assert_eq!(spans.last().unwrap().1, t.base + t.bytes.len() as u64);
    }

    #[test]
    fn xsdt_lists_the_fadt_and_the_madt() {
        let t = tables(1, 0);
        let x = t.table_at(t.xsdt).unwrap();
        let entries: Vec<u64> = x[HEADER_SIZE..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(entries, [t.fadt, t.madt]);
    }

    #[test]
    fn fadt_is_hardware_reduced_and_points_at_the_dsdt() {
        let t = tables(1, 1);
        let f = t.table_at(t.fadt).unwrap();
        assert_eq!(f[8], 6);
        assert_ne!(u32_at(f, 112) & FADT_F_HW_REDUCED_ACPI, 0);
        assert_eq!(u64_at(f, 140), t.dsdt);
        assert_eq!(u32_at(f, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(u32_at(f, 36), 0, "no FACS");
    }

    #[test]
    fn fadt_sleep_and_reset_registers_are_byte_ports_of_the_pm_device() {
        let t = tables(1, 0);
        let f = t.table_at(t.fadt).unwrap();
        let gas = |off: usize| (f[off], f[off + 1], f[off + 3], u64_at(f, off + 4));
        assert_eq!(gas(244), (GAS_SYSTEM_IO, 8, GAS_ACCESS_BYTE, 0x600));
        assert_eq!(gas(256), (GAS_SYSTEM_IO, 8, GAS_ACCESS_BYTE, 0x601));
        assert_eq!(gas(116), (GAS_SYSTEM_IO, 8, GAS_ACCESS_BYTE, 0x602));
        assert_eq!(f[128], RESET_VALUE);
        assert_ne!(u32_at(f, 112) & FADT_F_RESET_REG_SUP, 0);
    }

    fn madt_entries(m: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = HEADER_SIZE + 8;
        while at < m.len() {
            let len = usize::from(m[at + 1]);
            out.push(&m[at..at + len]);
            at += len;
        }
        out
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu_with_apic_id_equal_to_index() {
        let t = tables(3, 0);
        let m = t.table_at(t.madt).unwrap();
        assert_eq!(u32_at(m, HEADER_SIZE), 0xfee0_0000);
        let lapics: Vec<(u8, u8, u32)> = madt_entries(m)
            .into_iter()
            .filter(|e| e[0] == MADT_LOCAL_APIC)
            .map(|e| (e[2], e[3], u32_at(e, 4)))
            .collect();
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
    }

    #[test]
    fn madt_ioapic_has_the_mp_table_id_and_address() {
        let vcpus = 2;
        let t = tables(vcpus, 0);
        let m = t.table_at(t.madt).unwrap();
        let ioapics: Vec<&[u8]> = madt_entries(m)
            .into_iter()
            .filter(|e| e[0] == MADT_IOAPIC)
            .collect();
        assert_eq!(ioapics.len(), 1);
        let io = ioapics[0];
        // The MP table's IOAPIC entry: 16-byte pointer, 44-byte header, 20 bytes per CPU.
        let mp = mptable::build(vcpus, 0).unwrap();
        let mp_ioapic = &mp[16 + 44 + 20 * vcpus as usize + 8..];
        assert_eq!(mp_ioapic[0], 2);
        assert_eq!(io[2], mp_ioapic[1]);
        assert_eq!(u32_at(io, 4), 0xfec0_0000);
        assert_eq!(u32_at(io, 8), 0, "GSI base");
    }

    #[test]
    fn madt_routes_lint1_to_nmi_on_every_cpu() {
        let t = tables(1, 0);
        let m = t.table_at(t.madt).unwrap();
        let nmi: Vec<&[u8]> = madt_entries(m)
            .into_iter()
            .filter(|e| e[0] == MADT_LOCAL_APIC_NMI)
            .collect();
        assert_eq!(nmi, [&[4u8, 6, 0xff, 0, 0, 1][..]]);
    }

    #[test]
    fn dsdt_describes_each_virtio_device_with_its_window_and_level_interrupt() {
        let t = tables(1, 3);
        let d = t.table_at(t.dsdt).unwrap();
        assert_eq!(count(d, b"\x0dLNRO0005\0"), 3);
        for (i, dev) in devices(3).iter().enumerate() {
            let name = alloc::format!("V{i:03}");
            let at = find(d, name.as_bytes()).unwrap();
            let mem = aml::memory32_fixed(true, dev.base as u32, dev.size as u32);
            let irq = aml::interrupt(dev.gsi, aml::Trigger::Level, aml::Polarity::ActiveHigh);
            let mem_at = find(d, &mem).unwrap();
            assert!(mem_at > at, "device {i}'s window is inside its Device()");
            assert_eq!(&d[mem_at + mem.len()..mem_at + mem.len() + irq.len()], irq);
            assert_eq!(irq[3] & 0b110, 0, "level, active high");
        }
    }

    #[test]
    fn dsdt_describes_com1_with_its_port_and_irq() {
        let t = tables(1, 0);
        let d = t.table_at(t.dsdt).unwrap();
        assert!(find(d, b"COM1").is_some());
        assert!(
            find(d, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some(),
            "EisaId(PNP0501)"
        );
        let io = aml::io(0x3f8, 0x3f8, 0, 8);
        let irq = aml::interrupt(4, aml::Trigger::Edge, aml::Polarity::ActiveHigh);
        assert!(find(d, &[&io[..], &irq[..]].concat()).is_some());
    }

    #[test]
    fn dsdt_has_the_s5_package_with_the_sleep_type_of_the_pm_device() {
        let t = tables(1, 0);
        let d = t.table_at(t.dsdt).unwrap();
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, S5_SLP_TYP, 0x00,
        ];
        assert!(find(d, &s5).is_some());
        assert_eq!(
            requested_sleep_type((S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN),
            Some(S5_SLP_TYP)
        );
    }

    #[test]
    fn sleep_write_without_slp_en_requests_nothing() {
        assert_eq!(requested_sleep_type(S5_SLP_TYP << SLP_TYP_SHIFT), None);
        assert_eq!(requested_sleep_type(0x80), None, "WAK_STS clear");
    }

    #[test]
    fn zero_or_too_many_vcpus_are_rejected() {
        for vcpus in [0, MAX_VCPUS + 1] {
            let err = build(
                &AcpiInput {
                    vcpus,
                    virtio_mmio: &[],
                },
                ACPI_TABLES_GPA,
            )
            .unwrap_err();
            assert!(matches!(err, AcpiError::TooManyVcpus { .. }), "{vcpus}");
        }
    }

    #[test]
    fn device_above_4g_is_rejected() {
        let dev = VirtioMmioDevice {
            base: 0x1_0000_0000,
            size: 0x1000,
            gsi: 5,
        };
        let err = build(
            &AcpiInput {
                vcpus: 1,
                virtio_mmio: &[dev],
            },
            ACPI_TABLES_GPA,
        )
        .unwrap_err();
        assert!(matches!(err, AcpiError::DeviceAbove4G { index: 0, .. }));
    }

    #[test]
    fn device_gsi_beyond_the_ioapic_is_rejected() {
        let dev = VirtioMmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            gsi: 24,
        };
        let err = build(
            &AcpiInput {
                vcpus: 1,
                virtio_mmio: &[dev],
            },
            ACPI_TABLES_GPA,
        )
        .unwrap_err();
        assert_eq!(
            err,
            AcpiError::GsiBeyondIoapic {
                index: 0,
                gsi: 24,
                pins: 24
            }
        );
    }

    #[test]
    fn largest_configuration_fits_the_bios_area() {
        let mem = GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap();
        let devs = devices(VIRTIO_MMIO_MAX_DEVICES);
        let input = AcpiInput {
            vcpus: MAX_VCPUS,
            virtio_mmio: &devs,
        };
        assert_eq!(write_acpi_tables(&mem, &input), Ok(ACPI_TABLES_GPA));
    }

    #[test]
    fn tables_lie_in_the_reserved_part_of_the_memory_map() {
        let map = memory_map(&[(0, 256 << 20)]);
        let t = tables(MAX_VCPUS, VIRTIO_MMIO_MAX_DEVICES);
        let end = t.base + t.bytes.len() as u64;
        assert!(map.iter().any(|e| e.kind == E820_RESERVED
            && e.addr <= ACPI_TABLES_GPA
            && end <= e.addr + e.size));
    }

    #[test]
    fn written_tables_start_with_the_rsdp_at_0xe0000() {
        let mem = GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap();
        let devs = devices(1);
        let rsdp = write_acpi_tables(
            &mem,
            &AcpiInput {
                vcpus: 1,
                virtio_mmio: &devs,
            },
        )
        .unwrap();
        let mut sig = [0u8; 8];
        mem.read(GuestAddress(0xe_0000), &mut sig).unwrap();
        assert_eq!((rsdp, &sig), (0xe_0000, b"RSD PTR "));
    }

    #[test]
    fn rsdp_address_reaches_boot_params_and_pvh_start_info() {
        let mem = GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap();
        let long = BootEntry::X86Long {
            rip: 0x10_0000,
            rsi: 0x7000,
            cr3: 0x9000,
            gdt_gpa: 0x500,
            rsp: 0x8ff0,
        };
        let pvh = BootEntry::X86Pvh {
            eip: 0x10_0000,
            ebx: 0x6000,
            gdt_gpa: 0x500,
        };
        publish_rsdp(&mem, &long, 0xe_0000).unwrap();
        publish_rsdp(&mem, &pvh, 0xe_0000).unwrap();
        assert_eq!(mem.read_u64(GuestAddress(0x7070)).unwrap(), 0xe_0000);
        assert_eq!(mem.read_u64(GuestAddress(0x6020)).unwrap(), 0xe_0000);
    }

    /// A scratch directory for ACPICA's tools, removed unless the test failed.
    struct Workdir(std::path::PathBuf);

    impl Workdir {
        fn new(test: &str) -> Workdir {
            let dir = std::env::temp_dir()
                .join(alloc::format!("keel-acpi-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Workdir(dir)
        }

        fn write(&self, file: &str, bytes: &[u8]) {
            std::fs::write(self.0.join(file), bytes).unwrap();
        }

        fn read(&self, file: &str) -> std::vec::Vec<u8> {
            std::fs::read(self.0.join(file)).unwrap()
        }

        /// Run `tool args` here; its exit status and everything it printed.
        fn run(&self, tool: &str, args: &[&str]) -> (bool, String) {
            let out = std::process::Command::new(tool)
                .args(args)
                .current_dir(&self.0)
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), log)
        }
    }

    impl Drop for Workdir {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// Whether ACPICA's `tool` is installed; if not, say so loudly (and append the line
    /// to `$KEEL_SKIP_LOG` when set) so the test's silent pass is visible.
    fn acpica_tool_or_skip(tool: &str, test: &str) -> bool {
        if std::process::Command::new(tool).arg("-v").output().is_ok() {
            return true;
        }
        let msg = alloc::format!(
            "SKIP keel-core acpi::tests::{test}: {tool} not installed (Debian package acpica-tools)"
        );
        std::eprintln!("{msg}");
        if let Some(log) = std::env::var_os("KEEL_SKIP_LOG") {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = std::writeln!(f, "{msg}");
            }
        }
        false
    }

    /// `text` with every run of whitespace made one space (iasl's layout is not the point).
    fn squash(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Disassemble each table with `iasl -d`; the listings (whitespace squashed) by name.
    fn disassemble(dir: &Workdir, t: &AcpiTables) -> Vec<(&'static str, String)> {
        let mut listings = Vec::new();
        for (gpa, name) in [
            (t.xsdt, "xsdt"),
            (t.fadt, "facp"),
            (t.madt, "apic"),
            (t.dsdt, "dsdt"),
        ] {
            dir.write(&alloc::format!("{name}.dat"), t.table_at(gpa).unwrap());
            let (ok, log) = dir.run("iasl", &["-d", &alloc::format!("{name}.dat")]);
            assert!(ok, "iasl -d {name}: {log}");
            for complaint in ["Error", "Warning", "Invalid", "mismatch"] {
                assert!(!log.contains(complaint), "iasl -d {name}: {log}");
            }
            let dsl = dir.read(&alloc::format!("{name}.dsl"));
            listings.push((name, squash(&String::from_utf8_lossy(&dsl))));
        }
        listings
    }

    #[test]
    // Runs ACPICA's tools as child processes, which Miri cannot spawn.
    #[cfg_attr(miri, ignore)]
    fn iasl_decodes_the_fixed_tables_as_keel_means_them() {
        if !acpica_tool_or_skip("iasl", "iasl_decodes_the_fixed_tables_as_keel_means_them") {
            return;
        }
        let dir = Workdir::new("fixed");
        let t = tables(2, 1);
        let listings = disassemble(&dir, &t);
        let facp = &listings[1].1;
        for field in [
            "Hardware Reduced (V5) : 1",
            "Reset Register Supported (V2) : 1",
            "Value to cause reset : 06",
            "Sleep Control Register : [Generic Address Structure] [0F4h 0244 1] Space ID : 01 [SystemIO] [0F5h 0245 1] Bit Width : 08",
            "Address : 0000000000000600",
            "Address : 0000000000000601",
            "Address : 0000000000000602",
        ] {
            assert!(facp.contains(field), "FADT lacks {field:?}: {facp}");
        }
        let dsdt_field = alloc::format!("DSDT Address : {:016X}", t.dsdt);
        assert!(facp.contains(&dsdt_field), "{facp}");
        let apic = &listings[2].1;
        assert_eq!(apic.matches("[Processor Local APIC]").count(), 2, "{apic}");
        assert!(apic.contains("I/O Apic ID : 02"), "{apic}");
        let xsdt = &listings[0].1;
        assert!(xsdt.contains(&alloc::format!("ACPI Table Address 1 : {:016X}", t.madt)));
    }

    #[test]
    // Runs ACPICA's tools as child processes, which Miri cannot spawn.
    #[cfg_attr(miri, ignore)]
    fn iasl_decodes_the_dsdt_into_com1_and_each_virtio_device() {
        if !acpica_tool_or_skip(
            "iasl",
            "iasl_decodes_the_dsdt_into_com1_and_each_virtio_device",
        ) {
            return;
        }
        let dir = Workdir::new("dsdt");
        let listings = disassemble(&dir, &tables(1, 3));
        let dsdt = &listings[3].1;
        assert!(
            dsdt.contains("Device (COM1) { Name (_HID, EisaId (\"PNP0501\")"),
            "{dsdt}"
        );
        assert!(dsdt.contains("IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x00, // Alignment 0x08, // Length ) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }"), "{dsdt}");
        for (i, base) in [0xd000_0000u32, 0xd000_1000, 0xd000_2000]
            .iter()
            .enumerate()
        {
            let device = alloc::format!(
                "Device (V{i:03}) {{ Name (_HID, \"LNRO0005\") // _HID: Hardware ID Name (_UID, {uid}) // _UID: Unique ID Name (_CRS, ResourceTemplate () // _CRS: Current Resource Settings {{ Memory32Fixed (ReadWrite, 0x{base:08X}, // Address Base 0x00001000, // Address Length ) Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) {{ 0x{gsi:08X}, }} }}) }}",
                uid = ["Zero", "One", "0x02"][i],
                gsi = 5 + i,
            );
            assert!(dsdt.contains(&device), "no {device:?} in {dsdt}");
        }
        assert!(
            dsdt.contains("Name (_S5, Package (0x02) // _S5_: S5 System State { 0x05, Zero })"),
            "{dsdt}"
        );
    }

    /// iasl compiles its own listing of the DSDT back to exactly Keel's AML: the encoder
    /// writes what ACPICA's compiler writes.
    #[test]
    // Runs ACPICA's tools as child processes, which Miri cannot spawn.
    #[cfg_attr(miri, ignore)]
    fn iasl_recompiles_the_dsdt_listing_to_identical_aml() {
        if !acpica_tool_or_skip("iasl", "iasl_recompiles_the_dsdt_listing_to_identical_aml") {
            return;
        }
        let dir = Workdir::new("roundtrip");
        let t = tables(1, 4);
        let dsdt = t.table_at(t.dsdt).unwrap();
        dir.write("dsdt.dat", dsdt);
        let (ok, log) = dir.run("iasl", &["-d", "dsdt.dat"]);
        assert!(ok, "{log}");
        let (ok, log) = dir.run("iasl", &["-p", "recompiled", "dsdt.dsl"]);
        assert!(ok && log.contains("0 Errors, 0 Warnings"), "{log}");
        let recompiled = dir.read("recompiled.aml");
        // The header differs (compiler id, checksum); the AML must not.
        assert_eq!(&recompiled[HEADER_SIZE..], &dsdt[HEADER_SIZE..]);
    }

    /// ACPICA's interpreter (the one Linux runs) loads the namespace, evaluates `\_S5_`
    /// and takes the hardware-reduced sleep path through the FADT's sleep registers.
    #[test]
    // Runs ACPICA's tools as child processes, which Miri cannot spawn.
    #[cfg_attr(miri, ignore)]
    fn acpiexec_loads_the_namespace_and_enters_s5_the_hardware_reduced_way() {
        if !acpica_tool_or_skip(
            "acpiexec",
            "acpiexec_loads_the_namespace_and_enters_s5_the_hardware_reduced_way",
        ) {
            return;
        }
        let dir = Workdir::new("acpiexec");
        let t = tables(2, 2);
        dir.write("dsdt.dat", t.table_at(t.dsdt).unwrap());
        dir.write("facp.dat", t.table_at(t.fadt).unwrap());
        dir.write("apic.dat", t.table_at(t.madt).unwrap());
        let (ok, log) = dir.run(
            "acpiexec",
            &[
                "-b",
                "Evaluate \\_S5_; Evaluate \\_SB.V001._CRS; Sleep 5",
                "dsdt.dat",
                "facp.dat",
                "apic.dat",
            ],
        );
        let log = squash(&log);
        assert!(ok, "{log}");
        assert!(
            log.contains("3 Devices"),
            "COM1 and two virtio devices: {log}"
        );
        assert!(
            log.contains("[Package] Contains 2 Elements: [Integer] = 0000000000000005 [Integer] = 0000000000000000"),
            "{log}"
        );
        assert!(
            log.contains("0000: 86 09 00 01 00 10 00 D0 00 10 00 00 89 06 00 01 // ................ 0010: 01 06 00 00 00 79 00"),
            "{log}"
        );
        assert!(
            log.contains("HwExtendedSleep : Entering sleep state [S5]"),
            "{log}"
        );
        assert!(!log.contains("Error") && !log.contains("AE_"), "{log}");
    }
}
