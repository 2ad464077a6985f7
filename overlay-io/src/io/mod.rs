//! Packet I/O backends.

pub mod afpacket;
pub mod mem;
pub mod steer;
pub mod tap;
pub mod udp;
