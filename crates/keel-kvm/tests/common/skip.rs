//! How a test that cannot run on this host says so: one loud `SKIPPED` line on stderr and
//! one line in `$KEEL_SKIP_LOG` (scripts/test.sh counts those). Shared by the KVM test
//! suites of keel-kvm and keel (included with `#[path]`; each suite uses part of it).

#![allow(dead_code)]

/// Print `SKIPPED: <why> (<test>)` and append `<suite> <test>: <why>` to `$KEEL_SKIP_LOG`.
pub fn skip(suite: &str, test: &str, why: &str) {
    eprintln!("SKIPPED: {why} ({test})");
    if let Ok(log) = std::env::var("KEEL_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            // One write(2) per line: parallel tests append to the same file.
            let _ = f.write_all(format!("{suite} {test}: {why}\n").as_bytes());
        }
    }
}

/// Whether /dev/kvm can be used; if not, skip `test` of `suite` (see [`skip`]).
pub fn kvm_or_skip(suite: &str, test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        skip(suite, test, "/dev/kvm not available");
    }
    ok
}
