//! Building and booting Microkit images of Keel systems under QEMU, for the seL4 end-to-end
//! test binaries (included with `#[path]`; `skip.rs` must be included as `skip_log`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use keel_sel4::host::{self, BuildOptions, RunOutcome};

/// One QEMU at a time: the machine has two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// `$KEEL_CACHE`, else `~/.cache/keel`.
pub fn cache() -> PathBuf {
    std::env::var_os("KEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/keel")
        })
}

/// The SDK, or a loud skip of `suite::test` (recorded in `$KEEL_SKIP_LOG`).
pub fn prerequisites(suite: &str, test: &str) -> Option<PathBuf> {
    let skip = |why: &str| {
        super::skip_log::loud_skip(&format!("SKIP keel-sel4 {suite}::{test}: {why}"));
    };
    let Some(sdk) = std::env::var_os("MICROKIT_SDK") else {
        skip("MICROKIT_SDK is not set; the seL4 backend was NOT tested end to end");
        return None;
    };
    let g = cache().join("guest/arm64");
    if !g.join("vmlinuz").is_file() || !g.join("initrd.cpio.gz").is_file() {
        skip(&format!(
            "no guest in {} (run guest/linux/build.sh arm64)",
            g.display()
        ));
        return None;
    }
    Some(sdk.into())
}

/// The SDK's multicore config, or a loud skip.
pub fn smp_config(sdk: &Path, suite: &str, test: &str) -> Option<&'static str> {
    let c = keel_sel4::abi::board::SMP_CONFIG;
    if host::Sdk::default_config(sdk, keel_sel4::abi::board::NAME) == c {
        Some(c)
    } else {
        super::skip_log::loud_skip(&format!(
            "SKIP keel-sel4 {suite}::{test}: the SDK at {} has no {c} config; NOT tested",
            sdk.display()
        ));
        None
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The VMM, console and switch ELFs, built once.
pub fn pd_elves() -> host::PdElves {
    static ELVES: OnceLock<host::PdElves> = OnceLock::new();
    ELVES
        .get_or_init(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            host::build_pd_elves(&repo, &target_dir()).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// A booted system: its console output, how the run ended, its Microkit system file.
pub struct Booted {
    /// Everything the console printed.
    pub console: String,
    /// VMs up and stopped, first ready time.
    pub outcome: RunOutcome,
    /// The generated Microkit system file.
    pub system_file: String,
}

/// Build `toml` (paths may use ${KEEL_CACHE}) for kernel `config` into
/// `CARGO_TARGET_TMPDIR/<prefix>-<name>` and boot it with QEMU `-smp` = the kernel's
/// cores until every VM stopped (or 240 s).
pub fn build_and_run(sdk: &Path, prefix: &str, name: &str, toml: &str, config: &str) -> Booted {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let system = keel_spec::parse_str(toml, &dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let opts = BuildOptions {
        sdk: sdk.into(),
        board: keel_sel4::abi::board::NAME.into(),
        config: Some(config.into()),
        out: dir.join("out"),
        vmm_elf: pd_elves().vmm,
        console_elf: pd_elves().console,
        switch_elf: pd_elves().switch,
        test_stall_vm: None,
    };
    let built = host::build(&system, &opts).unwrap_or_else(|e| panic!("{name}: build: {e}"));
    let system_file = std::fs::read_to_string(&built.system_file).unwrap();
    let mut out = Vec::new();
    let outcome = host::run_qemu(
        &built.image,
        built.cores,
        Some(Duration::from_secs(240)),
        Some(system.vms().len()),
        false,
        &mut out,
    );
    let console = String::from_utf8_lossy(&out).into_owned();
    std::fs::write(dir.join("console.log"), &console).unwrap();
    match outcome {
        Ok(outcome) => Booted {
            console,
            outcome,
            system_file,
        },
        Err(e) => panic!("{name}: {e}\n--- console ---\n{console}"),
    }
}

/// One Debian arm64 VM of the test guest images.
pub fn vm_toml(name: &str, vcpus: u32, memory: &str, cmdline: &str, extra: &str) -> String {
    format!(
        r#"
[[vm]]
name = "{name}"
arch = "aarch64"
vcpus = {vcpus}
memory = "{memory}"
kernel = "${{KEEL_CACHE}}/guest/arm64/vmlinuz"
initrd = "${{KEEL_CACHE}}/guest/arm64/initrd.cpio.gz"
cmdline = "{cmdline}"
{extra}
"#
    )
}

/// Standard base64 (the guest's /init decodes `keel.cmd=` with it).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
