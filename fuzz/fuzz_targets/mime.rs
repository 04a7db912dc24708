//! MIME ingest: parsing arbitrary bytes never panics and stays in bounds.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quail_server::fuzzing::mime(data));
