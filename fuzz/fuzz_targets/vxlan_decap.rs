//! VXLAN datagrams and trunk/access frames into the router's L2 gateway (one router per
//! process, reused across inputs); the body and its invariants are
//! `vnf_tests::fuzz_targets::vxlan_decap`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_targets::vxlan_decap(data));
