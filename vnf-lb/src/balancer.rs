//! The load balancer's network function: overlay-io's routed function with L4 load
//! balancing as its hook.
//!
//! - Before routing ([`Hook::pre_routing`]): a packet of a tracked connection is rewritten
//!   as its connection says, in either direction. A new flow to an L4 service's
//!   (VIP, protocol, port) gets a backend from the pool's Maglev table (built over the
//!   backends that are up, not draining and of weight above 0), and a connection: full NAT
//!   (the source becomes the load balancer's address toward the backend and a port of
//!   [`crate::config::SNAT_PORTS`]) or DNAT (only the destination). ICMP errors about
//!   tracked flows are translated too (RFC 5508 §7).
//! - For the function's own addresses ([`Hook::input`]): L7 services and the replies to the
//!   host stack's own connections go to the host stack; other TCP ports answer RST and UDP
//!   ports ICMP port unreachable, like a host.
//!
//! Connections live in overlay-io's NAT table, one per function, kept across reloads and
//! health changes: a pool change moves new flows only. Maglev tables live here too, one per
//! pool, rebuilt when a pool's config or a backend's health changes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use overlay_io::icmp::IcmpError;
use overlay_io::ipv4::Header;
use overlay_io::metrics::WorkerCounters;
use overlay_io::nat::{Direction, Endpoint, FiveTuple, NatTable, Proto, TcpState};
use overlay_io::pipeline::{DropReason, NetworkFunction, PortId, Transmit, Verdict};
use overlay_io::rewrite::{Flow, NatPlan};
use overlay_io::routed::{self, Hook, PacketCx, RoutedConfig, Step};

use crate::config::{Affinity, HOST_PORTS, LbSettings, Mode, PoolCfg, ServiceKind};
use crate::maglev::{self, MaglevTable};

/// What the load balancer's workers run with.
pub type NfConfig = RoutedConfig<LbSettings>;
/// The load balancer's function-wide state.
pub type Shared = routed::Shared<Balancer>;

/// Counters of one service (kept by name across reloads).
#[derive(Debug, Clone, Default)]
pub struct ServiceStats {
    /// Connections created.
    pub connections: u64,
    /// New flows refused: no backend up.
    pub no_backend: u64,
    /// New flows refused: the connection table was full.
    pub refused: u64,
}

/// Counters of one backend of one pool (kept by name across reloads).
#[derive(Debug, Clone, Default)]
pub struct BackendStats {
    /// Connections created (L4).
    pub connections: u64,
    /// Packets and bytes client -> backend.
    pub packets_in: u64,
    /// Bytes client -> backend (IP packets).
    pub bytes_in: u64,
    /// Packets backend -> client.
    pub packets_out: u64,
    /// Bytes backend -> client.
    pub bytes_out: u64,
}

/// A stable index of a (pool, backend) or a service by name, for counters.
#[derive(Debug, Default)]
struct Slots {
    by_name: BTreeMap<(String, String), usize>,
}

impl Slots {
    fn get(&mut self, a: &str, b: &str) -> usize {
        let n = self.by_name.len();
        *self
            .by_name
            .entry((a.to_owned(), b.to_owned()))
            .or_insert(n)
    }
}

/// A pool's choice of backends for new flows.
#[derive(Debug)]
struct PoolTable {
    /// Maglev over the eligible backends; `None` when none is.
    table: Option<MaglevTable>,
    /// Table index -> backend index in the pool.
    members: Vec<usize>,
}

/// What the hook keeps per connection slot: the backend's counter slot.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    backend: u32,
}

/// The load balancer's state: connections, health, tables, counters.
#[derive(Debug)]
pub struct LbState {
    /// Connections (L4).
    pub table: NatTable,
    /// Health by pool and backend index of the applied config.
    up: Vec<Vec<bool>>,
    /// Health by (pool, backend) name, the source of `up` across reloads.
    health: BTreeMap<(String, String), bool>,
    /// Backends drained by the admin API, by (pool, backend) name.
    admin_drain: BTreeMap<(String, String), bool>,
    tables: Vec<PoolTable>,
    meta: Vec<Meta>,
    service_slots: Slots,
    backend_slots: Slots,
    /// Slot of each service of the applied config.
    svc_slot: Vec<usize>,
    /// Slot of each backend of each pool of the applied config.
    be_slot: Vec<Vec<usize>>,
    /// Service counters by slot.
    pub services: Vec<ServiceStats>,
    /// Backend counters by slot.
    pub backends: Vec<BackendStats>,
}

impl LbState {
    fn new(cfg: &LbSettings) -> LbState {
        let mut st = LbState {
            table: NatTable::new(cfg.nat),
            up: Vec::new(),
            health: BTreeMap::new(),
            admin_drain: BTreeMap::new(),
            tables: Vec::new(),
            meta: Vec::new(),
            service_slots: Slots::default(),
            backend_slots: Slots::default(),
            svc_slot: Vec::new(),
            be_slot: Vec::new(),
            services: Vec::new(),
            backends: Vec::new(),
        };
        st.apply(cfg);
        st
    }

    /// Index the config: slots, health, tables.
    fn apply(&mut self, cfg: &LbSettings) {
        self.svc_slot = cfg
            .services
            .iter()
            .map(|s| self.service_slots.get(&s.name, ""))
            .collect();
        self.be_slot = cfg
            .pools
            .iter()
            .map(|p| {
                p.backends
                    .iter()
                    .map(|b| self.backend_slots.get(&p.name, &b.name))
                    .collect()
            })
            .collect();
        self.services
            .resize(self.service_slots.by_name.len(), ServiceStats::default());
        self.backends
            .resize(self.backend_slots.by_name.len(), BackendStats::default());
        self.up = cfg
            .pools
            .iter()
            .map(|p| {
                p.backends
                    .iter()
                    .map(|b| {
                        // No check: always up. A new backend is down until checked.
                        p.check.is_none()
                            || self
                                .health
                                .get(&(p.name.clone(), b.name.clone()))
                                .copied()
                                .unwrap_or(false)
                    })
                    .collect()
            })
            .collect();
        self.tables = cfg
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| self.build(i, p))
            .collect();
    }

    fn eligible(&self, pool: usize, p: &PoolCfg, b: usize) -> bool {
        let be = &p.backends[b];
        be.weight > 0
            && !be.drain
            && self.up[pool][b]
            && !self
                .admin_drain
                .get(&(p.name.clone(), be.name.clone()))
                .copied()
                .unwrap_or(false)
    }

    fn build(&self, pool: usize, p: &PoolCfg) -> PoolTable {
        let members: Vec<usize> = (0..p.backends.len())
            .filter(|&b| self.eligible(pool, p, b))
            .collect();
        let list: Vec<(&str, u32)> = members
            .iter()
            .map(|&b| (p.backends[b].name.as_str(), p.backends[b].weight))
            .collect();
        let table = if list.is_empty() {
            None
        } else {
            // Sizes were checked by the config; a failure leaves the pool without backends.
            MaglevTable::build(&list, p.table_size)
                .map_err(|e| tracing::error!(pool = %p.name, error = %e, "Maglev table"))
                .ok()
        };
        PoolTable { table, members }
    }

    /// Set a backend's health; rebuilds its pool's table when it changed. Whether it
    /// changed (`false` too if the pool or backend is not in `cfg`).
    pub fn set_health(&mut self, cfg: &LbSettings, pool: &str, backend: &str, up: bool) -> bool {
        let Some((pi, p)) = cfg.pools.iter().enumerate().find(|(_, p)| p.name == pool) else {
            return false;
        };
        let Some(bi) = p.backends.iter().position(|b| b.name == backend) else {
            return false;
        };
        self.health
            .insert((pool.to_owned(), backend.to_owned()), up);
        if self.up[pi][bi] == up {
            return false;
        }
        self.up[pi][bi] = up;
        self.tables[pi] = self.build(pi, p);
        true
    }

    /// Drain (or undrain) a backend at run time, on top of its config; rebuilds the table.
    /// `false` if the pool or backend is not in `cfg`.
    pub fn set_admin_drain(
        &mut self,
        cfg: &LbSettings,
        pool: &str,
        backend: &str,
        drain: bool,
    ) -> bool {
        let Some((pi, p)) = cfg.pools.iter().enumerate().find(|(_, p)| p.name == pool) else {
            return false;
        };
        if !p.backends.iter().any(|b| b.name == backend) {
            return false;
        }
        self.admin_drain
            .insert((pool.to_owned(), backend.to_owned()), drain);
        self.tables[pi] = self.build(pi, p);
        true
    }

    /// Whether a backend is up (health).
    pub fn is_up(&self, pool: usize, backend: usize) -> bool {
        self.up
            .get(pool)
            .and_then(|p| p.get(backend))
            .copied()
            .unwrap_or(false)
    }

    /// Whether a backend takes new flows (up, weight, not draining).
    pub fn is_eligible(&self, cfg: &LbSettings, pool: usize, backend: usize) -> bool {
        cfg.pools
            .get(pool)
            .is_some_and(|p| backend < p.backends.len() && self.eligible(pool, p, backend))
    }

    /// The backend of `pool` for a new flow with this hash.
    pub fn pick(&self, pool: usize, hash: u64) -> Option<usize> {
        let t = self.tables.get(pool)?;
        let i = t.table.as_ref()?.lookup(hash)?;
        t.members.get(i).copied()
    }

    /// Counter slot of a (pool, backend) of the applied config.
    pub fn backend_slot(&self, pool: usize, backend: usize) -> Option<usize> {
        self.be_slot.get(pool)?.get(backend).copied()
    }

    /// Counter slot of a service of the applied config.
    pub fn service_slot(&self, service: usize) -> Option<usize> {
        self.svc_slot.get(service).copied()
    }

    /// Open L4 connections (not closed) per backend slot.
    pub fn active_by_backend(&self, cfg: &LbSettings) -> Vec<u64> {
        let mut by_ep: BTreeMap<(Proto, Endpoint), usize> = BTreeMap::new();
        for (pi, p) in cfg.pools.iter().enumerate() {
            for (bi, b) in p.backends.iter().enumerate() {
                let ep = Endpoint::new(*b.addr.ip(), b.addr.port());
                if let Some(slot) = self.backend_slot(pi, bi) {
                    by_ep.insert((Proto::Tcp, ep), slot);
                    by_ep.insert((Proto::Udp, ep), slot);
                }
            }
        }
        let mut out = vec![0; self.backends.len()];
        for s in self.table.sessions() {
            if s.tcp == TcpState::Closed {
                continue;
            }
            if let Some(&slot) = by_ep.get(&(s.original.proto, s.translated.dst)) {
                out[slot] += 1;
            }
        }
        out
    }
}

/// The hook, per worker: the plan for the packet in hand.
#[derive(Debug, Default)]
pub struct Balancer {
    plan: Option<NatPlan>,
}

/// A refusal as a host would answer: RST for TCP, port unreachable for UDP.
fn refuse(proto: Proto, r: DropReason) -> Step {
    match proto {
        Proto::Tcp => Step::Reset(r),
        _ => Step::Refuse(IcmpError::PortUnreachable, r),
    }
}

/// The flow hash Maglev looks up: the 5-tuple, or with client affinity the client address.
fn hash_of(key: &FiveTuple, affinity: Affinity) -> u64 {
    let p = match key.proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
    };
    match affinity {
        Affinity::None => maglev::flow_hash(
            key.src.addr.into(),
            key.src.port,
            key.dst.addr.into(),
            key.dst.port,
            p,
        ),
        Affinity::ClientIp => maglev::flow_hash(key.src.addr.into(), 0, key.dst.addr.into(), 0, 0),
    }
}

impl Balancer {
    /// A new flow to an L4 service: pick a backend and open a connection.
    fn open(
        &mut self,
        cfg: &LbSettings,
        st: &mut LbState,
        svc: usize,
        key: FiveTuple,
        tcp_flags: u8,
        now: Instant,
    ) -> Step {
        let s = &cfg.services[svc];
        let ServiceKind::L4 { pool, mode } = s.kind else {
            return Step::Continue;
        };
        let slot = st.service_slot(svc).unwrap_or(0);
        let Some(b) = st.pick(pool, hash_of(&key, s.affinity)) else {
            st.services[slot].no_backend += 1;
            return refuse(key.proto, DropReason::NoBackend);
        };
        let be = &cfg.pools[pool].backends[b];
        let target = Endpoint::new(*be.addr.ip(), be.addr.port());
        let r = match mode {
            Mode::Dnat => st.table.translate_inbound_dnat(0, key, target, now),
            Mode::FullNat => st.table.translate_hairpin(0, key, target, &be.snat, now),
        };
        match r {
            Ok(t) => {
                let bslot = st.backend_slot(pool, b).unwrap_or(0);
                let i = t.session.index() as usize;
                if st.meta.len() <= i {
                    st.meta.resize(i + 1, Meta::default());
                }
                st.meta[i] = Meta {
                    backend: bslot as u32,
                };
                st.services[slot].connections += 1;
                st.backends[bslot].connections += 1;
                self.plan = Some(NatPlan::tuple(key, t, Direction::Original, tcp_flags));
                Step::Continue
            }
            Err(e) => {
                st.services[slot].refused += 1;
                Step::Drop(e.into())
            }
        }
    }
}

impl Hook for Balancer {
    type Config = LbSettings;
    type State = LbState;

    fn new_state(cfg: &NfConfig) -> LbState {
        LbState::new(&cfg.ext)
    }

    fn reconfigure(st: &mut LbState, _old: &NfConfig, new: &NfConfig) {
        st.table.set_config(new.ext.nat);
        // Connections of a service that is gone end; those of a removed or drained backend
        // stay until they close.
        let lb = &new.ext;
        st.table.retain(|s| {
            lb.service(s.original.dst.addr, s.original.proto, s.original.dst.port)
                .is_some()
        });
        st.apply(lb);
    }

    fn owns(cfg: &LbSettings, a: Ipv4Addr) -> bool {
        cfg.is_vip(a)
    }

    fn pre_routing(
        &mut self,
        p: &mut PacketCx<'_, LbSettings, LbState>,
        dst: &mut Ipv4Addr,
    ) -> Step {
        self.plan = None;
        let lb = &p.cfg.ext;
        let (st, now) = (&mut *p.st, p.now);
        match *p.flow {
            Flow::Tuple { key, tcp_flags } => {
                if let Some((t, dir)) = st.table.lookup(&key, now) {
                    self.plan = Some(NatPlan::tuple(key, t, dir, tcp_flags));
                } else if let Some(svc) = lb.service(key.dst.addr, key.proto, key.dst.port)
                    && !lb.services[svc].is_l7()
                {
                    // Any packet opens a connection, not only a SYN: Maglev sends a flow
                    // that outlived its connection (a restart) to the same backend.
                    let step = self.open(lb, st, svc, key, tcp_flags, now);
                    if step != Step::Continue {
                        return step;
                    }
                }
            }
            Flow::IcmpError { quoted } => {
                if let Some((t, _)) = st.table.lookup(&quoted.reversed(), now) {
                    self.plan = Some(NatPlan::icmp_error(quoted, t));
                }
            }
            Flow::Other => {}
        }
        if let Some(plan) = &self.plan {
            *dst = plan.dst();
        }
        Step::Continue
    }

    fn input(&mut self, p: &mut PacketCx<'_, LbSettings, LbState>) -> Step {
        let lb = &p.cfg.ext;
        let Flow::Tuple { key, .. } = *p.flow else {
            return Step::Continue;
        };
        if key.proto == Proto::Icmp {
            return Step::Continue;
        }
        if lb.is_vip(key.dst.addr) {
            return match lb.service(key.dst.addr, key.proto, key.dst.port) {
                Some(s) if lb.services[s].is_l7() => Step::Deliver,
                _ => refuse(key.proto, DropReason::LocalUnhandled),
            };
        }
        // The host stack's own connections: health checks and L7 to backends.
        if key.proto == Proto::Tcp && HOST_PORTS.contains(&key.dst.port) {
            return Step::Deliver;
        }
        refuse(key.proto, DropReason::LocalUnhandled)
    }

    fn rewrite(&mut self, st: &mut LbState, ip: &mut [u8], hdr: &Header, now: Instant) {
        let Some(plan) = self.plan.take() else {
            return;
        };
        let Some((session, dir)) = plan.apply(&mut st.table, ip, hdr, now) else {
            return;
        };
        if let Some(m) = st.meta.get(session.index() as usize)
            && let Some(b) = st.backends.get_mut(m.backend as usize)
        {
            let len = hdr.total_len as u64;
            match dir {
                Direction::Original => {
                    b.packets_in += 1;
                    b.bytes_in += len;
                }
                Direction::Reply => {
                    b.packets_out += 1;
                    b.bytes_out += len;
                }
            }
        }
    }

    fn tick(st: &mut LbState, _cfg: &LbSettings, now: Instant, _drops: &WorkerCounters) {
        st.table.expire_all(now, routed::EXPIRE_ROUNDS);
    }
}

/// The load balancer's network function, one per worker.
#[derive(Debug)]
pub struct LoadBalancer(pub routed::Routed<Balancer>);

impl LoadBalancer {
    /// A worker.
    pub fn new(
        cfg: &Arc<NfConfig>,
        shared: Arc<Shared>,
        drops: Arc<WorkerCounters>,
    ) -> LoadBalancer {
        LoadBalancer(routed::Routed::new(cfg, shared, drops))
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        self.0.shared()
    }
}

impl NetworkFunction for LoadBalancer {
    type Config = NfConfig;

    fn reconfigure(&mut self, config: &Arc<NfConfig>, remap: &dyn Fn(PortId) -> Option<PortId>) {
        self.0.reconfigure(config, remap);
    }

    fn process(
        &mut self,
        pkts: &mut [overlay_io::buf::PacketBuf],
        verdicts: &mut [Verdict],
        now: Instant,
    ) {
        self.0.process(pkts, verdicts, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
    }

    fn poll_transmit(&mut self, tx: &mut Transmit) {
        self.0.poll_transmit(tx);
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.wake_fd()
    }
}
