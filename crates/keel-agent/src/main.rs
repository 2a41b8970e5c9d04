//! `keel-agent`: the storage agent of a Linux storage driver VM (see the library's docs and
//! docs/driver-vms.md). Started by the guest image's `/init` when the kernel command line
//! has `keel.blk=`; takes no arguments there.
//!
//! Test-only overrides (the integration tests run the agent on the build host):
//! `--cmdline <text>` instead of `/proc/cmdline`, `--region-file <path>` once per client
//! (a regular file mapped instead of `/dev/mem`), `--bell <path>` instead of
//! `keel.blkbell=`, `--disk <serial>=<path>` instead of looking the serial up in
//! `/sys/block`.

use std::path::PathBuf;
use std::process::ExitCode;

use keel_agent::Options;

const USAGE: &str = "usage: keel-agent (reads keel.blk= and keel.blkbell= from /proc/cmdline)";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        sys_block: PathBuf::from("/sys/block"),
        ..Options::default()
    };
    let mut cmdline = None;
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--cmdline" => cmdline = Some(value("--cmdline")?),
            "--region-file" => opts.region_files.push(value("--region-file")?.into()),
            "--bell" => opts.bell = Some(value("--bell")?.into()),
            "--disk" => {
                let v = value("--disk")?;
                let (serial, path) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--disk {v:?}: expected <serial>=<path>"))?;
                opts.disks.push((serial.to_string(), path.into()));
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    opts.cmdline = match cmdline {
        Some(c) => c,
        None => std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?,
    };
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("keel-agent: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match keel_agent::run(&opts) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("keel-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
