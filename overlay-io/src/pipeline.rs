//! The sans-IO network-function abstraction.
//!
//! A network function sees Ethernet frames that arrived on [`PortId`]s, in batches, and
//! returns a [`Verdict`] for each. It never opens a socket, never reads the clock (`now` is
//! passed in) and never blocks; the worker loop in [`crate::datapath`] does the I/O around
//! it, and the in-memory backend drives it deterministically in tests.

use std::time::Instant;

use crate::buf::PacketBuf;

/// Index of a port in the datapath's port table (the order of the config's `ports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortId(pub u16);

/// The most ports one VNF instance has; [`PortSet`] is a bitmap of this many bits.
pub const MAX_PORTS: usize = 256;

/// A set of ports, as a fixed bitmap: flooding never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortSet([u64; MAX_PORTS / 64]);

impl PortSet {
    /// The empty set.
    pub const EMPTY: PortSet = PortSet([0; MAX_PORTS / 64]);

    /// Add a port.
    pub fn insert(&mut self, p: PortId) {
        let i = usize::from(p.0) % MAX_PORTS;
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Remove a port.
    pub fn remove(&mut self, p: PortId) {
        let i = usize::from(p.0) % MAX_PORTS;
        self.0[i / 64] &= !(1 << (i % 64));
    }

    /// Whether a port is in the set.
    pub fn contains(&self, p: PortId) -> bool {
        let i = usize::from(p.0) % MAX_PORTS;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The set without one port.
    pub fn without(mut self, p: PortId) -> PortSet {
        self.remove(p);
        self
    }

    /// The ports, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = PortId> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(PortId((w * 64 + b) as u16))
            })
        })
    }
}

impl FromIterator<PortId> for PortSet {
    fn from_iter<I: IntoIterator<Item = PortId>>(iter: I) -> Self {
        let mut s = PortSet::EMPTY;
        for p in iter {
            s.insert(p);
        }
        s
    }
}

/// Why a packet was dropped. Each variant is one value of the `reason` label of
/// `vnf_drops_total`; [`DropReason::ALL`] lists them for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// A UDP datagram on the VXLAN port too short for a VXLAN header and an Ethernet frame.
    VxlanMalformed,
    /// The VXLAN I flag was not set (RFC 7348 §5), or the VNI was 0.
    VxlanBadFlags,
    /// VXLAN for a VNI this VTEP has not joined.
    VniNotJoined,
    /// VXLAN from a source VTEP that the VNI's allow-list does not name, or claiming to
    /// come from this VTEP's own address.
    VtepNotAllowed,
    /// A frame shorter than an Ethernet header, or with a multicast source MAC.
    FrameMalformed,
    /// A tagged frame on a trunk for a VLAN that no port carries, or an untagged frame on a
    /// trunk without a native port.
    VlanUnknown,
    /// A frame with an 802.1ad (QinQ) or nested tag: not bridged.
    VlanNested,
    /// A frame larger than the egress port's MTU (the outer packet is never fragmented).
    MtuExceeded,
    /// Unknown unicast or broadcast with nowhere to flood (empty flood list).
    NoDestination,
    /// The destination was learned on the port the frame came from (RFC 7348 §4 / IEEE
    /// 802.1D filtering: never send a frame back where it came from).
    SamePort,
    /// The frame arrived on a port that belongs to no bridge domain or function.
    PortUnassigned,
    /// The kernel refused to send (buffer full, no route to a VTEP).
    TxError,
    /// No buffer or headroom was left for a flood copy or a header.
    NoBuffer,
    /// The kernel dropped packets because a socket's receive buffer was full: the worker
    /// fell behind (counted once a second from the socket's drop counter).
    RxOverrun,
    /// A received frame larger than a packet buffer (9216 bytes): a GRO or GSO
    /// super-frame from an interface with receive offloads on, or an oversize jumbo frame.
    Oversize,
    /// An IPv4 header a router must not forward (RFC 1812 §5.2.2): too short, not version
    /// 4, a header or total length that does not fit, or a bad checksum.
    IpMalformed,
    /// Packets waiting for an ARP answer that never came.
    ArpTimeout,
    /// No room to hold a packet until its next hop answers ARP.
    ArpQueueFull,
    /// The neighbour table is full.
    ArpTableFull,
    /// No route to the destination, or a route of action `unreachable`.
    NoRoute,
    /// A route of action `blackhole`: dropped without an answer.
    Blackhole,
    /// A route of action `prohibit`: dropped, answered with ICMP administratively prohibited.
    Prohibited,
    /// The TTL ran out (RFC 1812 §5.3.1): answered with ICMP time exceeded.
    TtlExceeded,
    /// A frame on a routed interface for a MAC address that is not the interface's.
    NotForUs,
    /// A packet to one of the function's own addresses that it does not serve (anything
    /// but ICMP echo and NAT).
    LocalUnhandled,
    /// Source NAT found no free port in its pool.
    NatPoolExhausted,
    /// The tenant's NAT session cap is reached.
    NatCapReached,
    /// The NAT session table is full.
    NatTableFull,
    /// A new NAT session would take a key another session holds.
    NatConflict,
    /// A packet that needs NAT but cannot be translated: a non-first fragment, or a
    /// protocol other than TCP, UDP and ICMP.
    NatUntranslatable,
    /// A firewall rule (or a zone pair's default) said drop.
    PolicyDrop,
    /// A firewall rule said reject (a TCP RST or ICMP administratively prohibited sent).
    PolicyReject,
    /// Connection tracking found the packet invalid (impossible TCP flags, out of window,
    /// no connection for a non-SYN segment, a fragment, a truncated header) and no rule
    /// accepted invalid packets.
    CtInvalid,
    /// The connection table (or the zone's share) was full and nothing could be dropped
    /// early to make room.
    CtFull,
    /// A packet for the function's own host stack (L7 listeners, health-check replies)
    /// while its queue was full.
    HostQueueFull,
    /// A new flow to a load-balanced service while no backend of its pool was up or
    /// accepting new flows (answered with a TCP RST or ICMP port unreachable).
    NoBackend,
    /// A routed packet with an address no packet may carry (RFC 1812 §5.3.7): a source
    /// in 0.0.0.0/8, 127.0.0.0/8, multicast or 240.0.0.0/4, one of the function's own
    /// addresses (a spoofed source), or a destination in 0.0.0.0/8 or 127.0.0.0/8.
    Martian,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 37] = [
        DropReason::VxlanMalformed,
        DropReason::VxlanBadFlags,
        DropReason::VniNotJoined,
        DropReason::VtepNotAllowed,
        DropReason::FrameMalformed,
        DropReason::VlanUnknown,
        DropReason::VlanNested,
        DropReason::MtuExceeded,
        DropReason::NoDestination,
        DropReason::SamePort,
        DropReason::PortUnassigned,
        DropReason::TxError,
        DropReason::NoBuffer,
        DropReason::RxOverrun,
        DropReason::Oversize,
        DropReason::IpMalformed,
        DropReason::ArpTimeout,
        DropReason::ArpQueueFull,
        DropReason::ArpTableFull,
        DropReason::NoRoute,
        DropReason::Blackhole,
        DropReason::Prohibited,
        DropReason::TtlExceeded,
        DropReason::NotForUs,
        DropReason::LocalUnhandled,
        DropReason::NatPoolExhausted,
        DropReason::NatCapReached,
        DropReason::NatTableFull,
        DropReason::NatConflict,
        DropReason::NatUntranslatable,
        DropReason::PolicyDrop,
        DropReason::PolicyReject,
        DropReason::CtInvalid,
        DropReason::CtFull,
        DropReason::HostQueueFull,
        DropReason::NoBackend,
        DropReason::Martian,
    ];

    /// The metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::VxlanMalformed => "vxlan_malformed",
            DropReason::VxlanBadFlags => "vxlan_bad_flags",
            DropReason::VniNotJoined => "vni_not_joined",
            DropReason::VtepNotAllowed => "vtep_not_allowed",
            DropReason::FrameMalformed => "frame_malformed",
            DropReason::VlanUnknown => "vlan_unknown",
            DropReason::VlanNested => "vlan_nested",
            DropReason::MtuExceeded => "mtu_exceeded",
            DropReason::NoDestination => "no_destination",
            DropReason::SamePort => "same_port",
            DropReason::PortUnassigned => "port_unassigned",
            DropReason::TxError => "tx_error",
            DropReason::NoBuffer => "no_buffer",
            DropReason::RxOverrun => "rx_overrun",
            DropReason::Oversize => "oversize",
            DropReason::IpMalformed => "ip_malformed",
            DropReason::ArpTimeout => "arp_timeout",
            DropReason::ArpQueueFull => "arp_queue_full",
            DropReason::ArpTableFull => "arp_table_full",
            DropReason::NoRoute => "no_route",
            DropReason::Blackhole => "blackhole",
            DropReason::Prohibited => "prohibited",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NotForUs => "not_for_us",
            DropReason::LocalUnhandled => "local_unhandled",
            DropReason::NatPoolExhausted => "nat_pool_exhausted",
            DropReason::NatCapReached => "nat_cap_reached",
            DropReason::NatTableFull => "nat_table_full",
            DropReason::NatConflict => "nat_conflict",
            DropReason::NatUntranslatable => "nat_untranslatable",
            DropReason::PolicyDrop => "policy_drop",
            DropReason::PolicyReject => "policy_reject",
            DropReason::CtInvalid => "ct_invalid",
            DropReason::CtFull => "ct_full",
            DropReason::HostQueueFull => "host_queue_full",
            DropReason::NoBackend => "no_backend",
            DropReason::Martian => "martian",
        }
    }

    /// Index into per-reason counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (possibly rewritten) frame out of one port.
    Forward(PortId),
    /// Send a copy out of each port of the set (flooding within a bridge domain).
    Flood(PortSet),
    /// Send the rewritten frame back out of the port it came from (ARP and ICMP replies).
    Reply,
    /// Drop, counted under a reason.
    Drop(DropReason),
    /// The function kept a copy to send later (a packet waiting for an ARP answer, or
    /// sent as fragments through [`NetworkFunction::poll_transmit`]): not a drop.
    Consumed,
}

/// Frames a network function originates rather than forwards: ARP requests, packets
/// released by an ARP reply, gratuitous ARP. Buffers are allocated once; a full queue
/// refuses more (the function counts that as its own drop).
#[derive(Debug)]
pub struct Transmit {
    bufs: Vec<PacketBuf>,
    ports: Vec<PortId>,
    used: usize,
}

impl Transmit {
    /// Room for `capacity` frames per batch.
    pub fn new(capacity: usize) -> Transmit {
        Transmit {
            bufs: (0..capacity).map(|_| PacketBuf::new()).collect(),
            ports: vec![PortId(0); capacity],
            used: 0,
        }
    }

    /// A buffer for a frame to send out of `port`, or `None` when the queue is full. The
    /// buffer is empty, with full headroom; write the frame with [`PacketBuf::fill`].
    pub fn frame(&mut self, port: PortId) -> Option<&mut PacketBuf> {
        let i = self.used;
        let b = self.bufs.get_mut(i)?;
        b.reset();
        self.ports[i] = port;
        self.used += 1;
        Some(b)
    }

    /// Queue a copy of `bytes` out of `port`; `false` when full.
    pub fn send(&mut self, port: PortId, bytes: &[u8]) -> bool {
        match self.frame(port) {
            Some(b) => {
                b.fill(bytes);
                true
            }
            None => false,
        }
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The port of frame `i`.
    pub fn port(&self, i: usize) -> PortId {
        self.ports[i]
    }

    /// Frame `i`.
    pub fn buf(&self, i: usize) -> &PacketBuf {
        &self.bufs[i]
    }

    /// Frame `i`, mutable (encapsulation prepends in place).
    pub fn buf_mut(&mut self, i: usize) -> &mut PacketBuf {
        &mut self.bufs[i]
    }

    /// Forget queued frames.
    pub fn clear(&mut self) {
        self.used = 0;
    }
}

/// A network function: a state machine over packet batches.
///
/// `process` must leave exactly one verdict per packet in `verdicts` (same length as
/// `pkts`). Time only moves through `now`; timers are reported by `poll_timeout` and run by
/// `handle_timeout`, as in quinn-proto and smoltcp.
pub trait NetworkFunction: Send {
    /// The function's own settings, swapped in whole on reload.
    type Config: Send + Sync + 'static;

    /// Apply new settings, keeping learned state. Ports keep their identity by name
    /// across a reload; `remap` gives an old [`PortId`]'s new id, or `None` if it is gone.
    fn reconfigure(
        &mut self,
        config: &std::sync::Arc<Self::Config>,
        remap: &dyn Fn(PortId) -> Option<PortId>,
    );

    /// Decide the fate of a batch of frames.
    fn process(&mut self, pkts: &mut [PacketBuf], verdicts: &mut [Verdict], now: Instant);

    /// When `handle_timeout` next wants to run, if ever.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Run timers that are due (ageing, retransmits).
    fn handle_timeout(&mut self, now: Instant);

    /// Queue the frames the function originates; called after every batch and every
    /// timer run. Most functions only forward, hence the default.
    fn poll_transmit(&mut self, _tx: &mut Transmit) {}

    /// A descriptor that becomes readable when the function has frames to send without a
    /// packet or a timer to prompt it (its host stack's output): the workers poll it with
    /// their sockets. Asked once, when a worker starts.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_set_basics() {
        let mut s: PortSet = [PortId(0), PortId(3), PortId(64), PortId(255)]
            .into_iter()
            .collect();
        assert!(s.contains(PortId(64)));
        assert!(!s.contains(PortId(1)));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![PortId(0), PortId(3), PortId(64), PortId(255)]
        );
        s = s.without(PortId(3));
        assert_eq!(s.iter().count(), 3);
        assert!(!PortSet::EMPTY.without(PortId(1)).contains(PortId(1)));
        assert!(PortSet::EMPTY.is_empty());
    }

    #[test]
    fn drop_labels_are_unique_and_indexed() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
