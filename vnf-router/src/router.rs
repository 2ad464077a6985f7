//! The router's network function: overlay-io's routed function ([`routed::Routed`]) with NAT as
//! its hook.
//!
//! - Before routing ([`Hook::pre_routing`]): an existing session's translation, or a new
//!   destination NAT (floating address, port forward; with hairpin when the source is a
//!   tenant host). ICMP errors about translated flows are translated too (RFC 5508 §7).
//! - After routing ([`Hook::forward`]): source NAT for a new flow leaving by a masquerade or
//!   floating rule's interface.
//! - The rewrite ([`Hook::rewrite`]): addresses and ports with incremental checksums.
//!
//! The NAT table is one per router, in the routed function's shared state: the two
//! directions of a translated flow hash differently and may reach different workers.

use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use overlay_io::buf::PacketBuf;
use overlay_io::ipv4::Header;
use overlay_io::l3::L3Gauges;
use overlay_io::metrics::WorkerCounters;
use overlay_io::nat::{Direction, FiveTuple, NatError, NatTable};
use overlay_io::pipeline::{DropReason, NetworkFunction, PortId, Transmit, Verdict};
use overlay_io::rewrite::{Flow, NatPlan};
use overlay_io::routed::{self, Hook, PacketCx, RoutedConfig, Step};

use overlay_io::l3config::NatSettings;

/// The least time between two log lines about refused NAT flows.
const NAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The router's network function, one per worker: the routed function with NAT.
#[derive(Debug)]
pub struct Router(pub routed::Routed<Nat>);
/// What the router's workers run with.
pub type NfConfig = RoutedConfig<NatSettings>;
/// The router's function-wide state.
pub type Shared = routed::Shared<Nat>;

/// The NAT table and the log limiter of refused flows.
#[derive(Debug)]
pub struct NatState {
    /// Sessions.
    pub table: NatTable,
    /// Refusals since the last log line, and when that was.
    refused: u64,
    logged: Option<Instant>,
}

/// The NAT hook, per worker: the plan for the packet in hand.
#[derive(Debug, Default)]
pub struct Nat {
    plan: Option<NatPlan>,
}

/// Count a refused flow and log it, at most once per [`NAT_LOG_INTERVAL`].
fn refused(st: &mut NatState, e: NatError, key: &FiveTuple, now: Instant) -> Step {
    st.refused += 1;
    if st
        .logged
        .is_none_or(|t| now.saturating_duration_since(t) >= NAT_LOG_INTERVAL)
    {
        tracing::warn!(
            reason = %e,
            refused = st.refused,
            last_src = %key.src.addr,
            last_dst = %key.dst.addr,
            "NAT refused new flows (counted in vnf_drops_total; logged at most every 10 s)"
        );
        st.refused = 0;
        st.logged = Some(now);
    }
    Step::Drop(e.into())
}

impl Hook for Nat {
    type Config = NatSettings;
    type State = NatState;

    fn new_state(cfg: &NfConfig) -> NatState {
        NatState {
            table: NatTable::new(cfg.ext.table),
            refused: 0,
            logged: None,
        }
    }

    fn reconfigure(st: &mut NatState, _old: &NfConfig, new: &NfConfig) {
        st.table.set_config(new.ext.table);
        let nat = &new.ext;
        st.table.retain(|s| nat.allows(s));
    }

    fn owns(cfg: &NatSettings, a: Ipv4Addr) -> bool {
        cfg.is_external(a)
    }

    fn pre_routing(
        &mut self,
        p: &mut PacketCx<'_, NatSettings, NatState>,
        dst: &mut Ipv4Addr,
    ) -> Step {
        self.plan = None;
        let nat = &p.cfg.ext;
        if !nat.is_active() {
            return Step::Continue;
        }
        let (st, now) = (&mut *p.st, p.now);
        match *p.flow {
            Flow::Tuple { key, tcp_flags } => {
                if let Some((t, dir)) = st.table.lookup(&key, now) {
                    self.plan = Some(NatPlan::tuple(key, t, dir, tcp_flags));
                } else if let Some((target, tenant)) = nat.inbound(&key) {
                    let r = match nat.hairpin(key.src.addr) {
                        Some((rule, t)) => st.table.translate_hairpin(t, key, target, rule, now),
                        None => st.table.translate_inbound_dnat(tenant, key, target, now),
                    };
                    match r {
                        Ok(t) => {
                            self.plan = Some(NatPlan::tuple(key, t, Direction::Original, tcp_flags))
                        }
                        Err(e) => return refused(st, e, &key, now),
                    }
                }
            }
            Flow::IcmpError { quoted } => {
                if let Some((t, _)) = st.table.lookup(&quoted.reversed(), now) {
                    self.plan = Some(NatPlan::icmp_error(quoted, t));
                }
            }
            Flow::Other => {
                if nat.is_external(p.hdr.dst) && !p.cfg.l3.is_local(p.hdr.dst) {
                    return Step::Drop(DropReason::NatUntranslatable);
                }
            }
        }
        if let Some(plan) = &self.plan {
            *dst = plan.dst();
        }
        Step::Continue
    }

    fn forward(&mut self, p: &mut PacketCx<'_, NatSettings, NatState>, out: usize) -> Step {
        let nat = &p.cfg.ext;
        if self.plan.is_some() || !nat.is_active() {
            return Step::Continue;
        }
        match *p.flow {
            Flow::Tuple { key, tcp_flags } => {
                if let Some((rule, tenant)) = nat.outbound(key.src.addr, out) {
                    match p.st.table.translate_outbound(tenant, key, rule, p.now) {
                        Ok(t) => {
                            self.plan = Some(NatPlan::tuple(key, t, Direction::Original, tcp_flags))
                        }
                        Err(e) => return refused(p.st, e, &key, p.now),
                    }
                }
                Step::Continue
            }
            Flow::Other | Flow::IcmpError { .. } => {
                if nat.outbound(p.hdr.src, out).is_some() {
                    Step::Drop(DropReason::NatUntranslatable)
                } else {
                    Step::Continue
                }
            }
        }
    }

    fn rewrite(&mut self, st: &mut NatState, ip: &mut [u8], hdr: &Header, now: Instant) {
        if let Some(plan) = self.plan.take() {
            plan.apply(&mut st.table, ip, hdr, now);
        }
    }

    fn tick(st: &mut NatState, _cfg: &NatSettings, now: Instant, _drops: &WorkerCounters) {
        st.table.expire_all(now, routed::EXPIRE_ROUNDS);
    }

    fn gauges(st: &NatState, cfg: &NatSettings, g: &L3Gauges) {
        let stats = st.table.stats();
        g.nat_sessions.set(stats.sessions as u64);
        g.nat_mappings.set(stats.mappings as u64);
        g.nat_expired.set(stats.expired);
        let pools: Vec<(String, u64)> = cfg
            .pools()
            .into_iter()
            .map(|(n, p)| (n, st.table.ports_in_use(&p) as u64))
            .collect();
        *g.nat_pool_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = pools;
        let tenants: Vec<(String, u64)> = cfg
            .tenants
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), st.table.tenant_sessions(i as u32) as u64))
            .collect();
        *g.nat_tenant_sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tenants;
    }
}

impl Router {
    /// A router worker.
    pub fn new(cfg: &Arc<NfConfig>, shared: Arc<Shared>, drops: Arc<WorkerCounters>) -> Router {
        Router(routed::Routed::new(cfg, shared, drops))
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        self.0.shared()
    }

    /// The bridge domains.
    pub fn bridge(&self) -> &overlay_io::bridge::Bridge {
        self.0.bridge()
    }
}

impl NetworkFunction for Router {
    type Config = NfConfig;

    fn reconfigure(&mut self, config: &Arc<NfConfig>, remap: &dyn Fn(PortId) -> Option<PortId>) {
        self.0.reconfigure(config, remap);
    }

    fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant) {
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
}
