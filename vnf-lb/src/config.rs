//! The load balancer's configuration file.
//!
//! The datapath and routed sections are the router's (`underlay`, `ports`, `bridges`,
//! `interfaces`, `routes`, `arp`, `icmp`; see `docs/router.md`). The load balancer adds
//! `pools` (backends, weights, health checks), `services` (virtual IPs: L4 TCP/UDP or L7
//! HTTP/HTTPS), `tls` (certificates for HTTPS services) and `lb` (connection table).
//!
//! The full reference is `docs/lb.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use overlay_io::daemon::ConfigError;
use overlay_io::datapath::config::{RawPort, RawUnderlay};
use overlay_io::fib::Decision;
use overlay_io::l3::L3Config;
use overlay_io::l3config::{
    RawArp, RawBridge, RawIcmp, RawInterface, RawNat, RawRoute, RawSections, Sections,
    compile_sections,
};
use overlay_io::nat::{NatConfig, Pool as NatPool, Proto, SnatRule, Timeouts};

use crate::health::{CheckCfg, CheckKind, StatusMatch};
use crate::http::Limits;
use crate::maglev::{DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE};
use crate::proxy;
use crate::tls::CertSpec;

fn default_workers() -> usize {
    1
}
fn default_batch() -> usize {
    64
}
fn default_weight() -> u32 {
    1
}

/// Ports full NAT hands out on the load balancer's own addresses.
pub const SNAT_PORTS: RangeInclusive<u16> = 1024..=32767;
/// Ports the host stack uses for its own connections (health checks, L7 to backends).
pub const HOST_PORTS: RangeInclusive<u16> = 32768..=65535;

/// A duration as written: seconds as a number, or a string with a unit (`500ms`, `2s`,
/// `1m`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    /// Seconds.
    Seconds(f64),
    /// `500ms`, `2s`, `1m`, `1h`.
    Text(String),
}

impl Eq for RawDuration {}

impl RawDuration {
    fn parse(&self) -> Result<Duration, String> {
        let secs = match self {
            RawDuration::Seconds(s) => *s,
            RawDuration::Text(t) => {
                let t = t.trim();
                let split = t
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(t.len());
                let (num, unit) = t.split_at(split);
                let n: f64 = num
                    .parse()
                    .map_err(|_| format!("`{t}` is not a duration (use 500ms, 2s, 1m)"))?;
                n * match unit.trim() {
                    "ms" => 0.001,
                    "" | "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    u => return Err(format!("`{u}` is not a unit (use ms, s, m, h)")),
                }
            }
        };
        if !(secs.is_finite() && (0.0..=86_400.0 * 365.0).contains(&secs)) {
            return Err("a duration is between 0 and a year".into());
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

/// A backend as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// Name, unique in the pool; Maglev hashes it, so renaming a backend moves its flows.
    pub name: String,
    /// `address:port`.
    pub address: String,
    /// Relative share of new flows (default 1; 0 sends none).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Keep existing connections, send no new ones (default false).
    #[serde(default)]
    pub drain: bool,
}

/// A pool's health check as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `tcp` (default), `http`, `https`, `tls` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// HTTP path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP Host header (default the backend's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Expected HTTP status: `200`, `2xx` or `200-399` (default `2xx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// TLS server name to send (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Time between checks of a backend (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<RawDuration>,
    /// Time a check may take (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<RawDuration>,
    /// Consecutive successes that bring a backend up (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Consecutive failures that take it down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
}

/// A pool as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Name, unique.
    pub name: String,
    /// Backends.
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    /// Health check.
    #[serde(default)]
    pub health: RawHealth,
    /// Maglev table size, a prime (default 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<usize>,
}

/// An L7 route as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpRoute {
    /// Host header to match, without port (default any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix, segment-wise (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The pool.
    pub pool: String,
}

/// An L7 service's limits as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpLimits {
    /// Request line and headers, bytes (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Request body, bytes (default 10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

/// An L7 service's timeouts as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpTimeouts {
    /// Until a request's head is in (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_header: Option<RawDuration>,
    /// Idle keep-alive connection (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle: Option<RawDuration>,
    /// TCP connect to a backend (default 3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_connect: Option<RawDuration>,
    /// From the request sent to the response head (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_response: Option<RawDuration>,
    /// Without progress on a body (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_idle: Option<RawDuration>,
}

/// A service (virtual IP) as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Name, unique (the `service` metric label).
    pub name: String,
    /// The virtual address.
    pub vip: Ipv4Addr,
    /// The port.
    pub port: u16,
    /// `tcp`, `udp` (L4), `http` or `https` (L7).
    pub protocol: String,
    /// The pool (L4; for L7 the pool of requests no route matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// L4: `full_nat` (default) or `dnat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// L4 and L7: `none` (default) or `client_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// L7: routes by host and path, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawHttpRoute>,
    /// L7 limits.
    #[serde(default)]
    pub limits: RawHttpLimits,
    /// L7 timeouts.
    #[serde(default)]
    pub timeouts: RawHttpTimeouts,
}

/// A certificate as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `tls:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificates; chosen by SNI, the first is the default.
    #[serde(default)]
    pub certificates: Vec<RawCert>,
}

/// `lb:` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLb {
    /// Most L4 connections tracked (default 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most L7 client connections at once (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_proxy_connections: Option<usize>,
    /// L4 connection timeouts in seconds by name: `tcp_established` (7440),
    /// `tcp_transitory` (60), `tcp_closed` (10), `udp` (300).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timeouts: BTreeMap<String, u64>,
}

/// The load balancer's config file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This VNF's VTEP on the underlay.
    #[serde(default)]
    pub underlay: RawUnderlay,
    /// The L2 segments.
    #[serde(default)]
    pub ports: Vec<RawPort>,
    /// Bridge domains (IRB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<RawBridge>,
    /// Routed interfaces.
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
    /// Backend pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<RawPool>,
    /// Virtual services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawService>,
    /// Certificates for HTTPS services.
    #[serde(default)]
    pub tls: RawTls,
    /// Connection table.
    #[serde(default)]
    pub lb: RawLb,
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
            pools: Vec::new(),
            services: Vec::new(),
            tls: RawTls::default(),
            lb: RawLb::default(),
            workers: default_workers(),
            batch_size: default_batch(),
        }
    }
}

/// A backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Name.
    pub name: String,
    /// Address and port.
    pub addr: SocketAddrV4,
    /// Weight.
    pub weight: u32,
    /// Draining: no new flows.
    pub drain: bool,
    /// Full NAT: the source rewrite toward this backend (the address of the interface the
    /// route to it leaves by).
    pub snat: SnatRule,
    /// That source address: the host stack's too.
    pub source: Ipv4Addr,
}

/// A pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolCfg {
    /// Name.
    pub name: String,
    /// Backends, in config order.
    pub backends: Vec<Backend>,
    /// The health check, if any (`none`: every backend is up).
    pub check: Option<CheckCfg>,
    /// Maglev table size.
    pub table_size: usize,
}

/// How L4 rewrites a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Source and destination: the backend replies to the load balancer.
    FullNat,
    /// Destination only: the backend routes replies through the load balancer.
    Dnat,
}

/// What the flow hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// The 5-tuple.
    None,
    /// The client address: a client always reaches the same backend.
    ClientIp,
}

/// What a service does.
#[derive(Debug, Clone)]
pub enum ServiceKind {
    /// L4.
    L4 {
        /// The pool.
        pool: usize,
        /// Full NAT or DNAT.
        mode: Mode,
    },
    /// L7: the reverse proxy (routes name pools by index).
    L7(Arc<proxy::ServiceCfg>),
}

/// A service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Virtual address.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Flow hash.
    pub affinity: Affinity,
    /// L4 or L7.
    pub kind: ServiceKind,
}

impl Service {
    /// Whether this is an L7 service.
    pub fn is_l7(&self) -> bool {
        matches!(self.kind, ServiceKind::L7(_))
    }
}

/// The load balancer's own settings: the routed function's hook config.
#[derive(Debug, Clone)]
pub struct LbSettings {
    /// Pools.
    pub pools: Vec<PoolCfg>,
    /// Services.
    pub services: Vec<Service>,
    /// The distinct virtual addresses.
    pub vips: Vec<Ipv4Addr>,
    /// L4 connection table caps and timeouts.
    pub nat: NatConfig,
    /// Most L7 client connections.
    pub max_proxy_connections: usize,
}

impl PartialEq for LbSettings {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for LbSettings {}

impl LbSettings {
    /// The service at (address, protocol, port).
    pub fn service(&self, vip: Ipv4Addr, proto: Proto, port: u16) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.vip == vip && s.proto == proto && s.port == port)
    }

    /// Whether `a` is a virtual address.
    pub fn is_vip(&self, a: Ipv4Addr) -> bool {
        self.vips.contains(&a)
    }
}

/// The whole config, checked.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// The datapath and routed sections (the VIPs on connected subnets answer ARP).
    pub sections: Sections,
    /// Pools and services.
    pub lb: LbSettings,
    /// Certificates.
    pub certs: Vec<CertSpec>,
}

fn check_cfg(h: &RawHealth, path: &str, errors: &mut Vec<ConfigError>) -> Option<CheckCfg> {
    let mut e = |f: &str, m: String| {
        errors.push(ConfigError::new(
            if f.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{f}")
            },
            m,
        ))
    };
    let expect = match h.expect.as_deref() {
        None => StatusMatch::Class(2),
        Some(s) => s.parse::<StatusMatch>().unwrap_or_else(|m| {
            e("expect", m.to_string());
            StatusMatch::Class(2)
        }),
    };
    let http_path = h.path.clone().unwrap_or_else(|| "/".into());
    let kind = match h.check.as_deref().unwrap_or("tcp") {
        "none" => return None,
        "tcp" => CheckKind::Tcp,
        "http" => CheckKind::Http {
            path: http_path,
            host: h.host.clone(),
            expect,
        },
        "https" => CheckKind::Https {
            path: http_path,
            host: h.host.clone(),
            expect,
            sni: h.sni.clone(),
        },
        "tls" => CheckKind::Tls { sni: h.sni.clone() },
        other => {
            e(
                "check",
                format!("`{other}` is not a check: use tcp, http, https, tls or none"),
            );
            CheckKind::Tcp
        }
    };
    let d = CheckCfg::default();
    let mut dur = |f: &str, v: &Option<RawDuration>, def: Duration| match v {
        None => def,
        Some(v) => v.parse().unwrap_or_else(|m| {
            e(f, m);
            def
        }),
    };
    let interval = dur("interval", &h.interval, d.interval);
    let timeout = dur("timeout", &h.timeout, d.timeout.min(interval));
    let c = CheckCfg {
        kind,
        interval,
        timeout,
        rise: h.rise.unwrap_or(d.rise),
        fall: h.fall.unwrap_or(d.fall),
    };
    if let Err(m) = c.validate() {
        e("", m.to_string());
    }
    Some(c)
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The source address toward `dst`: the first address of the interface the route leaves
/// by.
fn source_toward(l3: &L3Config, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    match l3.fib.lookup(dst, 0) {
        Decision::Forward { iface, next_hop } => l3.source_for(iface, next_hop),
        _ => None,
    }
}

fn pools(raw: &RawConfig, l3: Option<&L3Config>, errors: &mut Vec<ConfigError>) -> Vec<PoolCfg> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, p) in raw.pools.iter().enumerate() {
        let path = format!("pools[{i}]");
        if p.name.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                "a pool needs a name",
            ));
        } else if !names.insert(p.name.as_str()) {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                format!("pool name `{}` is used twice", p.name),
            ));
        }
        let table_size = p.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !is_prime(table_size) || table_size > MAX_TABLE_SIZE {
            errors.push(ConfigError::new(
                format!("{path}.table_size"),
                format!(
                    "{table_size} is not a prime up to {MAX_TABLE_SIZE} (65537 is the default)"
                ),
            ));
        }
        if p.backends.len() * 100 > table_size {
            errors.push(ConfigError::new(
                format!("{path}.table_size"),
                format!(
                    "{} backends need a table of at least 100 entries each",
                    p.backends.len()
                ),
            ));
        }
        let mut bnames = BTreeSet::new();
        let mut backends = Vec::new();
        for (j, b) in p.backends.iter().enumerate() {
            let bp = format!("{path}.backends[{j}]");
            if b.name.is_empty() {
                errors.push(ConfigError::new(
                    format!("{bp}.name"),
                    "a backend needs a name",
                ));
            } else if !bnames.insert(b.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{bp}.name"),
                    format!("backend name `{}` is used twice in the pool", b.name),
                ));
            }
            if b.weight > 10_000 {
                errors.push(ConfigError::new(format!("{bp}.weight"), "use 0..=10000"));
            }
            let addr = match b.address.parse::<SocketAddrV4>() {
                Ok(a) if a.port() != 0 => a,
                _ => {
                    errors.push(ConfigError::new(
                        format!("{bp}.address"),
                        format!("`{}` is not an IPv4 address:port", b.address),
                    ));
                    continue;
                }
            };
            let Some(l3) = l3 else { continue };
            let Some(source) = source_toward(l3, *addr.ip()) else {
                errors.push(ConfigError::new(
                    format!("{bp}.address"),
                    format!(
                        "no route to {} from an interface with an address",
                        addr.ip()
                    ),
                ));
                continue;
            };
            backends.push(Backend {
                name: b.name.clone(),
                addr,
                weight: b.weight,
                drain: b.drain,
                snat: SnatRule::Masquerade(NatPool {
                    addrs: vec![source],
                    ports: SNAT_PORTS,
                }),
                source,
            });
        }
        out.push(PoolCfg {
            name: p.name.clone(),
            backends,
            check: check_cfg(&p.health, &format!("{path}.health"), errors),
            table_size,
        });
    }
    out
}

fn http_service(
    s: &RawService,
    path: &str,
    pool_index: &BTreeMap<&str, usize>,
    default_pool: Option<usize>,
    errors: &mut Vec<ConfigError>,
) -> proxy::ServiceCfg {
    let mut routes = Vec::new();
    for (k, r) in s.routes.iter().enumerate() {
        let rp = format!("{path}.routes[{k}]");
        let prefix = r.path.clone().unwrap_or_else(|| "/".into());
        if !prefix.starts_with('/') {
            errors.push(ConfigError::new(
                format!("{rp}.path"),
                format!("`{prefix}` does not start with /"),
            ));
        }
        match pool_index.get(r.pool.as_str()) {
            Some(&pool) => routes.push(proxy::Route {
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                path_prefix: prefix,
                pool,
            }),
            None => errors.push(ConfigError::new(
                format!("{rp}.pool"),
                format!("no pool is named `{}`", r.pool),
            )),
        }
    }
    if let Some(pool) = default_pool {
        routes.push(proxy::Route {
            host: None,
            path_prefix: "/".into(),
            pool,
        });
    }
    if routes.is_empty() && s.routes.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.pool"),
            "an HTTP service needs a `pool` or `routes`",
        ));
    }
    let mut limits = Limits::default();
    if let Some(n) = s.limits.max_header_bytes {
        if !(1024..=1 << 20).contains(&n) {
            errors.push(ConfigError::new(
                format!("{path}.limits.max_header_bytes"),
                "use 1024..=1048576",
            ));
        }
        limits.max_head = n;
    }
    let mut t = proxy::Timeouts::default();
    let mut dur = |f: &str, v: &Option<RawDuration>, slot: &mut Duration| {
        if let Some(v) = v {
            match v.parse() {
                Ok(d) if !d.is_zero() => *slot = d,
                Ok(_) => errors.push(ConfigError::new(
                    format!("{path}.timeouts.{f}"),
                    "must be positive",
                )),
                Err(m) => errors.push(ConfigError::new(format!("{path}.timeouts.{f}"), m)),
            }
        }
    };
    let rt = &s.timeouts;
    dur("client_header", &rt.client_header, &mut t.client_header);
    dur("client_idle", &rt.client_idle, &mut t.client_idle);
    dur(
        "backend_connect",
        &rt.backend_connect,
        &mut t.backend_connect,
    );
    dur(
        "backend_response",
        &rt.backend_response,
        &mut t.backend_response,
    );
    dur("body_idle", &rt.body_idle, &mut t.body_idle);
    proxy::ServiceCfg {
        name: s.name.clone(),
        https: s.protocol == "https",
        routes,
        limits,
        timeouts: t,
        max_body: s.limits.max_body_bytes.unwrap_or(10 << 20),
    }
}

fn services(raw: &RawConfig, pools: &[PoolCfg], errors: &mut Vec<ConfigError>) -> Vec<Service> {
    let pool_index: BTreeMap<&str, usize> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    let mut keys = BTreeMap::new();
    for (i, s) in raw.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let mut e = |f: &str, m: String| errors.push(ConfigError::new(format!("{path}.{f}"), m));
        if s.name.is_empty() {
            e("name", "a service needs a name".into());
        } else if !names.insert(s.name.as_str()) {
            e("name", format!("service name `{}` is used twice", s.name));
        }
        if s.port == 0 {
            e("port", "port 0 cannot be served".into());
        }
        if s.vip.is_unspecified() || s.vip.is_broadcast() || s.vip.is_multicast() {
            e("vip", format!("{} is not a unicast address", s.vip));
        }
        let (proto, l7) = match s.protocol.as_str() {
            "tcp" => (Proto::Tcp, false),
            "udp" => (Proto::Udp, false),
            "http" | "https" => (Proto::Tcp, true),
            other => {
                e(
                    "protocol",
                    format!("`{other}` is not a protocol: use tcp, udp, http or https"),
                );
                continue;
            }
        };
        if let Some(first) = keys.insert((s.vip, proto, s.port), i) {
            e(
                "port",
                format!(
                    "{}:{} ({:?}) is already services[{first}]",
                    s.vip, s.port, proto
                ),
            );
        }
        let pool = match s.pool.as_deref() {
            None => None,
            Some(p) => match pool_index.get(p) {
                Some(&i) => Some(i),
                None => {
                    e("pool", format!("no pool is named `{p}`"));
                    continue;
                }
            },
        };
        let affinity = match s.affinity.as_deref().unwrap_or("none") {
            "none" => Affinity::None,
            "client_ip" => Affinity::ClientIp,
            other => {
                e(
                    "affinity",
                    format!("`{other}` is not an affinity: use none or client_ip"),
                );
                Affinity::None
            }
        };
        let kind = if l7 {
            if s.mode.is_some() {
                e("mode", "`mode` is for tcp and udp services".into());
            }
            ServiceKind::L7(Arc::new(http_service(s, &path, &pool_index, pool, errors)))
        } else {
            if !s.routes.is_empty() {
                e("routes", "`routes` is for http and https services".into());
            }
            let mode = match s.mode.as_deref().unwrap_or("full_nat") {
                "full_nat" => Mode::FullNat,
                "dnat" => Mode::Dnat,
                other => {
                    e(
                        "mode",
                        format!("`{other}` is not a mode: use full_nat or dnat"),
                    );
                    Mode::FullNat
                }
            };
            let Some(pool) = pool else {
                e("pool", "a tcp or udp service needs a `pool`".into());
                continue;
            };
            ServiceKind::L4 { pool, mode }
        };
        out.push(Service {
            name: s.name.clone(),
            vip: s.vip,
            port: s.port,
            proto,
            affinity,
            kind,
        });
    }
    if raw.services.iter().any(|s| s.protocol == "https") && raw.tls.certificates.is_empty() {
        errors.push(ConfigError::new(
            "tls.certificates",
            "an https service needs at least one certificate",
        ));
    }
    out
}

fn nat_config(raw: &RawLb, errors: &mut Vec<ConfigError>) -> NatConfig {
    let mut t = Timeouts {
        tcp_transitory: Duration::from_secs(60),
        ..Timeouts::default()
    };
    for (k, v) in &raw.timeouts {
        let slot = match k.as_str() {
            "tcp_established" => &mut t.tcp_established,
            "tcp_transitory" => &mut t.tcp_transitory,
            "tcp_closed" => &mut t.tcp_closed,
            "udp" => &mut t.udp,
            _ => {
                errors.push(ConfigError::new(
                    format!("lb.timeouts.{k}"),
                    "not a timeout: tcp_established, tcp_transitory, tcp_closed, udp",
                ));
                continue;
            }
        };
        if *v == 0 {
            errors.push(ConfigError::new(
                format!("lb.timeouts.{k}"),
                "at least 1 second",
            ));
        }
        *slot = Duration::from_secs(*v);
    }
    let max = raw.max_connections.unwrap_or(1 << 20);
    if !(1..=1 << 24).contains(&max) {
        errors.push(ConfigError::new("lb.max_connections", "use 1..=16777216"));
    }
    NatConfig {
        max_sessions: max,
        max_sessions_per_tenant: max,
        timeouts: t,
        // A SYN flood must not hold every full-NAT port or table slot.
        early_drop: true,
        ..NatConfig::default()
    }
}

/// Check and type the whole file; every problem at once.
pub fn compile(raw: &RawConfig) -> Result<LbConfig, Vec<ConfigError>> {
    let no_nat = RawNat::default();
    let sections = compile_sections(
        &RawSections {
            underlay: &raw.underlay,
            ports: &raw.ports,
            bridges: &raw.bridges,
            interfaces: &raw.interfaces,
            routes: &raw.routes,
            nat: &no_nat,
            arp: &raw.arp,
            icmp: &raw.icmp,
            workers: raw.workers,
            batch_size: raw.batch_size,
        },
        "vnf-lb",
    );
    let (mut sections, mut errors) = match sections {
        Ok(s) => (Some(s), Vec::new()),
        Err(e) => (None, e),
    };
    let pools = pools(raw, sections.as_ref().map(|s| &s.routed.l3), &mut errors);
    let services = services(raw, &pools, &mut errors);
    let nat = nat_config(&raw.lb, &mut errors);
    let max_proxy_connections = raw.lb.max_proxy_connections.unwrap_or(4096);
    if !(1..=1_000_000).contains(&max_proxy_connections) {
        errors.push(ConfigError::new(
            "lb.max_proxy_connections",
            "use 1..=1000000",
        ));
    }
    let mut vips: Vec<Ipv4Addr> = services.iter().map(|s| s.vip).collect();
    vips.sort_unstable();
    vips.dedup();
    if let Some(s) = sections.as_mut() {
        let l3 = &s.routed.l3;
        for (i, svc) in raw.services.iter().enumerate() {
            if l3.is_local(svc.vip) {
                errors.push(ConfigError::new(
                    format!("services[{i}].vip"),
                    format!(
                        "{} is an interface address: a VIP is an address of its own",
                        svc.vip
                    ),
                ));
            }
        }
        if l3.interfaces.iter().all(|i| i.addrs.is_empty()) && !raw.services.is_empty() {
            errors.push(ConfigError::new(
                "interfaces",
                "a load balancer needs an interface with an address (the source of its health checks and full NAT)",
            ));
        }
        // A VIP on a connected subnet answers ARP there.
        let mut proxy_arp = l3.proxy_arp.clone();
        for &v in &vips {
            if let Some(i) = l3.connected(v) {
                proxy_arp.push((i, v));
            }
        }
        s.routed.l3 = L3Config::new(
            l3.interfaces.clone(),
            l3.fib.clone(),
            l3.arp,
            l3.icmp_rate,
            proxy_arp,
        );
    }
    let certs = raw
        .tls
        .certificates
        .iter()
        .map(|c| CertSpec {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    match sections {
        Some(sections) if errors.is_empty() => Ok(LbConfig {
            sections,
            lb: LbSettings {
                pools,
                services,
                vips,
                nat,
                max_proxy_connections,
            },
            certs,
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

    const BASE: &str = "underlay: {address: 198.18.0.1}
ports:
  - {name: front, vni: 100}
  - {name: back, vni: 200}
interfaces:
  - {name: front, port: front, addresses: [10.0.1.1/24]}
  - {name: back, port: back, addresses: [10.0.2.1/24]}
";

    #[test]
    fn l4_and_l7_services_compile() {
        let raw = parse(&format!(
            "{BASE}pools:
  - name: web
    backends:
      - {{name: a, address: 10.0.2.10:80, weight: 2}}
      - {{name: b, address: 10.0.2.11:80}}
    health: {{check: http, path: /healthz, expect: 2xx, interval: 500ms, timeout: 0.2}}
services:
  - {{name: l4, vip: 10.0.1.100, port: 80, protocol: tcp, pool: web, mode: dnat}}
  - name: l7
    vip: 10.0.1.100
    port: 8080
    protocol: http
    routes:
      - {{path: /api, pool: web}}
"
        ));
        let c = compile(&raw).expect("compiles");
        assert_eq!(c.lb.vips, vec![Ipv4Addr::new(10, 0, 1, 100)]);
        let p = &c.lb.pools[0];
        assert_eq!(p.backends[0].source, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(p.backends[0].weight, 2);
        let chk = p.check.as_ref().expect("a check");
        assert_eq!(chk.interval, Duration::from_millis(500));
        assert_eq!(chk.timeout, Duration::from_millis(200));
        assert!(matches!(
            c.lb.services[0].kind,
            ServiceKind::L4 {
                pool: 0,
                mode: Mode::Dnat
            }
        ));
        assert!(c.lb.services[1].is_l7());
        // The VIP answers ARP on the front interface.
        assert!(
            c.sections
                .routed
                .l3
                .answers_arp(0, Ipv4Addr::new(10, 0, 1, 100))
        );
    }

    #[test]
    fn errors_are_all_reported_with_paths() {
        let raw = parse(&format!(
            "{BASE}pools:
  - name: web
    table_size: 1000
    backends:
      - {{name: a, address: 10.0.2.10}}
      - {{name: a, address: 192.0.2.1:80}}
    health: {{check: smtp, expect: 7xx}}
services:
  - {{name: s, vip: 10.0.1.1, port: 80, protocol: sctp, pool: web}}
  - {{name: s, vip: 10.0.1.100, port: 443, protocol: https, pool: nope}}
  - {{name: t, vip: 10.0.1.100, port: 80, protocol: tcp}}
"
        ));
        let errs = compile(&raw).expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "pools[0].table_size",
            "pools[0].backends[0].address",
            "pools[0].backends[1].name",
            "pools[0].backends[1].address",
            "pools[0].health.expect",
            "pools[0].health.check",
            "services[0].protocol",
            "services[1].name",
            "services[1].pool",
            "services[2].pool",
            "tls.certificates",
        ] {
            assert!(paths.contains(&want), "{want} missing in {errs:#?}");
        }
    }

    #[test]
    fn durations_parse_with_units() {
        let d = |s: &str| RawDuration::Text(s.into()).parse();
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(d("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(d("3"), Ok(Duration::from_secs(3)));
        assert!(d("2 parsecs").is_err());
        assert!(d("").is_err());
        assert!(RawDuration::Seconds(-1.0).parse().is_err());
        assert!(RawDuration::Seconds(f64::NAN).parse().is_err());
    }

    #[test]
    fn shipped_example_compiles() {
        let raw = parse(include_str!("../../examples/lb.yaml"));
        if let Err(e) = compile(&raw) {
            panic!("examples/lb.yaml: {e:?}");
        }
    }
}
