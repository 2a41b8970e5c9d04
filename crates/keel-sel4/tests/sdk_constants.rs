//! Compares Keel's seL4/Microkit ABI constants with the headers of the SDK in
//! `MICROKIT_SDK` (board qemu_virt_aarch64, configs debug and, when the SDK has it, smp-debug:
//! one VMM ELF serves both, so their numbers must agree with Keel's). Invocation labels, fault types and
//! vCPU register numbers are generated per kernel configuration, so a mismatch here means
//! the VMM would invoke the wrong kernel method: fail loudly.
//!
//! Without `MICROKIT_SDK` the test prints a loud skip line (and appends it to `$KEEL_SKIP_LOG`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use keel_sel4::abi;

#[path = "common/skip.rs"]
mod skip_log;
use skip_log::loud_skip;

fn sdk_include(config: &str) -> Option<PathBuf> {
    let Some(sdk) = std::env::var_os("MICROKIT_SDK") else {
        loud_skip(&format!(
            "SKIP keel-sel4 sdk_constants ({config}): MICROKIT_SDK is not set; seL4 ABI constants NOT checked against an SDK"
        ));
        return None;
    };
    let inc = Path::new(&sdk)
        .join("board")
        .join(abi::board::NAME)
        .join(config)
        .join("include");
    if config != abi::board::CONFIG && !inc.is_dir() {
        loud_skip(&format!(
            "SKIP keel-sel4 sdk_constants ({config}): MICROKIT_SDK={} has no {config} config",
            Path::new(&sdk).display()
        ));
        return None;
    }
    assert!(
        inc.is_dir(),
        "MICROKIT_SDK={} has no {}",
        Path::new(&sdk).display(),
        inc.display()
    );
    Some(inc)
}

/// The kernel configuration: every `#define CONFIG_X` in kernel/gen_config.h.
fn config(inc: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(inc.join("kernel/gen_config.h")).expect("gen_config.h");
    text.lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Evaluate a preprocessor condition made of `defined(X)`, `!`, `&&`, `||` and parentheses.
fn eval(expr: &str, defs: &HashSet<String>) -> bool {
    let toks: Vec<String> = expr
        .replace("(", " ( ")
        .replace(")", " ) ")
        .replace("!", " ! ")
        .replace("&&", " && ")
        .replace("||", " || ")
        .split_whitespace()
        .map(String::from)
        .collect();
    fn or(t: &[String], i: &mut usize, d: &HashSet<String>) -> bool {
        let mut v = and(t, i, d);
        while t.get(*i).map(String::as_str) == Some("||") {
            *i += 1;
            let r = and(t, i, d);
            v = v || r;
        }
        v
    }
    fn and(t: &[String], i: &mut usize, d: &HashSet<String>) -> bool {
        let mut v = unary(t, i, d);
        while t.get(*i).map(String::as_str) == Some("&&") {
            *i += 1;
            let r = unary(t, i, d);
            v = v && r;
        }
        v
    }
    fn unary(t: &[String], i: &mut usize, d: &HashSet<String>) -> bool {
        match t.get(*i).map(String::as_str) {
            Some("!") => {
                *i += 1;
                !unary(t, i, d)
            }
            Some("(") => {
                *i += 1;
                let v = or(t, i, d);
                *i += 1; // ')'
                v
            }
            Some("defined") => {
                *i += 2; // 'defined' '('
                let name = t[*i].clone();
                *i += 2; // name ')'
                d.contains(&name)
            }
            other => panic!("unsupported preprocessor token {other:?} in {t:?}"),
        }
    }
    let mut i = 0;
    or(&toks, &mut i, defs)
}

/// Every enumerator of every enum in `files`, in order, after evaluating `#if`/`#ifdef`.
fn enums(files: &[PathBuf], defs: &HashSet<String>, known: &mut HashMap<String, i64>) {
    for f in files {
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .replace("\\\n", " ");
        let mut stack: Vec<bool> = Vec::new();
        let mut in_enum = false;
        let mut next: i64 = 0;
        for raw in text.lines() {
            let l = raw.trim();
            if let Some(c) = l.strip_prefix("#if ") {
                stack.push(eval(c, defs));
                continue;
            }
            if let Some(c) = l.strip_prefix("#ifdef ") {
                stack.push(defs.contains(c.trim()));
                continue;
            }
            if let Some(c) = l.strip_prefix("#ifndef ") {
                stack.push(!defs.contains(c.trim()));
                continue;
            }
            if l.starts_with("#else") {
                if let Some(v) = stack.last_mut() {
                    *v = !*v;
                }
                continue;
            }
            if l.starts_with("#endif") {
                stack.pop();
                continue;
            }
            if stack.iter().any(|v| !v) {
                continue;
            }
            if l.contains("enum") && l.ends_with('{') {
                in_enum = true;
                next = 0;
                continue;
            }
            if !in_enum {
                continue;
            }
            if l.starts_with('}') {
                in_enum = false;
                continue;
            }
            let l = l
                .split("/*")
                .next()
                .unwrap_or("")
                .split("//")
                .next()
                .unwrap_or("")
                .trim();
            let l = l.trim_end_matches(',').trim();
            if l.is_empty() || l.starts_with("SEL4_FORCE_LONG_ENUM") {
                continue;
            }
            let (name, value) = match l.split_once('=') {
                Some((n, v)) => {
                    let v = v.trim();
                    let value = v
                        .parse::<i64>()
                        .ok()
                        .or_else(|| known.get(v).copied())
                        .unwrap_or_else(|| panic!("cannot evaluate {v} in {}", f.display()));
                    (n.trim().to_string(), value)
                }
                None => (l.to_string(), next),
            };
            known.insert(name, value);
            next = value + 1;
        }
    }
}

#[test]
fn constants_match_the_debug_headers() {
    if let Some(inc) = sdk_include(abi::board::CONFIG) {
        check_headers(&inc);
    }
}

#[test]
fn constants_match_the_smp_debug_headers() {
    if let Some(inc) = sdk_include(abi::board::SMP_CONFIG) {
        check_headers(&inc);
    }
}

fn check_headers(inc: &Path) {
    let defs = config(inc);
    assert!(
        defs.contains("CONFIG_KERNEL_MCS"),
        "Keel needs an MCS kernel"
    );
    assert!(
        defs.contains("CONFIG_ARM_HYPERVISOR_SUPPORT"),
        "Keel needs a hypervisor kernel"
    );
    assert!(
        defs.contains("CONFIG_PRINTING"),
        "Keel needs the debug config (seL4_DebugPutChar)"
    );
    let mut k = HashMap::new();
    let s = inc.join("sel4");
    enums(
        &[
            s.join("invocation.h"),
            s.join("sel4_arch/invocation.h"),
            s.join("arch/invocation.h"),
            s.join("syscall.h"),
            s.join("sel4_arch/types_gen.h"),
            s.join("sel4_arch/constants.h"),
        ],
        &defs,
        &mut k,
    );
    let mut wrong = Vec::new();
    let mut check = |name: &str, ours: i64| match k.get(name) {
        Some(&v) if v == ours => {}
        other => wrong.push(format!("{name}: Keel has {ours}, the SDK has {other:?}")),
    };
    for (name, v) in abi::label::ALL {
        check(name, *v as i64);
    }
    for (name, v) in abi::vcpu_reg::ALL {
        check(name, *v as i64);
    }
    use abi::fault as f;
    for (name, v) in [
        ("seL4_Fault_UnknownSyscall", f::UNKNOWN_SYSCALL),
        ("seL4_Fault_UserException", f::USER_EXCEPTION),
        ("seL4_Fault_VMFault", f::VM_FAULT),
        ("seL4_Fault_VGICMaintenance", f::VGIC_MAINTENANCE),
        ("seL4_Fault_VCPUFault", f::VCPU_FAULT),
        ("seL4_Fault_VPPIEvent", f::VPPI_EVENT),
    ] {
        check(name, v as i64);
    }
    for (name, v) in [
        ("seL4_UnknownSyscall_Length", f::UNKNOWN_SYSCALL_LENGTH),
        ("seL4_VMFault_Length", f::VM_FAULT_LENGTH),
        ("seL4_VGICMaintenance_Length", f::VGIC_MAINTENANCE_LENGTH),
        ("seL4_VCPUFault_Length", f::VCPU_FAULT_LENGTH),
        ("seL4_VPPIEvent_Length", f::VPPI_EVENT_LENGTH),
        (
            "seL4_UnknownSyscall_FaultIP",
            abi::unknown_syscall::FAULT_IP,
        ),
        ("seL4_UnknownSyscall_Syscall", abi::unknown_syscall::SYSCALL),
    ] {
        check(name, v as i64);
    }
    use abi::syscall as sc;
    for (name, v) in [
        ("seL4_SysCall", sc::CALL),
        ("seL4_SysReplyRecv", sc::REPLY_RECV),
        ("seL4_SysSend", sc::SEND),
        ("seL4_SysNBSend", sc::NB_SEND),
        ("seL4_SysRecv", sc::RECV),
        ("seL4_SysNBRecv", sc::NB_RECV),
        ("seL4_SysWait", sc::WAIT),
        ("seL4_SysDebugPutChar", sc::DEBUG_PUT_CHAR),
        ("seL4_SysDebugHalt", sc::DEBUG_HALT),
    ] {
        check(name, v);
    }
    // Microkit capability slots: `#define NAME value` in microkit.h.
    let mk = std::fs::read_to_string(inc.join("microkit.h")).expect("microkit.h");
    for (name, v) in abi::microkit::ALL {
        let found = mk.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("#define") && w.next() == Some(name))
                .then(|| w.next().and_then(|x| x.parse::<u64>().ok()))
        });
        if found != Some(Some(*v)) {
            wrong.push(format!("{name}: Keel has {v}, microkit.h has {found:?}"));
        }
    }
    // The IPC buffer sits in the top page below vspace_user_top.
    let asc = std::fs::read_to_string(inc.join("../address_space_constants.json"))
        .expect("address_space_constants.json");
    let top: u64 = asc
        .split("\"vspace_user_top\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .expect("vspace_user_top");
    if top & !0xfff != abi::board::IPC_BUFFER_VADDR {
        wrong.push(format!(
            "IPC buffer: Keel has {:#x}, the SDK's user top {top:#x}",
            abi::board::IPC_BUFFER_VADDR
        ));
    }
    assert!(
        wrong.is_empty(),
        "Keel's seL4 constants disagree with the SDK:\n{}",
        wrong.join("\n")
    );
}

/// The `"memory"` ranges of a config's `platform_gen.json` (`{"start": a, "end": b}` each).
fn normal_memory(platform_gen: &str) -> Vec<(u64, u64)> {
    let Some(mem) = platform_gen.split("\"memory\"").nth(1) else {
        return Vec::new();
    };
    let mem = &mem[..mem.find(']').unwrap_or(mem.len())];
    let num = |s: &str, key: &str| -> Option<u64> {
        let v = s.split(&format!("\"{key}\":")).nth(1)?;
        v.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    mem.split('{')
        .filter_map(|r| Some((num(r, "start")?, num(r, "end")?)))
        .collect()
}

fn check_colour_pool(inc: &Path) {
    let json =
        std::fs::read_to_string(inc.join("../platform_gen.json")).expect("platform_gen.json");
    let mem = normal_memory(&json);
    let b = abi::board::COLOUR_POOL_BASE;
    assert!(
        mem.iter().any(|&(s, e)| s < b && e == abi::board::RAM_END),
        "the colour pool {b:#x}..{:#x} is not at the top of the SDK's normal memory {mem:x?}",
        abi::board::RAM_END
    );
}

#[test]
fn the_colour_pool_is_at_the_top_of_the_sdks_ram_in_both_configs() {
    for config in [abi::board::CONFIG, abi::board::SMP_CONFIG] {
        if let Some(inc) = sdk_include(config) {
            check_colour_pool(&inc);
        }
    }
}
