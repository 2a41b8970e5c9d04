//! Guest memory shared between VMs in the system description: `[[shared]]`,
//! `[[vm.shared]]`, their validation and their plan.

mod common;

use common::Scratch;
use keel_spec::plan::{plan, plan_vm, plan_vm_of};
use keel_spec::{Access, SharedMapPlan};

/// A 64 MiB x86_64 VM named `name` (RAM 0..64M, device window 0xc000_0000..4G) with
/// extra TOML after its keys.
fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\n{extra}\n"
    )
}

fn map(region: &str, base: &str, access: Option<&str>) -> String {
    let access = access.map_or(String::new(), |a| format!("access = \"{a}\"\n"));
    format!("[[vm.shared]]\nregion = \"{region}\"\nbase = \"{base}\"\n{access}")
}

const REGION_X: &str = "[[shared]]\nname = \"x\"\nsize = \"64K\"\n";

#[test]
fn shared_region_and_its_mappings_are_parsed_into_the_model() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}{}",
        vm("a", &map("x", "0x8000_0000", Some("rw"))),
        vm("b", &map("x", "0x9000_0000", Some("ro")))
    );

    let system = s.parse(&text).unwrap();

    assert_eq!(system.shared()[0].name, "x");
    assert_eq!(system.shared()[0].size, 64 << 10);
    let b = &system.vm("b").unwrap().shared[0];
    assert_eq!(
        (b.region.as_str(), b.base, b.access),
        ("x", 0x9000_0000, Access::ReadOnly)
    );
}

#[test]
fn mapping_access_defaults_to_read_write() {
    let s = Scratch::new();
    let text = format!("{REGION_X}{}", vm("a", &map("x", "0x8000_0000", None)));

    let system = s.parse(&text).unwrap();

    assert_eq!(system.vm("a").unwrap().shared[0].access, Access::ReadWrite);
}

#[test]
fn mapping_of_an_undeclared_region_is_refused_naming_the_declared_ones() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}{}",
        vm("a", &map("x", "0x8000_0000", None)),
        vm("b", &map("y", "0x8000_0000", None))
    );

    assert_eq!(
        s.error(&text),
        r#"vm "b": shared 0: region: "y" is not declared (declared: "x")"#
    );
}

#[test]
fn mapping_without_any_region_declared_says_none_is() {
    let s = Scratch::new();
    let text = vm("a", &map("x", "0x8000_0000", None));

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: region: "x" is not declared (declared: none)"#
    );
}

#[test]
fn mapping_over_the_vms_ram_is_refused() {
    let s = Scratch::new();
    let text = format!("{REGION_X}{}", vm("a", &map("x", "0x3ff_0000", None)));

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: region "x" at 0x3ff0000+64K overlaps ram 0 (0x0+64M)"#
    );
}

#[test]
fn mapping_in_the_device_window_is_refused() {
    let s = Scratch::new();
    let text = format!("{REGION_X}{}", vm("a", &map("x", "0xd000_0000", None)));

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: region "x" at 0xd0000000+64K overlaps the x86_64 device window 0xc0000000..0x100000000"#
    );
}

#[test]
fn aarch64_mapping_over_the_gic_and_uart_window_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}[[vm]]\nname = \"a\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"64M\"\n{}",
        map("x", "0x0900_0000", None)
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: region "x" at 0x9000000+64K overlaps the aarch64 device window 0x0..0x40000000"#
    );
}

#[test]
fn two_mappings_overlapping_in_one_vm_are_refused() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}[[shared]]\nname = \"y\"\nsize = \"8K\"\n{}",
        vm(
            "a",
            &format!(
                "{}{}",
                map("x", "0x8000_0000", None),
                map("y", "0x8000_f000", None)
            )
        )
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 1: region "y" at 0x8000f000+8K overlaps shared 0 (region "x" at 0x80000000+64K)"#
    );
}

#[test]
fn one_region_mapped_twice_by_one_vm_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}",
        vm(
            "a",
            &format!(
                "{}{}",
                map("x", "0x8000_0000", None),
                map("x", "0x9000_0000", Some("ro"))
            )
        )
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 1: region: "x" is already mapped by shared 0"#
    );
}

#[test]
fn unaligned_mapping_base_is_refused() {
    let s = Scratch::new();
    let text = format!("{REGION_X}{}", vm("a", &map("x", "0x8000_0800", None)));

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: base: 0x80000800 is not a multiple of 4 KiB"#
    );
}

#[test]
fn region_size_that_is_not_whole_pages_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[shared]]\nname = \"x\"\nsize = 5000\n{}",
        vm("a", &map("x", "0x8000_0000", None))
    );

    assert_eq!(
        s.error(&text),
        r#"shared "x": size: 0x1388 is not a multiple of 4 KiB"#
    );
}

#[test]
fn empty_region_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[shared]]\nname = \"x\"\nsize = 0\n{}",
        vm("a", &map("x", "0x8000_0000", None))
    );

    assert_eq!(
        s.error(&text),
        r#"shared "x": size: 0 is too small (at least 4 KiB)"#
    );
}

#[test]
fn region_no_vm_maps_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}[[shared]]\nname = \"y\"\nsize = \"4K\"\n{}",
        vm("a", &map("x", "0x8000_0000", None))
    );

    assert_eq!(
        s.error(&text),
        r#"shared "y": region "y" is mapped by no VM (add a [[vm.shared]] naming it, or remove it)"#
    );
}

#[test]
fn two_regions_with_one_name_are_refused() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{REGION_X}{}",
        vm("a", &map("x", "0x8000_0000", None))
    );

    assert_eq!(
        s.error(&text),
        r#"shared "x": name "x" is used by two shared regions"#
    );
}

#[test]
fn mapping_stating_another_size_than_the_regions_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}",
        vm(
            "a",
            &format!("{}size = \"128K\"\n", map("x", "0x8000_0000", None))
        )
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: size: 128K does not match region "x", declared with size 64K"#
    );
}

#[test]
fn unknown_access_is_refused_naming_the_choices() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}",
        vm("a", &map("x", "0x8000_0000", Some("wo")))
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: access: "wo" is not one of "rw", "ro""#
    );
}

#[test]
fn mapping_past_the_guest_physical_limit_is_refused() {
    let s = Scratch::new();
    let text = format!("{REGION_X}{}", vm("a", &map("x", "0xff_ffff_f000", None)));

    assert_eq!(
        s.error(&text),
        r#"vm "a": shared 0: region "x" at 0xfffffff000+64K overlaps the guest-physical limit 0x10000000000 (it must end below it)"#
    );
}

#[test]
fn plan_gives_each_vm_its_mappings_with_the_regions_size() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}{}{}",
        vm("a", &map("x", "0x8000_0000", None)),
        vm("b", &map("x", "0x9000_0000", Some("ro"))),
        vm("c", "")
    );
    let system = s.parse(&text).unwrap();

    let b = plan_vm_of(&system, system.vm("b").unwrap()).unwrap();
    let c = plan_vm_of(&system, system.vm("c").unwrap()).unwrap();

    assert_eq!(
        b.shared,
        vec![SharedMapPlan {
            region: "x".into(),
            base: 0x9000_0000,
            size: 64 << 10,
            access: Access::ReadOnly,
        }]
    );
    assert!(c.shared.is_empty());
}

#[test]
fn plan_lists_each_regions_users_in_file_order() {
    let s = Scratch::new();
    let text = format!(
        "{REGION_X}{}{}{}",
        vm("a", &map("x", "0x8000_0000", None)),
        vm("c", ""),
        vm("b", &map("x", "0x9000_0000", Some("ro")))
    );
    let system = s.parse(&text).unwrap();

    let p = plan(&system).unwrap();

    let users: Vec<(&str, u64, Access)> = p.shared[0]
        .users
        .iter()
        .map(|(vm, m)| (vm.as_str(), m.base, m.access))
        .collect();
    assert_eq!(
        users,
        vec![
            ("a", 0x8000_0000, Access::ReadWrite),
            ("b", 0x9000_0000, Access::ReadOnly)
        ]
    );
}

#[test]
fn vm_with_shared_regions_planned_without_its_system_is_refused() {
    let s = Scratch::new();
    let text = format!("{REGION_X}{}", vm("a", &map("x", "0x8000_0000", None)));
    let system = s.parse(&text).unwrap();

    let e = plan_vm(system.vm("a").unwrap()).unwrap_err();

    assert_eq!(
        e.to_string(),
        r#"vm "a": shared region "x" is not declared"#
    );
}

#[test]
fn mapping_contains_exactly_its_pages() {
    let m = SharedMapPlan {
        region: "x".into(),
        base: 0x8000_0000,
        size: 0x1000,
        access: Access::ReadOnly,
    };

    assert_eq!(
        [
            m.contains(0x7fff_ffff),
            m.contains(0x8000_0000),
            m.contains(0x8000_0fff),
            m.contains(0x8000_1000)
        ],
        [false, true, true, false]
    );
}
