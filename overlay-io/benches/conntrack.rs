//! Connection tracking cost: `cargo bench -p overlay-io --bench conntrack`.
//!
//! - `established_100k`: `lookup` of a data segment (100 bytes) of an established TCP
//!   connection, 100,000 established connections in the table, in random order; the packets
//!   are parsed beforehand. Each is the connection's last segment again, so the full window
//!   check and update run every time (as for a retransmission).
//! - `established_1k`: the same with 1024 connections, all in cache: the cost of the code
//!   without the cache misses.
//! - `parse_and_lookup_100k`: the same from the raw IPv4 bytes: `ipv4::parse`,
//!   `Packet::parse`, `lookup`.
//! - `new_100k`: a new connection next to 100,000 established ones: the SYN's `lookup`
//!   (a miss), `commit`, then `remove` to stay at 100,000.
//! - `new_early_drop_100k`: the same in a table capped at 100,000 and full of half-open
//!   connections (a SYN flood): each `commit` drops the oldest.
//!
//! Element throughput is per packet, in batches of 1024. The setup prints the table's memory
//! per connection.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use overlay_io::conntrack::{
    ConnId, Conntrack, CtConfig, CtState, IPPROTO_TCP, Key, L4, Packet, TcpSegment,
};
use overlay_io::ipv4;

const CONNS: u32 = 100_000;
const BATCH: usize = 1024;
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

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

/// Client `n`: address 10.0.0.0 plus its high 16 bits, port its low 16 bits.
fn client(n: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(0x0a00_0000 | n >> 16), n as u16)
}

fn segment(n: u32, reply: bool, flags: u8, seq: u32, ack: u32, payload: u16) -> Packet {
    let (c, port) = client(n);
    let (src, dst, sport, dport) = if reply {
        (SERVER, c, 443, port)
    } else {
        (c, SERVER, port, 443)
    };
    Packet {
        key: Key {
            proto: IPPROTO_TCP,
            src,
            dst,
            sport,
            dport,
        },
        l4: L4::Tcp(TcpSegment {
            flags,
            seq,
            ack,
            window: 1024,
            wscale: (flags & TcpSegment::SYN != 0).then_some(7),
        }),
        fragment: false,
        len: 40 + payload,
        payload_len: payload,
    }
}

/// The raw IPv4 bytes of `p` (a TCP segment without options).
fn bytes(p: &Packet) -> Vec<u8> {
    let L4::Tcp(seg) = p.l4 else {
        unreachable!("TCP only")
    };
    let mut b = vec![0u8; usize::from(p.len)];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&p.len.to_be_bytes());
    b[8] = 64;
    b[9] = IPPROTO_TCP;
    b[12..16].copy_from_slice(&p.key.src.octets());
    b[16..20].copy_from_slice(&p.key.dst.octets());
    let c = ipv4::checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[20..22].copy_from_slice(&p.key.sport.to_be_bytes());
    b[22..24].copy_from_slice(&p.key.dport.to_be_bytes());
    b[24..28].copy_from_slice(&seg.seq.to_be_bytes());
    b[28..32].copy_from_slice(&seg.ack.to_be_bytes());
    b[32] = 0x50;
    b[33] = seg.flags;
    b[34..36].copy_from_slice(&seg.window.to_be_bytes());
    b
}

/// `conns` established connections, each having sent one 100-byte segment; returns the
/// table and that segment of each.
fn established(conns: u32, now: Instant) -> (Conntrack, Vec<Packet>) {
    let mut ct = Conntrack::new(CtConfig::default());
    let mut data = Vec::with_capacity(conns as usize);
    const ACK: u8 = TcpSegment::ACK;
    for n in 0..conns {
        let (a, b) = (n.wrapping_mul(2_654_435_761), n.wrapping_mul(40_503));
        let syn = segment(n, false, TcpSegment::SYN, a, 0, 0);
        assert_eq!(ct.lookup(&syn, now).state, CtState::New);
        ct.commit(&syn, n % 64, 1, now).expect("room");
        let synack = segment(n, true, TcpSegment::SYN | ACK, b, a.wrapping_add(1), 0);
        ct.lookup(&synack, now);
        ct.lookup(
            &segment(n, false, ACK, a.wrapping_add(1), b.wrapping_add(1), 0),
            now,
        );
        let seg = segment(
            n,
            false,
            ACK | TcpSegment::PSH,
            a.wrapping_add(1),
            b.wrapping_add(1),
            100,
        );
        // The same segment again (what the benches send) passes as a retransmission.
        for _ in 0..2 {
            assert_eq!(ct.lookup(&seg, now).state, CtState::Established);
        }
        data.push(seg);
    }
    (ct, data)
}

fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut v = v.to_vec();
    let mut rng = Rng(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    v
}

fn conntrack(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(BATCH as u64));

    // The cost without cache misses: the whole table (about 150 KB) stays in cache.
    let (mut small, data) = established(BATCH as u32, now);
    let order = shuffled(&data, 0x5eed_0004);
    g.bench_function("established_1k", |b| {
        b.iter(|| {
            let mut n = 0;
            for p in &order {
                n += usize::from(small.lookup(black_box(p), now).state == CtState::Established);
            }
            black_box(n)
        })
    });
    drop(small);

    let (mut ct, data) = established(CONNS, now);
    println!(
        "conntrack: {} connections, {} bytes, {:.1} bytes per connection",
        ct.len(),
        ct.memory_bytes(),
        ct.memory_bytes() as f64 / ct.len() as f64
    );
    let order = shuffled(&data, 0x5eed_0003);
    let raw: Vec<Vec<u8>> = order.iter().map(bytes).collect();
    let mut at = 0;
    g.bench_function("established_100k", |b| {
        b.iter(|| {
            let mut n = 0;
            for p in &order[at..at + BATCH] {
                n += usize::from(ct.lookup(black_box(p), now).state == CtState::Established);
            }
            at = (at + BATCH) % (order.len() - BATCH);
            black_box(n)
        })
    });

    let mut at = 0;
    g.bench_function("parse_and_lookup_100k", |b| {
        b.iter(|| {
            let mut n = 0;
            for bytes in &raw[at..at + BATCH] {
                let Ok(hdr) = ipv4::parse(black_box(bytes)) else {
                    continue;
                };
                let p = Packet::parse(bytes, &hdr);
                n += usize::from(ct.lookup(&p, now).state == CtState::Established);
            }
            at = (at + BATCH) % (raw.len() - BATCH);
            black_box(n)
        })
    });

    let mut next = CONNS;
    g.bench_function("new_100k", |b| {
        b.iter(|| {
            let mut ids = [None::<ConnId>; BATCH];
            for id in &mut ids {
                let syn = segment(next, false, TcpSegment::SYN, next, 0, 0);
                next = next.wrapping_add(1);
                if ct.lookup(black_box(&syn), now).conn.is_none() {
                    *id = ct.commit(&syn, 0, 2, now).ok();
                }
            }
            for id in ids.into_iter().flatten() {
                ct.remove(id);
            }
        })
    });
    assert_eq!(ct.len(), CONNS as usize);
    drop(ct);

    let mut flood = Conntrack::new(CtConfig {
        max_conns: CONNS as usize,
        ..CtConfig::default()
    });
    for n in 0..CONNS {
        let syn = segment(n, false, TcpSegment::SYN, n, 0, 0);
        flood.commit(&syn, 0, 2, now).expect("room");
    }
    let mut next = CONNS;
    g.bench_function("new_early_drop_100k", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let syn = segment(next, false, TcpSegment::SYN, next, 0, 0);
                next = next.wrapping_add(1);
                if flood.lookup(black_box(&syn), now).conn.is_none() {
                    black_box(flood.commit(&syn, 0, 2, now).ok());
                }
            }
        })
    });
    assert_eq!(flood.len(), CONNS as usize);
    println!(
        "conntrack: early drops {} in a table of {} ({:.1} bytes per connection)",
        flood.stats().early_drops,
        flood.len(),
        flood.memory_bytes() as f64 / flood.len() as f64
    );
    g.finish();
}

criterion_group!(benches, conntrack);
criterion_main!(benches);
