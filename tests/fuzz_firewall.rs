//! The body of the `firewall_path` fuzz target, shared by the fuzzer (`fuzz/`) and the
//! corpus replay (`fuzz_corpus.rs`).
//!
//! The routed firewall of `examples/firewall-routed.yaml` (with a 64-connection table and
//! short timeouts, so the caps and early drop are reached) runs in memory. The input is a
//! sequence of events, each a header byte and its fields:
//!
//! - `0..=0xbf`: a TCP segment whose fields come from the next bytes (direction, source
//!   from a small set of addresses, ports from a small set, flags raw, sequence and
//!   acknowledgement numbers from small sets or raw, and with a few bits corrupting the
//!   header: IHL, total length, fragment offset, checksum, truncation);
//! - `0xc0..=0xdf`: a UDP or ICMP packet, the same way;
//! - `0xe0..=0xef`: raw bytes as an inner frame;
//! - `0xf0..=0xfe`: the clock advances;
//! - `0xff`: a reload, alternating with a config that refuses SSH.
//!
//! Invariants on every output and after every event: VXLAN is well formed; routed IPv4
//! has a valid header checksum and a TTL of at least 1; a bare SYN forwarded to the web
//! tier is one the policy accepts (ports 80 and 443 from anywhere, 22 from the admin
//! prefix while SSH is allowed); the connection table never exceeds its cap; and nothing
//! panics.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use overlay_io::io::mem::{MemNet, Sent};
use vnf_firewall::{Firewall, FirewallConfig, config};

const CAP: usize = 64;
const R_OUT: [u8; 6] = [2, 0, 0, 0, 3, 1];
const R_WEB: [u8; 6] = [2, 0, 0, 0, 1, 1];
const ADDRS: [[u8; 4]; 8] = [
    [203, 0, 113, 9],
    [198, 51, 100, 3],
    [192, 0, 2, 1],
    [10, 0, 1, 5],
    [10, 0, 1, 6],
    [10, 0, 1, 1],
    [192, 0, 2, 2],
    [255, 255, 255, 255],
];
const PORTS: [u16; 8] = [80, 443, 22, 113, 53, 40000, 40001, 0];

fn yaml(ssh: bool) -> String {
    let base = include_str!("../examples/firewall-routed.yaml")
        .replace(
            "{name: outside, port: outside,",
            "{name: outside, port: outside, mac: \"02:00:00:00:03:01\",",
        )
        .replace(
            "{name: web, port: web,",
            "{name: web, port: web, mac: \"02:00:00:00:01:01\",",
        )
        .replace(
            "max_connections: 262144",
            &format!("max_connections: {CAP}"),
        )
        .replace(
            "max_connections_per_zone: 131072",
            "max_connections_per_zone: 48",
        )
        .replace(
            "timeouts: {tcp_established: 7440, udp_unreplied: 30}",
            "timeouts: {tcp_established: 60, tcp_syn_sent: 5, tcp_syn_recv: 5, udp_unreplied: 5}",
        );
    if ssh {
        base
    } else {
        base.replace(
            "dst_ports: [22], src: [admins], action: accept",
            "dst_ports: [22], src: [admins], action: drop",
        )
    }
}

fn compile(ssh: bool) -> FirewallConfig {
    let raw: config::RawConfig = serde_saphyr::from_str(&yaml(ssh)).expect("fuzz config parses");
    config::compile(&raw).expect("fuzz config compiles")
}

thread_local! {
    static CONFIGS: (FirewallConfig, FirewallConfig) = (compile(true), compile(false));
    static NET: RefCell<Option<MemNet<Firewall>>> = const { RefCell::new(None) };
}

fn checksum(b: &[u8]) -> u16 {
    overlay_io::wire::checksum::internet(b)
}

/// Bytes of the input, zero when it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// An IPv4 packet in an Ethernet frame from the outside (VNI 300) or the web tier (VNI 100).
fn ip_frame(inp: &mut Input<'_>, proto: u8) -> (u32, Vec<u8>) {
    let dir = inp.u8();
    let (vni, src_mac, dst_mac) = if dir & 1 == 0 {
        (300, [2, 0, 0, 0, 0, 1], R_OUT)
    } else {
        (100, [2, 0, 0, 0, 0, 5], R_WEB)
    };
    let src = ADDRS[usize::from(inp.u8() % 8)];
    let dst = ADDRS[usize::from(inp.u8() % 8)];
    let ports = inp.u8();
    let sport = PORTS[usize::from(ports & 7)];
    let dport = PORTS[usize::from((ports >> 3) & 7)];
    let mut l4 = match proto {
        6 => {
            let flags = inp.u8();
            let sel = inp.u8();
            let seq = if sel & 1 == 0 {
                u32::from(sel >> 1) * 1000
            } else {
                inp.u32()
            };
            let ack = if sel & 2 == 0 {
                u32::from(sel >> 2) * 1000
            } else {
                inp.u32()
            };
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            t[8..12].copy_from_slice(&ack.to_be_bytes());
            t[12] = 0x50;
            t[13] = flags;
            t[14..16].copy_from_slice(&8192u16.to_be_bytes());
            t.extend(std::iter::repeat_n(0x61, usize::from(inp.u8() % 40)));
            t
        }
        17 => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            u
        }
        _ => {
            let mut i = vec![inp.u8(), inp.u8(), 0, 0, 0, 7, 0, 1];
            if i[0] == 3 || i[0] == 11 {
                // An error quoting a packet toward port `dport`.
                let mut q = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
                q.extend_from_slice(&dst);
                q.extend_from_slice(&src);
                q.extend_from_slice(&dport.to_be_bytes());
                q.extend_from_slice(&sport.to_be_bytes());
                q.extend_from_slice(&[0, 0, 0, 1]);
                i.extend_from_slice(&q);
            }
            let c = checksum(&i);
            i[2..4].copy_from_slice(&c.to_be_bytes());
            i
        }
    };
    let corrupt = inp.u8();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let total = (20 + l4.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    if corrupt & 0x01 != 0 {
        ip[6] = 0x20; // more fragments
    }
    if corrupt & 0x02 != 0 {
        ip[7] = corrupt; // a fragment offset
    }
    if corrupt & 0x04 != 0 {
        ip[8] = corrupt >> 6; // TTL 0..=3
    }
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    if proto != 1 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let c = checksum(&pseudo);
        let at = if proto == 6 { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    if corrupt & 0x08 != 0 {
        ip[10] ^= 0x55; // bad header checksum
    }
    if corrupt & 0x10 != 0 {
        ip[0] = 0x40 | (corrupt & 0x0f); // another IHL
    }
    if corrupt & 0x20 != 0 {
        ip[2..4].copy_from_slice(&u16::from(corrupt).to_be_bytes());
    }
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    if corrupt & 0x40 != 0 {
        let cut = usize::from(inp.u8()) % f.len().max(1);
        f.truncate(cut);
    }
    (vni, f)
}

fn check(sent: &[Sent], ssh: bool) {
    for s in sent {
        let Sent::Vxlan { datagram: d, .. } = s else {
            continue;
        };
        assert!(d.len() >= 8 + 14, "VXLAN carries a frame");
        assert_eq!(d[0], 0x08, "I flag");
        let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
        assert!(vni == 100 || vni == 300, "joined VNI");
        let f = &d[8..];
        if f[12..14] != [0x08, 0x00] || f.len() < 34 {
            continue;
        }
        let ip = &f[14..];
        let hl = usize::from(ip[0] & 0x0f) * 4;
        assert!(hl >= 20 && ip.len() >= hl, "IPv4 header sent whole");
        assert_eq!(checksum(&ip[..hl]), 0, "valid header checksum");
        assert!(ip[8] >= 1, "TTL at least 1");
        // A bare SYN into the web tier must be one the policy accepts.
        if vni == 100 && ip[9] == 6 && ip.len() >= hl + 14 && ip[6] & 0x3f == 0 && ip[7] == 0 {
            let t = &ip[hl..];
            if t[13] & 0x12 == 0x02 {
                let dport = u16::from_be_bytes([t[2], t[3]]);
                let admin = ip[12..15] == [198, 51, 100] && ip[15] < 16;
                assert!(
                    dport == 80 || dport == 443 || (dport == 22 && admin && ssh),
                    "a SYN to port {dport} from {:?} passed",
                    &ip[12..16]
                );
            }
        }
    }
}

/// The fuzz target: see the module docs.
pub fn firewall_path(data: &[u8]) {
    CONFIGS.with(|(allow, deny)| {
        NET.with(|cell| {
            let mut guard = cell.borrow_mut();
            let n = guard.get_or_insert_with(|| vnf_firewall::in_memory(allow).expect("engine"));
            // Every input starts from the allowing config and an empty-ish table.
            vnf_firewall::reload_in_memory(n, allow).expect("reload");
            let mut ssh = true;
            n.advance(Duration::from_secs(3600));
            let mut inp = Input(data);
            let vtep = |vni: u32| -> IpAddr {
                IpAddr::V4(if vni == 100 {
                    Ipv4Addr::new(198, 18, 0, 2)
                } else {
                    Ipv4Addr::new(198, 18, 0, 4)
                })
            };
            let mut events = 0;
            while !inp.0.is_empty() && events < 256 {
                events += 1;
                let e = inp.u8();
                let (vni, frame) = match e {
                    0..=0xbf => ip_frame(&mut inp, 6),
                    0xc0..=0xdf => ip_frame(&mut inp, if e & 1 == 0 { 17 } else { 1 }),
                    0xe0..=0xef => {
                        let len = usize::from(inp.u8());
                        let take = len.min(inp.0.len());
                        let (raw, rest) = inp.0.split_at(take);
                        inp.0 = rest;
                        (if e & 1 == 0 { 100 } else { 300 }, raw.to_vec())
                    }
                    0xf0..=0xfe => {
                        check(
                            &n.advance(Duration::from_millis(u64::from(e - 0xef) * 700)),
                            ssh,
                        );
                        continue;
                    }
                    0xff => {
                        ssh = !ssh;
                        vnf_firewall::reload_in_memory(n, if ssh { allow } else { deny })
                            .expect("reload");
                        continue;
                    }
                };
                let mut d = vec![0x08, 0, 0, 0, 0, (vni >> 8) as u8, vni as u8, 0];
                d.extend_from_slice(&frame);
                check(&n.vxlan_in(vtep(vni), &d), ssh);
                let st = n.engine().nf().shared().lock();
                assert!(st.ext.ct.len() <= CAP, "table over its cap");
            }
        });
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_handshake_and_a_flood_run_clean() {
        // Event bytes: a SYN to :80 from outside, a few SYN floods, a reload, time.
        let mut data = Vec::new();
        for i in 0..100u8 {
            data.extend_from_slice(&[0x00, 0x00, i % 3, 3, 0x08, 0x02, 0x00, 0, 0]);
        }
        data.extend_from_slice(&[0xff, 0xf5, 0xe0, 4, 1, 2, 3, 4]);
        super::firewall_path(&data);
    }

    #[test]
    fn random_inputs_keep_the_invariants() {
        // A deterministic stream of inputs (xorshift), so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1500 {
            let len = (x % 400) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            super::firewall_path(&data);
        }
    }
}
