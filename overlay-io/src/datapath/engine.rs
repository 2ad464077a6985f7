//! The per-worker packet engine: VTEP and port classification around a network function.
//!
//! The engine is sans-IO like the functions it drives: backends hand it received buffers
//! and it leaves what to send in its [`Outbox`], as references to those buffers (or to
//! its own scratch buffers for flood copies). The socket worker and the in-memory backend
//! both run it, so what tests see in memory is what the sockets send.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::Vni;
use crate::buf::{ETH_HEADER_LEN, PacketBuf};
use crate::datapath::config::{DatapathConfig, IfaceKind, PortKind};
use crate::metrics::{MetricsHub, SlotsExhausted, WorkerCounters};
use crate::pipeline::{DropReason, NetworkFunction, PortId, PortSet, Transmit, Verdict};
use crate::vtep::{Dest, Join, Vtep};
use crate::wire::{flow, vlan};

/// How often VTEP tables are aged.
const AGE_INTERVAL: Duration = Duration::from_secs(1);
/// Flood copies one batch can make before copies are dropped as `no_buffer`.
pub const SCRATCH_BUFS: usize = 256;
/// Frames a network function may originate per batch or timer run.
pub const TRANSMIT_BUFS: usize = 64;

/// How frames leave a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortOut {
    /// Encapsulated in VXLAN.
    Vni(Vni),
    /// Tagged, on a host interface.
    Vlan {
        /// Interface index.
        iface: u16,
        /// VLAN ID.
        vid: u16,
    },
    /// As is, on a host interface (untagged or TAP).
    Plain {
        /// Interface index.
        iface: u16,
    },
}

/// A host interface and which ports its frames belong to.
#[derive(Debug, Clone)]
pub struct Iface {
    /// Name.
    pub name: String,
    /// AF_PACKET or TAP.
    pub kind: IfaceKind,
    /// The port of untagged (and priority-tagged) frames.
    pub native: Option<PortId>,
    /// Ports by VLAN ID.
    pub vlans: HashMap<u16, PortId>,
}

/// A config prepared for the engines: lookup tables and counter slots.
#[derive(Debug)]
pub struct Installed {
    /// The config.
    pub dp: Arc<DatapathConfig>,
    /// Counter slot per port.
    pub port_slots: Vec<usize>,
    /// How each port sends.
    pub port_out: Vec<PortOut>,
    /// MTU per port.
    pub port_mtu: Vec<u32>,
    /// Host interfaces, in [`DatapathConfig::ifaces`] order.
    pub ifaces: Vec<Iface>,
    /// VNIs to join.
    pub joins: Vec<Join>,
}

impl Installed {
    /// Prepare a config, giving ports and VNIs their counter slots.
    pub fn new(dp: Arc<DatapathConfig>, hub: &MetricsHub) -> Result<Installed, SlotsExhausted> {
        let mut ifaces: Vec<Iface> = dp
            .ifaces()
            .into_iter()
            .map(|(name, kind)| Iface {
                name,
                kind,
                native: None,
                vlans: HashMap::new(),
            })
            .collect();
        let iface_index = |name: &str, ifaces: &[Iface]| {
            ifaces.iter().position(|i| i.name == name).unwrap_or(0) as u16
        };
        let mut port_slots = Vec::new();
        let mut port_out = Vec::new();
        let mut joins = Vec::new();
        for (i, p) in dp.ports.iter().enumerate() {
            let id = PortId(i as u16);
            port_slots.push(hub.port_slot(&p.name)?);
            port_out.push(match &p.kind {
                PortKind::Vni(cfg) => {
                    joins.push(Join {
                        cfg: cfg.clone(),
                        port: id,
                        slot: hub.vni_slot(cfg.vni.get())?,
                    });
                    PortOut::Vni(cfg.vni)
                }
                PortKind::Vlan { iface, vid } => {
                    let k = iface_index(iface, &ifaces);
                    ifaces[usize::from(k)].vlans.insert(*vid, id);
                    PortOut::Vlan {
                        iface: k,
                        vid: *vid,
                    }
                }
                PortKind::Untagged { iface } | PortKind::Tap { name: iface } => {
                    let k = iface_index(iface, &ifaces);
                    ifaces[usize::from(k)].native = Some(id);
                    PortOut::Plain { iface: k }
                }
            });
        }
        let port_mtu = dp.ports.iter().map(|p| p.mtu).collect();
        Ok(Installed {
            dp,
            port_slots,
            port_out,
            port_mtu,
            ifaces,
            joins,
        })
    }
}

/// Which buffer an output refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufRef {
    /// The received batch, by index.
    Rx(u16),
    /// The engine's scratch buffers (flood copies), by index.
    Scratch(u16),
    /// Frames the network function originated, by index.
    Tx(u16),
}

/// A VXLAN datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOut {
    /// The datagram (VXLAN header and inner frame).
    pub buf: BufRef,
    /// The remote VTEP.
    pub dst: IpAddr,
    /// Hash of the inner flow: picks the outer source port.
    pub entropy: u32,
}

/// A frame to send on a host interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameOut {
    /// The frame (tagged if the port is a VLAN).
    pub buf: BufRef,
    /// Interface index.
    pub iface: u16,
}

/// What a batch produced.
#[derive(Debug, Default)]
pub struct Outbox {
    /// VXLAN datagrams.
    pub udp: Vec<UdpOut>,
    /// Frames for host interfaces.
    pub frames: Vec<FrameOut>,
}

/// One worker's engine.
#[derive(Debug)]
pub struct Engine<NF> {
    inst: Arc<Installed>,
    vtep: Vtep,
    nf: NF,
    counters: Arc<WorkerCounters>,
    verdicts: Vec<Verdict>,
    scratch: Vec<PacketBuf>,
    scratch_used: usize,
    tx: Transmit,
    /// What to send, valid until [`Engine::clear`].
    pub out: Outbox,
    next_age: Option<Instant>,
}

impl<NF: NetworkFunction> Engine<NF> {
    /// An engine over an installed config.
    pub fn new(inst: Arc<Installed>, nf: NF, counters: Arc<WorkerCounters>) -> Engine<NF> {
        let mut vtep = Vtep::new();
        vtep.set_local(inst.dp.underlay.as_ref().map(|u| u.local.ip()));
        vtep.configure(&inst.joins);
        let batch = inst.dp.tuning.batch_size;
        Engine {
            inst,
            vtep,
            nf,
            counters,
            verdicts: vec![Verdict::Drop(DropReason::NoBuffer); batch],
            scratch: (0..SCRATCH_BUFS).map(|_| PacketBuf::new()).collect(),
            scratch_used: 0,
            tx: Transmit::new(TRANSMIT_BUFS),
            out: Outbox {
                udp: Vec::with_capacity(batch * 4),
                frames: Vec::with_capacity(batch * 2),
            },
            next_age: None,
        }
    }

    /// The installed config.
    pub fn installed(&self) -> &Arc<Installed> {
        &self.inst
    }

    /// The network function.
    pub fn nf(&self) -> &NF {
        &self.nf
    }

    /// The VTEP tables.
    pub fn vtep(&self) -> &Vtep {
        &self.vtep
    }

    /// The worker's counters.
    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// Switch to a new config; learned state survives. Ports keep their identity by name:
    /// learned entries pointing at a renamed or removed port are dropped.
    pub fn reconfigure(&mut self, inst: Arc<Installed>, nf_cfg: &Arc<NF::Config>) {
        let old = &self.inst.dp;
        let remap: Vec<Option<PortId>> =
            old.ports.iter().map(|p| inst.dp.port_id(&p.name)).collect();
        let remap_fn = |p: PortId| remap.get(usize::from(p.0)).copied().flatten();
        self.nf.reconfigure(nf_cfg, &remap_fn);
        self.vtep
            .set_local(inst.dp.underlay.as_ref().map(|u| u.local.ip()));
        self.vtep.configure(&inst.joins);
        if inst.dp.tuning.batch_size > self.verdicts.len() {
            self.verdicts.resize(
                inst.dp.tuning.batch_size,
                Verdict::Drop(DropReason::NoBuffer),
            );
        }
        self.inst = inst;
    }

    /// When [`handle_timeout`](Self::handle_timeout) next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_age, self.nf.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run due timers: table ageing and the function's own.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_age {
            None => self.next_age = Some(now + AGE_INTERVAL),
            Some(t) if now >= t => {
                self.vtep.age(now, &self.counters);
                self.next_age = Some(now + AGE_INTERVAL);
            }
            Some(_) => {}
        }
        if self.nf.poll_timeout().is_some_and(|t| now >= t) {
            self.nf.handle_timeout(now);
            self.transmit(&mut []);
        }
    }

    /// Send what the function originated.
    fn transmit(&mut self, rx: &mut [PacketBuf]) {
        self.nf.poll_transmit(&mut self.tx);
        for i in 0..self.tx.len() {
            let port = self.tx.port(i);
            self.egress(rx, BufRef::Tx(i as u16), port);
        }
    }

    /// Whether anything waits in the outbox.
    pub fn has_output(&self) -> bool {
        !self.out.udp.is_empty() || !self.out.frames.is_empty()
    }

    /// Forget the previous batch's outputs and flood copies.
    pub fn clear(&mut self) {
        self.out.udp.clear();
        self.out.frames.clear();
        self.scratch_used = 0;
        self.tx.clear();
    }

    /// The bytes an output refers to.
    pub fn bytes<'a>(&'a self, rx: &'a [PacketBuf], r: BufRef) -> &'a [u8] {
        match r {
            BufRef::Rx(i) => rx.get(usize::from(i)).map_or(&[][..], PacketBuf::bytes),
            BufRef::Scratch(i) => self
                .scratch
                .get(usize::from(i))
                .map_or(&[][..], PacketBuf::bytes),
            BufRef::Tx(i) if usize::from(i) < self.tx.len() => self.tx.buf(usize::from(i)).bytes(),
            BufRef::Tx(_) => &[],
        }
    }

    /// A batch of VXLAN datagrams from the underlay; each buffer's `vtep` holds the outer
    /// source address. Call [`clear`](Self::clear) before, read [`Engine::out`] after.
    pub fn rx_underlay(&mut self, rx: &mut [PacketBuf], now: Instant) {
        let mut good = 0;
        for i in 0..rx.len() {
            let src = rx[i].vtep;
            let res = match src {
                Some(src) => self.vtep.decap(&mut rx[i], src, now, &self.counters),
                None => Err(DropReason::VxlanMalformed),
            };
            match res {
                Ok(()) => {
                    self.count_rx(&rx[i]);
                    rx.swap(i, good);
                    good += 1;
                }
                Err(r) => self.counters.count_drop(r),
            }
        }
        self.run(&mut rx[..good], now);
    }

    /// A batch of frames from host interface `iface` (tags inline).
    pub fn rx_iface(&mut self, iface: u16, rx: &mut [PacketBuf], now: Instant) {
        let Some(ifc) = self.inst.ifaces.get(usize::from(iface)) else {
            return;
        };
        let mut good = 0;
        for i in 0..rx.len() {
            match classify(ifc, &mut rx[i]) {
                Ok(port) => {
                    rx[i].port = port;
                    self.count_rx(&rx[i]);
                    rx.swap(i, good);
                    good += 1;
                }
                Err(r) => self.counters.count_drop(r),
            }
        }
        self.run(&mut rx[..good], now);
    }

    fn count_rx(&self, p: &PacketBuf) {
        if let Some(&slot) = self.inst.port_slots.get(usize::from(p.port.0)) {
            let c = &self.counters.ports[slot];
            c.rx_packets.inc();
            c.rx_bytes.add(p.len() as u64);
        }
    }

    fn run(&mut self, rx: &mut [PacketBuf], now: Instant) {
        for chunk_start in (0..rx.len()).step_by(self.verdicts.len().max(1)) {
            let end = (chunk_start + self.verdicts.len()).min(rx.len());
            let n = end - chunk_start;
            self.nf
                .process(&mut rx[chunk_start..end], &mut self.verdicts[..n], now);
            for k in 0..n {
                let i = chunk_start + k;
                match self.verdicts[k] {
                    Verdict::Forward(p) => self.egress(rx, BufRef::Rx(i as u16), p),
                    Verdict::Reply => {
                        let p = rx[i].port;
                        self.egress(rx, BufRef::Rx(i as u16), p);
                    }
                    Verdict::Flood(set) => self.flood(rx, i, set),
                    Verdict::Drop(r) => self.counters.count_drop(r),
                    Verdict::Consumed => {}
                }
            }
        }
        self.transmit(rx);
    }

    fn flood(&mut self, rx: &mut [PacketBuf], i: usize, set: PortSet) {
        let mut ports = set.iter().peekable();
        while let Some(p) = ports.next() {
            if ports.peek().is_none() {
                // The last port takes the original: one copy fewer.
                self.egress(rx, BufRef::Rx(i as u16), p);
                break;
            }
            if self.scratch_used >= self.scratch.len() {
                self.counters.count_drop(DropReason::NoBuffer);
                continue;
            }
            let j = self.scratch_used;
            self.scratch_used += 1;
            self.scratch[j].copy_from(&rx[i]);
            self.egress(rx, BufRef::Scratch(j as u16), p);
        }
    }

    fn egress(&mut self, rx: &mut [PacketBuf], r: BufRef, port: PortId) {
        let pi = usize::from(port.0);
        let (Some(&out), Some(&mtu), Some(&slot)) = (
            self.inst.port_out.get(pi),
            self.inst.port_mtu.get(pi),
            self.inst.port_slots.get(pi),
        ) else {
            self.counters.count_drop(DropReason::PortUnassigned);
            return;
        };
        let buf = match r {
            BufRef::Rx(i) => &mut rx[usize::from(i)],
            BufRef::Scratch(i) => &mut self.scratch[usize::from(i)],
            BufRef::Tx(i) => self.tx.buf_mut(usize::from(i)),
        };
        let len = buf.len();
        if len < ETH_HEADER_LEN {
            self.counters.count_drop(DropReason::FrameMalformed);
            return;
        }
        if len - ETH_HEADER_LEN > mtu as usize {
            self.counters.count_drop(DropReason::MtuExceeded);
            return;
        }
        let pc = &self.counters.ports[slot];
        match out {
            PortOut::Vni(vni) => {
                let Some(dst_mac) = buf.dst_mac() else {
                    self.counters.count_drop(DropReason::FrameMalformed);
                    return;
                };
                let Some((dest, vni_slot)) = self.vtep.dest_and_slot(vni, &dst_mac) else {
                    self.counters.count_drop(DropReason::PortUnassigned);
                    return;
                };
                let entropy = flow::flow_hash(buf.bytes());
                let copies = match dest {
                    Dest::Unicast(_) => 1,
                    Dest::Flood(list) => list.len(),
                };
                if copies == 0 {
                    self.counters.count_drop(DropReason::NoDestination);
                    return;
                }
                if !buf.push_vxlan(vni) {
                    self.counters.count_drop(DropReason::NoBuffer);
                    return;
                }
                let vc = self.counters.vnis.get(vni_slot);
                match dest {
                    Dest::Unicast(dst) => self.out.udp.push(UdpOut {
                        buf: r,
                        dst,
                        entropy,
                    }),
                    Dest::Flood(list) => {
                        for &dst in list {
                            self.out.udp.push(UdpOut {
                                buf: r,
                                dst,
                                entropy,
                            });
                        }
                        if let Some(vc) = vc {
                            vc.flood_copies.add(copies as u64);
                        }
                    }
                }
                if let Some(vc) = vc {
                    vc.tx_packets.add(copies as u64);
                    vc.tx_bytes.add((copies * len) as u64);
                }
            }
            PortOut::Vlan { iface, vid } => {
                if !buf.push_vlan_tag(vid) {
                    self.counters.count_drop(DropReason::NoBuffer);
                    return;
                }
                self.out.frames.push(FrameOut { buf: r, iface });
            }
            PortOut::Plain { iface } => self.out.frames.push(FrameOut { buf: r, iface }),
        }
        pc.tx_packets.inc();
        pc.tx_bytes.add(len as u64);
    }
}

/// Which port a frame from a host interface belongs to; tags are removed.
fn classify(ifc: &Iface, p: &mut PacketBuf) -> Result<PortId, DropReason> {
    let Some(et) = p.ethertype() else {
        return Err(DropReason::FrameMalformed);
    };
    if p.src_mac().is_some_and(|m| crate::is_group_mac(&m)) {
        return Err(DropReason::FrameMalformed);
    }
    if et == vlan::TPID_QINQ {
        return Err(DropReason::VlanNested);
    }
    if et != vlan::TPID {
        return ifc.native.ok_or(DropReason::VlanUnknown);
    }
    let vid = p.pop_vlan_tag().ok_or(DropReason::FrameMalformed)?;
    if matches!(p.ethertype(), Some(vlan::TPID | vlan::TPID_QINQ)) {
        return Err(DropReason::VlanNested);
    }
    if vid == 0 {
        // Priority-tagged (IEEE 802.1Q §9.6): belongs to the native VLAN.
        return ifc.native.ok_or(DropReason::VlanUnknown);
    }
    ifc.vlans.get(&vid).copied().ok_or(DropReason::VlanUnknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::config::{RawPort, RawUnderlay, compile};

    /// A function that answers every frame with a copy of itself out of port 1 through
    /// `poll_transmit`, drops the original, and sends a beacon on port 0 every second.
    struct Beacon {
        copies: Vec<(PortId, Vec<u8>)>,
        next: Option<Instant>,
    }

    impl NetworkFunction for Beacon {
        type Config = ();
        fn reconfigure(&mut self, _: &Arc<()>, _: &dyn Fn(PortId) -> Option<PortId>) {}
        fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant) {
            for (p, v) in pkts.iter().zip(verdicts.iter_mut()) {
                self.copies.push((PortId(1), p.bytes().to_vec()));
                *v = Verdict::Drop(DropReason::NoDestination);
            }
            self.next.get_or_insert(now + Duration::from_secs(1));
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.next
        }
        fn handle_timeout(&mut self, now: Instant) {
            let mut beacon = vec![0xff; 6];
            beacon.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
            beacon.extend_from_slice(&[0u8; 46]);
            self.copies.push((PortId(0), beacon));
            self.next = Some(now + Duration::from_secs(1));
        }
        fn poll_transmit(&mut self, tx: &mut Transmit) {
            for (port, f) in self.copies.drain(..) {
                assert!(tx.send(port, &f));
            }
        }
    }

    fn engine() -> Engine<Beacon> {
        let ports = vec![
            RawPort {
                name: "a".into(),
                vni: Some(100),
                flood: vec!["198.18.0.2".parse().unwrap()],
                ..Default::default()
            },
            RawPort {
                name: "b".into(),
                interface: Some("eth1".into()),
                ..Default::default()
            },
        ];
        let u = RawUnderlay {
            address: Some("198.18.0.1".parse().unwrap()),
            ..Default::default()
        };
        let dp = compile(&u, &ports, 1, 8).unwrap();
        let hub = MetricsHub::default();
        let inst = Arc::new(Installed::new(Arc::new(dp), &hub).unwrap());
        let c = hub.add_worker();
        Engine::new(
            inst,
            Beacon {
                copies: Vec::new(),
                next: None,
            },
            c,
        )
    }

    #[test]
    fn originated_frames_are_sent_after_batches_and_timers() {
        let mut e = engine();
        let t0 = Instant::now();
        let mut rx: Vec<PacketBuf> = (0..2).map(|_| PacketBuf::new()).collect();
        let frame = [
            [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00].as_slice(),
            &[0u8; 46],
        ]
        .concat();
        rx[0].fill(&frame);
        e.clear();
        e.rx_iface(0, &mut rx[..1], t0);
        // The copy leaves through the interface port (iface 0 = eth1).
        assert_eq!(e.out.frames.len(), 1);
        assert_eq!(e.bytes(&rx, e.out.frames[0].buf), &frame[..]);
        assert!(e.out.udp.is_empty());
        // A second later the beacon goes out on the VNI port: flooded to the VTEP.
        e.clear();
        e.handle_timeout(t0 + Duration::from_secs(1));
        assert!(e.has_output());
        assert_eq!(e.out.udp.len(), 1);
        let d = e.bytes(&rx, e.out.udp[0].buf);
        assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0, 0, 100, 0]);
        assert_eq!(d[8..14], [0xff; 6]);
    }
}
