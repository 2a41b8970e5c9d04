//! Passed-through devices in the system description: `[[vm.passthrough]]` and
//! `ram_phys_addr`, their validation and their plan (the board checks are in
//! `microkit.rs`'s tests).

mod common;

use common::Scratch;
use keel_spec::plan::plan_vm;
use keel_spec::{Dma, PassthroughPlan};

/// A 256 MiB aarch64 VM named `name` (RAM 0x4000_0000..0x5000_0000) with extra TOML.
fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"256M\"\n{extra}\n"
    )
}

/// The QEMU virtio-mmio transport in slot 31 (page 0x0a003000, INTID 79).
const DISK: &str = "[[vm.passthrough]]\nname = \"disk0\"\nmmio = [{ base = \"0x0a003000\", size = \"4K\" }]\nirqs = [79]\ndt = \"virtio,mmio\"\ndt_reg = [{ base = \"0x0a003e00\", size = \"0x200\" }]\n";

fn pt(name: &str, mmio: &str, irqs: &str, more: &str) -> String {
    format!("[[vm.passthrough]]\nname = \"{name}\"\nmmio = [{mmio}]\nirqs = [{irqs}]\n{more}")
}

#[test]
fn passthrough_is_parsed_into_the_model_and_planned_as_given() {
    let s = Scratch::new();
    let text = vm(
        "a",
        &format!("ram_phys_addr = \"0x40000000\"\n{DISK}dma = \"identity\"\n"),
    );

    let system = s.parse(&text).unwrap();

    let a = system.vm("a").unwrap();
    assert_eq!(a.ram_phys_addr, Some(0x4000_0000));
    let d = &a.passthrough[0];
    assert_eq!(
        (d.name.as_str(), d.irqs.as_slice(), d.dma),
        ("disk0", &[79][..], Dma::Identity)
    );
    assert_eq!(
        plan_vm(a).unwrap().passthrough,
        vec![PassthroughPlan {
            name: "disk0".into(),
            mmio: vec![(0x0a00_3000, 0x1000)],
            irqs: vec![79],
            dt: Some(("virtio,mmio".into(), vec![(0x0a00_3e00, 0x200)])),
            dma_identity: true,
        }]
    );
}

#[test]
fn dt_reg_defaults_to_the_mmio_ranges_and_dma_to_none() {
    let s = Scratch::new();
    let text = vm(
        "a",
        &pt(
            "rtc",
            "{ base = \"0x09010000\", size = \"4K\" }",
            "34",
            "dt = \"arm,pl031\"\n",
        ),
    );

    let system = s.parse(&text).unwrap();

    let d = &system.vm("a").unwrap().passthrough[0];
    assert_eq!(d.dt.as_ref().unwrap().reg, d.mmio);
    assert_eq!(d.dma, Dma::None);
}

#[test]
fn dma_without_identity_mapped_ram_is_refused() {
    let s = Scratch::new();

    assert_eq!(
        s.error(&vm("a", &format!("{DISK}dma = \"identity\"\n"))),
        r#"vm "a": passthrough "disk0": dma = "identity" needs the VM's RAM identity-mapped: set ram_phys_addr = 0x40000000 (its guest-physical base)"#
    );
    assert_eq!(
        s.error(&vm(
            "a",
            &format!("ram_phys_addr = \"0x50000000\"\n{DISK}dma = \"identity\"\n")
        )),
        r#"vm "a": passthrough "disk0": dma = "identity" needs the VM's RAM identity-mapped: set ram_phys_addr = 0x40000000 (its guest-physical base), not 0x50000000"#
    );
}

#[test]
fn one_device_in_two_vms_is_refused_naming_both() {
    let s = Scratch::new();
    let text = format!("{}{}", vm("a", DISK), vm("b", DISK));

    assert_eq!(
        s.error(&text),
        r#"vm "b": passthrough "disk0": mmio page 0xa003000 is also owned by vm "a": passthrough "disk0"; a device has one owner"#
    );
}

#[test]
fn one_interrupt_in_two_vms_is_refused_naming_both() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm(
            "a",
            &pt("x", "{ base = \"0x0a000000\", size = \"4K\" }", "48", "")
        ),
        vm(
            "b",
            &pt("y", "{ base = \"0x0a001000\", size = \"4K\" }", "48", "")
        )
    );

    assert_eq!(
        s.error(&text),
        r#"vm "b": passthrough "y": irq 48 is also owned by vm "a": passthrough "x"; a device has one owner"#
    );
}

#[test]
fn overlapping_fixed_ram_of_two_vms_is_refused_naming_both() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("a", "ram_phys_addr = \"0x40000000\"\n"),
        vm("b", "ram_phys_addr = \"0x48000000\"\n")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "b": physical RAM 0x48000000..0x58000000 (ram_phys_addr) is also owned by vm "a" (its RAM, ram_phys_addr); a device has one owner"#
    );
}

#[test]
fn badly_shaped_passthrough_is_refused_naming_the_value() {
    let s = Scratch::new();
    let cases = [
        (
            pt("x", "{ base = \"0x0a003100\", size = \"4K\" }", "79", ""),
            r#"vm "a": passthrough "x": mmio 0xa003100+0x1000: base and size must be multiples of 4 KiB (pages are mapped whole)"#,
        ),
        (
            pt("x", "{ base = \"0x0a003000\", size = 0 }", "79", ""),
            r#"vm "a": passthrough "x": mmio 0xa003000+0x0: empty"#,
        ),
        (
            pt("x", "{ base = \"0x0a003000\", size = \"4K\" }", "27", ""),
            r#"vm "a": passthrough "x": irqs: 27: not an SPI (GIC INTIDs 32..1020 can be passed through)"#,
        ),
        (
            pt(
                "x",
                "{ base = \"0x0a003000\", size = \"4K\" }",
                "79, 79",
                "",
            ),
            r#"vm "a": passthrough "x": irqs: 79: listed twice"#,
        ),
        (
            "[[vm.passthrough]]\nname = \"x\"\n".to_string(),
            r#"vm "a": passthrough "x": neither mmio nor irqs is given: nothing to pass through"#,
        ),
        (
            pt(
                "x",
                "{ base = \"0x0a003000\", size = \"4K\" }",
                "79",
                "dt = \"virtio,mmio\"\ndt_reg = [{ base = \"0x0a004000\", size = \"0x200\" }]\n",
            ),
            r#"vm "a": passthrough "x": dt_reg 0xa004000+0x200: not inside one of the device's mmio ranges"#,
        ),
        (
            pt(
                "x",
                "{ base = \"0x0a003000\", size = \"4K\" }",
                "79",
                "dma = \"yes\"\n",
            ),
            r#"vm "a": passthrough 0: dma: "yes" is not one of "none", "identity""#,
        ),
        (
            pt("X", "{ base = \"0x0a003000\", size = \"4K\" }", "79", ""),
            r#"vm "a": passthrough 0: name "X" is invalid (1 to 32 of a-z 0-9 -)"#,
        ),
        (
            format!(
                "{}{}",
                pt("x", "{ base = \"0x0a003000\", size = \"4K\" }", "79", ""),
                pt("x", "{ base = \"0x0a002000\", size = \"4K\" }", "78", "")
            ),
            r#"vm "a": passthrough "x": name "x" is used twice"#,
        ),
        (
            pt("x", "{ base = \"0x48000000\", size = \"4K\" }", "79", ""),
            r#"vm "a": passthrough "x": mmio 0x48000000+0x1000 overlaps ram 0 (0x40000000+256M)"#,
        ),
    ];
    for (extra, want) in cases {
        let got = s.error(&vm("a", &extra));
        assert_eq!(got, want, "for {extra}");
    }
}

#[test]
fn bad_ram_phys_addr_is_refused_naming_the_value() {
    let s = Scratch::new();

    assert_eq!(
        s.error(&vm("a", "ram_phys_addr = \"0x40100000\"\n")),
        r#"vm "a": ram_phys_addr: 0x40100000: not a multiple of 2 MiB (RAM is mapped in 2 MiB pages)"#
    );
}

#[test]
fn passthrough_on_the_vms_own_virtio_window_or_uart_irq_is_refused_by_the_plan() {
    let s = Scratch::new();
    let text = vm(
        "a",
        &format!(
            "[vm.rng]\n{}",
            pt("x", "{ base = \"0x0a000000\", size = \"4K\" }", "80", "")
        ),
    );
    let system = s.parse(&text).unwrap();

    assert_eq!(
        plan_vm(system.vm("a").unwrap()).unwrap_err().to_string(),
        r#"vm "a": passthrough "x": mmio 0xa000000+0x1000 is taken by the VM's own virtio device in slot 0 (0xa000000+0x200, irq 48)"#
    );

    let text = vm(
        "a",
        &pt("x", "{ base = \"0x0a003000\", size = \"4K\" }", "33", ""),
    );
    let system = s.parse(&text).unwrap();

    assert_eq!(
        plan_vm(system.vm("a").unwrap()).unwrap_err().to_string(),
        r#"vm "a": passthrough "x": irq 33 is taken by the VM's own UART (0x9000000+0x1000, irq 33)"#
    );
}
