//! Conformance: scripted exit sequences of a fake hypervisor run through the portable VMM,
//! in both exit shapes (a thread per vCPU, one exit source per VM), and must get the same
//! answers. Each backend adapter maps its native events onto these same types.

use std::sync::Arc;

use keel_core::arch::aarch64::layout::GicVersion;
use keel_core::arch::aarch64::vgic::VgicHost;
use keel_core::{BootEntry, ExitAnswer, Resume, SystemEvent, VcpuExit, VmEvent};
use keel_spec::{Arch, HostPath, Memory, VmSpec, plan::plan_vm};
use keel_vmm::arm64::SoftArm64;
use keel_vmm::testing::{
    Collected, FakeExits, FakeVcpu, FakeVm, MemoryBackends, RecordingLog, RecordingStop,
};
use keel_vmm::{Interrupts, VmmCore, run_exits, run_vcpu};

const VIRTIO_MAGIC: u64 = 0x7472_6976;

fn spec(arch: Arch) -> VmSpec {
    let mut v = VmSpec::new("t", arch, HostPath::new("/k"), Memory::Size(64 << 20));
    v.vcpus = 2;
    v.disks = vec![keel_spec::DiskSpec {
        path: HostPath::new("/d"),
        read_only: false,
        id: Some("data".into()),
        served: None,
    }];
    v.rng = true;
    v
}

struct Built {
    vm: FakeVm,
    core: VmmCore,
    serial: Collected,
    stop: Arc<RecordingStop>,
    log: Arc<RecordingLog>,
}

#[derive(Default)]
struct NoGic;
impl VgicHost for NoGic {
    fn inject_list_register(&mut self, _: u32, _: u8, _: u32, _: u8, _: u8) {}
    fn kick(&mut self, _: u32) {}
}

fn build(arch: Arch, soft: bool) -> Built {
    build_plan(&plan_vm(&spec(arch)).unwrap(), soft)
}

fn build_plan(plan: &keel_spec::VmPlan, soft: bool) -> Built {
    let plan = plan.clone();
    let vm = FakeVm::new(&plan.ram).unwrap();
    let serial = Collected::default();
    let stop = Arc::new(RecordingStop::default());
    let log = Arc::new(RecordingLog::default());
    let interrupts = if soft {
        Interrupts::Soft(Arc::new(
            SoftArm64::new(
                plan.vcpus,
                GicVersion::V2,
                64,
                4,
                Box::new(NoGic),
                log.clone(),
            )
            .unwrap(),
        ))
    } else {
        Interrupts::InKernel
    };
    let mut backends = MemoryBackends {
        disk_size: 4096,
        ..Default::default()
    };
    let core = VmmCore::build(
        &plan,
        &vm,
        interrupts,
        &mut backends,
        Box::new(serial.clone()),
        stop.clone(),
        log.clone(),
    )
    .unwrap();
    Built {
        vm,
        core,
        serial,
        stop,
        log,
    }
}

/// Run `script` on vCPU 0 both ways; return the answers of each.
fn both_shapes(arch: Arch, soft: bool, script: &[VcpuExit]) -> (Vec<ExitAnswer>, Vec<Resume>) {
    let b = build(arch, soft);
    let mut vcpu = FakeVcpu::new(0, script.to_vec());
    run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();
    let b2 = build(arch, soft);
    let mut exits = FakeExits::new(
        script
            .iter()
            .map(|&exit| VmEvent::Exit { vcpu: 0, exit })
            .collect(),
    );
    run_exits(&mut exits, &b2.core, &b2.vm, b2.stop.as_ref(), |_| {}).unwrap();
    (
        vcpu.answers,
        exits.completed.into_iter().map(|(_, r)| r).collect(),
    )
}

fn run(a: ExitAnswer) -> Resume {
    Resume::Run(a)
}

#[test]
fn both_exit_shapes_give_the_same_answers_on_x86() {
    let script = [
        VcpuExit::MmioRead {
            gpa: 0xd000_0000,
            len: 4,
        },
        VcpuExit::MmioRead {
            gpa: 0xd000_1008,
            len: 4,
        },
        VcpuExit::PioRead { port: 0x80, len: 1 },
    ];

    let (threaded, looped) = both_shapes(Arch::X86_64, false, &script);

    let expected = [
        ExitAnswer::Read(VIRTIO_MAGIC),
        ExitAnswer::Read(4), // slot 1 is the rng: device id 4
        ExitAnswer::Read(0xff),
    ];
    assert_eq!(threaded, expected);
    assert_eq!(looped, expected.map(run));
}

#[test]
fn both_exit_shapes_give_the_same_answers_on_arm64_with_a_soft_gic() {
    let script = [
        VcpuExit::MmioRead {
            gpa: 0x0a00_0000,
            len: 4,
        },
        // GICD_TYPER: ITLinesNumber for 64 SPIs = 2, CPUNumber = vcpus - 1 = 1.
        VcpuExit::MmioRead {
            gpa: 0x0800_0004,
            len: 4,
        },
        VcpuExit::MmioRead {
            gpa: 0x2000_0000,
            len: 8,
        },
    ];

    let (threaded, looped) = both_shapes(Arch::Aarch64, true, &script);

    assert_eq!(threaded[0], ExitAnswer::Read(VIRTIO_MAGIC));
    assert_eq!(threaded[1], ExitAnswer::Read(2 | (1 << 5)));
    assert_eq!(threaded[2], ExitAnswer::Read(u64::MAX));
    assert_eq!(
        looped,
        threaded.iter().copied().map(run).collect::<Vec<_>>()
    );
}

#[test]
fn serial_output_reaches_the_backend_on_both_arches() {
    for (arch, exit) in [
        (
            Arch::X86_64,
            VcpuExit::PioWrite {
                port: 0x3f8,
                len: 1,
                data: u32::from(b'k'),
            },
        ),
        (
            Arch::Aarch64,
            VcpuExit::MmioWrite {
                gpa: 0x0900_0000,
                len: 1,
                data: u64::from(b'k'),
            },
        ),
    ] {
        let b = build(arch, false);
        let mut vcpu = FakeVcpu::new(0, vec![exit]);

        run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();

        assert_eq!(b.serial.text(), "k", "{arch}");
    }
}

#[test]
fn i8042_reset_reaches_the_stop_sink_and_ends_both_loops() {
    let reset = VcpuExit::PioWrite {
        port: 0x64,
        len: 1,
        data: 0xfe,
    };
    let b = build(Arch::X86_64, false);
    let mut vcpu = FakeVcpu::new(0, vec![reset]);
    assert_eq!(
        run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap(),
        None
    );
    assert_eq!(*b.stop.0.lock(), [SystemEvent::Reset]);

    let b = build(Arch::X86_64, false);
    let mut exits = FakeExits::new(vec![VmEvent::Exit {
        vcpu: 0,
        exit: reset,
    }]);
    assert_eq!(
        run_exits(&mut exits, &b.core, &b.vm, b.stop.as_ref(), |_| {}).unwrap(),
        None
    );
    assert_eq!(*b.stop.0.lock(), [SystemEvent::Reset]);
    assert!(exits.completed.is_empty());
}

#[test]
fn psci_cpu_on_starts_the_target_through_the_backend() {
    let b = build(Arch::Aarch64, true);
    let entry = 0x4008_0000;
    let mut exits = FakeExits::new(vec![VmEvent::Exit {
        vcpu: 0,
        exit: VcpuExit::Hypercall {
            kind: keel_core::hv::HypercallKind::Hvc,
            imm: 0,
            args: [0xc400_0003, 1, entry, 0x55],
        },
    }]);

    run_exits(&mut exits, &b.core, &b.vm, b.stop.as_ref(), |_| {}).unwrap();

    assert_eq!(
        b.vm.record.lock().started,
        [(
            1,
            BootEntry::Arm64 {
                pc: entry,
                x0: 0x55
            }
        )]
    );
    assert_eq!(
        exits.completed,
        [(0, Resume::Run(ExitAnswer::Hypercall([0, 0, 0, 0])))]
    );
}

#[test]
fn psci_cpu_on_outside_ram_is_refused_without_starting_anything() {
    let b = build(Arch::Aarch64, true);
    let mut exits = FakeExits::new(vec![VmEvent::Exit {
        vcpu: 0,
        exit: VcpuExit::Hypercall {
            kind: keel_core::hv::HypercallKind::Hvc,
            imm: 0,
            args: [0xc400_0003, 1, 0x10, 0],
        },
    }]);

    run_exits(&mut exits, &b.core, &b.vm, b.stop.as_ref(), |_| {}).unwrap();

    assert!(b.vm.record.lock().started.is_empty());
    // PSCI INVALID_ADDRESS is -9.
    assert_eq!(
        exits.completed,
        [(
            0,
            Resume::Run(ExitAnswer::Hypercall([(-9i64) as u64, 0, 0, 0]))
        )]
    );
}

#[test]
fn psci_cpu_off_parks_the_caller_and_wfi_waits_for_an_interrupt() {
    let b = build(Arch::Aarch64, true);
    let mut exits = FakeExits::new(vec![
        VmEvent::Exit {
            vcpu: 1,
            exit: VcpuExit::Halt,
        },
        VmEvent::Exit {
            vcpu: 1,
            exit: VcpuExit::Hypercall {
                kind: keel_core::hv::HypercallKind::Hvc,
                imm: 0,
                args: [0x8400_0002, 0, 0, 0],
            },
        },
    ]);

    run_exits(&mut exits, &b.core, &b.vm, b.stop.as_ref(), |_| {}).unwrap();

    assert_eq!(
        exits.completed,
        [
            (1, Resume::WaitForInterrupt(ExitAnswer::None)),
            (1, Resume::Park)
        ]
    );
}

#[test]
fn psci_system_reset_stops_the_vm_with_reset() {
    let b = build(Arch::Aarch64, true);
    let mut exits = FakeExits::new(vec![VmEvent::Exit {
        vcpu: 0,
        exit: VcpuExit::Hypercall {
            kind: keel_core::hv::HypercallKind::Hvc,
            imm: 0,
            args: [0x8400_0009, 0, 0, 0],
        },
    }]);

    let event = run_exits(&mut exits, &b.core, &b.vm, b.stop.as_ref(), |_| {}).unwrap();

    assert_eq!(event, Some(SystemEvent::Reset));
}

#[test]
fn a_flood_of_unmapped_accesses_is_logged_a_bounded_number_of_times() {
    let b = build(Arch::X86_64, false);
    let script = vec![VcpuExit::PioRead { port: 0x80, len: 1 }; 1000];
    let mut vcpu = FakeVcpu::new(0, script);

    run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();

    // The first UNMAPPED_LOG_LIMIT (16), then occurrences 32, 64, 128, 256 and 512 with
    // the count suppressed since the previous line.
    assert_eq!(
        b.log.0.lock().len(),
        keel_vmm::dispatch::UNMAPPED_LOG_LIMIT as usize + 5
    );
    assert!(
        b.log
            .0
            .lock()
            .last()
            .unwrap()
            .1
            .contains("255 more suppressed")
    );
}

#[test]
fn a_device_interrupt_uses_its_planned_line() {
    let b = build(Arch::X86_64, false);
    // The rng is slot 1: GSI 6. Its line exists and starts low.
    let line = b.vm.line(6).expect("the rng asked for GSI 6");
    assert!(!line.is_high());
    assert_eq!(b.core.devices()[1].plan.irq, 6);
}

#[test]
fn a_vsock_device_is_planned_last_and_its_guest_reads_its_cid() {
    let mut v = spec(Arch::X86_64);
    v.vsock = Some(keel_spec::VsockSpec {
        cid: 42,
        socket: None,
    });
    let b = build_plan(&plan_vm(&v).unwrap(), false);
    // disk 0, rng 1, vsock 2: its window at 0xd000_2000; config (the CID) at +0x100.
    let d = &b.core.devices()[2];
    assert_eq!(d.plan.kind, keel_spec::DeviceKind::Vsock);
    let mut vcpu = FakeVcpu::new(
        0,
        vec![
            VcpuExit::MmioRead {
                gpa: 0xd000_2008,
                len: 4,
            },
            VcpuExit::MmioRead {
                gpa: 0xd000_2100,
                len: 4,
            },
        ],
    );

    run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();

    assert_eq!(vcpu.answers, [ExitAnswer::Read(19), ExitAnswer::Read(42)]);
}

#[test]
fn a_vsock_peer_without_a_backend_for_it_is_refused_at_build() {
    let mut v = spec(Arch::X86_64);
    v.vsock = Some(keel_spec::VsockSpec {
        cid: 3,
        socket: None,
    });
    let mut plan = plan_vm(&v).unwrap();
    plan.vsock
        .as_mut()
        .unwrap()
        .peers
        .push(keel_spec::VsockPeerPlan {
            pair: 0,
            vm: "other".into(),
            cid: 4,
            first: true,
        });
    let vm = FakeVm::new(&plan.ram).unwrap();

    let built = VmmCore::build(
        &plan,
        &vm,
        Interrupts::InKernel,
        &mut MemoryBackends {
            disk_size: 4096,
            ..Default::default()
        },
        Box::new(Collected::default()),
        Arc::new(RecordingStop::default()),
        Arc::new(RecordingLog::default()),
    );

    let Err(e) = built else {
        panic!("a peer without a link must be an error");
    };

    assert!(e.to_string().contains("cannot link vsock peers"), "{e}");
}

#[test]
fn reset_puts_devices_back_to_power_on() {
    let b = build(Arch::X86_64, false);
    let status = |b: &Built| {
        let mut vcpu = FakeVcpu::new(
            0,
            vec![VcpuExit::MmioRead {
                gpa: 0xd000_0070,
                len: 4,
            }],
        );
        run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();
        vcpu.answers[0]
    };
    let mut vcpu = FakeVcpu::new(
        0,
        vec![VcpuExit::MmioWrite {
            gpa: 0xd000_0070,
            len: 4,
            data: 3,
        }],
    );
    run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();
    assert_eq!(status(&b), ExitAnswer::Read(3));

    b.core.reset().unwrap();

    assert_eq!(status(&b), ExitAnswer::Read(0));
}

/// A minimal arm64 `Image`: header with `image_size`, text_offset 0, LE, 4K, anywhere.
fn arm64_image(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
    v[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    v[24..32].copy_from_slice(&0xau64.to_le_bytes());
    v[0x38..0x3c].copy_from_slice(b"ARM\x64");
    v
}

#[test]
fn arm64_load_reports_the_kernel_initrd_and_device_tree_it_wrote() {
    let b = build(Arch::Aarch64, true);
    let kernel = arm64_image(0x10000);

    let loaded = b
        .core
        .load_guest(&kernel, Some(&[7u8; 100]), GicVersion::V2)
        .unwrap();

    let BootEntry::Arm64 { pc, x0 } = loaded.entry else {
        panic!("not an arm64 entry: {:?}", loaded.entry);
    };
    assert_eq!(loaded.written.len(), 3, "{:?}", loaded.written);
    assert_eq!(loaded.written[0], (pc, kernel.len() as u64));
    assert_eq!(loaded.written[1].1, 100);
    assert_eq!(loaded.written[2].0, x0);
    assert!(loaded.written[2].1 > 0);
}

#[test]
fn write_exit_into_a_planned_read_only_shared_region_is_reported_as_such_on_both_shapes() {
    let mut plan = plan_vm(&spec(Arch::X86_64)).unwrap();
    plan.shared.push(keel_spec::SharedMapPlan {
        region: "x".into(),
        base: 0x9000_0000,
        size: 0x1_0000,
        access: keel_spec::Access::ReadOnly,
    });
    let write = VcpuExit::MmioWrite {
        gpa: 0x9000_fffc,
        len: 4,
        data: 1,
    };
    let want = "vcpu 0: write of 4 bytes to read-only shared region 'x' at 0x9000fffc: ignored";

    let b = build_plan(&plan, false);
    let mut vcpu = FakeVcpu::new(0, vec![write]);
    run_vcpu(&mut vcpu, &b.core, &b.vm, b.stop.as_ref()).unwrap();
    let b2 = build_plan(&plan, false);
    let mut exits = FakeExits::new(vec![VmEvent::Exit {
        vcpu: 0,
        exit: write,
    }]);
    run_exits(&mut exits, &b2.core, &b2.vm, b2.stop.as_ref(), |_| {}).unwrap();

    for log in [&b.log, &b2.log] {
        let lines = log.0.lock();
        assert!(lines.iter().any(|(_, l)| l == want), "{lines:?}");
    }
}
