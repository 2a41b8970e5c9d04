//! Building and booting Microkit images of Keel systems under QEMU, for the seL4
//! end-to-end test binaries (`sel4_e2e`, `sel4_memory`, `sel4_colour`, `sel4_time`): the
//! prerequisites with their loud skips, the build, the boot with a timeout and its console,
//! the system TOML of one Debian arm64 VM and `keel-probe` result lines. Included by the
//! test binaries with `#[path]`, next to `skip.rs` (as `skip_log`); each binary uses part
//! of it.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use keel_sel4::host::{self, BuildOptions, RunOutcome};

/// One QEMU at a time: the machine has two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Hold [`SERIAL`] (a test that panicked while holding it does not stop the others).
pub fn one_qemu() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A test binary: the names in its skip lines and its scratch directories.
pub struct Suite {
    /// `SKIP keel-sel4 <name>::<test>: ...`.
    pub name: &'static str,
    /// Scratch directories are `CARGO_TARGET_TMPDIR/<dir>-<name>`.
    pub dir: &'static str,
    /// What the skip without `MICROKIT_SDK` says was not tested end to end.
    pub untested: &'static str,
    /// What the skip for an SDK without the multicore config adds after
    /// "the SDK at <sdk> has no <config> config".
    pub no_smp: &'static str,
    /// The guest must have `/bin/keel-probe` (guest/probe).
    pub probe: bool,
}

impl Suite {
    /// Print a loud skip of `test` for `why` and record it in `$KEEL_SKIP_LOG`.
    pub fn skip(&self, test: &str, why: &str) {
        super::skip_log::loud_skip(&format!("SKIP keel-sel4 {}::{test}: {why}", self.name));
    }

    /// `CARGO_TARGET_TMPDIR/<dir>-<name>`, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", self.dir));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The SDK, or `None` after a loud skip of `test`: needs `MICROKIT_SDK` and the arm64
    /// guest (guest/linux/build.sh arm64), with `keel-probe` when the suite needs it.
    pub fn prerequisites(&self, test: &str) -> Option<PathBuf> {
        let Some(sdk) = std::env::var_os("MICROKIT_SDK") else {
            self.skip(
                test,
                &format!(
                    "MICROKIT_SDK is not set; {} was NOT tested end to end",
                    self.untested
                ),
            );
            return None;
        };
        let g = cache().join("guest/arm64");
        if !g.join("vmlinuz").is_file() || !g.join("initrd.cpio.gz").is_file() {
            self.skip(
                test,
                &format!(
                    "no guest in {} (run guest/linux/build.sh arm64)",
                    g.display()
                ),
            );
            return None;
        }
        if self.probe
            && !std::fs::read_to_string(g.join("manifest.txt"))
                .unwrap_or_default()
                .contains("/bin/keel-probe")
        {
            self.skip(
                test,
                &format!(
                    "the guest in {} has no /bin/keel-probe (rebuild it: guest/linux/build.sh arm64)",
                    g.display()
                ),
            );
            return None;
        }
        Some(sdk.into())
    }

    /// The SDK's multicore config, or `None` after a loud skip of `test`.
    pub fn smp_config(&self, sdk: &Path, test: &str) -> Option<&'static str> {
        let c = keel_sel4::abi::board::SMP_CONFIG;
        if host::Sdk::default_config(sdk, keel_sel4::abi::board::NAME) == c {
            Some(c)
        } else {
            self.skip(
                test,
                &format!(
                    "the SDK at {} has no {c} config{}",
                    sdk.display(),
                    self.no_smp
                ),
            );
            None
        }
    }

    /// Build `toml` (paths may use ${KEEL_CACHE}) for kernel `config` into
    /// [`Suite::dir`]`(name)`.
    pub fn build(&self, sdk: &Path, name: &str, toml: &str, config: &str) -> Built {
        self.build_with_stall(sdk, name, toml, config, None)
    }

    /// [`Suite::build`], with the VMM of VM `stall` stalling mid-line (the test knob).
    pub fn build_with_stall(
        &self,
        sdk: &Path,
        name: &str,
        toml: &str,
        config: &str,
        stall: Option<&str>,
    ) -> Built {
        self.build_with(sdk, name, toml, config, |opts| {
            opts.test_stall_vm = stall.map(String::from)
        })
    }

    /// [`Suite::build`], with `tweak` applied to the build options (test knobs, restart
    /// policies).
    pub fn build_with(
        &self,
        sdk: &Path,
        name: &str,
        toml: &str,
        config: &str,
        tweak: impl FnOnce(&mut BuildOptions),
    ) -> Built {
        let dir = self.dir(name);
        let system = keel_spec::parse_str(toml, &dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut opts = build_options(sdk, config, dir.join("out"));
        tweak(&mut opts);
        let built = host::build(&system, &opts).unwrap_or_else(|e| panic!("{name}: build: {e}"));
        assert_eq!(built.config, config);
        let system_file = std::fs::read_to_string(&built.system_file).unwrap();
        Built {
            system,
            image: built.image,
            dir,
            cores: built.cores,
            system_file,
        }
    }

    /// [`Suite::build`] and boot the image with QEMU `-smp` = the kernel's cores (one QEMU
    /// at a time) until every VM stopped or `timeout`; the console goes to
    /// `console.log` in the build directory too. A failed run panics with the console.
    pub fn build_and_run(
        &self,
        sdk: &Path,
        name: &str,
        toml: &str,
        config: &str,
        timeout: Duration,
    ) -> Booted {
        let _one = one_qemu();
        let Built {
            system,
            image,
            dir,
            cores,
            system_file,
        } = self.build(sdk, name, toml, config);
        let mut out = Vec::new();
        let outcome = host::run_qemu(
            &image,
            cores,
            Some(timeout),
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
}

/// `$KEEL_CACHE`, else `~/.cache/keel`.
pub fn cache() -> PathBuf {
    std::env::var_os("KEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/keel")
        })
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

/// The options of a build for the board, kernel `config`, into `out`, with
/// [`pd_elves`].
pub fn build_options(sdk: &Path, config: &str, out: PathBuf) -> BuildOptions {
    let elves = pd_elves();
    BuildOptions {
        sdk: sdk.into(),
        board: keel_sel4::abi::board::NAME.into(),
        config: Some(config.into()),
        out,
        vmm_elf: elves.vmm,
        console_elf: elves.console,
        switch_elf: elves.switch,
        test_stall_vm: None,
        admin_elf: elves.admin,
        test_fault_vm: None,
        restart: Vec::new(),
    }
}

/// An image built by a test.
pub struct Built {
    /// The system it was built from.
    pub system: keel_spec::System,
    /// The loader image.
    pub image: PathBuf,
    /// The test's directory (console.log goes here).
    pub dir: PathBuf,
    /// Cores of the kernel config (QEMU's `-smp`).
    pub cores: u32,
    /// The generated Microkit system file.
    pub system_file: String,
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

/// Start `cmd` (a QEMU) with `stdin`, its stdout piped and its stderr dropped.
pub fn spawn(cmd: &mut Command, stdin: Stdio) -> Child {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-aarch64")
}

/// The console of `child` (stdout piped), line by line: each line is added and passed to
/// `stop` until `stop` returns true, the output ends or `timeout` has passed (a console
/// that falls silent counts too: lines are read on their own thread); then the child is
/// killed.
pub fn collect_console(
    mut child: Child,
    timeout: Duration,
    mut stop: impl FnMut(&str) -> bool,
) -> String {
    let mut console = String::new();
    if let Some(stdout) = child.stdout.take() {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        // Ends when the pipe closes (the child's exit or kill below, and any process it
        // left holding the pipe); never joined, so such a process cannot hang the test.
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(n) if n > 0 => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                // Timed out (or the output ended).
                break;
            };
            let l = String::from_utf8_lossy(&line);
            console.push_str(&l);
            if stop(&l) {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    console
}

/// One `[[vm]]` of the Debian arm64 guest images.
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

/// The kernel command line that runs the shell snippet `cmd` (the guest's /init decodes
/// `keel.cmd=` and runs it).
pub fn keel_cmd(cmd: &str) -> String {
    format!("quiet keel.cmd={}", base64(cmd.as_bytes()))
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
