//! Keel as a library: describe a VM in code, validate it, boot it on KVM and read how it
//! stopped — the high-level layer of the API (`docs/api.md`).
//!
//! ```sh
//! cargo run -p keel-kvm --example embed -- guest/testguest/target/x86_64-unknown-none/release/keel-testguest
//! ```

use std::process::ExitCode;

use keel_kvm::{VmExitStatus, Vmm};
use keel_spec::{Arch, HostPath, Memory, Output, System, VmSpec};

fn main() -> ExitCode {
    let Some(kernel) = std::env::args().nth(1) else {
        eprintln!("usage: embed <kernel>");
        return ExitCode::from(2);
    };

    let Some(arch) = Arch::host() else {
        eprintln!("embed: this host's architecture has no Keel guest support");
        return ExitCode::from(2);
    };
    let mut vm = VmSpec::new(
        "embedded",
        arch,
        HostPath::new(kernel),
        Memory::Size(64 << 20),
    );
    vm.vcpus = 1;
    vm.cmdline = "keeltest=rng".into();
    vm.rng = true;
    vm.serial = Output::Stdio;

    // The same validation a TOML description gets: one precise error per problem.
    let system = match System::new("embed".into(), None, vec![vm]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("embed: invalid VM: {e}");
            return ExitCode::from(2);
        }
    };

    let report = match Vmm::from_spec(&system.vms()[0]).and_then(Vmm::run) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::from(1);
        }
    };
    match report.status {
        VmExitStatus::ExitCode(0) | VmExitStatus::PowerOff => ExitCode::SUCCESS,
        other => {
            eprintln!("embed: guest stopped with {other:?}");
            ExitCode::from(1)
        }
    }
}
