//! Reading flow keys from IPv4 packets and rewriting their addresses and ports in place,
//! for NAT and load balancing. Checksums are updated incrementally (RFC 1624 eqn. 3), so a
//! rewrite costs the same for a 64-byte packet and a 9000-byte one.
//!
//! - TCP and UDP: addresses and ports; their checksum covers the pseudo-header (RFC 793
//!   §3.1, RFC 768), so an address change updates it too. A UDP checksum of zero means "none"
//!   (RFC 768) and stays zero; a computed zero is sent as 0xffff.
//! - ICMP queries (echo, timestamp, information, address mask): the identifier stands in for
//!   the ports (RFC 3022 §4.1); the ICMP checksum has no pseudo-header.
//! - ICMP errors quote the packet that caused them (RFC 792); [`rewrite_icmp_error`]
//!   translates the outer destination and the quoted addresses and ports (RFC 5508 §7).

use std::net::Ipv4Addr;

use crate::ipv4::Header;
use crate::nat::{
    Direction, Endpoint, FiveTuple, NatError, NatTable, Proto, SessionId, TcpFlags, Translation,
};
use crate::pipeline::DropReason;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// What a packet is, for translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// TCP, UDP or an ICMP query, with its key; `tcp_flags` is the TCP flags byte (0 for
    /// the others).
    Tuple {
        /// The key as the packet travels.
        key: FiveTuple,
        /// TCP flags byte.
        tcp_flags: u8,
    },
    /// An ICMP error quoting a TCP, UDP or ICMP query packet whose key (as quoted) is given.
    IcmpError {
        /// The quoted packet's key.
        quoted: FiveTuple,
    },
    /// A non-first fragment, a truncated transport header, or another protocol.
    Other,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn is_query(t: u8) -> bool {
    // Echo reply/request, timestamp, information, address mask (RFC 792, RFC 950).
    matches!(t, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
}

fn is_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// The key of an L4 header at `l4` with addresses `src`/`dst`; `None` when truncated or
/// not translatable.
fn l4_key(proto: u8, l4: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Option<(FiveTuple, u8)> {
    match proto {
        TCP | UDP => {
            let sp = be16(l4, 0)?;
            let dp = be16(l4, 2)?;
            let (p, flags) = if proto == TCP {
                (Proto::Tcp, l4.get(13).copied().unwrap_or(0))
            } else {
                (Proto::Udp, 0)
            };
            Some((
                FiveTuple::new(p, Endpoint::new(src, sp), Endpoint::new(dst, dp)),
                flags,
            ))
        }
        ICMP => {
            let t = *l4.first()?;
            if !is_query(t) {
                return None;
            }
            let id = be16(l4, 4)?;
            Some((
                FiveTuple::new(Proto::Icmp, Endpoint::new(src, id), Endpoint::new(dst, id)),
                0,
            ))
        }
        _ => None,
    }
}

/// Classify a packet that [`crate::ipv4::parse`] accepted.
pub fn flow(ip: &[u8], hdr: &Header) -> Flow {
    if hdr.fragment_offset != 0 {
        return Flow::Other;
    }
    let l4 = &ip[hdr.header_len..hdr.total_len];
    if hdr.protocol == ICMP
        && let Some(&t) = l4.first()
        && is_error(t)
    {
        // The quoted header: at least 20 bytes of IP and 8 of transport (RFC 792).
        let inner = l4.get(8..).unwrap_or(&[]);
        if inner.len() < 28 || inner[0] >> 4 != 4 {
            return Flow::Other;
        }
        let ihl = usize::from(inner[0] & 0x0f) * 4;
        let Some(q4) = inner.get(ihl..) else {
            return Flow::Other;
        };
        let (s, d) = (addr(inner, 12), addr(inner, 16));
        return match l4_key(inner[9], q4, s, d) {
            Some((quoted, _)) => Flow::IcmpError { quoted },
            None => Flow::Other,
        };
    }
    match l4_key(hdr.protocol, l4, hdr.src, hdr.dst) {
        Some((key, tcp_flags)) => Flow::Tuple { key, tcp_flags },
        None => Flow::Other,
    }
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    Ipv4Addr::from(a)
}

/// RFC 1624 eqn. 3 over one changed 16-bit word: HC' = ~(~HC + ~m + m').
fn adjust(hc: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!hc) + u64::from(!old) + u64::from(new);
    !crate::wire::checksum::fold(sum)
}

/// Adjust a checksum for a changed address (two words).
fn adjust_addr(hc: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    let (o, n) = (old.octets(), new.octets());
    let hc = adjust(
        hc,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([n[0], n[1]]),
    );
    adjust(
        hc,
        u16::from_be_bytes([o[2], o[3]]),
        u16::from_be_bytes([n[2], n[3]]),
    )
}

fn get16(b: &[u8], at: usize) -> u16 {
    be16(b, at).unwrap_or(0)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Set one address of an IPv4 header (`at` = 12 for the source, 16 for the destination)
/// and patch the header checksum; returns the old address.
fn set_ip_addr(ip: &mut [u8], at: usize, new: Ipv4Addr) -> Ipv4Addr {
    let old = addr(ip, at);
    if old != new && ip.len() >= 20 {
        ip[at..at + 4].copy_from_slice(&new.octets());
        let c = adjust_addr(get16(ip, 10), old, new);
        put16(ip, 10, c);
    }
    old
}

/// Where an L4 header keeps its checksum, and whether it covers the pseudo-header.
fn l4_checksum_at(proto: u8) -> Option<(usize, bool)> {
    match proto {
        TCP => Some((16, true)),
        UDP => Some((6, true)),
        ICMP => Some((2, false)),
        _ => None,
    }
}

/// Rewrite the ports (ICMP: identifier) and addresses of the transport header `l4`
/// carried in an IPv4 packet whose addresses change from `old` to `new`.
fn rewrite_l4(l4: &mut [u8], proto: u8, old: (Endpoint, Endpoint), new: (Endpoint, Endpoint)) {
    let Some((at, pseudo)) = l4_checksum_at(proto) else {
        return;
    };
    let mut c = get16(l4, at);
    let udp_none = proto == UDP && c == 0;
    if pseudo {
        c = adjust_addr(c, old.0.addr, new.0.addr);
        c = adjust_addr(c, old.1.addr, new.1.addr);
    }
    if proto == ICMP {
        // Identifier at offset 4; for replies the same field.
        c = adjust(c, old.0.port, new.0.port);
        put16(l4, 4, new.0.port);
    } else {
        c = adjust(c, old.0.port, new.0.port);
        c = adjust(c, old.1.port, new.1.port);
        put16(l4, 0, new.0.port);
        put16(l4, 2, new.1.port);
    }
    if udp_none {
        return;
    }
    if proto == UDP && c == 0 {
        c = 0xffff;
    }
    put16(l4, at, c);
}

/// Rewrite a TCP, UDP or ICMP query packet (classified as [`Flow::Tuple`] with key `key`)
/// to carry `src` and `dst`, updating every checksum.
pub fn rewrite(ip: &mut [u8], hdr: &Header, key: &FiveTuple, src: Endpoint, dst: Endpoint) {
    if key.src == src && key.dst == dst {
        return;
    }
    set_ip_addr(ip, 12, src.addr);
    set_ip_addr(ip, 16, dst.addr);
    if let Some(l4) = ip.get_mut(hdr.header_len..hdr.total_len) {
        rewrite_l4(l4, hdr.protocol, (key.src, key.dst), (src, dst));
    }
}

/// Translate an ICMP error (classified as [`Flow::IcmpError`] quoting `quoted`) about a
/// translated flow: the outer destination becomes `outer_dst`, and the quoted packet's
/// source and destination become `inner_src` and `inner_dst`. When the error comes from
/// the quoted packet's destination itself (a translated host refusing it), the outer source
/// is translated too, to `inner_dst`'s address, so that no internal address leaks out
/// (RFC 5508 §7: the embedded and the outer header are translated alike). The quoted IP header
/// checksum and the ICMP checksum are updated; the quoted transport checksum (often cut
/// off by the quote) is left alone, as receivers do not check it.
pub fn rewrite_icmp_error(
    ip: &mut [u8],
    hdr: &Header,
    quoted: &FiveTuple,
    outer_dst: Ipv4Addr,
    inner_src: Endpoint,
    inner_dst: Endpoint,
) {
    set_ip_addr(ip, 16, outer_dst);
    if hdr.src == quoted.dst.addr {
        set_ip_addr(ip, 12, inner_dst.addr);
    }
    let Some(icmp) = ip.get_mut(hdr.header_len..hdr.total_len) else {
        return;
    };
    let mut c = get16(icmp, 2);
    let Some(inner) = icmp.get_mut(8..) else {
        return;
    };
    if inner.len() < 28 {
        return;
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    let proto = inner[9];
    // Every word that changes inside the ICMP message changes its checksum.
    let old_ip_csum = get16(inner, 10);
    set_ip_addr(inner, 12, inner_src.addr);
    set_ip_addr(inner, 16, inner_dst.addr);
    c = adjust_addr(c, quoted.src.addr, inner_src.addr);
    c = adjust_addr(c, quoted.dst.addr, inner_dst.addr);
    c = adjust(c, old_ip_csum, get16(inner, 10));
    if let Some(l4) = inner.get_mut(ihl..) {
        if proto == ICMP {
            // The quoted echo's identifier; its own checksum is left stale.
            let old = get16(l4, 4);
            put16(l4, 4, inner_src.port);
            c = adjust(c, old, inner_src.port);
        } else {
            let (os, od) = (get16(l4, 0), get16(l4, 2));
            put16(l4, 0, inner_src.port);
            put16(l4, 2, inner_dst.port);
            c = adjust(c, os, inner_src.port);
            c = adjust(c, od, inner_dst.port);
        }
    }
    put16(icmp, 2, c);
}

/// How to rewrite one packet, decided from a NAT session before the packet is routed and
/// applied after ([`NatPlan::apply`]): what the router's NAT and the load balancer share.
#[derive(Debug, Clone, Copy)]
pub enum NatPlan {
    /// A packet of a translated flow, in either direction.
    Tuple {
        /// The packet's key as received.
        key: FiveTuple,
        /// Its source after the rewrite.
        src: Endpoint,
        /// Its destination after the rewrite.
        dst: Endpoint,
        /// The session, for TCP state.
        session: SessionId,
        /// The packet's direction in the session.
        dir: Direction,
        /// Its TCP flags byte.
        tcp_flags: u8,
    },
    /// An ICMP error about a translated flow (RFC 5508 §7).
    IcmpError {
        /// The quoted packet's key as received.
        quoted: FiveTuple,
        /// The error's destination after the rewrite.
        outer_dst: Ipv4Addr,
        /// The quoted source after the rewrite.
        inner_src: Endpoint,
        /// The quoted destination after the rewrite.
        inner_dst: Endpoint,
    },
}

impl NatPlan {
    /// The plan for a packet with key `key` that `t` translates.
    pub fn tuple(key: FiveTuple, t: Translation, dir: Direction, tcp_flags: u8) -> NatPlan {
        NatPlan::Tuple {
            key,
            src: t.src,
            dst: t.dst,
            session: t.session,
            dir,
            tcp_flags,
        }
    }

    /// The plan for an ICMP error quoting `quoted`, whose session's reply direction
    /// (the lookup of `quoted.reversed()`) gave `t`.
    pub fn icmp_error(quoted: FiveTuple, t: Translation) -> NatPlan {
        NatPlan::IcmpError {
            quoted,
            outer_dst: t.dst.addr,
            inner_src: t.dst,
            inner_dst: t.src,
        }
    }

    /// Where the packet goes after the rewrite: the address to route.
    pub fn dst(&self) -> Ipv4Addr {
        match self {
            NatPlan::Tuple { dst, .. } => dst.addr,
            NatPlan::IcmpError { outer_dst, .. } => *outer_dst,
        }
    }

    /// Rewrite the packet, and give the session a TCP segment's flags; the session and
    /// direction of a flow's packet, for the caller's own accounting.
    pub fn apply(
        self,
        table: &mut NatTable,
        ip: &mut [u8],
        hdr: &Header,
        now: std::time::Instant,
    ) -> Option<(SessionId, Direction)> {
        match self {
            NatPlan::Tuple {
                key,
                src,
                dst,
                session,
                dir,
                tcp_flags,
            } => {
                rewrite(ip, hdr, &key, src, dst);
                if key.proto == Proto::Tcp {
                    table.observe_tcp(session, dir, TcpFlags::from_bits(tcp_flags), now);
                }
                Some((session, dir))
            }
            NatPlan::IcmpError {
                quoted,
                outer_dst,
                inner_src,
                inner_dst,
            } => {
                rewrite_icmp_error(ip, hdr, &quoted, outer_dst, inner_src, inner_dst);
                None
            }
        }
    }
}

impl From<NatError> for DropReason {
    fn from(e: NatError) -> DropReason {
        match e {
            NatError::PoolExhausted => DropReason::NatPoolExhausted,
            NatError::TenantCapReached => DropReason::NatCapReached,
            NatError::TableFull => DropReason::NatTableFull,
            NatError::Conflict => DropReason::NatConflict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4;

    fn tcp_packet(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let payload = b"hello";
        let total = 20 + 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = ipv4::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x12;
        p[40..].copy_from_slice(payload);
        let c = l4_full_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The transport checksum computed from scratch with the pseudo-header.
    fn l4_full_checksum(p: &[u8]) -> u16 {
        let hl = usize::from(p[0] & 15) * 4;
        let l4 = &p[hl..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, p[9]]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        let mut data = pseudo;
        let mut body = l4.to_vec();
        let at = if p[9] == TCP { 16 } else { 6 };
        body[at] = 0;
        body[at + 1] = 0;
        data.extend_from_slice(&body);
        ipv4::checksum(&data)
    }

    #[test]
    fn tcp_rewrite_matches_a_full_recompute() {
        let mut p = tcp_packet([10, 0, 1, 5], [192, 0, 2, 1], 40000, 80);
        let hdr = ipv4::parse(&p).unwrap();
        let Flow::Tuple { key, tcp_flags } = flow(&p, &hdr) else {
            panic!("tcp")
        };
        assert_eq!(tcp_flags, 0x12);
        let src = Endpoint::new(Ipv4Addr::new(192, 0, 2, 10), 1024);
        rewrite(&mut p, &hdr, &key, src, key.dst);
        let hdr2 = ipv4::parse(&p).expect("header checksum still valid");
        assert_eq!(hdr2.src, src.addr);
        assert_eq!(get16(&p, 20), 1024);
        assert_eq!(get16(&p, 36), l4_full_checksum(&p));
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_icmp_id_is_rewritten() {
        let mut p = tcp_packet([10, 0, 1, 5], [192, 0, 2, 1], 5000, 53);
        p[9] = UDP;
        p[10..12].fill(0);
        let c = ipv4::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[26..28].fill(0);
        let hdr = ipv4::parse(&p).unwrap();
        let Flow::Tuple { key, .. } = flow(&p, &hdr) else {
            panic!("udp")
        };
        rewrite(
            &mut p,
            &hdr,
            &key,
            Endpoint::new(Ipv4Addr::new(192, 0, 2, 10), 2000),
            key.dst,
        );
        assert_eq!(get16(&p, 26), 0);

        // ICMP echo request, id 0x1234.
        let mut e = vec![0u8; 28];
        e[0] = 0x45;
        e[2..4].copy_from_slice(&28u16.to_be_bytes());
        e[8] = 64;
        e[9] = ICMP;
        e[12..16].copy_from_slice(&[10, 0, 1, 5]);
        e[16..20].copy_from_slice(&[192, 0, 2, 1]);
        let c = ipv4::checksum(&e[..20]);
        e[10..12].copy_from_slice(&c.to_be_bytes());
        e[20] = 8;
        e[24..26].copy_from_slice(&0x1234u16.to_be_bytes());
        let c = ipv4::checksum(&e[20..]);
        e[22..24].copy_from_slice(&c.to_be_bytes());
        let hdr = ipv4::parse(&e).unwrap();
        let Flow::Tuple { key, .. } = flow(&e, &hdr) else {
            panic!("echo")
        };
        assert_eq!(key.src.port, 0x1234);
        let to = Endpoint::new(Ipv4Addr::new(192, 0, 2, 10), 7);
        rewrite(&mut e, &hdr, &key, to, Endpoint::new(key.dst.addr, 7));
        assert_eq!(get16(&e, 24), 7);
        assert_eq!(ipv4::checksum(&e[20..]), 0, "ICMP checksum valid");
        assert!(ipv4::parse(&e).is_ok());
    }

    /// An ICMP destination unreachable (`code`) from `src` to `dst` quoting the first 28
    /// bytes of `quoted`, checksums valid.
    fn icmp_error(src: [u8; 4], dst: [u8; 4], code: u8, quoted: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 20 + 8 + 28];
        e[0] = 0x45;
        let n = e.len() as u16;
        e[2..4].copy_from_slice(&n.to_be_bytes());
        e[8] = 64;
        e[9] = ICMP;
        e[12..16].copy_from_slice(&src);
        e[16..20].copy_from_slice(&dst);
        let c = ipv4::checksum(&e[..20]);
        e[10..12].copy_from_slice(&c.to_be_bytes());
        e[20] = 3;
        e[21] = code;
        e[28..].copy_from_slice(&quoted[..28]);
        let c = ipv4::checksum(&e[20..]);
        e[22..24].copy_from_slice(&c.to_be_bytes());
        e
    }

    #[test]
    fn icmp_error_is_translated_with_valid_checksums() {
        // A router 198.51.100.1 reports "frag needed" about our SNATed packet.
        let quoted = tcp_packet([192, 0, 2, 10], [203, 0, 113, 5], 1024, 443);
        let mut e = icmp_error([198, 51, 100, 1], [192, 0, 2, 10], 4, &quoted);
        let hdr = ipv4::parse(&e).unwrap();
        let Flow::IcmpError { quoted: q } = flow(&e, &hdr) else {
            panic!("error")
        };
        assert_eq!(q.src, Endpoint::new(Ipv4Addr::new(192, 0, 2, 10), 1024));
        let inside = Endpoint::new(Ipv4Addr::new(10, 0, 1, 5), 40000);
        rewrite_icmp_error(&mut e, &hdr, &q, inside.addr, inside, q.dst);
        assert!(ipv4::parse(&e).is_ok(), "outer header checksum");
        assert_eq!(ipv4::checksum(&e[20..]), 0, "ICMP checksum");
        assert_eq!(ipv4::checksum(&e[28..48]), 0, "quoted header checksum");
        assert_eq!(addr(&e, 28 + 12), inside.addr);
        assert_eq!(get16(&e, 48), 40000);
    }

    #[test]
    fn fragments_and_other_protocols_are_other() {
        let mut p = tcp_packet([10, 0, 1, 5], [192, 0, 2, 1], 1, 2);
        p[6] = 0x00;
        p[7] = 0x10; // offset 128 bytes
        p[10..12].fill(0);
        let c = ipv4::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let hdr = ipv4::parse(&p).unwrap();
        assert_eq!(flow(&p, &hdr), Flow::Other);
    }

    #[test]
    fn an_error_from_a_translated_host_leaves_from_its_external_address() {
        // 203.0.113.5 reached 10.0.1.5:22 through a port forward on 192.0.2.10:2222; the
        // internal host answers with port unreachable quoting the translated packet.
        let quoted = tcp_packet([203, 0, 113, 5], [10, 0, 1, 5], 40000, 22);
        let mut e = icmp_error([10, 0, 1, 5], [203, 0, 113, 5], 3, &quoted);
        let hdr = ipv4::parse(&e).unwrap();
        let Flow::IcmpError { quoted: q } = flow(&e, &hdr) else {
            panic!("error")
        };
        let public = Endpoint::new(Ipv4Addr::new(192, 0, 2, 10), 2222);
        rewrite_icmp_error(&mut e, &hdr, &q, q.src.addr, q.src, public);
        assert_eq!(addr(&e, 12), public.addr, "outer source translated");
        assert!(ipv4::parse(&e).is_ok());
        assert_eq!(ipv4::checksum(&e[20..]), 0);
        assert_eq!(
            addr(&e, 28 + 16),
            public.addr,
            "quoted destination translated"
        );
    }
}
