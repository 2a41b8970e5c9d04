//! The Xen PVH `hvm_start_info` structure: command line and memory map.
//!
//! Everything is copied out early (before the AP trampoline or DMA buffers
//! could overwrite it) and validated: a bad pointer gives an empty command
//! line or memory map, never a fault.

use core::ptr::read_volatile;

const MAGIC: u32 = 0x336e_c578;
/// Longest command line kept.
pub const CMDLINE_MAX: usize = 2048;
/// Most memory-map entries kept.
pub const MEMMAP_MAX: usize = 32;
/// Everything this guest dereferences is identity-mapped below 4 GiB.
const MAPPED_LIMIT: u64 = 1 << 32;

/// One `hvm_memmap_table_entry`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRegion {
    /// Start (guest-physical).
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

/// What the guest learnt from `hvm_start_info`.
#[derive(Debug)]
pub struct StartInfo {
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    memmap: [MemRegion; MEMMAP_MAX],
    memmap_len: usize,
    /// Why the structure was (partly) ignored, if it was.
    pub problem: Option<&'static str>,
}

fn mapped(paddr: u64, len: u64) -> bool {
    paddr != 0
        && paddr
            .checked_add(len)
            .is_some_and(|end| end <= MAPPED_LIMIT)
}

/// Reads a `T` from guest-physical `paddr` if it lies in mapped memory.
fn read_phys<T: Copy>(paddr: u64) -> Option<T> {
    if !mapped(paddr, core::mem::size_of::<T>() as u64)
        || !paddr.is_multiple_of(core::mem::align_of::<T>() as u64)
    {
        return None;
    }
    // SAFETY: the first 4 GiB are identity-mapped (boot.rs); the range was
    // checked to lie inside them and to be aligned for T (a plain integer).
    Some(unsafe { read_volatile(paddr as *const T) })
}

impl StartInfo {
    /// Parses the structure at `paddr` (EBX at entry).
    pub fn parse(paddr: u64) -> Self {
        let mut info = StartInfo {
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            memmap: [MemRegion::default(); MEMMAP_MAX],
            memmap_len: 0,
            problem: None,
        };
        if !paddr.is_multiple_of(8) {
            info.problem = Some("hvm_start_info address is not 8-byte aligned");
            return info;
        }
        match read_phys::<u32>(paddr) {
            Some(MAGIC) => {}
            Some(_) => {
                info.problem = Some("hvm_start_info magic is not 0x336ec578");
                return info;
            }
            None => {
                info.problem = Some("hvm_start_info address is outside mapped memory");
                return info;
            }
        }
        let version = read_phys::<u32>(paddr + 4).unwrap_or(0);
        let cmdline_paddr = read_phys::<u64>(paddr + 24).unwrap_or(0);
        if cmdline_paddr != 0 {
            info.copy_cmdline(cmdline_paddr);
        }
        if version >= 1 {
            let memmap_paddr = read_phys::<u64>(paddr + 40).unwrap_or(0);
            let entries = read_phys::<u32>(paddr + 48).unwrap_or(0);
            info.copy_memmap(memmap_paddr, entries);
        }
        info
    }

    fn copy_cmdline(&mut self, paddr: u64) {
        for i in 0..CMDLINE_MAX {
            match read_phys::<u8>(paddr + i as u64) {
                Some(0) | None => break,
                Some(b) => {
                    self.cmdline[i] = b;
                    self.cmdline_len = i + 1;
                }
            }
        }
    }

    fn copy_memmap(&mut self, paddr: u64, entries: u32) {
        if !paddr.is_multiple_of(8) {
            return;
        }
        for i in 0..(entries as usize).min(MEMMAP_MAX) {
            let entry = paddr + 24 * i as u64;
            let (Some(addr), Some(size), Some(kind)) = (
                read_phys::<u64>(entry),
                read_phys::<u64>(entry + 8),
                read_phys::<u32>(entry + 16),
            ) else {
                return;
            };
            self.memmap[i] = MemRegion { addr, size, kind };
            self.memmap_len = i + 1;
        }
    }

    /// The command line (bytes that are not UTF-8 are replaced by '?').
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        core::str::from_utf8(bytes).unwrap_or("?")
    }

    /// The memory map.
    pub fn memmap(&self) -> &[MemRegion] {
        &self.memmap[..self.memmap_len]
    }

    /// Whether [start, start+len) lies inside one RAM region (true when the
    /// loader gave no memory map: we cannot tell).
    pub fn is_ram(&self, start: u64, len: u64) -> bool {
        if self.memmap_len == 0 {
            return true;
        }
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        self.memmap()
            .iter()
            .any(|r| r.kind == 1 && r.addr <= start && r.addr.saturating_add(r.size) >= end)
    }
}
