//! Quail's SMTP gateway: a client of the Quail server (with the gateway
//! credential) that bridges to the internet — inbound MX, submission and the
//! outbound delivery queue. The SMTP session will be a sans-IO state machine
//! driven by a thin I/O shell; it arrives with its own issue.
//!
//! For now: [`path`], the RFC 5321 reverse/forward path parser every SMTP
//! command needs, strict as the protocol side of Quail should be.

pub mod path;
