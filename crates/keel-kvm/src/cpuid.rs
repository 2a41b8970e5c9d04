//! CPUID for each vCPU: what KVM supports, with the per-vCPU identity fixed.
//!
//! KVM's `KVM_GET_SUPPORTED_CPUID` describes the host; each vCPU gets a copy in which the
//! APIC id, the topology leaves and the hypervisor bit say what the guest really has: `vcpus`
//! single-threaded cores in one package, APIC id = vCPU index (as in the MP table).
//! The hypervisor leaf 0x4000_0000 keeps KVM's "KVMKVMKVM" signature, because the KVM
//! paravirtual features it advertises (kvmclock, PV EOI, …) are really there.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: the package has more than one logical processor.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb / 0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` things (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjust `entries` (a copy of the supported CPUID) for vCPU `id` of `vcpus`.
pub fn fix_entries(entries: &mut [kvm_cpuid_entry2], id: u32, vcpus: u32) {
    let core_bits = bits_for(vcpus);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // APIC id, logical processors per package, CLFLUSH line size (8 * 8 bytes).
                e.ebx = (id << 24) | ((vcpus.min(255)) << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Deterministic cache parameters: cores per package - 1 in EAX[31:26];
                // each cache is private to one core (EAX[25:14] = 0).
                e.eax = (e.eax & 0x3fff) | ((vcpus.saturating_sub(1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0; // one thread per core
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = vcpus;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_the_apic_id_and_hypervisor_bit() {
        let mut e = [entry(1, 0)];
        fix_entries(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_reports_cores_and_x2apic_id() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        fix_entries(&mut e, 2, 3);
        assert!(e.iter().all(|e| e.edx == 2));
        assert_eq!((e[0].ebx, e[0].ecx >> 8), (1, LEVEL_SMT));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (2, 3, LEVEL_CORE));
        assert_eq!(e[2].ecx >> 8, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = [entry(1, 0)];
        e[0].edx = EDX_HTT;
        fix_entries(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn bits_for_rounds_up() {
        assert_eq!(
            [
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5)
            ],
            [0, 1, 2, 2, 3]
        );
    }
}
