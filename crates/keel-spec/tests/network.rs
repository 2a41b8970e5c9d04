//! Networks in the system description: `[[network]]`, `[[vm.net]]`, allow lists, MACs, and
//! their plan.

mod common;

use common::Scratch;
use keel_spec::plan::{DeviceKind, PortOwner, plan, plan_vm};
use keel_spec::{MacAddr, NetworkSpec};

/// A VM named `name` with the given extra TOML appended after its keys.
fn vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\narch = \"x86_64\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\n{extra}\n"
    )
}

fn three_vms_on_lan(network: &str) -> String {
    format!(
        "{network}\n{}{}{}",
        vm(
            "a",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00:0a\""
        ),
        vm(
            "b",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00:0b\""
        ),
        vm("c", "[[vm.net]]\nnetwork = \"lan\""),
    )
}

#[test]
fn network_and_interfaces_are_parsed_into_the_model() {
    let s = Scratch::new();
    let text = three_vms_on_lan(
        "[[network]]\nname = \"lan\"\nallow = [[\"a\", \"b\"]]\nslots = 64\nuplink = \"tap:keel0\"",
    );

    let system = s.parse(&text).unwrap();

    let net = &system.networks()[0];
    assert_eq!(net.name, "lan");
    assert_eq!(net.allow, Some(vec![("a".into(), "b".into())]));
    assert_eq!((net.slots, net.uplink.as_deref()), (64, Some("tap:keel0")));
    let a = system.vm("a").unwrap();
    assert_eq!(a.nics[0].network, "lan");
    assert_eq!(a.nics[0].mac, MacAddr::parse("02:00:00:00:00:0a"));
}

#[test]
fn network_defaults_allow_every_pair_with_256_slots_and_no_uplink() {
    let s = Scratch::new();
    let system = s
        .parse(&three_vms_on_lan("[[network]]\nname = \"lan\""))
        .unwrap();

    let net = &system.networks()[0];

    assert_eq!(net.allow, None);
    assert_eq!(net.slots, NetworkSpec::DEFAULT_SLOTS);
    assert_eq!(net.uplink, None);
}

#[test]
fn interface_on_an_undeclared_network_is_refused_naming_the_declared_ones() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n{}",
        vm("a", "[[vm.net]]\nnetwork = \"wan\"")
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": net 0: network: "wan" is not declared (declared: "lan")"#
    );
}

#[test]
fn interface_without_any_network_declared_says_none_is() {
    let s = Scratch::new();
    let text = vm("a", "[[vm.net]]\nnetwork = \"lan\"");

    assert_eq!(
        s.error(&text),
        r#"vm "a": net 0: network: "lan" is not declared (declared: none)"#
    );
}

#[test]
fn repeated_mac_is_refused_naming_both_interfaces() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n{}{}",
        vm(
            "a",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00:01\""
        ),
        vm(
            "b",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00:01\""
        ),
    );

    assert_eq!(
        s.error(&text),
        r#"vm "b": net 0: mac 02:00:00:00:00:01 is also used by vm "a": net 0"#
    );
}

#[test]
fn repeated_mac_on_different_networks_is_still_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n[[network]]\nname = \"dmz\"\n{}{}",
        vm(
            "a",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00:01\""
        ),
        vm(
            "b",
            "[[vm.net]]\nnetwork = \"dmz\"\nmac = \"02:00:00:00:00:01\""
        ),
    );

    assert!(s.error(&text).contains("is also used by vm \"a\": net 0"));
}

#[test]
fn unknown_vm_in_an_allow_list_is_refused_naming_the_members() {
    let s = Scratch::new();
    let text = three_vms_on_lan("[[network]]\nname = \"lan\"\nallow = [[\"a\", \"zed\"]]");

    assert_eq!(
        s.error(&text),
        r#"network "lan": allow: "zed" is not a VM of this system (members: "a", "b", "c")"#
    );
}

#[test]
fn vm_not_on_the_network_in_its_allow_list_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\nallow = [[\"a\", \"d\"]]\n{}{}",
        vm("a", "[[vm.net]]\nnetwork = \"lan\""),
        vm("d", ""),
    );

    assert_eq!(
        s.error(&text),
        r#"network "lan": allow: "d" is not attached to this network (members: "a")"#
    );
}

#[test]
fn uplink_in_an_allow_list_needs_an_uplink() {
    let s = Scratch::new();
    let text = three_vms_on_lan("[[network]]\nname = \"lan\"\nallow = [[\"a\", \"uplink\"]]");

    assert!(
        s.error(&text)
            .contains(r#"allow: "uplink" is not a VM of this system"#)
    );
}

#[test]
fn multicast_mac_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n{}",
        vm(
            "a",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"01:00:5e:00:00:01\""
        )
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": net 0: mac: 01:00:5e:00:00:01 is a multicast address (bit 0 of the first octet is set)"#
    );
}

#[test]
fn malformed_mac_is_refused_with_the_text_given() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n{}",
        vm(
            "a",
            "[[vm.net]]\nnetwork = \"lan\"\nmac = \"02:00:00:00:00\""
        )
    );

    assert!(
        s.error(&text)
            .starts_with(r#"vm "a": net 0: mac: "02:00:00:00:00" is not a MAC address"#)
    );
}

#[test]
fn two_networks_with_one_name_are_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n[[network]]\nname = \"lan\"\n{}",
        vm("a", "")
    );

    assert_eq!(
        s.error(&text),
        r#"network[1]: name "lan" is used by two networks"#
    );
}

#[test]
fn ring_slots_must_be_a_power_of_two_in_range() {
    let s = Scratch::new();
    for slots in [0, 8, 100, 8192] {
        let text = three_vms_on_lan(&format!("[[network]]\nname = \"lan\"\nslots = {slots}"));
        assert_eq!(
            s.error(&text),
            format!(
                r#"network "lan": slots: {slots} is out of range (a power of two in 16..=4096)"#
            )
        );
    }
}

#[test]
fn storm_control_defaults_to_1000_frames_per_second_in_bursts_of_64() {
    let s = Scratch::new();
    let system = s
        .parse(&three_vms_on_lan("[[network]]\nname = \"lan\""))
        .unwrap();

    let net = &plan(&system).unwrap().networks[0];

    assert_eq!((net.flood_rate, net.flood_burst), (1000, 64));
}

#[test]
fn storm_control_of_the_description_reaches_the_plan() {
    let s = Scratch::new();
    let system = s
        .parse(&three_vms_on_lan(
            "[[network]]\nname = \"lan\"\nflood_rate = 200\nflood_burst = 8",
        ))
        .unwrap();

    let net = &plan(&system).unwrap().networks[0];

    assert_eq!((net.flood_rate, net.flood_burst), (200, 8));
}

#[test]
fn storm_control_cannot_be_switched_off_or_unbounded() {
    let s = Scratch::new();
    let cases = [
        (
            "flood_rate = 0",
            "flood_rate: 0 is out of range (1..=1000000 frames per second)",
        ),
        (
            "flood_rate = 1000001",
            "flood_rate: 1000001 is out of range (1..=1000000 frames per second)",
        ),
        (
            "flood_rate = -1",
            "flood_rate: -1 is out of range (1..=1000000 frames per second)",
        ),
        (
            "flood_burst = 0",
            "flood_burst: 0 is out of range (1..=65536 frames)",
        ),
        (
            "flood_burst = 65537",
            "flood_burst: 65537 is out of range (1..=65536 frames)",
        ),
    ];
    for (key, message) in cases {
        let text = three_vms_on_lan(&format!("[[network]]\nname = \"lan\"\n{key}"));

        assert_eq!(
            s.error(&text),
            format!(r#"network "lan": {message}"#),
            "{key}"
        );
    }
}

#[test]
fn uplink_must_name_a_tap_interface() {
    let s = Scratch::new();
    let text = three_vms_on_lan("[[network]]\nname = \"lan\"\nuplink = \"eth0\"");

    assert!(
        s.error(&text)
            .starts_with(r#"network "lan": uplink: "eth0" is not "tap:<interface>""#)
    );
}

#[test]
fn one_vm_attached_twice_to_a_network_is_refused() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n{}",
        vm(
            "a",
            "[[vm.net]]\nnetwork = \"lan\"\n[[vm.net]]\nnetwork = \"lan\""
        )
    );

    assert_eq!(
        s.error(&text),
        r#"vm "a": net 1: network: vm is already attached to "lan" by net 0"#
    );
}

#[test]
fn derived_macs_are_locally_administered_unicast_and_stable() {
    let a = MacAddr::derived("a", 0);

    assert_eq!(a, MacAddr::derived("a", 0));
    assert_ne!(a, MacAddr::derived("a", 1));
    assert_ne!(a, MacAddr::derived("b", 0));
    assert_eq!(a.0[0], 0x02);
    assert!(!a.is_multicast());
}

#[test]
fn plan_gives_ports_in_file_order_and_allow_pairs_by_port() {
    let s = Scratch::new();
    let system = s
        .parse(&three_vms_on_lan(
            "[[network]]\nname = \"lan\"\nallow = [[\"b\", \"a\"]]\nuplink = \"tap:k0\"",
        ))
        .unwrap();

    let p = plan(&system).unwrap();

    let net = &p.networks[0];
    assert_eq!(net.ports.len(), 4);
    assert_eq!(
        net.ports[2].owner,
        PortOwner::Vm {
            vm: "c".into(),
            nic: 0
        }
    );
    assert_eq!(net.ports[3].owner, PortOwner::Uplink { tap: "k0".into() });
    assert_eq!(net.ports[3].mac, None);
    assert_eq!(net.allow, vec![(0, 1)]);
    let c = p.vm("c").unwrap();
    assert_eq!(c.nics[0].port, 2);
    assert_eq!(c.nics[0].mac, MacAddr::derived("c", 0));
    assert_eq!(net.ports[2].mac, Some(c.nics[0].mac));
}

#[test]
fn plan_without_allow_list_allows_every_pair() {
    let s = Scratch::new();
    let system = s
        .parse(&three_vms_on_lan("[[network]]\nname = \"lan\""))
        .unwrap();

    let p = plan(&system).unwrap();

    assert_eq!(p.networks[0].allow, vec![(0, 1), (0, 2), (1, 2)]);
}

#[test]
fn net_devices_come_after_consoles_and_before_the_rng() {
    let s = Scratch::new();
    let text = format!(
        "[[network]]\nname = \"lan\"\n{}",
        vm(
            "a",
            "[[vm.console]]\noutput = \"null\"\n[vm.rng]\n[[vm.net]]\nnetwork = \"lan\""
        )
    );
    let system = s.parse(&text).unwrap();

    let p = plan(&system).unwrap();

    let kinds: Vec<_> = p.vms[0].devices.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            DeviceKind::Console { port: 0 },
            DeviceKind::Net { nic: 0 },
            DeviceKind::Rng
        ]
    );
}

#[test]
fn planning_a_networked_vm_without_its_system_is_refused() {
    let s = Scratch::new();
    let system = s
        .parse(&three_vms_on_lan("[[network]]\nname = \"lan\""))
        .unwrap();

    let e = plan_vm(system.vm("a").unwrap()).unwrap_err();

    assert_eq!(e.to_string(), r#"vm "a": network "lan" is not declared"#);
}

/// `three_vms_on_lan` with `[limits]` letting up to `max_vms` dynamic VMs join "lan".
fn pooled(network: &str, max_vms: u32) -> String {
    format!(
        "{}\n[limits]\nmax_vms = {max_vms}\nmemory = \"1G\"\nvcpus = 8\nnetworks = [\"lan\"]\n",
        three_vms_on_lan(network)
    )
}

#[test]
fn a_network_of_the_pool_gets_max_vms_spare_ports_with_unique_macs_before_the_uplink() {
    let s = Scratch::new();
    let system = s
        .parse(&pooled(
            "[[network]]\nname = \"lan\"\nuplink = \"tap:k0\"",
            3,
        ))
        .unwrap();

    let p = keel_spec::plan::plan_with_pool(&system).unwrap();

    let net = &p.networks[0];
    assert_eq!(net.ports.len(), 7);
    assert_eq!(net.ports[6].owner, PortOwner::Uplink { tap: "k0".into() });
    let pool: Vec<_> = net.ports[3..6].iter().map(|p| p.owner.clone()).collect();
    assert_eq!(
        pool,
        [0, 1, 2].map(|slot| PortOwner::Pool { slot }).to_vec()
    );
    let macs: Vec<MacAddr> = net.ports.iter().filter_map(|p| p.mac).collect();
    for (i, m) in macs.iter().enumerate() {
        assert!(!macs[i + 1..].contains(m), "{m} twice");
        assert!(!m.is_multicast() && m.0[0] & 2 == 2, "{m}");
    }
    // The plan without the pool (keel up, seL4) is unchanged.
    assert_eq!(plan(&system).unwrap().networks[0].ports.len(), 4);
}

#[test]
fn pool_macs_skip_a_declared_mac_and_are_the_same_for_the_same_network() {
    let first = keel_spec::plan::pool_macs("lan", &[], 2);
    let skipping = keel_spec::plan::pool_macs("lan", &first[..1], 2);

    assert_eq!(skipping[0], first[1]);
    assert_ne!(skipping[1], first[0]);
    assert_eq!(keel_spec::plan::pool_macs("lan", &[], 2), first);
    assert_ne!(keel_spec::plan::pool_macs("dmz", &[], 1)[0], first[0]);
}

#[test]
fn without_an_allow_list_pool_ports_talk_to_every_port() {
    let s = Scratch::new();
    let system = s.parse(&pooled("[[network]]\nname = \"lan\"", 2)).unwrap();

    let net = &keel_spec::plan::plan_with_pool(&system).unwrap().networks[0];

    let all: Vec<(u16, u16)> = (0..5u16)
        .flat_map(|a| (a + 1..5).map(move |b| (a, b)))
        .collect();
    assert_eq!(net.allow, all);
}

#[test]
fn with_an_allow_list_pool_ports_talk_only_to_what_pairs_with_pool_name() {
    let s = Scratch::new();
    let allow = "allow = [[\"a\", \"b\"], [\"pool\", \"c\"]]";
    let system = s
        .parse(&pooled(&format!("[[network]]\nname = \"lan\"\n{allow}"), 2))
        .unwrap();
    let uplink = s
        .parse(&pooled(
            "[[network]]\nname = \"lan\"\nuplink = \"tap:k0\"\nallow = [[\"a\", \"uplink\"], [\"uplink\", \"pool\"]]",
            2,
        ))
        .unwrap();
    let both = s
        .parse(&pooled(
            "[[network]]\nname = \"lan\"\nallow = [[\"pool\", \"pool\"]]",
            2,
        ))
        .unwrap();

    let net = &keel_spec::plan::plan_with_pool(&system).unwrap().networks[0];
    let net_both = &keel_spec::plan::plan_with_pool(&both).unwrap().networks[0];
    let net_uplink = &keel_spec::plan::plan_with_pool(&uplink).unwrap().networks[0];

    // a=0, b=1, c=2, pool=3,4
    assert_eq!(net.allow, vec![(0, 1), (2, 3), (2, 4)]);
    assert_eq!(net_uplink.allow, vec![(0, 5), (3, 5), (4, 5)]);
    assert_eq!(net_both.allow, vec![(3, 4)]);
}

#[test]
fn pool_in_an_allow_list_of_a_network_without_pool_ports_is_refused() {
    let s = Scratch::new();
    let text = three_vms_on_lan("[[network]]\nname = \"lan\"\nallow = [[\"a\", \"pool\"]]");

    let e = s.parse(&text).unwrap_err().to_string();

    assert!(e.contains("network \"lan\": allow: \"pool\" names the dynamic pool's ports, and this network is not in [limits] networks"), "{e}");
}

#[test]
fn pool_ports_beyond_64_ports_per_network_are_refused_with_the_count() {
    let s = Scratch::new();

    let e = s
        .parse(&pooled("[[network]]\nname = \"lan\"", 62))
        .unwrap_err()
        .to_string();

    assert!(e.contains("network \"lan\""), "{e}");
    assert!(
        e.contains("limits.max_vms ports for the dynamic pool"),
        "{e}"
    );
    assert!(e.contains("65"), "{e}");
    assert!(s.parse(&pooled("[[network]]\nname = \"lan\"", 61)).is_ok());
}

#[test]
fn a_vm_named_pool_on_a_network_of_the_pool_is_refused() {
    let s = Scratch::new();
    let text = pooled("[[network]]\nname = \"lan\"", 1).replace("name = \"c\"", "name = \"pool\"");

    let e = s.parse(&text).unwrap_err().to_string();

    assert!(
        e.contains("vm \"pool\" is attached to this network, which is in [limits] networks"),
        "{e}"
    );
}
