//! A KVM vCPU: the `KVM_RUN` loop step that turns KVM exits into [`keel_core::VcpuExit`]
//! data. Architectural setup and boot registers are in [`crate::arch`].

use std::cell::Cell;
use std::fmt::Write as _;

use keel_core::memory::GuestRam;
use keel_core::{BootEntry, ExitAnswer, HvError, SystemEvent, Vcpu, VcpuExit, VcpuId};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::arch::host::{self, VcpuArch};

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
    arch: VcpuArch,
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl KvmVcpu {
    pub(crate) fn new(fd: VcpuFd, id: VcpuId, ram: GuestRam, arch: VcpuArch) -> KvmVcpu {
        KvmVcpu {
            fd,
            id,
            pending: Pending::None,
            ram,
            arch,
        }
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
        host::fault_detail(&self.fd, &self.ram)
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
        host::set_boot_entry(&self.arch, &self.fd, entry)
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
