//! `vnf-firewall`: the stateful tenant firewall (vFW), routed or transparent.
//!
//! Not built yet: its issue builds zones, ordered rules compiled into a classifier,
//! connection tracking and the daemon on top of `overlay-io` (the transparent mode reuses
//! `overlay_io::bridge`). This crate holds no code until then, so that nothing half-made
//! ships under its name.

pub mod classifier;
pub mod policy;
