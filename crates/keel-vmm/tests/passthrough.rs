//! A passed-through interrupt through the software GIC (seL4's shape): made pending by the
//! backend (`SoftArm64::inject_spi`), delivered into a list register, and reported back to
//! the backend (`VgicHost::completed_spi`) only when the guest completes it (the vGIC
//! maintenance exit): that is when seL4's VMM acknowledges the physical interrupt.

use std::sync::{Arc, Mutex};

use keel_core::arch::aarch64::layout::GicVersion;
use keel_core::arch::aarch64::vgic::VgicHost;
use keel_core::{VcpuExit, VmEvent};
use keel_spec::{Arch, HostPath, Memory, VmSpec, plan::plan_vm};
use keel_vmm::arm64::SoftArm64;
use keel_vmm::testing::{
    Collected, FakeExits, FakeVm, MemoryBackends, RecordingLog, RecordingStop,
};
use keel_vmm::{Interrupts, VmmCore, run_exits};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Inject { vcpu: u32, lr: u8, intid: u32 },
    Completed { vcpu: u32, intid: u32 },
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Call>>>);

impl VgicHost for Recorder {
    fn inject_list_register(&mut self, vcpu: u32, lr: u8, intid: u32, _: u8, _: u8) {
        self.0
            .lock()
            .unwrap()
            .push(Call::Inject { vcpu, lr, intid });
    }
    fn kick(&mut self, _: u32) {}
    fn completed_spi(&mut self, vcpu: u32, intid: u32) {
        self.0.lock().unwrap().push(Call::Completed { vcpu, intid });
    }
}

const GICD: u64 = 0x0800_0000;

fn write(gpa: u64, len: u8, data: u64) -> VmEvent {
    VmEvent::Exit {
        vcpu: 0,
        exit: VcpuExit::MmioWrite { gpa, len, data },
    }
}

#[test]
fn a_passed_through_spi_is_injected_once_and_reported_completed_at_the_guests_eoi() {
    let plan = plan_vm(&VmSpec::new(
        "drv",
        Arch::Aarch64,
        HostPath::new("/k"),
        Memory::Size(64 << 20),
    ))
    .unwrap();
    let vm = FakeVm::new(&plan.ram).unwrap();
    let log = Arc::new(RecordingLog::default());
    let host = Recorder::default();
    let soft = Arc::new(
        SoftArm64::new(
            1,
            GicVersion::V2,
            64,
            4,
            Box::new(host.clone()),
            log.clone(),
        )
        .unwrap(),
    );
    let stop = Arc::new(RecordingStop::default());
    let core = VmmCore::build(
        &plan,
        &vm,
        Interrupts::Soft(soft.clone()),
        &mut MemoryBackends::default(),
        Box::new(Collected::default()),
        stop.clone(),
        log,
    )
    .unwrap();
    // The guest enables the distributor and INTID 79, targeted at CPU 0.
    let mut exits = FakeExits::new(vec![
        write(GICD, 4, 1),
        write(GICD + 0x100 + 4 * (79 / 32), 4, 1 << (79 % 32)),
        write(GICD + 0x800 + 79, 1, 1),
    ]);
    run_exits(&mut exits, &core, &vm, stop.as_ref(), |_| {}).unwrap();

    soft.inject_spi(79);

    assert_eq!(
        *host.0.lock().unwrap(),
        [Call::Inject {
            vcpu: 0,
            lr: 0,
            intid: 79
        }]
    );
    // The guest completes it: the list register comes back.
    let mut exits = FakeExits::new(vec![VmEvent::Exit {
        vcpu: 0,
        exit: VcpuExit::VgicMaintenance { lr: Some(0) },
    }]);
    run_exits(&mut exits, &core, &vm, stop.as_ref(), |_| {}).unwrap();

    assert_eq!(
        *host.0.lock().unwrap(),
        [
            Call::Inject {
                vcpu: 0,
                lr: 0,
                intid: 79
            },
            Call::Completed { vcpu: 0, intid: 79 }
        ],
        "completed once, and not delivered again (it was an injection, not a level held high)"
    );
}
