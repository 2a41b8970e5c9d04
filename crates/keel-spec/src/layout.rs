//! Guest-physical memory layout: where RAM goes and which window is kept for devices.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::model::{Arch, Memory, VmSpec};

/// x86_64: the 1 GiB below 4 GiB kept for devices (virtio-mmio at 0xd000_0000, IOAPIC, LAPIC).
pub const X86_DEVICE_WINDOW: DeviceWindow = DeviceWindow {
    start: 0xC000_0000,
    end: 0x1_0000_0000,
};

/// aarch64: everything below 1 GiB is kept for devices (GIC, UART, virtio-mmio), as on QEMU
/// `virt`; RAM starts at 1 GiB.
pub const AARCH64_DEVICE_WINDOW: DeviceWindow = DeviceWindow {
    start: 0,
    end: 0x4000_0000,
};

/// Highest guest-physical address (exclusive) RAM may reach: 1 TiB, the default IPA size of
/// KVM on arm64 and within every x86_64 CPU's physical address width.
pub const GPA_LIMIT: u64 = 1 << 40;

/// A half-open guest-physical address range kept free of RAM for devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceWindow {
    /// First address of the window.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl DeviceWindow {
    /// Whether `[base, base + size)` intersects the window (`size > 0`, no overflow assumed
    /// checked by the caller; an overflowing range is treated as reaching the top).
    pub fn overlaps(&self, base: u64, size: u64) -> bool {
        let end = base.saturating_add(size);
        size > 0 && base < self.end && self.start < end
    }
}

impl fmt::Display for DeviceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end)
    }
}

/// The device window of an arch.
pub const fn device_window(arch: Arch) -> DeviceWindow {
    match arch {
        Arch::X86_64 => X86_DEVICE_WINDOW,
        Arch::Aarch64 => AARCH64_DEVICE_WINDOW,
    }
}

/// The guest RAM regions of a VM as `(gpa, size)` pairs.
///
/// With `memory = <size>`: on x86_64, RAM from 0 up to `min(size, 0xC000_0000)` and the rest
/// from 4 GiB (the 1 GiB below 4 GiB is the device window); on aarch64, one region from
/// 0x4000_0000. With `[[vm.ram]]`: the regions as given, in file order.
pub fn ram_layout(vm: &VmSpec) -> Vec<(u64, u64)> {
    match &vm.memory {
        Memory::Regions(regions) => regions.iter().map(|r| (r.base, r.size)).collect(),
        Memory::Size(size) => match vm.arch {
            Arch::X86_64 => {
                let low = (*size).min(X86_DEVICE_WINDOW.start);
                let mut regions = vec![(0, low)];
                if *size > low {
                    regions.push((X86_DEVICE_WINDOW.end, *size - low));
                }
                regions
            }
            Arch::Aarch64 => vec![(AARCH64_DEVICE_WINDOW.end, *size)],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostPath, RamRegion};

    fn vm(arch: Arch, memory: Memory) -> VmSpec {
        VmSpec::new("t", arch, HostPath::new("/k"), memory)
    }

    #[test]
    fn x86_default_layout_skips_the_pci_hole() {
        let layout = ram_layout(&vm(Arch::X86_64, Memory::Size(4 << 30)));
        assert_eq!(layout, vec![(0, 0xC000_0000), (0x1_0000_0000, 1 << 30)]);
    }

    #[test]
    fn x86_small_memory_is_one_region_from_zero() {
        let layout = ram_layout(&vm(Arch::X86_64, Memory::Size(256 << 20)));
        assert_eq!(layout, vec![(0, 256 << 20)]);
    }

    #[test]
    fn x86_memory_of_exactly_3g_has_no_high_region() {
        let layout = ram_layout(&vm(Arch::X86_64, Memory::Size(0xC000_0000)));
        assert_eq!(layout, vec![(0, 0xC000_0000)]);
    }

    #[test]
    fn aarch64_default_layout_starts_at_1g() {
        let layout = ram_layout(&vm(Arch::Aarch64, Memory::Size(512 << 20)));
        assert_eq!(layout, vec![(0x4000_0000, 512 << 20)]);
    }

    #[test]
    fn explicit_regions_are_used_as_given() {
        let regions = vec![
            RamRegion {
                base: 0x8000_0000,
                size: 1 << 30,
            },
            RamRegion {
                base: 0x4000_0000,
                size: 256 << 20,
            },
        ];
        let layout = ram_layout(&vm(Arch::Aarch64, Memory::Regions(regions)));
        assert_eq!(
            layout,
            vec![(0x8000_0000, 1 << 30), (0x4000_0000, 256 << 20)]
        );
    }

    #[test]
    fn device_window_overlap_is_half_open() {
        assert!(!X86_DEVICE_WINDOW.overlaps(0xB000_0000, 0x1000_0000));
        assert!(X86_DEVICE_WINDOW.overlaps(0xB000_0000, 0x1000_0001));
        assert!(!X86_DEVICE_WINDOW.overlaps(0x1_0000_0000, 0x1000));
    }
}
