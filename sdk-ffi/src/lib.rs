//! quail-ffi
