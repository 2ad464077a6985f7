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

use serde::{Deserialize, Serialize};

use overlay_io::daemon::ConfigError;
use overlay_io::datapath::config::{RawPort, RawUnderlay};

pub use overlay_io::l3config::{RawArp, RawBridge, RawIcmp, RawInterface, RawNat, RawRoute};
use overlay_io::l3config::{RawSections, Sections, compile_sections};

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

/// The router's typed config.
pub type RouterConfig = Sections;

/// Check and type a raw config; every problem at once.
pub fn compile(raw: &RawConfig) -> Result<RouterConfig, Vec<ConfigError>> {
    compile_sections(
        &RawSections {
            underlay: &raw.underlay,
            ports: &raw.ports,
            bridges: &raw.bridges,
            interfaces: &raw.interfaces,
            routes: &raw.routes,
            nat: &raw.nat,
            arp: &raw.arp,
            icmp: &raw.icmp,
            workers: raw.workers,
            batch_size: raw.batch_size,
        },
        "vnf-router",
    )
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

    /// Found by the `vnf_config` fuzzer: when the ports do not compile, an interface on
    /// one of them has nothing to attach to; building the L3 tables with it overflowed
    /// (and in a release build aborted the daemon on a bad reload). Now refused.
    #[test]
    fn interfaces_on_ports_that_do_not_compile_are_refused() {
        let raw = parse(
            "underlay: {address: 198.18.0.1}\nports:\n  - {name: a, vni: 160000001}\n\
             interfaces:\n  - {name: a, port: a, addresses: [10.0.0.1/24]}\n",
        );
        let errs = compile(&raw).expect_err("invalid");
        assert!(errs.iter().any(|e| e.path == "ports[0].vni"), "{errs:?}");
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
