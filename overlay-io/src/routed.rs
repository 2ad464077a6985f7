//! The routed network function every L3 VNF runs: bridge domains, routed interfaces
//! ([`crate::l3`]), IPv4 forwarding, and a [`Hook`] where the function adds its own
//! decisions: NAT for the router, the policy and connection tracking for the firewall.
//!
//! A frame's way:
//!
//! 1. A port owned by an interface sends every frame to L3. A port in a bridge domain is
//!    bridged ([`Hook::bridged`] sees bridged IPv4 first: a transparent firewall), except
//!    frames for the domain's routed interface (IRB): those to its MAC are routed, and ARP
//!    requests for its addresses are answered instead of flooded.
//! 2. L3 input: ARP is answered and learned from ([`crate::l3::arp_input`]); IPv4 is checked
//!    (RFC 1812 §5.2.2) and counted per interface.
//! 3. [`Hook::pre_routing`]: may redirect the packet (destination NAT).
//! 4. Packets for the function's own addresses go to [`Hook::input`], then ICMP echo is
//!    answered and the rest dropped.
//! 5. Route lookup (longest prefix, ECMP by 5-tuple hash), TTL (time exceeded), egress MTU
//!    (fragmentation needed when DF is set), then [`Hook::forward`] with both interfaces
//!    known (filtering, source NAT).
//! 6. [`Hook::rewrite`], TTL decrement with incremental checksum, fragmentation when DF is
//!    clear and the packet is too big, and the next hop's MAC from ARP: known, or the
//!    packet is held and a request goes out.
//!
//! Packets the hook hands to the function's own host stack ([`Step::Deliver`], see
//! [`crate::host`]) leave the datapath there; the host stack's packets come back through
//! `poll_transmit` and are routed like any the function originates (no TTL decrement).
//!
//! The ARP cache, the ICMP rate limit and the hook's state are one per function, shared by
//! the workers behind one mutex taken once per batch: the two directions of a translated
//! or tracked flow, and an ARP request and its reply, may reach different workers.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::Mac;
use crate::arp::Resolution;
use crate::bridge::{Bridge, DomainConfig};
use crate::buf::{ETH_HEADER_LEN, MAX_FRAME, PacketBuf};
use crate::fib::{Decision, RejectKind};
use crate::host::HostLink;
use crate::icmp::IcmpError;
use crate::ipv4::{self, Header};
use crate::l3::{
    self, ArpOutcome, Attach, Ctx, ETHERTYPE_ARP, ETHERTYPE_IPV4, L3Config, L3Counters, L3Gauges,
    L3Hub, Neighbours,
};
use crate::metrics::WorkerCounters;
use crate::pipeline::{DropReason, NetworkFunction, PortId, Transmit, Verdict};
use crate::rewrite::{self, Flow};

/// How often timers run: ARP retries and ageing, the hook's expiry, gauges.
pub const TICK: Duration = Duration::from_secs(1);
/// Budgets of expiry work (NAT sessions, connections) a hook's tick runs at most: enough
/// to catch up with a table of a million entries timing out at once over a few ticks,
/// without holding the state's lock for long.
pub const EXPIRE_ROUNDS: usize = 64;
/// Fragments one worker can have waiting for `poll_transmit`.
const FRAG_BUFS: usize = 64;
/// Host stack packets one `poll_transmit` sends at most.
const HOST_BURST: usize = 64;

/// What a routed function's workers run with; swapped whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedConfig<C> {
    /// Bridge domains.
    pub bridges: Vec<DomainConfig>,
    /// Interfaces and routes.
    pub l3: L3Config,
    /// The hook's settings.
    pub ext: C,
}

/// What a hook decides about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on.
    Continue,
    /// Drop, counted.
    Drop(DropReason),
    /// Drop, counted, and answer with this ICMP error (rate-limited like every error).
    Refuse(IcmpError, DropReason),
    /// Drop, counted, and answer a TCP segment with a RST (RFC 9293 §3.10.7.1).
    Reset(DropReason),
    /// A packet for the function's own addresses: hand it to the host stack (from
    /// [`Hook::input`] only; elsewhere, and without a host stack, it is dropped as
    /// `local_unhandled`).
    Deliver,
}

/// One packet as a hook sees it.
#[derive(Debug)]
pub struct PacketCx<'a, C, S> {
    /// The config.
    pub cfg: &'a RoutedConfig<C>,
    /// The hook's shared state, locked.
    pub st: &'a mut S,
    /// The ingress interface, or for a bridged frame `usize::MAX`.
    pub iface: usize,
    /// The ingress port.
    pub port: PortId,
    /// The IPv4 packet.
    pub ip: &'a [u8],
    /// Its header.
    pub hdr: &'a Header,
    /// Its flow key.
    pub flow: &'a Flow,
    /// Now.
    pub now: Instant,
}

/// A routed function's own decisions. One value per worker (`Default`), plus
/// function-wide [`Hook::State`] behind the core's lock.
pub trait Hook: Default + Send + std::fmt::Debug + 'static {
    /// The hook's settings.
    type Config: Send + Sync + std::fmt::Debug + 'static;
    /// Function-wide state (NAT sessions, connections), kept across reloads.
    type State: Send + std::fmt::Debug + 'static;

    /// State for the first config.
    fn new_state(cfg: &RoutedConfig<Self::Config>) -> Self::State;

    /// Apply a new config to the state, once per reload.
    fn reconfigure(
        _st: &mut Self::State,
        _old: &RoutedConfig<Self::Config>,
        _new: &RoutedConfig<Self::Config>,
    ) {
    }

    /// Addresses the function owns besides its interfaces' (NAT external addresses):
    /// packets to them that the hook did not redirect are the function's own.
    fn owns(_cfg: &Self::Config, _a: Ipv4Addr) -> bool {
        false
    }

    /// Before routing; may set `dst` to redirect the packet (destination NAT).
    fn pre_routing(
        &mut self,
        _p: &mut PacketCx<'_, Self::Config, Self::State>,
        _dst: &mut Ipv4Addr,
    ) -> Step {
        Step::Continue
    }

    /// A packet for one of the function's own addresses.
    fn input(&mut self, _p: &mut PacketCx<'_, Self::Config, Self::State>) -> Step {
        Step::Continue
    }

    /// After the route, TTL and MTU checks, leaving by interface `out`.
    fn forward(&mut self, _p: &mut PacketCx<'_, Self::Config, Self::State>, _out: usize) -> Step {
        Step::Continue
    }

    /// A bridged IPv4 frame about to leave as `verdict` (transparent mode).
    fn bridged(
        &mut self,
        _p: &mut PacketCx<'_, Self::Config, Self::State>,
        _verdict: Verdict,
    ) -> Step {
        Step::Continue
    }

    /// Rewrite the packet as `pre_routing`/`forward` decided; called once per forwarded
    /// packet, before the TTL decrement.
    fn rewrite(&mut self, _st: &mut Self::State, _ip: &mut [u8], _hdr: &Header, _now: Instant) {}

    /// Timers, once a second: expiry. Drops to count go to `drops`.
    fn tick(_st: &mut Self::State, _cfg: &Self::Config, _now: Instant, _drops: &WorkerCounters) {}

    /// Set the hook's gauges.
    fn gauges(_st: &Self::State, _cfg: &Self::Config, _g: &L3Gauges) {}
}

/// The function-wide state: neighbours and the hook's.
#[derive(Debug)]
pub struct State<H: Hook> {
    /// ARP, ICMP rate limit, pending ARP frames.
    pub nb: Neighbours,
    /// The hook's state.
    pub ext: H::State,
    /// The config the state was last set up for.
    applied: Arc<RoutedConfig<H::Config>>,
}

impl<H: Hook> State<H> {
    /// The config the state was last set up for.
    pub fn applied(&self) -> &Arc<RoutedConfig<H::Config>> {
        &self.applied
    }
}

/// The shared state and the routed metrics of one function.
#[derive(Debug)]
pub struct Shared<H: Hook> {
    state: Mutex<State<H>>,
    /// Whether the state has frames to send, so that `poll_transmit` can skip the lock.
    pending: AtomicBool,
    /// The function's host stack, if it has one.
    host: OnceLock<Arc<HostLink>>,
    /// Routed metrics.
    pub hub: Arc<L3Hub>,
}

/// Set the routed gauges from the shared state.
fn set_gauges<H: Hook>(g: &L3Gauges, st: &State<H>) {
    g.arp_entries.set(st.nb.arp.len() as u64);
    g.arp_held.set(st.nb.arp.held() as u64);
    H::gauges(&st.ext, &st.applied.ext, g);
}

impl<H: Hook> Shared<H> {
    /// State for a first config; the hub's gauges are refreshed from it at every scrape.
    pub fn new(cfg: &Arc<RoutedConfig<H::Config>>, hub: Arc<L3Hub>) -> Arc<Shared<H>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                nb: Neighbours::new(&cfg.l3),
                ext: H::new_state(cfg),
                applied: cfg.clone(),
            }),
            pending: AtomicBool::new(true),
            host: OnceLock::new(),
            hub,
        });
        let weak = Arc::downgrade(&shared);
        shared.hub.set_refresh(Box::new(move |g| {
            if let Some(sh) = weak.upgrade() {
                set_gauges(g, &sh.lock());
            }
        }));
        shared
    }

    /// Attach the host stack, before the workers start; `false` if one is attached.
    pub fn set_host(&self, link: Arc<HostLink>) -> bool {
        self.host.set(link).is_ok()
    }

    /// The host stack's link.
    pub fn host(&self) -> Option<&Arc<HostLink>> {
        self.host.get()
    }

    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, State<H>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A routed function, one per worker.
#[derive(Debug)]
pub struct Routed<H: Hook> {
    cfg: Arc<RoutedConfig<H::Config>>,
    bridge: Bridge,
    shared: Arc<Shared<H>>,
    hook: H,
    counters: Arc<L3Counters>,
    drops: Arc<WorkerCounters>,
    next_tick: Option<Instant>,
    /// Buffers for fragments, allocated once; the first `frag_ready.len()` hold fragments
    /// ready to send out of (interface, toward MAC).
    frag_bufs: Vec<PacketBuf>,
    frag_ready: Vec<(usize, Mac)>,
    /// A buffer for frames the function builds (ARP).
    scratch: PacketBuf,
    /// When the worker was made: the first tick is due then.
    created: Instant,
    /// The latest time the engine passed in: the host stack's packets are sent with it.
    now: Instant,
}

/// A flow hash for ECMP: the same for every packet of a flow.
fn ecmp_hash(flow: &Flow, hdr: &Header) -> u32 {
    let mut h = (u64::from(u32::from(hdr.src)) << 32) | u64::from(u32::from(hdr.dst));
    if let Flow::Tuple { key, .. } = flow {
        h ^= (u64::from(key.src.port) << 16) | u64::from(key.dst.port);
        h ^= u64::from(hdr.protocol) << 40;
    }
    // A 64-bit finaliser (splitmix64) so that nearby addresses spread.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) as u32
}

/// Addresses no routed packet may carry (RFC 1812 §5.3.7, §4.2.2.11): a source that is
/// "this network", loopback, multicast or reserved (broadcast included), or a destination
/// that is "this network" or loopback. The function's own addresses as a source are checked
/// by the caller.
fn martian(src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let [s, ..] = src.octets();
    let [d, ..] = dst.octets();
    s == 0 || s == 127 || s >= 224 || d == 0 || d == 127
}

/// Where a frame for `mac` leaves interface `iface`: its port, or for an IRB interface the
/// port `mac` was learned on in the domain (every port when unknown or broadcast).
fn egress(bridge: &Bridge, l3c: &L3Config, iface: usize, mac: &Mac) -> Verdict {
    match l3c.interfaces.get(iface).map(|i| i.attach) {
        Some(Attach::Port(p)) => Verdict::Forward(p),
        Some(Attach::Bridge(d)) => bridge.egress(d, mac),
        None => Verdict::Drop(DropReason::NoDestination),
    }
}

/// Queue a frame the function originates out of interface `iface` toward `mac`; `false`
/// when the transmit queue is full.
fn send(
    bridge: &Bridge,
    l3c: &L3Config,
    tx: &mut Transmit,
    iface: usize,
    mac: &Mac,
    frame: &[u8],
) -> bool {
    match egress(bridge, l3c, iface, mac) {
        Verdict::Forward(p) => tx.send(p, frame),
        Verdict::Flood(set) => set.iter().all(|p| tx.send(p, frame)),
        _ => true,
    }
}

impl<H: Hook> Routed<H> {
    /// A worker.
    pub fn new(
        cfg: &Arc<RoutedConfig<H::Config>>,
        shared: Arc<Shared<H>>,
        drops: Arc<WorkerCounters>,
    ) -> Routed<H> {
        let counters = shared.hub.add_worker();
        Routed {
            cfg: cfg.clone(),
            bridge: Bridge::new(&cfg.bridges, drops.clone()),
            shared,
            hook: H::default(),
            counters,
            drops,
            next_tick: None,
            frag_bufs: (0..FRAG_BUFS).map(|_| PacketBuf::new()).collect(),
            frag_ready: Vec::with_capacity(FRAG_BUFS),
            scratch: PacketBuf::new(),
            created: Instant::now(),
            now: Instant::now(),
        }
    }

    /// The bridge domains.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared<H>> {
        &self.shared
    }

    /// Decide one frame.
    fn one(
        &mut self,
        cfg: &Arc<RoutedConfig<H::Config>>,
        st: &mut State<H>,
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
                    return self.bridged(cfg, st, pkt, now);
                };
                // IRB: our MAC is routed; an ARP broadcast may be for us; the rest bridges.
                let Some(dst) = pkt.dst_mac() else {
                    return Verdict::Drop(DropReason::FrameMalformed);
                };
                if dst != l3c.interfaces[i].mac {
                    if crate::is_group_mac(&dst) && pkt.ethertype() == Some(ETHERTYPE_ARP) {
                        let v = self.bridge.forward(pkt, now);
                        return match l3::arp_input(l3c, i, pkt, &mut st.nb, &self.counters, now) {
                            ArpOutcome::Replied => Verdict::Reply,
                            _ => v,
                        };
                    }
                    return self.bridged(cfg, st, pkt, now);
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
                    return Verdict::Drop(if crate::is_group_mac(&dst) {
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
                if martian(hdr.src, hdr.dst) || l3c.is_local(hdr.src) || H::owns(&cfg.ext, hdr.src)
                {
                    return Verdict::Drop(DropReason::Martian);
                }
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

    /// A frame the bridge forwards; the hook sees IPv4 first.
    fn bridged(
        &mut self,
        cfg: &Arc<RoutedConfig<H::Config>>,
        st: &mut State<H>,
        pkt: &mut PacketBuf,
        now: Instant,
    ) -> Verdict {
        let v = self.bridge.forward(pkt, now);
        if matches!(v, Verdict::Drop(_)) || pkt.ethertype() != Some(ETHERTYPE_IPV4) {
            return v;
        }
        let Ok(hdr) = ipv4::parse(&pkt.bytes()[ETH_HEADER_LEN..]) else {
            return v;
        };
        let flow = rewrite::flow(&pkt.bytes()[ETH_HEADER_LEN..], &hdr);
        let mut p = PacketCx {
            cfg,
            st: &mut st.ext,
            iface: usize::MAX,
            port: pkt.port,
            ip: &pkt.bytes()[ETH_HEADER_LEN..],
            hdr: &hdr,
            flow: &flow,
            now,
        };
        let step = self.hook.bridged(&mut p, v);
        // Refusals answer as the destination host would: the function has no address here.
        let answered = match step {
            Step::Continue => return v,
            Step::Drop(r) => return Verdict::Drop(r),
            Step::Deliver => return Verdict::Drop(DropReason::LocalUnhandled),
            Step::Refuse(e, r) => {
                let cx = Ctx {
                    cfg: &cfg.l3,
                    counters: &self.counters,
                    now,
                };
                (
                    l3::icmp_error_as_destination(&cx, &mut st.nb, e, &hdr, pkt),
                    r,
                )
            }
            Step::Reset(r) => (l3::tcp_reset_in_place(&hdr, pkt), r),
        };
        match answered {
            (true, r) => {
                self.drops.count_drop(r);
                Verdict::Reply
            }
            (false, r) => Verdict::Drop(r),
        }
    }

    /// Answer with an ICMP error about `pkt` (counting `reason`), or drop it.
    fn refuse(
        &self,
        st: &mut State<H>,
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

    /// What a hook's step means for the packet; `None` to go on.
    fn step(
        &self,
        s: Step,
        st: &mut State<H>,
        iface: usize,
        hdr: &Header,
        pkt: &mut PacketBuf,
        now: Instant,
    ) -> Option<Verdict> {
        match s {
            Step::Continue => None,
            Step::Drop(r) => Some(Verdict::Drop(r)),
            Step::Refuse(e, r)
                if self.cfg.l3.is_local(hdr.dst) || H::owns(&self.cfg.ext, hdr.dst) =>
            {
                // The function's own address refuses as a host would: the error comes from
                // that address (a VIP, say), not from the interface the packet came by.
                let cx = Ctx {
                    cfg: &self.cfg.l3,
                    counters: &self.counters,
                    now,
                };
                if l3::icmp_error_as_destination(&cx, &mut st.nb, e, hdr, pkt) {
                    self.drops.count_drop(r);
                    Some(Verdict::Reply)
                } else {
                    Some(Verdict::Drop(r))
                }
            }
            Step::Refuse(e, r) => Some(self.refuse(st, iface, (Some(e), r), hdr, pkt, now)),
            Step::Reset(r) => {
                if l3::tcp_reset_in_place(hdr, pkt) {
                    self.drops.count_drop(r);
                    Some(Verdict::Reply)
                } else {
                    Some(Verdict::Drop(r))
                }
            }
            Step::Deliver => Some(match self.shared.host.get() {
                Some(link) if link.deliver(&pkt.bytes()[ETH_HEADER_LEN..]) => Verdict::Consumed,
                Some(_) => Verdict::Drop(DropReason::HostQueueFull),
                None => Verdict::Drop(DropReason::LocalUnhandled),
            }),
        }
    }

    fn route(
        &mut self,
        cfg: &Arc<RoutedConfig<H::Config>>,
        st: &mut State<H>,
        iface: usize,
        pkt: &mut PacketBuf,
        hdr: &Header,
        now: Instant,
    ) -> Verdict {
        let l3c = &cfg.l3;
        let flow = rewrite::flow(&pkt.bytes()[ETH_HEADER_LEN..], hdr);
        let port = pkt.port;
        macro_rules! cx {
            () => {
                PacketCx {
                    cfg,
                    st: &mut st.ext,
                    iface,
                    port,
                    ip: &pkt.bytes()[ETH_HEADER_LEN..],
                    hdr,
                    flow: &flow,
                    now,
                }
            };
        }

        let mut dst = hdr.dst;
        let s = self.hook.pre_routing(&mut cx!(), &mut dst);
        if let Some(v) = self.step(s, st, iface, hdr, pkt, now) {
            return v;
        }
        if l3c.is_local(dst) || H::owns(&cfg.ext, dst) {
            let s = self.hook.input(&mut cx!());
            if let Some(v) = self.step(s, st, iface, hdr, pkt, now) {
                return v;
            }
            if hdr.total_len > l3c.interfaces[iface].mtu as usize {
                // The reply would not fit the interface it leaves by (we do not fragment
                // our own answers).
                return Verdict::Drop(DropReason::MtuExceeded);
            }
            return if hdr.protocol == 1 && l3::echo_in_place(pkt, &self.counters) {
                Verdict::Reply
            } else {
                Verdict::Drop(DropReason::LocalUnhandled)
            };
        }

        let (out, next_hop) = match l3c.fib.lookup(dst, ecmp_hash(&flow, hdr)) {
            Decision::Forward { iface, next_hop } => (iface, next_hop),
            Decision::NoRoute | Decision::Reject(RejectKind::Unreachable) => {
                let e = (Some(IcmpError::NetUnreachable), DropReason::NoRoute);
                return self.refuse(st, iface, e, hdr, pkt, now);
            }
            Decision::Reject(RejectKind::Prohibit) => {
                let e = (Some(IcmpError::AdminProhibited), DropReason::Prohibited);
                return self.refuse(st, iface, e, hdr, pkt, now);
            }
            Decision::Reject(RejectKind::Blackhole) => {
                return Verdict::Drop(DropReason::Blackhole);
            }
        };
        if hdr.ttl <= 1 {
            let e = (Some(IcmpError::TimeExceeded), DropReason::TtlExceeded);
            return self.refuse(st, iface, e, hdr, pkt, now);
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
        let s = self.hook.forward(&mut cx!(), out);
        if let Some(v) = self.step(s, st, iface, hdr, pkt, now) {
            return v;
        }

        // Rewrite: the hook's, TTL, MACs.
        let frame = pkt.bytes_mut();
        let ip = &mut frame[ETH_HEADER_LEN..];
        self.hook.rewrite(&mut st.ext, ip, hdr, now);
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
                egress(&self.bridge, l3c, out, &mac)
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
        st: &mut State<H>,
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
        let mut frame = [0u8; MAX_FRAME];
        ipv4::fragment(&pkt.bytes()[ETH_HEADER_LEN..], hdr, mtu, |frag| {
            let len = ETH_HEADER_LEN + frag.len();
            frame[..ETH_HEADER_LEN].copy_from_slice(&eth);
            frame[ETH_HEADER_LEN..len].copy_from_slice(frag);
            match st.nb.arp.resolve(next_hop, &frame[..len], now) {
                Resolution::Known(mac) => {
                    frame[0..6].copy_from_slice(&mac);
                    bufs[ready.len()].fill(&frame[..len]);
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
        if let Some(r) = dropped {
            self.drops.count_drop(r);
        }
        Verdict::Consumed
    }

    /// Route a packet the host stack sent: route lookup, egress MTU, ARP; `false` when
    /// the transmit queue is full (try again later).
    fn originate(&self, st: &mut State<H>, tx: &mut Transmit, ip: &[u8], now: Instant) -> bool {
        let l3c = &self.cfg.l3;
        let Ok(hdr) = ipv4::parse(ip) else {
            self.drops.count_drop(DropReason::IpMalformed);
            return true;
        };
        let flow = rewrite::flow(ip, &hdr);
        let (out, next_hop) = match l3c.fib.lookup(hdr.dst, ecmp_hash(&flow, &hdr)) {
            Decision::Forward { iface, next_hop } => (iface, next_hop),
            Decision::NoRoute | Decision::Reject(_) => {
                self.drops.count_drop(DropReason::NoRoute);
                return true;
            }
        };
        let out_ifc = &l3c.interfaces[out];
        let len = ETH_HEADER_LEN + hdr.total_len;
        if hdr.total_len > out_ifc.mtu as usize || len > MAX_FRAME {
            // The host stack's MTU is the smallest interface's: only a bad route gets here.
            self.drops.count_drop(DropReason::MtuExceeded);
            return true;
        }
        let mut frame = [0u8; MAX_FRAME];
        frame[6..12].copy_from_slice(&out_ifc.mac);
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame[ETH_HEADER_LEN..len].copy_from_slice(&ip[..hdr.total_len]);
        match st.nb.arp.resolve(next_hop, &frame[..len], now) {
            Resolution::Known(mac) => {
                frame[0..6].copy_from_slice(&mac);
                send(&self.bridge, l3c, tx, out, &mac, &frame[..len])
            }
            Resolution::HeldSendRequest => {
                st.nb.requests.push(next_hop);
                true
            }
            Resolution::Held => true,
            Resolution::Dropped(r) => {
                self.drops.count_drop(r);
                true
            }
        }
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
        H::tick(&mut st.ext, &self.cfg.ext, now, &self.drops);
        set_gauges(&shared.hub.gauges, st);
    }

    /// Send what the neighbour state queued: announcements, requests, released packets.
    fn drain_neighbours(&mut self, st: &mut State<H>, tx: &mut Transmit) {
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

impl<H: Hook> NetworkFunction for Routed<H> {
    type Config = RoutedConfig<H::Config>;

    fn reconfigure(
        &mut self,
        config: &Arc<RoutedConfig<H::Config>>,
        remap: &dyn Fn(PortId) -> Option<PortId>,
    ) {
        self.bridge.reconfigure(&config.bridges, remap);
        let mut st = self.shared.lock();
        if !Arc::ptr_eq(&st.applied, config) {
            let old = st.applied.clone();
            st.nb.reconfigure(&old.l3, &config.l3);
            H::reconfigure(&mut st.ext, &old, config);
            st.applied = config.clone();
        }
        drop(st);
        self.cfg = config.clone();
    }

    fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant) {
        self.now = now;
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
        // Before the first tick: due at once (`created` is before any `now` the engine
        // passes; `Instant::now()` here would always be later and never come due). The
        // host stack's output is due at once too: the engine transmits after timers.
        if self.shared.host.get().is_some_and(|h| h.has_output()) {
            return Some(self.created);
        }
        let t = self.next_tick.unwrap_or(self.created);
        Some(self.bridge.poll_timeout().map_or(t, |b| b.min(t)))
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.bridge.handle_timeout(now);
        if self.next_tick.is_none_or(|t| now >= t) {
            self.tick(now);
            self.next_tick = Some(now + TICK);
        }
    }

    fn poll_transmit(&mut self, tx: &mut Transmit) {
        let mut sent = 0;
        for (i, &(iface, mac)) in self.frag_ready.iter().enumerate() {
            if !send(
                &self.bridge,
                &self.cfg.l3,
                tx,
                iface,
                &mac,
                self.frag_bufs[i].bytes(),
            ) {
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            // Keep the unsent ones at the front, in order.
            self.frag_ready.drain(..sent);
            self.frag_bufs[..].rotate_left(sent);
        }
        let host = self.shared.host.get().filter(|h| h.has_output());
        if !self.shared.pending.load(Relaxed) && host.is_none() {
            return;
        }
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let st = &mut *guard;
        if let Some(h) = host {
            // The engine calls this right after a batch or a timer.
            let now = self.now;
            h.take_output(HOST_BURST, |ip| self.originate(st, tx, ip, now));
        }
        self.drain_neighbours(st, tx);
        shared.pending.store(st.nb.has_work(), Relaxed);
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.shared.host.get().map(|h| h.datapath_fd())
    }
}
