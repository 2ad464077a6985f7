//! VXLAN and 802.1Q parsers, the inner-flow hash and VLAN tag push/pop on arbitrary bytes;
//! the body is `vnf_tests::fuzz_targets::wire_parsers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_targets::wire_parsers(data));
