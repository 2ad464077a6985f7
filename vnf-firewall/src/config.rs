//! The firewall's configuration file.
//!
//! The datapath and routed sections are the router's (`underlay`, `ports`, `bridges`,
//! `interfaces`, `routes`, `arp`, `icmp`; see `docs/router.md`), the policy is
//! [`crate::policy`] (`address_sets`, `zones`, `policies`), and `conntrack` and `log` tune
//! the firewall. Routed mode: zones name interfaces. Transparent mode: a bridge domain with
//! no interface joins two segments, and zones name its ports.
//!
//! The full reference is `docs/firewall.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use overlay_io::conntrack::{CtConfig, Timeouts};
use overlay_io::daemon::ConfigError;
use overlay_io::datapath::config::{RawPort, RawUnderlay};
use overlay_io::l3config::{
    RawArp, RawBridge, RawIcmp, RawInterface, RawNat, RawRoute, RawSections, Sections,
    compile_sections,
};
use overlay_io::pipeline::MAX_PORTS;

use crate::classifier::{Policy, ZoneId};
use crate::policy::{self, RawPolicy, RawZone, RawZonePolicy};

fn default_workers() -> usize {
    1
}
fn default_batch() -> usize {
    64
}

/// `conntrack:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConntrack {
    /// Most connections in all (default 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most connections opened from one zone (default: `max_connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_zone: Option<usize>,
    /// Pick up TCP connections in the middle (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loose: Option<bool>,
    /// On reload, cut established connections the new policy no longer accepts (default
    /// true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_on_reload: Option<bool>,
    /// Timeouts in seconds, by name (see `docs/firewall.md`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timeouts: BTreeMap<String, u64>,
}

/// `log:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Log lines per second for packets of rules with `log: true` (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Burst (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// The firewall's config file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This VNF's VTEP on the underlay.
    #[serde(default)]
    pub underlay: RawUnderlay,
    /// The L2 segments the firewall attaches to.
    #[serde(default)]
    pub ports: Vec<RawPort>,
    /// Bridge domains (transparent mode, or IRB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<RawBridge>,
    /// Routed interfaces (routed mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<RawInterface>,
    /// Static routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawRoute>,
    /// Neighbour cache limits.
    #[serde(default)]
    pub arp: RawArp,
    /// ICMP error rate limit.
    #[serde(default)]
    pub icmp: RawIcmp,
    /// Named address sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub address_sets: BTreeMap<String, Vec<String>>,
    /// Zones: interface names (routed) or port names (transparent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<RawZone>,
    /// Zone-pair policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<RawZonePolicy>,
    /// Connection tracking.
    #[serde(default)]
    pub conntrack: RawConntrack,
    /// Logging of packets that match rules with `log: true`.
    #[serde(default)]
    pub log: RawLog,
    /// Datapath worker threads (default 1).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Packets per receive batch (default 64).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            underlay: RawUnderlay::default(),
            ports: Vec::new(),
            bridges: Vec::new(),
            interfaces: Vec::new(),
            routes: Vec::new(),
            arp: RawArp::default(),
            icmp: RawIcmp::default(),
            address_sets: BTreeMap::new(),
            zones: Vec::new(),
            policies: Vec::new(),
            conntrack: RawConntrack::default(),
            log: RawLog::default(),
            workers: default_workers(),
            batch_size: default_batch(),
        }
    }
}

/// The firewall's own settings, the hook's config.
#[derive(Debug, Clone)]
pub struct FwSettings {
    /// Zones and rules.
    pub policy: Arc<Policy>,
    /// Zone by interface index (routed mode).
    pub iface_zone: Vec<Option<ZoneId>>,
    /// Zone by port id (transparent mode).
    pub port_zone: Vec<Option<ZoneId>>,
    /// Connection tracking settings.
    pub conntrack: CtConfig,
    /// Cut connections the policy no longer accepts on reload.
    pub cut_on_reload: bool,
    /// Log lines per second and burst.
    pub log_rate: (u32, u32),
    /// Counter slot of each rule id (given at start and reload, by label).
    pub rule_slots: Vec<usize>,
}

/// The firewall's typed config.
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    /// Datapath, bridges, interfaces, routes.
    pub sections: Sections,
    /// Policy and conntrack.
    pub fw: FwSettings,
}

const DEFAULT_MAX_CONNS: usize = 1 << 18;

/// Check and type a raw config; every problem at once.
pub fn compile(raw: &RawConfig) -> Result<FirewallConfig, Vec<ConfigError>> {
    let nat = RawNat::default();
    let mut errors = Vec::new();
    let sections = match compile_sections(
        &RawSections {
            underlay: &raw.underlay,
            ports: &raw.ports,
            bridges: &raw.bridges,
            interfaces: &raw.interfaces,
            routes: &raw.routes,
            nat: &nat,
            arp: &raw.arp,
            icmp: &raw.icmp,
            workers: raw.workers,
            batch_size: raw.batch_size,
        },
        "vnf-firewall",
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let policy = policy::compile(
        &RawPolicy {
            address_sets: raw.address_sets.clone(),
            zones: raw.zones.clone(),
            policies: raw.policies.clone(),
        },
        &mut errors,
    );
    // Zone members must be interfaces or ports of bridge domains.
    let iface_names: Vec<&str> = raw.interfaces.iter().map(|i| i.name.as_str()).collect();
    let bridged: Vec<&str> = raw
        .bridges
        .iter()
        .flat_map(|b| b.ports.iter().map(String::as_str))
        .collect();
    for (i, z) in raw.zones.iter().enumerate() {
        for (j, m) in z.interfaces.iter().enumerate() {
            if !iface_names.contains(&m.as_str()) && !bridged.contains(&m.as_str()) {
                errors.push(ConfigError {
                    path: format!("zones[{i}].interfaces[{j}]"),
                    message: format!(
                        "`{m}` is neither a routed interface nor a port of a bridge domain"
                    ),
                });
            }
        }
    }
    let c = &raw.conntrack;
    let mut ct = CtConfig {
        max_conns: c.max_connections.unwrap_or(DEFAULT_MAX_CONNS),
        ..CtConfig::default()
    };
    ct.max_conns_per_zone = c.max_connections_per_zone.unwrap_or(ct.max_conns);
    ct.loose = c.loose.unwrap_or(false);
    if !(1..(1 << 24)).contains(&ct.max_conns) {
        errors.push(ConfigError {
            path: "conntrack.max_connections".into(),
            message: format!("{}: use 1..=16777215", ct.max_conns),
        });
    }
    if ct.max_conns_per_zone == 0 {
        errors.push(ConfigError {
            path: "conntrack.max_connections_per_zone".into(),
            message: "at least 1".into(),
        });
    }
    for (name, secs) in &c.timeouts {
        let t = &mut ct.timeouts;
        let slot: Option<&mut Duration> = match name.as_str() {
            "tcp_syn_sent" => Some(&mut t.tcp_syn_sent),
            "tcp_syn_recv" => Some(&mut t.tcp_syn_recv),
            "tcp_established" => Some(&mut t.tcp_established),
            "tcp_fin_wait" => Some(&mut t.tcp_fin_wait),
            "tcp_close_wait" => Some(&mut t.tcp_close_wait),
            "tcp_last_ack" => Some(&mut t.tcp_last_ack),
            "tcp_time_wait" => Some(&mut t.tcp_time_wait),
            "tcp_close" => Some(&mut t.tcp_close),
            "udp_unreplied" => Some(&mut t.udp_unreplied),
            "udp_assured" => Some(&mut t.udp_assured),
            "icmp" => Some(&mut t.icmp),
            "other" => Some(&mut t.other),
            _ => None,
        };
        match slot {
            Some(_) if *secs == 0 => errors.push(ConfigError {
                path: format!("conntrack.timeouts.{name}"),
                message: "a timeout is at least 1 second".into(),
            }),
            Some(d) => *d = Duration::from_secs(*secs),
            None => errors.push(ConfigError {
                path: format!("conntrack.timeouts.{name}"),
                message: format!("unknown timeout `{name}`: use {}", TIMEOUT_NAMES.join(", ")),
            }),
        }
    }
    let _: &Timeouts = &ct.timeouts;
    let rate = raw.log.rate.unwrap_or(10);
    let burst = raw.log.burst.unwrap_or(20).max(1);
    let (Some(sections), Some(policy)) = (sections, policy) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let iface_zone = sections
        .routed
        .l3
        .interfaces
        .iter()
        .map(|i| policy.zone_of_interface(&i.name))
        .collect();
    let mut port_zone = vec![None; MAX_PORTS];
    for (id, p) in sections.datapath.ports.iter().enumerate() {
        if let Some(z) = port_zone.get_mut(id) {
            *z = policy.zone_of_interface(&p.name);
        }
    }
    Ok(FirewallConfig {
        sections,
        fw: FwSettings {
            policy: Arc::new(policy),
            iface_zone,
            port_zone,
            conntrack: ct,
            cut_on_reload: c.cut_on_reload.unwrap_or(true),
            log_rate: (rate, burst),
            rule_slots: Vec::new(),
        },
    })
}

/// The names of `conntrack.timeouts`.
pub const TIMEOUT_NAMES: [&str; 12] = [
    "tcp_syn_sent",
    "tcp_syn_recv",
    "tcp_established",
    "tcp_fin_wait",
    "tcp_close_wait",
    "tcp_last_ack",
    "tcp_time_wait",
    "tcp_close",
    "udp_unreplied",
    "udp_assured",
    "icmp",
    "other",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> RawConfig {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    #[test]
    fn shipped_examples_compile() {
        for (name, yaml) in [
            (
                "firewall-routed",
                include_str!("../../examples/firewall-routed.yaml"),
            ),
            (
                "firewall-transparent",
                include_str!("../../examples/firewall-transparent.yaml"),
            ),
        ] {
            if let Err(e) = compile(&parse(yaml)) {
                panic!("examples/{name}.yaml: {e:?}");
            }
        }
    }

    #[test]
    fn errors_are_all_reported_with_paths() {
        let raw = parse(
            r#"
underlay: {address: 198.18.0.1}
ports: [{name: a, vni: 1}, {name: b, vni: 2}]
interfaces:
  - {name: a, port: a, addresses: [10.0.1.1/24]}
zones:
  - {name: inside, interfaces: [a, nope]}
policies:
  - {from: inside, to: outside}
conntrack:
  max_connections: 0
  timeouts: {tcp_forever: 5, udp_assured: 0}
"#,
        );
        let errs = compile(&raw).expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "zones[0].interfaces[1]",
            "conntrack.max_connections",
            "conntrack.timeouts.tcp_forever",
            "conntrack.timeouts.udp_assured",
        ] {
            assert!(paths.contains(&p), "{p} missing from {errs:#?}");
        }
        assert!(
            paths.iter().any(|p| p.starts_with("policies[0]")),
            "unknown zone reported: {errs:#?}"
        );
    }
}
