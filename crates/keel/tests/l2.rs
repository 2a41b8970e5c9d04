//! End-to-end: real Linux guests (Debian arm64) under Keel's KVM backend on aarch64, inside
//! the emulated arm64 host (L1 under qemu-system-aarch64). Runs `scripts/l2-tests.sh`, which
//! cross-builds the arm64 keel, builds (or reuses) the L1 image and runs the tests in L1,
//! the ones its `tests=(...)` array lists (each is described in scripts/l2/l2-inside.sh and
//! docs/kvm.md): boots, disks across power-off, reset and SIGKILL, bad configurations, reboot
//! in place, networking (VM to VM and through a tap uplink), vsock, and disks served by a
//! storage VM (including its restart). Every listed test must pass.
//!
//! Without qemu-system-aarch64 the test prints `SKIPPED` and records the skip in
//! `$KEEL_SKIP_LOG`. The L1 part takes 5 to 6 minutes on two loaded cores; building the L1
//! image the first time downloads Debian packages.

use std::path::Path;
use std::process::Command;

/// Whether `prog` is on `PATH`.
fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(prog).is_file()))
}

#[path = "../../keel-kvm/tests/common/skip.rs"]
mod common_skip;

fn skip(test: &str, why: &str) {
    common_skip::skip("l2", test, why);
}

#[test]
fn linux_guests_pass_their_tests_on_arm64_kvm_inside_the_emulated_host() {
    let test = "linux_guests_pass_their_tests_on_arm64_kvm_inside_the_emulated_host";
    if !on_path("qemu-system-aarch64") {
        skip(test, "qemu-system-aarch64 not found");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    // Everything has its own timeout inside; this one bounds the whole run.
    let out = Command::new("timeout")
        .args(["--kill-after=10", "1800", "bash", "scripts/l2-tests.sh"])
        .current_dir(&root)
        .output()
        .expect("bash runs");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if out.status.code() == Some(77) {
        skip(
            test,
            "scripts/l2-tests.sh skipped (qemu-system-aarch64 missing)",
        );
        return;
    }
    let summary = stdout
        .lines()
        .rfind(|l| l.starts_with("l2: ") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no summary line\n--- stdout\n{stdout}--- stderr\n{stderr}"));
    assert!(
        out.status.success() && summary.contains(" 0 failed"),
        "{summary}\n--- stdout\n{stdout}--- stderr (tail)\n{}",
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let expected = listed_tests(&root);
    assert!(
        summary.starts_with(&format!("l2: {expected} passed")),
        "{summary} (scripts/l2-tests.sh lists {expected} tests)"
    );
}

/// How many tests scripts/l2-tests.sh lists (its `tests=(...)` array): every one must pass.
fn listed_tests(root: &Path) -> usize {
    let script = std::fs::read_to_string(root.join("scripts/l2-tests.sh")).expect("script");
    let start = script.find("tests=(").expect("a tests=( array") + "tests=(".len();
    let end = start + script[start..].find(')').expect("the array's end");
    script[start..end].split_whitespace().count()
}
