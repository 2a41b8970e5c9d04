//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its
//! vCPUs (one local APIC each, APIC id = vCPU index), the IOAPIC and the interrupt routing.
//!
//! The floating pointer sits at the start of the EBDA (Linux scans `639 KiB..640 KiB`), the
//! configuration table right after it.

use alloc::vec::Vec;

use crate::memory::{GuestAddress, GuestMemory};

use super::BootError;
use super::layout::{BDA_EBDA_SEGMENT_GPA, EBDA_GPA, IOAPIC_GPA, LAPIC_GPA, VIRTIO_MMIO_FIRST_GSI};

/// Most vCPUs the table describes: APIC ids are 8 bits, 0xff is broadcast, and the IOAPIC
/// takes the id after the last vCPU.
pub const MAX_VCPUS: u32 = 254;
/// IOAPIC input pins.
pub const IOAPIC_PINS: u8 = 24;
/// The ISA bus id in the table.
pub const ISA_BUS_ID: u8 = 0;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity active high (01), trigger level (11): the virtio-mmio pins.
const FLAGS_LEVEL_HIGH: u16 = 0b1101;
/// "Conforms to the bus" (ISA: edge, active high).
const FLAGS_CONFORMING: u16 = 0;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 signature with the FPU and APIC feature bits, as the table wants.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// The byte that makes `bytes` sum to zero.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

fn interrupt_entry(kind: u8, int_type: u8, flags: u16, bus_irq: u8, dst: u8, pin: u8) -> [u8; 8] {
    let f = flags.to_le_bytes();
    [kind, int_type, f[0], f[1], ISA_BUS_ID, bus_irq, dst, pin]
}

/// Build the table for `vcpus` vCPUs as it would sit at `base`: the floating pointer
/// followed by the configuration table.
pub fn build(vcpus: u32, base: u64) -> Result<Vec<u8>, BootError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::TooManyVcpus {
            vcpus,
            max: MAX_VCPUS,
        });
    }
    let ioapic_id = vcpus as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        let mut e = [0u8; 20];
        e[0] = ENTRY_PROCESSOR;
        e[1] = id as u8;
        e[2] = LAPIC_VERSION;
        e[3] = flags;
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let mut ioapic = [ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&(IOAPIC_GPA as u32).to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;
    for pin in 0..IOAPIC_PINS {
        let flags = if u32::from(pin) >= VIRTIO_MMIO_FIRST_GSI {
            FLAGS_LEVEL_HIGH
        } else {
            FLAGS_CONFORMING
        };
        entries.extend_from_slice(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            flags,
            pin,
            ioapic_id,
            pin,
        ));
        count += 1;
    }
    // LINT0 = ExtINT (the 8259 path), LINT1 = NMI, on every local APIC (0xff).
    entries.extend_from_slice(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        FLAGS_CONFORMING,
        0,
        0xff,
        0,
    ));
    entries.extend_from_slice(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        FLAGS_CONFORMING,
        0,
        0xff,
        1,
    ));
    count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let table_gpa = base + FLOATING_POINTER_SIZE as u64;
    let mut header = [0u8; HEADER_SIZE];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"KEEL    ");
    header[16..28].copy_from_slice(b"KEEL-VM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(LAPIC_GPA as u32).to_le_bytes());
    let mut table = Vec::with_capacity(FLOATING_POINTER_SIZE + table_len);
    let mut fp = [0u8; FLOATING_POINTER_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&(table_gpa as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4;
    fp[10] = checksum(&fp);
    table.extend_from_slice(&fp);
    // The table checksum covers the header and the entries.
    header[7] = checksum(&header).wrapping_add(checksum(&entries));
    table.extend_from_slice(&header);
    table.extend_from_slice(&entries);
    Ok(table)
}

/// Write the MP table for `vcpus` vCPUs at the EBDA and point the BIOS data area at it.
pub fn write_mptable<M: GuestMemory + ?Sized>(mem: &M, vcpus: u32) -> Result<(), BootError> {
    let table = build(vcpus, EBDA_GPA)?;
    mem.write(GuestAddress(EBDA_GPA), &table)
        .map_err(BootError::mem("MP table"))?;
    mem.write_u16(GuestAddress(BDA_EBDA_SEGMENT_GPA), (EBDA_GPA >> 4) as u16)
        .map_err(BootError::mem("BIOS data area"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksums_verify() {
        let t = build(4, EBDA_GPA).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let len = usize::from(u16::from_le_bytes([t[20], t[21]]));
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(sum(&t[16..16 + len]), 0);
        assert_eq!(16 + len, t.len());
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = build(1, EBDA_GPA).unwrap();
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), EBDA_GPA + 16);
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_apic_id_equal_to_index() {
        let t = build(3, EBDA_GPA).unwrap();
        let cpus: Vec<(u8, u8)> = (0..3)
            .map(|i| {
                let e = &t[16 + HEADER_SIZE + i * 20..];
                assert_eq!(e[0], ENTRY_PROCESSOR);
                (e[1], e[3])
            })
            .collect();
        assert_eq!(cpus, [(0, 3), (1, 1), (2, 1)]);
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn ioapic_id_follows_the_last_vcpu() {
        let t = build(2, EBDA_GPA).unwrap();
        let ioapic = &t[16 + HEADER_SIZE + 2 * 20 + 8..];
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], 2);
        assert_eq!(
            u32::from_le_bytes([ioapic[4], ioapic[5], ioapic[6], ioapic[7]]),
            0xfec0_0000
        );
    }

    #[test]
    fn zero_or_too_many_vcpus_are_rejected() {
        assert!(matches!(
            build(0, EBDA_GPA),
            Err(BootError::TooManyVcpus { vcpus: 0, .. })
        ));
        assert!(build(MAX_VCPUS, EBDA_GPA).is_ok());
        assert!(build(MAX_VCPUS + 1, EBDA_GPA).is_err());
    }
}
