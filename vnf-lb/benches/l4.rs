//! Per-packet cost of L4 load balancing: `cargo bench -p vnf-lb --bench l4`.
//!
//! The load balancer's whole path through the engine, without system calls, in batches of
//! 32 VXLAN datagrams (as the router's `forwarding` and the firewall's `firewall` benches):
//! decapsulate, check the IPv4 header, look the connection up (or pick a backend and
//! create one), rewrite addresses, ports and checksums, route, TTL, MACs, encapsulate.
//! Clients are on VNI 100 (`front`, 10.0.0.0/16), four backends on VNI 200 (`back`,
//! 10.1.0.0/16, no health check). The VIP 10.0.200.100 has two TCP services over the same
//! hosts: port 80 in full NAT (pool `web`, backends on port 80) and port 8080 in DNAT (pool
//! `app`, backends on port 8080).
//!
//! The table holds 100,000 established TCP connections (SYN, SYN-ACK, ACK seen): 4,096 in
//! full NAT and 95,904 in DNAT. Full NAT gives each client endpoint a port of
//! [`vnf_lb::config::SNAT_PORTS`] on the load balancer's one address toward the backends,
//! so that address carries at most 31,744 full-NAT connections at once; hence the split.
//!
//! - `full_nat_established_100k`: client -> backend packets of full-NAT connections spread
//!   over those in the table (destination and source rewritten);
//! - `full_nat_reply_100k`: backend -> client packets of the same connections;
//! - `dnat_established_100k`: client -> backend packets of DNAT connections spread over the
//!   table (destination rewritten);
//! - `full_nat_new_100k`: every packet a SYN of a new flow (a new source port, or a new
//!   client every 4096 ports): Maglev pick, a connection and a port created, so the table
//!   grows from 100,000 to at most 127,648. When the port range is used up, the clock
//!   jumps past `tcp_transitory` and the half-open connections expire, outside the
//!   measurement; the load balancer is rebuilt before its established connections would
//!   expire too ([`REBUILD_AFTER`]).
//!
//! Element throughput is per packet. Refilling each buffer from a template (a 72-byte copy,
//! like a NIC's DMA) is inside the measurement.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use overlay_io::buf::PacketBuf;
use overlay_io::datapath::engine::{Engine, Installed};
use overlay_io::l3::L3Hub;
use overlay_io::metrics::MetricsHub;
use vnf_lb::config::{self, SNAT_PORTS};
use vnf_lb::{LoadBalancer, Shared};

const BATCH: usize = 32;
/// Full-NAT connections in the table.
const FULL: usize = 4096;
/// DNAT connections in the table.
const DNAT: usize = 100_000 - FULL;
/// Clock time after which `full_nat_new_100k` rebuilds the load balancer, before its
/// established connections (`tcp_established`: 7440 s) would expire.
const REBUILD_AFTER: Duration = Duration::from_secs(7000);
const FRONT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const BACK_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 200, 100);
const BACKENDS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 1, 0, 10),
    Ipv4Addr::new(10, 1, 0, 11),
    Ipv4Addr::new(10, 1, 0, 12),
    Ipv4Addr::new(10, 1, 0, 13),
];
const FRONT_VTEP: u8 = 2;
const BACK_VTEP: u8 = 3;

/// An address and port.
type Ep = (Ipv4Addr, u16);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const SYN_ACK: u8 = 0x12;

fn yaml() -> String {
    let pool = |name: &str, port: u16| {
        let backends: String = BACKENDS
            .iter()
            .enumerate()
            .map(|(i, a)| format!("      - {{name: {name}{i}, address: \"{a}:{port}\"}}\n"))
            .collect();
        format!("  - name: {name}\n    health: {{check: none}}\n    backends:\n{backends}")
    };
    format!(
        r#"
underlay: {{address: 198.18.0.1}}
batch_size: {BATCH}
ports:
  - {{name: front, vni: 100, flood: [198.18.0.{FRONT_VTEP}]}}
  - {{name: back, vni: 200, flood: [198.18.0.{BACK_VTEP}]}}
interfaces:
  - {{name: front, port: front, mac: "02:00:00:00:01:01", addresses: [10.0.0.1/16]}}
  - {{name: back, port: back, mac: "02:00:00:00:02:01", addresses: [10.1.0.1/16]}}
pools:
{}{}services:
  - {{name: full, vip: {VIP}, port: 80, protocol: tcp, pool: web, mode: full_nat}}
  - {{name: dnat, vip: {VIP}, port: 8080, protocol: tcp, pool: app, mode: dnat}}
lb:
  max_connections: 4194304
"#,
        pool("web", 80),
        pool("app", 8080)
    )
}

fn checksum(b: &[u8]) -> u16 {
    overlay_io::wire::checksum::internet(b)
}

fn host_mac(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [2, 0, 0, 0xa0, o[2], o[3]]
}

/// A 64-byte TCP segment (10 bytes of payload, valid checksums) to a load balancer MAC.
fn tcp64(to: [u8; 6], src: Ep, dst: Ep, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&to);
    f[6..12].copy_from_slice(&host_mac(src.0));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src.0.octets());
    f[30..34].copy_from_slice(&dst.0.octets());
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&src.1.to_be_bytes());
    f[36..38].copy_from_slice(&dst.1.to_be_bytes());
    f[38..42].copy_from_slice(&1000u32.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = flags;
    f[48..50].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12 + 30);
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 6, 0, 30]);
    pseudo.extend_from_slice(&f[34..64]);
    let c = checksum(&pseudo);
    f[50..52].copy_from_slice(&c.to_be_bytes());
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

/// Client `k`: 10.0.x.y, port 1024 + k % 4096 on host k / 4096.
fn client(k: usize) -> Ep {
    let host = k / 4096;
    (
        Ipv4Addr::new(10, 0, (host / 250) as u8, (host % 250 + 2) as u8),
        1024 + (k % 4096) as u16,
    )
}

/// Receive one batch from a VTEP.
fn run(
    e: &mut Engine<LoadBalancer>,
    rx: &mut [PacketBuf],
    pkts: &[Vec<u8>],
    vtep: u8,
    now: Instant,
) {
    for (r, p) in rx.iter_mut().zip(pkts) {
        r.fill(p);
        r.vtep = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, vtep)));
    }
    e.clear();
    e.rx_underlay(&mut rx[..pkts.len()], now);
}

/// Every client host up to client `upto` and every backend ask for their gateway, so
/// that their MACs and VTEPs are known (again, after a jump of the clock).
fn learn(e: &mut Engine<LoadBalancer>, rx: &mut [PacketBuf], upto: usize, now: Instant) {
    let arps: Vec<Vec<u8>> = (0..upto.div_ceil(4096))
        .map(|h| {
            let (a, _) = client(h * 4096);
            vxlan(
                100,
                &arp_request(host_mac(a), a, Ipv4Addr::new(10, 0, 0, 1)),
            )
        })
        .collect();
    for chunk in arps.chunks(BATCH) {
        run(e, rx, chunk, FRONT_VTEP, now);
    }
    let arps: Vec<Vec<u8>> = BACKENDS
        .iter()
        .map(|&b| {
            vxlan(
                200,
                &arp_request(host_mac(b), b, Ipv4Addr::new(10, 1, 0, 1)),
            )
        })
        .collect();
    run(e, rx, &arps, BACK_VTEP, now);
}

/// The `i`th packet the load balancer sent, toward a backend: (its source, the backend).
fn translated(e: &Engine<LoadBalancer>, rx: &[PacketBuf], i: usize) -> (Ep, Ep) {
    let out = e.bytes(rx, e.out.udp[i].buf);
    // VXLAN (8) + Ethernet (14), then the IPv4 and TCP headers.
    let ip = &out[22..];
    let a = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let p = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    ((a(12), p(20)), (a(16), p(22)))
}

/// A load balancer with `FULL` full-NAT and `DNAT` DNAT connections established; returns
/// it with, for each full-NAT connection, its backend-side (source, backend).
fn balancer(now: Instant) -> (Engine<LoadBalancer>, Vec<(Ep, Ep)>) {
    let raw: config::RawConfig = serde_saphyr::from_str(&yaml()).expect("YAML");
    let cfg = config::compile(&raw).expect("config");
    let hub = MetricsHub::default();
    let l3hub = Arc::new(L3Hub::default());
    let nf = vnf_lb::nf_config(&cfg, &hub, &l3hub).expect("slots");
    let inst = Arc::new(Installed::new(cfg.sections.datapath.clone(), &hub).expect("install"));
    let counters = hub.add_worker();
    let shared = Shared::new(&nf, l3hub);
    let mut e = Engine::new(
        inst,
        LoadBalancer::new(&nf, shared, counters.clone()),
        counters,
    );
    let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    learn(&mut e, &mut rx, FULL + DNAT, now);
    let mut sides = Vec::with_capacity(FULL);
    for start in (0..FULL + DNAT).step_by(BATCH) {
        let ks: Vec<usize> = (start..(start + BATCH).min(FULL + DNAT)).collect();
        let port = |k: usize| if k < FULL { 80 } else { 8080 };
        let syns: Vec<Vec<u8>> = ks
            .iter()
            .map(|&k| vxlan(100, &tcp64(FRONT_MAC, client(k), (VIP, port(k)), SYN)))
            .collect();
        run(&mut e, &mut rx, &syns, FRONT_VTEP, now);
        assert_eq!(e.out.udp.len(), ks.len(), "every SYN forwarded");
        let here: Vec<_> = (0..ks.len()).map(|i| translated(&e, &rx, i)).collect();
        let replies: Vec<Vec<u8>> = here
            .iter()
            .map(|&(src, backend)| vxlan(200, &tcp64(BACK_MAC, backend, src, SYN_ACK)))
            .collect();
        run(&mut e, &mut rx, &replies, BACK_VTEP, now);
        assert_eq!(e.out.udp.len(), ks.len(), "every SYN-ACK forwarded");
        let acks: Vec<Vec<u8>> = ks
            .iter()
            .map(|&k| vxlan(100, &tcp64(FRONT_MAC, client(k), (VIP, port(k)), ACK)))
            .collect();
        run(&mut e, &mut rx, &acks, FRONT_VTEP, now);
        assert_eq!(e.out.udp.len(), ks.len(), "every ACK forwarded");
        for (&k, h) in ks.iter().zip(here) {
            if k < FULL {
                sides.push(h);
            }
        }
    }
    let st = e.nf().shared().lock();
    assert_eq!(
        st.ext.table.len(),
        FULL + DNAT,
        "the table holds every connection"
    );
    drop(st);
    (e, sides)
}

/// Jump the clock past `tcp_transitory` (60 s) and expire the half-open connections:
/// returns the new clock. The table's expiry examines `expire_budget` (4096) wheel
/// entries per tick when they are not all removals (established connections' first
/// entries are filed again), so the clock then moves a second (`TICK`) at a time.
fn expire_half_open(e: &mut Engine<LoadBalancer>, clock: Instant) -> Instant {
    let mut clock = clock + Duration::from_secs(61);
    e.handle_timeout(clock);
    for _ in 0..1000 {
        if e.nf().shared().lock().ext.table.len() <= FULL + DNAT {
            break;
        }
        clock += Duration::from_secs(1);
        e.handle_timeout(clock);
    }
    assert_eq!(
        e.nf().shared().lock().ext.table.len(),
        FULL + DNAT,
        "half-open connections expired"
    );
    clock
}

fn benches(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("l4");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    let (mut e, sides) = balancer(now);

    // 32 connections of each kind spread over the table (a large stride, so cache misses
    // count).
    let full: Vec<usize> = (0..BATCH).map(|i| (i * 3119) % FULL).collect();
    let pkts: Vec<Vec<u8>> = full
        .iter()
        .map(|&k| vxlan(100, &tcp64(FRONT_MAC, client(k), (VIP, 80), PSH_ACK)))
        .collect();
    run(&mut e, &mut rx, &pkts, FRONT_VTEP, now);
    assert_eq!(e.out.udp.len(), BATCH, "established packets pass");
    g.bench_function("full_nat_established_100k", |b| {
        b.iter(|| run(&mut e, &mut rx, &pkts, FRONT_VTEP, now))
    });

    let pkts: Vec<Vec<u8>> = full
        .iter()
        .map(|&k| {
            let (src, backend) = sides[k];
            vxlan(200, &tcp64(BACK_MAC, backend, src, PSH_ACK))
        })
        .collect();
    run(&mut e, &mut rx, &pkts, BACK_VTEP, now);
    assert_eq!(e.out.udp.len(), BATCH, "replies pass");
    g.bench_function("full_nat_reply_100k", |b| {
        b.iter(|| run(&mut e, &mut rx, &pkts, BACK_VTEP, now))
    });

    let pkts: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            let k = FULL + (i * 3119) % DNAT;
            vxlan(100, &tcp64(FRONT_MAC, client(k), (VIP, 8080), PSH_ACK))
        })
        .collect();
    run(&mut e, &mut rx, &pkts, FRONT_VTEP, now);
    assert_eq!(e.out.udp.len(), BATCH, "DNAT packets pass");
    g.bench_function("dnat_established_100k", |b| {
        b.iter(|| run(&mut e, &mut rx, &pkts, FRONT_VTEP, now))
    });

    // New flows: clients beyond the prefilled ones, each SYN to the full-NAT service.
    let ports = usize::from(SNAT_PORTS.end() - SNAT_PORTS.start()) + 1;
    let per_epoch = (ports - FULL) / BATCH * BATCH;
    let mut clock = now;
    let mut made = 0usize;
    let mut in_epoch = 0usize;
    let mut pkts = pkts.clone();
    g.bench_function("full_nat_new_100k", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                if in_epoch + BATCH > per_epoch {
                    in_epoch = 0;
                    if clock.saturating_duration_since(now) > REBUILD_AFTER {
                        clock = now;
                        made = 0;
                        e = balancer(now).0;
                    } else {
                        clock = expire_half_open(&mut e, clock);
                        learn(&mut e, &mut rx, FULL + DNAT, clock);
                    }
                }
                for p in pkts.iter_mut() {
                    let c = client(FULL + DNAT + made);
                    *p = vxlan(100, &tcp64(FRONT_MAC, c, (VIP, 80), SYN));
                    made += 1;
                }
                in_epoch += BATCH;
                let start = Instant::now();
                run(&mut e, &mut rx, &pkts, FRONT_VTEP, clock);
                spent += start.elapsed();
                debug_assert_eq!(e.out.udp.len(), BATCH);
            }
            spent
        })
    });
    let st = e.nf().shared().lock();
    let s = st.ext.table.stats();
    assert_eq!(s.pool_exhausted, 0, "no new flow was refused");
    println!(
        "after full_nat_new_100k: {} connections, {} expired, none refused",
        s.sessions, s.expired
    );
    drop(st);
    g.finish();
}

criterion_group! {
    name = l4_benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(l4_benches);
