//! Per-packet cost of the routed firewall: `cargo bench -p vnf-firewall --bench firewall`.
//!
//! The whole path through the engine, without system calls, in batches of 32 VXLAN
//! datagrams (as the router's `forwarding` bench): decapsulate, check the IPv4 header, look
//! the route up, connection tracking, the policy, TTL, MACs, encapsulate. The table holds
//! 100,000 connections (UDP flows web -> db, each answered once, so established) and the
//! zone pair has 21 rules (20 that never match, then the accepting one):
//!
//! - `established_100k`: packets of existing connections, spread over the table;
//! - `new_100k`: every packet a new flow, classified and committed; the table grows from
//!   100,000 and the firewall is rebuilt (outside the measurement) every 200,000 flows.
//!
//! The bytes per connection of the table are printed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use overlay_io::buf::PacketBuf;
use overlay_io::datapath::engine::{Engine, Installed};
use overlay_io::l3::L3Hub;
use overlay_io::metrics::MetricsHub;
use vnf_firewall::{Firewall, RuleNames, Shared, config};

const BATCH: usize = 32;
const TABLE: usize = 100_000;
const NEW_PER_FIREWALL: usize = 200_000;
const WEB_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const DB_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const DB_HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);

fn yaml() -> String {
    let dummies: String = (0..20)
        .map(|i| {
            format!(
                "      - {{name: d{i}, protocol: tcp, src: [172.{i}.0.0/16], dst_ports: [{}], action: accept}}\n",
                1000 + i
            )
        })
        .collect();
    format!(
        r#"
underlay: {{address: 198.18.0.1}}
batch_size: {BATCH}
ports:
  - {{name: web, vni: 100, flood: [198.18.0.2]}}
  - {{name: db, vni: 200, flood: [198.18.0.3]}}
interfaces:
  - {{name: web, port: web, mac: "02:00:00:00:01:01", addresses: [10.0.0.1/16]}}
  - {{name: db, port: db, mac: "02:00:00:00:02:01", addresses: [10.1.0.1/16]}}
zones:
  - {{name: web, interfaces: [web]}}
  - {{name: db, interfaces: [db]}}
policies:
  - from: web
    to: db
    rules:
{dummies}      - {{name: dns, protocol: udp, dst_ports: [53], action: accept}}
  - {{from: db, to: web}}
conntrack:
  max_connections: 1048576
"#
    )
}

fn checksum(b: &[u8]) -> u16 {
    overlay_io::wire::checksum::internet(b)
}

fn host_mac(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [2, 0, 0, 0xa0, o[2], o[3]]
}

/// A 64-byte UDP frame (no UDP checksum) to a router MAC.
fn udp64(to: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&to);
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

/// Web host `k` (10.0.x.y, port 1024 + k % 4096 on host k / 4096).
fn flow(k: usize) -> (Ipv4Addr, u16) {
    let host = k / 4096;
    (
        Ipv4Addr::new(10, 0, (host / 250) as u8, (host % 250 + 2) as u8),
        1024 + (k % 4096) as u16,
    )
}

/// Receive one batch from a VTEP; `expect` forwarded packets.
fn run(e: &mut Engine<Firewall>, rx: &mut [PacketBuf], pkts: &[Vec<u8>], vtep: u8, now: Instant) {
    for (r, p) in rx.iter_mut().zip(pkts) {
        r.fill(p);
        r.vtep = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, vtep)));
    }
    e.clear();
    e.rx_underlay(&mut rx[..pkts.len()], now);
}

/// The firewall with `TABLE` established connections, the hosts' ARP entries learned.
fn firewall(now: Instant) -> Engine<Firewall> {
    let raw: config::RawConfig = serde_saphyr::from_str(&yaml()).expect("YAML");
    let cfg = config::compile(&raw).expect("config");
    let hub = MetricsHub::default();
    let l3hub = Arc::new(L3Hub::default());
    let nf = vnf_firewall::nf_config(&cfg, &hub, &l3hub, &RuleNames::default()).expect("slots");
    let inst = Arc::new(Installed::new(cfg.sections.datapath.clone(), &hub).expect("install"));
    let counters = hub.add_worker();
    let shared = Shared::new(&nf, l3hub);
    let mut e = Engine::new(inst, Firewall::new(&nf, shared, counters.clone()), counters);
    let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    // Every web host asks for its gateway (so its MAC and VTEP are known), and db too.
    let hosts = TABLE.div_ceil(4096);
    let mut arps: Vec<Vec<u8>> = (0..hosts)
        .map(|h| {
            let (a, _) = flow(h * 4096);
            vxlan(
                100,
                &arp_request(host_mac(a), a, Ipv4Addr::new(10, 0, 0, 1)),
            )
        })
        .collect();
    for chunk in arps.chunks(BATCH) {
        run(&mut e, &mut rx, chunk, 2, now);
    }
    arps.clear();
    let db = vxlan(
        200,
        &arp_request(host_mac(DB_HOST), DB_HOST, Ipv4Addr::new(10, 1, 0, 1)),
    );
    run(&mut e, &mut rx, &[db], 3, now);
    // The connections, each answered once.
    for start in (0..TABLE).step_by(BATCH) {
        let out: Vec<Vec<u8>> = (start..(start + BATCH).min(TABLE))
            .map(|k| {
                let (a, p) = flow(k);
                vxlan(100, &udp64(WEB_MAC, a, DB_HOST, p, 53))
            })
            .collect();
        run(&mut e, &mut rx, &out, 2, now);
        let back: Vec<Vec<u8>> = (start..(start + BATCH).min(TABLE))
            .map(|k| {
                let (a, p) = flow(k);
                vxlan(200, &udp64(DB_MAC, DB_HOST, a, 53, p))
            })
            .collect();
        run(&mut e, &mut rx, &back, 3, now);
    }
    let st = e.nf().shared().lock();
    assert_eq!(st.ext.ct.len(), TABLE, "the table holds every flow");
    drop(st);
    e
}

fn benches(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("firewall");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    let mut e = firewall(now);
    {
        let st = e.nf().shared().lock();
        let per = st.ext.ct.memory_bytes() as f64 / st.ext.ct.len() as f64;
        println!(
            "connection table: {} connections, {} bytes, {per:.1} bytes per connection",
            st.ext.ct.len(),
            st.ext.ct.memory_bytes()
        );
    }

    // Established: 32 flows spread over the table (a large stride, so cache misses count).
    let pkts: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            let (a, p) = flow((i * 3119) % TABLE);
            vxlan(100, &udp64(WEB_MAC, a, DB_HOST, p, 53))
        })
        .collect();
    run(&mut e, &mut rx, &pkts, 2, now);
    assert_eq!(e.out.udp.len(), BATCH, "established packets pass");
    g.bench_function("established_100k", |b| {
        b.iter(|| run(&mut e, &mut rx, &pkts, 2, now))
    });

    // New flows: sources beyond the prefilled ones.
    let mut made = 0usize;
    let mut pkts = pkts.clone();
    g.bench_function("new_100k", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                if made + BATCH > NEW_PER_FIREWALL {
                    e = firewall(now);
                    made = 0;
                }
                for p in pkts.iter_mut() {
                    let (a, port) = flow(TABLE + made);
                    // New hosts have no ARP entry on the web side, which does not matter:
                    // the packet goes to db.
                    *p = vxlan(100, &udp64(WEB_MAC, a, DB_HOST, port, 53));
                    made += 1;
                }
                let start = Instant::now();
                run(&mut e, &mut rx, &pkts, 2, now);
                spent += start.elapsed();
                debug_assert_eq!(e.out.udp.len(), BATCH);
            }
            spent
        })
    });
    g.finish();
}

criterion_group! {
    name = firewall_benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(firewall_benches);
