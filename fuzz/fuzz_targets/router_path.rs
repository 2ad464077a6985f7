//! The router's routed path end to end in memory: VXLAN in, L3, ARP, ICMP, NAT, IRB,
//! clock steps and reloads, driven by a sequence of events per input (one fresh router per
//! input); the body and its invariants are `vnf_tests::fuzz_targets::router_path`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_targets::router_path(data));
