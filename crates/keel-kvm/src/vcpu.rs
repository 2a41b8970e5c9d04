//! A KVM vCPU: architectural setup (CPUID, MSRs, FPU, LAPIC, boot registers) and the
//! `KVM_RUN` loop step that turns KVM exits into [`keel_core::VcpuExit`] data.

use std::cell::Cell;
use std::fmt::Write as _;

use keel_core::arch::x86_64::gdt::{
    CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, GDT_SIZE, Segment, TSS_SELECTOR,
};
use keel_core::memory::{GuestAddress, GuestMemory, GuestRam};
use keel_core::{BootEntry, ExitAnswer, HvError, SystemEvent, Vcpu, VcpuExit, VcpuId};
use kvm_bindings::{
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs, kvm_fpu,
    kvm_msr_entry, kvm_regs, kvm_segment,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::hv::call;
use crate::log;

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

thread_local! {
    /// The `immediate_exit` byte of the vCPU this thread runs, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: make the interrupted (or the next) `KVM_RUN` return at once.
pub(crate) extern "C" fn kick_handler(
    _num: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // `try_with` never allocates for a const-initialised thread local; it fails only while
    // the thread is being torn down, when there is nothing to kick.
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer was set by `KvmVcpu::run` on this very thread to the
            // `immediate_exit` byte of its `kvm_run` mapping, which lives as long as the
            // vCPU; a single-byte volatile store is async-signal-safe.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
    });
}

/// A read exit waiting for its answer: where the data goes in `kvm_run`.
#[derive(Clone, Copy, Debug)]
enum Pending {
    None,
    Read { offset: usize, len: usize },
}

/// One KVM vCPU.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    id: VcpuId,
    pending: Pending,
    ram: GuestRam,
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

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl KvmVcpu {
    pub(crate) fn new(fd: VcpuFd, id: VcpuId, ram: GuestRam) -> KvmVcpu {
        KvmVcpu {
            fd,
            id,
            pending: Pending::None,
            ram,
        }
    }

    /// CPUID, MSRs, FPU and LAPIC: the state every vCPU needs, boot or parked.
    pub(crate) fn setup(&self, cpuid: &kvm_bindings::CpuId) -> Result<(), HvError> {
        self.fd.set_cpuid2(cpuid).map_err(call("KVM_SET_CPUID2"))?;
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
        let set = self.fd.set_msrs(&msrs).map_err(call("KVM_SET_MSRS"))?;
        if set != entries.len() {
            // KVM stops at the first MSR it refuses; the rest keep their reset values,
            // which are the same zeros for all but MISC_ENABLE.
            log::debug(format_args!(
                "vcpu {}: KVM accepted {set} of {} boot MSRs",
                self.id,
                entries.len()
            ));
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(call("KVM_SET_FPU"))?;
        // LINT0 delivers the 8259's ExtINT, LINT1 NMI (the MP table says the same).
        let mut lapic = self.fd.get_lapic().map_err(call("KVM_GET_LAPIC"))?;
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
        self.fd.set_lapic(&lapic).map_err(call("KVM_SET_LAPIC"))?;
        Ok(())
    }

    fn set_segments(&self, code: u16, gdt_gpa: u64, long: Option<u64>) -> Result<(), HvError> {
        let mut sregs = self.fd.get_sregs().map_err(call("KVM_GET_SREGS"))?;
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
        self.fd.set_sregs(&sregs).map_err(call("KVM_SET_SREGS"))
    }

    /// Write the answer of the previous read exit into `kvm_run`.
    fn complete(&mut self, answer: ExitAnswer) -> Result<(), HvError> {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        let value = match (pending, answer) {
            (Pending::None, ExitAnswer::None) => return Ok(()),
            (Pending::Read { .. }, ExitAnswer::Read(value)) => value,
            // A read nobody answered (the VMM is stopping this vCPU): the guest reads zero.
            (Pending::Read { .. }, ExitAnswer::None) => 0,
            (_, other) => {
                return Err(HvError::Invalid {
                    what: "exit answer (it does not fit the previous exit)",
                    value: match other {
                        ExitAnswer::Read(v) => v,
                        _ => 0,
                    },
                });
            }
        };
        if let Pending::Read { offset, len } = pending {
            let run = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *mut u8;
            let bytes = value.to_le_bytes();
            // SAFETY: `offset..offset + len` is where KVM told us (on the read exit) the data
            // lives inside the `kvm_run` mapping, which stays mapped while `fd` lives;
            // `len <= 8` was checked when the exit was decoded.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), run.add(offset), len);
            }
        }
        Ok(())
    }

    /// What KVM says about an internal error, with the instruction at RIP where readable.
    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
        // member KVM filled in.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            1 => "emulation failure",
            2 => "exception while delivering an exception",
            3 => "cannot deliver an event",
            4 => "unexpected exit reason",
            _ => "internal error",
        };
        let mut s = format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {} ({what})",
            internal.suberror
        );
        let n = (internal.ndata as usize).min(internal.data.len());
        if n > 0 {
            let data: Vec<String> = internal.data[..n]
                .iter()
                .map(|d| format!("{d:#x}"))
                .collect();
            let _ = write!(s, ", data [{}]", data.join(", "));
        }
        s.push_str(&self.rip_detail());
        s
    }

    fn rip_detail(&self) -> String {
        let Ok(regs) = self.fd.get_regs() else {
            return String::new();
        };
        let mut s = format!(" at rip {:#x}", regs.rip);
        if let Ok(t) = self.fd.translate_gva(regs.rip) {
            if t.valid != 0 {
                let mut insn = [0u8; 8];
                if self
                    .ram
                    .read(GuestAddress(t.physical_address), &mut insn)
                    .is_ok()
                {
                    let bytes: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
                    let _ = write!(s, " (bytes {})", bytes.join(" "));
                }
            }
        }
        s
    }

    fn fault(&self, detail: String) -> HvError {
        HvError::GuestFault {
            vcpu: self.id,
            detail,
        }
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Forget this vCPU's `immediate_exit` byte before `kvm_run` is unmapped (the fields
        // drop after this), so a late kick signal to this thread writes nowhere.
        let ours = std::ptr::addr_of_mut!(self.fd.get_kvm_run().immediate_exit);
        let _ = IMMEDIATE_EXIT.try_with(|p| {
            if p.get() == ours {
                p.set(std::ptr::null_mut());
            }
        });
    }
}

/// The kernel's errno of a kvm-ioctls error.
fn errno_of(e: &kvm_ioctls::Error) -> i32 {
    e.errno()
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> VcpuId {
        self.id
    }

    fn set_boot_entry(&mut self, entry: &BootEntry) -> Result<(), HvError> {
        match *entry {
            BootEntry::X86Pvh { eip, ebx, gdt_gpa } => {
                self.set_segments(CODE32_SELECTOR, gdt_gpa, None)?;
                let regs = kvm_regs {
                    rip: eip.into(),
                    rbx: ebx.into(),
                    rflags: 0x2,
                    ..Default::default()
                };
                self.fd.set_regs(&regs).map_err(call("KVM_SET_REGS"))
            }
            BootEntry::X86Long {
                rip,
                rsi,
                cr3,
                gdt_gpa,
                rsp,
            } => {
                self.set_segments(CODE64_SELECTOR, gdt_gpa, Some(cr3))?;
                let regs = kvm_regs {
                    rip,
                    rsi,
                    rsp,
                    rbp: rsp,
                    rflags: 0x2,
                    ..Default::default()
                };
                self.fd.set_regs(&regs).map_err(call("KVM_SET_REGS"))
            }
            // KVM's in-kernel LAPIC keeps an AP in wait-for-SIPI until the guest starts it.
            BootEntry::Parked => Ok(()),
            _ => Err(HvError::Unsupported {
                backend: "kvm (x86_64)",
                what: "this boot entry",
            }),
        }
    }

    fn run(&mut self, answer: ExitAnswer) -> Result<VcpuExit, HvError> {
        self.complete(answer)?;
        let run_ptr = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run;
        // SAFETY: `run_ptr` points into this vCPU's live `kvm_run` mapping; taking the
        // address of a field does not read or write it.
        let immediate_exit = unsafe { std::ptr::addr_of_mut!((*run_ptr).immediate_exit) };
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        let base = run_ptr as usize;

        enum Decoded {
            Exit(VcpuExit),
            Internal,
            Fault(String),
        }
        let decoded = match self.fd.run() {
            Ok(KvmExit::IoOut(port, data)) => match data.len() {
                1 | 2 | 4 => Decoded::Exit(VcpuExit::PioWrite {
                    port,
                    len: data.len() as u8,
                    data: le_value(data) as u32,
                }),
                n => Decoded::Fault(format!(
                    "string port I/O (rep outs) of {n} bytes to port {port:#x} is not supported"
                )),
            },
            Ok(KvmExit::IoIn(port, data)) => match data.len() {
                1 | 2 | 4 => {
                    self.pending = Pending::Read {
                        offset: data.as_ptr() as usize - base,
                        len: data.len(),
                    };
                    Decoded::Exit(VcpuExit::PioRead {
                        port,
                        len: data.len() as u8,
                    })
                }
                n => Decoded::Fault(format!(
                    "string port I/O (rep ins) of {n} bytes from port {port:#x} is not supported"
                )),
            },
            Ok(KvmExit::MmioRead(gpa, data)) if data.len() <= 8 => {
                self.pending = Pending::Read {
                    offset: data.as_ptr() as usize - base,
                    len: data.len(),
                };
                Decoded::Exit(VcpuExit::MmioRead {
                    gpa,
                    len: data.len() as u8,
                })
            }
            Ok(KvmExit::MmioWrite(gpa, data)) if data.len() <= 8 => {
                Decoded::Exit(VcpuExit::MmioWrite {
                    gpa,
                    len: data.len() as u8,
                    data: le_value(data),
                })
            }
            Ok(KvmExit::MmioRead(gpa, data)) => {
                Decoded::Fault(format!("MMIO read of {} bytes at {gpa:#x}", data.len()))
            }
            Ok(KvmExit::MmioWrite(gpa, data)) => {
                Decoded::Fault(format!("MMIO write of {} bytes at {gpa:#x}", data.len()))
            }
            Ok(KvmExit::Hlt) => Decoded::Exit(VcpuExit::Halt),
            Ok(KvmExit::Shutdown) => Decoded::Exit(VcpuExit::System(SystemEvent::Crash)),
            Ok(KvmExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Decoded::Exit(VcpuExit::System(SystemEvent::Shutdown)),
                KVM_SYSTEM_EVENT_RESET => Decoded::Exit(VcpuExit::System(SystemEvent::Reset)),
                KVM_SYSTEM_EVENT_CRASH => Decoded::Exit(VcpuExit::System(SystemEvent::Crash)),
                other => Decoded::Fault(format!("unknown KVM system event {other}")),
            },
            Ok(KvmExit::InternalError) => Decoded::Internal,
            Ok(KvmExit::FailEntry(reason, cpu)) => Decoded::Fault(format!(
                "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}"
            )),
            Ok(KvmExit::Intr) => Decoded::Exit(VcpuExit::Interrupted),
            Ok(other) => Decoded::Fault(format!("unexpected KVM exit {other:?}")),
            Err(e) if errno_of(&e) == libc::EINTR || errno_of(&e) == libc::EAGAIN => {
                Decoded::Exit(VcpuExit::Interrupted)
            }
            Err(e) => {
                return Err(HvError::Call {
                    op: "KVM_RUN",
                    errno: errno_of(&e),
                });
            }
        };
        match decoded {
            Decoded::Exit(exit) => {
                if exit == VcpuExit::Interrupted {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Ok(exit)
            }
            Decoded::Internal => {
                let detail = self.internal_error_detail();
                Err(self.fault(detail))
            }
            Decoded::Fault(detail) => {
                let detail = format!("{detail}{}", self.rip_detail());
                Err(self.fault(detail))
            }
        }
    }
}
