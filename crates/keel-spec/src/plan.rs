//! The plan of a system: what every backend builds, decided once from the validated
//! description.
//!
//! A [`System`] says what the integrator asked for; a [`SystemPlan`] says where everything
//! goes: each VM's RAM regions, its platform devices, the slot, MMIO window and interrupt of
//! every virtio device, and where each vCPU runs. Both backends consume the same plan, so
//! the same TOML gives the same device slots and interrupts on KVM and on seL4 (the
//! seL4-specific part, components, shared regions and channels, is planned on top of it in
//! [`crate::microkit`]).
//!
//! Device order is fixed: disks in file order, then console ports in file order, then
//! network interfaces in file order, then the rng, then the vsock device. Slot `i` of an arch is always the same window and interrupt.
//!
//! The plan types are serde-serializable (no_std): the seL4 backend hands a VM's plan to its
//! VMM protection domain as it is, so the PD builds exactly what `plan_vm` decided.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use keel_core::arch::aarch64::layout as arm64;
use keel_core::arch::x86_64::layout as x86;

use crate::layout::ram_layout;
use crate::model::{Access, Arch, MacAddr, NetworkSpec, SharedSpec, System, VmSpec};

/// What a planned virtio device is, and which entry of its VM's description it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    /// virtio-blk for `disks[disk]`.
    Block {
        /// Index into [`VmSpec::disks`].
        disk: usize,
    },
    /// virtio-console for `consoles[port]`.
    Console {
        /// Index into [`VmSpec::consoles`].
        port: usize,
    },
    /// virtio-net for `nics[nic]`.
    Net {
        /// Index into [`VmSpec::nics`] (and [`VmPlan::nics`]).
        nic: usize,
    },
    /// virtio-rng.
    Rng,
    /// A storage VM's doorbell (docs/driver-vms.md): a virtio-console whose input says
    /// "a client published requests" and whose output byte `i` rings client `i` of
    /// [`VmPlan::serves`]. Last of the VM's devices; only in a VM that serves disks.
    Doorbell,
    /// virtio-vsock ([`VmPlan::vsock`]).
    Vsock,
}

impl DeviceKind {
    /// The virtio device's name (`virtio-blk`, …).
    pub const fn virtio_name(self) -> &'static str {
        match self {
            DeviceKind::Block { .. } => "virtio-blk",
            DeviceKind::Console { .. } => "virtio-console",
            DeviceKind::Net { .. } => "virtio-net",
            DeviceKind::Rng => "virtio-rng",
            DeviceKind::Doorbell => "virtio-console",
            DeviceKind::Vsock => "virtio-vsock",
        }
    }
}

/// One virtio-mmio device of a VM: where the guest finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DevicePlan {
    /// What it is.
    pub kind: DeviceKind,
    /// Its slot: the index among the VM's virtio devices.
    pub slot: u32,
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// Its interrupt: the GSI on x86, the SPI number (INTID 32 + n) on arm64.
    pub irq: u32,
}

impl fmt::Display for DevicePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} slot {} at {:#x}+{:#x} irq {}",
            self.kind.virtio_name(),
            self.slot,
            self.base,
            self.size,
            self.irq
        )
    }
}

/// The platform UART of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SerialPlan {
    /// x86: a 16550 on the port bus.
    Port {
        /// First port (COM1: 0x3f8).
        port: u16,
        /// Its GSI (COM1: 4).
        irq: u32,
    },
    /// arm64: a 16550-compatible UART in MMIO, level-triggered SPI.
    Mmio {
        /// Guest-physical base.
        base: u64,
        /// Window size.
        size: u64,
        /// SPI number.
        irq: u32,
    },
}

/// Where a VM's vCPUs run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlan {
    /// Physical CPUs of vCPU `i`, if the description places it.
    pub vcpu_pcpus: Option<Vec<crate::model::CpuSet>>,
    /// Scheduling priority (0..=254).
    pub priority: u8,
    /// CPU time per period, microseconds.
    pub budget_us: u64,
    /// Period, microseconds.
    pub period_us: u64,
}

/// A disk as the guest sees it (the backend holds where its bytes are).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiskPlan {
    /// Offered read-only (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// The serial returned for `VIRTIO_BLK_T_GET_ID`: the description's `id`, else `disk<i>`.
    pub id: String,
    /// Served by a storage VM: the client end of its forwarding link.
    pub served: Option<ServedDiskPlan>,
}

/// Where guest-physical forwarding regions start in a storage VM (512 GiB, above any RAM
/// Keel lays out and below the 1 TiB guest-physical limit).
pub const FORWARD_WINDOW_BASE: u64 = 0x80_0000_0000;
/// Alignment of each forwarding region in a storage VM's guest-physical space.
pub const FORWARD_REGION_ALIGN: u64 = 2 << 20;
/// How long a client VMM waits for its storage VM before failing a request (an I/O error
/// for the guest).
pub const FORWARD_TIMEOUT_MS: u32 = 5000;

/// The client end of a forwarding link (a disk served by a storage VM).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServedDiskPlan {
    /// The link (index into [`SystemPlan::links`]).
    pub link: usize,
    /// The storage VM.
    pub server: String,
    /// The disk's size (the client's range) in bytes.
    pub size: u64,
    /// Slots per ring.
    pub slots: u64,
    /// Data bytes per request.
    pub max_data: u32,
    /// Bytes of the forwarding region.
    pub region_len: u64,
    /// How long the client waits for an answer before failing a request.
    pub timeout_ms: u32,
}

/// The storage end of a forwarding link: a client this VM serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServePlan {
    /// The link (index into [`SystemPlan::links`]).
    pub link: usize,
    /// The client VM.
    pub client: String,
    /// The client's disk index.
    pub client_disk: usize,
    /// This VM's disk holding the range.
    pub server_disk: usize,
    /// First byte of the range on that disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Guest-physical address of the forwarding region in this VM (outside its RAM).
    pub gpa: u64,
    /// Bytes of the region.
    pub region_len: u64,
    /// Slots per ring.
    pub slots: u64,
    /// Data bytes per request.
    pub max_data: u32,
}

/// A forwarding link of the system: client disk → storage VM range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkPlan {
    /// The client VM.
    pub client: String,
    /// Its disk.
    pub client_disk: usize,
    /// The storage VM.
    pub server: String,
    /// The client's index among the storage VM's [`VmPlan::serves`] (the doorbell byte).
    pub server_index: usize,
    /// Bytes of the region.
    pub region_len: u64,
}

/// A network interface as the guest and its switch port see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NicPlan {
    /// The network (index into [`SystemPlan::networks`]).
    pub network: usize,
    /// The network's name.
    pub network_name: String,
    /// Its port on the network's switch (index into [`NetworkPlan::ports`]).
    pub port: u16,
    /// Its MAC address (given or derived).
    pub mac: MacAddr,
    /// Frame slots of each of the port's two rings.
    pub slots: u32,
}

/// A shared region as one VM sees it (`[[vm.shared]]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SharedMapPlan {
    /// The region's name (`[[shared]] name`).
    pub region: String,
    /// Guest-physical base in this VM.
    pub base: u64,
    /// Size in bytes (the region's).
    pub size: u64,
    /// What this VM may do with it.
    pub access: Access,
}

impl SharedMapPlan {
    /// Whether `gpa` falls inside this mapping.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa - self.base < self.size
    }
}

/// A shared region of the system and the VMs that map it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SharedRegionPlan {
    /// The region's name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The VMs that map it, in file order, with each one's mapping.
    pub users: Vec<(String, SharedMapPlan)>,
}

/// A VM's virtio-vsock device: its CID, its host socket and the peers its guest may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockPlan {
    /// The guest's CID.
    pub cid: u32,
    /// Linux: the host Unix socket path (`[vm.vsock] socket`), if any.
    pub socket: Option<String>,
    /// The VMs this guest may reach (`[vsock] allow`), in the order of the allow list.
    pub peers: Vec<VsockPeerPlan>,
}

/// Slots of each of the two rings a `[vsock] allow` pair's VMMs share (keel-net frame rings:
/// 2048-byte slots, packets of at most 1514 bytes; [`ring_window_len`] bytes each).
pub const VSOCK_RING_SLOTS: u32 = 256;

/// One peer of a VM's vsock device: another VM of a `[vsock] allow` pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockPeerPlan {
    /// Index of the pair in `[vsock] allow` (names the pair's ring pair on every backend).
    pub pair: usize,
    /// The peer VM's name.
    pub vm: String,
    /// The peer guest's CID.
    pub cid: u32,
    /// Whether this VM is the pair's first (its ring to the peer is the pair's first ring).
    pub first: bool,
}

/// Everything a backend needs to build one VM, decided from its description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    /// The VM's name.
    pub name: String,
    /// Its architecture.
    pub arch: Arch,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM regions, `(gpa, size)`, sorted as laid out.
    pub ram: Vec<(u64, u64)>,
    /// The kernel command line as the description gives it (the firmware description adds
    /// the device locations where the arch needs them on the command line).
    pub cmdline: String,
    /// The platform UART.
    pub serial: SerialPlan,
    /// virtio devices, in slot order.
    pub devices: Vec<DevicePlan>,
    /// The disks, indexed by [`DeviceKind::Block`]'s `disk`.
    pub disks: Vec<DiskPlan>,
    /// Placement and scheduling.
    pub cpus: CpuPlan,
    /// The network interfaces, indexed by [`DeviceKind::Net`]'s `nic`.
    pub nics: Vec<NicPlan>,
    /// The shared regions this VM maps, in file order. Nothing else besides its RAM and
    /// devices is backed in its guest-physical space (except a storage VM's forwarding
    /// regions, [`VmPlan::serves`]).
    pub shared: Vec<SharedMapPlan>,
    /// The clients this storage VM serves, in link order (empty for other VMs). Its
    /// command line carries them for the agent (`keel.blk=`, `keel.blkbell=`).
    pub serves: Vec<ServePlan>,
    /// Physical devices this VM owns (`[[vm.passthrough]]`), in file order; only the seL4
    /// backend builds them.
    pub passthrough: Vec<PassthroughPlan>,
    /// Its virtio-vsock device ([`DeviceKind::Vsock`]), if any.
    pub vsock: Option<VsockPlan>,
}

/// A passed-through device as its VM sees it: its register ranges at their physical
/// addresses, its interrupts at their physical INTIDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PassthroughPlan {
    /// The device's name (`[[vm.passthrough]] name`).
    pub name: String,
    /// `(base, size)` of each register range, guest-physical = physical.
    pub mmio: Vec<(u64, u64)>,
    /// GIC INTIDs, virtual = physical.
    pub irqs: Vec<u32>,
    /// The guest's device-tree node: `compatible` and `reg` ranges, if any.
    pub dt: Option<(String, Vec<(u64, u64)>)>,
    /// Whether it DMAs (its VM's RAM is then identity-mapped).
    pub dma_identity: bool,
}

impl VmPlan {
    /// Total guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|&(_, s)| s).sum()
    }
}

/// Why a VM cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An interface on a network that is not given (a `System` never has one).
    #[error("vm {vm:?}: network {network:?} is not declared")]
    UnknownNetwork {
        /// VM name.
        vm: String,
        /// The network.
        network: String,
    },
    /// More virtio devices than the arch has slots for.
    #[error("vm {vm:?}: {devices} virtio devices; the {arch} platform has {slots} slots")]
    TooManyDevices {
        /// VM name.
        vm: String,
        /// The architecture.
        arch: Arch,
        /// Devices asked for.
        devices: usize,
        /// Slots available.
        slots: u32,
    },
    /// A served disk whose storage VM is not in the system.
    #[error("vm {vm:?}: disk {disk}: storage vm {server:?} is not in the system")]
    UnknownServer {
        /// VM name.
        vm: String,
        /// Its disk.
        disk: usize,
        /// The storage VM named.
        server: String,
    },
    /// A storage VM's forwarding regions collide with one of its shared mappings.
    #[error(
        "vm {vm:?}: its forwarding regions [{start:#x}, {end:#x}) overlap its shared mapping of {region:?}"
    )]
    ForwardWindow {
        /// VM name.
        vm: String,
        /// First byte of the window.
        start: u64,
        /// End of the window.
        end: u64,
        /// The shared region.
        region: String,
    },
    /// A passed-through device on the guest-physical window or interrupt of something the
    /// VMM emulates for the VM (a virtio device, the UART, the GIC).
    #[error("vm {vm:?}: passthrough {name:?}: {what} is taken by the VM's own {other}")]
    PassthroughOverlap {
        /// VM name.
        vm: String,
        /// The device.
        name: String,
        /// `mmio 0x...+0x...` or `irq N`.
        what: String,
        /// What Keel put there (`virtio device in slot 0 (0xa000000+0x200, irq 48)`).
        other: String,
    },
    /// A shared mapping of a region that is not given (a `System` never has one; a VM
    /// with shared regions is planned with its system, [`plan_vm_of`]).
    #[error("vm {vm:?}: shared region {region:?} is not declared")]
    UnknownShared {
        /// VM name.
        vm: String,
        /// The region.
        region: String,
    },
}

/// Slot `index` of `arch`: `(base, size, irq)`, or `None` past the last slot.
pub fn virtio_slot(arch: Arch, index: u32) -> Option<(u64, u64, u32)> {
    match arch {
        Arch::X86_64 => Some((
            x86::virtio_mmio_base(index)?,
            x86::VIRTIO_MMIO_SIZE,
            x86::virtio_mmio_gsi(index)?,
        )),
        Arch::Aarch64 => (index < arm64::VIRTIO_MMIO_SLOTS).then(|| {
            let d = arm64::MmioDevice::virtio_slot(index);
            (d.base, d.size, d.spi)
        }),
    }
}

/// How many virtio slots `arch` has.
pub const fn virtio_slots(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => x86::VIRTIO_MMIO_MAX_DEVICES,
        Arch::Aarch64 => arm64::VIRTIO_MMIO_SLOTS,
    }
}

/// The platform UART of `arch`.
pub const fn serial(arch: Arch) -> SerialPlan {
    match arch {
        Arch::X86_64 => SerialPlan::Port {
            port: x86::COM1_PORT,
            irq: x86::COM1_GSI,
        },
        Arch::Aarch64 => SerialPlan::Mmio {
            base: arm64::UART_BASE,
            size: arm64::UART_SIZE,
            irq: arm64::UART_SPI,
        },
    }
}

/// Plan one VM on its own: a VM with network interfaces needs its system
/// ([`plan_vm_of`]) and is refused here.
pub fn plan_vm(vm: &VmSpec) -> Result<VmPlan, PlanError> {
    plan_vm_in_system(vm, core::slice::from_ref(vm), &[], &[], &[])
}

/// Plan VM `vm` of `system` (its interfaces know their network, port and MAC).
pub fn plan_vm_of(system: &System, vm: &VmSpec) -> Result<VmPlan, PlanError> {
    plan_vm_in_system(
        vm,
        system.vms(),
        system.networks(),
        system.shared(),
        system.vsock_allow(),
    )
}

fn plan_vm_in_system(
    vm: &VmSpec,
    vms: &[VmSpec],
    networks: &[NetworkSpec],
    shared: &[SharedSpec],
    vsock_allow: &[(String, String)],
) -> Result<VmPlan, PlanError> {
    let mut plan = plan_devices(vm, vms)?;
    plan_forwarding(&mut plan, vm, vms)?;
    plan.vsock = vm.vsock.as_ref().map(|v| VsockPlan {
        cid: v.cid,
        socket: v.socket.as_ref().map(|p| String::from(p.as_str())),
        peers: vsock_peers(vm, vms, vsock_allow),
    });
    for map in &vm.shared {
        let region = shared
            .iter()
            .find(|r| r.name == map.region)
            .ok_or_else(|| PlanError::UnknownShared {
                vm: vm.name.clone(),
                region: map.region.clone(),
            })?;
        plan.shared.push(SharedMapPlan {
            region: map.region.clone(),
            base: map.base,
            size: region.size,
            access: map.access,
        });
    }
    for (i, nic) in vm.nics.iter().enumerate() {
        let network = networks
            .iter()
            .position(|n| n.name == nic.network)
            .ok_or_else(|| PlanError::UnknownNetwork {
                vm: vm.name.clone(),
                network: nic.network.clone(),
            })?;
        let port = network_members(&networks[network], vms)
            .position(|(v, _)| v.name == vm.name)
            .unwrap_or(0);
        plan.nics.push(NicPlan {
            network,
            network_name: nic.network.clone(),
            port: u16::try_from(port).unwrap_or(u16::MAX),
            mac: System::nic_mac(vm, i).unwrap_or(MacAddr([0; 6])),
            slots: networks[network].slots,
        });
    }
    Ok(plan)
}

/// The forwarding links of `vm` (a client's served disks, a storage VM's clients), and the
/// storage VM's command line for its agent.
fn plan_forwarding(plan: &mut VmPlan, vm: &VmSpec, vms: &[VmSpec]) -> Result<(), PlanError> {
    use keel_core::ring::forward::ForwardGeometry;
    let g = ForwardGeometry::DEFAULT;
    let all: Vec<(usize, usize)> = links(vms).collect();
    for (i, disk) in vm.disks.iter().enumerate() {
        let Some(s) = &disk.served else { continue };
        let Some(server) = vms.iter().find(|v| v.name == s.server) else {
            return Err(PlanError::UnknownServer {
                vm: vm.name.clone(),
                disk: i,
                server: s.server.clone(),
            });
        };
        let _ = server;
        let link = all
            .iter()
            .position(|&(c, d)| vms[c].name == vm.name && d == i)
            .unwrap_or(0);
        plan.disks[i].served = Some(ServedDiskPlan {
            link,
            server: s.server.clone(),
            size: s.size,
            slots: g.slots,
            max_data: g.max_data as u32,
            region_len: default_region_len(),
            timeout_ms: FORWARD_TIMEOUT_MS,
        });
    }
    let served = links_served_by(vm, vms);
    if served.is_empty() {
        return Ok(());
    }
    let step = default_region_len().next_multiple_of(FORWARD_REGION_ALIGN);
    let mut gpa = FORWARD_WINDOW_BASE;
    let mut args = alloc::string::String::new();
    for (k, c, d) in served {
        let client = &vms[c];
        let s = client.disks[d]
            .served
            .as_ref()
            .expect("a link is a served disk");
        let serve = ServePlan {
            link: k,
            client: client.name.clone(),
            client_disk: d,
            server_disk: s.server_disk,
            start: s.start,
            size: s.size,
            read_only: client.disks[d].read_only,
            gpa,
            region_len: default_region_len(),
            slots: g.slots,
            max_data: g.max_data as u32,
        };
        // A passed-through device is found by its name (the serial it must report).
        let serial = match &s.server_passthrough {
            Some(dev) => dev.clone(),
            None => vm
                .disks
                .get(s.server_disk)
                .and_then(|sd| sd.id.clone())
                .unwrap_or_else(|| alloc::format!("disk{}", s.server_disk)),
        };
        args.push_str(&alloc::format!(
            " keel.blk={:#x},{:#x},{},{},{},{:#x},{:#x},{}",
            serve.gpa,
            serve.region_len,
            serve.slots,
            serve.max_data,
            serial,
            serve.start,
            serve.size,
            if serve.read_only { "ro" } else { "rw" }
        ));
        plan.serves.push(serve);
        gpa += step;
    }
    for m in &plan.shared {
        if m.base < gpa && FORWARD_WINDOW_BASE < m.base.saturating_add(m.size) {
            return Err(PlanError::ForwardWindow {
                vm: vm.name.clone(),
                start: FORWARD_WINDOW_BASE,
                end: gpa,
                region: m.region.clone(),
            });
        }
    }
    // Each region is mapped like a shared region of the storage VM alone (the client VMM
    // maps it in its own address space, never in its guest's).
    for serve in &plan.serves {
        plan.shared.push(SharedMapPlan {
            region: forward_region_name(serve.link),
            base: serve.gpa,
            size: serve.region_len,
            access: Access::ReadWrite,
        });
    }
    // The doorbell is the VM's last virtio-console: /dev/hvc<consoles> in the guest.
    args.push_str(&alloc::format!(" keel.blkbell=hvc{}", vm.consoles.len()));
    plan.cmdline.push_str(&args);
    Ok(())
}

/// The name of link `link`'s forwarding region among a plan's shared regions (not a name a
/// description can give: `:` is not allowed there).
pub fn forward_region_name(link: usize) -> String {
    alloc::format!("fwd:{link}")
}

/// The vsock peers of `vm`: the other VM of each allow pair naming it (a validated system's
/// pairs name VMs with vsock).
fn vsock_peers(vm: &VmSpec, vms: &[VmSpec], allow: &[(String, String)]) -> Vec<VsockPeerPlan> {
    allow
        .iter()
        .enumerate()
        .filter_map(|(pair, (a, b))| {
            let (other, first) = if *a == vm.name {
                (b, true)
            } else if *b == vm.name {
                (a, false)
            } else {
                return None;
            };
            let cid = vms.iter().find(|v| v.name == *other)?.vsock.as_ref()?.cid;
            Some(VsockPeerPlan {
                pair,
                vm: other.clone(),
                cid,
                first,
            })
        })
        .collect()
}

/// The members of `net` among `vms`: each VM attached, with its interface index, in file
/// order (a VM is attached at most once per network).
fn network_members<'a>(
    net: &'a NetworkSpec,
    vms: &'a [VmSpec],
) -> impl Iterator<Item = (&'a VmSpec, usize)> + 'a {
    vms.iter().filter_map(move |vm| {
        vm.nics
            .iter()
            .position(|n| n.network == net.name)
            .map(|i| (vm, i))
    })
}

/// The forwarding links of `vms`, in order: every served disk of every VM, clients in file
/// order, disks in order. `(client index, disk index)`.
fn links(vms: &[VmSpec]) -> impl Iterator<Item = (usize, usize)> + '_ {
    vms.iter().enumerate().flat_map(|(c, vm)| {
        vm.disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.served.is_some())
            .map(move |(d, _)| (c, d))
    })
}

/// The links served by `server` among `vms`: `(link index, client index, disk index)`.
fn links_served_by(server: &VmSpec, vms: &[VmSpec]) -> Vec<(usize, usize, usize)> {
    links(vms)
        .enumerate()
        .filter(|&(_, (c, d))| {
            vms[c].disks[d]
                .served
                .as_ref()
                .is_some_and(|s| s.server == server.name)
        })
        .map(|(k, (c, d))| (k, c, d))
        .collect()
}

/// Bytes of a forwarding region of the default geometry.
fn default_region_len() -> u64 {
    keel_core::ring::forward::ForwardGeometry::DEFAULT.region_len() as u64
}

fn plan_devices(vm: &VmSpec, vms: &[VmSpec]) -> Result<VmPlan, PlanError> {
    let serves = !links_served_by(vm, vms).is_empty();
    let kinds = (0..vm.disks.len())
        .map(|disk| DeviceKind::Block { disk })
        .chain((0..vm.consoles.len()).map(|port| DeviceKind::Console { port }))
        .chain((0..vm.nics.len()).map(|nic| DeviceKind::Net { nic }))
        .chain(vm.rng.then_some(DeviceKind::Rng))
        .chain(vm.vsock.is_some().then_some(DeviceKind::Vsock))
        .chain(serves.then_some(DeviceKind::Doorbell));
    let count = vm.disks.len()
        + vm.consoles.len()
        + vm.nics.len()
        + usize::from(vm.rng)
        + usize::from(vm.vsock.is_some())
        + usize::from(serves);
    let mut devices = Vec::new();
    for (slot, kind) in kinds.enumerate() {
        let too_many = || PlanError::TooManyDevices {
            vm: vm.name.clone(),
            arch: vm.arch,
            devices: count,
            slots: virtio_slots(vm.arch),
        };
        let slot = u32::try_from(slot).map_err(|_| too_many())?;
        let (base, size, irq) = virtio_slot(vm.arch, slot).ok_or_else(too_many)?;
        devices.push(DevicePlan {
            kind,
            slot,
            base,
            size,
            irq,
        });
    }
    let placement = vm.placement.clone().unwrap_or_default();
    let passthrough = plan_passthrough(vm, &devices_of(vm.arch, &devices))?;
    Ok(VmPlan {
        name: vm.name.clone(),
        arch: vm.arch,
        vcpus: vm.vcpus,
        ram: ram_layout(vm),
        cmdline: vm.cmdline.clone(),
        serial: serial(vm.arch),
        devices,
        disks: vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskPlan {
                read_only: d.read_only,
                id: d.id.clone().unwrap_or_else(|| alloc::format!("disk{i}")),
                served: None,
            })
            .collect(),
        cpus: CpuPlan {
            vcpu_pcpus: placement.pcpus,
            priority: placement.priority,
            budget_us: placement.budget_us,
            period_us: placement.period_us,
        },
        nics: Vec::new(),
        shared: Vec::new(),
        serves: Vec::new(),
        passthrough,
        vsock: None,
    })
}

/// What the VMM itself places in a VM's guest-physical space: `(what, base, size, INTID)`.
fn devices_of(arch: Arch, devices: &[DevicePlan]) -> Vec<(String, u64, u64, Option<u32>)> {
    let mut v: Vec<(String, u64, u64, Option<u32>)> = devices
        .iter()
        .map(|d| {
            (
                alloc::format!(
                    "virtio device in slot {} ({:#x}+{:#x}, irq {})",
                    d.slot,
                    d.base,
                    d.size,
                    d.irq + 32
                ),
                d.base,
                d.size,
                (arch == Arch::Aarch64).then_some(d.irq + 32),
            )
        })
        .collect();
    if arch == Arch::Aarch64 {
        v.push((
            alloc::format!(
                "UART ({:#x}+{:#x}, irq {})",
                arm64::UART_BASE,
                arm64::UART_SIZE,
                arm64::UART_SPI + 32
            ),
            arm64::UART_BASE,
            arm64::UART_SIZE,
            Some(arm64::UART_SPI + 32),
        ));
        v.push((
            "GIC distributor".into(),
            arm64::GIC_DIST_BASE,
            arm64::GIC_DIST_SIZE,
            None,
        ));
        v.push((
            "GIC CPU interface".into(),
            arm64::GICV2_CPU_BASE,
            arm64::GICV2_CPU_SIZE,
            None,
        ));
    }
    v
}

/// The VM's passed-through devices, refused where they meet what the VMM emulates.
fn plan_passthrough(
    vm: &VmSpec,
    own: &[(String, u64, u64, Option<u32>)],
) -> Result<Vec<PassthroughPlan>, PlanError> {
    let mut out = Vec::new();
    for p in &vm.passthrough {
        let taken = |what: String, other: &str| PlanError::PassthroughOverlap {
            vm: vm.name.clone(),
            name: p.name.clone(),
            what,
            other: other.into(),
        };
        for r in &p.mmio {
            let end = r.base.saturating_add(r.size);
            if let Some((other, ..)) = own
                .iter()
                .find(|(_, b, l, _)| r.base < b.saturating_add(*l) && *b < end)
            {
                return Err(taken(
                    alloc::format!("mmio {:#x}+{:#x}", r.base, r.size),
                    other,
                ));
            }
        }
        for &irq in &p.irqs {
            if let Some((other, ..)) = own.iter().find(|(.., q)| *q == Some(irq)) {
                return Err(taken(alloc::format!("irq {irq}"), other));
            }
        }
        out.push(PassthroughPlan {
            name: p.name.clone(),
            mmio: p.mmio.iter().map(|r| (r.base, r.size)).collect(),
            irqs: p.irqs.clone(),
            dt: p.dt.as_ref().map(|dt| {
                (
                    dt.compatible.clone(),
                    dt.reg.iter().map(|r| (r.base, r.size)).collect(),
                )
            }),
            dma_identity: p.dma == crate::model::Dma::Identity,
        });
    }
    Ok(out)
}

/// Who holds a port of a network's switch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortOwner {
    /// Interface `nic` of VM `vm`.
    Vm {
        /// The VM's name.
        vm: String,
        /// Index into its [`VmPlan::nics`].
        nic: usize,
    },
    /// The host tap interface of the network's uplink (Linux only).
    Uplink {
        /// The tap interface's name.
        tap: String,
    },
    /// Spare port `slot` of the dynamic pool (`keel daemon` on Linux, networks in
    /// `[limits] networks`): free until a dynamic VM is given it ([`plan_with_pool`]).
    Pool {
        /// Its index among the network's pool ports.
        slot: u16,
    },
}

/// One port of a network's switch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortPlan {
    /// Who holds it.
    pub owner: PortOwner,
    /// The MAC address it may send from (`None` for the uplink: any address no VM port
    /// declares).
    pub mac: Option<MacAddr>,
}

/// The switch of one network, sized at plan time: everything it allocates follows from
/// these numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// The network's name.
    pub name: String,
    /// The ports: the attached VMs in file order, then the uplink if any.
    pub ports: Vec<PortPlan>,
    /// Pairs of ports that may exchange frames (`a < b`).
    pub allow: Vec<(u16, u16)>,
    /// Frame slots of each ring of each port.
    pub slots: u32,
    /// Entries of the MAC learning table.
    pub mac_table: u32,
    /// Frames each port's output queue in the switch holds.
    pub queue_depth: u32,
    /// Of those, how many flooded frames (broadcast, multicast, unknown unicast) may take.
    pub flood_depth: u32,
    /// Learned entries not refreshed for this long are forgotten.
    pub ageing_ms: u64,
    /// Storm control: flooded frames (broadcast, multicast, unknown unicast) each port may
    /// send per second; more are dropped (`drop_storm`).
    pub flood_rate: u32,
    /// Storm control: flooded frames a port may send at once after a quiet period.
    pub flood_burst: u32,
}

impl NetworkPlan {
    /// Bytes of one ring window of this network (see `keel_net::ring::window_len`).
    pub fn ring_bytes(&self) -> u64 {
        ring_window_len(self.slots)
    }
}

/// Bytes of a frame ring window with `slots` slots: a 256-byte header and 2048-byte slots
/// (the same arithmetic as `keel_net::ring::window_len`, which keel-net's tests compare
/// with this one).
pub const fn ring_window_len(slots: u32) -> u64 {
    256 + slots as u64 * 2048
}

/// The plan of a whole system: one [`VmPlan`] per VM, in file order, and one
/// [`NetworkPlan`] per network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemPlan {
    /// The system's name.
    pub name: String,
    /// The VMs.
    pub vms: Vec<VmPlan>,
    /// The networks, in file order.
    pub networks: Vec<NetworkPlan>,
    /// The shared regions, in file order, each with its users.
    pub shared: Vec<SharedRegionPlan>,
    /// The block-forwarding links (served disks), clients in file order.
    pub links: Vec<LinkPlan>,
}

impl SystemPlan {
    /// The plan of the VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&VmPlan> {
        self.vms.iter().find(|v| v.name == name)
    }
}

/// Plan every VM, network and shared region of `system`.
pub fn plan(system: &System) -> Result<SystemPlan, PlanError> {
    let vms: Vec<VmPlan> = system
        .vms()
        .iter()
        .map(|vm| plan_vm_of(system, vm))
        .collect::<Result<_, _>>()?;
    let shared = system
        .shared()
        .iter()
        .map(|region| SharedRegionPlan {
            name: region.name.clone(),
            size: region.size,
            users: vms
                .iter()
                .flat_map(|vm| {
                    vm.shared
                        .iter()
                        .filter(|m| m.region == region.name)
                        .map(|m| (vm.name.clone(), m.clone()))
                })
                .collect(),
        })
        .collect();
    let links = plan_links(&vms);
    let mut shared: Vec<SharedRegionPlan> = shared;
    for vm in &vms {
        for serve in &vm.serves {
            let name = forward_region_name(serve.link);
            if let Some(map) = vm.shared.iter().find(|m| m.region == name) {
                shared.push(SharedRegionPlan {
                    name,
                    size: serve.region_len,
                    users: alloc::vec![(vm.name.clone(), map.clone())],
                });
            }
        }
    }
    Ok(SystemPlan {
        name: system.name().into(),
        vms,
        networks: system
            .networks()
            .iter()
            .map(|net| plan_network(net, system.vms()))
            .collect(),
        shared,
        links,
    })
}

/// The system's links, from its VMs' plans.
fn plan_links(vms: &[VmPlan]) -> Vec<LinkPlan> {
    let mut links: Vec<LinkPlan> = Vec::new();
    for vm in vms {
        for (i, d) in vm.disks.iter().enumerate() {
            if let Some(s) = &d.served {
                let server_index = vms
                    .iter()
                    .find(|v| v.name == s.server)
                    .and_then(|v| v.serves.iter().position(|c| c.link == s.link))
                    .unwrap_or(0);
                links.push(LinkPlan {
                    client: vm.name.clone(),
                    client_disk: i,
                    server: s.server.clone(),
                    server_index,
                    region_len: s.region_len,
                });
            }
        }
    }
    links
}

/// [`plan`], plus the dynamic pool's spare ports (what `keel daemon` runs on Linux): each
/// network in `[limits] networks` gets `max_vms` ports owned by [`PortOwner::Pool`], after
/// its members' and before its uplink (which stays last), each with the MAC [`pool_macs`] fixes. Allowed pairs:
/// without an allow list every pair of ports, pool ports included; with one, a pair naming
/// [`NetworkSpec::POOL`] allows the other member with every pool port (`["pool", "pool"]`:
/// the pool ports with each other), and pool ports talk to no one else.
pub fn plan_with_pool(system: &System) -> Result<SystemPlan, PlanError> {
    let mut p = plan(system)?;
    let Some(limits) = system.limits() else {
        return Ok(p);
    };
    let count = usize::try_from(limits.max_vms).unwrap_or(usize::MAX);
    // Unique in the system, as members' MACs are: a dynamic VM on two networks gets two.
    let mut taken: Vec<MacAddr> = p
        .networks
        .iter()
        .flat_map(|n| n.ports.iter().filter_map(|p| p.mac))
        .collect();
    for (net, spec) in p.networks.iter_mut().zip(system.networks()) {
        if count == 0 || !limits.networks.contains(&spec.name) {
            continue;
        }
        // Pool ports go before the uplink, which stays last (the switch process serves the
        // inherited ports in order, then the uplink).
        let uplink = net
            .ports
            .last()
            .filter(|p| matches!(p.owner, PortOwner::Uplink { .. }))
            .cloned();
        if uplink.is_some() {
            net.ports.pop();
        }
        let first = net.ports.len();
        let macs = pool_macs(&net.name, &taken, count);
        taken.extend(&macs);
        for (slot, mac) in macs.into_iter().enumerate() {
            net.ports.push(PortPlan {
                owner: PortOwner::Pool {
                    slot: u16::try_from(slot).unwrap_or(u16::MAX),
                },
                mac: Some(mac),
            });
        }
        let pool_end = net.ports.len();
        if let Some(u) = uplink {
            let (old, new) = (first as u16, pool_end as u16);
            for (a, b) in &mut net.allow {
                for x in [a, b] {
                    if *x == old {
                        *x = new;
                    }
                }
            }
            net.ports.push(u);
        }
        let pool: Vec<u16> = (first..pool_end).map(|i| i as u16).collect();
        let name_of = |i: usize| match &net.ports[i].owner {
            PortOwner::Vm { vm, .. } => vm.as_str(),
            PortOwner::Uplink { .. } => NetworkSpec::UPLINK,
            PortOwner::Pool { .. } => NetworkSpec::POOL,
        };
        let pair = |a: u16, b: u16| (a.min(b), a.max(b));
        let mut extra: Vec<(u16, u16)> = Vec::new();
        match &spec.allow {
            None => {
                for &x in &pool {
                    extra.extend(
                        (0..net.ports.len() as u16)
                            .filter(|&y| y != x)
                            .map(|y| pair(x, y)),
                    );
                }
            }
            Some(pairs) => {
                for (a, b) in pairs {
                    let (other, is_pool) = match (a.as_str(), b.as_str()) {
                        (NetworkSpec::POOL, o) | (o, NetworkSpec::POOL) => (o, true),
                        _ => ("", false),
                    };
                    if !is_pool {
                        continue;
                    }
                    if other == NetworkSpec::POOL {
                        for (i, &x) in pool.iter().enumerate() {
                            extra.extend(pool[i + 1..].iter().map(|&y| pair(x, y)));
                        }
                    } else if let Some(o) = (0..net.ports.len()).find(|&i| name_of(i) == other) {
                        extra.extend(pool.iter().map(|&x| pair(o as u16, x)));
                    }
                }
            }
        }
        net.allow.extend(extra);
        net.allow.sort_unstable();
        net.allow.dedup();
        net.mac_table = (net.ports.len().max(1) as u32) * 4;
    }
    Ok(p)
}

/// The MACs of network `network`'s `count` pool ports: locally administered unicast
/// addresses `06:4b:50:<h>:<n>` (`h`: 8 bits of an FNV-1a hash of the network's name, `n`:
/// a 16-bit counter from 0), skipping every address in `taken` (the system's declared or
/// derived ones and other networks' pool ports), so each is unique in the system. Fixed by the description alone: the
/// daemon and its switch process compute the same ones.
pub fn pool_macs(network: &str, taken: &[MacAddr], count: usize) -> Vec<MacAddr> {
    let mut h: u32 = 0x811c_9dc5;
    for b in network.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let h = (h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) as u8;
    (0..=u16::MAX)
        .map(|n| {
            let [hi, lo] = n.to_be_bytes();
            MacAddr([0x06, 0x4b, 0x50, h, hi, lo])
        })
        .filter(|m| !taken.contains(m))
        .take(count)
        .collect()
}

/// Default switch sizing: output queues as deep as a ring, a quarter of it for floods,
/// four MAC table entries per port (VM ports have one MAC each; the rest is for what the
/// uplink's side shows), five minutes of ageing (as common hardware switches), storm
/// control as the description says.
fn plan_network(net: &NetworkSpec, vms: &[VmSpec]) -> NetworkPlan {
    let mut names: Vec<&str> = Vec::new();
    let mut ports: Vec<PortPlan> = network_members(net, vms)
        .map(|(vm, nic)| {
            names.push(&vm.name);
            PortPlan {
                owner: PortOwner::Vm {
                    vm: vm.name.clone(),
                    nic,
                },
                mac: System::nic_mac(vm, nic),
            }
        })
        .collect();
    if let Some(uplink) = &net.uplink {
        names.push(NetworkSpec::UPLINK);
        ports.push(PortPlan {
            owner: PortOwner::Uplink {
                tap: uplink.strip_prefix("tap:").unwrap_or(uplink).into(),
            },
            mac: None,
        });
    }
    let index = |name: &str| names.iter().position(|n| *n == name);
    let mut allow: Vec<(u16, u16)> = match &net.allow {
        None => (0..ports.len())
            .flat_map(|a| (a + 1..ports.len()).map(move |b| (a, b)))
            .map(|(a, b)| (a as u16, b as u16))
            .collect(),
        Some(pairs) => pairs
            .iter()
            .filter_map(|(a, b)| {
                let (a, b) = (index(a)?, index(b)?);
                Some((a.min(b) as u16, a.max(b) as u16))
            })
            .collect(),
    };
    allow.sort_unstable();
    allow.dedup();
    let n = ports.len().max(1) as u32;
    NetworkPlan {
        name: net.name.clone(),
        allow,
        slots: net.slots,
        mac_table: n * 4,
        queue_depth: net.slots,
        flood_depth: (net.slots / 4).max(1),
        ageing_ms: 300_000,
        flood_rate: net.flood_rate,
        flood_burst: net.flood_burst,
        ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConsoleSpec, DiskSpec, HostPath, Memory, Output};

    fn vm(arch: Arch, disks: usize, consoles: usize, rng: bool) -> VmSpec {
        let mut v = VmSpec::new("v", arch, HostPath::new("/k"), Memory::Size(256 << 20));
        v.disks = (0..disks)
            .map(|i| DiskSpec {
                path: HostPath::new(alloc::format!("/d{i}")),
                read_only: false,
                id: None,
                served: None,
            })
            .collect();
        v.consoles = (0..consoles)
            .map(|_| ConsoleSpec {
                output: Output::Null,
            })
            .collect();
        v.rng = rng;
        v
    }

    #[test]
    fn devices_are_disks_then_consoles_then_rng_in_consecutive_slots() {
        let p = plan_vm(&vm(Arch::Aarch64, 2, 1, true)).unwrap();

        let kinds: Vec<_> = p.devices.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                DeviceKind::Block { disk: 0 },
                DeviceKind::Block { disk: 1 },
                DeviceKind::Console { port: 0 },
                DeviceKind::Rng
            ]
        );
        assert_eq!(
            p.devices.iter().map(|d| d.slot).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn arm64_slot_n_is_0x0a000000_plus_n_windows_on_spi_16_plus_n() {
        let p = plan_vm(&vm(Arch::Aarch64, 0, 2, true)).unwrap();

        assert_eq!(
            (p.devices[2].base, p.devices[2].size, p.devices[2].irq),
            (0x0a00_0400, 0x200, 18)
        );
        assert_eq!(p.serial, serial(Arch::Aarch64));
        assert_eq!(p.ram, [(0x4000_0000, 256 << 20)]);
    }

    #[test]
    fn x86_slot_n_is_0xd0000000_plus_n_pages_on_gsi_5_plus_n() {
        let p = plan_vm(&vm(Arch::X86_64, 1, 0, true)).unwrap();

        assert_eq!(
            (p.devices[1].base, p.devices[1].size, p.devices[1].irq),
            (0xd000_1000, 0x1000, 6)
        );
        assert_eq!(
            p.serial,
            SerialPlan::Port {
                port: 0x3f8,
                irq: 4
            }
        );
    }

    #[test]
    fn more_devices_than_slots_is_refused_with_the_counts() {
        let e = plan_vm(&vm(Arch::X86_64, 19, 1, false)).unwrap_err();

        assert_eq!(
            e.to_string(),
            "vm \"v\": 20 virtio devices; the x86_64 platform has 19 slots"
        );
    }

    #[test]
    fn no_two_devices_of_a_vm_share_a_window_or_an_interrupt() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let p = plan_vm(&vm(arch, 5, 5, true)).unwrap();
            for (i, a) in p.devices.iter().enumerate() {
                for b in &p.devices[i + 1..] {
                    assert!(a.base + a.size <= b.base || b.base + b.size <= a.base);
                    assert_ne!(a.irq, b.irq);
                }
            }
        }
    }
}
