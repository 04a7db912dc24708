//! The Quail protocol, version 1: the contract between server, SDK, gateway
//! and conformance suite.
//!
//! - `schema/quail.capnp` — the schema, the source of truth.
//! - [`quail_capnp`] — Rust code generated from it (committed; regenerate with
//!   `cargo run -p quail-protocol --example regen`, a test fails on drift)
//!   Its only `unimplemented!()` bodies are capnpc's `init_pointer` of
//!   interface clients, an operation capnp does not have; a test pins that.
//! - this file — the schema's constants in Rust form, the stream-kind tags and
//!   the wire form of typed errors.
//!
//! No I/O and no server logic live here.

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_debug_implementations, unused)]
pub mod quail_capnp {
    include!("generated/quail_capnp.rs");
}

pub use quail_capnp::ErrorCode;

/// ALPN protocol id of Quail v1 over QUIC.
pub const ALPN: &[u8] = quail_capnp::ALPN.as_bytes();
/// Protocol version this crate describes.
pub const PROTOCOL_VERSION: u32 = quail_capnp::PROTOCOL_VERSION;

/// The one-byte tag every client-opened QUIC stream starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Cap'n Proto two-party RPC, `Quail` bootstrap.
    Rpc,
    /// One large object's bytes (see `BulkRequest` in the schema).
    Bulk,
}

impl StreamKind {
    /// The tag byte on the wire.
    pub const fn tag(self) -> u8 {
        match self {
            Self::Rpc => quail_capnp::STREAM_KIND_RPC,
            Self::Bulk => quail_capnp::STREAM_KIND_BULK,
        }
    }

    /// The kind a tag byte names, if any.
    pub const fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            quail_capnp::STREAM_KIND_RPC => Some(Self::Rpc),
            quail_capnp::STREAM_KIND_BULK => Some(Self::Bulk),
            _ => None,
        }
    }
}

/// QUIC application error codes the server closes streams and connections with.
pub mod close_code {
    /// Normal close (client went away, server shutting down).
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol: unknown stream tag, malformed frame.
    pub const PROTOCOL: u32 = 1;
    /// A frame or message exceeded an announced limit.
    pub const LIMIT: u32 = 2;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// ALPN missing or not `quail/1`.
    pub const ALPN: u32 = 4;
    /// Server-side failure.
    pub const INTERNAL: u32 = 5;
}

/// Default limits, as the server announces them in `hello` unless configured.
pub mod limits {
    /// Largest Cap'n Proto message either side reads (16 MiB).
    pub const MAX_RPC_MESSAGE_BYTES: u64 = 16 << 20;
    /// Largest raw email accepted (50 MiB, a common MTA default).
    pub const MAX_MESSAGE_BYTES: u64 = 50 << 20;
    /// Largest byte run returned inline (4 MiB).
    pub const MAX_INLINE_BYTES: u64 = 4 << 20;
    /// Ids per get / setKeywords / move / destroy.
    pub const MAX_IDS_PER_CALL: u32 = 1000;
    /// Page size of query and search.
    pub const MAX_QUERY_LIMIT: u32 = 1000;
    /// maxChanges of `changes`.
    pub const MAX_CHANGES: u32 = 5000;
    /// Recipients of one deliver or submit.
    pub const MAX_RECIPIENTS: u32 = 1000;
    /// Account names, mailbox names, keywords, in bytes.
    pub const MAX_NAME_BYTES: u32 = 255;
    /// Search query text, in bytes.
    pub const MAX_SEARCH_QUERY_BYTES: u32 = 4096;
}

/// Prefix of the reason text of every Quail error exception.
const ERROR_PREFIX: &str = "quail:";

/// The schema name of an error code, as used in the wire form.
pub const fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Internal => "internal",
        ErrorCode::Unimplemented => "unimplemented",
        ErrorCode::BadCredentials => "badCredentials",
        ErrorCode::NotFound => "notFound",
        ErrorCode::LimitExceeded => "limitExceeded",
        ErrorCode::InvalidArgument => "invalidArgument",
        ErrorCode::StateMismatch => "stateMismatch",
        ErrorCode::CannotCalculateChanges => "cannotCalculateChanges",
        ErrorCode::OverQuota => "overQuota",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::AlreadyExists => "alreadyExists",
        ErrorCode::Rejected => "rejected",
        ErrorCode::Protocol => "protocol",
    }
}

/// The error code a schema name denotes.
pub fn error_code_from_name(name: &str) -> Option<ErrorCode> {
    const ALL: [ErrorCode; 14] = [
        ErrorCode::Internal,
        ErrorCode::Unimplemented,
        ErrorCode::BadCredentials,
        ErrorCode::NotFound,
        ErrorCode::LimitExceeded,
        ErrorCode::InvalidArgument,
        ErrorCode::StateMismatch,
        ErrorCode::CannotCalculateChanges,
        ErrorCode::OverQuota,
        ErrorCode::Unavailable,
        ErrorCode::Forbidden,
        ErrorCode::AlreadyExists,
        ErrorCode::Rejected,
        ErrorCode::Protocol,
    ];
    ALL.into_iter().find(|c| error_code_name(*c) == name)
}

/// The exception a method raises for a typed error: reason
/// `quail:<code>: <message>` (see the schema's header).
pub fn error_to_capnp(code: ErrorCode, message: &str) -> capnp::Error {
    let reason = format!("{ERROR_PREFIX}{}: {message}", error_code_name(code));
    match code {
        ErrorCode::Unimplemented => capnp::Error::unimplemented(reason),
        ErrorCode::Unavailable => capnp::Error::overloaded(reason),
        _ => capnp::Error::failed(reason),
    }
}

/// Reads a typed error back out of an exception. `None` when the exception is
/// not a Quail error (a transport failure, a disconnect, a capnp-level error).
pub fn error_from_capnp(error: &capnp::Error) -> Option<(ErrorCode, String)> {
    // capnp-rpc prefixes reasons that crossed the wire with "remote exception: ".
    let text = error.extra.as_str();
    let start = text.find(ERROR_PREFIX)?;
    let rest = &text[start + ERROR_PREFIX.len()..];
    let (name, message) = rest.split_once(": ").unwrap_or((rest, ""));
    let code = error_code_from_name(name)?;
    Some((code, message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_round_trip() {
        for n in 0u16..14 {
            let code = ErrorCode::try_from(n).expect("code in schema");
            assert_eq!(error_code_from_name(error_code_name(code)), Some(code));
        }
        assert_eq!(error_code_from_name("noSuchCode"), None);
    }

    #[test]
    fn error_wire_form_round_trips_through_remote_prefix() {
        let e = error_to_capnp(ErrorCode::NotFound, "no such email: 7");
        assert_eq!(e.extra, "quail:notFound: no such email: 7");
        let remote = capnp::Error::failed(format!("remote exception: {}", e.extra));
        assert_eq!(error_from_capnp(&remote), Some((ErrorCode::NotFound, "no such email: 7".to_owned())));
        assert_eq!(error_from_capnp(&capnp::Error::disconnected("gone".into())), None);
    }

    #[test]
    fn stream_tags() {
        assert_eq!(StreamKind::from_tag(StreamKind::Rpc.tag()), Some(StreamKind::Rpc));
        assert_eq!(StreamKind::from_tag(StreamKind::Bulk.tag()), Some(StreamKind::Bulk));
        assert_eq!(StreamKind::from_tag(0), None);
        assert_eq!(StreamKind::from_tag(0xff), None);
    }
}
