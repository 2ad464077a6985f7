//! The VXLAN tunnel endpoint (RFC 7348).
//!
//! Receive: the UDP payload must hold a VXLAN header with the I flag (§5), for a VNI this
//! VTEP joined, from a source VTEP the VNI allows; the inner source MAC is then learned
//! against the outer source address (§4: "the association of VM's MAC to VTEP's IP address
//! is discovered via source-address learning"). Send: a known unicast MAC goes to the VTEP it
//! was learned from (or configured at); broadcast, multicast and unknown unicast go to every
//! VTEP of the VNI's flood list, one copy each (head-end replication, as the Linux `vxlan`
//! device does with all-zero FDB entries, instead of §4.2's underlay multicast).
//!
//! A [`Vtep`] is per worker; it holds only tables, never sockets.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::buf::{ETH_HEADER_LEN, PacketBuf};
use crate::fdb::{Fdb, Learned};
use crate::metrics::{VniCounters, WorkerCounters};
use crate::pipeline::{DropReason, PortId};
use crate::wire::vxlan;
use crate::{Mac, Vni};

/// Default ageing of learned entries (the Linux bridge's and `vxlan` device's 300 s).
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);
/// Default per-VNI cap on learned MACs.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;

/// The settings of one joined VNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniConfig {
    /// The segment.
    pub vni: Vni,
    /// Remote VTEPs that receive broadcast, multicast and unknown unicast.
    pub flood: Vec<IpAddr>,
    /// Whether inner source MACs are learned from received packets.
    pub learning: bool,
    /// How long a learned MAC lives without traffic.
    pub ageing: Duration,
    /// The most learned MACs (static entries come on top).
    pub max_entries: usize,
    /// If set, only these source VTEPs may send on this VNI (sorted).
    pub allowed_vteps: Option<Vec<IpAddr>>,
    /// Configured MAC -> VTEP entries; never aged or moved.
    pub static_entries: Vec<(Mac, IpAddr)>,
}

impl VniConfig {
    /// A VNI with defaults: learning on, 300 s ageing, 4096 entries, nothing else.
    pub fn new(vni: Vni) -> VniConfig {
        VniConfig {
            vni,
            flood: Vec::new(),
            learning: true,
            ageing: DEFAULT_AGEING,
            max_entries: DEFAULT_MAX_ENTRIES,
            allowed_vteps: None,
            static_entries: Vec::new(),
        }
    }
}

/// Where an encapsulated frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    /// One known VTEP.
    Unicast(IpAddr),
    /// Every VTEP of the flood list (possibly none).
    Flood(&'a [IpAddr]),
}

#[derive(Debug)]
struct VniState {
    cfg: Arc<VniConfig>,
    port: PortId,
    slot: usize,
    fdb: Fdb<IpAddr>,
}

/// One worker's VTEP tables.
#[derive(Debug, Default)]
pub struct Vtep {
    vnis: HashMap<Vni, VniState, foldhash::fast::FixedState>,
    /// Our own address: VXLAN claiming to come from it is spoofed, and learning a MAC
    /// "behind" it would make us send to ourselves.
    local: Option<IpAddr>,
}

/// A VNI to join: its settings, its port and its counter slot.
#[derive(Debug, Clone)]
pub struct Join {
    /// Settings.
    pub cfg: Arc<VniConfig>,
    /// The port frames of this VNI arrive on and leave from.
    pub port: PortId,
    /// Counter slot ([`crate::metrics::MetricsHub::vni_slot`]).
    pub slot: usize,
}

impl Vtep {
    /// An empty VTEP that has joined nothing.
    pub fn new() -> Vtep {
        Vtep::default()
    }

    /// Set this VTEP's own underlay address.
    pub fn set_local(&mut self, local: Option<IpAddr>) {
        self.local = local;
    }

    /// Join exactly these VNIs. Learned entries of VNIs that stay joined survive (a reload
    /// keeps learned state); VNIs no longer listed are left with their tables.
    pub fn configure(&mut self, joins: &[Join]) {
        self.vnis
            .retain(|vni, _| joins.iter().any(|j| j.cfg.vni == *vni));
        for j in joins {
            let c = &j.cfg;
            let st = self.vnis.entry(c.vni).or_insert_with(|| VniState {
                cfg: c.clone(),
                port: j.port,
                slot: j.slot,
                fdb: Fdb::new(c.max_entries, c.ageing, c.learning),
            });
            st.fdb.set_limits(c.max_entries, c.ageing, c.learning);
            st.fdb.set_static(c.static_entries.iter().copied());
            st.cfg = c.clone();
            st.port = j.port;
            st.slot = j.slot;
        }
    }

    /// Decapsulate a VXLAN datagram received from `src` in place: on success the buffer
    /// holds the inner frame and `pkt.port` is the VNI's port.
    #[inline]
    pub fn decap(
        &mut self,
        pkt: &mut PacketBuf,
        src: IpAddr,
        now: Instant,
        counters: &WorkerCounters,
    ) -> Result<(), DropReason> {
        let repr = {
            let packet =
                vxlan::Packet::new_checked(pkt.bytes()).map_err(|_| DropReason::VxlanMalformed)?;
            vxlan::Repr::parse(&packet).map_err(|_| DropReason::VxlanBadFlags)?
        };
        let st = self
            .vnis
            .get_mut(&repr.vni)
            .ok_or(DropReason::VniNotJoined)?;
        if self.local == Some(src) {
            return Err(DropReason::VtepNotAllowed);
        }
        if let Some(allowed) = &st.cfg.allowed_vteps
            && allowed.binary_search(&src).is_err()
        {
            return Err(DropReason::VtepNotAllowed);
        }
        if pkt.len() < vxlan::HEADER_LEN + ETH_HEADER_LEN {
            return Err(DropReason::VxlanMalformed);
        }
        pkt.pull_front(vxlan::HEADER_LEN);
        let src_mac = pkt.src_mac().ok_or(DropReason::FrameMalformed)?;
        if crate::is_group_mac(&src_mac) {
            return Err(DropReason::FrameMalformed);
        }
        let c = &counters.vnis[st.slot];
        count_learn(st.fdb.learn(src_mac, src, now), c);
        c.rx_packets.inc();
        c.rx_bytes.add(pkt.len() as u64);
        pkt.port = st.port;
        pkt.vtep = Some(src);
        Ok(())
    }

    /// Where a frame for `dst` on `vni` goes; `None` if the VNI is not joined.
    #[inline]
    pub fn dest(&self, vni: Vni, dst: &Mac) -> Option<Dest<'_>> {
        self.dest_and_slot(vni, dst).map(|(d, _)| d)
    }

    /// [`dest`](Self::dest) and the VNI's counter slot, with one table lookup (the send
    /// path needs both).
    #[inline]
    pub fn dest_and_slot(&self, vni: Vni, dst: &Mac) -> Option<(Dest<'_>, usize)> {
        let st = self.vnis.get(&vni)?;
        if !crate::is_group_mac(dst)
            && let Some(ip) = st.fdb.lookup(dst)
        {
            return Some((Dest::Unicast(ip), st.slot));
        }
        Some((Dest::Flood(&st.cfg.flood), st.slot))
    }

    /// The counter slot of a joined VNI.
    pub fn slot(&self, vni: Vni) -> Option<usize> {
        self.vnis.get(&vni).map(|s| s.slot)
    }

    /// Age every VNI's table and refresh the entry gauges.
    pub fn age(&mut self, now: Instant, counters: &WorkerCounters) {
        for st in self.vnis.values_mut() {
            let c = &counters.vnis[st.slot];
            c.fdb_aged.add(st.fdb.age(now) as u64);
            c.fdb_entries.set(st.fdb.len() as u64);
        }
    }

    /// The forwarding table of a VNI (admin endpoint, tests).
    pub fn fdb(&self, vni: Vni) -> Option<&Fdb<IpAddr>> {
        self.vnis.get(&vni).map(|s| &s.fdb)
    }
}

/// Count what learning did.
pub(crate) fn count_learn(l: Learned, c: &VniCounters) {
    match l {
        Learned::New => c.fdb_learned.inc(),
        Learned::Moved => c.fdb_moved.inc(),
        Learned::CapHit => c.fdb_cap_hits.inc(),
        Learned::Refreshed | Learned::Ignored => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_frame(flags: u8, vni: u32, src_mac: Mac, dst_mac: Mac) -> PacketBuf {
        let mut b = vec![
            flags,
            0,
            0,
            0,
            (vni >> 16) as u8,
            (vni >> 8) as u8,
            vni as u8,
            0,
        ];
        b.extend_from_slice(&dst_mac);
        b.extend_from_slice(&src_mac);
        b.extend_from_slice(&[0x08, 0x06]);
        b.extend_from_slice(&[0u8; 28]);
        let mut p = PacketBuf::new();
        p.fill(&b);
        p
    }

    const H1: Mac = [2, 0, 0, 0, 0, 1];
    const BCAST: Mac = [0xff; 6];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn vtep(cfg: VniConfig) -> (Vtep, WorkerCounters) {
        let mut v = Vtep::new();
        v.configure(&[Join {
            cfg: Arc::new(cfg),
            port: PortId(3),
            slot: 0,
        }]);
        (v, WorkerCounters::default())
    }

    #[test]
    fn decap_learns_and_unicasts() {
        let vni = Vni::new(100).unwrap();
        let mut cfg = VniConfig::new(vni);
        cfg.flood = vec![ip("198.18.0.2"), ip("198.18.0.3")];
        let (mut v, c) = vtep(cfg);
        let now = Instant::now();
        assert_eq!(
            v.dest(vni, &H1),
            Some(Dest::Flood(&[ip("198.18.0.2"), ip("198.18.0.3")][..]))
        );
        let mut p = vxlan_frame(0x08, 100, H1, BCAST);
        v.decap(&mut p, ip("198.18.0.3"), now, &c).unwrap();
        assert_eq!(p.port, PortId(3));
        assert_eq!(p.dst_mac(), Some(BCAST));
        assert_eq!(v.dest(vni, &H1), Some(Dest::Unicast(ip("198.18.0.3"))));
        assert!(matches!(v.dest(vni, &BCAST), Some(Dest::Flood(_))));
        assert_eq!(c.vnis[0].fdb_learned.get(), 1);
        assert_eq!(c.vnis[0].rx_packets.get(), 1);
    }

    #[test]
    fn drops_by_reason() {
        let vni = Vni::new(100).unwrap();
        let mut cfg = VniConfig::new(vni);
        cfg.allowed_vteps = Some(vec![ip("198.18.0.2")]);
        let (mut v, c) = vtep(cfg);
        let now = Instant::now();
        let src = ip("198.18.0.2");
        let cases = [
            (
                vxlan_frame(0x00, 100, H1, BCAST),
                src,
                DropReason::VxlanBadFlags,
            ),
            (
                vxlan_frame(0x08, 0, H1, BCAST),
                src,
                DropReason::VxlanBadFlags,
            ),
            (
                vxlan_frame(0x08, 200, H1, BCAST),
                src,
                DropReason::VniNotJoined,
            ),
            (
                vxlan_frame(0x08, 100, H1, BCAST),
                ip("198.18.0.9"),
                DropReason::VtepNotAllowed,
            ),
            (
                vxlan_frame(0x08, 100, BCAST, H1),
                src,
                DropReason::FrameMalformed,
            ),
        ];
        for (mut p, from, reason) in cases {
            assert_eq!(v.decap(&mut p, from, now, &c), Err(reason));
        }
        let mut short = PacketBuf::new();
        short.fill(&[0x08, 0, 0, 0, 0, 0, 100, 0, 1, 2, 3]);
        assert_eq!(
            v.decap(&mut short, src, now, &c),
            Err(DropReason::VxlanMalformed)
        );
        short.fill(&[0x08, 0, 0]);
        assert_eq!(
            v.decap(&mut short, src, now, &c),
            Err(DropReason::VxlanMalformed)
        );
        assert_eq!(c.vnis[0].fdb_learned.get(), 0);
    }

    #[test]
    fn own_address_is_never_a_source() {
        let vni = Vni::new(100).unwrap();
        let (mut v, c) = vtep(VniConfig::new(vni));
        v.set_local(Some(ip("198.18.0.1")));
        let mut p = vxlan_frame(0x08, 100, H1, BCAST);
        assert_eq!(
            v.decap(&mut p, ip("198.18.0.1"), Instant::now(), &c),
            Err(DropReason::VtepNotAllowed)
        );
        assert_eq!(v.dest(vni, &H1), Some(Dest::Flood(&[][..])));
    }

    #[test]
    fn learning_off_and_static_entries() {
        let vni = Vni::new(7).unwrap();
        let mut cfg = VniConfig::new(vni);
        cfg.learning = false;
        cfg.static_entries = vec![(H1, ip("198.18.0.5"))];
        let (mut v, c) = vtep(cfg);
        let mut p = vxlan_frame(0x08, 7, H1, BCAST);
        v.decap(&mut p, ip("198.18.0.6"), Instant::now(), &c)
            .unwrap();
        assert_eq!(v.dest(vni, &H1), Some(Dest::Unicast(ip("198.18.0.5"))));
    }

    #[test]
    fn cap_counts_hits() {
        let vni = Vni::new(7).unwrap();
        let mut cfg = VniConfig::new(vni);
        cfg.max_entries = 2;
        let (mut v, c) = vtep(cfg);
        let now = Instant::now();
        for i in 1..=5u8 {
            let mut p = vxlan_frame(0x08, 7, [2, 0, 0, 0, 0, i], BCAST);
            v.decap(&mut p, ip("198.18.0.6"), now, &c).unwrap();
        }
        assert_eq!(v.fdb(vni).map(Fdb::len), Some(2));
        assert_eq!(c.vnis[0].fdb_cap_hits.get(), 3);
    }

    #[test]
    fn reconfigure_keeps_learned_state() {
        let vni = Vni::new(7).unwrap();
        let (mut v, c) = vtep(VniConfig::new(vni));
        let mut p = vxlan_frame(0x08, 7, H1, BCAST);
        v.decap(&mut p, ip("198.18.0.6"), Instant::now(), &c)
            .unwrap();
        let mut cfg = VniConfig::new(vni);
        cfg.flood = vec![ip("198.18.0.9")];
        v.configure(&[Join {
            cfg: Arc::new(cfg),
            port: PortId(1),
            slot: 0,
        }]);
        assert_eq!(v.dest(vni, &H1), Some(Dest::Unicast(ip("198.18.0.6"))));
        v.configure(&[]);
        assert_eq!(v.dest(vni, &H1), None);
    }
}
