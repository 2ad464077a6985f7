//! Per-packet cost of routing and NAT: `cargo bench -p vnf-router --bench forwarding`.
//!
//! The router's whole path through the engine, without system calls, in batches of 32
//! VXLAN datagrams (like `overlay-io`'s `datapath` bench does for bridging):
//!
//! - `route`: a 64-byte UDP frame from a host on VNI 100 (`web`, 10.0.1.0/24) to a host on
//!   VNI 200 (`db`, 10.0.2.0/24): decapsulate, check the IPv4 header, look the route up,
//!   decrement the TTL, rewrite the MACs from the ARP cache (the next hop is resolved) and
//!   encapsulate to the host's learned VTEP. No NAT rule exists.
//! - `route_snat_hit`: the same from `web` to the internet through the default gateway on
//!   VNI 300 (`ext`), masqueraded: every packet hits an existing NAT session (32 flows, one
//!   packet of each per batch) and is rewritten (addresses, ports, checksums).
//! - `route_snat_new`: every packet a new flow (a new source port, or a new source host
//!   every 4096 ports), so a NAT session and a pool port are created for each; the pool
//!   (16 addresses x 64512 ports) never runs out. The router is rebuilt, outside the
//!   measurement, every 262144 sessions, so the table grows from empty to that size.
//! - `fib_lookup_1k` / `fib_lookup_1m`: `Fib::lookup` alone on 1000 and 1,000,000 random
//!   routes (BGP-like prefix lengths, connected, gateway, ECMP and refusing targets), in
//!   batches of 1024 addresses: half random, half inside a random route's prefix.
//!
//! Element throughput is per packet (per lookup for the FIB). Refilling each buffer from a
//! template (a 72-byte copy, like a NIC's DMA) is inside the measurement.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::Ipv4Network;

use overlay_io::buf::PacketBuf;
use overlay_io::datapath::engine::{Engine, Installed};
use overlay_io::fib::{Decision, Fib, NextHop, RejectKind, Target};
use overlay_io::l3::L3Hub;
use overlay_io::metrics::MetricsHub;
use vnf_router::{Router, Shared, config};

const BATCH: usize = 32;
/// Sessions `route_snat_new` creates before the router is rebuilt.
const NEW_SESSIONS_PER_ROUTER: usize = 1 << 18;

/// `web`, `db` and `ext` routed interfaces on three VNIs; `{nat}` is pasted in.
fn yaml(nat: &str) -> String {
    format!(
        r#"
underlay: {{address: 198.18.0.1}}
batch_size: {BATCH}
ports:
  - {{name: web, vni: 100, flood: [198.18.0.2]}}
  - {{name: db, vni: 200, flood: [198.18.0.3]}}
  - {{name: ext, vni: 300, flood: [198.18.0.4]}}
interfaces:
  - {{name: web, port: web, mac: "02:00:00:00:01:01", addresses: [10.0.0.1/16]}}
  - {{name: db, port: db, mac: "02:00:00:00:02:01", addresses: [10.1.0.1/16]}}
  - {{name: ext, port: ext, mac: "02:00:00:00:03:01", addresses: [192.0.2.2/24]}}
routes:
  - {{prefix: 0.0.0.0/0, via: [192.0.2.1]}}
{nat}
"#
    )
}

const NAT: &str = r#"
nat:
  pools:
    - name: internet
      addresses: [192.0.2.16, 192.0.2.17, 192.0.2.18, 192.0.2.19, 192.0.2.20, 192.0.2.21,
                  192.0.2.22, 192.0.2.23, 192.0.2.24, 192.0.2.25, 192.0.2.26, 192.0.2.27,
                  192.0.2.28, 192.0.2.29, 192.0.2.30, 192.0.2.31]
      ports: 1024-65535
  masquerade: [{sources: [10.0.0.0/16], interface: ext, pool: internet}]
  max_sessions: 16777216
  max_sessions_per_tenant: 16777216
"#;

const WEB_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn host_mac(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [2, 0, 0, 0xa0, o[2], o[3]]
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A 64-byte Ethernet frame (no FCS): IPv4/UDP with 22 bytes of payload and valid
/// checksums, from `src`'s MAC to the router's `web` interface.
fn udp64(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&WEB_MAC);
    f[6..12].copy_from_slice(&host_mac(src));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + 30);
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17, 0, 30]);
    pseudo.extend_from_slice(&f[34..64]);
    let c = checksum(&pseudo);
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

fn arp_request(mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&vni.to_be_bytes()[1..]);
    d.push(0);
    d.extend_from_slice(inner);
    d
}

/// The router on the engine, as a worker runs it, with the hosts' and the gateway's ARP
/// entries (and VTEP entries) learned from their requests for the router's addresses.
fn router(nat: &str, now: Instant) -> Engine<Router> {
    let raw: config::RawConfig = serde_saphyr::from_str(&yaml(nat)).expect("YAML");
    let cfg = config::compile(&raw).expect("config");
    let hub = MetricsHub::default();
    let l3hub = Arc::new(L3Hub::default());
    let nf = vnf_router::nf_config(&cfg, &hub, &l3hub).expect("slots");
    let inst = Arc::new(Installed::new(cfg.datapath.clone(), &hub).expect("install"));
    let counters = hub.add_worker();
    let shared = Shared::new(&nf, l3hub);
    let mut e = Engine::new(inst, Router::new(&nf, shared, counters.clone()), counters);
    let mut rx: Vec<PacketBuf> = (0..3).map(|_| PacketBuf::new()).collect();
    for (b, (vtep, vni, host, gw)) in rx.iter_mut().zip([
        ("198.18.0.2", 100, HOST_A, Ipv4Addr::new(10, 0, 0, 1)),
        ("198.18.0.3", 200, HOST_B, Ipv4Addr::new(10, 1, 0, 1)),
        ("198.18.0.4", 300, GATEWAY, Ipv4Addr::new(192, 0, 2, 2)),
    ]) {
        b.fill(&vxlan(vni, &arp_request(host_mac(host), host, gw)));
        b.vtep = Some(ip(vtep));
    }
    e.clear();
    e.rx_underlay(&mut rx, now);
    let st = e.nf().shared().lock();
    for a in [HOST_A, HOST_B, GATEWAY] {
        assert!(st.nb.arp.lookup(a).is_some(), "{a} learned");
    }
    drop(st);
    e
}

/// Receive one batch: refill every buffer from `pkts` (a template per buffer).
fn run(e: &mut Engine<Router>, rx: &mut [PacketBuf], pkts: &[Vec<u8>], now: Instant) {
    for (r, p) in rx.iter_mut().zip(pkts) {
        r.fill(p);
        r.vtep = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));
    }
    e.clear();
    e.rx_underlay(rx, now);
    assert_eq!(e.out.udp.len(), BATCH, "every packet forwarded");
}

fn engine_benches(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("forwarding");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();

    // web -> db, next hop resolved, no NAT.
    {
        let mut e = router("", now);
        let pkts: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| vxlan(100, &udp64(HOST_A, HOST_B, 4000, 53)))
            .collect();
        run(&mut e, &mut rx, &pkts, now);
        assert_eq!(e.out.udp[0].dst, ip("198.18.0.3"), "to B's VTEP");
        g.bench_function("route", |b| b.iter(|| run(&mut e, &mut rx, &pkts, now)));
    }

    // web -> internet, masqueraded, 32 existing sessions.
    {
        let mut e = router(NAT, now);
        let pkts: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| vxlan(100, &udp64(HOST_A, INTERNET, 4000 + i as u16, 53)))
            .collect();
        run(&mut e, &mut rx, &pkts, now);
        let d = e.bytes(&rx, e.out.udp[0].buf);
        assert_eq!(&d[8 + 26..8 + 29], &[192, 0, 2], "source translated");
        g.bench_function("route_snat_hit", |b| {
            b.iter(|| run(&mut e, &mut rx, &pkts, now))
        });
    }

    // Every packet a new masqueraded flow.
    {
        let template = vxlan(100, &udp64(HOST_A, INTERNET, 4000, 53));
        let mut pkts: Vec<Vec<u8>> = vec![template.clone(); BATCH];
        let mut e = router(NAT, now);
        let mut made = 0usize;
        g.bench_function("route_snat_new", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if made + BATCH > NEW_SESSIONS_PER_ROUTER {
                        e = router(NAT, now);
                        made = 0;
                    }
                    for p in pkts.iter_mut() {
                        // Host 10.0.(k / 4096 / 250).(k / 4096 % 250 + 2), port 1024 + k % 4096.
                        let host = made / 4096;
                        let src = [10, 0, (host / 250) as u8, (host % 250 + 2) as u8];
                        let sport = 1024 + (made % 4096) as u16;
                        p[8 + 26..8 + 30].copy_from_slice(&src);
                        p[8 + 34..8 + 36].copy_from_slice(&sport.to_be_bytes());
                        p[8 + 24..8 + 26].fill(0);
                        let c = checksum(&p[8 + 14..8 + 34]);
                        p[8 + 24..8 + 26].copy_from_slice(&c.to_be_bytes());
                        made += 1;
                    }
                    let start = Instant::now();
                    run(&mut e, &mut rx, &pkts, now);
                    spent += start.elapsed();
                }
                spent
            })
        });
        let st = e.nf().shared().lock();
        assert_eq!(st.ext.table.len(), made, "one session per new flow");
    }
    g.finish();
}

/// xorshift64*: deterministic, good enough for test data (as in `overlay-io`'s lpm bench).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.u32() % (hi - lo + 1)
    }
}

/// A prefix length with roughly the mix of a full BGP table.
fn bgp_len(rng: &mut Rng) -> u8 {
    let len = match rng.range(0, 99) {
        0..55 => 24,
        55..65 => rng.range(22, 23),
        65..85 => rng.range(16, 21),
        85..90 => rng.range(8, 15),
        _ => rng.range(25, 32),
    };
    len as u8
}

/// `n` distinct random routes over a few targets: connected on one of 4 interfaces, one
/// gateway, two-way ECMP, or refused.
fn fib(n: usize, seed: u64) -> (Fib, Vec<Ipv4Network>) {
    let hop = |iface: usize, last: u8| NextHop {
        iface,
        gateway: Ipv4Addr::new(10, 0, iface as u8, last),
    };
    let targets = [
        Target::Connected(0),
        Target::Connected(1),
        Target::Connected(2),
        Target::Connected(3),
        Target::Via(vec![hop(0, 9)]),
        Target::Via(vec![hop(1, 9), hop(2, 9)]),
        Target::Reject(RejectKind::Blackhole),
        Target::Reject(RejectKind::Prohibit),
    ];
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut routes = Vec::with_capacity(n);
    while routes.len() < n {
        let len = bgp_len(&mut rng);
        let net = rng.u32() & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let prefix = Ipv4Network::new(Ipv4Addr::from(net), len).expect("length <= 32");
        if seen.insert(prefix) {
            let t = targets[rng.u32() as usize % targets.len()].clone();
            routes.push((prefix, t));
        }
    }
    let prefixes = routes.iter().map(|(p, _)| *p).collect();
    let start = Instant::now();
    let fib = Fib::build(routes).expect("FIB");
    println!(
        "fib: {n} routes built in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    (fib, prefixes)
}

fn fib_benches(c: &mut Criterion) {
    const LOOKUPS: usize = 1024;
    const ADDRESSES: usize = 1 << 20;
    let mut g = c.benchmark_group("forwarding");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for (name, n) in [("fib_lookup_1k", 1000), ("fib_lookup_1m", 1_000_000)] {
        let (fib, prefixes) = fib(n, 0x5eed ^ n as u64);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let addrs: Vec<Ipv4Addr> = (0..ADDRESSES)
            .map(|_| {
                if rng.next() & 1 == 0 {
                    Ipv4Addr::from(rng.u32())
                } else {
                    let p = prefixes[rng.u32() as usize % prefixes.len()];
                    Ipv4Addr::from(u32::from(p.network()) | (rng.u32() & !u32::from(p.mask())))
                }
            })
            .collect();
        let forwarded = addrs
            .iter()
            .take(10_000)
            .filter(|a| matches!(fib.lookup(**a, 0), Decision::Forward { .. }))
            .count();
        assert!(forwarded > 0, "some lookups find a route");
        let mut at = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let chunk = &addrs[at..at + LOOKUPS];
                at = (at + LOOKUPS) % ADDRESSES;
                // As the lpm bench does: fold the answers, so lookups are not serialised.
                let mut sum = 0usize;
                for (i, a) in chunk.iter().enumerate() {
                    sum += match fib.lookup(black_box(*a), i as u32) {
                        Decision::Forward { iface, .. } => iface + 1,
                        Decision::Reject(_) => 7,
                        Decision::NoRoute => 0,
                    };
                }
                black_box(sum)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = engine_benches, fib_benches
}
criterion_main!(benches);
