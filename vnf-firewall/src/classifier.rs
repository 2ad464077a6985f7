//! The firewall's packet classifier: zones, zone-pair policies of ordered rules, and the
//! first rule that matches a packet, found without testing the rules one by one.
//!
//! # Design
//!
//! A [`Policy`] holds the zones (sets of interfaces) and, for every zone pair that has a
//! policy, one [`Classifier`] over that pair's ordered rules. The pair is found in a dense
//! `zones x zones` matrix, one read.
//!
//! A [`Classifier`] is the bit-vector scheme of Lakshman and Stiliadis ("High-speed
//! policy-based packet forwarding using efficient multi-dimensional range matching",
//! SIGCOMM 1998), with the aggregated bit vectors of Baboescu and Varghese ("Scalable packet
//! classification", SIGCOMM 2001). A packet is seen as five fields:
//!
//! - source address and destination address (32 bits each);
//! - a source transport key and a destination transport key: the TCP/UDP port, or for ICMP
//!   the type (source side) and the code (destination side), or "no transport header"; the
//!   three kinds are disjoint ranges of one 17-bit key space, so a port rule can never match
//!   an ICMP packet whatever its numbers;
//! - protocol and connection state together (256 x 4 values).
//!
//! For each field, the values every rule names (prefixes, port ranges, ICMP numbers) cut the
//! field's key space into elementary intervals, and every key of an interval is matched by
//! exactly the same rules. Each interval points at the bit set of those rules (bit `i` is
//! rule `i`). Classifying a packet finds its interval in each field, ANDs the five bit sets,
//! and the lowest set bit is the first matching rule: rule order is bit order, so "first
//! match wins" costs nothing extra.
//!
//! Equal bit sets are stored once (intervals of different fields share them too), and a field
//! that no rule restricts is left out of the AND altogether. In front of every bit set of `W`
//! words sits its aggregate: `ceil(W / 64)` words whose bit `j` says "word `j` is not zero".
//! The aggregates are ANDed first, and only words whose aggregate bit survives are read, in
//! order, so a packet that matches no rule, or only late ones, skips the words of the rules
//! that cannot match it.
//!
//! # Cost
//!
//! With `N` rules in a zone pair, `W = ceil(N / 64)` bit-set words, `A = ceil(W / 64)`
//! aggregate words, `F <= 5` fields that some rule restricts, and `K_f` intervals in field
//! `f` (`K_f <= 2 R_f + 1` for `R_f` distinct prefixes or ranges named in it):
//!
//! - A new flow (a packet that conntrack does not already know): one matrix read for the
//!   zone pair; a binary search of `ceil(log2 K_f)` probes in each address and transport
//!   field (at most 15 probes per field at 10000 distinct values); one read of the
//!   protocol x state table; then `F` reads per aggregate word and `F` reads per candidate
//!   word until the first word whose AND is not zero. When the first match is among the first
//!   64 rules that is `2 F` words. The worst case (aggregates that do not prune, no
//!   match) is `F (A + W)` words, about `F N / 64`: 800 sequential 8-byte reads at 10000 rules
//!   and 5 fields, against 10000 rule tests for a linear scan. Nothing is hashed, allocated
//!   or locked. `benches/classifier.rs` measures about 25 ns per packet at 10 rules and
//!   100 ns at 10000, where a linear scan takes 30 us (match halfway) to 70 us (no match).
//! - An established flow is meant to cost one conntrack lookup and no classification (the
//!   firewall's conntrack is not built yet): the verdict of its first packet holds for the
//!   rest of it. The classifier sees a packet only when conntrack does not decide it (new,
//!   related, invalid), or when a reload re-checks existing flows against the new rules.
//!   Either way nothing here depends on the number of zones.
//! - Memory: each distinct bit set takes `(W + A) * 8` bytes, and there are at most
//!   `sum_f K_f + 4 (P + 1)` of them, `P` being the distinct protocols named; plus 8 bytes per
//!   interval and 4 KiB per zone pair for the protocol x state table. That is quadratic in
//!   the worst case (about `N^2` bytes for `N` rules that all name distinct prefixes and
//!   ports in every field), which is the price of the bit-vector scheme; sharing equal sets
//!   makes real policies, where most rules leave most fields open, far smaller: the
//!   benchmark's 10000 random rules, each naming a destination prefix and half a source
//!   prefix, take 26 MiB (1000 take 0.35 MiB). A build that would exceed
//!   [`MAX_TABLE_BYTES`] fails instead of exhausting memory.
//! - Build: a sweep over each field's sorted range ends, `O(E log E + K W)` for `E` range
//!   ends, plus a hash of each interval's bit set to share equal ones.
//!
//! Everything here is immutable once built: a reload builds a new [`Policy`] and swaps it
//! whole, so classification never locks and never sees half a policy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnetwork::Ipv4Network;

/// The most bytes of bit sets one [`Classifier`] may take; a bigger rule set is an error.
pub const MAX_TABLE_BYTES: usize = 1 << 30;

/// The most zones a [`Policy`] may have: [`ZoneId`] is 16 bits and the pair matrix of 256
/// zones is already 256 KiB.
pub const MAX_ZONES: usize = 256;

/// IP protocol numbers the rules name by name.
pub mod proto {
    /// ICMP (RFC 792).
    pub const ICMP: u8 = 1;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
}

/// The transport key space: TCP/UDP ports, then ICMP values, then "no transport header".
const ICMP_KEY: u32 = 1 << 16;
const NO_L4_KEY: u32 = ICMP_KEY + 256;
const L4_KEYS_END: u64 = NO_L4_KEY as u64 + 1;
const ADDR_KEYS_END: u64 = 1 << 32;

/// Entries of the protocol x state table.
const PROTO_STATES: usize = 256 * 4;

/// A packet's state as connection tracking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtState {
    /// The first packet of a flow conntrack does not know yet.
    New = 0,
    /// A packet of a flow that conntrack has seen both ways (or accepted).
    Established = 1,
    /// A packet that belongs to a known flow without being part of it: an ICMP error about
    /// it.
    Related = 2,
    /// A packet that fits no flow and cannot start one (a TCP segment without SYN, an ICMP
    /// error about nothing known).
    Invalid = 3,
}

impl CtState {
    /// Every state, in order.
    pub const ALL: [CtState; 4] = [
        CtState::New,
        CtState::Established,
        CtState::Related,
        CtState::Invalid,
    ];

    /// The name in configs and labels: `new`, `established`, `related`, `invalid`.
    pub const fn name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
        }
    }

    /// The state named `name` (as [`CtState::name`] writes it).
    pub fn from_name(name: &str) -> Option<CtState> {
        CtState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A set of [`CtState`]s, one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateSet(u8);

impl StateSet {
    /// Every state: what a rule without `state` matches.
    pub const ANY: StateSet = StateSet(0b1111);
    /// No state: a rule with it matches nothing.
    pub const NONE: StateSet = StateSet(0);
    /// Every state but invalid: what a configured rule without `state` matches.
    pub const VALID: StateSet = StateSet(0b0111);

    /// This set and `state`.
    pub const fn with(self, state: CtState) -> StateSet {
        StateSet(self.0 | 1 << state as u8)
    }

    /// Whether `state` is in the set.
    pub const fn contains(self, state: CtState) -> bool {
        self.0 & 1 << state as u8 != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<CtState> for StateSet {
    fn from_iter<I: IntoIterator<Item = CtState>>(states: I) -> Self {
        states.into_iter().fold(StateSet::NONE, StateSet::with)
    }
}

impl fmt::Debug for StateSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                CtState::ALL
                    .iter()
                    .filter(|s| self.contains(**s))
                    .map(|s| s.name()),
            )
            .finish()
    }
}

/// What the firewall does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through (and, for a new flow, create its conntrack entry).
    Accept,
    /// Drop it silently.
    Drop,
    /// Drop it and tell the sender: a TCP RST for TCP, else ICMP destination unreachable,
    /// communication administratively prohibited (type 3 code 13, RFC 1812 §5.2.7.1).
    Reject,
}

impl Action {
    /// The name in configs and labels: `accept`, `drop`, `reject`.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Drop => "drop",
            Action::Reject => "reject",
        }
    }

    /// The action named `name` (as [`Action::name`] writes it).
    pub fn from_name(name: &str) -> Option<Action> {
        [Action::Accept, Action::Drop, Action::Reject]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// The transport header fields a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP or UDP ports.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// An ICMP message's type and code.
    Icmp {
        /// Type (8 is echo request).
        ty: u8,
        /// Code.
        code: u8,
    },
    /// No transport header was read: another protocol, a later fragment, or a header cut
    /// short. Rules with ports or ICMP numbers do not match it.
    None,
}

/// What the classifier looks at in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Ports or ICMP type and code.
    pub l4: L4,
    /// Connection-tracking state.
    pub state: CtState,
}

impl Packet {
    /// A TCP segment.
    pub const fn tcp(
        src: Ipv4Addr,
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
        state: CtState,
    ) -> Packet {
        Packet {
            src,
            dst,
            protocol: proto::TCP,
            l4: L4::Ports {
                src: src_port,
                dst: dst_port,
            },
            state,
        }
    }

    /// A UDP datagram.
    pub const fn udp(
        src: Ipv4Addr,
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
        state: CtState,
    ) -> Packet {
        Packet {
            src,
            dst,
            protocol: proto::UDP,
            l4: L4::Ports {
                src: src_port,
                dst: dst_port,
            },
            state,
        }
    }

    /// An ICMP message.
    pub const fn icmp(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, state: CtState) -> Packet {
        Packet {
            src,
            dst,
            protocol: proto::ICMP,
            l4: L4::Icmp { ty, code },
            state,
        }
    }

    /// The source and destination transport keys (see the module docs).
    fn l4_keys(&self) -> (u32, u32) {
        match self.l4 {
            L4::Ports { src, dst } => (u32::from(src), u32::from(dst)),
            L4::Icmp { ty, code } => (ICMP_KEY + u32::from(ty), ICMP_KEY + u32::from(code)),
            L4::None => (NO_L4_KEY, NO_L4_KEY),
        }
    }
}

/// One rule, typed. Every condition must hold for the rule to match; a condition that is
/// `None` holds for every packet, and an empty list holds for none (an empty address set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name (the `rule` metric label), unique in its zone pair.
    pub name: String,
    /// Source prefixes, any of which may hold the source address.
    pub src: Option<Vec<Ipv4Network>>,
    /// Destination prefixes.
    pub dst: Option<Vec<Ipv4Network>>,
    /// The IP protocol.
    pub protocol: Option<u8>,
    /// Source port ranges; only a packet with ports ([`L4::Ports`]) can match them.
    pub src_ports: Option<Vec<RangeInclusive<u16>>>,
    /// Destination port ranges.
    pub dst_ports: Option<Vec<RangeInclusive<u16>>>,
    /// The ICMP type; only an ICMP packet ([`L4::Icmp`]) can match it.
    pub icmp_type: Option<u8>,
    /// The ICMP code.
    pub icmp_code: Option<u8>,
    /// The conntrack states matched.
    pub states: StateSet,
    /// What to do with a matching packet.
    pub action: Action,
    /// Whether to log matching packets.
    pub log: bool,
}

impl Rule {
    /// A rule that matches every packet; set conditions with struct update syntax.
    pub fn new(name: impl Into<String>, action: Action) -> Rule {
        Rule {
            name: name.into(),
            src: None,
            dst: None,
            protocol: None,
            src_ports: None,
            dst_ports: None,
            icmp_type: None,
            icmp_code: None,
            states: StateSet::ANY,
            action,
            log: false,
        }
    }

    /// Whether the rule matches `p`: the specification that [`Classifier`] implements fast,
    /// tested here one condition after another.
    pub fn matches(&self, p: &Packet) -> bool {
        fn addr_ok(nets: &Option<Vec<Ipv4Network>>, a: Ipv4Addr) -> bool {
            nets.as_ref()
                .is_none_or(|n| n.iter().any(|n| n.contains(a)))
        }
        fn ports_ok(ranges: &Option<Vec<RangeInclusive<u16>>>, port: Option<u16>) -> bool {
            ranges
                .as_ref()
                .is_none_or(|r| port.is_some_and(|port| r.iter().any(|r| r.contains(&port))))
        }
        fn icmp_ok(want: Option<u8>, got: Option<u8>) -> bool {
            want.is_none_or(|w| got == Some(w))
        }
        let (sport, dport, ty, code) = match p.l4 {
            L4::Ports { src, dst } => (Some(src), Some(dst), None, None),
            L4::Icmp { ty, code } => (None, None, Some(ty), Some(code)),
            L4::None => (None, None, None, None),
        };
        addr_ok(&self.src, p.src)
            && addr_ok(&self.dst, p.dst)
            && self.protocol.is_none_or(|x| x == p.protocol)
            && ports_ok(&self.src_ports, sport)
            && ports_ok(&self.dst_ports, dport)
            && icmp_ok(self.icmp_type, ty)
            && icmp_ok(self.icmp_code, code)
            && self.states.contains(p.state)
    }

    /// The key ranges, half-open, this rule accepts in a transport field; `None` for any.
    fn l4_ranges(
        ports: &Option<Vec<RangeInclusive<u16>>>,
        icmp: Option<u8>,
    ) -> Option<Vec<(u64, u64)>> {
        match (ports, icmp) {
            (None, None) => None,
            (Some(ports), None) => Some(
                ports
                    .iter()
                    .map(|r| (u64::from(*r.start()), u64::from(*r.end()) + 1))
                    .collect(),
            ),
            (None, Some(v)) => {
                let key = u64::from(ICMP_KEY) + u64::from(v);
                Some(vec![(key, key + 1)])
            }
            // A packet has ports or ICMP numbers, never both: nothing matches.
            (Some(_), Some(_)) => Some(Vec::new()),
        }
    }

    /// The address ranges, half-open, of `nets`; `None` for any.
    fn addr_ranges(nets: &Option<Vec<Ipv4Network>>) -> Option<Vec<(u64, u64)>> {
        nets.as_ref().map(|nets| {
            nets.iter()
                .map(|n| {
                    (
                        u64::from(u32::from(n.network())),
                        u64::from(u32::from(n.broadcast())) + 1,
                    )
                })
                .collect()
        })
    }
}

/// Why a classifier could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifierError {
    /// The rules' bit sets would take more memory than the limit: the bit-vector scheme costs
    /// about `N^2` bytes for `N` rules that all name distinct values.
    #[error(
        "the {rules} rules need more than {limit} bytes of classifier tables; use fewer rules or more address sets and port ranges in common"
    )]
    TooLarge {
        /// Rules in the list.
        rules: usize,
        /// The limit that was reached.
        limit: usize,
    },
}

/// One address or transport field: the elementary intervals of its key space and the bit
/// set of each.
#[derive(Clone, Default)]
struct Intervals {
    /// The first key of every interval but the first (which starts at 0), ascending.
    bounds: Vec<u32>,
    /// The offset in the pool of each interval's bit set: one more than `bounds`.
    sets: Vec<u32>,
}

impl Intervals {
    /// The pool offset of the bit set of the interval holding `key`.
    #[inline]
    fn set_of(&self, key: u32) -> usize {
        let i = self.bounds.partition_point(|&b| b <= key);
        // `sets` has one entry per interval, so `i <= bounds.len() < sets.len()`.
        self.sets.get(i).copied().unwrap_or(0) as usize
    }
}

/// The ordered rules of one zone pair, compiled for first-match lookup (see the module docs).
#[derive(Clone)]
pub struct Classifier {
    /// Rules compiled.
    rules: usize,
    /// Words of a bit set (`ceil(rules / 64)`).
    words: usize,
    /// Aggregate words in front of each bit set (`ceil(words / 64)`).
    aggs: usize,
    /// Source, destination, source transport key, destination transport key; `None` when no
    /// rule restricts the field.
    fields: [Option<Intervals>; 4],
    /// Bit-set offsets by `protocol << 2 | state`; `None` when every rule matches any
    /// protocol in any state.
    proto_state: Option<Box<[u32; PROTO_STATES]>>,
    /// Distinct bit sets back to back, each `aggs` aggregate words then `words` words.
    pool: Vec<u64>,
}

impl Classifier {
    /// Compile `rules`, in order: on a packet that several match, the first wins.
    pub fn build(rules: &[Rule]) -> Result<Classifier, ClassifierError> {
        Self::build_with_limit(rules, MAX_TABLE_BYTES)
    }

    /// [`Classifier::build`] with a lower memory limit, so that tests can reach it.
    fn build_with_limit(rules: &[Rule], limit: usize) -> Result<Classifier, ClassifierError> {
        let words = rules.len().div_ceil(64);
        let mut pool = Pool {
            words,
            aggs: words.div_ceil(64),
            pool: Vec::new(),
            by_hash: HashMap::new(),
            limit: limit.min(MAX_TABLE_BYTES),
            rules: rules.len(),
        };
        let src: Vec<_> = rules.iter().map(|r| Rule::addr_ranges(&r.src)).collect();
        let dst: Vec<_> = rules.iter().map(|r| Rule::addr_ranges(&r.dst)).collect();
        let sport: Vec<_> = rules
            .iter()
            .map(|r| Rule::l4_ranges(&r.src_ports, r.icmp_type))
            .collect();
        let dport: Vec<_> = rules
            .iter()
            .map(|r| Rule::l4_ranges(&r.dst_ports, r.icmp_code))
            .collect();
        let fields = [
            intervals(&mut pool, &src, ADDR_KEYS_END)?,
            intervals(&mut pool, &dst, ADDR_KEYS_END)?,
            intervals(&mut pool, &sport, L4_KEYS_END)?,
            intervals(&mut pool, &dport, L4_KEYS_END)?,
        ];
        let proto_state = proto_state(&mut pool, rules)?;
        pool.pool.shrink_to_fit();
        Ok(Classifier {
            rules: rules.len(),
            words: pool.words,
            aggs: pool.aggs,
            fields,
            proto_state,
            pool: pool.pool,
        })
    }

    /// The index of the first rule that matches `p`, if any.
    #[inline]
    pub fn classify(&self, p: &Packet) -> Option<usize> {
        if self.rules == 0 {
            return None;
        }
        let stride = self.aggs + self.words;
        let (sport, dport) = p.l4_keys();
        let keys = [u32::from(p.src), u32::from(p.dst), sport, dport];
        // Every offset a field or the table holds came from `Pool::intern`, which stored
        // `stride` words there, so these slices are in bounds; indexing rather than `get`
        // is measurably faster on this path (no fallback to carry through the AND).
        let mut sets: [&[u64]; 5] = [&[]; 5];
        let mut n = 0;
        for (field, key) in self.fields.iter().zip(keys) {
            if let Some(field) = field {
                let at = field.set_of(key);
                sets[n] = &self.pool[at..at + stride];
                n += 1;
            }
        }
        if let Some(table) = &self.proto_state {
            let at = table[usize::from(p.protocol) << 2 | p.state as usize] as usize;
            sets[n] = &self.pool[at..at + stride];
            n += 1;
        }
        first_match(&sets[..n], self.aggs)
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether there are no rules (every packet misses).
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// Heap and inline bytes the classifier holds.
    pub fn memory_bytes(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .flatten()
            .map(|f| (f.bounds.capacity() + f.sets.capacity()) * size_of::<u32>())
            .sum();
        let table = self
            .proto_state
            .as_ref()
            .map_or(0, |_| size_of::<[u32; PROTO_STATES]>());
        size_of::<Self>() + fields + table + self.pool.capacity() * size_of::<u64>()
    }

    /// Distinct bit sets stored.
    fn sets(&self) -> usize {
        self.pool.len() / (self.aggs + self.words).max(1)
    }
}

impl fmt::Debug for Classifier {
    // The bit sets themselves (megabytes on big rule sets) would drown any log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let intervals = self
            .fields
            .each_ref()
            .map(|f| f.as_ref().map_or(0, |f| f.sets.len()));
        f.debug_struct("Classifier")
            .field("rules", &self.rules)
            .field("intervals", &intervals)
            .field("proto_state", &self.proto_state.is_some())
            .field("bit_sets", &self.sets())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

/// The lowest bit set in the AND of `sets`: each `aggs` aggregate words then the words.
/// With no set at all no field restricts any rule, so the first rule matches.
///
/// Aggregate bits exist only for words that exist (`Pool::intern` sets them from the words),
/// so a surviving candidate `w` is always below the word count and `aggs + w` in bounds.
#[inline]
fn first_match(sets: &[&[u64]], aggs: usize) -> Option<usize> {
    if sets.is_empty() {
        return Some(0);
    }
    for a in 0..aggs {
        let mut candidates = sets.iter().fold(!0u64, |m, s| m & s[a]);
        while candidates != 0 {
            let w = a * 64 + candidates.trailing_zeros() as usize;
            let bits = sets.iter().fold(!0u64, |m, s| m & s[aggs + w]);
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            // The aggregates said "maybe": each field has some rule in this word, but no
            // rule is in all of them.
            candidates &= candidates - 1;
        }
    }
    None
}

/// The bit sets of a classifier being built, each stored once.
struct Pool {
    words: usize,
    aggs: usize,
    pool: Vec<u64>,
    /// Offsets of the stored sets by a hash of their words.
    by_hash: HashMap<u64, Vec<u32>>,
    limit: usize,
    rules: usize,
}

impl Pool {
    /// The offset of `bits` in the pool, stored now if no equal set is.
    fn intern(&mut self, bits: &[u64]) -> Result<u32, ClassifierError> {
        let stride = self.aggs + self.words;
        let mut h = DefaultHasher::new();
        bits.hash(&mut h);
        let same = self.by_hash.entry(h.finish()).or_default();
        for &at in same.iter() {
            let at = at as usize;
            if self.pool.get(at + self.aggs..at + stride) == Some(bits) {
                return Ok(at as u32);
            }
        }
        if (self.pool.len() + stride) * size_of::<u64>() > self.limit {
            return Err(ClassifierError::TooLarge {
                rules: self.rules,
                limit: self.limit,
            });
        }
        // Fits 32 bits: the limit keeps the pool under 2^30 bytes.
        let at = self.pool.len() as u32;
        let agg_at = self.pool.len();
        self.pool.resize(agg_at + self.aggs, 0);
        for (j, w) in bits.iter().enumerate() {
            if *w != 0 {
                self.pool[agg_at + j / 64] |= 1 << (j % 64);
            }
        }
        self.pool.extend_from_slice(bits);
        same.push(at);
        Ok(at)
    }
}

/// The elementary intervals of one field, where `ranges[i]` holds rule `i`'s half-open key
/// ranges (`None`: every key) in a key space of `0..end`. `None` if no rule restricts it.
fn intervals(
    pool: &mut Pool,
    ranges: &[Option<Vec<(u64, u64)>>],
    end: u64,
) -> Result<Option<Intervals>, ClassifierError> {
    if ranges.iter().all(Option::is_none) {
        return Ok(None);
    }
    // Sweep the key space from 0 up: at each range end the set of rules changes, and between
    // two ends it does not. A rule may name overlapping ranges (10.0.0.0/8 and 10.1.0.0/16),
    // so it counts how many of its ranges cover the current key.
    let mut bits = vec![0u64; pool.words];
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (rule, list) in ranges.iter().enumerate() {
        match list {
            None => bits[rule / 64] |= 1 << (rule % 64),
            Some(list) => {
                for &(lo, hi) in list {
                    if lo < hi {
                        events.push((lo, true, rule));
                        if hi < end {
                            events.push((hi, false, rule));
                        }
                    }
                }
            }
        }
    }
    events.sort_unstable();
    let mut covering = vec![0u32; ranges.len()];
    let mut out = Intervals::default();
    let mut point = 0u64;
    let mut next = 0;
    loop {
        while let Some(&(_, start, rule)) = events.get(next).filter(|e| e.0 == point) {
            // Every change at this point lands before the interval from it is stored, so
            // a rule whose range ends where another of its ranges starts stays set.
            if start {
                covering[rule] += 1;
                bits[rule / 64] |= 1 << (rule % 64);
            } else {
                covering[rule] -= 1;
                if covering[rule] == 0 {
                    bits[rule / 64] &= !(1 << (rule % 64));
                }
            }
            next += 1;
        }
        let set = pool.intern(&bits)?;
        // Neighbours with the same rules are one interval: fewer probes per lookup.
        if out.sets.last() != Some(&set) {
            if !out.sets.is_empty() {
                // Below `end <= 2^32`.
                out.bounds.push(point as u32);
            }
            out.sets.push(set);
        }
        match events.get(next) {
            Some(&(p, _, _)) => point = p,
            None => break,
        }
    }
    out.bounds.shrink_to_fit();
    out.sets.shrink_to_fit();
    Ok(Some(out))
}

/// The protocol x state table: one bit set per protocol that some rule names and state, and
/// one per state for every other protocol. `None` if no rule restricts either.
fn proto_state(
    pool: &mut Pool,
    rules: &[Rule],
) -> Result<Option<Box<[u32; PROTO_STATES]>>, ClassifierError> {
    if rules
        .iter()
        .all(|r| r.protocol.is_none() && r.states == StateSet::ANY)
    {
        return Ok(None);
    }
    let named: BTreeSet<u8> = rules.iter().filter_map(|r| r.protocol).collect();
    let mut set_for = |protocol: Option<u8>, state: CtState| {
        let mut bits = vec![0u64; pool.words];
        for (i, r) in rules.iter().enumerate() {
            if r.protocol.is_none_or(|p| Some(p) == protocol) && r.states.contains(state) {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        pool.intern(&bits)
    };
    let mut other = [0u32; 4];
    for state in CtState::ALL {
        other[state as usize] = set_for(None, state)?;
    }
    let mut mine: BTreeMap<u8, [u32; 4]> = BTreeMap::new();
    for &p in &named {
        let mut sets = [0u32; 4];
        for state in CtState::ALL {
            sets[state as usize] = set_for(Some(p), state)?;
        }
        mine.insert(p, sets);
    }
    let mut table = Box::new([0u32; PROTO_STATES]);
    for (i, entry) in table.iter_mut().enumerate() {
        let sets = mine.get(&((i >> 2) as u8)).unwrap_or(&other);
        *entry = sets[i & 3];
    }
    Ok(Some(table))
}

/// A zone: the interfaces whose traffic it names. An index into [`Policy::zones`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneId(pub u16);

/// A zone's name and interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Name (the `from` and `to` metric labels).
    pub name: String,
    /// Interface names; an interface is in at most one zone.
    pub interfaces: Vec<String>,
}

/// The policy of one zone pair, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePolicy {
    /// Where packets come in.
    pub from: ZoneId,
    /// Where they go out.
    pub to: ZoneId,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
    /// What to do with a packet no rule matches.
    pub default: Action,
    /// Whether to log packets no rule matches.
    pub log_default: bool,
}

/// A rule, a pair's default or the implicit drop of pairs without a policy: a dense index
/// for per-rule counters, `0..Policy::rules().len()`. Stable for one [`Policy`]; a reload
/// that adds or removes rules renumbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u32);

impl RuleId {
    /// The implicit drop of a zone pair without a policy, or of an unknown zone.
    pub const NO_POLICY: RuleId = RuleId(0);

    /// As an index into [`Policy::rules`] or a counter array.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// What [`RuleInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// A configured rule.
    Rule,
    /// A zone pair's default action.
    Default,
    /// The implicit drop of pairs without a policy ([`RuleId::NO_POLICY`]).
    NoPolicy,
}

/// A rule id's labels and verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// The source zone's name; empty for [`RuleKind::NoPolicy`].
    pub from: String,
    /// The destination zone's name; empty for [`RuleKind::NoPolicy`].
    pub to: String,
    /// The rule's name; `default` for a pair's default, `no-policy` for the implicit drop.
    pub name: String,
    /// What it is.
    pub kind: RuleKind,
    /// Its action.
    pub action: Action,
    /// Whether its packets are logged.
    pub log: bool,
}

/// The classifier's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Which rule (or default) decided.
    pub rule: RuleId,
    /// What to do.
    pub action: Action,
    /// Whether to log the packet.
    pub log: bool,
}

/// Why a [`Policy`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// More zones than [`MAX_ZONES`].
    #[error("{zones} zones: at most {MAX_ZONES}")]
    TooManyZones {
        /// Zones given.
        zones: usize,
    },
    /// An interface is listed in two zones, or twice in one.
    #[error("interface `{interface}` is in zones {first} and {second}")]
    InterfaceInTwoZones {
        /// The interface.
        interface: String,
        /// The zone index it was first listed in.
        first: usize,
        /// The zone index it was listed in again.
        second: usize,
    },
    /// A policy names a zone index that does not exist.
    #[error("policy {policy} names zone {zone}, which does not exist")]
    UnknownZone {
        /// The policy's index.
        policy: usize,
        /// The zone index.
        zone: u16,
    },
    /// Two policies for one zone pair.
    #[error("policy {policy} is for the same zone pair as policy {first}")]
    PairRepeated {
        /// The later policy's index.
        policy: usize,
        /// The earlier one.
        first: usize,
    },
    /// A policy's rules did not compile.
    #[error("policy {policy}: {source}")]
    Classifier {
        /// The policy's index.
        policy: usize,
        /// Why.
        source: ClassifierError,
    },
}

/// No policy in a matrix cell.
const NO_PAIR: u32 = u32::MAX;

/// One zone pair's compiled policy.
#[derive(Debug, Clone)]
struct Pair {
    from: ZoneId,
    to: ZoneId,
    rules: Vec<Rule>,
    classifier: Classifier,
    /// The id of rule 0; rule `i` is `first + i`.
    first: u32,
    /// The id of the default.
    default: u32,
}

/// Zones and zone-pair policies compiled for classification: see the module docs.
#[derive(Clone)]
pub struct Policy {
    zones: Vec<Zone>,
    /// Interface name -> zone.
    interfaces: BTreeMap<String, ZoneId>,
    /// `zones x zones` pair indices, row `from`, column `to`; [`NO_PAIR`] where none.
    matrix: Vec<u32>,
    pairs: Vec<Pair>,
    /// By rule id.
    rules: Vec<RuleInfo>,
    /// By rule id: the hot path reads only this.
    verdicts: Vec<Verdict>,
}

impl fmt::Debug for Policy {
    // Thousands of typed rules would drown any log line; `pair_rules` has them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("zones", &self.zones.len())
            .field("interfaces", &self.interfaces.len())
            .field(
                "pairs",
                &self
                    .pairs
                    .iter()
                    .map(|p| (p.from.0, p.to.0, &p.classifier))
                    .collect::<Vec<_>>(),
            )
            .field("rule_ids", &self.rules.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

impl Default for Policy {
    /// No zones: every packet meets the implicit drop.
    fn default() -> Self {
        Policy {
            zones: Vec::new(),
            interfaces: BTreeMap::new(),
            matrix: Vec::new(),
            pairs: Vec::new(),
            rules: vec![no_policy_info()],
            verdicts: vec![NO_POLICY_VERDICT],
        }
    }
}

const NO_POLICY_VERDICT: Verdict = Verdict {
    rule: RuleId::NO_POLICY,
    action: Action::Drop,
    log: false,
};

fn no_policy_info() -> RuleInfo {
    RuleInfo {
        from: String::new(),
        to: String::new(),
        name: "no-policy".into(),
        kind: RuleKind::NoPolicy,
        action: Action::Drop,
        log: false,
    }
}

impl Policy {
    /// Compile zones and policies. Rule ids: 0 is the implicit drop, then each policy's
    /// rules in order followed by its default, policy after policy.
    pub fn build(zones: Vec<Zone>, policies: Vec<ZonePolicy>) -> Result<Policy, PolicyError> {
        if zones.len() > MAX_ZONES {
            return Err(PolicyError::TooManyZones { zones: zones.len() });
        }
        let mut interfaces: BTreeMap<String, ZoneId> = BTreeMap::new();
        for (z, zone) in zones.iter().enumerate() {
            for name in &zone.interfaces {
                if let Some(first) = interfaces.insert(name.clone(), ZoneId(z as u16)) {
                    return Err(PolicyError::InterfaceInTwoZones {
                        interface: name.clone(),
                        first: usize::from(first.0),
                        second: z,
                    });
                }
            }
        }
        let n = zones.len();
        let mut policy = Policy {
            matrix: vec![NO_PAIR; n * n],
            interfaces,
            ..Policy::default()
        };
        for (i, p) in policies.into_iter().enumerate() {
            let cell = match (
                zones.get(usize::from(p.from.0)),
                zones.get(usize::from(p.to.0)),
            ) {
                (Some(_), Some(_)) => usize::from(p.from.0) * n + usize::from(p.to.0),
                (None, _) => {
                    return Err(PolicyError::UnknownZone {
                        policy: i,
                        zone: p.from.0,
                    });
                }
                (_, None) => {
                    return Err(PolicyError::UnknownZone {
                        policy: i,
                        zone: p.to.0,
                    });
                }
            };
            if policy.matrix[cell] != NO_PAIR {
                return Err(PolicyError::PairRepeated {
                    policy: i,
                    first: policy.matrix[cell] as usize,
                });
            }
            let classifier = Classifier::build(&p.rules)
                .map_err(|source| PolicyError::Classifier { policy: i, source })?;
            let (from, to) = (
                &zones[usize::from(p.from.0)].name,
                &zones[usize::from(p.to.0)].name,
            );
            let first = policy.rules.len() as u32;
            for r in &p.rules {
                policy.push(RuleInfo {
                    from: from.clone(),
                    to: to.clone(),
                    name: r.name.clone(),
                    kind: RuleKind::Rule,
                    action: r.action,
                    log: r.log,
                });
            }
            let default = policy.rules.len() as u32;
            policy.push(RuleInfo {
                from: from.clone(),
                to: to.clone(),
                name: "default".into(),
                kind: RuleKind::Default,
                action: p.default,
                log: p.log_default,
            });
            policy.matrix[cell] = policy.pairs.len() as u32;
            policy.pairs.push(Pair {
                from: p.from,
                to: p.to,
                rules: p.rules,
                classifier,
                first,
                default,
            });
        }
        policy.zones = zones;
        Ok(policy)
    }

    fn push(&mut self, info: RuleInfo) {
        self.verdicts.push(Verdict {
            rule: RuleId(self.rules.len() as u32),
            action: info.action,
            log: info.log,
        });
        self.rules.push(info);
    }

    /// The verdict on `p` going from zone `from` to zone `to`: the first matching rule of the
    /// pair's policy, else its default; the implicit drop ([`RuleId::NO_POLICY`]) when the
    /// pair has no policy or a zone does not exist.
    #[inline]
    pub fn classify(&self, from: ZoneId, to: ZoneId, p: &Packet) -> Verdict {
        let Some(pair) = self.pair(from, to) else {
            return NO_POLICY_VERDICT;
        };
        let id = match pair.classifier.classify(p) {
            Some(i) => pair.first as usize + i,
            None => pair.default as usize,
        };
        self.verdicts.get(id).copied().unwrap_or(NO_POLICY_VERDICT)
    }

    /// [`Policy::classify`] by testing the pair's rules one by one: the specification, for
    /// tests and benchmarks. Linear in the number of rules.
    pub fn classify_linear(&self, from: ZoneId, to: ZoneId, p: &Packet) -> Verdict {
        let Some(pair) = self.pair(from, to) else {
            return NO_POLICY_VERDICT;
        };
        let id = match pair.rules.iter().position(|r| r.matches(p)) {
            Some(i) => pair.first as usize + i,
            None => pair.default as usize,
        };
        self.verdicts.get(id).copied().unwrap_or(NO_POLICY_VERDICT)
    }

    #[inline]
    fn pair(&self, from: ZoneId, to: ZoneId) -> Option<&Pair> {
        let n = self.zones.len();
        let (from, to) = (usize::from(from.0), usize::from(to.0));
        if from >= n || to >= n {
            return None;
        }
        let i = *self.matrix.get(from * n + to)?;
        self.pairs.get(i as usize)
    }

    /// The zone of the interface named `name`, if it is in one.
    pub fn zone_of_interface(&self, name: &str) -> Option<ZoneId> {
        self.interfaces.get(name).copied()
    }

    /// The zone named `name`.
    pub fn zone(&self, name: &str) -> Option<ZoneId> {
        self.zones
            .iter()
            .position(|z| z.name == name)
            .map(|i| ZoneId(i as u16))
    }

    /// Every zone, indexed by [`ZoneId`].
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Every rule id's labels and verdict, indexed by [`RuleId::index`]; its length is the
    /// number of counters to allocate.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// The typed rules of the pair `from -> to`, in order, if it has a policy.
    pub fn pair_rules(&self, from: ZoneId, to: ZoneId) -> Option<&[Rule]> {
        self.pair(from, to).map(|p| p.rules.as_slice())
    }

    /// Every zone pair with a policy, in the order given.
    pub fn pairs(&self) -> impl Iterator<Item = (ZoneId, ZoneId)> + '_ {
        self.pairs.iter().map(|p| (p.from, p.to))
    }

    /// Heap and inline bytes of the compiled classifiers and the zone matrix (not of the
    /// names and typed rules kept for labels).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.matrix.capacity() * size_of::<u32>()
            + self.verdicts.capacity() * size_of::<Verdict>()
            + self
                .pairs
                .iter()
                .map(|p| p.classifier.memory_bytes())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
        Packet::tcp(ip(src), 40000, ip(dst), dport, CtState::New)
    }

    /// Build, and check every probe against the linear scan as well as against `want`.
    fn check(rules: &[Rule], probes: &[(Packet, Option<usize>)]) {
        let c = Classifier::build(rules).unwrap();
        for (p, want) in probes {
            let linear = rules.iter().position(|r| r.matches(p));
            assert_eq!(linear, *want, "linear scan on {p:?}");
            assert_eq!(c.classify(p), *want, "classifier on {p:?}\n{c:?}");
        }
    }

    #[test]
    fn no_rules_match_nothing() {
        let c = Classifier::build(&[]).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.classify(&tcp("10.0.0.1", "10.0.0.2", 80)), None);
    }

    #[test]
    fn unrestricted_rule_matches_everything() {
        let rules = [Rule::new("all", Action::Accept)];
        let c = Classifier::build(&rules).unwrap();
        // No field restricts anything: no table at all.
        assert!(c.fields.iter().all(Option::is_none) && c.proto_state.is_none());
        check(
            &rules,
            &[
                (tcp("10.0.0.1", "10.0.0.2", 80), Some(0)),
                (
                    Packet {
                        protocol: 47,
                        l4: L4::None,
                        state: CtState::Invalid,
                        ..tcp("0.0.0.0", "255.255.255.255", 0)
                    },
                    Some(0),
                ),
            ],
        );
    }

    #[test]
    fn source_and_destination_prefixes() {
        let rules = [
            Rule {
                src: Some(vec![net("10.1.0.0/16"), net("192.0.2.7/32")]),
                ..Rule::new("src", Action::Accept)
            },
            Rule {
                dst: Some(vec![net("203.0.113.0/24")]),
                ..Rule::new("dst", Action::Drop)
            },
            Rule {
                src: Some(vec![net("0.0.0.0/0")]),
                dst: Some(vec![net("255.255.255.255/32")]),
                ..Rule::new("bcast", Action::Drop)
            },
        ];
        check(
            &rules,
            &[
                (tcp("10.1.0.0", "1.1.1.1", 1), Some(0)),
                (tcp("10.1.255.255", "1.1.1.1", 1), Some(0)),
                (tcp("10.0.255.255", "1.1.1.1", 1), None),
                (tcp("10.2.0.0", "1.1.1.1", 1), None),
                (tcp("192.0.2.7", "1.1.1.1", 1), Some(0)),
                (tcp("192.0.2.6", "1.1.1.1", 1), None),
                (tcp("192.0.2.8", "1.1.1.1", 1), None),
                (tcp("192.0.2.8", "203.0.113.0", 1), Some(1)),
                (tcp("192.0.2.8", "203.0.113.255", 1), Some(1)),
                (tcp("192.0.2.8", "203.0.114.0", 1), None),
                // Both rule 0 and rule 1 match: the first wins.
                (tcp("10.1.2.3", "203.0.113.9", 1), Some(0)),
                (tcp("1.2.3.4", "255.255.255.255", 1), Some(2)),
                (tcp("1.2.3.4", "255.255.255.254", 1), None),
            ],
        );
    }

    #[test]
    fn overlapping_prefixes_in_one_rule() {
        // The /16 ends inside the /8: the rule must still match after it.
        let rules = [Rule {
            dst: Some(vec![net("10.0.0.0/8"), net("10.1.0.0/16")]),
            ..Rule::new("r", Action::Accept)
        }];
        check(
            &rules,
            &[
                (tcp("1.1.1.1", "10.1.0.0", 1), Some(0)),
                (tcp("1.1.1.1", "10.2.0.0", 1), Some(0)),
                (tcp("1.1.1.1", "10.255.255.255", 1), Some(0)),
                (tcp("1.1.1.1", "11.0.0.0", 1), None),
            ],
        );
    }

    #[test]
    fn empty_address_list_matches_nothing() {
        let rules = [
            Rule {
                src: Some(Vec::new()),
                ..Rule::new("empty-set", Action::Drop)
            },
            Rule::new("all", Action::Accept),
        ];
        check(&rules, &[(tcp("10.0.0.1", "10.0.0.2", 80), Some(1))]);
    }

    #[test]
    fn protocols() {
        let rules = [
            Rule {
                protocol: Some(proto::UDP),
                ..Rule::new("udp", Action::Accept)
            },
            Rule {
                protocol: Some(47),
                ..Rule::new("gre", Action::Accept)
            },
        ];
        let gre = Packet {
            protocol: 47,
            l4: L4::None,
            ..tcp("1.1.1.1", "2.2.2.2", 0)
        };
        check(
            &rules,
            &[
                (
                    Packet::udp(ip("1.1.1.1"), 1, ip("2.2.2.2"), 53, CtState::New),
                    Some(0),
                ),
                (gre, Some(1)),
                (tcp("1.1.1.1", "2.2.2.2", 53), None),
                (
                    Packet::icmp(ip("1.1.1.1"), ip("2.2.2.2"), 8, 0, CtState::New),
                    None,
                ),
            ],
        );
    }

    #[test]
    fn port_ranges() {
        let rules = [
            Rule {
                protocol: Some(proto::TCP),
                dst_ports: Some(vec![80..=80, 8000..=8099]),
                ..Rule::new("web", Action::Accept)
            },
            Rule {
                protocol: Some(proto::TCP),
                src_ports: Some(vec![0..=1023]),
                ..Rule::new("low-src", Action::Drop)
            },
            Rule {
                protocol: Some(proto::UDP),
                dst_ports: Some(vec![65535..=65535]),
                ..Rule::new("top", Action::Drop)
            },
        ];
        let from = |sport: u16, dport: u16| {
            Packet::tcp(ip("1.1.1.1"), sport, ip("2.2.2.2"), dport, CtState::New)
        };
        check(
            &rules,
            &[
                (from(40000, 80), Some(0)),
                (from(40000, 79), None),
                (from(40000, 81), None),
                (from(40000, 7999), None),
                (from(40000, 8000), Some(0)),
                (from(40000, 8099), Some(0)),
                (from(40000, 8100), None),
                (from(1023, 81), Some(1)),
                (from(1024, 81), None),
                (from(0, 80), Some(0)),
                (
                    Packet::udp(ip("1.1.1.1"), 1, ip("2.2.2.2"), 65535, CtState::New),
                    Some(2),
                ),
                // The same protocol number without ports read (a later fragment).
                (
                    Packet {
                        l4: L4::None,
                        ..from(40000, 80)
                    },
                    None,
                ),
            ],
        );
    }

    #[test]
    fn icmp_type_and_code() {
        let rules = [
            Rule {
                protocol: Some(proto::ICMP),
                icmp_type: Some(8),
                ..Rule::new("echo", Action::Accept)
            },
            Rule {
                protocol: Some(proto::ICMP),
                icmp_type: Some(3),
                icmp_code: Some(4),
                ..Rule::new("frag-needed", Action::Accept)
            },
            Rule {
                icmp_code: Some(0),
                ..Rule::new("code-0", Action::Drop)
            },
        ];
        let icmp = |ty, code| Packet::icmp(ip("1.1.1.1"), ip("2.2.2.2"), ty, code, CtState::New);
        check(
            &rules,
            &[
                (icmp(8, 0), Some(0)),
                (icmp(8, 1), Some(0)),
                (icmp(3, 4), Some(1)),
                (icmp(3, 3), None),
                (icmp(0, 0), Some(2)),
                // Port 8 and port 0 are not ICMP type 8 and code 0.
                (
                    Packet {
                        protocol: proto::ICMP,
                        ..Packet::tcp(ip("1.1.1.1"), 8, ip("2.2.2.2"), 0, CtState::New)
                    },
                    None,
                ),
            ],
        );
    }

    #[test]
    fn ports_and_icmp_in_one_rule_match_nothing() {
        let rules = [Rule {
            dst_ports: Some(vec![0..=65535]),
            icmp_code: Some(0),
            ..Rule::new("never", Action::Drop)
        }];
        check(
            &rules,
            &[
                (tcp("1.1.1.1", "2.2.2.2", 0), None),
                (
                    Packet::icmp(ip("1.1.1.1"), ip("2.2.2.2"), 0, 0, CtState::New),
                    None,
                ),
            ],
        );
    }

    #[test]
    fn states() {
        let rules = [
            Rule {
                states: StateSet::NONE
                    .with(CtState::Established)
                    .with(CtState::Related),
                ..Rule::new("est", Action::Accept)
            },
            Rule {
                states: [CtState::Invalid].into_iter().collect(),
                ..Rule::new("invalid", Action::Drop)
            },
            Rule {
                protocol: Some(proto::TCP),
                states: StateSet::NONE.with(CtState::New),
                ..Rule::new("tcp-new", Action::Accept)
            },
        ];
        let with = |state| Packet::tcp(ip("1.1.1.1"), 1, ip("2.2.2.2"), 2, state);
        check(
            &rules,
            &[
                (with(CtState::Established), Some(0)),
                (with(CtState::Related), Some(0)),
                (with(CtState::Invalid), Some(1)),
                (with(CtState::New), Some(2)),
                (
                    Packet::udp(ip("1.1.1.1"), 1, ip("2.2.2.2"), 2, CtState::New),
                    None,
                ),
            ],
        );
        assert_eq!(
            format!("{:?}", rules[0].states),
            r#"{"established", "related"}"#
        );
    }

    #[test]
    fn first_match_wins_in_rule_order() {
        // Every rule matches the probe; each prefix of the list answers its first rule.
        let all: Vec<Rule> = (0..200)
            .map(|i| Rule {
                dst: Some(vec![net("10.0.0.0/8")]),
                dst_ports: (i % 2 == 0).then(|| vec![80..=80]),
                ..Rule::new(format!("r{i}"), Action::Accept)
            })
            .collect();
        let p = tcp("1.1.1.1", "10.9.9.9", 80);
        for skip in [0, 1, 63, 64, 65, 127, 128, 199] {
            let c = Classifier::build(&all[skip..]).unwrap();
            assert_eq!(c.classify(&p), Some(0), "from rule {skip}");
        }
        // Rules that cannot match come first: the answer is the first that can.
        let mut rules: Vec<Rule> = (0..150)
            .map(|i| Rule {
                dst: Some(vec![net("192.168.0.0/16")]),
                ..Rule::new(format!("miss{i}"), Action::Drop)
            })
            .collect();
        rules.extend(all.iter().take(3).cloned());
        check(&rules, &[(p, Some(150))]);
    }

    #[test]
    fn more_than_one_aggregate_word() {
        // 5000 rules need 79 words and two aggregate words; each rule matches one host.
        let rules: Vec<Rule> = (0..5000u32)
            .map(|i| Rule {
                dst: Some(vec![
                    Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + i), 32).unwrap(),
                ]),
                dst_ports: Some(vec![(i % 100) as u16..=(i % 100) as u16 + 10]),
                ..Rule::new(format!("r{i}"), Action::Accept)
            })
            .collect();
        let c = Classifier::build(&rules).unwrap();
        assert_eq!((c.words, c.aggs), (79, 2));
        for i in [0u32, 63, 64, 4095, 4096, 4500, 4999] {
            let host = Ipv4Addr::from(0x0a00_0000 + i);
            let hit = Packet::tcp(ip("1.1.1.1"), 1, host, (i % 100) as u16 + 5, CtState::New);
            assert_eq!(c.classify(&hit), Some(i as usize));
            let miss = Packet::tcp(ip("1.1.1.1"), 1, host, (i % 100) as u16 + 11, CtState::New);
            assert_eq!(c.classify(&miss), None);
        }
        assert_eq!(c.classify(&tcp("1.1.1.1", "10.0.19.136", 5)), None);
    }

    #[test]
    fn equal_bit_sets_are_stored_once() {
        // 100 rules on the same destination: two distinct sets for the destination (all
        // rules, none), one for the unrestricted protocol x state (all rules).
        let rules: Vec<Rule> = (0..100)
            .map(|i| Rule {
                dst: Some(vec![net("10.0.0.0/24")]),
                states: StateSet::NONE.with(CtState::New),
                ..Rule::new(format!("r{i}"), Action::Accept)
            })
            .collect();
        let c = Classifier::build(&rules).unwrap();
        // All rules, no rule (also the other states), and nothing else.
        assert_eq!(c.sets(), 2, "{c:?}");
        assert_eq!(c.fields[1].as_ref().map(|f| f.bounds.len()), Some(2));
    }

    #[test]
    fn memory_limit_is_an_error() {
        let rules: Vec<Rule> = (0..1000u32)
            .map(|i| Rule {
                dst: Some(vec![Ipv4Network::new(Ipv4Addr::from(i << 8), 24).unwrap()]),
                ..Rule::new(format!("r{i}"), Action::Accept)
            })
            .collect();
        let c = Classifier::build(&rules).unwrap();
        assert!(c.memory_bytes() > 64 * 1024, "{c:?}");
        assert_eq!(
            Classifier::build_with_limit(&rules, 64 * 1024).unwrap_err(),
            ClassifierError::TooLarge {
                rules: 1000,
                limit: 64 * 1024
            }
        );
    }

    fn zones(names: &[&str]) -> Vec<Zone> {
        names
            .iter()
            .map(|n| Zone {
                name: (*n).into(),
                interfaces: vec![format!("if-{n}")],
            })
            .collect()
    }

    #[test]
    fn zone_pairs_defaults_and_rule_ids() {
        let policy = Policy::build(
            zones(&["out", "web", "db"]),
            vec![
                ZonePolicy {
                    from: ZoneId(0),
                    to: ZoneId(1),
                    rules: vec![
                        Rule {
                            protocol: Some(proto::TCP),
                            dst_ports: Some(vec![443..=443]),
                            ..Rule::new("https", Action::Accept)
                        },
                        Rule {
                            log: true,
                            ..Rule::new("rest", Action::Reject)
                        },
                    ],
                    default: Action::Drop,
                    log_default: false,
                },
                ZonePolicy {
                    from: ZoneId(1),
                    to: ZoneId(2),
                    rules: vec![],
                    default: Action::Accept,
                    log_default: true,
                },
            ],
        )
        .unwrap();
        let (out, web, db) = (ZoneId(0), ZoneId(1), ZoneId(2));
        assert_eq!(policy.zone_of_interface("if-web"), Some(web));
        assert_eq!(policy.zone_of_interface("nope"), None);
        assert_eq!(policy.zone("db"), Some(db));
        let p = tcp("1.1.1.1", "2.2.2.2", 443);
        let v = |from, to, p: &Packet| {
            let v = policy.classify(from, to, p);
            assert_eq!(v, policy.classify_linear(from, to, p));
            v
        };
        assert_eq!(
            v(out, web, &p),
            Verdict {
                rule: RuleId(1),
                action: Action::Accept,
                log: false
            }
        );
        assert_eq!(
            v(out, web, &tcp("1.1.1.1", "2.2.2.2", 80)),
            Verdict {
                rule: RuleId(2),
                action: Action::Reject,
                log: true
            }
        );
        assert_eq!(
            v(web, db, &p),
            Verdict {
                rule: RuleId(4),
                action: Action::Accept,
                log: true
            }
        );
        // No policy: the reverse direction, the same zone, a zone that does not exist.
        for (from, to) in [(web, out), (out, out), (out, ZoneId(3)), (ZoneId(9), web)] {
            assert_eq!(v(from, to, &p), NO_POLICY_VERDICT, "{from:?} -> {to:?}");
        }
        let names: Vec<(&str, &str, &str, RuleKind)> = policy
            .rules()
            .iter()
            .map(|r| (r.from.as_str(), r.to.as_str(), r.name.as_str(), r.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("", "", "no-policy", RuleKind::NoPolicy),
                ("out", "web", "https", RuleKind::Rule),
                ("out", "web", "rest", RuleKind::Rule),
                ("out", "web", "default", RuleKind::Default),
                ("web", "db", "default", RuleKind::Default),
            ]
        );
        assert_eq!(policy.pairs().collect::<Vec<_>>(), [(out, web), (web, db)]);
        assert_eq!(policy.pair_rules(out, web).map(<[Rule]>::len), Some(2));
        assert!(policy.pair_rules(web, out).is_none());
    }

    #[test]
    fn empty_policy_drops() {
        let policy = Policy::default();
        let v = policy.classify(ZoneId(0), ZoneId(0), &tcp("1.1.1.1", "2.2.2.2", 1));
        assert_eq!(v, NO_POLICY_VERDICT);
        assert_eq!(policy.rules().len(), 1);
    }

    #[test]
    fn typed_build_errors() {
        let pol = |from, to| ZonePolicy {
            from: ZoneId(from),
            to: ZoneId(to),
            rules: vec![],
            default: Action::Drop,
            log_default: false,
        };
        assert_eq!(
            Policy::build(zones(&["a", "b"]), vec![pol(0, 1), pol(0, 1)]).unwrap_err(),
            PolicyError::PairRepeated {
                policy: 1,
                first: 0
            }
        );
        assert_eq!(
            Policy::build(zones(&["a"]), vec![pol(0, 1)]).unwrap_err(),
            PolicyError::UnknownZone { policy: 0, zone: 1 }
        );
        let mut z = zones(&["a", "b"]);
        z[1].interfaces.push("if-a".into());
        assert!(matches!(
            Policy::build(z, vec![]).unwrap_err(),
            PolicyError::InterfaceInTwoZones {
                first: 0,
                second: 1,
                ..
            }
        ));
        let many: Vec<String> = (0..=MAX_ZONES).map(|i| format!("z{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            Policy::build(zones(&many), vec![]).unwrap_err(),
            PolicyError::TooManyZones { .. }
        ));
    }

    #[test]
    fn shares_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Policy>();
        assert_send_sync::<Classifier>();
    }

    // Random rule sets against the linear scan.

    /// A prefix anywhere, or clustered in 10.0.0.0/22 so that prefixes nest and repeat.
    fn prefix() -> impl Strategy<Value = Ipv4Network> {
        (any::<u32>(), any::<bool>(), 0u8..=32).prop_map(|(bits, clustered, len)| {
            let addr = if clustered {
                0x0a00_0000 | (bits & 0x3ff)
            } else {
                bits
            };
            // Clustered prefixes are long, so they fit the cluster.
            let len = if clustered { 22 + len % 11 } else { len };
            Ipv4Network::new(Ipv4Addr::from(addr), len).unwrap()
        })
    }

    /// A port range, mostly among low ports so that ranges overlap; sometimes at the top.
    fn port_range() -> impl Strategy<Value = RangeInclusive<u16>> {
        prop_oneof![
            (0u16..100, 0u16..20).prop_map(|(lo, w)| lo..=lo + w),
            (0u16..100).prop_map(|p| p..=p),
            any::<(u16, u16)>().prop_map(|(a, b)| a.min(b)..=a.max(b)),
            (0u16..5).prop_map(|w| 65535 - w..=65535),
        ]
    }

    fn maybe<T: std::fmt::Debug + Clone>(
        s: impl Strategy<Value = T>,
        some_weight: u32,
    ) -> impl Strategy<Value = Option<T>> {
        prop_oneof![10 - some_weight => Just(None), some_weight => s.prop_map(Some)]
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let addrs = (
            maybe(prop::collection::vec(prefix(), 0..3), 5),
            maybe(prop::collection::vec(prefix(), 0..3), 5),
        );
        let protocol = maybe(prop_oneof![Just(1u8), Just(6), Just(17), Just(47)], 6);
        let l4 = (
            maybe(prop::collection::vec(port_range(), 1..3), 3),
            maybe(prop::collection::vec(port_range(), 1..3), 4),
            maybe(0u8..4, 2),
            maybe(0u8..3, 2),
        );
        let states = prop_oneof![2 => Just(StateSet::ANY), 1 => (0u8..16).prop_map(StateSet)];
        (addrs, protocol, l4, states).prop_map(
            |((src, dst), protocol, (src_ports, dst_ports, icmp_type, icmp_code), states)| Rule {
                src,
                dst,
                protocol,
                src_ports,
                dst_ports,
                icmp_type,
                icmp_code,
                states,
                ..Rule::new("r", Action::Accept)
            },
        )
    }

    /// An address: random, or at an edge of one of a rule's prefixes (or just past it).
    fn address(nets: Option<&Vec<Ipv4Network>>, bits: u32, how: u8) -> Ipv4Addr {
        let Some(n) = nets.and_then(|n| n.get(bits as usize % n.len().max(1))) else {
            return Ipv4Addr::from(bits);
        };
        let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
        Ipv4Addr::from(match how % 4 {
            0 => bits,
            1 => first | (bits & !u32::from(n.mask())),
            2 => first.wrapping_sub(1),
            _ => last.wrapping_add(1),
        })
    }

    /// A port: random, or at an edge of one of a rule's ranges (or just past it).
    fn port(ranges: Option<&Vec<RangeInclusive<u16>>>, bits: u32, how: u8) -> u16 {
        let Some(r) = ranges.and_then(|r| r.get(bits as usize % r.len().max(1))) else {
            return bits as u16;
        };
        match how % 5 {
            0 => bits as u16,
            1 => *r.start(),
            2 => *r.end(),
            3 => r.start().wrapping_sub(1),
            _ => r.end().wrapping_add(1),
        }
    }

    /// A packet aimed near rule `target` (when `aim`), else random.
    fn packet(rules: &[Rule], target: Index, aim: bool, bits: [u32; 4], how: [u8; 6]) -> Packet {
        let r = (aim && !rules.is_empty()).then(|| &rules[target.index(rules.len())]);
        let protocol = match (r.and_then(|r| r.protocol), how[4] % 4) {
            (Some(p), 0..=2) => p,
            _ => [1u8, 6, 17, 47][usize::from(how[4] >> 2) % 4],
        };
        let l4 = match (protocol, how[5] % 8) {
            (_, 0) => L4::None,
            (1, _) | (_, 1) => L4::Icmp {
                ty: r.and_then(|r| r.icmp_type).unwrap_or(bits[2] as u8 % 4),
                code: r.and_then(|r| r.icmp_code).unwrap_or(bits[3] as u8 % 3),
            },
            _ => L4::Ports {
                src: port(r.and_then(|r| r.src_ports.as_ref()), bits[2], how[2]),
                dst: port(r.and_then(|r| r.dst_ports.as_ref()), bits[3], how[3]),
            },
        };
        Packet {
            src: address(r.and_then(|r| r.src.as_ref()), bits[0], how[0]),
            dst: address(r.and_then(|r| r.dst.as_ref()), bits[1], how[1]),
            protocol,
            l4,
            state: CtState::ALL[usize::from(how[5] >> 3) % 4],
        }
    }

    proptest! {
        #[test]
        fn matches_linear_first_match(
            rules in prop::collection::vec(rule(), 0..400),
            probes in prop::collection::vec(
                (any::<Index>(), any::<bool>(), any::<[u32; 4]>(), any::<[u8; 6]>()),
                1..64,
            ),
        ) {
            let c = Classifier::build(&rules).unwrap();
            prop_assert_eq!(c.len(), rules.len());
            for (target, aim, bits, how) in probes {
                let p = packet(&rules, target, aim, bits, how);
                let want = rules.iter().position(|r| r.matches(&p));
                prop_assert_eq!(c.classify(&p), want, "{:?}", p);
            }
        }
    }
}
