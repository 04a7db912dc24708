//! mbox reading and writing: no panic, and mboxrd round-trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quail_server::fuzzing::mbox(data));
