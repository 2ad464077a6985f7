//! The load balancer's L4 path end to end in memory: TCP, UDP and ICMP to full-NAT, DNAT
//! and L7 VIPs, packets of live connections both ways, raw frames and VXLAN, clock steps,
//! reloads, health and drain changes (one fresh load balancer per input); the body and its
//! invariants are `vnf_tests::fuzz_lb::lb_path`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_lb::lb_path(data));
