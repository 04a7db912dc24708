//! C ABI over the Quail SDK, for native and mobile apps.
//!
//! This crate is the only one in the workspace that may use `unsafe`; every
//! `extern "C"` item lives here. For now it exports the library's version,
//! which can neither fail nor panic; the client API (opaque handles,
//! callbacks, error codes, a generated header, each entry point behind a
//! panic boundary that turns a panic into an error code) arrives with its
//! own issue.

use std::ffi::{CStr, c_char};

const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(v) => v,
    Err(_) => panic!("version string has an interior NUL"),
};

/// The library's version as a static NUL-terminated string; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn quail_version() -> *const c_char {
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_a_c_string() {
        // SAFETY: quail_version returns a pointer to a 'static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(quail_version()) };
        assert_eq!(v.to_str().expect("utf-8"), env!("CARGO_PKG_VERSION"));
    }
}
