//! The KVM backend against tiny hand-assembled guests (bytes written into guest RAM), as
//! kvm-ioctls' own tests do. Without /dev/kvm each test prints `SKIPPED` and records it.

#![cfg(target_arch = "x86_64")]

use keel_core::arch::x86_64::cmdline::Cmdline;
use keel_core::arch::x86_64::gdt::write_gdt;
use keel_core::arch::x86_64::layout::{GDT_GPA, KERNEL_GPA};
use keel_core::arch::x86_64::load_kernel;
use keel_core::hv::VmConfig;
use keel_core::memory::{GuestAddress, GuestMemory};
use keel_core::{BootEntry, ExitAnswer, HvError, Hypervisor, SystemEvent, Vcpu, VcpuExit, Vm};
use keel_kvm::{KvmHypervisor, KvmVcpu, KvmVm};

#[path = "common/skip.rs"]
mod skip;

fn kvm_or_skip(test: &str) -> bool {
    skip::kvm_or_skip("keel-kvm", test)
}

/// A 16 MiB one-vCPU VM whose vCPU 0 enters 32-bit protected mode at 1 MiB, running `code`.
fn pvh_guest(code: &[u8]) -> (KvmVm, KvmVcpu) {
    let hv = KvmHypervisor::new().unwrap();
    let vm = hv
        .create_vm(&VmConfig {
            ram: vec![(0, 16 << 20)],
            vcpus: 1,
        })
        .unwrap();
    write_gdt(vm.ram()).unwrap();
    vm.ram().write(GuestAddress(KERNEL_GPA), code).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_boot_entry(&BootEntry::X86Pvh {
        eip: KERNEL_GPA as u32,
        ebx: 0x6000,
        gdt_gpa: GDT_GPA,
    })
    .unwrap();
    (vm, vcpu)
}

// mov dx, imm16
fn mov_dx(port: u16) -> [u8; 4] {
    let p = port.to_le_bytes();
    [0x66, 0xba, p[0], p[1]]
}

#[test]
fn port_write_exit_carries_port_width_and_value() {
    if !kvm_or_skip("port_write_exit_carries_port_width_and_value") {
        return;
    }
    let mut code = mov_dx(0x3f8).to_vec();
    code.extend_from_slice(&[0xb0, 0x4b, 0xee, 0xf4]); // mov al, 'K'; out dx, al; hlt
    let (_vm, mut vcpu) = pvh_guest(&code);
    let exit = vcpu.run(ExitAnswer::None).unwrap();
    assert_eq!(
        exit,
        VcpuExit::PioWrite {
            port: 0x3f8,
            len: 1,
            data: 0x4b
        }
    );
}

#[test]
fn port_read_answer_reaches_the_guest() {
    if !kvm_or_skip("port_read_answer_reaches_the_guest") {
        return;
    }
    let mut code = mov_dx(0x60).to_vec();
    code.push(0xec); // in al, dx
    code.extend_from_slice(&mov_dx(0xf4));
    code.push(0xee); // out dx, al
    let (_vm, mut vcpu) = pvh_guest(&code);
    assert_eq!(
        vcpu.run(ExitAnswer::None).unwrap(),
        VcpuExit::PioRead { port: 0x60, len: 1 }
    );
    let exit = vcpu.run(ExitAnswer::Read(0x5a)).unwrap();
    assert_eq!(
        exit,
        VcpuExit::PioWrite {
            port: 0xf4,
            len: 1,
            data: 0x5a
        }
    );
}

#[test]
fn mmio_read_answer_reaches_the_guest() {
    if !kvm_or_skip("mmio_read_answer_reaches_the_guest") {
        return;
    }
    let mut code = vec![0xa1, 0x50, 0x00, 0x00, 0xd0]; // mov eax, [0xd0000050]
    code.extend_from_slice(&mov_dx(0xf4));
    code.extend_from_slice(&[0x66, 0xef]); // out dx, ax
    let (_vm, mut vcpu) = pvh_guest(&code);
    assert_eq!(
        vcpu.run(ExitAnswer::None).unwrap(),
        VcpuExit::MmioRead {
            gpa: 0xd000_0050,
            len: 4
        }
    );
    let exit = vcpu.run(ExitAnswer::Read(0x1234_5678)).unwrap();
    assert_eq!(
        exit,
        VcpuExit::PioWrite {
            port: 0xf4,
            len: 2,
            data: 0x5678
        }
    );
}

#[test]
fn answer_that_does_not_fit_the_exit_is_an_error() {
    if !kvm_or_skip("answer_that_does_not_fit_the_exit_is_an_error") {
        return;
    }
    let mut code = mov_dx(0x3f8).to_vec();
    code.extend_from_slice(&[0xb0, 0x4b, 0xee, 0xf4]);
    let (_vm, mut vcpu) = pvh_guest(&code);
    vcpu.run(ExitAnswer::None).unwrap();
    let err = vcpu.run(ExitAnswer::Read(1)).unwrap_err();
    assert!(matches!(err, HvError::Invalid { .. }), "{err}");
}

#[test]
fn exception_without_an_idt_is_a_crash() {
    if !kvm_or_skip("exception_without_an_idt_is_a_crash") {
        return;
    }
    let (_vm, mut vcpu) = pvh_guest(&[0x0f, 0x0b]); // ud2: #UD, no IDT → triple fault
    let exit = vcpu.run(ExitAnswer::None).unwrap();
    assert_eq!(exit, VcpuExit::System(SystemEvent::Crash));
}

#[test]
fn instruction_kvm_cannot_emulate_is_a_guest_fault_naming_rip_and_bytes() {
    if !kvm_or_skip("instruction_kvm_cannot_emulate_is_a_guest_fault_naming_rip_and_bytes") {
        return;
    }
    // int3 with no IDT: the software KVM's emulator gives up (KVM_EXIT_INTERNAL_ERROR);
    // hardware KVM delivers the fault and the guest triple-faults.
    let (_vm, mut vcpu) = pvh_guest(&[0xcc]);
    let exit = vcpu.run(ExitAnswer::None);
    if keel_kvm::host::is_software_kvm() {
        let Err(HvError::GuestFault { vcpu: 0, detail }) = exit else {
            panic!("expected a guest fault, got {exit:?}");
        };
        assert!(
            detail.starts_with("KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure)"),
            "{detail}"
        );
        assert!(detail.contains("at rip 0x100000 (bytes cc 00"), "{detail}");
    } else {
        assert_eq!(exit.unwrap(), VcpuExit::System(SystemEvent::Crash));
    }
}

#[test]
fn bzimage_enters_long_mode_with_boot_params_in_rsi() {
    if !kvm_or_skip("bzimage_enters_long_mode_with_boot_params_in_rsi") {
        return;
    }
    // A synthetic bzImage: boot sector + 1 setup sector, then the protected-mode kernel
    // whose 64-bit entry (at +0x200) runs code that only works in long mode:
    //   mov rax, 0x2a_0000_0000; shr rax, 32       (42 only with 64-bit operands)
    //   add al, [rsi + 0x210]                      (type_of_loader = 0xff: 42 + 0xff = 41)
    //   mov dx, 0xf4; out dx, al
    let mut image = vec![0u8; 2 * 512];
    image[0x1f1] = 1;
    image[0x1fe] = 0x55;
    image[0x1ff] = 0xaa;
    image[0x201] = 0x66;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    let mut kernel = vec![0x90u8; 0x200];
    kernel.extend_from_slice(&[0x48, 0xb8, 0, 0, 0, 0, 0x2a, 0, 0, 0]);
    kernel.extend_from_slice(&[0x48, 0xc1, 0xe8, 0x20]);
    kernel.extend_from_slice(&[0x02, 0x86, 0x10, 0x02, 0x00, 0x00]);
    kernel.extend_from_slice(&mov_dx(0xf4));
    kernel.extend_from_slice(&[0xee, 0xf4]);
    image.extend_from_slice(&kernel);

    let hv = KvmHypervisor::new().unwrap();
    let vm = hv
        .create_vm(&VmConfig {
            ram: vec![(0, 16 << 20)],
            vcpus: 1,
        })
        .unwrap();
    let loaded = load_kernel(vm.ram(), &image, None, &Cmdline::new(100)).unwrap();
    assert!(matches!(loaded.entry, BootEntry::X86Long { .. }));
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_boot_entry(&loaded.entry).unwrap();
    let exit = vcpu.run(ExitAnswer::None).unwrap();
    assert_eq!(
        exit,
        VcpuExit::PioWrite {
            port: 0xf4,
            len: 1,
            data: 41
        }
    );
}
