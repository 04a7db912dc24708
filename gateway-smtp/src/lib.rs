//! Quail's SMTP gateway: a client of the Quail server (with the gateway
//! credential) that bridges to the internet. It keeps no mail state: a
//! message is acknowledged with 250 only after the server stored it
//! durably.
//!
//! - [`session`] — the inbound SMTP session, a sans-IO state machine.
//! - [`auth`] — SPF, DKIM, DMARC and ARC into `Authentication-Results`.
//! - [`server`] — the tokio shell: listeners, TLS, limits per address, and
//!   the actions carried out against the mail server.
//! - [`outbound`] — the outbound worker: outbox → MX lookup → receiving MTAs.
//! - [`config`] — `quail-smtpd --config FILE` (TOML).
//! - [`path`] — RFC 5321 paths.
//! - `fuzzing` — the body of the `smtp_session` fuzz target (tests and
//!   `cfg(fuzzing)` only).

pub mod auth;
pub mod config;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod outbound;
pub mod path;
pub mod server;
pub mod session;
