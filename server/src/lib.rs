//! quail-server
