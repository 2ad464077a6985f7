//! The config sections every routed function shares: `bridges`, `interfaces`, `routes`,
//! `nat`, `arp`, `icmp` (with the datapath's `underlay` and `ports`). Raw serde structs as
//! written, and [`compile_sections`] into typed values, reporting every problem at once
//! with its path.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::arp::ArpConfig;
use crate::bridge::{DEFAULT_MAX_MACS, DomainConfig};
use crate::daemon::ConfigError;
use crate::datapath::config::DatapathConfig;
use crate::datapath::config::{self as dpc, RawPort, RawUnderlay};
use crate::fib::{Fib, NextHop, RejectKind, Target};
use crate::l3::{Attach, Interface, L3Config, derive_mac};
use crate::nat::{
    Endpoint, FiveTuple, FloatingIp, Kind, NatConfig, Pool, Proto, Session, SnatRule, Timeouts,
};
use crate::parse_mac;
use std::sync::Arc;

/// One routed interface as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// Name (the `interface` metric label).
    pub name: String,
    /// The port it sits on (a port that is in no bridge domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The bridge domain it routes for (IRB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Its MAC; default: stable, derived from the VTEP address and the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Addresses with prefix length, `10.0.1.1/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Largest IPv4 packet sent; default the port's MTU (IRB: the smallest of its ports').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// One static route as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Destination prefix, `0.0.0.0/0`.
    pub prefix: String,
    /// Gateways on connected subnets; two or more is ECMP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Ipv4Addr>,
    /// Instead of `via`: `blackhole`, `unreachable` or `prohibit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// A NAT pool as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Name (the `pool` metric label).
    pub name: String,
    /// External addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// Port range `low-high` (default `1024-65535`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
}

/// A masquerade rule as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMasquerade {
    /// Source prefixes translated.
    pub sources: Vec<String>,
    /// Egress interface the rule applies on.
    pub interface: String,
    /// Pool name; default: the interface's first address, ports 1024-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Tenant the sessions count against (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A floating address as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFloating {
    /// The address outside.
    pub external: Ipv4Addr,
    /// The tenant host's address.
    pub internal: Ipv4Addr,
    /// The interface toward the outside.
    pub interface: String,
    /// Tenant (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A port forward as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The external address.
    pub address: Ipv4Addr,
    /// The external port.
    pub port: u16,
    /// The internal host.
    pub to: Ipv4Addr,
    /// The internal port (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    /// Tenant (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// NAT session timeouts in seconds as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Established TCP (default 7440).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<u64>,
    /// TCP handshake and close (default 240).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_transitory: Option<u64>,
    /// TCP after both FINs or a RST (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_closed: Option<u64>,
    /// UDP (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<u64>,
    /// ICMP queries (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<u64>,
}

/// `nat:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNat {
    /// Address pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<RawPool>,
    /// Source NAT rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masquerade: Vec<RawMasquerade>,
    /// 1:1 floating addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floating: Vec<RawFloating>,
    /// Destination NAT port forwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<RawForward>,
    /// Most sessions (default 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<usize>,
    /// Most sessions of one tenant (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_tenant: Option<usize>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RawTimeouts>,
}

/// `arp:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArp {
    /// Most entries (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// Seconds an entry lives unconfirmed (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<u64>,
    /// Packets held for unresolved addresses in all (default 256; read at start only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_held: Option<usize>,
    /// Packets held per unresolved address (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_held_per_address: Option<usize>,
}

/// `icmp:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIcmp {
    /// ICMP errors per second (default 100; 0 sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Burst (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// One masquerade rule, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// Source prefixes.
    pub sources: Vec<Ipv4Network>,
    /// Egress interface.
    pub iface: usize,
    /// The rule (pool).
    pub rule: SnatRule,
    /// The pool's name (metric label).
    pub pool_name: String,
    /// Tenant id.
    pub tenant: u32,
}

/// One floating address, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floating {
    /// The rule.
    pub rule: SnatRule,
    /// The address pair.
    pub ip: FloatingIp,
    /// The interface toward the outside.
    pub iface: usize,
    /// Tenant id.
    pub tenant: u32,
}

/// One port forward, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// TCP or UDP.
    pub proto: Proto,
    /// External address and port.
    pub public: Endpoint,
    /// Internal address and port.
    pub to: Endpoint,
    /// Tenant id.
    pub tenant: u32,
}

/// The typed NAT rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatSettings {
    /// Table caps and timeouts.
    pub table: NatConfig,
    /// Masquerade rules in order.
    pub masquerade: Vec<Masquerade>,
    /// Floating addresses.
    pub floating: Vec<Floating>,
    /// Port forwards.
    pub forwards: Vec<Forward>,
    /// Tenant names by id.
    pub tenants: Vec<String>,
    /// Every external address (pools, floating, forwards).
    pub externals: Vec<Ipv4Addr>,
}

impl NatSettings {
    /// Whether any rule exists.
    pub fn is_active(&self) -> bool {
        !self.masquerade.is_empty() || !self.floating.is_empty() || !self.forwards.is_empty()
    }

    /// Whether `a` is an external NAT address.
    pub fn is_external(&self, a: Ipv4Addr) -> bool {
        self.externals.contains(&a)
    }

    /// The destination NAT target of a new inbound flow: a floating address (all
    /// protocols, ports kept) or a port forward.
    pub fn inbound(&self, key: &FiveTuple) -> Option<(Endpoint, u32)> {
        if let Some(f) = self.floating.iter().find(|f| f.ip.external == key.dst.addr) {
            return Some((Endpoint::new(f.ip.internal, key.dst.port), f.tenant));
        }
        self.forwards
            .iter()
            .find(|f| f.proto == key.proto && f.public == key.dst)
            .map(|f| (f.to, f.tenant))
    }

    /// The source NAT rule for a new flow from `src` leaving by `iface`: the host's
    /// floating address first, else the first matching masquerade rule.
    pub fn outbound(&self, src: Ipv4Addr, iface: usize) -> Option<(&SnatRule, u32)> {
        if let Some(f) = self
            .floating
            .iter()
            .find(|f| f.ip.internal == src && f.iface == iface)
        {
            return Some((&f.rule, f.tenant));
        }
        self.masquerade
            .iter()
            .find(|m| m.iface == iface && m.sources.iter().any(|n| n.contains(src)))
            .map(|m| (&m.rule, m.tenant))
    }

    /// The source rule for a hairpinned flow from an internal host, whatever the
    /// interface: its floating address, else a masquerade rule covering it.
    pub fn hairpin(&self, src: Ipv4Addr) -> Option<(&SnatRule, u32)> {
        if let Some(f) = self.floating.iter().find(|f| f.ip.internal == src) {
            return Some((&f.rule, f.tenant));
        }
        self.masquerade
            .iter()
            .find(|m| m.sources.iter().any(|n| n.contains(src)))
            .map(|m| (&m.rule, m.tenant))
    }

    /// Whether the rules still allow an existing session (after a reload).
    pub fn allows(&self, s: &Session) -> bool {
        let dst_ok = s.original.dst == s.translated.dst
            || self
                .inbound(&s.original)
                .is_some_and(|(to, _)| to == s.translated.dst);
        let src_ok = s.original.src.addr == s.translated.src.addr
            || self.floating.iter().any(|f| {
                f.ip.internal == s.original.src.addr && f.ip.external == s.translated.src.addr
            })
            || self.masquerade.iter().any(|m| {
                m.sources.iter().any(|n| n.contains(s.original.src.addr))
                    && matches!(&m.rule, SnatRule::Masquerade(p) if p.addrs.contains(&s.translated.src.addr))
            });
        let kind_ok = match s.kind {
            Kind::Snat | Kind::Floating | Kind::Dnat => true,
        };
        dst_ok && src_ok && kind_ok
    }

    /// Pools by name with their address sets, for the `vnf_nat_ports_in_use` gauge.
    pub fn pools(&self) -> Vec<(String, Pool)> {
        let mut out: Vec<(String, Pool)> = Vec::new();
        for m in &self.masquerade {
            if let SnatRule::Masquerade(p) = &m.rule
                && !out.iter().any(|(n, _)| *n == m.pool_name)
            {
                out.push((m.pool_name.clone(), p.clone()));
            }
        }
        out
    }
}

/// The typed routed config (before counter slots are given at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Interfaces, routes, ARP, ICMP.
    pub l3: L3Config,
    /// NAT rules.
    pub nat: NatSettings,
}

fn parse_net(s: &str) -> Result<Ipv4Network, String> {
    let n: Ipv4Network = s
        .parse()
        .map_err(|e| format!("`{s}` is not an IPv4 prefix like 10.0.1.0/24: {e}"))?;
    Ok(n)
}

fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let p = |x: &str| {
        x.trim()
            .parse::<u16>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("`{s}` is not a port range like 1024-65535"))
    };
    let (lo, hi) = (p(a)?, p(b)?);
    if lo > hi {
        return Err(format!("port range `{s}` is empty (low > high)"));
    }
    Ok(lo..=hi)
}

/// Everything `compile` needs from the rest of the config.
#[derive(Debug)]
pub struct Context<'a> {
    /// The compiled datapath (port MTUs), if it compiled.
    pub dp: Option<&'a DatapathConfig>,
    /// Port names in bridge domains: port -> bridge index.
    pub bridged: &'a BTreeMap<String, usize>,
    /// Bridge names -> (index, member port names).
    pub bridges: &'a BTreeMap<String, (usize, Vec<String>)>,
    /// The identity that derived MACs hash (the VTEP address).
    pub identity: String,
}

/// The raw routed sections.
#[derive(Debug)]
pub struct RawRouted<'a> {
    /// `interfaces`.
    pub interfaces: &'a [RawInterface],
    /// `routes`.
    pub routes: &'a [RawRoute],
    /// `nat`.
    pub nat: &'a RawNat,
    /// `arp`.
    pub arp: &'a RawArp,
    /// `icmp`.
    pub icmp: &'a RawIcmp,
}

/// Check and type the routed sections; problems go to `errors`.
pub fn compile(
    raw: &RawRouted<'_>,
    cx: &Context<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Routed> {
    let start = errors.len();
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut unattached = false;
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut attached: BTreeMap<Attach, usize> = BTreeMap::new();
    let mut subnets: Vec<(Ipv4Network, usize)> = Vec::new();
    for (i, r) in raw.interfaces.iter().enumerate() {
        let at = |f: &str| format!("interfaces[{i}]{f}");
        if r.name.is_empty() {
            err(at(".name"), "an interface needs a name".into());
        } else if let Some(first) = names.insert(r.name.as_str(), i) {
            err(
                at(".name"),
                format!(
                    "interface name `{}` is already used by interfaces[{first}]",
                    r.name
                ),
            );
        }
        let (attach, port_mtu) = match (&r.port, &r.bridge) {
            (Some(p), None) => {
                if let Some(b) = cx.bridged.get(p) {
                    err(
                        at(".port"),
                        format!(
                            "port `{p}` is in bridges[{b}]: route for the bridge domain with `bridge:` instead (IRB)"
                        ),
                    );
                    (None, None)
                } else {
                    match cx
                        .dp
                        .and_then(|d| d.port_id(p).map(|id| (id, d.ports[usize::from(id.0)].mtu)))
                    {
                        Some((id, mtu)) => (Some(Attach::Port(id)), Some(mtu)),
                        None if cx.dp.is_some() => {
                            err(at(".port"), format!("no port is named `{p}`"));
                            (None, None)
                        }
                        None => (None, None),
                    }
                }
            }
            (None, Some(b)) => match cx.bridges.get(b) {
                Some((idx, members)) => {
                    let mtu = cx.dp.and_then(|d| {
                        members
                            .iter()
                            .filter_map(|m| d.port_id(m).map(|id| d.ports[usize::from(id.0)].mtu))
                            .min()
                    });
                    (Some(Attach::Bridge(*idx)), mtu)
                }
                None => {
                    err(at(".bridge"), format!("no bridge domain is named `{b}`"));
                    (None, None)
                }
            },
            _ => {
                err(
                    at(""),
                    "an interface sits on exactly one of `port` or `bridge`".into(),
                );
                (None, None)
            }
        };
        if let Some(a) = attach
            && let Some(other) = attached.insert(a, i)
        {
            err(
                at(if r.port.is_some() { ".port" } else { ".bridge" }),
                format!(
                    "interfaces[{other}] is already on it: one interface per port or bridge domain"
                ),
            );
        }
        let mac = match &r.mac {
            Some(m) => match parse_mac(m) {
                Some(mac) if !crate::is_group_mac(&mac) && mac != [0; 6] => mac,
                Some(_) => {
                    err(at(".mac"), format!("`{m}` is not a unicast MAC address"));
                    [0; 6]
                }
                None => {
                    err(
                        at(".mac"),
                        format!("`{m}` is not a MAC address like 02:00:00:00:01:01"),
                    );
                    [0; 6]
                }
            },
            None => derive_mac(&cx.identity, &r.name),
        };
        if r.addresses.is_empty() {
            err(
                at(".addresses"),
                "an interface needs at least one address, like 10.0.1.1/24".into(),
            );
        }
        let mut addrs = Vec::new();
        for (j, a) in r.addresses.iter().enumerate() {
            let path = at(&format!(".addresses[{j}]"));
            match parse_net(a) {
                Ok(n) => {
                    if n.prefix() < 31 && (n.ip() == n.network() || n.ip() == n.broadcast()) {
                        err(
                            path,
                            format!(
                                "`{a}` is the subnet's network or broadcast address, not a host address"
                            ),
                        );
                        continue;
                    }
                    let net = Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n);
                    if let Some((_, other)) = subnets.iter().find(|(s, _)| s.overlaps(net)) {
                        err(
                            path,
                            format!("`{a}` overlaps a subnet of interfaces[{other}]"),
                        );
                        continue;
                    }
                    subnets.push((net, i));
                    addrs.push(n);
                }
                Err(e) => err(path, e),
            }
        }
        let mtu = r.mtu.or(port_mtu).unwrap_or(1500);
        if !(68..=9000).contains(&mtu) {
            err(at(".mtu"), format!("MTU {mtu}: use 68..=9000"));
        } else if let Some(pm) = port_mtu
            && mtu > pm
        {
            err(
                at(".mtu"),
                format!("MTU {mtu} is larger than its port's MTU {pm}"),
            );
        }
        // No attachment: an error was reported here, or the ports themselves did not
        // compile (reported before this function): nothing can be built on it.
        unattached |= attach.is_none();
        interfaces.push(Interface {
            name: r.name.clone(),
            attach: attach.unwrap_or(Attach::Bridge(usize::MAX)),
            mac,
            addrs,
            mtu,
            slot: 0,
        });
    }

    // Routes: connected first, then static ones (which may not repeat a prefix).
    let mut routes: Vec<(Ipv4Network, Target)> = subnets
        .iter()
        .map(|&(n, i)| (n, Target::Connected(i)))
        .collect();
    let mut seen: BTreeMap<(Ipv4Addr, u8), String> = subnets
        .iter()
        .map(|(n, i)| {
            (
                (n.network(), n.prefix()),
                format!("the connected subnet of interfaces[{i}]"),
            )
        })
        .collect();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}]{f}");
        let prefix = match parse_net(&r.prefix) {
            Ok(n) => Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n),
            Err(e) => {
                err(at(".prefix"), e);
                continue;
            }
        };
        if let Some(other) =
            seen.insert((prefix.network(), prefix.prefix()), format!("routes[{i}]"))
        {
            err(
                at(".prefix"),
                format!("prefix {prefix} is already routed by {other}"),
            );
            continue;
        }
        let target = match (&r.action, r.via.is_empty()) {
            (None, false) => {
                let mut hops = Vec::new();
                for (j, gw) in r.via.iter().enumerate() {
                    match subnets.iter().find(|(n, _)| n.contains(*gw)) {
                        Some(&(_, iface))
                            if !interfaces[iface].addrs.iter().any(|a| a.ip() == *gw) =>
                        {
                            hops.push(NextHop {
                                iface,
                                gateway: *gw,
                            });
                        }
                        Some(_) => err(
                            at(&format!(".via[{j}]")),
                            format!("{gw} is this router's own address"),
                        ),
                        None => err(
                            at(&format!(".via[{j}]")),
                            format!(
                                "gateway {gw} is on no interface's subnet: a next hop must be directly connected"
                            ),
                        ),
                    }
                }
                Target::Via(hops)
            }
            (Some(a), true) => match a.as_str() {
                "blackhole" => Target::Reject(RejectKind::Blackhole),
                "unreachable" => Target::Reject(RejectKind::Unreachable),
                "prohibit" => Target::Reject(RejectKind::Prohibit),
                other => {
                    err(
                        at(".action"),
                        format!("unknown action `{other}`: use blackhole, unreachable or prohibit"),
                    );
                    continue;
                }
            },
            _ => {
                err(
                    at(""),
                    "a route has exactly one of `via` (gateways) or `action`".into(),
                );
                continue;
            }
        };
        routes.push((prefix, target));
    }

    // NAT.
    let n = raw.nat;
    let mut tenants: Vec<String> = Vec::new();
    let mut tenant_id = |t: &Option<String>| -> u32 {
        let name = t.as_deref().unwrap_or("default");
        match tenants.iter().position(|x| x == name) {
            Some(i) => i as u32,
            None => {
                tenants.push(name.to_owned());
                (tenants.len() - 1) as u32
            }
        }
    };
    let iface_by_name = |name: &str| interfaces.iter().position(|i| i.name == name);
    let mut externals: Vec<Ipv4Addr> = Vec::new();
    let mut pools: BTreeMap<&str, Pool> = BTreeMap::new();
    for (i, p) in n.pools.iter().enumerate() {
        let at = |f: &str| format!("nat.pools[{i}]{f}");
        if p.name.is_empty() {
            err(at(".name"), "a pool needs a name".into());
        }
        if p.addresses.is_empty() {
            err(at(".addresses"), "a pool needs at least one address".into());
        }
        let ports = match p.ports.as_deref().map(parse_ports) {
            None => 1024..=65535,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                err(at(".ports"), e);
                1024..=65535
            }
        };
        externals.extend(p.addresses.iter().copied());
        if pools
            .insert(
                p.name.as_str(),
                Pool {
                    addrs: p.addresses.clone(),
                    ports,
                },
            )
            .is_some()
        {
            err(at(".name"), format!("pool name `{}` is used twice", p.name));
        }
    }
    let mut masquerade = Vec::new();
    for (i, m) in n.masquerade.iter().enumerate() {
        let at = |f: &str| format!("nat.masquerade[{i}]{f}");
        let mut sources = Vec::new();
        if m.sources.is_empty() {
            err(
                at(".sources"),
                "name the source prefixes to translate".into(),
            );
        }
        for (j, s) in m.sources.iter().enumerate() {
            match parse_net(s) {
                Ok(n) => sources.push(n),
                Err(e) => err(at(&format!(".sources[{j}]")), e),
            }
        }
        let Some(iface) = iface_by_name(&m.interface) else {
            err(
                at(".interface"),
                format!("no interface is named `{}`", m.interface),
            );
            continue;
        };
        let (pool, pool_name) = match &m.pool {
            Some(name) => match pools.get(name.as_str()) {
                Some(p) => (p.clone(), name.clone()),
                None => {
                    err(at(".pool"), format!("no pool is named `{name}`"));
                    continue;
                }
            },
            None => match interfaces[iface].addrs.first() {
                Some(a) => (Pool::new(vec![a.ip()]), m.interface.clone()),
                None => continue,
            },
        };
        masquerade.push(Masquerade {
            sources,
            iface,
            rule: SnatRule::Masquerade(pool),
            pool_name,
            tenant: tenant_id(&m.tenant),
        });
    }
    let mut floating: Vec<Floating> = Vec::new();
    for (i, f) in n.floating.iter().enumerate() {
        let at = |x: &str| format!("nat.floating[{i}]{x}");
        let Some(iface) = iface_by_name(&f.interface) else {
            err(
                at(".interface"),
                format!("no interface is named `{}`", f.interface),
            );
            continue;
        };
        if floating.iter().any(|o| o.ip.external == f.external)
            || pools.values().any(|p| p.addrs.contains(&f.external))
        {
            err(
                at(".external"),
                format!("{} is already a floating or pool address", f.external),
            );
            continue;
        }
        if floating.iter().any(|o| o.ip.internal == f.internal) {
            err(
                at(".internal"),
                format!("{} already has a floating address", f.internal),
            );
            continue;
        }
        let ip = FloatingIp {
            external: f.external,
            internal: f.internal,
        };
        externals.push(f.external);
        floating.push(Floating {
            rule: SnatRule::Floating(ip),
            ip,
            iface,
            tenant: tenant_id(&f.tenant),
        });
    }
    let mut forwards: Vec<Forward> = Vec::new();
    for (i, f) in n.port_forwards.iter().enumerate() {
        let at = |x: &str| format!("nat.port_forwards[{i}]{x}");
        let proto = match f.protocol.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                err(
                    at(".protocol"),
                    format!("unknown protocol `{other}`: use tcp or udp"),
                );
                continue;
            }
        };
        if f.port == 0 || f.to_port == Some(0) {
            err(at(".port"), "ports are 1..=65535".into());
            continue;
        }
        let public = Endpoint::new(f.address, f.port);
        if forwards
            .iter()
            .any(|o| o.proto == proto && o.public == public)
        {
            err(
                at(".port"),
                format!("{}:{} is already forwarded", f.address, f.port),
            );
            continue;
        }
        if floating.iter().any(|o| o.ip.external == f.address) {
            err(
                at(".address"),
                format!(
                    "{} is a floating address: it forwards every port already",
                    f.address
                ),
            );
            continue;
        }
        if !externals.contains(&f.address) {
            externals.push(f.address);
        }
        forwards.push(Forward {
            proto,
            public,
            to: Endpoint::new(f.to, f.to_port.unwrap_or(f.port)),
            tenant: tenant_id(&f.tenant),
        });
    }
    let mut table = NatConfig::default();
    if let Some(m) = n.max_sessions {
        if !(1..=1 << 24).contains(&m) {
            err("nat.max_sessions".into(), format!("{m}: use 1..=16777216"));
        }
        table.max_sessions = m;
    }
    if let Some(m) = n.max_sessions_per_tenant {
        if m == 0 {
            err(
                "nat.max_sessions_per_tenant".into(),
                "must be at least 1".into(),
            );
        }
        table.max_sessions_per_tenant = m;
    }
    if let Some(t) = &n.timeouts {
        let d = Timeouts::default();
        let mut secs = |v: Option<u64>, name: &str, def: Duration| match v {
            Some(0) => {
                err(
                    format!("nat.timeouts.{name}"),
                    "a timeout is at least 1 second".into(),
                );
                def
            }
            Some(s) => Duration::from_secs(s),
            None => def,
        };
        table.timeouts = Timeouts {
            tcp_established: secs(t.tcp_established, "tcp_established", d.tcp_established),
            tcp_transitory: secs(t.tcp_transitory, "tcp_transitory", d.tcp_transitory),
            tcp_closed: secs(t.tcp_closed, "tcp_closed", d.tcp_closed),
            udp: secs(t.udp, "udp", d.udp),
            icmp: secs(t.icmp, "icmp", d.icmp),
        };
    }
    if !masquerade.is_empty() || !floating.is_empty() || !forwards.is_empty() {
        for a in &externals {
            if interfaces
                .iter()
                .any(|i| i.addrs.iter().any(|n| n.ip() == *a))
                && !masquerade
                    .iter()
                    .any(|m| matches!(&m.rule, SnatRule::Masquerade(p) if p.addrs.contains(a)))
            {
                err(
                    "nat".into(),
                    format!("{a} is an interface address: only a masquerade pool may use one"),
                );
            }
        }
    }
    // Proxy ARP: external addresses inside an interface's subnet are answered there.
    let mut proxy_arp = Vec::new();
    for a in &externals {
        for (i, ifc) in interfaces.iter().enumerate() {
            if ifc.addrs.iter().any(|n| n.contains(*a) && n.ip() != *a)
                && !proxy_arp.contains(&(i, *a))
            {
                proxy_arp.push((i, *a));
            }
        }
    }

    // ARP and ICMP.
    let mut arp = ArpConfig::default();
    if let Some(v) = raw.arp.max_entries {
        if !(1..=1 << 20).contains(&v) {
            err("arp.max_entries".into(), format!("{v}: use 1..=1048576"));
        }
        arp.max_entries = v;
    }
    if let Some(v) = raw.arp.reachable {
        if v == 0 {
            err("arp.reachable".into(), "at least 1 second".into());
        }
        arp.reachable = Duration::from_secs(v);
    }
    if let Some(v) = raw.arp.max_held {
        if !(1..=4096).contains(&v) {
            err(
                "arp.max_held".into(),
                format!("{v}: use 1..=4096 (each held packet takes a 9 KiB buffer)"),
            );
        }
        arp.max_held = v;
    }
    if let Some(v) = raw.arp.max_held_per_address {
        if !(1..=64).contains(&v) {
            err(
                "arp.max_held_per_address".into(),
                format!("{v}: use 1..=64"),
            );
        }
        arp.max_held_per_address = v;
    }
    let rate = raw.icmp.rate.unwrap_or(100);
    let burst = raw.icmp.burst.unwrap_or(50);
    if burst == 0 {
        err("icmp.burst".into(), "at least 1".into());
    }
    let icmp_rate = if rate == 0 { (0, 0) } else { (rate, burst) };

    if errors.len() > start || unattached {
        return None;
    }
    let fib = match Fib::build(routes) {
        Ok(f) => f,
        Err(e) => {
            errors.push(ConfigError {
                path: "routes".into(),
                message: e.to_string(),
            });
            return None;
        }
    };
    Some(Routed {
        l3: L3Config::new(interfaces, fib, arp, icmp_rate, proxy_arp),
        nat: NatSettings {
            table,
            masquerade,
            floating,
            forwards,
            tenants,
            externals,
        },
    })
}

/// One bridge domain as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// Name (the `bridge` metric label).
    pub name: String,
    /// Names of member ports (two or more).
    pub ports: Vec<String>,
    /// The most learned MACs (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<usize>,
    /// Seconds a learned MAC lives without traffic (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing: Option<u64>,
    /// Learn source MACs (default true); off floods every frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<bool>,
}

/// The typed sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sections {
    /// Ports and underlay.
    pub datapath: Arc<DatapathConfig>,
    /// Bridge domains over the ports.
    pub bridges: Vec<DomainConfig>,
    /// Interfaces, routes, NAT.
    pub routed: Routed,
}

/// Every section as written.
#[derive(Debug, Clone, Copy)]
pub struct RawSections<'a> {
    /// `underlay`.
    pub underlay: &'a RawUnderlay,
    /// `ports`.
    pub ports: &'a [RawPort],
    /// `bridges`.
    pub bridges: &'a [RawBridge],
    /// `interfaces`.
    pub interfaces: &'a [RawInterface],
    /// `routes`.
    pub routes: &'a [RawRoute],
    /// `nat`.
    pub nat: &'a RawNat,
    /// `arp`.
    pub arp: &'a RawArp,
    /// `icmp`.
    pub icmp: &'a RawIcmp,
    /// `workers`.
    pub workers: usize,
    /// `batch_size`.
    pub batch_size: usize,
}

/// Check and type the sections; every problem at once. `identity` seeds derived MACs when
/// there is no underlay address.
pub fn compile_sections(
    raw: &RawSections<'_>,
    identity: &str,
) -> Result<Sections, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let dp = match dpc::compile(raw.underlay, raw.ports, raw.workers, raw.batch_size) {
        Ok(dp) => Some(dp),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let known: BTreeMap<&str, usize> = raw
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut member_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut names = BTreeMap::new();
    let mut bridges = Vec::new();
    for (i, b) in raw.bridges.iter().enumerate() {
        let mut e = |f: String, m: String| {
            errors.push(ConfigError {
                path: format!("bridges[{i}]{f}"),
                message: m,
            })
        };
        if b.name.is_empty() {
            e(".name".into(), "a bridge domain needs a name".into());
        } else if let Some(first) = names.insert(b.name.as_str(), i) {
            e(
                ".name".into(),
                format!(
                    "bridge name `{}` is already used by bridges[{first}]",
                    b.name
                ),
            );
        }
        if b.ports.len() < 2 {
            e(
                ".ports".into(),
                "a bridge domain joins two or more ports".into(),
            );
        }
        let mut ids = Vec::new();
        for (j, p) in b.ports.iter().enumerate() {
            if !known.contains_key(p.as_str()) {
                let names: Vec<&str> = known.keys().copied().collect();
                e(
                    format!(".ports[{j}]"),
                    format!("no port is named `{p}` (ports: {})", names.join(", ")),
                );
                continue;
            }
            if let Some(other) = member_of.insert(p.as_str(), i) {
                e(
                    format!(".ports[{j}]"),
                    format!(
                        "port `{p}` is already in bridges[{other}]: a port belongs to one bridge domain"
                    ),
                );
                continue;
            }
            if let Some(id) = dp.as_ref().and_then(|d| d.port_id(p)) {
                ids.push(id);
            }
        }
        let max_macs = b.max_macs.unwrap_or(DEFAULT_MAX_MACS);
        if !(1..=1 << 20).contains(&max_macs) {
            e(
                ".max_macs".into(),
                format!("{max_macs} MACs: use 1..=1048576"),
            );
        }
        let ageing = b
            .ageing
            .map_or(Duration::from_secs(300), Duration::from_secs);
        if ageing.is_zero() {
            e(".ageing".into(), "ageing must be at least 1 second".into());
        }
        bridges.push(DomainConfig {
            name: b.name.clone(),
            ports: ids,
            max_macs,
            ageing,
            learning: b.learning.unwrap_or(true),
            slot: 0,
        });
    }
    let bridged: BTreeMap<String, usize> = member_of
        .iter()
        .map(|(p, b)| ((*p).to_owned(), *b))
        .collect();
    let bridge_names: BTreeMap<String, (usize, Vec<String>)> = raw
        .bridges
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.clone(), (i, b.ports.clone())))
        .collect();
    let cx = Context {
        dp: dp.as_ref(),
        bridged: &bridged,
        bridges: &bridge_names,
        identity: raw
            .underlay
            .address
            .map_or_else(|| identity.to_owned(), |a| a.to_string()),
    };
    let routed = compile(
        &RawRouted {
            interfaces: raw.interfaces,
            routes: raw.routes,
            nat: raw.nat,
            arp: raw.arp,
            icmp: raw.icmp,
        },
        &cx,
        &mut errors,
    );
    match (dp, routed) {
        (Some(dp), Some(routed)) if errors.is_empty() => Ok(Sections {
            datapath: Arc::new(dp),
            bridges,
            routed,
        }),
        _ => Err(errors),
    }
}
