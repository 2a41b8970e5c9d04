//! The Keel switch protection domain: one per network, on seL4 Microkit. It runs the
//! network's switch over the frame rings it shares with each port's VMM
//! (`keel_sel4::switch`).
//!
//! On the host this builds to a stub that says so; the real program is built with
//! `cargo build -p keel-sel4 --bin keel-sel4-switch --release --target aarch64-unknown-none`.
#![cfg_attr(all(target_arch = "aarch64", target_os = "none"), no_std, no_main)]

#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
fn main() {
    println!("keel-sel4-switch runs on seL4 only: build it with --target aarch64-unknown-none");
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
keel_sel4::switch_entry!();
