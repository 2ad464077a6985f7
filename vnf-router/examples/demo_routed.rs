//! Three simulated hypervisor VTEPs on loopback around a routing `vnf-router`, for the demo
//! (`scripts/demo-gateway`): no root.
//!
//! The router (`examples/router-demo.yaml`, VTEP 127.0.0.11) routes between host A
//! (10.0.1.5, VNI 100, VTEP 127.0.0.12), host B (10.0.2.5, VNI 200, VTEP 127.0.0.13) and an
//! external gateway (192.0.2.1, VNI 300, VTEP 127.0.0.14), masquerading the tenant subnets
//! to the outside. Each step sends what a real host would and prints what comes back.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

const ROUTER: &str = "127.0.0.11:4789";
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0x0a, 5];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0x0b, 5];
const MAC_GW: [u8; 6] = [2, 0, 0, 0, 0x0c, 1];
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const R_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

fn vxlan(vni: u32, frame: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(frame);
    d
}

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn arp(op: u16, smac: [u8; 6], sip: Ipv4Addr, tmac: [u8; 6], tip: Ipv4Addr) -> Vec<u8> {
    let mut f = if op == 1 {
        vec![0xff; 6]
    } else {
        tmac.to_vec()
    };
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sip.octets());
    f.extend_from_slice(&tmac);
    f.extend_from_slice(&tip.octets());
    f
}

/// An IPv4 frame: `proto` 17 (UDP, ports given) or 1 (ICMP echo request, id = sport).
#[allow(clippy::too_many_arguments)]
fn ip(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut f = dmac.to_vec();
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut l4 = Vec::new();
    if proto == 17 {
        l4.extend_from_slice(&ports.0.to_be_bytes());
        l4.extend_from_slice(&ports.1.to_be_bytes());
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]); // no checksum (RFC 768)
    } else {
        l4.extend_from_slice(&[8, 0, 0, 0]);
        l4.extend_from_slice(&ports.0.to_be_bytes());
        l4.extend_from_slice(&1u16.to_be_bytes());
    }
    l4.extend_from_slice(payload);
    if proto == 1 {
        let c = csum(&l4);
        l4[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let total = (20 + l4.len()) as u16;
    let mut h = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
    f
}

fn describe(f: &[u8]) -> String {
    let mac = |m: &[u8]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let a = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let p = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let what = match (f.get(12..14), f.len()) {
        (Some([0x08, 0x06]), 42..) => format!(
            "ARP {} {} -> {}",
            if f[21] == 1 { "who-has" } else { "is-at" },
            a(28),
            a(38)
        ),
        (Some([0x08, 0x00]), 42..) => {
            let head = format!("{} -> {} TTL {}", a(26), a(30), f[22]);
            match f[23] {
                17 => format!("UDP {head}, ports {} -> {}", p(34), p(36)),
                1 => format!("ICMP type {} code {} {head}", f[34], f[35]),
                n => format!("IP proto {n} {head}"),
            }
        }
        _ => "other".into(),
    };
    format!("{} -> {}: {what}", mac(&f[6..12]), mac(&f[0..6]))
}

/// The next inner frame a VTEP receives, skipping the router's gratuitous ARPs.
fn recv(sock: &UdpSocket, who: &str) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if n > 8 => {
                let f = &buf[8..n];
                let garp = f.len() >= 42 && f[12..14] == [8, 6] && f[28..32] == f[38..42];
                if garp {
                    continue;
                }
                println!("     {who} receives: {}", describe(f));
                return Some((f.to_vec(), from));
            }
            Ok(_) => continue,
            Err(_) => {
                println!("     {who} got nothing (is vnf-router running on {ROUTER}?)");
                return None;
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Some(()) => {
            println!("done: routed between two overlays and out through source NAT");
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

fn run() -> Option<()> {
    let bind = |addr: &str| {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s
    };
    let (va, vb, vgw) = (
        bind("127.0.0.12:4789"),
        bind("127.0.0.13:4789"),
        bind("127.0.0.14:4789"),
    );
    let send = |s: &UdpSocket, vni: u32, f: &[u8]| {
        s.send_to(&vxlan(vni, f), ROUTER).expect("send");
    };

    println!("1. host A (10.0.1.5, VNI 100) asks ARP for its gateway 10.0.1.1");
    send(&va, 100, &arp(1, MAC_A, A, [0; 6], R_A));
    let (f, _) = recv(&va, "A")?;
    let mut router_mac = [0u8; 6];
    router_mac.copy_from_slice(&f[22..28]);

    println!("2. A pings the gateway");
    send(
        &va,
        100,
        &ip(MAC_A, router_mac, A, R_A, 1, 64, (7, 0), b"ping"),
    );
    recv(&va, "A")?;

    println!(
        "3. A sends UDP to host B (10.0.2.5, VNI 200): the router asks ARP for B and holds it"
    );
    send(
        &va,
        100,
        &ip(MAC_A, router_mac, A, B, 17, 64, (5000, 7), b"hello"),
    );
    let (req, _) = recv(&vb, "B")?;
    println!("4. B answers; the held packet arrives, TTL 63, from the router's db MAC");
    let mut db_mac = [0u8; 6];
    db_mac.copy_from_slice(&req[6..12]);
    send(
        &vb,
        200,
        &arp(2, MAC_B, B, db_mac, Ipv4Addr::new(10, 0, 2, 1)),
    );
    recv(&vb, "B")?;

    println!("5. A sends with TTL 1 (the first probe of a traceroute): ICMP time exceeded");
    send(
        &va,
        100,
        &ip(MAC_A, router_mac, A, B, 17, 1, (5000, 33434), b"probe"),
    );
    recv(&va, "A")?;

    println!("6. A sends to 203.0.113.9 on the internet: routed to 192.0.2.1 and masqueraded");
    send(
        &va,
        100,
        &ip(MAC_A, router_mac, A, FAR, 17, 64, (5001, 53), b"query"),
    );
    let (req, _) = recv(&vgw, "gateway")?;
    let mut ext_mac = [0u8; 6];
    ext_mac.copy_from_slice(&req[6..12]);
    send(
        &vgw,
        300,
        &arp(2, MAC_GW, GW, ext_mac, Ipv4Addr::new(192, 0, 2, 2)),
    );
    let (out, _) = recv(&vgw, "gateway")?;
    let nat_port = u16::from_be_bytes([out[34], out[35]]);

    println!("7. the answer to 192.0.2.2:{nat_port} comes back to A, translated");
    let nat_addr = Ipv4Addr::new(out[26], out[27], out[28], out[29]);
    send(
        &vgw,
        300,
        &ip(
            MAC_GW,
            ext_mac,
            FAR,
            nat_addr,
            17,
            60,
            (53, nat_port),
            b"answer",
        ),
    );
    let (back, _) = recv(&va, "A")?;
    (back[30..34] == A.octets()).then_some(())
}
