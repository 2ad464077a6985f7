//! `chains`: declarative service chains in YAML and the `vnfctl` tool (validate, plan, up,
//! status, probe, apply, image).
//!
//! Not built yet: its issue fills this crate once the router, firewall and load balancer
//! exist. It holds no code until then, so that nothing half-made ships under its name.
