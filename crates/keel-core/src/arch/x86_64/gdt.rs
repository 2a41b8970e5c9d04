//! The flat GDT and the identity-mapped page tables Keel sets up before entering a kernel.
//!
//! The backend loads the segment registers from [`Segment`] descriptions that match the
//! GDT entries written here, so guest and hypervisor agree on the hidden parts.

use crate::memory::{GuestAddress, GuestMemory};

use super::BootError;
use super::layout::{GDT_GPA, PD_GPA, PDPT_GPA, PML4_GPA};

/// Selector of the flat 32-bit code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// Selector of the 64-bit code segment (long-mode entry).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS (KVM wants a usable TR even if the guest never uses it).
pub const TSS_SELECTOR: u16 = 0x20;

/// The GDT entries, indexed by selector / 8.
pub const GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // code32: present, DPL0, exec/read, 4K gran, 32-bit
    gdt_entry(0xa09b, 0, 0xfffff), // code64: present, DPL0, exec/read, 4K gran, L=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, 4K gran, 32-bit
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 32-bit TSS
];

/// Size in bytes of the GDT (its limit is this minus one).
pub const GDT_SIZE: u16 = (GDT.len() * 8) as u16;

/// Encode a segment descriptor from its flags (`G D/B L AVL` in bits 12..16, `P DPL S
/// Type` in bits 0..8), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// A segment register's full (visible and hidden) state, decoded from a GDT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type field (4 bits).
    pub type_: u8,
    /// Present.
    pub present: bool,
    /// Privilege level.
    pub dpl: u8,
    /// Default operation size (32-bit).
    pub db: bool,
    /// Code/data (`true`) or system segment.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// 4 KiB granularity.
    pub g: bool,
    /// Available for software.
    pub avl: bool,
}

impl Segment {
    /// Decode the GDT entry at `selector` of [`GDT`].
    pub fn from_gdt(selector: u16) -> Segment {
        let entry = GDT.get(usize::from(selector >> 3)).copied().unwrap_or(0);
        let g = (entry >> 55) & 1 == 1;
        let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
        Segment {
            base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
            limit: if g {
                (raw_limit << 12) | 0xfff
            } else {
                raw_limit
            },
            selector,
            type_: ((entry >> 40) & 0xf) as u8,
            present: (entry >> 47) & 1 == 1,
            dpl: ((entry >> 45) & 3) as u8,
            db: (entry >> 54) & 1 == 1,
            s: (entry >> 44) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            g,
            avl: (entry >> 52) & 1 == 1,
        }
    }
}

/// Write [`GDT`] at [`GDT_GPA`].
pub fn write_gdt<M: GuestMemory + ?Sized>(mem: &M) -> Result<(), BootError> {
    let mut bytes = [0u8; GDT.len() * 8];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(GDT) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write(GuestAddress(GDT_GPA), &bytes)
        .map_err(BootError::mem("GDT"))
}

/// Page-table entry flags: present, writable.
const PTE_PRESENT_RW: u64 = 0b11;
/// A 2 MiB page in a page directory.
const PDE_LARGE: u64 = 1 << 7;

/// Write identity-mapped page tables for the first 4 GiB (2 MiB pages): a PML4 at
/// [`PML4_GPA`], one PDPT, four page directories. Returns the CR3 value.
pub fn write_identity_map<M: GuestMemory + ?Sized>(mem: &M) -> Result<u64, BootError> {
    let err = BootError::mem;
    mem.write_u64(GuestAddress(PML4_GPA), PDPT_GPA | PTE_PRESENT_RW)
        .map_err(err("page tables"))?;
    for i in 0..4u64 {
        let pd = PD_GPA + i * 0x1000;
        mem.write_u64(GuestAddress(PDPT_GPA + i * 8), pd | PTE_PRESENT_RW)
            .map_err(err("page tables"))?;
        let mut page = [0u8; 4096];
        for (j, chunk) in page.chunks_exact_mut(8).enumerate() {
            let gpa = ((i << 30) | ((j as u64) << 21)) | PTE_PRESENT_RW | PDE_LARGE;
            chunk.copy_from_slice(&gpa.to_le_bytes());
        }
        mem.write(GuestAddress(pd), &page)
            .map_err(err("page tables"))?;
    }
    Ok(PML4_GPA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    #[test]
    fn code64_segment_decodes_as_long_mode() {
        let cs = Segment::from_gdt(CODE64_SELECTOR);
        assert!(cs.l && !cs.db && cs.present && cs.s && cs.g);
        assert_eq!((cs.type_, cs.base, cs.limit), (0xb, 0, 0xffff_ffff));
    }

    #[test]
    fn code32_segment_decodes_as_flat_protected_mode() {
        let cs = Segment::from_gdt(CODE32_SELECTOR);
        assert!(!cs.l && cs.db);
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = Segment::from_gdt(DATA_SELECTOR);
        assert_eq!(ds.type_, 0x3);
    }

    #[test]
    fn gdt_entry_matches_known_encoding() {
        // The flat 64-bit code descriptor Linux and Firecracker use.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn identity_map_translates_3_gib_to_itself() {
        let mem = GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        let va: u64 = 0xc020_0000;
        let pml4e = mem
            .read_u64(GuestAddress(cr3 + ((va >> 39) & 0x1ff) * 8))
            .unwrap();
        let pdpte = mem
            .read_u64(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .unwrap();
        let pde = mem
            .read_u64(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .unwrap();
        assert_eq!(pde & PDE_LARGE, PDE_LARGE);
        assert_eq!(pde & !0x1f_ffff, va);
    }
}
