//! Build a bootable seL4 image from a system description without the `keel` CLI:
//! `cargo run -p keel-sel4 --features host --example sel4-image -- <system.toml> <out-dir> <vmm-elf>`
//! (the console ELF `keel-sel4-console` is taken from beside the VMM ELF)
//! (`MICROKIT_SDK` names the SDK, `KEEL_SEL4_CONFIG` the kernel config). `keel sel4 build` does the same with more checks.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, toml, out, elf] = &args[..] else {
        eprintln!("usage: sel4-image <system.toml> <out-dir> <vmm-elf>");
        std::process::exit(2);
    };
    let sdk = std::env::var_os("MICROKIT_SDK").expect("MICROKIT_SDK");
    let system = match keel_spec::load(std::path::Path::new(toml)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sel4-image: error: {e}");
            std::process::exit(2);
        }
    };
    let opts = keel_sel4::host::BuildOptions {
        sdk: sdk.into(),
        board: keel_sel4::abi::board::NAME.into(),
        config: std::env::var("KEEL_SEL4_CONFIG").ok(),
        out: out.into(),
        vmm_elf: elf.into(),
        console_elf: keel_sel4::host::PdElves::beside(std::path::Path::new(elf)).console,
        switch_elf: keel_sel4::host::PdElves::beside(std::path::Path::new(elf)).switch,
        test_stall_vm: std::env::var(keel_sel4::host::TEST_STALL_VAR).ok(),
        admin_elf: keel_sel4::host::PdElves::beside(std::path::Path::new(elf)).admin,
        test_fault_vm: std::env::var(keel_sel4::host::TEST_FAULT_VAR).ok(),
        restart: Vec::new(),
    };
    match keel_sel4::host::build(&system, &opts) {
        Ok(o) => println!("{}", o.image.display()),
        Err(e) => {
            eprintln!("sel4-image: error: {e}");
            std::process::exit(1);
        }
    }
}
