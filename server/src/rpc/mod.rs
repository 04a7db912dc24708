//! The Cap'n Proto services: thin translation between the wire and the
//! domain. Each method reads its parameters, calls one domain operation and
//! writes its results; all policy lives below.
//!
//! - [`quail`] — the bootstrap: `hello`, logins, the admin and gateway credentials.
//! - [`session`] — one account's mail (`Session`).
//! - [`admin`] — account administration (`Admin`).
//! - [`gateway`] — the SMTP gateway's deliveries (`Gateway`).
//! - [`convert`] — domain records → schema builders.
//!
//! capnp objects are `!Send`; they live on the connection's worker thread and
//! hold an `Arc<Services>`, which is `Send + Sync`.

pub mod admin;
pub mod convert;
pub mod gateway;
pub mod quail;
pub mod session;

pub use session::decode_query;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quail_protocol::{ErrorCode, error_to_capnp};

use crate::account::{Accounts, Credentials};
use crate::config::Config;
use crate::error::Error;
use crate::mail::Mailstore;
use crate::store::Db;

pub use quail::bootstrap;

/// The domain services every connection shares.
#[derive(Debug)]
pub struct Services {
    /// The store.
    pub db: Db,
    /// Accounts.
    pub accounts: Accounts,
    /// Mail.
    pub mail: Mailstore,
    /// Operator and gateway credentials.
    pub credentials: Credentials,
    /// Configuration (limits, domains).
    pub config: Config,
}

impl Services {
    /// Services over `db`.
    pub fn new(db: Db, credentials: Credentials, config: Config) -> Arc<Self> {
        Arc::new(Services {
            accounts: Accounts::new(db.clone()),
            mail: Mailstore::new(db.clone(), config.mail_config()),
            db,
            credentials,
            config,
        })
    }
}

/// Methods this server serves, as announced by `hello`. Every other v1
/// method answers `unimplemented`.
pub const FEATURES: &[&str] = &[
    "Quail.hello",
    "Quail.login",
    "Quail.loginToken",
    "Quail.gateway",
    "Quail.admin",
    "Admin.createAccount",
    "Admin.setPassword",
    "Admin.setQuota",
    "Admin.listAccounts",
    "Admin.getAccount",
    "Admin.revokeTokens",
    "Session.account",
    "Session.mailboxes",
    "Session.createMailbox",
    "Session.renameMailbox",
    "Session.deleteMailbox",
    "Session.query",
    "Session.get",
    "Session.raw",
    "Session.threads",
    "Session.changes",
    "Session.setKeywords",
    "Session.move",
    "Session.destroy",
    "Session.createAppToken",
    "Session.listAppTokens",
    "Session.revokeAppToken",
    "Gateway.deliver",
];

/// The wire code of a domain error: the one place they are mapped.
pub fn code_of(e: &Error) -> ErrorCode {
    match e {
        Error::BadCredentials => ErrorCode::BadCredentials,
        Error::NotFound(_) => ErrorCode::NotFound,
        Error::LimitExceeded(_) => ErrorCode::LimitExceeded,
        Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
        Error::StateMismatch { .. } => ErrorCode::StateMismatch,
        Error::CannotCalculateChanges(_) => ErrorCode::CannotCalculateChanges,
        Error::OverQuota(_) => ErrorCode::OverQuota,
        Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
        Error::Rejected(_) => ErrorCode::Rejected,
        Error::Unimplemented(_) => ErrorCode::Unimplemented,
        Error::Unavailable(_) => ErrorCode::Unavailable,
        Error::Store(_) | Error::Internal(_) => ErrorCode::Internal,
    }
}

/// A domain error as the exception a method raises.
pub fn to_capnp(e: Error) -> capnp::Error {
    let code = code_of(&e);
    if code == ErrorCode::Internal {
        // Details of internal failures stay in the server's log.
        tracing::error!(error = %e, "internal error");
        return error_to_capnp(code, "internal server error");
    }
    error_to_capnp(code, &e.to_string())
}

/// A bad parameter (undecodable text, wrong shape) as an exception.
pub fn bad_param(e: impl std::fmt::Display) -> capnp::Error {
    error_to_capnp(ErrorCode::InvalidArgument, &e.to_string())
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Reads a text parameter, bounded to `max` bytes.
pub fn text<'a>(t: capnp::Result<capnp::text::Reader<'a>>, what: &str, max: usize) -> capnp::Result<&'a str> {
    let s = t?.to_str().map_err(|_| bad_param(format!("{what}: not UTF-8")))?;
    if s.len() > max {
        return Err(to_capnp(Error::LimitExceeded(format!("{what}: longer than {max} bytes"))));
    }
    Ok(s)
}

/// Runs CPU-heavy work (argon2) on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// Defines server methods that this server does not serve yet: each answers
/// with the typed `unimplemented` error naming the method.
macro_rules! not_served {
    ($( $method:ident ( $params:ty, $results:ty ) => $name:literal ; )*) => {
        $(
            async fn $method(
                self: ::std::rc::Rc<Self>,
                _: $params,
                _: $results,
            ) -> ::std::result::Result<(), ::capnp::Error> {
                Err($crate::rpc::to_capnp($crate::error::Error::Unimplemented($name)))
            }
        )*
    };
}
pub(crate) use not_served;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_do_not_leak() {
        let e = to_capnp(Error::Internal("disk /dev/sda1 failed".into()));
        assert!(!e.extra.contains("sda1"));
        assert_eq!(quail_protocol::error_from_capnp(&e).map(|x| x.0), Some(ErrorCode::Internal));
        let e = to_capnp(Error::not_found("no email 5"));
        assert_eq!(quail_protocol::error_from_capnp(&e), Some((ErrorCode::NotFound, "no email 5".into())));
    }
}
