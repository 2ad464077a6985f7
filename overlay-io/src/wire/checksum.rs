//! The Internet checksum (RFC 1071), and completing checksums a sender left to hardware.
//!
//! [`sum`], [`fold`] and [`internet`] are the one implementation of RFC 1071 that the
//! datapath uses (IPv4 headers, ICMP, TCP/UDP after segmentation).
//!
//! A frame sent by a local interface with checksum offload (a veth or a TAP peer, a
//! virtio NIC's host) carries a TCP or UDP checksum that is only *partial*: the field holds
//! the folded pseudo-header sum. A VNF that forwards it elsewhere (into VXLAN, say) must
//! finish the job the NIC would have done, or the receiver drops the segment. Finishing it
//! is the Internet checksum over the transport header and payload with the partial sum left
//! in place: [`complete_partial`] finds the transport header by parsing; the AF_PACKET port,
//! which gets the offsets from the kernel, uses `super::gso::complete_csum`.

use smoltcp::wire::{EthernetProtocol, IpProtocol};

use super::vlan;

/// Complete the partial TCP/UDP checksum of an Ethernet frame (optionally 802.1Q-tagged)
/// in place. Returns `false` (frame untouched) if the frame is not TCP or UDP over IPv4
/// or IPv6 without extension headers, or is truncated.
pub fn complete_partial(frame: &mut [u8]) -> bool {
    let mut off = 12;
    let Some(et) = be16(frame, off) else {
        return false;
    };
    let mut et = et;
    if et == vlan::TPID || et == vlan::TPID_QINQ {
        off += 4;
        let Some(inner) = be16(frame, off) else {
            return false;
        };
        et = inner;
    }
    let l3 = off + 2;
    let (proto, l4, l4_len) = match EthernetProtocol::from(et) {
        EthernetProtocol::Ipv4 => {
            let Some(&vihl) = frame.get(l3) else {
                return false;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let Some(total) = be16(frame, l3 + 2) else {
                return false;
            };
            let Some(&p) = frame.get(l3 + 9) else {
                return false;
            };
            // A fragment's checksum is not ours to finish (offload never fragments).
            let Some(frag) = be16(frame, l3 + 6) else {
                return false;
            };
            if ihl < 20 || frag & 0x3fff != 0 {
                return false;
            }
            (p, l3 + ihl, usize::from(total).saturating_sub(ihl))
        }
        EthernetProtocol::Ipv6 => {
            let Some(plen) = be16(frame, l3 + 4) else {
                return false;
            };
            let Some(&p) = frame.get(l3 + 6) else {
                return false;
            };
            (p, l3 + 40, usize::from(plen))
        }
        _ => return false,
    };
    let field = match IpProtocol::from(proto) {
        IpProtocol::Tcp => 16,
        IpProtocol::Udp => 6,
        _ => return false,
    };
    let end = l4 + l4_len;
    if end > frame.len() || l4_len < field + 2 {
        return false;
    }
    let sum = !fold(sum(&frame[l4..end]));
    // RFC 768: a computed UDP checksum of zero is sent as all ones.
    let sum = if sum == 0 && field == 6 { 0xffff } else { sum };
    frame[l4 + field..l4 + field + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The ones' complement sum of `b` as 16-bit big-endian words (an odd last byte padded
/// with zero), not yet folded: sums of several pieces add up before one [`fold`].
pub fn sum(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(2);
    let mut s: u64 = chunks
        .by_ref()
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

/// Fold a [`sum`] into 16 bits (end-around carry).
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum of `b`: 0 when `b` holds a correct checksum field.
pub fn internet(b: &[u8]) -> u16 {
    !fold(sum(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket};

    /// An Ethernet/IPv4/UDP frame with a correct checksum, and the same frame with only the
    /// pseudo-header sum in the field, as a kernel with offload leaves it.
    fn udp_pair() -> (Vec<u8>, Vec<u8>) {
        let mut f = vec![0u8; 14 + 20 + 8 + 5];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&33u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1000u16.to_be_bytes());
        f[36..38].copy_from_slice(&2000u16.to_be_bytes());
        f[38..40].copy_from_slice(&13u16.to_be_bytes());
        f[42..47].copy_from_slice(b"hello");
        let (s, d) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let mut good = f.clone();
        UdpPacket::new_unchecked(&mut good[34..])
            .fill_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
        // Partial: the folded pseudo-header sum (src, dst, proto, length), uncomplemented.
        let pseudo = sum(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 13]);
        let mut partial = f;
        partial[40..42].copy_from_slice(&fold(pseudo).to_be_bytes());
        (good, partial)
    }

    #[test]
    fn completes_udp() {
        let (good, mut partial) = udp_pair();
        assert!(complete_partial(&mut partial));
        assert_eq!(partial, good);
        let ip = Ipv4Packet::new_checked(&partial[14..]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
    }

    #[test]
    fn completes_tagged_tcp() {
        let mut f = [0u8; 14 + 20 + 20 + 3];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&43u16.to_be_bytes());
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[46] = 0x50;
        f[54..57].copy_from_slice(b"abc");
        let pseudo = sum(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 6, 0, 23]);
        f[50..52].copy_from_slice(&fold(pseudo).to_be_bytes());
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&f[12..]);
        assert!(complete_partial(&mut tagged));
        let ip = Ipv4Packet::new_checked(&tagged[18..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
    }

    #[test]
    fn leaves_other_frames_alone() {
        let (_, partial) = udp_pair();
        for n in 0..partial.len() {
            let mut short = partial[..n].to_vec();
            let before = short.clone();
            if !complete_partial(&mut short) {
                assert_eq!(short, before);
            }
        }
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!complete_partial(&mut arp));
    }
}
