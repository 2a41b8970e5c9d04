//! Keel's x86_64 test guest (guest/testguest) for the `keel` CLI tests: located, built if it
//! is missing, rebuilt once when a stale build lacks a test. Included by the test binaries
//! with `#[path]`; each uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One build of the test guest at a time (the tests of a binary run in parallel).
static BUILD: Mutex<()> = Mutex::new(());

/// `guest/testguest` of the repository.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/testguest")
}

/// The test guest's ELF (built or not).
pub fn elf() -> PathBuf {
    dir().join("target/x86_64-unknown-none/release/keel-testguest")
}

/// Build the test guest if it is missing (or always, with `force`: cargo rebuilds only
/// what changed); its ELF.
fn build(force: bool) -> PathBuf {
    let (dir, elf) = (dir(), elf());
    if force || !elf.exists() {
        eprintln!(
            "{}: building the test guest in {}",
            env!("CARGO_CRATE_NAME"),
            dir.display()
        );
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "x86_64-unknown-none"])
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the test guest failed");
    }
    assert!(elf.exists(), "no test guest at {}", elf.display());
    elf
}

/// The test guest ELF, built on first use if it is missing.
pub fn testguest() -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    build(false)
}

/// The test guest if its ELF holds `marker` (a string of the test it must have), rebuilt
/// once if a stale build lacks it; `None` if it still does not.
pub fn testguest_with(marker: &[u8]) -> Option<PathBuf> {
    let has =
        |elf: &Path| std::fs::read(elf).is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker));
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let mut elf = build(false);
    if !has(&elf) {
        elf = build(true);
    }
    has(&elf).then_some(elf)
}

/// The test guest with the `mem-*` tests (rebuilt once if a stale build lacks them).
pub fn mem_testguest() -> PathBuf {
    testguest_with(b"mem-wait:")
        .unwrap_or_else(|| panic!("the test guest at {} has no mem-* tests", elf().display()))
}
