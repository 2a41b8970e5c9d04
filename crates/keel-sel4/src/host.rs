//! The build side of the seL4 backend (feature `host`): from a system description to a
//! bootable Microkit image.
//!
//! For each VM: plan it (`keel_spec::plan::plan_vm`, as on KVM), read its kernel, initrd
//! and disks, serialize the plan and the seL4 parameters, append the payload to the
//! prebuilt VMM ELF ([`crate::elf`], [`crate::payload`]); append the console configuration
//! to the prebuilt console ELF ([`crate::console`]) and each network's switch
//! configuration to a copy of the prebuilt switch ELF ([`crate::switch`]); write the Microkit
//! system file (`keel_spec::microkit`); run the SDK's `microkit` tool; for a system with
//! coloured RAM, refuse an image whose capDL initialiser would run out of capability slots
//! at boot ([`ToolReport::initialiser_slots`]).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_spec::microkit::{
    ADMIN_ELF_NAME, BoardMap, BoardResource, CONSOLE_ELF_NAME, ColourLayout, ConsoleInput,
    ConsoleLayout, ForwardLink, MicrokitLayout, NetLayout, SwitchComponent, VsockLink,
    forward_links, placement, switch_components, system_file, vmm_elf_name, vmm_pd_name,
    vsock_links,
};
use keel_spec::{System, VmSpec};

use crate::abi::board;
use crate::admin::{AdminConfig, AdminControl, AdminVm, RestartPlan};
use crate::console::{
    CONSOLE_RINGS_VADDR, CONSOLE_UART_VADDR, ConsoleConfig, ConsoleUart, INPUT_RING_LEN,
    OUTPUT_RING_LEN, RING_SIZE, VMM_CHANNEL, VMM_RING_VADDR,
};
use crate::payload::{
    self, CONSOLE_RING_VADDR, ForwardWindow, GUEST_RAM_VADDR, NicWindows, PAYLOAD_VADDR,
    PayloadError, Sel4Params, VsockWindows,
};
use crate::switch::{
    SWITCH_HEAP_VADDR, SWITCH_RINGS_VADDR, SwitchConfigError, SwitchPdConfig,
    VMM_FIRST_NET_CHANNEL, VMM_NET_VADDR,
};
use keel_core::control::Rights;

/// What went wrong while building the image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A VM's devices may need more of the VMM's heap than it has.
    #[error(transparent)]
    HeapBudget(#[from] crate::budget::HeapBudgetError),
    /// `MICROKIT_SDK` unset and no `--sdk`.
    #[error("no Microkit SDK: set MICROKIT_SDK to the SDK directory (see docs/sel4.md)")]
    NoSdk,
    /// The SDK directory is not a Microkit SDK.
    #[error("{path}: not a Microkit SDK ({what} is missing)")]
    NotAnSdk {
        /// SDK path.
        path: PathBuf,
        /// The missing piece.
        what: String,
    },
    /// The SDK lacks the board or config.
    #[error("the Microkit SDK at {path} has no {board} {config} build (it has: {have})")]
    WrongBoard {
        /// SDK path.
        path: PathBuf,
        /// Board wanted.
        board: String,
        /// Config wanted.
        config: String,
        /// What the SDK has.
        have: String,
    },
    /// The kernel was configured differently from what Keel needs.
    #[error("the Microkit SDK at {path}: kernel {what}")]
    KernelConfig {
        /// SDK path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A config name that is no directory name.
    #[error("config {0:?} is not a Microkit config name (e.g. debug, smp-debug)")]
    BadConfig(String),
    /// A board Keel does not support.
    #[error("board {0:?} is not supported (supported: {sup})", sup = board::NAME)]
    Board(String),
    /// The system has no seL4 form.
    #[error(transparent)]
    Microkit(#[from] keel_spec::microkit::MicrokitError),
    /// A VM cannot be planned.
    #[error(transparent)]
    Plan(#[from] keel_spec::plan::PlanError),
    /// The payload cannot be written.
    #[error("VM {vm}: {source}")]
    Payload {
        /// VM.
        vm: String,
        /// What went wrong.
        source: PayloadError,
    },
    /// The console PD's configuration cannot be written.
    #[error("console configuration: {0}")]
    ConsoleConfig(#[source] crate::payload::ConfigError),
    /// The admin PD's configuration cannot be written.
    #[error("admin configuration: {0}")]
    AdminConfig(#[source] crate::payload::ConfigError),
    /// A switch PD's configuration cannot be written.
    #[error("switch configuration: {0}")]
    SwitchConfig(#[from] SwitchConfigError),
    /// The payload does not fit below the VMM's RAM window.
    #[error("VM {vm}: kernel, initrd and disks take {size} bytes; at most {max} fit in the VMM")]
    PayloadTooLarge {
        /// VM.
        vm: String,
        /// Payload size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The VMM ELF cannot take the payload.
    #[error("{path}: {source}")]
    Elf {
        /// The ELF.
        path: PathBuf,
        /// The error.
        source: crate::elf::ElfError,
    },
    /// The image's capDL initialiser would run out of capability slots at boot.
    #[error(
        "the image needs about {need} capability slots in the seL4 initialiser's CSpace, which has {have} (CONFIG_ROOT_CNODE_SIZE_BITS {bits}): it would stop at boot (OutOfSlots), so it was removed. Each 4 KiB page of coloured RAM takes 3 slots, each 4 KiB of the VMM images (kernel, initrd, disks) 2: give the coloured VMs less RAM (see {log})"
    )]
    InitialiserSlots {
        /// Slots the image needs (an estimate from the tool's report).
        need: u64,
        /// Slots there are.
        have: u64,
        /// `CONFIG_ROOT_CNODE_SIZE_BITS`.
        bits: u32,
        /// The tool's log.
        log: PathBuf,
    },
    /// A tool failed.
    #[error("{tool} failed ({status}); see {log}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its exit status.
        status: String,
        /// Where its output is.
        log: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A checked Microkit SDK config.
#[derive(Debug, Clone)]
pub struct Sdk {
    /// The SDK root.
    pub root: PathBuf,
    /// The kernel configuration (`debug`, `smp-debug`, ...).
    pub config: String,
    /// Cores the config's kernel runs on (`CONFIG_MAX_NUM_NODES` of its `gen_config.h`).
    pub cores: u32,
    /// Bits of the initial task's CNode (`CONFIG_ROOT_CNODE_SIZE_BITS`): the capDL
    /// initialiser has `2^bits` capability slots for every object and mapping of the image.
    pub root_cnode_bits: u32,
}

impl Sdk {
    /// The config Keel uses when none is asked for: [`board::SMP_CONFIG`] if the SDK has it
    /// for `board_name`, else [`board::CONFIG`].
    pub fn default_config(root: &Path, board_name: &str) -> &'static str {
        if root
            .join("board")
            .join(board_name)
            .join(board::SMP_CONFIG)
            .join("include/kernel/gen_config.h")
            .is_file()
        {
            board::SMP_CONFIG
        } else {
            board::CONFIG
        }
    }

    /// Check that `root` is a Microkit SDK with `board`'s `config` and a kernel Keel can
    /// drive (MCS, hypervisor, printing, GICv2), and read its core count.
    pub fn open(root: &Path, board_name: &str, config: &str) -> Result<Sdk, BuildError> {
        if board_name != board::NAME {
            return Err(BuildError::Board(board_name.into()));
        }
        let tool = root.join("bin/microkit");
        if !tool.is_file() {
            return Err(BuildError::NotAnSdk {
                path: root.into(),
                what: "bin/microkit".into(),
            });
        }
        if config.is_empty() || config.contains(['/', '\\']) || config.starts_with('.') {
            return Err(BuildError::BadConfig(config.into()));
        }
        let cfg_dir = root.join("board").join(board_name).join(config);
        if !cfg_dir.is_dir() {
            let mut have: Vec<String> = Vec::new();
            if let Ok(boards) = std::fs::read_dir(root.join("board")) {
                for b in boards.flatten() {
                    if let Ok(cfgs) = std::fs::read_dir(b.path()) {
                        for c in cfgs.flatten() {
                            have.push(format!(
                                "{}/{}",
                                b.file_name().to_string_lossy(),
                                c.file_name().to_string_lossy()
                            ));
                        }
                    }
                }
            }
            have.sort();
            return Err(BuildError::WrongBoard {
                path: root.into(),
                board: board_name.into(),
                config: config.into(),
                have: if have.is_empty() {
                    "nothing".into()
                } else {
                    have.join(", ")
                },
            });
        }
        let gen_config = cfg_dir.join("include/kernel/gen_config.h");
        let text = std::fs::read_to_string(&gen_config).map_err(io(&gen_config))?;
        let defined = |name: &str| {
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name) && l.starts_with("#define"))
        };
        for (opt, why) in [
            ("CONFIG_KERNEL_MCS", "is not an MCS kernel"),
            ("CONFIG_ARM_HYPERVISOR_SUPPORT", "has no hypervisor support"),
            (
                "CONFIG_PRINTING",
                "has no debug printing (Keel needs the debug config)",
            ),
        ] {
            if !defined(opt) {
                return Err(BuildError::KernelConfig {
                    path: root.into(),
                    what: why.into(),
                });
            }
        }
        if defined("CONFIG_ARM_GIC_V3_SUPPORT") {
            return Err(BuildError::KernelConfig {
                path: root.into(),
                what: "uses GICv3; Keel's seL4 backend emulates a GICv2 distributor".into(),
            });
        }
        let cores = kernel_cores(&text).ok_or_else(|| BuildError::KernelConfig {
            path: root.into(),
            what: format!("{}: no readable CONFIG_MAX_NUM_NODES", gen_config.display()),
        })?;
        let root_cnode_bits = gen_config_number(&text, "CONFIG_ROOT_CNODE_SIZE_BITS")
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (4..=30).contains(n))
            .ok_or_else(|| BuildError::KernelConfig {
                path: root.into(),
                what: format!(
                    "{}: no readable CONFIG_ROOT_CNODE_SIZE_BITS",
                    gen_config.display()
                ),
            })?;
        Ok(Sdk {
            root: root.into(),
            config: config.into(),
            cores,
            root_cnode_bits,
        })
    }

    /// The board layout the system file uses.
    pub fn layout(&self) -> MicrokitLayout {
        MicrokitLayout {
            vmm_ram_vaddr: GUEST_RAM_VADDR,
            gic_vcpu_paddr: board::GICV_PADDR,
            gic_vcpu_size: 0x2000,
            gic_cpu_gpa: keel_core::arch::aarch64::layout::GICV2_CPU_BASE,
            console: ConsoleLayout {
                ring_size: RING_SIZE,
                vmm_ring_vaddr: VMM_RING_VADDR,
                console_rings_vaddr: CONSOLE_RINGS_VADDR,
                vmm_channel: VMM_CHANNEL,
            },
            cores: self.cores,
            max_ram: CONSOLE_RING_VADDR - GUEST_RAM_VADDR,
            max_vcpus: keel_core::arch::aarch64::layout::GICV2_MAX_VCPUS,
            console_input: Some(ConsoleInput {
                uart_paddr: board::PL011_PADDR,
                uart_vaddr: CONSOLE_UART_VADDR,
                irq: board::PL011_IRQ,
                channel: keel_spec::microkit::CONSOLE_UART_CHANNEL,
            }),
            net: NetLayout {
                vmm_rings_vaddr: VMM_NET_VADDR,
                switch_rings_vaddr: SWITCH_RINGS_VADDR,
                switch_heap_vaddr: SWITCH_HEAP_VADDR,
                vmm_first_channel: VMM_FIRST_NET_CHANNEL,
            },
            colour: Some(ColourLayout {
                pool_base: board::COLOUR_POOL_BASE,
                pool_end: colour_pool_end(self.root_cnode_bits),
                max_pages: (1u64 << self.root_cnode_bits) / 3,
            }),
            board: Some(qemu_virt_board(colour_pool_end(self.root_cnode_bits))),
        }
    }

    /// Capability slots of the capDL initialiser's CSpace (`2^CONFIG_ROOT_CNODE_SIZE_BITS`).
    pub fn initialiser_slots(&self) -> u64 {
        1 << self.root_cnode_bits
    }
}

/// The physical map of QEMU `virt` (`qemu_virt_aarch64`, `-m 2G`) as passthrough and fixed
/// RAM see it: QEMU's own memory map (`hw/arm/virt.c`, `base_memmap` and `a15irqmap`) and
/// the SDK's `platform_gen.json` (kernel memory 0x6000_0000..0xC000_0000; the RAM below,
/// 0x4000_0000..0x6000_0000, is handed out as device untypeds and never used by the
/// Microkit tool). `pool_end`: [`colour_pool_end`].
pub fn qemu_virt_board(pool_end: u64) -> BoardMap {
    let res = |what: &str, base: u64, size: u64, irqs: Vec<u32>| BoardResource {
        what: what.into(),
        base,
        size,
        irqs,
    };
    BoardMap {
        name: board::NAME.into(),
        ram: (board::RAM_BASE, board::RAM_END),
        ram_reserved: vec![
            res(
                "the seL4 kernel, the capDL initialiser with every PD image and the objects the Microkit tool places",
                board::KERNEL_RAM_BASE,
                board::COLOUR_POOL_BASE - board::KERNEL_RAM_BASE,
                vec![],
            ),
            res(
                "the kernel's boot objects at the top of RAM",
                pool_end,
                board::RAM_END.saturating_sub(pool_end),
                vec![],
            ),
        ],
        devices: vec![
            res(
                "virtio-mmio transports 0-31 (0xa000000 + n*0x200, irq 48+n)",
                board::VIRTIO_MMIO_PADDR,
                0x4000,
                (48..80).collect(),
            ),
            res(
                "PL031 RTC (0x9010000, irq 34)",
                0x0901_0000,
                0x1000,
                vec![34],
            ),
            res("fw_cfg (0x9020000)", 0x0902_0000, 0x1000, vec![]),
            res(
                "PL061 GPIO (0x9030000, irq 39)",
                0x0903_0000,
                0x1000,
                vec![39],
            ),
        ],
        reserved: vec![res(
            "the GIC (the seL4 kernel's; every VM gets its virtual CPU interface)",
            0x0800_0000,
            0x0100_0000,
            (0..32).collect(),
        )],
    }
}

/// One past the highest address of the colour pool: [`board::RAM_END`] less what the
/// kernel takes at the top of RAM at boot (the initial task's CNode of `2^bits` slots of
/// 32 bytes, aligned to its size, and a few pages): at least [`board::RAM_TOP_RESERVE`],
/// and twice the CNode's bytes when that is more.
pub fn colour_pool_end(root_cnode_bits: u32) -> u64 {
    let cnode = 1u64 << (root_cnode_bits + 5);
    board::RAM_END.saturating_sub(board::RAM_TOP_RESERVE.max(2 * cnode))
}

/// The value of `#define <name> <n>` in a kernel `gen_config.h`.
pub fn gen_config_number(gen_config: &str, name: &str) -> Option<u64> {
    gen_config.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("#define") && w.next() == Some(name))
            .then(|| w.next())
            .flatten()
            .and_then(|v| v.parse().ok())
    })
}

/// The kernel's core count from its `gen_config.h` (`#define CONFIG_MAX_NUM_NODES n`).
pub fn kernel_cores(gen_config: &str) -> Option<u32> {
    gen_config_number(gen_config, "CONFIG_MAX_NUM_NODES")
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| (1..=256).contains(&n))
}

/// What `keel sel4 build` does.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The SDK.
    pub sdk: PathBuf,
    /// Board name.
    pub board: String,
    /// The SDK's kernel configuration (`None`: [`Sdk::default_config`]).
    pub config: Option<String>,
    /// Output directory.
    pub out: PathBuf,
    /// The prebuilt generic VMM ELF.
    pub vmm_elf: PathBuf,
    /// The prebuilt console ELF ([`PdElves`]).
    pub console_elf: PathBuf,
    /// The prebuilt switch ELF ([`PdElves`]; used when the system has networks).
    pub switch_elf: PathBuf,
    /// Test knob: the VM whose VMM stalls mid-output at its VM's first fault (`keel sel4
    /// build` takes it from `KEEL_SEL4_TEST_STALL_VMM`; see [`Sel4Params::test_stall`]).
    pub test_stall_vm: Option<String>,
    /// The prebuilt admin ELF ([`PdElves`]).
    pub admin_elf: PathBuf,
    /// Test knob: the VM whose VMM faults when its guest writes to
    /// [`crate::payload::TEST_FAULT_GPA`] (`keel sel4 build` takes it from
    /// `KEEL_SEL4_TEST_FAULT_VMM`; see [`Sel4Params::test_fault`]).
    pub test_fault_vm: Option<String>,
    /// Each VM's restart policy, applied by the admin PD when its VMM faults (VMs not
    /// named here: [`RestartPlan::Never`]). See [`restart_plans`].
    pub restart: Vec<(String, RestartPlan)>,
}

/// The environment variable naming the VM whose VMM stalls (test knob).
pub const TEST_STALL_VAR: &str = "KEEL_SEL4_TEST_STALL_VMM";

/// The environment variable naming the VM whose VMM faults on a guest write to
/// [`crate::payload::TEST_FAULT_GPA`] (test knob).
pub const TEST_FAULT_VAR: &str = "KEEL_SEL4_TEST_FAULT_VMM";

/// Restart policies by VM from `(vm, policy name)` pairs (the description's per-VM
/// `restart`, `"never" | "on-failure" | "always"`), for [`BuildOptions::restart`]; the
/// first unknown name is refused.
pub fn restart_plans<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(String, RestartPlan)>, crate::admin::UnknownPolicy> {
    pairs
        .into_iter()
        .map(|(vm, p)| Ok((vm.to_string(), RestartPlan::from_name(p)?)))
        .collect()
}

/// The admin PD's configuration for `system`: each VM's VMM (child id = the VM's index),
/// the VMM program's entry point `entry`, the VM's policy from `restart` (default
/// `never`) and its limit (`max_restarts_per_minute`, counted over the VM's life).
pub fn admin_config(system: &System, entry: u64, restart: &[(String, RestartPlan)]) -> AdminConfig {
    let mut control_pages = 0u64;
    AdminConfig {
        console_ring: CONSOLE_RING_VADDR,
        console_ring_len: RING_SIZE,
        console_channel: keel_spec::microkit::ADMIN_CONSOLE_CHANNEL,
        vms: system
            .vms()
            .iter()
            .enumerate()
            .map(|(i, vm)| AdminVm {
                start: vm.start,
                channel: keel_spec::microkit::admin_child_id(i),
                control: (!vm.control.is_empty()).then(|| {
                    let vaddr = keel_spec::microkit::ADMIN_CONTROL_VADDR + control_pages * 0x1000;
                    control_pages += 1;
                    AdminControl {
                        vaddr,
                        rights: system
                            .vms()
                            .iter()
                            .map(|t| {
                                vm.control
                                    .iter()
                                    .filter(|c| c.vm == t.name)
                                    .flat_map(|c| c.rights.iter())
                                    .fold(Rights::NONE, |acc, r| acc.union(control_right(*r)))
                                    .0
                            })
                            .collect(),
                    }
                }),
                name: vm.name.clone(),
                vmm_pd: vmm_pd_name(vm),
                child_id: keel_spec::microkit::admin_child_id(i),
                entry,
                restart: restart
                    .iter()
                    .find(|(n, _)| *n == vm.name)
                    .map_or(RestartPlan::Never, |(_, p)| *p),
                max_restarts: vm.max_restarts_per_minute,
            })
            .collect(),
    }
}

/// What `keel sel4 build` produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The bootable loader image.
    pub image: PathBuf,
    /// The generated system file.
    pub system_file: PathBuf,
    /// The Microkit tool's report.
    pub report: PathBuf,
    /// The kernel configuration the image was built for.
    pub config: String,
    /// Cores of that kernel (QEMU `-smp` must give it at least these).
    pub cores: u32,
}

/// What an image was built for, recorded next to it (`<image>.keel`) so that `keel sel4
/// run` needs no flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Board.
    pub board: String,
    /// Kernel configuration.
    pub config: String,
    /// Kernel cores.
    pub cores: u32,
    /// VMs in the system.
    pub vms: usize,
}

impl ImageInfo {
    /// Where the record of `image` lives.
    pub fn path(image: &Path) -> PathBuf {
        let mut p = image.as_os_str().to_owned();
        p.push(".keel");
        PathBuf::from(p)
    }

    /// The record's text: `key=value` lines.
    pub fn to_text(&self) -> String {
        format!(
            "board={}\nconfig={}\ncores={}\nvms={}\n",
            self.board, self.config, self.cores, self.vms
        )
    }

    /// Parse a record; `None` if a key is missing or malformed.
    pub fn parse(text: &str) -> Option<ImageInfo> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(str::trim)
        };
        Some(ImageInfo {
            board: get("board")?.into(),
            config: get("config")?.into(),
            cores: get("cores")?
                .parse()
                .ok()
                .filter(|&n| (1..=256).contains(&n))?,
            vms: get("vms")?.parse().ok()?,
        })
    }

    /// The record of `image`, if `keel sel4 build` wrote one.
    pub fn read(image: &Path) -> Option<ImageInfo> {
        ImageInfo::parse(&std::fs::read_to_string(ImageInfo::path(image)).ok()?)
    }
}

/// The guest command line Keel gives an arm64 guest on seL4 ([`payload::guest_cmdline`]
/// of the description's): the 8250 console first, then what the description says. The VMM
/// protection domain derives it from the plan's command line at start.
pub fn guest_cmdline(vm: &VmSpec) -> String {
    payload::guest_cmdline(&vm.cmdline)
}

/// Where VM `vm_index`'s VMM maps the rings of each of its interfaces, and their
/// channels, in interface order (from the switch components of the component plan).
pub fn nic_windows(switches: &[SwitchComponent], vm_index: usize) -> Vec<NicWindows> {
    let mut ports: Vec<_> = switches
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
        .filter(|(_, p)| p.vm_index == vm_index)
        .collect();
    ports.sort_by_key(|(_, p)| p.nic);
    ports
        .into_iter()
        .map(|(s, p)| NicWindows {
            to_switch: p.to_switch.vmm_vaddr,
            from_switch: p.from_switch.vmm_vaddr,
            ring_len: p.to_switch.ring_len,
            slots: s.plan.slots,
            channel: p.vmm_channel,
        })
        .collect()
}

/// Where VM `vm_index`'s VMM maps the forwarding region of each of its served disks and
/// its channel (disk order), and its channel to each client it serves (its plan's `serves`
/// order), from the system's [`keel_spec::microkit::forward_links`].
pub fn forward_windows(links: &[ForwardLink], vm_index: usize) -> LinkWindows {
    let mut forwards: Vec<ForwardWindow> = links
        .iter()
        .filter(|l| l.client == vm_index)
        .map(|l| ForwardWindow {
            disk: l.client_disk as u32,
            vaddr: l.client_vaddr,
            len: l.size,
            channel: l.client_channel,
        })
        .collect();
    forwards.sort_by_key(|f| f.disk);
    let mut serves: Vec<(usize, u32)> = links
        .iter()
        .filter(|l| l.server == vm_index)
        .map(|l| (l.serve, l.server_channel))
        .collect();
    serves.sort_unstable();
    LinkWindows {
        forwards,
        serves: serves.into_iter().map(|(_, c)| c).collect(),
        vsock: Vec::new(),
    }
}

/// Where VM `vm_index`'s VMM maps the two rings of each of its vsock peers and its channel
/// to that peer's VMM, in its plan's `vsock.peers` order, from the system's
/// [`keel_spec::microkit::vsock_links`].
pub fn vsock_windows(links: &[VsockLink], vm_index: usize) -> Vec<VsockWindows> {
    let mut ends: Vec<(usize, VsockWindows)> = links
        .iter()
        .flat_map(|l| l.ends.iter().map(move |e| (l, e)))
        .filter(|(_, e)| e.vm == vm_index)
        .map(|(l, e)| {
            let w = VsockWindows {
                pair: l.pair as u32,
                tx: e.tx_vaddr,
                rx: e.rx_vaddr,
                ring_len: l.ring_len,
                slots: l.slots,
                channel: e.channel,
            };
            (e.peer, w)
        })
        .collect();
    ends.sort_by_key(|(peer, _)| *peer);
    ends.into_iter().map(|(_, w)| w).collect()
}

/// A VMM's windows and channels onto other VMMs: block forwarding
/// ([`Sel4Params::forwards`], [`Sel4Params::serves`]) and vsock peers
/// ([`Sel4Params::vsock`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkWindows {
    /// Its served disks' links.
    pub forwards: Vec<ForwardWindow>,
    /// Its channels to the clients it serves.
    pub serves: Vec<u32>,
    /// Its vsock peers' rings and channels.
    pub vsock: Vec<VsockWindows>,
}

/// The payload of VM `index` of `system`: its plan (`keel_spec::plan::plan_vm_of`, the
/// same as on KVM), its seL4 parameters (with `nics`, its interfaces' rings: see
/// [`nic_windows`]), kernel, initrd and disks. Every VMM takes console input from its
/// input ring (the console PD routes it); `stall` is the test knob.
pub fn vm_payload(
    system: &System,
    index: usize,
    nics: Vec<NicWindows>,
    stall: bool,
) -> Result<Vec<u8>, BuildError> {
    vm_payload_with(
        system,
        index,
        nics,
        LinkWindows::default(),
        TestKnobs {
            stall,
            fault: false,
        },
    )
}

/// The test knobs of one VMM ([`Sel4Params::test_stall`], [`Sel4Params::test_fault`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestKnobs {
    /// Stall mid-line at the VM's first fault.
    pub stall: bool,
    /// Fault when the guest writes to [`crate::payload::TEST_FAULT_GPA`].
    pub fault: bool,
}

/// [`vm_payload`] with every test knob.
pub fn vm_payload_with(
    system: &System,
    index: usize,
    nics: Vec<NicWindows>,
    links: LinkWindows,
    knobs: TestKnobs,
) -> Result<Vec<u8>, BuildError> {
    let vm = system.vms().get(index).ok_or_else(|| BuildError::Payload {
        vm: format!("#{index}"),
        source: PayloadError::Truncated { what: "system" },
    })?;
    let plan = keel_spec::plan::plan_vm_of(system, vm)?;
    let read = |p: &Path| std::fs::read(p).map_err(io(p));
    let kernel = read(vm.kernel.as_path())?;
    let initrd = vm.initrd.as_ref().map(|p| read(p.as_path())).transpose()?;
    // A served disk's bytes are the storage VM's: its blob is empty.
    let disks = vm
        .disks
        .iter()
        .map(|d| match d.served {
            Some(_) => Ok(Vec::new()),
            None => read(d.path.as_path()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let params = Sel4Params {
        ram_vaddr: GUEST_RAM_VADDR,
        console_ring: CONSOLE_RING_VADDR,
        console_ring_len: OUTPUT_RING_LEN,
        console_channel: VMM_CHANNEL,
        test_stall: knobs.stall,
        test_fault: knobs.fault,
        start: vm.start,
        control_doorbell: if vm.control.is_empty() {
            0
        } else {
            keel_spec::microkit::CONTROL_DOORBELL_GPA
        },
        admin_channel: keel_spec::microkit::VMM_ADMIN_CHANNEL,
        console_input_ring: CONSOLE_RING_VADDR + OUTPUT_RING_LEN,
        console_input_ring_len: INPUT_RING_LEN,
        rng_seed: host_seed()?,
        restart_on_reboot: vm.on_reboot == keel_spec::OnReboot::Restart,
        max_restarts: vm.max_restarts_per_minute,
        nics,
        forwards: links.forwards,
        serves: links.serves,
        vsock: links.vsock,
    };
    let disk_refs: Vec<&[u8]> = disks.iter().map(Vec::as_slice).collect();
    payload::build(&plan, &params, &kernel, initrd.as_deref(), &disk_refs).map_err(|source| {
        BuildError::Payload {
            vm: vm.name.clone(),
            source,
        }
    })
}

/// 32 bytes from the build host's entropy source, for the VMM's virtio-rng seed.
fn host_seed() -> Result<[u8; 32], BuildError> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut seed = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io(path))?;
    Ok(seed)
}

/// Check that `system` can be built for `sdk` (before anything slow happens).
pub fn check(system: &System, sdk: &Sdk) -> Result<(), BuildError> {
    keel_spec::microkit::check(system, &sdk.layout())?;
    check_heaps(system)
}

/// Refuse a VM whose devices' worst case does not fit the VMM's heap
/// ([`crate::budget::check_vmm_heap`]).
pub fn check_heaps(system: &System) -> Result<(), BuildError> {
    for vm in system.vms() {
        let plan = keel_spec::plan::plan_vm_of(system, vm)?;
        crate::budget::check_vmm_heap(&plan)?;
    }
    Ok(())
}

/// Build the image for `system`.
pub fn build(system: &System, opts: &BuildOptions) -> Result<BuildOutput, BuildError> {
    let config = opts
        .config
        .clone()
        .unwrap_or_else(|| Sdk::default_config(&opts.sdk, &opts.board).into());
    let sdk = Sdk::open(&opts.sdk, &opts.board, &config)?;
    check(system, &sdk)?;
    let layout = sdk.layout();
    let xml = system_file(system, &layout)?;
    let switches = switch_components(system, &layout, &placement(system, &layout)?)?;
    let forwards = forward_links(system, &layout)?;
    let vsocks = vsock_links(system, &layout)?;
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let elf = std::fs::read(&opts.vmm_elf).map_err(io(&opts.vmm_elf))?;
    for (index, vm) in system.vms().iter().enumerate() {
        let knobs = TestKnobs {
            stall: opts.test_stall_vm.as_deref() == Some(vm.name.as_str()),
            fault: opts.test_fault_vm.as_deref() == Some(vm.name.as_str()),
        };
        let p = vm_payload_with(
            system,
            index,
            nic_windows(&switches, index),
            LinkWindows {
                vsock: vsock_windows(&vsocks, index),
                ..forward_windows(&forwards, index)
            },
            knobs,
        )?;
        let max = GUEST_RAM_VADDR - PAYLOAD_VADDR;
        if p.len() as u64 > max {
            return Err(BuildError::PayloadTooLarge {
                vm: vm.name.clone(),
                size: p.len() as u64,
                max,
            });
        }
        let out = crate::elf::append_segment(
            &elf,
            PAYLOAD_VADDR,
            &p,
            crate::elf::flags::R | crate::elf::flags::W,
        )
        .map_err(|source| BuildError::Elf {
            path: opts.vmm_elf.clone(),
            source,
        })?;
        let path = opts.out.join(vmm_elf_name(vm));
        std::fs::write(&path, out).map_err(io(&path))?;
    }
    write_console_elf(system, opts)?;
    let entry = crate::elf::entry(&elf).map_err(|source| BuildError::Elf {
        path: opts.vmm_elf.clone(),
        source,
    })?;
    write_admin_elf(system, entry, opts)?;
    write_switch_elves(&switches, opts)?;
    let system_path = opts.out.join(format!("{}.system", system.name()));
    std::fs::write(&system_path, xml).map_err(io(&system_path))?;
    let image = opts.out.join("loader.img");
    let report = opts.out.join("report.txt");
    let log = opts.out.join("microkit.log");
    let logf = std::fs::File::create(&log).map_err(io(&log))?;
    let status = Command::new(sdk.root.join("bin/microkit"))
        .arg(&system_path)
        .arg("--search-path")
        .arg(&opts.out)
        .args(["--board", &opts.board, "--config", &sdk.config, "-o"])
        .arg(&image)
        .arg("-r")
        .arg(&report)
        .stdout(logf.try_clone().map_err(io(&log))?)
        .stderr(logf)
        .status()
        .map_err(io(&sdk.root.join("bin/microkit")))?;
    if !status.success() {
        return Err(BuildError::Tool {
            tool: "microkit".into(),
            status: status.to_string(),
            log,
        });
    }
    let coloured_pages: u64 = system
        .vms()
        .iter()
        .filter(|v| v.cache_colours.is_some())
        .map(|v| v.memory.total() / keel_spec::colour::PAGE)
        .sum();
    if coloured_pages > 0 {
        let text = std::fs::read_to_string(&log).map_err(io(&log))?;
        if let Some(need) = ToolReport::parse(&text).map(|r| r.initialiser_slots(coloured_pages)) {
            let have = sdk.initialiser_slots();
            if need > have {
                let _ = std::fs::remove_file(&image);
                return Err(BuildError::InitialiserSlots {
                    need,
                    have,
                    bits: sdk.root_cnode_bits,
                    log,
                });
            }
        }
    }
    let info = ImageInfo {
        board: opts.board.clone(),
        config: sdk.config.clone(),
        cores: sdk.cores,
        vms: system.vms().len(),
    };
    let info_path = ImageInfo::path(&image);
    std::fs::write(&info_path, info.to_text()).map_err(io(&info_path))?;
    Ok(BuildOutput {
        image,
        system_file: system_path,
        report,
        config: sdk.config,
        cores: sdk.cores,
    })
}

/// What the Microkit tool says of an image it built (the `MICROKIT|` lines of its output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolReport {
    /// `CAPDL SPEC: number of root objects`: every kernel object of the image.
    pub root_objects: u64,
    /// `INITIAL TASK: memory size`: the capDL initialiser with the spec and every PD image.
    pub initial_task_bytes: u64,
}

impl ToolReport {
    /// Slots the initialiser's CSpace holds besides objects and mappings: the kernel's
    /// fixed caps, the untypeds (at most 230 on this board), the PDs' CNode entries.
    const OTHER_SLOTS: u64 = 1024;

    /// Read the tool's output; `None` if a line is missing.
    pub fn parse(log: &str) -> Option<ToolReport> {
        let value = |key: &str| {
            log.lines()
                .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
        };
        let objects = value("number of root objects = ")?;
        let objects = objects.split(',').next()?.trim().parse().ok()?;
        Some(ToolReport {
            root_objects: objects,
            initial_task_bytes: human_size(value("INITIAL TASK: memory size = ")?)?,
        })
    }

    /// About how many capability slots the capDL initialiser uses at boot, with
    /// `coloured_pages` 4 KiB pages of coloured RAM: one for each page of its own image
    /// (the kernel gives it a frame cap per page), one per object, one per mapping (every
    /// frame is mapped once, coloured RAM twice: VM and VMM), and the rest.
    pub fn initialiser_slots(&self, coloured_pages: u64) -> u64 {
        self.initial_task_bytes.div_ceil(0x1000)
            + self.root_objects
            + self.root_objects
            + coloured_pages
            + Self::OTHER_SLOTS
    }
}

/// Bytes of a size as the Microkit tool prints it: `68.64 MiB`, `1,024 bytes`, `2 GiB`.
fn human_size(text: &str) -> Option<u64> {
    let (number, unit) = text.split_once(' ')?;
    let shift = match unit.trim() {
        "bytes" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    let value: f64 = number.replace(',', "").parse().ok()?;
    // The tool prints inexact sizes to hundredths of a unit: take the top of that
    // interval, an estimate must not come out low.
    let slack = if number.contains('.') { 0.005 } else { 0.0 };
    Some(((value + slack) * (1u64 << shift) as f64).ceil() as u64)
}

/// The console ELF with the console configuration of `system` appended, in `opts.out`.
fn write_console_elf(system: &System, opts: &BuildOptions) -> Result<(), BuildError> {
    let elf = std::fs::read(&opts.console_elf).map_err(io(&opts.console_elf))?;
    let mut cfg = ConsoleConfig::for_system(
        system.vms().iter().map(|v| v.name.as_str()),
        keel_spec::microkit::ADMIN_CONSOLE_NAME,
    );
    cfg.uart = Some(ConsoleUart {
        vaddr: CONSOLE_UART_VADDR,
        channel: keel_spec::microkit::CONSOLE_UART_CHANNEL,
    });
    let cfg = cfg.encode().map_err(BuildError::ConsoleConfig)?;
    let out = crate::elf::append_segment(&elf, PAYLOAD_VADDR, &cfg, crate::elf::flags::R).map_err(
        |source| BuildError::Elf {
            path: opts.console_elf.clone(),
            source,
        },
    )?;
    let path = opts.out.join(CONSOLE_ELF_NAME);
    std::fs::write(&path, out).map_err(io(&path))
}

/// The admin ELF with the admin configuration of `system` appended, in `opts.out`.
fn write_admin_elf(system: &System, entry: u64, opts: &BuildOptions) -> Result<(), BuildError> {
    let elf = std::fs::read(&opts.admin_elf).map_err(io(&opts.admin_elf))?;
    let cfg = admin_config(system, entry, &opts.restart)
        .encode()
        .map_err(BuildError::AdminConfig)?;
    let out = crate::elf::append_segment(&elf, PAYLOAD_VADDR, &cfg, crate::elf::flags::R).map_err(
        |source| BuildError::Elf {
            path: opts.admin_elf.clone(),
            source,
        },
    )?;
    let path = opts.out.join(ADMIN_ELF_NAME);
    std::fs::write(&path, out).map_err(io(&path))
}

/// The protocol's right for a right of the description.
pub fn control_right(r: keel_spec::ControlRight) -> Rights {
    match r {
        keel_spec::ControlRight::Start => Rights::START,
        keel_spec::ControlRight::Stop => Rights::STOP,
        keel_spec::ControlRight::Restart => Rights::RESTART,
        keel_spec::ControlRight::Status => Rights::STATUS,
    }
}

/// One switch ELF per switch component: the prebuilt switch ELF with that network's
/// configuration appended, in `opts.out`.
fn write_switch_elves(switches: &[SwitchComponent], opts: &BuildOptions) -> Result<(), BuildError> {
    if switches.is_empty() {
        return Ok(());
    }
    let elf = std::fs::read(&opts.switch_elf).map_err(io(&opts.switch_elf))?;
    for sw in switches {
        let cfg = SwitchPdConfig::from_component(sw).encode()?;
        let out = crate::elf::append_segment(&elf, PAYLOAD_VADDR, &cfg, crate::elf::flags::R)
            .map_err(|source| BuildError::Elf {
                path: opts.switch_elf.clone(),
                source,
            })?;
        let path = opts.out.join(&sw.elf);
        std::fs::write(&path, out).map_err(io(&path))?;
    }
    Ok(())
}

/// The generic protection-domain programs of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdElves {
    /// `keel-sel4-vmm`.
    pub vmm: PathBuf,
    /// `keel-sel4-console`.
    pub console: PathBuf,
    /// `keel-sel4-switch`.
    pub switch: PathBuf,
    /// `keel-sel4-admin`.
    pub admin: PathBuf,
}

impl PdElves {
    /// The programs of one cargo build: the console and switch ELFs next to the VMM ELF.
    pub fn beside(vmm: &Path) -> PdElves {
        PdElves {
            vmm: vmm.to_path_buf(),
            console: vmm.with_file_name("keel-sel4-console"),
            switch: vmm.with_file_name("keel-sel4-switch"),
            admin: vmm.with_file_name("keel-sel4-admin"),
        }
    }
}

/// Build the generic protection domains (`keel-sel4-vmm`, `keel-sel4-console`,
/// `keel-sel4-switch`) for seL4 with one cargo build, in the workspace at `repo` and the
/// target directory `target_dir`, and return the ELFs' paths. `Err` carries a one-line
/// reason (cargo missing, the build failing).
pub fn build_pd_elves(repo: &Path, target_dir: &Path) -> Result<PdElves, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo)
        .args([
            "build",
            "-q",
            "-p",
            "keel-sel4",
            "--bin",
            "keel-sel4-vmm",
            "--bin",
            "keel-sel4-console",
            "--bin",
            "keel-sel4-switch",
            "--bin",
            "keel-sel4-admin",
            "--release",
            "--target",
            "aarch64-unknown-none",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .map_err(|e| {
            format!(
                "cannot run cargo to build the VMM, console, switch and admin ELFs in {}: {e}",
                repo.display()
            )
        })?;
    if !status.success() {
        return Err(format!(
            "building keel-sel4-vmm, keel-sel4-console, keel-sel4-switch and keel-sel4-admin failed ({status}); is the aarch64-unknown-none target installed?"
        ));
    }
    Ok(PdElves::beside(
        &target_dir.join("aarch64-unknown-none/release/keel-sel4-vmm"),
    ))
}

/// The QEMU command that boots `image` (board `qemu_virt_aarch64`).
pub fn qemu_command(image: &Path, smp: u32) -> Command {
    let mut c = Command::new("qemu-system-aarch64");
    c.args([
        "-machine",
        "virt,virtualization=on",
        "-cpu",
        "cortex-a53",
        "-smp",
    ])
    .arg(smp.max(1).to_string())
    .args(["-m", "2G", "-nographic", "-serial", "mon:stdio", "-device"])
    .arg(format!(
        "loader,file={},addr={:#x},cpu-num=0",
        image.display(),
        board::LOADER_LINK_ADDRESS
    ));
    c
}

/// What a run of an image under QEMU saw.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// VMMs that came up (`keel-sel4: vmm up`).
    pub vms_up: usize,
    /// VMs that stopped (power-off or error).
    pub vms_stopped: usize,
    /// Seconds from QEMU start to the first `KEEL-GUEST-READY` line, if one appeared.
    pub first_ready: Option<f64>,
    /// Seconds from QEMU start to the end.
    pub elapsed: f64,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// QEMU could not be started.
    #[error("cannot start qemu-system-aarch64: {0} (Debian: apt-get install qemu-system-arm)")]
    Spawn(std::io::Error),
    /// Time ran out.
    #[error("timeout after {secs}s ({up} VMs up, {stopped} stopped)")]
    Timeout {
        /// The limit.
        secs: u64,
        /// VMs up.
        up: usize,
        /// VMs stopped.
        stopped: usize,
    },
    /// QEMU ended first.
    #[error("QEMU exited before every VM stopped")]
    QemuExited,
}

/// The number of VMs of the image `keel sel4 build` wrote into `dir` (one `*.system` file
/// there), if it can tell.
pub fn vms_in_build_dir(dir: &Path) -> Option<usize> {
    let mut systems = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "system"));
    let (Some(one), None) = (systems.next(), systems.next()) else {
        return None;
    };
    let text = std::fs::read_to_string(one).ok()?;
    Some(text.matches("<virtual_machine ").count())
}

/// Boot `image` under QEMU, copy the console to `out`, and return once every VM has
/// stopped (QEMU is then ended: the seL4 system itself never exits). `expected_vms`: how
/// many VMs to wait for; `None` waits for every VMM seen coming up. `interactive`: QEMU
/// reads this process's stdin (the console PD routes typed input to the focused VM's
/// console, the first VM's at start; `@N` then Enter switches: docs/console.md).
pub fn run_qemu(
    image: &Path,
    smp: u32,
    timeout: Option<Duration>,
    expected_vms: Option<usize>,
    interactive: bool,
    out: &mut dyn Write,
) -> Result<RunOutcome, RunError> {
    let start = Instant::now();
    let mut child = qemu_command(image, smp)
        .stdin(if interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(RunError::Spawn)?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(RunError::QemuExited);
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut o = RunOutcome {
        vms_up: 0,
        vms_stopped: 0,
        first_ready: None,
        elapsed: 0.0,
    };
    let result = loop {
        let wait = match timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(left) => left.min(Duration::from_millis(500)),
                None => {
                    break Err(RunError::Timeout {
                        secs: t.as_secs(),
                        up: o.vms_up,
                        stopped: o.vms_stopped,
                    });
                }
            },
            None => Duration::from_millis(500),
        };
        let line = match rx.recv_timeout(wait) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(RunError::QemuExited);
            }
        };
        let _ = out.write_all(line.as_bytes());
        if line.contains("keel-sel4: vmm up") {
            o.vms_up += 1;
        }
        if o.first_ready.is_none() && line.contains("KEEL-GUEST-READY") {
            o.first_ready = Some(start.elapsed().as_secs_f64());
        }
        if (line.contains("keel-sel4: vm ") && line.contains(": stopped: "))
            || line.contains("cannot start the VM")
        {
            o.vms_stopped += 1;
            if o.vms_stopped >= expected_vms.unwrap_or(o.vms_up).max(o.vms_up) {
                break Ok(());
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = out.flush();
    o.elapsed = start.elapsed().as_secs_f64();
    result.map(|()| o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tool's output for one Debian VM with 128 MiB of RAM in 8 of 16 colours: that
    /// image stopped at boot with OutOfSlots (smp-debug, 2^17 slots).
    const LOG_128M: &str = "MICROKIT|CAPDL SPEC: number of root objects = 49893, spec footprint = 8.24 MiB\n\
        MICROKIT|INITIAL TASK: memory size = 74.57 MiB\n\
        MICROKIT|LOADER: image file size = 76.89 MiB\n";

    /// The same VM with 96 MiB: that image booted to KEEL-GUEST-READY.
    const LOG_96M: &str = "MICROKIT|CAPDL SPEC: number of root objects = 41669, spec footprint = 6.74 MiB\n\
        MICROKIT|INITIAL TASK: memory size = 73.07 MiB\n";

    #[test]
    fn the_tools_report_is_read_from_its_output() {
        let r = ToolReport::parse(LOG_128M).unwrap();

        assert_eq!(r.root_objects, 49893);
        // 74.575 MiB, the top of what "74.57 MiB" stands for.
        assert_eq!(r.initial_task_bytes, 78_197_556);
    }

    #[test]
    fn output_without_the_report_lines_reads_as_none() {
        assert_eq!(
            ToolReport::parse("MICROKIT|LOADER: image file size = 2 MiB"),
            None
        );
    }

    #[test]
    fn sizes_read_in_the_tools_units() {
        assert_eq!(human_size("1,024 bytes"), Some(1024));
        assert_eq!(human_size("2 GiB"), Some(2 << 30));
        assert_eq!(human_size("12 parsecs"), None);
    }

    #[test]
    fn the_slot_estimate_refuses_the_image_that_ran_out_and_passes_the_one_that_booted() {
        let slots = 1u64 << 17;
        let out = ToolReport::parse(LOG_128M).unwrap();
        let booted = ToolReport::parse(LOG_96M).unwrap();

        assert!(out.initialiser_slots(128 << 8) > slots);
        assert!(booted.initialiser_slots(96 << 8) <= slots);
    }

    #[test]
    fn the_colour_pool_ends_below_the_kernels_boot_objects() {
        // 2^17 slots of 32 bytes: a 4 MiB CNode; the 16 MiB reserve covers twice that.
        assert_eq!(colour_pool_end(17), 0xBF00_0000);
        // 2^20 slots: a 32 MiB CNode, 64 MiB kept.
        assert_eq!(colour_pool_end(20), 0xBC00_0000);
        // A CNode larger than RAM leaves no pool (and no underflow).
        assert_eq!(colour_pool_end(30), 0);
    }

    #[test]
    fn gen_config_numbers_are_read_by_name() {
        let text = "#define CONFIG_MAX_NUM_NODES 4\n#define CONFIG_ROOT_CNODE_SIZE_BITS  17\n";

        assert_eq!(
            gen_config_number(text, "CONFIG_ROOT_CNODE_SIZE_BITS"),
            Some(17)
        );
        assert_eq!(gen_config_number(text, "CONFIG_NOPE"), None);
        assert_eq!(kernel_cores(text), Some(4));
    }
}

#[cfg(test)]
mod forward_tests {
    use super::*;

    fn link(link: usize, client: usize, disk: usize, server: usize, serve: usize) -> ForwardLink {
        ForwardLink {
            link,
            region: keel_spec::microkit::forward_region_name(link),
            size: 0x20_3000,
            region_len: 0x20_2000,
            client,
            client_disk: disk,
            client_vaddr: 0x6_0000_0000 + disk as u64 * 0x20_3000,
            client_channel: 10 + disk as u32,
            server,
            serve,
            server_gpa: 0x80_0000_0000 + serve as u64 * 0x40_0000,
            server_channel: 20 + serve as u32,
        }
    }

    #[test]
    fn forward_windows_give_a_client_its_disks_in_disk_order_and_a_server_its_clients_in_serves_order()
     {
        // VM 1 is the client of links 0 and 1 (disks 2 and 0, out of order) and VM 0 serves
        // them as its clients 1 and 0.
        let links = [link(0, 1, 2, 0, 1), link(1, 1, 0, 0, 0)];

        let client = forward_windows(&links, 1);
        let server = forward_windows(&links, 0);
        let neither = forward_windows(&links, 2);

        assert_eq!(
            client
                .forwards
                .iter()
                .map(|f| (f.disk, f.vaddr, f.len, f.channel))
                .collect::<Vec<_>>(),
            [
                (0, 0x6_0000_0000, 0x20_3000, 10),
                (2, 0x6_0040_6000, 0x20_3000, 12)
            ]
        );
        assert!(client.serves.is_empty());
        assert!(server.forwards.is_empty());
        assert_eq!(server.serves, [20, 21]);
        assert_eq!(neither, LinkWindows::default());
    }
}

#[cfg(test)]
mod vsock_tests {
    use super::*;
    use keel_spec::microkit::VsockEnd;

    fn link(pair: usize, first: (usize, usize), second: (usize, usize)) -> VsockLink {
        let end = |(vm, peer): (usize, usize), channel: u32| VsockEnd {
            vm,
            peer,
            tx_vaddr: 0x7_0000_0000 + peer as u64 * 0x10_0000,
            rx_vaddr: 0x7_0008_0000 + peer as u64 * 0x10_0000,
            channel,
        };
        VsockLink {
            pair,
            rings: [
                keel_spec::microkit::vsock_region_name(pair, 0),
                keel_spec::microkit::vsock_region_name(pair, 1),
            ],
            size: 0x8_1000,
            ring_len: 0x8_0100,
            slots: 256,
            ends: [end(first, 10 + pair as u32), end(second, 20 + pair as u32)],
        }
    }

    #[test]
    fn vsock_windows_give_a_vmm_each_of_its_ends_in_peer_order() {
        // VM 0 is the second of pair 0 (its peer 1) and the first of pair 1 (its peer 0);
        // VM 2 is in neither.
        let links = [link(0, (1, 0), (0, 1)), link(1, (0, 0), (3, 0))];

        let w = vsock_windows(&links, 0);

        assert_eq!(
            w.iter()
                .map(|w| (w.pair, w.tx, w.rx, w.channel))
                .collect::<Vec<_>>(),
            [
                (1, 0x7_0000_0000, 0x7_0008_0000, 11),
                (0, 0x7_0010_0000, 0x7_0018_0000, 20)
            ]
        );
        assert!(w.iter().all(|w| (w.ring_len, w.slots) == (0x8_0100, 256)));
        assert!(vsock_windows(&links, 2).is_empty());
    }
}
