//! The memory map (e820 types) handed to the guest by both boot protocols.

use alloc::vec::Vec;

use super::layout::{EBDA_GPA, LOW_RESERVED_END};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved (firmware tables, the legacy hole).
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for guest RAM `ram` (sorted, disjoint `(base, size)` regions): RAM except
/// the EBDA and legacy hole `[EBDA, 1 MiB)`, which is reserved where RAM covers it.
pub fn memory_map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for &(base, size) in ram {
        let Some(end) = base.checked_add(size) else {
            continue;
        };
        let mut push = |start: u64, stop: u64, kind: u32| {
            if stop > start {
                map.push(E820Entry {
                    addr: start,
                    size: stop - start,
                    kind,
                });
            }
        };
        // Split the region around the reserved range [EBDA, 1 MiB).
        let res_start = EBDA_GPA.clamp(base, end);
        let res_end = LOW_RESERVED_END.clamp(base, end);
        push(base, res_start, E820_RAM);
        push(res_start, res_end, E820_RESERVED);
        push(res_end, end, E820_RAM);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_region_is_split_around_the_ebda() {
        let map = memory_map(&[(0, 256 << 20)]);
        assert_eq!(
            map,
            [
                E820Entry {
                    addr: 0,
                    size: EBDA_GPA,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_GPA,
                    size: LOW_RESERVED_END - EBDA_GPA,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: LOW_RESERVED_END,
                    size: (256 << 20) - LOW_RESERVED_END,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn map_covers_every_byte_of_ram_exactly_once() {
        let ram = [(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)];
        let map = memory_map(&ram);
        let total: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(total, 0xc000_0000 + 0x4000_0000);
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
        assert_eq!(map.last().unwrap().addr, 0x1_0000_0000);
    }

    #[test]
    fn high_only_region_has_no_reserved_entry() {
        let map = memory_map(&[(0x1_0000_0000, 0x1000)]);
        assert_eq!(map.len(), 1);
        assert_eq!(map[0].kind, E820_RAM);
    }
}
