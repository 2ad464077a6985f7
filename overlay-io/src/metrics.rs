//! Datapath counters.
//!
//! Format: Prometheus text exposition via the `prometheus` crate, names following its
//! conventions (`_total` counters, a `reason` label for drops, never a label per flow or per
//! client address).
//!
//! Design: every worker owns a [`WorkerCounters`] and is its only writer, so an increment
//! is a relaxed load and store (no locked instruction, no shared cache line). A scrape sums
//! the workers' values in [`DatapathCollector`]. Ports, VNIs and bridge domains get a
//! counter *slot* by name the first time a config names them, and keep it across reloads,
//! so a reload never moves a counter to another label.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::pipeline::DropReason;

/// Counter slots for ports.
pub const PORT_SLOTS: usize = 1024;
/// Counter slots for VNIs.
pub const VNI_SLOTS: usize = 4096;
/// Counter slots for bridge domains.
pub const BRIDGE_SLOTS: usize = 256;

/// A counter written by one thread and read by the scraper.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning worker calls this, so load+store cannot lose updates.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Set (for gauges owned by one worker).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// Read.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Per-port traffic.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received on the port.
    pub rx_packets: Counter,
    /// Bytes of those frames (Ethernet header included, tag and VXLAN excluded).
    pub rx_bytes: Counter,
    /// Frames sent out of the port (a flooded VXLAN frame counts once per port).
    pub tx_packets: Counter,
    /// Bytes of those frames.
    pub tx_bytes: Counter,
}

/// Per-VNI VTEP counters.
#[derive(Debug, Default)]
pub struct VniCounters {
    /// VXLAN packets received for the VNI and accepted.
    pub rx_packets: Counter,
    /// Their inner-frame bytes.
    pub rx_bytes: Counter,
    /// VXLAN packets sent (each head-end replica counts).
    pub tx_packets: Counter,
    /// Their inner-frame bytes.
    pub tx_bytes: Counter,
    /// Forwarding-table entries in this worker's table (a gauge).
    pub fdb_entries: Counter,
    /// MACs learned.
    pub fdb_learned: Counter,
    /// MACs that moved to another VTEP.
    pub fdb_moved: Counter,
    /// Entries aged out.
    pub fdb_aged: Counter,
    /// MACs not learned because the table was full.
    pub fdb_cap_hits: Counter,
    /// Copies sent by head-end replication of broadcast, multicast and unknown unicast.
    pub flood_copies: Counter,
}

/// Per-bridge-domain counters.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// MAC entries in this worker's table (a gauge).
    pub entries: Counter,
    /// MACs learned.
    pub learned: Counter,
    /// MACs that moved to another port.
    pub moved: Counter,
    /// Entries aged out.
    pub aged: Counter,
    /// MACs not learned because the table was full.
    pub cap_hits: Counter,
    /// Frames flooded (once per frame, not per copy).
    pub floods: Counter,
}

/// All counters of one worker.
#[derive(Debug)]
pub struct WorkerCounters {
    /// By port slot.
    pub ports: Box<[PortCounters]>,
    /// By VNI slot.
    pub vnis: Box<[VniCounters]>,
    /// By bridge slot.
    pub bridges: Box<[BridgeCounters]>,
    /// By [`DropReason::index`].
    pub drops: [Counter; DropReason::ALL.len()],
}

impl Default for WorkerCounters {
    fn default() -> Self {
        fn slots<T: Default>(n: usize) -> Box<[T]> {
            (0..n).map(|_| T::default()).collect()
        }
        WorkerCounters {
            ports: slots(PORT_SLOTS),
            vnis: slots(VNI_SLOTS),
            bridges: slots(BRIDGE_SLOTS),
            drops: std::array::from_fn(|_| Counter::default()),
        }
    }
}

impl WorkerCounters {
    /// Count a drop.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].inc();
    }
}

/// Why a slot could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "more than {limit} distinct {kind} names since start: restart the process to reuse counter slots"
)]
pub struct SlotsExhausted {
    /// What ran out.
    pub kind: &'static str,
    /// The limit.
    pub limit: usize,
}

#[derive(Debug, Default)]
struct Names {
    ports: Vec<String>,
    vnis: Vec<u32>,
    bridges: Vec<String>,
}

/// The counters of every worker and the labels of their slots.
#[derive(Debug, Default)]
pub struct MetricsHub {
    workers: Mutex<Vec<Arc<WorkerCounters>>>,
    names: Mutex<Names>,
}

fn slot_of<T: PartialEq>(
    list: &mut Vec<T>,
    v: T,
    kind: &'static str,
    limit: usize,
) -> Result<usize, SlotsExhausted> {
    if let Some(i) = list.iter().position(|x| *x == v) {
        return Ok(i);
    }
    if list.len() >= limit {
        return Err(SlotsExhausted { kind, limit });
    }
    list.push(v);
    Ok(list.len() - 1)
}

impl MetricsHub {
    /// Counters for a new worker.
    pub fn add_worker(&self) -> Arc<WorkerCounters> {
        let c = Arc::new(WorkerCounters::default());
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c.clone());
        c
    }

    /// The slot of a port name.
    pub fn port_slot(&self, name: &str) -> Result<usize, SlotsExhausted> {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        slot_of(&mut n.ports, name.to_owned(), "port", PORT_SLOTS)
    }

    /// The slot of a VNI.
    pub fn vni_slot(&self, vni: u32) -> Result<usize, SlotsExhausted> {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        slot_of(&mut n.vnis, vni, "VNI", VNI_SLOTS)
    }

    /// The slot of a bridge domain name.
    pub fn bridge_slot(&self, name: &str) -> Result<usize, SlotsExhausted> {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        slot_of(&mut n.bridges, name.to_owned(), "bridge", BRIDGE_SLOTS)
    }

    /// Sum of one counter over workers.
    fn sum<F: Fn(&WorkerCounters) -> u64>(workers: &[Arc<WorkerCounters>], f: F) -> u64 {
        workers.iter().map(|w| f(w)).sum()
    }

    /// The sum of a drop reason over workers (for tests and status).
    pub fn drops(&self, reason: DropReason) -> u64 {
        let w = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        Self::sum(&w, |c| c.drops[reason.index()].get())
    }

    /// Every metric family, summed over workers.
    pub fn gather(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let names = {
            let n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            (n.ports.clone(), n.vnis.clone(), n.bridges.clone())
        };
        let (ports, vnis, bridges) = names;
        let mut out = Vec::new();

        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };

        type PortField = fn(&PortCounters) -> &Counter;
        let port_metrics: [(&str, &str, PortField); 4] = [
            (
                "vnf_port_rx_packets_total",
                "Frames received on a port.",
                |c| &c.rx_packets,
            ),
            (
                "vnf_port_rx_bytes_total",
                "Bytes of frames received on a port.",
                |c| &c.rx_bytes,
            ),
            (
                "vnf_port_tx_packets_total",
                "Frames sent out of a port.",
                |c| &c.tx_packets,
            ),
            (
                "vnf_port_tx_bytes_total",
                "Bytes of frames sent out of a port.",
                |c| &c.tx_bytes,
            ),
        ];
        for (name, help, f) in port_metrics {
            let v = counter(name, help, "port")?;
            for (slot, port) in ports.iter().enumerate() {
                v.with_label_values(&[port.as_str()])
                    .inc_by(Self::sum(&workers, |w| f(&w.ports[slot]).get()));
            }
            out.extend(v.collect());
        }

        type VniField = fn(&VniCounters) -> &Counter;
        let vni_metrics: [(&str, &str, VniField); 9] = [
            (
                "vnf_vxlan_rx_packets_total",
                "VXLAN packets received and accepted, by VNI.",
                |c| &c.rx_packets,
            ),
            (
                "vnf_vxlan_rx_bytes_total",
                "Inner-frame bytes of accepted VXLAN packets, by VNI.",
                |c| &c.rx_bytes,
            ),
            (
                "vnf_vxlan_tx_packets_total",
                "VXLAN packets sent, each head-end replica counted, by VNI.",
                |c| &c.tx_packets,
            ),
            (
                "vnf_vxlan_tx_bytes_total",
                "Inner-frame bytes of VXLAN packets sent, by VNI.",
                |c| &c.tx_bytes,
            ),
            (
                "vnf_fdb_learned_total",
                "MAC addresses learned into a VNI's forwarding table.",
                |c| &c.fdb_learned,
            ),
            (
                "vnf_fdb_moved_total",
                "Learned MAC addresses that moved to another VTEP.",
                |c| &c.fdb_moved,
            ),
            (
                "vnf_fdb_aged_total",
                "Forwarding-table entries removed by ageing.",
                |c| &c.fdb_aged,
            ),
            (
                "vnf_fdb_cap_hits_total",
                "MAC addresses not learned because the VNI's table was full.",
                |c| &c.fdb_cap_hits,
            ),
            (
                "vnf_flood_copies_total",
                "Copies sent by head-end replication (broadcast, multicast, unknown unicast).",
                |c| &c.flood_copies,
            ),
        ];
        for (name, help, f) in vni_metrics {
            let v = counter(name, help, "vni")?;
            for (slot, vni) in vnis.iter().enumerate() {
                v.with_label_values(&[vni.to_string().as_str()])
                    .inc_by(Self::sum(&workers, |w| f(&w.vnis[slot]).get()));
            }
            out.extend(v.collect());
        }

        let fdb = gauge(
            "vnf_fdb_entries",
            "Entries in a VNI's forwarding table, per worker (each worker keeps its own table).",
            &["vni", "worker"],
        )?;
        for (slot, vni) in vnis.iter().enumerate() {
            for (i, w) in workers.iter().enumerate() {
                fdb.with_label_values(&[vni.to_string().as_str(), i.to_string().as_str()])
                    .set(w.vnis[slot].fdb_entries.get() as i64);
            }
        }
        out.extend(fdb.collect());

        type BridgeField = fn(&BridgeCounters) -> &Counter;
        let bridge_metrics: [(&str, &str, BridgeField); 5] = [
            (
                "vnf_bridge_learned_total",
                "MAC addresses learned in a bridge domain.",
                |c| &c.learned,
            ),
            (
                "vnf_bridge_moved_total",
                "MAC addresses that moved to another port of a bridge domain.",
                |c| &c.moved,
            ),
            (
                "vnf_bridge_aged_total",
                "Bridge-domain MAC entries removed by ageing.",
                |c| &c.aged,
            ),
            (
                "vnf_bridge_cap_hits_total",
                "MAC addresses not learned because the bridge domain's table was full.",
                |c| &c.cap_hits,
            ),
            (
                "vnf_bridge_floods_total",
                "Frames flooded to every other port of a bridge domain.",
                |c| &c.floods,
            ),
        ];
        for (name, help, f) in bridge_metrics {
            let v = counter(name, help, "bridge")?;
            for (slot, b) in bridges.iter().enumerate() {
                v.with_label_values(&[b.as_str()])
                    .inc_by(Self::sum(&workers, |w| f(&w.bridges[slot]).get()));
            }
            out.extend(v.collect());
        }
        let macs = gauge(
            "vnf_bridge_mac_entries",
            "MAC entries in a bridge domain's table, per worker.",
            &["bridge", "worker"],
        )?;
        for (slot, b) in bridges.iter().enumerate() {
            for (i, w) in workers.iter().enumerate() {
                macs.with_label_values(&[b.as_str(), i.to_string().as_str()])
                    .set(w.bridges[slot].entries.get() as i64);
            }
        }
        out.extend(macs.collect());

        let drops = counter(
            "vnf_drops_total",
            "Packets dropped by the datapath, by reason.",
            "reason",
        )?;
        for r in DropReason::ALL {
            drops
                .with_label_values(&[r.label()])
                .inc_by(Self::sum(&workers, |w| w.drops[r.index()].get()));
        }
        out.extend(drops.collect());
        // A family with no labelled child yet (no VNI configured, say) is left out: the
        // text format has no way to write it.
        out.retain(|mf| !mf.get_metric().is_empty());
        Ok(out)
    }
}

/// The descriptions a collector declares, taken from a gather over sample data, so that
/// the two cannot disagree (every collector of the suite does it this way).
pub fn descs_of(families: &[MetricFamily]) -> Vec<Desc> {
    families
        .iter()
        .filter_map(|mf| {
            Desc::new(
                mf.name().to_owned(),
                mf.help().to_owned(),
                vec![],
                HashMap::new(),
            )
            .ok()
        })
        .collect()
}

/// Registers the datapath's counters on a Prometheus registry.
#[derive(Debug, Clone)]
pub struct DatapathCollector {
    hub: Arc<MetricsHub>,
    descs: Vec<Desc>,
}

impl DatapathCollector {
    /// A collector over a hub.
    pub fn new(hub: Arc<MetricsHub>) -> DatapathCollector {
        // Descriptions come from a gather over a sample hub with one label of each kind, so
        // the two cannot disagree.
        let sample = MetricsHub::default();
        sample.add_worker();
        let _ = (
            sample.port_slot("p"),
            sample.vni_slot(1),
            sample.bridge_slot("b"),
        );
        let descs = descs_of(&sample.gather().unwrap_or_default());
        DatapathCollector { hub, descs }
    }
}

impl Collector for DatapathCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match self.hub.gather() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "gathering datapath metrics failed");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_workers_and_keeps_slots() {
        let hub = MetricsHub::default();
        let a = hub.add_worker();
        let b = hub.add_worker();
        let s = hub.port_slot("web").unwrap();
        assert_eq!(hub.port_slot("web").unwrap(), s);
        a.ports[s].rx_packets.add(3);
        b.ports[s].rx_packets.add(4);
        a.count_drop(DropReason::VniNotJoined);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&hub.gather().unwrap())
            .unwrap();
        assert!(
            text.contains("vnf_port_rx_packets_total{port=\"web\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("vnf_drops_total{reason=\"vni_not_joined\"} 1"),
            "{text}"
        );
        assert_eq!(hub.drops(DropReason::VniNotJoined), 1);
    }

    #[test]
    fn slots_are_bounded() {
        let hub = MetricsHub::default();
        for i in 0..BRIDGE_SLOTS {
            hub.bridge_slot(&format!("b{i}")).unwrap();
        }
        assert!(hub.bridge_slot("one-more").is_err());
        assert!(hub.bridge_slot("b0").is_ok());
    }
}
