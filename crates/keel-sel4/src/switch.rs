//! The switch component: one protection domain per network, running that network's
//! [`keel_net::switch::Switch`] over the rings of its ports ([`keel_net::port`]). This
//! module is its plain logic (host-tested); the program is `switch_pd` (seL4 only), the
//! binary `keel-sel4-switch`.
//!
//! Each port is one interface of one VM: two ring regions (`to_switch`, produced by the
//! VMM; `from_switch`, produced by the switch) mapped into that VM's VMM and this switch
//! only, and one channel between them. The switch maps no guest memory: a VMM copies
//! frames between its guest and its rings. The switch's heap is a region of its own, sized
//! at plan time (`keel_spec::microkit::switch_heap_bytes`).
//!
//! The switch learns its network's plan (ports, MACs, allow pairs, sizes, storm control),
//! ring addresses and channels from a payload appended to its ELF ([`SwitchPdConfig`], at
//! [`crate::payload::PAYLOAD_VADDR`]): a fixed header that says where the heap is (read
//! before anything is allocated), then the configuration in postcard. The switch itself is
//! `keel_net::plan::build_switch` of the plan, as on Linux.

use alloc::string::String;
use alloc::vec::Vec;

use keel_net::switch::{Switch, SwitchConfig, SwitchError};
use keel_spec::microkit::SwitchComponent;
use keel_spec::plan::NetworkPlan;
use serde::{Deserialize, Serialize};

use crate::payload::{PayloadError, Reader, Writer};

/// Where a VMM maps the rings of its interfaces (16 GiB; interface after interface,
/// to-switch then from-switch).
pub const VMM_NET_VADDR: u64 = 0x4_0000_0000;
/// Where a switch PD maps the rings of its ports (port after port).
pub const SWITCH_RINGS_VADDR: u64 = 0x4_0000_0000;
/// Where a switch PD maps its heap region.
pub const SWITCH_HEAP_VADDR: u64 = 0x2_0000_0000;
/// The channel, in a VMM, of its interface `i`: this + `i` (1 was the console input's
/// interrupt, now unused; 2 is the console PD).
pub const VMM_FIRST_NET_CHANNEL: u32 = 3;
/// Frames the switch takes from its input rings per service round.
pub const SERVICE_BUDGET: usize = 64;
/// First bytes of the switch payload.
pub const MAGIC: [u8; 8] = *b"KEELSW\0\0";
/// Switch payload format version (2: the configuration carries the network's plan).
pub const VERSION: u32 = 2;
/// Bytes of the switch payload's fixed header: magic, version, total length, heap address
/// and heap length.
pub const HEADER_LEN: usize = 32;

/// One port as the switch PD sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPortConfig {
    /// The VM whose interface it is (for messages).
    pub vm: String,
    /// Where the to-switch ring is mapped in the switch PD.
    pub to_switch: u64,
    /// Where the from-switch ring is mapped in the switch PD.
    pub from_switch: u64,
    /// Bytes of each ring window.
    pub ring_len: u64,
    /// Slots of each ring.
    pub slots: u32,
    /// The switch PD's channel to the port's VMM.
    pub channel: u32,
}

/// What the switch PD needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPdConfig {
    /// The network's plan: its ports with their MACs, allow pairs, sizes and storm control
    /// (times in the switch's time, see `switch_pd`).
    pub plan: NetworkPlan,
    /// Where each port's rings and channel are, in port order.
    pub ports: Vec<SwitchPortConfig>,
    /// Where the heap region is mapped.
    pub heap_vaddr: u64,
    /// Its length.
    pub heap_len: u64,
}

/// Where the heap is, read from the fixed header (no allocation needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchHeader {
    /// Total payload length.
    pub total: usize,
    /// Heap region address.
    pub heap_vaddr: u64,
    /// Heap region length.
    pub heap_len: u64,
}

/// What is wrong with a switch configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchConfigError {
    /// The header (magic, version, length) or the bounds.
    #[error("{0}")]
    Header(#[from] PayloadError),
    /// The configuration does not decode (or has bytes left over).
    #[error("switch configuration does not decode: {0}")]
    Decode(postcard::Error),
    /// The configuration cannot be encoded.
    #[error("cannot encode the switch configuration: {0}")]
    Encode(postcard::Error),
    /// The encoded configuration is longer than its header can say.
    #[error("switch configuration of {0} bytes is too large")]
    TooLarge(usize),
    /// The switch refused the configuration.
    #[error("network {network}: {source}")]
    Switch {
        /// The network.
        network: String,
        /// What the switch said.
        source: SwitchError,
    },
}

impl SwitchPdConfig {
    /// The configuration of the switch PD `c` of the component plan.
    pub fn from_component(c: &SwitchComponent) -> SwitchPdConfig {
        SwitchPdConfig {
            plan: c.plan.clone(),
            ports: c
                .ports
                .iter()
                .map(|p| SwitchPortConfig {
                    vm: p.vm.clone(),
                    to_switch: p.to_switch.switch_vaddr,
                    from_switch: p.from_switch.switch_vaddr,
                    ring_len: p.to_switch.ring_len,
                    slots: c.plan.slots,
                    channel: p.switch_channel,
                })
                .collect(),
            heap_vaddr: c.heap_vaddr,
            heap_len: c.heap_size,
        }
    }

    /// The switch's sizes ([`keel_net::plan::switch_config`] of the plan).
    pub fn switch_config(&self) -> SwitchConfig {
        keel_net::plan::switch_config(&self.plan)
    }

    /// The switch of this configuration ([`keel_net::plan::build_switch`] of the plan):
    /// port `i` sends only from its MAC, the planned pairs are allowed and nothing else.
    pub fn build_switch(&self) -> Result<Switch, SwitchConfigError> {
        keel_net::plan::build_switch(&self.plan).map_err(|source| SwitchConfigError::Switch {
            network: self.plan.name.clone(),
            source,
        })
    }

    /// Serialize: the fixed header of [`HEADER_LEN`] bytes (magic, version, total length,
    /// heap address, heap length), then the configuration in postcard.
    pub fn encode(&self) -> Result<Vec<u8>, SwitchConfigError> {
        let body = postcard::to_allocvec(self).map_err(SwitchConfigError::Encode)?;
        let total = HEADER_LEN + body.len();
        let total = u32::try_from(total).map_err(|_| SwitchConfigError::TooLarge(total))?;
        let mut w = Writer(Vec::with_capacity(total as usize));
        w.0.extend_from_slice(&MAGIC);
        w.u32(VERSION);
        w.u32(total);
        w.u64(self.heap_vaddr);
        w.u64(self.heap_len);
        w.0.extend_from_slice(&body);
        Ok(w.0)
    }

    /// The fixed header of the first [`HEADER_LEN`] bytes (allocates nothing: the PD reads
    /// it before its heap exists).
    pub fn header(header: &[u8]) -> Result<SwitchHeader, PayloadError> {
        let mut r = Reader::after_header(header, &MAGIC, VERSION)?;
        let total = r.u32("total length")? as usize;
        let heap_vaddr = r.u64("heap address")?;
        let heap_len = r.u64("heap length")?;
        if total < HEADER_LEN {
            return Err(PayloadError::Truncated {
                what: "switch payload",
            });
        }
        Ok(SwitchHeader {
            total,
            heap_vaddr,
            heap_len,
        })
    }

    /// Parse what [`SwitchPdConfig::encode`] wrote (all of it: no bytes may be left over).
    pub fn decode(bytes: &[u8]) -> Result<SwitchPdConfig, SwitchConfigError> {
        let h = SwitchPdConfig::header(bytes)?;
        let body = bytes
            .get(HEADER_LEN..h.total)
            .ok_or(PayloadError::Truncated {
                what: "switch payload",
            })?;
        match postcard::take_from_bytes::<SwitchPdConfig>(body) {
            Ok((cfg, [])) if cfg.heap_vaddr == h.heap_vaddr && cfg.heap_len == h.heap_len => {
                Ok(cfg)
            }
            Ok(_) => Err(SwitchConfigError::Decode(
                postcard::Error::DeserializeBadEncoding,
            )),
            Err(e) => Err(SwitchConfigError::Decode(e)),
        }
    }

    /// The port whose channel is `channel`.
    pub fn port_of_channel(&self, channel: u32) -> Option<usize> {
        self.ports.iter().position(|p| p.channel == channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_net::switch::PortId;
    use keel_spec::microkit::{
        ConsoleLayout, MicrokitLayout, NetLayout, component_plan, placement, switch_components,
        switch_heap_bytes,
    };
    use keel_spec::{Arch, HostPath, Memory, NetworkSpec, NicSpec, System, VmSpec};

    fn layout() -> MicrokitLayout {
        MicrokitLayout {
            vmm_ram_vaddr: 0x2_0000_0000,
            gic_vcpu_paddr: 0x0804_0000,
            gic_vcpu_size: 0x2000,
            gic_cpu_gpa: 0x0801_0000,
            console: ConsoleLayout {
                ring_size: 0x4000,
                vmm_ring_vaddr: 0x3_0000_0000,
                console_rings_vaddr: 0x3_0000_0000,
                vmm_channel: 2,
            },
            cores: 1,
            max_ram: 4 << 30,
            max_vcpus: 8,
            console_input: None,
            net: NetLayout {
                vmm_rings_vaddr: VMM_NET_VADDR,
                switch_rings_vaddr: SWITCH_RINGS_VADDR,
                switch_heap_vaddr: SWITCH_HEAP_VADDR,
                vmm_first_channel: VMM_FIRST_NET_CHANNEL,
            },
            board: None,
            colour: None,
        }
    }

    fn system(vms: usize, slots: u32, allow: Option<Vec<(String, String)>>) -> System {
        system_with(vms, slots, allow, |_| {})
    }

    /// [`system`], its network `lan` changed by `tune` first.
    fn system_with(
        vms: usize,
        slots: u32,
        allow: Option<Vec<(String, String)>>,
        tune: impl FnOnce(&mut NetworkSpec),
    ) -> System {
        let vms = (0..vms)
            .map(|i| {
                let mut v = VmSpec::new(
                    format!("v{i}"),
                    Arch::Aarch64,
                    HostPath::new("/k"),
                    Memory::Size(256 << 20),
                );
                v.nics = vec![NicSpec {
                    network: "lan".into(),
                    mac: None,
                }];
                v
            })
            .collect();
        let mut lan = NetworkSpec::new("lan");
        lan.slots = slots;
        lan.allow = allow;
        tune(&mut lan);
        System::with_networks("t".into(), None, vms, vec![lan]).unwrap()
    }

    fn config(s: &System) -> SwitchPdConfig {
        let lay = layout();
        let places = placement(s, &lay).unwrap();
        SwitchPdConfig::from_component(&switch_components(s, &lay, &places).unwrap()[0])
    }

    #[test]
    fn configuration_round_trips() {
        let cfg = config(&system(3, 256, None));

        let bytes = cfg.encode().unwrap();

        assert_eq!(SwitchPdConfig::decode(&bytes), Ok(cfg));
    }

    #[test]
    fn header_gives_the_heap_without_decoding_the_body() {
        let cfg = config(&system(2, 256, None));
        let bytes = cfg.encode().unwrap();

        let h = SwitchPdConfig::header(&bytes[..HEADER_LEN]).unwrap();

        assert_eq!(
            (h.total, h.heap_vaddr, h.heap_len),
            (bytes.len(), SWITCH_HEAP_VADDR, cfg.heap_len)
        );
    }

    #[test]
    fn bytes_left_over_are_refused() {
        let mut bytes = config(&system(2, 256, None)).encode().unwrap();
        bytes.push(0);
        let total = bytes.len() as u32;
        bytes[12..16].copy_from_slice(&total.to_le_bytes());

        assert!(matches!(
            SwitchPdConfig::decode(&bytes),
            Err(SwitchConfigError::Decode(_))
        ));
    }

    #[test]
    fn ports_use_the_rings_and_channels_of_the_component_plan() {
        let s = system(2, 256, None);
        let plan = component_plan(&s, &layout()).unwrap();

        let cfg = config(&s);

        let sw = plan
            .components
            .iter()
            .find(|c| c.name == "keel_switch_lan")
            .unwrap();
        for p in &cfg.ports {
            assert!(sw.maps.iter().any(|m| m.vaddr == p.to_switch));
            assert!(sw.maps.iter().any(|m| m.vaddr == p.from_switch));
        }
        assert_eq!(cfg.ports[1].channel, 1);
        assert_eq!(cfg.ports[1].ring_len, 256 + 256 * 2048);
        assert!(
            plan.channels
                .iter()
                .any(|c| c.a == ("v1_vmm".into(), 3) && c.b == ("keel_switch_lan".into(), 1))
        );
    }

    #[test]
    fn built_switch_allows_only_the_planned_pairs() {
        let s = system(3, 256, Some(vec![("v0".into(), "v2".into())]));

        let sw = config(&s).build_switch().unwrap();

        assert_eq!(sw.ports(), 3);
        assert!(sw.is_allowed(PortId(0), PortId(2)));
        assert!(!sw.is_allowed(PortId(0), PortId(1)));
        assert!(!sw.is_allowed(PortId(1), PortId(2)));
    }

    #[test]
    fn configuration_carries_the_networks_storm_control_to_the_switch() {
        let s = system_with(2, 256, None, |lan| {
            lan.flood_rate = 300;
            lan.flood_burst = 9;
        });
        let bytes = config(&s).encode().unwrap();

        let sw = SwitchPdConfig::decode(&bytes)
            .unwrap()
            .build_switch()
            .unwrap();

        assert_eq!((sw.config().flood_rate, sw.config().flood_burst), (300, 9));
    }

    #[test]
    fn planned_heap_holds_twice_the_switch_footprint() {
        for (vms, slots) in [(1, 16), (2, 256), (8, 1024), (16, 4096)] {
            let s = system(vms, slots, None);
            let cfg = config(&s);
            let net = &keel_spec::plan::plan(&s).unwrap().networks[0];

            let footprint = cfg.build_switch().unwrap().footprint() as u64;

            assert!(
                switch_heap_bytes(net) >= 2 * footprint + (512 << 10),
                "{vms} ports, {slots} slots: heap {} < 2 × {footprint} + 512 KiB",
                switch_heap_bytes(net)
            );
        }
    }
}
