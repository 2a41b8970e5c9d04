//! `keel sel4 build` and `keel sel4 run`: Keel's seL4 backend from the command line.
//!
//! `build` turns a system description into a bootable Microkit image: it builds (or takes)
//! the generic VMM protection-domain ELF, appends each VM's payload, writes the Microkit
//! system file and runs the SDK's `microkit` tool (`keel_sel4::host`). `run` boots the
//! image under `qemu-system-aarch64` and returns when every VM has stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_sel4::abi::board;
use keel_sel4::host::{self, BuildError, BuildOptions, RunOutcome};

/// Usage of `keel sel4`.
pub const USAGE: &str = "\
USAGE:
    keel sel4 build <system.toml> [--board BOARD] [--config CONFIG] [--out DIR] [--sdk DIR] [--vmm-elf PATH]
    keel sel4 run <loader.img> [--smp N] [--timeout SECS]

build   validate the system for seL4, build the VMM and console protection domains, write the Microkit
        system file and run the SDK's microkit tool; prints the image path.
        --board     Microkit board (default and only: qemu_virt_aarch64)
        --config    the SDK's kernel config: debug (1 core), smp-debug (4 cores), ...
                    (default: smp-debug when the SDK has it, else debug)
        --out       output directory (default: ./keel-sel4-<system name>)
        --sdk       Microkit SDK (default: $MICROKIT_SDK)
        --vmm-elf   a prebuilt keel-sel4-vmm ELF instead of building it with cargo (the
                    keel-sel4-console, -switch and -admin ELFs of the same build are taken
                    from beside it)
        KEEL_SEL4_TEST_STALL_VMM=<vm>  (tests) that VM's VMM stalls mid-line at its first fault
        KEEL_SEL4_TEST_FAULT_VMM=<vm>  (tests) that VM's VMM faults when its guest writes 0x70000000
run     boot the image in qemu-system-aarch64 (-machine virt,virtualization=on -cpu cortex-a53);
        the console is the seL4 debug console; returns 0 when every VM powered off
        --smp       CPUs of the emulated board (default: the cores of the config the image
                    was built for, recorded in <image>.keel)
        --timeout   give up after SECS seconds (exit 1)
";

/// A failed `keel sel4` command: the message and the exit status (2: bad input, 1: failure).
#[derive(Debug)]
pub struct Sel4Failure {
    /// Exit status.
    pub status: u8,
    /// One-line message.
    pub message: String,
}

fn input(message: impl Into<String>) -> Sel4Failure {
    Sel4Failure {
        status: 2,
        message: message.into(),
    }
}

fn failure(message: impl Into<String>) -> Sel4Failure {
    Sel4Failure {
        status: 1,
        message: message.into(),
    }
}

/// Arguments of `keel sel4 build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildArgs {
    /// The system description.
    pub system: PathBuf,
    /// Board.
    pub board: String,
    /// Kernel configuration (`None`: the SDK's default).
    pub config: Option<String>,
    /// Output directory.
    pub out: Option<PathBuf>,
    /// SDK directory.
    pub sdk: Option<PathBuf>,
    /// Prebuilt VMM ELF.
    pub vmm_elf: Option<PathBuf>,
}

/// Arguments of `keel sel4 run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// The loader image.
    pub image: PathBuf,
    /// Emulated CPUs (`None`: the cores of the image's kernel).
    pub smp: Option<u32>,
    /// Time limit.
    pub timeout: Option<Duration>,
}

fn value<'a>(
    it: &mut impl Iterator<Item = &'a String>,
    flag: &str,
) -> Result<&'a String, Sel4Failure> {
    it.next()
        .ok_or_else(|| input(format!("{flag} needs a value")))
}

/// Parse `keel sel4 build` arguments (after `build`).
pub fn parse_build(args: &[String]) -> Result<BuildArgs, Sel4Failure> {
    let mut it = args.iter();
    let mut system = None;
    let mut a = BuildArgs {
        system: PathBuf::new(),
        board: board::NAME.into(),
        config: None,
        out: None,
        sdk: None,
        vmm_elf: None,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--board" => a.board = value(&mut it, arg)?.clone(),
            "--config" => a.config = Some(value(&mut it, arg)?.clone()),
            "--out" | "-o" => a.out = Some(value(&mut it, arg)?.into()),
            "--sdk" => a.sdk = Some(value(&mut it, arg)?.into()),
            "--vmm-elf" => a.vmm_elf = Some(value(&mut it, arg)?.into()),
            s if s.starts_with('-') => {
                return Err(input(format!("unknown option {s:?} for keel sel4 build")));
            }
            s if system.is_none() => system = Some(PathBuf::from(s)),
            s => return Err(input(format!("unexpected argument {s:?}"))),
        }
    }
    a.system = system.ok_or_else(|| input("keel sel4 build needs a system file"))?;
    Ok(a)
}

/// Parse `keel sel4 run` arguments (after `run`).
pub fn parse_run(args: &[String]) -> Result<RunArgs, Sel4Failure> {
    let mut it = args.iter();
    let mut image = None;
    let mut a = RunArgs {
        image: PathBuf::new(),
        smp: None,
        timeout: None,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smp" => {
                let v = value(&mut it, arg)?;
                a.smp = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=8).contains(n))
                        .ok_or_else(|| input(format!("--smp {v:?}: expected 1..8")))?,
                );
            }
            "--timeout" => {
                let v = value(&mut it, arg)?;
                let s: u64 = v
                    .parse()
                    .map_err(|_| input(format!("--timeout {v:?}: expected seconds")))?;
                a.timeout = Some(Duration::from_secs(s));
            }
            s if s.starts_with('-') => {
                return Err(input(format!("unknown option {s:?} for keel sel4 run")));
            }
            s if image.is_none() => image = Some(PathBuf::from(s)),
            s => return Err(input(format!("unexpected argument {s:?}"))),
        }
    }
    a.image = image.ok_or_else(|| input("keel sel4 run needs an image"))?;
    Ok(a)
}

/// The repository this `keel` was built from (to build the VMM ELF with cargo).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build `keel-sel4-vmm` and `keel-sel4-console` for seL4 with cargo and return their
/// paths.
pub fn build_pd_elves() -> Result<host::PdElves, Sel4Failure> {
    let root = repo_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    host::build_pd_elves(&root, &target_dir).map_err(failure)
}

/// `keel sel4 build`: returns the image path.
pub fn build(args: &BuildArgs) -> Result<PathBuf, Sel4Failure> {
    let sdk = args
        .sdk
        .clone()
        .or_else(|| std::env::var_os("MICROKIT_SDK").map(PathBuf::from))
        .ok_or_else(|| input(BuildError::NoSdk.to_string()))?;
    // Check the SDK and the system before the (slow) ELF build, so bad input fails at once.
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| host::Sdk::default_config(&sdk, &args.board).into());
    let checked = host::Sdk::open(&sdk, &args.board, &config).map_err(|e| input(e.to_string()))?;
    eprintln!(
        "keel: seL4 kernel config {} of {}: {} core(s) (CONFIG_MAX_NUM_NODES)",
        checked.config, args.board, checked.cores
    );
    let system = keel_spec::load(&args.system).map_err(|e| input(e.to_string()))?;
    host::check(&system, &checked).map_err(|e| input(e.to_string()))?;
    // `--vmm-elf`: the console and switch ELFs are the `keel-sel4-console` and
    // `keel-sel4-switch` of the same build, beside it.
    let elves = match &args.vmm_elf {
        Some(p) => host::PdElves::beside(p),
        None => build_pd_elves()?,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("keel-sel4-{}", system.name())));
    let opts = BuildOptions {
        sdk,
        board: args.board.clone(),
        config: Some(checked.config.clone()),
        out,
        vmm_elf: elves.vmm,
        console_elf: elves.console,
        switch_elf: elves.switch,
        test_stall_vm: std::env::var(host::TEST_STALL_VAR).ok(),
        admin_elf: elves.admin,
        test_fault_vm: std::env::var(host::TEST_FAULT_VAR).ok(),
        // Each VM's `restart` policy, applied by the admin PD when its VMM faults.
        restart: host::restart_plans(
            system
                .vms()
                .iter()
                .map(|v| (v.name.as_str(), v.restart.as_str())),
        )
        .map_err(|e| input(format!("sel4 build: {e}")))?,
    };
    match host::build(&system, &opts) {
        Ok(o) => Ok(o.image),
        Err(
            e @ (BuildError::Io { .. }
            | BuildError::PayloadTooLarge { .. }
            | BuildError::InitialiserSlots { .. }
            | BuildError::Microkit(_)),
        ) => Err(input(e.to_string())),
        Err(e) => Err(failure(e.to_string())),
    }
}

/// Boot `args.image` in QEMU, copy its console to `out`, and return when every VM that came
/// up has stopped, at the timeout, or when QEMU exits (`keel_sel4::host::run_qemu`).
pub fn run_with(args: &RunArgs, out: &mut dyn Write) -> Result<RunOutcome, Sel4Failure> {
    if !args.image.is_file() {
        return Err(input(format!("{}: no such image", args.image.display())));
    }
    let info = host::ImageInfo::read(&args.image);
    let expected = info
        .as_ref()
        .map(|i| i.vms)
        .or_else(|| args.image.parent().and_then(host::vms_in_build_dir));
    let cores = info.as_ref().map_or(1, |i| i.cores);
    let smp = args.smp.unwrap_or(cores);
    if smp < cores {
        return Err(input(format!(
            "--smp {smp}: the image's seL4 kernel ({}) boots {cores} cores and waits for all of them",
            info.as_ref().map_or("?", |i| i.config.as_str())
        )));
    }
    if info.is_none() && args.smp.is_none() {
        eprintln!(
            "keel: {} has no build record ({}); assuming a single-core kernel (-smp 1)",
            args.image.display(),
            host::ImageInfo::path(&args.image).display()
        );
    }
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    host::run_qemu(&args.image, smp, args.timeout, expected, interactive, out)
        .map_err(|e| failure(e.to_string()))
}

/// `keel sel4 run`.
pub fn run(args: &RunArgs) -> Result<RunOutcome, Sel4Failure> {
    run_with(args, &mut std::io::stdout())
}

/// `keel sel4 <build|run> …` (the arguments after `sel4`).
pub fn main(args: &[String]) -> Result<(), Sel4Failure> {
    match args.first().map(String::as_str) {
        Some("build") => {
            let a = parse_build(&args[1..])?;
            let image = build(&a)?;
            println!("{}", image.display());
            Ok(())
        }
        Some("run") => run(&parse_run(&args[1..])?).map(|_| ()),
        Some("--help" | "-h" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(input(format!(
            "unknown keel sel4 command {other:?}\n{USAGE}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn build_takes_system_board_and_out() {
        let a = parse_build(&strings(&[
            "s.toml",
            "--board",
            "qemu_virt_aarch64",
            "--out",
            "o",
        ]))
        .unwrap();

        assert_eq!(a.system, PathBuf::from("s.toml"));
        assert_eq!(a.out, Some(PathBuf::from("o")));
    }

    #[test]
    fn build_takes_a_config() {
        let a = parse_build(&strings(&["s.toml", "--config", "debug"])).unwrap();

        assert_eq!(a.config.as_deref(), Some("debug"));
    }

    #[test]
    fn run_smp_defaults_to_the_image_record() {
        let a = parse_run(&strings(&["i.img"])).unwrap();

        assert_eq!(a.smp, None);
    }

    #[test]
    fn run_with_fewer_cpus_than_the_kernel_is_bad_input() {
        let dir = std::env::temp_dir().join(format!("keel-sel4-smp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("loader.img");
        std::fs::write(&image, b"x").unwrap();
        let info = host::ImageInfo {
            board: board::NAME.into(),
            config: "smp-debug".into(),
            cores: 4,
            vms: 1,
        };
        std::fs::write(host::ImageInfo::path(&image), info.to_text()).unwrap();
        let args = RunArgs {
            image,
            smp: Some(2),
            timeout: None,
        };

        let e = run_with(&args, &mut Vec::new()).unwrap_err();

        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(e.status, 2);
        assert!(e.message.contains("boots 4 cores"), "{}", e.message);
    }

    #[test]
    fn build_without_system_is_bad_input() {
        assert_eq!(parse_build(&[]).unwrap_err().status, 2);
    }

    #[test]
    fn run_rejects_smp_zero() {
        assert_eq!(
            parse_run(&strings(&["i.img", "--smp", "0"]))
                .unwrap_err()
                .status,
            2
        );
    }

    #[test]
    fn missing_sdk_is_bad_input_naming_microkit_sdk() {
        let a = BuildArgs {
            system: "s.toml".into(),
            board: board::NAME.into(),
            config: None,
            out: None,
            sdk: Some("/nonexistent-sdk".into()),
            vmm_elf: None,
        };

        let e = build(&a).unwrap_err();

        assert_eq!(e.status, 2);
        assert!(e.message.contains("not a Microkit SDK"), "{}", e.message);
    }
}
