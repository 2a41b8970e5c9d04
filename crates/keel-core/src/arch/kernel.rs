//! The one kernel-format sniffer: recognise a kernel image from its first bytes. The x86_64
//! loader dispatches on it, and `keel-spec` uses it to refuse a wrong file when a system
//! description is checked, long before a guest that never prints anything.

/// The ELF magic at offset 0.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// `e_machine` of an x86_64 ELF.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of an aarch64 ELF.
pub const EM_AARCH64: u16 = 183;
/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// Offset of the bzImage setup header magic.
pub const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// The bzImage setup header magic.
pub const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// Offset of the arm64 `Image` magic.
pub const ARM64_IMAGE_MAGIC_OFFSET: usize = 0x38;
/// The arm64 `Image` magic.
pub const ARM64_IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";

/// What a kernel file looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A 64-bit little-endian ELF.
    Elf64 {
        /// `e_machine`.
        machine: u16,
        /// Whether a `PT_LOAD` program header was found (`None`: the program headers lie
        /// beyond the bytes given; see [`elf_headers_end`]).
        loadable: Option<bool>,
    },
    /// Any other ELF (32-bit or big-endian).
    OtherElf,
    /// An x86 bzImage (setup header magic `HdrS` at 0x202).
    BzImage,
    /// An arm64 `Image` (magic `ARM\x64` at 0x38).
    Arm64Image,
    /// None of the above.
    Unknown,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn is_elf64_le(image: &[u8]) -> bool {
    image.starts_with(ELF_MAGIC) && image.get(4) == Some(&2) && image.get(5) == Some(&1)
}

/// Whether `image` has the bzImage setup header magic.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(BZIMAGE_MAGIC)
}

/// Whether `image` has the arm64 `Image` magic.
pub fn is_arm64_image(image: &[u8]) -> bool {
    image.get(ARM64_IMAGE_MAGIC_OFFSET..ARM64_IMAGE_MAGIC_OFFSET + 4) == Some(ARM64_IMAGE_MAGIC)
}

/// For a 64-bit ELF, how many leading bytes of the file [`probe_kernel`] needs to see all
/// program headers; `None` if `head` is not a 64-bit ELF or the header is malformed.
pub fn elf_headers_end(head: &[u8]) -> Option<u64> {
    if !is_elf64_le(head) {
        return None;
    }
    let phoff = u64_at(head, 0x20)?;
    let phentsize = u64::from(u16_at(head, 0x36)?);
    let phnum = u64::from(u16_at(head, 0x38)?);
    phoff.checked_add(phentsize.checked_mul(phnum)?)
}

/// Classifies a kernel image from a prefix of the file (the first 64 KiB is plenty for every
/// format except an ELF with program headers placed late; see [`elf_headers_end`]).
/// The ELF magic wins over the others, then the bzImage magic, then the arm64 one.
pub fn probe_kernel(image: &[u8]) -> KernelFormat {
    if image.starts_with(ELF_MAGIC) {
        if !is_elf64_le(image) {
            return KernelFormat::OtherElf;
        }
        let Some(machine) = u16_at(image, 0x12) else {
            return KernelFormat::OtherElf;
        };
        return KernelFormat::Elf64 {
            machine,
            loadable: elf_has_pt_load(image),
        };
    }
    if is_bzimage(image) {
        return KernelFormat::BzImage;
    }
    if is_arm64_image(image) {
        return KernelFormat::Arm64Image;
    }
    KernelFormat::Unknown
}

fn elf_has_pt_load(image: &[u8]) -> Option<bool> {
    let phoff = usize::try_from(u64_at(image, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(image, 0x36)?);
    let phnum = usize::from(u16_at(image, 0x38)?);
    if phnum == 0 {
        return Some(false);
    }
    if phentsize < 4 {
        // Too small to hold p_type: no usable program header.
        return Some(false);
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(image, at)? == PT_LOAD {
            return Some(true);
        }
    }
    Some(false)
}

/// The name of an ELF `e_machine`, for messages.
pub fn elf_machine_name(machine: u16) -> &'static str {
    match machine {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        3 => "i386",
        40 => "arm",
        243 => "riscv",
        _ => "another machine",
    }
}

/// Test images of each format, shared with the loaders' tests.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A minimal 64-bit ELF header with one program header of type `p_type`.
    pub(crate) fn elf64(machine: u16, p_type: u32) -> Vec<u8> {
        let mut image = vec![0u8; 0x40 + 0x38];
        image[..4].copy_from_slice(ELF_MAGIC);
        image[4] = 2;
        image[5] = 1;
        image[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        image[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        image[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        image[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
        image
    }

    /// Just the bzImage magic.
    pub(crate) fn bzimage() -> Vec<u8> {
        let mut image = vec![0u8; 0x400];
        image[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4].copy_from_slice(BZIMAGE_MAGIC);
        image
    }

    /// Just the arm64 `Image` magic.
    pub(crate) fn arm64_image() -> Vec<u8> {
        let mut image = vec![0u8; 0x40];
        image[ARM64_IMAGE_MAGIC_OFFSET..ARM64_IMAGE_MAGIC_OFFSET + 4]
            .copy_from_slice(ARM64_IMAGE_MAGIC);
        image
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    #[test]
    fn x86_elf_with_pt_load_is_a_loadable_elf64() {
        assert_eq!(
            probe_kernel(&elf64(EM_X86_64, PT_LOAD)),
            KernelFormat::Elf64 {
                machine: EM_X86_64,
                loadable: Some(true)
            }
        );
    }

    #[test]
    fn elf_without_pt_load_is_not_loadable() {
        assert_eq!(
            probe_kernel(&elf64(EM_X86_64, 4)),
            KernelFormat::Elf64 {
                machine: EM_X86_64,
                loadable: Some(false)
            }
        );
    }

    #[test]
    fn thirty_two_bit_elf_is_another_elf() {
        let mut image = elf64(3, PT_LOAD);
        image[4] = 1;
        assert_eq!(probe_kernel(&image), KernelFormat::OtherElf);
    }

    #[test]
    fn bzimage_is_recognised_by_hdrs_magic() {
        assert_eq!(probe_kernel(&bzimage()), KernelFormat::BzImage);
    }

    #[test]
    fn arm64_image_is_recognised_by_its_magic() {
        assert_eq!(probe_kernel(&arm64_image()), KernelFormat::Arm64Image);
    }

    #[test]
    fn zeros_are_no_known_format() {
        assert_eq!(probe_kernel(&[0u8; 0x400]), KernelFormat::Unknown);
    }

    #[test]
    fn truncated_elf_does_not_panic_and_is_not_known_loadable() {
        let image = elf64(EM_X86_64, PT_LOAD);
        for len in 0..image.len() {
            let _ = probe_kernel(&image[..len]);
        }
        assert_eq!(
            probe_kernel(&image[..0x41]),
            KernelFormat::Elf64 {
                machine: EM_X86_64,
                loadable: None
            }
        );
    }

    #[test]
    fn elf_headers_end_covers_the_program_headers() {
        assert_eq!(
            elf_headers_end(&elf64(EM_X86_64, PT_LOAD)),
            Some(0x40 + 0x38)
        );
    }
}
