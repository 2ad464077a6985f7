//! The datapath section every VNF config shares: the underlay VTEP, ports, workers.
//!
//! Raw serde structs (`deny_unknown_fields`) are turned into typed values in one pass,
//! [`compile`], which reports every problem at once with the path of the offending field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::daemon::ConfigError;
use crate::pipeline::{MAX_PORTS, PortId};
use crate::vtep::{DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, VniConfig};
use crate::wire::vxlan;
use crate::{Vni, parse_mac};

fn default_port() -> u16 {
    vxlan::UDP_PORT
}
fn default_source_ports() -> u16 {
    16
}
fn default_underlay_mtu() -> u32 {
    1500
}
fn default_true() -> bool {
    true
}

/// `underlay:` — this VNF's VTEP on the IP underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnderlay {
    /// The local VTEP address that VXLAN is received on and sent from. Required when a
    /// port is on a VNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// The UDP destination port of VXLAN (RFC 7348: 4789).
    #[serde(default = "default_port")]
    pub port: u16,
    /// How many UDP sockets send VXLAN, each bound to its own ephemeral source port; a
    /// flow's inner 5-tuple hash picks one, so underlay ECMP spreads flows.
    #[serde(default = "default_source_ports")]
    pub source_ports: u16,
    /// MTU of the underlay network; a VNI port's MTU defaults to this less the VXLAN
    /// overhead (50 bytes over IPv4, 70 over IPv6).
    #[serde(default = "default_underlay_mtu")]
    pub mtu: u32,
    /// Send runs of same-sized packets to one VTEP as one UDP GSO super-packet.
    #[serde(default = "default_true")]
    pub gso: bool,
    /// Ask the kernel to coalesce received datagrams of one flow (UDP GRO). Off by
    /// default: measured no faster on veth underlays (BENCHMARKS.md).
    #[serde(default)]
    pub gro: bool,
    /// IPv6 underlay: accept VXLAN with a zero UDP checksum (RFC 6935), as sent by Linux
    /// `vxlan` devices with `udp6zerocsumtx`. Off by default, like Linux's `udp6zerocsumrx`.
    #[serde(default)]
    pub ipv6_zero_checksum: bool,
}

impl Default for RawUnderlay {
    fn default() -> Self {
        RawUnderlay {
            address: None,
            port: default_port(),
            source_ports: default_source_ports(),
            mtu: default_underlay_mtu(),
            gso: true,
            gro: false,
            ipv6_zero_checksum: false,
        }
    }
}

/// A static forwarding entry of a VNI port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticMac {
    /// The inner MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The VTEP that serves it.
    pub vtep: IpAddr,
}

/// One entry of `ports:`. Exactly one of `vni`, `trunk` (with `vlan`), `interface` or `tap`
/// says what the port is; the VXLAN options apply only to `vni` ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    /// Unique name, used by bridge domains and as the `port` metric label.
    pub name: String,
    /// An L2 segment on this VXLAN VNI (1..=16777215).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u64>,
    /// A VLAN on this trunk interface (802.1Q tagged frames, over AF_PACKET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    /// The VLAN ID on the trunk, 1..=4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u64>,
    /// Untagged frames on this interface (AF_PACKET); on a trunk interface, its native VLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// A TAP device of this name, created by the VNF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Largest IP packet (Ethernet payload) the port carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// VNI ports: remote VTEPs for broadcast, multicast and unknown unicast.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flood: Vec<IpAddr>,
    /// VNI ports: learn inner source MACs from received VXLAN (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<bool>,
    /// VNI ports: seconds a learned MAC lives without traffic (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing: Option<u64>,
    /// VNI ports: the most learned MACs (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// VNI ports: if given, only these source VTEPs may send on the VNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_vteps: Option<Vec<IpAddr>>,
    /// VNI ports: static MAC -> VTEP entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_macs: Vec<RawStaticMac>,
}

/// Tuning of the worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Worker threads.
    pub workers: usize,
    /// Packets per receive batch.
    pub batch_size: usize,
}

/// The typed underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Local VTEP address and VXLAN port.
    pub local: SocketAddr,
    /// Number of sending sockets (source ports).
    pub source_ports: u16,
    /// Underlay MTU.
    pub mtu: u32,
    /// UDP GSO on send.
    pub gso: bool,
    /// UDP GRO on receive.
    pub gro: bool,
    /// Accept zero UDP checksums on an IPv6 underlay.
    pub ipv6_zero_checksum: bool,
}

/// What a port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A VXLAN segment.
    Vni(Arc<VniConfig>),
    /// A VLAN on a trunk interface.
    Vlan {
        /// Interface name.
        iface: String,
        /// VLAN ID.
        vid: u16,
    },
    /// Untagged frames on an interface.
    Untagged {
        /// Interface name.
        iface: String,
    },
    /// A TAP device.
    Tap {
        /// Device name.
        name: String,
    },
}

/// A typed port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: PortKind,
    /// MTU (largest Ethernet payload).
    pub mtu: u32,
}

/// The typed datapath config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The VTEP, if any port is on a VNI.
    pub underlay: Option<Underlay>,
    /// Ports; a port's index is its [`PortId`].
    pub ports: Vec<Port>,
    /// Worker tuning.
    pub tuning: Tuning,
}

/// The parts of a config that decide which sockets and threads exist.
pub type IoShape = (
    Option<(SocketAddr, u16, bool, bool, bool)>,
    Vec<(String, IfaceKind)>,
    Tuning,
);

/// Kinds of host interface the datapath opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IfaceKind {
    /// An existing interface, through AF_PACKET.
    Packet,
    /// A TAP device we create.
    Tap,
}

impl DatapathConfig {
    /// The id of a named port.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .map(|i| PortId(i as u16))
    }

    /// The distinct host interfaces the ports use, sorted.
    pub fn ifaces(&self) -> Vec<(String, IfaceKind)> {
        let set: BTreeSet<(String, IfaceKind)> = self
            .ports
            .iter()
            .filter_map(|p| match &p.kind {
                PortKind::Vni(_) => None,
                PortKind::Vlan { iface, .. } | PortKind::Untagged { iface } => {
                    Some((iface.clone(), IfaceKind::Packet))
                }
                PortKind::Tap { name } => Some((name.clone(), IfaceKind::Tap)),
            })
            .collect();
        set.into_iter().collect()
    }

    /// What cannot change without a restart, as one comparable value: the sockets and
    /// threads the datapath opened.
    pub fn io_shape(&self) -> IoShape {
        (
            self.underlay
                .as_ref()
                .map(|u| (u.local, u.source_ports, u.gso, u.gro, u.ipv6_zero_checksum)),
            self.ifaces(),
            self.tuning,
        )
    }
}

fn err(errors: &mut Vec<ConfigError>, path: String, message: impl Into<String>) {
    errors.push(ConfigError {
        path,
        message: message.into(),
    });
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1) with no `/` or whitespace.
fn check_ifname(errors: &mut Vec<ConfigError>, path: String, name: &str) {
    if name.is_empty()
        || name.len() > 15
        || name.contains(|c: char| c == '/' || c.is_whitespace())
        || name == "."
        || name == ".."
    {
        err(
            errors,
            path,
            format!(
                "`{name}` is not a Linux interface name (1 to 15 characters, no `/` or spaces)"
            ),
        );
    }
}

/// Compile the shared datapath section. Paths in errors are relative to the config root
/// (`underlay.port`, `ports[2].vni`).
pub fn compile(
    underlay: &RawUnderlay,
    ports: &[RawPort],
    workers: usize,
    batch_size: usize,
) -> Result<DatapathConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let e = &mut errors;

    if !(1..=64).contains(&workers) {
        err(
            e,
            "workers".into(),
            format!("{workers} workers: use 1..=64"),
        );
    }
    if !(1..=1024).contains(&batch_size) {
        err(
            e,
            "batch_size".into(),
            format!("batch size {batch_size}: use 1..=1024"),
        );
    }
    if underlay.port == 0 {
        err(e, "underlay.port".into(), "port 0 is not a UDP port");
    }
    if !(1..=256).contains(&underlay.source_ports) {
        err(
            e,
            "underlay.source_ports".into(),
            format!("{} source ports: use 1..=256", underlay.source_ports),
        );
    }
    if !(576..=9216).contains(&underlay.mtu) {
        err(
            e,
            "underlay.mtu".into(),
            format!("MTU {} outside 576..=9216", underlay.mtu),
        );
    }
    let local_ip = underlay.address;
    if let Some(ip) = local_ip
        && (ip.is_unspecified() || ip.is_multicast())
    {
        err(
            e,
            "underlay.address".into(),
            format!("{ip} cannot be a VTEP address: give this VNF's own unicast address"),
        );
    }
    if underlay.ipv6_zero_checksum && !matches!(local_ip, Some(IpAddr::V6(_))) {
        err(
            e,
            "underlay.ipv6_zero_checksum".into(),
            "applies only to an IPv6 underlay address",
        );
    }
    let overhead = match local_ip {
        Some(IpAddr::V6(_)) => vxlan::OVERHEAD_IPV6,
        _ => vxlan::OVERHEAD_IPV4,
    } as u32;
    let vni_mtu_max = underlay.mtu.saturating_sub(overhead);

    if ports.len() > MAX_PORTS {
        err(
            e,
            "ports".into(),
            format!("{} ports: at most {MAX_PORTS}", ports.len()),
        );
    }

    let mut names = BTreeMap::new();
    let mut vnis = BTreeMap::new();
    let mut vlans = BTreeMap::new();
    let mut natives = BTreeMap::new();
    let mut taps = BTreeMap::new();
    let mut packet_ifaces = BTreeSet::new();
    let mut out = Vec::new();

    for (i, p) in ports.iter().enumerate() {
        let at = |f: &str| format!("ports[{i}].{f}");
        if p.name.is_empty() {
            err(e, at("name"), "a port needs a name");
        } else if let Some(first) = names.insert(p.name.clone(), i) {
            err(
                e,
                at("name"),
                format!("port name `{}` is already used by ports[{first}]", p.name),
            );
        }
        let kinds = [
            p.vni.is_some(),
            p.trunk.is_some(),
            p.interface.is_some(),
            p.tap.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            err(
                e,
                format!("ports[{i}]"),
                "a port is exactly one of `vni: N`, `trunk: IFACE` with `vlan: N`, `interface: IFACE` or `tap: NAME`",
            );
            continue;
        }
        if p.vni.is_none() {
            let vx: [(&str, bool); 6] = [
                ("flood", !p.flood.is_empty()),
                ("learning", p.learning.is_some()),
                ("ageing", p.ageing.is_some()),
                ("max_entries", p.max_entries.is_some()),
                ("allowed_vteps", p.allowed_vteps.is_some()),
                ("static_macs", !p.static_macs.is_empty()),
            ];
            for (f, set) in vx {
                if set {
                    err(e, at(f), format!("`{f}` applies only to a `vni` port"));
                }
            }
        }
        if p.vlan.is_some() && p.trunk.is_none() {
            err(e, at("vlan"), "`vlan` needs `trunk: IFACE`");
        }
        let kind = if let Some(v) = p.vni {
            let vni = match Vni::try_from(v) {
                Ok(vni) => vni,
                Err(x) => {
                    err(e, at("vni"), x.to_string());
                    continue;
                }
            };
            if let Some(first) = vnis.insert(vni, i) {
                err(
                    e,
                    at("vni"),
                    format!("VNI {vni} is already joined by ports[{first}]"),
                );
            }
            let Some(local) = local_ip else {
                err(
                    e,
                    at("vni"),
                    "a VNI port needs `underlay.address`, this VNF's VTEP address",
                );
                continue;
            };
            let same_family = |a: &IpAddr| a.is_ipv4() == local.is_ipv4();
            for (j, a) in p.flood.iter().enumerate() {
                if !same_family(a) || a.is_unspecified() || *a == local {
                    err(
                        e,
                        format!("ports[{i}].flood[{j}]"),
                        format!(
                            "{a} is not a remote VTEP of the {} underlay",
                            if local.is_ipv4() { "IPv4" } else { "IPv6" }
                        ),
                    );
                }
            }
            let mut allowed = p.allowed_vteps.clone();
            if let Some(list) = &mut allowed {
                for (j, a) in list.iter().enumerate() {
                    if !same_family(a) || *a == local {
                        err(
                            e,
                            format!("ports[{i}].allowed_vteps[{j}]"),
                            format!("{a} is not a remote VTEP of this underlay"),
                        );
                    }
                }
                list.sort_unstable();
                list.dedup();
            }
            let mut statics = Vec::new();
            for (j, s) in p.static_macs.iter().enumerate() {
                match parse_mac(&s.mac) {
                    Some(m) if !crate::is_group_mac(&m) && m != [0; 6] => statics.push((m, s.vtep)),
                    _ => err(
                        e,
                        format!("ports[{i}].static_macs[{j}].mac"),
                        format!("`{}` is not a unicast MAC address", s.mac),
                    ),
                }
                if !same_family(&s.vtep) || s.vtep == local || s.vtep.is_unspecified() {
                    err(
                        e,
                        format!("ports[{i}].static_macs[{j}].vtep"),
                        format!("{} is not a remote VTEP of this underlay", s.vtep),
                    );
                }
            }
            let ageing = p.ageing.map_or(DEFAULT_AGEING, Duration::from_secs);
            if ageing.is_zero() {
                err(e, at("ageing"), "ageing must be at least 1 second");
            }
            let max_entries = p.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
            if !(1..=1 << 20).contains(&max_entries) {
                err(
                    e,
                    at("max_entries"),
                    format!("{max_entries} entries: use 1..=1048576"),
                );
            }
            PortKind::Vni(Arc::new(VniConfig {
                vni,
                flood: p.flood.clone(),
                learning: p.learning.unwrap_or(true),
                ageing,
                max_entries,
                allowed_vteps: allowed,
                static_entries: statics,
            }))
        } else if let Some(trunk) = &p.trunk {
            check_ifname(e, at("trunk"), trunk);
            packet_ifaces.insert(trunk.clone());
            let Some(vid) = p.vlan else {
                err(
                    e,
                    at("trunk"),
                    "a trunk port needs `vlan: N` (1..=4094); for untagged frames use `interface:`",
                );
                continue;
            };
            if !(1..=4094).contains(&vid) {
                err(e, at("vlan"), format!("VLAN {vid} outside 1..=4094"));
                continue;
            }
            if let Some(first) = vlans.insert((trunk.clone(), vid), i) {
                err(
                    e,
                    at("vlan"),
                    format!("VLAN {vid} on {trunk} is already ports[{first}]"),
                );
            }
            PortKind::Vlan {
                iface: trunk.clone(),
                vid: vid as u16,
            }
        } else if let Some(iface) = &p.interface {
            check_ifname(e, at("interface"), iface);
            packet_ifaces.insert(iface.clone());
            if let Some(first) = natives.insert(iface.clone(), i) {
                err(
                    e,
                    at("interface"),
                    format!("untagged frames of {iface} already go to ports[{first}]"),
                );
            }
            PortKind::Untagged {
                iface: iface.clone(),
            }
        } else if let Some(tap) = &p.tap {
            check_ifname(e, at("tap"), tap);
            if let Some(first) = taps.insert(tap.clone(), i) {
                err(e, at("tap"), format!("TAP {tap} is already ports[{first}]"));
            }
            PortKind::Tap { name: tap.clone() }
        } else {
            continue;
        };
        let (default_mtu, max_mtu) = match kind {
            PortKind::Vni(_) => (vni_mtu_max, vni_mtu_max),
            _ => (1500, 9000),
        };
        let mtu = p.mtu.unwrap_or(default_mtu);
        if mtu < 68 || mtu > max_mtu {
            let why = if matches!(kind, PortKind::Vni(_)) {
                format!(
                    "MTU {mtu} does not fit: a VNI port carries at most the underlay MTU {} less {overhead} bytes of VXLAN overhead = {vni_mtu_max}",
                    underlay.mtu
                )
            } else {
                format!("MTU {mtu} outside 68..=9000")
            };
            err(e, at("mtu"), why);
        }
        out.push(Port {
            name: p.name.clone(),
            kind,
            mtu,
        });
    }
    for (tap, i) in &taps {
        if packet_ifaces.contains(tap) {
            err(
                e,
                format!("ports[{i}].tap"),
                format!("{tap} is also used as a trunk or interface"),
            );
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let underlay = local_ip.map(|ip| Underlay {
        local: SocketAddr::new(ip, underlay.port),
        source_ports: underlay.source_ports,
        mtu: underlay.mtu,
        gso: underlay.gso,
        gro: underlay.gro,
        ipv6_zero_checksum: underlay.ipv6_zero_checksum,
    });
    Ok(DatapathConfig {
        underlay,
        ports: out,
        tuning: Tuning {
            workers,
            batch_size,
        },
    })
}

/// An address for examples and tests.
pub const EXAMPLE_VTEP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

#[cfg(test)]
mod tests {
    use super::*;

    fn vni_port(name: &str, vni: u64) -> RawPort {
        RawPort {
            name: name.into(),
            vni: Some(vni),
            ..Default::default()
        }
    }

    fn underlay() -> RawUnderlay {
        RawUnderlay {
            address: Some(EXAMPLE_VTEP),
            ..Default::default()
        }
    }

    fn paths(r: Result<DatapathConfig, Vec<ConfigError>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn good_config_compiles() {
        let ports = vec![
            vni_port("a", 100),
            RawPort {
                name: "b".into(),
                trunk: Some("veth0".into()),
                vlan: Some(100),
                ..Default::default()
            },
            RawPort {
                name: "c".into(),
                interface: Some("veth0".into()),
                ..Default::default()
            },
        ];
        let c = compile(&underlay(), &ports, 1, 64).unwrap();
        assert_eq!(c.ports[0].mtu, 1450);
        assert_eq!(c.port_id("c"), Some(PortId(2)));
        assert_eq!(c.ifaces(), vec![("veth0".to_string(), IfaceKind::Packet)]);
        assert_eq!(
            c.underlay.unwrap().local,
            "198.18.0.1:4789".parse().unwrap()
        );
    }

    #[test]
    fn every_error_at_once() {
        let ports = vec![
            vni_port("a", 0),
            vni_port("a", 16_777_216),
            vni_port("x", 100),
            vni_port("y", 100),
            RawPort {
                name: "t".into(),
                trunk: Some("veth0".into()),
                vlan: Some(4095),
                ..Default::default()
            },
            RawPort {
                name: "u".into(),
                interface: Some("eth0".into()),
                flood: vec![EXAMPLE_VTEP],
                ..Default::default()
            },
            RawPort {
                name: "m".into(),
                vni: Some(5),
                mtu: Some(1451),
                ..Default::default()
            },
            RawPort {
                name: "k".into(),
                ..Default::default()
            },
        ];
        let p = paths(compile(&underlay(), &ports, 0, 64));
        for want in [
            "workers",
            "ports[0].vni",
            "ports[1].name",
            "ports[1].vni",
            "ports[3].vni",
            "ports[4].vlan",
            "ports[5].flood",
            "ports[6].mtu",
            "ports[7]",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} missing from {p:?}");
        }
    }

    #[test]
    fn vni_needs_underlay() {
        let p = paths(compile(&RawUnderlay::default(), &[vni_port("a", 1)], 1, 64));
        assert_eq!(p, vec!["ports[0].vni"]);
    }

    #[test]
    fn zero_checksum_option_needs_ipv6() {
        let u = RawUnderlay {
            ipv6_zero_checksum: true,
            ..underlay()
        };
        assert_eq!(
            paths(compile(&u, &[vni_port("a", 1)], 1, 64)),
            vec!["underlay.ipv6_zero_checksum"]
        );
        let u6 = RawUnderlay {
            address: Some("2001:db8::1".parse().unwrap()),
            ipv6_zero_checksum: true,
            ..Default::default()
        };
        assert!(
            compile(&u6, &[vni_port("a", 1)], 1, 64)
                .unwrap()
                .underlay
                .unwrap()
                .ipv6_zero_checksum
        );
    }

    #[test]
    fn ipv6_overhead() {
        let u = RawUnderlay {
            address: Some("2001:db8::1".parse().unwrap()),
            ..Default::default()
        };
        let c = compile(&u, &[vni_port("a", 1)], 1, 64).unwrap();
        assert_eq!(c.ports[0].mtu, 1430);
    }
}
