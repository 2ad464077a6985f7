//! `vnf-lb`: the tenant load balancer (vLB): L4 with Maglev consistent hashing and
//! health-checked pools, L7 HTTP/HTTPS with TLS terminated by rustls.
//!
//! It is a routed function (overlay-io's `routed`: interfaces, routes, ARP, ICMP) whose
//! hook balances L4 services in the datapath ([`balancer`]), with a host stack of its own
//! ([`stack`], smoltcp on one thread) for what ends at the load balancer: L7 services,
//! health checks and the proxy's connections to backends.
//!
//! Modules:
//!
//! - [`maglev`]: Maglev consistent hashing (NSDI 2016 §3.4) with weights, a stable keyed
//!   hash and golden tests, so that an upgrade never silently remaps traffic;
//! - [`http`]: a zero-allocation HTTP/1.1 head parser and chunked decoder (RFC 9112),
//!   strict about request smuggling;
//! - [`proxy`]: one client connection of the HTTP reverse proxy, sans-IO;
//! - [`tls`]: certificates chosen by SNI, reloaded from disk;
//! - [`health`]: health checks (TCP, HTTP, HTTPS, TLS) and rise/fall, sans-IO;
//! - [`config`]: the config file;
//! - [`balancer`]: the network function (L4);
//! - [`stack`]: the host thread;
//! - [`LbApp`]: the daemon glue, metrics, state reports and the drain action.

pub mod balancer;
pub mod config;
pub mod health;
pub mod http;
pub mod maglev;
pub mod proxy;
pub mod stack;
pub mod tls;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use overlay_io::bridge;
use overlay_io::daemon::{ConfigError, VnfApp};
use overlay_io::datapath::Datapath;
use overlay_io::host::{DEFAULT_QUEUE, HostLink};
use overlay_io::io::mem::MemNet;
use overlay_io::l3::{L3Collector, L3Hub};
use overlay_io::metrics::{DatapathCollector, MetricsHub};

pub use balancer::{LoadBalancer, NfConfig, Shared};
pub use config::{LbConfig, RawConfig};

use stack::{HostCfg, HostMetrics, HostStack};
use tls::CertStore;

/// The function's config with counter slots given.
pub fn nf_config(cfg: &LbConfig, hub: &MetricsHub, l3hub: &L3Hub) -> Result<Arc<NfConfig>, String> {
    let mut bridges = cfg.sections.bridges.clone();
    bridge::resolve_slots(&mut bridges, hub).map_err(|e| e.to_string())?;
    let mut l3 = cfg.sections.routed.l3.clone();
    for i in &mut l3.interfaces {
        i.slot = l3hub.iface_slot(&i.name).map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(NfConfig {
        bridges,
        l3,
        ext: cfg.lb.clone(),
    }))
}

/// The load balancer's L4 datapath on the in-memory backend (no host stack: L7 services
/// and health checks do not run; every backend of a pool with a check starts down, so set
/// health with [`balancer::LbState::set_health`]), for tests, benchmarks and fuzzing.
pub fn in_memory(config: &LbConfig) -> Result<MemNet<LoadBalancer>, String> {
    let hub = Arc::new(MetricsHub::default());
    let l3hub = Arc::new(L3Hub::default());
    let nf = nf_config(config, &hub, &l3hub)?;
    let shared = Shared::new(&nf, l3hub);
    MemNet::new(hub, (*config.sections.datapath).clone(), &nf, |c, w| {
        LoadBalancer::new(c, shared, w)
    })
    .map_err(|e| e.to_string())
}

/// Reload an in-memory load balancer with a new config.
pub fn reload_in_memory(net: &mut MemNet<LoadBalancer>, config: &LbConfig) -> Result<(), String> {
    let l3hub = net.engine().nf().shared().hub.clone();
    let nf = nf_config(config, net.hub(), &l3hub)?;
    net.reload((*config.sections.datapath).clone(), &nf)
        .map_err(|e| e.to_string())
}

/// The L4 and health metrics, read from the shared state at scrape.
struct LbCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl LbCollector {
    fn families(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let st = self.shared.lock();
        let cfg = st.applied().clone();
        let lb = &st.ext;
        let mut out = Vec::new();
        let up = IntGaugeVec::new(
            Opts::new(
                "vnf_lb_backend_up",
                "1 when the backend passes its health checks (or its pool has none), 0 when down.",
            ),
            &["pool", "backend"],
        )?;
        let eligible = IntGaugeVec::new(
            Opts::new(
                "vnf_lb_backend_accepting",
                "1 when the backend takes new flows: up, weight above 0, not draining.",
            ),
            &["pool", "backend"],
        )?;
        let weight = IntGaugeVec::new(
            Opts::new("vnf_lb_backend_weight", "The backend's configured weight."),
            &["pool", "backend"],
        )?;
        let conns = IntCounterVec::new(
            Opts::new(
                "vnf_lb_backend_connections_total",
                "Connections sent to the backend: L4 flows, and L7 connections to it.",
            ),
            &["pool", "backend"],
        )?;
        let active = IntGaugeVec::new(
            Opts::new(
                "vnf_lb_backend_connections_active",
                "Open L4 connections to the backend (not closed).",
            ),
            &["pool", "backend"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "vnf_lb_backend_bytes_total",
                "Bytes (IP packets) of L4 connections: `in` client to backend, `out` backend to client.",
            ),
            &["pool", "backend", "direction"],
        )?;
        let packets = IntCounterVec::new(
            Opts::new(
                "vnf_lb_backend_packets_total",
                "Packets of L4 connections, by direction as for bytes.",
            ),
            &["pool", "backend", "direction"],
        )?;
        let active_by = lb.active_by_backend(&cfg.ext);
        for (pi, p) in cfg.ext.pools.iter().enumerate() {
            for (bi, b) in p.backends.iter().enumerate() {
                let l = [p.name.as_str(), b.name.as_str()];
                up.with_label_values(&l).set(i64::from(lb.is_up(pi, bi)));
                eligible
                    .with_label_values(&l)
                    .set(i64::from(lb.is_eligible(&cfg.ext, pi, bi)));
                weight.with_label_values(&l).set(i64::from(b.weight));
                let Some(slot) = lb.backend_slot(pi, bi) else {
                    continue;
                };
                let s = &lb.backends[slot];
                conns.with_label_values(&l).inc_by(s.connections);
                active
                    .with_label_values(&l)
                    .set(active_by.get(slot).copied().unwrap_or(0) as i64);
                for (dir, b, pk) in [
                    ("in", s.bytes_in, s.packets_in),
                    ("out", s.bytes_out, s.packets_out),
                ] {
                    bytes.with_label_values(&[l[0], l[1], dir]).inc_by(b);
                    packets.with_label_values(&[l[0], l[1], dir]).inc_by(pk);
                }
            }
        }
        let svc_conns = IntCounterVec::new(
            Opts::new(
                "vnf_lb_connections_total",
                "New L4 connections of a service.",
            ),
            &["service"],
        )?;
        let no_backend = IntCounterVec::new(
            Opts::new(
                "vnf_lb_no_backend_total",
                "New L4 flows refused because no backend of the pool was up (answered RST or ICMP port unreachable).",
            ),
            &["service"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "vnf_lb_refused_total",
                "New L4 flows refused because the connection table was full.",
            ),
            &["service"],
        )?;
        for (si, s) in cfg.ext.services.iter().enumerate() {
            if s.is_l7() {
                continue;
            }
            let Some(slot) = lb.service_slot(si) else {
                continue;
            };
            let c = &lb.services[slot];
            svc_conns
                .with_label_values(&[&s.name])
                .inc_by(c.connections);
            no_backend
                .with_label_values(&[&s.name])
                .inc_by(c.no_backend);
            refused.with_label_values(&[&s.name]).inc_by(c.refused);
        }
        let stats = lb.table.stats();
        let tracked = prometheus::IntGauge::new(
            "vnf_lb_connections",
            "L4 connections tracked (all services, closing ones included).",
        )?;
        tracked.set(stats.sessions as i64);
        let early = prometheus::IntCounter::new(
            "vnf_lb_early_drops_total",
            "L4 connections whose TCP handshake never completed, dropped to make room for new flows (a SYN flood shows here).",
        )?;
        early.inc_by(stats.early_drops);
        let host = IntCounterVec::new(
            Opts::new(
                "vnf_lb_host_packets_total",
                "Packets between the datapath and the L7/health-check stack: `to_host`, `from_host`, and those dropped because the other side's queue was full (`to_host_dropped`, `from_host_dropped`).",
            ),
            &["direction"],
        )?;
        if let Some(link) = self.shared.host() {
            let l = &link.stats;
            for (d, v) in [
                ("to_host", &l.to_host),
                ("from_host", &l.from_host),
                ("to_host_dropped", &l.to_host_dropped),
                ("from_host_dropped", &l.from_host_dropped),
            ] {
                host.with_label_values(&[d])
                    .inc_by(v.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
        for c in [
            Box::new(up) as Box<dyn Collector>,
            Box::new(eligible),
            Box::new(weight),
            Box::new(conns),
            Box::new(active),
            Box::new(bytes),
            Box::new(packets),
            Box::new(svc_conns),
            Box::new(no_backend),
            Box::new(refused),
            Box::new(tracked),
            Box::new(early),
            Box::new(host),
        ] {
            out.extend(c.collect());
        }
        out.retain(|mf| !mf.get_metric().is_empty());
        Ok(out)
    }
}

impl Collector for LbCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families().unwrap_or_else(|e| {
            tracing::error!(error = %e, "gathering load balancer metrics failed");
            Vec::new()
        })
    }
}

/// The running load balancer daemon.
#[derive(Debug)]
pub struct LbApp {
    datapath: Datapath<LoadBalancer>,
    l3hub: Arc<L3Hub>,
    shared: Arc<Shared>,
    host: HostStack,
    certs: Mutex<Option<Arc<CertStore>>>,
}

/// Load or reload the certificates; the TLS server config of HTTPS services.
fn tls_for(
    store: &Mutex<Option<Arc<CertStore>>>,
    cfg: &LbConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let mut g = store.lock().unwrap_or_else(PoisonError::into_inner);
    if cfg.certs.is_empty() {
        return Ok(g.as_ref().map(|s| tls::server_config(s.clone())));
    }
    match g.as_ref() {
        Some(s) => s.reload(&cfg.certs).map_err(|e| e.to_string())?,
        None => {
            *g = Some(Arc::new(
                CertStore::load(&cfg.certs).map_err(|e| e.to_string())?,
            ))
        }
    }
    Ok(g.as_ref().map(|s| tls::server_config(s.clone())))
}

/// `pool=NAME&backend=NAME` from a query string.
fn pool_backend(args: &str) -> Result<(String, String), String> {
    let (mut pool, mut backend) = (None, None);
    for kv in args.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("pool", v)) => pool = Some(v.to_owned()),
            Some(("backend", v)) => backend = Some(v.to_owned()),
            _ => {
                return Err(format!(
                    "unknown argument `{kv}`: use pool=NAME&backend=NAME"
                ));
            }
        }
    }
    match (pool, backend) {
        (Some(p), Some(b)) => Ok((p, b)),
        _ => Err("use pool=NAME&backend=NAME".into()),
    }
}

impl LbApp {
    /// Backends: health, weight, connections (`GET /state/backends`).
    pub fn backends(&self) -> String {
        let health = self.host.health();
        let st = self.shared.lock();
        let cfg = st.applied().clone();
        let active = st.ext.active_by_backend(&cfg.ext);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# pool backend address weight up accepting l4_active connections_total last_failure"
        );
        for (pi, p) in cfg.ext.pools.iter().enumerate() {
            for (bi, b) in p.backends.iter().enumerate() {
                let slot = st.ext.backend_slot(pi, bi);
                let total = slot.map_or(0, |s| st.ext.backends[s].connections);
                let act = slot.and_then(|s| active.get(s).copied()).unwrap_or(0);
                let failure = health
                    .iter()
                    .find(|h| h.pool == p.name && h.backend == b.name)
                    .and_then(|h| h.last_failure.clone())
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "{} {} {} {} {} {} {} {} {}",
                    p.name,
                    b.name,
                    b.addr,
                    b.weight,
                    if st.ext.is_up(pi, bi) { "up" } else { "down" },
                    if st.ext.is_eligible(&cfg.ext, pi, bi) {
                        "yes"
                    } else {
                        "no"
                    },
                    act,
                    total,
                    failure
                );
            }
        }
        out
    }

    /// L4 connections (`GET /state/connections`).
    pub fn connections(&self) -> String {
        let st = self.shared.lock();
        let now = Instant::now();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# proto client vip backend_side_src backend state idle_s"
        );
        for s in st.ext.table.sessions() {
            let _ = writeln!(
                out,
                "{:?} {}:{} {}:{} {}:{} {}:{} {:?} {}",
                s.original.proto,
                s.original.src.addr,
                s.original.src.port,
                s.original.dst.addr,
                s.original.dst.port,
                s.translated.src.addr,
                s.translated.src.port,
                s.translated.dst.addr,
                s.translated.dst.port,
                s.tcp,
                now.saturating_duration_since(s.last_seen).as_secs()
            );
        }
        out
    }
}

impl VnfApp for LbApp {
    const NAME: &'static str = "vnf-lb";
    const ABOUT: &'static str = "The tenant's load balancer: L4 TCP/UDP services with Maglev consistent hashing (full NAT or DNAT), L7 HTTP/HTTPS reverse proxy with TLS termination, health-checked pools";
    type Raw = RawConfig;
    type Config = LbConfig;

    fn compile(raw: &RawConfig) -> Result<LbConfig, Vec<ConfigError>> {
        config::compile(raw)
    }

    fn start(config: Arc<LbConfig>, registry: &prometheus::Registry) -> Result<Self, String> {
        let hub = Arc::new(MetricsHub::default());
        let l3hub = Arc::new(L3Hub::default());
        let nf = nf_config(&config, &hub, &l3hub)?;
        let shared = Shared::new(&nf, l3hub.clone());
        let l3 = &config.sections.routed.l3;
        let mtu = l3
            .interfaces
            .iter()
            .map(|i| i.mtu as usize)
            .min()
            .unwrap_or(1500);
        let addr = l3
            .interfaces
            .iter()
            .find_map(|i| i.addrs.first())
            .map(|n| n.ip())
            .ok_or("a load balancer needs an interface with an address")?;
        let link = HostLink::new(DEFAULT_QUEUE, mtu).map_err(|e| format!("host stack: {e}"))?;
        shared.set_host(link.clone());
        let certs = Mutex::new(None);
        let tls = tls_for(&certs, &config)?;
        let host_metrics = HostMetrics::register(registry).map_err(|e| e.to_string())?;
        let lbc = LbCollector {
            shared: shared.clone(),
            descs: Vec::new(),
        };
        let descs = overlay_io::metrics::descs_of(&lbc.families().unwrap_or_default());
        let lbc = LbCollector { descs, ..lbc };
        for c in [
            Box::new(DatapathCollector::new(hub.clone())) as Box<dyn Collector>,
            Box::new(L3Collector::new(l3hub.clone())),
            Box::new(lbc),
        ] {
            registry
                .register(c)
                .map_err(|e| format!("registering metrics: {e}"))?;
        }
        let host = HostStack::start(
            HostCfg {
                lb: config.lb.clone(),
                tls,
            },
            link,
            shared.clone(),
            addr,
            host_metrics,
        )
        .map_err(|e| format!("cannot start the host stack thread: {e}"))?;
        let sh = shared.clone();
        let datapath = Datapath::start(config.sections.datapath.clone(), nf, hub, move |c, w| {
            LoadBalancer::new(c, sh.clone(), w)
        })
        .map_err(|e| e.to_string())?;
        tracing::info!(
            services = config.lb.services.len(),
            pools = config.lb.pools.len(),
            "load balancer started"
        );
        Ok(LbApp {
            datapath,
            l3hub,
            shared,
            host,
            certs,
        })
    }

    fn reload(&self, config: Arc<LbConfig>) -> Result<(), String> {
        // Certificates first: a bad one refuses the whole reload.
        let tls = tls_for(&self.certs, &config)?;
        let nf = nf_config(&config, self.datapath.hub(), &self.l3hub)?;
        self.datapath
            .reload(config.sections.datapath.clone(), nf)
            .map_err(|e| e.to_string())?;
        self.host.reload(HostCfg {
            lb: config.lb.clone(),
            tls,
        });
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.datapath.is_ready()
    }

    fn shutdown(&self) {
        self.host.shutdown();
        self.datapath.shutdown();
    }

    fn report(&self, name: &str) -> Option<String> {
        match name {
            "backends" => Some(self.backends()),
            "connections" => Some(self.connections()),
            _ => None,
        }
    }

    fn action(&self, name: &str, args: &str) -> Option<Result<String, String>> {
        let drain = match name {
            "drain" => true,
            "undrain" => false,
            _ => return None,
        };
        Some(pool_backend(args).and_then(|(pool, backend)| {
            let mut st = self.shared.lock();
            let cfg = st.applied().clone();
            if st.ext.set_admin_drain(&cfg.ext, &pool, &backend, drain) {
                Ok(format!(
                    "{} {pool}/{backend}\n",
                    if drain { "draining" } else { "undrained" }
                ))
            } else {
                Err(format!("no backend `{backend}` in pool `{pool}`"))
            }
        }))
    }
}
