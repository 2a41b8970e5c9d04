//! Disks served by a storage driver VM (`served_by`): parsing, refusals and the plan both
//! backends build from (docs/driver-vms.md).

mod common;

use common::Scratch;
use keel_spec::plan::{DeviceKind, FORWARD_WINDOW_BASE, plan};

/// A storage VM `store` with a 1 MiB disk, then `clients` (TOML of more `[[vm]]`s).
fn system(s: &Scratch, clients: &str) -> String {
    s.write("store.img", &vec![0u8; 1 << 20]);
    format!(
        "[[vm]]\nname = \"store\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"128M\"\ncmdline = \"quiet\"\n[[vm.disk]]\npath = \"store.img\"\nid = \"pool0\"\n{clients}"
    )
}

fn client(name: &str, disk: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"64M\"\n[[vm.disk]]\n{disk}\n"
    )
}

#[test]
fn two_clients_get_links_regions_in_the_storage_vm_and_its_agent_command_line() {
    let s = Scratch::new();
    let text = system(
        &s,
        &(client("a", "served_by = \"store\"\nsize = \"256K\"")
            + &client(
                "b",
                "served_by = \"store\"\nstart = \"512K\"\nsize = \"512K\"\nread_only = true",
            )),
    );

    let sys = s.parse(&text).unwrap();
    let p = plan(&sys).unwrap();

    let store = p.vm("store").unwrap();
    assert_eq!(store.serves.len(), 2);
    assert_eq!(store.serves[0].client, "a");
    assert_eq!(store.serves[0].gpa, FORWARD_WINDOW_BASE);
    assert!(store.serves[1].gpa >= FORWARD_WINDOW_BASE + store.serves[0].region_len);
    assert!(store.serves[1].read_only);
    assert_eq!(store.devices.last().unwrap().kind, DeviceKind::Doorbell);
    assert!(
        store.cmdline.starts_with("quiet keel.blk=0x8000000000,"),
        "{}",
        store.cmdline
    );
    assert!(
        store.cmdline.contains(",pool0,0x80000,0x80000,ro"),
        "{}",
        store.cmdline
    );
    assert!(
        store.cmdline.ends_with(" keel.blkbell=hvc0"),
        "{}",
        store.cmdline
    );
    // The regions are the storage VM's alone among the plan's shared regions.
    assert_eq!(
        store
            .shared
            .iter()
            .map(|m| m.region.as_str())
            .collect::<Vec<_>>(),
        ["fwd:0", "fwd:1"]
    );
    let a = p.vm("a").unwrap();
    let served = a.disks[0].served.as_ref().unwrap();
    assert_eq!(
        (served.link, served.size, served.server.as_str()),
        (0, 256 << 10, "store")
    );
    assert!(a.shared.is_empty() && a.serves.is_empty());
    assert_eq!(p.links.len(), 2);
    assert_eq!(p.links[1].server_index, 1);
}

#[test]
fn overlapping_ranges_of_one_disk_are_refused_naming_both_clients() {
    let s = Scratch::new();
    let text = system(
        &s,
        &(client("a", "served_by = \"store\"\nsize = \"256K\"")
            + &client(
                "b",
                "served_by = \"store\"\nstart = \"128K\"\nsize = \"256K\"",
            )),
    );

    assert_eq!(
        s.error(&text),
        "vm \"b\": disk 0: range [0x20000, 0x60000) of vm \"store\" disk 0 overlaps vm \"a\": disk 0's"
    );
}

#[test]
fn a_range_past_the_end_of_the_storage_disk_is_refused() {
    let s = Scratch::new();
    let text = system(
        &s,
        &client(
            "a",
            "served_by = \"store\"\nstart = \"768K\"\nsize = \"512K\"",
        ),
    );

    let e = s.error(&text);

    assert!(
        e.starts_with(
            "vm \"a\": disk 0: range [0xc0000, 0x140000) does not fit vm \"store\" disk 0 ("
        ),
        "{e}"
    );
    assert!(e.ends_with("store.img, 1048576 bytes)"), "{e}");
}

#[test]
fn served_disk_refusals_name_what_is_wrong() {
    let s = Scratch::new();
    let cases = [
        (
            "served_by = \"nobody\"\nsize = \"4K\"",
            "vm \"a\": disk 0: served_by: no vm is named \"nobody\"",
        ),
        (
            "served_by = \"a\"\nsize = \"4K\"",
            "vm \"a\": disk 0: served_by: vm \"a\" cannot serve its own disks",
        ),
        (
            "served_by = \"store\"\nserver_disk = 1\nsize = \"4K\"",
            "vm \"a\": disk 0: served_by: vm \"store\" has no disk 1 (it has 1)",
        ),
        (
            "served_by = \"store\"",
            "vm \"a\": disk 0: a disk served_by a storage VM needs size (its range's length)",
        ),
        (
            "path = \"disk.img\"\nserved_by = \"store\"\nsize = \"4K\"",
            "vm \"a\": disk 0: path and served_by are mutually exclusive: a disk is a host file or a range of a storage VM's disk",
        ),
        (
            "path = \"disk.img\"\nsize = \"4K\"",
            "vm \"a\": disk 0: server_disk, server_passthrough, start and size go with served_by, not with path",
        ),
        (
            "read_only = true",
            "vm \"a\": disk 0: give path (a host file) or served_by (a storage VM)",
        ),
        (
            "served_by = \"store\"\nsize = \"1000\"",
            "vm \"a\": disk 0: size: 1000 is not a multiple of 4 KiB",
        ),
        (
            "served_by = \"store\"\nstart = \"1K\"\nsize = \"4K\"",
            "vm \"a\": disk 0: start: 1024 is not a multiple of 4 KiB",
        ),
        (
            "served_by = \"store\"\nsize = 0",
            "vm \"a\": disk 0: size: 0 bytes: a served disk cannot be empty",
        ),
    ];
    for (disk, want) in cases {
        let text = system(&s, &client("a", disk));
        assert_eq!(s.error(&text), want, "for {disk:?}");
    }
}

#[test]
fn a_read_write_client_of_a_read_only_storage_disk_is_refused() {
    let s = Scratch::new();
    let text = system(&s, &client("a", "served_by = \"store\"\nsize = \"4K\""))
        .replace("id = \"pool0\"", "id = \"pool0\"\nread_only = true");

    assert_eq!(
        s.error(&text),
        "vm \"a\": disk 0: served_by: vm \"store\" disk 0 is read_only, so this disk must be read_only too"
    );
}

/// A storage VM whose disk is a passed-through device (no `[[vm.disk]]`).
fn passthrough_store(clients: &str) -> String {
    format!(
        "[[vm]]\nname = \"store\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"128M\"\ncmdline = \"quiet\"\nram_phys_addr = \"0x40000000\"\n[[vm.passthrough]]\nname = \"blk0\"\nmmio = [{{ base = \"0x0a003000\", size = \"4K\" }}]\nirqs = [79]\ndma = \"identity\"\n{clients}"
    )
}

#[test]
fn a_range_of_a_passed_through_device_is_served_under_the_devices_name_as_serial() {
    let s = Scratch::new();
    let text = passthrough_store(&client(
        "a",
        "served_by = \"store\"\nserver_passthrough = \"blk0\"\nstart = \"1M\"\nsize = \"256K\"",
    ));

    let sys = s.parse(&text).unwrap();
    let p = plan(&sys).unwrap();

    let store = p.vm("store").unwrap();
    assert_eq!(store.serves.len(), 1);
    assert!(
        store.cmdline.contains(",blk0,0x100000,0x40000,rw"),
        "{}",
        store.cmdline
    );
}

#[test]
fn server_passthrough_must_name_a_passed_through_device_and_excludes_server_disk() {
    let s = Scratch::new();
    let unknown = passthrough_store(&client(
        "a",
        "served_by = \"store\"\nserver_passthrough = \"nope\"\nsize = \"256K\"",
    ));
    let both = passthrough_store(&client(
        "a",
        "served_by = \"store\"\nserver_passthrough = \"blk0\"\nserver_disk = 0\nsize = \"256K\"",
    ));

    let e1 = s.parse(&unknown).unwrap_err().to_string();
    let e2 = s.parse(&both).unwrap_err().to_string();

    assert!(
        e1.contains("vm \"store\" has no passed-through device \"nope\""),
        "{e1}"
    );
    assert!(
        e2.contains("server_disk and server_passthrough are mutually exclusive"),
        "{e2}"
    );
}
