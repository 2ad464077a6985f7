//! The L2 gateway of `vnf-router` end to end in memory: the real engine (VTEP, VLAN
//! tagging, bridge domains, flooding) with injected packets and a simulated clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use overlay_io::io::mem::{MemNet, Sent};
use overlay_io::pipeline::DropReason;
use vnf_router::{Router, RouterConfig, config};
use vnf_tests::*;

const CONFIG: &str = r#"
underlay: {address: 198.18.0.1}
ports:
  - {name: blue, vni: 100, flood: [198.18.0.2, 198.18.0.3]}
  - {name: green, vni: 200, flood: [198.18.0.4, 198.18.0.5]}
  - {name: office, trunk: trunk0, vlan: 100}
  - {name: red, vni: 300, flood: [198.18.0.6], allowed_vteps: [198.18.0.6]}
  - {name: lab, vni: 400, flood: [198.18.0.7]}
bridges:
  - {name: blue-green, ports: [blue, green, office]}
  - {name: red-lab, ports: [red, lab]}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn compile(yaml: &str) -> RouterConfig {
    let raw: config::RawConfig = serde_saphyr::from_str(yaml).expect("YAML");
    config::compile(&raw).expect("valid config")
}

fn net(yaml: &str) -> MemNet<Router> {
    Router::in_memory(&compile(yaml)).expect("engine")
}

fn h(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// (destination VTEP, VNI, inner frame) of every VXLAN datagram sent.
fn vxlan_out(sent: &[Sent]) -> Vec<(IpAddr, u32, Vec<u8>)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Vxlan { dst, datagram, .. } => {
                assert_eq!(datagram[0], 0x08, "I flag set, reserved bits zero");
                assert_eq!(&datagram[1..4], &[0, 0, 0]);
                assert_eq!(datagram[7], 0);
                let vni = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
                Some((*dst, vni, datagram[8..].to_vec()))
            }
            Sent::Frame { .. } => None,
        })
        .collect()
}

fn frames_out(sent: &[Sent]) -> Vec<(String, Vec<u8>)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Frame { iface, frame } => Some((iface.clone(), frame.clone())),
            Sent::Vxlan { .. } => None,
        })
        .collect()
}

#[test]
fn broadcast_floods_every_other_segment_once_then_unicast_follows_learning() {
    let mut n = net(CONFIG);
    let arp = arp_request(mac(1), h(1), h(2));
    let out = n.vxlan_in(ip("198.18.0.2"), &vxlan(0x08, 100, &arp));
    let mut v = vxlan_out(&out);
    v.sort();
    // VNI 200's flood list gets one copy each; nothing goes back to VNI 100.
    assert_eq!(
        v,
        vec![
            (ip("198.18.0.4"), 200, arp.clone()),
            (ip("198.18.0.5"), 200, arp.clone())
        ]
    );
    // The office VLAN gets the frame tagged with VID 100.
    assert_eq!(
        frames_out(&out),
        vec![("trunk0".to_string(), tagged(&arp, 100))]
    );

    // Host 2 answers from VTEP .5 on VNI 200: unicast back to VTEP .2 on VNI 100 only.
    let reply = udp_frame(mac(2), mac(1), h(2), h(1), 7, 7, b"pong");
    let out = n.vxlan_in(ip("198.18.0.5"), &vxlan(0x08, 200, &reply));
    assert_eq!(vxlan_out(&out), vec![(ip("198.18.0.2"), 100, reply)]);
    assert!(frames_out(&out).is_empty());

    // And host 1 to host 2 now goes only to VTEP .5.
    let req = udp_frame(mac(1), mac(2), h(1), h(2), 7, 7, b"ping");
    let out = n.vxlan_in(ip("198.18.0.2"), &vxlan(0x08, 100, &req));
    assert_eq!(vxlan_out(&out), vec![(ip("198.18.0.5"), 200, req)]);
}

#[test]
fn vlan_gateway_tags_and_untags() {
    let mut n = net(CONFIG);
    let f = udp_frame(mac(9), BROADCAST, h(9), h(1), 1, 2, b"hello");
    let out = n.frame_in("trunk0", &tagged(&f, 100));
    let mut v = vxlan_out(&out);
    v.sort();
    assert_eq!(v.len(), 4, "flooded to both VNIs' lists: {v:?}");
    assert!(
        v.iter().all(|(_, _, inner)| *inner == f),
        "tag removed before encapsulation"
    );
    // Learned on the trunk: unicast from VNI 100 comes back tagged.
    let back = udp_frame(mac(1), mac(9), h(1), h(9), 2, 1, b"hi");
    let out = n.vxlan_in(ip("198.18.0.2"), &vxlan(0x08, 100, &back));
    assert_eq!(
        frames_out(&out),
        vec![("trunk0".to_string(), tagged(&back, 100))]
    );
    assert!(vxlan_out(&out).is_empty());

    // VLANs nobody carries, untagged frames on a trunk without a native port, QinQ.
    assert!(n.frame_in("trunk0", &tagged(&f, 200)).is_empty());
    assert!(n.frame_in("trunk0", &f).is_empty());
    let mut qinq = tagged(&tagged(&f, 100), 100);
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    assert!(n.frame_in("trunk0", &qinq).is_empty());
    assert_eq!(n.hub().drops(DropReason::VlanUnknown), 2);
    assert_eq!(n.hub().drops(DropReason::VlanNested), 1);
}

#[test]
fn segments_in_different_bridges_never_meet() {
    let mut n = net(CONFIG);
    let arp = arp_request(mac(5), h(5), h(6));
    let out = n.vxlan_in(ip("198.18.0.6"), &vxlan(0x08, 300, &arp));
    assert_eq!(vxlan_out(&out), vec![(ip("198.18.0.7"), 400, arp.clone())]);
    assert!(frames_out(&out).is_empty());
    let out = n.vxlan_in(ip("198.18.0.2"), &vxlan(0x08, 100, &arp));
    assert!(
        vxlan_out(&out).iter().all(|(_, vni, _)| *vni == 200),
        "VNI 100 reaches only VNI 200"
    );
}

#[test]
fn bad_input_is_dropped_and_counted() {
    let mut n = net(CONFIG);
    let f = udp_frame(mac(1), mac(2), h(1), h(2), 1, 2, b"x");
    let from = ip("198.18.0.2");
    assert!(n.vxlan_in(from, &vxlan(0x00, 100, &f)).is_empty());
    assert!(n.vxlan_in(from, &vxlan(0x08, 0, &f)).is_empty());
    assert!(n.vxlan_in(from, &vxlan(0x08, 999, &f)).is_empty());
    assert!(
        n.vxlan_in(from, &vxlan(0x08, 300, &f)).is_empty(),
        "VTEP .2 is not allowed on VNI 300"
    );
    assert!(n.vxlan_in(from, &vxlan(0x08, 100, &f[..10])).is_empty());
    assert!(n.vxlan_in(from, &[0x08, 0, 0]).is_empty());
    assert!(n.vxlan_in(from, &[]).is_empty());
    let hub = n.hub();
    assert_eq!(hub.drops(DropReason::VxlanBadFlags), 2);
    assert_eq!(hub.drops(DropReason::VniNotJoined), 1);
    assert_eq!(hub.drops(DropReason::VtepNotAllowed), 1);
    assert_eq!(hub.drops(DropReason::VxlanMalformed), 3);

    // Garbage of every length and content: never a panic, never a frame out of nowhere.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..2000usize {
        let mut g = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.push(x as u8);
        }
        let _ = n.vxlan_in(from, &g);
        let _ = n.frame_in("trunk0", &g);
    }
}

#[test]
fn outer_source_port_entropy_follows_the_inner_flow() {
    let mut n = net(CONFIG);
    // Learn host 2 behind VTEP .4 so that both flows are unicast.
    let learn = udp_frame(mac(2), mac(1), h(2), h(1), 1, 1, b"");
    n.vxlan_in(ip("198.18.0.4"), &vxlan(0x08, 200, &learn));
    let mut entropy = Vec::new();
    for sport in [1000u16, 1001, 1002, 1000] {
        let f = udp_frame(mac(1), mac(2), h(1), h(2), sport, 80, b"data");
        let out = n.vxlan_in(ip("198.18.0.2"), &vxlan(0x08, 100, &f));
        match out.as_slice() {
            [Sent::Vxlan { entropy: e, .. }] => entropy.push(*e),
            other => panic!("expected one datagram, got {other:?}"),
        }
    }
    assert_eq!(entropy[0], entropy[3], "one flow, one source port");
    assert_ne!(entropy[0], entropy[1]);
    assert_ne!(entropy[1], entropy[2]);
}

#[test]
fn learned_entries_age_out_and_the_cap_holds() {
    let yaml = CONFIG.replace(
        "{name: blue, vni: 100,",
        "{name: blue, vni: 100, max_entries: 5, ageing: 10,",
    );
    let mut n = net(&yaml);
    for i in 0..50u8 {
        let f = arp_request([2, 0, 0, 0, 1, i], h(i), h(200));
        n.vxlan_in(ip("198.18.0.2"), &vxlan(0x08, 100, &f));
    }
    let vni = overlay_io::Vni::new(100).expect("vni");
    assert_eq!(n.engine().vtep().fdb(vni).map(|f| f.len()), Some(5));
    let text = prometheus_text(&n);
    assert!(
        text.contains("vnf_fdb_cap_hits_total{vni=\"100\"} 45"),
        "{text}"
    );
    n.advance(Duration::from_secs(11));
    assert_eq!(n.engine().vtep().fdb(vni).map(|f| f.len()), Some(0));
    let text = prometheus_text(&n);
    assert!(text.contains("vnf_fdb_aged_total{vni=\"100\"} 5"), "{text}");
}

#[test]
fn reload_keeps_learned_state_and_applies_new_flood_lists() {
    let mut n = net(CONFIG);
    let learn = udp_frame(mac(2), mac(1), h(2), h(1), 1, 1, b"");
    n.vxlan_in(ip("198.18.0.4"), &vxlan(0x08, 200, &learn));
    let yaml = CONFIG.replace("flood: [198.18.0.2, 198.18.0.3]", "flood: [198.18.0.9]");
    let cfg = compile(&yaml);
    Router::reload_in_memory(&mut n, &cfg).expect("reload");
    // Still unicast to the learned VTEP on both levels (VTEP FDB and bridge table).
    let f = udp_frame(mac(1), mac(2), h(1), h(2), 1, 1, b"");
    let out = n.vxlan_in(ip("198.18.0.9"), &vxlan(0x08, 100, &f));
    assert_eq!(vxlan_out(&out), vec![(ip("198.18.0.4"), 200, f)]);
    // And broadcast on VNI 100 now uses the new list.
    let arp = arp_request(mac(2), h(2), h(1));
    let out = n.vxlan_in(ip("198.18.0.4"), &vxlan(0x08, 200, &arp));
    let dsts: Vec<IpAddr> = vxlan_out(&out)
        .into_iter()
        .filter(|x| x.1 == 100)
        .map(|x| x.0)
        .collect();
    assert_eq!(dsts, vec![ip("198.18.0.9")]);
}

#[test]
fn oversize_frames_are_not_encapsulated() {
    let mut n = net(CONFIG);
    let big = udp_frame(mac(9), BROADCAST, h(9), h(1), 1, 2, &[0u8; 1450]);
    let out = n.frame_in("trunk0", &tagged(&big, 100));
    assert!(
        vxlan_out(&out).is_empty(),
        "1478-byte IP packet does not fit a 1450 MTU VNI"
    );
    assert_eq!(n.hub().drops(DropReason::MtuExceeded), 2);
}

fn prometheus_text(n: &MemNet<Router>) -> String {
    let mf = n.hub().gather().expect("gather");
    prometheus::TextEncoder::new()
        .encode_to_string(&mf)
        .expect("encode")
}
