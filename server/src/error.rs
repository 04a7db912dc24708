//! The domain error every server layer returns. Each variant says how the
//! caller should react; `rpc` maps them to wire codes in one `match`.

use crate::store::StoreError;

/// A failed operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Wrong name, password, token or credential. Never says which.
    #[error("wrong name or password")]
    BadCredentials,
    /// No such object in this account (or in any account the caller can see).
    #[error("{0}")]
    NotFound(String),
    /// A count or size over an announced limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// Malformed input.
    #[error("{0}")]
    InvalidArgument(String),
    /// `ifInState` did not match.
    #[error("state is {actual}, not {expected}")]
    StateMismatch {
        /// What the caller expected.
        expected: u64,
        /// What the account is at.
        actual: u64,
    },
    /// The object is not in a state that allows this (e.g. a submission
    /// being delivered cannot be cancelled).
    #[error("{0}")]
    Conflict(String),
    /// The change log no longer reaches back to the given state.
    #[error("{0}")]
    CannotCalculateChanges(String),
    /// The account's quota would be exceeded.
    #[error("{0}")]
    OverQuota(String),
    /// A name that must be unique is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The capability does not allow this (a restricted session).
    #[error("{0}")]
    Forbidden(String),
    /// Content refused by policy (virus, spam).
    #[error("{0}")]
    Rejected(String),
    /// A v1 method or option this server does not serve yet.
    #[error("{0} is not implemented by this server yet")]
    Unimplemented(&'static str),
    /// Transient: shutting down, overloaded.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or an unexpected condition on the server.
    #[error("{0}")]
    Internal(String),
}

/// Result alias for the server's domain calls.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument(what.into())
    }
}
