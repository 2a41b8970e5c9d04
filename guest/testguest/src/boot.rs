//! Boot code: the PVH note, the 32-bit PVH entry that enters long mode, the
//! GDT and identity-mapped page tables, and the real-mode AP trampoline.
//!
//! The PVH ABI enters `pvh_entry32` in 32-bit protected mode with paging off
//! and EBX = guest-physical address of `hvm_start_info`. We zero .bss, build
//! page tables identity-mapping the first 4 GiB with 2 MiB pages (the top GiB,
//! where the MMIO devices live, uncached), enable PAE + long mode + paging, load
//! a 64-bit GDT and call `kmain(start_info_paddr)`.

/// Physical address the AP trampoline is copied to (SIPI vector = address >> 12).
pub const AP_TRAMPOLINE_BASE: usize = 0x8000;
/// Size of each application processor's stack.
pub const AP_STACK_SIZE: usize = 4096;
/// Most application processors the guest starts (the rest are left waiting).
pub const MAX_APS: usize = 15;

core::arch::global_asm!(
    r#"
    /* ---- PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18). The descriptor is 8 bytes
       like Linux's, so loaders reading either 32 or 64 bits get the entry. ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry32
    .balign 4

    /* ---- GDT shared by the BSP and the APs ---- */
    .section .rodata.boot, "a"
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: flat data */
    .quad 0x00cf9b000000ffff    /* 0x18: 32-bit code (AP trampoline) */
boot_gdt_end:
    .balign 8
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .long 0

    /* ---- page tables and stacks (zeroed by the entry code) ---- */
    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip 16384
boot_stack_top:
    .global ap_stacks
ap_stacks:
    .skip {max_aps} * {ap_stack_size}
ap_stacks_end:
ap_next_slot:
    .skip 8

    /* ---- 32-bit PVH entry ---- */
    .section .text.boot, "ax"
    .code32
    .global pvh_entry32
pvh_entry32:
    cli
    cld
    mov %ebx, %ebp                  /* hvm_start_info paddr, for kmain */

    /* Zero .bss: loaders normally do, but do not rely on it. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories. */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b

    /* 2048 2 MiB pages: 0..4 GiB identity; 3..4 GiB (MMIO) PCD|PWT. */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    cmp $1536, %ecx
    jb 3f
    or $0x18, %eax
3:  mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    lgdt boot_gdtr
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  /* CR4.PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx           /* IA32_EFER */
    rdmsr
    or $0x100, %eax                 /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    ljmp $0x08, $bsp_entry64

    .code64
bsp_entry64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $boot_stack_top, %rsp
    mov %ebp, %edi
    call kmain
4:  cli
    hlt
    jmp 4b

    /* ---- AP long-mode entry (reached from the trampoline) ---- */
    .global ap_entry64
ap_entry64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $1, %eax
    lock xaddl %eax, ap_next_slot(%rip)
    cmp ${max_aps}, %eax
    jae 5f
    mov %eax, %edi                  /* slot number for ap_main */
    inc %eax
    imul ${ap_stack_size}, %eax, %eax
    lea ap_stacks(%rip), %rsp
    add %rax, %rsp
    call ap_main
5:  cli
    hlt
    jmp 5b

    /* ---- AP trampoline: copied to {tramp}, entered in real mode by SIPI ---- */
    .section .rodata.trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl ({tramp} + ap_tramp_gdtr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $({tramp} + ap_tramp32 - ap_trampoline_start)
    .code32
ap_tramp32:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmp $0x08, $ap_entry64
    .balign 8
ap_tramp_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
ap_trampoline_end:
    .code64
    .text
"#,
    max_aps = const MAX_APS,
    ap_stack_size = const AP_STACK_SIZE,
    tramp = const AP_TRAMPOLINE_BASE,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The AP trampoline's bytes, as linked (position-dependent for
/// [`AP_TRAMPOLINE_BASE`]).
pub fn ap_trampoline() -> &'static [u8] {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: both symbols delimit the trampoline in .rodata (start <= end by
    // construction of the assembly above); the bytes are immutable and live forever.
    unsafe { core::slice::from_raw_parts(start, len) }
}
