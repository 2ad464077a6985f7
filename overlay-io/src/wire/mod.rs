//! Wire formats.
//!
//! VXLAN ([`vxlan`]) and the 802.1Q tag ([`vlan`]) are written here in smoltcp's style: a
//! zero-copy `Packet<T: AsRef<[u8]>>` view whose byte ranges live in a private `field`
//! module, `new_checked` for received bytes, and a `Repr` with `parse`/`emit`/`buffer_len`.
//! Everything else (Ethernet, ARP, IPv4/IPv6, UDP, TCP, ICMP) is smoltcp's own `wire`,
//! re-exported as [`smol`]. Nothing here panics on any input once `new_checked` succeeded.

pub mod checksum;
pub mod flow;
pub mod gso;
pub mod vlan;
pub mod vxlan;

pub use smoltcp::wire as smol;

/// Why bytes could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header.
    #[error("truncated header")]
    Truncated,
    /// The VXLAN I flag is not set.
    #[error("VXLAN I flag not set")]
    BadFlags,
    /// The VXLAN VNI is 0.
    #[error("VXLAN VNI 0")]
    BadVni,
}

/// Result of parsing.
pub type Result<T> = core::result::Result<T, Error>;
