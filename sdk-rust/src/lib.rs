//! The Quail client SDK: typed, async access to a Quail mail server over
//! Cap'n Proto RPC on QUIC. No capnp type appears in this API.
//!
//! - [`Client`] (`client`) — one connection; `connect`, `login`, and the
//!   operator's [`Admin`] and the SMTP gateway's [`Gateway`] capabilities.
//!   The RPC system runs on a thread of its own; every handle is `Send + Sync`.
//! - [`Session`] (`session`) — one account's mail: mailboxes, query, get, raw.
//! - [`Watch`] (`watch`) — push: a `Stream` of the account's durable changes.
//! - [`Trust`] (`trust`) — how the server is authenticated: a pinned
//!   certificate fingerprint or the system roots.
//! - [`Error`] and [`Reaction`] (`error`) — what failed and what to do.
//! - `types` — plain data types; `wire` — capnp → types.
//!
//! ```no_run
//! # async fn demo() -> quail::Result<()> {
//! use quail::{Client, Query, Trust};
//! let pin = "fb6b144c9d831f59e6ab87fa987127d8a2baa9da9b3b5bab0bf29c5b054713f1".parse()?;
//! let client = Client::connect("127.0.0.1:4433", Trust::Pinned(pin)).await?;
//! let session = client.login("alice", "correct horse").await?;
//! let page = session.query(&Query::all().limit(20)).await?;
//! let (emails, _) = session.get(&page.ids, &[]).await?;
//! for e in emails {
//!     println!("{} {}", e.id, e.subject);
//! }
//! # Ok(()) }
//! ```

mod client;
mod error;
mod service;
mod session;
mod transfer;
mod trust;
mod types;
mod watch;
mod wire;

pub use client::{Client, ConnectOptions, IDLE_TIMEOUT, KEEP_ALIVE, Traffic};
pub use error::{Error, Reaction, Result};
pub use service::{Admin, Gateway};
pub use session::{ByteRun, Session};
pub use transfer::{Download, Upload};
pub use trust::{Fingerprint, Trust};
pub use types::*;
pub use watch::{Changed, QueryWatch, Watch};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<Client>();
        send_sync::<Session>();
        send_sync::<Admin>();
        send_sync::<Gateway>();
        send_sync::<Error>();
    }

    #[allow(dead_code)]
    fn futures_are_send(client: Client, session: Session) {
        fn is_send<T: Send>(_: T) {}
        is_send(Client::connect("127.0.0.1:1", Trust::SystemRoots));
        is_send(client.login("a", "b"));
        is_send(session.query(&Query::all()));
        is_send(session.raw(EmailId(1)));
    }
}
