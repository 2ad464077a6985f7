//! The in-memory backend: the same [`Engine`] the socket workers run, driven by tests with
//! injected packets and a simulated clock. Deterministic: no sockets, no threads, no
//! wall-clock reads.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buf::PacketBuf;
use crate::datapath::config::DatapathConfig;
use crate::datapath::engine::{Engine, Installed};
use crate::metrics::{MetricsHub, SlotsExhausted, WorkerCounters};
use crate::pipeline::NetworkFunction;

/// Something the datapath sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A VXLAN datagram (header and inner frame) to a remote VTEP.
    Vxlan {
        /// The remote VTEP.
        dst: IpAddr,
        /// The inner-flow hash that picks the outer source port.
        entropy: u32,
        /// The UDP payload.
        datagram: Vec<u8>,
    },
    /// A frame on a host interface (tagged if the port is a VLAN).
    Frame {
        /// Interface name.
        iface: String,
        /// The frame.
        frame: Vec<u8>,
    },
}

/// One engine in memory.
#[derive(Debug)]
pub struct MemNet<NF> {
    engine: Engine<NF>,
    hub: Arc<MetricsHub>,
    rx: Vec<PacketBuf>,
    now: Instant,
}

impl<NF: NetworkFunction> MemNet<NF> {
    /// An engine over `dp`, counting into `hub`, with the function `make` builds.
    pub fn new(
        hub: Arc<MetricsHub>,
        dp: DatapathConfig,
        nf_cfg: &Arc<NF::Config>,
        make: impl FnOnce(&Arc<NF::Config>, Arc<WorkerCounters>) -> NF,
    ) -> Result<MemNet<NF>, SlotsExhausted> {
        let inst = Arc::new(Installed::new(Arc::new(dp), &hub)?);
        let counters = hub.add_worker();
        let nf = make(nf_cfg, counters.clone());
        let batch = inst.dp.tuning.batch_size;
        Ok(MemNet {
            engine: Engine::new(inst, nf, counters),
            hub,
            rx: (0..batch).map(|_| PacketBuf::new()).collect(),
            now: Instant::now(),
        })
    }

    /// The metrics hub (render with [`MetricsHub::gather`]).
    pub fn hub(&self) -> &Arc<MetricsHub> {
        &self.hub
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<NF> {
        &self.engine
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Move the clock and run due timers; returns what the timers sent.
    pub fn advance(&mut self, d: Duration) -> Vec<Sent> {
        self.now += d;
        self.engine.clear();
        // Timers may be due several times over a long jump; run until none is.
        for _ in 0..1000 {
            match self.engine.poll_timeout() {
                Some(t) if t <= self.now => self.engine.handle_timeout(self.now),
                None => {
                    self.engine.handle_timeout(self.now);
                    break;
                }
                Some(_) => break,
            }
        }
        self.collect(0)
    }

    /// Swap in a new config, as a reload does.
    pub fn reload(
        &mut self,
        dp: DatapathConfig,
        nf_cfg: &Arc<NF::Config>,
    ) -> Result<(), SlotsExhausted> {
        let inst = Arc::new(Installed::new(Arc::new(dp), &self.hub)?);
        self.engine.reconfigure(inst, nf_cfg);
        Ok(())
    }

    /// A VXLAN datagram (UDP payload) from VTEP `from`.
    pub fn vxlan_in(&mut self, from: IpAddr, datagram: &[u8]) -> Vec<Sent> {
        self.vxlan_batch(&[(from, datagram)])
    }

    /// A batch of VXLAN datagrams.
    pub fn vxlan_batch(&mut self, batch: &[(IpAddr, &[u8])]) -> Vec<Sent> {
        let n = batch.len().min(self.rx.len());
        for (b, (from, d)) in self.rx.iter_mut().zip(batch) {
            b.fill(d);
            b.vtep = Some(*from);
        }
        self.engine.clear();
        self.engine.handle_timeout(self.now);
        self.engine.rx_underlay(&mut self.rx[..n], self.now);
        self.collect(n)
    }

    /// A frame received on host interface `iface`; nothing happens if no port uses it.
    pub fn frame_in(&mut self, iface: &str, frame: &[u8]) -> Vec<Sent> {
        let Some(k) = self
            .engine
            .installed()
            .ifaces
            .iter()
            .position(|i| i.name == iface)
        else {
            return Vec::new();
        };
        self.rx[0].fill(frame);
        self.rx[0].vtep = None;
        self.engine.clear();
        self.engine.handle_timeout(self.now);
        self.engine.rx_iface(k as u16, &mut self.rx[..1], self.now);
        self.collect(1)
    }

    fn collect(&self, n: usize) -> Vec<Sent> {
        let rx = &self.rx[..n];
        let inst = self.engine.installed();
        let mut out: Vec<Sent> = self
            .engine
            .out
            .udp
            .iter()
            .map(|o| Sent::Vxlan {
                dst: o.dst,
                entropy: o.entropy,
                datagram: self.engine.bytes(rx, o.buf).to_vec(),
            })
            .collect();
        out.extend(self.engine.out.frames.iter().map(|f| {
            Sent::Frame {
                iface: inst
                    .ifaces
                    .get(usize::from(f.iface))
                    .map(|i| i.name.clone())
                    .unwrap_or_default(),
                frame: self.engine.bytes(rx, f.buf).to_vec(),
            }
        }));
        out
    }
}
