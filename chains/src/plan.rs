//! Validate a chain spec and compile it into one config file per function instance.
//!
//! How a chain becomes configs (docs/chains.md has the operator's view):
//!
//! - A chain is the element list `from, hop1, ..., hopN, to`. Two adjacent elements are
//!   joined by an L2 *link*: a function next to a network gets a port on that network; two
//!   adjacent functions get a transit VNI of their own, flooding to each other's VTEP only,
//!   with each other's MACs as static entries and only each other as allowed VTEPs.
//! - *Routed* elements (networks, routers, routed firewalls, load balancers) are joined by
//!   *segments*: a run of links through zero or more transparent firewalls, which bridge
//!   their two sides. A segment between two functions gets a /30 from the transit prefix;
//!   one between a function and a network puts the function on the network's subnet, at
//!   the address the spec gives it; one between two networks must join equal subnets.
//! - Every routed hop gets routes toward the chain's `to` side (its subnet, the VIPs of the
//!   load balancers further down, a default route if `to` has a gateway) via its downstream
//!   neighbour, and toward the `from` side likewise via its upstream one.
//! - A firewall's interfaces (routed) or ports (transparent) facing `from` form its zone
//!   `upstream`, those facing `to` its zone `downstream`; `inbound` is the policy from
//!   upstream to downstream, `outbound` the other way.
//!
//! Allocation follows the file's order (chains, then hops), so the same file always plans
//! the same way. Each planned config is then compiled by its VNF's own `compile`, and its
//! complaints are reported at the spec's lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use ipnetwork::Ipv4Network;
use overlay_io::daemon::locate::split_path;
use overlay_io::daemon::{ConfigError, Diagnostic, VnfApp};
use overlay_io::datapath::config::{RawPort, RawStaticMac, RawUnderlay};
use overlay_io::l3config::{
    RawBridge, RawFloating, RawForward, RawInterface, RawMasquerade, RawNat, RawRoute,
};
use vnf_firewall::policy::{RawZone, RawZonePolicy};

use crate::manifest::{Instance, Kind, Manifest};
use crate::spec::{self, Diagnostics, Function, Network, Settings, Spec, path};

/// VXLAN's overhead on an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet
/// 14), RFC 7348 §5.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The default transit prefix (RFC 6598 shared address space: never a tenant's own).
pub const DEFAULT_TRANSIT_PREFIX: &str = "100.64.0.0/24";
/// The default admin port of an instance.
pub const DEFAULT_ADMIN_PORT: u16 = 9100;

/// Options of `vnfctl plan`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prometheus's scrape interval in the generated scrape configuration.
    pub scrape_interval: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scrape_interval: "15s".into(),
        }
    }
}

/// One planned instance's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceConfig {
    /// vnf-router's.
    Router(vnf_router::config::RawConfig),
    /// vnf-firewall's.
    Firewall(vnf_firewall::config::RawConfig),
    /// vnf-lb's.
    Lb(vnf_lb::config::RawConfig),
}

/// A transit segment the planner allocated, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitLink {
    /// The two functions.
    pub ends: (String, String),
    /// Its VNI.
    pub vni: u32,
}

/// A compiled chain.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which instances run where.
    pub manifest: Manifest,
    /// Each instance's config, by instance name, in manifest order.
    pub configs: Vec<(String, InstanceConfig)>,
    /// Transit VNIs allocated.
    pub transit_links: Vec<TransitLink>,
    /// Transit subnets allocated: the two routed ends and their addresses.
    pub transit_subnets: Vec<(String, Ipv4Addr, String, Ipv4Addr)>,
    /// The Prometheus scrape configuration.
    pub prometheus: String,
    /// The underlay subnet of the functions' hosts (`underlay.subnet`), for VM images.
    pub underlay_subnet: Option<Ipv4Network>,
    /// The underlay's default gateway (`underlay.gateway`), for VM images.
    pub underlay_gateway: Option<Ipv4Addr>,
    /// VM images take their underlay address by DHCP (`underlay.dhcp`).
    pub underlay_dhcp: bool,
}

impl Plan {
    /// The files of the plan directory: name and contents, in a fixed order.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files = vec![(
            crate::manifest::MANIFEST.to_string(),
            format!(
                "# The plan of tenant `{}`, written by vnfctl: which instance runs where.\n{}",
                self.manifest.tenant,
                self.manifest.to_yaml()
            ),
        )];
        for (instance, (name, config)) in self.manifest.instances.iter().zip(&self.configs) {
            files.push((
                instance.config.clone(),
                render(&self.manifest.tenant, name, config),
            ));
        }
        files.push((
            crate::manifest::PROMETHEUS.to_string(),
            self.prometheus.clone(),
        ));
        files
    }

    /// A human summary: instances, transit allocations.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "tenant {}", self.manifest.tenant);
        for i in &self.manifest.instances {
            let _ = writeln!(
                out,
                "  {:<16} {:<9} underlay {:<15} admin {:<21} {}",
                i.name,
                i.kind.name(),
                i.host.to_string(),
                i.admin.to_string(),
                i.config
            );
        }
        for l in &self.transit_links {
            let _ = writeln!(
                out,
                "  transit VNI {:<9} {} <-> {}",
                l.vni, l.ends.0, l.ends.1
            );
        }
        for (a, aa, b, ba) in &self.transit_subnets {
            let _ = writeln!(out, "  transit subnet   {a} {aa}/30 <-> {b} {ba}/30");
        }
        out
    }
}

/// An instance's config file as text.
pub fn render(tenant: &str, name: &str, config: &InstanceConfig) -> String {
    let (binary, body) = match config {
        InstanceConfig::Router(c) => ("vnf-router", serde_saphyr::to_string(c)),
        InstanceConfig::Firewall(c) => ("vnf-firewall", serde_saphyr::to_string(c)),
        InstanceConfig::Lb(c) => ("vnf-lb", serde_saphyr::to_string(c)),
    };
    format!(
        "# {binary} config of instance `{name}` of tenant `{tenant}`, planned by vnfctl.\n\
         # Edit the chain file and run `vnfctl apply`, not this file.\n{}",
        body.unwrap_or_default()
    )
}

/// Parse, validate and plan `text` (the contents of `file`).
pub fn plan(file: &Path, text: &str, options: &Options) -> Result<Plan, Vec<Diagnostic>> {
    let (spec, mut diags) = spec::parse(file, text);
    let plan = Planner::new(&spec, &mut diags).run(options);
    match plan {
        Some(plan) if diags.is_empty() => Ok(plan),
        _ => Err(diags.sorted()),
    }
}

/// An element of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem<'a> {
    Net(&'a Network),
    Fun(&'a Function),
}

impl<'a> Elem<'a> {
    fn name(&self) -> &'a str {
        match self {
            Elem::Net(n) => &n.name,
            Elem::Fun(f) => &f.common.name,
        }
    }
    fn routed(&self) -> bool {
        match self {
            Elem::Net(_) => true,
            Elem::Fun(f) => !f.is_transparent(),
        }
    }
}

/// What is being built for one function.
#[derive(Debug, Default)]
struct Build {
    ports: Vec<RawPort>,
    bridges: Vec<RawBridge>,
    interfaces: Vec<RawInterface>,
    /// Planned routes: prefix -> (next hop, where it came from).
    routes: BTreeMap<Ipv4Network, (Ipv4Addr, Vec<String>)>,
    /// Zone members: interface names (routed) or port names (transparent).
    upstream: BTreeSet<String>,
    downstream: BTreeSet<String>,
    /// Network name -> the interface on it.
    on_network: BTreeMap<String, String>,
    /// Networks joined (directly or through transparent hops).
    joined: BTreeSet<String>,
}

struct Planner<'s, 'd> {
    spec: &'s Spec,
    diags: &'d mut Diagnostics,
    networks: BTreeMap<&'s str, (usize, &'s Network, Option<Ipv4Network>)>,
    functions: BTreeMap<&'s str, (usize, &'s Function)>,
    builds: BTreeMap<String, Build>,
    /// Transit VNI pool.
    vni_pool: Option<(u32, u32)>,
    next_vni: u32,
    /// Transit prefix and the next /30's index.
    transit_prefix: Option<Ipv4Network>,
    next_subnet: u32,
    transit_mtu: u32,
    links: BTreeMap<(String, String), u32>,
    link_order: Vec<TransitLink>,
    /// Segment between two routed functions -> their addresses (by name).
    segments: BTreeMap<(String, String), BTreeMap<String, Ipv4Addr>>,
    segment_order: Vec<(String, Ipv4Addr, String, Ipv4Addr)>,
    /// Pairs of networks bridged by transparent hops (may share a subnet).
    bridged: BTreeSet<(String, String)>,
    /// Some chain could not be walked (its own error said why): checks that need every
    /// chain are skipped.
    incomplete: bool,
    /// `underlay.subnet`, parsed.
    underlay_subnet: Option<Ipv4Network>,
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// A stable, locally administered MAC for interface `iface` of `function` (FNV-1a, so it
/// never changes between releases the way std's hasher may).
pub fn mac_for(tenant: &str, function: &str, iface: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant
        .bytes()
        .chain([0])
        .chain(function.bytes())
        .chain([0])
        .chain(iface.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

const NAME_RULE: &str = "use 1 to 32 letters, digits, `-` or `_`, starting with a letter or digit";

impl<'s, 'd> Planner<'s, 'd> {
    fn new(spec: &'s Spec, diags: &'d mut Diagnostics) -> Self {
        Planner {
            spec,
            diags,
            networks: BTreeMap::new(),
            functions: BTreeMap::new(),
            builds: BTreeMap::new(),
            vni_pool: None,
            next_vni: 0,
            transit_prefix: None,
            next_subnet: 0,
            transit_mtu: spec.underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
            links: BTreeMap::new(),
            link_order: Vec::new(),
            segments: BTreeMap::new(),
            segment_order: Vec::new(),
            bridged: BTreeSet::new(),
            incomplete: false,
            underlay_subnet: None,
        }
    }

    fn err(&mut self, at: &[String], message: impl std::fmt::Display) {
        self.diags.error(at, message);
    }

    fn run(mut self, options: &Options) -> Option<Plan> {
        self.check_top();
        self.check_networks();
        self.check_functions();
        self.walk_chains();
        self.check_addresses_used();
        self.check_overlaps();
        if !self.diags.is_empty() {
            return None;
        }
        self.assemble(options)
    }

    fn check_top(&mut self) {
        let spec = self.spec;
        if !spec.tenant.is_empty() && !is_name(&spec.tenant) {
            self.err(
                &path(&["tenant"]),
                format!("`{}`: {NAME_RULE}", spec.tenant),
            );
        }
        let u = &spec.underlay;
        if !(576 + VXLAN_OVERHEAD..=65535).contains(&u.mtu) {
            self.err(
                &path(&["underlay", "mtu"]),
                format!(
                    "{}: use {}..=65535 (VXLAN needs room for a 576-byte packet and its 50 bytes)",
                    u.mtu,
                    576 + VXLAN_OVERHEAD
                ),
            );
        }
        if u.port == 0 {
            self.err(
                &path(&["underlay", "port"]),
                "port 0: use 4789 (RFC 7348) or another UDP port",
            );
        }
        if let Some(text) = &u.subnet {
            match text.parse::<Ipv4Network>() {
                Ok(n) if n.network() == n.ip() && n.prefix() <= 30 => {
                    self.underlay_subnet = Some(n)
                }
                Ok(n) => self.err(
                    &path(&["underlay", "subnet"]),
                    format!(
                        "{text}: write the subnet itself, e.g. {}/{}, of at least 4 addresses",
                        n.network(),
                        n.prefix().min(30)
                    ),
                ),
                Err(e) => self.err(&path(&["underlay", "subnet"]), format!("`{text}`: {e}")),
            }
        }
        if let Some(gw) = u.gateway
            && let Some(n) = self.underlay_subnet
            && !n.contains(gw)
        {
            self.err(
                &path(&["underlay", "gateway"]),
                format!("gateway {gw} is outside the underlay subnet {n}"),
            );
        }
        if let Some(v) = &spec.transit.vnis {
            match parse_range(v) {
                Some((a, b)) if a >= 1 && b <= 0xff_ffff && a <= b => {
                    self.vni_pool = Some((a, b));
                    self.next_vni = a;
                }
                _ => self.err(
                    &path(&["transit", "vnis"]),
                    format!("`{v}`: write FIRST-LAST within 1..=16777215, e.g. 16000000-16000099"),
                ),
            }
        }
        let prefix = spec
            .transit
            .prefix
            .as_deref()
            .unwrap_or(DEFAULT_TRANSIT_PREFIX);
        match prefix.parse::<Ipv4Network>() {
            Ok(p) if p.prefix() <= 30 && p.network() == p.ip() => self.transit_prefix = Some(p),
            Ok(p) if p.prefix() <= 30 => self.err(
                &path(&["transit", "prefix"]),
                format!(
                    "{prefix} has host bits set: did you mean {}/{}?",
                    p.network(),
                    p.prefix()
                ),
            ),
            Ok(_) => self.err(
                &path(&["transit", "prefix"]),
                format!("{prefix} is too small: transit subnets are /30s, use /30 or larger"),
            ),
            Err(e) => self.err(&path(&["transit", "prefix"]), format!("`{prefix}`: {e}")),
        }
        if let Some(m) = spec.transit.mtu {
            let max = u.mtu.saturating_sub(VXLAN_OVERHEAD);
            if !(576..=max).contains(&m) {
                self.err(
                    &path(&["transit", "mtu"]),
                    format!("MTU {m} does not fit the underlay's {} with {VXLAN_OVERHEAD} bytes of VXLAN: use 576..={max}", u.mtu),
                );
            }
            self.transit_mtu = m;
        }
    }

    fn check_networks(&mut self) {
        let spec = self.spec;
        let mut vnis: BTreeMap<u64, String> = BTreeMap::new();
        for (i, n) in &spec.networks {
            let at = |rest: &[&str]| {
                let mut p = path(&["networks".to_string(), i.to_string()]);
                p.extend(rest.iter().map(|s| s.to_string()));
                p
            };
            if !is_name(&n.name) {
                self.err(&at(&["name"]), format!("`{}`: {NAME_RULE}", n.name));
            }
            if self.networks.contains_key(n.name.as_str()) {
                self.err(
                    &at(&["name"]),
                    format!("network `{}` is defined twice", n.name),
                );
                continue;
            }
            let subnet = match n.subnet.parse::<Ipv4Network>() {
                Ok(s) if s.network() != s.ip() => {
                    self.err(
                        &at(&["subnet"]),
                        format!(
                            "{} has host bits set: did you mean {}/{}?",
                            n.subnet,
                            s.network(),
                            s.prefix()
                        ),
                    );
                    None
                }
                Ok(s) if s.prefix() > 30 => {
                    self.err(
                        &at(&["subnet"]),
                        format!("{}: a network needs at least a /30", n.subnet),
                    );
                    None
                }
                Ok(s) => Some(s),
                Err(e) => {
                    self.err(&at(&["subnet"]), format!("`{}`: {e}", n.subnet));
                    None
                }
            };
            match (&n.vni, &n.external) {
                (Some(_), Some(_)) => self.err(
                    &at(&["external"]),
                    "a network is either an overlay segment (`vni`) or `external`, not both",
                ),
                (None, None) => self.err(
                    &at(&[]),
                    "say what the network is: `vni` (an overlay segment) or `external` (a VLAN or an interface)",
                ),
                (Some(vni), None) => {
                    if !(1..=0xff_ffff).contains(vni) {
                        self.err(&at(&["vni"]), format!("VNI {vni} is outside 1..=16777215"));
                    } else if let Some(other) = vnis.get(vni) {
                        self.err(&at(&["vni"]), format!("VNI {vni} is already network `{other}`'s"));
                    } else {
                        vnis.insert(*vni, n.name.clone());
                    }
                    if let Some((a, b)) = self.vni_pool
                        && (u64::from(a)..=u64::from(b)).contains(vni)
                    {
                        self.err(&at(&["vni"]), format!("VNI {vni} is inside the transit pool {a}-{b}"));
                    }
                    let mtu = n.mtu.unwrap_or(spec.underlay.mtu.saturating_sub(VXLAN_OVERHEAD));
                    let max = spec.underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
                    if mtu > max {
                        self.err(
                            &at(&["mtu"]),
                            format!("MTU {mtu} does not fit the underlay's {} with {VXLAN_OVERHEAD} bytes of VXLAN: at most {max}", spec.underlay.mtu),
                        );
                    }
                    let mut seen = BTreeSet::new();
                    for (k, v) in n.vteps.iter().enumerate() {
                        if !seen.insert(*v) {
                            self.err(&at(&["vteps", &k.to_string()]), format!("VTEP {v} is listed twice"));
                        }
                        if v.is_unspecified() || v.is_broadcast() || v.is_multicast() {
                            self.err(&at(&["vteps", &k.to_string()]), format!("{v} is not a VTEP's unicast address"));
                        }
                    }
                }
                (None, Some(ext)) => {
                    if !n.vteps.is_empty() {
                        self.err(&at(&["vteps"]), "`vteps` are for overlay (`vni`) networks");
                    }
                    match (&ext.trunk, &ext.vlan, &ext.interface) {
                        (Some(_), Some(vlan), None) => {
                            if !(1..=4094).contains(vlan) {
                                self.err(&at(&["external", "vlan"]), format!("VLAN {vlan} is outside 1..=4094"));
                            }
                        }
                        (None, None, Some(_)) => {}
                        (Some(_), None, None) => self.err(&at(&["external"]), "a `trunk` needs its `vlan`"),
                        (None, Some(_), None) => self.err(&at(&["external"]), "a `vlan` needs its `trunk`"),
                        _ => self.err(
                            &at(&["external"]),
                            "write `{trunk: IFACE, vlan: ID}` for a VLAN or `{interface: IFACE}` for untagged frames",
                        ),
                    }
                    if let Some(m) = n.mtu
                        && !(576..=9000).contains(&m)
                    {
                        self.err(&at(&["mtu"]), format!("MTU {m}: use 576..=9000"));
                    }
                }
            }
            if let Some(m) = n.mtu
                && m < 576
            {
                self.err(
                    &at(&["mtu"]),
                    format!("MTU {m} is below IPv4's minimum of 576 a host must accept (RFC 791)"),
                );
            }
            if let (Some(gw), Some(s)) = (n.gateway, subnet) {
                if !s.contains(gw) {
                    self.err(
                        &at(&["gateway"]),
                        format!("gateway {gw} is outside the network's subnet {s}"),
                    );
                } else if gw == s.network() || gw == s.broadcast() {
                    self.err(
                        &at(&["gateway"]),
                        format!(
                            "gateway {gw} is the subnet's {} address",
                            if gw == s.network() {
                                "network"
                            } else {
                                "broadcast"
                            }
                        ),
                    );
                }
            }
            self.networks.insert(&n.name, (*i, n, subnet));
        }
    }

    fn check_functions(&mut self) {
        let spec = self.spec;
        let mut hosts: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let mut admins: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let vteps: BTreeMap<Ipv4Addr, &str> = spec
            .networks
            .iter()
            .flat_map(|(_, n)| n.vteps.iter().map(move |v| (*v, n.name.as_str())))
            .collect();
        for (i, f) in &spec.functions {
            let c = &f.common;
            let at = |rest: &[&str]| {
                let mut p = path(&["functions".to_string(), i.to_string()]);
                p.extend(rest.iter().map(|s| s.to_string()));
                p
            };
            if !is_name(&c.name) {
                self.err(&at(&["name"]), format!("`{}`: {NAME_RULE}", c.name));
            }
            if self.functions.contains_key(c.name.as_str()) {
                self.err(
                    &at(&["name"]),
                    format!("function `{}` is defined twice", c.name),
                );
                continue;
            }
            if self.networks.contains_key(c.name.as_str()) {
                self.err(&at(&["name"]), format!("`{}` is already a network's name: networks and functions need distinct names", c.name));
            }
            if c.host.is_unspecified() || c.host.is_broadcast() || c.host.is_multicast() {
                self.err(
                    &at(&["host"]),
                    format!("{} is not a host's unicast address", c.host),
                );
            } else if let Some(other) = hosts.get(&c.host) {
                self.err(&at(&["host"]), format!("host {} is already function `{other}`'s: each instance has its own underlay address", c.host));
            } else {
                hosts.insert(c.host, c.name.clone());
            }
            if let Some(n) = self.underlay_subnet
                && !n.contains(c.host)
            {
                self.err(
                    &at(&["host"]),
                    format!("host {} is outside the underlay subnet {n}", c.host),
                );
            }
            if let Some(net) = vteps.get(&c.host) {
                self.err(&at(&["host"]), format!("host {} is a VTEP of network `{net}`: a function has an underlay address of its own", c.host));
            }
            let admin = c
                .admin
                .unwrap_or(SocketAddr::new(c.host.into(), DEFAULT_ADMIN_PORT));
            if let Some(other) = admins.get(&admin) {
                self.err(
                    &at(&["admin"]),
                    format!("admin address {admin} is already function `{other}`'s"),
                );
            } else {
                admins.insert(admin, c.name.clone());
            }
            if let Some(w) = c.workers
                && !(1..=64).contains(&w)
            {
                self.err(&at(&["workers"]), format!("{w} workers: use 1..=64"));
            }
            if let Settings::Firewall(fw) = &f.settings
                && let Some(mode) = &fw.mode
                && mode != "routed"
                && mode != "transparent"
            {
                self.err(
                    &at(&["mode"]),
                    format!("mode `{mode}`: use `routed` or `transparent`"),
                );
            }
            if f.is_transparent() && !c.addresses.is_empty() {
                self.err(&at(&["addresses"]), "a transparent firewall has no addresses: it forwards frames between its two sides");
            }
            for (net, a) in &c.addresses {
                let Some((_, _, subnet)) = self.networks.get(net.as_str()).copied() else {
                    if !spec.broken_names.contains(net) {
                        self.err(&at(&["addresses", net]), format!("unknown network `{net}`"));
                    }
                    continue;
                };
                if let Some(s) = subnet {
                    if !s.contains(*a) {
                        self.err(
                            &at(&["addresses", net]),
                            format!("{a} is outside network `{net}`'s subnet {s}"),
                        );
                    } else if *a == s.network() || *a == s.broadcast() {
                        self.err(
                            &at(&["addresses", net]),
                            format!(
                                "{a} is the {} address of {s}",
                                if *a == s.network() {
                                    "network"
                                } else {
                                    "broadcast"
                                }
                            ),
                        );
                    }
                }
            }
            self.functions.insert(&c.name, (*i, f));
            self.builds.insert(c.name.clone(), Build::default());
        }
    }

    fn walk_chains(&mut self) {
        let spec = self.spec;
        let mut names = BTreeSet::new();
        for (ci, chain) in &spec.chains {
            let at = |rest: &[&str]| {
                let mut p = path(&["chains".to_string(), ci.to_string()]);
                p.extend(rest.iter().map(|s| s.to_string()));
                p
            };
            if !is_name(&chain.name) {
                self.err(&at(&["name"]), format!("`{}`: {NAME_RULE}", chain.name));
            }
            if !names.insert(chain.name.as_str()) {
                self.err(
                    &at(&["name"]),
                    format!("chain `{}` is defined twice", chain.name),
                );
            }
            let mut ok = true;
            let mut elems = Vec::new();
            for (field, net) in [("from", &chain.from), ("to", &chain.to)] {
                match self.networks.get(net.as_str()) {
                    Some((_, n, _)) => elems.push(Elem::Net(n)),
                    None => {
                        ok = false;
                        if !spec.broken_names.contains(net) {
                            let hint = if self.functions.contains_key(net.as_str()) {
                                format!(
                                    "`{net}` is a function: `{field}` names a network, functions go in `hops`"
                                )
                            } else {
                                format!("unknown network `{net}`")
                            };
                            self.err(&at(&[field]), hint);
                        }
                    }
                }
            }
            if chain.from == chain.to {
                self.err(
                    &at(&["to"]),
                    format!(
                        "a chain goes from one network to another, not back to `{}`",
                        chain.from
                    ),
                );
                ok = false;
            }
            if chain.hops.is_empty() {
                self.err(&at(&["hops"]), "a chain needs at least one hop");
                ok = false;
            }
            let mut seen = BTreeSet::new();
            let mut hops = Vec::new();
            for (k, h) in chain.hops.iter().enumerate() {
                match self.functions.get(h.as_str()) {
                    Some((_, f)) => hops.push(Elem::Fun(f)),
                    None => {
                        ok = false;
                        if !spec.broken_names.contains(h) {
                            let hint = if self.networks.contains_key(h.as_str()) {
                                format!("`{h}` is a network: hops are functions")
                            } else {
                                format!("unknown function `{h}`")
                            };
                            self.err(&at(&["hops", &k.to_string()]), hint);
                        }
                    }
                }
                if !seen.insert(h) {
                    self.err(
                        &at(&["hops", &k.to_string()]),
                        format!("`{h}` is already a hop of this chain"),
                    );
                    ok = false;
                }
            }
            if !ok {
                self.incomplete = true;
                continue;
            }
            let (from, to) = (elems[0], elems[1]);
            let mut all = vec![from];
            all.extend(hops);
            all.push(to);
            self.plan_chain(&at(&[]), &all);
        }
    }

    /// Wire one chain whose elements all exist.
    fn plan_chain(&mut self, at: &[String], elems: &[Elem<'s>]) {
        let hop_path = |k: usize| {
            let mut p = at.to_vec();
            p.push("hops".into());
            p.push(k.saturating_sub(1).to_string());
            p
        };
        // Links.
        for k in 0..elems.len() - 1 {
            let (a, b) = (elems[k], elems[k + 1]);
            match (a, b) {
                (Elem::Fun(f), Elem::Fun(g)) => {
                    let Some(vni) = self.link_vni(f, g, &hop_path(k + 1)) else {
                        return;
                    };
                    for (me, peer) in [(f, g), (g, f)] {
                        let port = RawPort {
                            name: peer.common.name.clone(),
                            vni: Some(u64::from(vni)),
                            mtu: Some(self.transit_mtu),
                            flood: vec![peer.common.host.into()],
                            allowed_vteps: Some(vec![peer.common.host.into()]),
                            ..RawPort::default()
                        };
                        self.add_port(&me.common.name, port, &hop_path(k + 1));
                    }
                }
                (Elem::Fun(f), Elem::Net(n)) | (Elem::Net(n), Elem::Fun(f)) => {
                    let port = self.network_port(n, f);
                    let p = hop_path(if matches!(a, Elem::Fun(_)) { k } else { k + 1 });
                    self.add_port(&f.common.name, port, &p);
                    if let Some(b) = self.builds.get_mut(&f.common.name) {
                        b.joined.insert(n.name.clone());
                    }
                }
                (Elem::Net(_), Elem::Net(_)) => {}
            }
        }
        // Transparent hops bridge their two sides; their zones name ports.
        for k in 1..elems.len() - 1 {
            if let Elem::Fun(t) = elems[k]
                && t.is_transparent()
            {
                let (up, down) = (
                    elems[k - 1].name().to_string(),
                    elems[k + 1].name().to_string(),
                );
                let build = self.builds.entry(t.common.name.clone()).or_default();
                let exists = build
                    .bridges
                    .iter()
                    .any(|b| b.ports.contains(&up) && b.ports.contains(&down));
                let clash = build.bridges.iter().find(|b| {
                    (b.ports.contains(&up) || b.ports.contains(&down))
                        && !(b.ports.contains(&up) && b.ports.contains(&down))
                });
                if let Some(b) = clash {
                    let msg = format!(
                        "transparent `{}` already bridges {} in another chain: a port is in one wire only",
                        t.common.name,
                        b.ports.join(" and ")
                    );
                    self.err(&hop_path(k), msg);
                    continue;
                }
                if !exists {
                    let name = format!("wire{}", build.bridges.len() + 1);
                    build.bridges.push(RawBridge {
                        name,
                        ports: vec![up.clone(), down.clone()],
                        ..RawBridge::default()
                    });
                }
                build.upstream.insert(up);
                build.downstream.insert(down);
            }
        }
        // Routed segments.
        let routed: Vec<usize> = (0..elems.len()).filter(|&k| elems[k].routed()).collect();
        for w in routed.windows(2) {
            let (i, j) = (w[0], w[1]);
            match (elems[i], elems[j]) {
                (Elem::Net(a), Elem::Net(b)) => {
                    let sa = self.networks.get(a.name.as_str()).and_then(|x| x.2);
                    let sb = self.networks.get(b.name.as_str()).and_then(|x| x.2);
                    if let (Some(sa), Some(sb)) = (sa, sb) {
                        if sa != sb {
                            let msg = format!(
                                "only transparent hops between networks `{}` ({sa}) and `{}` ({sb}): a transparent hop joins one subnet, so the two networks need the same subnet (or put a routed hop between them)",
                                a.name, b.name
                            );
                            self.err(&hop_path(i + 1), msg);
                        } else {
                            self.bridged.insert(key(&a.name, &b.name));
                        }
                    }
                }
                (Elem::Net(n), Elem::Fun(g)) => {
                    let port = elems[j - 1].name().to_string();
                    self.network_interface(g, n, &port, true, &hop_path(j));
                }
                (Elem::Fun(f), Elem::Net(n)) => {
                    let port = elems[i + 1].name().to_string();
                    self.network_interface(f, n, &port, false, &hop_path(i));
                }
                (Elem::Fun(f), Elem::Fun(g)) => {
                    let transparent: Vec<&Function> = elems[i + 1..j]
                        .iter()
                        .filter_map(|e| match e {
                            Elem::Fun(t) => Some(*t),
                            Elem::Net(_) => None,
                        })
                        .collect();
                    self.transit_segment(
                        f,
                        g,
                        elems[i + 1].name(),
                        elems[j - 1].name(),
                        &transparent,
                        &hop_path(j),
                    );
                }
            }
        }
        // Routes.
        let (Elem::Net(from), Elem::Net(to)) = (elems[0], elems[elems.len() - 1]) else {
            return;
        };
        for (r, &k) in routed.iter().enumerate() {
            let Elem::Fun(f) = elems[k] else { continue };
            let up = elems[routed[r - 1]];
            let down = elems[routed[r + 1]];
            let mut upstream = Vec::new();
            if let Some(s) = self.subnet(from) {
                upstream.push(s);
            }
            if from.gateway.is_some() {
                upstream.push(default_route());
            }
            let mut downstream = Vec::new();
            if let Some(s) = self.subnet(to) {
                downstream.push(s);
            }
            for e in &elems[k + 1..] {
                if let Elem::Fun(Function {
                    settings: Settings::Lb(lb),
                    ..
                }) = e
                {
                    for s in &lb.services {
                        downstream.push(Ipv4Network::from(s.vip));
                    }
                }
            }
            if to.gateway.is_some() {
                downstream.push(default_route());
            }
            for (neighbour, prefixes) in [(up, upstream), (down, downstream)] {
                for prefix in prefixes {
                    let via = match neighbour {
                        Elem::Net(n) if prefix == default_route() => n.gateway,
                        Elem::Net(_) => None, // connected
                        Elem::Fun(g) => self
                            .segments
                            .get(&key(&f.common.name, &g.common.name))
                            .and_then(|s| s.get(&g.common.name))
                            .copied(),
                    };
                    if let Some(via) = via {
                        self.add_route(f, prefix, via, &hop_path(k));
                    }
                }
            }
        }
    }

    fn subnet(&self, n: &Network) -> Option<Ipv4Network> {
        self.networks.get(n.name.as_str()).and_then(|x| x.2)
    }

    fn add_route(&mut self, f: &Function, prefix: Ipv4Network, via: Ipv4Addr, at: &[String]) {
        let Some(build) = self.builds.get_mut(&f.common.name) else {
            return;
        };
        // A connected prefix needs no route.
        let connected = f.common.addresses.iter().any(|(net, _)| {
            build.on_network.contains_key(net)
                && self.networks.get(net.as_str()).and_then(|x| x.2) == Some(prefix)
        });
        if connected {
            return;
        }
        match build.routes.get(&prefix) {
            Some((old, _)) if *old == via => {}
            Some((old, _)) => {
                let msg = format!(
                    "this chain routes {prefix} at `{}` via {via}, another chain via {old}: a prefix leaves a function one way",
                    f.common.name
                );
                self.err(at, msg);
            }
            None => {
                build.routes.insert(prefix, (via, at.to_vec()));
            }
        }
    }

    fn network_port(&self, n: &Network, me: &Function) -> RawPort {
        let mut port = RawPort {
            name: n.name.clone(),
            mtu: n.mtu,
            ..RawPort::default()
        };
        if let Some(vni) = n.vni {
            port.vni = Some(vni);
            // The hypervisors' VTEPs and every other function on the network.
            let mut flood: Vec<std::net::IpAddr> = n.vteps.iter().map(|v| (*v).into()).collect();
            for f in self.spec.functions_on(&n.name) {
                if f.common.name != me.common.name {
                    flood.push(f.common.host.into());
                }
            }
            port.flood = flood;
        } else if let Some(ext) = &n.external {
            port.trunk = ext.trunk.clone();
            port.vlan = ext.vlan;
            port.interface = ext.interface.clone();
        }
        port
    }

    fn add_port(&mut self, function: &str, port: RawPort, at: &[String]) {
        let Some(build) = self.builds.get_mut(function) else {
            return;
        };
        match build.ports.iter().find(|p| p.name == port.name) {
            Some(p) if *p == port => {}
            Some(_) => {
                let msg = format!(
                    "`{function}` would have two different ports named `{}`",
                    port.name
                );
                self.err(at, msg);
            }
            None => build.ports.push(port),
        }
    }

    fn link_vni(&mut self, f: &Function, g: &Function, at: &[String]) -> Option<u32> {
        let k = key(&f.common.name, &g.common.name);
        if let Some(v) = self.links.get(&k) {
            return Some(*v);
        }
        let Some((_, last)) = self.vni_pool else {
            let msg = format!(
                "`{}` and `{}` are adjacent hops and need a transit segment: give the tenant a pool with `transit: {{vnis: FIRST-LAST}}`",
                f.common.name, g.common.name
            );
            self.err(&path(&["transit"]), msg.clone());
            self.err(at, msg);
            return None;
        };
        // Skip VNIs the tenant's networks use (checked too, but keep allocation sane).
        let used: BTreeSet<u64> = self
            .spec
            .networks
            .iter()
            .filter_map(|(_, n)| n.vni)
            .collect();
        while used.contains(&u64::from(self.next_vni)) && self.next_vni <= last {
            self.next_vni += 1;
        }
        if self.next_vni > last || self.next_vni == 0 {
            self.err(
                &path(&["transit", "vnis"]),
                "the transit VNI pool is exhausted: make it larger",
            );
            return None;
        }
        let vni = self.next_vni;
        self.next_vni += 1;
        self.links.insert(k.clone(), vni);
        self.link_order.push(TransitLink {
            ends: (f.common.name.clone(), g.common.name.clone()),
            vni,
        });
        Some(vni)
    }

    /// Routed `g` on network `n` through port `port`.
    fn network_interface(
        &mut self,
        g: &Function,
        n: &Network,
        port: &str,
        upstream: bool,
        at: &[String],
    ) {
        let Some(addr) = g.common.addresses.get(&n.name).copied() else {
            let mut p = path(&[
                "functions".to_string(),
                self.functions
                    .get(g.common.name.as_str())
                    .map(|x| x.0)
                    .unwrap_or(0)
                    .to_string(),
            ]);
            p.push("addresses".into());
            let msg = format!(
                "`{}` is a routed hop on network `{}` and needs an address there: add `addresses: {{{}: ...}}` to it",
                g.common.name, n.name, n.name
            );
            self.err(&p, msg.clone());
            self.err(at, msg);
            return;
        };
        let Some(subnet) = self.subnet(n) else { return };
        let tenant = self.spec.tenant.clone();
        let Some(build) = self.builds.get_mut(&g.common.name) else {
            return;
        };
        build.joined.insert(n.name.clone());
        let iface = RawInterface {
            name: n.name.clone(),
            port: Some(port.to_string()),
            bridge: None,
            mac: Some(mac_text(mac_for(&tenant, &g.common.name, &n.name))),
            addresses: vec![format!("{addr}/{}", subnet.prefix())],
            mtu: None,
        };
        if let Some(old) = build.interfaces.iter().find(|i| i.name == iface.name) {
            if *old != iface {
                let msg = format!(
                    "`{}` reaches network `{}` two different ways",
                    g.common.name, n.name
                );
                self.err(at, msg);
                return;
            }
        } else {
            build.interfaces.push(iface);
        }
        build.on_network.insert(n.name.clone(), n.name.clone());
        if upstream {
            build.upstream.insert(n.name.clone());
        } else {
            build.downstream.insert(n.name.clone());
        }
    }

    /// The /30 between routed functions `f` (upstream) and `g`, through transparent hops.
    fn transit_segment(
        &mut self,
        f: &Function,
        g: &Function,
        f_port: &str,
        g_port: &str,
        transparent: &[&Function],
        at: &[String],
    ) {
        let k = key(&f.common.name, &g.common.name);
        let addrs = match self.segments.get(&k) {
            Some(a) => a.clone(),
            None => {
                let Some(prefix) = self.transit_prefix else {
                    return;
                };
                let base = u32::from(prefix.network()) + 4 * self.next_subnet;
                if !prefix.contains(Ipv4Addr::from(base + 3))
                    || prefix.size() < 4 * (self.next_subnet + 1)
                {
                    self.err(
                        &path(&["transit", "prefix"]),
                        format!("the transit prefix {prefix} is exhausted: make it larger"),
                    );
                    return;
                }
                self.next_subnet += 1;
                let (fa, ga) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
                let mut m = BTreeMap::new();
                m.insert(f.common.name.clone(), fa);
                m.insert(g.common.name.clone(), ga);
                self.segments.insert(k, m.clone());
                self.segment_order
                    .push((f.common.name.clone(), fa, g.common.name.clone(), ga));
                m
            }
        };
        let tenant = self.spec.tenant.clone();
        let mut macs = BTreeMap::new();
        for (me, peer, port, up) in [(f, g, f_port, false), (g, f, g_port, true)] {
            let Some(addr) = addrs.get(&me.common.name).copied() else {
                return;
            };
            let mac = mac_for(&tenant, &me.common.name, &peer.common.name);
            macs.insert(me.common.name.clone(), mac);
            let Some(build) = self.builds.get_mut(&me.common.name) else {
                return;
            };
            let iface = RawInterface {
                name: peer.common.name.clone(),
                port: Some(port.to_string()),
                bridge: None,
                mac: Some(mac_text(mac)),
                addresses: vec![format!("{addr}/30")],
                mtu: None,
            };
            if let Some(old) = build.interfaces.iter().find(|i| i.name == iface.name) {
                if *old != iface {
                    let msg = format!(
                        "`{}` and `{}` are joined two different ways (through different transparent hops)",
                        f.common.name, g.common.name
                    );
                    self.err(at, msg);
                    return;
                }
            } else {
                build.interfaces.push(iface);
            }
            if up {
                build.upstream.insert(peer.common.name.clone());
            } else {
                build.downstream.insert(peer.common.name.clone());
            }
        }
        // Static forwarding entries: along the wire, each routed end's MAC is behind the
        // neighbouring element's VTEP, on every port of the way.
        let mut chain: Vec<&Function> = vec![f];
        chain.extend(transparent.iter().copied());
        chain.push(g);
        for w in 0..chain.len() {
            let me = chain[w];
            let mut entries: Vec<(String, RawStaticMac)> = Vec::new();
            if w > 0
                && let Some(mac) = macs.get(&f.common.name)
            {
                entries.push((
                    chain[w - 1].common.name.clone(),
                    RawStaticMac {
                        mac: mac_text(*mac),
                        vtep: chain[w - 1].common.host.into(),
                    },
                ));
            }
            if w + 1 < chain.len()
                && let Some(mac) = macs.get(&g.common.name)
            {
                entries.push((
                    chain[w + 1].common.name.clone(),
                    RawStaticMac {
                        mac: mac_text(*mac),
                        vtep: chain[w + 1].common.host.into(),
                    },
                ));
            }
            let Some(build) = self.builds.get_mut(&me.common.name) else {
                continue;
            };
            for (port, entry) in entries {
                if let Some(p) = build.ports.iter_mut().find(|p| p.name == port)
                    && !p.static_macs.contains(&entry)
                {
                    p.static_macs.push(entry);
                }
            }
        }
    }

    /// Every address given must be on a network the function joins.
    fn check_addresses_used(&mut self) {
        let spec = self.spec;
        let mut owners: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for (_, n) in &spec.networks {
            if let Some(gw) = n.gateway {
                owners.insert(gw, format!("network `{}`'s gateway", n.name));
            }
        }
        for (i, f) in &spec.functions {
            let Some(build) = self.builds.get(&f.common.name) else {
                continue;
            };
            let joined = build.joined.clone();
            for (net, a) in &f.common.addresses {
                let at = path(&[
                    "functions".to_string(),
                    i.to_string(),
                    "addresses".into(),
                    net.clone(),
                ]);
                if self.networks.contains_key(net.as_str())
                    && !joined.contains(net)
                    && !self.incomplete
                {
                    self.err(&at, format!("`{}` has an address on network `{net}`, but no chain puts it next to `{net}`", f.common.name));
                }
                if let Some(o) = owners.get(a) {
                    self.err(&at, format!("{a} is already {o}"));
                } else {
                    owners.insert(*a, format!("function `{}`'s address", f.common.name));
                }
            }
            if let Settings::Lb(lb) = &f.settings {
                for (k, s) in lb.services.iter().enumerate() {
                    if let Some(p) = self.transit_prefix
                        && p.contains(s.vip)
                    {
                        let at = path(&[
                            "functions".to_string(),
                            i.to_string(),
                            "services".into(),
                            k.to_string(),
                            "vip".into(),
                        ]);
                        self.err(
                            &at,
                            format!("VIP {} is inside the transit prefix {p}", s.vip),
                        );
                    }
                }
            }
        }
    }

    /// Subnets may not overlap (unless bridged by transparent hops): one sweep over the
    /// subnets sorted by first address, so a file of many networks stays fast.
    fn check_overlaps(&mut self) {
        let mut nets: Vec<(usize, String, Ipv4Network)> = self
            .networks
            .values()
            .filter_map(|(i, n, s)| s.map(|s| (*i, n.name.clone(), s)))
            .collect();
        nets.sort_by_key(|(i, _, s)| (u32::from(s.network()), std::cmp::Reverse(s.prefix()), *i));
        // The subnet reaching furthest so far: any subnet starting before its end is inside it.
        let mut widest: Option<usize> = None;
        let mut found = Vec::new();
        for (k, (_, name, subnet)) in nets.iter().enumerate() {
            if let Some(w) = widest {
                let (_, wname, wsubnet) = &nets[w];
                if u32::from(subnet.network()) <= u32::from(wsubnet.broadcast())
                    && !self.bridged.contains(&key(wname, name))
                {
                    found.push((w, k));
                }
                if u32::from(subnet.broadcast()) > u32::from(wsubnet.broadcast()) {
                    widest = Some(k);
                }
            } else {
                widest = Some(k);
            }
        }
        for (a, b) in found {
            // Reported at the one written later, naming the earlier.
            let (first, second) = if nets[a].0 < nets[b].0 {
                (&nets[a], &nets[b])
            } else {
                (&nets[b], &nets[a])
            };
            let at = path(&[
                "networks".to_string(),
                second.0.to_string(),
                "subnet".into(),
            ]);
            let msg = format!(
                "subnet {} of `{}` overlaps subnet {} of `{}`",
                second.2, second.1, first.2, first.1
            );
            self.err(&at, msg);
        }
        if let Some(t) = self.transit_prefix {
            for (i, name, subnet) in &nets {
                if t.contains(subnet.network()) || subnet.contains(t.network()) {
                    let at = path(&["networks".to_string(), i.to_string(), "subnet".into()]);
                    self.err(&at, format!("subnet {subnet} of `{name}` overlaps the transit prefix {t}: set `transit.prefix` elsewhere"));
                }
            }
        }
    }

    /// Build each instance's config, compile it with its VNF, write the scrape config.
    fn assemble(mut self, options: &Options) -> Option<Plan> {
        let spec = self.spec;
        let mut instances = Vec::new();
        let mut configs = Vec::new();
        for (i, f) in &spec.functions {
            let Some(build) = self.builds.remove(&f.common.name) else {
                continue;
            };
            let c = &f.common;
            let base = path(&["functions".to_string(), i.to_string()]);
            let underlay = RawUnderlay {
                address: Some(c.host.into()),
                port: spec.underlay.port,
                mtu: spec.underlay.mtu,
                ..RawUnderlay::default()
            };
            let routes: Vec<RawRoute> = build
                .routes
                .iter()
                .map(|(p, (via, _))| RawRoute {
                    prefix: p.to_string(),
                    via: vec![*via],
                    action: None,
                })
                .collect();
            let planned_routes = routes.len();
            // Generated path prefix -> spec path prefix, for the VNF's complaints.
            let mut map: Vec<(Vec<String>, Vec<String>)> = Vec::new();
            let sub = |rest: &[&str]| {
                let mut p = base.clone();
                p.extend(rest.iter().map(|s| s.to_string()));
                p
            };
            let workers = c.workers.unwrap_or(1);
            let config = match &f.settings {
                Settings::Router(r) => {
                    let mut routes = routes;
                    routes.extend(r.routes.iter().cloned());
                    for k in 0..r.routes.len() {
                        map.push((
                            path(&["routes".to_string(), (planned_routes + k).to_string()]),
                            sub(&["routes", &k.to_string()]),
                        ));
                    }
                    let nat = self.router_nat(f, &build, &base);
                    map.push((path(&["nat", "masquerade"]), sub(&["nat", "masquerade"])));
                    map.push((path(&["nat", "floating"]), sub(&["nat", "floating"])));
                    map.push((
                        path(&["nat", "port_forwards"]),
                        sub(&["nat", "port_forwards"]),
                    ));
                    map.push((path(&["nat"]), sub(&["nat"])));
                    InstanceConfig::Router(vnf_router::config::RawConfig {
                        underlay,
                        ports: build.ports,
                        bridges: build.bridges,
                        interfaces: build.interfaces,
                        routes,
                        nat,
                        workers,
                        ..vnf_router::config::RawConfig::default()
                    })
                }
                Settings::Firewall(fw) => {
                    let mut zones = Vec::new();
                    for (name, members) in [
                        ("upstream", &build.upstream),
                        ("downstream", &build.downstream),
                    ] {
                        if !members.is_empty() {
                            zones.push(RawZone {
                                name: name.into(),
                                interfaces: members.iter().cloned().collect(),
                            });
                        }
                    }
                    let both: BTreeSet<&String> =
                        build.upstream.intersection(&build.downstream).collect();
                    if let Some(x) = both.iter().next() {
                        self.err(&base, format!("`{x}` faces both ways across this firewall's chains: its zones upstream and downstream would share it"));
                    }
                    let mut policies = Vec::new();
                    if zones.len() == 2 {
                        for (from, to, field, default, policy) in [
                            ("upstream", "downstream", "inbound", "drop", &fw.inbound),
                            ("downstream", "upstream", "outbound", "accept", &fw.outbound),
                        ] {
                            let p = policy.clone().unwrap_or_default();
                            map.push((
                                path(&["policies".to_string(), policies.len().to_string()]),
                                sub(&[field]),
                            ));
                            policies.push(RawZonePolicy {
                                from: from.into(),
                                to: to.into(),
                                default: Some(p.default.unwrap_or_else(|| default.into())),
                                log_default: p.log_default,
                                rules: p.rules,
                            });
                        }
                    }
                    map.push((path(&["address_sets"]), sub(&["address_sets"])));
                    map.push((path(&["conntrack"]), sub(&["conntrack"])));
                    map.push((path(&["log"]), sub(&["log"])));
                    InstanceConfig::Firewall(vnf_firewall::config::RawConfig {
                        underlay,
                        ports: build.ports,
                        bridges: build.bridges,
                        interfaces: build.interfaces,
                        routes,
                        address_sets: fw.address_sets.clone(),
                        zones,
                        policies,
                        conntrack: fw.conntrack.clone(),
                        log: fw.log.clone(),
                        workers,
                        ..vnf_firewall::config::RawConfig::default()
                    })
                }
                Settings::Lb(lb) => {
                    for s in ["pools", "services", "tls", "lb"] {
                        map.push((path(&[s]), sub(&[s])));
                    }
                    InstanceConfig::Lb(vnf_lb::config::RawConfig {
                        underlay,
                        ports: build.ports,
                        bridges: build.bridges,
                        interfaces: build.interfaces,
                        routes,
                        pools: lb.pools.clone(),
                        services: lb.services.clone(),
                        tls: lb.tls.clone(),
                        lb: lb.lb.clone(),
                        workers,
                        ..vnf_lb::config::RawConfig::default()
                    })
                }
            };
            if let Err(errors) = compile(&config) {
                for e in errors {
                    let generated = split_path(&e.path);
                    let found = map
                        .iter()
                        .filter(|(g, _)| generated.starts_with(g))
                        .max_by_key(|(g, _)| g.len());
                    match found {
                        Some((g, s)) => {
                            let mut at = s.clone();
                            at.extend(generated[g.len()..].iter().cloned());
                            self.err(&at, &e.message);
                        }
                        None => {
                            let msg = format!(
                                "the planned {} config refuses `{}`: {}",
                                f.kind().binary(),
                                e.path,
                                e.message
                            );
                            self.err(&base, msg);
                        }
                    }
                }
            }
            if f.common.name.is_empty() {
                continue;
            }
            instances.push(Instance {
                name: c.name.clone(),
                kind: f.kind(),
                host: c.host,
                admin: c
                    .admin
                    .unwrap_or(SocketAddr::new(c.host.into(), DEFAULT_ADMIN_PORT)),
                config: format!("{}.yaml", c.name),
            });
            configs.push((c.name.clone(), config));
        }
        if !self.diags.is_empty() {
            return None;
        }
        let manifest = Manifest {
            tenant: spec.tenant.clone(),
            instances,
        };
        let prometheus = prometheus_config(&manifest, &options.scrape_interval);
        Some(Plan {
            manifest,
            configs,
            transit_links: self.link_order,
            transit_subnets: self.segment_order,
            prometheus,
            underlay_subnet: self.underlay_subnet,
            underlay_gateway: spec.underlay.gateway,
            underlay_dhcp: spec.underlay.dhcp,
        })
    }

    fn router_nat(&mut self, f: &Function, build: &Build, base: &[String]) -> RawNat {
        let Settings::Router(r) = &f.settings else {
            return RawNat::default();
        };
        let mut nat = RawNat {
            max_sessions: r.nat.max_sessions,
            timeouts: r.nat.timeouts.clone(),
            ..RawNat::default()
        };
        let sub = |rest: &[String]| {
            let mut p = base.to_vec();
            p.extend(rest.iter().cloned());
            p
        };
        let iface = |this: &mut Self, net: &str, at: Vec<String>| -> Option<String> {
            match build.on_network.get(net) {
                Some(i) => Some(i.clone()),
                None => {
                    let msg = if this.networks.contains_key(net) {
                        format!(
                            "`{}` is not a routed hop on network `{net}` in any chain",
                            f.common.name
                        )
                    } else {
                        format!("unknown network `{net}`")
                    };
                    this.err(&at, msg);
                    None
                }
            }
        };
        for (k, m) in r.nat.masquerade.iter().enumerate() {
            let at = |field: &str| sub(&path(&["nat", "masquerade", &k.to_string(), field]));
            let interface = iface(self, &m.to, at("to"));
            let mut sources = Vec::new();
            for (s, src) in m.from.iter().enumerate() {
                match self.networks.get(src.as_str()) {
                    Some((_, _, Some(subnet))) => sources.push(subnet.to_string()),
                    Some((_, _, None)) => {}
                    None if src.parse::<Ipv4Network>().is_ok() => sources.push(src.clone()),
                    None => {
                        let mut p = at("from");
                        p.push(s.to_string());
                        self.err(&p, format!("`{src}` is neither a network nor a prefix"));
                    }
                }
            }
            if let Some(interface) = interface {
                nat.masquerade.push(RawMasquerade {
                    sources,
                    interface,
                    pool: None,
                    tenant: None,
                });
            }
        }
        for (k, fl) in r.nat.floating.iter().enumerate() {
            let at = sub(&path(&["nat", "floating", &k.to_string(), "network"]));
            if let Some(interface) = iface(self, &fl.network, at) {
                nat.floating.push(RawFloating {
                    external: fl.external,
                    internal: fl.internal,
                    interface,
                    tenant: None,
                });
            }
        }
        for (k, pf) in r.nat.port_forwards.iter().enumerate() {
            let at = sub(&path(&["nat", "port_forwards", &k.to_string(), "network"]));
            if iface(self, &pf.network, at.clone()).is_none() {
                continue;
            }
            let Some(address) = pf
                .address
                .or_else(|| f.common.addresses.get(&pf.network).copied())
            else {
                self.err(
                    &at,
                    format!(
                        "`{}` has no address on `{}`: give the forward an `address`",
                        f.common.name, pf.network
                    ),
                );
                continue;
            };
            nat.port_forwards.push(RawForward {
                protocol: pf.protocol.clone(),
                address,
                port: pf.port,
                to: pf.to,
                to_port: pf.to_port,
                tenant: None,
            });
        }
        nat
    }
}

fn default_route() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0 is a valid prefix length")
}

fn parse_range(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Compile a planned config with its VNF's own compiler.
pub fn compile(config: &InstanceConfig) -> Result<(), Vec<ConfigError>> {
    match config {
        InstanceConfig::Router(c) => vnf_router::RouterApp::compile(c).map(drop),
        InstanceConfig::Firewall(c) => vnf_firewall::FirewallApp::compile(c).map(drop),
        InstanceConfig::Lb(c) => vnf_lb::LbApp::compile(c).map(drop),
    }
}

/// A Prometheus configuration that scrapes every instance, labelled by tenant, function
/// and kind.
pub fn prometheus_config(manifest: &Manifest, interval: &str) -> String {
    let mut out = format!(
        "# Prometheus scrape configuration for tenant `{}`, written by vnfctl.\n\
         # Run: prometheus --config.file=prometheus.yml, or copy the job into yours.\n\
         global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n  - job_name: vnf-{}\n    metrics_path: /metrics\n    static_configs:\n",
        manifest.tenant, manifest.tenant
    );
    for i in &manifest.instances {
        let _ = write!(
            out,
            "      - targets: [\"{}\"]\n        labels: {{tenant: {}, function: {}, kind: {}}}\n",
            i.admin,
            manifest.tenant,
            i.name,
            i.kind.name()
        );
    }
    out
}

/// The kinds in use, for `--help` texts.
pub fn kinds() -> [Kind; 3] {
    [Kind::Router, Kind::Firewall, Kind::Lb]
}

/// The body of the `chain_spec` fuzz target (and its corpus replay): parse, validate and
/// plan arbitrary bytes. Never panics; a refusal names at least one problem, each inside
/// the file; an accepted file plans the same way twice.
pub fn fuzz_plan(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    // YAML breaks lines at LF, CRLF and a lone CR (YAML 1.2 §5.4).
    let lines = (text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1) as u64;
    match plan(file, text, &Options::default()) {
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "refused without a reason");
            for d in &diagnostics {
                assert!(!d.message.is_empty(), "empty message: {d:?}");
                if let overlay_io::daemon::Origin::File {
                    position: Some(p), ..
                } = &d.origin
                {
                    assert!(p.line >= 1 && p.line <= lines, "{d} is outside the file");
                }
            }
        }
        Ok(first) => {
            let again = plan(file, text, &Options::default()).map(|p| p.files());
            assert_eq!(
                Ok(first.files()),
                again.map_err(|_| ()),
                "planning is not deterministic"
            );
        }
    }
}
