//! A VM of the other architecture is refused before anything is created: exit 2 and one
//! `keel: error:` line naming the VM, its arch and the host's. Needs no /dev/kvm.

use std::process::Command;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// The other architecture, and a minimal kernel file of it that the spec layer accepts.
fn foreign() -> (&'static str, Vec<u8>) {
    if cfg!(target_arch = "x86_64") {
        // An arm64 Image header: b +0x40, image_size 2 MiB, LE 4K anywhere, magic ARM\x64.
        let mut v = vec![0u8; 4096];
        v[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
        v[16..24].copy_from_slice(&(2u64 << 20).to_le_bytes());
        v[24..32].copy_from_slice(&0xau64.to_le_bytes());
        v[0x38..0x3c].copy_from_slice(b"ARM\x64");
        ("aarch64", v)
    } else {
        // An x86 bzImage setup header: boot flag, "HdrS", protocol 2.15, loaded high,
        // relocatable.
        let mut v = vec![0u8; 8192];
        v[0x1f1] = 4;
        v[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        v[0x211] = 1;
        v[0x236] = 1;
        ("x86_64", v)
    }
}

#[test]
fn vm_of_the_other_architecture_is_refused_with_exit_2() {
    let (arch, kernel) = foreign();
    let dir = std::env::temp_dir().join(format!("keel-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel_path = dir.join("kernel");
    std::fs::write(&kernel_path, kernel).unwrap();
    let toml = dir.join("sys.toml");
    std::fs::write(
        &toml,
        format!(
            "[[vm]]\nname = \"other\"\narch = \"{arch}\"\nkernel = \"{}\"\nmemory = \"64M\"\n",
            kernel_path.display()
        ),
    )
    .unwrap();

    let out = Command::new(KEEL)
        .args(["run", toml.to_str().unwrap()])
        .output()
        .unwrap();

    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("keel: error: vm \"other\""),
        "{stderr}"
    );
    assert!(
        lines[0].contains(&format!("arch \"{arch}\" cannot run on this")),
        "{stderr}"
    );
}
