//! `vnf-router`: the tenant's virtual router.
//!
//! It joins VXLAN segments, VLANs of a trunk and plain interfaces, and
//!
//! - bridges them in bridge domains: the VXLAN L2 gateway of the background article's
//!   scheme (1) (VNI <-> VLAN, VNI <-> VNI);
//! - routes IPv4 between routed interfaces on ports or on bridge domains (IRB): connected,
//!   static, ECMP and refusing routes over a longest-prefix-match table, ARP, ICMP echo and
//!   errors (time exceeded, unreachable, fragmentation needed);
//! - translates addresses: masquerade from pools, port forwards, 1:1 floating addresses
//!   with hairpin.
//!
//! - [`config`]: the YAML config and its checks (the routed sections are
//!   [`overlay_io::l3config`], shared with the firewall).
//! - [`router`]: the network function.
//! - [`RouterApp`]: the daemon glue ([`overlay_io::daemon::VnfApp`]).

pub mod config;
pub use overlay_io::l3config;
pub mod router;

use std::sync::Arc;

use overlay_io::bridge;
use overlay_io::daemon::{ConfigError, VnfApp};
use overlay_io::datapath::Datapath;
use overlay_io::io::mem::MemNet;
use overlay_io::l3::{L3Collector, L3Hub};
use overlay_io::metrics::{DatapathCollector, MetricsHub};

pub use config::{RawConfig, RouterConfig};
pub use router::{NfConfig, Router, Shared};

/// The function's config with counter slots given: bridge domains and interfaces get
/// theirs by name, kept across reloads.
pub fn nf_config(
    cfg: &RouterConfig,
    hub: &MetricsHub,
    l3hub: &L3Hub,
) -> Result<Arc<NfConfig>, String> {
    let mut bridges = cfg.bridges.clone();
    bridge::resolve_slots(&mut bridges, hub).map_err(|e| e.to_string())?;
    let mut l3 = cfg.routed.l3.clone();
    for i in &mut l3.interfaces {
        i.slot = l3hub.iface_slot(&i.name).map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(NfConfig {
        bridges,
        l3,
        ext: cfg.routed.nat.clone(),
    }))
}

impl Router {
    /// Reload an in-memory router (see [`Router::in_memory`]) with a new config.
    pub fn reload_in_memory(net: &mut MemNet<Router>, config: &RouterConfig) -> Result<(), String> {
        let l3hub = net.engine().nf().shared().hub.clone();
        let nf = nf_config(config, net.hub(), &l3hub)?;
        net.reload((*config.datapath).clone(), &nf)
            .map_err(|e| e.to_string())
    }

    /// The whole router datapath on the in-memory backend, for tests and fuzzing: the same
    /// engine the sockets drive, with its own metrics hubs and a simulated clock.
    pub fn in_memory(config: &RouterConfig) -> Result<MemNet<Router>, String> {
        let hub = Arc::new(MetricsHub::default());
        let l3hub = Arc::new(L3Hub::default());
        let nf = nf_config(config, &hub, &l3hub)?;
        let shared = Shared::new(&nf, l3hub);
        MemNet::new(hub, (*config.datapath).clone(), &nf, |c, w| {
            Router::new(c, shared, w)
        })
        .map_err(|e| e.to_string())
    }
}

/// The running router daemon.
#[derive(Debug)]
pub struct RouterApp {
    datapath: Datapath<Router>,
    l3hub: Arc<L3Hub>,
}

impl RouterApp {
    /// The running datapath.
    pub fn datapath(&self) -> &Datapath<Router> {
        &self.datapath
    }
}

impl VnfApp for RouterApp {
    const NAME: &'static str = "vnf-router";
    const ABOUT: &'static str = "The tenant's virtual router: VXLAN L2 gateway (VNI <-> VLAN/VNI bridge domains), IPv4 routing with ARP and ICMP, and NAT";
    type Raw = RawConfig;
    type Config = RouterConfig;

    fn compile(raw: &RawConfig) -> Result<RouterConfig, Vec<ConfigError>> {
        config::compile(raw)
    }

    fn start(config: Arc<RouterConfig>, registry: &prometheus::Registry) -> Result<Self, String> {
        let hub = Arc::new(MetricsHub::default());
        let l3hub = Arc::new(L3Hub::default());
        let nf = nf_config(&config, &hub, &l3hub)?;
        registry
            .register(Box::new(DatapathCollector::new(hub.clone())))
            .map_err(|e| format!("registering metrics: {e}"))?;
        registry
            .register(Box::new(L3Collector::new(l3hub.clone())))
            .map_err(|e| format!("registering metrics: {e}"))?;
        let shared = Shared::new(&nf, l3hub.clone());
        let datapath = Datapath::start(config.datapath.clone(), nf, hub, move |c, w| {
            Router::new(c, shared.clone(), w)
        })
        .map_err(|e| e.to_string())?;
        if let Some(u) = &config.datapath.underlay {
            tracing::info!(
                vtep = %u.local,
                source_ports = ?datapath.source_ports(),
                "VTEP up"
            );
        }
        for i in &config.routed.l3.interfaces {
            tracing::info!(
                interface = %i.name,
                mac = %overlay_io::fmt_mac(&i.mac),
                addresses = ?i.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                mtu = i.mtu,
                "interface up"
            );
        }
        Ok(RouterApp { datapath, l3hub })
    }

    fn reload(&self, config: Arc<RouterConfig>) -> Result<(), String> {
        let nf = nf_config(&config, self.datapath.hub(), &self.l3hub)?;
        self.datapath
            .reload(config.datapath.clone(), nf)
            .map_err(|e| e.to_string())
    }

    fn is_ready(&self) -> bool {
        self.datapath.is_ready()
    }

    fn shutdown(&self) {
        self.datapath.shutdown();
    }
}
