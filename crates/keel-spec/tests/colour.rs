//! Cache colouring in the system description: `[system] llc` and `[[vm]] cache_colours`.

mod common;

use common::Scratch;
use keel_spec::Llc;

fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"64M\"\n{extra}\n"
    )
}

const LLC: &str = "[system]\nllc = { size = \"512K\", ways = 16 }\n";

#[test]
fn llc_and_cache_colours_are_parsed_into_the_model() {
    let s = Scratch::new();

    let system = s
        .parse(&format!(
            "{LLC}{}{}",
            vm("a", "cache_colours = [0, 1, 2, 3]"),
            vm("b", "")
        ))
        .unwrap();

    assert_eq!(
        system.llc(),
        Some(Llc {
            size: 512 << 10,
            ways: 16
        })
    );
    assert_eq!(system.llc().unwrap().colours(), 8);
    assert_eq!(
        system.vm("a").unwrap().cache_colours,
        Some(vec![0, 1, 2, 3])
    );
    assert_eq!(system.vm("b").unwrap().cache_colours, None);
}

#[test]
fn a_description_without_llc_has_none_and_no_colours() {
    let system = Scratch::new().parse(&vm("a", "")).unwrap();

    assert_eq!(system.llc(), None);
    assert_eq!(system.vms()[0].cache_colours, None);
}

#[test]
fn cache_colours_without_an_llc_are_refused() {
    let e = Scratch::new().error(&vm("a", "cache_colours = [0]"));

    assert_eq!(
        e,
        "vm \"a\": cache_colours: given, but [system] llc is not (the colour count comes from the last-level cache, e.g. llc = { size = \"1M\", ways = 16 })"
    );
}

#[test]
fn an_llc_whose_colour_count_is_not_a_power_of_two_is_refused() {
    // 768 KiB / 16 ways / 4 KiB = 12 colours.
    let e = Scratch::new().error(&format!(
        "[system]\nllc = {{ size = \"768K\", ways = 16 }}\n{}",
        vm("a", "")
    ));

    assert_eq!(
        e,
        "system: llc: 786432 bytes / 16 ways / 4 KiB pages = 12 colours; the colour count must be a whole power of two in 2..=16384"
    );
}

#[test]
fn an_llc_with_a_single_colour_is_refused() {
    let e = Scratch::new().error(&format!(
        "[system]\nllc = {{ size = \"64K\", ways = 16 }}\n{}",
        vm("a", "")
    ));

    assert!(e.contains("= 1 colours;"), "{e}");
}

#[test]
fn an_llc_size_that_is_no_whole_number_of_pages_per_way_is_refused() {
    // 520 KiB / 16 ways = 32.5 KiB a way.
    let e = Scratch::new().error(&format!(
        "[system]\nllc = {{ size = \"520K\", ways = 16 }}\n{}",
        vm("a", "")
    ));

    assert!(e.starts_with("system: llc: 532480 bytes / 16 ways"), "{e}");
}

#[test]
fn an_llc_with_zero_ways_is_refused() {
    let e = Scratch::new().error(&format!(
        "[system]\nllc = {{ size = \"512K\", ways = 0 }}\n{}",
        vm("a", "")
    ));

    assert_eq!(e, "system: llc: ways: 0 is out of range (1..=1024)");
}

#[test]
fn an_llc_with_an_unknown_key_is_refused() {
    let e = Scratch::new().error(&format!(
        "[system]\nllc = {{ size = \"512K\", ways = 16, line = 64 }}\n{}",
        vm("a", "")
    ));

    assert!(e.contains("unknown field \"line\""), "{e}");
}

#[test]
fn a_colour_beyond_the_llcs_colours_is_refused() {
    let e = Scratch::new().error(&format!("{LLC}{}", vm("a", "cache_colours = [2, 8]")));

    assert_eq!(
        e,
        "vm \"a\": cache_colours: colour 8 is out of range (the llc has 8 colours: 0..=7)"
    );
}

#[test]
fn a_negative_colour_is_refused() {
    let e = Scratch::new().error(&format!("{LLC}{}", vm("a", "cache_colours = [-1]")));

    assert!(
        e.starts_with("vm \"a\": cache_colours: -1 is out of range"),
        "{e}"
    );
}

#[test]
fn a_colour_listed_twice_is_refused() {
    let e = Scratch::new().error(&format!("{LLC}{}", vm("a", "cache_colours = [1, 3, 1]")));

    assert_eq!(e, "vm \"a\": cache_colours: colour 1 is listed twice");
}

#[test]
fn an_empty_colour_list_is_refused() {
    let e = Scratch::new().error(&format!("{LLC}{}", vm("a", "cache_colours = []")));

    assert_eq!(
        e,
        "vm \"a\": cache_colours: the list is empty (leave the key out for uncoloured RAM)"
    );
}

#[test]
fn two_vms_sharing_a_colour_are_refused_naming_both_and_the_colour() {
    let e = Scratch::new().error(&format!(
        "{LLC}{}{}",
        vm("a", "cache_colours = [0, 1, 2]"),
        vm("b", "cache_colours = [3, 2]")
    ));

    assert_eq!(
        e,
        "vm \"b\": cache_colours: colour 2 is also given to vm \"a\" (VMs sharing a colour share cache sets, which colouring is meant to prevent)"
    );
}

#[test]
fn vms_with_disjoint_colours_and_an_uncoloured_vm_are_accepted() {
    let system = Scratch::new()
        .parse(&format!(
            "{LLC}{}{}{}",
            vm("a", "cache_colours = [0, 1, 2, 3]"),
            vm("b", "cache_colours = [4, 5, 6, 7]"),
            vm("c", "")
        ))
        .unwrap();

    assert_eq!(system.vms().len(), 3);
}
