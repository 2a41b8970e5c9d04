//! Linux `bzImage` kernels: the setup header, and `boot_params` (the "zero page") for the
//! 64-bit boot protocol (Documentation/arch/x86/boot.rst).

use crate::memory::{GuestAddress, GuestMemory};

use super::BootError;
use super::e820::E820Entry;
use super::layout::KERNEL_GPA;

/// Offset of the setup header inside the image and inside `boot_params`.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Size of `boot_params`.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// Oldest boot protocol accepted (2.06: `cmdline_size`, 64-bit-clean fields).
pub const MIN_PROTOCOL: u16 = 0x0206;
/// `type_of_loader` value for a loader without an assigned id.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: the protected-mode kernel is loaded at 1 MiB.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `xloadflags`: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// The 64-bit entry point's offset from the start of the protected-mode kernel.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// Room for e820 entries in `boot_params`.
pub const E820_MAX_ENTRIES: usize = 128;

// Offsets inside boot_params (and the image, for the setup header).
const EXT_RAMDISK_IMAGE: usize = 0x0c0;
const EXT_RAMDISK_SIZE: usize = 0x0c4;
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const E820_ENTRIES: usize = 0x1e8;
const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const JUMP_END: usize = 0x201;
const HEADER_MAGIC: usize = crate::arch::kernel::BZIMAGE_MAGIC_OFFSET;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const E820_TABLE: usize = 0x2d0;

/// Whether `image` carries the bzImage "HdrS" signature (the shared sniffer's test).
pub use crate::arch::kernel::is_bzimage;

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(off..off + v.len()) {
        d.copy_from_slice(v);
    }
}

/// The fields of the setup header Keel uses, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version (major << 8 | minor).
    pub version: u16,
    /// 512-byte sectors of real-mode setup code after the boot sector.
    pub setup_sects: u8,
    /// Highest address the initrd may occupy (inclusive).
    pub initrd_addr_max: u32,
    /// Longest command line, without the NUL.
    pub cmdline_size: u32,
    /// Extended load flags (protocol 2.12+), 0 before.
    pub xloadflags: u16,
    /// Length of the setup header (from 0x1f1), as the kernel declares it.
    pub header_len: usize,
}

impl SetupHeader {
    /// Read and validate the setup header of `image`.
    pub fn parse(image: &[u8]) -> Result<SetupHeader, BootError> {
        let need = (CMDLINE_SIZE + 4) as u64;
        if (image.len() as u64) < need {
            return Err(BootError::Truncated {
                what: "bzImage setup header",
                len: image.len() as u64,
                need,
            });
        }
        if !is_bzimage(image) {
            return Err(BootError::BadBzImage {
                field: "header magic",
                value: le32(image, HEADER_MAGIC).into(),
                why: "expected \"HdrS\"",
            });
        }
        let boot_flag = le16(image, BOOT_FLAG);
        if boot_flag != 0xaa55 {
            return Err(BootError::BadBzImage {
                field: "boot_flag",
                value: boot_flag.into(),
                why: "expected 0xaa55",
            });
        }
        let version = le16(image, VERSION);
        if version < MIN_PROTOCOL {
            return Err(BootError::BadBzImage {
                field: "boot protocol version",
                value: version.into(),
                why: "Keel needs 2.06 or later",
            });
        }
        let xloadflags = if version >= 0x020c {
            le16(image, XLOADFLAGS)
        } else {
            0
        };
        if version >= 0x020c && xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::BadBzImage {
                field: "xloadflags",
                value: xloadflags.into(),
                why: "the kernel has no 64-bit entry point (XLF_KERNEL_64)",
            });
        }
        let setup_sects = match image[SETUP_SECTS] {
            0 => 4,
            n => n,
        };
        // The header ends at 0x202 + the byte at 0x201 (the jump's displacement).
        let header_end = 0x202 + usize::from(image[JUMP_END]);
        let header_len = header_end
            .min(E820_TABLE)
            .saturating_sub(SETUP_HEADER_OFFSET);
        Ok(SetupHeader {
            version,
            setup_sects,
            initrd_addr_max: le32(image, INITRD_ADDR_MAX),
            cmdline_size: le32(image, CMDLINE_SIZE),
            xloadflags,
            header_len,
        })
    }

    /// Offset of the protected-mode kernel in the image.
    pub fn kernel_offset(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }
}

/// Where the bzImage was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedBzImage {
    /// The validated header.
    pub header: SetupHeader,
    /// The 64-bit entry point.
    pub entry: u64,
    /// One past the last byte of the protected-mode kernel.
    pub end: u64,
}

/// Load the protected-mode part of `image` at 1 MiB.
pub fn load_bzimage<M: GuestMemory + ?Sized>(
    mem: &M,
    image: &[u8],
) -> Result<LoadedBzImage, BootError> {
    let header = SetupHeader::parse(image)?;
    let off = header.kernel_offset();
    let kernel = image.get(off..).ok_or(BootError::Truncated {
        what: "bzImage protected-mode kernel",
        len: image.len() as u64,
        need: off as u64,
    })?;
    let size = kernel.len() as u64;
    if !mem.contains(GuestAddress(KERNEL_GPA), size) {
        return Err(BootError::KernelTooBig {
            gpa: KERNEL_GPA,
            size,
        });
    }
    mem.write(GuestAddress(KERNEL_GPA), kernel)
        .map_err(BootError::mem("bzImage kernel"))?;
    Ok(LoadedBzImage {
        header,
        entry: KERNEL_GPA + ENTRY_64_OFFSET,
        end: KERNEL_GPA + size,
    })
}

/// What goes into `boot_params` besides the kernel's own setup header.
#[derive(Clone, Copy, Debug)]
pub struct BootParamsInput<'a> {
    /// The kernel's setup header bytes are copied from this image (if any; an ELF vmlinux
    /// has none and gets a minimal header).
    pub image: Option<&'a [u8]>,
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline_gpa: u64,
    /// `(gpa, size)` of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
}

/// Build the 4 KiB `boot_params` page.
pub fn boot_params(input: &BootParamsInput<'_>) -> Result<[u8; BOOT_PARAMS_SIZE], BootError> {
    let mut bp = [0u8; BOOT_PARAMS_SIZE];
    match input.image {
        Some(image) => {
            let header = SetupHeader::parse(image)?;
            let range = SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + header.header_len;
            put(&mut bp, SETUP_HEADER_OFFSET, &image[range]);
        }
        None => {
            put(&mut bp, BOOT_FLAG, &0xaa55u16.to_le_bytes());
            put(&mut bp, HEADER_MAGIC, b"HdrS");
            put(&mut bp, VERSION, &MIN_PROTOCOL.to_le_bytes());
        }
    }
    if input.e820.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyMemoryRegions {
            entries: input.e820.len(),
            max: E820_MAX_ENTRIES,
        });
    }
    bp[TYPE_OF_LOADER] = LOADER_UNDEFINED;
    bp[LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
    // The heap ends below the 0x10000 real-mode segment, as the boot protocol suggests.
    put(&mut bp, HEAP_END_PTR, &(0xfe00u16).to_le_bytes());
    let cmdline = input.cmdline_gpa;
    put(&mut bp, CMD_LINE_PTR, &(cmdline as u32).to_le_bytes());
    put(
        &mut bp,
        EXT_CMD_LINE_PTR,
        &((cmdline >> 32) as u32).to_le_bytes(),
    );
    if let Some((gpa, size)) = input.initrd {
        put(&mut bp, RAMDISK_IMAGE, &(gpa as u32).to_le_bytes());
        put(&mut bp, RAMDISK_SIZE, &(size as u32).to_le_bytes());
        put(
            &mut bp,
            EXT_RAMDISK_IMAGE,
            &((gpa >> 32) as u32).to_le_bytes(),
        );
        put(
            &mut bp,
            EXT_RAMDISK_SIZE,
            &((size >> 32) as u32).to_le_bytes(),
        );
    }
    bp[E820_ENTRIES] = input.e820.len() as u8;
    for (i, e) in input.e820.iter().enumerate() {
        let at = E820_TABLE + i * 20;
        put(&mut bp, at, &e.addr.to_le_bytes());
        put(&mut bp, at + 8, &e.size.to_le_bytes());
        put(&mut bp, at + 16, &e.kind.to_le_bytes());
    }
    Ok(bp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::x86_64::e820::memory_map;
    use crate::memory::GuestRam;
    use alloc::vec::Vec;

    /// A synthetic bzImage: boot sector + `setup_sects` sectors + `payload`.
    pub(crate) fn synthetic_bzimage(version: u16, setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let effective = if setup_sects == 0 { 4 } else { setup_sects };
        let setup_len = (usize::from(effective) + 1) * 512;
        let mut img = alloc::vec![0u8; setup_len];
        img[SETUP_SECTS] = setup_sects;
        img[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x200] = 0xeb;
        img[JUMP_END] = 0x66; // header ends at 0x268
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
        img[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        img[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn header_fields_are_read_from_a_synthetic_image() {
        let img = synthetic_bzimage(0x020f, 2, &[0xf4; 16]);
        let h = SetupHeader::parse(&img).unwrap();
        assert_eq!(h.version, 0x020f);
        assert_eq!(h.setup_sects, 2);
        assert_eq!(h.kernel_offset(), 3 * 512);
        assert_eq!(h.initrd_addr_max, 0x7fff_ffff);
        assert_eq!(h.cmdline_size, 2047);
        assert_eq!(h.header_len, 0x268 - 0x1f1);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let img = synthetic_bzimage(0x020f, 0, &[0; 16]);
        assert_eq!(SetupHeader::parse(&img).unwrap().setup_sects, 4);
    }

    #[test]
    fn old_protocol_is_rejected_naming_the_version() {
        let img = synthetic_bzimage(0x0205, 1, &[]);
        let err = SetupHeader::parse(&img).unwrap_err();
        assert!(
            matches!(err, BootError::BadBzImage { value: 0x205, .. }),
            "{err}"
        );
    }

    #[test]
    fn kernel_without_64_bit_entry_is_rejected() {
        let mut img = synthetic_bzimage(0x020f, 1, &[]);
        img[XLOADFLAGS] = 0;
        let err = SetupHeader::parse(&img).unwrap_err();
        assert!(matches!(
            err,
            BootError::BadBzImage {
                field: "xloadflags",
                ..
            }
        ));
    }

    #[test]
    fn protected_mode_kernel_is_loaded_at_one_mib() {
        let mem = GuestRam::anonymous(&[(0, 0x20_0000)]).unwrap();
        let img = synthetic_bzimage(0x020f, 1, &[1, 2, 3, 4]);
        let loaded = load_bzimage(&mem, &img).unwrap();
        assert_eq!(mem.read_u32(GuestAddress(KERNEL_GPA)).unwrap(), 0x0403_0201);
        assert_eq!(loaded.entry, KERNEL_GPA + 0x200);
        assert_eq!(loaded.end, KERNEL_GPA + 4);
    }

    #[test]
    fn boot_params_carry_loader_cmdline_initrd_and_e820() {
        let img = synthetic_bzimage(0x020f, 1, &[0; 16]);
        let e820 = memory_map(&[(0, 0x1000_0000)]);
        let bp = boot_params(&BootParamsInput {
            image: Some(&img),
            cmdline_gpa: 0x2_0000,
            initrd: Some((0x0f00_0000, 0x1234)),
            e820: &e820,
        })
        .unwrap();
        assert_eq!(bp[TYPE_OF_LOADER], 0xff);
        assert_eq!(bp[LOADFLAGS] & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(le32(&bp, CMD_LINE_PTR), 0x2_0000);
        assert_eq!(le32(&bp, RAMDISK_IMAGE), 0x0f00_0000);
        assert_eq!(le32(&bp, RAMDISK_SIZE), 0x1234);
        assert_eq!(&bp[HEADER_MAGIC..HEADER_MAGIC + 4], b"HdrS");
        assert_eq!(usize::from(bp[E820_ENTRIES]), e820.len());
        let last = E820_TABLE + (e820.len() - 1) * 20;
        assert_eq!(le32(&bp, last), 0x10_0000);
    }
}
