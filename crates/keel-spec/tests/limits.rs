//! `[limits]` (the admin's dynamic pool) and each VM's `restart` policy.

mod common;

use common::{Scratch, x86_vm};
use keel_spec::{HostPath, Restart};

const NET: &str = "\n[[network]]\nname = \"lan\"\n";

fn with_limits(limits: &str) -> String {
    format!("{}{NET}\n[limits]\n{limits}\n", x86_vm(""))
}

#[test]
fn restart_defaults_to_never() {
    let s = Scratch::new();

    let system = s.parse(&x86_vm("")).unwrap();

    assert_eq!(system.vms()[0].restart, Restart::Never);
}

#[test]
fn restart_policies_are_parsed_by_name() {
    let s = Scratch::new();
    for (text, policy) in [
        ("never", Restart::Never),
        ("on-failure", Restart::OnFailure),
        ("always", Restart::Always),
    ] {
        let system = s.parse(&x86_vm(&format!("restart = \"{text}\""))).unwrap();

        assert_eq!(system.vms()[0].restart, policy, "{text}");
    }
}

#[test]
fn unknown_restart_policy_is_rejected_naming_the_value_and_choices() {
    let s = Scratch::new();

    let e = s.error(&x86_vm("restart = \"sometimes\""));

    assert_eq!(
        e,
        r#"vm "web": restart: "sometimes" is not one of "never", "on-failure", "always""#
    );
}

#[test]
fn a_system_without_limits_allows_no_dynamic_vm() {
    let s = Scratch::new();

    let system = s.parse(&x86_vm("")).unwrap();

    assert!(system.limits().is_none());
}

#[test]
fn limits_are_parsed_with_paths_resolved_against_the_file() {
    let s = Scratch::new();
    let text = with_limits(
        "max_vms = 4\nmemory = \"1G\"\nvcpus = 8\nkernels = [\"vmlinux\"]\ninitrds = [\"initrd.cpio\"]\ndisks = [\"/srv/d.img\"]\nnetworks = [\"lan\"]",
    );

    let system = s.parse(&text).unwrap();

    let l = system.limits().unwrap();
    assert_eq!((l.max_vms, l.memory, l.vcpus), (4, 1 << 30, 8));
    assert_eq!(l.kernels, vec![HostPath::new(s.path("vmlinux"))]);
    assert_eq!(l.initrds, vec![HostPath::new(s.path("initrd.cpio"))]);
    assert_eq!(l.disks, vec![HostPath::new("/srv/d.img")]);
    assert_eq!(l.networks, vec!["lan".to_string()]);
}

#[test]
fn limits_lists_default_to_empty() {
    let s = Scratch::new();

    let system = s
        .parse(&with_limits("max_vms = 1\nmemory = \"64M\"\nvcpus = 1"))
        .unwrap();

    let l = system.limits().unwrap();
    assert!(l.kernels.is_empty() && l.initrds.is_empty() && l.disks.is_empty());
    assert!(l.networks.is_empty());
}

#[test]
fn too_many_dynamic_vms_are_rejected_naming_the_value() {
    let s = Scratch::new();

    let e = s.error(&with_limits("max_vms = 5000\nmemory = \"1G\"\nvcpus = 1"));

    assert_eq!(e, "limits: max_vms: 5000 is out of range (0..=1024)");
}

#[test]
fn negative_pool_vcpus_are_rejected_naming_the_value() {
    let s = Scratch::new();

    let e = s.error(&with_limits("max_vms = 1\nmemory = \"1G\"\nvcpus = -1"));

    assert_eq!(e, "limits: vcpus: -1 is out of range (0..=65536)");
}

#[test]
fn pool_memory_must_be_a_size() {
    let s = Scratch::new();

    let e = s.error(&with_limits("max_vms = 1\nmemory = \"lots\"\nvcpus = 1"));

    assert!(
        e.starts_with("limits: memory: \"lots\" is not a size"),
        "{e}"
    );
}

#[test]
fn unaligned_pool_memory_is_rejected() {
    let s = Scratch::new();

    let e = s.error(&with_limits("max_vms = 1\nmemory = 4097\nvcpus = 1"));

    assert_eq!(e, "limits: memory: 0x1001 is not a multiple of 4 KiB");
}

#[test]
fn an_undeclared_pool_network_is_rejected_naming_it() {
    let s = Scratch::new();

    let e = s.error(&with_limits(
        "max_vms = 1\nmemory = \"64M\"\nvcpus = 1\nnetworks = [\"wan\"]",
    ));

    assert_eq!(
        e,
        r#"limits: networks: network: "wan" is not declared (declared: "lan")"#
    );
}

#[test]
fn an_unknown_limits_key_is_rejected() {
    let s = Scratch::new();

    let e = s.error(&with_limits(
        "max_vms = 1\nmemory = \"64M\"\nvcpus = 1\nmax_disks = 2",
    ));

    assert!(e.contains("unknown field \"max_disks\""), "{e}");
}
