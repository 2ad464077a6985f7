//! Two simulated hypervisor VTEPs on loopback, for the demo (`scripts/demo-gateway`): no root.
//!
//! VTEP A (127.0.0.2) serves host 10.0.0.1 on VNI 100, VTEP B (127.0.0.3) serves host
//! 10.0.0.2 on VNI 200. A running `vnf-router` on 127.0.0.1 bridges the two VNIs
//! (`examples/router-vni-bridge.yaml`). A's host ARPs for B's host: the router floods the
//! request to VNI 200; B answers; then A sends UDP to B over two flows. Everything
//! received is decoded and printed, with the outer UDP source port the router chose.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

const ROUTER: &str = "127.0.0.1:4789";
const MAC_A: [u8; 6] = [2, 0, 0, 0, 1, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 2, 2];
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn vxlan(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![
        0x08,
        0,
        0,
        0,
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        0,
    ];
    d.extend_from_slice(frame);
    d
}

fn arp(
    op: u16,
    smac: [u8; 6],
    sip: Ipv4Addr,
    tmac: [u8; 6],
    tip: Ipv4Addr,
    dst: [u8; 6],
) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sip.octets());
    f.extend_from_slice(&tmac);
    f.extend_from_slice(&tip.octets());
    f
}

fn udp(sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MAC_B.to_vec();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (28 + payload.len()) as u16;
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[12..16].copy_from_slice(&IP_A.octets());
    ip[16..20].copy_from_slice(&IP_B.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn describe(d: &[u8]) -> String {
    if d.len() < 22 {
        return format!("{} bytes (too short)", d.len());
    }
    let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
    let f = &d[8..];
    let mac = |m: &[u8]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let what = match (f[12], f[13]) {
        (0x08, 0x06) if f.len() >= 42 => format!(
            "ARP {} {} -> {}",
            if f[21] == 1 { "who-has" } else { "is-at" },
            Ipv4Addr::new(f[28], f[29], f[30], f[31]),
            Ipv4Addr::new(f[38], f[39], f[40], f[41])
        ),
        (0x08, 0x00) if f.len() >= 42 => format!(
            "UDP {}:{} -> {}:{}",
            Ipv4Addr::new(f[26], f[27], f[28], f[29]),
            u16::from_be_bytes([f[34], f[35]]),
            Ipv4Addr::new(f[30], f[31], f[32], f[33]),
            u16::from_be_bytes([f[36], f[37]])
        ),
        _ => "other".into(),
    };
    format!("VNI {vni}, {} -> {}, {what}", mac(&f[6..12]), mac(&f[0..6]))
}

fn recv(sock: &UdpSocket, who: &str) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            println!("  {who} got from {from}: {}", describe(&buf[..n]));
            Some((buf[..n].to_vec(), from))
        }
        Err(_) => {
            println!("  {who} got nothing (is vnf-router running on {ROUTER}?)");
            None
        }
    }
}

fn main() -> ExitCode {
    let bind = |a: &str| {
        let s = UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s
    };
    let a = bind("127.0.0.2:4789");
    let b = bind("127.0.0.3:4789");

    println!("1. host 10.0.0.1 (VTEP A, VNI 100) broadcasts an ARP request for 10.0.0.2");
    let req = arp(1, MAC_A, IP_A, [0; 6], IP_B, [0xff; 6]);
    a.send_to(&vxlan(100, &req), ROUTER).expect("send");
    let Some((got, _)) = recv(&b, "VTEP B") else {
        return ExitCode::FAILURE;
    };
    if got.get(4..7) != Some(&[0, 0, 200][..]) {
        println!("  expected VNI 200");
        return ExitCode::FAILURE;
    }

    println!(
        "2. host 10.0.0.2 (VTEP B, VNI 200) answers; the router has learned where 10.0.0.1 is"
    );
    let rep = arp(2, MAC_B, IP_B, MAC_A, IP_A, MAC_A);
    b.send_to(&vxlan(200, &rep), ROUTER).expect("send");
    if recv(&a, "VTEP A").is_none() {
        return ExitCode::FAILURE;
    }

    println!("3. two UDP flows from 10.0.0.1 to 10.0.0.2: unicast, one outer source port per flow");
    let mut ports = Vec::new();
    for sport in [5001u16, 5002, 5001, 5002] {
        a.send_to(&vxlan(100, &udp(sport, b"hello")), ROUTER)
            .expect("send");
        match recv(&b, "VTEP B") {
            Some((_, from)) => {
                println!("     outer source port {}", from.port());
                ports.push(from.port());
            }
            None => return ExitCode::FAILURE,
        }
    }
    let ok = ports[0] == ports[2] && ports[1] == ports[3];
    println!(
        "{}",
        if ok {
            "done: VNI 100 and VNI 200 are one L2 segment through vnf-router"
        } else {
            "a flow changed its outer source port"
        }
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
