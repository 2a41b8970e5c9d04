//! Putting arm64 Linux into guest RAM, the one step every backend (KVM, seL4) shares:
//! plan the `Image` layout ([`BootLayout::plan`]), record the initrd's place in the
//! platform, generate the device tree that names it ([`generate_fdt`]), and copy kernel,
//! initrd and tree into RAM ([`BootLayout::load`]). The layout comes first because the
//! tree describes the initrd; the tree's own place does not depend on its contents.

use crate::hv::BootEntry;
use crate::memory::GuestMemory;

use super::fdt::{FdtError, generate_fdt};
use super::image::{BootLayout, ImageError, ImageHeader};
use super::layout::Arm64Platform;

/// Why an arm64 Linux guest could not be put into memory.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinuxLoadError {
    /// The kernel `Image` (header, placement, copy) was refused.
    #[error("{0}")]
    Image(#[from] ImageError),
    /// The device tree could not be built from the platform.
    #[error("device tree: {0}")]
    DeviceTree(#[from] FdtError),
    /// The platform has no RAM region to load the kernel into.
    #[error("the VM has no RAM region to load the kernel into")]
    NoRam,
}

/// Where [`load_linux`] put things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedLinux {
    /// The kernel, initrd and device-tree addresses.
    pub layout: BootLayout,
    /// The device tree's size in bytes (at `layout.fdt`).
    pub fdt_len: usize,
}

impl LoadedLinux {
    /// The boot vCPU's entry: the kernel's first byte, `x0` = the device tree.
    pub fn entry(&self) -> BootEntry {
        self.layout.entry()
    }
}

/// Load `kernel` (an arm64 `Image`), `initrd` and the device tree of `platform` into the
/// platform's first RAM region of `mem`. Sets `platform.initrd` to where the initrd went
/// (`None` without one) before generating the tree.
pub fn load_linux(
    mem: &impl GuestMemory,
    platform: &mut Arm64Platform,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<LoadedLinux, LinuxLoadError> {
    let &(ram_base, ram_size) = platform.memory.first().ok_or(LinuxLoadError::NoRam)?;
    let header = ImageHeader::parse(kernel)?;
    let layout = BootLayout::plan(&header, initrd.map(|i| i.len() as u64), ram_base, ram_size)?;
    platform.initrd = layout.initrd;
    let fdt = generate_fdt(platform)?;
    layout.load(mem, kernel, initrd, &fdt)?;
    Ok(LoadedLinux {
        layout,
        fdt_len: fdt.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::layout::{GicVersion, RAM_BASE};
    use crate::memory::{GuestAddress, GuestRam};
    use alloc::vec::Vec;

    /// A minimal arm64 `Image`: header with `image_size`, text_offset 0, LE, 4K, anywhere.
    fn image(image_size: u64, len: usize) -> Vec<u8> {
        let mut v = alloc::vec![0u8; len];
        v[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
        v[16..24].copy_from_slice(&image_size.to_le_bytes());
        v[24..32].copy_from_slice(&0xau64.to_le_bytes());
        v[0x38..0x3c].copy_from_slice(b"ARM\x64");
        v
    }

    fn setup(ram_size: u64) -> (GuestRam, Arm64Platform) {
        let ram = GuestRam::anonymous(&[(RAM_BASE, ram_size)]).unwrap();
        (ram, Arm64Platform::new(ram_size, 1, GicVersion::V3))
    }

    #[test]
    fn kernel_initrd_and_tree_land_in_ram_with_x0_at_the_tree() {
        let (ram, mut p) = setup(64 << 20);
        let kernel = image(4 << 20, 8192);
        let initrd = alloc::vec![0x5au8; 3000];

        let loaded = load_linux(&ram, &mut p, &kernel, Some(&initrd)).unwrap();

        let BootEntry::Arm64 { pc, x0 } = loaded.entry() else {
            panic!("{loaded:?}")
        };
        assert_eq!((pc, x0), (RAM_BASE, loaded.layout.fdt));
        let mut first = [0u8; 4];
        ram.read(GuestAddress(pc), &mut first).unwrap();
        assert_eq!(first, kernel[..4]);
        let mut magic = [0u8; 4];
        ram.read(GuestAddress(x0), &mut magic).unwrap();
        assert_eq!(magic, [0xd0, 0x0d, 0xfe, 0xed]);
        let mut total = [0u8; 4];
        ram.read(GuestAddress(x0 + 4), &mut total).unwrap();
        assert_eq!(u32::from_be_bytes(total) as usize, loaded.fdt_len);
        let (start, end) = p.initrd.unwrap();
        assert_eq!(
            (end - start, Some((start, end))),
            (3000, loaded.layout.initrd)
        );
        let mut last = [0u8; 1];
        ram.read(GuestAddress(start + 2999), &mut last).unwrap();
        assert_eq!(last, [0x5a]);
    }

    #[test]
    fn the_tree_names_the_initrd_where_it_was_put() {
        let (ram, mut p) = setup(64 << 20);

        let loaded = load_linux(&ram, &mut p, &image(4 << 20, 4096), Some(&[1; 100])).unwrap();

        let (start, _) = loaded.layout.initrd.unwrap();
        let mut tree = alloc::vec![0u8; loaded.fdt_len];
        ram.read(GuestAddress(loaded.layout.fdt), &mut tree)
            .unwrap();
        assert_eq!(tree, generate_fdt(&p).unwrap());
        let start_be = start.to_be_bytes();
        assert!(tree.windows(8).any(|w| w == start_be));
    }

    #[test]
    fn without_an_initrd_the_platform_has_none() {
        let (ram, mut p) = setup(64 << 20);
        p.initrd = Some((1, 2));

        let loaded = load_linux(&ram, &mut p, &image(4 << 20, 4096), None).unwrap();

        assert_eq!((p.initrd, loaded.layout.initrd), (None, None));
    }

    #[test]
    fn kernel_larger_than_ram_is_refused() {
        let (ram, mut p) = setup(4 << 20);

        let err = load_linux(&ram, &mut p, &image(64 << 20, 4096), None).unwrap_err();

        assert!(
            matches!(err, LinuxLoadError::Image(ImageError::DoesNotFit { .. })),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_the_image_magic_is_refused() {
        let (ram, mut p) = setup(4 << 20);

        let err = load_linux(&ram, &mut p, &[0x7f, b'E', b'L', b'F'], None).unwrap_err();

        assert!(matches!(err, LinuxLoadError::Image(_)), "{err}");
    }

    #[test]
    fn a_platform_without_ram_is_refused() {
        let (ram, mut p) = setup(4 << 20);
        p.memory.clear();

        let err = load_linux(&ram, &mut p, &image(1 << 20, 4096), None).unwrap_err();

        assert_eq!(err, LinuxLoadError::NoRam);
    }
}
