//! `vnf-router` as a router, end to end in memory: the real engine (VTEP, bridge, L3, NAT)
//! with injected VXLAN and a simulated clock. Host A (10.0.1.5) is on VNI 100 behind VTEP
//! 198.18.0.2, host B (10.0.2.5) on VNI 200 behind 198.18.0.3, and the "internet" gateway
//! 192.0.2.1 on VNI 300 behind 198.18.0.4.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use overlay_io::io::mem::{MemNet, Sent};
use overlay_io::pipeline::DropReason;
use vnf_router::{Router, RouterConfig, config};
use vnf_tests::*;

const R_WEB: [u8; 6] = [2, 0, 0, 0, 1, 1];
const R_DB: [u8; 6] = [2, 0, 0, 0, 2, 1];
const R_EXT: [u8; 6] = [2, 0, 0, 0, 3, 1];
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const POOL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const FLOAT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

fn config(extra: &str) -> String {
    format!(
        r#"
underlay: {{address: 198.18.0.1}}
ports:
  - {{name: web, vni: 100, flood: [198.18.0.2]}}
  - {{name: db, vni: 200, flood: [198.18.0.3], mtu: 1400}}
  - {{name: ext, vni: 300, flood: [198.18.0.4]}}
interfaces:
  - {{name: web, port: web, mac: "02:00:00:00:01:01", addresses: [10.0.1.1/24]}}
  - {{name: db, port: db, mac: "02:00:00:00:02:01", addresses: [10.0.2.1/24]}}
  - {{name: ext, port: ext, mac: "02:00:00:00:03:01", addresses: [192.0.2.2/24]}}
{extra}
"#
    )
}

const NAT: &str = r#"
routes:
  - {prefix: 0.0.0.0/0, via: [192.0.2.1]}
  - {prefix: 10.66.0.0/16, action: prohibit}
nat:
  pools: [{name: internet, addresses: [192.0.2.10], ports: 20000-20001}]
  masquerade: [{sources: [10.0.1.0/24], interface: ext, pool: internet}]
  floating: [{external: 192.0.2.20, internal: 10.0.2.5, interface: ext}]
"#;

fn compile(yaml: &str) -> RouterConfig {
    let raw: config::RawConfig = serde_saphyr::from_str(yaml).expect("YAML");
    config::compile(&raw).expect("valid config")
}

/// A router whose start-up announcements (gratuitous ARP) have gone out.
fn net(yaml: &str) -> MemNet<Router> {
    let mut n = Router::in_memory(&compile(yaml)).expect("engine");
    let sent = out(&n.advance(Duration::from_millis(1)));
    assert!(!sent.is_empty(), "gratuitous ARP at start");
    n
}

#[test]
fn announces_every_address_with_gratuitous_arp_at_start() {
    let mut n = Router::in_memory(&compile(&config(NAT))).expect("engine");
    let mut sent: Vec<(u32, [u8; 4], [u8; 6])> = out(&n.advance(Duration::from_millis(1)))
        .into_iter()
        .map(|(_, vni, f)| {
            assert_eq!(&f[0..6], &BROADCAST);
            assert_eq!(
                &f[28..32],
                &f[38..42],
                "sender and target address are equal (RFC 5227)"
            );
            (
                vni,
                f[28..32].try_into().unwrap(),
                f[22..28].try_into().unwrap(),
            )
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            (100, [10, 0, 1, 1], R_WEB),
            (200, [10, 0, 2, 1], R_DB),
            (300, [192, 0, 2, 2], R_EXT),
            (300, [192, 0, 2, 10], R_EXT),
            (300, [192, 0, 2, 20], R_EXT),
        ]
    );
    assert!(out(&n.advance(Duration::from_secs(1))).is_empty(), "once");
}

fn vtep(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
}

/// (destination VTEP, VNI, inner frame) of every VXLAN datagram sent.
fn out(sent: &[Sent]) -> Vec<(IpAddr, u32, Vec<u8>)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Vxlan { dst, datagram, .. } => Some((
                *dst,
                u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]),
                datagram[8..].to_vec(),
            )),
            Sent::Frame { .. } => None,
        })
        .collect()
}

fn arp_reply(src_mac: [u8; 6], src: Ipv4Addr, dst_mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&dst.octets());
    f
}

fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

fn src_ip(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[26], f[27], f[28], f[29])
}

fn dst_ip(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

fn port_at(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[34 + at], f[35 + at]])
}

/// A UDP frame with a chosen TTL and DF, total IP length `len` (>= 28).
fn udp_sized(
    from: [u8; 6],
    to: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    len: usize,
    df: bool,
) -> Vec<u8> {
    let mut f = udp_frame(from, to, src, dst, 4000, 53, &vec![0x55; len - 28]);
    f[22] = ttl;
    if df {
        f[20] = 0x40;
    }
    f[24..26].fill(0);
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Teach the router where A, B and the gateway are, and check ARP answers on the way.
fn warm(n: &mut MemNet<Router>) {
    for (vt, vni, host_mac, host, gw) in [
        (2, 100, mac(5), A, Ipv4Addr::new(10, 0, 1, 1)),
        (3, 200, mac(6), B, Ipv4Addr::new(10, 0, 2, 1)),
        (4, 300, mac(1), GW, Ipv4Addr::new(192, 0, 2, 2)),
    ] {
        let sent = out(&n.vxlan_in(
            vtep(vt),
            &vxlan(0x08, vni, &arp_request(host_mac, host, gw)),
        ));
        assert_eq!(sent.len(), 1, "one ARP reply: {sent:?}");
        let (to, v, f) = &sent[0];
        assert_eq!((*to, *v), (vtep(vt), vni));
        assert_eq!(&f[0..6], &host_mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), 2, "ARP reply");
    }
}

#[test]
fn routes_between_subnets_after_resolving_the_next_hop() {
    let mut n = net(&config(""));
    // A asks for its gateway and gets the web interface's MAC.
    let sent = out(&n.vxlan_in(
        vtep(2),
        &vxlan(
            0x08,
            100,
            &arp_request(mac(5), A, Ipv4Addr::new(10, 0, 1, 1)),
        ),
    ));
    assert_eq!(&sent[0].2[22..28], &R_WEB, "sender MAC is the interface's");
    // A sends to B: B is unknown, so the router asks for it on VNI 200 and holds the packet.
    let pkt = udp_frame(mac(5), R_WEB, A, B, 4000, 53, b"hello");
    let sent = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &pkt)));
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, vni, req) = &sent[0];
    assert_eq!((*to, *vni), (vtep(3), 200));
    assert_eq!(&req[0..6], &BROADCAST);
    assert_eq!(&req[38..42], &B.octets(), "ARP asks for B");
    assert_eq!(
        &req[28..32],
        &[10, 0, 2, 1],
        "from the db interface's address"
    );
    // B answers: the held packet goes out, TTL decremented, MACs rewritten.
    let sent = out(&n.vxlan_in(
        vtep(3),
        &vxlan(
            0x08,
            200,
            &arp_reply(mac(6), B, R_DB, Ipv4Addr::new(10, 0, 2, 1)),
        ),
    ));
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, vni, f) = &sent[0];
    assert_eq!((*to, *vni), (vtep(3), 200));
    assert_eq!(&f[0..6], &mac(6));
    assert_eq!(&f[6..12], &R_DB);
    assert_eq!(f[22], 63, "TTL decremented");
    assert_eq!(checksum(&f[14..34]), 0, "header checksum still valid");
    assert_eq!(&f[42..], b"hello");
    // Now known: the next packet is forwarded at once.
    let sent = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &pkt)));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, 200);
}

#[test]
fn answers_echo_ttl_mtu_and_unroutable_with_icmp() {
    let mut n = net(&config(
        "routes:\n  - {prefix: 10.66.0.0/16, action: prohibit}\n  - {prefix: 10.77.0.0/16, action: blackhole}\n",
    ));
    warm(&mut n);
    let icmp_of = |sent: &[Sent]| -> (u8, u8, Vec<u8>) {
        let o = out(sent);
        assert_eq!(o.len(), 1, "{o:?}");
        let f = &o[0].2;
        assert_eq!(&f[0..6], &mac(5), "back to A");
        assert_eq!(f[23], 1, "ICMP");
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(checksum(&f[34..]), 0, "ICMP checksum");
        (f[34], f[35], f.clone())
    };
    // Echo to our address.
    let mut echo = udp_frame(mac(5), R_WEB, A, Ipv4Addr::new(10, 0, 1, 1), 0, 0, &[0; 8]);
    echo[23] = 1;
    echo[24..26].fill(0);
    let c = checksum(&echo[14..34]);
    echo[24..26].copy_from_slice(&c.to_be_bytes());
    echo[34..42].copy_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let c = checksum(&echo[34..]);
    echo[36..38].copy_from_slice(&c.to_be_bytes());
    let (t, _, f) = icmp_of(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &echo)));
    assert_eq!(t, 0, "echo reply");
    assert_eq!(src_ip(&f), Ipv4Addr::new(10, 0, 1, 1));
    // TTL 1: time exceeded from the ingress interface's address.
    let p = udp_sized(mac(5), R_WEB, A, B, 1, 100, false);
    let (t, code, f) = icmp_of(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    assert_eq!((t, code), (11, 0));
    assert_eq!(src_ip(&f), Ipv4Addr::new(10, 0, 1, 1));
    assert_eq!(&f[42..62], &p[14..34], "quotes the header as received");
    // 1401 bytes with DF toward the 1400-byte db interface: fragmentation needed, MTU 1400.
    let p = udp_sized(mac(5), R_WEB, A, B, 64, 1401, true);
    let (t, code, f) = icmp_of(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    assert_eq!((t, code), (3, 4));
    assert_eq!(
        u16::from_be_bytes([f[40], f[41]]),
        1400,
        "next-hop MTU (RFC 1191)"
    );
    // No route, and a prohibit route.
    let p = udp_sized(mac(5), R_WEB, A, NET, 64, 100, false);
    assert_eq!(icmp_of(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).0, 3);
    let p = udp_sized(
        mac(5),
        R_WEB,
        A,
        Ipv4Addr::new(10, 66, 0, 1),
        64,
        100,
        false,
    );
    let (t, code, _) = icmp_of(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    assert_eq!((t, code), (3, 13));
    let p = udp_sized(
        mac(5),
        R_WEB,
        A,
        Ipv4Addr::new(10, 77, 0, 1),
        64,
        100,
        false,
    );
    assert!(
        out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).is_empty(),
        "blackhole is silent"
    );
    let hub = n.hub();
    assert_eq!(hub.drops(DropReason::TtlExceeded), 1);
    assert_eq!(hub.drops(DropReason::MtuExceeded), 1);
    assert_eq!(hub.drops(DropReason::NoRoute), 1);
    assert_eq!(hub.drops(DropReason::Prohibited), 1);
    assert_eq!(hub.drops(DropReason::Blackhole), 1);
}

#[test]
fn bad_ipv4_is_dropped_and_counted() {
    let mut n = net(&config(""));
    warm(&mut n);
    let good = udp_sized(mac(5), R_WEB, A, B, 64, 100, false);
    let mut bad_len = good.clone();
    bad_len[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut bad_sum = good.clone();
    bad_sum[24] ^= 0xff;
    let mut v6 = good.clone();
    v6[14] = 0x65;
    for f in [&bad_len, &bad_ihl, &bad_sum, &v6, &good[..30].to_vec()] {
        assert!(out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, f))).is_empty());
    }
    assert_eq!(n.hub().drops(DropReason::IpMalformed), 5);
    // Martians (RFC 1812 §5.3.7): impossible sources, or the router's own address as a
    // source (spoofed), or a loopback destination.
    for (src, dst) in [
        (Ipv4Addr::new(127, 0, 0, 1), B),
        (Ipv4Addr::new(0, 1, 2, 3), B),
        (Ipv4Addr::new(224, 0, 0, 5), B),
        (Ipv4Addr::new(255, 255, 255, 255), B),
        (Ipv4Addr::new(10, 0, 2, 1), B),
        (A, Ipv4Addr::new(127, 0, 0, 1)),
    ] {
        let f = udp_sized(mac(5), R_WEB, src, dst, 64, 100, false);
        assert!(out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &f))).is_empty());
    }
    assert_eq!(n.hub().drops(DropReason::Martian), 6);
    // Frames for another MAC on a routed port are not ours.
    let other = udp_sized(mac(5), mac(9), A, B, 64, 100, false);
    assert!(out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &other))).is_empty());
    assert_eq!(n.hub().drops(DropReason::NotForUs), 1);
}

#[test]
fn masquerade_translates_both_ways_and_exhaustion_is_counted() {
    let mut n = net(&config(NAT));
    warm(&mut n);
    let mut ports = Vec::new();
    for sport in [4000u16, 4001] {
        let p = udp_frame(mac(5), R_WEB, A, NET, sport, 80, b"q");
        let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
        assert_eq!(o.len(), 1, "{o:?}");
        let (to, vni, f) = &o[0];
        assert_eq!((*to, *vni), (vtep(4), 300), "to the default gateway's VTEP");
        assert_eq!(&f[0..6], &mac(1), "gateway MAC");
        assert_eq!(src_ip(f), POOL, "source translated to the pool");
        let port = port_at(f, 0);
        assert!((20000..=20001).contains(&port), "{port}");
        assert_eq!(checksum(&f[14..34]), 0);
        ports.push(port);
    }
    assert_ne!(ports[0], ports[1]);
    // The reply to the first comes back to A.
    let r = udp_frame(mac(1), R_EXT, NET, POOL, 80, ports[0], b"a");
    let o = out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, &r)));
    assert_eq!(o.len(), 1, "{o:?}");
    let f = &o[0].2;
    assert_eq!((o[0].1, dst_ip(f), port_at(f, 2)), (100, A, 4000));
    // A third flow finds the two-port pool empty.
    let p = udp_frame(mac(5), R_WEB, A, NET, 4002, 80, b"q");
    assert!(out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).is_empty());
    assert_eq!(n.hub().drops(DropReason::NatPoolExhausted), 1);
    // The existing ones still work, and the ports free up when the flows time out.
    let p = udp_frame(mac(5), R_WEB, A, NET, 4001, 80, b"q");
    assert_eq!(out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).len(), 1);
    n.advance(Duration::from_secs(301));
    n.advance(Duration::from_secs(2));
    let p = udp_frame(mac(5), R_WEB, A, NET, 4002, 80, b"q");
    let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    assert_eq!(
        o.len(),
        1,
        "a port is free again after the UDP timeout: {o:?}"
    );
}

#[test]
fn floating_address_inbound_outbound_and_hairpin() {
    let mut n = net(&config(NAT));
    warm(&mut n);
    // Inbound to the floating address reaches B with the sender's real address.
    let p = udp_frame(mac(1), R_EXT, NET, FLOAT, 5555, 8080, b"in");
    let o = out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, &p)));
    assert_eq!(o.len(), 1, "{o:?}");
    let f = &o[0].2;
    assert_eq!(
        (o[0].1, src_ip(f), dst_ip(f), port_at(f, 2)),
        (200, NET, B, 8080)
    );
    // B's answer leaves from the floating address.
    let r = udp_frame(mac(6), R_DB, B, NET, 8080, 5555, b"out");
    let o = out(&n.vxlan_in(vtep(3), &vxlan(0x08, 200, &r)));
    let f = &o[0].2;
    assert_eq!((o[0].1, src_ip(f), dst_ip(f)), (300, FLOAT, NET));
    // A new flow from B leaves from the floating address too.
    let r = udp_frame(mac(6), R_DB, B, NET, 9000, 53, b"new");
    let o = out(&n.vxlan_in(vtep(3), &vxlan(0x08, 200, &r)));
    assert_eq!(src_ip(&o[0].2), FLOAT);
    assert_eq!(port_at(&o[0].2, 0), 9000, "1:1 keeps ports");
    // Hairpin: A reaches B through the floating address; B sees the pool address, and its
    // reply goes back through the router to A.
    let p = udp_frame(mac(5), R_WEB, A, FLOAT, 4100, 8080, b"hp");
    let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    assert_eq!(o.len(), 1, "{o:?}");
    let f = &o[0].2;
    assert_eq!((o[0].1, src_ip(f), dst_ip(f)), (200, POOL, B));
    let hp_port = port_at(f, 0);
    let r = udp_frame(mac(6), R_DB, B, POOL, 8080, hp_port, b"back");
    let o = out(&n.vxlan_in(vtep(3), &vxlan(0x08, 200, &r)));
    assert_eq!(o.len(), 1, "{o:?}");
    let f = &o[0].2;
    assert_eq!(
        (o[0].1, src_ip(f), dst_ip(f), port_at(f, 0), port_at(f, 2)),
        (100, FLOAT, A, 8080, 4100)
    );
    // The router answers ARP for the NAT addresses on the external side.
    let o = out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, &arp_request(mac(1), GW, FLOAT))));
    assert_eq!(&o[0].2[22..28], &R_EXT);
}

#[test]
fn reload_keeps_nat_sessions_and_arp() {
    let mut n = net(&config(NAT));
    warm(&mut n);
    let p = udp_frame(mac(5), R_WEB, A, NET, 4000, 80, b"q");
    let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    let port = port_at(&o[0].2, 0);
    let cfg = compile(&config(&format!("{NAT}\nicmp: {{rate: 5}}\n")));
    Router::reload_in_memory(&mut n, &cfg).expect("reload");
    let r = udp_frame(mac(1), R_EXT, NET, POOL, 80, port, b"a");
    let o = out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, &r)));
    assert_eq!(o.len(), 1, "session and ARP entry survived: {o:?}");
    assert_eq!(dst_ip(&o[0].2), A);
    // Removing the masquerade rule ends its sessions.
    let cfg = compile(&config(
        "routes:\n  - {prefix: 0.0.0.0/0, via: [192.0.2.1]}\n",
    ));
    Router::reload_in_memory(&mut n, &cfg).expect("reload");
    let o = out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, &r)));
    assert!(
        o.iter().all(|x| x.1 != 100),
        "nothing reaches A any more: {o:?}"
    );
}

#[test]
fn irb_routes_for_a_bridge_domain_and_bridges_the_rest() {
    let yaml = r#"
underlay: {address: 198.18.0.1}
ports:
  - {name: blue, vni: 100, flood: [198.18.0.2]}
  - {name: office, vni: 101, flood: [198.18.0.5]}
  - {name: db, vni: 200, flood: [198.18.0.3]}
bridges:
  - {name: lan, ports: [blue, office]}
interfaces:
  - {name: lan, bridge: lan, mac: "02:00:00:00:01:01", addresses: [10.0.1.1/24]}
  - {name: db, port: db, mac: "02:00:00:00:02:01", addresses: [10.0.2.1/24]}
"#;
    let mut n = net(yaml);
    // ARP for the IRB address is answered, not flooded.
    let o = out(&n.vxlan_in(
        vtep(2),
        &vxlan(
            0x08,
            100,
            &arp_request(mac(5), A, Ipv4Addr::new(10, 0, 1, 1)),
        ),
    ));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].0, o[0].1), (vtep(2), 100));
    // ARP for another host of the domain is bridged to the other port.
    let o = out(&n.vxlan_in(
        vtep(2),
        &vxlan(
            0x08,
            100,
            &arp_request(mac(5), A, Ipv4Addr::new(10, 0, 1, 9)),
        ),
    ));
    assert_eq!(o.iter().map(|x| x.1).collect::<Vec<_>>(), vec![101]);
    // B's traffic to A is routed into the domain: to the port A was learned on.
    n.vxlan_in(
        vtep(3),
        &vxlan(
            0x08,
            200,
            &arp_request(mac(6), B, Ipv4Addr::new(10, 0, 2, 1)),
        ),
    );
    // (A's request for the gateway taught the router A's MAC: RFC 826, it was for us.)
    let p = udp_frame(mac(6), R_DB, B, A, 1, 2, b"x");
    let o = out(&n.vxlan_in(vtep(3), &vxlan(0x08, 200, &p)));
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].0, o[0].1), (vtep(2), 100), "only where A lives");
    assert_eq!(&o[0].2[0..6], &mac(5));
    assert_eq!(ip_of(&o[0].2)[8], 63);
}

#[test]
fn fragments_packets_without_df_that_exceed_the_egress_mtu() {
    let mut n = net(&config(""));
    warm(&mut n);
    let p = udp_sized(mac(5), R_WEB, A, B, 64, 3000, false);
    let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    assert_eq!(o.len(), 3, "{} fragments", o.len());
    let mut data = Vec::new();
    for (i, (to, vni, f)) in o.iter().enumerate() {
        assert_eq!((*to, *vni), (vtep(3), 200));
        let ip = ip_of(f);
        assert!(ip.len() <= 1400, "fits the 1400-byte interface");
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(ip[8], 63, "TTL decremented in every fragment");
        let ff = u16::from_be_bytes([ip[6], ip[7]]);
        assert_eq!(usize::from(ff & 0x1fff) * 8, data.len(), "offsets follow");
        assert_eq!(
            ff & 0x2000 != 0,
            i < 2,
            "more fragments on all but the last"
        );
        data.extend_from_slice(&ip[20..]);
    }
    assert_eq!(data, &p[34..], "the fragments carry the whole datagram");
}

#[test]
fn timers_run_without_a_bridge_arp_gives_up_and_nat_sessions_expire() {
    // A routed-only config: the router's own timer must drive ARP retries and NAT expiry.
    let mut n = net(&config(NAT));
    warm(&mut n);
    let gone = Ipv4Addr::new(10, 0, 2, 77);
    for sport in [1u16, 2] {
        let p = udp_frame(mac(5), R_WEB, A, gone, sport, 9, b"?");
        n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p));
    }
    let mut requests = 0;
    for _ in 0..5 {
        requests += out(&n.advance(Duration::from_secs(1)))
            .iter()
            .filter(|(_, vni, f)| *vni == 200 && f[12..14] == [8, 6] && f[38..42] == gone.octets())
            .count();
    }
    assert_eq!(requests, 2, "retried once a second, three requests in all");
    assert_eq!(
        n.hub().drops(DropReason::ArpTimeout),
        2,
        "both held packets dropped"
    );
    // A UDP session through NAT expires after its timeout (300 s) and its port is freed.
    let p = udp_frame(mac(5), R_WEB, A, NET, 4000, 80, b"q");
    let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
    let port = port_at(&o[0].2, 0);
    for _ in 0..305 {
        n.advance(Duration::from_secs(1));
    }
    let r = udp_frame(mac(1), R_EXT, NET, POOL, 80, port, b"late");
    let o = out(&n.vxlan_in(vtep(4), &vxlan(0x08, 300, &r)));
    assert!(
        o.iter().all(|x| x.1 != 100),
        "the expired session no longer translates: {o:?}"
    );
}

#[test]
fn ecmp_spreads_flows_and_keeps_each_on_one_gateway() {
    let mut n = net(&config(
        "routes:\n  - {prefix: 0.0.0.0/0, via: [192.0.2.1, 192.0.2.3]}\n",
    ));
    warm(&mut n);
    // The second gateway answers ARP too.
    let gw2 = Ipv4Addr::new(192, 0, 2, 3);
    n.vxlan_in(
        vtep(4),
        &vxlan(
            0x08,
            300,
            &arp_request(mac(3), gw2, Ipv4Addr::new(192, 0, 2, 2)),
        ),
    );
    let mut by_flow = std::collections::BTreeMap::new();
    for round in 0..2 {
        for sport in 1000..1032u16 {
            let p = udp_frame(mac(5), R_WEB, A, NET, sport, 80, b"e");
            let o = out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p)));
            assert_eq!(o.len(), 1, "{o:?}");
            let gw: [u8; 6] = o[0].2[0..6].try_into().unwrap();
            let first = *by_flow.entry(sport).or_insert(gw);
            assert_eq!(first, gw, "flow {sport} changed gateway in round {round}");
        }
    }
    let used: std::collections::BTreeSet<_> = by_flow.values().collect();
    assert_eq!(used.len(), 2, "32 flows use both gateways");
}

#[test]
fn icmp_errors_are_rate_limited_and_the_tenant_cap_holds() {
    let mut n = net(&config(&format!(
        "{NAT}\nicmp: {{rate: 1, burst: 2}}\n"
    ).replace("masquerade: [{sources: [10.0.1.0/24], interface: ext, pool: internet}]",
        "masquerade: [{sources: [10.0.1.0/24], interface: ext, pool: internet, tenant: blue}]\n  max_sessions_per_tenant: 1")));
    warm(&mut n);
    let mut answered = 0;
    for _ in 0..5 {
        let p = udp_sized(mac(5), R_WEB, A, B, 1, 100, false);
        answered += out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).len();
    }
    assert_eq!(
        answered, 2,
        "the burst, then nothing within the same second"
    );
    assert_eq!(
        n.hub().drops(DropReason::TtlExceeded),
        5,
        "every one counted"
    );
    n.advance(Duration::from_secs(1));
    let p = udp_sized(mac(5), R_WEB, A, B, 1, 100, false);
    assert_eq!(
        out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).len(),
        1,
        "refilled"
    );
    // Tenant `blue` may hold one session.
    for (sport, expect) in [(7000u16, 1usize), (7001, 0)] {
        let p = udp_frame(mac(5), R_WEB, A, NET, sport, 80, b"t");
        assert_eq!(
            out(&n.vxlan_in(vtep(2), &vxlan(0x08, 100, &p))).len(),
            expect
        );
    }
    assert_eq!(n.hub().drops(DropReason::NatCapReached), 1);
}
