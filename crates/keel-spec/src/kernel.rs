//! Recognising kernel images from their first bytes, so a wrong file is caught at load time
//! with a clear message instead of as a guest that never prints anything.

use alloc::format;
use alloc::string::String;

use crate::model::Arch;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const PT_LOAD: u32 = 1;
/// Offset of the bzImage setup header magic `HdrS`.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// Offset of the arm64 `Image` magic `ARM\x64`.
const ARM64_MAGIC_OFFSET: usize = 0x38;

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
    if image.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(b"HdrS") {
        return KernelFormat::BzImage;
    }
    if image.get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4) == Some(b"ARM\x64") {
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

impl KernelFormat {
    /// Whether a VM of `arch` can boot this image; `Err` says what the file is instead.
    pub fn check(self, arch: Arch) -> Result<(), String> {
        let machine_name = |machine: u16| match machine {
            EM_X86_64 => "x86_64",
            EM_AARCH64 => "aarch64",
            3 => "i386",
            40 => "arm",
            243 => "riscv",
            _ => "another machine",
        };
        match (arch, self) {
            (Arch::X86_64, KernelFormat::BzImage) | (Arch::Aarch64, KernelFormat::Arm64Image) => {
                Ok(())
            }
            (Arch::X86_64, KernelFormat::Elf64 { machine, loadable }) => {
                if machine != EM_X86_64 {
                    Err(format!(
                        "ELF for {} (e_machine {machine})",
                        machine_name(machine)
                    ))
                } else if loadable == Some(true) {
                    Ok(())
                } else {
                    Err(String::from("ELF without a PT_LOAD segment"))
                }
            }
            (Arch::X86_64, KernelFormat::OtherElf) => {
                Err(String::from("not a 64-bit little-endian ELF"))
            }
            (Arch::X86_64, KernelFormat::Arm64Image) => Err(String::from("it is an arm64 Image")),
            (Arch::X86_64, KernelFormat::Unknown) => Err(String::from("no ELF or bzImage header")),
            (Arch::Aarch64, KernelFormat::BzImage) => Err(String::from("it is an x86 bzImage")),
            (Arch::Aarch64, KernelFormat::Elf64 { machine, .. }) => Err(format!(
                "ELF for {}; aarch64 VMs boot an arm64 Image",
                machine_name(machine)
            )),
            (Arch::Aarch64, KernelFormat::OtherElf) => {
                Err(String::from("an ELF; aarch64 VMs boot an arm64 Image"))
            }
            (Arch::Aarch64, KernelFormat::Unknown) => Err(String::from(
                "no arm64 Image header (magic ARM\\x64 at 0x38)",
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A minimal 64-bit ELF with one program header of type `p_type`.
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

    pub(crate) fn bzimage() -> Vec<u8> {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image
    }

    pub(crate) fn arm64_image() -> Vec<u8> {
        let mut image = vec![0u8; 0x40];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        image
    }

    #[test]
    fn x86_elf_with_pt_load_is_an_x86_kernel() {
        assert_eq!(
            probe_kernel(&elf64(EM_X86_64, PT_LOAD)).check(Arch::X86_64),
            Ok(())
        );
    }

    #[test]
    fn elf_without_pt_load_is_rejected() {
        let err = probe_kernel(&elf64(EM_X86_64, 4)).check(Arch::X86_64);
        assert_eq!(err, Err(String::from("ELF without a PT_LOAD segment")));
    }

    #[test]
    fn bzimage_is_recognised_by_hdrs_magic() {
        assert_eq!(probe_kernel(&bzimage()), KernelFormat::BzImage);
    }

    #[test]
    fn arm64_image_is_rejected_for_x86() {
        assert!(probe_kernel(&arm64_image()).check(Arch::X86_64).is_err());
        assert_eq!(probe_kernel(&arm64_image()).check(Arch::Aarch64), Ok(()));
    }

    #[test]
    fn aarch64_elf_is_rejected_for_x86() {
        let err = probe_kernel(&elf64(EM_AARCH64, PT_LOAD)).check(Arch::X86_64);
        assert_eq!(err, Err(String::from("ELF for aarch64 (e_machine 183)")));
    }

    #[test]
    fn truncated_elf_does_not_panic_and_is_not_loadable() {
        let image = elf64(EM_X86_64, PT_LOAD);
        for len in 0..image.len() {
            let _ = probe_kernel(&image[..len]).check(Arch::X86_64);
        }
        assert!(probe_kernel(&image[..0x41]).check(Arch::X86_64).is_err());
    }

    #[test]
    fn elf_headers_end_covers_the_program_headers() {
        assert_eq!(
            elf_headers_end(&elf64(EM_X86_64, PT_LOAD)),
            Some(0x40 + 0x38)
        );
    }
}
