//! The router's network function: bridge domains, routed interfaces and NAT.
//!
//! A frame's way:
//!
//! 1. A port owned by an interface sends every frame to L3. A port in a bridge domain is
//!    bridged, except frames for the domain's routed interface (IRB): those to its MAC are
//!    routed, and ARP requests for its addresses are answered instead of flooded.
//! 2. L3 input: ARP is answered and learned from ([`overlay_io::l3::arp_input`]); IPv4 is
//!    checked (RFC 1812 §5.2.2) and counted per interface.
//! 3. NAT, before routing: an existing session's translation, or a new destination NAT
//!    (floating address, port forward; with hairpin when the source is a tenant host).
//!    ICMP errors about translated flows are translated too (RFC 5508 §7).
//! 4. Packets for our own addresses: ICMP echo is answered, the rest is dropped.
//! 5. Route lookup (longest prefix, ECMP by 5-tuple hash), TTL (time exceeded), egress MTU
//!    (fragmentation needed when DF is set; otherwise fragmented), then source NAT for a
//!    new flow leaving by a masquerade or floating rule's interface.
//! 6. The rewrite (NAT, TTL with incremental checksums), and the next hop's MAC from ARP:
//!    known, or the packet is held and a request goes out.
//!
//! The ARP cache, the ICMP rate limit and the NAT table are one per router, shared by the
//! workers behind one mutex taken once per batch: NAT's two directions of a flow, and an
//! ARP request and its reply, may arrive on different workers.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use overlay_io::arp::Resolution;
use overlay_io::bridge::{Bridge, DomainConfig};
use overlay_io::buf::{ETH_HEADER_LEN, PacketBuf};
use overlay_io::fib::{Decision, RejectKind};
use overlay_io::icmp::IcmpError;
use overlay_io::ipv4::{self, Header};
use overlay_io::l3::{
    self, ArpOutcome, Attach, Ctx, ETHERTYPE_ARP, ETHERTYPE_IPV4, L3Config, L3Counters, L3Hub,
    Neighbours,
};
use overlay_io::metrics::WorkerCounters;
use overlay_io::nat::{Direction, FiveTuple, NatError, NatTable, SessionId, TcpFlags, Translation};
use overlay_io::pipeline::{DropReason, NetworkFunction, PortId, Transmit, Verdict};
use overlay_io::rewrite::{self, Flow};

use crate::l3config::NatSettings;

/// How often timers run: ARP retries and ageing, NAT expiry, gauges.
const TICK: Duration = Duration::from_secs(1);
/// The least time between two log lines about refused NAT flows.
const NAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the router's workers run with; swapped whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfConfig {
    /// Bridge domains.
    pub bridges: Vec<DomainConfig>,
    /// Interfaces and routes.
    pub l3: L3Config,
    /// NAT rules.
    pub nat: NatSettings,
}

/// State one per router (see the module docs).
#[derive(Debug)]
pub struct State {
    /// ARP, ICMP rate limit, pending ARP frames.
    pub nb: Neighbours,
    /// NAT sessions.
    pub nat: NatTable,
    /// The config the state was last set up for.
    applied: Arc<NfConfig>,
    /// NAT refusals since the last log line, and when that was.
    nat_refused: u64,
    nat_logged: Option<Instant>,
}

/// The shared state and the routed metrics of one router.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Whether the state has frames to send, so that `poll_transmit` can skip the lock.
    pending: AtomicBool,
    /// Routed metrics.
    pub hub: Arc<L3Hub>,
}

impl Shared {
    /// State for a first config; the hub's gauges are refreshed from it at every scrape.
    pub fn new(cfg: &Arc<NfConfig>, hub: Arc<L3Hub>) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                nb: Neighbours::new(&cfg.l3),
                nat: NatTable::new(cfg.nat.table),
                applied: cfg.clone(),
                nat_refused: 0,
                nat_logged: None,
            }),
            pending: AtomicBool::new(true),
            hub,
        });
        let weak = Arc::downgrade(&shared);
        shared.hub.set_refresh(Box::new(move |g| {
            if let Some(sh) = weak.upgrade() {
                let st = sh.lock();
                let cfg = st.applied.clone();
                set_gauges(g, &st, &cfg);
            }
        }));
        shared
    }

    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The router's network function, one per worker.
#[derive(Debug)]
pub struct Router {
    cfg: Arc<NfConfig>,
    bridge: Bridge,
    shared: Arc<Shared>,
    counters: Arc<L3Counters>,
    drops: Arc<WorkerCounters>,
    next_tick: Option<Instant>,
    /// Buffers for fragments, allocated once; the first `frag_ready.len()` hold fragments
    /// ready to send out of (interface, toward MAC).
    frag_bufs: Vec<PacketBuf>,
    frag_ready: Vec<(usize, overlay_io::Mac)>,
    /// A buffer for frames the router builds (ARP).
    scratch: PacketBuf,
    /// When the worker was made: the first tick is due then.
    created: Instant,
}

/// Fragments one worker can have waiting for `poll_transmit`.
const FRAG_BUFS: usize = 64;

/// A NAT rewrite decided before routing or after it.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Tuple {
        key: FiveTuple,
        src: overlay_io::nat::Endpoint,
        dst: overlay_io::nat::Endpoint,
        session: SessionId,
        dir: Direction,
        tcp_flags: u8,
    },
    IcmpError {
        quoted: FiveTuple,
        outer_dst: Ipv4Addr,
        inner_src: overlay_io::nat::Endpoint,
        inner_dst: overlay_io::nat::Endpoint,
    },
}

impl Plan {
    fn tuple(key: FiveTuple, t: Translation, dir: Direction, tcp_flags: u8) -> Plan {
        Plan::Tuple {
            key,
            src: t.src,
            dst: t.dst,
            session: t.session,
            dir,
            tcp_flags,
        }
    }

    fn dst(&self) -> Ipv4Addr {
        match self {
            Plan::Tuple { dst, .. } => dst.addr,
            Plan::IcmpError { outer_dst, .. } => *outer_dst,
        }
    }
}

fn nat_drop(e: NatError) -> DropReason {
    match e {
        NatError::PoolExhausted => DropReason::NatPoolExhausted,
        NatError::TenantCapReached => DropReason::NatCapReached,
        NatError::TableFull => DropReason::NatTableFull,
        NatError::Conflict => DropReason::NatConflict,
    }
}

/// A flow hash for ECMP: the same for every packet of a flow.
fn ecmp_hash(flow: &Flow, hdr: &Header) -> u32 {
    let mut h = u64::from(u32::from(hdr.src)) << 32 | u64::from(u32::from(hdr.dst));
    if let Flow::Tuple { key, .. } = flow {
        h ^= u64::from(key.src.port) << 16 | u64::from(key.dst.port);
        h ^= u64::from(hdr.protocol) << 40;
    }
    // A 64-bit finaliser (splitmix64) so that nearby addresses spread.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) as u32
}

/// Where a frame for `mac` leaves interface `iface`: its port, or for an IRB interface the
/// port `mac` was learned on in the domain (every port when unknown or broadcast).
fn egress(bridge: &Bridge, l3c: &L3Config, iface: usize, mac: &overlay_io::Mac) -> Verdict {
    match l3c.interfaces.get(iface).map(|i| i.attach) {
        Some(Attach::Port(p)) => Verdict::Forward(p),
        Some(Attach::Bridge(d)) => bridge.egress(d, mac),
        None => Verdict::Drop(DropReason::NoDestination),
    }
}

/// Queue a frame the router originates out of interface `iface` toward `mac`; `false`
/// when the transmit queue is full.
fn send(
    bridge: &Bridge,
    l3c: &L3Config,
    tx: &mut Transmit,
    iface: usize,
    mac: &overlay_io::Mac,
    frame: &[u8],
) -> bool {
    match egress(bridge, l3c, iface, mac) {
        Verdict::Forward(p) => tx.send(p, frame),
        Verdict::Flood(set) => set.iter().all(|p| tx.send(p, frame)),
        _ => true,
    }
}

impl Router {
    /// A router worker.
    pub fn new(cfg: &Arc<NfConfig>, shared: Arc<Shared>, drops: Arc<WorkerCounters>) -> Router {
        let counters = shared.hub.add_worker();
        Router {
            cfg: cfg.clone(),
            bridge: Bridge::new(&cfg.bridges, drops.clone()),
            shared,
            counters,
            drops,
            next_tick: None,
            frag_bufs: (0..FRAG_BUFS).map(|_| PacketBuf::new()).collect(),
            frag_ready: Vec::with_capacity(FRAG_BUFS),
            scratch: PacketBuf::new(),
            created: Instant::now(),
        }
    }

    /// The bridge domains.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Where a frame for `mac` leaves interface `iface`.
    fn egress(&self, iface: usize, mac: &overlay_io::Mac) -> Verdict {
        egress(&self.bridge, &self.cfg.l3, iface, mac)
    }

    /// Decide one frame.
    fn one(
        &mut self,
        cfg: &Arc<NfConfig>,
        st: &mut State,
        pkt: &mut PacketBuf,
        now: Instant,
    ) -> Verdict {
        let l3c = &cfg.l3;
        let iface = match l3c.port_iface(pkt.port) {
            Some(i) => i,
            None => {
                let Some(d) = self.bridge.domain_of(pkt.port) else {
                    return Verdict::Drop(DropReason::PortUnassigned);
                };
                let Some(i) = l3c.bridge_iface(d) else {
                    return self.bridge.forward(pkt, now);
                };
                // IRB: our MAC is routed; an ARP broadcast may be for us; the rest bridges.
                let Some(dst) = pkt.dst_mac() else {
                    return Verdict::Drop(DropReason::FrameMalformed);
                };
                if dst != l3c.interfaces[i].mac {
                    if overlay_io::is_group_mac(&dst) && pkt.ethertype() == Some(ETHERTYPE_ARP) {
                        let v = self.bridge.forward(pkt, now);
                        return match l3::arp_input(l3c, i, pkt, &mut st.nb, &self.counters, now) {
                            ArpOutcome::Replied => Verdict::Reply,
                            _ => v,
                        };
                    }
                    return self.bridge.forward(pkt, now);
                }
                self.bridge.learn(pkt, now);
                i
            }
        };
        match pkt.ethertype() {
            Some(ETHERTYPE_ARP) => {
                match l3::arp_input(l3c, iface, pkt, &mut st.nb, &self.counters, now) {
                    ArpOutcome::Replied => Verdict::Reply,
                    ArpOutcome::Absorbed | ArpOutcome::NotOurs => Verdict::Consumed,
                    ArpOutcome::Malformed => Verdict::Drop(DropReason::FrameMalformed),
                }
            }
            Some(ETHERTYPE_IPV4) => {
                let Some(dst) = pkt.dst_mac() else {
                    return Verdict::Drop(DropReason::FrameMalformed);
                };
                if dst != l3c.interfaces[iface].mac {
                    return Verdict::Drop(if overlay_io::is_group_mac(&dst) {
                        DropReason::LocalUnhandled
                    } else {
                        DropReason::NotForUs
                    });
                }
                let hdr = match ipv4::parse(&pkt.bytes()[ETH_HEADER_LEN..]) {
                    Ok(h) => h,
                    Err(r) => return Verdict::Drop(r),
                };
                pkt.truncate(ETH_HEADER_LEN + hdr.total_len);
                let c = &self.counters.ifaces[l3c.interfaces[iface].slot];
                c.rx_packets.inc();
                c.rx_bytes.add(hdr.total_len as u64);
                self.route(cfg, st, iface, pkt, &hdr, now)
            }
            Some(_) => Verdict::Drop(if pkt.dst_mac() == Some(l3c.interfaces[iface].mac) {
                DropReason::LocalUnhandled
            } else {
                DropReason::NotForUs
            }),
            None => Verdict::Drop(DropReason::FrameMalformed),
        }
    }

    /// Answer with an ICMP error about `pkt` (counting `reason`), or drop it.
    fn refuse(
        &self,
        st: &mut State,
        iface: usize,
        (err, reason): (Option<IcmpError>, DropReason),
        hdr: &Header,
        pkt: &mut PacketBuf,
        now: Instant,
    ) -> Verdict {
        let cx = Ctx {
            cfg: &self.cfg.l3,
            counters: &self.counters,
            now,
        };
        if let Some(e) = err
            && l3::icmp_error_in_place(&cx, &mut st.nb, iface, e, hdr, pkt)
        {
            self.drops.count_drop(reason);
            return Verdict::Reply;
        }
        Verdict::Drop(reason)
    }

    fn count_nat_refusal(&self, st: &mut State, e: NatError, key: &FiveTuple, now: Instant) {
        st.nat_refused += 1;
        if st
            .nat_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= NAT_LOG_INTERVAL)
        {
            tracing::warn!(
                reason = %e,
                refused = st.nat_refused,
                last_src = %key.src.addr,
                last_dst = %key.dst.addr,
                "NAT refused new flows (counted in vnf_drops_total; logged at most every 10 s)"
            );
            st.nat_refused = 0;
            st.nat_logged = Some(now);
        }
    }

    #[allow(clippy::too_many_lines)]
    fn route(
        &mut self,
        cfg: &Arc<NfConfig>,
        st: &mut State,
        iface: usize,
        pkt: &mut PacketBuf,
        hdr: &Header,
        now: Instant,
    ) -> Verdict {
        let l3c = &cfg.l3;
        let nat = &cfg.nat;
        let flow = rewrite::flow(&pkt.bytes()[ETH_HEADER_LEN..], hdr);

        // NAT before routing: sessions, then new destination NAT.
        let mut plan = None;
        if nat.is_active() {
            match flow {
                Flow::Tuple { key, tcp_flags } => {
                    if let Some((t, dir)) = st.nat.lookup(&key, now) {
                        plan = Some(Plan::tuple(key, t, dir, tcp_flags));
                    } else if let Some((target, tenant)) = nat.inbound(&key) {
                        let r = match nat.hairpin(key.src.addr) {
                            Some((rule, t)) => st.nat.translate_hairpin(t, key, target, rule, now),
                            None => st.nat.translate_inbound_dnat(tenant, key, target, now),
                        };
                        match r {
                            Ok(t) => {
                                plan = Some(Plan::tuple(key, t, Direction::Original, tcp_flags))
                            }
                            Err(e) => {
                                self.count_nat_refusal(st, e, &key, now);
                                return Verdict::Drop(nat_drop(e));
                            }
                        }
                    }
                }
                Flow::IcmpError { quoted } => {
                    if let Some((t, _)) = st.nat.lookup(&quoted.reversed(), now) {
                        plan = Some(Plan::IcmpError {
                            quoted,
                            outer_dst: t.dst.addr,
                            inner_src: t.dst,
                            inner_dst: t.src,
                        });
                    }
                }
                Flow::Other => {
                    if nat.is_external(hdr.dst) && !l3c.is_local(hdr.dst) {
                        return Verdict::Drop(DropReason::NatUntranslatable);
                    }
                }
            }
        }

        let dst = plan.as_ref().map_or(hdr.dst, Plan::dst);
        if plan.is_none() && (l3c.is_local(dst) || nat.is_external(dst)) {
            let c = Ctx {
                cfg: l3c,
                counters: &self.counters,
                now,
            };
            return if hdr.protocol == 1 && l3::echo_in_place(pkt, c.counters) {
                Verdict::Reply
            } else {
                Verdict::Drop(DropReason::LocalUnhandled)
            };
        }

        let (out, next_hop) = match l3c.fib.lookup(dst, ecmp_hash(&flow, hdr)) {
            Decision::Forward { iface, next_hop } => (iface, next_hop),
            Decision::NoRoute | Decision::Reject(RejectKind::Unreachable) => {
                return self.refuse(
                    st,
                    iface,
                    (Some(IcmpError::NetUnreachable), DropReason::NoRoute),
                    hdr,
                    pkt,
                    now,
                );
            }
            Decision::Reject(RejectKind::Prohibit) => {
                return self.refuse(
                    st,
                    iface,
                    (Some(IcmpError::AdminProhibited), DropReason::Prohibited),
                    hdr,
                    pkt,
                    now,
                );
            }
            Decision::Reject(RejectKind::Blackhole) => {
                return Verdict::Drop(DropReason::Blackhole);
            }
        };
        if hdr.ttl <= 1 {
            return self.refuse(
                st,
                iface,
                (Some(IcmpError::TimeExceeded), DropReason::TtlExceeded),
                hdr,
                pkt,
                now,
            );
        }
        let mtu = l3c.interfaces[out].mtu as usize;
        if hdr.total_len > mtu && hdr.dont_fragment {
            // RFC 1191: say the next-hop MTU; the packet as received is quoted.
            let err = IcmpError::FragNeeded {
                mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
            };
            return self.refuse(
                st,
                iface,
                (Some(err), DropReason::MtuExceeded),
                hdr,
                pkt,
                now,
            );
        }

        // Source NAT of a new flow leaving by a rule's interface.
        if plan.is_none() && nat.is_active() {
            match flow {
                Flow::Tuple { key, tcp_flags } => {
                    if let Some((rule, tenant)) = nat.outbound(key.src.addr, out) {
                        match st.nat.translate_outbound(tenant, key, rule, now) {
                            Ok(t) => {
                                plan = Some(Plan::tuple(key, t, Direction::Original, tcp_flags))
                            }
                            Err(e) => {
                                self.count_nat_refusal(st, e, &key, now);
                                return Verdict::Drop(nat_drop(e));
                            }
                        }
                    }
                }
                Flow::Other | Flow::IcmpError { .. } => {
                    if nat.outbound(hdr.src, out).is_some() {
                        return Verdict::Drop(DropReason::NatUntranslatable);
                    }
                }
            }
        }

        // Rewrite: NAT, TTL, MACs.
        let frame = pkt.bytes_mut();
        let ip = &mut frame[ETH_HEADER_LEN..];
        match plan {
            Some(Plan::Tuple {
                key,
                src,
                dst,
                session,
                dir,
                tcp_flags,
            }) => {
                rewrite::rewrite(ip, hdr, &key, src, dst);
                if tcp_flags != 0 || key.proto == overlay_io::nat::Proto::Tcp {
                    st.nat
                        .observe_tcp(session, dir, TcpFlags::from_bits(tcp_flags), now);
                }
            }
            Some(Plan::IcmpError {
                quoted,
                outer_dst,
                inner_src,
                inner_dst,
            }) => {
                rewrite::rewrite_icmp_error(ip, hdr, &quoted, outer_dst, inner_src, inner_dst);
            }
            None => {}
        }
        ipv4::decrement_ttl(ip);
        let out_ifc = &l3c.interfaces[out];
        frame[6..12].copy_from_slice(&out_ifc.mac);
        let c = &self.counters.ifaces[out_ifc.slot];
        c.fwd_packets.inc();
        c.fwd_bytes.add(hdr.total_len as u64);
        if hdr.total_len > mtu {
            return self.fragment(st, out, next_hop, pkt, hdr, mtu, now);
        }
        match st.nb.arp.resolve(next_hop, pkt.bytes(), now) {
            Resolution::Known(mac) => {
                pkt.bytes_mut()[0..6].copy_from_slice(&mac);
                self.egress(out, &mac)
            }
            Resolution::HeldSendRequest => {
                st.nb.requests.push(next_hop);
                Verdict::Consumed
            }
            Resolution::Held => Verdict::Consumed,
            Resolution::Dropped(r) => Verdict::Drop(r),
        }
    }

    /// Send a packet too big for the egress MTU (DF clear) as fragments (RFC 1812 §5.2.6):
    /// each is resolved like a packet, and the ready ones go out with `poll_transmit`.
    #[allow(clippy::too_many_arguments)]
    fn fragment(
        &mut self,
        st: &mut State,
        out: usize,
        next_hop: Ipv4Addr,
        pkt: &PacketBuf,
        hdr: &Header,
        mtu: usize,
        now: Instant,
    ) -> Verdict {
        // Enough buffers for the worst case (60-byte headers in every fragment)?
        let per = mtu.saturating_sub(60) & !7;
        if per == 0 {
            return Verdict::Drop(DropReason::MtuExceeded);
        }
        let needed = hdr.total_len.div_ceil(per) + 1;
        if self.frag_bufs.len() - self.frag_ready.len() < needed {
            return Verdict::Drop(DropReason::NoBuffer);
        }
        let mut eth = [0u8; ETH_HEADER_LEN];
        eth.copy_from_slice(&pkt.bytes()[..ETH_HEADER_LEN]);
        let bufs = &mut self.frag_bufs;
        let ready = &mut self.frag_ready;
        let mut requested = false;
        let mut dropped = None;
        let mut frame = [0u8; overlay_io::buf::MAX_FRAME];
        ipv4::fragment(&pkt.bytes()[ETH_HEADER_LEN..], hdr, mtu, |frag| {
            let len = ETH_HEADER_LEN + frag.len();
            frame[..ETH_HEADER_LEN].copy_from_slice(&eth);
            frame[ETH_HEADER_LEN..len].copy_from_slice(frag);
            match st.nb.arp.resolve(next_hop, &frame[..len], now) {
                Resolution::Known(mac) => {
                    frame[0..6].copy_from_slice(&mac);
                    let b = &mut bufs[ready.len()];
                    b.fill(&frame[..len]);
                    ready.push((out, mac));
                }
                Resolution::HeldSendRequest => requested = true,
                Resolution::Held => {}
                Resolution::Dropped(r) => dropped = Some(r),
            }
        });
        if requested {
            st.nb.requests.push(next_hop);
        }
        match dropped {
            Some(r) => {
                self.drops.count_drop(r);
                Verdict::Consumed
            }
            None => Verdict::Consumed,
        }
    }

    /// Queue a frame out of interface `iface` toward `mac`: see [`send`].
    fn send(&self, tx: &mut Transmit, iface: usize, mac: &overlay_io::Mac, frame: &[u8]) -> bool {
        send(&self.bridge, &self.cfg.l3, tx, iface, mac, frame)
    }

    fn tick(&mut self, now: Instant) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let st = &mut *st;
        let dropped = st.nb.arp.poll(now, |ip| st.nb.requests.push(ip));
        for _ in 0..dropped {
            self.drops.count_drop(DropReason::ArpTimeout);
        }
        if st.nb.has_work() {
            shared.pending.store(true, Relaxed);
        }
        let budget = st.nat.config().expire_budget;
        while st.nat.expire(now) >= budget {}
        set_gauges(&shared.hub.gauges, st, &self.cfg);
    }
}

/// Set the routed gauges from the shared state.
fn set_gauges(g: &overlay_io::l3::L3Gauges, st: &State, cfg: &NfConfig) {
    g.arp_entries.set(st.nb.arp.len() as u64);
    g.arp_held.set(st.nb.arp.held() as u64);
    let stats = st.nat.stats();
    g.nat_sessions.set(stats.sessions as u64);
    g.nat_mappings.set(stats.mappings as u64);
    g.nat_expired.set(stats.expired);
    let pools: Vec<(String, u64)> = cfg
        .nat
        .pools()
        .into_iter()
        .map(|(n, p)| (n, st.nat.ports_in_use(&p) as u64))
        .collect();
    *g.nat_pool_ports
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = pools;
    let tenants: Vec<(String, u64)> = cfg
        .nat
        .tenants
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), st.nat.tenant_sessions(i as u32) as u64))
        .collect();
    *g.nat_tenant_sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = tenants;
}

impl NetworkFunction for Router {
    type Config = NfConfig;

    fn reconfigure(&mut self, config: &Arc<NfConfig>, remap: &dyn Fn(PortId) -> Option<PortId>) {
        self.bridge.reconfigure(&config.bridges, remap);
        let mut st = self.shared.lock();
        if !Arc::ptr_eq(&st.applied, config) {
            let old = st.applied.clone();
            st.nb.reconfigure(&old.l3, &config.l3);
            st.nat.set_config(config.nat.table);
            let nat = &config.nat;
            st.nat.retain(|s| nat.allows(s));
            st.applied = config.clone();
        }
        drop(st);
        self.cfg = config.clone();
    }

    fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant) {
        let shared = self.shared.clone();
        let cfg = self.cfg.clone();
        let mut st = shared.lock();
        for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
            *v = self.one(&cfg, &mut st, p, now);
        }
        if st.nb.has_work() {
            shared.pending.store(true, Relaxed);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let b = self.bridge.poll_timeout();
        // Before the first tick: due at once (`created` is before any `now` the engine
        // passes; `Instant::now()` here would always be later and never come due).
        let t = Some(self.next_tick.unwrap_or(self.created));
        match (b, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.bridge.handle_timeout(now);
        if self.next_tick.is_none_or(|t| now >= t) {
            self.tick(now);
            self.next_tick = Some(now + TICK);
        }
    }

    fn poll_transmit(&mut self, tx: &mut Transmit) {
        let mut sent = 0;
        for (i, &(iface, mac)) in self.frag_ready.iter().enumerate() {
            if !self.send(tx, iface, &mac, self.frag_bufs[i].bytes()) {
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            // Keep the unsent ones at the front, in order.
            self.frag_ready.drain(..sent);
            self.frag_bufs[..].rotate_left(sent);
        }
        if !self.shared.pending.load(Relaxed) {
            return;
        }
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let st = &mut *guard;
        self.drain_neighbours(st, tx);
        shared.pending.store(st.nb.has_work(), Relaxed);
    }
}

impl Router {
    /// Send what the neighbour state queued: announcements, requests, released packets.
    fn drain_neighbours(&mut self, st: &mut State, tx: &mut Transmit) {
        let l3c = &self.cfg.l3;
        let buf = &mut self.scratch;
        while let Some(&(iface, addr)) = st.nb.announce.last() {
            if !l3::arp_announce(l3c, iface, addr, buf)
                || send(&self.bridge, l3c, tx, iface, &l3::BROADCAST, buf.bytes())
            {
                if l3c.interfaces.get(iface).is_some() {
                    self.counters.arp_gratuitous.inc();
                }
                st.nb.announce.pop();
            } else {
                return;
            }
        }
        while let Some(&ip) = st.nb.requests.last() {
            if let Some(iface) = l3::arp_request(l3c, ip, buf) {
                if !send(&self.bridge, l3c, tx, iface, &l3::BROADCAST, buf.bytes()) {
                    return;
                }
                self.counters.arp_requests.inc();
            }
            st.nb.requests.pop();
        }
        if st.nb.releasable {
            let bridge = &self.bridge;
            st.nb.arp.release(|ip, mac, held| {
                let Some(iface) = l3c.connected(ip) else {
                    return true;
                };
                held.bytes_mut()[0..6].copy_from_slice(&mac);
                send(bridge, l3c, tx, iface, &mac, held.bytes())
            });
            st.nb.releasable = st.nb.arp.has_releasable();
        }
    }
}
