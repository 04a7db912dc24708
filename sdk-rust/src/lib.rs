//! quail
