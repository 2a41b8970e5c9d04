//! `KvmHypervisor` and `KvmVm`: `/dev/kvm`, guest RAM, the in-kernel interrupt controllers,
//! interrupt lines and ioeventfds.

use std::any::Any;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use keel_core::hv::VmConfig;
use keel_core::memory::{GuestRam, RawRegion};
use keel_core::{HvError, Hypervisor, IrqLine, VcpuId, Vm};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::host::{self, VmArch};
use crate::log;
use crate::vcpu::KvmVcpu;

/// Map a kvm-ioctls error to [`HvError::Call`] naming the ioctl.
pub(crate) fn call(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> HvError {
    move |e| HvError::Call {
        op,
        errno: e.errno(),
    }
}

/// The Linux KVM hypervisor (`/dev/kvm`).
#[derive(Debug)]
pub struct KvmHypervisor {
    kvm: Kvm,
}

impl KvmHypervisor {
    /// Open `/dev/kvm` and check its API version.
    pub fn new() -> Result<KvmHypervisor, HvError> {
        let kvm = match crate::sandbox::kept(std::path::Path::new("/dev/kvm")) {
            // SAFETY: a fresh descriptor of /dev/kvm (a clone of the sandbox's), owned by
            // the Kvm from here on.
            Some(Ok(f)) => unsafe { Kvm::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(f)) },
            Some(Err(e)) => {
                return Err(HvError::Call {
                    op: "open /dev/kvm",
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                });
            }
            None => Kvm::new().map_err(call("open /dev/kvm"))?,
        };
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(HvError::Invalid {
                what: "KVM API version (Keel needs 12)",
                value: version as u64,
            });
        }
        Ok(KvmHypervisor { kvm })
    }
}

impl Hypervisor for KvmHypervisor {
    type Vm = KvmVm;

    fn name(&self) -> &'static str {
        "kvm"
    }

    fn create_vm(&self, config: &VmConfig) -> Result<KvmVm, HvError> {
        KvmVm::new(&self.kvm, config)
    }
}

/// An anonymous host mapping backing one guest RAM region; unmapped on drop.
#[derive(Debug)]
struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    fn new(len: u64) -> Result<Mapping, HvError> {
        let size = usize::try_from(len).map_err(|_| HvError::Invalid {
            what: "guest RAM region size",
            value: len,
        })?;
        // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing
        // memory; the result is checked for MAP_FAILED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(HvError::Call {
                op: "mmap of guest RAM",
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        Ok(Mapping {
            addr: addr as usize,
            len: size,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned, and the last user of the
        // memory (every GuestRam clone, and the VM whose slots point here) is gone.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct KvmVm {
    fd: Arc<VmFd>,
    ram: GuestRam,
    arch: VmArch,
    vcpus: u32,
    /// Keeps the RAM mapped for as long as the VM (whose memory slots point there) lives.
    _mappings: Arc<Vec<Mapping>>,
    /// Keeps the shared regions mapped for as long as the VM lives (their slots point there).
    shared: std::sync::Mutex<Vec<Arc<crate::net::Mapping>>>,
}

/// Memory slot of shared region `i` of a VM: after every possible RAM slot (at most
/// `keel_spec::limits::MAX_RAM_REGIONS`, which is below this).
pub const SHARED_SLOT_BASE: u32 = 32;

impl KvmVm {
    fn new(kvm: &Kvm, config: &VmConfig) -> Result<KvmVm, HvError> {
        if config.vcpus == 0 {
            return Err(HvError::Invalid {
                what: "vCPU count",
                value: 0,
            });
        }
        let fd = kvm.create_vm().map_err(call("KVM_CREATE_VM"))?;
        let arch = host::create_vm_arch(kvm, &fd, config.vcpus)?;

        let mut mappings = Vec::with_capacity(config.ram.len());
        let mut raw = Vec::with_capacity(config.ram.len());
        for (slot, &(gpa, len)) in config.ram.iter().enumerate() {
            let m = Mapping::new(len)?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: m.addr as u64,
            };
            // SAFETY: the region points at a mapping of exactly `len` bytes that `_mappings`
            // keeps alive at least as long as the VM fd (dropped first: field order).
            unsafe { fd.set_user_memory_region(region) }
                .map_err(call("KVM_SET_USER_MEMORY_REGION"))?;
            raw.push(RawRegion {
                gpa,
                len,
                host: m.addr as *mut u8,
            });
            mappings.push(m);
        }
        let mappings = Arc::new(mappings);
        let owner: Arc<dyn Any + Send + Sync> = mappings.clone();
        // SAFETY: each host pointer is a fresh mmap of `len` bytes, kept alive by `owner`,
        // and never accessed through Rust references (only the guest and GuestRam's copies).
        let ram = unsafe { GuestRam::from_raw(&raw, owner) }.map_err(|e| HvError::Invalid {
            what: match e {
                keel_core::memory::LayoutError::Overlap { .. } => "overlapping guest RAM region",
                keel_core::memory::LayoutError::BadRegion { .. } => "guest RAM region",
            },
            value: match e {
                keel_core::memory::LayoutError::Overlap { b, .. } => b,
                keel_core::memory::LayoutError::BadRegion { gpa, .. } => gpa,
            },
        })?;
        Ok(KvmVm {
            fd: Arc::new(fd),
            ram,
            arch,
            vcpus: config.vcpus,
            _mappings: mappings,
            shared: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Map shared region number `index` of this VM (its order in the plan's `shared`) at
    /// guest-physical `gpa`, backed by `mapping` (a `MAP_SHARED` mapping of the region's
    /// memory file, as every other VM naming the region maps it). Read-only
    /// (`KVM_MEM_READONLY`): guest reads hit memory, guest writes exit as MMIO writes.
    /// The guest's RAM ([`Vm::ram`]) does not include it: devices do not reach it.
    pub fn map_shared(
        &self,
        index: u32,
        gpa: u64,
        mapping: Arc<crate::net::Mapping>,
        read_only: bool,
    ) -> Result<(), HvError> {
        let slot = SHARED_SLOT_BASE
            .checked_add(index)
            .ok_or(HvError::Invalid {
                what: "shared region index",
                value: index.into(),
            })?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: if read_only {
                kvm_bindings::KVM_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: gpa,
            memory_size: mapping.len() as u64,
            userspace_addr: mapping.as_ptr() as u64,
        };
        // SAFETY: the region points at a live `MAP_SHARED` mapping of exactly its length,
        // kept alive by `self.shared` for as long as this VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(call("KVM_SET_USER_MEMORY_REGION (shared region)"))?;
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(mapping);
        Ok(())
    }

    /// An eventfd KVM signals when the guest writes `value` (32 bits) to MMIO `gpa`:
    /// virtio-mmio's QueueNotify without a vCPU exit to userspace.
    pub fn ioeventfd(&self, gpa: u64, value: u32) -> Result<EventFd, HvError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| HvError::Call {
            op: "eventfd",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        self.fd
            .register_ioevent(&fd, &IoEventAddress::Mmio(gpa), value)
            .map_err(call("KVM_IOEVENTFD"))?;
        Ok(fd)
    }

    /// The GIC the guest's device tree must describe (arm64); x86 has none, and the value
    /// is not used there.
    pub fn gic_version(&self) -> keel_core::arch::aarch64::layout::GicVersion {
        #[cfg(target_arch = "aarch64")]
        {
            self.arch.gic()
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            keel_core::arch::aarch64::layout::GicVersion::V2
        }
    }

    /// Finish the interrupt controller once every vCPU exists (arm64: the vGIC's number of
    /// interrupts and `CTRL_INIT`; nothing on x86). Call before the first vCPU runs.
    pub fn complete_irqchip(&self) -> Result<(), HvError> {
        self.arch.complete()
    }
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;

    fn ram(&self) -> &GuestRam {
        &self.ram
    }

    fn create_vcpu(&self, id: VcpuId) -> Result<KvmVcpu, HvError> {
        if id >= self.vcpus {
            return Err(HvError::Invalid {
                what: "vCPU id",
                value: id.into(),
            });
        }
        let fd = self
            .fd
            .create_vcpu(id.into())
            .map_err(call("KVM_CREATE_VCPU"))?;
        let arch = host::setup_vcpu(&self.arch, &fd, id, self.vcpus)?;
        Ok(KvmVcpu::new(fd, id, self.ram.clone(), arch))
    }

    fn irq_line(&self, irq: u32) -> Result<Arc<dyn IrqLine>, HvError> {
        Ok(Arc::new(KvmIrqLine {
            vm: self.fd.clone(),
            line: host::irq_line_number(irq)?,
            level: Mutex::new(false),
        }))
    }
}

/// A level-triggered interrupt line driven with `KVM_IRQ_LINE` (an IOAPIC pin on x86, an
/// SPI of the vGIC on arm64, where the same reasoning holds: see [`crate::arch::aarch64`]).
///
/// Why `KVM_IRQ_LINE` and not an irqfd: virtio-mmio interrupts are level-style (the line
/// stays up while `InterruptStatus` is non-zero, the guest lowers it with `InterruptACK`).
/// `KVM_IRQ_LINE` sets the IOAPIC pin to exactly the device's level, so a level-triggered
/// pin re-delivers after EOI while the device still has something to say, and the line
/// drops the moment the guest acknowledges. A plain irqfd only gives edges (an interrupt
/// raised while the pin is still asserted is lost), and a resampling irqfd needs a thread
/// to re-check the device at each EOI. The cost is one ioctl per level *change*, about
/// the cost of an eventfd write.
#[derive(Debug)]
struct KvmIrqLine {
    vm: Arc<VmFd>,
    /// The `KVM_IRQ_LINE` number: the GSI on x86, `SPI type << 24 | INTID` on arm64.
    line: u32,
    /// The level KVM was last told; the lock orders concurrent changes so KVM ends up
    /// with the level of the last caller.
    level: Mutex<bool>,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        let mut level = self.level.lock().unwrap_or_else(|p| p.into_inner());
        if *level == high {
            return;
        }
        match self.vm.set_irq_line(self.line, high) {
            Ok(()) => *level = high,
            Err(e) => log::warn(format_args!(
                "KVM_IRQ_LINE {:#x} level {} failed: errno {}",
                self.line,
                u8::from(high),
                e.errno()
            )),
        }
    }

    fn trigger(&self) {
        // An edge: up and down under one lock, whatever the recorded level.
        let mut level = self.level.lock().unwrap_or_else(|p| p.into_inner());
        for high in [true, false] {
            if let Err(e) = self.vm.set_irq_line(self.line, high) {
                log::warn(format_args!(
                    "KVM_IRQ_LINE {:#x} edge failed: errno {}",
                    self.line,
                    e.errno()
                ));
            }
        }
        *level = false;
    }
}

impl KvmVm {
    /// Bytes of guest RAM resident in host memory (pages the guest or the VMM touched).
    pub fn resident_bytes(&self) -> u64 {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mut total = 0u64;
        for m in self._mappings.iter() {
            let pages = m.len.div_ceil(page);
            let mut vec = vec![0u8; pages];
            // SAFETY: `addr`/`len` describe a live mapping we own; `vec` has one byte per page.
            let rc = unsafe { libc::mincore(m.addr as *mut libc::c_void, m.len, vec.as_mut_ptr()) };
            if rc == 0 {
                total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64;
            }
        }
        total
    }
}
