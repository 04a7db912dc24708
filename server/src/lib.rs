//! quaild, the Quail mail access server.
//!
//! Modules, top to bottom (each depends only on those below it):
//!
//! - [`net`] — QUIC endpoint (quinn + rustls), TLS certificates, one task per
//!   connection on a pinned single-thread worker, stream-kind dispatch.
//! - [`rpc`] — the Cap'n Proto services (`Quail`, `Session`, `Admin`,
//!   `Gateway`): thin translation between the wire and the domain.
//! - [`mail`] — parsing and ingest of messages, mailboxes, keywords, threads,
//!   queries.
//! - [`sync`] — account state and the change log (delta sync).
//! - [`account`] — accounts, passwords (argon2id), app tokens, the operator
//!   and gateway credentials.
//! - [`blob`] — content-addressed byte storage (BLAKE3 ids, reference counts).
//! - [`store`] — the ordered key-value store and its group-commit durability.
//!
//! Beside them: [`config`] (TOML + flags), [`error`] (the domain error every
//! layer returns), `fuzzing` (bodies of the fuzz targets; tests and `cfg(fuzzing)` only), [`server`]
//! (wiring: open the store, bind, serve, shut down), [`tools`] (offline
//! export, import, check, accounts), [`upgrade`] (store formats and their
//! migrations).

pub mod account;
pub mod blob;
pub mod config;
pub mod error;
pub mod filter;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod mail;
pub mod net;
pub mod rpc;
pub mod search;
pub mod server;
pub mod store;
pub mod sync;
pub mod tools;
pub mod upgrade;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{Running, Server};
