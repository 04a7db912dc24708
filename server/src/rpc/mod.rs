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

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quail_protocol::{ErrorCode, error_to_capnp};
use tokio::sync::Semaphore;

use crate::account::{Accounts, Credentials, LoginGuard};
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
    /// The budget of password checks and failed logins.
    pub logins: LoginGuard,
    /// Permits for reads that may walk a whole mailbox (filtered or
    /// collapsed queries, deep pages): they run on the blocking pool, this
    /// many at once, never on a connection's worker.
    pub heavy_reads: Arc<Semaphore>,
    /// Uploads in flight on bulk streams.
    pub uploads: crate::blob::upload::Uploads,
    /// Downloads prepared for bulk streams.
    pub downloads: crate::blob::upload::Downloads,
    /// Where durable commits reach watching clients.
    pub hub: Arc<crate::sync::push::Hub>,
    /// Folds the search index's segments in the background (unless
    /// `mail.search_merge_ms` is 0).
    pub merger: Option<crate::search::index::Merger>,
}

impl Services {
    /// Services over `db`.
    pub fn new(db: Db, credentials: Credentials, config: Config) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hub = crate::sync::push::Hub::new();
        let feed = Arc::clone(&hub);
        db.observe(Arc::new(move |notices| feed.publish(notices)));
        let mail = Mailstore::new(db.clone(), config.mail_config()).with_filter(
            // `Config::validate` checked these settings at load.
            crate::filter::Pipeline::from_settings(&config.filter).unwrap_or_else(|e| {
                tracing::error!("filter settings: {e}; using the built-in scanner only");
                crate::filter::Pipeline::default()
            }),
        );
        // The global spam model is read at start, not by the first
        // delivery.
        mail.filter().warm(&db);
        Arc::new(Services {
            hub,
            merger: (config.mail.search_merge_ms > 0).then(|| {
                crate::search::index::Merger::spawn(
                    db.clone(),
                    std::time::Duration::from_millis(config.mail.search_merge_ms),
                )
            }),
            accounts: Accounts::new(db.clone()),
            mail,
            db,
            credentials,
            logins: LoginGuard::new(config.limits.max_concurrent_logins as usize),
            heavy_reads: Arc::new(Semaphore::new(cores)),
            // Room for a few maximal messages in flight at once.
            uploads: crate::blob::upload::Uploads::new(config.limits.max_message_bytes.saturating_mul(4)),
            downloads: crate::blob::upload::Downloads::new(config.limits.max_message_bytes.saturating_mul(4)),
            config,
        })
    }
}

/// One connection: where it comes from, and its calls in flight. Every
/// capability handed out on the connection shares it.
#[derive(Debug)]
pub struct Peer {
    /// The remote address.
    pub ip: IpAddr,
    in_flight: Cell<u32>,
    max_in_flight: u32,
    watches: Cell<u32>,
    max_watches: u32,
    owners: std::cell::RefCell<Vec<crate::blob::upload::Owner>>,
}

impl Peer {
    /// A connection from `ip` allowed `max_in_flight` calls and
    /// `max_watches` watches at once.
    pub fn new(ip: IpAddr, max_in_flight: u32, max_watches: u32) -> Rc<Self> {
        Rc::new(Peer {
            ip,
            in_flight: Cell::new(0),
            max_in_flight: max_in_flight.max(1),
            watches: Cell::new(0),
            max_watches,
            owners: std::cell::RefCell::new(Vec::new()),
        })
    }

    /// Notes that the connection holds a capability of `owner` (an account
    /// or the gateway): its bulk tokens may be redeemed here.
    pub fn hold(&self, owner: crate::blob::upload::Owner) {
        let mut o = self.owners.borrow_mut();
        if !o.contains(&owner) {
            o.push(owner);
        }
    }

    /// Whether the connection holds a capability of `owner`.
    pub fn holds(&self, owner: crate::blob::upload::Owner) -> bool {
        self.owners.borrow().contains(&owner)
    }

    /// Counts one watch until the slot drops; refuses one over the budget.
    pub fn take_watch(self: &Rc<Self>) -> Result<WatchSlot, capnp::Error> {
        let n = self.watches.get();
        if n >= self.max_watches {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "{n} watches on this connection, the most it may hold; drop one first"
            ))));
        }
        self.watches.set(n + 1);
        Ok(WatchSlot { peer: Rc::clone(self) })
    }

    /// Counts one call in flight until the guard drops; refuses one over
    /// the connection's budget at once (`unavailable`), so a client that
    /// pipelines without waiting gets errors, not server memory.
    pub fn enter(self: &Rc<Self>) -> Result<CallGuard, capnp::Error> {
        let n = self.in_flight.get();
        if n >= self.max_in_flight {
            return Err(to_capnp(Error::Unavailable(format!(
                "{n} calls in flight on this connection; wait for answers before sending more"
            ))));
        }
        self.in_flight.set(n + 1);
        Ok(CallGuard { peer: Rc::clone(self) })
    }
}

/// One call in flight (see [`Peer::enter`]).
#[derive(Debug)]
pub struct CallGuard {
    peer: Rc<Peer>,
}

/// One watch held (see [`Peer::take_watch`]).
#[derive(Debug)]
pub struct WatchSlot {
    peer: Rc<Peer>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.peer.watches.set(self.peer.watches.get().saturating_sub(1));
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.peer.in_flight.set(self.peer.in_flight.get().saturating_sub(1));
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
    "Session.fetchPart",
    "Session.threads",
    "Session.changes",
    "Session.setKeywords",
    "Session.move",
    "Session.destroy",
    "Session.createAppToken",
    "Session.listAppTokens",
    "Session.revokeAppToken",
    "Session.watch",
    "Session.watchQuery",
    "Session.queryChanges",
    "Session.restrict",
    "Session.upload",
    "Session.search",
    "Session.submit",
    "Session.submissions",
    "Session.cancelSubmission",
    "Session.reportSpam",
    "Gateway.deliver",
    "Gateway.upload",
    "Gateway.checkRecipient",
    "Gateway.leaseOutbound",
    "Gateway.completeOutbound",
    "Gateway.login",
];

/// The wire code of a domain error: the one place they are mapped.
pub fn code_of(e: &Error) -> ErrorCode {
    match e {
        Error::BadCredentials => ErrorCode::BadCredentials,
        Error::NotFound(_) => ErrorCode::NotFound,
        Error::LimitExceeded(_) => ErrorCode::LimitExceeded,
        Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
        Error::StateMismatch { .. } | Error::Conflict(_) => ErrorCode::StateMismatch,
        Error::CannotCalculateChanges(_) => ErrorCode::CannotCalculateChanges,
        Error::OverQuota(_) => ErrorCode::OverQuota,
        Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
        Error::Rejected(_) => ErrorCode::Rejected,
        Error::Forbidden(_) => ErrorCode::Forbidden,
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

/// Runs a read that may walk a whole mailbox on the blocking pool, at most
/// [`Services::heavy_reads`] at once.
pub async fn heavy<T: Send + 'static>(
    services: &Arc<Services>,
    f: impl FnOnce(&Services) -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    let permit = Arc::clone(&services.heavy_reads)
        .acquire_owned()
        .await
        .map_err(|_| Error::Unavailable("shutting down".into()))?;
    let services = Arc::clone(services);
    blocking(move || {
        let _permit = permit;
        f(&services)
    })
    .await
}

/// Runs CPU-heavy work (argon2) on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

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
