//! quail-conformance
