//! The plan (keel-spec) sizes every ring region without depending on keel-net: its
//! arithmetic must stay the ring's.

use keel_net::ring::window_len;
use keel_spec::plan::ring_window_len;

#[test]
fn planned_ring_regions_are_exactly_the_ring_windows_for_every_allowed_slot_count() {
    let mut slots = keel_spec::limits::MIN_RING_SLOTS;
    while slots <= keel_spec::limits::MAX_RING_SLOTS {
        assert_eq!(
            Some(ring_window_len(slots) as usize),
            window_len(u64::from(slots)),
            "slots = {slots}"
        );
        slots *= 2;
    }
}
