//! Loading an arm64 Linux `Image` (Documentation/arch/arm64/booting.rst).
//!
//! Placement, in one RAM region, from its start:
//!
//! ```text
//! 2 MiB-aligned RAM base ─┬─ text_offset ─┬─ kernel (image_size bytes, BSS included)
//!                         │               │
//!                         align up 2 MiB ─┴─ initrd (if any)
//!                         align up 2 MiB ─── device tree, alone in its 2 MiB block
//! ```
//!
//! The kernel sits at the lowest 2 MiB-aligned address of RAM plus `text_offset`, which
//! satisfies both values of the "physical placement" flag. The initrd follows the kernel and
//! the device tree follows the initrd, so everything lies in the same 1 GiB-aligned window as
//! the kernel (as the protocol requires of the initrd) and the rest of RAM stays in one
//! piece. The device tree gets a 2 MiB block of its own because the kernel maps it with
//! blocks of up to 2 MiB. Its placement does not depend on its contents, so the loader can
//! fix the initrd's address first, generate the tree that names it, and copy the tree last.
//!
//! The vCPU starts at the kernel's first byte with `x0` = the device tree's address
//! ([`BootEntry::Arm64`]); the backend sets EL1h, MMU and caches off, interrupts masked and
//! x1..x3 = 0.

use alloc::vec::Vec;

use crate::hv::BootEntry;
use crate::memory::{GuestAddress, GuestMemory, GuestMemoryError};

use super::fdt::FDT_MAX_SIZE;

/// `"ARM\x64"`, little endian, at offset 0x38 of the header (the shared sniffer's
/// [`crate::arch::kernel::ARM64_IMAGE_MAGIC`]).
pub const IMAGE_MAGIC: u32 = u32::from_le_bytes(*crate::arch::kernel::ARM64_IMAGE_MAGIC);
/// Size of the `Image` header.
pub const IMAGE_HEADER_SIZE: usize = 64;

const SZ_2M: u64 = 2 << 20;
const MAGIC_OFFSET: usize = crate::arch::kernel::ARM64_IMAGE_MAGIC_OFFSET;
const FLAG_BIG_ENDIAN: u64 = 1 << 0;
const FLAG_PAGE_SIZE_SHIFT: u32 = 1;
const FLAG_PHYS_ANYWHERE: u64 = 1 << 3;

/// Why an `Image` cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file is shorter than the header.
    #[error(
        "kernel file of {len} bytes is shorter than the {IMAGE_HEADER_SIZE}-byte arm64 Image header"
    )]
    TooShort {
        /// File length.
        len: usize,
    },
    /// The magic number is wrong.
    #[error(
        "not an arm64 Image: magic at offset 0x38 is {found:#010x}, expected {IMAGE_MAGIC:#010x} (\"ARM\\x64\")"
    )]
    BadMagic {
        /// What was there.
        found: u32,
    },
    /// The kernel is built big-endian.
    #[error("the kernel is big-endian (Image flags {flags:#x}); only little-endian kernels boot")]
    BigEndian {
        /// The header's flags.
        flags: u64,
    },
    /// `image_size` is zero: a kernel older than 3.17 whose memory footprint is unknown.
    #[error("Image header has image_size 0 (a pre-3.17 kernel): its memory footprint is unknown")]
    NoImageSize,
    /// The file is larger than the memory the header says the kernel occupies.
    #[error(
        "kernel file of {file_len} bytes is larger than its header's image_size {image_size:#x}"
    )]
    FileLargerThanImage {
        /// File length.
        file_len: u64,
        /// `image_size` from the header.
        image_size: u64,
    },
    /// A piece does not fit in RAM.
    #[error(
        "{what} at {gpa:#x} with size {size:#x} does not fit in RAM {ram_base:#x}+{ram_size:#x}"
    )]
    DoesNotFit {
        /// Kernel, initrd or device tree.
        what: &'static str,
        /// Where it would start.
        gpa: u64,
        /// Its size.
        size: u64,
        /// RAM base.
        ram_base: u64,
        /// RAM size.
        ram_size: u64,
    },
    /// The device tree is over the protocol's 2 MiB limit.
    #[error("device tree of {size} bytes exceeds the {FDT_MAX_SIZE}-byte limit")]
    FdtTooLarge {
        /// Its size.
        size: usize,
    },
    /// The initrd passed to [`BootLayout::copies`] is not the size planned.
    #[error("initrd of {actual} bytes differs from the {planned} bytes planned")]
    InitrdSizeChanged {
        /// Planned size.
        planned: u64,
        /// Size given.
        actual: u64,
    },
    /// Copying into guest memory failed.
    #[error("copying the boot images into guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Page size a kernel was built for (`flags` bits \[2:1\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPageSize {
    /// Not stated.
    Unspecified,
    /// 4 KiB.
    K4,
    /// 16 KiB.
    K16,
    /// 64 KiB.
    K64,
}

/// The parsed `Image` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the image from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes of memory the kernel uses from its start, BSS included.
    pub image_size: u64,
    /// Raw flags.
    pub flags: u64,
    /// Page size the kernel was built for.
    pub page_size: KernelPageSize,
    /// The 2 MiB-aligned base may be anywhere in RAM (`true`) or should be as close as
    /// possible to the base of DRAM (`false`).
    pub place_anywhere: bool,
}

impl ImageHeader {
    /// Parse and check the header at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<ImageHeader, ImageError> {
        let header = image
            .get(..IMAGE_HEADER_SIZE)
            .ok_or(ImageError::TooShort { len: image.len() })?;
        let u64_at = |off: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[off..off + 8]);
            u64::from_le_bytes(b)
        };
        let mut m = [0u8; 4];
        m.copy_from_slice(&header[MAGIC_OFFSET..MAGIC_OFFSET + 4]);
        let magic = u32::from_le_bytes(m);
        if magic != IMAGE_MAGIC {
            return Err(ImageError::BadMagic { found: magic });
        }
        let text_offset = u64_at(8);
        let image_size = u64_at(16);
        let flags = u64_at(24);
        if flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian { flags });
        }
        if image_size == 0 {
            return Err(ImageError::NoImageSize);
        }
        let file_len = image.len() as u64;
        if file_len > image_size {
            return Err(ImageError::FileLargerThanImage {
                file_len,
                image_size,
            });
        }
        let page_size = match (flags >> FLAG_PAGE_SIZE_SHIFT) & 3 {
            0 => KernelPageSize::Unspecified,
            1 => KernelPageSize::K4,
            2 => KernelPageSize::K16,
            _ => KernelPageSize::K64,
        };
        Ok(ImageHeader {
            text_offset,
            image_size,
            flags,
            page_size,
            place_anywhere: flags & FLAG_PHYS_ANYWHERE != 0,
        })
    }
}

/// Where the kernel, initrd and device tree go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// Guest-physical address of the kernel's first byte: the entry point.
    pub kernel: u64,
    /// The kernel's memory footprint (`image_size`).
    pub kernel_size: u64,
    /// The initrd's `[start, end)`, for `/chosen/linux,initrd-start` and `-end`.
    pub initrd: Option<(u64, u64)>,
    /// Guest-physical address of the device tree (its 2 MiB block is reserved).
    pub fdt: u64,
}

fn align_up_2m(v: u64) -> Option<u64> {
    v.checked_add(SZ_2M - 1).map(|v| v & !(SZ_2M - 1))
}

impl BootLayout {
    /// Place a kernel with `header`, an initrd of `initrd_len` bytes (if any) and a device
    /// tree in the RAM region `[ram_base, ram_base + ram_size)`.
    pub fn plan(
        header: &ImageHeader,
        initrd_len: Option<u64>,
        ram_base: u64,
        ram_size: u64,
    ) -> Result<BootLayout, ImageError> {
        let ram_end = ram_base.checked_add(ram_size);
        let place = |what: &'static str, gpa: Option<u64>, size: u64| {
            let end = gpa.and_then(|g| g.checked_add(size));
            match (gpa, end, ram_end) {
                (Some(g), Some(e), Some(r)) if g >= ram_base && e <= r => Ok((g, e)),
                _ => Err(ImageError::DoesNotFit {
                    what,
                    gpa: gpa.unwrap_or(u64::MAX),
                    size,
                    ram_base,
                    ram_size,
                }),
            }
        };
        let kernel_gpa = align_up_2m(ram_base).and_then(|b| b.checked_add(header.text_offset));
        let (kernel, kernel_end) = place("kernel", kernel_gpa, header.image_size)?;
        let mut next = kernel_end;
        let initrd = match initrd_len {
            Some(len) => {
                let (start, end) = place("initrd", align_up_2m(next), len)?;
                next = end;
                Some((start, end))
            }
            None => None,
        };
        let (fdt, _) = place("device tree", align_up_2m(next), SZ_2M)?;
        Ok(BootLayout {
            kernel,
            kernel_size: header.image_size,
            initrd,
            fdt,
        })
    }

    /// The boot vCPU's entry.
    pub fn entry(&self) -> BootEntry {
        BootEntry::Arm64 {
            pc: self.kernel,
            x0: self.fdt,
        }
    }

    /// The `(guest-physical address, bytes)` copies that put the kernel, initrd and device
    /// tree in place. The initrd must be the size planned, the tree at most 2 MiB.
    pub fn copies<'a>(
        &self,
        kernel: &'a [u8],
        initrd: Option<&'a [u8]>,
        fdt: &'a [u8],
    ) -> Result<Vec<(u64, &'a [u8])>, ImageError> {
        if fdt.len() > FDT_MAX_SIZE {
            return Err(ImageError::FdtTooLarge { size: fdt.len() });
        }
        if kernel.len() as u64 > self.kernel_size {
            return Err(ImageError::FileLargerThanImage {
                file_len: kernel.len() as u64,
                image_size: self.kernel_size,
            });
        }
        let mut v = Vec::with_capacity(3);
        v.push((self.kernel, kernel));
        match (self.initrd, initrd) {
            (Some((start, end)), Some(bytes)) if end - start == bytes.len() as u64 => {
                v.push((start, bytes));
            }
            (None, None) => {}
            (planned, given) => {
                return Err(ImageError::InitrdSizeChanged {
                    planned: planned.map_or(0, |(s, e)| e - s),
                    actual: given.map_or(0, |b| b.len() as u64),
                });
            }
        }
        v.push((self.fdt, fdt));
        Ok(v)
    }

    /// Copy the kernel, initrd and device tree into `mem` and return the boot entry.
    pub fn load(
        &self,
        mem: &impl GuestMemory,
        kernel: &[u8],
        initrd: Option<&[u8]>,
        fdt: &[u8],
    ) -> Result<BootEntry, ImageError> {
        for (gpa, bytes) in self.copies(kernel, initrd, fdt)? {
            mem.write(GuestAddress(gpa), bytes)?;
        }
        Ok(self.entry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    const RAM: u64 = 0x4000_0000;

    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut v = alloc::vec![0u8; len.max(IMAGE_HEADER_SIZE)];
        v[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +0x40
        v[8..16].copy_from_slice(&text_offset.to_le_bytes());
        v[16..24].copy_from_slice(&image_size.to_le_bytes());
        v[24..32].copy_from_slice(&flags.to_le_bytes());
        v[0x38..0x3c].copy_from_slice(b"ARM\x64");
        v
    }

    #[test]
    fn header_fields_are_parsed() {
        // Little endian, 4 KiB pages, place anywhere: 0b1010.
        let h = ImageHeader::parse(&image(0, 0x200_0000, 0xa, 4096)).unwrap();

        assert_eq!(h.text_offset, 0);
        assert_eq!(h.image_size, 0x200_0000);
        assert_eq!(h.page_size, KernelPageSize::K4);
        assert!(h.place_anywhere);
    }

    #[test]
    fn wrong_magic_is_not_an_image() {
        let mut img = image(0, 0x10000, 0, 4096);
        img[0x38..0x3c].copy_from_slice(b"\x7fELF");

        assert_eq!(
            ImageHeader::parse(&img),
            Err(ImageError::BadMagic { found: 0x464c_457f })
        );
    }

    #[test]
    fn short_file_is_refused() {
        assert_eq!(
            ImageHeader::parse(&[0u8; 10]),
            Err(ImageError::TooShort { len: 10 })
        );
    }

    #[test]
    fn big_endian_kernel_is_refused() {
        assert_eq!(
            ImageHeader::parse(&image(0, 0x10000, 0x3, 4096)),
            Err(ImageError::BigEndian { flags: 0x3 })
        );
    }

    #[test]
    fn zero_image_size_is_refused() {
        assert_eq!(
            ImageHeader::parse(&image(0x80000, 0, 0, 4096)),
            Err(ImageError::NoImageSize)
        );
    }

    #[test]
    fn file_larger_than_image_size_is_refused() {
        assert_eq!(
            ImageHeader::parse(&image(0, 0x1000, 0, 0x2000)),
            Err(ImageError::FileLargerThanImage {
                file_len: 0x2000,
                image_size: 0x1000
            })
        );
    }

    #[test]
    fn kernel_goes_to_ram_base_plus_text_offset_and_fdt_to_the_next_2m_block() {
        let h = ImageHeader::parse(&image(0x8_0000, 0x150_0000, 0xa, 4096)).unwrap();

        let l = BootLayout::plan(&h, None, RAM, 256 << 20).unwrap();

        assert_eq!(l.kernel, 0x4008_0000);
        // Kernel ends at 0x4158_0000; next 2 MiB boundary is 0x4160_0000.
        assert_eq!(l.fdt, 0x4160_0000);
        assert_eq!(
            l.entry(),
            BootEntry::Arm64 {
                pc: 0x4008_0000,
                x0: 0x4160_0000
            }
        );
    }

    #[test]
    fn unaligned_ram_base_is_rounded_up_to_2m() {
        let h = ImageHeader::parse(&image(0, 0x10_0000, 0, 4096)).unwrap();

        let l = BootLayout::plan(&h, None, 0x4010_0000, 64 << 20).unwrap();

        assert_eq!(l.kernel, 0x4020_0000);
    }

    #[test]
    fn initrd_sits_between_kernel_and_fdt() {
        let h = ImageHeader::parse(&image(0, 0x100_0000, 0, 4096)).unwrap();

        let l = BootLayout::plan(&h, Some(0x30_0001), RAM, 256 << 20).unwrap();

        assert_eq!(l.initrd, Some((0x4100_0000, 0x4130_0001)));
        assert_eq!(l.fdt, 0x4140_0000);
    }

    #[test]
    fn image_size_larger_than_ram_is_refused() {
        let h = ImageHeader::parse(&image(0, 0x800_0000, 0, 4096)).unwrap();

        assert_eq!(
            BootLayout::plan(&h, None, RAM, 64 << 20),
            Err(ImageError::DoesNotFit {
                what: "kernel",
                gpa: RAM,
                size: 0x800_0000,
                ram_base: RAM,
                ram_size: 64 << 20
            })
        );
    }

    #[test]
    fn no_room_for_the_fdt_is_refused() {
        let h = ImageHeader::parse(&image(0, 0x3f0_0000, 0, 4096)).unwrap();

        let r = BootLayout::plan(&h, None, RAM, 64 << 20);

        assert!(matches!(
            r,
            Err(ImageError::DoesNotFit {
                what: "device tree",
                ..
            })
        ));
    }

    #[test]
    fn huge_text_offset_does_not_overflow() {
        let h = ImageHeader::parse(&image(u64::MAX - 10, 0x1000, 0, 64)).unwrap();

        assert!(matches!(
            BootLayout::plan(&h, None, RAM, 64 << 20),
            Err(ImageError::DoesNotFit { what: "kernel", .. })
        ));
    }

    #[test]
    fn copies_list_kernel_initrd_and_fdt_at_their_addresses() {
        let img = image(0, 0x10_0000, 0, 4096);
        let h = ImageHeader::parse(&img).unwrap();
        let l = BootLayout::plan(&h, Some(3), RAM, 64 << 20).unwrap();
        let fdt = [0xd0, 0x0d, 0xfe, 0xed];

        let c = l.copies(&img, Some(&[1, 2, 3]), &fdt).unwrap();

        assert_eq!(c.len(), 3);
        assert_eq!(c[0].0, RAM);
        assert_eq!(c[1], (0x4020_0000, &[1u8, 2, 3][..]));
        assert_eq!(c[2], (0x4040_0000, &fdt[..]));
    }

    #[test]
    fn initrd_of_a_different_size_than_planned_is_refused() {
        let img = image(0, 0x10_0000, 0, 4096);
        let h = ImageHeader::parse(&img).unwrap();
        let l = BootLayout::plan(&h, Some(3), RAM, 64 << 20).unwrap();

        assert_eq!(
            l.copies(&img, Some(&[1, 2]), &[]),
            Err(ImageError::InitrdSizeChanged {
                planned: 3,
                actual: 2
            })
        );
    }

    #[test]
    fn oversized_fdt_is_refused() {
        let img = image(0, 0x10_0000, 0, 4096);
        let h = ImageHeader::parse(&img).unwrap();
        let l = BootLayout::plan(&h, None, RAM, 64 << 20).unwrap();
        let fdt = alloc::vec![0u8; FDT_MAX_SIZE + 1];

        assert_eq!(
            l.copies(&img, None, &fdt),
            Err(ImageError::FdtTooLarge {
                size: FDT_MAX_SIZE + 1
            })
        );
    }

    #[test]
    fn load_writes_guest_memory() {
        let ram = GuestRam::anonymous(&[(RAM, 64 << 20)]).unwrap();
        let img = image(0x8_0000, 0x10_0000, 0, 4096);
        let h = ImageHeader::parse(&img).unwrap();
        let l = BootLayout::plan(&h, None, RAM, 64 << 20).unwrap();

        let entry = l.load(&ram, &img, None, &[0xd0, 0x0d]).unwrap();

        assert_eq!(
            ram.read_u32(GuestAddress(0x4008_0038)).unwrap(),
            IMAGE_MAGIC
        );
        assert_eq!(ram.read_u16(GuestAddress(l.fdt)).unwrap(), 0x0dd0);
        assert_eq!(
            entry,
            BootEntry::Arm64 {
                pc: 0x4008_0000,
                x0: l.fdt
            }
        );
    }
}
