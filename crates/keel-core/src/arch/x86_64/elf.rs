//! ELF kernels: `PT_LOAD` segments go to their physical addresses; the PVH note
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) gives the 32-bit entry point.
//!
//! Only 64-bit little-endian x86_64 images are accepted. Every header field is checked
//! before use: offsets and sizes come from a file the user named, which may be anything.

use crate::arch::kernel::{EM_X86_64, PT_LOAD};
use crate::memory::{GuestAddress, GuestMemory};

use super::BootError;

const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// The Xen ELF note type carrying the PVH 32-bit entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// What loading an ELF kernel produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedElf {
    /// `e_entry` (the 64-bit entry of a vmlinux).
    pub entry: u64,
    /// The PVH entry point, if the image has the note.
    pub pvh_entry: Option<u32>,
    /// Lowest guest-physical address loaded.
    pub low: u64,
    /// One past the highest guest-physical address loaded (including .bss).
    pub high: u64,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    // Callers check lengths first; a short slice yields 0 rather than a panic.
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// A program header, as read from the file.
#[derive(Clone, Copy, Debug)]
struct Phdr {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn bad(field: &'static str, value: u64, why: &'static str) -> BootError {
    BootError::BadElf { field, value, why }
}

fn program_headers(image: &[u8]) -> Result<impl Iterator<Item = Phdr> + '_, BootError> {
    if image.len() < EHDR_SIZE {
        return Err(BootError::Truncated {
            what: "ELF header",
            len: image.len() as u64,
            need: EHDR_SIZE as u64,
        });
    }
    let class = image[EI_CLASS];
    if class != ELFCLASS64 {
        return Err(bad(
            "class",
            class.into(),
            "only 64-bit (ELFCLASS64) kernels are supported",
        ));
    }
    if image[EI_DATA] != ELFDATA2LSB {
        return Err(bad(
            "data encoding",
            image[EI_DATA].into(),
            "only little-endian kernels are supported",
        ));
    }
    let machine = u16_at(image, 18);
    if machine != EM_X86_64 {
        return Err(bad(
            "machine",
            machine.into(),
            "not an x86_64 (EM_X86_64 = 62) image",
        ));
    }
    let phoff = u64_at(image, 32);
    let phentsize = u16_at(image, 54);
    let phnum = u16_at(image, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(bad("program header size", phentsize.into(), "expected 56"));
    }
    let table_len = u64::from(phnum) * PHDR_SIZE as u64;
    let table_end = phoff
        .checked_add(table_len)
        .filter(|&end| end <= image.len() as u64)
        .ok_or_else(|| {
            bad(
                "program header offset",
                phoff,
                "table lies outside the file",
            )
        })?;
    let table = &image[phoff as usize..table_end as usize];
    Ok(table.chunks_exact(PHDR_SIZE).map(|p| Phdr {
        kind: u32_at(p, 0),
        offset: u64_at(p, 8),
        paddr: u64_at(p, 24),
        filesz: u64_at(p, 32),
        memsz: u64_at(p, 40),
    }))
}

/// The file bytes of a segment, checked against the file.
fn segment_bytes<'a>(image: &'a [u8], index: usize, p: &Phdr) -> Result<&'a [u8], BootError> {
    let end = p
        .offset
        .checked_add(p.filesz)
        .ok_or(BootError::BadSegment {
            index,
            what: "offset",
            value: p.offset,
            why: "plus its file size overflows",
        })?;
    if end > image.len() as u64 {
        return Err(BootError::BadSegment {
            index,
            what: "offset",
            value: p.offset,
            why: "plus its file size lies past the end of the file",
        });
    }
    Ok(&image[p.offset as usize..end as usize])
}

/// Find the PVH entry in the image's notes, without loading anything.
pub fn pvh_entry(image: &[u8]) -> Result<Option<u32>, BootError> {
    for (index, p) in program_headers(image)?.enumerate() {
        if p.kind != PT_NOTE {
            continue;
        }
        let mut notes = segment_bytes(image, index, &p)?;
        // Each note: namesz, descsz, type, name (padded to 4), desc (padded to 4).
        while notes.len() >= 12 {
            let namesz = u32_at(notes, 0) as usize;
            let descsz = u32_at(notes, 4) as usize;
            let kind = u32_at(notes, 8);
            let name_end = 12usize.checked_add(namesz.next_multiple_of(4));
            let desc_end = name_end.and_then(|n| n.checked_add(descsz.next_multiple_of(4)));
            let (Some(name_end), Some(desc_end)) = (name_end, desc_end) else {
                break;
            };
            if desc_end > notes.len() {
                break;
            }
            let name = &notes[12..12 + namesz];
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4 {
                return Ok(Some(u32_at(notes, name_end)));
            }
            notes = &notes[desc_end..];
        }
    }
    Ok(None)
}

/// Load the `PT_LOAD` segments of `image` at their physical addresses.
pub fn load_elf<M: GuestMemory + ?Sized>(mem: &M, image: &[u8]) -> Result<LoadedElf, BootError> {
    let entry = u64_at(image, 24);
    let mut low = u64::MAX;
    let mut high = 0u64;
    let mut loaded = 0usize;
    for (index, p) in program_headers(image)?.enumerate() {
        if p.kind != PT_LOAD || p.memsz == 0 {
            continue;
        }
        if p.filesz > p.memsz {
            return Err(BootError::BadSegment {
                index,
                what: "file size",
                value: p.filesz,
                why: "is larger than its memory size",
            });
        }
        let bytes = segment_bytes(image, index, &p)?;
        let end = p.paddr.checked_add(p.memsz).ok_or(BootError::BadSegment {
            index,
            what: "physical address",
            value: p.paddr,
            why: "plus its memory size overflows",
        })?;
        if !mem.contains(GuestAddress(p.paddr), p.memsz) {
            return Err(BootError::BadSegment {
                index,
                what: "physical address",
                value: p.paddr,
                why: "with its memory size lies outside guest RAM",
            });
        }
        mem.write(GuestAddress(p.paddr), bytes)
            .map_err(BootError::mem("ELF segment"))?;
        // Zero the .bss part in page-sized steps.
        let zeros = [0u8; 4096];
        let mut at = p.paddr + p.filesz;
        while at < end {
            let n = core::cmp::min(end - at, zeros.len() as u64) as usize;
            mem.write(GuestAddress(at), &zeros[..n])
                .map_err(BootError::mem("ELF segment"))?;
            at += n as u64;
        }
        low = low.min(p.paddr);
        high = high.max(end);
        loaded += 1;
    }
    if loaded == 0 {
        return Err(bad("program headers", 0, "no loadable segment"));
    }
    Ok(LoadedElf {
        entry,
        pvh_entry: pvh_entry(image)?,
        low,
        high,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use alloc::vec::Vec;

    /// A minimal x86_64 ELF: one PT_LOAD of `code` at `paddr` (memsz = filesz + bss) and a
    /// PT_NOTE with the PVH entry if given.
    pub(crate) fn tiny_elf(paddr: u64, code: &[u8], bss: u64, pvh: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        if let Some(e) = pvh {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        let phnum = if pvh.is_some() { 2u16 } else { 1 };
        let data_off = (EHDR_SIZE + PHDR_SIZE * usize::from(phnum)) as u64;
        let mut f = alloc::vec![0u8; EHDR_SIZE];
        f[..4].copy_from_slice(b"\x7fELF");
        f[EI_CLASS] = ELFCLASS64;
        f[EI_DATA] = ELFDATA2LSB;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&paddr.to_le_bytes());
        f[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        f[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        f[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut ph = |kind: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut p = [0u8; PHDR_SIZE];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            f.extend_from_slice(&p);
        };
        ph(
            PT_LOAD,
            data_off,
            paddr,
            code.len() as u64,
            code.len() as u64 + bss,
        );
        if pvh.is_some() {
            ph(
                PT_NOTE,
                data_off + code.len() as u64,
                0,
                note.len() as u64,
                0,
            );
        }
        f.extend_from_slice(code);
        f.extend_from_slice(&note);
        f
    }

    fn ram() -> GuestRam {
        GuestRam::anonymous(&[(0, 0x40_0000)]).unwrap()
    }

    #[test]
    fn segment_lands_at_its_physical_address_and_bss_is_zeroed() {
        let mem = ram();
        mem.write(GuestAddress(0x10_0004), &[0xff; 4]).unwrap();
        let img = tiny_elf(0x10_0000, &[0x90, 0xf4, 1, 2], 4, Some(0x10_0000));
        let loaded = load_elf(&mem, &img).unwrap();
        assert_eq!(mem.read_u32(GuestAddress(0x10_0000)).unwrap(), 0x0201_f490);
        assert_eq!(mem.read_u32(GuestAddress(0x10_0004)).unwrap(), 0);
        assert_eq!((loaded.low, loaded.high), (0x10_0000, 0x10_0008));
    }

    #[test]
    fn pvh_note_gives_the_entry() {
        let img = tiny_elf(0x10_0000, &[0xf4], 0, Some(0x10_0123));
        assert_eq!(pvh_entry(&img).unwrap(), Some(0x10_0123));
        let img = tiny_elf(0x10_0000, &[0xf4], 0, None);
        assert_eq!(pvh_entry(&img).unwrap(), None);
    }

    #[test]
    fn elf32_is_rejected_naming_the_class() {
        let mut img = tiny_elf(0x10_0000, &[0xf4], 0, None);
        img[EI_CLASS] = 1;
        let err = load_elf(&ram(), &img).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::BadElf {
                    field: "class",
                    value: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn non_x86_machine_is_rejected() {
        let mut img = tiny_elf(0x10_0000, &[0xf4], 0, None);
        img[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        let err = load_elf(&ram(), &img).unwrap_err();
        assert!(matches!(
            err,
            BootError::BadElf {
                field: "machine",
                value: 183,
                ..
            }
        ));
    }

    #[test]
    fn segment_outside_ram_is_rejected() {
        let img = tiny_elf(0x8000_0000, &[0xf4], 0, None);
        let err = load_elf(&ram(), &img).unwrap_err();
        assert!(matches!(
            err,
            BootError::BadSegment {
                what: "physical address",
                value: 0x8000_0000,
                ..
            }
        ));
    }

    #[test]
    fn overflowing_segment_offset_is_rejected() {
        let mut img = tiny_elf(0x10_0000, &[0xf4], 0, None);
        // p_offset of the first program header.
        let off = EHDR_SIZE + 8;
        img[off..off + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = load_elf(&ram(), &img).unwrap_err();
        assert!(matches!(
            err,
            BootError::BadSegment {
                what: "offset",
                value: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn truncated_header_is_rejected() {
        let err = load_elf(&ram(), b"\x7fELF\x02\x01").unwrap_err();
        assert!(matches!(err, BootError::Truncated { .. }));
    }

    #[test]
    fn program_header_table_past_the_file_is_rejected() {
        let mut img = tiny_elf(0x10_0000, &[0xf4], 0, None);
        img[56..58].copy_from_slice(&1000u16.to_le_bytes());
        let err = load_elf(&ram(), &img).unwrap_err();
        assert!(matches!(
            err,
            BootError::BadElf {
                field: "program header offset",
                ..
            }
        ));
    }
}
