//! The bodies of the load balancer's fuzz targets, shared by the fuzzer (`fuzz/`) and the
//! corpus replay (`fuzz_corpus.rs`), their hand-written seeds, and the IPv4 builders the
//! in-memory scenarios (`mem_lb.rs`) use too.

use std::net::Ipv4Addr;

use crate::checksum;

/// TCP flag bits (RFC 9293 §3.1).
pub mod flag {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// IP protocol numbers.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// A TCP header (20 bytes, no options, window 65535) and `payload`; checksum zero until
/// [`ipv4_frame`] fills it.
pub fn tcp_segment(
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

/// A UDP header and `payload`; checksum zero until [`ipv4_frame`] fills it.
pub fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An ICMP message: type, code, the 4-byte rest of the header, then `body` (an echo's data,
/// or an error's quoted packet); checksum zero until [`ipv4_frame`] fills it.
pub fn icmp_message(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    m
}

/// An IPv4 packet (20-byte header, TTL 64, DF clear) around `l4`, with valid header and
/// transport checksums.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, protocol, 0, 0];
    p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = l4.to_vec();
    let at = match protocol {
        proto::TCP if l4.len() >= 20 => Some(16),
        proto::UDP if l4.len() >= 8 => Some(6),
        proto::ICMP if l4.len() >= 4 => Some(2),
        _ => None,
    };
    if let Some(at) = at {
        l4[at..at + 2].fill(0);
        let c = if protocol == proto::ICMP {
            checksum(&l4)
        } else {
            let mut pseudo = Vec::with_capacity(12 + l4.len());
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(&l4);
            checksum(&pseudo)
        };
        // RFC 768: a computed UDP checksum of zero is sent as all ones.
        let c = if protocol == proto::UDP && c == 0 {
            0xffff
        } else {
            c
        };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

/// An Ethernet frame from `from` to `to` carrying [`ipv4_packet`].
pub fn ipv4_frame(
    from: [u8; 6],
    to: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&to);
    f.extend_from_slice(&from);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ipv4_packet(src, dst, protocol, l4));
    f
}

/// The `http_parser` target: [`vnf_lb::http::fuzz_http`], the request and response head
/// parsers and the chunked decoder on arbitrary bytes (with default and tiny limits; the
/// chunked decoder fed whole and byte by byte must agree).
pub fn http_parser(data: &[u8]) {
    vnf_lb::http::fuzz_http(data);
}

/// The `http_proxy` target: [`vnf_lb::proxy::fuzz_proxy`], one reverse-proxy client
/// connection driven by a script of client and backend bytes, EOFs, backend outcomes and
/// time; what reached the backend must be well-framed requests (no smuggling).
pub fn http_proxy(data: &[u8]) {
    vnf_lb::proxy::fuzz_proxy(data);
}

/// The `lb_path` target: the load balancer's L4 path end to end in memory (one fresh load
/// balancer per input), with the invariants every output and the connection table keep.
pub fn lb_path(data: &[u8]) {
    lp::run(data);
}

/// The `lb_path` target: its two configs, the input encoding and the checks.
///
/// The load balancer (see [`CONFIG_A`](lp::CONFIG_A)) has clients on VNI 100 (`front`,
/// 10.0.1.0/24, a gateway 10.0.1.254 to the rest) and backends on VNI 200 (`back`,
/// 10.0.2.0/24, interface MTU 1300), and the VIPs 10.0.1.100 (full NAT: TCP 80 to pool `web`,
/// UDP 53 to `dns`, TCP 8080 to the health-checked `api`), 10.0.1.101 (DNAT: TCP 80 to
/// `web`, UDP 53 to `dns` with client affinity) and 10.0.1.102 (L7 HTTP on 80, which has no
/// host stack here). Pools `web` and `dns` have no health check (always up); `api` starts
/// with `api1` up and `api2` down. Small Maglev tables, a 48-connection table and short
/// timeouts, so that caps and expiry are reached. [`CONFIG_B`](lp::CONFIG_B), which a
/// reload switches to, drains `web1`, removes `web3` and adds `web4`, removes the DNAT UDP
/// service, changes the back MTU and lowers the caps.
///
/// Every input starts with the neighbours known (each host asks for its gateway), then is
/// a sequence of events (at most [`MAX_EVENTS`](lp::MAX_EVENTS)), each an opcode byte `op`:
/// `op & 7` the kind, `sel = (op >> 3) & 7` its selector, bit 6 (packets 0-3) a corruption
/// byte after the fields, bit 7 (packets 0-5) queue it into a receive batch that the next
/// unqueued packet (or anything else) sends.
///
/// - 0, 1: a TCP (0) or UDP (1) packet from the tables: `sel` bit 0 the side (front or
///   back), bits 1-2 the destination MAC (0-1: the load balancer's interface, 2: broadcast,
///   3: the destination host's); then `a` (source and destination from
///   [`ADDRS`](lp::ADDRS), low and high nibble; 15: four raw bytes follow), `p` (ports from
///   [`PORTS`](lp::PORTS), likewise; 15: a raw u16), for TCP a flags byte, and a length
///   byte `l` (payload [`LENS`](lp::LENS)`[l & 7] + (l >> 3 & 15)`, bit 7 DF).
/// - 2: a packet of a live connection (`s` picks one, modulo how many there are; none: no
///   packet): `sel` bit 0 the reply direction (from the backend) instead of the original
///   one; then `s`, a flags byte (TCP) and a length byte.
/// - 3: ICMP, by `sel`: 0 an echo request and 1 an echo reply (`a`, `p` as above: addresses,
///   identifier and sequence); 2 an error from a connection's backend about what it got,
///   3 an error from the client about a reply it got, 4 an error from a router on the path
///   (10.0.2.99 on the back, 10.0.1.254 on the front, by `t` bit 7) about a connection's
///   packet toward the backend (`s`, then `t`); 5 an error quoting a packet from the tables
///   (`a`, `p`, a protocol byte, `t`); 6 any type and code (`a`, type, code, then a length
///   byte of payload); 7 a timestamp request (`a`). `t`: bits 0-1 the type (unreachable,
///   time exceeded, parameter problem, source quench), bits 2-5 the code, bit 6 quotes 8
///   bytes of the transport header only, not the whole packet.
/// - 4: a raw inner frame on the front (`sel` bit 0: back): a length byte (below 128 as
///   is, else `(b & 0x7f) * 16`) and the bytes.
/// - 5: a raw VXLAN datagram (header included) from the front VTEP (`sel` bit 0: the back
///   one; bit 1: a stranger VTEP): a length byte and the bytes.
/// - 6: the clock moves by [`CLOCK_STEPS`](lp::CLOCK_STEPS)`[sel]`.
/// - 7: `sel` 0-3 a reload (to the other config, A, B, the same one), 4 and 5 toggle the
///   health of `api1` and `api2`, 6 and 7 toggle an admin drain of `web2` and `dns1`.
///
/// The corruption byte: bit 0 MF, bit 1 a fragment offset (the byte itself), bit 2 TTL
/// `c >> 6`, bit 3 a bad header checksum, bit 4 IHL `c & 15`, bit 5 total length `c`,
/// bit 6 truncated (at a next byte, modulo the length), bit 7 a bad transport checksum.
///
/// The checks: no panic; nothing on a host interface; every VXLAN datagram well formed
/// (flags `0x08`, reserved bytes zero, VNI 100 or 200, to one of the two VTEPs); every inner
/// frame from the load balancer's MAC on that VNI, ARP only for its addresses and VIPs,
/// IPv4 with a valid header checksum, no trailing bytes, TTL >= 1, within the interface
/// MTU, never to a VIP; UDP from a VIP only from a UDP service's port; a full-NAT packet to
/// a backend (from 10.0.2.1, not a RST) from a port of 1024..=32767 to a backend's
/// address and port; when every input of the batch was well formed, every TCP, UDP and ICMP
/// packet out (fragments aside) has a valid checksum, and no UDP checksum became 0; a packet
/// of a live connection (unbatched, well formed, fitting the MTU, to a known host) leaves as
/// exactly one packet, translated as the connection says, TTL one less, payload untouched.
/// After every event, the connection table: within its cap (a cap lowered by a reload only
/// stops growth); only TCP and UDP connections of an L4 service of the current config, to a
/// backend of that service's pool (in either config) at its port, full NAT from 10.0.2.1 and
/// a port of 1024..=32767, DNAT from the client itself; a connection that lives on keeps its
/// backend and ports across packets, reloads, health and drain changes; a new connection
/// goes to the backend the pool's Maglev table gives for its flow hash, which is up, of
/// weight above 0 and not drained.
pub mod lp {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::OnceLock;
    use std::time::Duration;

    use overlay_io::io::mem::{MemNet, Sent};
    use overlay_io::nat::{FiveTuple, Proto};
    use overlay_io::pipeline::DropReason;
    use vnf_lb::config::{self, Affinity, LbConfig, Mode, SNAT_PORTS, ServiceKind};
    use vnf_lb::{LoadBalancer, maglev};

    use super::{flag, icmp_message, ipv4_packet, proto, tcp_segment, udp_datagram};
    use crate::checksum;

    /// The first config (see the module docs).
    pub const CONFIG_A: &str = r#"
underlay: {address: 198.18.0.1}
batch_size: 8
ports:
  - {name: front, vni: 100, flood: [198.18.0.2]}
  - {name: back, vni: 200, flood: [198.18.0.3]}
interfaces:
  - {name: front, port: front, mac: "02:00:00:00:01:01", addresses: [10.0.1.1/24]}
  - {name: back, port: back, mac: "02:00:00:00:02:01", addresses: [10.0.2.1/24], mtu: 1300}
routes:
  - {prefix: 0.0.0.0/0, via: [10.0.1.254]}
pools:
  - name: web
    health: {check: none}
    table_size: 1009
    backends:
      - {name: web1, address: "10.0.2.10:80"}
      - {name: web2, address: "10.0.2.11:80", weight: 3}
      - {name: web3, address: "10.0.2.12:8080", weight: 2}
  - name: dns
    health: {check: none}
    table_size: 251
    backends:
      - {name: dns1, address: "10.0.2.20:53"}
      - {name: dns2, address: "10.0.2.21:5353"}
  - name: api
    health: {check: tcp}
    table_size: 307
    backends:
      - {name: api1, address: "10.0.2.30:8080"}
      - {name: api2, address: "10.0.2.31:8080"}
services:
  - {name: web, vip: 10.0.1.100, port: 80, protocol: tcp, pool: web}
  - {name: web-dnat, vip: 10.0.1.101, port: 80, protocol: tcp, pool: web, mode: dnat}
  - {name: dns, vip: 10.0.1.100, port: 53, protocol: udp, pool: dns}
  - {name: dns-dnat, vip: 10.0.1.101, port: 53, protocol: udp, pool: dns, mode: dnat, affinity: client_ip}
  - {name: api, vip: 10.0.1.100, port: 8080, protocol: tcp, pool: api}
  - {name: www, vip: 10.0.1.102, port: 80, protocol: http, pool: web}
lb:
  max_connections: 48
  timeouts: {tcp_established: 60, tcp_transitory: 10, tcp_closed: 3, udp: 8}
"#;

    /// The config a reload switches to and back from (see the module docs).
    pub const CONFIG_B: &str = r#"
underlay: {address: 198.18.0.1}
batch_size: 8
ports:
  - {name: front, vni: 100, flood: [198.18.0.2]}
  - {name: back, vni: 200, flood: [198.18.0.3]}
interfaces:
  - {name: front, port: front, mac: "02:00:00:00:01:01", addresses: [10.0.1.1/24]}
  - {name: back, port: back, mac: "02:00:00:00:02:01", addresses: [10.0.2.1/24], mtu: 1400}
routes:
  - {prefix: 0.0.0.0/0, via: [10.0.1.254]}
pools:
  - name: web
    health: {check: none}
    table_size: 1009
    backends:
      - {name: web1, address: "10.0.2.10:80", drain: true}
      - {name: web2, address: "10.0.2.11:80", weight: 3}
      - {name: web4, address: "10.0.2.13:80"}
  - name: dns
    health: {check: none}
    table_size: 251
    backends:
      - {name: dns1, address: "10.0.2.20:53"}
      - {name: dns2, address: "10.0.2.21:5353", weight: 0}
  - name: api
    health: {check: tcp}
    table_size: 307
    backends:
      - {name: api1, address: "10.0.2.30:8080"}
      - {name: api2, address: "10.0.2.31:8080"}
services:
  - {name: web, vip: 10.0.1.100, port: 80, protocol: tcp, pool: web}
  - {name: web-dnat, vip: 10.0.1.101, port: 80, protocol: tcp, pool: web, mode: dnat}
  - {name: dns, vip: 10.0.1.100, port: 53, protocol: udp, pool: dns}
  - {name: api, vip: 10.0.1.100, port: 8080, protocol: tcp, pool: api}
  - {name: www, vip: 10.0.1.102, port: 80, protocol: http, pool: web}
lb:
  max_connections: 24
  timeouts: {tcp_established: 30, tcp_transitory: 5, tcp_closed: 2, udp: 4}
"#;

    /// The most events one input runs.
    pub const MAX_EVENTS: usize = 256;

    /// The load balancer's interface MACs: front (VNI 100) and back (VNI 200).
    pub const LB_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 2, 1]];
    /// The VNIs of the front and the back.
    pub const VNIS: [u32; 2] = [100, 200];
    /// The VTEPs behind the front and the back.
    pub const VTEPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
    /// A VTEP in no flood list.
    pub const STRANGER_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
    /// The load balancer's own addresses.
    pub const LB_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 2, 1)];
    /// The VIPs.
    pub const VIPS: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 0, 1, 100),
        Ipv4Addr::new(10, 0, 1, 101),
        Ipv4Addr::new(10, 0, 1, 102),
    ];
    /// Interface MTUs (front, back) by config: the front's is its port's, the underlay's 1500
    /// less the VXLAN overhead.
    pub const MTUS: [[usize; 2]; 2] = [[1450, 1300], [1450, 1400]];

    /// Addresses by nibble (15: four raw bytes follow). Indexes are named in [`addr`].
    pub const ADDRS: [Ipv4Addr; 15] = [
        Ipv4Addr::new(10, 0, 1, 5),    // 0 client
        Ipv4Addr::new(10, 0, 1, 6),    // 1 client
        Ipv4Addr::new(203, 0, 113, 9), // 2 remote client, behind the gateway
        Ipv4Addr::new(10, 0, 1, 100),  // 3 VIP, full NAT
        Ipv4Addr::new(10, 0, 1, 101),  // 4 VIP, DNAT
        Ipv4Addr::new(10, 0, 1, 102),  // 5 VIP, L7
        Ipv4Addr::new(10, 0, 1, 1),    // 6 load balancer, front
        Ipv4Addr::new(10, 0, 2, 1),    // 7 load balancer, back
        Ipv4Addr::new(10, 0, 2, 10),   // 8 web1
        Ipv4Addr::new(10, 0, 2, 11),   // 9 web2
        Ipv4Addr::new(10, 0, 2, 12),   // 10 web3 (A)
        Ipv4Addr::new(10, 0, 2, 13),   // 11 web4 (B)
        Ipv4Addr::new(10, 0, 2, 20),   // 12 dns1
        Ipv4Addr::new(10, 0, 2, 30),   // 13 api1
        Ipv4Addr::new(10, 0, 2, 99),   // 14 a host on the back, unknown to ARP
    ];

    /// Address indexes into [`ADDRS`] for seeds.
    pub mod addr {
        /// A client.
        pub const CLIENT: u8 = 0;
        /// Another client.
        pub const CLIENT2: u8 = 1;
        /// A client behind the gateway.
        pub const REMOTE: u8 = 2;
        /// The full-NAT VIP.
        pub const VIP: u8 = 3;
        /// The DNAT VIP.
        pub const VIP_DNAT: u8 = 4;
        /// The L7 VIP.
        pub const VIP_L7: u8 = 5;
        /// The load balancer on the front.
        pub const LB_FRONT: u8 = 6;
        /// The load balancer on the back.
        pub const LB_BACK: u8 = 7;
        /// web1.
        pub const WEB1: u8 = 8;
        /// dns1.
        pub const DNS1: u8 = 12;
        /// An unknown host on the back.
        pub const STRANGER: u8 = 14;
    }

    /// Ports by nibble (15: a raw u16 follows).
    pub const PORTS: [u16; 15] = [
        80, 53, 8080, 5353, 40000, 40001, 1024, 32767, 32768, 0, 443, 22, 65535, 8000, 1025,
    ];

    /// Port indexes into [`PORTS`] for seeds.
    pub mod port {
        /// 80.
        pub const HTTP: u8 = 0;
        /// 53.
        pub const DNS: u8 = 1;
        /// 8080.
        pub const ALT: u8 = 2;
        /// 40000.
        pub const CLIENT: u8 = 4;
        /// 40001.
        pub const CLIENT2: u8 = 5;
        /// 443: no service.
        pub const HTTPS: u8 = 10;
    }

    /// Payload lengths by `l & 7`, to which `(l >> 3) & 15` is added: around the back
    /// MTUs (1300 in A, 1400 in B) for TCP and UDP.
    pub const LENS: [usize; 8] = [0, 5, 64, 512, 1245, 1258, 1345, 1440];

    /// Clock steps by selector, in milliseconds: past the timeouts of both configs (UDP 8 s
    /// and 4 s, TCP closing 3 s, transitory 10 s, established 60 s) and the ARP timers.
    pub const CLOCK_STEPS: [u64; 8] = [100, 1000, 2500, 4500, 9000, 11_000, 61_000, 301_000];

    /// Event kinds (`op & 7`).
    pub mod kind {
        /// TCP from the tables.
        pub const TCP: u8 = 0;
        /// UDP from the tables.
        pub const UDP: u8 = 1;
        /// A packet of a live connection.
        pub const SESSION: u8 = 2;
        /// ICMP.
        pub const ICMP: u8 = 3;
        /// A raw inner frame.
        pub const RAW_FRAME: u8 = 4;
        /// A raw VXLAN datagram.
        pub const RAW_VXLAN: u8 = 5;
        /// A clock step.
        pub const CLOCK: u8 = 6;
        /// Reloads, health and drain.
        pub const CONTROL: u8 = 7;
    }

    /// Bit 6 of a packet opcode: a corruption byte follows its fields.
    pub const CORRUPT: u8 = 0x40;
    /// Bit 7 of a packet opcode: queue it into a batch.
    pub const BATCHED: u8 = 0x80;

    /// An opcode: `kind` with selector `sel`.
    pub const fn op(kind: u8, sel: u8) -> u8 {
        (kind & 7) | ((sel & 7) << 3)
    }

    /// The front's gateway to the rest of the world.
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 254);

    /// Hosts that announce themselves at the start (each asks for its gateway), by side.
    const KNOWN_FRONT: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 0, 1, 5),
        Ipv4Addr::new(10, 0, 1, 6),
        Ipv4Addr::new(10, 0, 1, 254),
    ];
    const KNOWN_BACK: [Ipv4Addr; 8] = [
        Ipv4Addr::new(10, 0, 2, 10),
        Ipv4Addr::new(10, 0, 2, 11),
        Ipv4Addr::new(10, 0, 2, 12),
        Ipv4Addr::new(10, 0, 2, 13),
        Ipv4Addr::new(10, 0, 2, 20),
        Ipv4Addr::new(10, 0, 2, 21),
        Ipv4Addr::new(10, 0, 2, 30),
        Ipv4Addr::new(10, 0, 2, 31),
    ];

    fn configs() -> &'static [LbConfig; 2] {
        static CFGS: OnceLock<[LbConfig; 2]> = OnceLock::new();
        CFGS.get_or_init(|| {
            let c = |y: &str| {
                let raw: config::RawConfig = serde_saphyr::from_str(y).expect("valid YAML");
                config::compile(&raw).expect("lb_path config compiles")
            };
            [c(CONFIG_A), c(CONFIG_B)]
        })
    }

    /// The MAC a host with address `a` uses.
    pub fn host_mac(a: Ipv4Addr) -> [u8; 6] {
        let o = a.octets();
        [0x02, 0, 0, 0xa0, o[2], o[3]]
    }

    /// The side (0 front, 1 back) where a host lives.
    fn side_of(a: Ipv4Addr) -> usize {
        usize::from(a.octets()[..3] == [10, 0, 2])
    }

    struct Reader<'a> {
        d: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        fn done(&self) -> bool {
            self.at >= self.d.len()
        }
        fn u8(&mut self) -> u8 {
            let v = self.d.get(self.at).copied().unwrap_or(0);
            self.at += 1;
            v
        }
        fn u16(&mut self) -> u16 {
            u16::from_be_bytes([self.u8(), self.u8()])
        }
        fn take(&mut self, n: usize) -> &'a [u8] {
            let s = self.at.min(self.d.len());
            let e = self.at.saturating_add(n).min(self.d.len());
            self.at = self.at.saturating_add(n);
            &self.d[s..e]
        }
        fn addr(&mut self, i: u8) -> Ipv4Addr {
            match ADDRS.get(usize::from(i & 15)) {
                Some(a) => *a,
                None => Ipv4Addr::new(self.u8(), self.u8(), self.u8(), self.u8()),
            }
        }
        fn port(&mut self, i: u8) -> u16 {
            match PORTS.get(usize::from(i & 15)) {
                Some(p) => *p,
                None => self.u16(),
            }
        }
        /// A raw length byte: below 128 as is, else `(b & 0x7f) * 16`.
        fn raw_len(&mut self) -> usize {
            let n = self.u8();
            if n & 0x80 != 0 {
                usize::from(n & 0x7f) * 16
            } else {
                usize::from(n)
            }
        }
        /// A payload length byte: the length and DF.
        fn payload_len(&mut self) -> (usize, bool) {
            let l = self.u8();
            (
                LENS[usize::from(l & 7)] + usize::from(l >> 3 & 15),
                l & 0x80 != 0,
            )
        }
    }

    /// A connection as the harness sees it: its original and translated tuples.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Conn {
        original: FiveTuple,
        translated: FiveTuple,
    }

    /// An IPv4 packet as this target reads it: a valid header, or `None`.
    #[derive(Debug, Clone, Copy)]
    struct Ip {
        ihl: usize,
        total: usize,
        ttl: u8,
        proto: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        fragment: bool,
    }

    fn parse_ip(ip: &[u8]) -> Option<Ip> {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl || total > ip.len() || checksum(&ip[..ihl]) != 0 {
            return None;
        }
        let a = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
        Some(Ip {
            ihl,
            total,
            ttl: ip[8],
            proto: ip[9],
            src: a(12),
            dst: a(16),
            fragment: u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0,
        })
    }

    /// Whether the TCP, UDP or ICMP checksum of a whole packet verifies (other protocols
    /// and short headers: yes).
    fn l4_valid(ip: &[u8], h: &Ip) -> bool {
        let seg = &ip[h.ihl..h.total];
        match h.proto {
            proto::ICMP if seg.len() >= 4 => checksum(seg) == 0,
            p @ (proto::TCP | proto::UDP) if seg.len() >= if p == proto::TCP { 20 } else { 8 } => {
                let mut pseudo = ip[12..20].to_vec();
                pseudo.extend_from_slice(&[0, p]);
                pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                pseudo.extend_from_slice(seg);
                checksum(&pseudo) == 0
            }
            _ => true,
        }
    }

    fn ports_of(ip: &[u8], h: &Ip) -> Option<(u16, u16)> {
        let seg = ip.get(h.ihl..h.total)?;
        (matches!(h.proto, proto::TCP | proto::UDP) && seg.len() >= 4 && !h.fragment).then(|| {
            (
                u16::from_be_bytes([seg[0], seg[1]]),
                u16::from_be_bytes([seg[2], seg[3]]),
            )
        })
    }

    /// What the outputs of a run were, so that tests can tell the checks ran.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Stats {
        /// Full-NAT packets toward a backend.
        pub full_nat: usize,
        /// Packets toward a backend with the client's source (DNAT, or routed).
        pub to_backend: usize,
        /// TCP and UDP from a VIP to a client (translated replies).
        pub from_vip: usize,
        /// RSTs from the load balancer.
        pub resets: usize,
        /// ICMP port unreachable from the load balancer.
        pub port_unreachable: usize,
        /// Echo replies from the load balancer.
        pub echo_replies: usize,
        /// Other ICMP errors from the load balancer's addresses (time exceeded,
        /// fragmentation needed, ...).
        pub icmp_errors: usize,
        /// ICMP errors that others sent about a connection, translated (from another
        /// address than the load balancer's own, quoting a VIP or the load balancer).
        pub icmp_translated: usize,
        /// ARP from the load balancer.
        pub arp: usize,
        /// Packets of live connections checked to leave exactly as translated.
        pub exact: usize,
        /// Connections opened (checked against Maglev and eligibility).
        pub opened: usize,
        /// Connections that lived on through a reload, a health or a drain change.
        pub kept_across_changes: usize,
        /// New flows refused because no backend was up (`no_backend` drops).
        pub no_backend: usize,
    }

    /// How an input was built.
    #[derive(Debug, Clone, Copy)]
    struct Built {
        /// Valid headers and checksums.
        well_formed: bool,
        /// An ICMP error quotes a packet from its destination (not raw bytes).
        consistent: bool,
    }

    impl Built {
        const RAW: Built = Built {
            well_formed: false,
            consistent: false,
        };
    }

    /// A frame built from the input: the side it enters on, the frame, and what is expected
    /// of it if it is checked exactly.
    type Packet = (usize, Vec<u8>, Option<Expect>);

    /// What the harness expects of one packet of a live connection.
    #[derive(Debug, Clone)]
    struct Expect {
        tuple: FiveTuple,
        payload: Vec<u8>,
    }

    struct Harness {
        net: MemNet<LoadBalancer>,
        cur: usize,
        /// Health of the health-checked backends by (pool, backend).
        health: BTreeMap<(&'static str, &'static str), bool>,
        /// Admin drains by (pool, backend).
        drained: BTreeMap<(&'static str, &'static str), bool>,
        conns: Vec<Conn>,
        cap: usize,
        /// (source, protocol, source port) of the TCP and UDP packets of the batch in hand:
        /// the load balancer routes what it does not balance, spoofed sources included.
        sources: BTreeSet<(Ipv4Addr, u8, u16)>,
        /// The source addresses of the IPv4 packets of the batch in hand: the load balancer
        /// answers even a packet whose source claims to be one of its own addresses.
        source_addrs: BTreeSet<Ipv4Addr>,
        stats: Stats,
        event: usize,
    }

    /// Run one input (see the module docs).
    pub fn run(data: &[u8]) {
        run_stats(data);
    }

    /// [`run`], returning what the outputs were.
    pub fn run_stats(data: &[u8]) -> Stats {
        let mut h = Harness::new();
        let mut r = Reader { d: data, at: 0 };
        let mut batch: Vec<(Ipv4Addr, Vec<u8>, Built)> = Vec::new();
        let mut expect: Option<Expect> = None;
        let batch_size = configs()[0].sections.datapath.tuning.batch_size;
        let mut events = 0;
        while !r.done() && events < MAX_EVENTS {
            events += 1;
            h.event = events;
            let op = r.u8();
            let sel = (op >> 3) & 7;
            let corrupt = op & CORRUPT != 0;
            match op & 7 {
                k @ 0..=5 => {
                    let built = match k {
                        kind::TCP | kind::UDP => {
                            let p = if k == kind::TCP {
                                proto::TCP
                            } else {
                                proto::UDP
                            };
                            h.table_packet(&mut r, sel, p)
                        }
                        kind::SESSION => h.session_packet(&mut r, sel),
                        kind::ICMP => h.icmp_packet(&mut r, sel),
                        kind::RAW_FRAME => {
                            let side = usize::from(sel & 1);
                            let n = r.raw_len();
                            Some((side, r.take(n).to_vec(), None))
                        }
                        _ => {
                            let vtep = if sel & 2 != 0 {
                                STRANGER_VTEP
                            } else {
                                VTEPS[usize::from(sel & 1)]
                            };
                            let n = r.raw_len();
                            batch.push((vtep, r.take(n).to_vec(), Built::RAW));
                            None
                        }
                    };
                    if let Some((side, mut frame, exp)) = built {
                        let raw = k == kind::RAW_FRAME;
                        let mut built = Built {
                            well_formed: !raw,
                            consistent: !(raw || (k == kind::ICMP && sel == 6)),
                        };
                        if corrupt && !raw {
                            corrupt_frame(&mut r, &mut frame);
                            built.well_formed = false;
                        }
                        let valid = built.well_formed;
                        let mut d = vec![0x08, 0, 0, 0];
                        d.extend_from_slice(&VNIS[side].to_be_bytes()[1..]);
                        d.push(0);
                        d.extend_from_slice(&frame);
                        batch.push((VTEPS[side], d, built));
                        // Only a packet sent alone, as built, is checked exactly.
                        expect = if valid && batch.len() == 1 && op & BATCHED == 0 {
                            exp
                        } else {
                            None
                        };
                    }
                    if !batch.is_empty() && (op & BATCHED == 0 || batch.len() >= batch_size) {
                        h.flush(&mut batch, expect.take());
                    }
                }
                kind::CLOCK => {
                    h.flush(&mut batch, None);
                    let sent = h
                        .net
                        .advance(Duration::from_millis(CLOCK_STEPS[usize::from(sel)]));
                    h.check_outputs(&sent, (false, true), None);
                    h.check_table(false);
                }
                _ => {
                    h.flush(&mut batch, None);
                    h.control(sel);
                    h.check_table(false);
                }
            }
        }
        h.flush(&mut batch, None);
        h.stats
    }

    /// Apply the corruption byte to a frame (Ethernet header, then IPv4).
    fn corrupt_frame(r: &mut Reader<'_>, f: &mut Vec<u8>) {
        let c = r.u8();
        if f.len() < 34 {
            return;
        }
        let ip = &mut f[14..];
        if c & 0x01 != 0 {
            ip[6] |= 0x20;
        }
        if c & 0x02 != 0 {
            ip[7] = c;
        }
        if c & 0x04 != 0 {
            ip[8] = c >> 6;
        }
        if c & (0x01 | 0x02 | 0x04) != 0 {
            ip[10..12].fill(0);
            let s = checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&s.to_be_bytes());
        }
        if c & 0x08 != 0 {
            ip[10] ^= 0x55;
        }
        if c & 0x10 != 0 {
            ip[0] = 0x40 | (c & 0x0f);
        }
        if c & 0x20 != 0 {
            ip[2..4].copy_from_slice(&u16::from(c).to_be_bytes());
        }
        if c & 0x80 != 0 {
            let at = match ip[9] {
                proto::TCP => 20 + 16,
                proto::UDP => 20 + 6,
                _ => 20 + 2,
            };
            if let Some(b) = ip.get_mut(at) {
                *b ^= 0x5a;
            }
        }
        if c & 0x40 != 0 {
            let cut = usize::from(r.u8()) % f.len();
            f.truncate(cut);
        }
    }

    /// An Ethernet frame from host `src` to `to` with an IPv4 packet; DF as asked.
    fn frame(
        to: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        l4: &[u8],
        df: bool,
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(34 + l4.len());
        f.extend_from_slice(&to);
        f.extend_from_slice(&host_mac(src));
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = ipv4_packet(src, dst, protocol, l4);
        if df {
            ip[6] |= 0x40;
            ip[10..12].fill(0);
            let c = checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&ip);
        f
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn proto_num(p: Proto) -> u8 {
        match p {
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
            Proto::Icmp => proto::ICMP,
        }
    }

    impl Harness {
        fn new() -> Harness {
            let mut net = vnf_lb::in_memory(&configs()[0]).expect("engine");
            net.advance(Duration::from_millis(1));
            let mut h = Harness {
                net,
                cur: 0,
                health: BTreeMap::new(),
                drained: BTreeMap::new(),
                conns: Vec::new(),
                cap: configs()[0].lb.nat.max_sessions,
                sources: BTreeSet::new(),
                source_addrs: BTreeSet::new(),
                stats: Stats::default(),
                event: 0,
            };
            h.set_health("api1", true);
            h.set_health("api2", false);
            for (side, hosts) in [(0, &KNOWN_FRONT[..]), (1, &KNOWN_BACK[..])] {
                for &host in hosts {
                    let mut d = vec![0x08, 0, 0, 0];
                    d.extend_from_slice(&VNIS[side].to_be_bytes()[1..]);
                    d.push(0);
                    d.extend_from_slice(&crate::arp_request(host_mac(host), host, LB_ADDRS[side]));
                    let sent = h.net.vxlan_in(IpAddr::V4(VTEPS[side]), &d);
                    h.check_outputs(&sent, (true, true), None);
                }
            }
            h.stats = Stats::default();
            h
        }

        fn set_health(&mut self, backend: &'static str, up: bool) {
            self.health.insert(("api", backend), up);
            let mut st = self.net.engine().nf().shared().lock();
            let cfg = st.applied().clone();
            st.ext.set_health(&cfg.ext, "api", backend, up);
            let b = usize::from(backend == "api2");
            assert_eq!(st.ext.is_up(2, b), up, "{backend} health");
        }

        fn control(&mut self, sel: u8) {
            match sel {
                0..=3 => {
                    let to = match sel {
                        0 => 1 - self.cur,
                        1 => 0,
                        2 => 1,
                        _ => self.cur,
                    };
                    vnf_lb::reload_in_memory(&mut self.net, &configs()[to]).expect("reload");
                    self.cur = to;
                    self.cap = configs()[to].lb.nat.max_sessions;
                }
                4 | 5 => {
                    let b = if sel == 4 { "api1" } else { "api2" };
                    let up = !self.health.get(&("api", b)).copied().unwrap_or(false);
                    self.set_health(b, up);
                }
                _ => {
                    let key = if sel == 6 {
                        ("web", "web2")
                    } else {
                        ("dns", "dns1")
                    };
                    let drain = !self.drained.get(&key).copied().unwrap_or(false);
                    self.drained.insert(key, drain);
                    let mut st = self.net.engine().nf().shared().lock();
                    let cfg = st.applied().clone();
                    assert!(st.ext.set_admin_drain(&cfg.ext, key.0, key.1, drain));
                }
            }
        }

        /// A TCP or UDP packet from the tables.
        fn table_packet(&mut self, r: &mut Reader<'_>, sel: u8, p: u8) -> Option<Packet> {
            let side = usize::from(sel & 1);
            let a = r.u8();
            let src = r.addr(a);
            let dst = r.addr(a >> 4);
            let q = r.u8();
            let sport = r.port(q);
            let dport = r.port(q >> 4);
            let flags = if p == proto::TCP { r.u8() } else { 0 };
            let (n, df) = r.payload_len();
            let to = match sel >> 1 & 3 {
                0 | 1 => LB_MACS[side],
                2 => [0xff; 6],
                _ => host_mac(dst),
            };
            let l4 = if p == proto::TCP {
                tcp_segment(
                    sport,
                    dport,
                    flags,
                    1000,
                    if flags & flag::ACK != 0 { 1 } else { 0 },
                    &payload(n),
                )
            } else {
                udp_datagram(sport, dport, &payload(n))
            };
            Some((side, frame(to, src, dst, p, &l4, df), None))
        }

        /// A live connection by index, in a stable order.
        fn conn(&self, s: u8) -> Option<Conn> {
            (!self.conns.is_empty()).then(|| self.conns[usize::from(s) % self.conns.len()])
        }

        /// A packet of a live connection, in either direction.
        fn session_packet(&mut self, r: &mut Reader<'_>, sel: u8) -> Option<Packet> {
            let s = r.u8();
            let flags = r.u8();
            let (n, df) = r.payload_len();
            let c = self.conn(s)?;
            let (t, expected) = if sel & 1 == 0 {
                (c.original, c.translated)
            } else {
                (c.translated.reversed(), c.original.reversed())
            };
            let p = proto_num(t.proto);
            let body = payload(n);
            let l4 = if p == proto::TCP {
                tcp_segment(t.src.port, t.dst.port, flags, 7, 9, &body)
            } else {
                udp_datagram(t.src.port, t.dst.port, &body)
            };
            let side = side_of(t.src.addr);
            let f = frame(LB_MACS[side], t.src.addr, t.dst.addr, p, &l4, df);
            let out_side = side_of(expected.dst.addr);
            // The next hop resolved (its ARP entry may have expired with the clock).
            let d = expected.dst.addr;
            let on_link = d.octets()[..3] == [10, 0, 1] || d.octets()[..3] == [10, 0, 2];
            let hop = if on_link { d } else { GATEWAY };
            let known = {
                let st = self.net.engine().nf().shared().lock();
                st.nb.arp.lookup(hop).is_some()
            };
            let fits = f.len() - 14 <= MTUS[self.cur][out_side];
            let routable = ![t.src.addr, expected.dst.addr].iter().any(|a| {
                LB_ADDRS.contains(a)
                    || VIPS.contains(a)
                    || a.is_broadcast()
                    || a.is_multicast()
                    || a.is_unspecified()
                    || a.is_loopback()
            });
            let exp = (known && fits && routable).then(|| Expect {
                tuple: expected,
                payload: l4[if p == proto::TCP { 20 } else { 8 }..].to_vec(),
            });
            Some((side, f, exp))
        }

        /// An ICMP message (see the module docs).
        fn icmp_packet(&mut self, r: &mut Reader<'_>, sel: u8) -> Option<Packet> {
            let error = |t: u8| -> (u8, u8) { ([3, 11, 12, 4][usize::from(t & 3)], (t >> 2) & 15) };
            let quote =
                |src: Ipv4Addr, dst: Ipv4Addr, p: u8, sport: u16, dport: u16, short: bool| {
                    let l4 = if p == proto::TCP {
                        tcp_segment(sport, dport, flag::SYN, 1, 0, b"")
                    } else {
                        udp_datagram(sport, dport, b"data")
                    };
                    let mut q = ipv4_packet(src, dst, p, &l4);
                    if short {
                        q.truncate(28);
                    }
                    q
                };
            let (src, dst, msg) = match sel {
                0 | 1 => {
                    let a = r.u8();
                    let (src, dst) = (r.addr(a), r.addr(a >> 4));
                    let q = r.u8();
                    let (id, seq) = (r.port(q), r.port(q >> 4));
                    let mut rest = [0u8; 4];
                    rest[..2].copy_from_slice(&id.to_be_bytes());
                    rest[2..].copy_from_slice(&seq.to_be_bytes());
                    (
                        src,
                        dst,
                        icmp_message(if sel == 0 { 8 } else { 0 }, 0, rest, b"ping"),
                    )
                }
                2..=4 => {
                    let s = r.u8();
                    let t = r.u8();
                    let c = self.conn(s)?;
                    let (ty, code) = error(t);
                    let short = t & 0x40 != 0;
                    let p = proto_num(c.original.proto);
                    let (src, dst, qt) = match sel {
                        // The backend about what it got.
                        2 => (c.translated.dst.addr, c.translated.src.addr, c.translated),
                        // The client about the reply it got.
                        3 => (
                            c.original.src.addr,
                            c.original.dst.addr,
                            c.original.reversed(),
                        ),
                        // A router on the way to the backend, or to the client.
                        _ if t & 0x80 == 0 => (
                            Ipv4Addr::new(10, 0, 2, 99),
                            c.translated.src.addr,
                            c.translated,
                        ),
                        _ => (
                            Ipv4Addr::new(10, 0, 1, 254),
                            c.original.dst.addr,
                            c.original.reversed(),
                        ),
                    };
                    let q = quote(qt.src.addr, qt.dst.addr, p, qt.src.port, qt.dst.port, short);
                    (src, dst, icmp_message(ty, code, [0, 0, 5, 0x78], &q))
                }
                5 => {
                    let a = r.u8();
                    let (src, dst) = (r.addr(a), r.addr(a >> 4));
                    let q = r.u8();
                    let (sport, dport) = (r.port(q), r.port(q >> 4));
                    let p = if r.u8() & 1 == 0 {
                        proto::TCP
                    } else {
                        proto::UDP
                    };
                    let t = r.u8();
                    let (ty, code) = error(t);
                    // The error goes back to the quoted packet's source from its destination.
                    let qd = quote(src, dst, p, sport, dport, t & 0x40 != 0);
                    (dst, src, icmp_message(ty, code, [0; 4], &qd))
                }
                6 => {
                    let a = r.u8();
                    let (src, dst) = (r.addr(a), r.addr(a >> 4));
                    let (ty, code) = (r.u8(), r.u8());
                    let n = r.raw_len();
                    let body = r.take(n).to_vec();
                    (src, dst, icmp_message(ty, code, [0; 4], &body))
                }
                _ => {
                    let a = r.u8();
                    let (src, dst) = (r.addr(a), r.addr(a >> 4));
                    (src, dst, icmp_message(13, 0, [0, 1, 0, 1], &[0; 12]))
                }
            };
            let side = side_of(src);
            Some((
                side,
                frame(LB_MACS[side], src, dst, proto::ICMP, &msg, false),
                None,
            ))
        }

        /// Send the batch (if any) and check everything.
        fn flush(&mut self, batch: &mut Vec<(Ipv4Addr, Vec<u8>, Built)>, expect: Option<Expect>) {
            if batch.is_empty() {
                return;
            }
            let valid = batch.iter().all(|b| b.2.well_formed);
            let consistent = batch.iter().all(|b| b.2.consistent);
            self.sources = batch
                .iter()
                .filter_map(|(_, d, _)| {
                    let ip = d.get(8 + 14..)?;
                    let h = parse_ip(ip)?;
                    let (sport, _) = ports_of(ip, &h)?;
                    Some((h.src, h.proto, sport))
                })
                .collect();
            self.source_addrs = batch
                .iter()
                .filter_map(|(_, d, _)| parse_ip(d.get(8 + 14..)?).map(|h| h.src))
                .collect();
            let drops = self.net.hub().drops(DropReason::NoBackend);
            let sent = {
                let refs: Vec<(IpAddr, &[u8])> = batch
                    .iter()
                    .map(|(v, d, _)| (IpAddr::V4(*v), &d[..]))
                    .collect();
                self.net.vxlan_batch(&refs)
            };
            batch.clear();
            self.stats.no_backend += (self.net.hub().drops(DropReason::NoBackend) - drops) as usize;
            self.check_outputs(&sent, (valid, consistent), expect.as_ref());
            self.check_table(true);
        }

        /// Every output: see the module docs.
        fn check_outputs(
            &mut self,
            sent: &[Sent],
            (valid, consistent): (bool, bool),
            expect: Option<&Expect>,
        ) {
            let ev = self.event;
            let cfg = &configs()[self.cur];
            let mut matched = 0;
            for s in sent {
                let Sent::Vxlan {
                    dst, datagram: d, ..
                } = s
                else {
                    panic!("event {ev}: a frame on a host interface: {s:?}");
                };
                assert!(
                    *dst == IpAddr::V4(VTEPS[0]) || *dst == IpAddr::V4(VTEPS[1]),
                    "event {ev}: VXLAN to {dst}"
                );
                assert!(d.len() >= 8 + 14, "event {ev}: VXLAN carries a frame");
                assert_eq!(d[0], 0x08, "event {ev}: I flag");
                assert_eq!(
                    [d[1], d[2], d[3], d[7]],
                    [0; 4],
                    "event {ev}: reserved bytes"
                );
                let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
                let side = VNIS.iter().position(|&v| v == vni);
                let Some(side) = side else {
                    panic!("event {ev}: VNI {vni}");
                };
                let f = &d[8..];
                assert_eq!(
                    &f[6..12],
                    &LB_MACS[side],
                    "event {ev}: from the load balancer's MAC"
                );
                match [f[12], f[13]] {
                    [0x08, 0x06] => {
                        assert!(f.len() >= 42, "event {ev}: ARP whole");
                        let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
                        assert!(
                            LB_ADDRS.contains(&spa) || VIPS.contains(&spa),
                            "event {ev}: ARP for {spa}"
                        );
                        assert_eq!(&f[22..28], &LB_MACS[side], "event {ev}: ARP sender MAC");
                        self.stats.arp += 1;
                        continue;
                    }
                    [0x08, 0x00] => {}
                    t => panic!("event {ev}: ethertype {t:?}"),
                }
                let ip = &f[14..];
                let Some(h) = parse_ip(ip) else {
                    panic!("event {ev}: a malformed IPv4 header out: {ip:02x?}");
                };
                assert_eq!(h.total, ip.len(), "event {ev}: trailing bytes");
                assert!(h.ttl >= 1, "event {ev}: TTL 0");
                assert!(
                    h.total <= MTUS[self.cur][side],
                    "event {ev}: {} bytes over the MTU",
                    h.total
                );
                assert!(
                    !VIPS.contains(&h.dst) || self.source_addrs.contains(&h.dst),
                    "event {ev}: a packet to a VIP left: {h:?}"
                );
                if valid && !h.fragment {
                    assert!(
                        l4_valid(ip, &h),
                        "event {ev}: bad transport checksum out: {h:?} {ip:02x?}"
                    );
                    if h.proto == proto::UDP && h.total >= h.ihl + 8 {
                        assert_ne!(
                            &ip[h.ihl + 6..h.ihl + 8],
                            &[0, 0],
                            "event {ev}: a UDP checksum became 0"
                        );
                    }
                }
                let seg = &ip[h.ihl..h.total];
                let owned = LB_ADDRS.contains(&h.src) || VIPS.contains(&h.src);
                let rst = h.proto == proto::TCP && seg.len() >= 14 && seg[13] & flag::RST != 0;
                if let Some((sport, dport)) = ports_of(ip, &h) {
                    let routed = self.sources.contains(&(h.src, h.proto, sport));
                    if VIPS.contains(&h.src) && h.proto == proto::UDP && !routed {
                        assert!(
                            cfg.lb.service(h.src, Proto::Udp, sport).is_some(),
                            "event {ev}: UDP from {}:{sport} which is no UDP service",
                            h.src
                        );
                    }
                    if h.src == LB_ADDRS[1] && side == 1 && !rst && !routed {
                        assert!(
                            SNAT_PORTS.contains(&sport),
                            "event {ev}: full NAT from port {sport}"
                        );
                        assert!(
                            is_backend(h.dst, dport),
                            "event {ev}: full NAT to {}:{dport}, no backend",
                            h.dst
                        );
                        self.stats.full_nat += 1;
                    } else if rst && owned {
                        self.stats.resets += 1;
                    } else if VIPS.contains(&h.src) {
                        self.stats.from_vip += 1;
                    } else if side == 1 && is_backend(h.dst, dport) {
                        self.stats.to_backend += 1;
                    }
                    if let Some(e) = expect {
                        let got = (h.proto, h.src, sport, h.dst, dport);
                        let want = (
                            proto_num(e.tuple.proto),
                            e.tuple.src.addr,
                            e.tuple.src.port,
                            e.tuple.dst.addr,
                            e.tuple.dst.port,
                        );
                        assert_eq!(
                            got, want,
                            "event {ev}: a connection's packet translated wrongly"
                        );
                        let hl = if h.proto == proto::TCP { 20 } else { 8 };
                        assert_eq!(&seg[hl..], &e.payload[..], "event {ev}: payload changed");
                        assert_eq!(h.ttl, 63, "event {ev}: TTL one less");
                        matched += 1;
                    }
                } else if h.proto == proto::ICMP && seg.len() >= 8 && !h.fragment {
                    match seg[0] {
                        0 if owned => self.stats.echo_replies += 1,
                        3 | 4 | 5 | 11 | 12 if seg.len() >= 28 => {
                            let q = &seg[8..];
                            let qsrc = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
                            let qdst = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
                            let about_lb = [qsrc, qdst]
                                .iter()
                                .any(|a| VIPS.contains(a) || LB_ADDRS.contains(a));
                            // An error goes to the source of the packet it quotes (RFC 792),
                            // also when the load balancer made or translated it.
                            if consistent && (owned || about_lb) {
                                assert_eq!(
                                    qsrc, h.dst,
                                    "event {ev}: an ICMP error to {} quoting a packet from {qsrc} to {qdst}",
                                    h.dst
                                );
                            }
                            if LB_ADDRS.contains(&h.src) {
                                if seg[0] == 3 && seg[1] == 3 {
                                    self.stats.port_unreachable += 1;
                                } else {
                                    self.stats.icmp_errors += 1;
                                }
                            } else if about_lb {
                                self.stats.icmp_translated += 1;
                            }
                        }
                        _ => {}
                    }
                }
            }
            if let Some(e) = expect {
                assert_eq!(
                    matched,
                    1,
                    "event {ev}: a connection's packet did not leave once as {:?} ({} datagrams out)",
                    e.tuple,
                    sent.len()
                );
                self.stats.exact += 1;
            }
        }

        /// The connection table (see the module docs).
        fn check_table(&mut self, packets: bool) {
            let ev = self.event;
            let cfg = &configs()[self.cur];
            let st = self.net.engine().nf().shared().lock();
            let lb = &st.ext;
            let now: Vec<Conn> = {
                let mut v: Vec<Conn> = lb
                    .table
                    .sessions()
                    .map(|s| Conn {
                        original: s.original,
                        translated: s.translated,
                    })
                    .collect();
                v.sort_by_key(|c| c.original);
                v
            };
            assert!(
                now.len() <= self.cap.max(self.conns.len()),
                "event {ev}: {} connections, cap {}",
                now.len(),
                self.cap
            );
            let before: BTreeMap<FiveTuple, FiveTuple> = self
                .conns
                .iter()
                .map(|c| (c.original, c.translated))
                .collect();
            let mut seen = BTreeSet::new();
            for c in &now {
                assert!(
                    seen.insert(c.original),
                    "event {ev}: two connections for {:?}",
                    c.original
                );
                let o = c.original;
                let Some(si) = cfg.lb.service(o.dst.addr, o.proto, o.dst.port) else {
                    panic!("event {ev}: a connection to no service: {c:?}");
                };
                let svc = &cfg.lb.services[si];
                let ServiceKind::L4 { pool, mode } = svc.kind else {
                    panic!("event {ev}: a connection to an L7 service: {c:?}");
                };
                let t = c.translated;
                let pool_name = &cfg.lb.pools[pool].name;
                assert!(
                    configs().iter().any(|k| k
                        .lb
                        .pools
                        .iter()
                        .filter(|p| &p.name == pool_name)
                        .flat_map(|p| &p.backends)
                        .any(|b| *b.addr.ip() == t.dst.addr && b.addr.port() == t.dst.port)),
                    "event {ev}: a connection to {:?}, not a backend of `{pool_name}`",
                    t.dst
                );
                match mode {
                    Mode::FullNat => {
                        assert_eq!(t.src.addr, LB_ADDRS[1], "event {ev}: full NAT source {c:?}");
                        assert!(
                            SNAT_PORTS.contains(&t.src.port),
                            "event {ev}: full NAT port {c:?}"
                        );
                    }
                    Mode::Dnat => {
                        assert_eq!(t.src, o.src, "event {ev}: DNAT changed the source {c:?}")
                    }
                }
                match before.get(&o) {
                    Some(prev) => {
                        assert_eq!(*prev, t, "event {ev}: a live connection moved: {c:?}");
                        if !packets {
                            self.stats.kept_across_changes += 1;
                        }
                    }
                    None => {
                        assert!(
                            packets,
                            "event {ev}: a connection appeared without a packet: {c:?}"
                        );
                        // A new connection: the pool's Maglev choice, and an eligible backend.
                        let p = &cfg.lb.pools[pool];
                        let b = p.backends.iter().position(|b| {
                            *b.addr.ip() == t.dst.addr && b.addr.port() == t.dst.port
                        });
                        let Some(b) = b else {
                            panic!(
                                "event {ev}: a new connection to a backend of another config: {c:?}"
                            );
                        };
                        let be = &p.backends[b];
                        let up = p.check.is_none()
                            || self
                                .health
                                .iter()
                                .any(|(k, &v)| v && k.0 == p.name && k.1 == be.name);
                        let drained = self
                            .drained
                            .iter()
                            .any(|(k, &v)| v && k.0 == p.name && k.1 == be.name);
                        assert!(
                            up && !drained && !be.drain && be.weight > 0,
                            "event {ev}: a new connection to `{}`, which takes no new flows: {c:?}",
                            be.name
                        );
                        let p4 = proto_num(o.proto);
                        let hash = match svc.affinity {
                            Affinity::None => maglev::flow_hash(
                                o.src.addr.into(),
                                o.src.port,
                                o.dst.addr.into(),
                                o.dst.port,
                                p4,
                            ),
                            Affinity::ClientIp => {
                                maglev::flow_hash(o.src.addr.into(), 0, o.dst.addr.into(), 0, 0)
                            }
                        };
                        assert_eq!(
                            lb.pick(pool, hash),
                            Some(b),
                            "event {ev}: not Maglev's choice: {c:?}"
                        );
                        self.stats.opened += 1;
                    }
                }
            }
            drop(st);
            self.conns = now;
        }
    }

    /// Whether `a:port` is a backend of either config.
    fn is_backend(a: Ipv4Addr, port: u16) -> bool {
        configs()
            .iter()
            .flat_map(|c| &c.lb.pools)
            .flat_map(|p| &p.backends)
            .any(|b| *b.addr.ip() == a && b.addr.port() == port)
    }
}

/// A `lb_path` input, event by event (the encoding is documented on [`lp`]).
#[derive(Debug, Clone, Default)]
pub struct Lp(pub Vec<u8>);

impl Lp {
    /// An empty input.
    pub fn new() -> Lp {
        Lp(Vec::new())
    }

    /// Raw bytes.
    pub fn ev(mut self, bytes: &[u8]) -> Lp {
        self.0.extend_from_slice(bytes);
        self
    }

    /// TCP from the tables on `side` (0 front, 1 back), no payload: addresses and ports
    /// are [`lp::addr`] and [`lp::port`] indexes (15: raw bytes follow, see [`Lp::ev`]).
    pub fn tcp(self, side: u8, src: u8, dst: u8, sport: u8, dport: u8, flags: u8) -> Lp {
        self.ev(&[
            lp::op(lp::kind::TCP, side),
            src | dst << 4,
            sport | dport << 4,
            flags,
            0,
        ])
    }

    /// A SYN from the client `src` (front) with a raw source port to `vip:dport`.
    pub fn syn_from(self, src: u8, sport: u16, vip: u8, dport: u8) -> Lp {
        let [hi, lo] = sport.to_be_bytes();
        self.ev(&[
            lp::op(lp::kind::TCP, 0),
            src | vip << 4,
            15 | dport << 4,
            hi,
            lo,
            flag::SYN,
            0,
        ])
    }

    /// UDP from the tables, `len` the payload length byte.
    pub fn udp(self, side: u8, src: u8, dst: u8, sport: u8, dport: u8, len: u8) -> Lp {
        self.ev(&[
            lp::op(lp::kind::UDP, side),
            src | dst << 4,
            sport | dport << 4,
            len,
        ])
    }

    /// A packet of live connection `idx`, original direction or the reply.
    pub fn conn(self, idx: u8, reply: bool, flags: u8, len: u8) -> Lp {
        self.ev(&[lp::op(lp::kind::SESSION, u8::from(reply)), idx, flags, len])
    }

    /// An echo request from `src` to `dst` (front).
    pub fn echo(self, src: u8, dst: u8) -> Lp {
        self.ev(&[lp::op(lp::kind::ICMP, 0), src | dst << 4, 0x54])
    }

    /// An ICMP error about live connection `idx`: `by` 2 its backend, 3 its client, 4 a
    /// router; `t` the type/code byte.
    pub fn conn_error(self, by: u8, idx: u8, t: u8) -> Lp {
        self.ev(&[lp::op(lp::kind::ICMP, by), idx, t])
    }

    /// The clock moves by [`lp::CLOCK_STEPS`]`[step]`.
    pub fn clock(self, step: u8) -> Lp {
        self.ev(&[lp::op(lp::kind::CLOCK, step)])
    }

    /// A control event: 0-3 reloads, 4-5 health toggles, 6-7 admin drain toggles.
    pub fn control(self, sel: u8) -> Lp {
        self.ev(&[lp::op(lp::kind::CONTROL, sel)])
    }
}

/// `t` byte of an ICMP error: destination unreachable with `code`.
const fn unreachable(code: u8) -> u8 {
    code << 2
}

/// Hand-written `lb_path` inputs: each path of the load balancer at least once.
pub fn lb_path_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use flag::*;
    use lp::addr::*;
    use lp::port;
    let front = 0;
    let back = 1;
    let handshake = |vip: u8| {
        Lp::new()
            .tcp(front, CLIENT, vip, port::CLIENT, port::HTTP, SYN)
            .conn(0, true, SYN | ACK, 0)
            .conn(0, false, ACK, 0)
            .conn(0, false, PSH | ACK, 3)
            .conn(0, true, PSH | ACK, 2)
            .conn(0, false, FIN | ACK, 0)
            .conn(0, true, FIN | ACK, 0)
            .conn(0, false, ACK, 0)
            .clock(4)
            .conn(0, false, ACK, 0)
    };
    let mut flood = Lp::new();
    for i in 0..52u16 {
        flood = flood.syn_from(
            if i % 2 == 0 { CLIENT } else { CLIENT2 },
            20000 + i,
            VIP,
            port::HTTP,
        );
    }
    let mut spread = Lp::new();
    for i in 0..12u16 {
        spread = spread.syn_from(
            CLIENT,
            30000 + i,
            if i % 3 == 0 { VIP_DNAT } else { VIP },
            port::HTTP,
        );
    }
    let mut batch = Lp::new();
    for i in 0..10u16 {
        let [hi, lo] = (31000 + i).to_be_bytes();
        batch = batch.ev(&[
            lp::op(lp::kind::TCP, 0) | lp::BATCHED,
            CLIENT | VIP << 4,
            15 | port::HTTP << 4,
            hi,
            lo,
            SYN,
            0,
        ]);
    }
    vec![
        ("full-nat-handshake", handshake(VIP)),
        ("dnat-handshake", handshake(VIP_DNAT)),
        (
            "remote-client",
            Lp::new()
                .tcp(front, REMOTE, VIP, port::CLIENT, port::HTTP, SYN)
                .conn(0, true, SYN | ACK, 0)
                .conn(0, false, ACK, 0)
                .tcp(front, REMOTE, VIP_DNAT, port::CLIENT, port::HTTP, SYN)
                .conn(1, true, SYN | ACK, 0),
        ),
        (
            "udp-full-nat-and-expiry",
            Lp::new()
                .udp(front, CLIENT, VIP, port::CLIENT, port::DNS, 2)
                .conn(0, true, 0, 3)
                .conn(0, false, 0, 4)
                .clock(4)
                .udp(front, CLIENT, VIP, port::CLIENT, port::DNS, 2),
        ),
        (
            "udp-dnat-client-affinity",
            Lp::new()
                .udp(front, CLIENT, VIP_DNAT, port::CLIENT, port::DNS, 2)
                .udp(front, CLIENT, VIP_DNAT, port::CLIENT2, port::DNS, 2)
                .conn(0, true, 0, 1)
                .conn(1, true, 0, 1),
        ),
        (
            "api-health-changes",
            Lp::new()
                .tcp(front, CLIENT, VIP, port::CLIENT, port::ALT, SYN)
                .control(4)
                .tcp(front, CLIENT, VIP, port::CLIENT2, port::ALT, SYN)
                .conn(0, false, ACK, 0)
                .control(5)
                .tcp(front, CLIENT, VIP, port::CLIENT2, port::ALT, SYN)
                .control(4),
        ),
        (
            "no-service-ports",
            Lp::new()
                .tcp(front, CLIENT, VIP, port::CLIENT, port::HTTPS, SYN)
                .udp(front, CLIENT, VIP, port::CLIENT, port::HTTPS, 1)
                .udp(front, CLIENT, VIP_DNAT, port::CLIENT, port::HTTP, 1)
                .tcp(front, CLIENT, LB_FRONT, port::CLIENT, port::HTTP, SYN)
                .udp(back, WEB1, LB_BACK, port::HTTP, port::CLIENT, 1),
        ),
        (
            "l7-vip",
            Lp::new()
                .tcp(front, CLIENT, VIP_L7, port::CLIENT, port::HTTP, SYN)
                .tcp(front, CLIENT, VIP_L7, port::CLIENT, port::ALT, SYN)
                .echo(CLIENT, VIP_L7),
        ),
        (
            "ping",
            Lp::new()
                .echo(CLIENT, VIP)
                .echo(CLIENT, VIP_DNAT)
                .echo(CLIENT, LB_FRONT)
                .echo(REMOTE, VIP)
                .echo(CLIENT, WEB1)
                .ev(&[lp::op(lp::kind::ICMP, 7), CLIENT | VIP << 4]),
        ),
        (
            "icmp-errors-about-connections",
            Lp::new()
                .tcp(front, CLIENT, VIP, port::CLIENT, port::HTTP, SYN)
                .udp(front, CLIENT, VIP_DNAT, port::CLIENT, port::DNS, 0)
                .conn_error(2, 0, unreachable(4))
                .conn_error(2, 1, unreachable(3) | 0x40)
                .conn_error(3, 0, unreachable(3))
                .conn_error(3, 1, unreachable(3))
                .conn_error(4, 0, 1)
                .conn_error(4, 0, 0x80 | unreachable(4))
                .ev(&[
                    lp::op(lp::kind::ICMP, 5),
                    CLIENT | VIP << 4,
                    port::CLIENT | port::HTTP << 4,
                    0,
                    0,
                ]),
        ),
        (
            "reload-drain-and-back",
            spread
                .clone()
                .control(0)
                .conn(0, false, ACK, 0)
                .conn(5, false, ACK, 0)
                .conn(9, true, ACK, 0)
                .syn_from(CLIENT2, 33000, VIP, port::HTTP)
                .syn_from(CLIENT2, 33001, VIP, port::HTTP)
                .udp(front, CLIENT, VIP, port::CLIENT, port::DNS, 0)
                .control(6)
                .control(7)
                .syn_from(CLIENT2, 33002, VIP, port::HTTP)
                .udp(front, CLIENT2, VIP, port::CLIENT, port::DNS, 0)
                .control(1)
                .conn(3, false, ACK, 0)
                .control(3),
        ),
        (
            "table-full",
            flood
                .clone()
                .control(2)
                .syn_from(CLIENT, 40000, VIP, port::HTTP)
                .clock(7),
        ),
        ("batch", batch),
        (
            "routed-through",
            Lp::new()
                .tcp(front, CLIENT, WEB1, port::CLIENT, port::HTTP, SYN)
                .tcp(back, WEB1, CLIENT, port::HTTP, port::CLIENT, SYN | ACK)
                .udp(back, DNS1, REMOTE, port::DNS, port::CLIENT, 1)
                .udp(front, CLIENT, STRANGER, port::CLIENT, port::DNS, 1)
                .clock(1)
                .clock(2),
        ),
        (
            "big-packets",
            Lp::new()
                .tcp(front, CLIENT, VIP, port::CLIENT, port::HTTP, SYN)
                .conn(0, false, ACK, 4)
                .conn(0, false, ACK, 5 | 0x80)
                .conn(0, false, ACK, 6)
                .conn(0, false, ACK, 7 | 0x80)
                .conn(0, true, ACK, 7)
                .udp(front, CLIENT, VIP, port::CLIENT, port::DNS, 7 | 0x80),
        ),
        (
            "corrupt",
            Lp::new()
                .ev(&[
                    lp::op(lp::kind::TCP, 0) | lp::CORRUPT,
                    CLIENT | VIP << 4,
                    port::CLIENT | port::HTTP << 4,
                    SYN,
                    0,
                    0x08,
                ])
                .ev(&[
                    lp::op(lp::kind::TCP, 0) | lp::CORRUPT,
                    CLIENT | VIP << 4,
                    port::CLIENT | port::HTTP << 4,
                    SYN,
                    0,
                    0x80,
                ])
                .ev(&[
                    lp::op(lp::kind::TCP, 0) | lp::CORRUPT,
                    CLIENT | VIP << 4,
                    port::CLIENT | port::HTTP << 4,
                    SYN,
                    0,
                    0x04,
                ])
                .ev(&[
                    lp::op(lp::kind::UDP, 0) | lp::CORRUPT,
                    CLIENT | VIP << 4,
                    port::CLIENT | port::DNS << 4,
                    0,
                    0x41,
                    30,
                ])
                .ev(&[
                    lp::op(lp::kind::TCP, 0) | lp::CORRUPT,
                    CLIENT | VIP << 4,
                    port::CLIENT | port::HTTP << 4,
                    SYN,
                    0,
                    0x23,
                ]),
        ),
        (
            "raw",
            Lp::new()
                .ev(&[lp::op(lp::kind::RAW_FRAME, 0), 4, 1, 2, 3, 4])
                .ev(&[
                    lp::op(lp::kind::RAW_VXLAN, 0),
                    10,
                    0x08,
                    0,
                    0,
                    0,
                    0,
                    0,
                    100,
                    0,
                    1,
                    2,
                ])
                .ev(&[
                    lp::op(lp::kind::RAW_VXLAN, 2),
                    8,
                    0x08,
                    0,
                    0,
                    0,
                    0,
                    0,
                    200,
                    0,
                ]),
        ),
    ]
    .into_iter()
    .map(|(n, l)| (n, l.0))
    .collect()
}

/// Hand-written `http_parser` inputs: valid requests and responses, chunked bodies, and
/// the classic smuggling attempts, which must be refused.
pub fn http_parser_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("get", &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..]),
        ("get-pipelined", b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("get-http10", b"GET /old HTTP/1.0\r\n\r\n"),
        ("get-absolute-form", b"GET http://a.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        ("options-star", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("connect", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"),
        ("post-content-length", b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
        ("post-chunked", b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("post-expect-continue", b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
        ("chunked-body-extensions-trailers", b"4;name=value\r\nwiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\n\r\n"),
        ("chunked-body-hex-upper", b"A\r\n0123456789\r\n0\r\n\r\n"),
        ("chunked-size-overflow", b"ffffffffffffffffff\r\n"),
        ("chunked-bad-terminator", b"3\r\nabcX\r\n0\r\n\r\n"),
        ("smuggle-cl-te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
        ("smuggle-te-cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ("smuggle-double-cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("smuggle-cl-list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        ("smuggle-cl-sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
        ("smuggle-te-xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("smuggle-te-space-before-colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("smuggle-te-not-last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("smuggle-te-tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
        ("smuggle-te-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("smuggle-obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        ("smuggle-bare-lf", b"GET / HTTP/1.1\nHost: a\n\n"),
        ("smuggle-bare-cr", b"GET / HTTP/1.1\rHost: a\r\n\r\n"),
        ("smuggle-double-host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("smuggle-nul-in-header", b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"),
        ("bad-version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        ("long-line", b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("partial", b"GET / HTTP/1.1\r\nHost: a\r\n"),
        ("response-200-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ("response-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("response-204", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("response-304-length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"),
        ("response-100", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
        ("response-101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
        ("response-http10-close", b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
        ("response-bad-code", b"HTTP/1.1 99 Odd\r\n\r\n"),
    ]
    .into_iter()
    .map(|(n, b)| (n, b.to_vec()))
    .collect()
}

/// A `http_proxy` script (the encoding is documented on [`vnf_lb::proxy::fuzz_proxy`]).
#[derive(Debug, Clone, Default)]
pub struct Px(pub Vec<u8>);

impl Px {
    /// Bytes from the client (at most 255 per call).
    pub fn client(mut self, b: &[u8]) -> Px {
        self.0.push(0);
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
        self
    }

    /// Bytes from the backend (at most 255 per call).
    pub fn backend(mut self, b: &[u8]) -> Px {
        self.0.push(1);
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
        self
    }

    /// One operation byte (with its argument, if any).
    pub fn op(mut self, b: &[u8]) -> Px {
        self.0.extend_from_slice(b);
        self
    }

    /// The well-behaved glue: flush both ways, connect a wanted backend.
    pub fn glue(self) -> Px {
        self.op(&[0x0f])
    }
}

/// Hand-written `http_proxy` scripts: requests through to a backend and back, keep-alive,
/// chunked bodies, 100-continue, failures, timeouts and smuggling attempts.
pub fn http_proxy_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let p = Px::default;
    vec![
        (
            "get-through",
            p().client(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").glue().backend(ok).glue().op(&[4]).glue(),
        ),
        (
            "keep-alive-two-requests",
            p().client(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\n\r\n")
                .glue()
                .backend(ok)
                .glue()
                .glue()
                .backend(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .glue(),
        ),
        (
            "post-chunked-through",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .glue()
                .client(b"0\r\n\r\n")
                .glue()
                .backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                .glue(),
        ),
        (
            "expect-continue",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .glue()
                .backend(b"HTTP/1.1 100 Continue\r\n\r\n")
                .glue()
                .client(b"abc")
                .glue()
                .backend(ok)
                .glue(),
        ),
        (
            "head-response-without-body",
            p().client(b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n").glue().backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").glue(),
        ),
        (
            "http10-close-delimited",
            p().client(b"GET /a HTTP/1.0\r\n\r\n").glue().backend(b"HTTP/1.0 200 OK\r\n\r\nuntil close").op(&[5]).glue(),
        ),
        ("backend-fails", p().client(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").op(&[6, 7, 0, 8]).glue()),
        ("backend-unavailable", p().client(b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n").op(&[6, 9]).glue()),
        ("client-header-timeout", p().client(b"GET /a HTTP/1.1\r\nHo").op(&[12, 200, 13, 13]).glue()),
        ("backend-response-timeout", p().client(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").glue().op(&[12, 255, 12, 255, 13]).glue()),
        (
            "smuggle-cl-te",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
                .glue()
                .backend(ok)
                .glue(),
        ),
        (
            "smuggle-te-cl",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n")
                .glue()
                .backend(ok)
                .glue(),
        ),
        (
            "smuggle-double-content-length",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /secret HTTP/1.1\r\nHost: a\r\n\r\n").glue(),
        ),
        (
            "smuggle-obfuscated-te",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\n").glue(),
        ),
        (
            "response-smuggling-backend",
            p().client(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
                .glue()
                .backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
                .glue(),
        ),
        (
            "body-too-large",
            p().client(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n").glue(),
        ),
        ("fragments", p().op(&[0x02, 0x0f, 0x13, 0x0f, 0x12, 0x0f, 0x23, 0x0f, 0x32, 0x0f, 0x53, 0x0f, 0x04])),
        (
            "slow-consumer",
            p().client(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").op(&[6, 7, 1, 11, 1]).backend(ok).op(&[10, 0, 10, 1, 14]),
        ),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.0))
    .collect()
}

/// Every hand-written input of the three targets: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let named = |target: &'static str, v: Vec<(&'static str, Vec<u8>)>| {
        v.into_iter()
            .map(move |(n, b)| (target, format!("seed-{n}"), b))
    };
    named("http_parser", http_parser_seeds())
        .chain(named("http_proxy", http_proxy_seeds()))
        .chain(named("lb_path", lb_path_seeds()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::lp;

    /// A deterministic stream of byte strings (xorshift), so a failure reproduces.
    fn inputs(n: usize, max: u64, mut x: u64) -> impl Iterator<Item = Vec<u8>> {
        (0..n).map(move |_| {
            let len = (x % max) as usize;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        })
    }

    #[test]
    fn lb_path_keeps_its_invariants_on_random_inputs() {
        let mut total = lp::Stats::default();
        for data in inputs(600, 300, 0x9e37_79b9_7f4a_7c15) {
            let s = lp::run_stats(&data);
            total.opened += s.opened;
            total.exact += s.exact;
        }
        println!("{total:?}");
    }

    #[test]
    fn http_targets_run_on_random_inputs() {
        for data in inputs(300, 400, 0x2545_f491_4f6c_dd1d) {
            super::http_parser(&data);
            super::http_proxy(&data);
        }
    }
}
