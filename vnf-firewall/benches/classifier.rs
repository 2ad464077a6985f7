//! Policy classification of new flows: `cargo bench -p vnf-firewall --bench classifier`.
//!
//! One zone pair holds 10, 100, 1000 or 10000 random rules, and packets are classified by
//! [`Policy::classify`] (the bit-vector classifier) and by [`Policy::classify_linear`] (a
//! first-match scan testing rule after rule), in batches of 256 packets:
//!
//! - `aimed`: each packet is made to match a uniformly random rule (inside its prefixes and
//!   port ranges, with its protocol and a state it accepts), so the linear scan stops on
//!   average halfway, or earlier when an earlier rule matches too;
//! - `random`: uniformly random addresses and ports, which almost never match (every rule
//!   names a destination prefix), so the linear scan tests every rule before the default.
//!
//! The rules look like a tenant's: every rule names a destination prefix (/16 to /32,
//! mostly /24 and longer); half name a source prefix; most are TCP or UDP to one port or a
//! small range; a few restrict the source ports, the ICMP type or the conntrack state.
//!
//! Element throughput is per packet. The setup prints each policy's build time and
//! `memory_bytes()`, and checks that both ways answer every packet alike.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::Ipv4Network;

use vnf_firewall::classifier::{
    Action, CtState, L4, Packet, Policy, Rule, StateSet, Zone, ZoneId, ZonePolicy, proto,
};

const BATCH: usize = 256;
const SIZES: [usize; 4] = [10, 100, 1000, 10000];
const FROM: ZoneId = ZoneId(0);
const TO: ZoneId = ZoneId(1);

/// xorshift64*: deterministic, good enough for test data, no dependency.
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

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant here).
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.u32() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u32) -> bool {
        self.range(0, 99) < percent
    }
}

fn prefix(rng: &mut Rng, shortest: u32, longest: u32) -> Ipv4Network {
    let len = rng.range(shortest, longest) as u8;
    Ipv4Network::new(Ipv4Addr::from(rng.u32()), len)
        .map(|n| Ipv4Network::new(n.network(), len).unwrap_or(n))
        .expect("length <= 32")
}

fn ports(rng: &mut Rng) -> Vec<RangeInclusive<u16>> {
    let lo = rng.range(1, 10000) as u16;
    if rng.chance(70) {
        vec![lo..=lo]
    } else {
        vec![lo..=lo + rng.range(1, 100) as u16]
    }
}

fn rule(rng: &mut Rng, i: usize) -> Rule {
    let mut r = Rule::new(
        format!("r{i}"),
        [Action::Accept, Action::Drop, Action::Reject][rng.range(0, 2) as usize],
    );
    let dst_len = if rng.chance(80) { (24, 32) } else { (16, 23) };
    r.dst = Some(vec![prefix(rng, dst_len.0, dst_len.1)]);
    if rng.chance(50) {
        r.src = Some(vec![prefix(rng, 8, 32)]);
    }
    match rng.range(0, 99) {
        0..50 => r.protocol = Some(proto::TCP),
        50..80 => r.protocol = Some(proto::UDP),
        80..90 => r.protocol = Some(proto::ICMP),
        _ => {}
    }
    match r.protocol {
        Some(proto::TCP | proto::UDP) => {
            if rng.chance(85) {
                r.dst_ports = Some(ports(rng));
            }
            if rng.chance(10) {
                r.src_ports = Some(vec![1024..=65535]);
            }
        }
        Some(proto::ICMP) if rng.chance(50) => r.icmp_type = Some(rng.range(0, 15) as u8),
        _ => {}
    }
    if rng.chance(20) {
        r.states = StateSet::NONE.with(CtState::ALL[rng.range(0, 3) as usize]);
    }
    r
}

fn inside(rng: &mut Rng, nets: Option<&Vec<Ipv4Network>>) -> Ipv4Addr {
    match nets.and_then(|n| n.first()) {
        Some(n) => Ipv4Addr::from(u32::from(n.network()) | (rng.u32() & !u32::from(n.mask()))),
        None => Ipv4Addr::from(rng.u32()),
    }
}

fn in_range(rng: &mut Rng, ranges: Option<&Vec<RangeInclusive<u16>>>) -> u16 {
    match ranges.and_then(|r| r.first()) {
        Some(r) => rng.range(u32::from(*r.start()), u32::from(*r.end())) as u16,
        None => rng.range(1024, 65535) as u16,
    }
}

/// A packet that `r` matches.
fn aimed(rng: &mut Rng, r: &Rule) -> Packet {
    let protocol = r.protocol.unwrap_or(proto::TCP);
    let l4 = if protocol == proto::ICMP {
        L4::Icmp {
            ty: r.icmp_type.unwrap_or(8),
            code: 0,
        }
    } else {
        L4::Ports {
            src: in_range(rng, r.src_ports.as_ref()),
            dst: in_range(rng, r.dst_ports.as_ref()),
        }
    };
    let state = CtState::ALL
        .into_iter()
        .find(|s| r.states.contains(*s))
        .unwrap_or(CtState::New);
    Packet {
        src: inside(rng, r.src.as_ref()),
        dst: inside(rng, r.dst.as_ref()),
        protocol,
        l4,
        state,
    }
}

fn random(rng: &mut Rng) -> Packet {
    let (src, dst) = (Ipv4Addr::from(rng.u32()), Ipv4Addr::from(rng.u32()));
    let (sport, dport) = (rng.u32() as u16, rng.u32() as u16);
    if rng.chance(50) {
        Packet::tcp(src, sport, dst, dport, CtState::New)
    } else {
        Packet::udp(src, sport, dst, dport, CtState::New)
    }
}

struct Setup {
    policy: Policy,
    aimed: Vec<Packet>,
    random: Vec<Packet>,
}

fn setup(n: usize) -> Setup {
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let rules: Vec<Rule> = (0..n).map(|i| rule(&mut rng, i)).collect();
    let aimed: Vec<Packet> = (0..BATCH)
        .map(|_| {
            let target = rng.range(0, n as u32 - 1) as usize;
            aimed(&mut rng, &rules[target])
        })
        .collect();
    let random: Vec<Packet> = (0..BATCH).map(|_| random(&mut rng)).collect();
    let zones = ["a", "b"]
        .map(|z| Zone {
            name: z.into(),
            interfaces: vec![z.into()],
        })
        .to_vec();
    let pair = ZonePolicy {
        from: FROM,
        to: TO,
        rules,
        default: Action::Drop,
        log_default: false,
    };
    let start = Instant::now();
    let policy = Policy::build(zones, vec![pair]).expect("within the memory limit");
    let built = start.elapsed();
    let mut depth = 0;
    let mut hits = 0;
    for p in aimed.iter().chain(&random) {
        let v = policy.classify(FROM, TO, p);
        assert_eq!(v, policy.classify_linear(FROM, TO, p), "{p:?}");
        if v.rule.index() <= n {
            depth += v.rule.index();
            hits += 1;
        }
    }
    let random_hits = random
        .iter()
        .filter(|p| policy.classify(FROM, TO, p).rule.index() <= n)
        .count();
    eprintln!(
        "{n} rules: built in {built:?}, {:.2} MiB; aimed packets match rule {} on average; \
         {random_hits} of {BATCH} random packets match a rule",
        policy.memory_bytes() as f64 / (1 << 20) as f64,
        depth / hits.max(1),
    );
    Setup {
        policy,
        aimed,
        random,
    }
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(BATCH as u64));
    for n in SIZES {
        let s = setup(n);
        for (kind, packets) in [("aimed", &s.aimed), ("random", &s.random)] {
            group.bench_with_input(
                BenchmarkId::new(format!("bitvector_{kind}"), n),
                packets,
                |b, packets| {
                    b.iter(|| {
                        for p in packets {
                            black_box(s.policy.classify(FROM, TO, black_box(p)));
                        }
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("linear_{kind}"), n),
                packets,
                |b, packets| {
                    b.iter(|| {
                        for p in packets {
                            black_box(s.policy.classify_linear(FROM, TO, black_box(p)));
                        }
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
