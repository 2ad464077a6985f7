//! Maglev table builds and lookups: `cargo bench -p vnf-lb --bench maglev`.
//!
//! - `maglev_build`: building a [`DEFAULT_TABLE_SIZE`] table for 10, 100 and 1000 backends
//!   of equal weight, and for 100 backends with weights 1..=100 (more rounds).
//! - `maglev_lookup`: [`MaglevTable::lookup`] of a batch of 1024 precomputed flow hashes
//!   (100 backends), and [`flow_hash`] + lookup of 1024 IPv4 and IPv6 5-tuples. Element
//!   throughput is per flow.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use vnf_lb::maglev::{DEFAULT_TABLE_SIZE, MaglevTable, flow_hash};

const BATCH: usize = 1024;

/// xorshift64*: deterministic, good enough for test data, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 62500, i / 250 % 250, i % 250 + 1))
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(20);
    for n in [10, 100, 1000] {
        let owned = names(n);
        let backends: Vec<(&str, u32)> = owned.iter().map(|s| (s.as_str(), 1)).collect();
        group.bench_with_input(BenchmarkId::new("equal", n), &backends, |b, backends| {
            b.iter(|| MaglevTable::build(black_box(backends), DEFAULT_TABLE_SIZE))
        });
    }
    let owned = names(100);
    let weighted: Vec<(&str, u32)> = owned
        .iter()
        .zip(1..)
        .map(|(s, w)| (s.as_str(), w))
        .collect();
    group.bench_with_input(
        BenchmarkId::new("weights_1_to_n", 100),
        &weighted,
        |b, backends| b.iter(|| MaglevTable::build(black_box(backends), DEFAULT_TABLE_SIZE)),
    );
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let owned = names(100);
    let backends: Vec<(&str, u32)> = owned.iter().map(|s| (s.as_str(), 1)).collect();
    let Ok(table) = MaglevTable::build(&backends, DEFAULT_TABLE_SIZE) else {
        panic!("the benchmark pool builds");
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let hashes: Vec<u64> = (0..BATCH).map(|_| rng.next()).collect();
    let v4: Vec<(IpAddr, u16)> = (0..BATCH)
        .map(|_| (Ipv4Addr::from(rng.next() as u32).into(), rng.next() as u16))
        .collect();
    let v6: Vec<(IpAddr, u16)> = (0..BATCH)
        .map(|_| {
            (
                Ipv6Addr::from(u128::from(rng.next()) << 64 | 1).into(),
                rng.next() as u16,
            )
        })
        .collect();
    let vip4: IpAddr = Ipv4Addr::new(198, 51, 100, 10).into();
    let vip6: IpAddr = "2001:db8::10"
        .parse::<Ipv6Addr>()
        .map_or(vip4, IpAddr::from);

    let mut group = c.benchmark_group("maglev_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("lookup", |b| {
        b.iter(|| {
            let mut sum = 0usize;
            for &h in black_box(&hashes) {
                sum = sum.wrapping_add(table.lookup(h).unwrap_or(0));
            }
            sum
        })
    });
    for (name, flows, vip) in [
        ("flow_hash_lookup_v4", &v4, vip4),
        ("flow_hash_lookup_v6", &v6, vip6),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0usize;
                for &(src, sport) in black_box(flows) {
                    let h = flow_hash(src, sport, vip, 443, 6);
                    sum = sum.wrapping_add(table.lookup(h).unwrap_or(0));
                }
                sum
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
