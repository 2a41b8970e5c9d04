//! Loads a system description with every check on and prints its VMs and RAM layout:
//! `cargo run -p keel-spec --example check -- examples/linux.toml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: check <system.toml>");
        return ExitCode::from(2);
    };
    match keel_spec::load(std::path::Path::new(&path)) {
        Ok(system) => {
            println!("system {:?}: {} VM(s)", system.name(), system.vms().len());
            for vm in system.vms() {
                let layout: Vec<String> = keel_spec::ram_layout(vm)
                    .iter()
                    .map(|(gpa, size)| format!("{gpa:#x}+{}", keel_spec::SizeDisplay(*size)))
                    .collect();
                println!(
                    "  vm {:?}: {} {} vcpu(s), ram {}, kernel {}, {} disk(s), {} console(s), rng {}",
                    vm.name,
                    vm.arch,
                    vm.vcpus,
                    layout.join(" "),
                    vm.kernel,
                    vm.disks.len(),
                    vm.consoles.len(),
                    vm.rng
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("check: error: {e}");
            ExitCode::from(2)
        }
    }
}
