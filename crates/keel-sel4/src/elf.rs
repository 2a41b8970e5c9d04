//! A tiny ELF64 rewriter: append one `PT_LOAD` segment to an executable.
//!
//! The original bytes stay where they are (sections, symbols and the old program headers
//! included, so the Microkit tool still finds the symbols it patches); a new program-header
//! table with one more entry and the new segment's bytes go at the end of the file, and the
//! ELF header is pointed at the new table.

use alloc::vec::Vec;

const PT_LOAD: u32 = 1;
const EM_AARCH64: u16 = 183;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PAGE: usize = 4096;

/// Segment permissions (`p_flags`).
pub mod flags {
    /// Executable.
    pub const X: u32 = 1;
    /// Writable.
    pub const W: u32 = 2;
    /// Readable.
    pub const R: u32 = 4;
}

/// Why an ELF cannot take the segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Not a little-endian ELF64 executable for aarch64.
    #[error("not a little-endian 64-bit aarch64 ELF: {0}")]
    NotAarch64Elf(&'static str),
    /// The file ends inside a header.
    #[error("the ELF file is truncated ({0})")]
    Truncated(&'static str),
    /// The new segment overlaps one of the program's segments.
    #[error("new segment {new_start:#x}..{new_end:#x} overlaps segment {start:#x}..{end:#x}")]
    Overlap {
        /// New segment start.
        new_start: u64,
        /// New segment end.
        new_end: u64,
        /// Existing segment start.
        start: u64,
        /// Existing segment end.
        end: u64,
    },
    /// The segment address is not page aligned.
    #[error("segment address {0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The entry point (`e_entry`) of an aarch64 ELF64 executable.
pub fn entry(elf: &[u8]) -> Result<u64, ElfError> {
    header(elf)?;
    Ok(u64_at(elf, 24))
}

/// A loadable segment of an ELF: `(vaddr, memsz)`.
pub fn load_segments(elf: &[u8]) -> Result<Vec<(u64, u64)>, ElfError> {
    let (phoff, phnum) = header(elf)?;
    let mut v = Vec::new();
    for i in 0..phnum {
        let o = phoff + i * PHDR_LEN;
        if u32_at(elf, o) == PT_LOAD {
            v.push((u64_at(elf, o + 16), u64_at(elf, o + 40)));
        }
    }
    Ok(v)
}

fn header(elf: &[u8]) -> Result<(usize, usize), ElfError> {
    if elf.len() < EHDR_LEN {
        return Err(ElfError::Truncated("ELF header"));
    }
    if elf[..4] != *b"\x7fELF" {
        return Err(ElfError::NotAarch64Elf("bad magic"));
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err(ElfError::NotAarch64Elf("not ELF64 little endian"));
    }
    if u16_at(elf, 18) != EM_AARCH64 {
        return Err(ElfError::NotAarch64Elf("machine is not aarch64"));
    }
    if usize::from(u16_at(elf, 54)) != PHDR_LEN {
        return Err(ElfError::NotAarch64Elf("unexpected program header size"));
    }
    let phoff = usize::try_from(u64_at(elf, 32)).map_err(|_| ElfError::Truncated("phoff"))?;
    let phnum = usize::from(u16_at(elf, 56));
    if phoff
        .checked_add(phnum * PHDR_LEN)
        .is_none_or(|e| e > elf.len())
    {
        return Err(ElfError::Truncated("program headers"));
    }
    Ok((phoff, phnum))
}

/// Return `elf` with `data` appended as a new `PT_LOAD` segment at virtual (and physical)
/// address `vaddr` with permissions `p_flags` ([`flags`]).
pub fn append_segment(
    elf: &[u8],
    vaddr: u64,
    data: &[u8],
    p_flags: u32,
) -> Result<Vec<u8>, ElfError> {
    if vaddr % PAGE as u64 != 0 {
        return Err(ElfError::Unaligned(vaddr));
    }
    let (phoff, phnum) = header(elf)?;
    let new_end = vaddr.saturating_add(data.len() as u64);
    for (start, size) in load_segments(elf)? {
        let end = start.saturating_add(size);
        if start < new_end && vaddr < end {
            return Err(ElfError::Overlap {
                new_start: vaddr,
                new_end,
                start,
                end,
            });
        }
    }
    let mut out = Vec::with_capacity(elf.len() + (phnum + 1) * PHDR_LEN + 2 * PAGE + data.len());
    out.extend_from_slice(elf);
    out.resize(out.len().next_multiple_of(8), 0);
    let new_phoff = out.len();
    out.extend_from_slice(&elf[phoff..phoff + phnum * PHDR_LEN]);
    let data_off = (new_phoff + (phnum + 1) * PHDR_LEN).next_multiple_of(PAGE);
    let mut ph = [0u8; PHDR_LEN];
    ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
    ph[4..8].copy_from_slice(&p_flags.to_le_bytes());
    ph[8..16].copy_from_slice(&(data_off as u64).to_le_bytes());
    ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
    ph[24..32].copy_from_slice(&vaddr.to_le_bytes());
    ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(data.len() as u64).to_le_bytes());
    ph[48..56].copy_from_slice(&(PAGE as u64).to_le_bytes());
    out.extend_from_slice(&ph);
    out.resize(data_off, 0);
    out.extend_from_slice(data);
    out[32..40].copy_from_slice(&(new_phoff as u64).to_le_bytes());
    out[56..58].copy_from_slice(&((phnum + 1) as u16).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal aarch64 ELF with one PT_LOAD at 0x200000 of 0x1000 bytes.
    fn tiny_elf() -> Vec<u8> {
        let mut e = alloc::vec![0u8; EHDR_LEN + PHDR_LEN + 16];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[6] = 1;
        e[16..18].copy_from_slice(&2u16.to_le_bytes());
        e[18..20].copy_from_slice(&EM_AARCH64.to_le_bytes());
        e[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        e[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
        e[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p = EHDR_LEN;
        e[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        e[p + 16..p + 24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        e[p + 40..p + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        e
    }

    #[test]
    fn appended_segment_is_listed_with_its_address_and_size() {
        let out =
            append_segment(&tiny_elf(), 0x1_0000_0000, &[1, 2, 3], flags::R | flags::W).unwrap();

        assert_eq!(
            load_segments(&out).unwrap(),
            [(0x20_0000, 0x1000), (0x1_0000_0000, 3)]
        );
    }

    #[test]
    fn appended_bytes_sit_at_the_segment_offset() {
        let out = append_segment(&tiny_elf(), 0x1_0000_0000, b"PAYLOAD", flags::R).unwrap();
        let phoff = u64_at(&out, 32) as usize;
        let off = u64_at(&out, phoff + PHDR_LEN + 8) as usize;

        assert_eq!(off % PAGE, 0);
        assert_eq!(&out[off..off + 7], b"PAYLOAD");
    }

    #[test]
    fn original_bytes_are_kept() {
        let e = tiny_elf();

        let out = append_segment(&e, 0x1_0000_0000, b"x", flags::R).unwrap();

        assert_eq!(&out[64..e.len()], &e[64..]);
    }

    #[test]
    fn overlapping_segment_is_refused() {
        let err = append_segment(&tiny_elf(), 0x20_0000, b"x", flags::R).unwrap_err();

        assert!(matches!(
            err,
            ElfError::Overlap {
                start: 0x20_0000,
                ..
            }
        ));
    }

    #[test]
    fn x86_elf_is_refused() {
        let mut e = tiny_elf();
        e[18] = 62;

        assert!(matches!(
            append_segment(&e, 0x1_0000_0000, b"x", flags::R),
            Err(ElfError::NotAarch64Elf(_))
        ));
    }
}
