//! Protocol decode: arbitrary bytes as a framed `Query` never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quail_server::fuzzing::protocol_query(data));
