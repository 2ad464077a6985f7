//! The load balancer's HTTP/1.1 request and response head parsers and chunked decoder on
//! arbitrary bytes; the body and its invariants are `vnf_lb::http::fuzz_http` (through
//! `vnf_tests::fuzz_lb::http_parser`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_lb::http_parser(data));
