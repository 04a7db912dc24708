//! MIME ingest: parsing arbitrary bytes never panics and stays in bounds.
//!
//! mail-parser 0.11 panics on some malformed nestings; the server catches
//! that with `catch_unwind` and keeps the headers. libFuzzer's panic hook
//! aborts before unwinding, which would report that handled panic as a
//! crash, so this target restores the default hook: a panic that escapes
//! our code still aborts at the FFI boundary and is reported.
#![no_main]

static HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
    });
    quail_server::fuzzing::mime(data)
});
