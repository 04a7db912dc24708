//! The search query parser: arbitrary text parses, or fails with a
//! position, within its limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quail_server::fuzzing::search_query(data));
