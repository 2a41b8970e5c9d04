//! KVM and seL4 build a VM from the same plan: the plan the seL4 payload carries to the
//! VMM protection domain is exactly `keel_spec::plan::plan_vm` of the description, the one
//! keel-kvm builds from. So every device has the same slot, window and interrupt on both.
#![cfg(feature = "host")]

use std::path::{Path, PathBuf};

use keel_sel4::host::vm_payload;
use keel_sel4::payload;
use keel_spec::System;
use keel_spec::plan::plan_vm_of;

/// `examples/<file>` with `${KEEL_CACHE}` in a scratch directory where every kernel,
/// initrd and disk it names exists (a few bytes each: the payload only copies them).
fn example(file: &str) -> System {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plan-parity-{file}"));
    let cache_str = cache.display().to_string();
    let env = move |var: &str| (var == "KEEL_CACHE").then(|| cache_str.clone());
    let system = keel_spec::Loader::new()
        .env(&env)
        .host_checks(false)
        .load(&repo.join("examples").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    for vm in system.vms() {
        let files = std::iter::once(vm.kernel.as_path())
            .chain(vm.initrd.iter().map(|p| p.as_path()))
            .chain(vm.disks.iter().map(|d| d.path.as_path()));
        for f in files {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"keel").unwrap();
        }
    }
    system
}

/// The plan the seL4 payload of VM `index` of its system carries.
fn sel4_plan(system: &System, index: usize) -> keel_spec::VmPlan {
    let bytes = vm_payload(system, index, Vec::new(), false).unwrap();
    payload::parse(&bytes).unwrap().plan
}

fn assert_sel4_carries_the_kvm_plan(file: &str) {
    let system = example(file);

    for (index, vm) in system.vms().iter().enumerate() {
        let kvm = plan_vm_of(&system, vm).unwrap();
        let sel4 = sel4_plan(&system, index);

        assert_eq!(sel4, kvm, "{file}: vm {}", vm.name);
    }
}

#[test]
fn sel4_devices_example_has_the_kvm_plan_on_sel4() {
    assert_sel4_carries_the_kvm_plan("sel4-devices.toml");
}

#[test]
fn sel4_two_vms_example_has_the_kvm_plan_on_sel4_for_each_vm() {
    assert_sel4_carries_the_kvm_plan("sel4-two-vms.toml");
}

#[test]
fn demo_example_has_the_kvm_plan_on_sel4() {
    assert_sel4_carries_the_kvm_plan("demo.toml");
}

#[test]
fn disk_console_and_rng_of_the_devices_example_sit_in_slots_0_to_2_on_sel4() {
    let system = example("sel4-devices.toml");

    let plan = sel4_plan(&system, 0);

    let placed: Vec<_> = plan
        .devices
        .iter()
        .map(|d| (d.kind.virtio_name(), d.slot, d.base, d.irq))
        .collect();
    assert_eq!(
        placed,
        [
            ("virtio-blk", 0, 0x0a00_0000, 16),
            ("virtio-console", 1, 0x0a00_0200, 17),
            ("virtio-rng", 2, 0x0a00_0400, 18),
        ]
    );
}
