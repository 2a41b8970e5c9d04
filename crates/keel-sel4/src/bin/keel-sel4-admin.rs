//! The Keel admin protection domain: one per system, on seL4 Microkit. The parent of every
//! VMM PD: it receives their faults and restarts them by each VM's policy
//! (`keel_sel4::admin`).
//!
//! On the host this builds to a stub that says so; the real program is built with
//! `cargo build -p keel-sel4 --bin keel-sel4-admin --release --target aarch64-unknown-none`.
#![cfg_attr(all(target_arch = "aarch64", target_os = "none"), no_std, no_main)]

#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
fn main() {
    println!("keel-sel4-admin runs on seL4 only: build it with --target aarch64-unknown-none");
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
keel_sel4::admin_entry!();
