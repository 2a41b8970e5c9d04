//! Building and booting Microkit images in the seL4 tests that measure guests
//! (`sel4_time.rs`): the prerequisites (with their loud skips), the system TOML of one
//! VM, and `keel-probe` result lines. Included by the test binaries with `#[path]`, next
//! to `skip.rs` (as `skip_log`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use keel_sel4::host::{self, BuildOptions};

/// `$KEEL_CACHE`, else `~/.cache/keel`.
pub fn cache() -> PathBuf {
    std::env::var_os("KEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/keel")
        })
}

/// The SDK, or `None` after `skip(why)`: needs `MICROKIT_SDK` and the arm64 guest with
/// `keel-probe` (guest/linux/build.sh arm64).
pub fn prerequisites(skip: &dyn Fn(&str)) -> Option<PathBuf> {
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
    let manifest = std::fs::read_to_string(g.join("manifest.txt")).unwrap_or_default();
    if !manifest.contains("/bin/keel-probe") {
        skip(&format!(
            "the guest in {} has no /bin/keel-probe (rebuild it: guest/linux/build.sh arm64)",
            g.display()
        ));
        return None;
    }
    Some(sdk.into())
}

/// The SDK's multicore config, or `None` after `skip(why)`.
pub fn smp_config(sdk: &Path, skip: &dyn Fn(&str)) -> Option<&'static str> {
    let c = keel_sel4::abi::board::SMP_CONFIG;
    if host::Sdk::default_config(sdk, keel_sel4::abi::board::NAME) == c {
        Some(c)
    } else {
        skip(&format!(
            "the SDK at {} has no {c} config; multicore NOT tested",
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

/// The VMM, console and switch ELFs, built once per test binary.
pub fn pd_elves() -> host::PdElves {
    static ELVES: OnceLock<host::PdElves> = OnceLock::new();
    ELVES
        .get_or_init(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            host::build_pd_elves(&repo, &target_dir()).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// An image built by a test.
pub struct Built {
    /// The loader image.
    pub image: PathBuf,
    /// The test's directory (console.log goes here).
    pub dir: PathBuf,
    /// Cores of the kernel config (QEMU's `-smp`).
    pub cores: u32,
    /// The generated Microkit system file.
    pub system_file: String,
}

/// Build `toml` (paths may use ${KEEL_CACHE}) for kernel `config` into
/// `CARGO_TARGET_TMPDIR/sel4-<name>`.
pub fn build(sdk: &Path, name: &str, toml: &str, config: &str) -> Built {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sel4-{name}"));
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
    assert_eq!(built.config, config);
    let system_file = std::fs::read_to_string(&built.system_file).unwrap();
    Built {
        image: built.image,
        dir,
        cores: built.cores,
        system_file,
    }
}

/// One `[[vm]]` of the Debian arm64 guest running the shell snippet `cmd` (`keel.cmd=`).
pub fn vm_toml(name: &str, memory: &str, cmd: &str, extra: &str) -> String {
    format!(
        r#"
[[vm]]
name = "{name}"
arch = "aarch64"
vcpus = 1
memory = "{memory}"
kernel = "${{KEEL_CACHE}}/guest/arm64/vmlinuz"
initrd = "${{KEEL_CACHE}}/guest/arm64/initrd.cpio.gz"
cmdline = "quiet keel.cmd={}"
{extra}
"#,
        base64(cmd.as_bytes())
    )
}

/// Standard base64 with padding.
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

/// The `key=value` pairs of the last `KEEL-PROBE <mode>` line VM `vm` printed
/// (`<vm>| KEEL-PROBE <mode> k=v ...` on the seL4 console).
pub fn probe_line(console: &str, vm: &str, mode: &str) -> Option<Vec<(String, String)>> {
    let prefix = format!("{vm}| KEEL-PROBE {mode} ");
    let line = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .next_back()?;
    Some(pairs(line))
}

/// The `key=value` words of a probe line.
pub fn pairs(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The number `key` of a probe line.
pub fn probe_value(line: &[(String, String)], key: &str) -> Option<f64> {
    line.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}
