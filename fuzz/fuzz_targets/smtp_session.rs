//! The inbound SMTP session: arbitrary client bytes, split as the first
//! byte says, never panic it, and every reply is well formed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quail_smtp::fuzzing::smtp_session(data));
