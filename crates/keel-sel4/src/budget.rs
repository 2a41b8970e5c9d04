//! The VMM protection domain's heap budget, decided at plan time.
//!
//! The VMM PD's heap is a static arena of [`VMM_HEAP_BYTES`] in its ELF (one ELF serves
//! every VM). Every buffer a guest can make a device allocate is capped (the caps are the
//! devices' named constants: [`MAX_CHAIN_SEGMENTS`], [`BOUNCE_LEN`],
//! [`INPUT_BUFFER_LIMIT`], [`NET_MAX_CHAIN_SEGMENTS`], …), so the most a VM's devices can
//! take from the heap follows from its plan: [`vmm_heap_bytes`]. `keel sel4 build` (and
//! the PD itself, at boot) refuses a VM whose worst case does not fit ([`check_vmm_heap`]).
//! Guest-driven allocations are fallible besides: should the estimate be short, the
//! request that finds the heap empty fails (its device needs a reset), never the VMM.
//!
//! The heap hands out power-of-two blocks, so every figure is rounded up to one, and a
//! growing `Vec` is counted twice (the old and the new block live together while it moves).

use core::mem::size_of;

use keel_spec::{DeviceKind, VmPlan};
use keel_virtio::block::BOUNCE_LEN;
use keel_virtio::console::INPUT_BUFFER_LIMIT;
use keel_virtio::net::{MAX_FRAME_LEN, NET_HDR_LEN, NET_MAX_CHAIN_SEGMENTS, QUEUE_SIZE};
use keel_virtio::queue::MAX_CHAIN_SEGMENTS;
use keel_virtio::vsock::{CONTROL_QUEUE_LIMIT, Header, MAX_CONNECTIONS, MAX_PACKET_PAYLOAD};
use keel_virtio::{DescriptorChain, GuestIoSlice, Segment};

/// The VMM PD's heap (the arena `vmm_entry!` declares).
pub const VMM_HEAP_BYTES: usize = 32 << 20;

/// What the VMM itself keeps on the heap whatever its devices: the plan, buses, vCPU
/// slots, the software GIC, log lines, the transports. A reservation, not a measurement
/// (those are a few hundred KiB for the test guests' plans).
pub const VMM_BASE_BYTES: usize = 4 << 20;

/// What one vsock connection's entry takes in the device's connection table (its state and
/// counters, an empty byte queue, its share of the map's nodes) and in a flush's key list:
/// a reservation (the entry is a few dozen words).
pub const VSOCK_CONN_BYTES: usize = 512;

/// A heap block for `bytes` (the heap's size classes are powers of two).
const fn block(bytes: usize) -> usize {
    bytes.next_power_of_two()
}

/// A `Vec` grown to `bytes`: its block and the previous one, alive together while it moves.
const fn grown(bytes: usize) -> usize {
    block(bytes) + block(bytes) / 2
}

/// One popped chain's segment list, for a queue capped at `segments` buffers per chain.
const fn chain(segments: u32) -> usize {
    grown(segments as usize * size_of::<Segment>())
}

/// The most the device `kind` can take from the heap for guest requests (its buffers
/// and the chains it holds or has in flight), from the devices' caps.
pub const fn device_heap_bytes(kind: DeviceKind) -> usize {
    match kind {
        // The bounce buffer, the vectored-I/O slice list and the chain in flight.
        DeviceKind::Block { .. } => {
            block(BOUNCE_LEN)
                + grown(MAX_CHAIN_SEGMENTS as usize * size_of::<GuestIoSlice>())
                + chain(MAX_CHAIN_SEGMENTS)
        }
        // Pushed input waiting for receive buffers, a held receive chain, a transmit chain.
        // (A storage VM's doorbell is a console too.)
        DeviceKind::Console { .. } | DeviceKind::Doorbell => {
            grown(INPUT_BUFFER_LIMIT) + 2 * chain(MAX_CHAIN_SEGMENTS)
        }
        // The receive and transmit frame buffers, up to a queue's worth of held receive
        // chains, and the transmit chain in flight.
        DeviceKind::Net { .. } => {
            2 * block(NET_HDR_LEN + MAX_FRAME_LEN)
                + grown(QUEUE_SIZE as usize * size_of::<DescriptorChain>())
                + (QUEUE_SIZE as usize + 1) * chain(NET_MAX_CHAIN_SEGMENTS)
        }
        // The chain in flight (entropy goes through a stack buffer).
        DeviceKind::Rng => chain(MAX_CHAIN_SEGMENTS),
        // The transmit payload buffer, the control queue at its cap, a held receive chain
        // and the transmit chain in flight, the connection table at its cap. A connection's
        // byte queue (up to `CONN_BUF`) fills only on a connection to the host: the seL4
        // VMM's vsock has no host side (`NoHost`), so none is ever established there.
        DeviceKind::Vsock => {
            block(MAX_PACKET_PAYLOAD as usize)
                + grown(CONTROL_QUEUE_LIMIT * size_of::<Header>())
                + 2 * chain(MAX_CHAIN_SEGMENTS)
                + MAX_CONNECTIONS * VSOCK_CONN_BYTES
        }
    }
}

/// The most `plan`'s VMM can need from its heap: [`VMM_BASE_BYTES`] and every device's
/// worst case.
pub fn vmm_heap_bytes(plan: &VmPlan) -> usize {
    plan.devices
        .iter()
        .map(|d| device_heap_bytes(d.kind))
        .fold(VMM_BASE_BYTES, usize::saturating_add)
}

/// A VM whose devices' worst case does not fit the VMM's heap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "vm {vm}: its {devices} devices may need {need} bytes of the VMM's heap at worst, which holds {have} (use fewer devices)"
)]
pub struct HeapBudgetError {
    /// The VM.
    pub vm: alloc::string::String,
    /// Its virtio devices.
    pub devices: usize,
    /// [`vmm_heap_bytes`] of its plan.
    pub need: usize,
    /// The heap: [`VMM_HEAP_BYTES`].
    pub have: usize,
}

/// Refuse `plan` if its worst case does not fit [`VMM_HEAP_BYTES`].
pub fn check_vmm_heap(plan: &VmPlan) -> Result<(), HeapBudgetError> {
    check_heap(plan, VMM_HEAP_BYTES)
}

/// Refuse `plan` if its worst case does not fit a heap of `have` bytes.
pub fn check_heap(plan: &VmPlan, have: usize) -> Result<(), HeapBudgetError> {
    let need = vmm_heap_bytes(plan);
    if need > have {
        return Err(HeapBudgetError {
            vm: plan.name.clone(),
            devices: plan.devices.len(),
            need,
            have,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_spec::{Arch, DiskSpec, HostPath, Memory, VmSpec};

    fn plan_spec_disks(n: usize) -> alloc::vec::Vec<DiskSpec> {
        (0..n)
            .map(|i| DiskSpec {
                path: HostPath::new(alloc::format!("/d{i}")),
                read_only: false,
                id: None,
                served: None,
            })
            .collect()
    }

    fn plan_with_disks(n: usize) -> VmPlan {
        let mut v = VmSpec::new(
            "v",
            Arch::Aarch64,
            HostPath::new("/k"),
            Memory::Size(64 << 20),
        );
        v.disks = plan_spec_disks(n);
        keel_spec::plan::plan_vm(&v).unwrap()
    }

    #[test]
    fn a_vm_with_a_few_devices_fits_the_vmm_heap() {
        let plan = plan_with_disks(2);

        assert_eq!(check_vmm_heap(&plan), Ok(()));
        assert!(vmm_heap_bytes(&plan) > VMM_BASE_BYTES);
    }

    #[test]
    fn a_vm_whose_device_caps_exceed_the_heap_is_refused() {
        let plan = plan_with_disks(2);
        let need = vmm_heap_bytes(&plan);

        let got = check_heap(&plan, need - 1);

        assert_eq!(
            got,
            Err(HeapBudgetError {
                vm: "v".into(),
                devices: plan.devices.len(),
                need,
                have: need - 1,
            })
        );
    }

    #[test]
    fn a_vsock_device_counts_its_payload_buffer_control_queue_and_connections() {
        let v = device_heap_bytes(DeviceKind::Vsock);

        assert!(v >= MAX_PACKET_PAYLOAD as usize + MAX_CONNECTIONS * VSOCK_CONN_BYTES);
        assert!(v >= CONTROL_QUEUE_LIMIT * size_of::<Header>());
        // Two disks, an rng and a vsock device still fit the heap.
        let mut spec = VmSpec::new(
            "v",
            Arch::Aarch64,
            HostPath::new("/k"),
            Memory::Size(64 << 20),
        );
        spec.disks = plan_spec_disks(2);
        spec.vsock = Some(keel_spec::VsockSpec {
            cid: 3,
            socket: None,
        });
        let plan = keel_spec::plan::plan_vm(&spec).unwrap();
        assert!(plan.devices.iter().any(|d| d.kind == DeviceKind::Vsock));
        assert_eq!(check_vmm_heap(&plan), Ok(()));
    }

    #[test]
    fn each_device_adds_its_worst_case() {
        let one = vmm_heap_bytes(&plan_with_disks(1));
        let two = vmm_heap_bytes(&plan_with_disks(2));

        assert_eq!(two - one, device_heap_bytes(DeviceKind::Block { disk: 1 }));
    }
}
