//! `overlay-io`: the userspace VXLAN datapath that every VNF of the suite shares.
//!
//! A packet's way through it, bottom to top:
//!
//! - [`wire`]: zero-copy views of VXLAN (RFC 7348) and 802.1Q in smoltcp's style, plus
//!   smoltcp's own `wire` for Ethernet, ARP, IP, UDP, TCP and ICMP, and the inner-flow hash.
//! - [`buf`]: pre-allocated packet buffers with headroom, so encapsulation prepends in place.
//! - [`io`]: backends that move batches of frames: the UDP underlay (recvmmsg/sendmmsg with
//!   GSO), AF_PACKET for trunk and untagged interfaces, TAP, and an in-memory backend.
//! - [`fdb`] and [`vtep`]: the VXLAN tunnel endpoint: per-VNI forwarding tables with
//!   learning, ageing, caps, flood lists and source-VTEP allow-lists.
//! - [`bridge`]: L2 bridge domains (MAC learning between ports), the VXLAN gateway.
//! - [`arp`]: the neighbour cache (RFC 826) with a bounded queue of packets waiting for an
//!   answer, and ARP frames.
//! - [`icmp`]: ICMP errors and echo replies of a router (RFC 792, RFC 1812 §4.3).
//! - [`ipv4`]: IPv4 forwarding helpers for routed functions: header checks (RFC 1812),
//!   TTL decrement with incremental checksum (RFC 1624), ICMP rate limiting.
//! - [`fib`]: routes over the LPM: connected, ECMP gateways, blackhole/unreachable/prohibit.
//! - [`l3`]: routed interfaces on ports or bridge domains (IRB), shared neighbour state,
//!   ARP answers, ICMP echo and errors in place, and the routed metrics.
//! - [`l3config`]: the config sections of routed functions (bridges, interfaces, routes,
//!   NAT, ARP, ICMP) and their checks.
//! - [`routed`]: the routed network function (bridging, IRB, IPv4 forwarding, ARP, ICMP,
//!   fragmentation) with a hook for each function's own decisions (NAT, filtering).
//! - [`rewrite`]: flow keys of IPv4 packets and in-place address/port rewriting with
//!   incremental checksums, for NAT and load balancing.
//! - [`lpm`]: IPv4 longest-prefix match, an immutable DIR-16-8-8 table swapped whole on reload.
//! - [`conntrack`]: connection tracking: TCP states and windows, related ICMP, zone caps, early drop.
//! - [`nat`]: sans-IO NAT state for routed functions: masquerade pools, port forwards,
//!   floating addresses with hairpin, per-protocol session timeouts and per-tenant caps.
//! - [`pipeline`]: the sans-IO [`NetworkFunction`](pipeline::NetworkFunction) trait, ports,
//!   verdicts and drop reasons.
//! - [`datapath`]: ports, the worker threads that run I/O around a network function, and
//!   config reload without losing learned state.
//! - [`metrics`]: per-worker counters summed at scrape time into Prometheus metrics.
//! - [`daemon`]: the shell every VNF binary shares: config layering, `--check`, the admin
//!   HTTP endpoint, signals and logging.

pub mod arp;
pub mod bridge;
pub mod buf;
pub mod conntrack;
pub mod daemon;
pub mod datapath;
pub mod fdb;
pub mod fib;
pub mod host;
pub mod icmp;
pub mod io;
pub mod ipv4;
pub mod l3;
pub mod l3config;
pub mod lpm;
pub mod metrics;
pub mod nat;
pub mod pipeline;
pub mod rewrite;
pub mod routed;
pub mod vni;
pub mod vtep;
pub mod wire;

pub use vni::Vni;

/// A MAC address as six bytes.
pub type Mac = [u8; 6];

/// Whether a MAC address is a group (multicast or broadcast) address (IEEE 802: the least
/// significant bit of the first octet).
pub const fn is_group_mac(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// Format a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}
