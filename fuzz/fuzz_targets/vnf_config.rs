//! Each VNF's config file (router, firewall, load balancer: parsed and compiled) on
//! arbitrary text; the body is `vnf_tests::fuzz_config::vnf_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_config::vnf_config(data));
