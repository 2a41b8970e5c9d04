//! virtio-vsock in the system description: `[vm.vsock]`, `[vsock] allow`, and their plan.

mod common;

use common::Scratch;
use keel_spec::plan::{DeviceKind, plan_vm, plan_vm_of};
use keel_spec::{VsockPeerPlan, VsockPlan};

/// A VM named `name` with the given extra TOML appended after its keys.
fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\n{extra}\n"
    )
}

fn vsock(cid: u32) -> String {
    format!("[vm.vsock]\ncid = {cid}")
}

#[test]
fn vsock_cid_and_socket_are_parsed_and_the_socket_resolved_against_the_file() {
    let s = Scratch::new();
    let text = vm("a", "[vm.vsock]\ncid = 3\nsocket = \"a.vsock\"");

    let system = s.parse(&text).unwrap();

    let v = system.vm("a").unwrap().vsock.clone().unwrap();
    assert_eq!(v.cid, 3);
    assert_eq!(v.socket.unwrap().as_str(), s.path("a.vsock"));
}

#[test]
fn vsock_device_comes_last_in_the_plan_with_its_cid_and_socket() {
    let s = Scratch::new();
    let text = vm(
        "a",
        "[vm.rng]\n[vm.vsock]\ncid = 42\nsocket = \"/run/a.sock\"",
    );
    let system = s.parse(&text).unwrap();

    let plan = plan_vm(system.vm("a").unwrap()).unwrap();

    let kinds: Vec<DeviceKind> = plan.devices.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DeviceKind::Rng, DeviceKind::Vsock]);
    assert_eq!(
        plan.vsock,
        Some(VsockPlan {
            cid: 42,
            socket: Some("/run/a.sock".into()),
            peers: vec![],
        })
    );
}

#[test]
fn a_vm_without_vsock_plans_no_vsock_device() {
    let s = Scratch::new();
    let system = s.parse(&vm("a", "")).unwrap();

    let plan = plan_vm(system.vm("a").unwrap()).unwrap();

    assert!(plan.devices.iter().all(|d| d.kind != DeviceKind::Vsock));
    assert_eq!(plan.vsock, None);
}

#[test]
fn allowed_pairs_become_peers_of_both_vms_and_no_one_else() {
    let s = Scratch::new();
    let text = format!(
        "[vsock]\nallow = [[\"a\", \"b\"]]\n{}{}{}",
        vm("a", &vsock(3)),
        vm("b", &vsock(4)),
        vm("c", &vsock(5))
    );
    let system = s.parse(&text).unwrap();

    let a = plan_vm_of(&system, system.vm("a").unwrap()).unwrap();
    let b = plan_vm_of(&system, system.vm("b").unwrap()).unwrap();
    let c = plan_vm_of(&system, system.vm("c").unwrap()).unwrap();

    assert_eq!(
        a.vsock.unwrap().peers,
        [VsockPeerPlan {
            pair: 0,
            vm: "b".into(),
            cid: 4,
            first: true
        }]
    );
    assert_eq!(
        b.vsock.unwrap().peers,
        [VsockPeerPlan {
            pair: 0,
            vm: "a".into(),
            cid: 3,
            first: false
        }]
    );
    assert_eq!(c.vsock.unwrap().peers, []);
    assert_eq!(system.vsock_allow(), [("a".into(), "b".into())]);
}

#[test]
fn vsock_allow_defaults_to_no_pairs() {
    let s = Scratch::new();
    let text = format!("{}{}", vm("a", &vsock(3)), vm("b", &vsock(4)));

    let system = s.parse(&text).unwrap();

    assert!(system.vsock_allow().is_empty());
}

#[test]
fn reserved_cids_are_refused() {
    let s = Scratch::new();
    for cid in [0u32, 1, 2, u32::MAX] {
        let e = s.error(&vm("a", &vsock(cid)));
        assert_eq!(
            e,
            format!(
                "vm \"a\": vsock: cid: {cid} is out of range (3..=4294967294 (0, 1 and 2 are reserved, 2 is the host))"
            )
        );
    }
}

#[test]
fn a_negative_or_too_large_cid_is_refused() {
    let s = Scratch::new();

    let e = s.error(&vm("a", "[vm.vsock]\ncid = -1"));

    assert!(e.contains("cid: -1 is out of range"), "{e}");
    let e = s.error(&vm("a", "[vm.vsock]\ncid = 4294967296"));
    assert!(e.contains("cid: 4294967296 is out of range"), "{e}");
}

#[test]
fn a_cid_used_twice_is_refused_naming_both_vms() {
    let s = Scratch::new();
    let text = format!("{}{}", vm("a", &vsock(7)), vm("b", &vsock(7)));

    let e = s.error(&text);

    assert_eq!(
        e,
        "vm \"b\": vsock: cid 7 is already vm \"a\"'s (each guest needs its own)"
    );
}

#[test]
fn a_pair_naming_an_unknown_vm_is_refused() {
    let s = Scratch::new();
    let text = format!("[vsock]\nallow = [[\"a\", \"x\"]]\n{}", vm("a", &vsock(3)));

    let e = s.error(&text);

    assert_eq!(
        e,
        "vsock: allow: \"x\" is not a VM of this system (VMs with vsock: \"a\")"
    );
}

#[test]
fn a_pair_naming_a_vm_without_vsock_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[vsock]\nallow = [[\"a\", \"b\"]]\n{}{}",
        vm("a", &vsock(3)),
        vm("b", "")
    );

    let e = s.error(&text);

    assert_eq!(e, "vsock: allow: vm \"b\" has no [vm.vsock]");
}

#[test]
fn a_pair_of_one_vm_with_itself_is_refused() {
    let s = Scratch::new();
    let text = format!("[vsock]\nallow = [[\"a\", \"a\"]]\n{}", vm("a", &vsock(3)));

    let e = s.error(&text);

    assert_eq!(
        e,
        "vsock: allow: pair (\"a\", \"a\") names the same member twice"
    );
}

#[test]
fn a_pair_given_twice_in_either_order_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[vsock]\nallow = [[\"a\", \"b\"], [\"b\", \"a\"]]\n{}{}",
        vm("a", &vsock(3)),
        vm("b", &vsock(4))
    );

    let e = s.error(&text);

    assert_eq!(
        e,
        "vsock: allow: pair (\"b\", \"a\") is given twice (pairs are symmetric)"
    );
}

#[test]
fn unknown_vsock_keys_are_refused() {
    let s = Scratch::new();

    let e = s.error(&vm("a", "[vm.vsock]\ncid = 3\nport = 1"));

    assert_eq!(
        e,
        "line 8, column 1: unknown field \"port\", expected \"cid\" or \"socket\""
    );
}
