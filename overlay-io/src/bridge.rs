//! L2 bridge domains: the VXLAN gateway between VNIs, VLANs and interfaces.
//!
//! A bridge domain is a set of ports that form one Ethernet broadcast domain (IEEE 802.1D
//! transparent bridging): source MACs are learned per port, known unicast goes to the port
//! it was learned on, and broadcast, multicast and unknown unicast are flooded to every
//! other port of the domain. A port belongs to at most one domain. Bridging VNI 100 to VLAN
//! 100 on a trunk is the "VXLAN gateway" of the background article; VNI to VNI works alike.
//!
//! [`Bridge`] is a [`NetworkFunction`]: the router's L2 gateway uses it today, the
//! transparent firewall later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buf::{ETH_HEADER_LEN, PacketBuf};
use crate::fdb::{Fdb, Learned};
use crate::metrics::{BridgeCounters, MetricsHub, SlotsExhausted, WorkerCounters};
use crate::pipeline::{DropReason, MAX_PORTS, NetworkFunction, PortId, PortSet, Verdict};

/// Default cap on learned MACs per bridge domain.
pub const DEFAULT_MAX_MACS: usize = 8192;
/// How often tables are aged.
pub const AGE_INTERVAL: Duration = Duration::from_secs(1);

/// One bridge domain's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// Name (metric label).
    pub name: String,
    /// Member ports.
    pub ports: Vec<PortId>,
    /// Cap on learned MACs.
    pub max_macs: usize,
    /// Ageing of learned MACs.
    pub ageing: Duration,
    /// Whether to learn (off: every unicast floods, like a hub; useful with static MACs).
    pub learning: bool,
    /// Counter slot, filled in by [`resolve_slots`].
    pub slot: usize,
}

/// Give each domain its counter slot.
pub fn resolve_slots(domains: &mut [DomainConfig], hub: &MetricsHub) -> Result<(), SlotsExhausted> {
    for d in domains {
        d.slot = hub.bridge_slot(&d.name)?;
    }
    Ok(())
}

#[derive(Debug)]
struct Domain {
    name: String,
    ports: PortSet,
    fdb: Fdb<PortId>,
    slot: usize,
}

/// A set of bridge domains, as a network function.
#[derive(Debug)]
pub struct Bridge {
    domains: Vec<Domain>,
    /// Domain index by port.
    port_domain: Box<[Option<u16>; MAX_PORTS]>,
    counters: Arc<WorkerCounters>,
    next_age: Option<Instant>,
}

impl Bridge {
    /// Bridge domains over ports, counting into `counters`.
    pub fn new(domains: &[DomainConfig], counters: Arc<WorkerCounters>) -> Bridge {
        let mut b = Bridge {
            domains: Vec::new(),
            port_domain: Box::new([None; MAX_PORTS]),
            counters,
            next_age: None,
        };
        b.reconfigure(domains, &|p| Some(p));
        b
    }

    /// Apply new domains. Learned MACs of a domain that keeps its name survive, their
    /// ports renumbered by `remap` (old id -> new id, `None` if the port is gone).
    pub fn reconfigure(
        &mut self,
        domains: &[DomainConfig],
        remap: &dyn Fn(PortId) -> Option<PortId>,
    ) {
        let mut old: Vec<Domain> = std::mem::take(&mut self.domains);
        self.port_domain.fill(None);
        for (i, d) in domains.iter().enumerate() {
            let ports: PortSet = d.ports.iter().copied().collect();
            let fdb = match old.iter().position(|o| o.name == d.name) {
                Some(pos) => {
                    let mut f = old.swap_remove(pos).fdb;
                    f.remap(|p| remap(p).filter(|n| ports.contains(*n)));
                    f.set_limits(d.max_macs, d.ageing, d.learning);
                    f
                }
                None => Fdb::new(d.max_macs, d.ageing, d.learning),
            };
            for p in &d.ports {
                self.port_domain[usize::from(p.0) % MAX_PORTS] = Some(i as u16);
            }
            self.domains.push(Domain {
                name: d.name.clone(),
                ports,
                fdb,
                slot: d.slot,
            });
        }
    }

    /// Decide one frame.
    #[inline]
    pub fn forward(&mut self, pkt: &PacketBuf, now: Instant) -> Verdict {
        let ingress = pkt.port;
        let Some(di) = self.port_domain[usize::from(ingress.0) % MAX_PORTS] else {
            return Verdict::Drop(DropReason::PortUnassigned);
        };
        let d = &mut self.domains[usize::from(di)];
        let c = &self.counters.bridges[d.slot];
        let bytes = pkt.bytes();
        if bytes.len() < ETH_HEADER_LEN {
            return Verdict::Drop(DropReason::FrameMalformed);
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&bytes[0..6]);
        src.copy_from_slice(&bytes[6..12]);
        if crate::is_group_mac(&src) {
            return Verdict::Drop(DropReason::FrameMalformed);
        }
        count_learn(d.fdb.learn(src, ingress, now), c);
        if !crate::is_group_mac(&dst)
            && let Some(out) = d.fdb.lookup(&dst)
        {
            return if out == ingress {
                Verdict::Drop(DropReason::SamePort)
            } else {
                Verdict::Forward(out)
            };
        }
        let set = d.ports.without(ingress);
        if set.is_empty() {
            return Verdict::Drop(DropReason::NoDestination);
        }
        c.floods.inc();
        Verdict::Flood(set)
    }

    /// Learn a frame's source MAC on its port without forwarding it: a frame to the
    /// domain's routed interface (IRB) still teaches where its sender is.
    #[inline]
    pub fn learn(&mut self, pkt: &PacketBuf, now: Instant) {
        let Some(di) = self.domain_of(pkt.port) else {
            return;
        };
        let Some(src) = pkt.src_mac() else {
            return;
        };
        if crate::is_group_mac(&src) {
            return;
        }
        let d = &mut self.domains[di];
        count_learn(
            d.fdb.learn(src, pkt.port, now),
            &self.counters.bridges[d.slot],
        );
    }

    /// The domain a port belongs to.
    #[inline]
    pub fn domain_of(&self, port: PortId) -> Option<usize> {
        self.port_domain[usize::from(port.0) % MAX_PORTS].map(usize::from)
    }

    /// The ports of a domain.
    pub fn domain_ports(&self, domain: usize) -> PortSet {
        self.domains.get(domain).map_or(PortSet::EMPTY, |d| d.ports)
    }

    /// Where a frame that the domain's routed interface (IRB) sends to `dst` goes: the
    /// port `dst` was learned on, else every port of the domain.
    #[inline]
    pub fn egress(&self, domain: usize, dst: &crate::Mac) -> Verdict {
        let Some(d) = self.domains.get(domain) else {
            return Verdict::Drop(DropReason::NoDestination);
        };
        if !crate::is_group_mac(dst)
            && let Some(out) = d.fdb.lookup(dst)
        {
            return Verdict::Forward(out);
        }
        if d.ports.is_empty() {
            return Verdict::Drop(DropReason::NoDestination);
        }
        Verdict::Flood(d.ports)
    }

    /// The table of a domain (admin endpoint, tests).
    pub fn fdb(&self, name: &str) -> Option<&Fdb<PortId>> {
        self.domains.iter().find(|d| d.name == name).map(|d| &d.fdb)
    }
}

fn count_learn(l: Learned, c: &BridgeCounters) {
    match l {
        Learned::New => c.learned.inc(),
        Learned::Moved => c.moved.inc(),
        Learned::CapHit => c.cap_hits.inc(),
        Learned::Refreshed | Learned::Ignored => {}
    }
}

impl NetworkFunction for Bridge {
    type Config = Vec<DomainConfig>;

    fn reconfigure(
        &mut self,
        config: &Arc<Vec<DomainConfig>>,
        remap: &dyn Fn(PortId) -> Option<PortId>,
    ) {
        Bridge::reconfigure(self, config, remap);
    }

    fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant) {
        for (p, v) in pkts.iter().zip(verdicts.iter_mut()) {
            *v = self.forward(p, now);
        }
        if self.next_age.is_none() {
            self.next_age = Some(now + AGE_INTERVAL);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_age
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.next_age.is_some_and(|t| now < t) {
            return;
        }
        for d in &mut self.domains {
            let c = &self.counters.bridges[d.slot];
            c.aged.add(d.fdb.age(now) as u64);
            c.entries.set(d.fdb.len() as u64);
        }
        self.next_age = Some(now + AGE_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(port: u16, src: u8, dst: [u8; 6]) -> PacketBuf {
        let mut b = dst.to_vec();
        b.extend_from_slice(&[2, 0, 0, 0, 0, src, 0x08, 0x00]);
        b.extend_from_slice(&[0u8; 46]);
        let mut p = PacketBuf::new();
        p.fill(&b);
        p.port = PortId(port);
        p
    }

    fn domain(name: &str, ports: &[u16], max: usize) -> DomainConfig {
        DomainConfig {
            name: name.into(),
            ports: ports.iter().map(|&p| PortId(p)).collect(),
            max_macs: max,
            ageing: Duration::from_secs(300),
            learning: true,
            slot: 0,
        }
    }

    const BCAST: [u8; 6] = [0xff; 6];

    #[test]
    fn floods_then_learns() {
        let mut b = Bridge::new(&[domain("gw", &[0, 1, 2], 100)], Arc::default());
        let now = Instant::now();
        let v = b.forward(&frame(0, 1, BCAST), now);
        assert_eq!(
            v,
            Verdict::Flood([PortId(1), PortId(2)].into_iter().collect())
        );
        // Reply from host 2 on port 2 to host 1: learned on port 0.
        assert_eq!(
            b.forward(&frame(2, 2, [2, 0, 0, 0, 0, 1]), now),
            Verdict::Forward(PortId(0))
        );
        assert_eq!(
            b.forward(&frame(0, 1, [2, 0, 0, 0, 0, 2]), now),
            Verdict::Forward(PortId(2))
        );
        // Never back out of the ingress port.
        assert_eq!(
            b.forward(&frame(0, 3, [2, 0, 0, 0, 0, 1]), now),
            Verdict::Drop(DropReason::SamePort)
        );
    }

    #[test]
    fn domains_are_isolated() {
        let mut b = Bridge::new(
            &[domain("a", &[0, 1], 100), domain("b", &[2, 3], 100)],
            Arc::default(),
        );
        let now = Instant::now();
        let v = b.forward(&frame(0, 1, BCAST), now);
        assert_eq!(v, Verdict::Flood([PortId(1)].into_iter().collect()));
        assert_eq!(
            b.forward(&frame(4, 1, BCAST), now),
            Verdict::Drop(DropReason::PortUnassigned)
        );
        // Host 1 learned in a is unknown in b: flooded within b only.
        let v = b.forward(&frame(2, 9, [2, 0, 0, 0, 0, 1]), now);
        assert_eq!(v, Verdict::Flood([PortId(3)].into_iter().collect()));
    }

    #[test]
    fn cap_holds_and_is_counted() {
        let c: Arc<WorkerCounters> = Arc::default();
        let mut b = Bridge::new(&[domain("gw", &[0, 1], 3)], c.clone());
        let now = Instant::now();
        for i in 0..10 {
            b.forward(&frame(0, i, BCAST), now);
        }
        assert_eq!(b.fdb("gw").map(Fdb::len), Some(3));
        assert_eq!(c.bridges[0].cap_hits.get(), 7);
        assert_eq!(c.bridges[0].learned.get(), 3);
    }

    #[test]
    fn ageing_runs_from_timers() {
        let c: Arc<WorkerCounters> = Arc::default();
        let mut b = Bridge::new(&[domain("gw", &[0, 1], 10)], c.clone());
        let t0 = Instant::now();
        let mut pkts = [frame(0, 1, BCAST)];
        let mut v = [Verdict::Drop(DropReason::NoBuffer)];
        b.process(&mut pkts, &mut v, t0);
        let t = b.poll_timeout().unwrap();
        b.handle_timeout(t);
        assert_eq!(c.bridges[0].entries.get(), 1);
        b.handle_timeout(t0 + Duration::from_secs(301));
        assert_eq!(c.bridges[0].entries.get(), 0);
        assert_eq!(c.bridges[0].aged.get(), 1);
    }

    #[test]
    fn reload_keeps_and_remaps_macs() {
        let mut b = Bridge::new(&[domain("gw", &[0, 1], 10)], Arc::default());
        let now = Instant::now();
        b.forward(&frame(1, 7, BCAST), now);
        // Ports renumbered: old 1 becomes 5.
        b.reconfigure(&[domain("gw", &[4, 5], 10)], &|p| Some(PortId(p.0 + 4)));
        assert_eq!(
            b.forward(&frame(4, 1, [2, 0, 0, 0, 0, 7]), now),
            Verdict::Forward(PortId(5))
        );
    }
}
