//! ARP for routed functions (RFC 826): the neighbour cache with a bounded queue of packets
//! waiting for an answer, and the frames ARP needs.
//!
//! The cache follows RFC 826's "merge" rule: a request or reply from a sender whose address
//! is already in the table refreshes its MAC; a new entry is created only when we asked
//! ([`ArpCache::resolve`]) or when the packet was for one of our addresses (the caller
//! says so), so an ARP flood for other hosts cannot fill the table. Unanswered requests are
//! retried a few times (RFC 1122 §2.3.2.1: at most one per second per address) and then
//! given up, dropping what waited (`arp_timeout`). Everything is bounded: entries, packets
//! held per address and in all.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::Mac;
use crate::buf::PacketBuf;
use crate::pipeline::DropReason;

/// Limits and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    /// The most entries (resolved and pending).
    pub max_entries: usize,
    /// How long a resolved entry lives without being confirmed by ARP traffic.
    pub reachable: Duration,
    /// Time between two requests for one address.
    pub retry: Duration,
    /// Requests sent before giving up.
    pub max_requests: u8,
    /// Packets held for one unresolved address.
    pub max_held_per_address: usize,
    /// Packets held in all.
    pub max_held: usize,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            max_entries: 4096,
            reachable: Duration::from_secs(300),
            retry: Duration::from_secs(1),
            max_requests: 3,
            max_held_per_address: 4,
            max_held: 256,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Reachable {
        mac: Mac,
        seen: Instant,
    },
    Incomplete {
        requests: u8,
        next: Instant,
        held: usize,
    },
}

/// What to do with a packet whose next hop is an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Send it to this MAC.
    Known(Mac),
    /// Held until the address answers; send an ARP request for it now.
    HeldSendRequest,
    /// Held; a request is already out.
    Held,
    /// Not held: counted under this reason.
    Dropped(DropReason),
}

/// The neighbour cache of one interface set (per worker).
#[derive(Debug)]
pub struct ArpCache {
    cfg: ArpConfig,
    entries: HashMap<Ipv4Addr, State, foldhash::fast::RandomState>,
    held: Vec<PacketBuf>,
    held_for: Vec<Option<Ipv4Addr>>,
    free: Vec<usize>,
}

impl ArpCache {
    /// An empty cache; the buffers for held packets are allocated here, once.
    pub fn new(cfg: ArpConfig) -> ArpCache {
        ArpCache {
            cfg,
            entries: HashMap::default(),
            held: (0..cfg.max_held).map(|_| PacketBuf::new()).collect(),
            held_for: vec![None; cfg.max_held],
            free: (0..cfg.max_held).rev().collect(),
        }
    }

    /// The MAC of an address, if resolved.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<Mac> {
        match self.entries.get(&ip) {
            Some(State::Reachable { mac, .. }) => Some(*mac),
            _ => None,
        }
    }

    /// Entries (resolved and pending).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Packets waiting for an answer.
    pub fn held(&self) -> usize {
        self.cfg.max_held - self.free.len()
    }

    /// Find the MAC for `ip`, or hold a copy of `frame` until it is known.
    pub fn resolve(&mut self, ip: Ipv4Addr, frame: &[u8], now: Instant) -> Resolution {
        let full = self.entries.len() >= self.cfg.max_entries;
        let first_request = match self.entries.get(&ip) {
            Some(State::Reachable { mac, .. }) => return Resolution::Known(*mac),
            Some(State::Incomplete { held, .. }) if *held >= self.cfg.max_held_per_address => {
                return Resolution::Dropped(DropReason::ArpQueueFull);
            }
            Some(State::Incomplete { .. }) => false,
            None if full => return Resolution::Dropped(DropReason::ArpTableFull),
            None => true,
        };
        let Some(slot) = self.free.pop() else {
            return Resolution::Dropped(DropReason::ArpQueueFull);
        };
        self.held[slot].fill(frame);
        self.held_for[slot] = Some(ip);
        if first_request {
            self.entries.insert(
                ip,
                State::Incomplete {
                    requests: 1,
                    next: now + self.cfg.retry,
                    held: 1,
                },
            );
            Resolution::HeldSendRequest
        } else {
            if let Some(State::Incomplete { held, .. }) = self.entries.get_mut(&ip) {
                *held += 1;
            }
            Resolution::Held
        }
    }

    /// An ARP packet from `ip` at `mac`. `for_us`: it was a request for, or a reply to,
    /// one of our addresses, which may create an entry; otherwise only an existing entry is
    /// refreshed (RFC 826 merge). Returns whether held packets became sendable.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: Mac, for_us: bool, now: Instant) -> bool {
        if crate::is_group_mac(&mac) || mac == [0; 6] || ip.is_unspecified() || ip.is_broadcast() {
            return false;
        }
        let room = self.entries.len() < self.cfg.max_entries;
        match self.entries.get_mut(&ip) {
            Some(e @ State::Reachable { .. }) => {
                *e = State::Reachable { mac, seen: now };
                false
            }
            Some(e @ State::Incomplete { .. }) => {
                *e = State::Reachable { mac, seen: now };
                true
            }
            None if for_us && room => {
                self.entries.insert(ip, State::Reachable { mac, seen: now });
                false
            }
            None => false,
        }
    }

    /// Hand every held packet whose address is now resolved to `send(ip, mac, frame)`,
    /// which returns whether it took the packet; a taken packet's buffer is freed, one not
    /// taken (the caller's output queue is full) stays held for the next call.
    pub fn release(&mut self, mut send: impl FnMut(Ipv4Addr, Mac, &mut PacketBuf) -> bool) {
        for slot in 0..self.held.len() {
            let Some(ip) = self.held_for[slot] else {
                continue;
            };
            if let Some(State::Reachable { mac, .. }) = self.entries.get(&ip)
                && send(ip, *mac, &mut self.held[slot])
            {
                self.held_for[slot] = None;
                self.free.push(slot);
            }
        }
    }

    /// Whether a held packet waits for an address that is now resolved.
    pub fn has_releasable(&self) -> bool {
        self.held_for
            .iter()
            .flatten()
            .any(|ip| matches!(self.entries.get(ip), Some(State::Reachable { .. })))
    }

    /// The earliest time [`ArpCache::poll`] has work for: a retry or giving up.
    pub fn next_retry(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|st| match st {
                State::Incomplete { next, .. } => Some(*next),
                State::Reachable { .. } => None,
            })
            .min()
    }

    /// Resolved entries (for the admin endpoint).
    pub fn entries(&self) -> impl Iterator<Item = (Ipv4Addr, Mac)> + '_ {
        self.entries.iter().filter_map(|(ip, st)| match st {
            State::Reachable { mac, .. } => Some((*ip, *mac)),
            State::Incomplete { .. } => None,
        })
    }

    /// Replace the limits (reload). Held packets and entries are kept; a lowered
    /// `max_entries` stops new entries until the table shrinks by ageing.
    pub fn set_config(&mut self, cfg: ArpConfig) {
        let max_held = self.cfg.max_held;
        self.cfg = ArpConfig { max_held, ..cfg };
    }

    /// Run timers: retry requests that are due (`request(ip)` sends one), give up on
    /// addresses that never answered (their packets dropped and returned as a count), and
    /// age resolved entries.
    pub fn poll(&mut self, now: Instant, mut request: impl FnMut(Ipv4Addr)) -> usize {
        let cfg = self.cfg;
        let mut gave_up = Vec::new();
        self.entries.retain(|ip, st| match st {
            State::Reachable { seen, .. } => now.saturating_duration_since(*seen) < cfg.reachable,
            State::Incomplete { requests, next, .. } => {
                if now < *next {
                    true
                } else if *requests < cfg.max_requests {
                    *requests += 1;
                    *next = now + cfg.retry;
                    request(*ip);
                    true
                } else {
                    gave_up.push(*ip);
                    false
                }
            }
        });
        let mut dropped = 0;
        for slot in 0..self.held.len() {
            if let Some(ip) = self.held_for[slot]
                && gave_up.contains(&ip)
            {
                self.held_for[slot] = None;
                self.free.push(slot);
                dropped += 1;
            }
        }
        dropped
    }
}

/// ARP operations (RFC 826).
pub const OP_REQUEST: u16 = 1;
/// ARP reply.
pub const OP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// Request or reply.
    pub op: u16,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Length of an Ethernet/IPv4 ARP packet after the Ethernet header.
pub const ARP_LEN: usize = 28;

impl Arp {
    /// Parse the Ethernet payload of an ARP frame: hardware type 1 (Ethernet), protocol
    /// IPv4, lengths 6 and 4. Anything else is `None`. Never panics.
    pub fn parse(p: &[u8]) -> Option<Arp> {
        if p.len() < ARP_LEN
            || p[0..2] != [0, 1]
            || p[2..4] != [0x08, 0x00]
            || p[4] != 6
            || p[5] != 4
        {
            return None;
        }
        let mac = |r: std::ops::Range<usize>| -> Option<Mac> { p.get(r)?.try_into().ok() };
        let ip = |r: std::ops::Range<usize>| -> Option<Ipv4Addr> {
            let b: [u8; 4] = p.get(r)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        };
        Some(Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sha: mac(8..14)?,
            spa: ip(14..18)?,
            tha: mac(18..24)?,
            tpa: ip(24..28)?,
        })
    }

    /// Write the whole Ethernet frame (destination `eth_dst`, source `sha`) into `buf`.
    pub fn emit(&self, eth_dst: Mac, buf: &mut PacketBuf) {
        let mut f = [0u8; 14 + ARP_LEN];
        f[0..6].copy_from_slice(&eth_dst);
        f[6..12].copy_from_slice(&self.sha);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        let p = &mut f[14..];
        p[0..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 0]);
        p[6..8].copy_from_slice(&self.op.to_be_bytes());
        p[8..14].copy_from_slice(&self.sha);
        p[14..18].copy_from_slice(&self.spa.octets());
        p[18..24].copy_from_slice(&self.tha);
        p[24..28].copy_from_slice(&self.tpa.octets());
        buf.fill(&f);
    }

    /// A broadcast request from `mac`/`ip` for `target`.
    pub fn request(mac: Mac, ip: Ipv4Addr, target: Ipv4Addr) -> Arp {
        Arp {
            op: OP_REQUEST,
            sha: mac,
            spa: ip,
            tha: [0; 6],
            tpa: target,
        }
    }

    /// A gratuitous ARP announcing `mac`/`ip` (RFC 5227 §3: a request whose sender and
    /// target address are both `ip`), sent when an interface comes up so that neighbours
    /// update stale entries.
    pub fn gratuitous(mac: Mac, ip: Ipv4Addr) -> Arp {
        Arp {
            op: OP_REQUEST,
            sha: mac,
            spa: ip,
            tha: [0; 6],
            tpa: ip,
        }
    }

    /// The reply to this request from `mac`, the owner of the target address.
    pub fn reply(&self, mac: Mac) -> Arp {
        Arp {
            op: OP_REPLY,
            sha: mac,
            spa: self.tpa,
            tha: self.sha,
            tpa: self.spa,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const MAC_A: Mac = [2, 0, 0, 0, 0, 1];

    fn small() -> ArpConfig {
        ArpConfig {
            max_entries: 3,
            max_held_per_address: 2,
            max_held: 3,
            ..ArpConfig::default()
        }
    }

    #[test]
    fn hold_request_answer_release() {
        let t0 = Instant::now();
        let mut c = ArpCache::new(small());
        assert_eq!(c.resolve(A, b"one", t0), Resolution::HeldSendRequest);
        assert_eq!(c.resolve(A, b"two", t0), Resolution::Held);
        assert_eq!(
            c.resolve(A, b"three", t0),
            Resolution::Dropped(DropReason::ArpQueueFull)
        );
        assert_eq!(c.held(), 2);
        assert!(c.learn(A, MAC_A, true, t0));
        let mut out = Vec::new();
        c.release(|_, mac, b| {
            out.push((mac, b.bytes().to_vec()));
            true
        });
        out.sort();
        assert_eq!(
            out,
            vec![(MAC_A, b"one".to_vec()), (MAC_A, b"two".to_vec())]
        );
        assert_eq!(c.held(), 0);
        assert_eq!(c.resolve(A, b"four", t0), Resolution::Known(MAC_A));
    }

    #[test]
    fn retries_then_gives_up_and_frees_buffers() {
        let t0 = Instant::now();
        let mut c = ArpCache::new(small());
        c.resolve(B, b"x", t0);
        let mut asked = Vec::new();
        let mut dropped = Vec::new();
        for s in 1..=4 {
            dropped.push(c.poll(t0 + Duration::from_secs(s), |ip| asked.push(ip)));
        }
        assert_eq!(
            asked,
            vec![B, B],
            "two retries after the first request: three in all"
        );
        assert_eq!(
            dropped,
            vec![0, 0, 1, 0],
            "the held packet is dropped when ARP gives up"
        );
        assert_eq!(c.held(), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn floods_for_others_do_not_fill_the_table() {
        let t0 = Instant::now();
        let mut c = ArpCache::new(small());
        for i in 0..100u8 {
            c.learn(Ipv4Addr::new(10, 1, 0, i), [2, 0, 0, 0, 1, i], false, t0);
        }
        assert!(
            c.is_empty(),
            "merge rule: no entry created for traffic not for us"
        );
        for i in 0..100u8 {
            c.learn(Ipv4Addr::new(10, 1, 0, i), [2, 0, 0, 0, 1, i], true, t0);
        }
        assert_eq!(c.len(), 3, "bounded");
        assert_eq!(
            c.resolve(B, b"x", t0),
            Resolution::Dropped(DropReason::ArpTableFull)
        );
    }

    #[test]
    fn entries_age_and_refresh() {
        let t0 = Instant::now();
        let mut c = ArpCache::new(ArpConfig::default());
        c.learn(A, MAC_A, true, t0);
        c.learn(A, [2, 0, 0, 0, 0, 9], false, t0 + Duration::from_secs(200));
        assert_eq!(
            c.lookup(A),
            Some([2, 0, 0, 0, 0, 9]),
            "merge updates the MAC"
        );
        c.poll(t0 + Duration::from_secs(499), |_| {});
        assert!(c.lookup(A).is_some());
        c.poll(t0 + Duration::from_secs(500), |_| {});
        assert!(c.lookup(A).is_none());
    }

    #[test]
    fn frames_round_trip() {
        let req = Arp::request(MAC_A, A, B);
        let mut b = PacketBuf::new();
        req.emit([0xff; 6], &mut b);
        assert_eq!(b.len(), 42);
        assert_eq!(&b.bytes()[0..6], &[0xff; 6]);
        assert_eq!(Arp::parse(&b.bytes()[14..]), Some(req));
        let rep = req.reply([2, 0, 0, 0, 0, 2]);
        assert_eq!((rep.op, rep.spa, rep.tpa, rep.tha), (OP_REPLY, B, A, MAC_A));
        let g = Arp::gratuitous(MAC_A, A);
        assert_eq!(g.spa, g.tpa);
        for n in 0..28 {
            assert!(Arp::parse(&b.bytes()[14..14 + n]).is_none());
        }
    }
}
