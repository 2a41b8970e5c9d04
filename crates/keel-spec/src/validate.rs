//! Semantic checks on the model, shared by every front end (`no_std`).

use alloc::format;
use alloc::string::{String, ToString};

use crate::error::{ErrorKind, SpecError};
use crate::layout::{GPA_LIMIT, device_window};
use crate::model::{
    Arch, ControlRight, Llc, MacAddr, Memory, NetworkSpec, Output, SharedSpec, System, VmSpec,
};
use crate::size::SizeDisplay;

/// The limits the validator enforces.
pub mod limits {
    /// vCPUs per VM: `1..=MAX_VCPUS`.
    pub const MAX_VCPUS: u32 = 64;
    /// Least guest RAM per VM.
    pub const MIN_MEMORY: u64 = 16 << 20;
    /// Most guest RAM per VM.
    pub const MAX_MEMORY: u64 = 512 << 30;
    /// Granularity of RAM sizes and region bases.
    pub const PAGE_SIZE: u64 = 4096;
    /// Explicit `[[vm.ram]]` regions per VM.
    pub const MAX_RAM_REGIONS: usize = 16;
    /// `system.pcpus`: `1..=MAX_PCPUS`.
    pub const MAX_PCPUS: u32 = 1024;
    /// Highest scheduling priority a VM may have.
    pub const MAX_PRIORITY: u8 = 254;
    /// Bytes of `cmdline` as written (the VMM appends device locations after it).
    pub const MAX_CMDLINE: usize = 2048;
    /// Bytes of a disk's `id` (virtio-blk `GET_ID` returns 20 bytes).
    pub const MAX_DISK_ID: usize = 20;
    /// virtio-mmio devices (disks + consoles + rng) per VM.
    pub const MAX_DEVICES: usize = 32;
    /// VM names: length.
    pub const MAX_VM_NAME: usize = 32;
    /// System names: length.
    pub const MAX_SYSTEM_NAME: usize = 64;
    /// `max_restarts_per_minute`: `1..=MAX_RESTARTS_PER_MINUTE`.
    pub const MAX_RESTARTS_PER_MINUTE: u32 = 1000;
    /// Networks per system.
    pub const MAX_NETWORKS: usize = 16;
    /// Interfaces attached to one network (the uplink counts as one).
    pub const MAX_NETWORK_PORTS: usize = 64;
    /// `[[network]] slots`: a power of two in `MIN_RING_SLOTS..=MAX_RING_SLOTS`.
    pub const MIN_RING_SLOTS: u32 = 16;
    /// See [`MIN_RING_SLOTS`].
    pub const MAX_RING_SLOTS: u32 = 4096;
    /// `[[network]] flood_rate`: `1..=MAX_FLOOD_RATE` frames/s (storm control is always on;
    /// the same bound as `keel_net::switch::MAX_FLOOD_RATE`).
    pub const MAX_FLOOD_RATE: u32 = 1_000_000;
    /// `[[network]] flood_burst`: `1..=MAX_FLOOD_BURST` frames (as
    /// `keel_net::switch::MAX_FLOOD_BURST`).
    pub const MAX_FLOOD_BURST: u32 = 65_536;
    /// `[[shared]]` regions per system.
    pub const MAX_SHARED_REGIONS: usize = 16;
    /// `[[vm.shared]]` mappings per VM.
    pub const MAX_SHARED_MAPS: usize = 16;
    /// Bytes of one `[[shared]]` region.
    pub const MAX_SHARED_SIZE: u64 = 1 << 30;
    /// `[limits] max_vms`: `0..=MAX_DYNAMIC_VMS`.
    pub const MAX_DYNAMIC_VMS: u32 = 1024;
    /// `[limits] vcpus`: `0..=MAX_POOL_VCPUS`.
    pub const MAX_POOL_VCPUS: u32 = 65_536;
    /// `[limits] memory`: at most this many bytes.
    pub const MAX_POOL_MEMORY: u64 = 64 << 40;
    /// `[system] llc` ways: `1..=MAX_LLC_WAYS`.
    pub const MAX_LLC_WAYS: u32 = 1024;
    /// Most page colours an llc may have (a 64 MiB direct-mapped cache has 16384).
    pub const MAX_COLOURS: u64 = 1 << 14;
}

/// How errors state the range of `flood_rate`.
pub(crate) const FLOOD_RATE_RANGE: &str = "1..=1000000 frames per second";
/// How errors state the range of `flood_burst`.
pub(crate) const FLOOD_BURST_RANGE: &str = "1..=65536 frames";

use limits::*;

/// How error messages refer to VM `index`: by name when it has a valid one, else by index.
pub(crate) fn vm_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if vm_name_ok(name) => format!("vm {name:?}"),
        _ => format!("vm[{index}]"),
    }
}

fn vm_name_ok(name: &str) -> bool {
    (1..=MAX_VM_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(crate) fn check_system_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=MAX_SYSTEM_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "system",
            ErrorKind::BadName {
                name: name.to_string(),
                rule: "1 to 64 of A-Z a-z 0-9 - _ .",
            },
        ))
    }
}

pub(crate) fn check_pcpus(pcpus: Option<u32>) -> Result<(), SpecError> {
    match pcpus {
        Some(n) if n == 0 || n > MAX_PCPUS => Err(SpecError::new(
            "system",
            ErrorKind::OutOfRange {
                key: "pcpus",
                value: n.into(),
                range: "1..=1024",
            },
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_vm_name(index: usize, name: &str) -> Result<(), SpecError> {
    if vm_name_ok(name) {
        Ok(())
    } else {
        Err(SpecError::new(
            format!("vm[{index}]"),
            ErrorKind::BadName {
                name: name.to_string(),
                rule: "1 to 32 of a-z 0-9 -",
            },
        ))
    }
}

/// Checks the last-level cache: at least one way, and a colour count (`size / ways /
/// 4 KiB`) that divides exactly and is a power of two of at least 2.
pub(crate) fn check_llc(llc: Option<Llc>) -> Result<(), SpecError> {
    let Some(llc) = llc else { return Ok(()) };
    if llc.ways == 0 || llc.ways > MAX_LLC_WAYS {
        return Err(SpecError::new(
            "system",
            ErrorKind::OutOfRange {
                key: "llc: ways",
                value: llc.ways.into(),
                range: "1..=1024",
            },
        ));
    }
    let colours = llc.colours();
    let exact = llc.size % (u64::from(llc.ways) * Llc::PAGE) == 0;
    if !exact || colours < 2 || !colours.is_power_of_two() || colours > MAX_COLOURS {
        return Err(SpecError::new(
            "system",
            ErrorKind::LlcColours {
                size: llc.size,
                ways: llc.ways,
                colours,
            },
        ));
    }
    Ok(())
}

/// Checks one VM's `cache_colours` against the cache: given only with an llc, not
/// empty, each colour in range and listed once.
pub(crate) fn check_colours(index: usize, vm: &VmSpec, llc: Option<Llc>) -> Result<(), SpecError> {
    let Some(list) = &vm.cache_colours else {
        return Ok(());
    };
    let at = vm_label(index, Some(&vm.name));
    let err = |kind| Err(SpecError::new(at.clone(), kind));
    let Some(llc) = llc else {
        return err(ErrorKind::ColoursWithoutLlc);
    };
    if list.is_empty() {
        return err(ErrorKind::NoColours);
    }
    let colours = llc.colours();
    for (i, &c) in list.iter().enumerate() {
        if u64::from(c) >= colours {
            return err(ErrorKind::ColourOutOfRange {
                colour: c.into(),
                colours,
            });
        }
        if list[..i].contains(&c) {
            return err(ErrorKind::DuplicateColour(c));
        }
    }
    Ok(())
}

/// No colour is given to two VMs.
pub(crate) fn check_colours_across_vms(vms: &[VmSpec]) -> Result<(), SpecError> {
    for (index, vm) in vms.iter().enumerate() {
        for &c in vm.cache_colours.iter().flatten() {
            if let Some((j, other)) = vms[..index]
                .iter()
                .enumerate()
                .find(|(_, o)| o.cache_colours.iter().flatten().any(|&x| x == c))
            {
                return Err(SpecError::new(
                    vm_label(index, Some(&vm.name)),
                    ErrorKind::ColourShared {
                        colour: c,
                        other: vm_label(j, Some(&other.name)),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Checks one VM on its own (names are checked against each other by `check_across_vms`).
pub(crate) fn check_vm(index: usize, vm: &VmSpec, pcpus: Option<u32>) -> Result<(), SpecError> {
    check_vm_name(index, &vm.name)?;
    let at = vm_label(index, Some(&vm.name));
    let err = |kind| Err(SpecError::new(at.clone(), kind));
    if vm.vcpus == 0 || vm.vcpus > MAX_VCPUS {
        return err(ErrorKind::OutOfRange {
            key: "vcpus",
            value: vm.vcpus.into(),
            range: "1..=64",
        });
    }
    if vm.max_restarts_per_minute == 0 || vm.max_restarts_per_minute > MAX_RESTARTS_PER_MINUTE {
        return err(ErrorKind::OutOfRange {
            key: "max_restarts_per_minute",
            value: vm.max_restarts_per_minute.into(),
            range: "1..=1000",
        });
    }
    check_memory(&at, vm.arch, &vm.memory)?;
    check_cmdline(&at, &vm.cmdline)?;
    let devices = vm.disks.len() + vm.consoles.len() + vm.nics.len() + usize::from(vm.rng);
    if devices > MAX_DEVICES {
        return err(ErrorKind::TooMany {
            key: "devices (disks + consoles + nets + rng)",
            count: devices,
            max: MAX_DEVICES,
        });
    }
    for (i, disk) in vm.disks.iter().enumerate() {
        if let Some(id) = &disk.id {
            if id.len() > MAX_DISK_ID {
                return Err(SpecError::new(
                    format!("{at}: disk {i}"),
                    ErrorKind::DiskIdTooLong {
                        id: id.clone(),
                        len: id.len(),
                    },
                ));
            }
        }
        if disk.served.is_none() && disk.path.as_str().is_empty() {
            return Err(SpecError::new(
                format!("{at}: disk {i}"),
                ErrorKind::EmptyPath("path"),
            ));
        }
    }
    if vm.kernel.as_str().is_empty() {
        return err(ErrorKind::EmptyPath("kernel"));
    }
    if matches!(&vm.serial, Output::File(path) if path.as_str().is_empty()) {
        return err(ErrorKind::EmptyPath("serial"));
    }
    if let Some(placement) = &vm.placement {
        if let Some(list) = &placement.pcpus {
            if list.len() != vm.vcpus as usize {
                return err(ErrorKind::PlacementLength {
                    count: list.len(),
                    vcpus: vm.vcpus,
                });
            }
            // Several vCPUs may share a CPU (`[1, 1]`); inside one vCPU's set each CPU once.
            for (vcpu, set) in list.iter().enumerate() {
                let vcpu = vcpu as u32;
                let cpus = set.cpus();
                if cpus.is_empty() {
                    return err(ErrorKind::EmptyCpuSet { vcpu });
                }
                for (i, &pcpu) in cpus.iter().enumerate() {
                    if cpus[..i].contains(&pcpu) {
                        return err(ErrorKind::CpuTwiceInSet {
                            vcpu,
                            pcpu,
                            set: set.to_string(),
                        });
                    }
                    if let Some(limit) = pcpus {
                        if pcpu >= limit {
                            return err(ErrorKind::PcpuOutOfRange { pcpu, pcpus: limit });
                        }
                    }
                }
            }
        }
        if placement.priority > MAX_PRIORITY {
            return err(ErrorKind::OutOfRange {
                key: "placement: priority",
                value: placement.priority.into(),
                range: "0..=254",
            });
        }
        if placement.period_us == 0 {
            return err(ErrorKind::OutOfRange {
                key: "placement: period_us",
                value: 0,
                range: "1..",
            });
        }
        if placement.budget_us == 0 {
            return err(ErrorKind::OutOfRange {
                key: "placement: budget_us",
                value: 0,
                range: "1..",
            });
        }
        if placement.budget_us > placement.period_us {
            return err(ErrorKind::BudgetOverPeriod {
                budget: placement.budget_us,
                period: placement.period_us,
            });
        }
    }
    Ok(())
}

fn check_cmdline(at: &str, cmdline: &str) -> Result<(), SpecError> {
    if cmdline.len() > MAX_CMDLINE {
        return Err(SpecError::new(
            at,
            ErrorKind::CmdlineTooLong {
                len: cmdline.len(),
                max: MAX_CMDLINE,
            },
        ));
    }
    if let Some(pos) = cmdline.bytes().position(|b| b.is_ascii_control()) {
        return Err(SpecError::new(at, ErrorKind::CmdlineControl(pos)));
    }
    Ok(())
}

fn check_total(at: &str, key: &'static str, total: u64) -> Result<(), SpecError> {
    if total < MIN_MEMORY {
        return Err(SpecError::new(
            at,
            ErrorKind::TooSmall {
                key,
                value: SizeDisplay(total).to_string(),
                min: "16 MiB",
            },
        ));
    }
    if total > MAX_MEMORY {
        return Err(SpecError::new(
            at,
            ErrorKind::TooLarge {
                key,
                value: SizeDisplay(total).to_string(),
                max: "512 GiB",
            },
        ));
    }
    Ok(())
}

fn check_memory(at: &str, arch: Arch, memory: &Memory) -> Result<(), SpecError> {
    match memory {
        Memory::Size(size) => {
            check_total(at, "memory", *size)?;
            if size % PAGE_SIZE != 0 {
                return Err(SpecError::new(
                    at,
                    ErrorKind::Unaligned {
                        key: "memory",
                        value: *size,
                    },
                ));
            }
            Ok(())
        }
        Memory::Regions(regions) => {
            if regions.len() > MAX_RAM_REGIONS {
                return Err(SpecError::new(
                    at,
                    ErrorKind::TooMany {
                        key: "ram",
                        count: regions.len(),
                        max: MAX_RAM_REGIONS,
                    },
                ));
            }
            let window = device_window(arch);
            for (index, region) in regions.iter().enumerate() {
                let here = format!("{at}: ram {index}");
                let size = SizeDisplay(region.size);
                if region.size == 0 {
                    return Err(SpecError::new(
                        here,
                        ErrorKind::TooSmall {
                            key: "size",
                            value: "0".to_string(),
                            min: "4 KiB",
                        },
                    ));
                }
                for (key, value) in [("base", region.base), ("size", region.size)] {
                    if value % PAGE_SIZE != 0 {
                        return Err(SpecError::new(here, ErrorKind::Unaligned { key, value }));
                    }
                }
                let Some(end) = region.end() else {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::RamWraps {
                            index,
                            base: region.base,
                            size,
                        },
                    ));
                };
                if end > GPA_LIMIT {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::RamAboveLimit {
                            index,
                            base: region.base,
                            size,
                            limit: GPA_LIMIT,
                        },
                    ));
                }
                if window.overlaps(region.base, region.size) {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::RamInDeviceWindow {
                            index,
                            base: region.base,
                            size,
                            arch,
                            window,
                        },
                    ));
                }
                if let Some(other) = regions[..index]
                    .iter()
                    .position(|r| r.base < end && region.base < r.base.saturating_add(r.size))
                {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::RamOverlap {
                            index,
                            base: region.base,
                            size,
                            other,
                        },
                    ));
                }
            }
            if regions.is_empty() {
                return Err(SpecError::new(
                    at,
                    ErrorKind::MemoryForm("neither memory nor [[vm.ram]] is given"),
                ));
            }
            // Regions are disjoint and each below GPA_LIMIT, so the sum cannot overflow.
            check_total(at, "ram (total)", memory.total())?;
            if arch == Arch::X86_64 && !regions.iter().any(|r| r.base == 0) {
                return Err(SpecError::new(at, ErrorKind::X86NoLowRam));
            }
            Ok(())
        }
    }
}

/// Checks between VMs: unique names, no disk image shared read-write.
pub(crate) fn check_across_vms(vms: &[VmSpec]) -> Result<(), SpecError> {
    if vms.is_empty() {
        return Err(SpecError::new("", ErrorKind::NoVms));
    }
    for (index, vm) in vms.iter().enumerate() {
        if vms[..index].iter().any(|earlier| earlier.name == vm.name) {
            return Err(SpecError::new(
                format!("vm[{index}]"),
                ErrorKind::DuplicateName(vm.name.clone()),
            ));
        }
    }
    // A disk image written by one user and used by another (two VMs, or one VM twice) would
    // be corrupted or read torn; sharing is fine only when every user reads.
    let mut seen: alloc::vec::Vec<(&str, bool, String)> = alloc::vec::Vec::new();
    for (index, vm) in vms.iter().enumerate() {
        let at = vm_label(index, Some(&vm.name));
        for (i, disk) in vm.disks.iter().enumerate() {
            if disk.served.is_some() {
                continue;
            }
            let path = disk.path.as_str();
            let here = format!("{at}: disk {i}");
            if let Some((_, _, other)) = seen
                .iter()
                .find(|(p, read_only, _)| *p == path && !(*read_only && disk.read_only))
            {
                return Err(SpecError::new(
                    here,
                    ErrorKind::DiskShared {
                        path: path.to_string(),
                        other: other.clone(),
                    },
                ));
            }
            seen.push((path, disk.read_only, here));
        }
    }
    check_served(vms)
}

/// Granularity of a served disk's range: a page, so a range never shares a page-cache page
/// of the storage VM's disk with another client's.
pub const SERVED_ALIGN: u64 = 4096;

/// Served disks (docs/driver-vms.md): each names another VM's file disk, with a non-empty,
/// aligned range that overlaps no other client's range of that disk, read-only if the disk is.
fn check_served(vms: &[VmSpec]) -> Result<(), SpecError> {
    // (server index, server disk (usize::MAX - k: passed-through device k), start, end,
    // client label)
    let mut ranges: alloc::vec::Vec<(usize, usize, u64, u64, String)> = alloc::vec::Vec::new();
    for (index, vm) in vms.iter().enumerate() {
        let at = vm_label(index, Some(&vm.name));
        for (i, disk) in vm.disks.iter().enumerate() {
            let Some(s) = &disk.served else { continue };
            let here = format!("{at}: disk {i}");
            let bad = |why: String| SpecError::new(&here, ErrorKind::BadServer(why));
            let Some(server) = vms.iter().position(|v| v.name == s.server) else {
                return Err(bad(format!("no vm is named {:?}", s.server)));
            };
            if server == index {
                return Err(bad(format!("vm {:?} cannot serve its own disks", s.server)));
            }
            let key = if let Some(dev) = &s.server_passthrough {
                let Some(k) = vms[server].passthrough.iter().position(|d| d.name == *dev) else {
                    return Err(bad(format!(
                        "vm {:?} has no passed-through device {dev:?}",
                        s.server
                    )));
                };
                usize::MAX - k
            } else {
                s.server_disk
            };
            let sd = if s.server_passthrough.is_some() {
                None
            } else {
                vms[server].disks.get(s.server_disk)
            };
            if s.server_passthrough.is_none() && sd.is_none() {
                return Err(bad(format!(
                    "vm {:?} has no disk {} (it has {})",
                    s.server,
                    s.server_disk,
                    vms[server].disks.len()
                )));
            }
            if sd.is_some_and(|sd| sd.served.is_some()) {
                return Err(bad(format!(
                    "vm {:?} disk {} is itself served by another VM; a storage VM serves from a host file it owns",
                    s.server, s.server_disk
                )));
            }
            if sd.is_some_and(|sd| sd.read_only) && !disk.read_only {
                return Err(bad(format!(
                    "vm {:?} disk {} is read_only, so this disk must be read_only too",
                    s.server, s.server_disk
                )));
            }
            let field = |key: &'static str, value: u64, reason: &'static str| {
                SpecError::new(&here, ErrorKind::ServedRange { key, value, reason })
            };
            if s.size == 0 {
                return Err(field(
                    "size",
                    s.size,
                    "bytes: a served disk cannot be empty",
                ));
            }
            if s.size % SERVED_ALIGN != 0 {
                return Err(field("size", s.size, "is not a multiple of 4 KiB"));
            }
            if s.start % SERVED_ALIGN != 0 {
                return Err(field("start", s.start, "is not a multiple of 4 KiB"));
            }
            let Some(end) = s.start.checked_add(s.size) else {
                return Err(field("size", s.size, "bytes: start + size overflows"));
            };
            if let Some((.., other)) = ranges
                .iter()
                .find(|(sv, d, a, b, _)| *sv == server && *d == key && s.start < *b && *a < end)
            {
                return Err(SpecError::new(
                    &here,
                    ErrorKind::ServedOverlap {
                        server: s.server.clone(),
                        server_disk: s.server_disk,
                        start: s.start,
                        end,
                        other: other.clone(),
                    },
                ));
            }
            ranges.push((server, key, s.start, end, here.clone()));
        }
    }
    Ok(())
}

pub(crate) fn network_label(index: usize, name: &str) -> String {
    if vm_name_ok(name) {
        format!("network {name:?}")
    } else {
        format!("network[{index}]")
    }
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let list: alloc::vec::Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// A tap interface name: 1 to 15 (IFNAMSIZ - 1) of `a-z A-Z 0-9 . _ -`.
fn tap_name_ok(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks the networks and the interfaces attached to them: unique network names, sizes,
/// uplinks, interfaces on declared networks (once per VM and network), MACs usable and
/// unique, allow lists naming members only.
pub(crate) fn check_networks(vms: &[VmSpec], networks: &[NetworkSpec]) -> Result<(), SpecError> {
    if networks.len() > MAX_NETWORKS {
        return Err(SpecError::new(
            "",
            ErrorKind::TooMany {
                key: "networks",
                count: networks.len(),
                max: MAX_NETWORKS,
            },
        ));
    }
    for (index, net) in networks.iter().enumerate() {
        let at = network_label(index, &net.name);
        if !vm_name_ok(&net.name) {
            return Err(SpecError::new(
                at,
                ErrorKind::BadName {
                    name: net.name.clone(),
                    rule: "1 to 32 of a-z 0-9 -",
                },
            ));
        }
        if networks[..index].iter().any(|n| n.name == net.name) {
            return Err(SpecError::new(
                format!("network[{index}]"),
                ErrorKind::DuplicateNetwork(net.name.clone()),
            ));
        }
        if !net.slots.is_power_of_two() || !(MIN_RING_SLOTS..=MAX_RING_SLOTS).contains(&net.slots) {
            return Err(SpecError::new(
                at,
                ErrorKind::OutOfRange {
                    key: "slots",
                    value: net.slots.into(),
                    range: "a power of two in 16..=4096",
                },
            ));
        }
        for (key, value, max, range) in [
            (
                "flood_rate",
                net.flood_rate,
                MAX_FLOOD_RATE,
                FLOOD_RATE_RANGE,
            ),
            (
                "flood_burst",
                net.flood_burst,
                MAX_FLOOD_BURST,
                FLOOD_BURST_RANGE,
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::OutOfRange {
                        key,
                        value: value.into(),
                        range,
                    },
                ));
            }
        }
        if let Some(uplink) = &net.uplink
            && !uplink.strip_prefix("tap:").is_some_and(tap_name_ok)
        {
            return Err(SpecError::new(at, ErrorKind::BadUplink(uplink.clone())));
        }
    }
    // Interfaces: on a declared network, once per (VM, network), usable and unique MACs.
    let mut macs: alloc::vec::Vec<(MacAddr, String, bool)> = alloc::vec::Vec::new();
    for (index, vm) in vms.iter().enumerate() {
        let vm_at = vm_label(index, Some(&vm.name));
        for (i, nic) in vm.nics.iter().enumerate() {
            let at = format!("{vm_at}: net {i}");
            if !networks.iter().any(|n| n.name == nic.network) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::UnknownNetwork {
                        network: nic.network.clone(),
                        declared: list_or_none(networks.iter().map(|n| n.name.as_str())),
                    },
                ));
            }
            if let Some(first) = vm.nics[..i].iter().position(|n| n.network == nic.network) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::AttachedTwice {
                        network: nic.network.clone(),
                        first,
                    },
                ));
            }
            let mac = System::nic_mac(vm, i).unwrap_or(MacAddr([0; 6]));
            if mac.is_multicast() {
                return Err(SpecError::new(
                    at,
                    ErrorKind::UnusableMac {
                        mac: mac.to_string(),
                        reason: "a multicast address (bit 0 of the first octet is set)",
                    },
                ));
            }
            if mac.0 == [0; 6] {
                return Err(SpecError::new(
                    at,
                    ErrorKind::UnusableMac {
                        mac: mac.to_string(),
                        reason: "all zeros",
                    },
                ));
            }
            let derived = nic.mac.is_none();
            if let Some((_, other, other_derived)) = macs.iter().find(|(m, _, _)| *m == mac) {
                let hint = if derived || *other_derived {
                    " (a derived address collided: give one of them a mac)"
                } else {
                    ""
                };
                return Err(SpecError::new(
                    at,
                    ErrorKind::DuplicateMac {
                        mac: mac.to_string(),
                        other: other.clone(),
                        hint,
                    },
                ));
            }
            macs.push((mac, at, derived));
        }
    }
    // Allow lists: members only, no self pairs; the port count fits the switch.
    for (index, net) in networks.iter().enumerate() {
        let at = network_label(index, &net.name);
        let members: alloc::vec::Vec<&str> = vms
            .iter()
            .filter(|vm| vm.nics.iter().any(|n| n.network == net.name))
            .map(|vm| vm.name.as_str())
            .collect();
        let ports = members.len() + usize::from(net.uplink.is_some());
        if ports > MAX_NETWORK_PORTS {
            return Err(SpecError::new(
                at,
                ErrorKind::TooMany {
                    key: "interfaces attached",
                    count: ports,
                    max: MAX_NETWORK_PORTS,
                },
            ));
        }
        // `"pool"` (the dynamic pool's ports) is checked with the limits (`check_pool`).
        let is_member = |name: &str| {
            members.contains(&name)
                || (net.uplink.is_some() && name == NetworkSpec::UPLINK)
                || name == NetworkSpec::POOL
        };
        for (a, b) in net.allow.iter().flatten() {
            for name in [a, b] {
                if !is_member(name) {
                    let what = if vms.iter().any(|vm| vm.name == *name) {
                        "attached to this network"
                    } else {
                        "a VM of this system"
                    };
                    let mut all = members.clone();
                    if net.uplink.is_some() {
                        all.push(NetworkSpec::UPLINK);
                    }
                    return Err(SpecError::new(
                        at,
                        ErrorKind::NotAMember {
                            name: name.clone(),
                            what,
                            members: list_or_none(all.into_iter()),
                        },
                    ));
                }
            }
            // `["pool", "pool"]`: the pool's ports with each other (not one member twice).
            let pool_pair = a == NetworkSpec::POOL && !members.contains(&a.as_str());
            if a == b && !pool_pair {
                return Err(SpecError::new(at, ErrorKind::AllowSelf(a.clone())));
            }
        }
    }
    Ok(())
}

pub(crate) fn shared_label(index: usize, name: &str) -> String {
    if vm_name_ok(name) {
        format!("shared {name:?}")
    } else {
        format!("shared[{index}]")
    }
}

/// Checks the guest memory regions (`[[shared]]`) and every VM's mappings of them
/// (`[[vm.shared]]`): names, sizes, alignment, no overlap with the VM's RAM, its device
/// window or its other mappings, each region mapped at most once per VM and by at least
/// one VM.
pub(crate) fn check_shared(vms: &[VmSpec], shared: &[SharedSpec]) -> Result<(), SpecError> {
    if shared.len() > MAX_SHARED_REGIONS {
        return Err(SpecError::new(
            "",
            ErrorKind::TooMany {
                key: "shared",
                count: shared.len(),
                max: MAX_SHARED_REGIONS,
            },
        ));
    }
    for (index, region) in shared.iter().enumerate() {
        if !vm_name_ok(&region.name) {
            return Err(SpecError::new(
                format!("shared[{index}]"),
                ErrorKind::BadName {
                    name: region.name.clone(),
                    rule: "1 to 32 of a-z 0-9 -",
                },
            ));
        }
        let at = shared_label(index, &region.name);
        if shared[..index].iter().any(|r| r.name == region.name) {
            return Err(SpecError::new(
                at,
                ErrorKind::DuplicateShared(region.name.clone()),
            ));
        }
        if region.size == 0 {
            return Err(SpecError::new(
                at,
                ErrorKind::TooSmall {
                    key: "size",
                    value: "0".to_string(),
                    min: "4 KiB",
                },
            ));
        }
        if region.size % PAGE_SIZE != 0 {
            return Err(SpecError::new(
                at,
                ErrorKind::Unaligned {
                    key: "size",
                    value: region.size,
                },
            ));
        }
        if region.size > MAX_SHARED_SIZE {
            return Err(SpecError::new(
                at,
                ErrorKind::TooLarge {
                    key: "size",
                    value: SizeDisplay(region.size).to_string(),
                    max: "1 GiB",
                },
            ));
        }
    }
    for (vm_index, vm) in vms.iter().enumerate() {
        let vm_at = vm_label(vm_index, Some(&vm.name));
        if vm.shared.len() > MAX_SHARED_MAPS {
            return Err(SpecError::new(
                vm_at,
                ErrorKind::TooMany {
                    key: "shared",
                    count: vm.shared.len(),
                    max: MAX_SHARED_MAPS,
                },
            ));
        }
        let window = device_window(vm.arch);
        let ram = crate::layout::ram_layout(vm);
        for (i, map) in vm.shared.iter().enumerate() {
            let at = format!("{vm_at}: shared {i}");
            let Some(region) = shared.iter().find(|r| r.name == map.region) else {
                return Err(SpecError::new(
                    at,
                    ErrorKind::UnknownShared {
                        region: map.region.clone(),
                        declared: list_or_none(shared.iter().map(|r| r.name.as_str())),
                    },
                ));
            };
            if let Some(first) = vm.shared[..i].iter().position(|m| m.region == map.region) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::SharedTwice {
                        region: map.region.clone(),
                        first,
                    },
                ));
            }
            if map.base % PAGE_SIZE != 0 {
                return Err(SpecError::new(
                    at,
                    ErrorKind::Unaligned {
                        key: "base",
                        value: map.base,
                    },
                ));
            }
            let size = region.size;
            let overlap = |other: String| {
                SpecError::new(
                    at.clone(),
                    ErrorKind::SharedOverlap {
                        region: map.region.clone(),
                        base: map.base,
                        size: SizeDisplay(size),
                        other,
                    },
                )
            };
            match map.base.checked_add(size) {
                Some(end) if end <= GPA_LIMIT => {}
                _ => {
                    return Err(overlap(format!(
                        "the guest-physical limit {GPA_LIMIT:#x} (it must end below it)"
                    )));
                }
            }
            let hits = |base: u64, len: u64| {
                map.base < base.saturating_add(len) && base < map.base.saturating_add(size)
            };
            if window.overlaps(map.base, size) {
                return Err(overlap(format!("the {} device window {window}", vm.arch)));
            }
            if let Some((r, &(base, len))) = ram.iter().enumerate().find(|(_, (b, l))| hits(*b, *l))
            {
                return Err(overlap(format!("ram {r} ({base:#x}+{})", SizeDisplay(len))));
            }
            for (j, other) in vm.shared[..i].iter().enumerate() {
                let other_size = shared
                    .iter()
                    .find(|r| r.name == other.region)
                    .map_or(0, |r| r.size);
                if hits(other.base, other_size) {
                    return Err(overlap(format!(
                        "shared {j} (region {:?} at {:#x}+{})",
                        other.region,
                        other.base,
                        SizeDisplay(other_size)
                    )));
                }
            }
            if let Some(given) = map.size {
                if given != size {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::SharedSizeMismatch {
                            region: map.region.clone(),
                            given: SizeDisplay(given),
                            declared: SizeDisplay(size),
                        },
                    ));
                }
            }
        }
    }
    for (index, region) in shared.iter().enumerate() {
        if !vms
            .iter()
            .any(|vm| vm.shared.iter().any(|m| m.region == region.name))
        {
            return Err(SpecError::new(
                shared_label(index, &region.name),
                ErrorKind::SharedUnused(region.name.clone()),
            ));
        }
    }
    Ok(())
}

/// Checks `[limits]`: counts in range, memory page-aligned, networks declared.
pub(crate) fn check_limits(
    l: &crate::model::Limits,
    networks: &[NetworkSpec],
) -> Result<(), SpecError> {
    use limits::{MAX_DYNAMIC_VMS, MAX_POOL_MEMORY, MAX_POOL_VCPUS, PAGE_SIZE};
    let at = "limits";
    if l.max_vms > MAX_DYNAMIC_VMS {
        return Err(SpecError::new(
            at,
            ErrorKind::OutOfRange {
                key: "max_vms",
                value: l.max_vms.into(),
                range: "0..=1024",
            },
        ));
    }
    if l.vcpus > MAX_POOL_VCPUS {
        return Err(SpecError::new(
            at,
            ErrorKind::OutOfRange {
                key: "vcpus",
                value: l.vcpus.into(),
                range: "0..=65536",
            },
        ));
    }
    if l.memory > MAX_POOL_MEMORY {
        return Err(SpecError::new(
            at,
            ErrorKind::TooLarge {
                key: "memory",
                value: SizeDisplay(l.memory).to_string(),
                max: "64 TiB",
            },
        ));
    }
    if l.memory % PAGE_SIZE != 0 {
        return Err(SpecError::new(
            at,
            ErrorKind::Unaligned {
                key: "memory",
                value: l.memory,
            },
        ));
    }
    for name in &l.networks {
        if !networks.iter().any(|n| &n.name == name) {
            return Err(SpecError::new(
                format!("{at}: networks"),
                ErrorKind::UnknownNetwork {
                    network: name.clone(),
                    declared: list_or_none(networks.iter().map(|n| n.name.as_str())),
                },
            ));
        }
    }
    Ok(())
}

/// Checks the dynamic pool's ports (docs/config.md, `[limits] networks`): each network
/// in `[limits] networks` gets `max_vms` pool ports besides its members' and its uplink's,
/// within [`MAX_NETWORK_PORTS`]; there no member may be named [`NetworkSpec::POOL`], the
/// pool's name in allow lists. On any other network an allow list naming `"pool"` must
/// mean a member VM of that name.
pub(crate) fn check_pool(
    l: Option<&crate::model::Limits>,
    vms: &[VmSpec],
    networks: &[NetworkSpec],
) -> Result<(), SpecError> {
    for (index, net) in networks.iter().enumerate() {
        let at = network_label(index, &net.name);
        let members: alloc::vec::Vec<&str> = vms
            .iter()
            .filter(|vm| vm.nics.iter().any(|n| n.network == net.name))
            .map(|vm| vm.name.as_str())
            .collect();
        let pool = l.filter(|l| l.networks.contains(&net.name));
        match pool {
            Some(l) => {
                if members.contains(&NetworkSpec::POOL) {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::PoolNameTaken {
                            name: NetworkSpec::POOL.into(),
                        },
                    ));
                }
                let ports = members.len()
                    + usize::from(net.uplink.is_some())
                    + usize::try_from(l.max_vms).unwrap_or(usize::MAX);
                if ports > MAX_NETWORK_PORTS {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::TooMany {
                            key: "ports (interfaces attached, the uplink, and limits.max_vms ports for the dynamic pool)",
                            count: ports,
                            max: MAX_NETWORK_PORTS,
                        },
                    ));
                }
            }
            None => {
                let names_pool = net
                    .allow
                    .iter()
                    .flatten()
                    .any(|(a, b)| a == NetworkSpec::POOL || b == NetworkSpec::POOL);
                if names_pool && !members.contains(&NetworkSpec::POOL) {
                    return Err(SpecError::new(
                        at,
                        ErrorKind::PoolNotListed {
                            name: NetworkSpec::POOL.into(),
                        },
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks every VM's `[[vm.control]]` (each names another VM of the system, once per
/// controlling VM, with at least one right, each right once) and that every pool slot
/// (`start = false`) can be started by some VM.
pub(crate) fn check_control(vms: &[VmSpec]) -> Result<(), SpecError> {
    for (index, vm) in vms.iter().enumerate() {
        let label = vm_label(index, Some(&vm.name));
        for (i, c) in vm.control.iter().enumerate() {
            let at = format!("{label}: control {i}");
            if c.vm == vm.name {
                return Err(SpecError::new(at, ErrorKind::ControlSelf(c.vm.clone())));
            }
            if !vms.iter().any(|v| v.name == c.vm) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::UnknownControlTarget {
                        vm: c.vm.clone(),
                        declared: list_or_none(vms.iter().map(|v| v.name.as_str())),
                    },
                ));
            }
            if let Some(first) = vm.control[..i].iter().position(|d| d.vm == c.vm) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::ControlTwice {
                        vm: c.vm.clone(),
                        first,
                    },
                ));
            }
            if c.rights.is_empty() {
                return Err(SpecError::new(at, ErrorKind::NoRights));
            }
            for (j, r) in c.rights.iter().enumerate() {
                if c.rights[..j].contains(r) {
                    return Err(SpecError::new(at, ErrorKind::RightTwice(r.as_str())));
                }
            }
        }
    }
    for (index, vm) in vms.iter().enumerate() {
        let startable = vms.iter().any(|v| {
            v.control
                .iter()
                .any(|c| c.vm == vm.name && c.rights.contains(&ControlRight::Start))
        });
        if !vm.start && !startable {
            return Err(SpecError::new(
                vm_label(index, Some(&vm.name)),
                ErrorKind::PoolSlotWithoutStarter,
            ));
        }
    }
    Ok(())
}

/// Most `[[vm.passthrough]]` devices of one VM.
pub const MAX_PASSTHROUGH: usize = 16;

/// Checks `[[vm.passthrough]]` and `ram_phys_addr` as far as they do not depend on the
/// board or the backend: shapes, alignment, interrupts being SPIs, nothing overlapping the
/// VM's RAM or shared mappings, no physical page or interrupt given to two owners, no two
/// VMs' fixed RAM overlapping, and a DMA-capable device only in a VM whose RAM is
/// identity-mapped. The board's map and Keel's own resources are checked by the backend
/// (seL4: [`crate::microkit::check`]); the VM's own device windows by [`crate::plan`].
pub(crate) fn check_passthrough(vms: &[VmSpec], shared: &[SharedSpec]) -> Result<(), SpecError> {
    use alloc::vec::Vec;
    // (page or irq, owner label) of every passed-through resource seen so far.
    let mut pages: Vec<(u64, u64, String)> = Vec::new();
    let mut irqs: Vec<(u32, String)> = Vec::new();
    let mut phys_ram: Vec<(u64, u64, String)> = Vec::new();
    for (vm_index, vm) in vms.iter().enumerate() {
        let vm_at = vm_label(vm_index, Some(&vm.name));
        let ram = crate::layout::ram_layout(vm);
        if let Some(phys) = vm.ram_phys_addr {
            let fail = |reason| {
                SpecError::new(
                    vm_at.clone(),
                    ErrorKind::RamPhysAddr {
                        value: phys,
                        reason,
                    },
                )
            };
            let [(_, size)] = ram[..] else {
                return Err(fail("needs exactly one RAM region"));
            };
            if vm.cache_colours.is_some() {
                return Err(fail(
                    "a VM with cache_colours has its RAM placed by colour; give one or the other",
                ));
            }
            if phys % (2 << 20) != 0 {
                return Err(fail(
                    "not a multiple of 2 MiB (RAM is mapped in 2 MiB pages)",
                ));
            }
            let Some(end) = phys.checked_add(size) else {
                return Err(fail("the RAM would wrap around the address space"));
            };
            if let Some((_, _, other)) = phys_ram.iter().find(|(b, e, _)| phys < *e && *b < end) {
                return Err(SpecError::new(
                    vm_at.clone(),
                    ErrorKind::PassthroughTaken {
                        what: format!("physical RAM {phys:#x}..{end:#x} (ram_phys_addr)"),
                        other: other.clone(),
                    },
                ));
            }
            phys_ram.push((phys, end, format!("{vm_at} (its RAM, ram_phys_addr)")));
        }
        if vm.passthrough.len() > MAX_PASSTHROUGH {
            return Err(SpecError::new(
                vm_at,
                ErrorKind::TooMany {
                    key: "passthrough",
                    count: vm.passthrough.len(),
                    max: MAX_PASSTHROUGH,
                },
            ));
        }
        for (i, dev) in vm.passthrough.iter().enumerate() {
            let at = format!("{vm_at}: passthrough {i}");
            if !vm_name_ok(&dev.name) {
                return Err(SpecError::new(
                    at,
                    ErrorKind::BadName {
                        name: dev.name.clone(),
                        rule: "1 to 32 of a-z 0-9 -",
                    },
                ));
            }
            let at = format!("{vm_at}: passthrough {:?}", dev.name);
            let fail = |kind| SpecError::new(at.clone(), kind);
            if vm.passthrough[..i].iter().any(|d| d.name == dev.name) {
                return Err(fail(ErrorKind::DuplicateName(dev.name.clone())));
            }
            if dev.mmio.is_empty() && dev.irqs.is_empty() {
                return Err(fail(ErrorKind::PassthroughShape(
                    "neither mmio nor irqs is given: nothing to pass through",
                )));
            }
            let owner = format!("{vm_at}: passthrough {:?}", dev.name);
            for r in &dev.mmio {
                let bad = |reason| {
                    fail(ErrorKind::PassthroughRange {
                        key: "mmio",
                        base: r.base,
                        size: r.size,
                        reason,
                    })
                };
                if r.size == 0 {
                    return Err(bad("empty"));
                }
                if r.base % PAGE_SIZE != 0 || r.size % PAGE_SIZE != 0 {
                    return Err(bad(
                        "base and size must be multiples of 4 KiB (pages are mapped whole)",
                    ));
                }
                let end = match r.end() {
                    Some(end) if end <= GPA_LIMIT => end,
                    _ => return Err(bad("ends above the guest-physical limit")),
                };
                let overlap = |other: String| {
                    fail(ErrorKind::PassthroughOverlap {
                        name: dev.name.clone(),
                        base: r.base,
                        size: r.size,
                        other,
                    })
                };
                if let Some((k, &(b, l))) = ram
                    .iter()
                    .enumerate()
                    .find(|(_, (b, l))| r.base < b.saturating_add(*l) && *b < end)
                {
                    return Err(overlap(format!("ram {k} ({b:#x}+{})", SizeDisplay(l))));
                }
                for m in &vm.shared {
                    let len = shared
                        .iter()
                        .find(|g| g.name == m.region)
                        .map_or(0, |g| g.size);
                    if r.base < m.base.saturating_add(len) && m.base < end {
                        return Err(overlap(format!(
                            "shared region {:?} at {:#x}+{}",
                            m.region,
                            m.base,
                            SizeDisplay(len)
                        )));
                    }
                }
                if let Some((b, _, other)) = pages.iter().find(|(b, e, _)| r.base < *e && *b < end)
                {
                    let page = (*b).max(r.base);
                    return Err(fail(ErrorKind::PassthroughTaken {
                        what: format!("mmio page {page:#x}"),
                        other: other.clone(),
                    }));
                }
                pages.push((r.base, end, owner.clone()));
            }
            for (k, &irq) in dev.irqs.iter().enumerate() {
                if !(32..1020).contains(&irq) {
                    return Err(fail(ErrorKind::PassthroughIrq {
                        irq,
                        reason: "not an SPI (GIC INTIDs 32..1020 can be passed through)",
                    }));
                }
                if dev.irqs[..k].contains(&irq) {
                    return Err(fail(ErrorKind::PassthroughIrq {
                        irq,
                        reason: "listed twice",
                    }));
                }
                if let Some((_, other)) = irqs.iter().find(|(q, _)| *q == irq) {
                    return Err(fail(ErrorKind::PassthroughTaken {
                        what: format!("irq {irq}"),
                        other: other.clone(),
                    }));
                }
                irqs.push((irq, owner.clone()));
            }
            if let Some(dt) = &dev.dt {
                if dt.compatible.is_empty()
                    || dt.compatible.len() > 64
                    || !dt.compatible.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(fail(ErrorKind::BadName {
                        name: dt.compatible.clone(),
                        rule: "dt: 1 to 64 printable ASCII characters, no spaces",
                    }));
                }
                if dt.reg.is_empty() {
                    return Err(fail(ErrorKind::PassthroughShape(
                        "dt needs a reg: give mmio or dt_reg",
                    )));
                }
                for r in &dt.reg {
                    let inside = r.size > 0
                        && r.end().is_some_and(|end| {
                            dev.mmio
                                .iter()
                                .any(|m| m.base <= r.base && m.end().is_some_and(|me| end <= me))
                        });
                    if !inside {
                        return Err(fail(ErrorKind::PassthroughRange {
                            key: "dt_reg",
                            base: r.base,
                            size: r.size,
                            reason: "not inside one of the device's mmio ranges",
                        }));
                    }
                }
            }
            if dev.dma == crate::model::Dma::Identity {
                let base = ram.first().map_or(0, |r| r.0);
                if vm.ram_phys_addr != Some(base) || ram.len() != 1 {
                    return Err(fail(ErrorKind::DmaNotIdentity {
                        name: dev.name.clone(),
                        base,
                        given: vm
                            .ram_phys_addr
                            .map(|p| format!(", not {p:#x}"))
                            .unwrap_or_default(),
                    }));
                }
            }
        }
    }
    Ok(())
}

/// Checks every `[vm.vsock]` (CID in 3..=4294967294, unique in the system) and the
/// `[vsock] allow` pairs (both VMs exist and have vsock, not the same VM, each pair once in
/// either order).
pub(crate) fn check_vsock(vms: &[VmSpec], allow: &[(String, String)]) -> Result<(), SpecError> {
    for (index, vm) in vms.iter().enumerate() {
        let Some(v) = &vm.vsock else { continue };
        let at = format!("{}: vsock", vm_label(index, Some(&vm.name)));
        if !(3..u32::MAX).contains(&v.cid) {
            return Err(SpecError::new(
                at,
                ErrorKind::OutOfRange {
                    key: "cid",
                    value: v.cid.into(),
                    range: "3..=4294967294 (0, 1 and 2 are reserved, 2 is the host)",
                },
            ));
        }
        if let Some(other) = vms[..index]
            .iter()
            .find(|o| o.vsock.as_ref().is_some_and(|o| o.cid == v.cid))
        {
            return Err(SpecError::new(
                at,
                ErrorKind::DuplicateCid {
                    cid: v.cid,
                    other: other.name.clone(),
                },
            ));
        }
    }
    for (i, (a, b)) in allow.iter().enumerate() {
        let at = "vsock";
        for name in [a, b] {
            let Some(vm) = vms.iter().find(|v| &v.name == name) else {
                return Err(SpecError::new(
                    at,
                    ErrorKind::VsockUnknownVm {
                        name: name.clone(),
                        members: list_or_none(
                            vms.iter()
                                .filter(|v| v.vsock.is_some())
                                .map(|v| v.name.as_str()),
                        ),
                    },
                ));
            };
            if vm.vsock.is_none() {
                return Err(SpecError::new(at, ErrorKind::VsockNotEnabled(name.clone())));
            }
        }
        if a == b {
            return Err(SpecError::new(at, ErrorKind::AllowSelf(a.clone())));
        }
        if allow[..i]
            .iter()
            .any(|(c, d)| (c == a && d == b) || (c == b && d == a))
        {
            return Err(SpecError::new(
                at,
                ErrorKind::VsockPairTwice {
                    a: a.clone(),
                    b: b.clone(),
                },
            ));
        }
    }
    Ok(())
}
