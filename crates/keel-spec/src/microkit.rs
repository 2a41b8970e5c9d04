//! Microkit system-file generation: the seL4 side of a [`System`].
//!
//! Each VM becomes one VMM protection domain (`<vm>_vmm`, program image `<vm>-vmm.elf`)
//! with one child `<virtual_machine>`: the VM's RAM is a memory region mapped into the VM at
//! its guest-physical base (2 MiB pages) and into the VMM at [`MicrokitLayout::vmm_ram_vaddr`];
//! the GIC virtual CPU interface is mapped into the VM where the guest expects the GIC CPU
//! interface. Everything else the guest touches faults to its VMM. Placement becomes the
//! scheduling parameters (priority, budget, period) and `<vcpu cpu="N">`.
//!
//! The console component ([`console_component`]): one `keel_console` PD (program
//! `keel-console.elf`) owns the debug console's output; each VMM gets one ring region
//! (`<vm>_console_ring`) mapped into that VMM and into the console PD only, and one channel
//! to the console. The console PD runs one priority below the lowest VMM.
//!
//! Cores ([`placement`]): a VM with `placement.pcpus` gets exactly those; without it, vCPU
//! `i` goes on core `i mod n`, `n` being the system's `pcpus` if given, else the kernel's
//! cores. A VMM protection domain runs on the core of its VM's vCPU 0.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::layout::ram_layout;
use crate::model::{Arch, Placement, System, VmSpec};

/// The board-specific addresses the system file needs (they come from the seL4 backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicrokitLayout {
    /// Where each VMM maps its VM's RAM.
    pub vmm_ram_vaddr: u64,
    /// Physical address of the GIC virtual CPU interface (GICV).
    pub gic_vcpu_paddr: u64,
    /// Size of the GICV mapping.
    pub gic_vcpu_size: u64,
    /// Guest-physical address of the GIC CPU interface in the VM's device tree.
    pub gic_cpu_gpa: u64,
    /// The console component's addresses and channel.
    pub console: ConsoleLayout,
    /// Physical CPUs the kernel runs on (`CONFIG_MAX_NUM_NODES`).
    pub cores: u32,
    /// Most RAM one VM may have (the size of the VMM's window onto it).
    pub max_ram: u64,
    /// Most vCPUs one VM may have (what the emulated GIC addresses: 8 for GICv2).
    pub max_vcpus: u32,
    /// Console input for the first VM, if the board has a serial port to give.
    pub console_input: Option<ConsoleInput>,
}

/// Where the console component's rings go (they come from the seL4 backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLayout {
    /// Bytes of each VMM's console ring region (a multiple of 4 KiB).
    pub ring_size: u64,
    /// Where each VMM maps its ring.
    pub vmm_ring_vaddr: u64,
    /// Where the console PD maps the ring of VM `i`: here + `i` × `ring_size`.
    pub console_rings_vaddr: u64,
    /// The channel id, in each VMM, of its notifications to the console PD (the console
    /// PD's id for VM `i` is `i`).
    pub vmm_channel: u32,
}

/// The board's serial port given to the first VM's VMM for console input: its registers
/// are mapped into the VMM and its receive interrupt arrives on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleInput {
    /// Physical address of the UART's registers (one 4 KiB page).
    pub uart_paddr: u64,
    /// Where the VMM maps them.
    pub uart_vaddr: u64,
    /// The UART's interrupt (GIC INTID).
    pub irq: u32,
    /// The Microkit channel the interrupt arrives on.
    pub channel: u32,
}

/// Why a system has no Microkit form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MicrokitError {
    /// Only aarch64 guests run on Keel's seL4 backend.
    #[error("VM {vm}: architecture {arch} is not supported on seL4 (aarch64 only)")]
    Arch {
        /// VM name.
        vm: String,
        /// Its architecture.
        arch: &'static str,
    },
    /// The seL4 backend maps one RAM region per VM.
    #[error("VM {vm}: {regions} RAM regions; the seL4 backend supports exactly one")]
    RamRegions {
        /// VM name.
        vm: String,
        /// Regions given.
        regions: usize,
    },
    /// RAM not in 2 MiB units (the region is mapped with 2 MiB pages).
    #[error("VM {vm}: RAM region {base:#x}+{size:#x} is not 2 MiB aligned")]
    RamAlignment {
        /// VM name.
        vm: String,
        /// Base.
        base: u64,
        /// Size.
        size: u64,
    },
    /// More RAM than the VMM's window for it.
    #[error("VM {vm}: {size:#x} bytes of RAM; the seL4 backend maps at most {max:#x} per VM")]
    RamTooLarge {
        /// VM name.
        vm: String,
        /// RAM size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// More vCPUs than the emulated GIC addresses.
    #[error("VM {vm}: {vcpus} vCPUs; the seL4 backend's GICv2 serves at most {max}")]
    TooManyVcpus {
        /// VM name.
        vm: String,
        /// vCPUs asked for.
        vcpus: u32,
        /// The limit.
        max: u32,
    },
    /// A vCPU is placed on a CPU the kernel does not run on.
    #[error(
        "VM {vm}: vCPU {vcpu} is placed on pCPU {pcpu}, but the seL4 kernel runs on {cores} core(s)"
    )]
    NoSuchCore {
        /// VM name.
        vm: String,
        /// vCPU index.
        vcpu: u32,
        /// The pCPU asked for.
        pcpu: u32,
        /// Cores available.
        cores: u32,
    },
    /// More VMs than the console PD has channels for.
    #[error("system: {vms} VMs; the seL4 backend supports at most {max}")]
    TooManyVms {
        /// VMs in the system.
        vms: usize,
        /// The limit.
        max: usize,
    },
    /// The system declares more physical CPUs than the kernel runs on.
    #[error(
        "system: pcpus = {pcpus}, but the seL4 kernel runs on {cores} core(s) (pick an SDK config with more, e.g. smp-debug)"
    )]
    SystemPcpus {
        /// `system.pcpus`.
        pcpus: u32,
        /// Cores available.
        cores: u32,
    },
}

/// Where one VM runs: its VMM protection domain's core and each vCPU's core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlacement {
    /// Core of the VMM protection domain (the core of vCPU 0).
    pub vmm_cpu: u32,
    /// Core of vCPU `i`.
    pub vcpu_cpus: Vec<u32>,
}

/// The cores of every VM of `system` (in order) on a kernel with `layout.cores` cores:
/// `placement.pcpus` where given, else vCPU `i` on core `i mod n` (`n`: the system's
/// `pcpus`, else the kernel's cores); each VMM on the core of its vCPU 0.
pub fn placement(
    system: &System,
    layout: &MicrokitLayout,
) -> Result<Vec<VmPlacement>, MicrokitError> {
    let cores = layout.cores.max(1);
    let spread = match system.pcpus() {
        Some(p) if p > cores => {
            return Err(MicrokitError::SystemPcpus { pcpus: p, cores });
        }
        Some(p) => p.max(1),
        None => cores,
    };
    let mut out = Vec::new();
    for vm in system.vms() {
        let vcpu_cpus: Vec<u32> = match vm.placement.as_ref().and_then(|p| p.pcpus.as_ref()) {
            Some(list) => {
                for (vcpu, &pcpu) in list.iter().enumerate() {
                    if pcpu >= cores {
                        return Err(MicrokitError::NoSuchCore {
                            vm: vm.name.clone(),
                            vcpu: vcpu as u32,
                            pcpu,
                            cores,
                        });
                    }
                }
                list.clone()
            }
            None => (0..vm.vcpus).map(|i| i % spread).collect(),
        };
        out.push(VmPlacement {
            vmm_cpu: vcpu_cpus.first().copied().unwrap_or(0),
            vcpu_cpus,
        });
    }
    Ok(out)
}

const TWO_MIB: u64 = 2 << 20;

/// Most VMs in one system: the console PD gives each VMM one of its 62 Microkit channels
/// (ids 0..=60; 61 stays free for the console UART's interrupt).
pub const MAX_VMS: usize = 61;

/// Name of the console protection domain.
pub const CONSOLE_PD_NAME: &str = "keel_console";

/// File name of the console PD's ELF (found on the Microkit tool's search path).
pub const CONSOLE_ELF_NAME: &str = "keel-console.elf";

/// Priority of the VMM protection domain of `vm`: one above its VM, so that it answers
/// faults before the guest runs again.
pub fn vmm_priority(vm: &VmSpec) -> u32 {
    let p = vm.placement.clone().unwrap_or_default();
    u32::from(p.priority).saturating_add(1).min(254)
}

/// The console component of a system: its PD, and per VM the ring region and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleComponent {
    /// PD name ([`CONSOLE_PD_NAME`]).
    pub pd: String,
    /// Program image ([`CONSOLE_ELF_NAME`]).
    pub elf: String,
    /// One below the lowest VMM priority: printing never delays a VMM's fault handling.
    pub priority: u32,
    /// The core of the first VM's VMM.
    pub cpu: u32,
    /// One ring per VM, in system order.
    pub rings: Vec<ConsoleRing>,
}

/// One VMM's console ring: a memory region shared by that VMM and the console PD only,
/// and a channel between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRing {
    /// The VM.
    pub vm: String,
    /// Its VMM PD.
    pub vmm_pd: String,
    /// Memory region name (`<vm>_console_ring`).
    pub region: String,
    /// Region size.
    pub size: u64,
    /// Where the VMM maps it (read-write).
    pub vmm_vaddr: u64,
    /// Where the console PD maps it (read-write).
    pub console_vaddr: u64,
    /// Channel id at the VMM's end.
    pub vmm_channel: u32,
    /// Channel id at the console's end.
    pub console_channel: u32,
}

/// The regions, maps and channels of the console component of `system`.
pub fn console_component(
    system: &System,
    layout: &MicrokitLayout,
    places: &[VmPlacement],
) -> ConsoleComponent {
    let c = &layout.console;
    let rings = system
        .vms()
        .iter()
        .enumerate()
        .map(|(i, vm)| ConsoleRing {
            vm: vm.name.clone(),
            vmm_pd: vmm_pd_name(vm),
            region: format!("{}_console_ring", vm.name),
            size: c.ring_size,
            vmm_vaddr: c.vmm_ring_vaddr,
            console_vaddr: c.console_rings_vaddr + i as u64 * c.ring_size,
            vmm_channel: c.vmm_channel,
            console_channel: i as u32,
        })
        .collect();
    let lowest_vmm = system.vms().iter().map(vmm_priority).min().unwrap_or(1);
    ConsoleComponent {
        pd: CONSOLE_PD_NAME.into(),
        elf: CONSOLE_ELF_NAME.into(),
        priority: lowest_vmm.saturating_sub(1),
        cpu: places.first().map_or(0, |p| p.vmm_cpu),
        rings,
    }
}

/// The console component's memory regions.
fn render_console_regions(x: &mut String, c: &ConsoleComponent) {
    for r in &c.rings {
        let _ = writeln!(
            x,
            "    <memory_region name=\"{}\" size=\"{:#x}\" />",
            r.region, r.size
        );
    }
}

/// The console ring's mapping inside the VMM PD of `ring.vm`.
fn render_console_vmm_map(x: &mut String, ring: &ConsoleRing) {
    let _ = writeln!(
        x,
        "        <map mr=\"{}\" vaddr=\"{:#x}\" perms=\"rw\" />",
        ring.region, ring.vmm_vaddr
    );
}

/// The console PD and its channels.
fn render_console_pd(x: &mut String, c: &ConsoleComponent) {
    let _ = writeln!(
        x,
        "    <protection_domain name=\"{}\" priority=\"{}\" cpu=\"{}\">",
        c.pd, c.priority, c.cpu
    );
    let _ = writeln!(x, "        <program_image path=\"{}\" />", c.elf);
    for r in &c.rings {
        let _ = writeln!(
            x,
            "        <map mr=\"{}\" vaddr=\"{:#x}\" perms=\"rw\" />",
            r.region, r.console_vaddr
        );
    }
    let _ = writeln!(x, "    </protection_domain>");
    for r in &c.rings {
        let _ = writeln!(x, "    <channel>");
        let _ = writeln!(
            x,
            "        <end pd=\"{}\" id=\"{}\" />",
            r.vmm_pd, r.vmm_channel
        );
        let _ = writeln!(
            x,
            "        <end pd=\"{}\" id=\"{}\" />",
            c.pd, r.console_channel
        );
        let _ = writeln!(x, "    </channel>");
    }
}

/// Name of the VMM protection domain of `vm`.
pub fn vmm_pd_name(vm: &VmSpec) -> String {
    format!("{}_vmm", vm.name)
}

/// File name of the VMM ELF of `vm` (found on the Microkit tool's search path).
pub fn vmm_elf_name(vm: &VmSpec) -> String {
    format!("{}-vmm.elf", vm.name)
}

/// Check that `system` can run on seL4 with `layout`.
pub fn check(system: &System, layout: &MicrokitLayout) -> Result<(), MicrokitError> {
    if system.vms().len() > MAX_VMS {
        return Err(MicrokitError::TooManyVms {
            vms: system.vms().len(),
            max: MAX_VMS,
        });
    }
    for vm in system.vms() {
        if vm.arch != Arch::Aarch64 {
            return Err(MicrokitError::Arch {
                vm: vm.name.clone(),
                arch: vm.arch.as_str(),
            });
        }
        let ram = ram_layout(vm);
        let [(base, size)] = ram[..] else {
            return Err(MicrokitError::RamRegions {
                vm: vm.name.clone(),
                regions: ram.len(),
            });
        };
        if base % TWO_MIB != 0 || size % TWO_MIB != 0 {
            return Err(MicrokitError::RamAlignment {
                vm: vm.name.clone(),
                base,
                size,
            });
        }
        if size > layout.max_ram {
            return Err(MicrokitError::RamTooLarge {
                vm: vm.name.clone(),
                size,
                max: layout.max_ram,
            });
        }
        if vm.vcpus > layout.max_vcpus {
            return Err(MicrokitError::TooManyVcpus {
                vm: vm.name.clone(),
                vcpus: vm.vcpus,
                max: layout.max_vcpus,
            });
        }
    }
    placement(system, layout).map(|_| ())
}

/// The Microkit system file (XML) for `system`.
pub fn system_file(system: &System, layout: &MicrokitLayout) -> Result<String, MicrokitError> {
    check(system, layout)?;
    let places = placement(system, layout)?;
    let console = console_component(system, layout, &places);
    let mut x = String::new();
    let _ = writeln!(x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(
        x,
        "<!-- Generated by `keel sel4 build` from system {:?}. -->",
        system.name()
    );
    let _ = writeln!(x, "<system>");
    let _ = writeln!(
        x,
        "    <memory_region name=\"gic_vcpu\" size=\"{:#x}\" phys_addr=\"{:#x}\" />",
        layout.gic_vcpu_size, layout.gic_vcpu_paddr
    );
    if let Some(ci) = &layout.console_input {
        let _ = writeln!(
            x,
            "    <memory_region name=\"keel_console_uart\" size=\"0x1000\" phys_addr=\"{:#x}\" />",
            ci.uart_paddr
        );
    }
    render_console_regions(&mut x, &console);
    for vm in system.vms() {
        let (_, size) = ram_layout(vm)[0];
        let _ = writeln!(
            x,
            "    <memory_region name=\"{}_ram\" size=\"{size:#x}\" page_size=\"{TWO_MIB:#x}\" />",
            vm.name
        );
    }
    for (index, (vm, place)) in system.vms().iter().zip(&places).enumerate() {
        let (base, _) = ram_layout(vm)[0];
        let p = vm.placement.clone().unwrap_or_default();
        let vmm_prio = vmm_priority(vm);
        let sched =
            |p: &Placement| format!("budget=\"{}\" period=\"{}\"", p.budget_us, p.period_us);
        let _ = writeln!(
            x,
            "    <protection_domain name=\"{}\" priority=\"{vmm_prio}\" cpu=\"{}\">",
            vmm_pd_name(vm),
            place.vmm_cpu
        );
        let _ = writeln!(x, "        <program_image path=\"{}\" />", vmm_elf_name(vm));
        let _ = writeln!(
            x,
            "        <map mr=\"{}_ram\" vaddr=\"{:#x}\" perms=\"rw\" />",
            vm.name, layout.vmm_ram_vaddr
        );
        render_console_vmm_map(&mut x, &console.rings[index]);
        if let (0, Some(ci)) = (index, &layout.console_input) {
            let _ = writeln!(
                x,
                "        <map mr=\"keel_console_uart\" vaddr=\"{:#x}\" perms=\"rw\" cached=\"false\" />",
                ci.uart_vaddr
            );
            let _ = writeln!(
                x,
                "        <irq irq=\"{}\" id=\"{}\" />",
                ci.irq, ci.channel
            );
        }
        let _ = writeln!(
            x,
            "        <virtual_machine name=\"{}\" priority=\"{}\" {}>",
            vm.name,
            p.priority,
            sched(&p)
        );
        for (i, cpu) in place.vcpu_cpus.iter().enumerate() {
            let _ = writeln!(x, "            <vcpu id=\"{i}\" cpu=\"{cpu}\" />");
        }
        let _ = writeln!(
            x,
            "            <map mr=\"{}_ram\" vaddr=\"{base:#x}\" perms=\"rwx\" />",
            vm.name
        );
        let _ = writeln!(
            x,
            "            <map mr=\"gic_vcpu\" vaddr=\"{:#x}\" perms=\"rw\" cached=\"false\" />",
            layout.gic_cpu_gpa
        );
        let _ = writeln!(x, "        </virtual_machine>");
        let _ = writeln!(x, "    </protection_domain>");
    }
    render_console_pd(&mut x, &console);
    let _ = writeln!(x, "</system>");
    Ok(x)
}

/// Names of the VMM ELFs the system file refers to, one per VM, in order.
pub fn vmm_elves(system: &System) -> Vec<String> {
    system.vms().iter().map(vmm_elf_name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostPath, Memory};

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
            cores: 1,
            max_ram: 4 << 30,
            max_vcpus: 8,
            console_input: Some(ConsoleInput {
                uart_paddr: 0x0900_0000,
                uart_vaddr: 0x3_0001_0000,
                irq: 33,
                channel: 1,
            }),
        }
    }

    fn vm(name: &str, vcpus: u32) -> VmSpec {
        let mut v = VmSpec::new(
            name,
            Arch::Aarch64,
            HostPath::new("/k"),
            Memory::Size(256 << 20),
        );
        v.vcpus = vcpus;
        v
    }

    fn system(vms: Vec<VmSpec>) -> System {
        System::new("t".into(), None, vms).unwrap()
    }

    #[test]
    fn each_vm_gets_a_vmm_pd_with_its_vcpus() {
        let x = system_file(&system(vec![vm("a", 2), vm("b", 1)]), &layout()).unwrap();

        assert!(x.contains("<protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\">"));
        assert!(x.contains("<program_image path=\"b-vmm.elf\" />"));
        assert_eq!(x.matches("<vcpu id=\"1\"").count(), 1);
        assert_eq!(x.matches("<virtual_machine ").count(), 2);
    }

    #[test]
    fn each_vmm_gets_its_own_console_ring_shared_with_the_console_pd_only() {
        let x = system_file(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();

        for r in ["a_console_ring", "b_console_ring"] {
            assert!(x.contains(&format!("<memory_region name=\"{r}\" size=\"0x4000\" />")));
            assert_eq!(x.matches(&format!("<map mr=\"{r}\"")).count(), 2, "{x}");
        }
        let b_vmm = &x[x.find("name=\"b_vmm\"").unwrap()..];
        let b_vmm = &b_vmm[..b_vmm.find("</protection_domain>").unwrap()];
        assert!(b_vmm.contains("<map mr=\"b_console_ring\" vaddr=\"0x300000000\" perms=\"rw\" />"));
        assert!(!b_vmm.contains("a_console_ring"));
        let con = &x[x.find("name=\"keel_console\"").unwrap()..];
        assert!(con.contains("<map mr=\"a_console_ring\" vaddr=\"0x300000000\" perms=\"rw\" />"));
        assert!(con.contains("<map mr=\"b_console_ring\" vaddr=\"0x300004000\" perms=\"rw\" />"));
        assert!(!x.contains("keel_console_lock"));
    }

    #[test]
    fn each_vmm_has_a_channel_to_the_console_pd() {
        let x = system_file(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();

        assert!(x.contains(
            "<channel>\n        <end pd=\"b_vmm\" id=\"2\" />\n        <end pd=\"keel_console\" id=\"1\" />\n    </channel>"
        ));
        assert_eq!(x.matches("<channel>").count(), 2);
    }

    #[test]
    fn single_vm_system_uses_the_console_pd_too() {
        let x = system_file(&system(vec![vm("a", 1)]), &layout()).unwrap();

        assert!(x.contains("<program_image path=\"keel-console.elf\" />"));
        assert_eq!(x.matches("<channel>").count(), 1);
    }

    #[test]
    fn console_pd_runs_below_the_lowest_vmm_on_the_first_vmms_core() {
        let mut low = vm("low", 1);
        low.placement = Some(Placement {
            pcpus: Some(vec![2]),
            priority: 40,
            ..Placement::default()
        });
        let s = system(vec![low, vm("b", 1)]);

        let c = console_component(
            &s,
            &layout_cores(4),
            &placement(&s, &layout_cores(4)).unwrap(),
        );

        assert_eq!((c.priority, c.cpu), (40, 2));
    }

    #[test]
    fn more_vms_than_console_channels_are_refused() {
        let vms = (0..=MAX_VMS).map(|i| vm(&format!("v{i}"), 1)).collect();

        assert_eq!(
            check(&system(vms), &layout()),
            Err(MicrokitError::TooManyVms { vms: 62, max: 61 })
        );
    }

    #[test]
    fn only_the_first_vmm_gets_the_console_input_uart() {
        let x = system_file(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();

        assert!(x.contains(
            "<memory_region name=\"keel_console_uart\" size=\"0x1000\" phys_addr=\"0x9000000\" />"
        ));
        assert_eq!(x.matches("<irq irq=\"33\" id=\"1\" />").count(), 1);
        let a = x.find("name=\"a_vmm\"").unwrap();
        let b = x.find("name=\"b_vmm\"").unwrap();
        let irq = x.find("<irq irq=").unwrap();
        assert!(a < irq && irq < b);
    }

    #[test]
    fn ram_is_mapped_into_vm_and_vmm() {
        let x = system_file(&system(vec![vm("a", 1)]), &layout()).unwrap();

        assert!(x.contains(
            "<memory_region name=\"a_ram\" size=\"0x10000000\" page_size=\"0x200000\" />"
        ));
        assert!(x.contains("<map mr=\"a_ram\" vaddr=\"0x200000000\" perms=\"rw\" />"));
        assert!(x.contains("<map mr=\"a_ram\" vaddr=\"0x40000000\" perms=\"rwx\" />"));
        assert!(x.contains("<map mr=\"gic_vcpu\" vaddr=\"0x8010000\""));
    }

    #[test]
    fn placement_sets_cpu_and_scheduling() {
        let mut v = vm("a", 1);
        v.placement = Some(Placement {
            pcpus: Some(vec![0]),
            priority: 50,
            budget_us: 500,
            period_us: 1000,
        });

        let x = system_file(&system(vec![v]), &layout()).unwrap();

        assert!(x.contains("<vcpu id=\"0\" cpu=\"0\" />"));
        assert!(x.contains("priority=\"50\" budget=\"500\" period=\"1000\""));
    }

    #[test]
    fn vcpu_on_a_missing_core_is_refused() {
        let mut v = vm("a", 1);
        v.placement = Some(Placement {
            pcpus: Some(vec![1]),
            ..Placement::default()
        });
        let s = system(vec![v]);

        assert!(matches!(
            system_file(&s, &layout()),
            Err(MicrokitError::NoSuchCore {
                pcpu: 1,
                cores: 1,
                ..
            })
        ));
    }

    fn layout_cores(cores: u32) -> MicrokitLayout {
        MicrokitLayout { cores, ..layout() }
    }

    #[test]
    fn unplaced_vcpus_spread_over_the_kernels_cores() {
        let s = system(vec![vm("a", 6)]);

        let p = placement(&s, &layout_cores(4)).unwrap();

        assert_eq!(p[0].vcpu_cpus, vec![0, 1, 2, 3, 0, 1]);
    }

    #[test]
    fn unplaced_vcpus_spread_over_the_systems_pcpus_only() {
        let s = System::new("t".into(), Some(2), vec![vm("a", 3)]).unwrap();

        let p = placement(&s, &layout_cores(4)).unwrap();

        assert_eq!(p[0].vcpu_cpus, vec![0, 1, 0]);
    }

    #[test]
    fn vmm_runs_on_the_core_of_its_vcpu_0() {
        let mut b = vm("b", 2);
        b.placement = Some(Placement {
            pcpus: Some(vec![3, 1]),
            ..Placement::default()
        });

        let x = system_file(&system(vec![vm("a", 2), b]), &layout_cores(4)).unwrap();

        assert!(x.contains("<protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\">"));
        assert!(x.contains("<protection_domain name=\"b_vmm\" priority=\"101\" cpu=\"3\">"));
        assert_eq!(x.matches("<vcpu id=\"1\" cpu=\"1\" />").count(), 2);
        assert!(x.contains("<vcpu id=\"0\" cpu=\"3\" />"));
    }

    #[test]
    fn system_with_more_pcpus_than_the_kernel_is_refused() {
        let s = System::new("t".into(), Some(8), vec![vm("a", 1)]).unwrap();

        assert_eq!(
            placement(&s, &layout_cores(4)),
            Err(MicrokitError::SystemPcpus { pcpus: 8, cores: 4 })
        );
    }

    #[test]
    fn ram_beyond_the_vmm_window_is_refused() {
        let v = VmSpec::new(
            "a",
            Arch::Aarch64,
            HostPath::new("/k"),
            Memory::Size(8 << 30),
        );

        assert!(matches!(
            system_file(&system(vec![v]), &layout()),
            Err(MicrokitError::RamTooLarge { .. })
        ));
    }

    #[test]
    fn more_vcpus_than_the_gic_serves_are_refused() {
        let e = check(&system(vec![vm("big", 9)]), &layout_cores(16)).unwrap_err();

        assert_eq!(
            e.to_string(),
            "VM big: 9 vCPUs; the seL4 backend's GICv2 serves at most 8"
        );
        assert!(check(&system(vec![vm("ok", 8)]), &layout_cores(16)).is_ok());
    }

    #[test]
    fn x86_vm_is_refused() {
        let mut v = vm("a", 1);
        v.arch = Arch::X86_64;

        assert!(matches!(
            system_file(&system(vec![v]), &layout()),
            Err(MicrokitError::Arch { .. })
        ));
    }
}
