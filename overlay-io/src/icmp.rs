//! ICMP generation for routed functions (RFC 792, RFC 1812 §4.3).
//!
//! A router answers echo requests to its own addresses and reports, about packets it cannot
//! forward: time exceeded (TTL expired in transit: traceroute), destination unreachable
//! (no route, administratively prohibited), and fragmentation needed with the next-hop MTU
//! (RFC 1191 path MTU discovery). Errors are never sent about an ICMP error, a non-initial
//! fragment, or a packet to or from a broadcast or multicast address (RFC 1812 §4.3.2.7),
//! and they quote as much of the offending datagram as fits in 576 bytes (§4.3.2.3).
//! Rate limiting is the caller's, with [`crate::ipv4::TokenBucket`].

use std::net::Ipv4Addr;

use crate::ipv4::{self, Header};

/// The largest ICMP error datagram (RFC 1812 §4.3.2.3).
pub const MAX_ERROR_LEN: usize = 576;

/// An ICMP error a router sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Type 11 code 0: TTL exceeded in transit.
    TimeExceeded,
    /// Type 3 code 0: no route to the network.
    NetUnreachable,
    /// Type 3 code 1: the host did not answer ARP.
    HostUnreachable,
    /// Type 3 code 13: communication administratively prohibited (RFC 1812 §5.2.7.1).
    AdminProhibited,
    /// Type 3 code 3: no listener on the UDP port (RFC 1122 §4.1.3.1).
    PortUnreachable,
    /// Type 3 code 4: fragmentation needed and DF set, with the next-hop MTU (RFC 1191).
    FragNeeded {
        /// The MTU of the egress link.
        mtu: u16,
    },
}

impl IcmpError {
    fn type_code(self) -> (u8, u8) {
        match self {
            IcmpError::TimeExceeded => (11, 0),
            IcmpError::NetUnreachable => (3, 0),
            IcmpError::HostUnreachable => (3, 1),
            IcmpError::AdminProhibited => (3, 13),
            IcmpError::PortUnreachable => (3, 3),
            IcmpError::FragNeeded { .. } => (3, 4),
        }
    }

    /// The metric label of the ICMP message sent.
    pub const fn label(self) -> &'static str {
        match self {
            IcmpError::TimeExceeded => "time_exceeded",
            IcmpError::NetUnreachable => "net_unreachable",
            IcmpError::HostUnreachable => "host_unreachable",
            IcmpError::AdminProhibited => "admin_prohibited",
            IcmpError::PortUnreachable => "port_unreachable",
            IcmpError::FragNeeded { .. } => "frag_needed",
        }
    }
}

const PROTO_ICMP: u8 = 1;

/// Whether RFC 1812 §4.3.2.7 allows an error about this packet (`ip` is the whole IPv4
/// packet, `hdr` its parsed header).
pub fn may_send_error(hdr: &Header, ip: &[u8]) -> bool {
    if hdr.fragment_offset != 0 {
        return false;
    }
    let special =
        |a: Ipv4Addr| a.is_broadcast() || a.is_multicast() || a.is_unspecified() || a.is_loopback();
    if special(hdr.src) || special(hdr.dst) {
        return false;
    }
    if hdr.protocol == PROTO_ICMP {
        // Only queries (echo, timestamp, ...) may earn an error, never an error message.
        let t = ip.get(hdr.header_len).copied().unwrap_or(3);
        return matches!(t, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18);
    }
    true
}

/// Write into `out` an IPv4 packet carrying the ICMP `err` from `src` about the packet
/// `orig` (whose header is `hdr`), addressed to its source. Returns the length written, or
/// `None` if `out` is too small for the headers; the quote is cut to what fits in `out`
/// and in 576 bytes. TTL 64, no options, DF clear.
pub fn build_error(
    err: IcmpError,
    src: Ipv4Addr,
    hdr: &Header,
    orig: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    // As much as fits in 576 bytes (RFC 1812 §4.3.2.3) and in `out` (the egress MTU).
    let quote = orig
        .len()
        .min(hdr.total_len)
        .min(out.len().min(MAX_ERROR_LEN).saturating_sub(28));
    let total = 20 + 8 + quote;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&hdr.src.octets());
    let c = ipv4::checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    let (t, code) = err.type_code();
    let icmp = &mut out[20..];
    icmp[0] = t;
    icmp[1] = code;
    if let IcmpError::FragNeeded { mtu } = err {
        // RFC 1191 §4: the Next-Hop MTU in the low 16 bits of the unused word.
        icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    }
    icmp[8..].copy_from_slice(&orig[..quote]);
    let c = ipv4::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// Turn an ICMP echo request addressed to us into its reply, in place: addresses swapped,
/// type 0, TTL 64, checksums updated. `false` (packet untouched) if it is not a complete
/// echo request.
pub fn echo_reply_in_place(ip: &mut [u8]) -> bool {
    let Ok(hdr) = ipv4::parse(ip) else {
        return false;
    };
    if hdr.protocol != PROTO_ICMP || hdr.fragment || hdr.total_len < hdr.header_len + 8 {
        return false;
    }
    let icmp_range = hdr.header_len..hdr.total_len;
    if ip[hdr.header_len] != 8 || ipv4::checksum(&ip[icmp_range.clone()]) != 0 {
        return false;
    }
    let (s, d) = (hdr.src.octets(), hdr.dst.octets());
    ip[12..16].copy_from_slice(&d);
    ip[16..20].copy_from_slice(&s);
    ip[8] = 64;
    ip[10..12].fill(0);
    let c = ipv4::checksum(&ip[..hdr.header_len]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut ip[icmp_range];
    icmp[0] = 0;
    icmp[2..4].fill(0);
    let c = ipv4::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Ipv4Packet};

    fn packet(proto: u8, payload: &[u8], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 1, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let c = ipv4::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn echo_request() -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let c = ipv4::checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        packet(1, &icmp, [10, 0, 0, 1], [10, 0, 1, 1])
    }

    #[test]
    fn time_exceeded_quotes_the_packet_and_verifies() {
        let orig = packet(17, &[0u8; 1000], [10, 0, 0, 1], [10, 9, 9, 9]);
        let hdr = ipv4::parse(&orig).unwrap();
        assert!(may_send_error(&hdr, &orig));
        let mut out = [0u8; 1500];
        let n = build_error(
            IcmpError::TimeExceeded,
            Ipv4Addr::new(10, 0, 0, 254),
            &hdr,
            &orig,
            &mut out,
        )
        .unwrap();
        assert_eq!(n, MAX_ERROR_LEN, "quoted up to 576 bytes in all");
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 0, 0, 1));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::TimeExceeded);
        assert_eq!(
            &icmp.data()[..20],
            &orig[..20],
            "the original header is quoted"
        );
    }

    #[test]
    fn frag_needed_carries_the_mtu() {
        let orig = packet(6, &[0u8; 1480], [10, 0, 0, 1], [10, 0, 1, 2]);
        let hdr = ipv4::parse(&orig).unwrap();
        let mut out = [0u8; 600];
        let n = build_error(
            IcmpError::FragNeeded { mtu: 1450 },
            Ipv4Addr::new(10, 0, 0, 254),
            &hdr,
            &orig,
            &mut out,
        )
        .unwrap();
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (Icmpv4Message::DstUnreachable, 4)
        );
        assert_eq!(&ip.payload()[6..8], &1450u16.to_be_bytes());
    }

    #[test]
    fn no_errors_about_errors_fragments_or_broadcasts() {
        let mut out = [0u8; 600];
        let err_icmp = packet(1, &[3, 0, 0, 0, 0, 0, 0, 0], [10, 0, 0, 1], [10, 0, 1, 2]);
        assert!(!may_send_error(&ipv4::parse(&err_icmp).unwrap(), &err_icmp));
        let echo = echo_request();
        assert!(may_send_error(&ipv4::parse(&echo).unwrap(), &echo));
        let bcast = packet(17, &[0; 8], [10, 0, 0, 1], [255, 255, 255, 255]);
        assert!(!may_send_error(&ipv4::parse(&bcast).unwrap(), &bcast));
        let mut frag = packet(17, &[0; 8], [10, 0, 0, 1], [10, 0, 1, 2]);
        frag[6] = 0;
        frag[7] = 1;
        frag[10..12].fill(0);
        let c = ipv4::checksum(&frag[..20]);
        frag[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(!may_send_error(&ipv4::parse(&frag).unwrap(), &frag));
        let h = ipv4::parse(&bcast).unwrap();
        assert!(
            build_error(
                IcmpError::NetUnreachable,
                Ipv4Addr::new(1, 1, 1, 1),
                &h,
                &bcast,
                &mut out[..10]
            )
            .is_none()
        );
    }

    #[test]
    fn echo_reply_in_place_is_valid() {
        let mut p = echo_request();
        assert!(echo_reply_in_place(&mut p));
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 0, 1))
        );
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::EchoReply);
        assert_eq!(icmp.data(), b"ping");
        // A reply is not answered again, and garbage is left alone.
        assert!(!echo_reply_in_place(&mut p));
        let mut junk = vec![0x45u8; 30];
        assert!(!echo_reply_in_place(&mut junk));
    }
}
