//! The forwarding information base of a routed function: an [`Lpm`] over every route, each
//! leaf pointing at what to do: deliver on a connected interface, send to one of several
//! gateways (ECMP), or refuse.
//!
//! A [`Fib`] is immutable: a reload builds a new one and the workers pick it up with the
//! rest of the config, so a lookup never sees half a table.
//!
//! ECMP picks a next hop by a hash of the packet's 5-tuple (the caller passes the hash), so
//! every packet of a flow takes the same path (RFC 2992 "hash-threshold" style without the
//! thresholds: `hash % n`; adding a next hop remaps flows, as in Linux).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::lpm::{Lpm, LpmError};

/// What a refusing route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Drop silently.
    Blackhole,
    /// Drop and answer ICMP destination unreachable (net unreachable).
    Unreachable,
    /// Drop and answer ICMP communication administratively prohibited.
    Prohibit,
}

/// A gateway on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// The egress interface (index into the function's interface list).
    pub iface: usize,
    /// The gateway's address; it must be on a connected subnet of `iface`.
    pub gateway: Ipv4Addr,
}

/// Where a route sends matching packets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A subnet on an interface: the destination itself is the next hop.
    Connected(usize),
    /// One or more gateways; more than one is ECMP.
    Via(Vec<NextHop>),
    /// Refused.
    Reject(RejectKind),
}

/// The lookup's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send out of `iface` to the neighbour `next_hop`.
    Forward {
        /// The egress interface.
        iface: usize,
        /// The address to resolve with ARP.
        next_hop: Ipv4Addr,
    },
    /// A refusing route matched.
    Reject(RejectKind),
    /// No route matched.
    NoRoute,
}

/// Routes compiled for lookup.
#[derive(Debug, Clone)]
pub struct Fib {
    lpm: Lpm,
    targets: Vec<Target>,
    routes: Vec<(Ipv4Network, usize)>,
}

impl Fib {
    /// Build from routes; a later route for the same prefix replaces an earlier one.
    /// Targets are shared: routes with equal targets use one entry.
    pub fn build(routes: impl IntoIterator<Item = (Ipv4Network, Target)>) -> Result<Fib, LpmError> {
        let mut targets: Vec<Target> = Vec::new();
        let mut list = Vec::new();
        for (prefix, t) in routes {
            let i = match targets.iter().position(|x| *x == t) {
                Some(i) => i,
                None => {
                    targets.push(t);
                    targets.len() - 1
                }
            };
            let prefix = Ipv4Network::new(prefix.network(), prefix.prefix()).unwrap_or(prefix);
            list.push((prefix, i));
        }
        let lpm = Lpm::build(list.iter().map(|&(p, i)| (p, i as u32)))?;
        Ok(Fib {
            lpm,
            targets,
            routes: list,
        })
    }

    /// The route for `dst`; `hash` picks among ECMP next hops.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr, hash: u32) -> Decision {
        let Some(i) = self.lpm.lookup(dst) else {
            return Decision::NoRoute;
        };
        match self.targets.get(i as usize) {
            Some(Target::Connected(iface)) => Decision::Forward {
                iface: *iface,
                next_hop: dst,
            },
            Some(Target::Via(hops)) if !hops.is_empty() => {
                let h = hops[hash as usize % hops.len()];
                Decision::Forward {
                    iface: h.iface,
                    next_hop: h.gateway,
                }
            }
            Some(Target::Reject(k)) => Decision::Reject(*k),
            _ => Decision::NoRoute,
        }
    }

    /// Routes as built (prefix, target), for the admin endpoint and tests.
    pub fn routes(&self) -> impl Iterator<Item = (Ipv4Network, &Target)> {
        self.routes.iter().map(|&(p, i)| (p, &self.targets[i]))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.lpm.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.lpm.is_empty()
    }
}

impl PartialEq for Fib {
    fn eq(&self, other: &Self) -> bool {
        self.routes == other.routes && self.targets == other.targets
    }
}

impl Eq for Fib {}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_and_actions() {
        let gw = |g: &str| NextHop {
            iface: 2,
            gateway: g.parse().unwrap(),
        };
        let fib = Fib::build([
            (net("0.0.0.0/0"), Target::Via(vec![gw("192.0.2.1")])),
            (net("10.0.1.0/24"), Target::Connected(0)),
            (net("10.0.2.0/24"), Target::Connected(1)),
            (net("10.66.0.0/16"), Target::Reject(RejectKind::Blackhole)),
            (net("10.66.1.0/24"), Target::Connected(1)),
        ])
        .unwrap();
        let d = |a: &str| fib.lookup(a.parse().unwrap(), 0);
        assert_eq!(
            d("10.0.1.9"),
            Decision::Forward {
                iface: 0,
                next_hop: "10.0.1.9".parse().unwrap()
            }
        );
        assert_eq!(
            d("8.8.8.8"),
            Decision::Forward {
                iface: 2,
                next_hop: "192.0.2.1".parse().unwrap()
            }
        );
        assert_eq!(d("10.66.7.7"), Decision::Reject(RejectKind::Blackhole));
        assert!(matches!(d("10.66.1.7"), Decision::Forward { iface: 1, .. }));
        let empty = Fib::build([]).unwrap();
        assert_eq!(
            empty.lookup("1.2.3.4".parse().unwrap(), 7),
            Decision::NoRoute
        );
    }

    #[test]
    fn ecmp_is_stable_per_hash_and_uses_every_hop() {
        let hops: Vec<NextHop> = (1..=3)
            .map(|i| NextHop {
                iface: 0,
                gateway: Ipv4Addr::new(10, 0, 0, i),
            })
            .collect();
        let fib = Fib::build([(net("0.0.0.0/0"), Target::Via(hops))]).unwrap();
        let dst = "203.0.113.9".parse().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for h in 0..64u32 {
            let a = fib.lookup(dst, h);
            assert_eq!(a, fib.lookup(dst, h), "same hash, same hop");
            if let Decision::Forward { next_hop, .. } = a {
                seen.insert(next_hop);
            }
        }
        assert_eq!(seen.len(), 3);
    }
}
