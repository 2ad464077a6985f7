//! Longest-prefix-match lookups: `cargo bench -p overlay-io --bench lpm`.
//!
//! - `lpm_1m`: one table of 1,000,000 random IPv4 prefixes with a BGP-like length mix,
//!   in [`overlay_io::lpm::Lpm`] and in `prefix_trie::PrefixMap`, looked up in batches of
//!   1024 addresses drawn from 1M: half uniformly random, half inside random table prefixes.
//! - `lpm_small`: the same for tenant-sized tables of 10 and 1000 prefixes.
//! - `lpm_build`: building the 1M table.
//!
//! `prefix_trie` 0.8 implements its `Prefix` trait for `ipnetwork` 0.20, not the 0.21 this
//! crate uses, so its map is keyed by its built-in `(u32, u8)` prefix: the same trie code,
//! with a cheaper key than `Ipv4Network` (whose `from_repr_len` validates the length).
//!
//! Element throughput is per lookup. The setup prints build times and `memory_bytes()`, and
//! checks that both structures answer the first 10000 addresses alike, so both do the same work.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ipnetwork::Ipv4Network;
use prefix_trie::PrefixMap;

use overlay_io::lpm::Lpm;

const BATCH: usize = 1024;
const ADDRESSES: usize = 1 << 20;

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

/// `n` distinct random prefixes with next hops 0..n.
fn routes(n: usize, seed: u64) -> Vec<(Ipv4Network, u32)> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = bgp_len(&mut rng);
        let net = rng.u32() & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let prefix = Ipv4Network::new(Ipv4Addr::from(net), len).expect("length <= 32");
        if seen.insert(prefix) {
            out.push((prefix, out.len() as u32));
        }
    }
    out
}

/// Lookup addresses: half uniformly random, half inside a random route's prefix.
fn addresses(routes: &[(Ipv4Network, u32)], n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            if rng.next() & 1 == 0 {
                rng.u32()
            } else {
                let prefix = routes[rng.u32() as usize % routes.len()].0;
                u32::from(prefix.network()) | (rng.u32() & !u32::from(prefix.mask()))
            }
        })
        .collect()
}

/// Both structures over the same routes, with the lookup addresses, checked to agree.
struct Tables {
    lpm: Lpm,
    trie: PrefixMap<(u32, u8), u32>,
    addrs: Vec<u32>,
    /// The same addresses as /32 prefixes, the key `PrefixMap::get_lpm` takes, made in advance
    /// so its lookups are not charged for building them.
    nets: Vec<(u32, u8)>,
}

fn tables(n: usize, seed: u64) -> Tables {
    let routes = routes(n, seed);

    let start = Instant::now();
    let lpm = Lpm::build(routes.iter().copied()).expect("next hops are below 2^31 - 1");
    let lpm_build = start.elapsed();

    let start = Instant::now();
    let mut trie = PrefixMap::new();
    for &(prefix, next_hop) in &routes {
        trie.insert((u32::from(prefix.network()), prefix.prefix()), next_hop);
    }
    let trie_build = start.elapsed();

    let addrs = addresses(&routes, ADDRESSES, seed ^ 0x9e37_79b9_7f4a_7c15);
    let nets: Vec<(u32, u8)> = addrs.iter().map(|&a| (a, 32)).collect();
    for (&addr, net) in addrs.iter().zip(&nets).take(10_000) {
        let theirs = trie.get_lpm(net).map(|(_, &next_hop)| next_hop);
        assert_eq!(lpm.lookup_u32(addr), theirs, "{}", Ipv4Addr::from(addr));
    }
    let hits = addrs
        .iter()
        .filter(|&&a| lpm.lookup_u32(a).is_some())
        .count();
    println!(
        "lpm {n} prefixes: {lpm:?}; build {lpm_build:.2?} (prefix-trie {trie_build:.2?}); \
         {:.1} MiB; {:.1}% of lookup addresses match",
        lpm.memory_bytes() as f64 / (1 << 20) as f64,
        100.0 * hits as f64 / addrs.len() as f64,
    );
    Tables {
        lpm,
        trie,
        addrs,
        nets,
    }
}

/// Benchmark both structures on `t` in `group`, with `param` as the id's parameter, if any.
fn lookups(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    t: &Tables,
    param: Option<usize>,
) {
    let id = |name: &str| match param {
        Some(n) => BenchmarkId::new(name, n),
        None => BenchmarkId::from_parameter(name),
    };
    group.throughput(Throughput::Elements(BATCH as u64));

    // Walk the address list a batch at a time, so the caches see a stream of fresh
    // addresses as a router does, not the same 1024 again and again.
    let mut at = 0;
    group.bench_function(id("overlay_io_lpm"), |b| {
        b.iter(|| {
            let batch = &t.addrs[at..at + BATCH];
            at = (at + BATCH) % t.addrs.len();
            let mut sum = 0u64;
            for &addr in batch {
                sum += u64::from(t.lpm.lookup_u32(black_box(addr)).unwrap_or(0));
            }
            black_box(sum)
        })
    });

    let mut at = 0;
    group.bench_function(id("prefix_trie"), |b| {
        b.iter(|| {
            let batch = &t.nets[at..at + BATCH];
            at = (at + BATCH) % t.nets.len();
            let mut sum = 0u64;
            for net in batch {
                sum += u64::from(
                    t.trie
                        .get_lpm(black_box(net))
                        .map_or(0, |(_, &next_hop)| next_hop),
                );
            }
            black_box(sum)
        })
    });
}

fn lpm_1m(c: &mut Criterion) {
    let t = tables(1_000_000, 0x5eed_0001);
    let mut group = c.benchmark_group("lpm_1m");
    lookups(&mut group, &t, None);
    group.finish();
}

fn lpm_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("lpm_small");
    for n in [10, 1000] {
        let t = tables(n, 0x5eed_0002 + n as u64);
        lookups(&mut group, &t, Some(n));
    }
    group.finish();
}

fn lpm_build(c: &mut Criterion) {
    let routes = routes(1_000_000, 0x5eed_0001);
    let mut group = c.benchmark_group("lpm_build");
    // A build takes a good fraction of a second: one build per sample.
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(routes.len() as u64));
    group.bench_function("overlay_io_lpm_1m", |b| {
        b.iter(|| Lpm::build(black_box(&routes).iter().copied()).expect("valid routes"))
    });
    group.finish();
}

criterion_group!(benches, lpm_1m, lpm_small, lpm_build);
criterion_main!(benches);
