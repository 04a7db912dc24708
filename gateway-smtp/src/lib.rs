//! quail-smtp
