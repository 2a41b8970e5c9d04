//! `system_description`: the TOML system description through parse → validate → plan →
//! the Microkit system file.
//!
//! Input: the first byte's low bit chooses between the rest as raw text (lossy UTF-8) and
//! a structured generator ([`arbitrary::Unstructured`]) that writes mostly-valid
//! descriptions: VMs with `memory` or `[[vm.ram]]` regions (sometimes huge, overlapping or
//! inside the device window), vCPUs, `placement` with CPUs and CPU sets, priority, budget and
//! period, disks, consoles, rng, interfaces on `[[network]]`s, `[[shared]]` regions mapped
//! with `ro`/`rw`, `[system] pcpus` and `llc` with `cache_colours`, the admin's `[limits]`
//! (with pool networks, `"pool"` in allow lists), `restart`, pool slots (`start = false`)
//! and `[[vm.control]]` entries (also on itself, twice, with unknown rights), duplicate names. The
//! description is parsed with [`Loader::parse_str`] (no host checks, every `${VAR}` set to `/keel`).
//!
//! Invariants of an ACCEPTED description, checked here independently of the validator
//! (keel_spec::validate enforces them: `check_vm`, `check_memory`, `check_across_vms`,
//! `check_colours_across_vms`, `check_shared`):
//! - VM names are unique;
//! - each VM's RAM regions ([`ram_layout`]) are disjoint from each other, from the arch's
//!   device window and from its shared-region mappings, and end below 2^64;
//! - each shared mapping names a declared region, is 4 KiB aligned; the plan's users of a
//!   region are exactly the VMs that name it, with the declared access;
//! - no two VMs share a cache colour, and colours are below the llc's colour count;
//! - control entries name another existing VM, once each, with rights given once each;
//!   every pool slot can be started by some control VM; `[limits] networks` are declared;
//!   the pool plan (`plan_with_pool`) gives each of them exactly `max_vms` pool ports within
//!   64 ports, unique locally administered unicast MACs, and allowed pairs of existing ports;
//! - budget ≤ period; every pCPU of every CPU set is below `[system] pcpus` when given;
//! - [`plan`] never fails, its per-VM RAM is `ram_layout`'s;
//! - [`microkit::system_file`] either renders, or refuses with a non-empty one-line
//!   message (it has limits of its own: aarch64 only, one RAM region, ...); when it renders,
//!   the XML maps each `keel_shared_<name>` region only inside the `<virtual_machine>` of
//!   VMs that name it, at the declared base, with `rw` or `r` as declared, and no
//!   protection domain maps it (keel_spec::microkit `component_plan`, `ComponentPlan::check`).
//!
//! For a REFUSED description: the message is one non-empty line; for generated input it
//! names a word that occurs in the input (a key, a value or a name).
//!
//! Not checked here: the size of single allocations (libFuzzer's `-malloc_limit_mb`, by
//! default its RSS limit of 2 GiB, turns any larger allocation into a crash).

use arbitrary::Unstructured;
use keel_spec::microkit::{
    self, ColourLayout, ConsoleInput, ConsoleLayout, MicrokitLayout, NetLayout,
};
use keel_spec::plan::{PortOwner, plan, plan_with_pool};
use keel_spec::{Access, ErrorKind, Loader, Memory, SpecError, System, device_window, ram_layout};
use std::fmt::Write;
use std::path::Path;

/// The fuzz body.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (text, generated) = if sel & 1 == 0 {
        (String::from_utf8_lossy(rest).into_owned(), false)
    } else {
        (generate(&mut Unstructured::new(rest)), true)
    };
    // Every `${VAR}` is set (to one fixed path): deterministic, and examples get through.
    let env = |_: &str| Some(String::from("/keel"));
    let loader = Loader::new().env(&env).host_checks(false);
    match loader.parse_str(&text, Path::new("/nonexistent-keel-fuzz")) {
        Ok(system) => check_accepted(&system),
        Err(e) => check_refused(&e, &text, generated),
    }
}

fn check_refused(e: &SpecError, text: &str, generated: bool) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "empty error message for {text:?}");
    assert!(!msg.contains('\n'), "multi-line error message {msg:?}");
    if let ErrorKind::Toml(_) = e.kind {
        // TOML errors (syntax, types, numbers beyond i64) name the place, not the value.
        assert!(
            e.at.is_empty() || e.at.starts_with("line "),
            "TOML error placed at {:?}",
            e.at
        );
    } else if generated && !matches!(e.kind, ErrorKind::NoVms) {
        let names_input = msg
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .filter(|w| w.len() >= 2)
            .any(|w| text.contains(w));
        assert!(
            names_input,
            "error {msg:?} names nothing of the input {text:?}"
        );
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    let (ae, be) = (a.0.saturating_add(a.1), b.0.saturating_add(b.1));
    a.1 > 0 && b.1 > 0 && a.0 < be && b.0 < ae
}

fn check_accepted(system: &System) {
    let vms = system.vms();
    assert!(!vms.is_empty(), "a system without VMs was accepted");
    for (i, vm) in vms.iter().enumerate() {
        assert!(
            !vms[..i].iter().any(|o| o.name == vm.name),
            "VM name {:?} accepted twice",
            vm.name
        );
        let ram = ram_layout(vm);
        assert!(!ram.is_empty(), "VM {}: no RAM", vm.name);
        let window = device_window(vm.arch);
        for (k, &r) in ram.iter().enumerate() {
            assert!(r.1 > 0, "VM {}: empty RAM region", vm.name);
            assert!(
                r.0.checked_add(r.1).is_some(),
                "VM {}: RAM region wraps",
                vm.name
            );
            assert!(
                !window.overlaps(r.0, r.1),
                "VM {}: RAM {:#x}+{:#x} in the device window",
                vm.name,
                r.0,
                r.1
            );
            for &o in &ram[..k] {
                assert!(!overlaps(r, o), "VM {}: RAM regions overlap", vm.name);
            }
        }
        for m in &vm.shared {
            let region = system
                .shared()
                .iter()
                .find(|s| s.name == m.region)
                .unwrap_or_else(|| panic!("VM {} maps undeclared region {}", vm.name, m.region));
            assert_eq!(m.base % 4096, 0, "VM {}: unaligned shared base", vm.name);
            if let Some(size) = m.size {
                assert_eq!(
                    size, region.size,
                    "VM {}: shared size mismatch accepted",
                    vm.name
                );
            }
            let s = (m.base, region.size);
            assert!(
                s.0.checked_add(s.1).is_some(),
                "VM {}: shared map wraps",
                vm.name
            );
            assert!(
                !window.overlaps(s.0, s.1),
                "VM {}: shared map in the device window",
                vm.name
            );
            for &r in &ram {
                assert!(
                    !overlaps(r, s),
                    "VM {}: shared {} overlaps RAM",
                    vm.name,
                    m.region
                );
            }
            for o in &vm.shared {
                if !core::ptr::eq(o, m) {
                    let os = system
                        .shared()
                        .iter()
                        .find(|x| x.name == o.region)
                        .map_or(0, |x| x.size);
                    assert!(
                        !overlaps((o.base, os), s),
                        "VM {}: shared maps overlap",
                        vm.name
                    );
                }
            }
        }
        if let Some(p) = &vm.placement {
            assert!(
                p.budget_us <= p.period_us,
                "VM {}: budget over period",
                vm.name
            );
            assert!(
                p.priority <= keel_spec::limits::MAX_PRIORITY,
                "VM {}: priority",
                vm.name
            );
            if let Some(sets) = &p.pcpus {
                assert_eq!(
                    sets.len(),
                    vm.vcpus as usize,
                    "VM {}: pcpus per vCPU",
                    vm.name
                );
                for set in sets {
                    assert!(!set.cpus().is_empty(), "VM {}: empty CPU set", vm.name);
                    if let Some(n) = system.pcpus() {
                        for &c in set.cpus() {
                            assert!(c < n, "VM {}: pCPU {c} of {n}", vm.name);
                        }
                    }
                }
            }
        }
        if let Some(colours) = &vm.cache_colours {
            let llc = system.llc().expect("cache colours accepted without an llc");
            for &c in colours {
                assert!(
                    u64::from(c) < llc.colours(),
                    "VM {}: colour {c} out of range",
                    vm.name
                );
                for o in &vms[..i] {
                    assert!(
                        !o.cache_colours.iter().flatten().any(|&x| x == c),
                        "VMs {} and {} share colour {c}",
                        o.name,
                        vm.name
                    );
                }
            }
        }
        if let Memory::Regions(r) = &vm.memory {
            assert!(!r.is_empty());
        }
    }
    let plan = plan(system).unwrap_or_else(|e| panic!("planning an accepted system failed: {e}"));
    assert_eq!(plan.vms.len(), vms.len());
    for (vm, p) in vms.iter().zip(&plan.vms) {
        assert_eq!(p.name, vm.name);
        assert_eq!(
            p.ram,
            ram_layout(vm),
            "VM {}: planned RAM is not the layout",
            vm.name
        );
        for d in &p.devices {
            let _ = d;
        }
    }
    for region in &plan.shared {
        let want: Vec<(&str, u64, Access)> = vms
            .iter()
            .flat_map(|vm| {
                vm.shared
                    .iter()
                    .filter(|m| m.region == region.name)
                    .map(|m| (vm.name.as_str(), m.base, m.access))
            })
            .collect();
        let got: Vec<(&str, u64, Access)> = region
            .users
            .iter()
            .map(|(vm, m)| (vm.as_str(), m.base, m.access))
            .collect();
        assert_eq!(got, want, "plan: users of shared region {}", region.name);
        for (_, m) in &region.users {
            assert_eq!(m.size, region.size, "plan: mapped size of {}", region.name);
        }
    }
    check_admin(system);
    match microkit::system_file(system, &layout()) {
        Ok(xml) => check_xml(system, &xml),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.trim().is_empty() && !msg.contains('\n'),
                "Microkit error {msg:?}"
            );
        }
    }
}

/// The admin's part of an accepted description, checked independently: control entries
/// name another existing VM once each, with rights given once each; every pool slot
/// (`start = false`) is startable by some control VM; `[limits] networks` are declared
/// networks, each of which the pool plan gives exactly `max_vms` pool ports within the 64
/// ports of a network, with unique, locally administered unicast MACs system-wide and
/// allowed pairs that name existing ports.
fn check_admin(system: &System) {
    let vms = system.vms();
    for vm in vms {
        for (k, c) in vm.control.iter().enumerate() {
            assert_ne!(c.vm, vm.name, "VM {} controls itself", vm.name);
            assert!(
                vms.iter().any(|o| o.name == c.vm),
                "VM {} controls {:?}, which is no VM",
                vm.name,
                c.vm
            );
            assert!(
                !vm.control[..k].iter().any(|o| o.vm == c.vm),
                "VM {} names target {} twice",
                vm.name,
                c.vm
            );
            assert!(!c.rights.is_empty(), "VM {}: no right on {}", vm.name, c.vm);
            for (i, r) in c.rights.iter().enumerate() {
                assert!(
                    !c.rights[..i].contains(r),
                    "VM {}: right {r:?} twice",
                    vm.name
                );
            }
        }
        if !vm.start {
            assert!(
                vms.iter().any(|o| {
                    o.control.iter().any(|c| {
                        c.vm == vm.name && c.rights.contains(&keel_spec::ControlRight::Start)
                    })
                }),
                "pool slot {} accepted, but no VM may start it",
                vm.name
            );
        }
    }
    let pooled: Vec<&str> = system
        .limits()
        .map(|l| l.networks.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for n in &pooled {
        assert!(
            system.networks().iter().any(|d| d.name == *n),
            "limits.networks names {n:?}, which is no network"
        );
    }
    let p = plan_with_pool(system)
        .unwrap_or_else(|e| panic!("planning the pool of an accepted system failed: {e}"));
    let max_vms = system.limits().map_or(0, |l| l.max_vms as usize);
    let mut macs = Vec::new();
    for net in &p.networks {
        let pool = net
            .ports
            .iter()
            .filter(|q| matches!(q.owner, PortOwner::Pool { .. }))
            .count();
        let want = if pooled.contains(&net.name.as_str()) {
            max_vms
        } else {
            0
        };
        assert_eq!(pool, want, "network {}: pool ports", net.name);
        assert!(
            net.ports.len() <= 64,
            "network {}: {} ports",
            net.name,
            net.ports.len()
        );
        for &(a, b) in &net.allow {
            assert!(
                usize::from(a) < net.ports.len() && usize::from(b) < net.ports.len(),
                "network {}: allowed pair ({a}, {b}) of {} ports",
                net.name,
                net.ports.len()
            );
        }
        for q in &net.ports {
            if let Some(m) = q.mac {
                if matches!(q.owner, PortOwner::Pool { .. }) {
                    assert_eq!(
                        m.0[0] & 3,
                        2,
                        "pool MAC {m:?} is not locally administered unicast"
                    );
                }
                assert!(!macs.contains(&m), "MAC {m:?} twice in the pool plan");
                macs.push(m);
            }
        }
    }
}

/// Every `<map>` of a `keel_shared_*` region in the rendered XML.
fn check_xml(system: &System, xml: &str) {
    let attr = |line: &str, key: &str| -> Option<String> {
        let start = line.find(&format!(" {key}=\""))? + key.len() + 3;
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_string())
    };
    let mut vm: Option<String> = None;
    let mut pd: Option<String> = None;
    let mut seen: Vec<(String, String)> = Vec::new();
    for line in xml.lines() {
        let t = line.trim_start();
        if t.starts_with("<protection_domain ") {
            pd = attr(t, "name");
        } else if t.starts_with("<virtual_machine ") {
            vm = attr(t, "name");
        } else if t.starts_with("</virtual_machine>") {
            vm = None;
        } else if t.starts_with("</protection_domain>") {
            pd = None;
        } else if t.starts_with("<map ") {
            let mr = attr(t, "mr").expect("map without mr");
            let Some(region) = mr.strip_prefix("keel_shared_") else {
                continue;
            };
            let Some(vm_name) = &vm else {
                panic!("protection domain {pd:?} maps guest shared region {region}");
            };
            let spec = system
                .vm(vm_name)
                .expect("virtual_machine of a declared VM");
            let m = spec
                .shared
                .iter()
                .find(|m| m.region == region)
                .unwrap_or_else(|| {
                    panic!("VM {vm_name} maps shared region {region} it does not name")
                });
            let vaddr = attr(t, "vaddr").unwrap();
            assert_eq!(
                vaddr,
                format!("{:#x}", m.base),
                "VM {vm_name}: {region} at the wrong address"
            );
            let perms = attr(t, "perms").unwrap();
            let want = match m.access {
                Access::ReadWrite => "rw",
                Access::ReadOnly => "r",
            };
            assert_eq!(perms, want, "VM {vm_name}: {region} with the wrong rights");
            seen.push((vm_name.clone(), region.to_string()));
        }
    }
    for vm in system.vms() {
        for m in &vm.shared {
            assert!(
                seen.contains(&(vm.name.clone(), m.region.clone())),
                "VM {}: shared region {} not mapped in the XML",
                vm.name,
                m.region
            );
        }
    }
}

/// A board like QEMU's virt machine as the seL4 backend describes it, with a small colour
/// pool (32 MiB of coloured RAM per system: each coloured page costs the renderer a memory
/// region, and thousands of them would slow the target down to a crawl).
fn layout() -> MicrokitLayout {
    MicrokitLayout {
        vmm_ram_vaddr: 0x2_0000_0000,
        gic_vcpu_paddr: 0x0804_0000,
        gic_vcpu_size: 0x2000,
        gic_cpu_gpa: 0x0801_0000,
        console: ConsoleLayout {
            ring_size: 0x4000,
            vmm_ring_vaddr: 0x3_0000_0000,
            console_rings_vaddr: 0x3_0000_0000,
            vmm_channel: 2,
        },
        cores: 8,
        max_ram: 4 << 30,
        max_vcpus: 8,
        console_input: Some(ConsoleInput {
            uart_paddr: 0x0900_0000,
            uart_vaddr: 0x3_0001_0000,
            irq: 33,
            channel: 1,
        }),
        net: NetLayout {
            vmm_rings_vaddr: 0x4_0000_0000,
            switch_rings_vaddr: 0x4_0000_0000,
            switch_heap_vaddr: 0x5_0000_0000,
            vmm_first_channel: 3,
        },
        board: None,
        colour: Some(ColourLayout {
            pool_base: 0x8000_0000,
            pool_end: 0xBF00_0000,
            max_pages: 1 << 13,
        }),
    }
}

fn pick<'a, T>(u: &mut Unstructured, items: &'a [T]) -> arbitrary::Result<&'a T> {
    u.choose(items)
}

const SIZES: &[&str] = &[
    "\"16M\"",
    "\"32M\"",
    "\"64M\"",
    "\"2M\"",
    "\"1T\"",
    "\"512G\"",
    "\"4G\"",
    "16777216",
    "\"0x100_0000\"",
    "\"4K\"",
    "0",
    "-1",
    "\"18446744073709551615\"",
    "\"1G\"",
];
const BASES: &[&str] = &[
    "0x4000_0000",
    "0x4100_0000",
    "0x8000_0000",
    "0x1_0000_0000",
    "0",
    "0xC000_0000",
    "0x3fff_f000",
    "\"0x4200_0000\"",
    "0xffff_ffff_ffff_f000",
    "0x6000_0000",
    "0x4000_1000",
];
const SHARED_SIZES: &[&str] = &[
    "\"4K\"", "\"64K\"", "\"1M\"", "\"2M\"", "4097", "\"2G\"", "0",
];

fn maybe(u: &mut Unstructured) -> bool {
    u.ratio(1, 4).unwrap_or(false)
}

/// Whether to write a value the validator should refuse (rarely: every description has many
/// values, and most descriptions should get through to planning).
fn bad(u: &mut Unstructured) -> bool {
    u.ratio(1, 40).unwrap_or(false)
}

/// A mostly-valid description; running out of bytes gives a shorter one.
fn generate(u: &mut Unstructured) -> String {
    let mut t = String::new();
    let _ = gen_into(u, &mut t);
    t
}

fn gen_into(u: &mut Unstructured, t: &mut String) -> arbitrary::Result<()> {
    let pcpus: Option<u32> = if maybe(u) {
        None
    } else {
        Some(u.int_in_range(1..=8)?)
    };
    let colours: u64 = if bad(u) {
        3
    } else {
        *pick(u, &[0u64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4, 16])?
    };
    let _ = writeln!(t, "[system]\nname = \"fz\"");
    if let Some(n) = pcpus {
        let _ = writeln!(t, "pcpus = {n}");
    }
    if colours > 0 {
        let ways: u64 = *pick(u, &[1u64, 4, 16])?;
        let _ = writeln!(
            t,
            "llc = {{ size = {}, ways = {ways} }}",
            colours * ways * 4096
        );
    }
    let nshared: u32 = u.int_in_range(0..=3)?;
    for i in 0..nshared {
        let size = if bad(u) {
            pick(u, SHARED_SIZES)?
        } else {
            pick(u, &SHARED_SIZES[..4])?
        };
        let _ = writeln!(t, "[[shared]]\nname = \"s{i}\"\nsize = {size}");
    }
    let nnets: u32 = u.int_in_range(0..=2)?;
    let nvms: u32 = u.int_in_range(1..=4)?;
    for i in 0..nnets {
        let _ = writeln!(t, "[[network]]\nname = \"n{i}\"");
        if maybe(u) {
            let slots = if bad(u) {
                *pick(u, &[17, 8192, 0])?
            } else {
                *pick(u, &[16, 32])?
            };
            let _ = writeln!(t, "slots = {slots}");
        }
        if u.ratio(1, 10)? {
            let extra = u32::from(bad(u));
            let a = u.int_in_range(0..=nvms - 1 + extra)?;
            let b = u.int_in_range(0..=nvms - 1)?;
            if u.ratio(1, 3)? {
                // The dynamic pool's ports (only on a network in [limits] networks).
                let _ = writeln!(t, "allow = [[\"vm{a}\", \"pool\"], [\"pool\", \"pool\"]]");
            } else {
                let _ = writeln!(t, "allow = [[\"vm{a}\", \"vm{b}\"]]");
            }
        }
        if maybe(u) {
            let rate = if bad(u) {
                *pick(u, &[0, 2_000_000])?
            } else {
                *pick(u, &[1, 1000])?
            };
            let _ = writeln!(t, "flood_rate = {rate}");
        }
    }
    if u.ratio(1, 4)? {
        // The admin's dynamic pool: how many VMs, and which networks they may join (each
        // listed network gets max_vms pool ports, named "pool" in allow lists).
        let max_vms: u32 = if bad(u) {
            *pick(u, &[1025, 70])?
        } else {
            *pick(u, &[0, 1, 4, 16])?
        };
        let mut nets: Vec<String> = (0..nnets)
            .filter(|_| u.ratio(2, 3).unwrap_or(false))
            .map(|n| format!("\"n{n}\""))
            .collect();
        if bad(u) {
            nets.push((*pick(u, &["\"nx\"", "\"n0\""])?).to_string());
        }
        let _ = writeln!(
            t,
            "[limits]\nmax_vms = {max_vms}\nmemory = \"256M\"\nvcpus = 8\nnetworks = [{}]",
            nets.join(", ")
        );
    }
    // Pool slots (`start = false`), decided up front so that vm0 can hold the right to
    // start them (unless the input wants the refusal).
    let mut slots = Vec::new();
    for v in 0..nvms {
        slots.push(v > 0 && u.ratio(1, 6)?);
    }
    let mut next_colour = 0u64;
    let mut mapped = vec![false; nshared as usize];
    for v in 0..nvms {
        let name = if v > 0 && bad(u) { v - 1 } else { v };
        let x86 = u.ratio(1, 12)?;
        let arch = if x86 { "x86_64" } else { "aarch64" };
        let vcpus: u32 = if bad(u) {
            *pick(u, &[0, 65, 9])?
        } else {
            u.int_in_range(1..=3)?
        };
        let _ = writeln!(
            t,
            "[[vm]]\nname = \"vm{name}\"\narch = \"{arch}\"\nkernel = \"Image\"\nvcpus = {vcpus}"
        );
        if maybe(u) {
            let r = if bad(u) {
                "sometimes"
            } else {
                *pick(u, &["never", "on-failure", "always"])?
            };
            let _ = writeln!(t, "restart = \"{r}\"");
        }
        if slots[v as usize] {
            // A pool slot: some control VM must hold the start right on it.
            let _ = writeln!(t, "start = false");
        }
        let explicit = u.ratio(1, 3)?;
        if !explicit {
            let size = if bad(u) {
                pick(u, SIZES)?
            } else {
                pick(u, &SIZES[..3])?
            };
            let _ = writeln!(t, "memory = {size}");
        }
        if maybe(u) {
            let serial = if bad(u) {
                *pick(u, &["file:", "bogus"])?
            } else {
                *pick(u, &["stdio", "null"])?
            };
            let _ = writeln!(t, "cmdline = \"console=hvc0\"\nserial = \"{serial}\"");
        }
        if !maybe(u) {
            let prio = if bad(u) {
                255
            } else {
                *pick(u, &[100, 1, 254])?
            };
            let _ = write!(t, "placement = {{ priority = {prio}");
            if !maybe(u) {
                let (budget, period): (u64, u64) = if bad(u) {
                    *pick(u, &[(2000, 1000), (0, 1000), (1000, 0)])?
                } else {
                    *pick(u, &[(1000, 1000), (500, 1000), (1000, 1500), (10, 10)])?
                };
                let _ = write!(t, ", budget_us = {budget}, period_us = {period}");
            }
            if !maybe(u) {
                let n = if bad(u) { vcpus + 1 } else { vcpus };
                let top = pcpus.unwrap_or(4) + u32::from(bad(u));
                let mut sets = Vec::new();
                for _ in 0..n.min(8) {
                    if top > 1 && u.ratio(1, 6)? {
                        let a = u.int_in_range(0..=top - 1)?;
                        let b = if bad(u) {
                            a
                        } else {
                            (a + u.int_in_range(1..=top - 1)?) % top
                        };
                        sets.push(format!("[{a}, {b}]"));
                    } else {
                        sets.push(u.int_in_range(0..=top - 1)?.to_string());
                    }
                }
                let _ = write!(t, ", pcpus = [{}]", sets.join(", "));
            }
            let _ = writeln!(t, " }}");
        }
        if colours > 0 && u.ratio(1, 2)? {
            let mut list = Vec::new();
            for _ in 0..u.int_in_range(1..=3)? {
                let c = if bad(u) {
                    u.int_in_range(0..=colours + 1)?
                } else if next_colour < colours {
                    next_colour += 1;
                    next_colour - 1
                } else {
                    break;
                };
                list.push(c.to_string());
            }
            if !list.is_empty() {
                let _ = writeln!(t, "cache_colours = [{}]", list.join(", "));
            }
        }
        if maybe(u) {
            let r = if bad(u) {
                "halt"
            } else {
                *pick(u, &["stop", "restart"])?
            };
            let _ = writeln!(t, "on_reboot = \"{r}\"");
        }
        if u.arbitrary()? {
            let _ = writeln!(t, "[vm.rng]");
        }
        if explicit {
            let first: u64 = if x86 { 0 } else { 0x4000_0000 };
            for k in 0..if maybe(u) {
                u.int_in_range(1..=3u64)?
            } else {
                1
            } {
                let (base, size) = if bad(u) {
                    (pick(u, BASES)?.to_string(), pick(u, SIZES)?.to_string())
                } else {
                    let base = if k == 0 { first } else { 0x1_0000_0000 * k };
                    (format!("{base:#x}"), pick(u, &SIZES[..3])?.to_string())
                };
                let _ = writeln!(t, "[[vm.ram]]\nbase = {base}\nsize = {size}");
            }
        }
        for _ in 0..u.int_in_range(0..=2)? {
            let id = if bad(u) {
                "\nid = \"abcdefghijklmnopqrstuvwxyz\""
            } else {
                ""
            };
            let _ = writeln!(t, "[[vm.disk]]\npath = \"d{v}.img\"\nread_only = true{id}");
        }
        for _ in 0..u.int_in_range(0..=1)? {
            let _ = writeln!(t, "[[vm.console]]\noutput = \"null\"");
        }
        // [[vm.control]]: vm0 holds the start right on every pool slot (unless the input
        // wants the refusal), and any VM may name a few others.
        let mut targets: Vec<(u32, Vec<&str>)> = Vec::new();
        if v == 0 && !bad(u) {
            for (k, _) in slots.iter().enumerate().filter(|(_, s)| **s) {
                targets.push((k as u32, vec!["start", "status"]));
            }
        }
        if nvms > 1 && u.ratio(1, 4)? {
            let first = u.int_in_range(1..=nvms - 1)?;
            for off in [first, first % (nvms - 1) + 1]
                .iter()
                .take(u.int_in_range(1..=2)?)
            {
                let target = if bad(u) { v } else { (v + off) % nvms };
                if targets.iter().any(|(t, _)| *t == target) && !bad(u) {
                    continue;
                }
                let mut rights: Vec<&str> = ["start", "stop", "restart", "status"]
                    .into_iter()
                    .filter(|_| u.ratio(1, 2).unwrap_or(false))
                    .collect();
                if rights.is_empty() && !bad(u) {
                    rights.push("status");
                }
                if bad(u) {
                    rights.push(*pick(u, &["reboot", "start"])?);
                }
                targets.push((target, rights));
            }
        }
        for (target, rights) in targets {
            let list: Vec<String> = rights.iter().map(|r| format!("\"{r}\"")).collect();
            let _ = writeln!(
                t,
                "[[vm.control]]\nvm = \"vm{target}\"\nrights = [{}]",
                list.join(", ")
            );
        }
        if nnets > 0 {
            for n in 0..nnets + u32::from(bad(u)) {
                if !u.ratio(1, 2)? && !bad(u) {
                    continue;
                }
                let _ = writeln!(t, "[[vm.net]]\nnetwork = \"n{n}\"");
                if bad(u) {
                    let mac = pick(
                        u,
                        &[
                            "02:00:00:00:00:01",
                            "01:00:5e:00:00:01",
                            "02:00:00:00:00:0g",
                        ],
                    )?;
                    let _ = writeln!(t, "mac = \"{mac}\"");
                }
            }
        }
        if nshared > 0 {
            let last = v + 1 == nvms;
            for r in 0..nshared + u32::from(bad(u)) {
                // Every region must be mapped somewhere: the last VM maps what is left.
                let unmapped = r < nshared && !mapped[r as usize];
                let wanted = (last && unmapped) || u.ratio(1, 2)? || bad(u);
                if !wanted {
                    continue;
                }
                if let Some(m) = mapped.get_mut(r as usize) {
                    *m = true;
                }
                let base = if bad(u) {
                    pick(u, BASES)?.to_string()
                } else {
                    // 512 GiB up, 16 MiB apart: clear of RAM, the device windows and each other.
                    format!("{:#x}", 0x80_0000_0000u64 + u64::from(r) * 0x100_0000)
                };
                let access = if bad(u) {
                    "\"wo\""
                } else {
                    *pick(u, &["\"ro\"", "\"rw\""])?
                };
                let _ = writeln!(
                    t,
                    "[[vm.shared]]\nregion = \"s{r}\"\nbase = {base}\naccess = {access}"
                );
                if bad(u) {
                    let _ = writeln!(t, "size = {}", pick(u, SHARED_SIZES)?);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_descriptions_are_often_accepted() {
        let mut accepted = 0;
        for seed in 0u32..400 {
            let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let bytes: Vec<u8> = (0..600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let text = generate(&mut Unstructured::new(&bytes));
            let env = |_: &str| None;
            match Loader::new()
                .env(&env)
                .host_checks(false)
                .parse_str(&text, Path::new("/"))
            {
                Ok(_) => accepted += 1,
                Err(e) => {
                    if std::env::var_os("FZ_DEBUG").is_some() {
                        eprintln!("REFUSED {e}")
                    }
                }
            }
            run(&[&[1u8][..], &bytes[..]].concat());
        }
        assert!(
            accepted > 100,
            "only {accepted} of 400 generated descriptions accepted"
        );
    }

    #[test]
    fn every_example_seed_is_accepted() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let env = |_: &str| Some(String::from("/keel"));
            let r = Loader::new()
                .env(&env)
                .host_checks(false)
                .parse_str(&text, Path::new("/"));
            assert!(
                r.is_ok(),
                "{}: {:?}",
                path.display(),
                r.err().map(|e| e.to_string())
            );
        }
    }
}
