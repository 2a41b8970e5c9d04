//! The example files in `examples/` follow the schema (host files are not checked: the
//! images they name are built by other tools).

use std::path::{Path, PathBuf};

use keel_spec::{Arch, CpuSet, Loader, Memory, System};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn env(var: &str) -> Option<String> {
    (var == "KEEL_CACHE").then(|| "/cache".to_string())
}

fn load(name: &str) -> System {
    let loader = Loader::new().env(&env).host_checks(false);
    match loader.load(&examples_dir().join(name)) {
        Ok(system) => system,
        Err(e) => panic!("examples/{name}: {e}"),
    }
}

#[test]
fn every_example_parses() {
    let mut count = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(path.file_name().unwrap().to_str().unwrap());
            count += 1;
        }
    }
    assert!(count >= 3, "only {count} examples found");
}

#[test]
fn test_guest_example_points_at_the_built_test_guest() {
    let system = load("test-guest.toml");
    let vm = system.vm("testguest").unwrap();
    assert!(vm.kernel.as_str().ends_with(
        "examples/../guest/testguest/target/x86_64-unknown-none/release/keel-testguest"
    ));
    assert_eq!(vm.disks[0].path.as_str(), "/cache/disks/test-guest.img");
}

#[test]
fn linux_example_uses_the_cached_guest_images() {
    let system = load("linux.toml");
    let vm = &system.vms()[0];
    assert_eq!(vm.arch, Arch::X86_64);
    assert_eq!(vm.kernel.as_str(), "/cache/guest/x86_64/vmlinuz");
    assert_eq!(
        vm.initrd.as_ref().unwrap().as_str(),
        "/cache/guest/x86_64/initrd.cpio.gz"
    );
}

#[test]
fn pinned_example_has_two_vms_on_their_own_pcpus() {
    let system = load("pinned-vms.toml");
    assert_eq!(system.name(), "pinned");
    assert_eq!(system.vms().len(), 2);
    assert_eq!(system.vm("db").unwrap().memory, Memory::Size(512 << 20));
    assert_eq!(
        system.vm("web").unwrap().placement.as_ref().unwrap().pcpus,
        Some(vec![CpuSet::one(0), CpuSet::one(1)])
    );
}

#[test]
fn demo_example_is_the_arm64_linux_vm_of_make_run() {
    let system = load("demo.toml");
    let vm = system.vm("demo").unwrap();
    assert_eq!(vm.arch, Arch::Aarch64);
    assert_eq!(vm.vcpus, 2);
    assert_eq!(vm.kernel.as_str(), "/cache/guest/arm64/vmlinuz");
    assert!(vm.cmdline.contains("keel.cmd="));
}

#[test]
fn net_example_puts_a_and_b_on_one_network() {
    let system = load("net-linux-arm64.toml");
    let names: Vec<&str> = system.networks().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["lan"]);
    for (name, mac) in [("a", "02:00:00:00:00:0a"), ("b", "02:00:00:00:00:0b")] {
        let vm = system.vm(name).unwrap();
        assert_eq!((vm.arch, vm.vcpus), (Arch::Aarch64, 1));
        assert_eq!(vm.nics.len(), 1);
        assert_eq!(vm.nics[0].network, "lan");
        assert_eq!(vm.nics[0].mac.unwrap().to_string(), mac);
    }
}

#[test]
fn colour_example_gives_its_vm_half_of_a_16_colour_llc() {
    let s = load("sel4-colour.toml");

    assert_eq!(s.llc().map(|l| l.colours()), Some(16));
    assert_eq!(s.vms()[0].cache_colours, Some(vec![0, 1, 2, 3, 4, 5, 6, 7]));
}
