//! Microkit system-file generation: the seL4 side of a [`System`].
//!
//! Each VM becomes one VMM protection domain (`<vm>_vmm`, program image `<vm>-vmm.elf`)
//! with one child `<virtual_machine>`: the VM's RAM is a memory region mapped into the VM at
//! its guest-physical base (2 MiB pages) and into the VMM at [`MicrokitLayout::vmm_ram_vaddr`];
//! the GIC virtual CPU interface is mapped into the VM where the guest expects the GIC CPU
//! interface. Everything else the guest touches faults to its VMM. Placement becomes the
//! scheduling parameters (priority, budget, period) and `<vcpu cpu="N">`; a budgeted VM's
//! VMM gets the same budget and period ([`vmm_scheduling`]).
//!
//! A VM with `cache_colours` ([`coloured_ram`]): its RAM is many regions `<vm>_ram_<i>`
//! with fixed physical addresses, each a run of consecutive pages of its colours taken from
//! the board's colour pool ([`ColourLayout`]), mapped back to back from its guest RAM base
//! and at the same offsets from [`MicrokitLayout::vmm_ram_vaddr`] in its VMM.
//!
//! The console component ([`console_component`]): one `keel_console` PD (program
//! `keel-console.elf`) owns the debug console's output; each VMM gets one ring region
//! (`<vm>_console_ring`) mapped into that VMM and into the console PD only, and one channel
//! to the console (both ways: output and typed input). The console PD runs one priority
//! below the lowest VMM and owns the board's UART for input ([`ConsoleInput`]).
//!
//! The network component ([`switch_components`]): one switch PD per `[[network]]`
//! (`keel_switch_<net>`, program `keel-switch-<net>.elf`) runs that network's switch. Each
//! port (one interface of one VM) has two ring regions, `<vm>_net<i>_to_switch` and
//! `<vm>_net<i>_from_switch` ([`crate::plan::ring_window_len`] rounded up to 4 KiB), mapped
//! into that VM's VMM and that network's switch PD only, and one channel between them; the
//! switch's heap is a region of its own (`keel_switch_<net>_heap`, sized by
//! [`switch_heap_bytes`]), mapped into the switch only. No switch maps guest RAM. A switch
//! runs at the priority of the lowest VMM of its network, on the core of its first
//! member's VMM. An uplink (a host tap) has no seL4 form and is refused.
//!
//! Vsock pairs (`[vsock] allow`, [`vsock_links`]): each pair has two ring regions,
//! `keel_vsock_<pair>_0` (the first VM's packets to the second) and `keel_vsock_<pair>_1`
//! (the other way), [`crate::plan::ring_window_len`] of [`crate::plan::VSOCK_RING_SLOTS`]
//! rounded up to 4 KiB, both mapped read-write into the two VMMs only (at
//! [`VMM_VSOCK_VADDR`], never into a guest), and one channel between the two VMM PDs.
//! There is no host side: a `[vm.vsock] socket` is refused.
//!
//! Guest shared regions (`[[shared]]`): one memory region each (`keel_shared_<name>`,
//! [`guest_shared_region_name`]), mapped into the `<virtual_machine>` of every VM whose
//! `[[vm.shared]]` names it, at that mapping's `base`, `perms="rw"` or `"r"` (`access =
//! "ro"`), and into nothing else: no VMM, console or switch PD maps it
//! ([`SystemComponents::check`] holds this). A guest write to an `"r"` mapping is a
//! permission fault delivered to its VMM, which reports it and skips the instruction.
//!
//! Cores ([`placement`]): a VM with `placement.pcpus` gets exactly those; without it, vCPU
//! `i` goes on core `i mod n`, `n` being the system's `pcpus` if given, else the kernel's
//! cores. A VMM protection domain runs on the core of its VM's vCPU 0.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::colour::{ColourError, ColouredRun, coloured_runs};
use crate::layout::ram_layout;
use crate::model::{Access, Arch, MacAddr, System, VmSpec};
use crate::plan::NetworkPlan;

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
    /// Console input (routed by the console PD to the VM that has the focus), if the
    /// board has a serial port to give.
    pub console_input: Option<ConsoleInput>,
    /// Where the network component's rings, heaps and channels go.
    pub net: NetLayout,
    /// Where coloured VMs' RAM comes from (`None`: the board has no colour pool, and a
    /// VM with `cache_colours` is refused).
    pub colour: Option<ColourLayout>,
    /// The board's physical map, as far as passed-through devices and fixed RAM
    /// (`ram_phys_addr`) need it (`None`: unknown, and both are refused).
    pub board: Option<BoardMap>,
}

/// A board's physical resources as passthrough sees them (they come from the seL4 backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardMap {
    /// The board's name, for messages.
    pub name: String,
    /// Physical RAM, `[start, end)`.
    pub ram: (u64, u64),
    /// Parts of RAM that fixed RAM (`ram_phys_addr`) may not use: what the seL4 kernel and
    /// the Microkit tool place there.
    pub ram_reserved: Vec<BoardResource>,
    /// Devices a VM may own.
    pub devices: Vec<BoardResource>,
    /// Devices and interrupts the kernel or Keel itself use (never passed through).
    pub reserved: Vec<BoardResource>,
}

/// A physical range of a board and its interrupts (GIC INTIDs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardResource {
    /// What it is, for messages.
    pub what: String,
    /// Physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Its interrupts.
    pub irqs: Vec<u32>,
}

impl BoardResource {
    fn overlaps(&self, base: u64, size: u64) -> bool {
        base < self.base.saturating_add(self.size) && self.base < base.saturating_add(size)
    }

    fn contains(&self, base: u64, size: u64) -> bool {
        base >= self.base && base.saturating_add(size) <= self.base.saturating_add(self.size)
    }
}

/// The channel id, in a VMM, of the `k`-th passed-through interrupt of its VM (counting
/// every device's `irqs` in order): from the top of the channel ids down, so that they
/// never meet the fixed low ids (admin, console input, console ring) and the network ids
/// counted up from [`NetLayout::vmm_first_channel`] ([`check`] keeps the two apart).
pub const fn passthrough_channel(k: u32) -> u32 {
    MAX_CHANNELS - 1 - k
}

/// Name of the memory region of mmio range `j` of passed-through device `dev` of `vm`
/// (names hold no `_`, so it cannot meet another region's name).
pub fn passthrough_region_name(vm: &VmSpec, dev: &str, j: usize) -> String {
    format!("{}_pt_{dev}_{j}", vm.name)
}

/// The physical memory coloured RAM is taken from, and how much of it one system may
/// have (they come from the seL4 backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColourLayout {
    /// Lowest physical address coloured RAM may use.
    pub pool_base: u64,
    /// One past the highest: each coloured VM takes the highest pages of its colours
    /// below it.
    pub pool_end: u64,
    /// Most 4 KiB pages of coloured RAM in one system (each costs the capDL initialiser
    /// three CSpace slots: the frame, its map into the VMM, its map into the VM).
    pub max_pages: u64,
}

/// Where the network component's regions go and which channel ids it takes (they come
/// from the seL4 backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLayout {
    /// Where a VMM maps the rings of its interfaces: for each interface in order, its
    /// to-switch region then its from-switch region, back to back.
    pub vmm_rings_vaddr: u64,
    /// Where a switch PD maps the rings of its ports, in port order, the same way.
    pub switch_rings_vaddr: u64,
    /// Where a switch PD maps its heap region.
    pub switch_heap_vaddr: u64,
    /// The channel id, in a VMM, of its interface `i`: this + `i` (the switch PD's id for
    /// port `p` is `p`).
    pub vmm_first_channel: u32,
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

/// The board's serial port given to the console PD for console input: its registers are
/// mapped into the console PD and its receive interrupt arrives there on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleInput {
    /// Physical address of the UART's registers (one 4 KiB page).
    pub uart_paddr: u64,
    /// Where the console PD maps them.
    pub uart_vaddr: u64,
    /// The UART's interrupt (GIC INTID).
    pub irq: u32,
    /// The Microkit channel the interrupt arrives on (in the console PD).
    pub channel: u32,
}

/// Why a system has no Microkit form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MicrokitError {
    /// The planned components break an isolation rule (a planner bug).
    #[error("component plan: {0}")]
    Components(ComponentError),
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
    /// A vCPU placed on a set of several CPUs: Microkit fixes each vCPU's core at build time.
    #[error(
        "VM {vm}: vCPU {vcpu} is placed on the CPU set {set}, but Microkit fixes each vCPU's core at build time: give one CPU"
    )]
    CpuSet {
        /// VM name.
        vm: String,
        /// vCPU index.
        vcpu: u32,
        /// The set as written.
        set: String,
    },
    /// A control VM whose RAM or shared region covers its control page or doorbell.
    #[error(
        "VM {vm}: its control page and doorbell ({page:#x}..{end:#x}) overlap its {what}; the seL4 backend maps them there",
        end = page + 0x2000
    )]
    ControlPageOverlap {
        /// The VM.
        vm: String,
        /// [`CONTROL_PAGE_GPA`].
        page: u64,
        /// `RAM` or `shared region <name>`.
        what: String,
    },
    /// More VMs than the console PD has channels for.
    #[error("system: {vms} VMs; the seL4 backend supports at most {max}")]
    TooManyVms {
        /// VMs in the system.
        vms: usize,
        /// The limit.
        max: usize,
    },
    /// A VMM needs more channels than it has: its passed-through interrupts, network
    /// interfaces, forwarding links (served disks and the links it serves) and vsock peers
    /// each take one.
    #[error(
        "VM {vm}: {irqs} passed-through interrupts, {nics} network interfaces, {links} block-forwarding links and {peers} vsock peers; the seL4 backend gives a VMM at most {max} of them together"
    )]
    TooManyChannels {
        /// VM name.
        vm: String,
        /// Passed-through interrupts.
        irqs: usize,
        /// Network interfaces.
        nics: usize,
        /// Forwarding links (as client and as storage VM).
        links: usize,
        /// Vsock peers (`[vsock] allow` pairs naming the VM).
        peers: usize,
        /// The limit.
        max: usize,
    },
    /// A VM's vsock device with a host socket: there is no host side on seL4.
    #[error(
        "VM {vm}: vsock socket {socket:?}: the seL4 backend has no host to connect it to (vsock on seL4 is guest to guest only: remove `socket`, keep `[vsock] allow`)"
    )]
    VsockSocket {
        /// VM name.
        vm: String,
        /// The socket path the description gives.
        socket: String,
    },
    /// A network bridged to a host tap: there is no host network on seL4.
    #[error(
        "network {network}: an uplink (tap) is Linux only; the seL4 backend has no host network to bridge into"
    )]
    Uplink {
        /// The network.
        network: String,
    },
    /// More interfaces in one VM than its VMM has channels for.
    #[error("VM {vm}: {nics} network interfaces; the seL4 backend gives a VMM at most {max}")]
    TooManyNics {
        /// VM name.
        vm: String,
        /// Interfaces declared.
        nics: usize,
        /// The limit.
        max: usize,
    },
    /// The system cannot be planned.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// A VM has cache colours but the board layout has no colour pool.
    #[error(
        "VM {vm}: cache_colours are given, but this board has no physical pool to colour RAM from"
    )]
    NoColourPool {
        /// VM name.
        vm: String,
    },
    /// A VM's cache colours do not fit the system's llc (a validated system never has this).
    #[error("VM {vm}: cache_colours do not fit the llc of the system")]
    ColourSet {
        /// VM name.
        vm: String,
    },
    /// A coloured VM's RAM spans more physical memory than the colour pool has.
    #[error(
        "VM {vm}: {ram:#x} bytes of RAM in {chosen} of {colours} cache colours span {span:#x} bytes of physical memory; the colour pool {base:#x}..{end:#x} has {have:#x} (give the VM more colours or less RAM)"
    )]
    ColourPool {
        /// VM name.
        vm: String,
        /// Its RAM.
        ram: u64,
        /// Colours it has.
        chosen: usize,
        /// Colours of the llc.
        colours: u64,
        /// Physical span its pages need (rounded up to whole colour periods).
        span: u64,
        /// Pool start.
        base: u64,
        /// Pool end.
        end: u64,
        /// Pool size.
        have: u64,
    },
    /// More coloured RAM than the capDL initialiser can map.
    #[error(
        "system: {pages} pages (4 KiB) of coloured RAM; the seL4 image's initialiser can map at most {max} ({max_mib} MiB): each page takes three of its CSpace slots"
    )]
    TooManyColouredPages {
        /// Pages of coloured RAM of all VMs.
        pages: u64,
        /// The limit.
        max: u64,
        /// The limit in MiB.
        max_mib: u64,
    },
    /// Coloured RAM cut into more memory regions than the Microkit tool handles in
    /// reasonable time.
    #[error(
        "system: coloured RAM takes {regions} memory regions; at most {max} (the Microkit tool's time grows with their square: about a minute for 16384). Give VMs runs of consecutive colours (one region per run and colour period) or less RAM"
    )]
    TooManyColouredRegions {
        /// Regions of all coloured VMs.
        regions: usize,
        /// The limit ([`MAX_COLOURED_REGIONS`]).
        max: usize,
    },
    /// Passthrough or fixed RAM on a board whose map Keel does not know.
    #[error(
        "VM {vm}: {what} needs the board's physical map, which Keel does not have for this board"
    )]
    NoBoardMap {
        /// VM name.
        vm: String,
        /// `passthrough` or `ram_phys_addr`.
        what: &'static str,
    },
    /// A passed-through range or interrupt the board does not have.
    #[error("VM {vm}: passthrough {name:?}: {what}: the board {board} has no such device{hint}")]
    NotOnBoard {
        /// VM name.
        vm: String,
        /// The device.
        name: String,
        /// `mmio 0x...+0x...` or `irq N`.
        what: String,
        /// The board.
        board: String,
        /// What it has instead (`; it has: ...`).
        hint: String,
    },
    /// A passed-through range or interrupt the kernel or Keel itself uses.
    #[error("VM {vm}: passthrough {name:?}: {what} is {owner}; it cannot be passed through")]
    ReservedResource {
        /// VM name.
        vm: String,
        /// The device.
        name: String,
        /// `mmio 0x...+0x...` or `irq N`.
        what: String,
        /// Who has it (`the console UART, Keel's console input`).
        owner: String,
    },
    /// Fixed RAM (`ram_phys_addr`) the board cannot give.
    #[error("VM {vm}: ram_phys_addr: physical RAM {base:#x}..{end:#x} {why}")]
    RamPhys {
        /// VM name.
        vm: String,
        /// Start.
        base: u64,
        /// End.
        end: u64,
        /// Why not.
        why: String,
    },
    /// More passed-through interrupts and network interfaces than the VMM has channels.
    #[error(
        "VM {vm}: {irqs} passed-through interrupts and {nics} network interfaces; the seL4 backend gives a VMM at most {max} of the two together"
    )]
    TooManyIrqs {
        /// VM name.
        vm: String,
        /// Passed-through interrupts.
        irqs: usize,
        /// Network interfaces.
        nics: usize,
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
                let mut cpus = Vec::with_capacity(list.len());
                for (vcpu, set) in list.iter().enumerate() {
                    let Some(pcpu) = set.single() else {
                        return Err(MicrokitError::CpuSet {
                            vm: vm.name.clone(),
                            vcpu: vcpu as u32,
                            set: set.to_string(),
                        });
                    };
                    if pcpu >= cores {
                        return Err(MicrokitError::NoSuchCore {
                            vm: vm.name.clone(),
                            vcpu: vcpu as u32,
                            pcpu,
                            cores,
                        });
                    }
                    cpus.push(pcpu);
                }
                cpus
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
/// (ids 0..=59), the admin PD the next one (60); 61 is the console UART's interrupt
/// ([`CONSOLE_UART_CHANNEL`]).
pub const MAX_VMS: usize = 60;

/// The channel id, in the console PD, of the console UART's receive interrupt.
pub const CONSOLE_UART_CHANNEL: u32 = 61;

/// Name of the console protection domain.
pub const CONSOLE_PD_NAME: &str = "keel_console";

/// File name of the console PD's ELF (found on the Microkit tool's search path).
pub const CONSOLE_ELF_NAME: &str = "keel-console.elf";

/// Name of the admin protection domain: the Microkit parent of every VMM PD, which
/// receives their faults and restarts them (keel-sel4's admin PD).
pub const ADMIN_PD_NAME: &str = "keel_admin";

/// Program image of the admin PD.
pub const ADMIN_ELF_NAME: &str = "keel-admin.elf";

/// The admin PD's console ring's name in the console PD (the prefix of its lines in a
/// system of several VMs: `admin| `).
pub const ADMIN_CONSOLE_NAME: &str = "admin";

/// Guest-physical address of a control VM's control page (`keel_core::control`, one 4 KiB
/// page shared with the admin PD) in the VM.
pub const CONTROL_PAGE_GPA: u64 = 0x7100_0000;

/// Guest-physical address of a control VM's doorbell: a write there (to nothing mapped) is
/// a VM exit its VMM turns into a notification of the admin PD.
pub const CONTROL_DOORBELL_GPA: u64 = CONTROL_PAGE_GPA + 0x1000;

/// Where the admin PD maps the control page of the `k`-th control VM: here + `k` × 4 KiB.
pub const ADMIN_CONTROL_VADDR: u64 = 0x5_0000_0000;

/// The channel id, in each VMM PD, of its channel to the admin PD.
pub const VMM_ADMIN_CHANNEL: u32 = 0;

/// The channel id, in the admin PD, of its console ring's channel to the console PD (the
/// VMMs' channels take ids 0..MAX_VMS).
pub const ADMIN_CONSOLE_CHANNEL: u32 = 61;

/// The Microkit memory region of VM `vm`'s control page.
pub fn control_region_name(vm: &VmSpec) -> String {
    format!("{}_control", vm.name)
}

/// Stack of every VMM PD (Microkit `stack_size`), bytes.
pub const VMM_STACK_SIZE: u64 = 0x10000;

/// The admin PD's child id of the VMM of VM `index` (Microkit `<protection_domain id=>`
/// nested in the admin's): the VM's index.
pub const fn admin_child_id(index: usize) -> u32 {
    index as u32
}

/// The budget and period of a VMM protection domain's own scheduling context: those of
/// its VM when the VM is budgeted (budget < period), else `None` (Microkit's default, a
/// full core). The time a VMM spends on its VM's faults is not charged to the VM's
/// context, so without this a budgeted guest that traps often would use its core beyond
/// its budget through its VMM, one priority above the VM; with it, VM and VMM together
/// use at most twice the budget per period.
pub fn vmm_scheduling(c: &ComponentPlan) -> Option<(u64, u64)> {
    match (&c.kind, &c.vm) {
        (ComponentKind::Vmm { .. }, Some(vm)) if vm.budget_us < vm.period_us => {
            Some((vm.budget_us, vm.period_us))
        }
        _ => None,
    }
}

/// Priority of the VMM protection domain of `vm`: one above its VM, so that it answers
/// faults before the guest runs again.
pub fn vmm_priority(vm: &VmSpec) -> u32 {
    let p = vm.placement.clone().unwrap_or_default();
    u32::from(p.priority).saturating_add(1).min(254)
}

/// Priority of the admin PD: one above the highest VMM (at most 254).
pub fn admin_priority(system: &System) -> u32 {
    system
        .vms()
        .iter()
        .map(vmm_priority)
        .max()
        .unwrap_or(1)
        .saturating_add(1)
        .min(254)
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
    /// One ring per VM, in system order, then the admin PD's ring
    /// ([`ADMIN_CONSOLE_NAME`]).
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
        .chain(core::iter::once({
            // The admin PD's ring comes last (after every VM's): its own log lines.
            let i = system.vms().len();
            ConsoleRing {
                vm: ADMIN_CONSOLE_NAME.into(),
                vmm_pd: ADMIN_PD_NAME.into(),
                region: "keel_admin_console_ring".into(),
                size: c.ring_size,
                vmm_vaddr: c.vmm_ring_vaddr,
                console_vaddr: c.console_rings_vaddr + i as u64 * c.ring_size,
                vmm_channel: ADMIN_CONSOLE_CHANNEL,
                console_channel: i as u32,
            }
        }))
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

/// Channel ids a protection domain has (Microkit: 0..=61).
pub const MAX_CHANNELS: u32 = 62;

// A switch PD's channel for port `p` is `p`; a VM attaches once per network, so a network
// has at most MAX_VMS ports.
const _: () = assert!(MAX_VMS <= MAX_CHANNELS as usize);

/// The longest frame a port ring carries (`keel_net::ring::MAX_FRAME`: a 1500-byte
/// payload and the Ethernet header).
pub const MAX_FRAME: u64 = 1514;

const FOUR_KIB: u64 = 0x1000;

/// Bytes of the heap region of the switch PD of `net`: what its switch allocates
/// (`keel_net::switch::Switch::footprint`: an output queue of `queue_depth` frames of
/// [`MAX_FRAME`] + 2 bytes per port, the MAC table, the allow matrix, counters), doubled
/// for the PD allocator's power-of-two size classes, plus 1 MiB for the configuration and
/// the port service; a multiple of 4 KiB. keel-sel4's tests check it against
/// `Switch::footprint`.
pub fn switch_heap_bytes(net: &NetworkPlan) -> u64 {
    let ports = net.ports.len().max(1) as u64;
    let queues = ports * (u64::from(net.queue_depth) * (MAX_FRAME + 2) + FOUR_KIB);
    let table = u64::from(net.mac_table) * 64;
    let allow = ports * ports.div_ceil(64) * 8;
    (2 * (queues + table + allow) + (1 << 20)).next_multiple_of(FOUR_KIB)
}

/// Bytes of one ring region of `net`: its ring window rounded up to 4 KiB.
pub fn ring_region_bytes(net: &NetworkPlan) -> u64 {
    net.ring_bytes().next_multiple_of(FOUR_KIB)
}

/// Name of the switch protection domain of network `net`.
pub fn switch_pd_name(net: &str) -> String {
    format!("keel_switch_{net}")
}

/// File name of the switch ELF of network `net` (found on the Microkit tool's search path).
pub fn switch_elf_name(net: &str) -> String {
    format!("keel-switch-{net}.elf")
}

/// One ring region of a port: mapped into the port's VMM and its network's switch only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRegion {
    /// Memory region name.
    pub region: String,
    /// Region size (a multiple of 4 KiB).
    pub size: u64,
    /// Bytes of it the ring uses ([`crate::plan::ring_window_len`]).
    pub ring_len: u64,
    /// Where the VMM maps it (read-write).
    pub vmm_vaddr: u64,
    /// Where the switch PD maps it (read-write).
    pub switch_vaddr: u64,
}

/// One port of a switch PD: an interface of a VM, its two rings and its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPort {
    /// Port index on the switch (index into [`NetworkPlan::ports`]).
    pub port: u16,
    /// The VM.
    pub vm: String,
    /// Index of the VM in the system.
    pub vm_index: usize,
    /// The interface (index into the VM's `nics`).
    pub nic: usize,
    /// The VM's VMM PD.
    pub vmm_pd: String,
    /// The MAC address the port may send from.
    pub mac: MacAddr,
    /// Frames the VMM sends to the switch.
    pub to_switch: RingRegion,
    /// Frames the switch sends to the VMM.
    pub from_switch: RingRegion,
    /// Channel id at the VMM's end.
    pub vmm_channel: u32,
    /// Channel id at the switch's end (the port index).
    pub switch_channel: u32,
}

/// The switch PD of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchComponent {
    /// The network's plan (ports, allow pairs, sizes).
    pub plan: NetworkPlan,
    /// PD name ([`switch_pd_name`]).
    pub pd: String,
    /// Program image ([`switch_elf_name`]).
    pub elf: String,
    /// The priority of the lowest VMM of the network: a VMM's notification does not
    /// preempt it (the switch takes a batch once the VMM waits again), and the switch runs
    /// ahead of the guests, never ahead of a VMM answering a fault.
    pub priority: u32,
    /// The core of its first port's VMM.
    pub cpu: u32,
    /// Heap region name (`keel_switch_<net>_heap`).
    pub heap_region: String,
    /// Heap size ([`switch_heap_bytes`]).
    pub heap_size: u64,
    /// Where the switch maps its heap.
    pub heap_vaddr: u64,
    /// The ports, in port order.
    pub ports: Vec<SwitchPort>,
}

/// Where a client VMM maps the forwarding regions of its served disks (24 GiB): disk
/// order, each at the next 4 KiB boundary after the previous one.
pub const VMM_FORWARD_VADDR: u64 = 0x6_0000_0000;

/// Name of the Microkit memory region of forwarding link `link` (no description names a
/// region `keel_fwd_*`: guest shared regions are `keel_shared_*`, VM regions `<vm>_*`
/// with fixed suffixes).
pub fn forward_region_name(link: usize) -> String {
    format!("keel_fwd_{link}")
}

/// Channels a VMM gives its forwarding links: one per served disk, one per link it serves.
fn forward_channel_count(vm: &crate::plan::VmPlan) -> usize {
    vm.disks.iter().filter(|d| d.served.is_some()).count() + vm.serves.len()
}

/// The channel id, in the VMM of `vm`, of its `j`-th forwarding channel: after its
/// network interfaces' ids, its served disks (in disk order) first, then the links it
/// serves (in its plan's `serves` order, the doorbell's byte order). [`check`] keeps them
/// below the passed-through interrupts' ids ([`passthrough_channel`]).
fn forward_channel(layout: &MicrokitLayout, vm: &crate::plan::VmPlan, j: usize) -> u32 {
    layout.net.vmm_first_channel + (vm.nics.len() + j) as u32
}

/// One block-forwarding link on seL4: a memory region mapped into the client's VMM PD
/// (its rings) and into the storage VM at the plan's guest-physical address, and one
/// channel between the two VMM PDs (the bell, both ways).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardLink {
    /// The link (index into the plan's links).
    pub link: usize,
    /// Memory region name ([`forward_region_name`]).
    pub region: String,
    /// Region size: the plan's `region_len` rounded up to 4 KiB.
    pub size: u64,
    /// Bytes of it the rings use (the plan's `region_len`).
    pub region_len: u64,
    /// Index of the client VM in the system.
    pub client: usize,
    /// The client's disk.
    pub client_disk: usize,
    /// Where the client's VMM maps the region (read-write).
    pub client_vaddr: u64,
    /// Channel id at the client VMM's end.
    pub client_channel: u32,
    /// Index of the storage VM in the system.
    pub server: usize,
    /// Index of this link among the storage VM's `serves` (its doorbell's byte).
    pub serve: usize,
    /// Guest-physical address of the region in the storage VM (the plan's `gpa`).
    pub server_gpa: u64,
    /// Channel id at the storage VMM's end.
    pub server_channel: u32,
}

/// Where a VMM maps the rings of its vsock peers (28 GiB): for each peer in its plan's
/// `vsock.peers` order, its ring to the peer, then its ring from the peer, back to back.
pub const VMM_VSOCK_VADDR: u64 = 0x7_0000_0000;

/// Name of ring `ring` of `[vsock] allow` pair `pair`: ring 0 carries the pair's first VM's
/// packets to the second, ring 1 the other way (no description names a region
/// `keel_vsock_*`, see [`forward_region_name`]).
pub fn vsock_region_name(pair: usize, ring: usize) -> String {
    format!("keel_vsock_{pair}_{ring}")
}

/// Bytes of one vsock ring region: [`crate::plan::ring_window_len`] of
/// [`crate::plan::VSOCK_RING_SLOTS`] (as on Linux) rounded up to 4 KiB.
pub fn vsock_region_bytes() -> u64 {
    crate::plan::ring_window_len(crate::plan::VSOCK_RING_SLOTS).next_multiple_of(FOUR_KIB)
}

/// Channels a VMM gives its vsock peers: one per peer.
fn vsock_channel_count(vm: &crate::plan::VmPlan) -> usize {
    vm.vsock.as_ref().map_or(0, |v| v.peers.len())
}

/// The channel id, in the VMM of `vm`, of its vsock peer `k` (its plan's `vsock.peers`
/// order): after its network interfaces' and forwarding links' ids. [`check`] keeps them
/// below the passed-through interrupts' ids ([`passthrough_channel`]).
fn vsock_channel(layout: &MicrokitLayout, vm: &crate::plan::VmPlan, k: usize) -> u32 {
    layout.net.vmm_first_channel + (vm.nics.len() + forward_channel_count(vm) + k) as u32
}

/// One end of a vsock pair: where its VMM maps the two rings and its channel id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockEnd {
    /// Index of the VM in the system.
    pub vm: usize,
    /// Index of the other VM among this VM's vsock peers (its plan's `vsock.peers`).
    pub peer: usize,
    /// Where this VMM maps the ring it produces (its packets to the other VM).
    pub tx_vaddr: u64,
    /// Where this VMM maps the ring it consumes (the other VM's packets).
    pub rx_vaddr: u64,
    /// Channel id at this VMM's end.
    pub channel: u32,
}

/// One `[vsock] allow` pair on seL4: two ring regions, both mapped read-write into the two
/// VMM PDs only (never into a guest), and one channel between the two VMM PDs (each
/// side's doorbell for the ring it produces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockLink {
    /// The pair (index into `[vsock] allow`).
    pub pair: usize,
    /// The ring regions ([`vsock_region_name`]): `[first to second, second to first]`.
    pub rings: [String; 2],
    /// Each region's size ([`vsock_region_bytes`]).
    pub size: u64,
    /// Bytes of it the ring uses ([`crate::plan::ring_window_len`]).
    pub ring_len: u64,
    /// Slots of each ring ([`crate::plan::VSOCK_RING_SLOTS`]).
    pub slots: u32,
    /// The pair's first VM's end, then the second's.
    pub ends: [VsockEnd; 2],
}

/// The vsock pairs of `system`, in `[vsock] allow` order.
pub fn vsock_links(
    system: &System,
    layout: &MicrokitLayout,
) -> Result<Vec<VsockLink>, MicrokitError> {
    let plan = crate::plan::plan(system)?;
    let size = vsock_region_bytes();
    let mut ends: BTreeMap<usize, [Option<VsockEnd>; 2]> = BTreeMap::new();
    for (vm, p) in plan.vms.iter().enumerate() {
        let peers = p.vsock.iter().flat_map(|v| v.peers.iter());
        for (k, peer) in peers.enumerate() {
            let base = VMM_VSOCK_VADDR + k as u64 * 2 * size;
            let end = VsockEnd {
                vm,
                peer: k,
                tx_vaddr: base,
                rx_vaddr: base + size,
                channel: vsock_channel(layout, p, k),
            };
            ends.entry(peer.pair).or_default()[usize::from(!peer.first)] = Some(end);
        }
    }
    Ok(ends
        .into_iter()
        .filter_map(|(pair, [a, b])| {
            Some(VsockLink {
                pair,
                rings: [vsock_region_name(pair, 0), vsock_region_name(pair, 1)],
                size,
                ring_len: crate::plan::ring_window_len(crate::plan::VSOCK_RING_SLOTS),
                slots: crate::plan::VSOCK_RING_SLOTS,
                ends: [a?, b?],
            })
        })
        .collect())
}

/// The forwarding links of `system`, in link order.
pub fn forward_links(
    system: &System,
    layout: &MicrokitLayout,
) -> Result<Vec<ForwardLink>, MicrokitError> {
    let plan = crate::plan::plan(system)?;
    let mut out = Vec::new();
    for (client, cp) in plan.vms.iter().enumerate() {
        let mut vaddr = VMM_FORWARD_VADDR;
        let served = cp
            .disks
            .iter()
            .enumerate()
            .filter_map(|(d, disk)| Some((d, disk.served.as_ref()?)));
        for (j, (client_disk, s)) in served.enumerate() {
            let Some(server) = plan.vms.iter().position(|v| v.name == s.server) else {
                continue;
            };
            let sp = &plan.vms[server];
            let Some(serve) = sp.serves.iter().position(|x| x.link == s.link) else {
                continue;
            };
            let size = s.region_len.next_multiple_of(FOUR_KIB);
            out.push(ForwardLink {
                link: s.link,
                region: forward_region_name(s.link),
                size,
                region_len: s.region_len,
                client,
                client_disk,
                client_vaddr: vaddr,
                client_channel: forward_channel(layout, cp, j),
                server,
                serve,
                server_gpa: sp.serves[serve].gpa,
                server_channel: forward_channel(
                    layout,
                    sp,
                    sp.disks.iter().filter(|d| d.served.is_some()).count() + serve,
                ),
            });
            vaddr += size;
        }
    }
    out.sort_by_key(|l| l.link);
    Ok(out)
}

/// The switch PDs of `system`, one per network with at least one port, in file order.
pub fn switch_components(
    system: &System,
    layout: &MicrokitLayout,
    places: &[VmPlacement],
) -> Result<Vec<SwitchComponent>, MicrokitError> {
    let plan = crate::plan::plan(system)?;
    let net_layout = &layout.net;
    // Per VM: where its VMM maps each interface's rings.
    let mut vmm_vaddrs: Vec<Vec<u64>> = Vec::new();
    for vm in &plan.vms {
        let mut off = 0;
        let mut v = Vec::new();
        for nic in &vm.nics {
            let size = plan.networks.get(nic.network).map_or(0, ring_region_bytes);
            v.push(net_layout.vmm_rings_vaddr + off);
            off += 2 * size;
        }
        vmm_vaddrs.push(v);
    }
    let mut out = Vec::new();
    for net in &plan.networks {
        let size = ring_region_bytes(net);
        let mut ports = Vec::new();
        for (p, port) in net.ports.iter().enumerate() {
            let crate::plan::PortOwner::Vm { vm, nic } = &port.owner else {
                return Err(MicrokitError::Uplink {
                    network: net.name.clone(),
                });
            };
            let Some(vm_index) = plan.vms.iter().position(|v| &v.name == vm) else {
                continue;
            };
            let vmm_base = vmm_vaddrs[vm_index].get(*nic).copied().unwrap_or(0);
            let switch_base = net_layout.switch_rings_vaddr + p as u64 * 2 * size;
            let ring = |dir: &str, i: u64| RingRegion {
                region: format!("{vm}_net{nic}_{dir}"),
                size,
                ring_len: net.ring_bytes(),
                vmm_vaddr: vmm_base + i * size,
                switch_vaddr: switch_base + i * size,
            };
            ports.push(SwitchPort {
                port: p as u16,
                vm: vm.clone(),
                vm_index,
                nic: *nic,
                vmm_pd: vmm_pd_name(&system.vms()[vm_index]),
                mac: port.mac.unwrap_or(MacAddr([0; 6])),
                to_switch: ring("to_switch", 0),
                from_switch: ring("from_switch", 1),
                vmm_channel: net_layout.vmm_first_channel + *nic as u32,
                switch_channel: p as u32,
            });
        }
        let Some(first) = ports.first() else { continue };
        let priority = ports
            .iter()
            .map(|p| vmm_priority(&system.vms()[p.vm_index]))
            .min()
            .unwrap_or(1);
        out.push(SwitchComponent {
            pd: switch_pd_name(&net.name),
            elf: switch_elf_name(&net.name),
            priority,
            cpu: places.get(first.vm_index).map_or(0, |p| p.vmm_cpu),
            heap_region: format!("keel_switch_{}_heap", net.name),
            heap_size: switch_heap_bytes(net),
            heap_vaddr: net_layout.switch_heap_vaddr,
            ports,
            plan: net.clone(),
        });
    }
    Ok(out)
}

/// Name of the VMM protection domain of `vm`.
pub fn vmm_pd_name(vm: &VmSpec) -> String {
    format!("{}_vmm", vm.name)
}

/// File name of the VMM ELF of `vm` (found on the Microkit tool's search path).
pub fn vmm_elf_name(vm: &VmSpec) -> String {
    format!("{}-vmm.elf", vm.name)
}

/// The coloured RAM of each VM of `system`, in order (`None`: an uncoloured VM): the
/// physical runs ([`crate::colour::coloured_runs`]) of the highest pages of its colours
/// below the colour pool's end, laid back to back from its guest RAM base. VMs with
/// disjoint colours share the pool's span without sharing a page.
pub fn coloured_ram(
    system: &System,
    layout: &MicrokitLayout,
) -> Result<Vec<Option<Vec<ColouredRun>>>, MicrokitError> {
    let mut out = Vec::new();
    let mut pages = 0u64;
    for vm in system.vms() {
        let Some(set) = &vm.cache_colours else {
            out.push(None);
            continue;
        };
        let Some(pool) = &layout.colour else {
            return Err(MicrokitError::NoColourPool {
                vm: vm.name.clone(),
            });
        };
        let set_err = || MicrokitError::ColourSet {
            vm: vm.name.clone(),
        };
        let colours = system.llc().ok_or_else(set_err)?.colours();
        let ram = vm.memory.total();
        let runs = coloured_runs(set, colours, ram, pool.pool_end, pool.pool_base).map_err(
            |e| match e {
                ColourError::Input => set_err(),
                ColourError::Pool { .. } => {
                    let period = colours * crate::colour::PAGE;
                    let span = (ram / crate::colour::PAGE)
                        .div_ceil(set.len() as u64)
                        .saturating_mul(period);
                    MicrokitError::ColourPool {
                        vm: vm.name.clone(),
                        ram,
                        chosen: set.len(),
                        colours,
                        span,
                        base: pool.pool_base,
                        end: pool.pool_end,
                        have: pool.pool_end.saturating_sub(pool.pool_base),
                    }
                }
            },
        )?;
        pages += ram / crate::colour::PAGE;
        if pages > pool.max_pages {
            return Err(MicrokitError::TooManyColouredPages {
                pages: system
                    .vms()
                    .iter()
                    .filter(|v| v.cache_colours.is_some())
                    .map(|v| v.memory.total() / crate::colour::PAGE)
                    .sum(),
                max: pool.max_pages,
                max_mib: (pool.max_pages * crate::colour::PAGE) >> 20,
            });
        }
        out.push(Some(runs));
    }
    let regions: usize = out.iter().flatten().map(Vec::len).sum();
    if regions > MAX_COLOURED_REGIONS {
        return Err(MicrokitError::TooManyColouredRegions {
            regions,
            max: MAX_COLOURED_REGIONS,
        });
    }
    Ok(out)
}

/// Most memory regions of coloured RAM in one system. The Microkit tool (2.x) compares
/// every region with every map and every fixed-address region with every other, so its
/// time grows with the square of the regions: measured here about 4 s for 4 096, 21 s for
/// 8 192, 64 s for 16 384 (docs/sel4.md, "Cache colouring").
pub const MAX_COLOURED_REGIONS: usize = 16_384;

/// Name of memory region `i` of the coloured RAM of `vm`.
pub fn coloured_region_name(vm: &VmSpec, i: usize) -> String {
    format!("{}_ram_{i}", vm.name)
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
        let control = CONTROL_PAGE_GPA..CONTROL_PAGE_GPA + 0x2000;
        let overlaps = |b: u64, len: u64| b < control.end && control.start < b.saturating_add(len);
        if !vm.control.is_empty() {
            let shared = vm.shared.iter().find(|m| {
                let len = system
                    .shared()
                    .iter()
                    .find(|g| g.name == m.region)
                    .map_or(0, |g| g.size);
                overlaps(m.base, len)
            });
            let what = if overlaps(base, size) {
                Some("RAM".to_string())
            } else {
                shared.map(|m| format!("shared region {}", m.region))
            };
            if let Some(what) = what {
                return Err(MicrokitError::ControlPageOverlap {
                    vm: vm.name.clone(),
                    page: CONTROL_PAGE_GPA,
                    what,
                });
            }
        }
        if vm.vcpus > layout.max_vcpus {
            return Err(MicrokitError::TooManyVcpus {
                vm: vm.name.clone(),
                vcpus: vm.vcpus,
                max: layout.max_vcpus,
            });
        }
    }
    let max_nics = (MAX_CHANNELS.saturating_sub(layout.net.vmm_first_channel)) as usize;
    for vm in system.vms() {
        if vm.nics.len() > max_nics {
            return Err(MicrokitError::TooManyNics {
                vm: vm.name.clone(),
                nics: vm.nics.len(),
                max: max_nics,
            });
        }
    }
    for vm in system.vms() {
        if let Some(socket) = vm.vsock.as_ref().and_then(|v| v.socket.as_ref()) {
            return Err(MicrokitError::VsockSocket {
                vm: vm.name.clone(),
                socket: socket.to_string(),
            });
        }
    }
    for net in system.networks() {
        if net.uplink.is_some() {
            return Err(MicrokitError::Uplink {
                network: net.name.clone(),
            });
        }
    }
    let coloured = coloured_ram(system, layout)?;
    check_passthrough(system, layout, max_nics, &coloured)?;
    let plan = crate::plan::plan(system)?;
    for (vm, p) in system.vms().iter().zip(&plan.vms) {
        let irqs: usize = vm.passthrough.iter().map(|d| d.irqs.len()).sum();
        let links = forward_channel_count(p);
        let peers = vsock_channel_count(p);
        if irqs + vm.nics.len() + links + peers > max_nics {
            return Err(MicrokitError::TooManyChannels {
                vm: vm.name.clone(),
                irqs,
                nics: vm.nics.len(),
                links,
                peers,
                max: max_nics,
            });
        }
    }
    placement(system, layout).map(|_| ())
}

/// The passed-through devices and fixed RAM of every VM against the board: each range
/// inside a device the board has, never on what the kernel or Keel uses (the GIC, the
/// console UART), each interrupt one of the board's and not Keel's; fixed RAM inside the
/// board's RAM, off what the kernel and the Microkit tool place there and off coloured
/// VMs' pages; the VMM's channels enough for the interrupts and interfaces together.
/// (Two VMs naming one resource were refused by validation, the VM's own device windows
/// by the plan.)
fn check_passthrough(
    system: &System,
    layout: &MicrokitLayout,
    max_nics: usize,
    coloured: &[Option<Vec<ColouredRun>>],
) -> Result<(), MicrokitError> {
    for vm in system.vms() {
        let what = match (vm.passthrough.is_empty(), vm.ram_phys_addr) {
            (true, None) => continue,
            (false, _) => "passthrough",
            (true, Some(_)) => "ram_phys_addr",
        };
        let Some(board) = &layout.board else {
            return Err(MicrokitError::NoBoardMap {
                vm: vm.name.clone(),
                what,
            });
        };
        let mut reserved = board.reserved.clone();
        if let Some(ci) = &layout.console_input {
            reserved.push(BoardResource {
                what: "the console UART (Keel's console input, in the first VM's VMM)".into(),
                base: ci.uart_paddr,
                size: 0x1000,
                irqs: vec![ci.irq],
            });
        }
        for dev in &vm.passthrough {
            let reserved_err = |what: String, owner: &str| MicrokitError::ReservedResource {
                vm: vm.name.clone(),
                name: dev.name.clone(),
                what,
                owner: owner.into(),
            };
            let absent = |what: String| MicrokitError::NotOnBoard {
                vm: vm.name.clone(),
                name: dev.name.clone(),
                what,
                board: board.name.clone(),
                hint: format!(
                    "; it has: {}",
                    board
                        .devices
                        .iter()
                        .map(|d| d.what.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            for r in &dev.mmio {
                let what = format!("mmio {:#x}+{:#x}", r.base, r.size);
                if let Some(o) = reserved.iter().find(|o| o.overlaps(r.base, r.size)) {
                    return Err(reserved_err(what, &o.what));
                }
                let (ram_start, ram_end) = board.ram;
                if r.base < ram_end && ram_start < r.base.saturating_add(r.size) {
                    return Err(reserved_err(what, "RAM"));
                }
                if !board.devices.iter().any(|d| d.contains(r.base, r.size)) {
                    return Err(absent(what));
                }
            }
            for &irq in &dev.irqs {
                let what = format!("irq {irq}");
                if let Some(o) = reserved.iter().find(|o| o.irqs.contains(&irq)) {
                    return Err(reserved_err(what, &o.what));
                }
                if !board.devices.iter().any(|d| d.irqs.contains(&irq)) {
                    return Err(absent(what));
                }
            }
        }
        let irqs: usize = vm.passthrough.iter().map(|d| d.irqs.len()).sum();
        if irqs + vm.nics.len() > max_nics {
            return Err(MicrokitError::TooManyIrqs {
                vm: vm.name.clone(),
                irqs,
                nics: vm.nics.len(),
                max: max_nics,
            });
        }
        if let Some(base) = vm.ram_phys_addr {
            let end = base.saturating_add(vm.memory.total());
            let refuse = |why: String| MicrokitError::RamPhys {
                vm: vm.name.clone(),
                base,
                end,
                why,
            };
            let (ram_start, ram_end) = board.ram;
            if base < ram_start || end > ram_end {
                return Err(refuse(format!(
                    "is not inside the board's RAM {ram_start:#x}..{ram_end:#x}"
                )));
            }
            if let Some(o) = board
                .ram_reserved
                .iter()
                .find(|o| o.overlaps(base, end - base))
            {
                return Err(refuse(format!(
                    "overlaps {} ({:#x}..{:#x})",
                    o.what,
                    o.base,
                    o.base.saturating_add(o.size)
                )));
            }
            for (other, runs) in system.vms().iter().zip(coloured) {
                let Some(runs) = runs else { continue };
                if runs
                    .iter()
                    .any(|r| r.paddr < end && base < r.paddr.saturating_add(r.size))
                {
                    return Err(refuse(format!(
                        "overlaps the coloured RAM of VM {}",
                        other.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A memory region of the system: RAM of a VM, a shared ring, a device's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionPlan {
    /// Region name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Page size, if not the default 4 KiB.
    pub page_size: Option<u64>,
    /// Physical address, for device registers.
    pub phys_addr: Option<u64>,
}

/// A mapping of a region into a component (or its VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPlan {
    /// The region.
    pub region: String,
    /// Virtual (or guest-physical, inside a VM) address.
    pub vaddr: u64,
    /// Microkit permissions (`r`, `rw`, `rwx`).
    pub perms: &'static str,
    /// Whether the mapping is cached (device registers are not).
    pub cached: bool,
}

/// A hardware interrupt owned by a component, delivered on one of its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqPlan {
    /// The interrupt (GIC INTID).
    pub irq: u32,
    /// The channel it arrives on.
    pub channel: u32,
}

/// The virtual machine a VMM component is the parent of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildVmPlan {
    /// The VM's name.
    pub name: String,
    /// Scheduling priority.
    pub priority: u8,
    /// Budget per period, microseconds.
    pub budget_us: u64,
    /// Period, microseconds.
    pub period_us: u64,
    /// Core of vCPU `i`.
    pub vcpu_cpus: Vec<u32>,
    /// What the VM sees (its RAM, the GIC virtual CPU interface).
    pub maps: Vec<MapPlan>,
}

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// The VMM of VM `vm` (index into the system's VMs).
    Vmm {
        /// The VM's index.
        vm: usize,
    },
    /// The console component.
    Console,
    /// The switch of network `network` (index into the system's networks).
    Switch {
        /// The network's index.
        network: usize,
    },
    /// The admin PD: parent of every VMM PD.
    Admin,
}

/// Where a protection domain sits in the Microkit tree: the child `id` of PD `parent`
/// (the parent receives its faults and may restart or stop it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOf {
    /// The parent component's name.
    pub parent: String,
    /// The child id in the parent (unique there, below 64).
    pub id: u32,
}

/// One protection domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPlan {
    /// PD name.
    pub name: String,
    /// What it is.
    pub kind: ComponentKind,
    /// Program image file.
    pub program: String,
    /// Scheduling priority.
    pub priority: u32,
    /// Core.
    pub cpu: u32,
    /// Regions it maps.
    pub maps: Vec<MapPlan>,
    /// Interrupts it owns.
    pub irqs: Vec<IrqPlan>,
    /// Its child VM, for a VMM.
    pub vm: Option<ChildVmPlan>,
    /// Its parent PD (a VMM's: the admin PD), `None` at the top level.
    pub parent: Option<ChildOf>,
}

/// A notification channel between two components: `(component name, channel id)` at each end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPlan {
    /// One end.
    pub a: (String, u32),
    /// The other end.
    pub b: (String, u32),
}

/// The seL4 form of a system: its components, the regions they share, the channels between
/// them and the interrupts they own. Built by [`component_plan`], checked by
/// [`SystemComponents::check`], rendered by [`SystemComponents::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemComponents {
    /// The system's name.
    pub system: String,
    /// Memory regions.
    pub regions: Vec<RegionPlan>,
    /// Protection domains.
    pub components: Vec<ComponentPlan>,
    /// Channels.
    pub channels: Vec<ChannelPlan>,
    /// Regions shared by exactly two components (the console and network rings).
    pub shared: Vec<SharedRegion>,
    /// Guest memory regions (`[[shared]]`): mapped into the named VMs only.
    pub guest_shared: Vec<GuestSharedRegion>,
}

/// A guest memory region shared between VMs (`[[shared]]`): the check requires that it is
/// mapped only into the child VMs of exactly these VMM components, once each, at the
/// given guest-physical address with the given rights, and by no protection domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSharedRegion {
    /// The Microkit memory region ([`guest_shared_region_name`]).
    pub region: String,
    /// Each user: the VMM component whose VM maps it, the guest-physical address and the
    /// Microkit permissions (`rw` or `r`).
    pub users: Vec<(String, u64, &'static str)>,
}

/// The Microkit memory region of guest shared region `name` (`keel_shared_<name>`: VM
/// names hold no `_`, so no `<vm>_...` region can take this name).
pub fn guest_shared_region_name(name: &str) -> String {
    format!("keel_shared_{name}")
}

/// A region two components share (a ring): the check requires that exactly these two map
/// it, once each, and nobody else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRegion {
    /// The region.
    pub region: String,
    /// Its two owners (component names).
    pub owners: [String; 2],
}

/// A component plan that breaks an isolation rule (a bug in the planner, caught before
/// any image is built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// A map names a region that is not declared.
    #[error("component {component}: maps undeclared region {region}")]
    UndeclaredRegion {
        /// The component.
        component: String,
        /// The region.
        region: String,
    },
    /// A region is mapped by more than one VMM (VMMs share nothing writable but the
    /// regions declared shared between exactly two of them: a vsock pair's rings).
    #[error("region {region} is mapped by two VMMs ({first} and {second})")]
    SharedBetweenVmms {
        /// The region.
        region: String,
        /// One VMM.
        first: String,
        /// The other.
        second: String,
    },
    /// Two components own one interrupt.
    #[error("interrupt {irq} is owned by {first} and {second}")]
    IrqOwners {
        /// The interrupt.
        irq: u32,
        /// One owner.
        first: String,
        /// The other.
        second: String,
    },
    /// A component uses one channel id twice (channels and interrupts share the ids).
    #[error("component {component}: channel id {id} is used twice")]
    ChannelId {
        /// The component.
        component: String,
        /// The id.
        id: u32,
    },
    /// A shared region is not mapped by exactly its two owners, once each.
    #[error(
        "shared region {region} must be mapped once by {first} and once by {second}; it is mapped by: {mapped_by}"
    )]
    SharedRegionMappers {
        /// The region.
        region: String,
        /// One owner.
        first: String,
        /// The other.
        second: String,
        /// Who maps it (comma-separated, `nobody` if none).
        mapped_by: String,
    },
    /// Two regions at overlapping fixed physical addresses.
    #[error("regions {first} and {second} overlap in physical memory (one resource, two owners)")]
    PhysicalOverlap {
        /// One region.
        first: String,
        /// The other.
        second: String,
    },
    /// A channel names a component that does not exist.
    #[error("a channel names unknown component {0}")]
    UnknownComponent(String),
    /// A component's parent does not exist, or is itself a child (the tree is two deep).
    #[error("component {component}: parent {parent} is not a top-level component")]
    Parent {
        /// The child.
        component: String,
        /// The parent it names.
        parent: String,
    },
    /// A parent has two children with one id, or an id of 64 or more.
    #[error("component {parent}: child id {id} is used twice or is not below 64")]
    ChildId {
        /// The parent.
        parent: String,
        /// The id.
        id: u32,
    },
    /// A guest shared region mapped other than the description says.
    #[error(
        "guest shared region {region} must be mapped only into the VMs of {expected}; it is mapped by: {mapped}"
    )]
    GuestSharedMappers {
        /// The region.
        region: String,
        /// The declared users (`a_vmm's VM at 0x50000000 rw, ...`).
        expected: String,
        /// The actual maps (`nobody` if none).
        mapped: String,
    },
}

impl SystemComponents {
    /// No two regions with a fixed physical address overlap (one physical resource, two
    /// owners: a passed-through device, fixed RAM, coloured RAM, the console UART, the GIC).
    fn check_physical(&self) -> Result<(), ComponentError> {
        let mut fixed: Vec<(u64, u64, &str)> = self
            .regions
            .iter()
            .filter_map(|r| Some((r.phys_addr?, r.size, r.name.as_str())))
            .collect();
        fixed.sort();
        for w in fixed.windows(2) {
            let [(a, a_size, first), (b, _, second)] = w else {
                continue;
            };
            if a.saturating_add(*a_size) > *b {
                return Err(ComponentError::PhysicalOverlap {
                    first: (*first).into(),
                    second: (*second).into(),
                });
            }
        }
        Ok(())
    }

    /// Check the isolation rules: every map names a declared region; no region is mapped by
    /// two VMMs unless it is a shared region of those two; every interrupt has one owner;
    /// channel and interrupt ids are unique per component; channels join existing
    /// components; every shared region (a ring) is mapped by exactly its two owners, once
    /// each.
    pub fn check(&self) -> Result<(), ComponentError> {
        self.check_parents()?;
        self.check_physical()?;
        self.check_shared()?;
        self.check_guest_shared()?;
        // Sets, not lists: a coloured VM has thousands of regions.
        let names: BTreeSet<&str> = self.regions.iter().map(|x| x.name.as_str()).collect();
        let declared = |r: &str| names.contains(r);
        let mut vmm_of_region: BTreeMap<&str, &str> = BTreeMap::new();
        let mut irq_owner: Vec<(u32, &str)> = Vec::new();
        for c in &self.components {
            let vm_maps = c.vm.iter().flat_map(|v| v.maps.iter());
            for m in c.maps.iter().chain(vm_maps) {
                if !declared(&m.region) {
                    return Err(ComponentError::UndeclaredRegion {
                        component: c.name.clone(),
                        region: m.region.clone(),
                    });
                }
            }
            if matches!(c.kind, ComponentKind::Vmm { .. }) {
                // A region declared shared (a vsock ring) may have two VMMs as its owners:
                // check_shared holds it to exactly those two.
                let declared_shared = |r: &str| self.shared.iter().any(|sh| sh.region == r);
                for m in c.maps.iter().filter(|m| !declared_shared(&m.region)) {
                    if let Some(first) = vmm_of_region.get(m.region.as_str()) {
                        return Err(ComponentError::SharedBetweenVmms {
                            region: m.region.clone(),
                            first: (*first).into(),
                            second: c.name.clone(),
                        });
                    }
                    vmm_of_region.insert(&m.region, &c.name);
                }
            }
            for i in &c.irqs {
                if let Some((_, first)) = irq_owner.iter().find(|(q, _)| *q == i.irq) {
                    return Err(ComponentError::IrqOwners {
                        irq: i.irq,
                        first: (*first).into(),
                        second: c.name.clone(),
                    });
                }
                irq_owner.push((i.irq, &c.name));
            }
        }
        let known = |n: &str| self.components.iter().any(|c| c.name == n);
        let mut ids: Vec<(&str, u32)> = Vec::new();
        for c in &self.components {
            for i in &c.irqs {
                ids.push((&c.name, i.channel));
            }
        }
        for ch in &self.channels {
            for (pd, id) in [&ch.a, &ch.b] {
                if !known(pd) {
                    return Err(ComponentError::UnknownComponent(pd.clone()));
                }
                ids.push((pd, *id));
            }
        }
        for (i, (pd, id)) in ids.iter().enumerate() {
            if ids[..i].contains(&(*pd, *id)) {
                return Err(ComponentError::ChannelId {
                    component: (*pd).into(),
                    id: *id,
                });
            }
        }
        Ok(())
    }

    /// Every guest shared region is mapped exactly as declared: into the child VM of each
    /// user once, at its address with its rights, and nowhere else (no PD, no other VM).
    fn check_guest_shared(&self) -> Result<(), ComponentError> {
        for g in &self.guest_shared {
            let mut mapped: Vec<(&str, u64, &str, bool)> = Vec::new();
            for c in &self.components {
                for m in c.maps.iter().filter(|m| m.region == g.region) {
                    mapped.push((&c.name, m.vaddr, m.perms, false));
                }
                let vm_maps = c.vm.iter().flat_map(|v| v.maps.iter());
                for m in vm_maps.filter(|m| m.region == g.region) {
                    mapped.push((&c.name, m.vaddr, m.perms, true));
                }
            }
            let mut expected: Vec<(&str, u64, &str, bool)> = g
                .users
                .iter()
                .map(|(c, vaddr, perms)| (c.as_str(), *vaddr, *perms, true))
                .collect();
            let mut sorted = mapped.clone();
            sorted.sort();
            expected.sort();
            if sorted != expected {
                let show = |list: &[(&str, u64, &str, bool)]| {
                    if list.is_empty() {
                        return "nobody".into();
                    }
                    list.iter()
                        .map(|(c, vaddr, perms, in_vm)| {
                            let whose = if *in_vm { "'s VM" } else { " itself" };
                            format!("{c}{whose} at {vaddr:#x} {perms}")
                        })
                        .collect::<Vec<String>>()
                        .join(", ")
                };
                return Err(ComponentError::GuestSharedMappers {
                    region: g.region.clone(),
                    expected: show(&expected),
                    mapped: show(&mapped),
                });
            }
        }
        Ok(())
    }

    /// Every parent is a top-level component; child ids are unique per parent, below 64.
    fn check_parents(&self) -> Result<(), ComponentError> {
        let mut ids: BTreeSet<(&str, u32)> = BTreeSet::new();
        for c in &self.components {
            let Some(p) = &c.parent else { continue };
            let top = self
                .components
                .iter()
                .any(|q| q.name == p.parent && q.parent.is_none());
            if !top {
                return Err(ComponentError::Parent {
                    component: c.name.clone(),
                    parent: p.parent.clone(),
                });
            }
            if p.id >= 64 || !ids.insert((&p.parent, p.id)) {
                return Err(ComponentError::ChildId {
                    parent: p.parent.clone(),
                    id: p.id,
                });
            }
        }
        Ok(())
    }

    fn check_shared(&self) -> Result<(), ComponentError> {
        for sh in &self.shared {
            let mut by: Vec<&str> = Vec::new();
            for c in &self.components {
                let vm_maps = c.vm.iter().flat_map(|v| v.maps.iter());
                for m in c.maps.iter().chain(vm_maps) {
                    if m.region == sh.region {
                        by.push(&c.name);
                    }
                }
            }
            let [a, b] = &sh.owners;
            let exact = by.len() == 2 && by.contains(&a.as_str()) && by.contains(&b.as_str());
            if !exact || a == b {
                return Err(ComponentError::SharedRegionMappers {
                    region: sh.region.clone(),
                    first: a.clone(),
                    second: b.clone(),
                    mapped_by: if by.is_empty() {
                        "nobody".into()
                    } else {
                        by.join(", ")
                    },
                });
            }
        }
        Ok(())
    }

    /// The Microkit system file (XML).
    pub fn render(&self) -> String {
        let mut x = String::new();
        let _ = writeln!(x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let _ = writeln!(
            x,
            "<!-- Generated by `keel sel4 build` from system {:?}. -->",
            self.system
        );
        let _ = writeln!(x, "<system>");
        for r in &self.regions {
            let _ = write!(
                x,
                "    <memory_region name=\"{}\" size=\"{:#x}\"",
                r.name, r.size
            );
            if let Some(p) = r.page_size {
                let _ = write!(x, " page_size=\"{p:#x}\"");
            }
            if let Some(p) = r.phys_addr {
                let _ = write!(x, " phys_addr=\"{p:#x}\"");
            }
            let _ = writeln!(x, " />");
        }
        let map = |x: &mut String, indent: &str, m: &MapPlan| {
            let cached = if m.cached { "" } else { " cached=\"false\"" };
            let _ = writeln!(
                x,
                "{indent}<map mr=\"{}\" vaddr=\"{:#x}\" perms=\"{}\"{cached} />",
                m.region, m.vaddr, m.perms
            );
        };
        // Children are written inside their parent (the Microkit tree); the check makes
        // every parent a top-level component.
        let pd = |x: &mut String, c: &ComponentPlan, ind: &str| {
            // A budgeted VM's VMM gets the VM's budget and period (see
            // [`vmm_scheduling`]); every other PD keeps Microkit's default context.
            let sched = vmm_scheduling(c)
                .map(|(b, p)| format!(" budget=\"{b}\" period=\"{p}\""))
                .unwrap_or_default();
            let id = c
                .parent
                .as_ref()
                .map(|p| format!(" id=\"{}\"", p.id))
                .unwrap_or_default();
            // A VMM runs the whole portable VMM on one stack: Microkit's default (8 KiB)
            // is too tight for it (a VMM overflowed it at start-up with passed-through
            // devices and console input together).
            let stack = match c.kind {
                ComponentKind::Vmm { .. } => format!(" stack_size=\"{VMM_STACK_SIZE:#x}\""),
                _ => String::new(),
            };
            let _ = writeln!(
                x,
                "{ind}<protection_domain name=\"{}\" priority=\"{}\"{sched} cpu=\"{}\"{id}{stack}>",
                c.name, c.priority, c.cpu
            );
            let _ = writeln!(x, "{ind}    <program_image path=\"{}\" />", c.program);
            let inner = format!("{ind}    ");
            for m in &c.maps {
                map(x, &inner, m);
            }
            for i in &c.irqs {
                let _ = writeln!(x, "{ind}    <irq irq=\"{}\" id=\"{}\" />", i.irq, i.channel);
            }
            if let Some(vm) = &c.vm {
                let _ = writeln!(
                    x,
                    "{ind}    <virtual_machine name=\"{}\" priority=\"{}\" budget=\"{}\" period=\"{}\">",
                    vm.name, vm.priority, vm.budget_us, vm.period_us
                );
                for (i, cpu) in vm.vcpu_cpus.iter().enumerate() {
                    let _ = writeln!(x, "{ind}        <vcpu id=\"{i}\" cpu=\"{cpu}\" />");
                }
                let vm_ind = format!("{ind}        ");
                for m in &vm.maps {
                    map(x, &vm_ind, m);
                }
                let _ = writeln!(x, "{ind}    </virtual_machine>");
            }
        };
        for c in self.components.iter().filter(|c| c.parent.is_none()) {
            pd(&mut x, c, "    ");
            let children = self
                .components
                .iter()
                .filter(|k| k.parent.as_ref().is_some_and(|p| p.parent == c.name));
            for k in children {
                pd(&mut x, k, "        ");
                let _ = writeln!(x, "        </protection_domain>");
            }
            let _ = writeln!(x, "    </protection_domain>");
        }
        for ch in &self.channels {
            let _ = writeln!(x, "    <channel>");
            let _ = writeln!(x, "        <end pd=\"{}\" id=\"{}\" />", ch.a.0, ch.a.1);
            let _ = writeln!(x, "        <end pd=\"{}\" id=\"{}\" />", ch.b.0, ch.b.1);
            let _ = writeln!(x, "    </channel>");
        }
        let _ = writeln!(x, "</system>");
        x
    }
}

fn rw(region: String, vaddr: u64) -> MapPlan {
    MapPlan {
        region,
        vaddr,
        perms: "rw",
        cached: true,
    }
}

/// The components of `system` on seL4: one VMM per VM (parent of its VM, mapping its RAM
/// and its console ring), the console component (mapping every ring, one channel per VMM),
/// and the board resources (the GIC's virtual CPU interface in every VM, the console UART
/// and its interrupt in the first VMM).
pub fn component_plan(
    system: &System,
    layout: &MicrokitLayout,
) -> Result<SystemComponents, MicrokitError> {
    check(system, layout)?;
    let places = placement(system, layout)?;
    let console = console_component(system, layout, &places);
    let switches = switch_components(system, layout, &places)?;
    let forwards = forward_links(system, layout)?;
    let vsocks = vsock_links(system, layout)?;
    let mut regions = vec![RegionPlan {
        name: "gic_vcpu".into(),
        size: layout.gic_vcpu_size,
        page_size: None,
        phys_addr: Some(layout.gic_vcpu_paddr),
    }];
    if let Some(ci) = &layout.console_input {
        regions.push(RegionPlan {
            name: "keel_console_uart".into(),
            size: 0x1000,
            page_size: None,
            phys_addr: Some(ci.uart_paddr),
        });
    }
    regions.extend(console.rings.iter().map(|r| RegionPlan {
        name: r.region.clone(),
        size: r.size,
        page_size: None,
        phys_addr: None,
    }));
    let coloured = coloured_ram(system, layout)?;
    for (vm, runs) in system.vms().iter().zip(&coloured) {
        let (_, size) = ram_layout(vm)[0];
        match runs {
            None => regions.push(RegionPlan {
                name: format!("{}_ram", vm.name),
                size,
                page_size: Some(TWO_MIB),
                phys_addr: vm.ram_phys_addr,
            }),
            // 4 KiB pages unless the tool finds larger ones fit (a run of every colour).
            Some(runs) => regions.extend(runs.iter().enumerate().map(|(i, r)| RegionPlan {
                name: coloured_region_name(vm, i),
                size: r.size,
                page_size: None,
                phys_addr: Some(r.paddr),
            })),
        }
    }
    let plain = |name: &str, size: u64| RegionPlan {
        name: name.into(),
        size,
        page_size: None,
        phys_addr: None,
    };
    for sw in &switches {
        for p in &sw.ports {
            for r in [&p.to_switch, &p.from_switch] {
                regions.push(plain(&r.region, r.size));
            }
        }
        regions.push(plain(&sw.heap_region, sw.heap_size));
    }
    for g in system.shared() {
        regions.push(plain(&guest_shared_region_name(&g.name), g.size));
    }
    for f in &forwards {
        regions.push(plain(&f.region, f.size));
    }
    for v in &vsocks {
        for r in &v.rings {
            regions.push(plain(r, v.size));
        }
    }
    for vm in system.vms().iter().filter(|v| !v.control.is_empty()) {
        regions.push(plain(&control_region_name(vm), FOUR_KIB));
    }
    for vm in system.vms() {
        for dev in &vm.passthrough {
            for (j, r) in dev.mmio.iter().enumerate() {
                regions.push(RegionPlan {
                    name: passthrough_region_name(vm, &dev.name, j),
                    size: r.size,
                    page_size: None,
                    phys_addr: Some(r.base),
                });
            }
        }
    }
    let guest_perms = |access: Access| match access {
        Access::ReadWrite => "rw",
        Access::ReadOnly => "r",
    };
    let mut components = Vec::new();
    for (index, (vm, place)) in system.vms().iter().zip(&places).enumerate() {
        let (base, _) = ram_layout(vm)[0];
        let p = vm.placement.clone().unwrap_or_default();
        // Guest RAM: one region, or the coloured runs back to back; at the same offsets
        // in the VMM's window onto it.
        let ram: Vec<(String, u64)> = match &coloured[index] {
            None => vec![(format!("{}_ram", vm.name), 0)],
            Some(runs) => runs
                .iter()
                .enumerate()
                .map(|(i, r)| (coloured_region_name(vm, i), r.offset))
                .collect(),
        };
        let mut maps: Vec<MapPlan> = ram
            .iter()
            .map(|(r, off)| rw(r.clone(), layout.vmm_ram_vaddr + off))
            .collect();
        let mut vm_maps: Vec<MapPlan> = ram
            .iter()
            .map(|(r, off)| MapPlan {
                perms: "rwx",
                ..rw(r.clone(), base + off)
            })
            .collect();
        vm_maps.push(MapPlan {
            cached: false,
            ..rw("gic_vcpu".into(), layout.gic_cpu_gpa)
        });
        maps.push(rw(
            console.rings[index].region.clone(),
            console.rings[index].vmm_vaddr,
        ));
        for p in switches.iter().flat_map(|s| &s.ports) {
            if p.vm_index == index {
                maps.push(rw(p.to_switch.region.clone(), p.to_switch.vmm_vaddr));
                maps.push(rw(p.from_switch.region.clone(), p.from_switch.vmm_vaddr));
            }
        }
        vm_maps.extend(vm.shared.iter().map(|m| MapPlan {
            perms: guest_perms(m.access),
            ..rw(guest_shared_region_name(&m.region), m.base)
        }));
        // Block forwarding: a client's VMM maps its links' rings in its own address
        // space (never in its guest's); a storage VM sees each link it serves at the
        // plan's guest-physical address.
        for f in &forwards {
            if f.client == index {
                maps.push(rw(f.region.clone(), f.client_vaddr));
            }
            if f.server == index {
                vm_maps.push(rw(f.region.clone(), f.server_gpa));
            }
        }
        // Vsock pairs: both rings in each of the two VMMs' own address spaces, never in
        // a guest's (the guest sees only its virtio-vsock device).
        for v in &vsocks {
            for (i, end) in v.ends.iter().enumerate().filter(|(_, e)| e.vm == index) {
                maps.push(rw(v.rings[i].clone(), end.tx_vaddr));
                maps.push(rw(v.rings[1 - i].clone(), end.rx_vaddr));
            }
        }
        if !vm.control.is_empty() {
            vm_maps.push(rw(control_region_name(vm), CONTROL_PAGE_GPA));
        }
        // Passed-through devices: their registers uncached at their physical address in
        // the VM (never in the VMM), their interrupts owned by the VMM, which injects them.
        for dev in &vm.passthrough {
            for (j, r) in dev.mmio.iter().enumerate() {
                vm_maps.push(MapPlan {
                    cached: false,
                    ..rw(passthrough_region_name(vm, &dev.name, j), r.base)
                });
            }
        }
        let irqs: Vec<IrqPlan> = vm
            .passthrough
            .iter()
            .flat_map(|d| d.irqs.iter())
            .zip(0u32..)
            .map(|(&irq, k)| IrqPlan {
                irq,
                channel: passthrough_channel(k),
            })
            .collect();
        components.push(ComponentPlan {
            name: vmm_pd_name(vm),
            kind: ComponentKind::Vmm { vm: index },
            program: vmm_elf_name(vm),
            priority: vmm_priority(vm),
            cpu: place.vmm_cpu,
            maps,
            irqs,
            vm: Some(ChildVmPlan {
                name: vm.name.clone(),
                priority: p.priority,
                budget_us: p.budget_us,
                period_us: p.period_us,
                vcpu_cpus: place.vcpu_cpus.clone(),
                maps: vm_maps,
            }),
            parent: Some(ChildOf {
                parent: ADMIN_PD_NAME.into(),
                id: admin_child_id(index),
            }),
        });
    }
    // The console PD owns the board's UART: it routes typed input to the focused VM.
    let mut console_maps: Vec<MapPlan> = console
        .rings
        .iter()
        .map(|r| rw(r.region.clone(), r.console_vaddr))
        .collect();
    let mut console_irqs = Vec::new();
    if let Some(ci) = &layout.console_input {
        console_maps.push(MapPlan {
            cached: false,
            ..rw("keel_console_uart".into(), ci.uart_vaddr)
        });
        console_irqs.push(IrqPlan {
            irq: ci.irq,
            channel: ci.channel,
        });
    }
    components.push(ComponentPlan {
        name: console.pd.clone(),
        kind: ComponentKind::Console,
        program: console.elf.clone(),
        priority: console.priority,
        cpu: console.cpu,
        maps: console_maps,
        irqs: console_irqs,
        vm: None,
        parent: None,
    });
    for (network, sw) in switches.iter().enumerate() {
        let mut maps = Vec::new();
        for p in &sw.ports {
            maps.push(rw(p.to_switch.region.clone(), p.to_switch.switch_vaddr));
            maps.push(rw(p.from_switch.region.clone(), p.from_switch.switch_vaddr));
        }
        maps.push(rw(sw.heap_region.clone(), sw.heap_vaddr));
        components.push(ComponentPlan {
            name: sw.pd.clone(),
            kind: ComponentKind::Switch { network },
            program: sw.elf.clone(),
            priority: sw.priority,
            cpu: sw.cpu,
            maps,
            irqs: Vec::new(),
            vm: None,
            parent: None,
        });
    }
    // The admin PD: parent of every VMM (their faults come to it), above every VMM's
    // priority so that a restart is not delayed by the VMs it supervises, on the first
    // VMM's core; it maps only its console ring.
    let admin_ring = console
        .rings
        .iter()
        .find(|r| r.vmm_pd == ADMIN_PD_NAME)
        .map(|r| rw(r.region.clone(), r.vmm_vaddr));
    let mut admin_maps: Vec<MapPlan> = admin_ring.into_iter().collect();
    for (k, vm) in system
        .vms()
        .iter()
        .filter(|v| !v.control.is_empty())
        .enumerate()
    {
        admin_maps.push(rw(
            control_region_name(vm),
            ADMIN_CONTROL_VADDR + k as u64 * FOUR_KIB,
        ));
    }
    components.push(ComponentPlan {
        name: ADMIN_PD_NAME.into(),
        kind: ComponentKind::Admin,
        program: ADMIN_ELF_NAME.into(),
        priority: admin_priority(system),
        cpu: places.first().map_or(0, |p| p.vmm_cpu),
        maps: admin_maps,
        irqs: Vec::new(),
        vm: None,
        parent: None,
    });
    let mut channels: Vec<ChannelPlan> = console
        .rings
        .iter()
        .map(|r| ChannelPlan {
            a: (r.vmm_pd.clone(), r.vmm_channel),
            b: (console.pd.clone(), r.console_channel),
        })
        .collect();
    let mut shared: Vec<SharedRegion> = console
        .rings
        .iter()
        .map(|r| SharedRegion {
            region: r.region.clone(),
            owners: [r.vmm_pd.clone(), console.pd.clone()],
        })
        .collect();
    for (i, vm) in system.vms().iter().enumerate() {
        channels.push(ChannelPlan {
            a: (vmm_pd_name(vm), VMM_ADMIN_CHANNEL),
            b: (ADMIN_PD_NAME.into(), admin_child_id(i)),
        });
        if !vm.control.is_empty() {
            shared.push(SharedRegion {
                region: control_region_name(vm),
                owners: [vmm_pd_name(vm), ADMIN_PD_NAME.into()],
            });
        }
    }
    for sw in &switches {
        for p in &sw.ports {
            channels.push(ChannelPlan {
                a: (p.vmm_pd.clone(), p.vmm_channel),
                b: (sw.pd.clone(), p.switch_channel),
            });
            for r in [&p.to_switch, &p.from_switch] {
                shared.push(SharedRegion {
                    region: r.region.clone(),
                    owners: [p.vmm_pd.clone(), sw.pd.clone()],
                });
            }
        }
    }
    for f in &forwards {
        let client = vmm_pd_name(&system.vms()[f.client]);
        let server = vmm_pd_name(&system.vms()[f.server]);
        channels.push(ChannelPlan {
            a: (client.clone(), f.client_channel),
            b: (server.clone(), f.server_channel),
        });
        shared.push(SharedRegion {
            region: f.region.clone(),
            owners: [client, server],
        });
    }
    for v in &vsocks {
        let [a, b] = &v.ends;
        let first = vmm_pd_name(&system.vms()[a.vm]);
        let second = vmm_pd_name(&system.vms()[b.vm]);
        channels.push(ChannelPlan {
            a: (first.clone(), a.channel),
            b: (second.clone(), b.channel),
        });
        for r in &v.rings {
            shared.push(SharedRegion {
                region: r.clone(),
                owners: [first.clone(), second.clone()],
            });
        }
    }
    let guest_shared = system
        .shared()
        .iter()
        .map(|g| GuestSharedRegion {
            region: guest_shared_region_name(&g.name),
            users: system
                .vms()
                .iter()
                .flat_map(|vm| {
                    vm.shared
                        .iter()
                        .filter(|m| m.region == g.name)
                        .map(|m| (vmm_pd_name(vm), m.base, guest_perms(m.access)))
                })
                .collect(),
        })
        .collect();
    Ok(SystemComponents {
        system: system.name().into(),
        regions,
        components,
        channels,
        shared,
        guest_shared,
    })
}

/// The Microkit system file (XML) for `system`: its [`component_plan`], checked, rendered.
pub fn system_file(system: &System, layout: &MicrokitLayout) -> Result<String, MicrokitError> {
    let plan = component_plan(system, layout)?;
    plan.check().map_err(MicrokitError::Components)?;
    Ok(plan.render())
}

/// Names of the switch ELFs the system file refers to, one per network with ports.
pub fn switch_elves(system: &System) -> Vec<String> {
    system
        .networks()
        .iter()
        .filter(|n| {
            system
                .vms()
                .iter()
                .any(|vm| vm.nics.iter().any(|nic| nic.network == n.name))
        })
        .map(|n| switch_elf_name(&n.name))
        .collect()
}

/// Names of the VMM ELFs the system file refers to, one per VM, in order.
pub fn vmm_elves(system: &System) -> Vec<String> {
    system.vms().iter().map(vmm_elf_name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CpuSet, HostPath, Memory, NetworkSpec, NicSpec, Placement};

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
                uart_vaddr: 0x3_1000_0000,
                irq: 33,
                channel: CONSOLE_UART_CHANNEL,
            }),
            net: NetLayout {
                vmm_rings_vaddr: 0x4_0000_0000,
                switch_rings_vaddr: 0x4_0000_0000,
                switch_heap_vaddr: 0x5_0000_0000,
                vmm_first_channel: 3,
            },
            board: Some(test_board()),
            colour: Some(ColourLayout {
                pool_base: 0x8000_0000,
                pool_end: 0xBF00_0000,
                max_pages: 1 << 16,
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

        assert!(
            x.contains("<protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">")
        );
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
        // VMMs to the console, the admin to the console, the admin to each VMM.
        assert_eq!(x.matches("<channel>").count(), 2 + 1 + 2);
    }

    #[test]
    fn single_vm_system_uses_the_console_pd_too() {
        let x = system_file(&system(vec![vm("a", 1)]), &layout()).unwrap();

        assert!(x.contains("<program_image path=\"keel-console.elf\" />"));
        assert_eq!(x.matches("<channel>").count(), 1 + 1 + 1);
    }

    #[test]
    fn console_pd_runs_below_the_lowest_vmm_on_the_first_vmms_core() {
        let mut low = vm("low", 1);
        low.placement = Some(Placement {
            pcpus: Some(vec![CpuSet::one(2)]),
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
            Err(MicrokitError::TooManyVms { vms: 61, max: 60 })
        );
    }

    #[test]
    fn only_the_console_pd_gets_the_console_input_uart() {
        let x = system_file(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();

        assert!(x.contains(
            "<memory_region name=\"keel_console_uart\" size=\"0x1000\" phys_addr=\"0x9000000\" />"
        ));
        assert_eq!(x.matches("<irq irq=\"33\" id=\"61\" />").count(), 1, "{x}");
        assert_eq!(x.matches("mr=\"keel_console_uart\"").count(), 1, "{x}");
        let console = x.find("name=\"keel_console\"").unwrap();
        let irq = x.find("<irq irq=").unwrap();
        let uart = x.find("mr=\"keel_console_uart\"").unwrap();
        let after = x[console..].find("</protection_domain>").unwrap() + console;
        assert!(console < irq && irq < after, "{x}");
        assert!(console < uart && uart < after, "{x}");
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
            pcpus: Some(vec![CpuSet::one(0)]),
            priority: 50,
            budget_us: 500,
            period_us: 1000,
        });

        let x = system_file(&system(vec![v]), &layout()).unwrap();

        assert!(x.contains("<vcpu id=\"0\" cpu=\"0\" />"));
        assert!(x.contains("priority=\"50\" budget=\"500\" period=\"1000\""));
    }

    #[test]
    fn budgeted_vm_gives_its_vmm_the_same_budget_and_period() {
        let mut v = vm("a", 1);
        v.placement = Some(Placement {
            budget_us: 5000,
            period_us: 20000,
            ..Placement::default()
        });

        let x = system_file(&system(vec![v]), &layout()).unwrap();

        assert!(
            x.contains(
                "<protection_domain name=\"a_vmm\" priority=\"101\" budget=\"5000\" period=\"20000\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">"
            ),
            "{x}"
        );
    }

    #[test]
    fn unbudgeted_vm_leaves_its_vmm_on_the_default_context() {
        let x = system_file(&system(vec![vm("a", 1)]), &layout()).unwrap();

        assert!(
            x.contains("<protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">"),
            "{x}"
        );
    }

    #[test]
    fn vcpu_on_a_missing_core_is_refused() {
        let mut v = vm("a", 1);
        v.placement = Some(Placement {
            pcpus: Some(vec![CpuSet::one(1)]),
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
            pcpus: Some(vec![CpuSet::one(3), CpuSet::one(1)]),
            ..Placement::default()
        });

        let x = system_file(&system(vec![vm("a", 2), b]), &layout_cores(4)).unwrap();

        assert!(
            x.contains("<protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">")
        );
        assert!(
            x.contains("<protection_domain name=\"b_vmm\" priority=\"101\" cpu=\"3\" id=\"1\" stack_size=\"0x10000\">")
        );
        assert_eq!(x.matches("<vcpu id=\"1\" cpu=\"1\" />").count(), 2);
        assert!(x.contains("<vcpu id=\"0\" cpu=\"3\" />"));
    }

    #[test]
    fn vcpu_on_a_set_of_several_cpus_is_refused_naming_vm_and_vcpu() {
        let mut b = vm("b", 2);
        b.placement = Some(Placement {
            pcpus: Some(vec![CpuSet::one(0), CpuSet::new(vec![1, 2])]),
            ..Placement::default()
        });
        let s = system(vec![b]);

        let e = placement(&s, &layout_cores(4)).unwrap_err();

        assert_eq!(
            e.to_string(),
            "VM b: vCPU 1 is placed on the CPU set [1, 2], but Microkit fixes each vCPU's core at build time: give one CPU"
        );
    }

    #[test]
    fn one_cpu_set_places_like_its_cpu() {
        let mut b = vm("b", 2);
        b.placement = Some(Placement {
            pcpus: Some(vec![CpuSet::new(vec![2]), CpuSet::one(2)]),
            ..Placement::default()
        });
        let s = system(vec![b]);

        let p = placement(&s, &layout_cores(4)).unwrap();

        assert_eq!(p[0].vcpu_cpus, vec![2, 2]);
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

    #[test]
    fn the_planned_components_pass_the_isolation_check() {
        let plan = component_plan(&system(vec![vm("a", 2), vm("b", 1)]), &layout()).unwrap();

        assert_eq!(plan.check(), Ok(()));
        assert_eq!(plan.components.len(), 4);
        assert_eq!(plan.channels.len(), 2 + 1 + 2);
    }

    #[test]
    fn a_region_mapped_by_two_vmms_is_refused() {
        let mut plan = component_plan(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();
        let shared = plan.components[0].maps[0].clone();
        plan.components[1].maps.push(shared);

        assert_eq!(
            plan.check(),
            Err(ComponentError::SharedBetweenVmms {
                region: "a_ram".into(),
                first: "a_vmm".into(),
                second: "b_vmm".into()
            })
        );
    }

    #[test]
    fn an_interrupt_with_two_owners_is_refused() {
        let mut plan = component_plan(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();
        plan.components[1].irqs.push(IrqPlan {
            irq: 33,
            channel: 5,
        });

        assert_eq!(
            plan.check(),
            Err(ComponentError::IrqOwners {
                irq: 33,
                first: "b_vmm".into(),
                second: "keel_console".into()
            })
        );
    }

    #[test]
    fn a_channel_id_used_twice_by_one_component_is_refused() {
        let mut plan = component_plan(&system(vec![vm("a", 1)]), &layout()).unwrap();
        let dup = plan.channels[0].clone();
        plan.channels.push(dup);

        assert!(matches!(
            plan.check(),
            Err(ComponentError::ChannelId { id: 2, .. })
        ));
    }

    #[test]
    fn a_map_of_an_undeclared_region_is_refused() {
        let mut plan = component_plan(&system(vec![vm("a", 1)]), &layout()).unwrap();
        plan.components[0].maps[0].region = "nowhere".into();

        assert!(matches!(
            plan.check(),
            Err(ComponentError::UndeclaredRegion { .. })
        ));
    }

    fn nic(network: &str) -> NicSpec {
        NicSpec {
            network: network.into(),
            mac: None,
        }
    }

    /// VMs `a` and `b` on network `lan`; `b` also on `dmz` with `c`.
    fn networked() -> System {
        let mut a = vm("a", 1);
        a.nics = vec![nic("lan")];
        let mut b = vm("b", 1);
        b.nics = vec![nic("lan"), nic("dmz")];
        let mut c = vm("c", 1);
        c.nics = vec![nic("dmz")];
        System::with_networks(
            "t".into(),
            None,
            vec![a, b, c],
            vec![NetworkSpec::new("lan"), NetworkSpec::new("dmz")],
        )
        .unwrap()
    }

    fn pd_section<'a>(x: &'a str, pd: &str) -> &'a str {
        let s = &x[x.find(&format!("name=\"{pd}\"")).unwrap()..];
        &s[..s.find("</protection_domain>").unwrap()]
    }

    #[test]
    fn every_vmm_pd_is_a_child_of_the_admin_pd() {
        let x = system_file(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();

        let admin = &x[x.find("<protection_domain name=\"keel_admin\"").unwrap()..];
        assert!(admin.starts_with(
            "<protection_domain name=\"keel_admin\" priority=\"102\" cpu=\"0\">\n        <program_image path=\"keel-admin.elf\" />"
        ));
        assert!(admin.contains(
            "\n        <protection_domain name=\"a_vmm\" priority=\"101\" cpu=\"0\" id=\"0\" stack_size=\"0x10000\">"
        ));
        assert!(admin.contains(
            "\n        <protection_domain name=\"b_vmm\" priority=\"101\" cpu=\"0\" id=\"1\" stack_size=\"0x10000\">"
        ));
        assert_eq!(x.matches("<protection_domain ").count(), 4);
        assert_eq!(x.matches("</protection_domain>").count(), 4);
    }

    fn controlled() -> System {
        let mut ctl = vm("ctl", 1);
        ctl.control = vec![crate::ControlSpec {
            vm: "web".into(),
            rights: vec![crate::ControlRight::Stop],
        }];
        system(vec![ctl, vm("web", 1)])
    }

    #[test]
    fn a_control_vm_shares_its_control_page_with_the_admin_only() {
        let plan = component_plan(&controlled(), &layout()).unwrap();

        assert_eq!(plan.check(), Ok(()));
        let x = plan.render();
        assert!(x.contains("<memory_region name=\"ctl_control\" size=\"0x1000\" />"));
        assert!(x.contains("<map mr=\"ctl_control\" vaddr=\"0x71000000\" perms=\"rw\" />"));
        assert!(x.contains("<map mr=\"ctl_control\" vaddr=\"0x500000000\" perms=\"rw\" />"));
        assert_eq!(x.matches("mr=\"ctl_control\"").count(), 2);
        assert!(!x.contains("web_control"));
    }

    #[test]
    fn each_vmm_has_a_channel_to_the_admin_pd() {
        let x = system_file(&controlled(), &layout()).unwrap();

        assert!(x.contains(
            "<channel>\n        <end pd=\"web_vmm\" id=\"0\" />\n        <end pd=\"keel_admin\" id=\"1\" />\n    </channel>"
        ));
    }

    #[test]
    fn a_control_vm_whose_ram_covers_its_control_page_is_refused() {
        let mut sys = controlled();
        let mut big = sys.vms()[0].clone();
        big.memory = crate::Memory::Size(1 << 30);
        sys = system(vec![big, sys.vms()[1].clone()]);

        assert_eq!(
            component_plan(&sys, &layout()).map(|_| ()),
            Err(MicrokitError::ControlPageOverlap {
                vm: "ctl".into(),
                page: CONTROL_PAGE_GPA,
                what: "RAM".into()
            })
        );
    }

    #[test]
    fn a_child_id_used_twice_is_refused() {
        let mut plan = component_plan(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();
        plan.components[1].parent.as_mut().unwrap().id = 0;

        assert_eq!(
            plan.check(),
            Err(ComponentError::ChildId {
                parent: ADMIN_PD_NAME.into(),
                id: 0
            })
        );
    }

    #[test]
    fn a_child_of_a_child_is_refused() {
        let mut plan = component_plan(&system(vec![vm("a", 1), vm("b", 1)]), &layout()).unwrap();
        plan.components[1].parent = Some(ChildOf {
            parent: "a_vmm".into(),
            id: 5,
        });

        assert_eq!(
            plan.check(),
            Err(ComponentError::Parent {
                component: "b_vmm".into(),
                parent: "a_vmm".into()
            })
        );
    }

    #[test]
    fn each_network_gets_a_switch_pd() {
        let x = system_file(&networked(), &layout()).unwrap();

        assert!(
            x.contains("<protection_domain name=\"keel_switch_lan\" priority=\"101\" cpu=\"0\">")
        );
        assert!(x.contains("<program_image path=\"keel-switch-lan.elf\" />"));
        assert!(x.contains("<program_image path=\"keel-switch-dmz.elf\" />"));
        assert_eq!(
            switch_elves(&networked()),
            ["keel-switch-lan.elf", "keel-switch-dmz.elf"]
        );
    }

    #[test]
    fn each_port_has_two_rings_rounded_to_4_kib() {
        let x = system_file(&networked(), &layout()).unwrap();

        // 256 slots: 256 + 256 × 2048 bytes, rounded up to 0x81000.
        for r in [
            "a_net0_to_switch",
            "a_net0_from_switch",
            "b_net1_to_switch",
            "c_net0_from_switch",
        ] {
            assert!(
                x.contains(&format!("<memory_region name=\"{r}\" size=\"0x81000\" />")),
                "{r}: {x}"
            );
        }
        assert_eq!(x.matches("_to_switch\" size=").count(), 4);
    }

    #[test]
    fn a_ring_is_mapped_only_by_its_vmm_and_its_networks_switch() {
        let x = system_file(&networked(), &layout()).unwrap();

        let b = pd_section(&x, "b_vmm");
        assert!(b.contains("<map mr=\"b_net0_to_switch\" vaddr=\"0x400000000\" perms=\"rw\" />"));
        assert!(b.contains("<map mr=\"b_net0_from_switch\" vaddr=\"0x400081000\" perms=\"rw\" />"));
        assert!(b.contains("<map mr=\"b_net1_to_switch\" vaddr=\"0x400102000\" perms=\"rw\" />"));
        assert!(!b.contains("a_net0"));
        let dmz = pd_section(&x, "keel_switch_dmz");
        assert!(dmz.contains("<map mr=\"b_net1_to_switch\" vaddr=\"0x400000000\" perms=\"rw\" />"));
        assert!(
            dmz.contains("<map mr=\"c_net0_from_switch\" vaddr=\"0x400183000\" perms=\"rw\" />")
        );
        assert!(!dmz.contains("a_net0") && !dmz.contains("b_net0"));
        assert_eq!(x.matches("<map mr=\"b_net1_from_switch\"").count(), 2);
    }

    #[test]
    fn a_switch_maps_no_guest_ram() {
        let x = system_file(&networked(), &layout()).unwrap();

        let lan = pd_section(&x, "keel_switch_lan");
        assert!(!lan.contains("_ram\""));
        assert!(!lan.contains("console"));
        assert_eq!(lan.matches("<map ").count(), 5);
    }

    #[test]
    fn a_switch_has_its_own_heap_region_sized_from_the_plan() {
        let s = networked();
        let net = &crate::plan::plan(&s).unwrap().networks[0];

        let x = system_file(&s, &layout()).unwrap();

        let size = switch_heap_bytes(net);
        assert_eq!(size % 0x1000, 0);
        assert!(size >= 2 * 2 * 256 * (MAX_FRAME + 2));
        assert!(x.contains(&format!(
            "<memory_region name=\"keel_switch_lan_heap\" size=\"{size:#x}\" />"
        )));
        assert!(
            pd_section(&x, "keel_switch_lan")
                .contains("<map mr=\"keel_switch_lan_heap\" vaddr=\"0x500000000\" perms=\"rw\" />")
        );
        assert_eq!(x.matches("<map mr=\"keel_switch_lan_heap\"").count(), 1);
    }

    #[test]
    fn each_port_has_a_channel_between_its_vmm_and_its_switch() {
        let x = system_file(&networked(), &layout()).unwrap();

        assert!(x.contains(
            "<channel>\n        <end pd=\"b_vmm\" id=\"4\" />\n        <end pd=\"keel_switch_dmz\" id=\"0\" />\n    </channel>"
        ));
        assert!(x.contains(
            "<channel>\n        <end pd=\"b_vmm\" id=\"3\" />\n        <end pd=\"keel_switch_lan\" id=\"1\" />\n    </channel>"
        ));
        assert_eq!(x.matches("<channel>").count(), 3 + 1 + 3 + 4);
    }

    #[test]
    fn switch_runs_at_its_lowest_vmm_on_its_first_ports_core() {
        let mut s = networked();
        let mut placed = vm("b", 1);
        placed.nics = vec![nic("lan"), nic("dmz")];
        placed.placement = Some(Placement {
            pcpus: Some(vec![CpuSet::one(1)]),
            priority: 60,
            ..Placement::default()
        });
        s = System::with_networks(
            "t".into(),
            None,
            vec![s.vms()[2].clone(), placed, s.vms()[0].clone()],
            s.networks().to_vec(),
        )
        .unwrap();
        let lay = layout_cores(2);
        let places = placement(&s, &lay).unwrap();

        let sw = switch_components(&s, &lay, &places).unwrap();

        let dmz = sw.iter().find(|c| c.pd == "keel_switch_dmz").unwrap();
        assert_eq!((dmz.priority, dmz.cpu), (61, 0));
        let lan = sw.iter().find(|c| c.pd == "keel_switch_lan").unwrap();
        assert_eq!((lan.priority, lan.cpu), (61, 1));
    }

    #[test]
    fn an_uplink_is_refused_on_sel4() {
        let mut a = vm("a", 1);
        a.nics = vec![nic("lan")];
        let mut lan = NetworkSpec::new("lan");
        lan.uplink = Some("tap:tap0".into());
        let s = System::with_networks("t".into(), None, vec![a], vec![lan]).unwrap();

        let e = system_file(&s, &layout()).unwrap_err();

        assert_eq!(
            e.to_string(),
            "network lan: an uplink (tap) is Linux only; the seL4 backend has no host network to bridge into"
        );
    }

    fn served_system(clients: &[&str]) -> System {
        let mut store = vm("store", 1);
        store.disks = vec![crate::model::DiskSpec::file(
            HostPath::new("/s"),
            false,
            None,
        )];
        let mut vms = vec![store];
        for (k, name) in clients.iter().enumerate() {
            let mut c = vm(name, 1);
            c.disks = vec![crate::model::DiskSpec {
                served: Some(crate::model::ServedDisk {
                    server: "store".into(),
                    server_disk: 0,
                    server_passthrough: None,
                    start: k as u64 * 4096,
                    size: 4096,
                }),
                ..crate::model::DiskSpec::file(HostPath::default(), false, None)
            }];
            vms.push(c);
        }
        system(vms)
    }

    #[test]
    fn a_served_disk_is_a_region_in_the_client_vmm_and_the_storage_vm_and_a_channel() {
        let s = served_system(&["a", "b"]);
        let lay = layout();

        let links = forward_links(&s, &lay).unwrap();
        let x = system_file(&s, &lay).unwrap();

        let plan = crate::plan::plan(&s).unwrap();
        let len = plan.vms[1].disks[0].served.as_ref().unwrap().region_len;
        let size = len.next_multiple_of(0x1000);
        assert_eq!(links.len(), 2);
        for (k, l) in links.iter().enumerate() {
            assert_eq!((l.link, l.client, l.server, l.serve), (k, k + 1, 0, k));
            assert_eq!(l.server_gpa, plan.vms[0].serves[k].gpa);
            let r = format!("keel_fwd_{k}");
            assert!(x.contains(&format!(
                "<memory_region name=\"{r}\" size=\"{size:#x}\" />"
            )));
            assert_eq!(x.matches(&format!("<map mr=\"{r}\"")).count(), 2, "{x}");
        }
        // The storage VM maps both at their plan addresses, in its VM (inside the
        // virtual_machine element of store_vmm); each client VMM maps its own at 24 GiB.
        let store = &x[x.find("<protection_domain name=\"store_vmm\"").unwrap()..];
        let store = &store[..store.find("</protection_domain>").unwrap()];
        let store_vm = &store[store.find("<virtual_machine").unwrap()..];
        for k in 0..2 {
            let gpa = plan.vms[0].serves[k].gpa;
            assert!(store_vm.contains(&format!(
                "<map mr=\"keel_fwd_{k}\" vaddr=\"{gpa:#x}\" perms=\"rw\" />"
            )));
        }
        let a = &x[x.find("<protection_domain name=\"a_vmm\"").unwrap()..];
        let a = &a[..a.find("<virtual_machine").unwrap()];
        assert!(a.contains("<map mr=\"keel_fwd_0\" vaddr=\"0x600000000\" perms=\"rw\" />"));
        // Channels: the client's first id after its (zero) interfaces; the storage
        // VMM's ids in serves order.
        let first = lay.net.vmm_first_channel;
        assert!(x.contains(&format!(
            "<channel>\n        <end pd=\"a_vmm\" id=\"{first}\" />\n        <end pd=\"store_vmm\" id=\"{first}\" />\n    </channel>"
        )));
        assert!(x.contains(&format!(
            "<channel>\n        <end pd=\"b_vmm\" id=\"{first}\" />\n        <end pd=\"store_vmm\" id=\"{}\" />\n    </channel>",
            first + 1
        )));
    }

    #[test]
    fn a_storage_vmm_out_of_channels_is_refused() {
        let names: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = served_system(&refs);
        let mut lay = layout();
        lay.net.vmm_first_channel = MAX_CHANNELS - 2;

        let e = system_file(&s, &lay).unwrap_err();

        assert_eq!(
            e,
            MicrokitError::TooManyChannels {
                vm: "store".into(),
                irqs: 0,
                nics: 0,
                links: 3,
                peers: 0,
                max: 2,
            }
        );
    }

    fn vsock_vm(name: &str, cid: u32) -> VmSpec {
        let mut v = vm(name, 1);
        v.vsock = Some(crate::model::VsockSpec { cid, socket: None });
        v
    }

    fn vsock_system(vms: Vec<VmSpec>, allow: &[(&str, &str)]) -> System {
        let allow = allow
            .iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect();
        System::new("t".into(), None, vms)
            .unwrap()
            .with_vsock_allow(allow)
            .unwrap()
    }

    /// The text of the protection domain `pd` of system file `x` up to its child VM (the
    /// VMM's own maps), and its child VM's part.
    fn pd_parts<'a>(x: &'a str, pd: &str) -> (&'a str, &'a str) {
        let start = x
            .find(&format!("<protection_domain name=\"{pd}\""))
            .unwrap();
        let body = &x[start..];
        let body = &body[..body.find("</protection_domain>").unwrap()];
        let vm = body.find("<virtual_machine").unwrap();
        (&body[..vm], &body[vm..])
    }

    #[test]
    fn a_vsock_pair_is_two_rings_mapped_into_both_vmms_only_and_one_channel() {
        let s = vsock_system(
            vec![vsock_vm("a", 3), vsock_vm("b", 4), vsock_vm("c", 5)],
            &[("a", "b")],
        );
        let lay = layout();

        let x = system_file(&s, &lay).unwrap();
        let links = vsock_links(&s, &lay).unwrap();

        let size = (256u64 + 256 * 2048).next_multiple_of(0x1000);
        assert_eq!(vsock_region_bytes(), size);
        for r in ["keel_vsock_0_0", "keel_vsock_0_1"] {
            assert!(x.contains(&format!(
                "<memory_region name=\"{r}\" size=\"{size:#x}\" />"
            )));
            assert_eq!(x.matches(&format!("<map mr=\"{r}\"")).count(), 2, "{x}");
        }
        // Each VMM maps the ring it produces first, the one it consumes next; no guest
        // maps either, and c's VMM neither.
        let base = VMM_VSOCK_VADDR;
        let (a, a_vm) = pd_parts(&x, "a_vmm");
        let (b, b_vm) = pd_parts(&x, "b_vmm");
        let (c, c_vm) = pd_parts(&x, "c_vmm");
        assert!(a.contains(&format!(
            "<map mr=\"keel_vsock_0_0\" vaddr=\"{base:#x}\" perms=\"rw\" />"
        )));
        assert!(a.contains(&format!(
            "<map mr=\"keel_vsock_0_1\" vaddr=\"{:#x}\" perms=\"rw\" />",
            base + size
        )));
        assert!(b.contains(&format!(
            "<map mr=\"keel_vsock_0_1\" vaddr=\"{base:#x}\" perms=\"rw\" />"
        )));
        assert!(b.contains(&format!(
            "<map mr=\"keel_vsock_0_0\" vaddr=\"{:#x}\" perms=\"rw\" />",
            base + size
        )));
        for part in [a_vm, b_vm, c, c_vm] {
            assert!(!part.contains("keel_vsock"), "{part}");
        }
        let first = lay.net.vmm_first_channel;
        assert!(x.contains(&format!(
            "<channel>\n        <end pd=\"a_vmm\" id=\"{first}\" />\n        <end pd=\"b_vmm\" id=\"{first}\" />\n    </channel>"
        )));
        assert_eq!(links.len(), 1);
        assert_eq!(
            links[0].ends.each_ref().map(|e| (e.vm, e.peer, e.channel)),
            [(0, 0, first), (1, 0, first)]
        );
    }

    #[test]
    fn vsock_channels_and_rings_follow_interfaces_and_each_peer_in_allow_order() {
        let mut a = vsock_vm("a", 3);
        a.nics = vec![nic("n0")];
        let vms = vec![a, vsock_vm("b", 4), vsock_vm("c", 5)];
        let s = System::with_networks("t".into(), None, vms, vec![NetworkSpec::new("n0")])
            .unwrap()
            .with_vsock_allow(vec![("c".into(), "a".into()), ("a".into(), "b".into())])
            .unwrap();
        let lay = layout();

        let links = vsock_links(&s, &lay).unwrap();
        let plan = component_plan(&s, &lay).unwrap();

        assert_eq!(plan.check(), Ok(()));
        let first = lay.net.vmm_first_channel;
        let size = vsock_region_bytes();
        // Pair 0 (c, a): c first; a's first peer, after a's interface's channel.
        assert_eq!(links[0].pair, 0);
        assert_eq!(
            links[0]
                .ends
                .each_ref()
                .map(|e| (e.vm, e.peer, e.channel, e.tx_vaddr)),
            [
                (2, 0, first, VMM_VSOCK_VADDR),
                (0, 0, first + 1, VMM_VSOCK_VADDR)
            ]
        );
        // Pair 1 (a, b): a's second peer, its rings after the first peer's two.
        assert_eq!(
            links[1]
                .ends
                .each_ref()
                .map(|e| (e.vm, e.peer, e.channel, e.tx_vaddr)),
            [
                (0, 1, first + 2, VMM_VSOCK_VADDR + 2 * size),
                (1, 0, first, VMM_VSOCK_VADDR)
            ]
        );
        assert_eq!(links[1].ends[0].rx_vaddr, VMM_VSOCK_VADDR + 3 * size);
    }

    #[test]
    fn a_vsock_ring_mapped_by_a_third_vmm_is_refused() {
        let s = vsock_system(
            vec![vsock_vm("a", 3), vsock_vm("b", 4), vsock_vm("c", 5)],
            &[("a", "b")],
        );
        let mut plan = component_plan(&s, &layout()).unwrap();
        let c = plan
            .components
            .iter_mut()
            .find(|c| c.name == "c_vmm")
            .unwrap();
        c.maps.push(rw("keel_vsock_0_1".into(), VMM_VSOCK_VADDR));

        assert_eq!(
            plan.check(),
            Err(ComponentError::SharedRegionMappers {
                region: "keel_vsock_0_1".into(),
                first: "a_vmm".into(),
                second: "b_vmm".into(),
                mapped_by: "a_vmm, b_vmm, c_vmm".into(),
            })
        );
    }

    #[test]
    fn a_vsock_ring_mapped_into_a_guest_is_refused() {
        let s = vsock_system(vec![vsock_vm("a", 3), vsock_vm("b", 4)], &[("a", "b")]);
        let mut plan = component_plan(&s, &layout()).unwrap();
        let a = plan
            .components
            .iter_mut()
            .find(|c| c.name == "a_vmm")
            .unwrap();
        a.vm.as_mut()
            .unwrap()
            .maps
            .push(rw("keel_vsock_0_0".into(), 0x5000_0000));

        assert_eq!(
            plan.check(),
            Err(ComponentError::SharedRegionMappers {
                region: "keel_vsock_0_0".into(),
                first: "a_vmm".into(),
                second: "b_vmm".into(),
                mapped_by: "a_vmm, a_vmm, b_vmm".into(),
            })
        );
    }

    #[test]
    fn a_vmm_out_of_channels_for_its_vsock_peers_is_refused() {
        let s = vsock_system(
            vec![vsock_vm("a", 3), vsock_vm("b", 4), vsock_vm("c", 5)],
            &[("a", "b"), ("a", "c")],
        );
        let mut lay = layout();
        lay.net.vmm_first_channel = MAX_CHANNELS - 1;

        let e = system_file(&s, &lay).unwrap_err();

        assert_eq!(
            e,
            MicrokitError::TooManyChannels {
                vm: "a".into(),
                irqs: 0,
                nics: 0,
                links: 0,
                peers: 2,
                max: 1,
            }
        );
    }

    #[test]
    fn a_vsock_host_socket_is_refused_on_sel4() {
        let mut a = vsock_vm("a", 3);
        a.vsock.as_mut().unwrap().socket = Some(HostPath::new("/run/a.vsock"));
        let s = vsock_system(vec![a, vsock_vm("b", 4)], &[("a", "b")]);

        let e = system_file(&s, &layout()).unwrap_err();

        assert_eq!(
            e.to_string(),
            "VM a: vsock socket \"/run/a.vsock\": the seL4 backend has no host to connect it to (vsock on seL4 is guest to guest only: remove `socket`, keep `[vsock] allow`)"
        );
    }

    #[test]
    fn a_vm_with_vsock_and_no_peer_gets_no_ring() {
        let s = vsock_system(vec![vsock_vm("a", 3)], &[]);

        let x = system_file(&s, &layout()).unwrap();

        assert!(!x.contains("keel_vsock"), "{x}");
    }

    #[test]
    fn more_interfaces_than_vmm_channels_are_refused() {
        let mut a = vm("a", 1);
        a.nics = vec![nic("n0"), nic("n1"), nic("n2")];
        let nets = ["n0", "n1", "n2"].map(NetworkSpec::new).to_vec();
        let s = System::with_networks("t".into(), None, vec![a], nets).unwrap();
        let mut lay = layout();
        lay.net.vmm_first_channel = 60;

        assert_eq!(
            check(&s, &lay),
            Err(MicrokitError::TooManyNics {
                vm: "a".into(),
                nics: 3,
                max: 2
            })
        );
    }

    #[test]
    fn a_network_without_ports_gets_no_switch() {
        let s = System::with_networks(
            "t".into(),
            None,
            vec![vm("a", 1)],
            vec![NetworkSpec::new("empty")],
        )
        .unwrap();

        let x = system_file(&s, &layout()).unwrap();

        assert!(!x.contains("keel_switch"));
    }

    #[test]
    fn the_networked_plan_passes_the_isolation_check() {
        let plan = component_plan(&networked(), &layout()).unwrap();

        assert_eq!(plan.check(), Ok(()));
        assert_eq!(plan.shared.len(), 3 + 1 + 8);
    }

    #[test]
    fn a_ring_mapped_by_a_third_component_is_refused() {
        let mut plan = component_plan(&networked(), &layout()).unwrap();
        let c = plan
            .components
            .iter()
            .position(|c| c.name == "c_vmm")
            .unwrap();
        plan.components[c]
            .maps
            .push(rw("a_net0_from_switch".into(), 0x6_0000_0000));

        assert_eq!(
            plan.check(),
            Err(ComponentError::SharedRegionMappers {
                region: "a_net0_from_switch".into(),
                first: "a_vmm".into(),
                second: "keel_switch_lan".into(),
                mapped_by: "a_vmm, c_vmm, keel_switch_lan".into(),
            })
        );
    }

    #[test]
    fn a_ring_its_switch_does_not_map_is_refused() {
        let mut plan = component_plan(&networked(), &layout()).unwrap();
        let lan = plan
            .components
            .iter()
            .position(|c| c.name == "keel_switch_lan")
            .unwrap();
        plan.components[lan]
            .maps
            .retain(|m| m.region != "a_net0_to_switch");

        assert!(matches!(
            plan.check(),
            Err(ComponentError::SharedRegionMappers { ref mapped_by, .. }) if mapped_by == "a_vmm"
        ));
    }

    fn shared_system() -> System {
        use crate::model::{SharedMapSpec, SharedSpec};
        let map = |base: u64, access| SharedMapSpec {
            region: "x".into(),
            base,
            access,
            size: None,
        };
        let mut a = vm("a", 1);
        a.shared.push(map(0x5000_0000, Access::ReadWrite));
        let mut b = vm("b", 1);
        b.shared.push(map(0x6000_0000, Access::ReadOnly));
        let c = vm("c", 1);
        System::with_shared(
            "t".into(),
            None,
            vec![a, b, c],
            Vec::new(),
            vec![SharedSpec {
                name: "x".into(),
                size: 0x10000,
            }],
        )
        .unwrap()
    }

    #[test]
    fn guest_shared_region_is_declared_once_with_its_size() {
        let x = system_file(&shared_system(), &layout()).unwrap();

        assert_eq!(
            x.matches("<memory_region name=\"keel_shared_x\" size=\"0x10000\" />")
                .count(),
            1,
            "{x}"
        );
    }

    #[test]
    fn guest_shared_region_is_mapped_into_each_named_vm_at_its_base_with_its_rights() {
        let x = system_file(&shared_system(), &layout()).unwrap();

        let a = pd_section(&x, "a_vmm");
        let b = pd_section(&x, "b_vmm");
        let a_vm = &a[a.find("<virtual_machine").unwrap()..];
        let b_vm = &b[b.find("<virtual_machine").unwrap()..];
        assert!(
            a_vm.contains("<map mr=\"keel_shared_x\" vaddr=\"0x50000000\" perms=\"rw\" />"),
            "{x}"
        );
        assert!(
            b_vm.contains("<map mr=\"keel_shared_x\" vaddr=\"0x60000000\" perms=\"r\" />"),
            "{x}"
        );
    }

    #[test]
    fn guest_shared_region_is_mapped_by_no_pd_and_no_other_vm() {
        let x = system_file(&shared_system(), &layout()).unwrap();

        assert_eq!(x.matches("<map mr=\"keel_shared_x\"").count(), 2, "{x}");
        assert!(!pd_section(&x, "c_vmm").contains("keel_shared_x"), "{x}");
        assert!(
            !pd_section(&x, "keel_console").contains("keel_shared_x"),
            "{x}"
        );
    }

    #[test]
    fn guest_shared_region_mapped_into_a_vmm_pd_is_refused() {
        let mut plan = component_plan(&shared_system(), &layout()).unwrap();
        plan.components[2]
            .maps
            .push(rw("keel_shared_x".into(), 0x6_0000_0000));

        let e = plan.check().unwrap_err();

        assert_eq!(
            e.to_string(),
            "guest shared region keel_shared_x must be mapped only into the VMs of a_vmm's VM at \
             0x50000000 rw, b_vmm's VM at 0x60000000 r; it is mapped by: a_vmm's VM at 0x50000000 \
             rw, b_vmm's VM at 0x60000000 r, c_vmm itself at 0x600000000 rw"
        );
    }

    #[test]
    fn guest_shared_region_mapped_writable_where_declared_read_only_is_refused() {
        let mut plan = component_plan(&shared_system(), &layout()).unwrap();
        let b_vm = plan.components[1].vm.as_mut().unwrap();
        for m in b_vm.maps.iter_mut().filter(|m| m.region == "keel_shared_x") {
            m.perms = "rw";
        }

        assert!(matches!(
            plan.check(),
            Err(ComponentError::GuestSharedMappers { .. })
        ));
    }

    #[test]
    fn planned_guest_shared_regions_pass_the_isolation_check() {
        let plan = component_plan(&shared_system(), &layout()).unwrap();

        assert_eq!(plan.check(), Ok(()));
    }

    // ---- cache colouring ----------------------------------------------------------------

    /// 512 KiB, 16 ways: 8 colours.
    const LLC: crate::model::Llc = crate::model::Llc {
        size: 512 << 10,
        ways: 16,
    };

    fn coloured(name: &str, mib: u64, colours: &[u32]) -> VmSpec {
        let mut v = VmSpec::new(
            name,
            Arch::Aarch64,
            HostPath::new("/k"),
            Memory::Size(mib << 20),
        );
        v.cache_colours = Some(colours.to_vec());
        v
    }

    fn llc_system(vms: Vec<VmSpec>) -> System {
        System::with_llc("t".into(), None, Some(LLC), vms, Vec::new()).unwrap()
    }

    /// The 4 KiB pages of the regions whose name starts with `<vm>_ram_`.
    fn ram_pages(plan: &SystemComponents, vm: &str) -> Vec<u64> {
        let prefix = format!("{vm}_ram_");
        plan.regions
            .iter()
            .filter(|r| r.name.starts_with(&prefix))
            .flat_map(|r| {
                let p = r
                    .phys_addr
                    .expect("a coloured region has a physical address");
                (0..r.size / 0x1000).map(move |i| p + i * 0x1000)
            })
            .collect()
    }

    /// Maps as (region, address), sorted by address.
    type Maps = Vec<(String, u64)>;

    /// The RAM maps of `vm`'s VMM and of the VM.
    fn ram_maps(plan: &SystemComponents, vm: &str) -> (Maps, Maps) {
        let c = plan
            .components
            .iter()
            .find(|c| c.name == format!("{vm}_vmm"))
            .unwrap();
        let pick = |maps: &[MapPlan]| {
            let mut v: Vec<(String, u64)> = maps
                .iter()
                .filter(|m| m.region.starts_with(&format!("{vm}_ram")))
                .map(|m| (m.region.clone(), m.vaddr))
                .collect();
            v.sort_by_key(|(_, a)| *a);
            v
        };
        (pick(&c.maps), pick(&c.vm.as_ref().unwrap().maps))
    }

    #[test]
    fn every_page_of_a_coloured_vms_ram_has_a_colour_of_its_set() {
        let plan =
            component_plan(&llc_system(vec![coloured("a", 32, &[1, 2, 5])]), &layout()).unwrap();

        let pages = ram_pages(&plan, "a");
        assert_eq!(pages.len() as u64, (32 << 20) / 0x1000);
        assert!(
            pages
                .iter()
                .all(|&p| [1, 2, 5].contains(&crate::colour::colour_of(p, 8)))
        );
    }

    #[test]
    fn two_coloured_vms_never_share_a_page_or_a_colour() {
        let s = llc_system(vec![
            coloured("a", 32, &[0, 1, 2, 3]),
            coloured("b", 16, &[4, 5]),
        ]);

        let plan = component_plan(&s, &layout()).unwrap();

        let a = ram_pages(&plan, "a");
        let b: BTreeSet<u64> = ram_pages(&plan, "b").into_iter().collect();
        assert!(a.iter().all(|p| !b.contains(p)));
        let colours_a: BTreeSet<u64> = a.iter().map(|&p| crate::colour::colour_of(p, 8)).collect();
        let colours_b: BTreeSet<u64> = b.iter().map(|&p| crate::colour::colour_of(p, 8)).collect();
        assert!(colours_a.is_disjoint(&colours_b));
        assert_eq!(plan.check(), Ok(()));
    }

    #[test]
    fn coloured_ram_is_contiguous_in_the_vm_and_the_vmm_window_matches_it() {
        let plan =
            component_plan(&llc_system(vec![coloured("a", 32, &[0, 1, 4])]), &layout()).unwrap();
        let size = |name: &str| plan.regions.iter().find(|r| r.name == name).unwrap().size;

        let (vmm, guest) = ram_maps(&plan, "a");

        assert_eq!(guest[0].1, 0x4000_0000);
        for w in guest.windows(2) {
            assert_eq!(w[0].1 + size(&w[0].0), w[1].1, "{} then {}", w[0].0, w[1].0);
        }
        let (last, at) = guest.last().unwrap();
        assert_eq!(at + size(last), 0x4000_0000 + (32 << 20));
        let shifted: Maps = guest
            .iter()
            .map(|(r, a)| (r.clone(), a - 0x4000_0000 + layout().vmm_ram_vaddr))
            .collect();
        assert_eq!(vmm, shifted);
    }

    #[test]
    fn an_uncoloured_vm_beside_a_coloured_one_keeps_its_one_ram_region() {
        let plain = vm("p", 1);
        let before = component_plan(&system(vec![plain.clone()]), &layout()).unwrap();

        let s = llc_system(vec![plain, coloured("c", 16, &[0, 1])]);
        let after = component_plan(&s, &layout()).unwrap();

        let ram = |plan: &SystemComponents| {
            plan.regions
                .iter()
                .find(|r| r.name == "p_ram")
                .cloned()
                .unwrap()
        };
        assert_eq!(ram(&after), ram(&before));
        assert_eq!(ram(&before).phys_addr, None);
        assert_eq!(ram_maps(&after, "p"), ram_maps(&before, "p"));
        assert!(!after.regions.iter().any(|r| r.name.starts_with("p_ram_")));
    }

    #[test]
    fn coloured_regions_render_with_their_physical_address_and_the_tools_page_size() {
        let x = system_file(&llc_system(vec![coloured("a", 16, &[6, 7])]), &layout()).unwrap();

        // 16 MiB, 2 of 8 colours: 2048 runs of two pages, the highest ending at the
        // pool's end (0xbf000000).
        assert_eq!(x.matches("<memory_region name=\"a_ram_").count(), 2048);
        assert!(x.contains(
            "<memory_region name=\"a_ram_2047\" size=\"0x2000\" phys_addr=\"0xbeffe000\" />"
        ));
        assert!(x.contains("<map mr=\"a_ram_2047\" vaddr=\"0x200ffe000\" perms=\"rw\" />"));
        assert!(x.contains("<map mr=\"a_ram_2047\" vaddr=\"0x40ffe000\" perms=\"rwx\" />"));
    }

    #[test]
    fn coloured_ram_wider_than_the_colour_pool_is_refused() {
        let mut lay = layout();
        lay.colour = Some(ColourLayout {
            pool_base: 0xBE00_0000,
            pool_end: 0xBF00_0000,
            max_pages: 1 << 16,
        });
        // 16 MiB in one colour of 8 spans 128 MiB; the pool has 16.
        let s = llc_system(vec![coloured("a", 16, &[3])]);

        let e = check(&s, &lay).unwrap_err();

        assert_eq!(
            e.to_string(),
            "VM a: 0x1000000 bytes of RAM in 1 of 8 cache colours span 0x8000000 bytes of physical memory; the colour pool 0xbe000000..0xbf000000 has 0x1000000 (give the VM more colours or less RAM)"
        );
    }

    #[test]
    fn coloured_ram_beyond_what_the_initialiser_can_map_is_refused() {
        let mut lay = layout();
        lay.colour.as_mut().unwrap().max_pages = 6000;
        let s = llc_system(vec![coloured("a", 16, &[0, 1]), coloured("b", 16, &[2, 3])]);

        assert_eq!(
            check(&s, &lay),
            Err(MicrokitError::TooManyColouredPages {
                pages: 8192,
                max: 6000,
                max_mib: 23
            })
        );
    }

    #[test]
    fn a_coloured_vm_on_a_board_without_a_colour_pool_is_refused() {
        let lay = MicrokitLayout {
            colour: None,
            ..layout()
        };

        assert_eq!(
            check(&llc_system(vec![coloured("a", 16, &[0])]), &lay),
            Err(MicrokitError::NoColourPool { vm: "a".into() })
        );
    }

    #[test]
    fn coloured_ram_in_more_regions_than_the_tool_handles_is_refused() {
        // Every other colour: every page is a region of its own. 32 MiB is 8192 of them,
        // 34 MiB 8704: 16 896 in all.
        let s = llc_system(vec![
            coloured("v0", 32, &[0, 2, 4, 6]),
            coloured("v1", 34, &[1, 3, 5, 7]),
        ]);
        let fewer = llc_system(vec![coloured("v0", 32, &[0, 2, 4, 6])]);

        let e = check(&s, &layout()).unwrap_err();

        assert_eq!(
            e,
            MicrokitError::TooManyColouredRegions {
                regions: 16_896,
                max: MAX_COLOURED_REGIONS
            }
        );
        assert_eq!(check(&fewer, &layout()), Ok(()));
    }

    // ---- passthrough --------------------------------------------------------------------

    /// A board like QEMU `virt` as the seL4 backend describes it (host.rs
    /// `qemu_virt_board`).
    fn test_board() -> BoardMap {
        let res = |what: &str, base: u64, size: u64, irqs: Vec<u32>| BoardResource {
            what: what.into(),
            base,
            size,
            irqs,
        };
        BoardMap {
            name: "qemu_virt_aarch64".into(),
            ram: (0x4000_0000, 0xC000_0000),
            ram_reserved: vec![
                res("the seL4 kernel", 0x6000_0000, 0x2000_0000, vec![]),
                res("the top", 0xBF00_0000, 0x100_0000, vec![]),
            ],
            devices: vec![
                res(
                    "virtio-mmio transports",
                    0x0a00_0000,
                    0x4000,
                    (48..80).collect(),
                ),
                res("PL031 RTC", 0x0901_0000, 0x1000, vec![34]),
            ],
            reserved: vec![res("the GIC", 0x0800_0000, 0x0100_0000, (0..32).collect())],
        }
    }

    fn disk(name: &str, page: u64, irq: u32) -> crate::model::PassthroughSpec {
        crate::model::PassthroughSpec {
            name: name.into(),
            mmio: vec![crate::model::RamRegion {
                base: page,
                size: 0x1000,
            }],
            irqs: vec![irq],
            dt: None,
            dma: crate::model::Dma::None,
        }
    }

    fn driver(devices: Vec<crate::model::PassthroughSpec>) -> VmSpec {
        let mut v = vm("drv", 1);
        v.passthrough = devices;
        v
    }

    /// The check's error for one VM `drv` with `devices` (and `tweak` applied).
    fn refusal(devices: Vec<crate::model::PassthroughSpec>, tweak: impl Fn(&mut VmSpec)) -> String {
        let mut v = driver(devices);
        tweak(&mut v);
        let sys = system(vec![vm("a", 1), v]);
        check(&sys, &layout()).unwrap_err().to_string()
    }

    #[test]
    fn a_passed_through_device_is_mapped_uncached_into_its_vm_only_and_its_irq_owned_by_its_vmm() {
        let mut v = driver(vec![disk("disk0", 0x0a00_3000, 79)]);
        v.ram_phys_addr = Some(0x4000_0000);
        let sys = system(vec![v]);

        let plan = component_plan(&sys, &layout()).unwrap();
        plan.check().unwrap();
        let x = plan.render();

        assert!(
            x.contains(
                "<memory_region name=\"drv_pt_disk0_0\" size=\"0x1000\" phys_addr=\"0xa003000\" />"
            ),
            "{x}"
        );
        assert!(
            x.contains("<memory_region name=\"drv_ram\" size=\"0x10000000\" page_size=\"0x200000\" phys_addr=\"0x40000000\" />"),
            "{x}"
        );
        let vmm = plan
            .components
            .iter()
            .find(|c| c.name == "drv_vmm")
            .unwrap();
        // The VMM owns the device's interrupt; the console UART's is the console PD's.
        assert_eq!(
            vmm.irqs,
            vec![IrqPlan {
                irq: 79,
                channel: passthrough_channel(0)
            }]
        );
        assert_eq!(passthrough_channel(0), 61);
        let console = plan.components.iter().find(|c| c.name == "keel_console");
        assert!(
            console.is_some_and(|c| c.irqs.iter().any(|i| i.irq == 33)),
            "{x}"
        );
        let vm_map = vmm
            .vm
            .as_ref()
            .unwrap()
            .maps
            .iter()
            .find(|m| m.region == "drv_pt_disk0_0")
            .unwrap();
        assert_eq!((vm_map.vaddr, vm_map.cached), (0x0a00_3000, false));
        let mapped_elsewhere = plan.components.iter().any(|c| {
            c.maps.iter().any(|m| m.region == "drv_pt_disk0_0")
                || (c.name != "drv_vmm"
                    && c.vm
                        .iter()
                        .flat_map(|v| &v.maps)
                        .any(|m| m.region == "drv_pt_disk0_0"))
        });
        assert!(!mapped_elsewhere, "{x}");
    }

    #[test]
    fn passing_through_the_console_uart_is_refused_naming_its_owner() {
        assert_eq!(
            refusal(vec![disk("u", 0x0900_0000, 48)], |_| {}),
            "VM drv: passthrough \"u\": mmio 0x9000000+0x1000 is the console UART (Keel's console input, in the first VM's VMM); it cannot be passed through"
        );
        assert_eq!(
            refusal(vec![disk("u", 0x0a00_3000, 33)], |_| {}),
            "VM drv: passthrough \"u\": irq 33 is the console UART (Keel's console input, in the first VM's VMM); it cannot be passed through"
        );
    }

    #[test]
    fn passing_through_the_gic_is_refused_naming_its_owner() {
        assert_eq!(
            refusal(vec![disk("g", 0x0804_0000, 48)], |_| {}),
            "VM drv: passthrough \"g\": mmio 0x8040000+0x1000 is the GIC; it cannot be passed through"
        );
    }

    #[test]
    fn a_device_the_board_does_not_have_is_refused_listing_what_it_has() {
        assert_eq!(
            refusal(vec![disk("x", 0x0c00_0000, 48)], |_| {}),
            "VM drv: passthrough \"x\": mmio 0xc000000+0x1000: the board qemu_virt_aarch64 has no such device; it has: virtio-mmio transports, PL031 RTC"
        );
        assert_eq!(
            refusal(vec![disk("x", 0x0a00_3000, 90)], |_| {}),
            "VM drv: passthrough \"x\": irq 90: the board qemu_virt_aarch64 has no such device; it has: virtio-mmio transports, PL031 RTC"
        );
        assert_eq!(
            refusal(vec![disk("x", 0x0a00_3000, 79)], |v| {
                v.passthrough[0].mmio[0].size = 0x2000
            }),
            "VM drv: passthrough \"x\": mmio 0xa003000+0x2000: the board qemu_virt_aarch64 has no such device; it has: virtio-mmio transports, PL031 RTC"
        );
    }

    #[test]
    fn passthrough_without_a_board_map_is_refused() {
        let sys = system(vec![driver(vec![disk("x", 0x0a00_3000, 79)])]);
        let lay = MicrokitLayout {
            board: None,
            ..layout()
        };

        assert_eq!(
            check(&sys, &lay).unwrap_err().to_string(),
            "VM drv: passthrough needs the board's physical map, which Keel does not have for this board"
        );
    }

    #[test]
    fn fixed_ram_outside_the_boards_ram_or_on_the_kernels_is_refused() {
        let with_phys = |p: u64| {
            refusal(vec![], move |v: &mut VmSpec| {
                v.ram_phys_addr = Some(p);
                v.memory = Memory::Size(256 << 20);
            })
        };
        assert_eq!(
            with_phys(0x3000_0000),
            "VM drv: ram_phys_addr: physical RAM 0x30000000..0x40000000 is not inside the board's RAM 0x40000000..0xc0000000"
        );
        assert_eq!(
            with_phys(0x5800_0000),
            "VM drv: ram_phys_addr: physical RAM 0x58000000..0x68000000 overlaps the seL4 kernel (0x60000000..0x80000000)"
        );
    }

    #[test]
    fn fixed_ram_on_a_coloured_vms_pages_is_refused_naming_it() {
        let mut v = vm("drv", 1);
        v.ram_phys_addr = Some(0xBE00_0000);
        v.memory = Memory::Size(16 << 20);
        let sys = llc_system(vec![coloured("c", 16, &[0, 1, 2, 3, 4, 5, 6, 7]), v]);
        let lay = MicrokitLayout {
            board: Some(BoardMap {
                ram_reserved: vec![],
                ..test_board()
            }),
            ..layout()
        };

        assert_eq!(
            check(&sys, &lay).unwrap_err().to_string(),
            "VM drv: ram_phys_addr: physical RAM 0xbe000000..0xbf000000 overlaps the coloured RAM of VM c"
        );
    }

    #[test]
    fn more_passed_through_irqs_and_interfaces_than_channels_are_refused() {
        let mut d = disk("many", 0x0c00_0000, 100);
        d.irqs = (100..158).collect();
        let mut v = driver(vec![d]);
        v.nics = vec![nic("lan0"), nic("lan1")];
        let nets = vec![NetworkSpec::new("lan0"), NetworkSpec::new("lan1")];
        let sys = System::with_networks("s".into(), None, vec![v], nets).unwrap();
        let mut board = test_board();
        board.devices.push(BoardResource {
            what: "a wide device".into(),
            base: 0x0c00_0000,
            size: 0x1000,
            irqs: (100..200).collect(),
        });
        let lay = MicrokitLayout {
            board: Some(board),
            ..layout()
        };

        assert_eq!(
            check(&sys, &lay).unwrap_err().to_string(),
            "VM drv: 58 passed-through interrupts and 2 network interfaces; the seL4 backend gives a VMM at most 59 of the two together"
        );
    }

    #[test]
    fn two_regions_at_one_physical_address_are_refused_by_the_component_check() {
        let sys = system(vec![driver(vec![disk("d", 0x0a00_3000, 79)])]);
        let mut plan = component_plan(&sys, &layout()).unwrap();
        plan.regions.push(RegionPlan {
            name: "intruder".into(),
            size: 0x1000,
            page_size: None,
            phys_addr: Some(0x0a00_3000),
        });

        assert!(matches!(
            plan.check(),
            Err(ComponentError::PhysicalOverlap { .. })
        ));
    }
}
