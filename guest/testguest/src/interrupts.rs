//! IDT: exceptions end the run with a FAIL line; one vector for the device
//! under test, one for the LAPIC wake-up timer, one for spurious interrupts.

use crate::{apic, say, x86};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Vector the IOAPIC routes the device interrupt to.
pub const DEVICE_VECTOR: u8 = 0x30;
/// Vector of the LAPIC wake-up timer.
pub const TIMER_VECTOR: u8 = 0x31;

core::arch::global_asm!(
    r#"
    .text
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_stub_\n:
    mov $\n, %edi
    mov %rsp, %rsi
    and $-16, %rsp
    call exception_handler
    .endr

    .macro IRQ_STUB name, handler
\name:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cld
    call \handler
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
    .endm

    IRQ_STUB irq_stub_device, device_irq
    IRQ_STUB irq_stub_timer, timer_irq

irq_stub_spurious:
    iretq

    .section .rodata.idt_stubs, "a"
    .balign 8
    .global exception_stubs
exception_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\n
    .endr
    .global irq_stubs
irq_stubs:
    .quad irq_stub_device
    .quad irq_stub_timer
    .quad irq_stub_spurious
    .text
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static exception_stubs: [u64; 32];
    static irq_stubs: [u64; 3];
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: 0x08,
            ist: 0,
            type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written once by the bootstrap CPU in `init` before interrupts are
// enabled; afterwards only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

/// Fills and loads the IDT.
pub fn init() {
    // SAFETY: init runs once, on the bootstrap CPU, with interrupts disabled,
    // so nothing else reads or writes the table meanwhile.
    let idt = unsafe { &mut *IDT.0.get() };
    // SAFETY: the stub tables are immutable data defined in the assembly above.
    let (exceptions, irqs) = unsafe { (&exception_stubs, &irq_stubs) };
    for (gate, &stub) in idt.iter_mut().zip(exceptions.iter()) {
        *gate = Gate::interrupt(stub);
    }
    idt[usize::from(DEVICE_VECTOR)] = Gate::interrupt(irqs[0]);
    idt[usize::from(TIMER_VECTOR)] = Gate::interrupt(irqs[1]);
    idt[usize::from(apic::SPURIOUS_VECTOR)] = Gate::interrupt(irqs[2]);
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr {
        limit: (256 * 16 - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is static and fully initialised; every present gate
    // points at a stub above with the kernel code selector.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &raw const idtr, options(readonly, nostack)) };
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 FP",
    "alignment check",
    "machine check",
    "SIMD FP",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Called by the exception stubs with the vector and the stack pointer at
/// the fault (pointing at the error code, if any, then RIP).
#[unsafe(no_mangle)]
extern "C" fn exception_handler(vector: u64, frame: *const u64) -> ! {
    let has_error_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
    let name = EXCEPTION_NAMES.get(vector as usize).copied().unwrap_or("?");
    // SAFETY: `frame` is the stack pointer the CPU pushed the exception frame
    // to; it holds at least [error code,] RIP, CS, RFLAGS, RSP, SS.
    let (error, rip) = unsafe {
        if has_error_code {
            (*frame, *frame.add(1))
        } else {
            (0, *frame)
        }
    };
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    say!("FAIL exception {vector} ({name}) at rip {rip:#x} error {error:#x} cr2 {cr2:#x}");
    x86::exit(2)
}

/// MMIO base of the virtio device whose interrupt is being taken (0: none).
static DEVICE_MMIO: AtomicU64 = AtomicU64::new(0);
/// Device interrupts taken.
pub static DEVICE_IRQS: AtomicU32 = AtomicU32::new(0);
/// InterruptStatus bits seen by the handler (ORed).
pub static DEVICE_IRQ_STATUS: AtomicU32 = AtomicU32::new(0);
/// Timer interrupts taken.
pub static TIMER_IRQS: AtomicU32 = AtomicU32::new(0);

/// Makes the device interrupt handler acknowledge the virtio-mmio device at `base`.
pub fn set_device(base: u64) {
    DEVICE_MMIO.store(base, Ordering::SeqCst);
}

#[unsafe(no_mangle)]
extern "C" fn device_irq() {
    let base = DEVICE_MMIO.load(Ordering::SeqCst);
    if base != 0 {
        // SAFETY: `base` was registered by set_device from a probed
        // virtio-mmio transport (see virtio::probe).
        let mmio = unsafe { crate::virtio::mmio::Mmio::new(base) };
        // Level-style: ACK the device first so the line drops, then EOI.
        let pending = mmio.ack_interrupts();
        DEVICE_IRQ_STATUS.fetch_or(pending, Ordering::SeqCst);
    }
    DEVICE_IRQS.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

#[unsafe(no_mangle)]
extern "C" fn timer_irq() {
    TIMER_IRQS.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}
