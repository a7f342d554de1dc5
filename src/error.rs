//! The one error type of quorumkv.
//!
//! Every failure a user can see is one of these variants, and its `Display`
//! names what failed and why, in the words Cassandra uses where it has them:
//!
//! ```text
//! Unavailable: need 2 of 3 replicas for key 70, 1 alive
//! Timeout: 1 of 2 acks for key 70; the write may or may not have been applied
//! ```
//!
//! Errors cross the wire as `proto::Error { kind, message }`: the kind lets a
//! client map them back to a variant (and the console to an exit status), the
//! message is shown as is.

use std::fmt;

use crate::proto;

/// Convenience alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in quorumkv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed or out of range; nothing was done.
    InvalidRequest(String),
    /// Too few replicas are known alive for the consistency level; nothing was sent.
    Unavailable(String),
    /// Too few replicas answered in time; a write may or may not have been applied.
    Timeout(String),
    /// Replicas answered with errors or dropped the connection before the level was met.
    Failure(String),
    /// The replica refuses more work.
    Overloaded(String),
    /// A peer's ring differs from ours.
    RingMismatch(String),
    /// A configuration file or flag is wrong.
    Config(String),
    /// A socket failed.
    Io(String),
    /// A frame or message could not be decoded.
    Protocol(String),
    /// The replica cannot write its log (disk full, I/O error); nothing was acknowledged.
    Storage(String),
    /// A bug or an unexpected state.
    Internal(String),
    /// A request routed at an older cluster metadata epoch than the replica
    /// holds; nothing was done (the coordinator catches up and retries).
    StaleEpoch(String),
    /// A transaction met another holding one of its keys (or a SERIAL round
    /// in flight on it) and aborted; nothing was written, it may be retried.
    Conflict(String),
}

impl Error {
    /// The message without the variant's prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidRequest(m)
            | Error::Unavailable(m)
            | Error::Timeout(m)
            | Error::Failure(m)
            | Error::Overloaded(m)
            | Error::RingMismatch(m)
            | Error::Config(m)
            | Error::Io(m)
            | Error::Protocol(m)
            | Error::Storage(m)
            | Error::Internal(m)
            | Error::StaleEpoch(m)
            | Error::Conflict(m) => m,
        }
    }

    /// Converts to the wire form.
    pub fn to_proto(&self) -> proto::Error {
        use proto::ErrorKind as K;
        let kind = match self {
            Error::InvalidRequest(_) | Error::Protocol(_) | Error::Config(_) => K::InvalidRequest,
            Error::Unavailable(_) => K::Unavailable,
            Error::Timeout(_) => K::Timeout,
            Error::Failure(_) | Error::Io(_) => K::Failure,
            Error::Overloaded(_) => K::Overloaded,
            Error::RingMismatch(_) => K::RingMismatch,
            Error::Storage(_) => K::Storage,
            Error::Internal(_) => K::Internal,
            Error::StaleEpoch(_) => K::StaleEpoch,
            Error::Conflict(_) => K::Conflict,
        };
        proto::Error { kind: kind as i32, message: self.message().to_string() }
    }

    /// Converts from the wire form; an unknown kind becomes `Internal`.
    pub fn from_proto(e: proto::Error) -> Error {
        use proto::ErrorKind as K;
        let m = e.message;
        match K::try_from(e.kind).unwrap_or(K::Unspecified) {
            K::InvalidRequest => Error::InvalidRequest(m),
            K::Unavailable => Error::Unavailable(m),
            K::Timeout => Error::Timeout(m),
            K::Failure => Error::Failure(m),
            K::Overloaded => Error::Overloaded(m),
            K::RingMismatch => Error::RingMismatch(m),
            K::Storage => Error::Storage(m),
            K::StaleEpoch => Error::StaleEpoch(m),
            K::Conflict => Error::Conflict(m),
            K::Internal | K::Unspecified => Error::Internal(m),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self {
            Error::InvalidRequest(_) => "Invalid request",
            Error::Unavailable(_) => "Unavailable",
            Error::Timeout(_) => "Timeout",
            Error::Failure(_) => "Failure",
            Error::Overloaded(_) => "Overloaded",
            Error::RingMismatch(_) => "Ring mismatch",
            Error::Config(_) => "Configuration error",
            Error::Io(_) => "I/O error",
            Error::Protocol(_) => "Protocol error",
            Error::Storage(_) => "Storage error",
            Error::Internal(_) => "Internal error",
            Error::StaleEpoch(_) => "Stale epoch",
            Error::Conflict(_) => "Conflict",
        };
        write!(f, "{prefix}: {}", self.message())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::Protocol(format!("undecodable message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_kind_and_message() {
        let all = [
            Error::InvalidRequest("a".into()),
            Error::Unavailable("b".into()),
            Error::Timeout("c".into()),
            Error::Failure("d".into()),
            Error::Overloaded("e".into()),
            Error::RingMismatch("f".into()),
            Error::Storage("h".into()),
            Error::Internal("g".into()),
            Error::StaleEpoch("i".into()),
        ];
        for e in all {
            assert_eq!(Error::from_proto(e.to_proto()), e);
        }
    }

    #[test]
    fn display_names_the_kind() {
        let e = Error::Unavailable("need 2 of 3 replicas for key 70, 1 alive".into());
        assert_eq!(e.to_string(), "Unavailable: need 2 of 3 replicas for key 70, 1 alive");
    }
}
