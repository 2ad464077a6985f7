//! The routed side of a function: IPv4 interfaces on ports or bridge domains, the
//! neighbour state they share, the frames a router answers by itself (ARP, ICMP echo and
//! errors), and their metrics. The router uses all of it; the routed firewall and the load
//! balancer reuse it.
//!
//! An [`Interface`] sits on a port (a VNI, a VLAN of a trunk, an untagged interface, a TAP)
//! or on a bridge domain (IRB: the domain bridges its ports, and frames for the interface's
//! MAC are routed). Its addresses give the connected routes and the addresses ARP answers
//! for; [`L3Config::proxy_arp`] adds addresses answered on behalf of others (NAT pools and
//! floating addresses).
//!
//! State that must be one per function and not one per worker lives in [`Neighbours`]
//! behind a mutex the workers take once per batch: the ARP cache (a reply may arrive on
//! any worker), the ICMP error rate limit (RFC 1812 §4.3.2.8: per router), and the queues
//! of ARP requests and gratuitous announcements to send.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ipnetwork::Ipv4Network;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::Mac;
use crate::arp::{Arp, ArpCache, ArpConfig, OP_REPLY, OP_REQUEST};
use crate::buf::{ETH_HEADER_LEN, PacketBuf};
use crate::fib::Fib;
use crate::icmp::{self, IcmpError};
use crate::ipv4::{Header, TokenBucket};
use crate::metrics::{Counter, SlotsExhausted};
use crate::pipeline::{MAX_PORTS, PortId};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Counter slots for interfaces.
pub const IFACE_SLOTS: usize = 256;
/// Broadcast MAC.
pub const BROADCAST: Mac = [0xff; 6];

/// Where an interface attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attach {
    /// Directly on a port: every frame of the port is the interface's.
    Port(PortId),
    /// On a bridge domain (its index in the function's domain list): IRB.
    Bridge(usize),
}

/// One routed interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name (the `interface` metric label).
    pub name: String,
    /// What it sits on.
    pub attach: Attach,
    /// Its MAC address.
    pub mac: Mac,
    /// Its addresses with their subnets; the first is the source of ICMP errors it sends.
    pub addrs: Vec<Ipv4Network>,
    /// Largest IPv4 packet it sends.
    pub mtu: u32,
    /// Counter slot, from [`L3Hub::iface_slot`].
    pub slot: usize,
}

/// ICMP messages a routed function sends, as metric labels.
pub const ICMP_TYPES: [&str; 7] = [
    "echo_reply",
    "time_exceeded",
    "net_unreachable",
    "host_unreachable",
    "admin_prohibited",
    "frag_needed",
    "port_unreachable",
];

fn icmp_index(e: IcmpError) -> usize {
    match e {
        IcmpError::TimeExceeded => 1,
        IcmpError::NetUnreachable => 2,
        IcmpError::HostUnreachable => 3,
        IcmpError::AdminProhibited => 4,
        IcmpError::FragNeeded { .. } => 5,
        IcmpError::PortUnreachable => 6,
    }
}

/// The routed config: interfaces, routes, ARP and ICMP settings, swapped whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L3Config {
    /// Interfaces; an index into this list names an interface.
    pub interfaces: Vec<Interface>,
    /// Routes, connected ones included.
    pub fib: Fib,
    /// Neighbour cache limits.
    pub arp: ArpConfig,
    /// ICMP errors per second, and their burst.
    pub icmp_rate: (u32, u32),
    /// Addresses ARP answers for on an interface besides its own: (interface, address).
    pub proxy_arp: Vec<(usize, Ipv4Addr)>,
    /// Interface index by port, for ports that carry a port interface.
    port_iface: Box<[Option<u16>; MAX_PORTS]>,
    /// Interface index by bridge domain.
    bridge_iface: Vec<Option<u16>>,
}

impl L3Config {
    /// A config; the lookup tables are built here.
    pub fn new(
        interfaces: Vec<Interface>,
        fib: Fib,
        arp: ArpConfig,
        icmp_rate: (u32, u32),
        proxy_arp: Vec<(usize, Ipv4Addr)>,
    ) -> L3Config {
        let mut port_iface = Box::new([None; MAX_PORTS]);
        let mut bridge_iface = Vec::new();
        for (i, ifc) in interfaces.iter().enumerate() {
            match ifc.attach {
                Attach::Port(p) => port_iface[usize::from(p.0) % MAX_PORTS] = Some(i as u16),
                Attach::Bridge(b) => {
                    if bridge_iface.len() <= b {
                        bridge_iface.resize(b + 1, None);
                    }
                    bridge_iface[b] = Some(i as u16);
                }
            }
        }
        L3Config {
            interfaces,
            fib,
            arp,
            icmp_rate,
            proxy_arp,
            port_iface,
            bridge_iface,
        }
    }

    /// The interface that owns a port outright.
    #[inline]
    pub fn port_iface(&self, p: PortId) -> Option<usize> {
        self.port_iface[usize::from(p.0) % MAX_PORTS].map(usize::from)
    }

    /// The IRB interface of a bridge domain.
    #[inline]
    pub fn bridge_iface(&self, domain: usize) -> Option<usize> {
        self.bridge_iface
            .get(domain)
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// Whether `a` is one of our interface addresses.
    #[inline]
    pub fn is_local(&self, a: Ipv4Addr) -> bool {
        self.interfaces
            .iter()
            .any(|i| i.addrs.iter().any(|n| n.ip() == a))
    }

    /// The interface with a connected subnet holding `a`.
    pub fn connected(&self, a: Ipv4Addr) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.addrs.iter().any(|n| n.contains(a)))
    }

    /// Whether ARP on `iface` answers for `a` (one of its addresses, or a proxied one).
    pub fn answers_arp(&self, iface: usize, a: Ipv4Addr) -> bool {
        self.interfaces
            .get(iface)
            .is_some_and(|i| i.addrs.iter().any(|n| n.ip() == a))
            || self.proxy_arp.contains(&(iface, a))
    }

    /// The address an interface sources its own packets from: the one on the subnet of
    /// `toward` if any, else its first.
    pub fn source_for(&self, iface: usize, toward: Ipv4Addr) -> Option<Ipv4Addr> {
        let i = self.interfaces.get(iface)?;
        i.addrs
            .iter()
            .find(|n| n.contains(toward))
            .or(i.addrs.first())
            .map(|n| n.ip())
    }
}

/// Per-interface traffic of one worker.
#[derive(Debug, Default)]
pub struct IfaceCounters {
    /// IPv4 packets received by the interface (for us or to route).
    pub rx_packets: Counter,
    /// Their bytes (IP packet).
    pub rx_bytes: Counter,
    /// Packets routed out of the interface.
    pub fwd_packets: Counter,
    /// Their bytes (IP packet).
    pub fwd_bytes: Counter,
}

/// The routed counters of one worker; the worker is the only writer.
#[derive(Debug)]
pub struct L3Counters {
    /// By interface slot.
    pub ifaces: Box<[IfaceCounters]>,
    /// ICMP messages sent, by [`ICMP_TYPES`] index.
    pub icmp: [Counter; ICMP_TYPES.len()],
    /// ICMP errors not sent because of the rate limit.
    pub icmp_rate_limited: Counter,
    /// ARP requests sent.
    pub arp_requests: Counter,
    /// ARP replies sent (own and proxied addresses).
    pub arp_replies: Counter,
    /// Gratuitous ARP announcements sent.
    pub arp_gratuitous: Counter,
}

impl Default for L3Counters {
    fn default() -> Self {
        L3Counters {
            ifaces: (0..IFACE_SLOTS).map(|_| IfaceCounters::default()).collect(),
            icmp: Default::default(),
            icmp_rate_limited: Counter::default(),
            arp_requests: Counter::default(),
            arp_replies: Counter::default(),
            arp_gratuitous: Counter::default(),
        }
    }
}

/// Gauges of function-wide state, set by whichever worker holds it.
#[derive(Debug, Default)]
pub struct L3Gauges {
    /// ARP entries (resolved and pending).
    pub arp_entries: Counter,
    /// Packets waiting for ARP.
    pub arp_held: Counter,
    /// NAT sessions.
    pub nat_sessions: Counter,
    /// NAT masquerade mappings.
    pub nat_mappings: Counter,
    /// NAT sessions expired, ever.
    pub nat_expired: Counter,
    /// Ports in use per pool name.
    pub nat_pool_ports: Mutex<Vec<(String, u64)>>,
    /// Sessions per tenant name.
    pub nat_tenant_sessions: Mutex<Vec<(String, u64)>>,
}

/// Fills [`L3Gauges`] from the function's state when metrics are gathered.
pub type GaugeRefresh = Box<dyn Fn(&L3Gauges) + Send + Sync>;

/// Routed counters of every worker, interface labels and gauges.
#[derive(Default)]
pub struct L3Hub {
    workers: Mutex<Vec<Arc<L3Counters>>>,
    names: Mutex<Vec<String>>,
    /// Function-wide gauges.
    pub gauges: L3Gauges,
    refresh: Mutex<Option<GaugeRefresh>>,
}

impl std::fmt::Debug for L3Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L3Hub")
            .field("gauges", &self.gauges)
            .finish_non_exhaustive()
    }
}

impl L3Hub {
    /// Counters for a new worker.
    pub fn add_worker(&self) -> Arc<L3Counters> {
        let c = Arc::new(L3Counters::default());
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c.clone());
        c
    }

    /// The counter slot of an interface name (kept across reloads).
    pub fn iface_slot(&self, name: &str) -> Result<usize, SlotsExhausted> {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = n.iter().position(|x| x == name) {
            return Ok(i);
        }
        if n.len() >= IFACE_SLOTS {
            return Err(SlotsExhausted {
                kind: "interface",
                limit: IFACE_SLOTS,
            });
        }
        n.push(name.to_owned());
        Ok(n.len() - 1)
    }

    /// Have `f` set the gauges from the function's state at every scrape, so that they are
    /// never stale (the function also sets them from its timer).
    pub fn set_refresh(&self, f: GaugeRefresh) {
        *self.refresh.lock().unwrap_or_else(PoisonError::into_inner) = Some(f);
    }

    /// Every routed metric family.
    pub fn gather(&self) -> prometheus::Result<Vec<MetricFamily>> {
        if let Some(f) = &*self.refresh.lock().unwrap_or_else(PoisonError::into_inner) {
            f(&self.gauges);
        }
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let names = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sum = |f: &dyn Fn(&L3Counters) -> u64| -> u64 { workers.iter().map(|w| f(w)).sum() };
        let mut out = Vec::new();
        type F = fn(&IfaceCounters) -> &Counter;
        let per_iface: [(&str, &str, F); 4] = [
            (
                "vnf_router_received_packets_total",
                "IPv4 packets received by a routed interface.",
                |c| &c.rx_packets,
            ),
            (
                "vnf_router_received_bytes_total",
                "Bytes (IP packet) received by a routed interface.",
                |c| &c.rx_bytes,
            ),
            (
                "vnf_router_forwarded_packets_total",
                "Packets routed out of an interface.",
                |c| &c.fwd_packets,
            ),
            (
                "vnf_router_forwarded_bytes_total",
                "Bytes (IP packet) routed out of an interface.",
                |c| &c.fwd_bytes,
            ),
        ];
        for (name, help, f) in per_iface {
            let v = IntCounterVec::new(Opts::new(name, help), &["interface"])?;
            for (slot, n) in names.iter().enumerate() {
                v.with_label_values(&[n.as_str()])
                    .inc_by(sum(&|w| f(&w.ifaces[slot]).get()));
            }
            out.extend(v.collect());
        }
        let icmp = IntCounterVec::new(
            Opts::new("vnf_icmp_sent_total", "ICMP messages sent, by type."),
            &["type"],
        )?;
        for (i, t) in ICMP_TYPES.iter().enumerate() {
            icmp.with_label_values(&[t])
                .inc_by(sum(&|w| w.icmp[i].get()));
        }
        out.extend(icmp.collect());
        type G = fn(&L3Counters) -> &Counter;
        let plain: [(&str, &str, G); 4] = [
            (
                "vnf_icmp_rate_limited_total",
                "ICMP errors not sent because of the rate limit.",
                |c| &c.icmp_rate_limited,
            ),
            ("vnf_arp_requests_sent_total", "ARP requests sent.", |c| {
                &c.arp_requests
            }),
            (
                "vnf_arp_replies_sent_total",
                "ARP replies sent for own and proxied addresses.",
                |c| &c.arp_replies,
            ),
            (
                "vnf_arp_gratuitous_sent_total",
                "Gratuitous ARP announcements sent.",
                |c| &c.arp_gratuitous,
            ),
        ];
        for (name, help, f) in plain {
            let c = prometheus::IntCounter::new(name, help)?;
            c.inc_by(sum(&|w| f(w).get()));
            out.extend(c.collect());
        }
        let g = &self.gauges;
        let gauges: [(&str, &str, &Counter); 4] = [
            (
                "vnf_arp_entries",
                "ARP cache entries (resolved and pending).",
                &g.arp_entries,
            ),
            (
                "vnf_arp_held_packets",
                "Packets waiting for an ARP answer.",
                &g.arp_held,
            ),
            ("vnf_nat_sessions", "NAT sessions.", &g.nat_sessions),
            (
                "vnf_nat_mappings",
                "NAT masquerade mappings (internal endpoints holding an external port).",
                &g.nat_mappings,
            ),
        ];
        for (name, help, v) in gauges {
            let m = prometheus::IntGauge::new(name, help)?;
            m.set(v.get() as i64);
            out.extend(m.collect());
        }
        let expired = prometheus::IntCounter::new(
            "vnf_nat_sessions_expired_total",
            "NAT sessions removed by timeout.",
        )?;
        expired.inc_by(g.nat_expired.get());
        out.extend(expired.collect());
        type Labelled<'a> = (&'a str, &'a str, &'a str, &'a Mutex<Vec<(String, u64)>>);
        let labelled: [Labelled<'_>; 2] = [
            (
                "vnf_nat_ports_in_use",
                "Ports and ICMP identifiers in use on a NAT pool's addresses.",
                "pool",
                &g.nat_pool_ports,
            ),
            (
                "vnf_nat_tenant_sessions",
                "NAT sessions counted against a tenant's cap.",
                "tenant",
                &g.nat_tenant_sessions,
            ),
        ];
        for (name, help, label, values) in labelled {
            let v = IntGaugeVec::new(Opts::new(name, help), &[label])?;
            for (k, n) in values.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                v.with_label_values(&[k.as_str()]).set(*n as i64);
            }
            out.extend(v.collect());
        }
        out.retain(|mf| !mf.get_metric().is_empty());
        Ok(out)
    }
}

/// Registers the routed metrics on a Prometheus registry.
#[derive(Debug)]
pub struct L3Collector {
    hub: Arc<L3Hub>,
    descs: Vec<Desc>,
}

impl L3Collector {
    /// A collector over a hub.
    pub fn new(hub: Arc<L3Hub>) -> L3Collector {
        let sample = L3Hub::default();
        sample.add_worker();
        let _ = sample.iface_slot("i");
        sample
            .gauges
            .nat_pool_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(("p".into(), 0));
        sample
            .gauges
            .nat_tenant_sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(("t".into(), 0));
        let descs = crate::metrics::descs_of(&sample.gather().unwrap_or_default());
        L3Collector { hub, descs }
    }
}

impl Collector for L3Collector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.hub.gather().unwrap_or_else(|e| {
            tracing::error!(error = %e, "gathering routed metrics failed");
            Vec::new()
        })
    }
}

/// Function-wide neighbour state (see the module docs); one per function, shared by its
/// workers behind a mutex and kept across reloads.
#[derive(Debug)]
pub struct Neighbours {
    /// The ARP cache.
    pub arp: ArpCache,
    /// The ICMP error rate limit.
    pub icmp: TokenBucket,
    /// ARP requests to send: the address asked for.
    pub requests: Vec<Ipv4Addr>,
    /// Gratuitous announcements to send: (interface, address).
    pub announce: Vec<(usize, Ipv4Addr)>,
    /// An ARP answer made held packets sendable ([`ArpCache::release`] has work).
    pub releasable: bool,
    icmp_rate: (u32, u32),
}

impl Neighbours {
    /// State for a config; announces every interface address (RFC 5227 §3).
    pub fn new(cfg: &L3Config) -> Neighbours {
        let mut n = Neighbours {
            arp: ArpCache::new(cfg.arp),
            icmp: TokenBucket::new(cfg.icmp_rate.0, cfg.icmp_rate.1),
            requests: Vec::new(),
            announce: Vec::new(),
            releasable: false,
            icmp_rate: cfg.icmp_rate,
        };
        n.announce_new(None, cfg);
        n
    }

    /// Shared state for a config, behind its mutex.
    pub fn shared(cfg: &L3Config) -> Arc<Mutex<Neighbours>> {
        Arc::new(Mutex::new(Neighbours::new(cfg)))
    }

    /// Whether frames wait to be sent: announcements, requests or released packets.
    pub fn has_work(&self) -> bool {
        self.releasable || !self.requests.is_empty() || !self.announce.is_empty()
    }

    /// Apply a reload: new limits, and announce addresses that `old` did not have.
    pub fn reconfigure(&mut self, old: &L3Config, new: &L3Config) {
        self.arp.set_config(new.arp);
        if self.icmp_rate != new.icmp_rate {
            self.icmp = TokenBucket::new(new.icmp_rate.0, new.icmp_rate.1);
            self.icmp_rate = new.icmp_rate;
        }
        self.announce_new(Some(old), new);
    }

    fn announce_new(&mut self, old: Option<&L3Config>, new: &L3Config) {
        for (i, ifc) in new.interfaces.iter().enumerate() {
            let before = old.and_then(|o| o.interfaces.iter().find(|x| x.name == ifc.name));
            for a in ifc.addrs.iter().map(|n| n.ip()).chain(
                new.proxy_arp
                    .iter()
                    .filter(|(j, _)| *j == i)
                    .map(|(_, a)| *a),
            ) {
                let had = before.is_some_and(|b| {
                    b.mac == ifc.mac
                        && (b.addrs.iter().any(|n| n.ip() == a)
                            || old.is_some_and(|o| o.proxy_arp.iter().any(|(_, x)| *x == a)))
                });
                if !had && !self.announce.contains(&(i, a)) {
                    self.announce.push((i, a));
                }
            }
        }
    }
}

/// What the per-packet helpers need to know besides the packet: the config, this worker's
/// counters and the time.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The routed config.
    pub cfg: &'a L3Config,
    /// This worker's counters.
    pub counters: &'a L3Counters,
    /// Now.
    pub now: Instant,
}

/// What to do with an ARP frame that reached an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOutcome {
    /// The frame was turned into our reply in place: send it back where it came from.
    Replied,
    /// Consumed (a reply to us, or learned from); nothing to send.
    Absorbed,
    /// Not for us: a bridge domain should flood or forward it as usual.
    NotOurs,
    /// Malformed.
    Malformed,
}

/// Handle an ARP frame on interface `iface`: learn the sender (RFC 826 merge rule; a new
/// entry only from a packet for one of our addresses, and only from a sender on the
/// interface's subnet), answer requests for our own and proxied addresses.
pub fn arp_input(
    cfg: &L3Config,
    iface: usize,
    pkt: &mut PacketBuf,
    nb: &mut Neighbours,
    counters: &L3Counters,
    now: Instant,
) -> ArpOutcome {
    let Some(ifc) = cfg.interfaces.get(iface) else {
        return ArpOutcome::NotOurs;
    };
    let Some(arp) = pkt.bytes().get(ETH_HEADER_LEN..).and_then(Arp::parse) else {
        return ArpOutcome::Malformed;
    };
    let for_us = cfg.answers_arp(iface, arp.tpa);
    let on_subnet = ifc.addrs.iter().any(|n| n.contains(arp.spa));
    // Never learn one of our own addresses from the wire (ARP spoofing of the gateway).
    if on_subnet && !cfg.is_local(arp.spa) && nb.arp.learn(arp.spa, arp.sha, for_us, now) {
        nb.releasable = true;
    }
    match arp.op {
        OP_REQUEST if for_us && arp.spa != arp.tpa => {
            let reply = arp.reply(ifc.mac);
            reply.emit(arp.sha, pkt);
            counters.arp_replies.inc();
            ArpOutcome::Replied
        }
        OP_REPLY if for_us => ArpOutcome::Absorbed,
        _ => ArpOutcome::NotOurs,
    }
}

/// Write the Ethernet header of an IPv4 frame in place.
#[inline]
pub fn set_macs(frame: &mut [u8], dst: Mac, src: Mac) {
    if frame.len() >= 12 {
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }
}

/// Turn an IPv4 frame into an ICMP error about it, in place, to go back to the frame's
/// sender out of the port it came from (the previous hop, which routes it to the source).
/// Checks RFC 1812 §4.3.2.7 and the rate limit; counts what it sends. Returns `false`
/// when no error may be sent (then the caller just drops).
pub fn icmp_error_in_place(
    cx: &Ctx<'_>,
    nb: &mut Neighbours,
    iface: usize,
    err: IcmpError,
    hdr: &Header,
    pkt: &mut PacketBuf,
) -> bool {
    let Some(src) = cx.cfg.source_for(iface, hdr.src) else {
        return false;
    };
    let Some(ifc) = cx.cfg.interfaces.get(iface) else {
        return false;
    };
    let (mac, mtu) = (ifc.mac, ifc.mtu as usize);
    icmp_error_from(cx, nb, (src, mac, mtu), err, hdr, pkt)
}

/// Like [`icmp_error_in_place`] for a function without an address on the path (a
/// transparent firewall): the error comes from the packet's destination address and MAC,
/// as if the host it was for had refused it (as `nftables`' bridge `reject` does).
pub fn icmp_error_as_destination(
    cx: &Ctx<'_>,
    nb: &mut Neighbours,
    err: IcmpError,
    hdr: &Header,
    pkt: &mut PacketBuf,
) -> bool {
    let Some(mac) = pkt.dst_mac() else {
        return false;
    };
    icmp_error_from(cx, nb, (hdr.dst, mac, icmp::MAX_ERROR_LEN), err, hdr, pkt)
}

/// Build, in place, the ICMP error `err` about `pkt` from address and MAC `from`, at most
/// `mtu` bytes of IP.
fn icmp_error_from(
    cx: &Ctx<'_>,
    nb: &mut Neighbours,
    (src, mac, mtu): (Ipv4Addr, Mac, usize),
    err: IcmpError,
    hdr: &Header,
    pkt: &mut PacketBuf,
) -> bool {
    let (cfg, counters, now) = (cx.cfg, cx.counters, cx.now);
    let frame = pkt.bytes();
    let Some(ip) = frame.get(ETH_HEADER_LEN..) else {
        return false;
    };
    if cfg.icmp_rate.0 == 0 || crate::is_group_mac(&mac) || !icmp::may_send_error(hdr, ip) {
        return false;
    }
    if !nb.icmp.allow(now) {
        counters.icmp_rate_limited.inc();
        return false;
    }
    let mut out = [0u8; ETH_HEADER_LEN + icmp::MAX_ERROR_LEN];
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&mac);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let room = ETH_HEADER_LEN + mtu.min(icmp::MAX_ERROR_LEN);
    let Some(n) = icmp::build_error(err, src, hdr, ip, &mut out[ETH_HEADER_LEN..room]) else {
        return false;
    };
    pkt.fill(&out[..ETH_HEADER_LEN + n]);
    counters.icmp[icmp_index(err)].inc();
    true
}

/// Answer an ICMP echo request to one of our addresses in place (MACs swapped). `false`
/// if it is not a valid echo request.
pub fn echo_in_place(pkt: &mut PacketBuf, counters: &L3Counters) -> bool {
    let f = pkt.bytes_mut();
    if f.len() < ETH_HEADER_LEN {
        return false;
    }
    let (eth, ip) = f.split_at_mut(ETH_HEADER_LEN);
    if !icmp::echo_reply_in_place(ip) {
        return false;
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[6..12]);
    let mut src = [0u8; 6];
    src.copy_from_slice(&eth[0..6]);
    set_macs(eth, dst, src);
    counters.icmp[0].inc();
    true
}

/// Turn a TCP segment into the RST that refuses it (RFC 9293 §3.10.7.1), in place, to go
/// back out of the port it came from: addresses, ports and MACs swapped, so it comes from
/// the host the segment was for (as `nftables`' `reject with tcp reset` does). If the
/// segment carried an ACK, the RST's sequence number is that ACK; otherwise the RST
/// acknowledges the segment (SEQ 0, ACK = SEG.SEQ + SEG.LEN, SYN and FIN counting one).
/// `false` (nothing changed) for anything but a complete first-fragment TCP segment
/// without RST (a RST is never answered).
pub fn tcp_reset_in_place(hdr: &Header, pkt: &mut PacketBuf) -> bool {
    const TCP: u8 = 6;
    let f = pkt.bytes();
    if hdr.protocol != TCP || hdr.fragment || f.len() < ETH_HEADER_LEN + hdr.total_len {
        return false;
    }
    let ip = &f[ETH_HEADER_LEN..ETH_HEADER_LEN + hdr.total_len];
    let Some(tcp) = ip.get(hdr.header_len..) else {
        return false;
    };
    if tcp.len() < 20 {
        return false;
    }
    let data_off = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if flags & 0x04 != 0 || data_off < 20 || data_off > tcp.len() {
        return false;
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let seq = be32(&tcp[4..8]);
    let ack = be32(&tcp[8..12]);
    let seg_len =
        (tcp.len() - data_off) as u32 + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
    let (rst_seq, rst_ack, rst_flags) = if flags & 0x10 != 0 {
        (ack, 0, 0x04)
    } else {
        (0, seq.wrapping_add(seg_len), 0x14)
    };
    let mut out = [0u8; ETH_HEADER_LEN + 40];
    out[0..6].copy_from_slice(&f[6..12]);
    out[6..12].copy_from_slice(&f[0..6]);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let o = &mut out[ETH_HEADER_LEN..];
    o[0] = 0x45;
    o[2..4].copy_from_slice(&40u16.to_be_bytes());
    o[6] = 0x40; // DF
    o[8] = 64;
    o[9] = TCP;
    o[12..16].copy_from_slice(&hdr.dst.octets());
    o[16..20].copy_from_slice(&hdr.src.octets());
    let c = crate::ipv4::checksum(&o[..20]);
    o[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut o[20..];
    t[0..2].copy_from_slice(&tcp[2..4]);
    t[2..4].copy_from_slice(&tcp[0..2]);
    t[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    t[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = rst_flags;
    let mut pseudo = [0u8; 12 + 20];
    pseudo[0..4].copy_from_slice(&hdr.dst.octets());
    pseudo[4..8].copy_from_slice(&hdr.src.octets());
    pseudo[9] = TCP;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    pseudo[12..].copy_from_slice(t);
    let c = crate::ipv4::checksum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    pkt.fill(&out);
    true
}

/// The ARP request frame for `target` from interface `iface`.
pub fn arp_request(cfg: &L3Config, target: Ipv4Addr, buf: &mut PacketBuf) -> Option<usize> {
    let iface = cfg.connected(target)?;
    let ifc = &cfg.interfaces[iface];
    let src = cfg.source_for(iface, target)?;
    Arp::request(ifc.mac, src, target).emit(BROADCAST, buf);
    Some(iface)
}

/// The gratuitous ARP frame announcing `addr` on `iface`.
pub fn arp_announce(cfg: &L3Config, iface: usize, addr: Ipv4Addr, buf: &mut PacketBuf) -> bool {
    let Some(ifc) = cfg.interfaces.get(iface) else {
        return false;
    };
    Arp::gratuitous(ifc.mac, addr).emit(BROADCAST, buf);
    true
}

/// A stable locally administered unicast MAC for an interface that has none configured:
/// a hash of the function's identity (say, its VTEP address) and the interface name, so
/// it survives restarts and two functions with the same interface names differ.
pub fn derive_mac(identity: &str, name: &str) -> Mac {
    // FNV-1a 64: fixed across builds and machines.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // 0x02: locally administered, unicast (IEEE 802 U/L and I/G bits).
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::Target;

    fn cfg() -> L3Config {
        let interfaces = vec![
            Interface {
                name: "web".into(),
                attach: Attach::Port(PortId(0)),
                mac: [2, 0, 0, 0, 0, 1],
                addrs: vec!["10.0.1.1/24".parse().unwrap()],
                mtu: 1450,
                slot: 0,
            },
            Interface {
                name: "ext".into(),
                attach: Attach::Bridge(0),
                mac: [2, 0, 0, 0, 0, 2],
                addrs: vec!["192.0.2.2/24".parse().unwrap()],
                mtu: 1500,
                slot: 1,
            },
        ];
        let fib = Fib::build([
            ("10.0.1.0/24".parse().unwrap(), Target::Connected(0)),
            ("192.0.2.0/24".parse().unwrap(), Target::Connected(1)),
        ])
        .unwrap();
        L3Config::new(
            interfaces,
            fib,
            ArpConfig::default(),
            (10, 5),
            vec![(1, Ipv4Addr::new(192, 0, 2, 10))],
        )
    }

    fn arp_frame(op: u16, sha: Mac, spa: [u8; 4], tpa: [u8; 4]) -> PacketBuf {
        let mut b = PacketBuf::new();
        Arp {
            op,
            sha,
            spa: spa.into(),
            tha: [0; 6],
            tpa: tpa.into(),
        }
        .emit(BROADCAST, &mut b);
        b
    }

    #[test]
    fn lookups() {
        let c = cfg();
        assert_eq!(c.port_iface(PortId(0)), Some(0));
        assert_eq!(c.port_iface(PortId(1)), None);
        assert_eq!(c.bridge_iface(0), Some(1));
        assert!(c.is_local("10.0.1.1".parse().unwrap()));
        assert!(!c.is_local("10.0.1.2".parse().unwrap()));
        assert_eq!(c.connected("192.0.2.77".parse().unwrap()), Some(1));
        assert!(c.answers_arp(1, "192.0.2.10".parse().unwrap()));
        assert!(!c.answers_arp(0, "192.0.2.10".parse().unwrap()));
    }

    #[test]
    fn arp_requests_for_us_are_answered_and_others_are_not_learned() {
        let c = cfg();
        let mut nb = Neighbours::new(&c);
        assert_eq!(nb.announce.len(), 3, "two addresses and one proxied");
        let ctr = L3Counters::default();
        let now = Instant::now();
        let host = [2, 9, 9, 9, 9, 9];
        let mut f = arp_frame(OP_REQUEST, host, [10, 0, 1, 5], [10, 0, 1, 1]);
        assert_eq!(
            arp_input(&c, 0, &mut f, &mut nb, &ctr, now),
            ArpOutcome::Replied
        );
        let reply = Arp::parse(&f.bytes()[14..]).unwrap();
        assert_eq!(reply.op, OP_REPLY);
        assert_eq!(reply.sha, [2, 0, 0, 0, 0, 1]);
        assert_eq!(&f.bytes()[0..6], &host);
        assert_eq!(nb.arp.lookup("10.0.1.5".parse().unwrap()), Some(host));
        // Proxy ARP for a NAT address on the right interface only.
        let mut f = arp_frame(OP_REQUEST, host, [192, 0, 2, 1], [192, 0, 2, 10]);
        assert_eq!(
            arp_input(&c, 1, &mut f, &mut nb, &ctr, now),
            ArpOutcome::Replied
        );
        // A flood of requests for other hosts creates no entries.
        for i in 0..200u8 {
            let mut f = arp_frame(
                OP_REQUEST,
                [2, 1, 1, 1, 1, i],
                [10, 0, 1, i],
                [10, 0, 1, 200],
            );
            assert_eq!(
                arp_input(&c, 0, &mut f, &mut nb, &ctr, now),
                ArpOutcome::NotOurs
            );
        }
        assert_eq!(nb.arp.len(), 2);
        // Nobody may claim our own address.
        let mut f = arp_frame(OP_REPLY, [2, 6, 6, 6, 6, 6], [10, 0, 1, 1], [10, 0, 1, 1]);
        arp_input(&c, 0, &mut f, &mut nb, &ctr, now);
        assert_eq!(nb.arp.lookup("10.0.1.1".parse().unwrap()), None);
        assert_eq!(ctr.arp_replies.get(), 2);
    }

    #[test]
    fn derived_macs_are_stable_unicast_and_distinct() {
        let a = derive_mac("198.18.0.1", "web");
        assert_eq!(a, derive_mac("198.18.0.1", "web"));
        assert_ne!(a, derive_mac("198.18.0.2", "web"));
        assert_ne!(a, derive_mac("198.18.0.1", "db"));
        assert_eq!(a[0] & 3, 2);
    }
}
