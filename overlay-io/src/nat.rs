//! Network address translation state: sessions, port pools and timeouts (sans-IO).
//!
//! The virtual router rewrites addresses; this module only decides *what* to rewrite to and
//! remembers it. It reads no clock (`now` is passed in) and touches no packet.
//!
//! # What it does
//!
//! - **Source NAT / masquerade** ([`SnatRule::Masquerade`]): a tenant flow leaves with an
//!   (address, port) taken from a [`Pool`]; for ICMP queries the identifier is allocated the
//!   same way. Mapping is endpoint-independent (RFC 4787 REQ-1): while any session uses it,
//!   the same internal (address, port, protocol) keeps its external (address, port), and the
//!   external address is chosen by the internal address ("paired" pooling, REQ-2).
//! - **Destination NAT** ([`NatTable::translate_inbound_dnat`]): port forwards and the
//!   inbound half of a floating address.
//! - **1:1 floating addresses** ([`FloatingIp`], [`SnatRule::Floating`]): the address is
//!   rewritten both ways, ports kept; sessions are still tracked so replies and hairpin work.
//! - **Hairpin** (RFC 4787 REQ-9, [`NatTable::translate_hairpin`]): a tenant host that reaches
//!   another tenant host through its external (floating or forwarded) address gets its source
//!   rewritten too, so the reply comes back through the router.
//!
//! # How the caller uses it
//!
//! For every packet, first [`NatTable::lookup`] its 5-tuple: a hit gives the rewritten
//! addresses and the direction. On a miss, the caller's rules pick one of the `translate_*`
//! calls, which creates the session (or finds it if it exists). For TCP the caller passes the
//! flags to [`NatTable::observe_tcp`] so timeouts follow the connection's state. It calls
//! [`NatTable::expire`] from its timer; each call does a bounded amount of work.
//!
//! For ICMP queries the identifier stands in for both ports: the caller puts it in
//! `src.port` and `dst.port` (the table copies `src.port` to `dst.port` of an ICMP key).
//! An ICMP error about a translated packet quotes that packet's header: look up the quoted
//! 5-tuple reversed (it is the reply key of the session) to translate the error.
//!
//! Errors ([`NatError`]) are per flow: the caller counts them (they are also counted in
//! [`NatStats`]), logs at a rate limit and drops the packet. Nothing here panics on input.
//!
//! Internal addresses must be unique within one table: a table is one routing domain (the
//! design runs one router per tenant); the tenant id is an accounting label for the cap.
//!
//! # Config reload
//!
//! A [`NatTable`] is plain state: the caller keeps the same table across a reload, gives it
//! the new [`NatConfig`] with [`NatTable::set_config`] (caps and timeouts; existing sessions
//! are never dropped for exceeding a lowered cap) and calls [`NatTable::retain`] to drop the
//! sessions whose rule disappeared. Ports of dropped sessions return to their pool.
//!
//! # Expiry
//!
//! A one-second timing wheel of 8192 slots holds one entry per session, filed under its
//! deadline. Refreshing a session costs nothing: when its slot comes up, an entry whose
//! session was seen since is filed again under the new deadline (deadlines beyond the wheel
//! are re-checked once per turn). A state change that shortens the timeout (FIN, RST) files
//! the session again; the stale entry is recognised and dropped. [`NatTable::expire`]
//! examines at most [`NatConfig::expire_budget`] entries per call (and steps over at most
//! one turn of empty slots).
//!
//! # Memory
//!
//! Measured on x86_64 (see the `memory_per_session` test): a session slot is 72 bytes, each
//! of its two index entries is 24 bytes plus one control byte in a hashbrown table kept at
//! most 7/8 full (about 57 bytes for both, more just after a resize), its wheel entry is
//! 12 bytes, and a masquerade mapping shared by its sessions is 20 bytes plus a control
//! byte. So about **170 bytes per session** (about 250 right after the index doubled);
//! a million sessions take about 170-250 MB. Each (external address, protocol) in use
//! adds an 8 KiB port bitmap.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Sessions a new one may drop early to find a free port in its pool.
const EARLY_DROP_TRIES: usize = 16;
/// Slots in the timing wheel; one slot per second, so about 2 h 16 min per turn.
const WHEEL_SLOTS: u32 = 8192;

/// A transport protocol that NAT translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP: ports translated, state tracked from flags.
    Tcp,
    /// UDP: ports translated.
    Udp,
    /// ICMP queries (echo and friends): the identifier is translated.
    Icmp,
}

/// An IPv4 address with a port (or, for ICMP, the query identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address.
    pub addr: Ipv4Addr,
    /// The TCP or UDP port, or the ICMP identifier.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint.
    pub const fn new(addr: Ipv4Addr, port: u16) -> Self {
        Self { addr, port }
    }
}

/// The key of a flow as seen in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// The protocol.
    pub proto: Proto,
    /// Source address and port (ICMP: identifier).
    pub src: Endpoint,
    /// Destination address and port (ICMP: the same identifier as `src.port`).
    pub dst: Endpoint,
}

impl FiveTuple {
    /// A key; for ICMP `dst.port` is set to `src.port`.
    pub const fn new(proto: Proto, src: Endpoint, dst: Endpoint) -> Self {
        Self { proto, src, dst }.normalized()
    }

    /// The key of the other direction.
    pub const fn reversed(&self) -> Self {
        Self {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }

    const fn normalized(mut self) -> Self {
        if matches!(self.proto, Proto::Icmp) {
            self.dst.port = self.src.port;
        }
        self
    }
}

/// Which way a packet goes relative to the packet that created its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Same way as the first packet.
    Original,
    /// The answer.
    Reply,
}

/// What a session translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Source rewritten from a pool (masquerade), or also destination for hairpin.
    Snat,
    /// Destination rewritten (port forward, or inbound to a floating address).
    Dnat,
    /// Source rewritten 1:1 to a floating address, ports kept.
    Floating,
}

/// TCP connection state, as far as NAT timeouts need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// Handshake not complete.
    New,
    /// Both sides spoke and the opener acknowledged.
    Established,
    /// A FIN was seen; waiting for the other side's.
    FinWait,
    /// FINs from both sides, or a RST.
    Closed,
}

/// TCP flags as in the header's flags byte; pass the byte through [`TcpFlags::from_bits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: Self = Self(0x01);
    /// SYN.
    pub const SYN: Self = Self(0x02);
    /// RST.
    pub const RST: Self = Self(0x04);
    /// ACK.
    pub const ACK: Self = Self(0x10);

    /// Flags from the TCP header's flags byte (other bits kept, ignored).
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// Whether all of `other` are set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Addresses and ports that masquerade allocates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// External addresses.
    pub addrs: Vec<Ipv4Addr>,
    /// Ports (and ICMP identifiers) to hand out on each address.
    pub ports: RangeInclusive<u16>,
}

impl Pool {
    /// A pool with the default port range 1024..=65535.
    pub fn new(addrs: Vec<Ipv4Addr>) -> Self {
        Self {
            addrs,
            ports: 1024..=65535,
        }
    }
}

/// A 1:1 floating address (OpenStack style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FloatingIp {
    /// The address outside.
    pub external: Ipv4Addr,
    /// The tenant host's address.
    pub internal: Ipv4Addr,
}

/// How to rewrite the source of an outbound flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnatRule {
    /// Allocate an (address, port) from the pool.
    Masquerade(Pool),
    /// Rewrite the source address to the floating address, keep the port. A source other
    /// than the floating address's internal one is left as it is.
    Floating(FloatingIp),
}

/// Session timeouts by protocol and TCP state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP established; RFC 5382 REQ-5 asks at least 2 h 4 min.
    pub tcp_established: Duration,
    /// TCP handshake and FIN exchange; RFC 5382 REQ-5 asks at least 4 min.
    pub tcp_transitory: Duration,
    /// TCP after both FINs or a RST (Linux conntrack CLOSE).
    pub tcp_closed: Duration,
    /// UDP; RFC 4787 REQ-5 asks at least 2 min and recommends 5.
    pub udp: Duration,
    /// ICMP queries (Linux conntrack uses 30 s; the default here is 60 s).
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(7440),
            tcp_transitory: Duration::from_secs(240),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
        }
    }
}

/// Caps and timeouts of a [`NatTable`]; may change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// Sessions in the whole table.
    pub max_sessions: usize,
    /// Sessions of one tenant.
    pub max_sessions_per_tenant: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Wheel entries [`NatTable::expire`] examines per call, at least 1.
    pub expire_budget: usize,
    /// When a new session finds the table, the tenant's share or the pool full, drop the
    /// oldest TCP session whose handshake never completed to make room (as conntrack's
    /// early drop does), so that a SYN flood from forged sources cannot hold every port
    /// (the load balancer turns it on; off by default: a router refuses instead).
    pub early_drop: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1 << 20,
            max_sessions_per_tenant: 1 << 16,
            timeouts: Timeouts::default(),
            expire_budget: 4096,
            early_drop: false,
        }
    }
}

/// Why a flow got no translation. The caller counts, logs and drops; the table is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// no free port in the NAT pool
    #[error("no free port in the NAT pool")]
    PoolExhausted,
    /// the tenant's NAT session cap is reached
    #[error("the tenant's NAT session cap is reached")]
    TenantCapReached,
    /// the NAT session table is full
    #[error("the NAT session table is full")]
    TableFull,
    /// the reply key of the new session belongs to another session (a port forward on a
    /// port the pool also hands out, or two floating addresses on one host)
    #[error("the reply key of the new NAT session belongs to another session")]
    Conflict,
}

/// A handle on a session; stale handles are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    index: u32,
    generation: u32,
}

impl SessionId {
    /// The session's slot: small, reused after the session ends; callers keep their own
    /// per-session data in a vector indexed by it.
    pub const fn index(self) -> u32 {
        self.index
    }
}

/// How to rewrite one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The packet's source after rewriting (ICMP: port is the identifier).
    pub src: Endpoint,
    /// The packet's destination after rewriting.
    pub dst: Endpoint,
    /// The session's kind.
    pub kind: Kind,
    /// The session, for [`NatTable::observe_tcp`].
    pub session: SessionId,
}

/// One NAT session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The first packet's key.
    pub original: FiveTuple,
    /// The first packet's key after translation; replies carry its reverse.
    pub translated: FiveTuple,
    /// What is translated.
    pub kind: Kind,
    /// TCP state (stays `New` for UDP and ICMP).
    pub tcp: TcpState,
    /// When a packet was last seen.
    pub last_seen: Instant,
    /// The tenant it counts against.
    pub tenant: u32,
    /// Whether a reply was seen.
    pub replied: bool,
    fins: u8,
    holds_port: bool,
    sched: u32,
}

/// Counters of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatStats {
    /// Live sessions (`vnf_nat_sessions`).
    pub sessions: usize,
    /// Live masquerade mappings (distinct internal endpoints with an external port).
    pub mappings: usize,
    /// Sessions removed by expiry, ever.
    pub expired: u64,
    /// Flows refused for [`NatError::PoolExhausted`], ever.
    pub pool_exhausted: u64,
    /// Flows refused for [`NatError::TenantCapReached`], ever.
    pub tenant_cap_reached: u64,
    /// Flows refused for [`NatError::TableFull`], ever.
    pub table_full: u64,
    /// Flows refused for [`NatError::Conflict`], ever.
    pub conflicts: u64,
    /// Sessions dropped early to make room for new ones, ever ([`NatConfig::early_drop`]).
    pub early_drops: u64,
}

/// Used ports of one (external address, protocol): a bitmap over all 65536 ports and a
/// rotating cursor, so consecutive allocations walk the range instead of reusing at once.
#[derive(Debug, Clone)]
struct PortMap {
    used: Box<[u64; 1024]>,
    in_use: u32,
    cursor: u16,
}

impl PortMap {
    fn new() -> Self {
        Self {
            used: Box::new([0; 1024]),
            in_use: 0,
            cursor: 0,
        }
    }

    fn is_used(&self, port: u16) -> bool {
        self.used[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    /// A free port of `range` at or after the cursor (wrapping); word-at-a-time scan.
    fn alloc(&mut self, range: &RangeInclusive<u16>) -> Option<u16> {
        let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
        if lo > hi {
            return None;
        }
        let len = hi - lo + 1;
        let mut off = u32::from(self.cursor).wrapping_sub(lo);
        if off >= len {
            off = 0;
        }
        let mut scanned = 0;
        while scanned < len {
            let p = lo + off;
            let bit = p & 63;
            let free = !self.used[(p >> 6) as usize] >> bit;
            // Positions checked in this step: to the end of the word or of the range.
            let step = (64 - bit).min(hi - p + 1).min(len - scanned);
            if free != 0 && free.trailing_zeros() < step {
                let port = (p + free.trailing_zeros()) as u16;
                self.used[usize::from(port >> 6)] |= 1 << (port & 63);
                self.in_use += 1;
                self.cursor = port.wrapping_add(1);
                return Some(port);
            }
            scanned += step;
            off += step;
            if off >= len {
                off = 0;
            }
        }
        None
    }

    fn free(&mut self, port: u16) {
        if self.is_used(port) {
            self.used[usize::from(port >> 6)] &= !(1 << (port & 63));
            self.in_use -= 1;
        }
    }
}

/// An external port held by an internal endpoint, shared by its sessions.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    port: u16,
    refs: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    generation: u32,
    session: Option<Session>,
}

#[derive(Debug, Clone, Copy)]
struct WheelEntry {
    index: u32,
    generation: u32,
    tick: u32,
}

/// NAT sessions indexed by both directions' keys, with port pools and expiry.
#[derive(Debug, Clone)]
pub struct NatTable {
    cfg: NatConfig,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    index: Map<FiveTuple, (u32, Direction)>,
    tenants: Map<u32, usize>,
    /// (protocol, internal endpoint, external address) -> external port.
    mappings: Map<(Proto, Endpoint, Ipv4Addr), Mapping>,
    ports: Map<(Ipv4Addr, Proto), PortMap>,
    wheel: Vec<Vec<WheelEntry>>,
    /// The next tick `expire` processes.
    wheel_tick: u32,
    origin: Option<Instant>,
    stats: NatStats,
    /// TCP sessions in creation order: early drop candidates while their handshake is
    /// not complete. Entries of sessions that ended or completed are skipped and dropped
    /// when they reach the front.
    embryonic: std::collections::VecDeque<(u32, u32)>,
    /// Whether the last `expire` stopped on its budget before catching up.
    behind: bool,
}

impl NatTable {
    /// An empty table.
    pub fn new(cfg: NatConfig) -> Self {
        Self {
            cfg,
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: Map::default(),
            tenants: Map::default(),
            mappings: Map::default(),
            ports: Map::default(),
            wheel: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            wheel_tick: 0,
            origin: None,
            stats: NatStats::default(),
            embryonic: std::collections::VecDeque::new(),
            behind: false,
        }
    }

    /// Replace caps and timeouts (reload); sessions are kept. A shortened timeout takes
    /// effect when a session's wheel entry comes up, at the latest after the old timeout.
    pub fn set_config(&mut self, cfg: NatConfig) {
        self.cfg = cfg;
    }

    /// The current config.
    pub const fn config(&self) -> &NatConfig {
        &self.cfg
    }

    /// Live sessions.
    pub const fn len(&self) -> usize {
        self.stats.sessions
    }

    /// Whether there are no sessions.
    pub const fn is_empty(&self) -> bool {
        self.stats.sessions == 0
    }

    /// Live sessions of a tenant.
    pub fn tenant_sessions(&self, tenant: u32) -> usize {
        self.tenants.get(&tenant).copied().unwrap_or(0)
    }

    /// Ports (and ICMP identifiers) in use on the pool's addresses, all protocols
    /// (`vnf_nat_ports_in_use{pool}`).
    pub fn ports_in_use(&self, pool: &Pool) -> usize {
        let mut n = 0;
        for &addr in &pool.addrs {
            for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
                n += self
                    .ports
                    .get(&(addr, proto))
                    .map_or(0, |m| m.in_use as usize);
            }
        }
        n
    }

    /// Counters.
    pub fn stats(&self) -> NatStats {
        NatStats {
            mappings: self.mappings.len(),
            ..self.stats
        }
    }

    /// All live sessions.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.slots.iter().filter_map(|s| s.session.as_ref())
    }

    /// The session a handle points at, if it is still live.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation == id.generation {
            slot.session.as_ref()
        } else {
            None
        }
    }

    /// Find the session of a packet in either direction, refresh it and say how to rewrite.
    pub fn lookup(&mut self, key: &FiveTuple, now: Instant) -> Option<(Translation, Direction)> {
        let key = key.normalized();
        let &(index, dir) = self.index.get(&key)?;
        let slot = &mut self.slots[index as usize];
        let s = slot.session.as_mut()?;
        s.last_seen = s.last_seen.max(now);
        if dir == Direction::Reply {
            s.replied = true;
        }
        let (src, dst) = match dir {
            Direction::Original => (s.translated.src, s.translated.dst),
            Direction::Reply => (s.original.dst, s.original.src),
        };
        let session = SessionId {
            index,
            generation: slot.generation,
        };
        Some((
            Translation {
                src,
                dst,
                kind: s.kind,
                session,
            },
            dir,
        ))
    }

    /// Source NAT an outbound flow: find its session or create one under `rule`.
    pub fn translate_outbound(
        &mut self,
        tenant: u32,
        key: FiveTuple,
        rule: &SnatRule,
        now: Instant,
    ) -> Result<Translation, NatError> {
        self.create(tenant, key, Some(rule), None, now)
    }

    /// Destination NAT an inbound flow to `target` (a port forward, or the internal address
    /// of a floating address with the port kept): find its session or create one.
    pub fn translate_inbound_dnat(
        &mut self,
        tenant: u32,
        key: FiveTuple,
        target: Endpoint,
        now: Instant,
    ) -> Result<Translation, NatError> {
        self.create(tenant, key, None, Some(target), now)
    }

    /// Hairpin (RFC 4787 REQ-9): a tenant host reaches another through its external address.
    /// The destination is rewritten to `target` (the other host) and the source by `rule`
    /// (the sender's floating address or masquerade pool), in one session, so the other
    /// host's reply is addressed to the router and comes back through it.
    pub fn translate_hairpin(
        &mut self,
        tenant: u32,
        key: FiveTuple,
        target: Endpoint,
        rule: &SnatRule,
        now: Instant,
    ) -> Result<Translation, NatError> {
        self.create(tenant, key, Some(rule), Some(target), now)
    }

    /// Feed a TCP segment's flags to its session's state machine (other sessions ignore it).
    pub fn observe_tcp(&mut self, id: SessionId, dir: Direction, flags: TcpFlags, now: Instant) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(s) = slot.session.as_mut() else {
            return;
        };
        if s.original.proto != Proto::Tcp {
            return;
        }
        s.last_seen = s.last_seen.max(now);
        let fin_bit = match dir {
            Direction::Original => 1,
            Direction::Reply => {
                s.replied = true;
                2
            }
        };
        s.tcp = if flags.contains(TcpFlags::RST) {
            TcpState::Closed
        } else if flags.contains(TcpFlags::SYN) {
            if s.tcp == TcpState::Closed && dir == Direction::Original {
                s.fins = 0;
                TcpState::New
            } else {
                s.tcp
            }
        } else if flags.contains(TcpFlags::FIN) {
            s.fins |= fin_bit;
            if s.fins == 3 {
                TcpState::Closed
            } else {
                TcpState::FinWait
            }
        } else if s.tcp == TcpState::New
            && s.replied
            && dir == Direction::Original
            && flags.contains(TcpFlags::ACK)
        {
            TcpState::Established
        } else {
            s.tcp
        };
        // A shorter timeout needs an earlier wheel entry; the old one goes stale.
        let s = *s;
        let tick = self.tick_of(s.last_seen + timeout(&self.cfg.timeouts, &s));
        if tick.max(self.wheel_tick) < s.sched {
            self.schedule(id.index, tick);
        }
    }

    /// Remove timed-out sessions until the wheel has caught up with `now`, in at most
    /// `max_rounds` calls of [`NatTable::expire`]; returns how many were removed. What
    /// a timer calls.
    pub fn expire_all(&mut self, now: Instant, max_rounds: usize) -> usize {
        let mut removed = 0;
        for _ in 0..max_rounds.max(1) {
            removed += self.expire(now);
            if !self.behind {
                break;
            }
        }
        removed
    }

    /// Remove timed-out sessions, examining at most `expire_budget` wheel entries; returns
    /// how many were removed. [`NatTable::expire_all`] calls it until it has caught up.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.prune_embryonic();
        let now_tick = self.tick_of(now);
        if now_tick.saturating_sub(self.wheel_tick) >= WHEEL_SLOTS {
            // Every slot is visited once in the last turn; nothing is lost by skipping.
            self.wheel_tick = now_tick - WHEEL_SLOTS + 1;
        }
        let mut budget = self.cfg.expire_budget.max(1);
        let mut removed = 0;
        while self.wheel_tick <= now_tick {
            let slot = (self.wheel_tick % WHEEL_SLOTS) as usize;
            while let Some(e) = self.wheel[slot].pop() {
                budget -= 1;
                self.visit(e, now, now_tick, &mut removed);
                if budget == 0 {
                    self.stats.expired += removed as u64;
                    self.behind = true;
                    return removed;
                }
            }
            self.wheel_tick += 1;
        }
        self.stats.expired += removed as u64;
        self.behind = false;
        removed
    }

    /// Keep only the sessions `keep` accepts (after a reload: drop those whose rule is gone).
    pub fn retain(&mut self, mut keep: impl FnMut(&Session) -> bool) {
        for index in 0..self.slots.len() {
            if self.slots[index].session.as_ref().is_some_and(|s| !keep(s)) {
                self.remove(index as u32);
            }
        }
    }

    fn visit(&mut self, e: WheelEntry, now: Instant, now_tick: u32, removed: &mut usize) {
        let Some(slot) = self.slots.get(e.index as usize) else {
            return;
        };
        let Some(s) = slot.session.as_ref() else {
            return;
        };
        if slot.generation != e.generation || s.sched != e.tick {
            return; // stale: the session was removed or filed again
        }
        let deadline = s.last_seen + timeout(&self.cfg.timeouts, s);
        if deadline <= now {
            self.remove(e.index);
            *removed += 1;
        } else {
            let tick = self.tick_of(deadline).max(now_tick + 1);
            self.schedule(e.index, tick);
        }
    }

    /// File a session in the wheel at `tick` (clamped to one turn ahead of the cursor).
    fn schedule(&mut self, index: u32, tick: u32) {
        let tick = tick.clamp(self.wheel_tick, self.wheel_tick + WHEEL_SLOTS - 1);
        let slot = &mut self.slots[index as usize];
        if let Some(s) = slot.session.as_mut() {
            s.sched = tick;
            let e = WheelEntry {
                index,
                generation: slot.generation,
                tick,
            };
            self.wheel[(tick % WHEEL_SLOTS) as usize].push(e);
        }
    }

    /// The wheel tick in which `t` falls, plus one: a session filed there is past its
    /// deadline when the tick is processed.
    fn tick_of(&mut self, t: Instant) -> u32 {
        let origin = *self.origin.get_or_insert(t);
        (t.saturating_duration_since(origin).as_secs() as u32).saturating_add(1)
    }

    fn create(
        &mut self,
        tenant: u32,
        key: FiveTuple,
        snat: Option<&SnatRule>,
        dnat: Option<Endpoint>,
        now: Instant,
    ) -> Result<Translation, NatError> {
        // The wheel's origin is the first time the table sees, not the first deadline: a
        // deadline as origin would stop the clock until it passed.
        self.tick_of(now);
        let key = key.normalized();
        if let Some((t, _)) = self.lookup(&key, now) {
            return Ok(t);
        }
        let refused = loop {
            let full = if self.stats.sessions >= self.cfg.max_sessions {
                Some(NatError::TableFull)
            } else if self.tenant_sessions(tenant) >= self.cfg.max_sessions_per_tenant {
                Some(NatError::TenantCapReached)
            } else {
                None
            };
            // Any embryonic session frees a table slot; the tenant's share needs one of
            // the tenant's, which the bounded tries may not find.
            if full.is_none() || !self.early_drop_one() {
                break full;
            }
        };
        match refused {
            Some(NatError::TableFull) => {
                self.stats.table_full += 1;
                return Err(NatError::TableFull);
            }
            Some(e) => {
                self.stats.tenant_cap_reached += 1;
                return Err(e);
            }
            None => {}
        }

        let mut translated = key;
        if let Some(dst) = dnat {
            translated.dst = dst;
        }
        let mut holds_port = false;
        let kind = match snat {
            Some(SnatRule::Masquerade(pool)) => {
                let mut src = self.map_source(key.proto, key.src, pool);
                // A dropped session frees a port of this pool only if it held one there:
                // try a few.
                let mut tries = 0;
                while src.is_none() && tries < EARLY_DROP_TRIES && self.early_drop_one() {
                    tries += 1;
                    src = self.map_source(key.proto, key.src, pool);
                }
                let Some(src) = src else {
                    self.stats.pool_exhausted += 1;
                    return Err(NatError::PoolExhausted);
                };
                translated.src = src;
                holds_port = true;
                Kind::Snat
            }
            Some(SnatRule::Floating(f)) => {
                if key.src.addr == f.internal {
                    translated.src.addr = f.external;
                }
                if dnat.is_some() {
                    Kind::Snat
                } else {
                    Kind::Floating
                }
            }
            None => Kind::Dnat,
        };
        let translated = translated.normalized();
        let reply = translated.reversed();
        if reply == key || self.index.contains_key(&reply) {
            if holds_port {
                self.unmap_source(key.proto, key.src, translated.src);
            }
            self.stats.conflicts += 1;
            return Err(NatError::Conflict);
        }

        let session = Session {
            original: key,
            translated,
            kind,
            tcp: TcpState::New,
            last_seen: now,
            tenant,
            replied: false,
            fins: 0,
            holds_port,
            sched: 0,
        };
        let index = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize].session = Some(session);
                i
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    session: Some(session),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, (index, Direction::Original));
        self.index.insert(reply, (index, Direction::Reply));
        *self.tenants.entry(tenant).or_insert(0) += 1;
        self.stats.sessions += 1;
        let tick = self.tick_of(now + timeout(&self.cfg.timeouts, &session));
        self.schedule(index, tick);
        let generation = self.slots[index as usize].generation;
        if self.cfg.early_drop && key.proto == Proto::Tcp {
            self.embryonic.push_back((index, generation));
        }
        let session = SessionId { index, generation };
        Ok(Translation {
            src: translated.src,
            dst: translated.dst,
            kind,
            session,
        })
    }

    /// Whether the embryonic queue's entry is a live TCP session still in its handshake.
    fn is_embryonic(&self, (index, generation): (u32, u32)) -> bool {
        self.slots.get(index as usize).is_some_and(|slot| {
            slot.generation == generation
                && slot
                    .session
                    .as_ref()
                    .is_some_and(|s| s.original.proto == Proto::Tcp && s.tcp == TcpState::New)
        })
    }

    /// Drop the oldest session whose TCP handshake never completed; `false` if there is
    /// none (or early drop is off).
    fn early_drop_one(&mut self) -> bool {
        if !self.cfg.early_drop {
            return false;
        }
        while let Some(e) = self.embryonic.pop_front() {
            if self.is_embryonic(e) {
                self.remove(e.0);
                self.stats.early_drops += 1;
                return true;
            }
        }
        false
    }

    /// Keep the embryonic queue short: drop entries at its front that are no longer
    /// candidates and, if it still holds far more entries than sessions, all of those.
    fn prune_embryonic(&mut self) {
        while let Some(&e) = self.embryonic.front() {
            if self.is_embryonic(e) {
                break;
            }
            self.embryonic.pop_front();
        }
        if self.embryonic.len() > 2 * self.stats.sessions + 1024 {
            let q = std::mem::take(&mut self.embryonic);
            self.embryonic = q.into_iter().filter(|&e| self.is_embryonic(e)).collect();
        }
    }

    /// The external endpoint of an internal one: its existing mapping, or a new port.
    fn map_source(&mut self, proto: Proto, internal: Endpoint, pool: &Pool) -> Option<Endpoint> {
        let n = pool.addrs.len();
        if n == 0 {
            return None;
        }
        // Paired pooling: the same internal address prefers the same external address.
        let h = u32::from(internal.addr).wrapping_mul(0x9e37_79b9);
        let first = (h >> 16) as usize % n;
        for i in 0..n {
            let addr = pool.addrs[(first + i) % n];
            if let Some(m) = self.mappings.get_mut(&(proto, internal, addr)) {
                m.refs += 1;
                return Some(Endpoint::new(addr, m.port));
            }
            let ports = self.ports.entry((addr, proto)).or_insert_with(PortMap::new);
            if let Some(port) = ports.alloc(&pool.ports) {
                self.mappings
                    .insert((proto, internal, addr), Mapping { port, refs: 1 });
                return Some(Endpoint::new(addr, port));
            }
        }
        None
    }

    fn unmap_source(&mut self, proto: Proto, internal: Endpoint, external: Endpoint) {
        let key = (proto, internal, external.addr);
        let Some(m) = self.mappings.get_mut(&key) else {
            return;
        };
        m.refs -= 1;
        if m.refs == 0 {
            self.mappings.remove(&key);
            if let Some(ports) = self.ports.get_mut(&(external.addr, proto)) {
                ports.free(external.port);
            }
        }
    }

    fn remove(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let Some(s) = slot.session.take() else { return };
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(index);
        self.index.remove(&s.original);
        self.index.remove(&s.translated.reversed());
        if s.holds_port {
            self.unmap_source(s.original.proto, s.original.src, s.translated.src);
        }
        if let Some(n) = self.tenants.get_mut(&s.tenant) {
            *n -= 1;
            if *n == 0 {
                self.tenants.remove(&s.tenant);
            }
        }
        self.stats.sessions -= 1;
    }
}

fn timeout(t: &Timeouts, s: &Session) -> Duration {
    match s.original.proto {
        Proto::Tcp => match s.tcp {
            TcpState::Established => t.tcp_established,
            TcpState::New | TcpState::FinWait => t.tcp_transitory,
            TcpState::Closed => t.tcp_closed,
        },
        Proto::Udp => t.udp,
        Proto::Icmp => t.icmp,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap as StdMap;

    use proptest::prelude::*;

    use super::*;

    const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn host(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn flow(proto: Proto, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> FiveTuple {
        FiveTuple::new(
            proto,
            Endpoint::new(src.0, src.1),
            Endpoint::new(dst.0, dst.1),
        )
    }

    fn masq(ports: RangeInclusive<u16>) -> SnatRule {
        SnatRule::Masquerade(Pool {
            addrs: vec![EXT],
            ports,
        })
    }

    /// The key of a reply to the translated packet `t` of `key`.
    fn reply_of(key: &FiveTuple, t: &Translation) -> FiveTuple {
        FiveTuple::new(key.proto, t.dst, t.src)
    }

    #[test]
    fn pool_exhaustion_keeps_existing_sessions() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(2000..=2003);
        let mut made = Vec::new();
        for i in 0..4 {
            let key = flow(Proto::Udp, (host(1 + i), 5000), (REMOTE, 53));
            let t = nat.translate_outbound(7, key, &rule, now).unwrap();
            assert_eq!(t.src.addr, EXT);
            assert!((2000..=2003).contains(&t.src.port));
            assert_eq!(t.dst, key.dst);
            made.push((key, t));
        }
        let fifth = flow(Proto::Udp, (host(9), 5000), (REMOTE, 53));
        assert_eq!(
            nat.translate_outbound(7, fifth, &rule, now),
            Err(NatError::PoolExhausted)
        );
        assert_eq!(nat.stats().pool_exhausted, 1);
        let Pool { .. } = match &rule {
            SnatRule::Masquerade(p) => {
                assert_eq!(nat.ports_in_use(p), 4);
                p.clone()
            }
            SnatRule::Floating(_) => unreachable!(),
        };
        for (key, t) in &made {
            let (again, dir) = nat.lookup(key, now).unwrap();
            assert_eq!((again, dir), (*t, Direction::Original));
            let (back, dir) = nat.lookup(&reply_of(key, t), now).unwrap();
            assert_eq!(dir, Direction::Reply);
            assert_eq!((back.src, back.dst), (key.dst, key.src));
        }
    }

    #[test]
    fn endpoint_independent_mapping_is_reused() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(1024..=65535);
        let a = flow(Proto::Udp, (host(1), 4000), (REMOTE, 53));
        let b = flow(
            Proto::Udp,
            (host(1), 4000),
            (Ipv4Addr::new(192, 0, 2, 9), 123),
        );
        let c = flow(Proto::Udp, (host(1), 4001), (REMOTE, 53));
        let ta = nat.translate_outbound(1, a, &rule, now).unwrap();
        let tb = nat.translate_outbound(1, b, &rule, now).unwrap();
        let tc = nat.translate_outbound(1, c, &rule, now).unwrap();
        assert_eq!(ta.src, tb.src);
        assert_ne!(ta.src, tc.src);
        assert_eq!(nat.stats().mappings, 2);
        // Same flow again: same session.
        assert_eq!(nat.translate_outbound(1, a, &rule, now).unwrap(), ta);
        assert_eq!(nat.len(), 3);
        // TCP from the same endpoint gets its own mapping (per protocol).
        let t = flow(Proto::Tcp, (host(1), 4000), (REMOTE, 80));
        nat.translate_outbound(1, t, &rule, now).unwrap();
        assert_eq!(nat.stats().mappings, 3);
    }

    #[test]
    fn reply_direction_lookup() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let key = flow(Proto::Tcp, (host(3), 40000), (REMOTE, 443));
        let t = nat
            .translate_outbound(1, key, &masq(1024..=65535), now)
            .unwrap();
        let reply = flow(Proto::Tcp, (REMOTE, 443), (EXT, t.src.port));
        let (back, dir) = nat.lookup(&reply, now).unwrap();
        assert_eq!(dir, Direction::Reply);
        assert_eq!(back.src, Endpoint::new(REMOTE, 443));
        assert_eq!(back.dst, Endpoint::new(host(3), 40000));
        assert_eq!(back.session, t.session);
        assert!(nat.session(t.session).unwrap().replied);
        // A stray packet to another port is not matched.
        let stray = flow(Proto::Tcp, (REMOTE, 443), (EXT, t.src.port.wrapping_add(1)));
        assert!(nat.lookup(&stray, now).is_none());
    }

    #[test]
    fn expiry_frees_ports_for_new_flows() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(3000..=3001);
        for i in 0..2 {
            let key = flow(Proto::Udp, (host(i + 1), 1), (REMOTE, 53));
            nat.translate_outbound(1, key, &rule, t0).unwrap();
        }
        let late = flow(Proto::Udp, (host(9), 1), (REMOTE, 53));
        assert_eq!(
            nat.translate_outbound(1, late, &rule, t0),
            Err(NatError::PoolExhausted)
        );
        assert_eq!(nat.expire(t0 + Duration::from_secs(299)), 0);
        assert_eq!(nat.len(), 2);
        assert_eq!(nat.expire(t0 + Duration::from_secs(301)), 2);
        assert!(nat.is_empty());
        assert_eq!(nat.stats().mappings, 0);
        assert_eq!(nat.stats().expired, 2);
        let t = nat
            .translate_outbound(1, late, &rule, t0 + Duration::from_secs(301))
            .unwrap();
        assert!((3000..=3001).contains(&t.src.port));
    }

    #[test]
    fn refreshed_sessions_do_not_expire() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let key = flow(Proto::Udp, (host(1), 1), (REMOTE, 53));
        nat.translate_outbound(1, key, &masq(1024..=65535), t0)
            .unwrap();
        for s in (100..=1000).step_by(100) {
            let now = t0 + Duration::from_secs(s);
            assert!(nat.lookup(&key, now).is_some());
            assert_eq!(nat.expire(now), 0);
        }
        assert_eq!(nat.expire(t0 + Duration::from_secs(1301)), 1);
    }

    #[test]
    fn tcp_state_timeouts() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(1024..=65535);
        let open = |nat: &mut NatTable, n: u8| {
            let key = flow(Proto::Tcp, (host(n), 1000), (REMOTE, 80));
            let t = nat.translate_outbound(1, key, &rule, t0).unwrap();
            nat.observe_tcp(t.session, Direction::Original, TcpFlags::SYN, t0);
            let synack = TcpFlags::SYN | TcpFlags::ACK;
            nat.observe_tcp(t.session, Direction::Reply, synack, t0);
            nat.observe_tcp(t.session, Direction::Original, TcpFlags::ACK, t0);
            assert_eq!(nat.session(t.session).unwrap().tcp, TcpState::Established);
            t.session
        };
        let long = open(&mut nat, 1);
        let fin = open(&mut nat, 2);
        let rst = open(&mut nat, 3);
        let half = flow(Proto::Tcp, (host(4), 1000), (REMOTE, 80));
        let half = nat.translate_outbound(1, half, &rule, t0).unwrap().session;

        let fin_ack = TcpFlags::FIN | TcpFlags::ACK;
        nat.observe_tcp(fin, Direction::Original, fin_ack, t0);
        assert_eq!(nat.session(fin).unwrap().tcp, TcpState::FinWait);
        nat.observe_tcp(fin, Direction::Reply, fin_ack, t0);
        assert_eq!(nat.session(fin).unwrap().tcp, TcpState::Closed);
        nat.observe_tcp(rst, Direction::Reply, TcpFlags::RST, t0);
        assert_eq!(nat.session(rst).unwrap().tcp, TcpState::Closed);

        assert_eq!(nat.expire(t0 + Duration::from_secs(11)), 2);
        assert!(nat.session(fin).is_none() && nat.session(rst).is_none());
        // The unanswered handshake goes after the transitory timeout.
        assert_eq!(nat.expire(t0 + Duration::from_secs(241)), 1);
        assert!(nat.session(half).is_none());
        assert_eq!(nat.expire(t0 + Duration::from_secs(7439)), 0);
        assert!(nat.session(long).is_some());
        assert_eq!(nat.expire(t0 + Duration::from_secs(7441)), 1);
        assert!(nat.is_empty());
    }

    /// A SYN flood from forged sources holds every port of a small pool; with early drop a
    /// new flow takes the port of the oldest session whose handshake never completed, and
    /// completed connections are never dropped. Without it, the new flow is refused.
    #[test]
    fn early_drop_frees_ports_held_by_unfinished_handshakes() {
        let now = Instant::now();
        let rule = masq(2000..=2003);
        let syn = TcpFlags::SYN;
        let ack = TcpFlags::ACK;
        for early_drop in [false, true] {
            let mut nat = NatTable::new(NatConfig {
                early_drop,
                ..NatConfig::default()
            });
            // One real connection completes its handshake.
            let real = flow(Proto::Tcp, (host(1), 1000), (REMOTE, 80));
            let t = nat.translate_outbound(0, real, &rule, now).unwrap();
            nat.observe_tcp(t.session, Direction::Original, syn, now);
            nat.lookup(&reply_of(&real, &t), now).unwrap();
            nat.observe_tcp(t.session, Direction::Reply, syn | ack, now);
            nat.observe_tcp(t.session, Direction::Original, ack, now);
            assert_eq!(nat.session(t.session).unwrap().tcp, TcpState::Established);
            // Three forged SYNs take the other ports.
            for i in 0..3 {
                let k = flow(Proto::Tcp, (host(10 + i), 5000), (REMOTE, 80));
                let t = nat.translate_outbound(0, k, &rule, now).unwrap();
                nat.observe_tcp(t.session, Direction::Original, syn, now);
            }
            let new = flow(Proto::Tcp, (host(50), 6000), (REMOTE, 80));
            let r = nat.translate_outbound(0, new, &rule, now);
            if early_drop {
                assert!(r.is_ok(), "{r:?}");
                assert_eq!(nat.stats().early_drops, 1);
                assert!(nat.lookup(&real, now).is_some(), "the connection stays");
                let first = flow(Proto::Tcp, (host(10), 5000), (REMOTE, 80));
                assert!(nat.lookup(&first, now).is_none(), "the oldest SYN went");
                // Only TCP sessions in their handshake go: UDP flows are never dropped.
                let mut udp = NatTable::new(NatConfig {
                    early_drop: true,
                    ..NatConfig::default()
                });
                for i in 0..4 {
                    let k = flow(Proto::Udp, (host(i), 1), (REMOTE, 53));
                    udp.translate_outbound(0, k, &rule, now).unwrap();
                }
                let k = flow(Proto::Udp, (host(9), 1), (REMOTE, 53));
                assert_eq!(
                    udp.translate_outbound(0, k, &rule, now),
                    Err(NatError::PoolExhausted)
                );
            } else {
                assert_eq!(r, Err(NatError::PoolExhausted));
                assert_eq!(nat.stats().early_drops, 0);
            }
        }
    }

    #[test]
    fn per_tenant_cap_and_table_cap() {
        let now = Instant::now();
        let cfg = NatConfig {
            max_sessions: 5,
            max_sessions_per_tenant: 3,
            ..NatConfig::default()
        };
        let mut nat = NatTable::new(cfg);
        let rule = masq(1024..=65535);
        for i in 0..3 {
            let key = flow(Proto::Udp, (host(1), 100 + i), (REMOTE, 53));
            nat.translate_outbound(1, key, &rule, now).unwrap();
        }
        let over = flow(Proto::Udp, (host(1), 200), (REMOTE, 53));
        assert_eq!(
            nat.translate_outbound(1, over, &rule, now),
            Err(NatError::TenantCapReached)
        );
        // An existing flow of the capped tenant still translates.
        let known = flow(Proto::Udp, (host(1), 100), (REMOTE, 53));
        assert!(nat.translate_outbound(1, known, &rule, now).is_ok());
        for i in 0..2 {
            let key = flow(Proto::Udp, (host(2), 100 + i), (REMOTE, 53));
            nat.translate_outbound(2, key, &rule, now).unwrap();
        }
        let full = flow(Proto::Udp, (host(3), 1), (REMOTE, 53));
        assert_eq!(
            nat.translate_outbound(3, full, &rule, now),
            Err(NatError::TableFull)
        );
        assert_eq!(nat.tenant_sessions(1), 3);
        assert_eq!(nat.tenant_sessions(2), 2);
        assert_eq!(nat.tenant_sessions(3), 0);
        let s = nat.stats();
        assert_eq!((s.tenant_cap_reached, s.table_full, s.sessions), (1, 1, 5));
    }

    #[test]
    fn icmp_identifier_allocation() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(50..=51);
        let a = flow(Proto::Icmp, (host(1), 7), (REMOTE, 0));
        let b = flow(Proto::Icmp, (host(2), 7), (REMOTE, 0));
        let ta = nat.translate_outbound(1, a, &rule, now).unwrap();
        let tb = nat.translate_outbound(1, b, &rule, now).unwrap();
        assert_ne!(ta.src.port, tb.src.port);
        assert_eq!(ta.dst, Endpoint::new(REMOTE, ta.src.port));
        // The echo reply carries the translated identifier.
        let reply = flow(Proto::Icmp, (REMOTE, ta.src.port), (EXT, ta.src.port));
        let (back, dir) = nat.lookup(&reply, now).unwrap();
        assert_eq!(dir, Direction::Reply);
        assert_eq!(back.dst, Endpoint::new(host(1), 7));
        let c = flow(Proto::Icmp, (host(3), 7), (REMOTE, 0));
        assert_eq!(
            nat.translate_outbound(1, c, &rule, now),
            Err(NatError::PoolExhausted)
        );
        // ICMP identifiers do not use up UDP ports.
        let u = flow(Proto::Udp, (host(3), 7), (REMOTE, 53));
        assert!(nat.translate_outbound(1, u, &rule, now).is_ok());
        assert_eq!(nat.expire(now + Duration::from_secs(61)), 2);
    }

    #[test]
    fn floating_ip_both_ways_and_hairpin() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let fa = FloatingIp {
            external: Ipv4Addr::new(203, 0, 113, 10),
            internal: host(10),
        };
        let fb = FloatingIp {
            external: Ipv4Addr::new(203, 0, 113, 20),
            internal: host(20),
        };

        // Outbound from A: source address rewritten, port kept.
        let out = flow(Proto::Tcp, (host(10), 5555), (REMOTE, 80));
        let t = nat
            .translate_outbound(1, out, &SnatRule::Floating(fa), now)
            .unwrap();
        assert_eq!(
            (t.src, t.kind),
            (Endpoint::new(fa.external, 5555), Kind::Floating)
        );

        // Inbound to B's floating address: destination rewritten, port kept.
        let inb = flow(Proto::Tcp, (REMOTE, 6000), (fb.external, 22));
        let t = nat
            .translate_inbound_dnat(1, inb, Endpoint::new(fb.internal, 22), now)
            .unwrap();
        assert_eq!(
            (t.src, t.dst, t.kind),
            (inb.src, Endpoint::new(host(20), 22), Kind::Dnat)
        );
        let (back, _) = nat
            .lookup(&flow(Proto::Tcp, (host(20), 22), (REMOTE, 6000)), now)
            .unwrap();
        assert_eq!(back.src, Endpoint::new(fb.external, 22));

        // Hairpin: A reaches B through B's floating address; the source becomes A's floating
        // address so B answers to the router.
        let hp = flow(Proto::Tcp, (host(10), 7777), (fb.external, 22));
        let target = Endpoint::new(fb.internal, 22);
        let t = nat
            .translate_hairpin(1, hp, target, &SnatRule::Floating(fa), now)
            .unwrap();
        assert_eq!(t.src, Endpoint::new(fa.external, 7777));
        assert_eq!(t.dst, target);
        let b_reply = flow(Proto::Tcp, (host(20), 22), (fa.external, 7777));
        let (back, dir) = nat.lookup(&b_reply, now).unwrap();
        assert_eq!(dir, Direction::Reply);
        assert_eq!(
            (back.src, back.dst),
            (Endpoint::new(fb.external, 22), hp.src)
        );

        // Hairpin from a masqueraded host works the same with a pool.
        let hp2 = flow(Proto::Udp, (host(30), 9), (fb.external, 53));
        let t = nat
            .translate_hairpin(1, hp2, target, &masq(1024..=65535), now)
            .unwrap();
        assert_eq!(t.src.addr, EXT);
        assert!(
            nat.lookup(&flow(Proto::Udp, (host(20), 22), (EXT, t.src.port)), now)
                .is_some()
        );
    }

    #[test]
    fn port_forward_on_pool_port_conflicts_instead_of_colliding() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(8080..=8080);
        let fwd = flow(Proto::Tcp, (REMOTE, 999), (EXT, 8080));
        nat.translate_inbound_dnat(1, fwd, Endpoint::new(host(5), 80), now)
            .unwrap();
        let out = flow(Proto::Tcp, (host(6), 1), (REMOTE, 999));
        assert_eq!(
            nat.translate_outbound(1, out, &rule, now),
            Err(NatError::Conflict)
        );
        assert_eq!(nat.stats().mappings, 0);
        assert_eq!(nat.len(), 1);
    }

    #[test]
    fn retain_drops_sessions_and_frees_ports() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(4000..=4000);
        let a = flow(Proto::Udp, (host(1), 1), (REMOTE, 53));
        let t = nat.translate_outbound(1, a, &rule, now).unwrap();
        let fwd = flow(Proto::Tcp, (REMOTE, 2), (EXT, 443));
        nat.translate_inbound_dnat(2, fwd, Endpoint::new(host(2), 443), now)
            .unwrap();
        nat.retain(|s| s.kind != Kind::Snat);
        assert_eq!(nat.len(), 1);
        assert!(nat.session(t.session).is_none());
        assert!(nat.lookup(&a, now).is_none());
        let b = flow(Proto::Udp, (host(3), 1), (REMOTE, 53));
        assert_eq!(
            nat.translate_outbound(1, b, &rule, now).unwrap().src.port,
            4000
        );
        // Stale wheel entries of the dropped session are harmless.
        assert_eq!(nat.expire(now + Duration::from_secs(241)), 1);
        assert_eq!(nat.expire(now + Duration::from_secs(301)), 1);
        assert!(nat.is_empty());
    }

    #[test]
    fn reload_keeps_sessions_and_stale_handles_are_ignored() {
        let now = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(1024..=65535);
        let a = flow(Proto::Tcp, (host(1), 1), (REMOTE, 80));
        let ta = nat.translate_outbound(1, a, &rule, now).unwrap();
        let b = flow(Proto::Tcp, (host(2), 1), (REMOTE, 80));
        nat.translate_outbound(1, b, &rule, now).unwrap();
        // Reload: lower caps and timeouts; sessions stay and keep translating.
        let mut cfg = NatConfig {
            max_sessions_per_tenant: 1,
            ..NatConfig::default()
        };
        cfg.timeouts.tcp_transitory = Duration::from_secs(30);
        nat.set_config(cfg);
        assert_eq!(nat.lookup(&a, now).unwrap().0, ta);
        assert_eq!(nat.len(), 2);
        let c = flow(Proto::Tcp, (host(3), 1), (REMOTE, 80));
        assert_eq!(
            nat.translate_outbound(1, c, &rule, now),
            Err(NatError::TenantCapReached)
        );
        // The shorter timeout applies when the wheel comes round.
        assert_eq!(nat.expire(now + Duration::from_secs(241)), 2);
        // A handle of a removed session, even once its slot is reused, does nothing.
        nat.translate_outbound(1, c, &rule, now + Duration::from_secs(241))
            .unwrap();
        nat.observe_tcp(ta.session, Direction::Original, TcpFlags::RST, now);
        assert!(nat.session(ta.session).is_none());
        assert!(nat.sessions().all(|s| s.tcp == TcpState::New));
    }

    #[test]
    fn expire_is_bounded_per_call() {
        let t0 = Instant::now();
        let cfg = NatConfig {
            expire_budget: 10,
            ..NatConfig::default()
        };
        let mut nat = NatTable::new(cfg);
        let rule = masq(1024..=65535);
        for i in 0..35 {
            let key = flow(Proto::Udp, (host(1), i), (REMOTE, 53));
            nat.translate_outbound(1, key, &rule, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(400);
        let mut calls = Vec::new();
        while !nat.is_empty() {
            calls.push(nat.expire(later));
        }
        assert_eq!(calls, [10, 10, 10, 5]);
    }

    /// The timer's loop: sessions that are seen again (filed later) use up budgets
    /// without being removed, and `expire_all` still goes on until every due one is gone.
    #[test]
    fn expire_all_catches_up_past_refiled_entries() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig {
            expire_budget: 10,
            ..NatConfig::default()
        });
        let rule = masq(1024..=65535);
        let keys: Vec<FiveTuple> = (0..100)
            .map(|i| flow(Proto::Udp, (host(1), 1000 + i), (REMOTE, 53)))
            .collect();
        for k in &keys {
            nat.translate_outbound(1, *k, &rule, t0).unwrap();
        }
        // Half are seen again later: their entries come up and are filed again.
        let t1 = t0 + Duration::from_secs(200);
        for k in keys.iter().step_by(2) {
            nat.lookup(k, t1).unwrap();
        }
        let t2 = t0 + Duration::from_secs(301);
        assert_eq!(nat.expire_all(t2, 100), 50);
        assert_eq!(nat.len(), 50);
        assert!(nat.lookup(&keys[1], t2).is_none());
    }

    /// The wheel's clock starts when the table first sees the time, not at the first
    /// session's deadline: a short-lived session made soon after a long-lived first one
    /// expires on time.
    #[test]
    fn sessions_expire_on_time_from_the_start() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::default());
        let rule = masq(1024..=65535);
        let udp = flow(Proto::Udp, (host(1), 1000), (REMOTE, 53));
        nat.translate_outbound(1, udp, &rule, t0).unwrap();
        let tcp = flow(Proto::Tcp, (host(2), 1000), (REMOTE, 80));
        let t1 = t0 + Duration::from_secs(1);
        let t = nat.translate_outbound(1, tcp, &rule, t1).unwrap();
        nat.observe_tcp(t.session, Direction::Original, TcpFlags::RST, t1);
        for s in 1..=13 {
            nat.expire_all(t0 + Duration::from_secs(s), 4);
        }
        assert!(
            nat.lookup(&tcp, t0 + Duration::from_secs(13)).is_none(),
            "closed: 10 s"
        );
        assert_eq!(nat.len(), 1, "the UDP session (300 s) stays");
    }

    #[test]
    fn port_map_wraps_and_respects_range() {
        let mut m = PortMap::new();
        let r = 60..=130;
        let got: Vec<u16> = (0..71).map(|_| m.alloc(&r).unwrap()).collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (60..=130).collect::<Vec<_>>());
        assert_eq!(m.alloc(&r), None);
        m.free(100);
        assert_eq!(m.alloc(&r), Some(100));
        m.free(61);
        assert_eq!(m.alloc(&r), Some(61));
        let mut full = PortMap::new();
        assert_eq!(full.alloc(&(65535..=65535)), Some(65535));
        assert_eq!(full.alloc(&(65535..=65535)), None);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert_eq!(full.alloc(&empty), None);
    }

    #[test]
    fn memory_per_session() {
        let slot = size_of::<Slot>();
        let index_entry = size_of::<(FiveTuple, (u32, Direction))>();
        let wheel = size_of::<WheelEntry>();
        let mapping = size_of::<((Proto, Endpoint, Ipv4Addr), Mapping)>();
        println!("slot {slot} index entry {index_entry} wheel {wheel} mapping {mapping}");
        // Keep the module doc's numbers honest.
        assert!(slot <= 80, "slot {slot}");
        assert!(index_entry <= 24, "index entry {index_entry}");
        assert!(wheel <= 12 && mapping <= 20);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Out {
            proto: u8,
            host: u8,
            port: u16,
            remote: u8,
            tenant: u32,
        },
        Fwd {
            remote: u8,
            port: u16,
            host: u8,
        },
        Reply {
            pick: usize,
        },
        Tcp {
            pick: usize,
            flags: u8,
            reply: bool,
        },
        Advance(u16),
        Expire,
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3u8, 1..6u8, 1..4u16, 1..4u8, 0..3u32).prop_map(
                |(proto, host, port, remote, tenant)| Op::Out { proto, host, port, remote, tenant }
            ),
            1 => (1..4u8, 1000..1004u16, 1..6u8)
                .prop_map(|(remote, port, host)| Op::Fwd { remote, port, host }),
            2 => any::<usize>().prop_map(|pick| Op::Reply { pick }),
            2 => (any::<usize>(), any::<u8>(), any::<bool>())
                .prop_map(|(pick, flags, reply)| Op::Tcp { pick, flags, reply }),
            1 => (0..400u16).prop_map(Op::Advance),
            1 => Just(Op::Expire),
            1 => any::<u8>().prop_map(Op::Retain),
        ]
    }

    fn check_invariants(nat: &NatTable) {
        let sessions: Vec<&Session> = nat.sessions().collect();
        assert_eq!(sessions.len(), nat.len());
        assert_eq!(nat.index.len(), 2 * sessions.len());
        let mut owner: StdMap<(Proto, Endpoint), Endpoint> = StdMap::new();
        let mut tenants: StdMap<u32, usize> = StdMap::new();
        for s in &sessions {
            *tenants.entry(s.tenant).or_default() += 1;
            assert_eq!(nat.index[&s.original].1, Direction::Original);
            assert_eq!(nat.index[&s.translated.reversed()].1, Direction::Reply);
            if s.holds_port {
                let ext = (s.original.proto, s.translated.src);
                let prev = owner.insert(ext, s.original.src);
                assert!(
                    prev.is_none_or(|p| p == s.original.src),
                    "{ext:?} given twice"
                );
                let used = nat.ports[&(s.translated.src.addr, s.original.proto)]
                    .is_used(s.translated.src.port);
                assert!(used);
            }
        }
        for (t, n) in tenants {
            assert_eq!(nat.tenant_sessions(t), n);
        }
        let in_use: usize = nat.ports.values().map(|m| m.in_use as usize).sum();
        assert_eq!(in_use, nat.mappings.len());
        assert_eq!(in_use, owner.len());
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_table_consistent(ops in prop::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let cfg = NatConfig {
                max_sessions: 40,
                max_sessions_per_tenant: 20,
                expire_budget: 7,
                ..NatConfig::default()
            };
            let mut nat = NatTable::new(cfg);
            let pool = Pool {
                addrs: vec![EXT, Ipv4Addr::new(203, 0, 113, 2)],
                ports: 1000..=1003,
            };
            let rule = SnatRule::Masquerade(pool);
            let protos = [Proto::Tcp, Proto::Udp, Proto::Icmp];
            let mut seen: Vec<FiveTuple> = Vec::new();
            for op in ops {
                match op {
                    Op::Out { proto, host: h, port, remote, tenant } => {
                        let rem = Ipv4Addr::new(198, 51, 100, remote);
                        let key = flow(protos[proto as usize], (host(h), port), (rem, 53));
                        if let Ok(t) = nat.translate_outbound(tenant, key, &rule, now) {
                            seen.push(key);
                            seen.push(reply_of(&key, &t));
                        }
                    }
                    Op::Fwd { remote, port, host: h } => {
                        let rem = Ipv4Addr::new(198, 51, 100, remote);
                        let key = flow(Proto::Tcp, (rem, 53), (EXT, port));
                        let target = Endpoint::new(host(h), 80);
                        if let Ok(t) = nat.translate_inbound_dnat(0, key, target, now) {
                            seen.push(key);
                            seen.push(reply_of(&key, &t));
                        }
                    }
                    Op::Reply { pick } => {
                        if !seen.is_empty() {
                            let _ = nat.lookup(&seen[pick % seen.len()], now);
                        }
                    }
                    Op::Tcp { pick, flags, reply } => {
                        if !seen.is_empty()
                            && let Some((t, dir)) = nat.lookup(&seen[pick % seen.len()], now)
                        {
                            let dir = if reply { Direction::Reply } else { dir };
                            nat.observe_tcp(t.session, dir, TcpFlags::from_bits(flags), now);
                        }
                    }
                    Op::Advance(s) => now += Duration::from_secs(u64::from(s)),
                    Op::Expire => {
                        nat.expire(now);
                    }
                    Op::Retain(x) => nat.retain(|s| (s.original.src.port as u8 ^ x) & 3 != 0),
                }
                check_invariants(&nat);
            }
            // Everything goes eventually.
            let end = now + Duration::from_secs(8000);
            for _ in 0..1000 {
                if nat.is_empty() {
                    break;
                }
                nat.expire(end);
            }
            prop_assert!(nat.is_empty());
            prop_assert_eq!(nat.stats().mappings, 0);
        }
    }
}
