//! `vnf-firewall`: the stateful tenant firewall (vFW), routed or transparent.
//!
//! - Routed: an L3 hop with its own interfaces and routes (overlay-io's routed function:
//!   ARP, ICMP, forwarding), judging packets between the zones of its interfaces.
//! - Transparent: a bump in the wire, a bridge domain joining two segments (VNI 100 <->
//!   VNI 101, say), invisible to the hosts, judging bridged IPv4 between the zones of its
//!   ports.
//!
//! Modules:
//!
//! - [`policy`]: zones, address sets and zone-pair policies as written, and their checks;
//! - [`classifier`]: the rules compiled into a bit-vector classifier per zone pair;
//! - [`config`]: the whole config file;
//! - [`filter`]: the network function (connection tracking first, then the rules);
//! - [`FirewallApp`]: the daemon glue, with the firewall's metrics and its connection list.

pub mod classifier;
pub mod config;
pub mod filter;
pub mod policy;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

use overlay_io::bridge;
use overlay_io::conntrack::{ConnState, InvalidReason};
use overlay_io::daemon::{ConfigError, VnfApp};
use overlay_io::datapath::Datapath;
use overlay_io::io::mem::MemNet;
use overlay_io::l3::{L3Collector, L3Hub};
use overlay_io::metrics::{DatapathCollector, MetricsHub};

pub use config::{FirewallConfig, RawConfig};
pub use filter::{Filter, Firewall, NfConfig, RuleNames, Shared};

/// The function's config with counter slots given (bridges, interfaces, rules by name).
pub fn nf_config(
    cfg: &FirewallConfig,
    hub: &MetricsHub,
    l3hub: &L3Hub,
    rules: &RuleNames,
) -> Result<Arc<NfConfig>, String> {
    let mut bridges = cfg.sections.bridges.clone();
    bridge::resolve_slots(&mut bridges, hub).map_err(|e| e.to_string())?;
    let mut l3 = cfg.sections.routed.l3.clone();
    for i in &mut l3.interfaces {
        i.slot = l3hub.iface_slot(&i.name).map_err(|e| e.to_string())?;
    }
    let mut fw = cfg.fw.clone();
    fw.rule_slots = rules.slots(&fw.policy)?;
    Ok(Arc::new(NfConfig {
        bridges,
        l3,
        ext: fw,
    }))
}

/// The whole firewall on the in-memory backend, for tests, benchmarks and fuzzing.
pub fn in_memory(config: &FirewallConfig) -> Result<MemNet<Firewall>, String> {
    let hub = Arc::new(MetricsHub::default());
    let l3hub = Arc::new(L3Hub::default());
    let nf = nf_config(config, &hub, &l3hub, &RuleNames::default())?;
    let shared = Shared::new(&nf, l3hub);
    MemNet::new(hub, (*config.sections.datapath).clone(), &nf, |c, w| {
        Firewall::new(c, shared, w)
    })
    .map_err(|e| e.to_string())
}

/// Reload an in-memory firewall with a new config (rule counter slots are not kept).
pub fn reload_in_memory(net: &mut MemNet<Firewall>, config: &FirewallConfig) -> Result<(), String> {
    let l3hub = net.engine().nf().shared().hub.clone();
    let nf = nf_config(config, net.hub(), &l3hub, &RuleNames::default())?;
    net.reload((*config.sections.datapath).clone(), &nf)
        .map_err(|e| e.to_string())
}

/// The firewall's own metrics: per-rule hits and the connection table, read at scrape.
struct FwCollector {
    shared: Arc<Shared>,
    rules: Arc<RuleNames>,
    descs: Vec<Desc>,
}

impl FwCollector {
    fn families(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let labels = self.rules.labels();
        let st = self.shared.lock();
        let fw = &st.ext;
        let mut out = Vec::new();
        let hits = IntCounterVec::new(
            Opts::new(
                "vnf_fw_rule_packets_total",
                "Packets a rule (or a zone pair's default) decided; established traffic is not counted here.",
            ),
            &["from", "to", "rule"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "vnf_fw_rule_bytes_total",
                "Bytes (IP packet) of those packets.",
            ),
            &["from", "to", "rule"],
        )?;
        for (i, (f, t, n)) in labels.iter().enumerate() {
            let l = [f.as_str(), t.as_str(), n.as_str()];
            hits.with_label_values(&l)
                .inc_by(fw.rule_packets.get(i).copied().unwrap_or(0));
            bytes
                .with_label_values(&l)
                .inc_by(fw.rule_bytes.get(i).copied().unwrap_or(0));
        }
        out.extend(hits.collect());
        out.extend(bytes.collect());
        let s = fw.ct.stats();
        let conns = IntGauge::new("vnf_conntrack_connections", "Tracked connections.")?;
        conns.set(s.connections as i64);
        out.extend(conns.collect());
        let by_state = IntGaugeVec::new(
            Opts::new(
                "vnf_conntrack_connections_by_state",
                "Tracked connections by state.",
            ),
            &["state"],
        )?;
        for c in ConnState::ALL {
            by_state
                .with_label_values(&[c.label()])
                .set(s.by_state.get(c.index()).copied().unwrap_or(0) as i64);
        }
        out.extend(by_state.collect());
        let plain: [(&str, &str, u64); 5] = [
            (
                "vnf_conntrack_created_total",
                "Connections created.",
                s.created,
            ),
            (
                "vnf_conntrack_expired_total",
                "Connections removed by timeout.",
                s.expired,
            ),
            (
                "vnf_conntrack_early_drops_total",
                "Connections that never completed, dropped to make room for new ones.",
                s.early_drops,
            ),
            (
                "vnf_conntrack_refused_total",
                "New connections refused: the table or the zone's share was full and nothing could be dropped early.",
                s.refused_table_full + s.refused_zone_full,
            ),
            (
                "vnf_conntrack_removed_total",
                "Connections removed by a reload that no longer allows them, or reopened.",
                s.removed,
            ),
        ];
        for (name, help, v) in plain {
            let c = prometheus::IntCounter::new(name, help)?;
            c.inc_by(v);
            out.extend(c.collect());
        }
        let suppressed = IntGauge::new(
            "vnf_fw_log_suppressed",
            "Log lines not written since the last one because of the rate limit.",
        )?;
        suppressed.set(fw.log_suppressed as i64);
        out.extend(suppressed.collect());
        let invalid = IntCounterVec::new(
            Opts::new(
                "vnf_conntrack_invalid_total",
                "Packets connection tracking found invalid, by reason.",
            ),
            &["reason"],
        )?;
        for r in InvalidReason::ALL {
            invalid
                .with_label_values(&[r.label()])
                .inc_by(s.invalid_for(r));
        }
        out.extend(invalid.collect());
        let mem = IntGauge::new(
            "vnf_conntrack_memory_bytes",
            "Memory of the connection table.",
        )?;
        mem.set(fw.ct.memory_bytes() as i64);
        out.extend(mem.collect());
        out.retain(|mf| !mf.get_metric().is_empty());
        Ok(out)
    }
}

impl Collector for FwCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families().unwrap_or_else(|e| {
            tracing::error!(error = %e, "gathering firewall metrics failed");
            Vec::new()
        })
    }
}

/// The running firewall daemon.
#[derive(Debug)]
pub struct FirewallApp {
    datapath: Datapath<Firewall>,
    l3hub: Arc<L3Hub>,
    rules: Arc<RuleNames>,
    shared: Arc<Shared>,
}

impl FirewallApp {
    /// The current connections, one per line (the admin endpoint's `/connections`).
    pub fn connections(&self) -> String {
        let st = self.shared.lock();
        let now = Instant::now();
        let zones = st.applied_zone_names();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# proto src sport dst dport state from to packets(orig/reply) bytes(orig/reply) age_s expires_in_s"
        );
        for c in st.ext.ct.conns(now) {
            let z = |i: u32| zones.get(i as usize).map_or("-", String::as_str);
            let _ = writeln!(
                out,
                "{} {} {} {} {} {} {} {} {}/{} {}/{} {} {}",
                c.key.proto,
                c.key.src,
                c.key.sport,
                c.key.dst,
                c.key.dport,
                c.state.label(),
                z(c.zone),
                z(c.tag),
                c.packets[0],
                c.packets[1],
                c.bytes[0],
                c.bytes[1],
                c.age.as_secs(),
                c.expires_in.as_secs()
            );
        }
        out
    }
}

/// Zone names of the applied policy, for the connection list.
trait ZoneNames {
    fn applied_zone_names(&self) -> Vec<String>;
}

impl ZoneNames for overlay_io::routed::State<Filter> {
    fn applied_zone_names(&self) -> Vec<String> {
        self.applied()
            .ext
            .policy
            .zones()
            .iter()
            .map(|z| z.name.clone())
            .collect()
    }
}

impl VnfApp for FirewallApp {
    const NAME: &'static str = "vnf-firewall";
    const ABOUT: &'static str = "The tenant's stateful firewall: zones, ordered rules and connection tracking, routed (an L3 hop) or transparent (a bump in the wire between two segments)";
    type Raw = RawConfig;
    type Config = FirewallConfig;

    fn compile(raw: &RawConfig) -> Result<FirewallConfig, Vec<ConfigError>> {
        config::compile(raw)
    }

    fn start(config: Arc<FirewallConfig>, registry: &prometheus::Registry) -> Result<Self, String> {
        let hub = Arc::new(MetricsHub::default());
        let l3hub = Arc::new(L3Hub::default());
        let rules = Arc::new(RuleNames::default());
        let nf = nf_config(&config, &hub, &l3hub, &rules)?;
        let shared = Shared::new(&nf, l3hub.clone());
        let fw = FwCollector {
            shared: shared.clone(),
            rules: rules.clone(),
            descs: Vec::new(),
        };
        let descs = overlay_io::metrics::descs_of(&fw.families().unwrap_or_default());
        let fw = FwCollector { descs, ..fw };
        for c in [
            Box::new(DatapathCollector::new(hub.clone())) as Box<dyn Collector>,
            Box::new(L3Collector::new(l3hub.clone())),
            Box::new(fw),
        ] {
            registry
                .register(c)
                .map_err(|e| format!("registering metrics: {e}"))?;
        }
        let sh = shared.clone();
        let datapath = Datapath::start(config.sections.datapath.clone(), nf, hub, move |c, w| {
            Firewall::new(c, sh.clone(), w)
        })
        .map_err(|e| e.to_string())?;
        tracing::info!(
            zones = config.fw.policy.zones().len(),
            rules = config.fw.policy.rules().len(),
            max_connections = config.fw.conntrack.max_conns,
            "policy loaded"
        );
        Ok(FirewallApp {
            datapath,
            l3hub,
            rules,
            shared,
        })
    }

    fn reload(&self, config: Arc<FirewallConfig>) -> Result<(), String> {
        let nf = nf_config(&config, self.datapath.hub(), &self.l3hub, &self.rules)?;
        self.datapath
            .reload(config.sections.datapath.clone(), nf)
            .map_err(|e| e.to_string())
    }

    fn is_ready(&self) -> bool {
        self.datapath.is_ready()
    }

    fn shutdown(&self) {
        self.datapath.shutdown();
    }

    fn report(&self, name: &str) -> Option<String> {
        (name == "connections").then(|| self.connections())
    }
}
