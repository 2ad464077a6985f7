//! The chain spec: one tenant's networks, function instances and chains, as written in YAML
//! (reference: `docs/chains.md`).
//!
//! Parsing reports every syntax, type and unknown-field problem it can at once, each at its
//! `file:line:column`: the document is read into a generic tree first (a syntax error
//! stops there, as in every YAML tool), then each section and each list item is converted
//! on its own, so one bad network does not hide a bad function. Items that fail are left
//! out of the [`Spec`] and their names remembered, so that the semantic checks do not
//! report them a second time as unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use overlay_io::daemon::locate::{Locator, Position, join_path};
use overlay_io::daemon::{Diagnostic, Origin, yaml_diagnostic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::Kind;

/// `underlay:` — the IP network that carries VXLAN between the tenant's VTEPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Underlay {
    /// The underlay's MTU on every host (default 1500): a VNI network's MTU is at most this
    /// less 50 bytes of VXLAN over IPv4.
    #[serde(default = "default_underlay_mtu")]
    pub mtu: u32,
    /// VXLAN's UDP port (default 4789, RFC 7348).
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    /// The underlay subnet the functions' hosts are on, e.g. `198.18.0.0/24`: the prefix
    /// length their VM images configure (`vnfctl image`; default /24 around each host).
    #[serde(default)]
    pub subnet: Option<String>,
    /// The underlay's default gateway for the VM images, if VTEPs are beyond the subnet.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// VM images take their underlay address by DHCP instead of from the seed (the
    /// cloud's DHCP must hand each VM its `host` address, e.g. a fixed-IP port).
    #[serde(default)]
    pub dhcp: bool,
}

fn default_underlay_mtu() -> u32 {
    1500
}
fn default_vxlan_port() -> u16 {
    4789
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay {
            mtu: default_underlay_mtu(),
            port: default_vxlan_port(),
            subnet: None,
            gateway: None,
            dhcp: false,
        }
    }
}

/// `transit:` — what the planner allocates the segments between hops from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transit {
    /// VNIs for transit segments, `FIRST-LAST` (needed when two functions are adjacent).
    #[serde(default)]
    pub vnis: Option<String>,
    /// Prefix the /30 subnets between routed hops come from (default 100.64.0.0/24).
    #[serde(default)]
    pub prefix: Option<String>,
    /// MTU of transit segments (default: the underlay's MTU less 50).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// An external network's attachment: a VLAN on a trunk, or an untagged interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    /// The trunk interface carrying 802.1Q tagged frames.
    #[serde(default)]
    pub trunk: Option<String>,
    /// The VLAN ID on the trunk, 1..=4094.
    #[serde(default)]
    pub vlan: Option<u64>,
    /// An interface carrying untagged frames.
    #[serde(default)]
    pub interface: Option<String>,
}

/// An entry of `networks:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Unique name (among networks and functions).
    pub name: String,
    /// An overlay segment: its VNI, 1..=16777215.
    #[serde(default)]
    pub vni: Option<u64>,
    /// The hypervisors' VTEPs that serve the VNI (flooded to by every function on it).
    #[serde(default)]
    pub vteps: Vec<Ipv4Addr>,
    /// Or an external network.
    #[serde(default)]
    pub external: Option<External>,
    /// Its IPv4 subnet, `10.0.1.0/24`.
    pub subnet: String,
    /// A router on the network that leads to everything else (a default route).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Largest IP packet (default: the underlay's MTU less 50 for a VNI, 1500 external).
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// A masquerade entry of a router: sources leave with its address on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masquerade {
    /// Networks (by name) or prefixes whose traffic is translated.
    pub from: Vec<String>,
    /// The network it leaves by; translated to the router's address there.
    pub to: String,
}

/// A 1:1 floating address of a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floating {
    /// The network the external address is on (answered by proxy ARP).
    pub network: String,
    /// The external address.
    pub external: Ipv4Addr,
    /// The internal address (a host or a load balancer's VIP).
    pub internal: Ipv4Addr,
}

/// A port forward of a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// The network it is reached from.
    pub network: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The public port.
    pub port: u16,
    /// The public address (default: the router's address on `network`).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Where to.
    pub to: Ipv4Addr,
    /// The port there (default: `port`).
    #[serde(default)]
    pub to_port: Option<u16>,
}

/// A router's `nat:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterNat {
    /// Source NAT of networks leaving by another network.
    #[serde(default)]
    pub masquerade: Vec<Masquerade>,
    /// 1:1 NAT.
    #[serde(default)]
    pub floating: Vec<Floating>,
    /// Destination NAT of single ports.
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    /// The session table's size (vnf-router's `nat.max_sessions`).
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Timeouts in seconds (vnf-router's `nat.timeouts`).
    #[serde(default)]
    pub timeouts: Option<overlay_io::l3config::RawTimeouts>,
}

/// A firewall's policy for one direction of its chains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionPolicy {
    /// `accept`, `drop` or `reject` for new flows no rule matches.
    #[serde(default)]
    pub default: Option<String>,
    /// Log those.
    #[serde(default)]
    pub log_default: bool,
    /// Rules in vnf-firewall's syntax (docs/firewall.md), first match wins.
    #[serde(default)]
    pub rules: Vec<vnf_firewall::policy::RawRule>,
}

/// Fields every function has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// Unique name.
    pub name: String,
    /// `router`, `firewall` or `lb`.
    pub kind: String,
    /// The underlay address of the VM or container it runs in (its VTEP).
    pub host: Ipv4Addr,
    /// Its admin endpoint (default `HOST:9100`).
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Its own address on each network it joins, by network name.
    #[serde(default)]
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Datapath threads (default 1).
    #[serde(default)]
    pub workers: Option<usize>,
}

/// A router's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// NAT.
    #[serde(default)]
    pub nat: RouterNat,
    /// Extra static routes (vnf-router syntax); the chain's own routes are planned.
    #[serde(default)]
    pub routes: Vec<overlay_io::l3config::RawRoute>,
}

/// A firewall's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSettings {
    /// `routed` (default: a routed hop with addresses) or `transparent` (a bump in the
    /// wire: no addresses, both sides one subnet).
    #[serde(default)]
    pub mode: Option<String>,
    /// Named prefix lists for rules.
    #[serde(default)]
    pub address_sets: BTreeMap<String, Vec<String>>,
    /// New connections from the chains' `from` side toward their `to` side (default: drop).
    #[serde(default)]
    pub inbound: Option<DirectionPolicy>,
    /// New connections the other way (default: accept).
    #[serde(default)]
    pub outbound: Option<DirectionPolicy>,
    /// vnf-firewall's `conntrack:`.
    #[serde(default)]
    pub conntrack: vnf_firewall::config::RawConntrack,
    /// vnf-firewall's `log:`.
    #[serde(default)]
    pub log: vnf_firewall::config::RawLog,
}

/// A load balancer's settings, in vnf-lb's syntax (docs/lb.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {
    /// Backend pools.
    #[serde(default)]
    pub pools: Vec<vnf_lb::config::RawPool>,
    /// Virtual services (VIPs).
    #[serde(default)]
    pub services: Vec<vnf_lb::config::RawService>,
    /// Certificates.
    #[serde(default)]
    pub tls: vnf_lb::config::RawTls,
    /// Connection table.
    #[serde(default)]
    pub lb: vnf_lb::config::RawLb,
}

/// What a function is, with its kind's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settings {
    /// A router.
    Router(RouterSettings),
    /// A firewall.
    Firewall(FirewallSettings),
    /// A load balancer.
    Lb(LbSettings),
}

/// An entry of `functions:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The common fields.
    pub common: Common,
    /// The kind's settings.
    pub settings: Settings,
}

impl Function {
    /// What it runs as.
    pub fn kind(&self) -> Kind {
        match self.settings {
            Settings::Router(_) => Kind::Router,
            Settings::Firewall(_) => Kind::Firewall,
            Settings::Lb(_) => Kind::Lb,
        }
    }

    /// Whether it forwards at L2 without addresses (a transparent firewall).
    pub fn is_transparent(&self) -> bool {
        matches!(&self.settings, Settings::Firewall(f) if f.mode.as_deref() == Some("transparent"))
    }
}

/// An entry of `chains:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// Unique name.
    pub name: String,
    /// The network traffic enters from.
    pub from: String,
    /// The network it goes to.
    pub to: String,
    /// The functions it crosses, in order.
    pub hops: Vec<String>,
}

/// A parsed chain file. Items that failed to parse are not here (see module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// The tenant's name.
    pub tenant: String,
    /// The underlay.
    pub underlay: Underlay,
    /// Transit allocation.
    pub transit: Transit,
    /// Networks, with their index in the file.
    pub networks: Vec<(usize, Network)>,
    /// Functions, with their index in the file.
    pub functions: Vec<(usize, Function)>,
    /// Chains, with their index in the file.
    pub chains: Vec<(usize, Chain)>,
    /// Names of networks, functions and chains whose items failed to parse.
    pub broken_names: BTreeSet<String>,
}

impl Spec {
    /// The functions some chain puts next to network `net` (its first hop from it or its
    /// last hop to it): those with a port on it, in file order.
    pub fn functions_on<'a>(&'a self, net: &'a str) -> impl Iterator<Item = &'a Function> + 'a {
        self.functions.iter().map(|(_, f)| f).filter(move |f| {
            self.chains.iter().any(|(_, c)| {
                (c.from == net && c.hops.first() == Some(&f.common.name))
                    || (c.to == net && c.hops.last() == Some(&f.common.name))
            })
        })
    }
}

/// Problems found in one file, each turned into a located [`Diagnostic`].
#[derive(Debug)]
pub struct Diagnostics {
    file: PathBuf,
    locator: Locator,
    /// What was found, in order.
    pub list: Vec<Diagnostic>,
    /// Problems past [`MAX_DIAGNOSTICS`], counted only.
    pub truncated: usize,
}

/// The most problems reported for one file; the rest are counted.
pub const MAX_DIAGNOSTICS: usize = 200;

impl Diagnostics {
    /// Problems of `file`, whose text is `text`.
    pub fn new(file: &Path, text: &str) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            locator: Locator::parse(text),
            list: Vec::new(),
            truncated: 0,
        }
    }

    /// A problem at key path `path` (located at the nearest key present in the file).
    pub fn error(&mut self, path: &[String], message: impl std::fmt::Display) {
        let position = self.locator.find(path).map(|(p, _)| p);
        self.push(path, position, message.to_string());
    }

    fn push(&mut self, path: &[String], position: Option<Position>, message: String) {
        if self.list.len() >= MAX_DIAGNOSTICS {
            self.truncated += 1;
            return;
        }
        let diagnostic = Diagnostic {
            origin: Origin::File {
                file: self.file.clone(),
                position,
            },
            path: join_path(path),
            message,
        };
        if !self.list.contains(&diagnostic) {
            self.list.push(diagnostic);
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Sorted by position, as a compiler lists them (and a last line for the problems
    /// past [`MAX_DIAGNOSTICS`]).
    pub fn sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(|d| match &d.origin {
            Origin::File {
                position: Some(p), ..
            } => (p.line, p.column),
            _ => (u64::MAX, u64::MAX),
        });
        if self.truncated > 0 {
            self.list.push(Diagnostic {
                origin: Origin::File {
                    file: self.file.clone(),
                    position: None,
                },
                path: String::new(),
                message: format!("and {} more problems", self.truncated),
            });
        }
        self.list
    }
}

/// Build a path from segments.
pub fn path<S: ToString>(segments: &[S]) -> Vec<String> {
    segments.iter().map(ToString::to_string).collect()
}

/// The largest accepted chain file: the parser holds it and its tree in memory.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Parse `text` (the contents of `file`): the spec and every problem found so far.
pub fn parse(file: &Path, text: &str) -> (Spec, Diagnostics) {
    let mut diags = Diagnostics::new(file, text);
    let mut spec = Spec::default();
    if text.len() > MAX_FILE_BYTES {
        diags.error(
            &[],
            format!(
                "the file is {} bytes: a chain file may have at most {MAX_FILE_BYTES}",
                text.len()
            ),
        );
        return (spec, diags);
    }
    let options = serde_saphyr::options! { with_snippet: false };
    let root: Value = match serde_saphyr::from_str_with_options(text, options) {
        Ok(v) => v,
        Err(e) => {
            diags.list.push(yaml_diagnostic(file, &e, text));
            return (spec, diags);
        }
    };
    let Value::Object(root) = root else {
        if root.is_null() {
            diags.error(&[], "the file is empty: a chain file needs `tenant`, `networks`, `functions` and `chains`");
        } else {
            diags.error(
                &[],
                "a chain file is a map with `tenant`, `networks`, `functions` and `chains`",
            );
        }
        return (spec, diags);
    };

    const SECTIONS: [&str; 6] = [
        "tenant",
        "underlay",
        "transit",
        "networks",
        "functions",
        "chains",
    ];
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            diags.error(
                std::slice::from_ref(key),
                format!(
                    "unknown field `{key}`, expected one of {}",
                    SECTIONS.map(|s| format!("`{s}`")).join(", ")
                ),
            );
        }
    }

    match root.get("tenant") {
        Some(v) => {
            if let Some(t) = convert::<String>(&mut diags, &["tenant".into()], v) {
                spec.tenant = t;
            }
        }
        None => diags.error(&[], "missing field `tenant` (the tenant's name)"),
    }
    if let Some(v) = root.get("underlay")
        && let Some(u) = convert(&mut diags, &["underlay".into()], v)
    {
        spec.underlay = u;
    }
    if let Some(v) = root.get("transit")
        && let Some(t) = convert(&mut diags, &["transit".into()], v)
    {
        spec.transit = t;
    }

    for (index, item) in items(&mut diags, &root, "networks") {
        let at = path(&["networks".to_string(), index.to_string()]);
        match convert::<Network>(&mut diags, &at, item) {
            Some(n) => spec.networks.push((index, n)),
            None => remember_name(&mut spec, item),
        }
    }
    for (index, item) in items(&mut diags, &root, "functions") {
        let at = path(&["functions".to_string(), index.to_string()]);
        match function(&mut diags, &at, item) {
            Some(f) => spec.functions.push((index, f)),
            None => remember_name(&mut spec, item),
        }
    }
    for (index, item) in items(&mut diags, &root, "chains") {
        let at = path(&["chains".to_string(), index.to_string()]);
        match convert::<Chain>(&mut diags, &at, item) {
            Some(c) => spec.chains.push((index, c)),
            None => remember_name(&mut spec, item),
        }
    }
    (spec, diags)
}

fn remember_name(spec: &mut Spec, item: &Value) {
    if let Some(name) = item.get("name").and_then(Value::as_str) {
        spec.broken_names.insert(name.to_string());
    }
}

/// The items of list `section` (a missing section is an empty list, but said so for the
/// three that a chain cannot do without).
fn items<'a>(
    diags: &mut Diagnostics,
    root: &'a serde_json::Map<String, Value>,
    section: &str,
) -> Vec<(usize, &'a Value)> {
    match root.get(section) {
        None | Some(Value::Null) => {
            diags.error(&[], format!("missing field `{section}`"));
            Vec::new()
        }
        Some(Value::Array(list)) => list.iter().enumerate().collect(),
        Some(_) => {
            diags.error(&[section.to_string()], format!("`{section}` is a list"));
            Vec::new()
        }
    }
}

/// The most problems reported inside one item.
const MAX_ITEM_ERRORS: usize = 16;

/// Convert one item to `T`, reporting each failure at its exact place inside it. serde
/// stops at the first problem, so after each one the offending key is taken out of a copy
/// of the item and the conversion tried again: every wrong key of an item is reported, not
/// only the first. (Where taking it out cannot help, a missing key or an item of a list,
/// it stops there.)
fn convert<T: DeserializeOwned>(
    diags: &mut Diagnostics,
    at: &[String],
    value: &Value,
) -> Option<T> {
    let mut value = value.clone();
    let mut removed: Vec<Vec<String>> = Vec::new();
    for _ in 0..MAX_ITEM_ERRORS {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) if removed.is_empty() => return Some(v),
            Ok(_) => return None,
            Err(e) => e,
        };
        let mut inner: Vec<String> = Vec::new();
        for segment in error.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => inner.push(index.to_string()),
                serde_path_to_error::Segment::Map { key } => inner.push(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => inner.push(variant.clone()),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = error.into_inner().to_string();
        // An unknown key is reported where it is, not at the map holding it.
        if let Some(field) = quoted_after(&message, "unknown field `")
            && inner.last() != Some(&field)
        {
            inner.push(field);
        }
        // A key taken out earlier now "missing": already reported as what it was.
        if let Some(field) = quoted_after(&message, "missing field `") {
            let mut missing = inner.clone();
            missing.push(field);
            if removed.contains(&missing) {
                return None;
            }
        }
        let mut full = at.to_vec();
        full.extend(inner.iter().cloned());
        diags.error(&full, message);
        if !take_out(&mut value, &inner) {
            return None;
        }
        removed.push(inner);
    }
    None
}

/// The text between `prefix` and the next backquote, if `message` starts with `prefix`.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    message
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('`'))
        .map(|(f, _)| f.to_string())
}

/// Remove the map key at `path` from `value`; false when `path` is not a key of a map.
fn take_out(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        node = match node {
            Value::Object(map) => match map.get_mut(segment) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(list) => match segment.parse::<usize>().ok().and_then(|i| list.get_mut(i))
            {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Object(map) => map.remove(last).is_some(),
        _ => false,
    }
}

/// Fields a function of any kind may have; the rest depend on `kind`.
const COMMON_FIELDS: [&str; 6] = ["name", "kind", "host", "admin", "addresses", "workers"];

fn function(diags: &mut Diagnostics, at: &[String], item: &Value) -> Option<Function> {
    let Value::Object(map) = item else {
        diags.error(at, "a function is a map with `name`, `kind` and `host`");
        return None;
    };
    let (common_map, rest): (
        serde_json::Map<String, Value>,
        serde_json::Map<String, Value>,
    ) = map
        .clone()
        .into_iter()
        .partition(|(k, _)| COMMON_FIELDS.contains(&k.as_str()));
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => {
            let mut p = at.to_vec();
            p.push("kind".into());
            diags.error(&p, "`kind` is one of `router`, `firewall`, `lb`");
            return None;
        }
        None => {
            diags.error(at, "missing field `kind` (`router`, `firewall` or `lb`)");
            return None;
        }
    };
    let common = convert::<Common>(diags, at, &Value::Object(common_map));
    let rest = Value::Object(rest);
    let before = diags.list.len();
    let settings = match kind.as_str() {
        "router" => convert::<RouterSettings>(diags, at, &rest).map(Settings::Router),
        "firewall" => convert::<FirewallSettings>(diags, at, &rest).map(Settings::Firewall),
        "lb" => convert::<LbSettings>(diags, at, &rest).map(Settings::Lb),
        other => {
            let mut p = at.to_vec();
            p.push("kind".into());
            diags.error(
                &p,
                format!("unknown kind `{other}`: use `router`, `firewall` or `lb`"),
            );
            None
        }
    };
    // An unknown key among the kind's settings may be a misspelt common one: name those
    // too (serde only knew the kind's own).
    if let Some(d) = diags.list.get_mut(before)
        && d.message.starts_with("unknown field `")
        && overlay_io::daemon::locate::split_path(&d.path).len() == at.len() + 1
    {
        d.message = format!(
            "{}, or one every function has: {}",
            d.message,
            COMMON_FIELDS.map(|f| format!("`{f}`")).join(", ")
        );
    }
    Some(Function {
        common: common?,
        settings: settings?,
    })
}
