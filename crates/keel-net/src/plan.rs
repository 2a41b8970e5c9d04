//! The switch a network's plan describes, built the same way on every backend (the
//! `keel up` switch process on Linux, the switch protection domain on seL4).
//!
//! [`build_switch`] sizes the switch from the [`NetworkPlan`] ([`switch_config`]), adds its
//! ports in plan order (a port with a declared MAC with [`Switch::add_port`], the uplink with
//! [`Switch::add_uplink`]), so port `i` of the plan is `PortId(i)`, and allows exactly the
//! planned pairs.

use keel_spec::plan::NetworkPlan;

use crate::ring::MAX_FRAME;
use crate::switch::{Mac, PortId, Switch, SwitchConfig, SwitchError};

/// The sizes of `net`'s switch: one port per planned port (at least one), the planned MAC
/// table, queue and flood depths, ageing and storm control; frames up to [`MAX_FRAME`].
pub fn switch_config(net: &NetworkPlan) -> SwitchConfig {
    SwitchConfig {
        max_ports: net.ports.len().max(1),
        mac_table: net.mac_table as usize,
        queue_depth: net.queue_depth as usize,
        flood_depth: net.flood_depth as usize,
        max_frame: MAX_FRAME,
        ageing_ms: net.ageing_ms,
        flood_rate: net.flood_rate,
        flood_burst: net.flood_burst,
    }
}

/// The switch of `net`: sized by [`switch_config`], port `i` = `net.ports[i]` (sending only
/// from its declared MAC, or an uplink when it declares none), the pairs of `net.allow`
/// allowed and nothing else. Errors name what the switch refused (a size out of range, a
/// MAC that is not unicast or is declared twice, an allowed pair naming no port).
pub fn build_switch(net: &NetworkPlan) -> Result<Switch, SwitchError> {
    let mut sw = Switch::new(switch_config(net))?;
    for p in &net.ports {
        match p.mac {
            Some(m) => sw.add_port(Mac(m.0))?,
            None => sw.add_uplink()?,
        };
    }
    for &(a, b) in &net.allow {
        sw.allow(PortId(a), PortId(b))?;
    }
    Ok(sw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;
    use keel_spec::MacAddr;
    use keel_spec::plan::{PortOwner, PortPlan};

    fn vm_port(name: &str, last: u8) -> PortPlan {
        PortPlan {
            owner: PortOwner::Vm {
                vm: name.into(),
                nic: 0,
            },
            mac: Some(MacAddr([0x02, 0, 0, 0, 0, last])),
        }
    }

    fn net(ports: Vec<PortPlan>, allow: Vec<(u16, u16)>) -> NetworkPlan {
        NetworkPlan {
            name: String::from("lan"),
            ports,
            allow,
            slots: 16,
            mac_table: 8,
            queue_depth: 16,
            flood_depth: 4,
            ageing_ms: 300_000,
            flood_rate: 1000,
            flood_burst: 64,
        }
    }

    fn allowed(sw: &Switch) -> Vec<(u16, u16)> {
        let n = sw.ports() as u16;
        (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .filter(|&(a, b)| sw.is_allowed(PortId(a), PortId(b)))
            .collect()
    }

    #[test]
    fn ports_are_added_in_plan_order_with_their_macs() {
        let plan = net(
            vec![vm_port("a", 3), vm_port("b", 1), vm_port("c", 2)],
            vec![],
        );

        let sw = build_switch(&plan).unwrap();

        let macs: Vec<_> = (0..3).map(|p| sw.port_mac(PortId(p)).unwrap()).collect();
        assert_eq!(macs, [3, 1, 2].map(|l| Some(Mac([0x02, 0, 0, 0, 0, l]))));
    }

    #[test]
    fn only_the_planned_pairs_are_allowed() {
        let plan = net(
            vec![vm_port("a", 1), vm_port("b", 2), vm_port("c", 3)],
            vec![(0, 2), (1, 2)],
        );

        let sw = build_switch(&plan).unwrap();

        assert_eq!(allowed(&sw), [(0, 2), (1, 2)]);
    }

    #[test]
    fn a_port_without_a_mac_is_an_uplink() {
        let mut ports = vec![vm_port("a", 1)];
        ports.push(PortPlan {
            owner: PortOwner::Uplink { tap: "tap0".into() },
            mac: None,
        });
        let plan = net(ports, vec![(0, 1)]);

        let sw = build_switch(&plan).unwrap();

        assert_eq!(sw.ports(), 2);
        assert_eq!(sw.port_mac(PortId(1)), Ok(None));
        assert_eq!(allowed(&sw), [(0, 1)]);
    }

    #[test]
    fn the_switch_is_sized_and_storm_limited_by_the_plan() {
        let mut plan = net(vec![vm_port("a", 1), vm_port("b", 2)], vec![(0, 1)]);
        plan.flood_rate = 250;
        plan.flood_burst = 7;

        let sw = build_switch(&plan).unwrap();

        assert_eq!(
            *sw.config(),
            SwitchConfig {
                max_ports: 2,
                mac_table: 8,
                queue_depth: 16,
                flood_depth: 4,
                max_frame: MAX_FRAME,
                ageing_ms: 300_000,
                flood_rate: 250,
                flood_burst: 7,
            }
        );
    }

    #[test]
    fn a_plan_the_switch_refuses_is_an_error_naming_the_problem() {
        let plan = net(vec![vm_port("a", 1), vm_port("b", 1)], vec![]);

        let e = build_switch(&plan).unwrap_err();

        assert_eq!(
            e,
            SwitchError::DuplicateMac {
                mac: Mac([0x02, 0, 0, 0, 0, 1]),
                port: PortId(0)
            }
        );
    }

    #[test]
    fn storm_limits_of_the_description_are_the_switchs_limits() {
        use keel_spec::limits;

        assert_eq!(limits::MAX_FLOOD_RATE, crate::switch::MAX_FLOOD_RATE);
        assert_eq!(limits::MAX_FLOOD_BURST, crate::switch::MAX_FLOOD_BURST);
    }
}
