//! Recognising kernel images from their first bytes, so a wrong file is caught at load time
//! with a clear message instead of as a guest that never prints anything.
//!
//! The sniffer itself is keel-core's ([`keel_core::arch::kernel`]), the one the loaders
//! dispatch on; this module says, for a VM's architecture, whether its verdict is bootable.

use alloc::format;
use alloc::string::String;

use keel_core::arch::kernel::{EM_X86_64, elf_machine_name};
pub use keel_core::arch::kernel::{KernelFormat, elf_headers_end, probe_kernel};

use crate::model::Arch;

/// Whether a VM of `arch` can boot a kernel of `format`; `Err` says what the file is instead.
pub fn check_kernel(format: KernelFormat, arch: Arch) -> Result<(), String> {
    match (arch, format) {
        (Arch::X86_64, KernelFormat::BzImage) | (Arch::Aarch64, KernelFormat::Arm64Image) => Ok(()),
        (Arch::X86_64, KernelFormat::Elf64 { machine, loadable }) => {
            if machine != EM_X86_64 {
                Err(format!(
                    "ELF for {} (e_machine {machine})",
                    elf_machine_name(machine)
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
            elf_machine_name(machine)
        )),
        (Arch::Aarch64, KernelFormat::OtherElf) => {
            Err(String::from("an ELF; aarch64 VMs boot an arm64 Image"))
        }
        (Arch::Aarch64, KernelFormat::Unknown) => Err(String::from(
            "no arm64 Image header (magic ARM\\x64 at 0x38)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use keel_core::arch::kernel::{
        ARM64_IMAGE_MAGIC, ARM64_IMAGE_MAGIC_OFFSET, BZIMAGE_MAGIC, BZIMAGE_MAGIC_OFFSET,
        EM_AARCH64, PT_LOAD,
    };

    /// A minimal 64-bit ELF with one program header of type `p_type`.
    fn elf64(machine: u16, p_type: u32) -> Vec<u8> {
        let mut image = vec![0u8; 0x40 + 0x38];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2;
        image[5] = 1;
        image[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        image[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        image[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        image[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
        image
    }

    fn bzimage() -> Vec<u8> {
        let mut image = vec![0u8; 0x400];
        image[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4].copy_from_slice(BZIMAGE_MAGIC);
        image
    }

    fn arm64_image() -> Vec<u8> {
        let mut image = vec![0u8; 0x40];
        image[ARM64_IMAGE_MAGIC_OFFSET..ARM64_IMAGE_MAGIC_OFFSET + 4]
            .copy_from_slice(ARM64_IMAGE_MAGIC);
        image
    }

    fn check(image: &[u8], arch: Arch) -> Result<(), String> {
        check_kernel(probe_kernel(image), arch)
    }

    #[test]
    fn x86_elf_with_pt_load_is_an_x86_kernel() {
        assert_eq!(check(&elf64(EM_X86_64, PT_LOAD), Arch::X86_64), Ok(()));
    }

    #[test]
    fn elf_without_pt_load_is_rejected() {
        let err = check(&elf64(EM_X86_64, 4), Arch::X86_64);
        assert_eq!(err, Err(String::from("ELF without a PT_LOAD segment")));
    }

    #[test]
    fn bzimage_is_an_x86_kernel_and_not_an_aarch64_one() {
        assert_eq!(check(&bzimage(), Arch::X86_64), Ok(()));
        assert_eq!(
            check(&bzimage(), Arch::Aarch64),
            Err(String::from("it is an x86 bzImage"))
        );
    }

    #[test]
    fn arm64_image_is_rejected_for_x86() {
        assert_eq!(
            check(&arm64_image(), Arch::X86_64),
            Err(String::from("it is an arm64 Image"))
        );
        assert_eq!(check(&arm64_image(), Arch::Aarch64), Ok(()));
    }

    #[test]
    fn aarch64_elf_is_rejected_for_x86() {
        let err = check(&elf64(EM_AARCH64, PT_LOAD), Arch::X86_64);
        assert_eq!(err, Err(String::from("ELF for aarch64 (e_machine 183)")));
    }

    #[test]
    fn x86_elf_is_rejected_for_aarch64_naming_its_machine() {
        let err = check(&elf64(EM_X86_64, PT_LOAD), Arch::Aarch64);
        assert_eq!(
            err,
            Err(String::from(
                "ELF for x86_64; aarch64 VMs boot an arm64 Image"
            ))
        );
    }

    #[test]
    fn unknown_file_is_rejected_naming_the_header_each_arch_wants() {
        let zeros = [0u8; 0x400];
        assert_eq!(
            check(&zeros, Arch::X86_64),
            Err(String::from("no ELF or bzImage header"))
        );
        assert_eq!(
            check(&zeros, Arch::Aarch64),
            Err(String::from(
                "no arm64 Image header (magic ARM\\x64 at 0x38)"
            ))
        );
    }

    #[test]
    fn truncated_elf_does_not_panic_and_is_not_loadable() {
        let image = elf64(EM_X86_64, PT_LOAD);
        for len in 0..image.len() {
            let _ = check(&image[..len], Arch::X86_64);
        }
        assert!(check(&image[..0x41], Arch::X86_64).is_err());
    }
}
