//! Per-packet cost of the datapath: `cargo bench -p overlay-io`.
//!
//! - `vxlan_bridge`: decapsulate a batch of 64 VXLAN datagrams on VNI 100, bridge them to
//!   VNI 200 and encapsulate them (learned unicast destination): the whole engine path
//!   that a VNI-to-VNI gateway runs per packet, without the syscalls.
//! - `vlan_gateway`: a tagged frame from a trunk, untagged, bridged and encapsulated.
//! - `bridge_forward`: the bridge domain's learn + lookup alone.
//! - `decap_only`: the VTEP checks and learning alone.
//!
//! Element throughput is reported per packet. Refilling the batch from a template (a
//! 110-byte copy, like a NIC's DMA) is inside the measurement.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use overlay_io::Vni;
use overlay_io::bridge::{Bridge, DomainConfig};
use overlay_io::buf::PacketBuf;
use overlay_io::datapath::config::{RawPort, RawUnderlay, compile};
use overlay_io::datapath::engine::{Engine, Installed};
use overlay_io::metrics::{MetricsHub, WorkerCounters};
use overlay_io::pipeline::{PortId, Verdict};
use overlay_io::vtep::{Join, VniConfig, Vtep};

const BATCH: usize = 64;

fn frame(src: u8, dst: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, src]);
    f[30..34].copy_from_slice(&[10, 0, 0, dst]);
    f[34..36].copy_from_slice(&1234u16.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f
}

fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
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
    d.extend_from_slice(inner);
    d
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn engine(with_trunk: bool) -> Engine<Bridge> {
    let mut ports = vec![
        RawPort {
            name: "a".into(),
            vni: Some(100),
            flood: vec![ip("198.18.0.2")],
            ..Default::default()
        },
        RawPort {
            name: "b".into(),
            vni: Some(200),
            flood: vec![ip("198.18.0.3")],
            ..Default::default()
        },
    ];
    if with_trunk {
        ports.push(RawPort {
            name: "t".into(),
            trunk: Some("trunk0".into()),
            vlan: Some(100),
            ..Default::default()
        });
    }
    let u = RawUnderlay {
        address: Some(ip("198.18.0.1")),
        ..Default::default()
    };
    let dp = compile(&u, &ports, 1, BATCH).expect("config");
    let hub = MetricsHub::default();
    let inst = Arc::new(Installed::new(Arc::new(dp), &hub).expect("install"));
    let counters = hub.add_worker();
    let domain = DomainConfig {
        name: "gw".into(),
        ports: (0..ports.len() as u16).map(PortId).collect(),
        max_macs: 8192,
        ageing: std::time::Duration::from_secs(300),
        learning: true,
        slot: 0,
    };
    let nf = Bridge::new(&[domain], counters.clone());
    Engine::new(inst, nf, counters)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("datapath");
    g.throughput(Throughput::Elements(BATCH as u64));

    // VNI 100 -> VNI 200, both MACs learned.
    {
        let mut e = engine(false);
        let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
        let learn = vxlan(200, &frame(2, 1, 110));
        rx[0].fill(&learn);
        rx[0].vtep = Some(ip("198.18.0.3"));
        e.rx_underlay(&mut rx[..1], now);
        let pkt = vxlan(100, &frame(1, 2, 110));
        g.bench_function("vxlan_bridge", |b| {
            b.iter(|| {
                for r in rx.iter_mut() {
                    r.fill(&pkt);
                    r.vtep = Some(ip("198.18.0.2"));
                }
                e.clear();
                e.rx_underlay(&mut rx, now);
                assert_eq!(e.out.udp.len(), BATCH);
            })
        });
    }

    // Trunk VLAN 100 -> VNI 200.
    {
        let mut e = engine(true);
        let mut rx: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
        rx[0].fill(&vxlan(200, &frame(2, 1, 110)));
        rx[0].vtep = Some(ip("198.18.0.3"));
        e.rx_underlay(&mut rx[..1], now);
        let mut tagged = frame(1, 2, 110);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        g.bench_function("vlan_gateway", |b| {
            b.iter(|| {
                for r in rx.iter_mut() {
                    r.fill(&tagged);
                }
                e.clear();
                e.rx_iface(0, &mut rx, now);
                assert_eq!(e.out.udp.len(), BATCH);
            })
        });
    }

    // Bridge learn + lookup only.
    {
        let counters = Arc::new(WorkerCounters::default());
        let domain = DomainConfig {
            name: "gw".into(),
            ports: vec![PortId(0), PortId(1)],
            max_macs: 8192,
            ageing: std::time::Duration::from_secs(300),
            learning: true,
            slot: 0,
        };
        let mut br = Bridge::new(&[domain], counters);
        let mut p = PacketBuf::new();
        p.fill(&frame(2, 1, 64));
        p.port = PortId(1);
        let _ = br.forward(&p, now);
        p.fill(&frame(1, 2, 64));
        p.port = PortId(0);
        g.bench_function("bridge_forward", |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    let v = br.forward(std::hint::black_box(&p), now);
                    assert_eq!(v, Verdict::Forward(PortId(1)));
                }
            })
        });
    }

    // VTEP decap + learning only.
    {
        let counters = WorkerCounters::default();
        let mut vt = Vtep::new();
        let vni = Vni::new(100).expect("vni");
        vt.configure(&[Join {
            cfg: Arc::new(VniConfig::new(vni)),
            port: PortId(0),
            slot: 0,
        }]);
        let pkt = vxlan(100, &frame(1, 2, 110));
        let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
        g.bench_function("decap_only", |b| {
            b.iter(|| {
                for r in bufs.iter_mut() {
                    r.fill(&pkt);
                    vt.decap(r, ip("198.18.0.2"), now, &counters)
                        .expect("valid");
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
