//! What can go wrong, and what the caller should do about it.

use quail_protocol::{ErrorCode, error_from_capnp};

/// How a caller should react to an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reaction {
    /// The input was wrong: fix it before trying again.
    FixInput,
    /// Ask the user for credentials again.
    Reauthenticate,
    /// Try the same call again later (with backoff).
    Retry,
    /// The connection is gone: connect again, log in again, then retry.
    Reconnect,
    /// Local state is stale: refetch (or resync) and retry.
    Resync,
    /// Retrying will not help.
    GiveUp,
}

/// A failed SDK call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Wrong name, password, token or credential (never says which).
    #[error("wrong name or password")]
    BadCredentials,
    /// No such object in this account.
    #[error("not found: {0}")]
    NotFound(String),
    /// A count or size over a limit the server announced.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The server refused the input as malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `ifInState` did not match.
    #[error("state changed: {0}")]
    StateMismatch(String),
    /// The given state is older than the server's change log.
    #[error("cannot calculate changes: {0}")]
    CannotCalculateChanges(String),
    /// The account's quota would be exceeded.
    #[error("over quota: {0}")]
    OverQuota(String),
    /// A unique name is taken.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The capability does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Content refused by policy.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The server does not serve this yet.
    #[error("not implemented by the server: {0}")]
    Unimplemented(String),
    /// The server is busy or shutting down.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The connection dropped or could not be made.
    #[error("connection problem: {0}")]
    Disconnected(String),
    /// The server's certificate did not match the pin or the roots, or TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed internally.
    #[error("server error: {0}")]
    Server(String),
    /// The peer broke the protocol (a bug on one side).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Result alias for the SDK.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// What the caller should do.
    pub fn reaction(&self) -> Reaction {
        match self {
            Error::BadCredentials => Reaction::Reauthenticate,
            Error::NotFound(_)
            | Error::LimitExceeded(_)
            | Error::InvalidInput(_)
            | Error::AlreadyExists(_)
            | Error::OverQuota(_) => Reaction::FixInput,
            Error::StateMismatch(_) | Error::CannotCalculateChanges(_) => Reaction::Resync,
            Error::Unavailable(_) | Error::Server(_) => Reaction::Retry,
            Error::Disconnected(_) => Reaction::Reconnect,
            Error::Forbidden(_)
            | Error::Rejected(_)
            | Error::Unimplemented(_)
            | Error::Tls(_)
            | Error::Protocol(_) => Reaction::GiveUp,
        }
    }

    /// The error a wire error code and message denote.
    pub fn from_code(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::BadCredentials => Error::BadCredentials,
            ErrorCode::NotFound => Error::NotFound(message),
            ErrorCode::LimitExceeded => Error::LimitExceeded(message),
            ErrorCode::InvalidArgument => Error::InvalidInput(message),
            ErrorCode::StateMismatch => Error::StateMismatch(message),
            ErrorCode::CannotCalculateChanges => Error::CannotCalculateChanges(message),
            ErrorCode::OverQuota => Error::OverQuota(message),
            ErrorCode::AlreadyExists => Error::AlreadyExists(message),
            ErrorCode::Forbidden => Error::Forbidden(message),
            ErrorCode::Rejected => Error::Rejected(message),
            ErrorCode::Unimplemented => Error::Unimplemented(message),
            ErrorCode::Unavailable => Error::Unavailable(message),
            ErrorCode::Internal => Error::Server(message),
            ErrorCode::Protocol => Error::Protocol(message),
        }
    }
}

impl From<capnp::Error> for Error {
    fn from(e: capnp::Error) -> Self {
        if let Some((code, message)) = error_from_capnp(&e) {
            return Error::from_code(code, message);
        }
        match e.kind {
            capnp::ErrorKind::Disconnected => Error::Disconnected(e.extra),
            capnp::ErrorKind::Overloaded => Error::Unavailable(e.extra),
            capnp::ErrorKind::Unimplemented => Error::Unimplemented(e.extra),
            _ => Error::Protocol(e.to_string()),
        }
    }
}

impl From<capnp::NotInSchema> for Error {
    fn from(e: capnp::NotInSchema) -> Self {
        Error::Protocol(format!("value not in schema: {e}"))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::Protocol(format!("server sent text that is not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_map_to_reactions() {
        let e: Error = quail_protocol::error_to_capnp(ErrorCode::BadCredentials, "x").into();
        assert_eq!(e, Error::BadCredentials);
        assert_eq!(e.reaction(), Reaction::Reauthenticate);
        let e: Error = capnp::Error::disconnected("gone".into()).into();
        assert_eq!(e.reaction(), Reaction::Reconnect);
        let e: Error = quail_protocol::error_to_capnp(ErrorCode::NotFound, "no email 3").into();
        assert_eq!(e, Error::NotFound("no email 3".into()));
    }
}
