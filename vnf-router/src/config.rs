//! The router's configuration file.
//!
//! ```yaml
//! underlay:
//!   address: 198.18.0.1        # this VTEP
//! ports:
//!   - name: web                # VXLAN segment 100
//!     vni: 100
//!     flood: [198.18.0.2, 198.18.0.3]
//!   - name: office             # VLAN 100 on a trunk interface
//!     trunk: eth1
//!     vlan: 100
//! bridges:
//!   - name: gw100              # the VXLAN gateway: VNI 100 <-> VLAN 100
//!     ports: [web, office]
//! ```
//!
//! The full reference is `docs/router.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use overlay_io::bridge::{DEFAULT_MAX_MACS, DomainConfig};
use overlay_io::daemon::ConfigError;
use overlay_io::datapath::config::{self as dpc, DatapathConfig, RawPort, RawUnderlay};

use crate::l3config::{self, Context, RawRouted, Routed};
pub use crate::l3config::{RawArp, RawIcmp, RawInterface, RawNat, RawRoute};

fn default_workers() -> usize {
    1
}
fn default_batch() -> usize {
    64
}

/// The router's config file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This VNF's VTEP on the underlay.
    #[serde(default)]
    pub underlay: RawUnderlay,
    /// The L2 segments the router attaches to.
    #[serde(default)]
    pub ports: Vec<RawPort>,
    /// Bridge domains: sets of ports bridged together.
    #[serde(default)]
    pub bridges: Vec<RawBridge>,
    /// Routed interfaces on ports or bridge domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<RawInterface>,
    /// Static routes (connected routes come from `interfaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawRoute>,
    /// Network address translation.
    #[serde(default)]
    pub nat: RawNat,
    /// Neighbour cache limits.
    #[serde(default)]
    pub arp: RawArp,
    /// ICMP error rate limit.
    #[serde(default)]
    pub icmp: RawIcmp,
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
            nat: RawNat::default(),
            arp: RawArp::default(),
            icmp: RawIcmp::default(),
            workers: default_workers(),
            batch_size: default_batch(),
        }
    }
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

/// The router's typed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Ports and underlay.
    pub datapath: Arc<DatapathConfig>,
    /// Bridge domains over the ports.
    pub bridges: Vec<DomainConfig>,
    /// Interfaces, routes, NAT.
    pub routed: Routed,
}

/// Check and type a raw config; every problem at once.
pub fn compile(raw: &RawConfig) -> Result<RouterConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let dp = match dpc::compile(&raw.underlay, &raw.ports, raw.workers, raw.batch_size) {
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
            .map_or_else(|| "vnf-router".to_owned(), |a| a.to_string()),
    };
    let routed = l3config::compile(
        &RawRouted {
            interfaces: &raw.interfaces,
            routes: &raw.routes,
            nat: &raw.nat,
            arp: &raw.arp,
            icmp: &raw.icmp,
        },
        &cx,
        &mut errors,
    );
    match (dp, routed) {
        (Some(dp), Some(routed)) if errors.is_empty() => Ok(RouterConfig {
            datapath: Arc::new(dp),
            bridges,
            routed,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> RawConfig {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    #[test]
    fn example_compiles() {
        let raw = parse(
            "underlay: {address: 198.18.0.1}\nports:\n  - {name: web, vni: 100, flood: [198.18.0.2]}\n  - {name: office, trunk: eth1, vlan: 100}\nbridges:\n  - {name: gw, ports: [web, office]}\n",
        );
        let c = compile(&raw).expect("compiles");
        assert_eq!(c.bridges[0].ports.len(), 2);
        assert_eq!(c.datapath.ports.len(), 2);
    }

    #[test]
    fn bridge_errors_are_all_reported() {
        let raw = parse(
            "underlay: {address: 198.18.0.1}\nports:\n  - {name: a, vni: 1}\n  - {name: b, vni: 2}\nbridges:\n  - {name: x, ports: [a, nope]}\n  - {name: x, ports: [a]}\n",
        );
        let errs = compile(&raw).expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "bridges[0].ports[1]",
                "bridges[1].name",
                "bridges[1].ports",
                "bridges[1].ports[0]"
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn shipped_examples_compile() {
        for (name, yaml) in [
            (
                "router-gateway",
                include_str!("../../examples/router-gateway.yaml"),
            ),
            (
                "router-vni-bridge",
                include_str!("../../examples/router-vni-bridge.yaml"),
            ),
            ("router-l3", include_str!("../../examples/router-l3.yaml")),
        ] {
            if let Err(e) = compile(&parse(yaml)) {
                panic!("examples/{name}.yaml: {e:?}");
            }
        }
        let c = compile(&parse(include_str!("../../examples/router-l3.yaml"))).unwrap();
        assert_eq!(c.routed.l3.interfaces.len(), 3);
        assert_eq!(c.routed.l3.interfaces[0].mtu, 1500, "the port's MTU");
        assert_eq!(c.routed.l3.interfaces[1].mtu, 1450);
        assert!(c.routed.nat.is_active());
        assert_eq!(
            c.routed.l3.proxy_arp.len(),
            2,
            "pool and floating address on ext"
        );
    }

    #[test]
    fn routed_errors_are_all_reported_with_paths() {
        let raw = parse(
            r#"
underlay: {address: 198.18.0.1}
ports:
  - {name: a, vni: 1}
  - {name: b, vni: 2}
  - {name: c, vni: 3}
  - {name: d, vni: 4}
bridges:
  - {name: br, ports: [c, d]}
interfaces:
  - {name: x, port: a, addresses: [10.0.1.1/24]}
  - {name: x, port: a, addresses: [10.0.1.0/24, 10.0.1.9/25, nonsense]}
  - {name: y, port: c, addresses: [10.0.3.1/24]}
  - {name: z, port: b, bridge: br, addresses: []}
  - {name: w, bridge: br, mac: "01:00:5e:00:00:01", addresses: [10.0.4.1/24], mtu: 9000}
routes:
  - {prefix: 0.0.0.0/0, via: [192.0.2.1]}
  - {prefix: 10.9.0.0/16, action: drop}
  - {prefix: 10.0.1.0/24, via: [10.0.1.2]}
  - {prefix: 10.8.0.0/16, via: [10.0.1.2], action: blackhole}
nat:
  pools: [{name: p, addresses: [192.0.2.10], ports: 100-50}]
  masquerade: [{sources: [10.0.0.0/8], interface: nope}]
  port_forwards: [{protocol: sctp, address: 192.0.2.10, port: 80, to: 10.0.1.5}]
"#,
        );
        let errs = compile(&raw).expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "interfaces[1].name",
                "interfaces[1].port",
                "interfaces[1].addresses[0]",
                "interfaces[1].addresses[1]",
                "interfaces[1].addresses[2]",
                "interfaces[2].port",
                "interfaces[3]",
                "interfaces[3].addresses",
                "interfaces[4].mac",
                "interfaces[4].mtu",
                "routes[0].via[0]",
                "routes[1].action",
                "routes[2].prefix",
                "routes[3]",
                "nat.pools[0].ports",
                "nat.masquerade[0].interface",
                "nat.port_forwards[0].protocol",
            ],
            "{errs:#?}"
        );
    }
}
