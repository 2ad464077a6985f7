//! The firewall's packet path end to end in memory (routed mode): TCP/UDP/ICMP built from
//! the input with corrupted headers, raw frames, clock steps and reloads, through
//! connection tracking and the policy; the body and its invariants are
//! `vnf_tests::fuzz_firewall::firewall_path`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnf_tests::fuzz_firewall::firewall_path(data));
