//! Software segmentation of GSO super-frames, and checksums left to offload.
//!
//! An `AF_PACKET` socket with `PACKET_VNET_HDR` receives every frame behind a
//! `struct virtio_net_hdr` (linux/virtio_net.h): a same-host sender with TSO/GSO on (a veth
//! peer) hands us TCP (or UDP with USO) "super-frames" of up to 64 KiB, marked with the
//! segment size, and frames whose transport checksum holds only the pseudo-header sum.
//! A datapath that forwards them elsewhere must do what the sender's NIC would have done:
//!
//! - [`complete_csum`] finishes a partial checksum at `csum_start`/`csum_offset`.
//! - [`Plan`] cuts a TCP (IPv4 or IPv6) or USO super-frame into segments of at most
//!   `hdr_len + gso_size` bytes, as `tcp_gso_segment`/`__udp_gso_segment` do: headers
//!   copied to each segment, lengths, IPv4 ID and TCP sequence number advanced, FIN/PSH only
//!   on the last segment and CWR only on the first, and every checksum computed in full.
//!
//! Offsets come from parsing the frame (up to two inline VLAN tags), never from the header's
//! `hdr_len`, which a sender may leave inexact. Nothing here panics on any input.

/// Length of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

use super::checksum::{fold, sum};

/// `flags`: the transport checksum is partial; finish it at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a super-frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: legacy UDP fragmentation offload (UFO).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO), IPv4 or IPv6.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN (CWR on the first only, as always).
pub const GSO_ECN: u8 = 0x80;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_SCTP: u8 = 132;

mod field {
    pub type Field = core::ops::Range<usize>;
    // IPv4, from the network header.
    pub const IPV4_TOTAL_LEN: Field = 2..4;
    pub const IPV4_ID: Field = 4..6;
    pub const IPV4_FRAG: Field = 6..8;
    pub const IPV4_PROTO: usize = 9;
    pub const IPV4_CHECKSUM: Field = 10..12;
    pub const IPV4_ADDRS: Field = 12..20;
    // IPv6, from the network header.
    pub const IPV6_PAYLOAD_LEN: Field = 4..6;
    pub const IPV6_NEXT_HEADER: usize = 6;
    pub const IPV6_ADDRS: Field = 8..40;
    pub const IPV6_HEADER_LEN: usize = 40;
    // TCP and UDP, from the transport header.
    pub const TCP_SEQ: Field = 4..8;
    pub const TCP_DATA_OFFSET: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CHECKSUM: Field = 16..18;
    pub const UDP_LEN: Field = 4..6;
    pub const UDP_CHECKSUM: Field = 6..8;
    pub const UDP_HEADER_LEN: usize = 8;
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`, in the byte order of the host (AF_PACKET uses legacy virtio,
/// which is native-endian on every host Linux runs on little-endian, as here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Read the header from the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Write the header into the first [`VNET_HDR_LEN`] bytes of `b` (`false` if short).
    pub fn emit(&self, b: &mut [u8]) -> bool {
        let Some(b) = b.get_mut(..VNET_HDR_LEN) else {
            return false;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        true
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

/// Why a super-frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Legacy UFO, or a GSO type we do not know.
    #[error("unsupported GSO type")]
    Unsupported,
    /// The headers do not parse, or disagree with the GSO type.
    #[error("malformed super-frame")]
    Malformed,
    /// A segment would not fit the output buffer.
    #[error("segment too large")]
    TooLarge,
}

/// Finish a partial checksum: the 16-bit field at `csum_start + csum_offset` holds the
/// pseudo-header sum; store the complement of the sum of the bytes from `csum_start` to the
/// end of the IP packet (Ethernet padding after it is not summed). A UDP checksum (offset 6)
/// of zero is sent as all ones (RFC 768). Returns `false` (frame untouched) if the offsets
/// are outside the packet, or for SCTP, whose CRC32c is not an Internet checksum.
pub fn complete_csum(frame: &mut [u8], csum_start: usize, csum_offset: usize) -> bool {
    let end = ip_end(frame).unwrap_or(frame.len()).min(frame.len());
    let at = csum_start.saturating_add(csum_offset);
    if at.saturating_add(2) > end || csum_start >= end || l4_proto(frame) == Some(PROTO_SCTP) {
        return false;
    }
    let mut c = !fold(sum(&frame[csum_start..end]));
    if c == 0 && csum_offset == field::UDP_CHECKSUM.start {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// How one super-frame is cut: parsed once, then each segment is written on demand, so the
/// segments can be handed out over several receive calls without a copy of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    l3: usize,
    l4: usize,
    ipv6: bool,
    tcp: bool,
    /// Ethernet, IP and transport headers: the bytes copied to every segment.
    hdr_len: usize,
    /// End of the IP packet (trailing bytes, if any, are padding).
    end: usize,
    mss: usize,
    segments: usize,
}

impl Plan {
    /// Parse `frame` (an Ethernet frame, VLAN tags inline) as a super-frame of `hdr`'s
    /// GSO type and size.
    pub fn new(frame: &[u8], hdr: &VnetHdr) -> Result<Plan, Error> {
        let (want_ipv6, want_tcp) = match hdr.gso_kind() {
            GSO_TCPV4 => (Some(false), true),
            GSO_TCPV6 => (Some(true), true),
            GSO_UDP_L4 => (None, false),
            _ => return Err(Error::Unsupported),
        };
        let mss = usize::from(hdr.gso_size);
        if mss == 0 {
            return Err(Error::Malformed);
        }
        let (l3, ethertype) = network_offset(frame).ok_or(Error::Malformed)?;
        let (ipv6, proto, l4, end) = match ethertype {
            ETHERTYPE_IPV4 => {
                let ip = frame.get(l3..).ok_or(Error::Malformed)?;
                let vihl = *ip.first().ok_or(Error::Malformed)?;
                let ihl = usize::from(vihl & 0x0f) * 4;
                if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                    return Err(Error::Malformed);
                }
                let total = usize::from(be16(&ip[field::IPV4_TOTAL_LEN]));
                // A fragment is never a super-frame.
                if be16(&ip[field::IPV4_FRAG]) & 0x3fff != 0 || total < ihl || total > ip.len() {
                    return Err(Error::Malformed);
                }
                (false, ip[field::IPV4_PROTO], l3 + ihl, l3 + total)
            }
            ETHERTYPE_IPV6 => {
                let ip = frame.get(l3..).ok_or(Error::Malformed)?;
                if ip.len() < field::IPV6_HEADER_LEN || ip[0] >> 4 != 6 {
                    return Err(Error::Malformed);
                }
                let plen = usize::from(be16(&ip[field::IPV6_PAYLOAD_LEN]));
                // Extension headers, and BIG TCP's jumbograms (payload length 0), are not
                // segmented here.
                let l4 = l3 + field::IPV6_HEADER_LEN;
                if plen == 0 || plen > ip.len() - field::IPV6_HEADER_LEN {
                    return Err(Error::Malformed);
                }
                (true, ip[field::IPV6_NEXT_HEADER], l4, l4 + plen)
            }
            _ => return Err(Error::Malformed),
        };
        if want_ipv6.is_some_and(|v6| v6 != ipv6) {
            return Err(Error::Malformed);
        }
        let hdr_len = match (want_tcp, proto) {
            (true, PROTO_TCP) => {
                let doff = usize::from(
                    *frame
                        .get(l4 + field::TCP_DATA_OFFSET)
                        .ok_or(Error::Malformed)?
                        >> 4,
                ) * 4;
                if doff < 20 {
                    return Err(Error::Malformed);
                }
                l4 + doff
            }
            (false, PROTO_UDP) => l4 + field::UDP_HEADER_LEN,
            _ => return Err(Error::Malformed),
        };
        if hdr_len > end {
            return Err(Error::Malformed);
        }
        let payload = end - hdr_len;
        Ok(Plan {
            l3,
            l4,
            ipv6,
            tcp: want_tcp,
            hdr_len,
            end,
            mss,
            segments: payload.div_ceil(mss).max(1),
        })
    }

    /// How many segments the frame is cut into.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Length of the headers copied to every segment (Ethernet to transport).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The length of the longest segment.
    pub fn max_segment_len(&self) -> usize {
        self.hdr_len + self.mss.min(self.end - self.hdr_len)
    }

    /// Write segment `k` of `frame` (the frame [`new`](Self::new) parsed) into the front of
    /// `dst`; returns its length.
    pub fn write(&self, frame: &[u8], k: usize, dst: &mut [u8]) -> Result<usize, Error> {
        if k >= self.segments || frame.len() < self.end {
            return Err(Error::Malformed);
        }
        let p0 = self.hdr_len + k * self.mss;
        let p1 = (p0 + self.mss).min(self.end);
        let len = self.hdr_len + (p1 - p0);
        let dst = dst.get_mut(..len).ok_or(Error::TooLarge)?;
        dst[..self.hdr_len].copy_from_slice(&frame[..self.hdr_len]);
        dst[self.hdr_len..].copy_from_slice(&frame[p0..p1]);

        let (l3, l4) = (self.l3, self.l4);
        let l4_len = len - l4;
        let pseudo = if self.ipv6 {
            let ip = &mut dst[l3..];
            ip[field::IPV6_PAYLOAD_LEN].copy_from_slice(&(l4_len as u16).to_be_bytes());
            sum(&ip[field::IPV6_ADDRS]) + l4_len as u64 + u64::from(ip[field::IPV6_NEXT_HEADER])
        } else {
            let ihl = l4 - l3;
            let ip = &mut dst[l3..l4];
            ip[field::IPV4_TOTAL_LEN].copy_from_slice(&((len - l3) as u16).to_be_bytes());
            let id = be16(&ip[field::IPV4_ID]).wrapping_add(k as u16);
            ip[field::IPV4_ID].copy_from_slice(&id.to_be_bytes());
            ip[field::IPV4_CHECKSUM].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&ip[..ihl]));
            ip[field::IPV4_CHECKSUM].copy_from_slice(&c.to_be_bytes());
            sum(&ip[field::IPV4_ADDRS]) + l4_len as u64 + u64::from(ip[field::IPV4_PROTO])
        };

        let l4h = &mut dst[l4..];
        let csum = if self.tcp {
            let seq = u32::from_be_bytes([l4h[4], l4h[5], l4h[6], l4h[7]])
                .wrapping_add((k * self.mss) as u32);
            l4h[field::TCP_SEQ].copy_from_slice(&seq.to_be_bytes());
            if k + 1 != self.segments {
                l4h[field::TCP_FLAGS] &= !(TCP_FIN | TCP_PSH);
            }
            if k != 0 {
                l4h[field::TCP_FLAGS] &= !TCP_CWR;
            }
            field::TCP_CHECKSUM
        } else {
            l4h[field::UDP_LEN].copy_from_slice(&(l4_len as u16).to_be_bytes());
            field::UDP_CHECKSUM
        };
        l4h[csum.clone()].copy_from_slice(&[0, 0]);
        let mut c = !fold(pseudo + sum(l4h));
        if c == 0 && !self.tcp {
            c = 0xffff;
        }
        l4h[csum].copy_from_slice(&c.to_be_bytes());
        Ok(len)
    }
}

/// Cut `frame` into segments as `hdr` says, handing each to `out` after writing it into
/// `scratch`; returns how many were handed out.
pub fn segment(
    frame: &[u8],
    hdr: &VnetHdr,
    scratch: &mut [u8],
    mut out: impl FnMut(&[u8]),
) -> Result<usize, Error> {
    let plan = Plan::new(frame, hdr)?;
    for k in 0..plan.segments() {
        let n = plan.write(frame, k, scratch)?;
        out(&scratch[..n]);
    }
    Ok(plan.segments())
}

/// Offset of the network header past up to two inline VLAN tags, and its EtherType.
fn network_offset(frame: &[u8]) -> Option<(usize, u16)> {
    let mut off = 12;
    for _ in 0..3 {
        let et = be16(frame.get(off..off + 2)?);
        if et != TPID_8021Q && et != TPID_8021AD {
            return Some((off + 2, et));
        }
        off += 4;
    }
    None
}

/// Where the IP packet of a frame ends (its total or payload length), if it is IP.
fn ip_end(frame: &[u8]) -> Option<usize> {
    let (l3, et) = network_offset(frame)?;
    match et {
        ETHERTYPE_IPV4 => Some(l3 + usize::from(be16(frame.get(l3 + 2..l3 + 4)?))),
        ETHERTYPE_IPV6 => Some(l3 + 40 + usize::from(be16(frame.get(l3 + 4..l3 + 6)?))),
        _ => None,
    }
}

/// The transport protocol of an IP frame (IPv6: the first next header).
fn l4_proto(frame: &[u8]) -> Option<u8> {
    let (l3, et) = network_offset(frame)?;
    match et {
        ETHERTYPE_IPV4 => frame.get(l3 + 9).copied(),
        ETHERTYPE_IPV6 => frame.get(l3 + 6).copied(),
        _ => None,
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Super-frames for tests, here and in the AF_PACKET backend.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) const V4_SRC: [u8; 4] = [10, 0, 0, 1];
    pub(crate) const V4_DST: [u8; 4] = [10, 0, 0, 2];
    pub(crate) const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    pub(crate) const V6_DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    pub(crate) const SEQ: u32 = 0xffff_f000; // wraps inside the super-frame

    /// An Ethernet frame (with `tags` inline) carrying IPv4 or IPv6 and a transport header
    /// (TCP with `flags`, or UDP) and `payload`; checksums left zero, as GSO hands it up.
    pub(crate) fn super_frame(
        tags: &[u16],
        v6: bool,
        tcp: bool,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa];
        for &tci in tags {
            f.extend_from_slice(&TPID_8021Q.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let l4_len = if tcp { 20 } else { 8 } + payload.len();
        let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
        if v6 {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&V6_SRC);
            f.extend_from_slice(&V6_DST);
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0xff, 0xfe, 0x40, 0, 64, proto, 0, 0]); // ID 0xfffe, DF
            f.extend_from_slice(&V4_SRC);
            f.extend_from_slice(&V4_DST);
        }
        if tcp {
            f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
            f.extend_from_slice(&SEQ.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use smoltcp::wire::{
        IpAddress, Ipv4Address, Ipv4Packet, Ipv6Address, Ipv6Packet, TcpPacket, UdpPacket,
    };

    use super::fixtures::*;
    use super::*;

    fn hdr(gso_type: u8, gso_size: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: 0, // inexact on purpose: offsets come from parsing
            gso_size,
            csum_start: 0,
            csum_offset: 0,
        }
    }

    fn cut(frame: &[u8], h: &VnetHdr) -> Result<Vec<Vec<u8>>, Error> {
        let mut scratch = vec![0u8; 65_536];
        let mut segs = Vec::new();
        let n = segment(frame, h, &mut scratch, |s| segs.push(s.to_vec()))?;
        assert_eq!(n, segs.len());
        Ok(segs)
    }

    /// Checks common to the TCP cases; returns the payloads.
    fn check_tcp(segs: &[Vec<u8>], l3: usize, v6: bool, mss: usize, flags: u8) -> Vec<u8> {
        let mut data = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            let tcp_bytes = if v6 {
                let ip = Ipv6Packet::new_checked(&s[l3..]).expect("ipv6");
                assert_eq!(usize::from(ip.payload_len()), s.len() - l3 - 40);
                &s[l3 + 40..]
            } else {
                let ip = Ipv4Packet::new_checked(&s[l3..]).expect("ipv4");
                assert!(ip.verify_checksum(), "IPv4 checksum of segment {k}");
                assert_eq!(usize::from(ip.total_len()), s.len() - l3);
                assert_eq!(ip.ident(), 0xfffe_u16.wrapping_add(k as u16));
                assert!(ip.dont_frag());
                &s[l3 + 20..]
            };
            let tcp = TcpPacket::new_checked(tcp_bytes).expect("tcp");
            let (src, dst) = if v6 {
                (
                    IpAddress::Ipv6(Ipv6Address::from(V6_SRC)),
                    IpAddress::Ipv6(Ipv6Address::from(V6_DST)),
                )
            } else {
                (
                    IpAddress::Ipv4(Ipv4Address::from(V4_SRC)),
                    IpAddress::Ipv4(Ipv4Address::from(V4_DST)),
                )
            };
            assert!(
                tcp.verify_checksum(&src, &dst),
                "TCP checksum of segment {k}"
            );
            assert_eq!(
                tcp.seq_number().0 as u32,
                SEQ.wrapping_add((k * mss) as u32),
                "sequence number of segment {k}"
            );
            let last = k + 1 == segs.len();
            assert_eq!(tcp.fin(), last && flags & TCP_FIN != 0, "FIN on {k}");
            assert_eq!(tcp.psh(), last && flags & TCP_PSH != 0, "PSH on {k}");
            assert_eq!(tcp.cwr(), k == 0 && flags & TCP_CWR != 0, "CWR on {k}");
            assert!(tcp.ack());
            assert!(tcp.payload().len() <= mss);
            data.extend_from_slice(tcp.payload());
        }
        data
    }

    #[test]
    fn tcpv4_three_segments() {
        let mss = 1000;
        let flags = 0x10 | TCP_PSH | TCP_FIN | TCP_CWR;
        let p = payload(3 * mss);
        let f = super_frame(&[], false, true, flags, &p);
        let segs = cut(&f, &hdr(GSO_TCPV4, mss as u16)).expect("segments");
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|s| s.len() == 14 + 40 + mss));
        assert_eq!(check_tcp(&segs, 14, false, mss, flags), p);
    }

    #[test]
    fn tcpv4_last_segment_shorter() {
        let mss = 1448;
        let p = payload(2 * mss + 17);
        let f = super_frame(&[], false, true, 0x10 | TCP_PSH, &p);
        let plan = Plan::new(&f, &hdr(GSO_TCPV4 | GSO_ECN, mss as u16)).expect("plan");
        assert_eq!(plan.segments(), 3);
        assert_eq!(plan.hdr_len(), 54);
        assert_eq!(plan.max_segment_len(), 54 + mss);
        let segs = cut(&f, &hdr(GSO_TCPV4, mss as u16)).expect("segments");
        assert_eq!(segs[2].len(), 54 + 17);
        assert_eq!(check_tcp(&segs, 14, false, mss, 0x10 | TCP_PSH), p);
    }

    #[test]
    fn tcpv6_segments() {
        let mss = 1220;
        let p = payload(4 * mss - 5);
        let f = super_frame(&[], true, true, 0x10 | TCP_PSH, &p);
        let segs = cut(&f, &hdr(GSO_TCPV6, mss as u16)).expect("segments");
        assert_eq!(segs.len(), 4);
        assert_eq!(check_tcp(&segs, 14, true, mss, 0x10 | TCP_PSH), p);
        // The wrong GSO type for the IP version is refused.
        assert_eq!(cut(&f, &hdr(GSO_TCPV4, 1000)), Err(Error::Malformed));
    }

    #[test]
    fn vlan_tags_shift_the_offsets() {
        let mss = 500;
        let p = payload(3 * mss);
        for tags in [&[100u16][..], &[200, 100]] {
            let f = super_frame(tags, false, true, 0x10, &p);
            let segs = cut(&f, &hdr(GSO_TCPV4, mss as u16)).expect("segments");
            assert_eq!(segs.len(), 3);
            let l3 = 14 + 4 * tags.len();
            assert!(segs.iter().all(|s| s[..l3] == f[..l3]), "tags copied");
            assert_eq!(check_tcp(&segs, l3, false, mss, 0x10), p);
        }
    }

    #[test]
    fn udp_l4_segments_are_datagrams() {
        let size = 1200;
        let p = payload(2 * size + 1);
        for v6 in [false, true] {
            let f = super_frame(&[], v6, false, 0, &p);
            let segs = cut(&f, &hdr(GSO_UDP_L4, size as u16)).expect("segments");
            assert_eq!(segs.len(), 3);
            let mut data = Vec::new();
            for s in &segs {
                let (udp, src, dst) = if v6 {
                    let ip = Ipv6Packet::new_checked(&s[14..]).expect("ipv6");
                    assert_eq!(usize::from(ip.payload_len()), s.len() - 54);
                    (
                        &s[54..],
                        IpAddress::Ipv6(Ipv6Address::from(V6_SRC)),
                        IpAddress::Ipv6(Ipv6Address::from(V6_DST)),
                    )
                } else {
                    let ip = Ipv4Packet::new_checked(&s[14..]).expect("ipv4");
                    assert!(ip.verify_checksum());
                    (
                        &s[34..],
                        IpAddress::Ipv4(Ipv4Address::from(V4_SRC)),
                        IpAddress::Ipv4(Ipv4Address::from(V4_DST)),
                    )
                };
                let udp = UdpPacket::new_checked(udp).expect("udp");
                assert_eq!(usize::from(udp.len()), udp.payload().len() + 8);
                assert!(udp.verify_checksum(&src, &dst));
                data.extend_from_slice(udp.payload());
            }
            assert_eq!(data, p);
        }
    }

    #[test]
    fn unsupported_and_malformed_are_refused() {
        let f = super_frame(&[], false, false, 0, &payload(3000));
        assert_eq!(cut(&f, &hdr(GSO_UDP, 1000)), Err(Error::Unsupported));
        assert_eq!(cut(&f, &hdr(GSO_TCPV4, 1000)), Err(Error::Malformed));
        assert_eq!(cut(&f, &hdr(GSO_UDP_L4, 0)), Err(Error::Malformed));
        let tcp = super_frame(&[], false, true, 0x10, &payload(3000));
        assert_eq!(
            cut(&tcp[..100], &hdr(GSO_TCPV4, 1000)),
            Err(Error::Malformed)
        );
        let plan = Plan::new(&tcp, &hdr(GSO_TCPV4, 1000)).expect("plan");
        assert_eq!(plan.write(&tcp, 0, &mut [0u8; 100]), Err(Error::TooLarge));
        assert_eq!(plan.write(&tcp, 3, &mut [0u8; 2000]), Err(Error::Malformed));
    }

    #[test]
    fn partial_checksums_are_completed() {
        // A TCP/IPv4 frame with the pseudo-header sum in the checksum field.
        let mut f = super_frame(&[], false, true, 0x18, &payload(333));
        let l4_len = f.len() - 34;
        let pseudo = fold(sum(&f[26..34]) + l4_len as u64 + u64::from(PROTO_TCP));
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        assert!(complete_csum(&mut f, 34, 16));
        let tcp = TcpPacket::new_checked(&f[34..]).expect("tcp");
        let (src, dst) = (
            IpAddress::Ipv4(Ipv4Address::from(V4_SRC)),
            IpAddress::Ipv4(Ipv4Address::from(V4_DST)),
        );
        assert!(tcp.verify_checksum(&src, &dst));
        let len = f.len();
        assert!(!complete_csum(&mut f, len - 1, 0));
        assert!(!complete_csum(&mut f, usize::MAX, 2));

        // Ethernet padding after the IP packet is not part of the checksum.
        let mut g = super_frame(&[], false, true, 0x18, &payload(3));
        let pseudo = fold(sum(&g[26..34]) + (g.len() - 34) as u64 + u64::from(PROTO_TCP));
        g[50..52].copy_from_slice(&pseudo.to_be_bytes());
        g.extend_from_slice(&[0xee; 7]);
        assert!(complete_csum(&mut g, 34, 16));
        let ip_len = g.len() - 7;
        let tcp = TcpPacket::new_checked(&g[34..ip_len]).expect("tcp");
        assert!(
            tcp.verify_checksum(&src, &dst),
            "padding left out of the sum"
        );

        // SCTP's CRC32c is not an Internet checksum: left alone.
        let mut sctp = super_frame(&[], false, true, 0x18, &payload(40));
        sctp[23] = PROTO_SCTP;
        assert!(!complete_csum(&mut sctp, 34, 8));
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: GSO_TCPV6 | GSO_ECN,
            hdr_len: 74,
            gso_size: 1428,
            csum_start: 54,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        assert!(h.emit(&mut b));
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(h.gso_kind(), GSO_TCPV6);
        assert_eq!(VnetHdr::parse(&b[..9]), None);
        assert_eq!(VnetHdr::parse(&[0; VNET_HDR_LEN]), Some(VnetHdr::default()));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            gso_type in any::<u8>(),
            gso_size in 0u16..300,
            start in any::<u16>(),
            offset in any::<u16>(),
        ) {
            let h = VnetHdr { gso_type, gso_size, ..VnetHdr::default() };
            let mut scratch = [0u8; 512];
            let _ = segment(&bytes, &h, &mut scratch, |_| {});
            let mut b = bytes.clone();
            let _ = complete_csum(&mut b, usize::from(start), usize::from(offset));
        }

        #[test]
        fn mutated_super_frames_never_panic(
            at in 0usize..74,
            val in any::<u8>(),
            cut_at in 0usize..2000,
            gso_type in prop::sample::select(vec![GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4]),
            v6 in any::<bool>(),
            tcp in any::<bool>(),
        ) {
            let mut f = super_frame(&[7], v6, tcp, 0x19, &payload(1800));
            f[at] = val;
            f.truncate(cut_at.max(1));
            let mut scratch = [0u8; 700];
            let _ = segment(&f, &hdr(gso_type, 500), &mut scratch, |_| {});
        }
    }
}
