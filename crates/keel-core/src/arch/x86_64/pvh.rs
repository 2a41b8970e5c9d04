//! The Xen PVH boot ABI: `hvm_start_info`, its module list and its memory map.

use crate::memory::{GuestAddress, GuestMemory};

use super::BootError;
use super::e820::E820Entry;
use super::layout::{PVH_INFO_GPA, PVH_MEMMAP_GPA, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST_GPA};

/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 has the memory map fields.
pub const HVM_START_VERSION: u32 = 1;
/// Size of `hvm_start_info`.
pub const START_INFO_SIZE: usize = 56;

/// What the PVH start info points at.
#[derive(Clone, Copy, Debug)]
pub struct PvhInput<'a> {
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline_gpa: u64,
    /// `(gpa, size)` of the initrd, passed as module 0.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub memmap: &'a [E820Entry],
}

/// Write `hvm_start_info`, the module list and the memory map at their fixed places.
/// Returns the start info's address (the entry's EBX).
pub fn write_start_info<M: GuestMemory + ?Sized>(
    mem: &M,
    input: &PvhInput<'_>,
) -> Result<u64, BootError> {
    if input.memmap.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyMemoryRegions {
            entries: input.memmap.len(),
            max: PVH_MEMMAP_MAX_ENTRIES,
        });
    }
    let mut info = [0u8; START_INFO_SIZE];
    let mut put = |off: usize, v: &[u8]| info[off..off + v.len()].copy_from_slice(v);
    put(0, &HVM_START_MAGIC.to_le_bytes());
    put(4, &HVM_START_VERSION.to_le_bytes());
    // flags (8) stay 0.
    if let Some((gpa, size)) = input.initrd {
        put(12, &1u32.to_le_bytes());
        put(16, &PVH_MODLIST_GPA.to_le_bytes());
        let mut module = [0u8; 32];
        module[0..8].copy_from_slice(&gpa.to_le_bytes());
        module[8..16].copy_from_slice(&size.to_le_bytes());
        mem.write(GuestAddress(PVH_MODLIST_GPA), &module)
            .map_err(BootError::mem("PVH module list"))?;
    }
    put(24, &input.cmdline_gpa.to_le_bytes());
    // rsdp_paddr (32) is filled in by `acpi::publish_rsdp` once the tables are written.
    put(40, &PVH_MEMMAP_GPA.to_le_bytes());
    put(48, &(input.memmap.len() as u32).to_le_bytes());
    for (i, e) in input.memmap.iter().enumerate() {
        let mut entry = [0u8; 24];
        entry[0..8].copy_from_slice(&e.addr.to_le_bytes());
        entry[8..16].copy_from_slice(&e.size.to_le_bytes());
        entry[16..20].copy_from_slice(&e.kind.to_le_bytes());
        mem.write(GuestAddress(PVH_MEMMAP_GPA + i as u64 * 24), &entry)
            .map_err(BootError::mem("PVH memory map"))?;
    }
    mem.write(GuestAddress(PVH_INFO_GPA), &info)
        .map_err(BootError::mem("PVH start info"))?;
    Ok(PVH_INFO_GPA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::memory_map;
    use crate::memory::GuestRam;

    #[test]
    fn start_info_has_magic_cmdline_and_memmap() {
        let mem = GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap();
        let map = memory_map(&[(0, 0x1000_0000)]);
        let ebx = write_start_info(
            &mem,
            &PvhInput {
                cmdline_gpa: 0x2_0000,
                initrd: None,
                memmap: &map,
            },
        )
        .unwrap();
        let r32 = |gpa| mem.read_u32(GuestAddress(gpa)).unwrap();
        let r64 = |gpa| mem.read_u64(GuestAddress(gpa)).unwrap();
        assert_eq!(r32(ebx), HVM_START_MAGIC);
        assert_eq!(r32(ebx + 4), 1);
        assert_eq!(r32(ebx + 12), 0);
        assert_eq!(r64(ebx + 24), 0x2_0000);
        assert_eq!(r64(ebx + 40), PVH_MEMMAP_GPA);
        assert_eq!(r32(ebx + 48) as usize, map.len());
        assert_eq!(r64(PVH_MEMMAP_GPA + 24), map[1].addr);
        assert_eq!(r32(PVH_MEMMAP_GPA + 24 + 16), map[1].kind);
    }

    #[test]
    fn initrd_is_module_zero() {
        let mem = GuestRam::anonymous(&[(0, 0x10_0000)]).unwrap();
        write_start_info(
            &mem,
            &PvhInput {
                cmdline_gpa: 0x2_0000,
                initrd: Some((0x80_0000, 0x4000)),
                memmap: &[],
            },
        )
        .unwrap();
        assert_eq!(mem.read_u32(GuestAddress(PVH_INFO_GPA + 12)).unwrap(), 1);
        assert_eq!(
            mem.read_u64(GuestAddress(PVH_MODLIST_GPA)).unwrap(),
            0x80_0000
        );
        assert_eq!(
            mem.read_u64(GuestAddress(PVH_MODLIST_GPA + 8)).unwrap(),
            0x4000
        );
    }
}
