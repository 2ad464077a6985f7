//! The policy part of the firewall's config: `address_sets`, `zones` and `policies`. Raw
//! serde structs as written, and [`compile`] into a [`Policy`], reporting every problem at
//! once with its path.
//!
//! ```yaml
//! address_sets:
//!   admins: [192.0.2.0/28, 198.51.100.7/32]
//! zones:
//!   - {name: outside, interfaces: [ext]}
//!   - {name: web, interfaces: [web]}
//! policies:
//!   - from: outside
//!     to: web
//!     default: drop            # accept | drop | reject; default drop
//!     rules:
//!       - {name: http, protocol: tcp, dst_ports: [80, 443], action: accept}
//!       - {name: ssh, protocol: tcp, dst_ports: ["22"], src: [admins], action: accept, log: true}
//!       - {name: ping, protocol: icmp, icmp_type: 8, action: accept}
//!       - {name: no-telnet, protocol: tcp, dst_ports: [23], action: reject}
//!   - {from: web, to: outside, default: accept}
//! ```
//!
//! A zone pair without a policy drops everything (the implicit [`RuleId::NO_POLICY`]),
//! including traffic between two interfaces of one zone: write a policy `from: z, to: z`
//! to allow it.
//!
//! [`RuleId::NO_POLICY`]: crate::classifier::RuleId::NO_POLICY

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use overlay_io::daemon::ConfigError;

use crate::classifier::{
    Action, CtState, MAX_ZONES, Policy, PolicyError, Rule, StateSet, Zone, ZoneId, ZonePolicy,
    proto,
};

/// A number or a string as written: `80` or `"1024-65535"`, `6` or `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A number; signed, so that `-1` is reported as out of range at its path rather than
    /// as a value that fits no variant.
    Number(i64),
    /// Anything else.
    Text(String),
}

/// The policy sections as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Named lists of prefixes that rules may use in `src` and `dst`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub address_sets: BTreeMap<String, Vec<String>>,
    /// Zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<RawZone>,
    /// Zone-pair policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<RawZonePolicy>,
}

/// A zone as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    /// Name (the `from` and `to` labels).
    pub name: String,
    /// Interface names; an interface is in at most one zone.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

/// A zone-pair policy as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZonePolicy {
    /// The zone packets come in from.
    pub from: String,
    /// The zone they go out to.
    pub to: String,
    /// `accept`, `drop` or `reject` for packets no rule matches (default `drop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Whether to log packets no rule matches.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_default: bool,
    /// Rules, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RawRule>,
}

/// A rule as written. A condition left out matches any packet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique in its policy; default `<from>-<to>-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Source prefixes or address-set names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Vec<String>>,
    /// Destination prefixes or address-set names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Vec<String>>,
    /// `tcp`, `udp`, `icmp`, `any` or a protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Scalar>,
    /// Ports or `low-high` ranges (TCP and UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ports: Option<Vec<Scalar>>,
    /// Ports or `low-high` ranges (TCP and UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ports: Option<Vec<Scalar>>,
    /// ICMP type (ICMP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    /// ICMP code (ICMP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<i64>,
    /// Conntrack states: `new`, `established`, `related`, `invalid` (default: all but
    /// `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<String>>,
    /// `accept`, `drop` or `reject`.
    pub action: String,
    /// Whether to log matching packets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
}

/// Check and type the policy sections into a [`Policy`]; problems go to `errors`, and
/// nothing is returned if there were any.
pub fn compile(raw: &RawPolicy, errors: &mut Vec<ConfigError>) -> Option<Policy> {
    let start = errors.len();
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });

    let mut sets: BTreeMap<&str, Vec<Ipv4Network>> = BTreeMap::new();
    for (name, entries) in &raw.address_sets {
        let at = format!("address_sets.{name}");
        if name.is_empty() || looks_like_address(name) {
            err(
                at.clone(),
                format!(
                    "`{name}` cannot name an address set: a name is not empty and is not an address"
                ),
            );
        }
        let mut nets = Vec::new();
        for (j, entry) in entries.iter().enumerate() {
            match parse_prefix(entry) {
                Ok(n) => nets.push(n),
                Err(e) => err(format!("{at}[{j}]"), e),
            }
        }
        sets.insert(name, nets);
    }

    if raw.zones.len() > MAX_ZONES {
        err(
            "zones".into(),
            format!("{} zones: at most {MAX_ZONES}", raw.zones.len()),
        );
    }
    let mut zone_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, z) in raw.zones.iter().enumerate() {
        if z.name.is_empty() {
            err(format!("zones[{i}].name"), "a zone needs a name".into());
        } else if let Some(first) = zone_ids.get(z.name.as_str()) {
            err(
                format!("zones[{i}].name"),
                format!("zone name `{}` is already used by zones[{first}]", z.name),
            );
        } else {
            zone_ids.insert(&z.name, i);
        }
        for (j, iface) in z.interfaces.iter().enumerate() {
            if let Some(&first) = owner.get(iface.as_str()) {
                let message = if first == i {
                    format!("interface `{iface}` is listed twice")
                } else {
                    format!(
                        "interface `{iface}` is already in zone `{}` (zones[{first}]): an interface is in one zone",
                        raw.zones[first].name
                    )
                };
                err(format!("zones[{i}].interfaces[{j}]"), message);
            } else {
                owner.insert(iface, i);
            }
        }
    }

    let mut policies: Vec<ZonePolicy> = Vec::new();
    let mut pairs: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (i, p) in raw.policies.iter().enumerate() {
        let at = |f: &str| format!("policies[{i}]{f}");
        let mut zone = |name: &str, field: &str| {
            let id = zone_ids.get(name).copied();
            if id.is_none() {
                err(at(field), format!("no zone is named `{name}`"));
            }
            id
        };
        let (from, to) = (zone(&p.from, ".from"), zone(&p.to, ".to"));
        if let (Some(from), Some(to)) = (from, to)
            && let Some(first) = pairs.insert((from, to), i)
        {
            err(
                at(""),
                format!(
                    "zone pair {} -> {} already has a policy: policies[{first}]",
                    p.from, p.to
                ),
            );
        }
        let default = match p.default.as_deref() {
            None => Action::Drop,
            Some(a) => Action::from_name(a).unwrap_or_else(|| {
                err(
                    at(".default"),
                    format!("unknown action `{a}`: use accept, drop or reject"),
                );
                Action::Drop
            }),
        };
        let mut rules: Vec<Rule> = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (j, r) in p.rules.iter().enumerate() {
            let at = |f: &str| format!("policies[{i}].rules[{j}]{f}");
            let name = match &r.name {
                Some(n) if n.is_empty() => {
                    err(at(".name"), "a rule name is not empty".into());
                    continue;
                }
                Some(n) => n.clone(),
                None => format!("{}-{}-{j}", p.from, p.to),
            };
            if let Some(first) = names.get(&name) {
                let (path, message) = if r.name.is_some() {
                    (
                        at(".name"),
                        format!("rule name `{name}` is already used by rules[{first}]"),
                    )
                } else {
                    (
                        at(""),
                        format!(
                            "this rule's default name `{name}` is already used by rules[{first}]: give it a name"
                        ),
                    )
                };
                err(path, message);
            } else {
                names.insert(name.clone(), j);
            }
            if let Some(rule) = compile_rule(r, name, &sets, &at, &mut err) {
                rules.push(rule);
            }
        }
        if let (Some(from), Some(to)) = (from, to) {
            policies.push(ZonePolicy {
                from: ZoneId(from as u16),
                to: ZoneId(to as u16),
                rules,
                default,
                log_default: p.log_default,
            });
        }
    }

    if errors.len() > start {
        return None;
    }
    let zones = raw
        .zones
        .iter()
        .map(|z| Zone {
            name: z.name.clone(),
            interfaces: z.interfaces.clone(),
        })
        .collect();
    match Policy::build(zones, policies) {
        Ok(policy) => Some(policy),
        Err(e) => {
            // Everything but the classifier's size was checked above, with paths; every
            // policy compiled into `policies` in order, so the index is the config's.
            let path = match &e {
                PolicyError::Classifier { policy, .. } => format!("policies[{policy}].rules"),
                _ => String::new(),
            };
            errors.push(ConfigError::new(path, e));
            None
        }
    }
}

/// One rule; problems go to `err` with paths from `at`.
fn compile_rule(
    r: &RawRule,
    name: String,
    sets: &BTreeMap<&str, Vec<Ipv4Network>>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) -> Option<Rule> {
    let mut ok = true;
    let mut fail = |path: String, message: String| {
        ok = false;
        err(path, message);
    };
    let mut addrs = |list: &Option<Vec<String>>, field: &str| {
        let list = list.as_ref()?;
        if list.is_empty() {
            fail(
                at(field),
                format!(
                    "an empty list matches nothing: leave `{field}` out to match any address",
                    field = &field[1..]
                ),
            );
        }
        let mut nets = Vec::new();
        for (k, entry) in list.iter().enumerate() {
            let path = at(&format!("{field}[{k}]"));
            if looks_like_address(entry) {
                match parse_prefix(entry) {
                    Ok(n) => nets.push(n),
                    Err(e) => fail(path, e),
                }
            } else {
                match sets.get(entry.as_str()) {
                    Some(set) => nets.extend_from_slice(set),
                    None => fail(path, format!("no address set is named `{entry}`")),
                }
            }
        }
        Some(nets)
    };
    let src = addrs(&r.src, ".src");
    let dst = addrs(&r.dst, ".dst");

    // `None`: the protocol did not parse, so checks that depend on it are skipped.
    let protocol: Option<Option<u8>> = match &r.protocol {
        None => Some(None),
        Some(Scalar::Number(n)) => match u8::try_from(*n) {
            Ok(p) => Some(Some(p)),
            Err(_) => {
                fail(
                    at(".protocol"),
                    format!("protocol {n} is out of range (0..=255)"),
                );
                None
            }
        },
        Some(Scalar::Text(t)) => match t.as_str() {
            "any" => Some(None),
            "tcp" => Some(Some(proto::TCP)),
            "udp" => Some(Some(proto::UDP)),
            "icmp" => Some(Some(proto::ICMP)),
            other => match other.parse::<u8>() {
                Ok(p) => Some(Some(p)),
                Err(_) => {
                    fail(
                        at(".protocol"),
                        format!(
                            "unknown protocol `{other}`: use tcp, udp, icmp, any or a number 0..=255"
                        ),
                    );
                    None
                }
            },
        },
    };
    let protocol_name = |p: Option<u8>| match p {
        None => "any".to_owned(),
        Some(proto::TCP) => "tcp".to_owned(),
        Some(proto::UDP) => "udp".to_owned(),
        Some(proto::ICMP) => "icmp".to_owned(),
        Some(n) => n.to_string(),
    };

    let mut ports = |list: &Option<Vec<Scalar>>, field: &str| {
        let list = list.as_ref()?;
        if let Some(p) = protocol
            && !matches!(p, Some(proto::TCP | proto::UDP))
        {
            fail(
                at(field),
                format!(
                    "ports need protocol tcp or udp; this rule's protocol is {}",
                    protocol_name(p)
                ),
            );
        }
        if list.is_empty() {
            fail(
                at(field),
                format!(
                    "an empty list matches nothing: leave `{}` out to match any port",
                    &field[1..]
                ),
            );
        }
        let mut ranges = Vec::new();
        for (k, entry) in list.iter().enumerate() {
            match parse_port_range(entry) {
                Ok(r) => ranges.push(r),
                Err(e) => fail(at(&format!("{field}[{k}]")), e),
            }
        }
        Some(ranges)
    };
    let src_ports = ports(&r.src_ports, ".src_ports");
    let dst_ports = ports(&r.dst_ports, ".dst_ports");

    let mut icmp = |value: Option<i64>, field: &str| {
        let v = value?;
        if let Some(p) = protocol
            && p != Some(proto::ICMP)
        {
            fail(
                at(field),
                format!(
                    "`{}` needs protocol icmp; this rule's protocol is {}",
                    &field[1..],
                    protocol_name(p)
                ),
            );
        }
        match u8::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                fail(at(field), format!("{v} is out of range (0..=255)"));
                None
            }
        }
    };
    let icmp_type = icmp(r.icmp_type, ".icmp_type");
    let icmp_code = icmp(r.icmp_code, ".icmp_code");

    let states = match &r.state {
        // Invalid packets only match a rule that names the state: a rule that leaves
        // `state` out means every valid packet (new; established and related ones never
        // reach the rules, connection tracking passes them first).
        None => StateSet::VALID,
        Some(list) => {
            if list.is_empty() {
                fail(
                    at(".state"),
                    "an empty list matches nothing: leave `state` out to match every valid packet"
                        .into(),
                );
            }
            let mut states = StateSet::NONE;
            for (k, s) in list.iter().enumerate() {
                match CtState::from_name(s) {
                    Some(s) => states = states.with(s),
                    None => fail(
                        at(&format!(".state[{k}]")),
                        format!("unknown state `{s}`: use new, established, related or invalid"),
                    ),
                }
            }
            states
        }
    };

    let action = Action::from_name(&r.action).unwrap_or_else(|| {
        fail(
            at(".action"),
            format!("unknown action `{}`: use accept, drop or reject", r.action),
        );
        Action::Drop
    });

    ok.then(|| Rule {
        name,
        src,
        dst,
        protocol: protocol.flatten(),
        src_ports,
        dst_ports,
        icmp_type,
        icmp_code,
        states,
        action,
        log: r.log,
    })
}

/// Whether `s` is meant as an address or prefix rather than an address-set name.
fn looks_like_address(s: &str) -> bool {
    s.contains('/') || s.parse::<Ipv4Addr>().is_ok() || s.contains(':')
}

/// A prefix with host bits cleared (`10.1.2.3/24` is `10.1.2.0/24`); an address alone is
/// its /32.
fn parse_prefix(s: &str) -> Result<Ipv4Network, String> {
    let n: Ipv4Network = s
        .parse()
        .map_err(|e| format!("`{s}` is not an IPv4 prefix like 10.0.1.0/24: {e}"))?;
    Ok(Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n))
}

/// `80`, `"80"` or `"1024-65535"`; port 0 is allowed, as packets can carry it.
fn parse_port_range(v: &Scalar) -> Result<RangeInclusive<u16>, String> {
    let s = match v {
        Scalar::Number(n) => {
            return u16::try_from(*n)
                .map(|p| p..=p)
                .map_err(|_| format!("port {n} is out of range (0..=65535)"));
        }
        Scalar::Text(s) => s,
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let port = |x: &str| {
        let x = x.trim();
        match x.parse::<u64>() {
            Ok(n) => u16::try_from(n).map_err(|_| format!("port {n} is out of range (0..=65535)")),
            Err(_) => Err(format!("`{s}` is not a port or a range like 1024-65535")),
        }
    };
    let (lo, hi) = (port(a)?, port(b)?);
    if lo > hi {
        return Err(format!("port range `{s}` is empty (low > high)"));
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{Packet, RuleId, RuleKind, Verdict};

    const EXAMPLE: &str = r#"
address_sets:
  admins: [192.0.2.0/28, 198.51.100.7/32]
zones:
  - {name: outside, interfaces: [ext]}
  - {name: web, interfaces: [web]}
policies:
  - from: outside
    to: web
    default: drop            # accept | drop | reject
    rules:
      - {name: http, protocol: tcp, dst_ports: [80, 443], action: accept}
      - {name: ssh, protocol: tcp, dst_ports: ["22"], src: [admins], action: accept, log: true}
      - {name: ping, protocol: icmp, icmp_type: 8, action: accept}
      - {name: no-telnet, protocol: tcp, dst_ports: [23], action: reject}
  - {from: web, to: outside, default: accept}
"#;

    fn parse(yaml: &str) -> RawPolicy {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    fn compiled(yaml: &str) -> Policy {
        let mut errors = Vec::new();
        let policy = compile(&parse(yaml), &mut errors);
        assert_eq!(errors, []);
        policy.unwrap()
    }

    /// Every error as `path: message`.
    fn errors(yaml: &str) -> Vec<String> {
        let mut errors = Vec::new();
        assert!(compile(&parse(yaml), &mut errors).is_none());
        errors.iter().map(ToString::to_string).collect()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn example_compiles_and_classifies() {
        let policy = compiled(EXAMPLE);
        let outside = policy.zone_of_interface("ext").unwrap();
        let web = policy.zone_of_interface("web").unwrap();
        let server = ip("203.0.113.10");
        let name = |v: Verdict| {
            let r = &policy.rules()[v.rule.index()];
            (r.name.as_str(), v.action, v.log)
        };
        let new = CtState::New;
        let cases = [
            (
                Packet::tcp(ip("8.8.8.8"), 5000, server, 443, new),
                ("http", Action::Accept, false),
            ),
            (
                Packet::tcp(ip("192.0.2.15"), 5000, server, 22, new),
                ("ssh", Action::Accept, true),
            ),
            (
                Packet::tcp(ip("198.51.100.7"), 5000, server, 22, new),
                ("ssh", Action::Accept, true),
            ),
            (
                Packet::tcp(ip("192.0.2.16"), 5000, server, 22, new),
                ("default", Action::Drop, false),
            ),
            (
                Packet::icmp(ip("8.8.8.8"), server, 8, 0, new),
                ("ping", Action::Accept, false),
            ),
            (
                Packet::icmp(ip("8.8.8.8"), server, 0, 0, new),
                ("default", Action::Drop, false),
            ),
            (
                Packet::tcp(ip("8.8.8.8"), 5000, server, 23, new),
                ("no-telnet", Action::Reject, false),
            ),
            (
                Packet::udp(ip("8.8.8.8"), 5000, server, 443, new),
                ("default", Action::Drop, false),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(name(policy.classify(outside, web, &p)), want, "{p:?}");
        }
        let back = Packet::udp(server, 53, ip("8.8.8.8"), 53, new);
        let v = policy.classify(web, outside, &back);
        assert_eq!(name(v), ("default", Action::Accept, false));
        assert_eq!(policy.rules()[v.rule.index()].from, "web");
        // No policy between the interfaces of one zone.
        assert_eq!(policy.classify(web, web, &back).rule, RuleId::NO_POLICY);
        // 1 implicit + 4 rules + 2 defaults.
        assert_eq!(policy.rules().len(), 7);
        assert!(format!("{policy:?}").contains("rule_ids: 7"), "{policy:?}");
    }

    #[test]
    fn fields_are_typed() {
        let policy = compiled(
            r#"
address_sets: {empty: [], nets: [10.1.2.3/24, 10.9.9.9]}
zones: [{name: a, interfaces: [a]}, {name: b, interfaces: [b]}]
policies:
  - from: a
    to: b
    default: reject
    log_default: true
    rules:
      - {src: [nets, 172.16.0.0/12], dst: [empty], protocol: udp, src_ports: [53, "1024-65535"], action: accept}
      - {protocol: 47, state: [established, related], action: drop}
      - {protocol: "6", dst_ports: ["0-1023"], action: accept}
      - {protocol: 1, icmp_code: 3, action: drop}
"#,
        );
        let (a, b) = (ZoneId(0), ZoneId(1));
        let rules = policy.pair_rules(a, b).unwrap();
        assert_eq!(
            rules[0],
            Rule {
                src: Some(vec![
                    "10.1.2.0/24".parse().unwrap(),
                    "10.9.9.9/32".parse().unwrap(),
                    "172.16.0.0/12".parse().unwrap()
                ]),
                dst: Some(vec![]),
                protocol: Some(17),
                src_ports: Some(vec![53..=53, 1024..=65535]),
                states: StateSet::VALID,
                ..Rule::new("a-b-0", Action::Accept)
            }
        );
        assert_eq!(
            rules[1],
            Rule {
                protocol: Some(47),
                states: StateSet::NONE
                    .with(CtState::Established)
                    .with(CtState::Related),
                ..Rule::new("a-b-1", Action::Drop)
            }
        );
        assert_eq!(rules[2].protocol, Some(proto::TCP));
        assert_eq!(rules[2].dst_ports, Some(vec![0..=1023]));
        assert_eq!(
            (rules[3].protocol, rules[3].icmp_code),
            (Some(proto::ICMP), Some(3))
        );
        let default = &policy.rules()[5];
        assert_eq!(
            (default.kind, default.action, default.log),
            (RuleKind::Default, Action::Reject, true)
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let got = errors(
            r#"
address_sets:
  admins: [192.0.2.0/28, 192.0.2.300/32, "2001:db8::/32"]
  10.0.0.0/8: []
zones:
  - {name: outside, interfaces: [ext, ext]}
  - {name: web, interfaces: [web, ext]}
  - {name: web, interfaces: []}
  - {name: "", interfaces: []}
policies:
  - from: outside
    to: web
    default: allow
    rules:
      - {name: http, protocol: tcp, dst_ports: [80, 70000, "90-80", "x", "1-65536"], action: accept}
      - {name: http, protocol: icmp, dst_ports: [22], src: [adminz, 10.0.0.0/33], action: accept}
      - {protocol: tcp, icmp_type: 8, icmp_code: 256, action: pass}
      - {name: outside-web-4, protocol: tpc, src_ports: [1], action: drop}
      - {protocol: udp, state: [new, closed], action: drop}
      - {name: "", action: drop}
      - {protocol: 300, src: [], dst_ports: [], state: [], action: drop}
      - {icmp_type: 0, action: drop}
      - {name: neg, protocol: 1, icmp_code: -1, action: drop}
      - {name: neg-port, protocol: tcp, dst_ports: [-1], action: drop}
  - {from: outside, to: web}
  - {from: nowhere, to: web, rules: [{action: maybe}]}
"#,
        );
        let want = [
            "address_sets.10.0.0.0/8: `10.0.0.0/8` cannot name an address set: a name is not empty and is not an address",
            "address_sets.admins[1]: `192.0.2.300/32` is not an IPv4 prefix like 10.0.1.0/24: invalid address: invalid IPv4 address syntax",
            "address_sets.admins[2]: `2001:db8::/32` is not an IPv4 prefix like 10.0.1.0/24: invalid address: invalid IPv4 address syntax",
            "zones[0].interfaces[1]: interface `ext` is listed twice",
            "zones[1].interfaces[1]: interface `ext` is already in zone `outside` (zones[0]): an interface is in one zone",
            "zones[2].name: zone name `web` is already used by zones[1]",
            "zones[3].name: a zone needs a name",
            "policies[0].default: unknown action `allow`: use accept, drop or reject",
            "policies[0].rules[0].dst_ports[1]: port 70000 is out of range (0..=65535)",
            "policies[0].rules[0].dst_ports[2]: port range `90-80` is empty (low > high)",
            "policies[0].rules[0].dst_ports[3]: `x` is not a port or a range like 1024-65535",
            "policies[0].rules[0].dst_ports[4]: port 65536 is out of range (0..=65535)",
            "policies[0].rules[1].name: rule name `http` is already used by rules[0]",
            "policies[0].rules[1].src[0]: no address set is named `adminz`",
            "policies[0].rules[1].src[1]: `10.0.0.0/33` is not an IPv4 prefix like 10.0.1.0/24: invalid prefix",
            "policies[0].rules[1].dst_ports: ports need protocol tcp or udp; this rule's protocol is icmp",
            "policies[0].rules[2].icmp_type: `icmp_type` needs protocol icmp; this rule's protocol is tcp",
            "policies[0].rules[2].icmp_code: `icmp_code` needs protocol icmp; this rule's protocol is tcp",
            "policies[0].rules[2].icmp_code: 256 is out of range (0..=255)",
            "policies[0].rules[2].action: unknown action `pass`: use accept, drop or reject",
            "policies[0].rules[3].protocol: unknown protocol `tpc`: use tcp, udp, icmp, any or a number 0..=255",
            "policies[0].rules[4]: this rule's default name `outside-web-4` is already used by rules[3]: give it a name",
            "policies[0].rules[4].state[1]: unknown state `closed`: use new, established, related or invalid",
            "policies[0].rules[5].name: a rule name is not empty",
            "policies[0].rules[6].src: an empty list matches nothing: leave `src` out to match any address",
            "policies[0].rules[6].protocol: protocol 300 is out of range (0..=255)",
            "policies[0].rules[6].dst_ports: an empty list matches nothing: leave `dst_ports` out to match any port",
            "policies[0].rules[6].state: an empty list matches nothing: leave `state` out to match every valid packet",
            "policies[0].rules[7].icmp_type: `icmp_type` needs protocol icmp; this rule's protocol is any",
            "policies[0].rules[8].icmp_code: -1 is out of range (0..=255)",
            "policies[0].rules[9].dst_ports[0]: port -1 is out of range (0..=65535)",
            "policies[1]: zone pair outside -> web already has a policy: policies[0]",
            "policies[2].from: no zone is named `nowhere`",
            "policies[2].rules[0].action: unknown action `maybe`: use accept, drop or reject",
        ];
        assert_eq!(got, want, "\n{}", got.join("\n"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        for yaml in [
            "zones: [{name: a, interface: [x]}]\n",
            "policies: [{from: a, to: b, rules: [{action: accept, port: 80}]}]\n",
            "policy: []\n",
        ] {
            assert!(serde_saphyr::from_str::<RawPolicy>(yaml).is_err(), "{yaml}");
        }
    }

    #[test]
    fn too_many_zones() {
        let zones: Vec<String> = (0..=MAX_ZONES)
            .map(|i| format!("  - {{name: z{i}}}\n"))
            .collect();
        assert_eq!(
            errors(&format!("zones:\n{}", zones.concat())),
            ["zones: 257 zones: at most 256"]
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let raw = parse(EXAMPLE);
        let yaml = serde_saphyr::to_string(&raw).unwrap();
        assert_eq!(parse(&yaml), raw, "{yaml}");
    }

    #[test]
    fn empty_config_is_an_empty_policy() {
        let policy = compiled("{}");
        assert!(policy.zones().is_empty());
        assert_eq!(policy.rules().len(), 1);
    }
}
