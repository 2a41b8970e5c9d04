//! Control VMs in the system description: `[[vm.control]]` (a target VM and the rights on
//! it) and pool slots (`start = false`), parsed and validated.

mod common;

use common::Scratch;
use keel_spec::{ControlRight, ControlSpec};

/// A 64 MiB x86_64 VM named `name` with extra TOML after its keys.
fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\n{extra}\n"
    )
}

fn control(target: &str, rights: &str) -> String {
    format!("[[vm.control]]\nvm = \"{target}\"\nrights = [{rights}]\n")
}

#[test]
fn control_rights_are_parsed_into_the_model_in_order() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("ctl", &control("web", "\"stop\", \"status\"")),
        vm("web", "")
    );

    let system = s.parse(&text).unwrap();

    assert_eq!(
        system.vm("ctl").unwrap().control,
        [ControlSpec {
            vm: "web".into(),
            rights: vec![ControlRight::Stop, ControlRight::Status]
        }]
    );
}

#[test]
fn a_vm_starts_unless_it_says_start_false() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("ctl", &control("web", "\"start\"")),
        vm("web", "start = false")
    );

    let system = s.parse(&text).unwrap();

    assert!(system.vm("ctl").unwrap().start);
    assert!(!system.vm("web").unwrap().start);
}

#[test]
fn an_unknown_right_is_refused_naming_the_rights() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("ctl", &control("web", "\"create\"")),
        vm("web", "")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "ctl": control 0: rights: "create" is not one of "start", "stop", "restart", "status""#
    );
}

#[test]
fn a_target_that_is_not_a_vm_is_refused_naming_the_vms() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("ctl", &control("wbe", "\"stop\"")),
        vm("web", "")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "ctl": control 0: vm: "wbe" is not a VM of this system (VMs: "ctl", "web")"#
    );
}

#[test]
fn a_vm_controlling_itself_is_refused() {
    let s = Scratch::new();
    let text = vm("ctl", &control("ctl", "\"status\""));

    assert_eq!(
        s.error(&text),
        r#"vm "ctl": control 0: vm: "ctl" is this VM itself (a VM cannot control itself)"#
    );
}

#[test]
fn one_target_named_twice_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm(
            "ctl",
            &format!(
                "{}{}",
                control("web", "\"stop\""),
                control("web", "\"start\"")
            )
        ),
        vm("web", "")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "ctl": control 1: vm: "web" is already controlled by control 0"#
    );
}

#[test]
fn empty_rights_are_refused() {
    let s = Scratch::new();
    let text = format!("{}{}", vm("ctl", &control("web", "")), vm("web", ""));

    assert_eq!(
        s.error(&text),
        r#"vm "ctl": control 0: rights: empty (give at least one of "start", "stop", "restart", "status")"#
    );
}

#[test]
fn a_right_given_twice_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("ctl", &control("web", "\"stop\", \"stop\"")),
        vm("web", "")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "ctl": control 0: rights: "stop" is given twice"#
    );
}

#[test]
fn a_pool_slot_nobody_may_start_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm("ctl", &control("web", "\"stop\", \"status\"")),
        vm("web", "start = false")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "web": start = false, but no VM holds the "start" right on it ([[vm.control]]), so nothing could ever start it"#
    );
}

#[test]
fn an_unknown_key_in_a_control_entry_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "{}{}",
        vm(
            "ctl",
            "[[vm.control]]\nvm = \"web\"\nrights = [\"stop\"]\npool = true\n"
        ),
        vm("web", "")
    );

    assert_eq!(
        s.error(&text),
        r#"line 9, column 1: unknown field "pool", expected "vm" or "rights""#
    );
}
