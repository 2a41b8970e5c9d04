//! Behaviour of the system description parser: one behaviour per test.

mod common;

use common::{Scratch, x86_vm};
use keel_spec::{Arch, CpuSet, Loader, Memory, OnReboot, Output, Placement, RamRegion, ram_layout};

#[test]
fn minimal_vm_gets_documented_defaults() {
    let s = Scratch::new();
    let system = s.parse(&x86_vm("")).unwrap();
    let vm = system.vm("web").unwrap();
    assert_eq!(system.name(), "keel");
    assert_eq!(vm.vcpus, 1);
    assert_eq!(vm.memory, Memory::Size(256 << 20));
    assert_eq!(vm.serial, Output::Stdio);
    assert_eq!(vm.cmdline, "");
    assert!(vm.initrd.is_none() && vm.placement.is_none() && !vm.rng);
    assert!(vm.disks.is_empty() && vm.consoles.is_empty());
}

#[test]
fn arch_defaults_to_the_host() {
    let s = Scratch::new();
    let kernel = if Arch::host() == Some(Arch::Aarch64) {
        "Image"
    } else {
        "vmlinux"
    };
    let text = format!("[[vm]]\nname = \"a\"\nkernel = \"{kernel}\"\nmemory = \"64M\"\n");
    let system = s.parse(&text).unwrap();
    assert_eq!(Some(system.vms()[0].arch), Arch::host());
}

#[test]
fn full_vm_is_parsed_into_the_model() {
    let s = Scratch::new();
    let text = r#"
[system]
name = "demo"
pcpus = 4

[[vm]]
name = "web"
arch = "x86_64"
vcpus = 2
memory = "1G"
kernel = "bzImage"
initrd = "initrd.cpio"
cmdline = "console=ttyS0 quiet"
serial = "file:serial.log"
placement = { pcpus = [0, 1], priority = 120, budget_us = 500, period_us = 1000 }

[[vm.disk]]
path = "disk.img"
read_only = true
id = "root"

[[vm.console]]
output = "null"

[vm.rng]
"#;
    let system = s.parse(text).unwrap();
    let vm = &system.vms()[0];
    assert_eq!(system.name(), "demo");
    assert_eq!(system.pcpus(), Some(4));
    assert_eq!(vm.vcpus, 2);
    assert_eq!(vm.memory, Memory::Size(1 << 30));
    assert_eq!(vm.kernel.as_str(), s.path("bzImage"));
    assert_eq!(vm.initrd.as_ref().unwrap().as_str(), s.path("initrd.cpio"));
    assert_eq!(vm.cmdline, "console=ttyS0 quiet");
    assert_eq!(
        vm.serial.to_string(),
        format!("file:{}", s.path("serial.log"))
    );
    assert_eq!(
        vm.placement,
        Some(Placement {
            pcpus: Some(vec![CpuSet::one(0), CpuSet::one(1)]),
            priority: 120,
            budget_us: 500,
            period_us: 1000
        })
    );
    assert_eq!(vm.disks[0].path.as_str(), s.path("disk.img"));
    assert!(vm.disks[0].read_only);
    assert_eq!(vm.disks[0].id.as_deref(), Some("root"));
    assert_eq!(vm.consoles[0].output, Output::Null);
    assert!(vm.rng);
}

#[test]
fn vm_lookup_by_name_finds_the_right_vm() {
    let s = Scratch::new();
    let text = format!(
        "{}\n[[vm]]\nname = \"db\"\narch = \"aarch64\"\nkernel = \"Image\"\nmemory = \"64M\"\n",
        x86_vm("")
    );
    let system = s.parse(&text).unwrap();
    assert_eq!(system.vm("db").unwrap().arch, Arch::Aarch64);
    assert!(system.vm("nope").is_none());
    assert_eq!(system.vms().len(), 2);
}

#[test]
fn zero_vcpus_is_rejected_with_path() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("vcpus = 0")),
        r#"vm "web": vcpus: 0 is out of range (1..=64)"#
    );
}

#[test]
fn negative_vcpus_is_rejected_with_path() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("vcpus = -3")),
        r#"vm "web": vcpus: -3 is out of range (1..=64)"#
    );
}

#[test]
fn vcpus_above_64_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("vcpus = 65")),
        r#"vm "web": vcpus: 65 is out of range (1..=64)"#
    );
}

#[test]
fn memory_below_16m_is_rejected() {
    let s = Scratch::new();
    let text = "[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = 0\n";
    assert_eq!(
        s.error(text),
        r#"vm "web": memory: 0 is too small (at least 16 MiB)"#
    );
}

#[test]
fn memory_not_a_multiple_of_4k_is_rejected() {
    let s = Scratch::new();
    let text =
        "[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = 16777217\n";
    assert_eq!(
        s.error(text),
        r#"vm "web": memory: 0x1000001 is not a multiple of 4 KiB"#
    );
}

#[test]
fn memory_with_unknown_unit_is_rejected() {
    let s = Scratch::new();
    let text =
        "[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = \"256X\"\n";
    assert_eq!(
        s.error(text),
        r#"vm "web": memory: "256X" is not a size (unknown unit; use K, M, G or T)"#
    );
}

#[test]
fn memory_given_as_integer_bytes_is_accepted() {
    let s = Scratch::new();
    let text =
        "[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = 33554432\n";
    assert_eq!(
        s.parse(text).unwrap().vms()[0].memory,
        Memory::Size(32 << 20)
    );
}

#[test]
fn missing_memory_is_rejected() {
    let s = Scratch::new();
    let text = "[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\n";
    assert_eq!(
        s.error(text),
        r#"vm "web": neither memory nor [[vm.ram]] is given"#
    );
}

#[test]
fn memory_and_ram_together_are_rejected() {
    let s = Scratch::new();
    let text = x86_vm("[[vm.ram]]\nbase = 0\nsize = \"64M\"\n");
    assert_eq!(
        s.error(&text),
        r#"vm "web": memory and [[vm.ram]] are mutually exclusive; give one"#
    );
}

fn ram_vm(arch: &str, regions: &[(&str, &str)]) -> String {
    let kernel = if arch == "x86_64" { "vmlinux" } else { "Image" };
    let mut text = format!("[[vm]]\nname = \"web\"\narch = \"{arch}\"\nkernel = \"{kernel}\"\n");
    for (base, size) in regions {
        text.push_str(&format!("[[vm.ram]]\nbase = {base}\nsize = {size}\n"));
    }
    text
}

#[test]
fn explicit_ram_regions_are_kept_in_order() {
    let s = Scratch::new();
    let text = ram_vm(
        "aarch64",
        &[("0x8000_0000", "\"64M\""), ("0x4000_0000", "\"32M\"")],
    );
    let system = s.parse(&text).unwrap();
    assert_eq!(
        system.vms()[0].memory,
        Memory::Regions(vec![
            RamRegion {
                base: 0x8000_0000,
                size: 64 << 20
            },
            RamRegion {
                base: 0x4000_0000,
                size: 32 << 20
            },
        ])
    );
    assert_eq!(
        ram_layout(&system.vms()[0]),
        vec![(0x8000_0000, 64 << 20), (0x4000_0000, 32 << 20)]
    );
}

#[test]
fn overlapping_ram_regions_are_rejected() {
    let s = Scratch::new();
    let text = ram_vm(
        "aarch64",
        &[("0x4000_0000", "\"512M\""), ("0x5000_0000", "\"256M\"")],
    );
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram 1 (0x50000000+256M) overlaps ram 0"#
    );
}

#[test]
fn ram_in_x86_device_window_is_rejected() {
    let s = Scratch::new();
    let text = ram_vm("x86_64", &[("0", "\"64M\""), ("0xC000_0000", "\"16M\"")]);
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram 1 (0xc0000000+16M) overlaps the x86_64 device window 0xc0000000..0x100000000"#
    );
}

#[test]
fn ram_below_1g_on_aarch64_is_rejected() {
    let s = Scratch::new();
    let text = ram_vm("aarch64", &[("0x3000_0000", "\"512M\"")]);
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram 0 (0x30000000+512M) overlaps the aarch64 device window 0x0..0x40000000"#
    );
}

#[test]
fn x86_explicit_ram_needs_a_region_at_zero() {
    let s = Scratch::new();
    let text = ram_vm("x86_64", &[("0x1_0000_0000", "\"64M\"")]);
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram: an x86_64 VM needs a region starting at 0x0 (boot structures live below 1 MiB)"#
    );
}

#[test]
fn unaligned_ram_base_is_rejected() {
    let s = Scratch::new();
    let text = ram_vm("aarch64", &[("0x4000_0800", "\"64M\"")]);
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram 0: base: 0x40000800 is not a multiple of 4 KiB"#
    );
}

#[test]
fn ram_wrapping_the_address_space_is_rejected() {
    let s = Scratch::new();
    let text = ram_vm("aarch64", &[("\"0xffff_ffff_ffff_f000\"", "\"64M\"")]);
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram 0 (0xfffffffffffff000+64M) wraps around the address space"#
    );
}

#[test]
fn ram_above_1t_is_rejected() {
    let s = Scratch::new();
    let text = ram_vm("aarch64", &[("\"1T\"", "\"64M\"")]);
    assert_eq!(
        s.error(&text),
        r#"vm "web": ram 0 (0x10000000000+64M) ends above the guest-physical limit 0x10000000000"#
    );
}

#[test]
fn unknown_field_reports_line_and_column() {
    let s = Scratch::new();
    let text = "[[vm]]\nname = \"web\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\nvcpu = 2\n";
    let message = s.error(text);
    assert!(
        message.starts_with(r#"line 5, column 1: unknown field "vcpu", expected one of "name", "#),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn wrong_type_reports_line_and_column() {
    let s = Scratch::new();
    let text = "[[vm]]\nname = \"web\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\nvcpus = \"two\"\n";
    let message = s.error(text);
    assert!(
        message.starts_with("line 5, column 9: invalid type: string \"two\""),
        "{message}"
    );
}

#[test]
fn toml_syntax_error_reports_line_and_column() {
    let s = Scratch::new();
    let message = s.error("[[vm]]\nname = \"web\nkernel = 1\n");
    assert!(message.starts_with("line 2, column "), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn missing_kernel_key_is_reported() {
    let s = Scratch::new();
    let message = s.error("[[vm]]\nname = \"web\"\nmemory = \"64M\"\n");
    assert!(
        message.starts_with("line 1, column 1: missing field \"kernel\""),
        "{message}"
    );
}

#[test]
fn file_without_vms_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error("[system]\nname = \"empty\"\n"),
        "no [[vm]] is defined (a system needs at least one VM)"
    );
}

#[test]
fn duplicate_vm_name_is_rejected_by_index() {
    let s = Scratch::new();
    let text = format!(
        "{}\n{}\n{}",
        x86_vm(""),
        x86_vm("").replace("web", "db"),
        x86_vm("")
    );
    assert_eq!(s.error(&text), r#"vm[2]: name "web" is used twice"#);
}

#[test]
fn invalid_vm_name_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("").replace("\"web\"", "\"Web_1\"")),
        r#"vm[0]: name "Web_1" is invalid (1 to 32 of a-z 0-9 -)"#
    );
}

#[test]
fn unsupported_arch_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("").replace("x86_64", "riscv64")),
        r#"vm "web": arch: "riscv64" is not supported (expected "x86_64" or "aarch64")"#
    );
}

#[test]
fn missing_kernel_file_names_the_path() {
    let s = Scratch::new();
    let message = s.error(&x86_vm("").replace("vmlinux", "nope"));
    assert_eq!(
        message,
        format!(r#"vm "web": kernel {} does not exist"#, s.path("nope"))
    );
}

#[test]
fn non_kernel_file_is_rejected_naming_the_arch() {
    let s = Scratch::new();
    s.write("notes.txt", b"hello");
    let message = s.error(&x86_vm("").replace("vmlinux", "notes.txt"));
    assert_eq!(
        message,
        format!(
            r#"vm "web": kernel {}: not an x86_64 kernel (no ELF or bzImage header)"#,
            s.path("notes.txt")
        )
    );
}

#[test]
fn x86_kernel_for_aarch64_vm_is_rejected() {
    let s = Scratch::new();
    let text =
        "[[vm]]\nname = \"arm\"\narch = \"aarch64\"\nkernel = \"bzImage\"\nmemory = \"64M\"\n";
    assert_eq!(
        s.error(text),
        format!(
            r#"vm "arm": kernel {}: not an aarch64 kernel (it is an x86 bzImage)"#,
            s.path("bzImage")
        )
    );
}

#[test]
fn kernel_that_is_a_directory_is_rejected() {
    let s = Scratch::new();
    std::fs::create_dir(s.dir.join("kdir")).unwrap();
    let message = s.error(&x86_vm("").replace("vmlinux", "kdir"));
    assert_eq!(
        message,
        format!(
            r#"vm "web": kernel {} is not a regular file"#,
            s.path("kdir")
        )
    );
}

#[test]
fn missing_initrd_names_the_path() {
    let s = Scratch::new();
    let message = s.error(&x86_vm("initrd = \"gone.cpio\""));
    assert_eq!(
        message,
        format!(r#"vm "web": initrd {} does not exist"#, s.path("gone.cpio"))
    );
}

#[test]
fn missing_disk_names_the_path() {
    let s = Scratch::new();
    let text =
        x86_vm("[[vm.disk]]\npath = \"disk.img\"\n[[vm.disk]]\npath = \"/nonexistent/x.img\"\n");
    assert_eq!(
        s.error(&text),
        r#"vm "web": disk 1: path /nonexistent/x.img does not exist"#
    );
}

#[test]
fn disk_that_cannot_be_opened_read_write_is_reported_with_the_os_reason() {
    // sysfs refuses writers of read-only attributes, even root (chmod would not stop root).
    let s = Scratch::new();
    let text = x86_vm("[[vm.disk]]\npath = \"/sys/kernel/uevent_seqnum\"\n");
    assert_eq!(
        s.error(&text),
        r#"vm "web": disk 0: path /sys/kernel/uevent_seqnum cannot be opened read-write: Permission denied"#
    );
}

#[test]
fn read_only_disk_needs_only_read_access() {
    let s = Scratch::new();
    let text = x86_vm("[[vm.disk]]\npath = \"/sys/kernel/uevent_seqnum\"\nread_only = true\n");
    assert!(s.parse(&text).is_ok());
}

#[test]
fn disk_id_longer_than_20_bytes_is_rejected() {
    let s = Scratch::new();
    let text = x86_vm("[[vm.disk]]\npath = \"disk.img\"\nid = \"abcdefghijklmnopqrstu\"\n");
    assert_eq!(
        s.error(&text),
        r#"vm "web": disk 0: id: "abcdefghijklmnopqrstu" is 21 bytes long (at most 20)"#
    );
}

#[test]
fn disk_written_by_two_vms_is_rejected() {
    let s = Scratch::new();
    let disk = "[[vm.disk]]\npath = \"disk.img\"\n";
    let text = format!("{}\n{}", x86_vm(disk), x86_vm(disk).replace("web", "db"));
    assert_eq!(
        s.error(&text),
        format!(
            r#"vm "db": disk 0: path {} is also used by vm "web": disk 0 (an image written by one disk cannot be shared)"#,
            s.path("disk.img")
        )
    );
}

#[test]
fn disk_read_by_two_vms_is_allowed() {
    let s = Scratch::new();
    let disk = "[[vm.disk]]\npath = \"disk.img\"\nread_only = true\n";
    let text = format!("{}\n{}", x86_vm(disk), x86_vm(disk).replace("web", "db"));
    assert!(s.parse(&text).is_ok());
}

#[test]
fn bad_serial_output_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("serial = \"tcp:1234\"")),
        r#"vm "web": serial: "tcp:1234" is not an output (expected "stdio", "null" or "file:<path>")"#
    );
}

#[test]
fn console_file_in_missing_directory_is_rejected() {
    let s = Scratch::new();
    let text = x86_vm("[[vm.console]]\noutput = \"file:/nonexistent/dir/c.log\"\n");
    assert_eq!(
        s.error(&text),
        r#"vm "web": console 0: output: directory /nonexistent/dir of /nonexistent/dir/c.log does not exist"#
    );
}

#[test]
fn placement_length_must_match_vcpus() {
    let s = Scratch::new();
    let text = x86_vm("vcpus = 2\nplacement = { pcpus = [0] }");
    assert_eq!(
        s.error(&text),
        r#"vm "web": placement: pcpus lists 1 CPUs for 2 vcpus"#
    );
}

#[test]
fn placement_beyond_system_pcpus_is_rejected() {
    let s = Scratch::new();
    let text = format!(
        "[system]\npcpus = 2\n{}",
        x86_vm("vcpus = 2\nplacement = { pcpus = [1, 2] }")
    );
    assert_eq!(
        s.error(&text),
        r#"vm "web": placement: pcpu 2 is out of range (system.pcpus = 2)"#
    );
}

#[test]
fn hybrid_pcpus_mix_pinned_cpus_and_cpu_sets() {
    let s = Scratch::new();
    let text = format!(
        "[system]\npcpus = 3\n{}",
        x86_vm("vcpus = 3\nplacement = { pcpus = [0, [1, 2], [2]] }")
    );

    let system = s.parse(&text).unwrap();

    assert_eq!(
        system.vms()[0].placement.as_ref().unwrap().pcpus,
        Some(vec![
            CpuSet::one(0),
            CpuSet::new(vec![1, 2]),
            CpuSet::new(vec![2])
        ])
    );
}

#[test]
fn several_vcpus_may_share_one_cpu() {
    let s = Scratch::new();
    let text = format!(
        "[system]\npcpus = 2\n{}",
        x86_vm("vcpus = 2\nplacement = { pcpus = [1, 1] }")
    );

    let system = s.parse(&text).unwrap();

    assert_eq!(
        system.vms()[0].placement.as_ref().unwrap().pcpus,
        Some(vec![CpuSet::one(1), CpuSet::one(1)])
    );
}

#[test]
fn empty_cpu_set_is_rejected_naming_the_vcpu() {
    let s = Scratch::new();
    let text = x86_vm("vcpus = 2\nplacement = { pcpus = [0, []] }");
    assert_eq!(
        s.error(&text),
        r#"vm "web": placement: pcpus entry 1 (vcpu 1) is an empty set of CPUs"#
    );
}

#[test]
fn cpu_twice_in_one_set_is_rejected_naming_it() {
    let s = Scratch::new();
    let text = x86_vm("vcpus = 2\nplacement = { pcpus = [[0, 1, 0], 1] }");
    assert_eq!(
        s.error(&text),
        r#"vm "web": placement: pcpus entry 0 (vcpu 0) = [0, 1, 0] lists CPU 0 twice"#
    );
}

#[test]
fn cpu_set_beyond_system_pcpus_is_rejected() {
    let s = Scratch::new();
    let text = format!(
        "[system]\npcpus = 2\n{}",
        x86_vm("vcpus = 2\nplacement = { pcpus = [0, [1, 2]] }")
    );
    assert_eq!(
        s.error(&text),
        r#"vm "web": placement: pcpu 2 is out of range (system.pcpus = 2)"#
    );
}

#[test]
fn negative_cpu_in_a_set_is_rejected_naming_it() {
    let s = Scratch::new();
    let text = x86_vm("vcpus = 2\nplacement = { pcpus = [0, [1, -1]] }");
    assert_eq!(
        s.error(&text),
        r#"vm "web": placement: pcpus: -1 is out of range (0..=1023)"#
    );
}

#[test]
fn pcpus_entry_that_is_neither_cpu_nor_set_is_rejected() {
    let s = Scratch::new();
    let text = x86_vm("placement = { pcpus = [\"0\"] }");

    let e = s.error(&text);

    assert!(e.contains("a CPU number or an array of CPU numbers"), "{e}");
}

#[test]
fn placement_defaults_fill_unset_fields() {
    let s = Scratch::new();
    let system = s.parse(&x86_vm("placement = { priority = 7 }")).unwrap();
    assert_eq!(
        system.vms()[0].placement,
        Some(Placement {
            pcpus: None,
            priority: 7,
            budget_us: 1000,
            period_us: 1000
        })
    );
}

#[test]
fn priority_255_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("placement = { priority = 255 }")),
        r#"vm "web": placement: priority: 255 is out of range (0..=254)"#
    );
}

#[test]
fn budget_longer_than_period_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm(
            "placement = { budget_us = 2000, period_us = 1000 }"
        )),
        r#"vm "web": placement: budget_us 2000 is longer than period_us 1000"#
    );
}

#[test]
fn system_pcpus_zero_is_rejected() {
    let s = Scratch::new();
    let text = format!("[system]\npcpus = 0\n{}", x86_vm(""));
    assert_eq!(
        s.error(&text),
        "system: pcpus: 0 is out of range (1..=1024)"
    );
}

#[test]
fn cmdline_with_newline_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("cmdline = \"quiet\\nroot=/dev/vda\"")),
        r#"vm "web": cmdline: contains a control character at byte 5"#
    );
}

#[test]
fn env_var_in_path_is_expanded() {
    let s = Scratch::new();
    let text = x86_vm("[[vm.disk]]\npath = \"${IMAGES}/root.img\"\n");
    let system = Loader::new()
        .env(&common::test_env)
        .host_checks(false)
        .parse_str(&text, &s.dir)
        .unwrap();
    assert_eq!(
        system.vms()[0].disks[0].path.as_str(),
        "/srv/images/root.img"
    );
}

#[test]
fn keel_cache_defaults_to_home_cache() {
    let s = Scratch::new();
    let text = x86_vm("").replace("\"vmlinux\"", "\"${KEEL_CACHE}/guest/x86_64/vmlinuz\"");
    let system = Loader::new()
        .env(&common::test_env)
        .host_checks(false)
        .parse_str(&text, &s.dir)
        .unwrap();
    assert_eq!(
        system.vms()[0].kernel.as_str(),
        "/home/tester/.cache/keel/guest/x86_64/vmlinuz"
    );
}

#[test]
fn undefined_env_var_is_an_error() {
    let s = Scratch::new();
    let text = x86_vm("[[vm.disk]]\npath = \"${NOPE}/root.img\"\n");
    assert_eq!(
        s.error(&text),
        r#"vm "web": disk 0: path: ${NOPE} is not defined (in "${NOPE}/root.img")"#
    );
}

#[test]
fn relative_paths_resolve_against_the_base_dir() {
    let s = Scratch::new();
    let system = s.parse(&x86_vm("")).unwrap();
    assert_eq!(system.vms()[0].kernel.as_path(), s.dir.join("vmlinux"));
}

#[test]
fn load_names_the_system_after_the_file_stem() {
    let s = Scratch::new();
    let file = s.write("my-system.toml", x86_vm("").as_bytes());
    let system = keel_spec::load(&file).unwrap();
    assert_eq!(system.name(), "my-system");
    assert_eq!(system.vms()[0].kernel.as_path(), s.dir.join("vmlinux"));
}

#[test]
fn load_of_missing_file_names_it() {
    let message = keel_spec::load(std::path::Path::new("/nonexistent/keel.toml")).unwrap_err();
    assert_eq!(
        message.to_string(),
        "cannot read /nonexistent/keel.toml: No such file or directory"
    );
}

#[test]
fn host_checks_can_be_turned_off() {
    let s = Scratch::new();
    let text = x86_vm("").replace("vmlinux", "not-there");
    let loader = Loader::new().env(&common::test_env).host_checks(false);
    assert!(loader.parse_str(&text, &s.dir).is_ok());
    assert!(s.parse(&text).is_err());
}

#[test]
fn reboot_policy_defaults_to_restart_at_most_5_per_minute() {
    let s = Scratch::new();
    let system = s.parse(&x86_vm("")).unwrap();
    let vm = &system.vms()[0];
    assert_eq!(vm.on_reboot, OnReboot::Restart);
    assert_eq!(vm.max_restarts_per_minute, 5);
}

#[test]
fn reboot_policy_is_parsed_into_the_model() {
    let s = Scratch::new();
    let system = s
        .parse(&x86_vm(
            "on_reboot = \"stop\"\nmax_restarts_per_minute = 1000",
        ))
        .unwrap();
    let vm = &system.vms()[0];
    assert_eq!(vm.on_reboot, OnReboot::Stop);
    assert_eq!(vm.max_restarts_per_minute, 1000);
}

#[test]
fn unknown_on_reboot_is_rejected_naming_the_choices() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("on_reboot = \"again\"")),
        r#"vm "web": on_reboot: "again" is not one of "restart", "stop""#
    );
}

#[test]
fn zero_max_restarts_per_minute_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("max_restarts_per_minute = 0")),
        r#"vm "web": max_restarts_per_minute: 0 is out of range (1..=1000)"#
    );
}

#[test]
fn max_restarts_per_minute_above_1000_is_rejected() {
    let s = Scratch::new();
    assert_eq!(
        s.error(&x86_vm("max_restarts_per_minute = 1001")),
        r#"vm "web": max_restarts_per_minute: 1001 is out of range (1..=1000)"#
    );
}

#[test]
fn model_with_zero_max_restarts_is_refused_by_validation() {
    let mut vm = keel_spec::VmSpec::new(
        "web",
        Arch::X86_64,
        keel_spec::HostPath::new("/k"),
        Memory::Size(64 << 20),
    );
    vm.max_restarts_per_minute = 0;
    let err = keel_spec::System::new("s".into(), None, vec![vm]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"vm "web": max_restarts_per_minute: 0 is out of range (1..=1000)"#
    );
}
