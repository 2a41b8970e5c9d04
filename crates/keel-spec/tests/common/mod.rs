//! Test helpers: a scratch directory with kernel and disk files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_spec::{Loader, SpecError, System};

/// A scratch directory removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("keel-spec-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let scratch = Scratch { dir };
        scratch.write("vmlinux", &x86_elf());
        scratch.write("bzImage", &bzimage());
        scratch.write("Image", &arm64_image());
        scratch.write("initrd.cpio", b"070701");
        scratch.write("disk.img", &[0u8; 4096]);
        scratch
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Parses with host checks and a fixed environment.
    pub fn parse(&self, text: &str) -> Result<System, SpecError> {
        Loader::new().env(&test_env).parse_str(text, &self.dir)
    }

    /// Parses and returns the one-line error message.
    pub fn error(&self, text: &str) -> String {
        match self.parse(text) {
            Ok(system) => panic!("expected an error, got {system:?}"),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn test_env(var: &str) -> Option<String> {
    match var {
        "HOME" => Some("/home/tester".into()),
        "IMAGES" => Some("/srv/images".into()),
        _ => None,
    }
}

/// A minimal x86_64 ELF with one PT_LOAD program header.
pub fn x86_elf() -> Vec<u8> {
    let mut image = vec![0u8; 0x40 + 0x38];
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2;
    image[5] = 1;
    image[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    image[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
    image[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
    image[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    image[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
    image
}

pub fn bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 0x400];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image
}

pub fn arm64_image() -> Vec<u8> {
    let mut image = vec![0u8; 0x40];
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    image
}

/// A valid one-VM x86_64 system, with `extra` appended to the `[[vm]]` table.
pub fn x86_vm(extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"web\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = \"256M\"\n{extra}"
    )
}

pub fn base_dir_of(path: &Path) -> &Path {
    path.parent().unwrap()
}
