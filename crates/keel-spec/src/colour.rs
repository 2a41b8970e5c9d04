//! Page colouring: which physical pages back a coloured VM's RAM (`no_std`).
//!
//! A physical page's colour is `(paddr / 4 KiB) mod n`, `n` the last-level cache's colour
//! count ([`crate::Llc::colours`]): pages of different colours map to disjoint sets of that
//! cache, so VMs with disjoint colour sets cannot evict each other's lines there. A
//! coloured VM's RAM is the run of pages of its colours below the top of a physical pool,
//! cut into physically contiguous runs ([`ColouredRun`]) that are laid back to back in
//! guest-physical (and VMM) address space.

use alloc::vec::Vec;

use crate::model::Llc;

/// Bytes of a page (the unit of colouring).
pub const PAGE: u64 = Llc::PAGE;

/// The colour of the page at `paddr` in a cache of `colours` colours (`colours` > 0).
pub fn colour_of(paddr: u64, colours: u64) -> u64 {
    (paddr / PAGE) % colours.max(1)
}

/// One physically contiguous run of a coloured VM's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColouredRun {
    /// Physical address of its first page.
    pub paddr: u64,
    /// Bytes (a multiple of [`PAGE`]).
    pub size: u64,
    /// Where it starts in the VM's RAM (bytes from the guest RAM base).
    pub offset: u64,
}

/// Why coloured RAM cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColourError {
    /// No colour, a colour out of range, more colours than
    /// [`crate::limits::MAX_COLOURS`], or a size that is no whole number of pages.
    Input,
    /// The pages do not fit between `floor` and `top`: they would start at `lowest`
    /// (`None`: below address 0).
    Pool {
        /// Lowest address the pages would need.
        lowest: Option<u64>,
    },
}

/// The physical runs backing `bytes` of RAM whose pages all have a colour in `set`, taken
/// from the highest pages of those colours below `top` (rounded down to a whole colour
/// period, `colours` × 4 KiB) and not below `floor`; in ascending physical order, which is
/// also their order in the VM's RAM. Adjacent pages merge into one run, also across a
/// period boundary (set {7, 0} of 8: colour 7 of one period and colour 0 of the next).
pub fn coloured_runs(
    set: &[u32],
    colours: u64,
    bytes: u64,
    top: u64,
    floor: u64,
) -> Result<Vec<ColouredRun>, ColourError> {
    if set.is_empty()
        || colours == 0
        || colours > crate::limits::MAX_COLOURS
        || bytes % PAGE != 0
        || set.iter().any(|&c| u64::from(c) >= colours)
    {
        return Err(ColourError::Input);
    }
    let mut in_set = alloc::vec![false; colours as usize];
    for &c in set {
        in_set[c as usize] = true;
    }
    let per_period = in_set.iter().filter(|&&b| b).count() as u64;
    let pages = bytes / PAGE;
    let period = colours * PAGE;
    let periods = pages.div_ceil(per_period);
    let top = top - top % period;
    let lowest = periods
        .checked_mul(period)
        .and_then(|span| top.checked_sub(span));
    let base = match lowest {
        Some(b) if b >= floor => b,
        _ => return Err(ColourError::Pool { lowest }),
    };
    let mut runs: Vec<ColouredRun> = Vec::new();
    let mut taken = 0u64;
    let mut page = base / PAGE;
    while taken < pages {
        if in_set[(page % colours) as usize] {
            let paddr = page * PAGE;
            match runs.last_mut() {
                Some(r) if r.paddr + r.size == paddr => r.size += PAGE,
                _ => runs.push(ColouredRun {
                    paddr,
                    size: PAGE,
                    offset: taken * PAGE,
                }),
            }
            taken += 1;
        }
        page += 1;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pages_of(runs: &[ColouredRun]) -> impl Iterator<Item = u64> + '_ {
        runs.iter()
            .flat_map(|r| (0..r.size / PAGE).map(move |i| r.paddr + i * PAGE))
    }

    #[test]
    fn the_colour_of_a_page_is_its_page_number_modulo_the_colour_count() {
        assert_eq!(colour_of(0x4000_0000, 8), 0);
        assert_eq!(colour_of(0x4000_3000, 8), 3);
        assert_eq!(colour_of(0x4000_9fff, 8), 1);
    }

    #[test]
    fn every_page_has_a_colour_of_the_set() {
        let runs = coloured_runs(&[1, 2, 5], 8, 4 * MIB, 0xC000_0000, 0x8000_0000).unwrap();

        assert_eq!(pages_of(&runs).count() as u64, 4 * MIB / PAGE);
        assert!(pages_of(&runs).all(|p| [1, 2, 5].contains(&colour_of(p, 8))));
    }

    #[test]
    fn consecutive_colours_merge_into_one_run_per_period() {
        let runs = coloured_runs(&[0, 1, 2, 3], 8, 16 * PAGE, 0x1_0000_0000, 0).unwrap();

        assert_eq!(runs.len(), 4);
        assert!(runs.iter().all(|r| r.size == 4 * PAGE));
        assert!(runs.windows(2).all(|w| w[1].paddr - w[0].paddr == 8 * PAGE));
    }

    #[test]
    fn colours_that_wrap_around_the_period_merge_across_it() {
        let runs = coloured_runs(&[7, 0], 8, 6 * PAGE, 0x1_0000_0000, 0).unwrap();

        // 0 | 7 0 | 7 0 | 7: the first page alone, then two pairs, then the last alone.
        let sizes: Vec<u64> = runs.iter().map(|r| r.size / PAGE).collect();
        assert_eq!(sizes, [1, 2, 2, 1]);
    }

    #[test]
    fn runs_are_laid_back_to_back_in_guest_ram() {
        let runs = coloured_runs(&[2, 3, 6], 16, 2 * MIB, 0xBF00_0000, 0x8000_0000).unwrap();

        assert_eq!(runs[0].offset, 0);
        assert!(
            runs.windows(2)
                .all(|w| w[0].offset + w[0].size == w[1].offset)
        );
        let last = runs.last().unwrap();
        assert_eq!(last.offset + last.size, 2 * MIB);
    }

    #[test]
    fn pages_come_from_below_the_top_and_not_below_the_floor() {
        let runs = coloured_runs(&[0, 1], 4, MIB, 0xBF00_1000, 0xBE00_0000).unwrap();

        assert!(pages_of(&runs).all(|p| (0xBE00_0000..0xBF00_0000).contains(&p)));
        // Two of four colours: 1 MiB takes a 2 MiB span.
        assert_eq!(runs[0].paddr, 0xBF00_0000 - 2 * MIB);
    }

    #[test]
    fn vms_with_disjoint_colours_share_the_span_without_sharing_a_page() {
        let a = coloured_runs(&[0, 1, 2, 3], 8, 8 * MIB, 0xBF00_0000, 0x8000_0000).unwrap();
        let b = coloured_runs(&[4, 5, 6, 7], 8, 8 * MIB, 0xBF00_0000, 0x8000_0000).unwrap();

        let pa: alloc::collections::BTreeSet<u64> = pages_of(&a).collect();
        assert!(pages_of(&b).all(|p| !pa.contains(&p)));
        assert_eq!(a[0].paddr, 0xBF00_0000 - 16 * MIB);
        assert_eq!(b[0].paddr, 0xBF00_0000 - 16 * MIB + 4 * PAGE);
    }

    #[test]
    fn ram_beyond_the_pool_is_refused() {
        // One colour of 8: 2 MiB of RAM spans 16 MiB, 8 MiB more than the pool has.
        let e = coloured_runs(&[0], 8, 2 * MIB, 0x8080_0000, 0x8000_0000).unwrap_err();

        assert_eq!(
            e,
            ColourError::Pool {
                lowest: Some(0x7F80_0000)
            }
        );
    }

    #[test]
    fn a_colour_outside_the_cache_is_refused() {
        assert_eq!(
            coloured_runs(&[8], 8, MIB, 0xC000_0000, 0),
            Err(ColourError::Input)
        );
    }
}
