//! The chain spec's parser, validator and planner (`vnfctl validate` / `plan`) on arbitrary
//! text; the body and its invariants are `chains::plan::fuzz_plan`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chains::plan::fuzz_plan(data));
