//! The VXLAN Network Identifier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 24-bit VXLAN Network Identifier, 1..=16777215.
///
/// RFC 7348 §5 allows 0 on the wire, but no segment is configured with it here: 0 is the
/// conventional "unset" value of many VTEPs, and a tenant segment never uses it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vni(u32);

/// Why a number is not a usable VNI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} is outside 1..=16777215")]
pub struct VniError(pub u64);

impl Vni {
    /// The largest VNI (2^24 - 1).
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI from a number, if it is in 1..=16777215.
    pub const fn new(value: u32) -> Result<Vni, VniError> {
        if value == 0 || value > Self::MAX {
            Err(VniError(value as u64))
        } else {
            Ok(Vni(value))
        }
    }

    /// The raw 24-bit value (possibly 0) as read from a VXLAN header.
    pub(crate) const fn from_wire(value: u32) -> Vni {
        Vni(value & Self::MAX)
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vni({})", self.0)
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u32> for Vni {
    type Error = VniError;
    fn try_from(value: u32) -> Result<Vni, VniError> {
        Vni::new(value)
    }
}

impl TryFrom<u64> for Vni {
    type Error = VniError;
    fn try_from(value: u64) -> Result<Vni, VniError> {
        u32::try_from(value)
            .map_err(|_| VniError(value))
            .and_then(Vni::new)
    }
}

impl FromStr for Vni {
    type Err = String;
    fn from_str(s: &str) -> Result<Vni, String> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a VNI (a number in 1..=16777215)"))?;
        Vni::try_from(n).map_err(|e| e.to_string())
    }
}

impl Serialize for Vni {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Vni {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Vni, D::Error> {
        let n = u64::deserialize(d)?;
        Vni::try_from(n).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_enforced() {
        assert!(Vni::new(0).is_err());
        assert_eq!(Vni::new(1).map(Vni::get), Ok(1));
        assert_eq!(Vni::new(16_777_215).map(Vni::get), Ok(16_777_215));
        assert!(Vni::new(16_777_216).is_err());
        assert!(Vni::try_from(u64::MAX).is_err());
        assert!("abc".parse::<Vni>().is_err());
        assert_eq!("100".parse::<Vni>().map(Vni::get), Ok(100));
    }
}
