//! The Keel VMM protection domain: one per VM, on seL4 Microkit.
//!
//! On the host this builds to a stub that says so (the workspace builds and tests on
//! x86_64); the real program is built with
//! `cargo build -p keel-sel4 --bin keel-sel4-vmm --release --target aarch64-unknown-none`.
#![cfg_attr(all(target_arch = "aarch64", target_os = "none"), no_std, no_main)]

#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
fn main() {
    println!("keel-sel4-vmm runs on seL4 only: build it with --target aarch64-unknown-none");
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
keel_sel4::vmm_entry!();
