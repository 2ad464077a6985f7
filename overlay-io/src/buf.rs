//! Packet buffers with headroom.
//!
//! Every buffer is allocated once, when a worker starts, with [`HEADROOM`] bytes in front of
//! the frame so that encapsulation (the 8-byte VXLAN header, a 4-byte 802.1Q tag) prepends in
//! place instead of copying the frame.

use crate::pipeline::PortId;
use crate::wire::{vlan, vxlan};

/// Free bytes kept in front of a received frame.
pub const HEADROOM: usize = 128;
/// The largest frame (or VXLAN datagram) a buffer holds: a 9000-byte jumbo MTU plus headers.
pub const MAX_FRAME: usize = 9216;
/// Bytes allocated per buffer.
pub const BUF_SIZE: usize = HEADROOM + MAX_FRAME;
/// Ethernet header length (no tag).
pub const ETH_HEADER_LEN: usize = 14;
/// Ethernet MAC addresses (destination then source) at the start of a frame.
const MACS_LEN: usize = 12;

/// One packet: a frame between `start` and `end` of a fixed buffer, and where it came from.
#[derive(Debug)]
pub struct PacketBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
    /// The port the packet arrived on.
    pub port: PortId,
    /// The outer source address of a decapsulated VXLAN packet (the remote VTEP).
    pub vtep: Option<std::net::IpAddr>,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    /// A new, empty buffer.
    pub fn new() -> PacketBuf {
        PacketBuf {
            data: vec![0u8; BUF_SIZE].into_boxed_slice(),
            start: HEADROOM,
            end: HEADROOM,
            port: PortId(0),
            vtep: None,
        }
    }

    /// Empty the buffer and restore the full headroom.
    pub fn reset(&mut self) {
        self.start = HEADROOM;
        self.end = HEADROOM;
        self.vtep = None;
    }

    /// The space a backend receives into: everything after the headroom.
    pub fn recv_area(&mut self) -> &mut [u8] {
        &mut self.data[HEADROOM..]
    }

    /// After receiving `len` bytes into [`recv_area`](Self::recv_area).
    pub fn set_received(&mut self, len: usize) {
        self.start = HEADROOM;
        self.end = HEADROOM + len.min(MAX_FRAME);
    }

    /// The packet bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// The packet bytes, mutable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    /// Packet length.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Replace the content with a copy of `bytes` (truncated to [`MAX_FRAME`]).
    pub fn fill(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(MAX_FRAME);
        self.start = HEADROOM;
        self.end = HEADROOM + n;
        self.data[HEADROOM..HEADROOM + n].copy_from_slice(&bytes[..n]);
    }

    /// Keep only the first `len` bytes (drop Ethernet padding after an IP packet).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Copy another buffer's packet and metadata into this one.
    pub fn copy_from(&mut self, other: &PacketBuf) {
        self.fill(other.bytes());
        self.port = other.port;
        self.vtep = other.vtep;
    }

    /// Make room for `n` bytes in front of the packet and return them; `None` if the
    /// headroom is used up.
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        let start = self.start.checked_sub(n)?;
        self.start = start;
        Some(&mut self.data[start..start + n])
    }

    /// Remove `n` bytes from the front; `false` if the packet is shorter.
    pub fn pull_front(&mut self, n: usize) -> bool {
        if self.len() < n {
            return false;
        }
        self.start += n;
        true
    }

    /// Prepend a VXLAN header for `vni` (RFC 7348 §5: I flag, reserved bits zero).
    pub fn push_vxlan(&mut self, vni: crate::Vni) -> bool {
        match self.push_front(vxlan::HEADER_LEN) {
            Some(hdr) => {
                vxlan::Repr { vni }.emit(&mut vxlan::Packet::new_unchecked(hdr));
                true
            }
            None => false,
        }
    }

    /// Insert an 802.1Q tag with `vid` after the MAC addresses, moving them into the
    /// headroom (12 bytes moved, the rest of the frame untouched).
    pub fn push_vlan_tag(&mut self, vid: u16) -> bool {
        if self.len() < ETH_HEADER_LEN || self.start < vlan::TAG_LEN {
            return false;
        }
        let s = self.start;
        self.data.copy_within(s..s + MACS_LEN, s - vlan::TAG_LEN);
        self.start = s - vlan::TAG_LEN;
        let tag = &mut self.data[s - vlan::TAG_LEN + MACS_LEN..s + MACS_LEN];
        tag[0..2].copy_from_slice(&vlan::TPID.to_be_bytes());
        let tci = vid & 0x0fff;
        tag[2..4].copy_from_slice(&tci.to_be_bytes());
        true
    }

    /// The frame's outer EtherType, if it holds an Ethernet header.
    pub fn ethertype(&self) -> Option<u16> {
        let b = self.bytes();
        (b.len() >= ETH_HEADER_LEN).then(|| u16::from_be_bytes([b[12], b[13]]))
    }

    /// Remove an 802.1Q tag (TPID 0x8100) from the frame and return its VID; `None` (and
    /// the frame unchanged) if the frame carries no customer tag.
    pub fn pop_vlan_tag(&mut self) -> Option<u16> {
        if self.ethertype() != Some(vlan::TPID) || self.len() < ETH_HEADER_LEN + vlan::TAG_LEN {
            return None;
        }
        let s = self.start;
        let tag = vlan::Packet::new_unchecked(&self.data[s + 14..s + 18]);
        let vid = tag.vid();
        self.data.copy_within(s..s + MACS_LEN, s + vlan::TAG_LEN);
        self.start = s + vlan::TAG_LEN;
        Some(vid)
    }

    /// Destination MAC of the frame, if long enough.
    pub fn dst_mac(&self) -> Option<[u8; 6]> {
        self.bytes().get(0..6).and_then(|b| b.try_into().ok())
    }

    /// Source MAC of the frame, if long enough.
    pub fn src_mac(&self) -> Option<[u8; 6]> {
        self.bytes().get(6..12).and_then(|b| b.try_into().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 18] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00, 0x45, 0, 0, 20,
    ];

    #[test]
    fn vlan_push_pop_round_trip() {
        let mut b = PacketBuf::new();
        b.fill(&FRAME);
        assert!(b.push_vlan_tag(100));
        assert_eq!(
            b.bytes(),
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x81, 0x00, 0x00, 0x64, 0x08, 0x00, 0x45, 0,
                0, 20
            ]
        );
        assert_eq!(b.pop_vlan_tag(), Some(100));
        assert_eq!(b.bytes(), &FRAME);
        assert_eq!(b.pop_vlan_tag(), None);
    }

    #[test]
    fn vxlan_push_pull() {
        let mut b = PacketBuf::new();
        b.fill(&FRAME);
        assert!(b.push_vxlan(crate::Vni::new(0x123456).unwrap()));
        assert_eq!(&b.bytes()[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert!(b.pull_front(8));
        assert_eq!(b.bytes(), &FRAME);
    }

    #[test]
    fn short_frames_are_refused() {
        let mut b = PacketBuf::new();
        b.fill(&FRAME[..10]);
        assert!(!b.push_vlan_tag(1));
        assert_eq!(b.pop_vlan_tag(), None);
        assert!(!b.pull_front(11));
        assert_eq!(b.dst_mac(), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(b.src_mac(), None);
    }

    #[test]
    fn headroom_is_bounded() {
        let mut b = PacketBuf::new();
        b.fill(&FRAME);
        assert!(b.push_front(HEADROOM).is_some());
        assert!(b.push_front(1).is_none());
    }
}
