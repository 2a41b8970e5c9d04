//! Where Keel puts things in an x86_64 guest's physical address space (the platform
//! contract shared by the KVM backend, the test guests and the loaders).
//!
//! ```text
//! 0x0000_0500  GDT (flat segments)
//! 0x0000_6000  hvm_start_info (PVH), module list at +0x40, memory map at +0x80
//! 0x0000_7000  boot_params, the Linux "zero page" (bzImage and ELF-without-PVH)
//! 0x0000_8ff0  initial stack of the 64-bit entry (grows down)
//! 0x0000_9000  PML4, then PDPT (0xa000) and four PDs (0xb000..0xf000): 4 GiB identity map
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA: the MP table (reserved in the memory map up to 1 MiB)
//! 0x0010_0000  kernel (1 MiB)
//!      ...     initrd at the top of low RAM, 4 KiB aligned
//! 0xd000_0000  virtio-mmio devices, 0x1000 each, GSI 5 + i
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC (in-kernel)
//! ```

/// The GDT.
pub const GDT_GPA: u64 = 0x500;
/// The BIOS data area word holding the EBDA segment (Linux reads it to find the EBDA).
pub const BDA_EBDA_SEGMENT_GPA: u64 = 0x40e;
/// `hvm_start_info` for PVH entry.
pub const PVH_INFO_GPA: u64 = 0x6000;
/// The PVH module list (the initrd).
pub const PVH_MODLIST_GPA: u64 = 0x6040;
/// The PVH memory map.
pub const PVH_MEMMAP_GPA: u64 = 0x6080;
/// Room for PVH memory-map entries (24 bytes each) before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_GPA - PVH_MEMMAP_GPA) / 24) as usize;
/// `boot_params` (the zero page).
pub const ZERO_PAGE_GPA: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_GPA: u64 = 0x8ff0;
/// Root of the identity-mapped page tables (PML4).
pub const PML4_GPA: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPT_GPA: u64 = 0xa000;
/// The first of the four page directories (2 MiB pages, 4 GiB in all).
pub const PD_GPA: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Longest command line the layout has room for, including the terminating NUL.
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// The extended BIOS data area, where the MP table lives.
pub const EBDA_GPA: u64 = 0x9_fc00;
/// Start of the kernel (and of "high" memory in the memory map).
pub const KERNEL_GPA: u64 = 0x10_0000;
/// Everything from the EBDA up to here is reserved in the memory map.
pub const LOW_RESERVED_END: u64 = KERNEL_GPA;
/// Low RAM ends at the latest here: the 32-bit MMIO hole starts (virtio, IOAPIC, LAPIC).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// The first virtio-mmio device.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The size of each virtio-mmio device's window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The GSI of the first virtio-mmio device.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
/// How many virtio-mmio devices the window and the IOAPIC (24 pins) have room for.
pub const VIRTIO_MMIO_MAX_DEVICES: u32 = 24 - VIRTIO_MMIO_FIRST_GSI;
/// The IOAPIC.
pub const IOAPIC_GPA: u64 = 0xfec0_0000;
/// The local APIC.
pub const LAPIC_GPA: u64 = 0xfee0_0000;
/// Where KVM's TSS goes (three pages below the IOAPIC, inside the MMIO hole).
pub const KVM_TSS_GPA: u64 = 0xfffb_d000;
/// Where KVM's identity-map page goes (the page after the TSS).
pub const KVM_IDENTITY_MAP_GPA: u64 = 0xfffb_c000;
/// Serial port COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt.
pub const COM1_GSI: u32 = 4;
/// The debug-exit port: a byte V written here stops the VM with exit code V.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The i8042 command port (0xFE written here resets the machine).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;

/// The guest-physical base of virtio-mmio device `index`, or `None` past the window.
pub fn virtio_mmio_base(index: u32) -> Option<u64> {
    if index >= VIRTIO_MMIO_MAX_DEVICES {
        return None;
    }
    Some(VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE)
}

/// The GSI of virtio-mmio device `index`, or `None` past the IOAPIC's pins.
pub fn virtio_mmio_gsi(index: u32) -> Option<u32> {
    (index < VIRTIO_MMIO_MAX_DEVICES).then(|| VIRTIO_MMIO_FIRST_GSI + index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut ranges = [
            (GDT_GPA, 0x100),
            (PVH_INFO_GPA, ZERO_PAGE_GPA - PVH_INFO_GPA),
            (ZERO_PAGE_GPA, 0x1000),
            (0x8000, 0x1000),
            (PML4_GPA, 0x6000),
            (CMDLINE_GPA, CMDLINE_MAX),
            (EBDA_GPA, 0x400),
            (KERNEL_GPA, 1),
        ];
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:#x?} overlaps {:#x?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn virtio_devices_stop_at_the_last_ioapic_pin() {
        assert_eq!(virtio_mmio_base(1), Some(0xd000_1000));
        assert_eq!(virtio_mmio_gsi(1), Some(6));
        assert_eq!(virtio_mmio_gsi(VIRTIO_MMIO_MAX_DEVICES - 1), Some(23));
        assert_eq!(virtio_mmio_gsi(VIRTIO_MMIO_MAX_DEVICES), None);
        assert_eq!(virtio_mmio_base(VIRTIO_MMIO_MAX_DEVICES), None);
    }
}
