//! `vnf-firewall` end to end in memory, both modes: the real engine (VTEP, bridge, routed
//! function, connection tracking, classifier) with injected VXLAN and a simulated clock.
//!
//! Routed (`examples/firewall-routed.yaml`): the outside (VNI 300, gateway 192.0.2.1 behind
//! VTEP 198.18.0.4) and the web tier (VNI 100, host 10.0.1.5 behind 198.18.0.2).
//! Transparent (`examples/firewall-transparent.yaml`): VNI 101 (198.18.0.3) and VNI 100
//! (198.18.0.2) bridged, hosts 10.0.0.1 (untrusted side) and 10.0.0.2 (trusted side).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use overlay_io::io::mem::{MemNet, Sent};
use overlay_io::pipeline::DropReason;
use vnf_firewall::{Firewall, FirewallConfig, config};
use vnf_tests::*;

const ROUTED: &str = include_str!("../examples/firewall-routed.yaml");
const TRANSPARENT: &str = include_str!("../examples/firewall-transparent.yaml");
const WEB: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const ADMIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

fn compile(yaml: &str) -> FirewallConfig {
    let raw: config::RawConfig = serde_saphyr::from_str(yaml).expect("YAML");
    config::compile(&raw).expect("valid config")
}

fn net(yaml: &str) -> MemNet<Firewall> {
    let mut n = vnf_firewall::in_memory(&compile(yaml)).expect("engine");
    n.advance(Duration::from_millis(1));
    n
}

fn vtep(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
}

fn out(sent: &[Sent]) -> Vec<(u32, Vec<u8>)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Vxlan { datagram, .. } => Some((
                u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]),
                datagram[8..].to_vec(),
            )),
            Sent::Frame { .. } => None,
        })
        .collect()
}

/// A TCP segment with valid checksums.
#[allow(clippy::too_many_arguments)]
fn tcp(
    from: [u8; 6],
    to: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let mut f = udp_frame(from, to, src, dst, sport, dport, &[0; 12]);
    // Turn the UDP datagram (8 + 12 bytes) into a 20-byte TCP header.
    f[23] = 6;
    f[24..26].fill(0);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let t = &mut f[34..54];
    t.fill(0);
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&f[34..54]);
    let c = checksum(&pseudo);
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

/// The routed firewall's interface MACs, learned from its ARP answers, with the web host
/// and the gateway known to it.
fn routed_macs(n: &mut MemNet<Firewall>) -> ([u8; 6], [u8; 6]) {
    let ask = |n: &mut MemNet<Firewall>, vt: u8, vni: u32, m: u8, ip: Ipv4Addr, gw: Ipv4Addr| {
        let o = out(&n.vxlan_in(vtep(vt), &vxlan(0x08, vni, &arp_request(mac(m), ip, gw))));
        assert_eq!(o.len(), 1, "ARP reply: {o:?}");
        <[u8; 6]>::try_from(&o[0].1[22..28]).expect("mac")
    };
    let web = ask(n, 2, 100, 5, WEB, Ipv4Addr::new(10, 0, 1, 1));
    let outside = ask(n, 4, 300, 1, GW, Ipv4Addr::new(192, 0, 2, 2));
    (outside, web)
}

#[test]
fn routed_allows_declared_services_and_replies_only() {
    let mut n = net(ROUTED);
    let (r_out, r_web) = routed_macs(&mut n);
    let from_outside =
        |n: &mut MemNet<Firewall>, f: &[u8]| out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, f)));
    let from_web =
        |n: &mut MemNet<Firewall>, f: &[u8]| out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, f)));

    // HTTP in: the handshake passes both ways, then data.
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 40000, 80, SYN, 100, 0),
    );
    assert_eq!(o.len(), 1, "SYN to :80 forwarded: {o:?}");
    assert_eq!(o[0].0, 100);
    let o = from_web(
        &mut n,
        &tcp(mac(5), r_web, WEB, CLIENT, 80, 40000, SYN | ACK, 900, 101),
    );
    assert_eq!(o.len(), 1, "SYN-ACK back out");
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 40000, 80, ACK, 101, 901),
    );
    assert_eq!(o.len(), 1, "ACK: established");

    // SSH only from the admin set.
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 40001, 22, SYN, 1, 0),
    );
    assert!(o.is_empty(), "SSH from anywhere is dropped");
    assert_eq!(n.hub().drops(DropReason::PolicyDrop), 1);
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, ADMIN, WEB, 40002, 22, SYN, 1, 0),
    );
    assert_eq!(o.len(), 1, "SSH from an admin passes");

    // Reject: a RST comes back at once, from the server's address.
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 40003, 113, SYN, 77, 0),
    );
    assert_eq!(o.len(), 1, "{o:?}");
    let (vni, f) = &o[0];
    assert_eq!(*vni, 300);
    assert_eq!(f[47], RST | ACK, "RST+ACK");
    assert_eq!(&f[26..30], &WEB.octets());
    assert_eq!(
        u32::from_be_bytes([f[42], f[43], f[44], f[45]]),
        78,
        "acknowledges the SYN"
    );
    assert_eq!(n.hub().drops(DropReason::PolicyReject), 1);

    // Unsolicited: an ACK with no connection is invalid; a SYN-ACK likewise.
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 40004, 80, ACK, 5, 5),
    );
    assert!(o.is_empty());
    assert!(n.hub().drops(DropReason::CtInvalid) >= 1);

    // Outward: anything, and its replies.
    let o = from_web(
        &mut n,
        &tcp(mac(5), r_web, WEB, CLIENT, 50000, 5432, SYN, 1000, 0),
    );
    assert_eq!(o.len(), 1);
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 5432, 50000, SYN | ACK, 7, 1001),
    );
    assert_eq!(o.len(), 1, "the reply to an outbound connection passes");
    // But a new inbound flow to that port does not.
    let o = from_outside(
        &mut n,
        &tcp(mac(1), r_out, CLIENT, WEB, 5433, 5432, SYN, 7, 0),
    );
    assert!(o.is_empty());
}

#[test]
fn transparent_mode_filters_bridged_traffic_invisibly() {
    let mut n = net(TRANSPARENT);
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    // Teach the bridge where b lives (ARP is bridged untouched).
    let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &arp_request(mac(2), b, a))));
    assert_eq!(
        o.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![101],
        "ARP bridged"
    );
    let o = out(&n.vxlan_in(
        vtep(3),
        &vxlan(0x08, 101, &tcp(mac(1), mac(2), a, b, 1234, 80, SYN, 1, 0)),
    ));
    assert_eq!(o.len(), 1, "HTTP from the untrusted side passes");
    assert_eq!(o[0].0, 100);
    assert_eq!(o[0].1[22], 64, "bridged, not routed: TTL untouched");
    let o = out(&n.vxlan_in(
        vtep(3),
        &vxlan(0x08, 101, &tcp(mac(1), mac(2), a, b, 1235, 22, SYN, 1, 0)),
    ));
    assert!(o.is_empty(), "SSH from the untrusted side is dropped");
    let o = out(&n.vxlan_in(
        vtep(2),
        &vxlan(0x08, 100, &tcp(mac(2), mac(1), b, a, 999, 22, SYN, 1, 0)),
    ));
    assert_eq!(o.len(), 1, "the trusted side may open anything");
    assert_eq!(n.hub().drops(DropReason::PolicyDrop), 1);
}

#[test]
fn transparent_reject_answers_as_the_destination() {
    let yaml = TRANSPARENT.replace(
        "      - {name: ping, protocol: icmp, icmp_type: 8, action: accept}",
        "      - {name: ping, protocol: icmp, icmp_type: 8, action: accept}\n      - {name: ident, protocol: tcp, dst_ports: [113], action: reject}\n      - {name: tftp, protocol: udp, dst_ports: [69], action: reject}",
    );
    let mut n = net(&yaml);
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    n.vxlan_in(vtep(2), &vxlan(0x08, 100, &arp_request(mac(2), b, a)));
    let o = out(&n.vxlan_in(
        vtep(3),
        &vxlan(0x08, 101, &tcp(mac(1), mac(2), a, b, 1234, 113, SYN, 5, 0)),
    ));
    assert_eq!(o.len(), 1, "a RST comes back: {o:?}");
    let (vni, f) = &o[0];
    assert_eq!(*vni, 101, "back to the sender's side");
    assert_eq!(&f[6..12], &mac(2), "from the destination's MAC");
    assert_eq!(&f[26..30], &b.octets(), "from the destination's address");
    assert_eq!(f[47], RST | ACK);
    let o = out(&n.vxlan_in(
        vtep(3),
        &vxlan(
            0x08,
            101,
            &udp_frame(mac(1), mac(2), a, b, 5000, 69, b"rrq"),
        ),
    ));
    assert_eq!(o.len(), 1, "an ICMP error comes back: {o:?}");
    let f = &o[0].1;
    assert_eq!(
        (f[23], f[34], f[35]),
        (1, 3, 13),
        "ICMP administratively prohibited"
    );
    assert_eq!(&f[26..30], &b.octets());
    assert_eq!(n.hub().drops(DropReason::PolicyReject), 2);
}

#[test]
fn syn_flood_fills_the_table_but_established_flows_keep_going() {
    let yaml = ROUTED
        .replace("max_connections: 262144", "max_connections: 100")
        .replace(
            "max_connections_per_zone: 131072",
            "max_connections_per_zone: 100",
        );
    let mut n = net(&yaml);
    let (r_out, r_web) = routed_macs(&mut n);
    // Ten established connections.
    for i in 0..10u16 {
        let sp = 30000 + i;
        n.vxlan_in(
            vtep(4),
            &vxlan(
                0x08,
                300,
                &tcp(mac(1), r_out, CLIENT, WEB, sp, 80, SYN, 1, 0),
            ),
        );
        n.vxlan_in(
            vtep(2),
            &vxlan(
                0x08,
                100,
                &tcp(mac(5), r_web, WEB, CLIENT, 80, sp, SYN | ACK, 500, 2),
            ),
        );
        n.vxlan_in(
            vtep(4),
            &vxlan(
                0x08,
                300,
                &tcp(mac(1), r_out, CLIENT, WEB, sp, 80, ACK, 2, 501),
            ),
        );
    }
    // A flood of SYNs from many sources.
    for i in 0..2000u32 {
        let src = Ipv4Addr::from(0xcb00_7100 + (i % 250) + 1);
        let f = tcp(
            mac(1),
            r_out,
            src,
            WEB,
            1024 + (i / 250) as u16,
            80,
            SYN,
            i,
            0,
        );
        n.vxlan_in(vtep(4), &vxlan(0x08, 300, &f));
    }
    // Every established connection still carries data.
    for i in 0..10u16 {
        let sp = 30000 + i;
        let o = out(&n.vxlan_in(
            vtep(4),
            &vxlan(
                0x08,
                300,
                &tcp(mac(1), r_out, CLIENT, WEB, sp, 80, ACK, 2, 501),
            ),
        ));
        assert_eq!(o.len(), 1, "established connection {sp} survived the flood");
    }
    let st = n.engine().nf().shared().lock();
    let stats = st.ext.ct.stats();
    assert!(stats.connections <= 100, "capped: {}", stats.connections);
    assert!(
        stats.early_drops > 1000,
        "early drops counted: {}",
        stats.early_drops
    );
}

#[test]
fn reload_cuts_flows_the_new_policy_refuses_and_keeps_the_others() {
    let mut n = net(ROUTED);
    let (r_out, r_web) = routed_macs(&mut n);
    for (sp, dp) in [(40000u16, 80u16), (40001, 443)] {
        n.vxlan_in(
            vtep(4),
            &vxlan(
                0x08,
                300,
                &tcp(mac(1), r_out, CLIENT, WEB, sp, dp, SYN, 1, 0),
            ),
        );
        n.vxlan_in(
            vtep(2),
            &vxlan(
                0x08,
                100,
                &tcp(mac(5), r_web, WEB, CLIENT, dp, sp, SYN | ACK, 9, 2),
            ),
        );
    }
    // 443 is no longer allowed.
    let cfg = compile(&ROUTED.replace("dst_ports: [80, 443]", "dst_ports: [80]"));
    vnf_firewall::reload_in_memory(&mut n, &cfg).expect("reload");
    let data = |n: &mut MemNet<Firewall>, sp: u16, dp: u16| {
        out(&n.vxlan_in(
            vtep(4),
            &vxlan(
                0x08,
                300,
                &tcp(mac(1), r_out, CLIENT, WEB, sp, dp, ACK, 2, 10),
            ),
        ))
        .len()
    };
    assert_eq!(data(&mut n, 40000, 80), 1, "the allowed flow keeps going");
    assert_eq!(data(&mut n, 40001, 443), 0, "the refused flow is cut");
}
