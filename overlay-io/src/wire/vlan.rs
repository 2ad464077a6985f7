//! The IEEE 802.1Q VLAN tag.
//!
//! In a tagged Ethernet frame the EtherType field holds the TPID 0x8100 and is followed by
//! the Tag Control Information and the encapsulated EtherType:
//!
//! ```text
//! | dst MAC (6) | src MAC (6) | TPID 0x8100 (2) | PCP:3 DEI:1 VID:12 (2) | EtherType (2) | ...
//! ```
//!
//! As in smoltcp's layering, [`Packet`] views what follows the TPID: the TCI, the inner
//! EtherType and the payload. VID 0 means "priority tagged, no VLAN" and VID 4095 is
//! reserved (IEEE 802.1Q-2018 Table 9-2), so a VLAN port uses 1..=4094.

use smoltcp::wire::EthernetProtocol;

use super::{Error, Result};

mod field {
    use core::ops::Range;
    pub const TCI: Range<usize> = 0..2;
    pub const ETHERTYPE: Range<usize> = 2..4;
    pub const PAYLOAD: usize = 4;
}

/// Length of the tag after the TPID (TCI + inner EtherType).
pub const HEADER_LEN: usize = field::PAYLOAD;
/// Bytes a tag adds to an Ethernet frame (TPID + TCI).
pub const TAG_LEN: usize = 4;
/// The Tag Protocol Identifier of a customer VLAN tag.
pub const TPID: u16 = 0x8100;
/// The 802.1ad service tag TPID, recognised so that QinQ frames are refused explicitly.
pub const TPID_QINQ: u16 = 0x88a8;

/// A read/write view of an 802.1Q tag (the bytes after the TPID).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap a buffer, checking that it holds a whole tag.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Ensure that accessors will not panic.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Unwrap the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn tci(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::TCI];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Priority Code Point (3 bits).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop Eligible Indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier (12 bits).
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The EtherType of the encapsulated payload.
    pub fn ethertype(&self) -> EthernetProtocol {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EthernetProtocol::from(u16::from_be_bytes([b[0], b[1]]))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload after the tag.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_tci(&mut self, tci: u16) {
        self.buffer.as_mut()[field::TCI].copy_from_slice(&tci.to_be_bytes());
    }

    /// Set PCP, DEI and VID at once.
    pub fn set_tag(&mut self, pcp: u8, dei: bool, vid: u16) {
        let tci = (u16::from(pcp & 7) << 13) | (u16::from(dei) << 12) | (vid & 0x0fff);
        self.set_tci(tci);
    }

    /// Set the encapsulated EtherType.
    pub fn set_ethertype(&mut self, value: EthernetProtocol) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(value).to_be_bytes());
    }
}

/// A parsed 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Priority Code Point.
    pub pcp: u8,
    /// Drop Eligible Indicator.
    pub dei: bool,
    /// VLAN identifier, 0..=4095 as read.
    pub vid: u16,
    /// The encapsulated EtherType.
    pub ethertype: EthernetProtocol,
}

impl Repr {
    /// Parse a tag. Any VID is accepted here; ports decide which VIDs they carry.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            pcp: packet.pcp(),
            dei: packet.dei(),
            vid: packet.vid(),
            ethertype: packet.ethertype(),
        })
    }

    /// The length of the emitted tag (after the TPID).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Emit the tag.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_tag(self.pcp, self.dei, self.vid);
        packet.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // PCP 5, DEI 0, VID 100 (0xa064), carrying IPv4.
    static TAG_BYTES: [u8; 6] = [0xa0, 0x64, 0x08, 0x00, 0x45, 0x00];

    #[test]
    fn parse_fixture() {
        let packet = Packet::new_checked(&TAG_BYTES[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr {
                pcp: 5,
                dei: false,
                vid: 100,
                ethertype: EthernetProtocol::Ipv4
            }
        );
        assert_eq!(packet.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn emit_fixture() {
        let mut bytes = [0u8; 4];
        Repr {
            pcp: 5,
            dei: false,
            vid: 100,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes, &TAG_BYTES[..4]);
    }

    #[test]
    fn truncated_is_refused() {
        for n in 0..HEADER_LEN {
            assert!(Packet::new_checked(&TAG_BYTES[..n]).is_err());
        }
    }

    proptest! {
        #[test]
        fn emit_parse_round_trip(pcp in 0u8..8, dei in any::<bool>(), vid in 0u16..4096, et in any::<u16>()) {
            let repr = Repr { pcp, dei, vid, ethertype: EthernetProtocol::from(et) };
            let mut bytes = [0u8; 4];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Ok(repr));
        }
    }
}
