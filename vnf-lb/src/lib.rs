//! `vnf-lb`: the tenant load balancer (vLB): L4 with Maglev consistent hashing and
//! health-checked pools, L7 HTTP/HTTPS with TLS terminated by rustls.
//!
//! Started, not shipped: no binary yet. What exists is tested and used by nothing yet:
//!
//! - [`maglev`]: Maglev consistent hashing (NSDI 2016 §3.4) with weights, a stable keyed
//!   hash and golden tests, so that an upgrade never silently remaps traffic;
//! - [`http`]: a zero-allocation HTTP/1.1 head parser and chunked decoder for the L7 proxy
//!   (RFC 9112), strict about request smuggling.

pub mod http;
pub mod maglev;
