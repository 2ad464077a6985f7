//! `vnf-lb`: the tenant load balancer (vLB): L4 with Maglev consistent hashing and
//! health-checked pools, L7 HTTP/HTTPS with TLS terminated by rustls.
//!
//! Not built yet: its issue fills this crate on top of `overlay-io`. It holds no code until
//! then, so that nothing half-made ships under its name.
