//! x86_64 on KVM: the in-kernel PIC/IOAPIC/PIT, CPUID, MSRs, FPU and LAPIC of each vCPU, the
//! boot registers (PVH 32-bit entry, 64-bit Linux boot protocol). The PC platform itself
//! (COM1, i8042, ACPI, the firmware description) is keel-vmm's.

use keel_core::arch::x86_64::gdt::{
    CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, GDT_SIZE, Segment, TSS_SELECTOR,
};
use keel_core::arch::x86_64::layout::{KVM_IDENTITY_MAP_GPA, KVM_TSS_GPA};
use keel_core::memory::{GuestAddress, GuestMemory, GuestRam};
use keel_core::{BootEntry, HvError, VcpuId};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, Msrs, kvm_fpu, kvm_msr_entry,
    kvm_pit_config, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::cpuid;
use crate::hv::call;
use crate::log;

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "kvm (x86_64)";

// MSR numbers set at boot (as Firecracker does).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Local APIC registers and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Per-VM x86 state: the CPUID KVM supports (each vCPU gets a fixed-up copy).
#[derive(Debug)]
pub(crate) struct VmArch {
    cpuid: CpuId,
}

/// Per-vCPU x86 state (none beyond what KVM keeps).
#[derive(Debug)]
pub(crate) struct VcpuArch;

/// VM-wide setup before memory and vCPUs: TSS and identity map addresses, the in-kernel
/// PIC + IOAPIC + LAPICs and PIT, and the supported CPUID.
pub(crate) fn create_vm_arch(kvm: &Kvm, fd: &VmFd, _vcpus: u32) -> Result<VmArch, HvError> {
    fd.set_tss_address(KVM_TSS_GPA as usize)
        .map_err(call("KVM_SET_TSS_ADDR"))?;
    fd.set_identity_map_address(KVM_IDENTITY_MAP_GPA)
        .map_err(call("KVM_SET_IDENTITY_MAP_ADDR"))?;
    fd.create_irq_chip().map_err(call("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(call("KVM_CREATE_PIT2"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(call("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(VmArch { cpuid })
}

impl VmArch {
    /// After every vCPU exists: nothing more on x86 (the irqchip is complete at creation).
    pub(crate) fn complete(&self) -> Result<(), HvError> {
        Ok(())
    }
}

/// The `KVM_IRQ_LINE` number of device interrupt `gsi`: the IOAPIC pin itself.
pub(crate) fn irq_line_number(gsi: u32) -> Result<u32, HvError> {
    // The in-kernel IOAPIC has 24 pins.
    if gsi >= 24 {
        return Err(HvError::Invalid {
            what: "GSI (the IOAPIC has 24 pins)",
            value: gsi.into(),
        });
    }
    Ok(gsi)
}

/// CPUID, MSRs, FPU and LAPIC: the state every vCPU needs, boot or parked.
pub(crate) fn setup_vcpu(
    vm: &VmArch,
    fd: &VcpuFd,
    id: VcpuId,
    vcpus: u32,
) -> Result<VcpuArch, HvError> {
    let mut cpuid = vm.cpuid.clone();
    cpuid::fix_entries(cpuid.as_mut_slice(), id, vcpus);
    fd.set_cpuid2(&cpuid).map_err(call("KVM_SET_CPUID2"))?;
    let boot_msrs = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ];
    let entries: Vec<kvm_msr_entry> = boot_msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| HvError::Invalid {
        what: "MSR count",
        value: entries.len() as u64,
    })?;
    let set = fd.set_msrs(&msrs).map_err(call("KVM_SET_MSRS"))?;
    if set != entries.len() {
        // KVM stops at the first MSR it refuses; the rest keep their reset values,
        // which are the same zeros for all but MISC_ENABLE.
        log::debug(format_args!(
            "vcpu {id}: KVM accepted {set} of {} boot MSRs",
            entries.len()
        ));
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(call("KVM_SET_FPU"))?;
    // LINT0 delivers the 8259's ExtINT, LINT1 NMI (the MP table says the same).
    let mut lapic = fd.get_lapic().map_err(call("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: &mut [i8] = &mut lapic.regs[reg..reg + 4];
        let mut v = [0u8; 4];
        for (d, s) in v.iter_mut().zip(bytes.iter()) {
            *d = *s as u8;
        }
        let value = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
        for (d, s) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *d = s as i8;
        }
    }
    fd.set_lapic(&lapic).map_err(call("KVM_SET_LAPIC"))?;
    Ok(VcpuArch)
}

fn kvm_segment(s: Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: (!s.present).into(),
        padding: 0,
    }
}

fn set_segments(fd: &VcpuFd, code: u16, gdt_gpa: u64, long: Option<u64>) -> Result<(), HvError> {
    let mut sregs = fd.get_sregs().map_err(call("KVM_GET_SREGS"))?;
    sregs.gdt.base = gdt_gpa;
    sregs.gdt.limit = GDT_SIZE - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = kvm_segment(Segment::from_gdt(code));
    let data = kvm_segment(Segment::from_gdt(DATA_SELECTOR));
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment(Segment::from_gdt(TSS_SELECTOR));
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if let Some(cr3) = long {
        sregs.cr3 = cr3;
        sregs.cr4 |= CR4_PAE;
        sregs.cr0 |= CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    }
    fd.set_sregs(&sregs).map_err(call("KVM_SET_SREGS"))
}

/// Put the vCPU at `entry`.
pub(crate) fn set_boot_entry(
    _arch: &VcpuArch,
    fd: &VcpuFd,
    entry: &BootEntry,
) -> Result<(), HvError> {
    match *entry {
        BootEntry::X86Pvh { eip, ebx, gdt_gpa } => {
            set_segments(fd, CODE32_SELECTOR, gdt_gpa, None)?;
            let regs = kvm_regs {
                rip: eip.into(),
                rbx: ebx.into(),
                rflags: 0x2,
                ..Default::default()
            };
            fd.set_regs(&regs).map_err(call("KVM_SET_REGS"))
        }
        BootEntry::X86Long {
            rip,
            rsi,
            cr3,
            gdt_gpa,
            rsp,
        } => {
            set_segments(fd, CODE64_SELECTOR, gdt_gpa, Some(cr3))?;
            let regs = kvm_regs {
                rip,
                rsi,
                rsp,
                rbp: rsp,
                rflags: 0x2,
                ..Default::default()
            };
            fd.set_regs(&regs).map_err(call("KVM_SET_REGS"))
        }
        // KVM's in-kernel LAPIC keeps an AP in wait-for-SIPI until the guest starts it.
        BootEntry::Parked => Ok(()),
        _ => Err(HvError::Unsupported {
            backend: BACKEND,
            what: "this boot entry",
        }),
    }
}

/// Where the vCPU stopped, with the instruction bytes at RIP where readable.
pub(crate) fn fault_detail(fd: &VcpuFd, ram: &GuestRam) -> String {
    let Ok(regs) = fd.get_regs() else {
        return String::new();
    };
    let mut s = format!(" at rip {:#x}", regs.rip);
    if let Ok(t) = fd.translate_gva(regs.rip) {
        if t.valid != 0 {
            let mut insn = [0u8; 8];
            if ram
                .read(GuestAddress(t.physical_address), &mut insn)
                .is_ok()
            {
                let bytes: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
                s.push_str(&format!(" (bytes {})", bytes.join(" ")));
            }
        }
    }
    s
}
