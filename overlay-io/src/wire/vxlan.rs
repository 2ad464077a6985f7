//! The VXLAN header (RFC 7348 §5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! "Flags (8 bits): where the I flag MUST be set to 1 for a valid VXLAN Network ID (VNI).
//! The other 7 bits (designated "R") are reserved fields and MUST be set to zero on
//! transmission and ignored on receipt." The reserved 24- and 8-bit fields likewise.

use super::{Error, Result};
use crate::vni::Vni;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: usize = 8;
}

/// The VXLAN header is always eight bytes.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// The I flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;

/// The IANA-assigned UDP destination port (RFC 7348 §5).
pub const UDP_PORT: u16 = 4789;

/// Bytes that VXLAN adds in front of the inner Ethernet frame over an IPv4 underlay:
/// outer IPv4 (20) + UDP (8) + VXLAN (8) + outer Ethernet (14). With IPv6, 70.
pub const OVERHEAD_IPV4: usize = 50;
/// Encapsulation overhead over an IPv6 underlay (40 + 8 + 8 + 14).
pub const OVERHEAD_IPV6: usize = 70;

/// A read/write view of a VXLAN header and the inner frame after it.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap a buffer, checking that it holds a whole header.
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

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set.
    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VNI as read, possibly 0.
    pub fn vni_raw(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Set the 24-bit VNI, leaving the reserved byte after it alone.
    pub fn set_vni(&mut self, vni: Vni) {
        let v = vni.get();
        let b = &mut self.buffer.as_mut()[field::VNI];
        b[0] = (v >> 16) as u8;
        b[1] = (v >> 8) as u8;
        b[2] = v as u8;
    }

    /// Zero the reserved fields (bytes 1..4 and 7).
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[1..4].fill(0);
        b[7] = 0;
    }

    /// The inner Ethernet frame, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The segment the inner frame belongs to.
    pub vni: Vni,
}

impl Repr {
    /// Parse a header received from the network.
    ///
    /// Reserved bits are ignored as RFC 7348 §5 requires; a header without the I flag, or
    /// with VNI 0, has no usable segment and is refused.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(Error::BadFlags);
        }
        match packet.vni_raw() {
            0 => Err(Error::BadVni),
            v => Ok(Repr {
                vni: Vni::from_wire(v),
            }),
        }
    }

    /// The length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Emit the header: I flag set, every reserved bit zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // VNI 100 (0x000064), I flag only, followed by two bytes of inner frame.
    static PACKET_BYTES: [u8; 10] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0xaa, 0xbb];

    #[test]
    fn parse_fixture() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert!(packet.i_flag());
        assert_eq!(packet.vni_raw(), 100);
        assert_eq!(packet.payload(), &[0xaa, 0xbb]);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.vni.get(), 100);
    }

    #[test]
    fn reserved_bits_are_ignored_on_receive() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x12, 0x34, 0x56, 0xff];
        let repr = Repr::parse(&Packet::new_unchecked(&bytes[..])).unwrap();
        assert_eq!(repr.vni.get(), 0x123456);
    }

    #[test]
    fn missing_i_flag_is_refused() {
        let bytes = [0xf7, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..])),
            Err(Error::BadFlags)
        );
    }

    #[test]
    fn vni_zero_is_refused() {
        let bytes = [0x08, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..])),
            Err(Error::BadVni)
        );
    }

    #[test]
    fn truncated_is_refused() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..n]).err(),
                Some(Error::Truncated)
            );
        }
    }

    #[test]
    fn emit_fixture_clears_reserved() {
        let mut bytes = [0xffu8; 8];
        let repr = Repr {
            vni: Vni::new(100).unwrap(),
        };
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes, &PACKET_BYTES[..8]);
    }

    proptest! {
        #[test]
        fn emit_parse_round_trip(vni in 1u32..=Vni::MAX, junk in any::<[u8; 8]>()) {
            let repr = Repr { vni: Vni::new(vni).unwrap() };
            let mut bytes = junk;
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Ok(repr));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p);
            }
        }
    }
}
