//! `vnf-router`: the tenant's virtual router.
//!
//! Today it is the VXLAN L2 gateway of the background article's scheme (1): bridge domains
//! that join a VXLAN segment to a VLAN on a trunk (connecting the overlay to a traditional
//! VLAN network), to an untagged interface, or to another VNI. Routing, ARP, ICMP and NAT
//! come to the same binary later.
//!
//! - [`config`]: the YAML config (`underlay`, `ports`, `bridges`, tuning) and its checks.
//! - [`Router`]: the network function, a set of [`overlay_io::bridge`] domains.
//! - [`RouterApp`]: the daemon glue ([`overlay_io::daemon::VnfApp`]).

pub mod config;

use std::sync::Arc;
use std::time::Instant;

use overlay_io::bridge::{self, Bridge, DomainConfig};
use overlay_io::buf::PacketBuf;
use overlay_io::daemon::{ConfigError, VnfApp};
use overlay_io::datapath::Datapath;
use overlay_io::io::mem::MemNet;
use overlay_io::metrics::{DatapathCollector, MetricsHub, WorkerCounters};
use overlay_io::pipeline::{NetworkFunction, PortId, Verdict};

pub use config::{RawConfig, RouterConfig};

/// The router's network function.
#[derive(Debug)]
pub struct Router {
    bridge: Bridge,
}

impl Router {
    /// A router for one worker.
    pub fn new(bridges: &Arc<Vec<DomainConfig>>, counters: Arc<WorkerCounters>) -> Router {
        Router {
            bridge: Bridge::new(bridges, counters),
        }
    }

    /// The L2 gateway's bridge domains.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// The whole router datapath on the in-memory backend, for tests and fuzzing: the same
    /// engine the sockets drive, with its own metrics hub and a simulated clock.
    pub fn in_memory(config: &RouterConfig) -> Result<MemNet<Router>, String> {
        let hub = Arc::new(MetricsHub::default());
        let bridges = with_slots(config, &hub)?;
        MemNet::new(hub, (*config.datapath).clone(), &bridges, |b, c| {
            Router::new(b, c)
        })
        .map_err(|e| e.to_string())
    }
}

impl NetworkFunction for Router {
    type Config = Vec<DomainConfig>;

    fn reconfigure(
        &mut self,
        config: &Arc<Vec<DomainConfig>>,
        remap: &dyn Fn(PortId) -> Option<PortId>,
    ) {
        self.bridge.reconfigure(config, remap);
    }

    fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant) {
        self.bridge.process(pkts, verdicts, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.bridge.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.bridge.handle_timeout(now);
    }
}

/// The running router daemon.
#[derive(Debug)]
pub struct RouterApp {
    datapath: Datapath<Router>,
}

impl RouterApp {
    /// The running datapath.
    pub fn datapath(&self) -> &Datapath<Router> {
        &self.datapath
    }
}

fn with_slots(cfg: &RouterConfig, hub: &MetricsHub) -> Result<Arc<Vec<DomainConfig>>, String> {
    let mut b = cfg.bridges.clone();
    bridge::resolve_slots(&mut b, hub).map_err(|e| e.to_string())?;
    Ok(Arc::new(b))
}

impl VnfApp for RouterApp {
    const NAME: &'static str = "vnf-router";
    const ABOUT: &'static str = "The tenant's virtual router: a VXLAN L2 gateway bridging VNIs to VLANs, interfaces and other VNIs";
    type Raw = RawConfig;
    type Config = RouterConfig;

    fn compile(raw: &RawConfig) -> Result<RouterConfig, Vec<ConfigError>> {
        config::compile(raw)
    }

    fn start(config: Arc<RouterConfig>, registry: &prometheus::Registry) -> Result<Self, String> {
        let hub = Arc::new(MetricsHub::default());
        let bridges = with_slots(&config, &hub)?;
        registry
            .register(Box::new(DatapathCollector::new(hub.clone())))
            .map_err(|e| format!("registering metrics: {e}"))?;
        let datapath = Datapath::start(config.datapath.clone(), bridges, hub, |b, c| {
            Router::new(b, c)
        })
        .map_err(|e| e.to_string())?;
        if let Some(u) = &config.datapath.underlay {
            tracing::info!(
                vtep = %u.local,
                source_ports = ?datapath.source_ports(),
                "VTEP up"
            );
        }
        Ok(RouterApp { datapath })
    }

    fn reload(&self, config: Arc<RouterConfig>) -> Result<(), String> {
        let bridges = with_slots(&config, self.datapath.hub())?;
        self.datapath
            .reload(config.datapath.clone(), bridges)
            .map_err(|e| e.to_string())
    }

    fn is_ready(&self) -> bool {
        self.datapath.is_ready()
    }

    fn shutdown(&self) {
        self.datapath.shutdown();
    }
}
