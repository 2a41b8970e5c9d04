//! Helpers of the admin's tests (the supervisor's in-process tests and tests/daemon.rs):
//! system-description pieces for test-guest VMs and polling. Included with `#[path]`, next
//! to `common/guest.rs` as the module `guest`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::guest;

/// Poll `f` every 20 ms until it holds or `limit` passes; whether it held.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test-guest VM running `cmdline` with restart policy `restart`.
pub fn vm(name: &str, cmdline: &str, restart: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"{}\"\nmemory = \"32M\"\ncmdline = \"{cmdline}\"\nrestart = \"{restart}\"\n",
        guest::testguest().display()
    )
}

/// `[limits]` for dynamic test-guest VMs: `max_vms`, `memory`, `vcpus`, the test guest as
/// the one kernel.
pub fn limits(max_vms: u32, memory: &str, vcpus: u32) -> String {
    format!(
        "[limits]\nmax_vms = {max_vms}\nmemory = \"{memory}\"\nvcpus = {vcpus}\nkernels = [\"{}\"]\n",
        guest::testguest().display()
    )
}
