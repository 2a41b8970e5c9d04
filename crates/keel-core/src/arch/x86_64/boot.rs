//! The whole x86_64 boot sequence: sniff the kernel, load it and the initrd, write the
//! command line, the memory map and the structures of the boot protocol, and say where the
//! boot vCPU starts.

use crate::arch::kernel::{KernelFormat, probe_kernel};
use crate::hv::BootEntry;
use crate::memory::{GuestAddress, GuestMemory, GuestRam};

use super::BootError;
use super::bzimage::{self, BootParamsInput};
use super::cmdline::Cmdline;
use super::e820::memory_map;
use super::elf;
use super::gdt::{write_gdt, write_identity_map};
use super::layout::{
    BOOT_STACK_GPA, CMDLINE_GPA, CMDLINE_MAX, GDT_GPA, KERNEL_GPA, MMIO_HOLE_START, ZERO_PAGE_GPA,
};
use super::pvh::{self, PvhInput};

/// The x86_64 loader an image goes to.
#[derive(Clone, Copy)]
enum Loader {
    Elf,
    BzImage,
}

/// Which x86_64 loader takes `image`, from the shared sniffer's verdict
/// ([`crate::arch::kernel::probe_kernel`]): any ELF goes to the ELF loader (which says what
/// is wrong with a 32-bit or foreign one), a bzImage to the bzImage loader; anything else
/// is [`BootError::NotAKernel`].
fn sniff_kernel(image: &[u8]) -> Result<(KernelFormat, Loader), BootError> {
    let format = probe_kernel(image);
    match format {
        KernelFormat::Elf64 { .. } | KernelFormat::OtherElf => Ok((format, Loader::Elf)),
        KernelFormat::BzImage => Ok((format, Loader::BzImage)),
        KernelFormat::Arm64Image | KernelFormat::Unknown => {
            let mut head = [0u8; 4];
            for (d, s) in head.iter_mut().zip(image) {
                *d = *s;
            }
            Err(BootError::NotAKernel { head })
        }
    }
}

/// What [`load_kernel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The image format, as [`probe_kernel`] saw it (an ELF or a bzImage).
    pub format: KernelFormat,
    /// Where the boot vCPU starts.
    pub entry: BootEntry,
    /// One past the last byte of the kernel.
    pub kernel_end: u64,
    /// `(gpa, size)` of the initrd.
    pub initrd: Option<(u64, u64)>,
}

/// Load `kernel` (and `initrd`) into `ram` with `cmdline`, and write the boot structures of
/// the protocol the kernel speaks. The MP table is written separately
/// ([`super::mptable::write_mptable`]) because it depends on the vCPU count.
pub fn load_kernel(
    ram: &GuestRam,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &Cmdline,
) -> Result<LoadedKernel, BootError> {
    if !ram.contains(GuestAddress(0), KERNEL_GPA) {
        return Err(BootError::LowRamMissing {
            start: 0,
            end: KERNEL_GPA,
        });
    }
    let (format, loader) = sniff_kernel(kernel)?;
    write_gdt(ram)?;
    let (kernel_end, cmdline_max, initrd_max, elf_info) = match loader {
        Loader::Elf => {
            let loaded = elf::load_elf(ram, kernel)?;
            (loaded.high, CMDLINE_MAX - 1, u64::MAX, Some(loaded))
        }
        Loader::BzImage => {
            let loaded = bzimage::load_bzimage(ram, kernel)?;
            let h = loaded.header;
            (
                loaded.end,
                (h.cmdline_size as u64).min(CMDLINE_MAX - 1),
                u64::from(h.initrd_addr_max),
                None,
            )
        }
    };

    let text = cmdline.as_str();
    if text.len() as u64 > cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: text.len(),
            max: cmdline_max as usize,
        });
    }
    ram.write(GuestAddress(CMDLINE_GPA), &cmdline.to_bytes_with_nul())
        .map_err(BootError::mem("command line"))?;

    let initrd = match initrd {
        Some(image) => Some(place_initrd(ram, image, kernel_end, initrd_max)?),
        None => None,
    };
    let layout: alloc::vec::Vec<(u64, u64)> = ram.layout().collect();
    let map = memory_map(&layout);

    let pvh_entry = elf_info.and_then(|e| e.pvh_entry);
    let entry = match (pvh_entry, elf_info) {
        (Some(eip), _) => {
            let ebx = pvh::write_start_info(
                ram,
                &PvhInput {
                    cmdline_gpa: CMDLINE_GPA,
                    initrd,
                    memmap: &map,
                },
            )?;
            BootEntry::X86Pvh {
                eip,
                ebx: ebx as u32,
                gdt_gpa: GDT_GPA,
            }
        }
        (None, elf_info) => {
            let cr3 = write_identity_map(ram)?;
            let params = bzimage::boot_params(&BootParamsInput {
                image: (format == KernelFormat::BzImage).then_some(kernel),
                cmdline_gpa: CMDLINE_GPA,
                initrd,
                e820: &map,
            })?;
            ram.write(GuestAddress(ZERO_PAGE_GPA), &params)
                .map_err(BootError::mem("boot_params"))?;
            let rip = match elf_info {
                Some(e) => e.entry,
                None => KERNEL_GPA + bzimage::ENTRY_64_OFFSET,
            };
            BootEntry::X86Long {
                rip,
                rsi: ZERO_PAGE_GPA,
                cr3,
                gdt_gpa: GDT_GPA,
                rsp: BOOT_STACK_GPA,
            }
        }
    };
    Ok(LoadedKernel {
        format,
        entry,
        kernel_end,
        initrd,
    })
}

/// Put the initrd at the top of the low RAM region that holds the kernel, 4 KiB aligned,
/// below the MMIO hole and the kernel's `initrd_addr_max`, and above the kernel.
fn place_initrd(
    ram: &GuestRam,
    image: &[u8],
    kernel_end: u64,
    initrd_max: u64,
) -> Result<(u64, u64), BootError> {
    let size = image.len() as u64;
    let region_end = ram
        .layout()
        .find(|&(base, len)| base <= KERNEL_GPA && KERNEL_GPA < base + len)
        .map_or(0, |(base, len)| base + len);
    let high = region_end
        .min(MMIO_HOLE_START)
        .min(initrd_max.saturating_add(1));
    let low = kernel_end.next_multiple_of(0x1000);
    let too_big = BootError::InitrdTooBig { size, low, high };
    let gpa = high.checked_sub(size).ok_or(too_big.clone())? & !0xfff;
    if gpa < low {
        return Err(too_big);
    }
    ram.write(GuestAddress(gpa), image)
        .map_err(BootError::mem("initrd"))?;
    Ok((gpa, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::bzimage::tests::synthetic_bzimage;
    use crate::arch::x86_64::elf::tests::tiny_elf;
    use crate::arch::x86_64::layout::PVH_INFO_GPA;
    use crate::arch::x86_64::pvh::HVM_START_MAGIC;

    fn ram() -> GuestRam {
        GuestRam::anonymous(&[(0, 0x100_0000)]).unwrap()
    }

    fn cmdline(s: &str) -> Cmdline {
        let mut c = Cmdline::new(4096);
        c.push(s).unwrap();
        c
    }

    #[test]
    fn pvh_elf_enters_in_protected_mode_with_start_info() {
        let mem = ram();
        let img = tiny_elf(KERNEL_GPA, &[0xf4], 0, Some(0x10_0000));
        let loaded = load_kernel(&mem, &img, None, &cmdline("console=ttyS0")).unwrap();
        assert_eq!(
            loaded.entry,
            BootEntry::X86Pvh {
                eip: 0x10_0000,
                ebx: PVH_INFO_GPA as u32,
                gdt_gpa: GDT_GPA
            }
        );
        assert_eq!(
            mem.read_u32(GuestAddress(PVH_INFO_GPA)).unwrap(),
            HVM_START_MAGIC
        );
        let mut b = [0u8; 14];
        mem.read(GuestAddress(CMDLINE_GPA), &mut b).unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
    }

    #[test]
    fn bzimage_enters_long_mode_with_boot_params() {
        let mem = ram();
        let img = synthetic_bzimage(0x020f, 1, &[0x90; 64]);
        let loaded = load_kernel(&mem, &img, None, &cmdline("quiet")).unwrap();
        assert_eq!(loaded.format, KernelFormat::BzImage);
        assert!(matches!(
            loaded.entry,
            BootEntry::X86Long {
                rip: 0x10_0200,
                rsi: ZERO_PAGE_GPA,
                ..
            }
        ));
        assert_eq!(mem.read_u8_at(ZERO_PAGE_GPA + 0x210), 0xff);
    }

    #[test]
    fn initrd_sits_at_the_top_of_low_ram_page_aligned() {
        let mem = ram();
        let img = tiny_elf(KERNEL_GPA, &[0xf4], 0, Some(0x10_0000));
        let loaded = load_kernel(&mem, &img, Some(&[7u8; 5000]), &cmdline("")).unwrap();
        let (gpa, size) = loaded.initrd.unwrap();
        assert_eq!(size, 5000);
        assert_eq!(gpa % 0x1000, 0);
        assert!(gpa + size <= 0x100_0000 && gpa + size > 0x100_0000 - 0x2000);
        assert_eq!(mem.read_u8_at(gpa + 4999), 7);
    }

    #[test]
    fn initrd_larger_than_free_ram_is_rejected() {
        let mem = ram();
        let img = tiny_elf(KERNEL_GPA, &[0xf4], 0, Some(0x10_0000));
        let big = alloc::vec![0u8; 0x100_0000];
        let err = load_kernel(&mem, &img, Some(&big), &cmdline("")).unwrap_err();
        assert!(matches!(
            err,
            BootError::InitrdTooBig {
                size: 0x100_0000,
                ..
            }
        ));
    }

    #[test]
    fn file_that_is_not_a_kernel_is_rejected_with_its_first_bytes() {
        let err = load_kernel(&ram(), b"hello world", None, &cmdline("")).unwrap_err();
        assert_eq!(err, BootError::NotAKernel { head: *b"hell" });
    }

    #[test]
    fn arm64_image_is_not_an_x86_kernel() {
        let image = crate::arch::kernel::samples::arm64_image();

        let err = load_kernel(&ram(), &image, None, &cmdline("")).unwrap_err();

        assert_eq!(err, BootError::NotAKernel { head: [0; 4] });
    }

    #[test]
    fn thirty_two_bit_elf_reaches_the_elf_loader_and_is_refused_there() {
        let mut image = crate::arch::kernel::samples::elf64(3, crate::arch::kernel::PT_LOAD);
        image[4] = 1;

        let err = load_kernel(&ram(), &image, None, &cmdline("")).unwrap_err();

        assert!(
            matches!(err, BootError::BadElf { field: "class", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn cmdline_longer_than_the_kernel_allows_is_rejected() {
        let img = synthetic_bzimage(0x020f, 1, &[0x90; 64]);
        let mut c = Cmdline::new(8192);
        c.push(&"x".repeat(3000)).unwrap();
        let err = load_kernel(&ram(), &img, None, &c).unwrap_err();
        assert_eq!(
            err,
            BootError::CmdlineTooLong {
                len: 3000,
                max: 2047
            }
        );
    }

    #[test]
    fn ram_without_the_first_mib_is_rejected() {
        let mem = GuestRam::anonymous(&[(0x10_0000, 0x100_0000)]).unwrap();
        let img = tiny_elf(KERNEL_GPA, &[0xf4], 0, Some(0x10_0000));
        let err = load_kernel(&mem, &img, None, &cmdline("")).unwrap_err();
        assert!(matches!(err, BootError::LowRamMissing { .. }));
    }

    trait ReadU8 {
        fn read_u8_at(&self, gpa: u64) -> u8;
    }
    impl ReadU8 for GuestRam {
        fn read_u8_at(&self, gpa: u64) -> u8 {
            let mut b = [0u8];
            self.read(GuestAddress(gpa), &mut b).unwrap();
            b[0]
        }
    }
}
