//! Keel on seL4: a thin, documented layer over the seL4 system calls and the Microkit
//! protection-domain ABI, plus the pieces of the VMM protection domain that are plain logic.
//!
//! - [`abi`]: the numbers (system calls, invocation labels, fault types, capability slots),
//!   checked against a Microkit SDK's headers by `tests/sdk_constants.rs`.
//! - [`msginfo`], [`fault`], [`microkit`], [`regs`]: message tags, fault messages, badges
//!   and register contexts as data (host-tested).
//! - `syscall` (seL4 only): `svc #0` wrappers and the TCB, vCPU and IRQ invocations.
//! - `pd` (seL4 only): the symbols the Microkit tool patches, notify / irq_ack / ppcall.
//! - `vmm` (seL4 only): the VMM protection domain.
//! - [`console`]: the console component (the PD that owns the debug console's output and
//!   drains one ring per VMM); `console_pd` (seL4 only) is its program.
//! - [`switch`]: the switch component (one PD per network, running keel-net's switch over
//!   the rings of its ports); `switch_pd` (seL4 only) is its program.
//! - [`admin`]: the admin component (the PD that is the Microkit parent of every VMM PD
//!   and restarts a faulted one by its VM's policy); `admin_pd` (seL4 only) is its program.
//! - [`clock`]: time for protection domains (the generic timer's physical count).
//! - [`heap`]: the protection domains' allocators (portable, so that host tests can run a
//!   small arena); [`budget`]: the VMM heap's size against the worst case of a VM's
//!   devices, checked at plan time.
//! - [`payload`], [`elf`]: how `keel sel4 build` hands one VM's configuration, kernel,
//!   initrd and disks to the generic VMM ELF.
//! - `host` (feature `host`): the build side (system file, image) used by `keel sel4`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod abi;
pub mod admin;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod admin_pd;
pub mod budget;
pub mod clock;
pub mod console;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod console_pd;
pub mod elf;
pub mod fault;
pub mod heap;
#[cfg(feature = "host")]
pub mod host;
pub mod microkit;
pub mod msginfo;
pub mod payload;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod pd;
pub mod regs;
pub mod switch;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod switch_pd;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod syscall;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod vmm;

/// Define a protection domain's entry point (`_start`, calling `$main`), its panic handler
/// (calling `$panic`) and its global allocator (a heap of `$heap` bytes) in a binary crate.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[macro_export]
macro_rules! pd_entry {
    ($main:path, $panic:path, $heap:expr) => {
        #[global_allocator]
        static HEAP: $crate::heap::Heap<{ $heap }> = $crate::heap::Heap::new();

        $crate::pd_start!($main, $panic);
    };
}

/// Define a protection domain's entry point (`_start`, calling `$main`) and its panic
/// handler (calling `$panic`) in a binary crate (the allocator is declared separately).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[macro_export]
macro_rules! pd_start {
    ($main:path, $panic:path) => {
        // The Microkit tool starts the PD at `_start` with SP at the top of its stack.
        // `_start` keeps that SP in `PD_INITIAL_SP` and, when the PD is started again
        // (its parent's `microkit_pd_restart` writes only the PC), restores it: the
        // restarted PD gets its whole stack back.
        core::arch::global_asm!(
            ".section .text.start, \"ax\"",
            ".global _start",
            "_start:",
            "    adrp x9, {sp0}",
            "    add x9, x9, :lo12:{sp0}",
            "    ldr x10, [x9]",
            "    cbz x10, 2f",
            "    mov sp, x10",
            "    b 3f",
            "2:  mov x10, sp",
            "    str x10, [x9]",
            "3:  bl {main}",
            "1:  b 1b",
            main = sym $main,
            sp0 = sym $crate::PD_INITIAL_SP,
        );

        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo) -> ! {
            $panic(info)
        }
    };
}

/// The stack pointer the PD was first started with (0 before `_start` ran): `pd_start!`'s
/// `_start` restores it when the PD is restarted at its entry point.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[doc(hidden)]
pub static PD_INITIAL_SP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Define the VMM protection domain's entry point, panic handler and allocator (the heap
/// [`vmm::HEAP`], which the VMM empties when the admin PD restarts it) in the binary
/// crate: `keel_sel4::vmm_entry!();`.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[macro_export]
macro_rules! vmm_entry {
    () => {
        struct VmmHeap;

        // SAFETY: every call goes to the VMM's heap, a GlobalAlloc.
        unsafe impl core::alloc::GlobalAlloc for VmmHeap {
            unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
                // SAFETY: forwarded under the caller's GlobalAlloc contract.
                unsafe { core::alloc::GlobalAlloc::alloc(&$crate::vmm::HEAP, layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
                // SAFETY: forwarded under the caller's GlobalAlloc contract.
                unsafe { core::alloc::GlobalAlloc::dealloc(&$crate::vmm::HEAP, ptr, layout) }
            }
        }

        #[global_allocator]
        static HEAP: VmmHeap = VmmHeap;

        $crate::pd_start!($crate::vmm::main, $crate::vmm::panic);
    };
}

/// Define the admin protection domain's entry point, panic handler and heap in the binary
/// crate: `keel_sel4::admin_entry!();`.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[macro_export]
macro_rules! admin_entry {
    () => {
        $crate::pd_entry!(
            $crate::admin_pd::main,
            $crate::admin_pd::panic,
            $crate::admin_pd::HEAP_BYTES
        );
    };
}

/// Define the console protection domain's entry point, panic handler and heap in the
/// binary crate: `keel_sel4::console_entry!();`.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[macro_export]
macro_rules! console_entry {
    () => {
        $crate::pd_entry!(
            $crate::console_pd::main,
            $crate::console_pd::panic,
            $crate::console_pd::HEAP_BYTES
        );
    };
}

/// Define the switch protection domain's entry point, panic handler and allocator (the
/// heap region of [`switch_pd::HEAP`], sized at plan time) in the binary crate:
/// `keel_sel4::switch_entry!();`.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[macro_export]
macro_rules! switch_entry {
    () => {
        struct SwitchHeap;

        // SAFETY: every call goes to the switch PD's region heap, a GlobalAlloc.
        unsafe impl core::alloc::GlobalAlloc for SwitchHeap {
            unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
                // SAFETY: forwarded under the caller's GlobalAlloc contract.
                unsafe { core::alloc::GlobalAlloc::alloc(&$crate::switch_pd::HEAP, layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
                // SAFETY: forwarded under the caller's GlobalAlloc contract.
                unsafe { core::alloc::GlobalAlloc::dealloc(&$crate::switch_pd::HEAP, ptr, layout) }
            }
        }

        #[global_allocator]
        static HEAP: SwitchHeap = SwitchHeap;

        $crate::pd_start!($crate::switch_pd::main, $crate::switch_pd::panic);
    };
}
