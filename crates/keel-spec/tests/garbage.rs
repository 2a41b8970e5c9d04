//! No input makes the parser panic: thousands of deterministic mutations of valid files.

mod common;

use common::Scratch;
use keel_spec::{Loader, ram_layout};

const SEEDS: &[&str] = &[
    r#"
[system]
name = "demo"
pcpus = 4

[[vm]]
name = "web"
arch = "x86_64"
vcpus = 2
memory = "1G"
kernel = "bzImage"
initrd = "initrd.cpio"
cmdline = "console=ttyS0"
serial = "file:serial.log"
placement = { pcpus = [0, 1], priority = 100, budget_us = 1000, period_us = 1000 }

[[vm.disk]]
path = "disk.img"
read_only = false
id = "data"

[[vm.console]]
output = "stdio"

[vm.rng]
"#,
    r#"
[[vm]]
name = "arm"
arch = "aarch64"
kernel = "Image"
[[vm.ram]]
base = 0x4000_0000
size = "256M"
[[vm.ram]]
base = "0x1_0000_0000"
size = 0x1000_0000
"#,
    r#"
[[vm]]
name = "a"
arch = "x86_64"
kernel = "${KEEL_CACHE}/vmlinux"
memory = 268435456
[[vm.ram]]
base = 0
size = "4G"
[[vm]]
name = "a"
kernel = "vmlinux"
memory = "16M"
"#,
    r#"
[[shared]]
name = "x"
size = "64K"
[[vm]]
name = "a"
arch = "x86_64"
kernel = "vmlinux"
memory = "64M"
[[vm.shared]]
region = "x"
base = "0x8000_0000"
access = "rw"
[[vm]]
name = "b"
arch = "aarch64"
kernel = "Image"
memory = "64M"
[[vm.shared]]
region = "x"
base = 0xffff_f000
access = "ro"
size = "64K"
"#,
    r#"
[[vm]]
name = "ctl"
arch = "aarch64"
kernel = "Image"
memory = "64M"
[[vm.control]]
vm = "web"
rights = ["start", "stop", "restart", "status"]
[[vm]]
name = "web"
arch = "aarch64"
kernel = "Image"
memory = "64M"
start = false
"#,
];

/// Fragments likely to reach odd corners: sizes, addresses, env syntax, TOML structure.
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "64",
    "65",
    "0x",
    "0xffff_ffff_ffff_ffff",
    "9223372036854775807",
    "-9223372036854775808",
    "\"18446744073709551615G\"",
    "\"1T\"",
    "\"0xC000_0000\"",
    "\"${\"",
    "\"${}\"",
    "\"$${X}\"",
    "\"${HOME}\"",
    "\"file:\"",
    "\"file:/\"",
    "\"null\"",
    "[[vm]]",
    "[[vm.ram]]",
    "[[vm.disk]]",
    "[vm.rng]",
    "[[shared]]",
    "[[vm.shared]]",
    "[[vm.control]]",
    "rights",
    "\"start\"",
    "start",
    "region",
    "access",
    "\"ro\"",
    "\"rw\"",
    "[system]",
    "{",
    "}",
    "[",
    "]",
    "=",
    "\"",
    "'",
    "\n",
    ",",
    ".",
    "name",
    "vcpus",
    "memory",
    "ram",
    "base",
    "size",
    "placement",
    "pcpus",
    "priority",
    "budget_us",
    "period_us",
    "kernel",
    "initrd",
    "disk",
    "console",
    "path",
    "id",
    "read_only",
    "true",
    "inf",
    "nan",
    "1979-05-27",
    "é",
    "\u{0}",
    "\u{feff}",
    "\"\\u0000\"",
    "#",
    "\"\"\"",
    "arch",
    "\"aarch64\"",
    "\"x86_64\"",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                bytes.splice(at..at, token.bytes());
            }
            2 => {
                let end = (at + rng.below(16)).min(bytes.len());
                bytes.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
            4 => bytes.truncate(at),
            _ => {
                // Replace a digit run's neighbourhood with a number token.
                let token = TOKENS[rng.below(8)];
                let end = (at + 2).min(bytes.len());
                bytes.splice(at..end, token.bytes());
            }
        }
    }
    bytes
}

#[test]
fn mutated_inputs_never_panic() {
    let scratch = Scratch::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ok = 0usize;
    let mut errors = 0usize;
    for i in 0..20_000 {
        let seed = SEEDS[i % SEEDS.len()].as_bytes();
        let mutated = mutate(&mut rng, seed);
        let text = String::from_utf8_lossy(&mutated).into_owned();
        let host_checks = i % 2 == 0;
        let result = std::panic::catch_unwind(|| {
            let loader = Loader::new()
                .env(&common::test_env)
                .host_checks(host_checks);
            let result = loader.parse_str(&text, &scratch.dir);
            if let Ok(system) = &result {
                for vm in system.vms() {
                    let _ = ram_layout(vm);
                }
            }
            result.map(|_| ()).map_err(|e| e.to_string())
        });
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(message)) => {
                assert!(
                    !message.is_empty() && !message.contains('\n'),
                    "{message:?} for {text:?}"
                );
                errors += 1;
            }
            Err(_) => panic!("parse_str panicked on input {i}: {text:?}"),
        }
    }
    // The mutations must exercise both outcomes, or this test proves little.
    assert!(ok > 100, "only {ok} inputs parsed");
    assert!(errors > 1000, "only {errors} inputs were rejected");
}

#[test]
fn random_bytes_never_panic() {
    let scratch = Scratch::new();
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let result = std::panic::catch_unwind(|| {
            let _ = keel_spec::parse_str(&text, &scratch.dir);
        });
        assert!(result.is_ok(), "parse_str panicked on {text:?}");
    }
}
