//! The firewall's network function: overlay-io's routed function ([`routed::Routed`])
//! with the policy and connection tracking as its hook.
//!
//! Where packets are judged:
//!
//! - routed mode, [`Hook::forward`]: after the route lookup, so both zones are known (the
//!   ingress interface's and the egress interface's);
//! - transparent mode, [`Hook::bridged`]: a bridge domain without a routed interface joins
//!   two segments; zones name its ports, and the frame's ingress and egress ports give the
//!   pair.
//!
//! How: connection tracking first ([`Conntrack::lookup`]). A packet of an established
//! connection, or an ICMP error related to one, passes without consulting the rules: that
//! is the cost of established traffic, one hash lookup whatever the rule set. Anything
//! else is classified by the zone pair's rules ([`Policy::classify`]) with its state (new or
//! invalid); an accepted new packet creates a connection (zone = the source zone, so
//! `max_connections_per_zone` caps each zone; when the table is full, connections that
//! never completed are dropped early, never established ones).

use std::sync::PoisonError;
use std::time::Instant;

use overlay_io::conntrack::{self as ct, Conntrack, CtError};
use overlay_io::icmp::IcmpError;
use overlay_io::ipv4::TokenBucket;
use overlay_io::pipeline::{DropReason, PortSet, Verdict};
use overlay_io::routed::{self, Hook, PacketCx, RoutedConfig, Step};

use crate::classifier::{self, Action, CtState, L4, Policy, RuleId, ZoneId};
use crate::config::FwSettings;

/// Counter slots for rules (by `from/to/name`, kept across reloads).
pub const RULE_SLOTS: usize = 16384;

/// What the firewall's workers run with.
pub type NfConfig = RoutedConfig<FwSettings>;
/// The firewall's function-wide state.
pub type Shared = routed::Shared<Filter>;
/// The firewall's network function, one per worker.
pub type Firewall = routed::Routed<Filter>;

/// Connections, per-rule counters and the log limiter: one per firewall.
#[derive(Debug)]
pub struct FwState {
    /// The connection table.
    pub ct: Conntrack,
    /// Packets per rule slot.
    pub rule_packets: Vec<u64>,
    /// Bytes per rule slot.
    pub rule_bytes: Vec<u64>,
    /// Log lines not written because of the rate limit.
    pub log_suppressed: u64,
    log: TokenBucket,
}

/// The per-worker hook (stateless: everything is in [`FwState`]).
#[derive(Debug, Default)]
pub struct Filter;

/// The classifier's view of a tracked packet.
fn classifier_packet(p: &ct::Packet, state: CtState) -> classifier::Packet {
    let k = &p.key;
    let l4 = match &p.l4 {
        ct::L4::Tcp(_) | ct::L4::Udp => L4::Ports {
            src: k.sport,
            dst: k.dport,
        },
        ct::L4::IcmpQuery { ty } => L4::Icmp { ty: *ty, code: 0 },
        ct::L4::IcmpError { ty, code, .. } | ct::L4::IcmpOther { ty, code } => L4::Icmp {
            ty: *ty,
            code: *code,
        },
        _ => L4::None,
    };
    classifier::Packet {
        src: k.src,
        dst: k.dst,
        protocol: k.proto,
        l4,
        state,
    }
}

/// Judge one packet going from zone `from` to zone `to`.
fn judge(
    p: &mut PacketCx<'_, FwSettings, FwState>,
    from: Option<ZoneId>,
    to: Option<ZoneId>,
) -> Step {
    let fw = &p.cfg.ext;
    let pkt = ct::Packet::parse(p.ip, p.hdr);
    let v = p.st.ct.lookup(&pkt, p.now);
    let state = match v.state {
        ct::CtState::Established | ct::CtState::Related => return Step::Continue,
        // A retransmitted SYN of a connection the policy accepted already.
        ct::CtState::New if v.conn.is_some() => return Step::Continue,
        ct::CtState::New => CtState::New,
        ct::CtState::Invalid(_) => CtState::Invalid,
    };
    let cp = classifier_packet(&pkt, state);
    let verdict = match (from, to) {
        (Some(f), Some(t)) => fw.policy.classify(f, t, &cp),
        _ => classifier::Verdict {
            rule: RuleId::NO_POLICY,
            action: Action::Drop,
            log: false,
        },
    };
    let slot = fw
        .rule_slots
        .get(verdict.rule.index())
        .copied()
        .unwrap_or(0);
    if let Some(c) = p.st.rule_packets.get_mut(slot) {
        *c += 1;
    }
    if let Some(c) = p.st.rule_bytes.get_mut(slot) {
        *c += p.hdr.total_len as u64;
    }
    if verdict.log {
        log(p, &verdict, &cp);
    }
    // A zone pair's default never accepts an invalid packet: only a rule naming the
    // `invalid` state does.
    let is_default = fw
        .policy
        .rules()
        .get(verdict.rule.index())
        .is_none_or(|r| r.kind != classifier::RuleKind::Rule);
    if state == CtState::Invalid && is_default {
        return Step::Drop(DropReason::CtInvalid);
    }
    match verdict.action {
        Action::Accept => {
            if state != CtState::New {
                return Step::Continue;
            }
            let zone = from.map_or(u32::MAX, |z| u32::from(z.0));
            let tag = to.map_or(u32::MAX, |z| u32::from(z.0));
            match p.st.ct.commit(&pkt, zone, tag, p.now) {
                Ok(_) | Err(CtError::NotNew) => Step::Continue,
                Err(CtError::ZoneFull | CtError::TableFull) => Step::Drop(DropReason::CtFull),
            }
        }
        Action::Drop if state == CtState::Invalid => Step::Drop(DropReason::CtInvalid),
        Action::Drop => Step::Drop(DropReason::PolicyDrop),
        Action::Reject if p.hdr.protocol == classifier::proto::TCP => {
            Step::Reset(DropReason::PolicyReject)
        }
        Action::Reject => Step::Refuse(IcmpError::AdminProhibited, DropReason::PolicyReject),
    }
}

/// A structured log line for a packet of a rule with `log: true`, rate-limited.
fn log(
    p: &mut PacketCx<'_, FwSettings, FwState>,
    v: &classifier::Verdict,
    cp: &classifier::Packet,
) {
    if !p.st.log.allow(p.now) {
        p.st.log_suppressed += 1;
        return;
    }
    let info = p.cfg.ext.policy.rules().get(v.rule.index());
    let (sport, dport) = match cp.l4 {
        L4::Ports { src, dst } => (src, dst),
        L4::Icmp { ty, code } => (u16::from(ty), u16::from(code)),
        L4::None => (0, 0),
    };
    tracing::info!(
        target: "vnf_firewall::packet",
        action = v.action.name(),
        rule = info.map_or("", |i| i.name.as_str()),
        from = info.map_or("", |i| i.from.as_str()),
        to = info.map_or("", |i| i.to.as_str()),
        state = cp.state.name(),
        proto = cp.protocol,
        src = %cp.src,
        sport,
        dst = %cp.dst,
        dport,
        len = p.hdr.total_len,
        suppressed = p.st.log_suppressed,
        "firewall"
    );
    p.st.log_suppressed = 0;
}

/// Whether the new policy still accepts a connection (a new packet of its key from its
/// zones, renamed by zone name from `old`).
fn still_accepted(old: &Policy, new: &Policy, c: &ct::ConnInfo) -> bool {
    let zone = |id: u32| old.zones().get(id as usize).and_then(|z| new.zone(&z.name));
    let (Some(from), Some(to)) = (zone(c.zone), zone(c.tag)) else {
        return false;
    };
    let k = &c.key;
    let l4 = match k.proto {
        ct::IPPROTO_TCP | ct::IPPROTO_UDP => L4::Ports {
            src: k.sport,
            dst: k.dport,
        },
        ct::IPPROTO_ICMP => L4::Icmp {
            ty: u8::try_from(k.dport).unwrap_or(8),
            code: 0,
        },
        _ => L4::None,
    };
    let p = classifier::Packet {
        src: k.src,
        dst: k.dst,
        protocol: k.proto,
        l4,
        state: CtState::New,
    };
    new.classify(from, to, &p).action == Action::Accept
}

impl Hook for Filter {
    type Config = FwSettings;
    type State = FwState;

    fn new_state(cfg: &NfConfig) -> FwState {
        FwState {
            ct: Conntrack::new(cfg.ext.conntrack),
            rule_packets: vec![0; RULE_SLOTS],
            rule_bytes: vec![0; RULE_SLOTS],
            log_suppressed: 0,
            log: TokenBucket::new(cfg.ext.log_rate.0, cfg.ext.log_rate.1),
        }
    }

    fn reconfigure(st: &mut FwState, old: &NfConfig, new: &NfConfig) {
        st.ct.set_config(new.ext.conntrack);
        st.log = TokenBucket::new(new.ext.log_rate.0, new.ext.log_rate.1);
        if new.ext.cut_on_reload {
            let (o, n) = (&old.ext.policy, &new.ext.policy);
            let now = Instant::now();
            let cut = st.ct.retain(now, |c| still_accepted(o, n, c));
            if cut > 0 {
                tracing::info!(cut, "reload: connections the new policy refuses were cut");
            }
        }
    }

    fn forward(&mut self, p: &mut PacketCx<'_, FwSettings, FwState>, out: usize) -> Step {
        let fw = &p.cfg.ext;
        let from = fw.iface_zone.get(p.iface).copied().flatten();
        let to = fw.iface_zone.get(out).copied().flatten();
        judge(p, from, to)
    }

    fn bridged(&mut self, p: &mut PacketCx<'_, FwSettings, FwState>, verdict: Verdict) -> Step {
        let fw = &p.cfg.ext;
        let zone = |port: overlay_io::pipeline::PortId| {
            fw.port_zone.get(usize::from(port.0)).copied().flatten()
        };
        let from = zone(p.port);
        let to = match verdict {
            Verdict::Forward(port) => zone(port),
            // Flooded (unknown destination): judged against the first other port's zone.
            Verdict::Flood(set) => first(&set).and_then(zone),
            _ => None,
        };
        judge(p, from, to)
    }

    fn tick(
        st: &mut FwState,
        _cfg: &FwSettings,
        now: Instant,
        _drops: &overlay_io::metrics::WorkerCounters,
    ) {
        st.ct.expire_all(now, routed::EXPIRE_ROUNDS);
    }
}

fn first(set: &PortSet) -> Option<overlay_io::pipeline::PortId> {
    set.iter().next()
}

/// Counter slots of rules by label, grow-only so that a reload never moves a counter.
#[derive(Debug, Default)]
pub struct RuleNames(std::sync::Mutex<Vec<(String, String, String)>>);

impl RuleNames {
    /// The slot of every rule of `policy`, by (from, to, name); `Err` when slots run out.
    pub fn slots(&self, policy: &Policy) -> Result<Vec<usize>, String> {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(policy.rules().len());
        for r in policy.rules() {
            let key = (r.from.clone(), r.to.clone(), r.name.clone());
            let i = match names.iter().position(|n| *n == key) {
                Some(i) => i,
                None if names.len() < RULE_SLOTS => {
                    names.push(key);
                    names.len() - 1
                }
                None => {
                    return Err(format!(
                        "more than {RULE_SLOTS} distinct rules since start: restart to reuse counter slots"
                    ));
                }
            };
            out.push(i);
        }
        Ok(out)
    }

    /// Labels by slot.
    pub fn labels(&self) -> Vec<(String, String, String)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
