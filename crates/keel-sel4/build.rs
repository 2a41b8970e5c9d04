//! Links the protection domains (VMM, console) with Keel's own linker script when building for seL4
//! (`aarch64-unknown-none`); host builds (the stub binary, tests) use the default.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed=pd.ld");
    if os == "none" {
        println!("cargo:rustc-link-arg-bin=keel-sel4-vmm=-T{dir}/pd.ld");
        println!("cargo:rustc-link-arg-bin=keel-sel4-console=-T{dir}/pd.ld");
        println!("cargo:rustc-link-arg-bin=keel-sel4-admin=-T{dir}/pd.ld");
    }
}
