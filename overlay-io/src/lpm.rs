//! IPv4 longest-prefix match for routed functions: an immutable DIR-16-8-8 multibit trie.
//!
//! # Design
//!
//! The table is three levels of direct-indexed arrays with fixed strides of 16, 8 and 8 bits,
//! the layout of DPDK's `rte_lpm` (DIR-24-8) with a smaller first level:
//!
//! - level 1: 65536 entries indexed by the top 16 bits of the address (256 KiB, always);
//! - level 2: groups of 256 entries indexed by bits 15..8, one group per level-1 entry
//!   that some prefix longer than /16 falls in;
//! - level 3: groups of 256 entries indexed by bits 7..0, one group per level-2 entry
//!   that some prefix longer than /24 falls in.
//!
//! Every entry is a `u32`: the top bit set means "pointer", and the low 31 bits are then the
//! offset of a 256-entry group in the next level's flat array; the top bit clear means
//! "leaf", and the low 31 bits are the next hop, with [`NO_ROUTE`] meaning none. A lookup is
//! therefore one to three dependent array reads and never compares prefixes: the longest
//! match was decided when the table was built.
//!
//! # Cost
//!
//! - Lookup: one array read when no prefix longer than /16 shares the address's /16, two
//!   when none longer than /24 shares its /24, three otherwise; no prefix comparisons. Level 1
//!   (256 KiB) mostly stays in the L2 cache; on a large table a read of level 2 or 3 is
//!   usually a cache miss. The level walk is the only branching.
//! - Memory: 256 KiB + 1 KiB per level-2 group + 1 KiB per level-3 group, so a tenant table
//!   of ten routes takes 256 to 276 KiB. That is why the first level is 16 bits and not
//!   DPDK's 24 (64 MiB): the router also ships as a small VM image. Large tables pay for
//!   spread: a /17+ route in every /16 costs 64 MiB of level 2, and each /24 holding a /25+
//!   route costs 1 KiB more. The benchmark's one million random prefixes (more spread than a
//!   real BGP table) take 167 MiB: all 65536 level-2 groups and 105619 level-3 groups.
//! - Build: prefixes are inserted shortest first, so a longer prefix simply overwrites the
//!   entries of a shorter one inside its range, and a group created later starts as 256
//!   copies of the leaf it replaces. Each prefix writes `2^(stride end - length)` entries
//!   (at most 65536, for a /0).
//!
//! The table is immutable once built: a reload builds a new [`Lpm`] and swaps it whole
//! (behind `ArcSwap` in the router), so lookups never see a half-updated table and never lock.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The leaf value that means "no route"; next hops must be smaller.
pub const NO_ROUTE: u32 = 0x7fff_ffff;

/// The largest next hop a route may carry.
pub const MAX_NEXT_HOP: u32 = NO_ROUTE - 1;

/// The most groups one level may hold: group offsets (`group * 256`) must fit the 31 bits of
/// an entry. That is 8 GiB of groups, far beyond any real table; level 3 could otherwise
/// structurally reach 2^24 groups.
pub const MAX_GROUPS: usize = 1 << 23;

/// Set in an entry that points to a group of the next level.
const POINTER: u32 = 0x8000_0000;

/// Level 1 is indexed by the top 16 bits of the address.
const L1_ENTRIES: usize = 1 << 16;

/// Levels 2 and 3 are indexed by 8 bits each.
const GROUP_ENTRIES: usize = 1 << 8;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LpmError {
    /// A route's next hop is 2^31 - 1 or more: 2^31 - 1 means "no route" and the top bit
    /// marks group pointers.
    #[error("route {prefix}: next hop {next_hop} is out of range (at most {MAX_NEXT_HOP})")]
    NextHopOutOfRange {
        /// The route's prefix, normalised.
        prefix: Ipv4Network,
        /// The next hop as given.
        next_hop: u32,
    },
    /// The routes need more groups at one level than an entry can address.
    #[error("level {level} needs more than {max} groups")]
    TooManyGroups {
        /// 2 or 3.
        level: u8,
        /// The limit that was reached.
        max: usize,
    },
}

/// An immutable IPv4 longest-prefix-match table from prefixes to next-hop indices.
///
/// Cheap to share: put it in an `Arc` (or `ArcSwap`) and look up from every worker.
#[derive(Clone)]
pub struct Lpm {
    /// Indexed by the top 16 bits. An array type, so that index needs no bounds check.
    l1: Box<[u32; L1_ENTRIES]>,
    /// Level-2 groups, 256 entries each, back to back.
    l2: Vec<u32>,
    /// Level-3 groups, 256 entries each, back to back.
    l3: Vec<u32>,
    /// Distinct prefixes after deduplication.
    routes: usize,
}

impl Lpm {
    /// Build a table from `(prefix, next hop)` routes.
    ///
    /// Host bits set in a prefix are ignored (`10.1.2.3/24` is `10.1.2.0/24`). When the same
    /// prefix appears more than once, the last route wins, as a later line of a config does.
    pub fn build(routes: impl IntoIterator<Item = (Ipv4Network, u32)>) -> Result<Lpm, LpmError> {
        Self::build_with_limit(routes, MAX_GROUPS)
    }

    /// [`Lpm::build`] with a lower group limit, so that tests can reach it.
    fn build_with_limit(
        routes: impl IntoIterator<Item = (Ipv4Network, u32)>,
        max_groups: usize,
    ) -> Result<Lpm, LpmError> {
        // (length, network, next hop), normalised and checked.
        let mut sorted: Vec<(u8, u32, u32)> = Vec::new();
        for (prefix, next_hop) in routes {
            let len = prefix.prefix();
            let net = u32::from(prefix.network());
            if next_hop > MAX_NEXT_HOP {
                return Err(LpmError::NextHopOutOfRange {
                    prefix: normalised(net, len),
                    next_hop,
                });
            }
            sorted.push((len, net, next_hop));
        }
        // Shortest first, so longer prefixes overwrite shorter ones; a stable sort keeps
        // duplicates in input order, so keeping the last of each run makes the last win.
        let mut routes = sorted;
        routes.sort_by_key(|&(len, net, _)| (len, net));
        routes.dedup_by(|later, kept| {
            let same = (later.0, later.1) == (kept.0, kept.1);
            if same {
                kept.2 = later.2;
            }
            same
        });

        let l1: Box<[u32; L1_ENTRIES]> = match vec![NO_ROUTE; L1_ENTRIES].try_into() {
            Ok(l1) => l1,
            Err(_) => unreachable!("the vector has L1_ENTRIES elements"),
        };
        let mut lpm = Lpm {
            l1,
            l2: Vec::new(),
            l3: Vec::new(),
            routes: routes.len(),
        };
        for &(len, net, next_hop) in &routes {
            lpm.insert(len, net, next_hop, max_groups)?;
        }
        lpm.l2.shrink_to_fit();
        lpm.l3.shrink_to_fit();
        Ok(lpm)
    }

    /// Write one route into the entries its prefix covers. Callers insert in ascending
    /// prefix length, so every entry in the range is a leaf (groups at a level are only
    /// made by longer prefixes, which come later) and overwriting it is the LPM rule.
    fn insert(
        &mut self,
        len: u8,
        net: u32,
        next_hop: u32,
        max_groups: usize,
    ) -> Result<(), LpmError> {
        let len = u32::from(len);
        let i1 = (net >> 16) as usize;
        if len <= 16 {
            let span = 1usize << (16 - len);
            fill(&mut self.l1[i1..i1 + span], next_hop);
            return Ok(());
        }
        let base2 = group(&mut self.l1[i1], &mut self.l2, 2, max_groups)?;
        let i2 = base2 + ((net >> 8) & 0xff) as usize;
        if len <= 24 {
            let span = 1usize << (24 - len);
            fill(&mut self.l2[i2..i2 + span], next_hop);
            return Ok(());
        }
        let base3 = group(&mut self.l2[i2], &mut self.l3, 3, max_groups)?;
        let i3 = base3 + (net & 0xff) as usize;
        let span = 1usize << (32 - len);
        fill(&mut self.l3[i3..i3 + span], next_hop);
        Ok(())
    }

    /// The next hop of the longest prefix that contains `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<u32> {
        self.lookup_u32(u32::from(addr))
    }

    /// [`Lpm::lookup`] for an address as a host-order `u32` (`10.0.0.1` is `0x0a00_0001`).
    #[inline]
    pub fn lookup_u32(&self, addr: u32) -> Option<u32> {
        let mut entry = self.l1[(addr >> 16) as usize];
        if entry & POINTER != 0 {
            entry = self.l2[(entry & !POINTER) as usize | ((addr >> 8) & 0xff) as usize];
            if entry & POINTER != 0 {
                entry = self.l3[(entry & !POINTER) as usize | (addr & 0xff) as usize];
            }
        }
        (entry != NO_ROUTE).then_some(entry)
    }

    /// The number of distinct prefixes in the table.
    pub fn len(&self) -> usize {
        self.routes
    }

    /// Whether the table has no routes (every lookup misses).
    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Heap and inline bytes the table holds.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + size_of::<[u32; L1_ENTRIES]>()
            + (self.l2.capacity() + self.l3.capacity()) * size_of::<u32>()
    }
}

impl fmt::Debug for Lpm {
    // The entries themselves (256 KiB and up) would drown any log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lpm")
            .field("routes", &self.routes)
            .field("l2_groups", &(self.l2.len() / GROUP_ENTRIES))
            .field("l3_groups", &(self.l3.len() / GROUP_ENTRIES))
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

/// `net/len` as a network; `net` already has its host bits clear.
fn normalised(net: u32, len: u8) -> Ipv4Network {
    match Ipv4Network::new(Ipv4Addr::from(net), len) {
        Ok(prefix) => prefix,
        Err(_) => unreachable!("the length came from a valid Ipv4Network"),
    }
}

/// Overwrite the leaves of a prefix's range.
fn fill(entries: &mut [u32], next_hop: u32) {
    debug_assert!(
        entries.iter().all(|&e| e & POINTER == 0),
        "a shorter prefix overwrote a group"
    );
    entries.fill(next_hop);
}

/// The offset in `next` of the group under `entry`, created if `entry` is still a leaf. A new
/// group starts as 256 copies of that leaf: the addresses of the group that no longer prefix
/// covers keep the route (or the absence of one) they had.
fn group(
    entry: &mut u32,
    next: &mut Vec<u32>,
    level: u8,
    max_groups: usize,
) -> Result<usize, LpmError> {
    if *entry & POINTER != 0 {
        return Ok((*entry & !POINTER) as usize);
    }
    let base = next.len();
    if base / GROUP_ENTRIES >= max_groups.min(MAX_GROUPS) {
        return Err(LpmError::TooManyGroups {
            level,
            max: max_groups.min(MAX_GROUPS),
        });
    }
    next.resize(base + GROUP_ENTRIES, *entry);
    // Fits 31 bits: base < MAX_GROUPS * 256 = 2^31.
    *entry = POINTER | base as u32;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn at(lpm: &Lpm, addr: &str) -> Option<u32> {
        lpm.lookup(addr.parse().unwrap())
    }

    #[test]
    fn empty_table_misses_everything() {
        let lpm = Lpm::build([]).unwrap();
        assert!(lpm.is_empty());
        assert_eq!(lpm.len(), 0);
        for addr in ["0.0.0.0", "10.1.2.3", "255.255.255.255"] {
            assert_eq!(at(&lpm, addr), None, "{addr}");
        }
    }

    #[test]
    fn default_route_matches_everything() {
        let lpm = Lpm::build([(net("0.0.0.0/0"), 7)]).unwrap();
        for addr in ["0.0.0.0", "10.1.2.3", "128.0.0.0", "255.255.255.255"] {
            assert_eq!(at(&lpm, addr), Some(7), "{addr}");
        }
        // A /0 is a leaf in every level-1 entry: no group needed.
        assert_eq!(lpm.l2.len() + lpm.l3.len(), 0);
    }

    #[test]
    fn nested_prefixes_at_every_boundary() {
        // Given in an order that is not by length, to exercise the sort.
        let lpm = Lpm::build([
            (net("10.1.2.129/32"), 6),
            (net("10.1.2.0/24"), 4),
            (net("0.0.0.0/0"), 1),
            (net("10.1.0.0/16"), 3),
            (net("10.1.2.128/25"), 5),
            (net("10.0.0.0/8"), 2),
        ])
        .unwrap();
        assert_eq!(lpm.len(), 6);
        let cases = [
            // Around 10.0.0.0/8.
            ("9.255.255.255", 1),
            ("10.0.0.0", 2),
            ("10.0.255.255", 2),
            ("10.255.255.255", 2),
            ("11.0.0.0", 1),
            // Around 10.1.0.0/16.
            ("10.1.0.0", 3),
            ("10.1.1.255", 3),
            ("10.1.3.0", 3),
            ("10.1.255.255", 3),
            ("10.2.0.0", 2),
            // Around 10.1.2.0/24.
            ("10.1.2.0", 4),
            ("10.1.2.127", 4),
            // Around 10.1.2.128/25 and 10.1.2.129/32.
            ("10.1.2.128", 5),
            ("10.1.2.129", 6),
            ("10.1.2.130", 5),
            ("10.1.2.255", 5),
            // Far away.
            ("0.0.0.0", 1),
            ("255.255.255.255", 1),
        ];
        for (addr, want) in cases {
            assert_eq!(at(&lpm, addr), Some(want), "{addr}");
        }
    }

    #[test]
    fn nested_prefixes_without_default_route() {
        let lpm = Lpm::build([
            (net("10.1.2.129/32"), 6),
            (net("10.1.2.128/25"), 5),
            (net("10.1.2.0/24"), 4),
        ])
        .unwrap();
        assert_eq!(at(&lpm, "10.1.1.255"), None);
        assert_eq!(at(&lpm, "10.1.2.0"), Some(4));
        assert_eq!(at(&lpm, "10.1.2.128"), Some(5));
        assert_eq!(at(&lpm, "10.1.2.129"), Some(6));
        assert_eq!(at(&lpm, "10.1.3.0"), None);
        assert_eq!(at(&lpm, "10.1.0.0"), None);
    }

    #[test]
    fn host_route_and_last_address() {
        let lpm = Lpm::build([(net("255.255.255.255/32"), 9), (net("0.0.0.0/32"), 8)]).unwrap();
        assert_eq!(at(&lpm, "255.255.255.255"), Some(9));
        assert_eq!(at(&lpm, "255.255.255.254"), None);
        assert_eq!(at(&lpm, "0.0.0.0"), Some(8));
        assert_eq!(at(&lpm, "0.0.0.1"), None);
    }

    #[test]
    fn same_prefix_twice_last_wins() {
        let lpm = Lpm::build([
            (net("10.1.0.0/16"), 1),
            (net("10.1.2.0/24"), 2),
            (net("10.1.0.0/16"), 3),
            // The same prefix written with host bits is a duplicate too.
            (net("10.1.2.77/24"), 4),
        ])
        .unwrap();
        assert_eq!(lpm.len(), 2);
        assert_eq!(at(&lpm, "10.1.0.1"), Some(3));
        assert_eq!(at(&lpm, "10.1.2.1"), Some(4));
    }

    #[test]
    fn host_bits_are_masked() {
        let lpm = Lpm::build([(net("10.1.2.3/8"), 1), (net("192.168.1.200/30"), 2)]).unwrap();
        assert_eq!(at(&lpm, "10.0.0.0"), Some(1));
        assert_eq!(at(&lpm, "10.255.255.255"), Some(1));
        assert_eq!(at(&lpm, "192.168.1.199"), None);
        assert_eq!(at(&lpm, "192.168.1.200"), Some(2));
        assert_eq!(at(&lpm, "192.168.1.203"), Some(2));
        assert_eq!(at(&lpm, "192.168.1.204"), None);
    }

    #[test]
    fn reserved_next_hops_are_rejected() {
        for next_hop in [NO_ROUTE, POINTER, u32::MAX] {
            let err = Lpm::build([(net("10.1.2.3/24"), next_hop)]).unwrap_err();
            assert_eq!(
                err,
                LpmError::NextHopOutOfRange {
                    prefix: net("10.1.2.0/24"),
                    next_hop
                }
            );
        }
        let lpm = Lpm::build([(net("10.0.0.0/8"), MAX_NEXT_HOP)]).unwrap();
        assert_eq!(at(&lpm, "10.0.0.1"), Some(MAX_NEXT_HOP));
    }

    #[test]
    fn group_limit_is_an_error() {
        let routes = [(net("10.1.0.0/24"), 1), (net("10.2.0.0/24"), 2)];
        assert!(Lpm::build_with_limit(routes, 2).is_ok());
        assert_eq!(
            Lpm::build_with_limit(routes, 1).unwrap_err(),
            LpmError::TooManyGroups { level: 2, max: 1 }
        );
        let routes = [(net("10.1.0.0/25"), 1), (net("10.1.1.0/25"), 2)];
        assert_eq!(
            Lpm::build_with_limit(routes, 1).unwrap_err(),
            LpmError::TooManyGroups { level: 3, max: 1 }
        );
    }

    #[test]
    fn small_table_stays_small() {
        let routes = (0..10u32).map(|i| {
            (
                Ipv4Network::new(
                    Ipv4Addr::from(0x0a00_0000 | (i << 8) | 0x80),
                    25 + i as u8 % 8,
                )
                .unwrap(),
                i,
            )
        });
        let lpm = Lpm::build(routes).unwrap();
        assert_eq!(lpm.len(), 10);
        assert!(lpm.memory_bytes() < 300 * 1024, "{lpm:?}");
    }

    #[test]
    fn shares_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Lpm>();
        let lpm = Arc::new(Lpm::build([(net("10.0.0.0/8"), 1)]).unwrap());
        let other = Arc::clone(&lpm);
        let found = std::thread::spawn(move || other.lookup_u32(0x0a01_0203))
            .join()
            .unwrap();
        assert_eq!(found, Some(1));
        assert!(format!("{lpm:?}").contains("routes: 1"));
    }

    /// The specification: the longest matching prefix among the routes, the last one given
    /// for a duplicated prefix.
    fn naive(routes: &[(Ipv4Network, u32)], addr: u32) -> Option<u32> {
        let mut table = HashMap::new();
        for &(prefix, next_hop) in routes {
            table.insert((u32::from(prefix.network()), prefix.prefix()), next_hop);
        }
        table
            .into_iter()
            .filter(|&((net, len), _)| len == 0 || (addr ^ net) >> (32 - u32::from(len)) == 0)
            .max_by_key(|&((_, len), _)| len)
            .map(|(_, next_hop)| next_hop)
    }

    /// A prefix anywhere, or clustered around 10.1.0.0/22 so that prefixes nest, repeat and
    /// share level-2 and level-3 groups.
    fn route() -> impl Strategy<Value = (Ipv4Network, u32)> {
        (any::<u32>(), any::<bool>(), 0u8..=32, 0u32..1000).prop_map(
            |(bits, clustered, len, next_hop)| {
                let addr = if clustered {
                    0x0a01_0000 | (bits & 0x3ff)
                } else {
                    bits
                };
                (
                    Ipv4Network::new(Ipv4Addr::from(addr), len).unwrap(),
                    next_hop,
                )
            },
        )
    }

    proptest! {
        #[test]
        fn matches_linear_scan(
            routes in prop::collection::vec(route(), 0..200),
            probes in prop::collection::vec((any::<u32>(), any::<Index>(), 0u8..4), 1..64),
        ) {
            let lpm = Lpm::build(routes.iter().copied()).unwrap();
            let distinct: std::collections::HashSet<_> =
                routes.iter().map(|(p, _)| (p.network(), p.prefix())).collect();
            prop_assert_eq!(lpm.len(), distinct.len());
            for (bits, index, kind) in probes {
                let addr = if routes.is_empty() || kind == 0 {
                    bits
                } else {
                    // Inside a route's prefix, or just outside either end of it.
                    let prefix = routes[index.index(routes.len())].0;
                    let first = u32::from(prefix.network());
                    let last = u32::from(prefix.broadcast());
                    match kind {
                        1 => first | (bits & !u32::from(prefix.mask())),
                        2 => first.wrapping_sub(1),
                        _ => last.wrapping_add(1),
                    }
                };
                prop_assert_eq!(lpm.lookup_u32(addr), naive(&routes, addr), "{}", Ipv4Addr::from(addr));
            }
        }
    }
}
