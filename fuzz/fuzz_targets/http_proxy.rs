//! One connection of the load balancer's HTTP reverse proxy, sans-IO, driven by a script of
//! client and backend bytes, EOFs, backend outcomes and time; the body and its invariants
//! (no smuggling: the backend only ever gets well-framed requests) are
//! `vnf_lb::proxy::fuzz_proxy` (through `vnf_tests::fuzz_lb::http_proxy`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_lb::http_proxy(data));
