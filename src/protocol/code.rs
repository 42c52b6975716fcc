//! The error-code catalogue: every code a client can be told, over a WebSocket (`reject`,
//! `error`) or in an HTTP error body (`{"code":..,"message":..}`), with its stable name.
//!
//! Invariant: `as_str` values never change once released (clients branch on them); the HTTP status
//! each code maps to is decided in one place, `http_api`.

use serde::Serialize;

use crate::patch::PatchError;

/// A stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A change conflicts with one its author had not seen (`rev` / `paths` modes).
    Conflict,
    /// `baseRev` is older than the history can answer for.
    Stale,
    /// The change or request is malformed or breaks a rule of the room.
    Invalid,
    /// A `test` op failed.
    TestFailed,
    /// Over a size limit (message, state, ops per change, presence).
    TooLarge,
    /// Not allowed for this client: its token lacks the permission (HTTP 403).
    Forbidden,
    /// The server is shutting down: the change was not applied (nor counted as processed).
    Draining,
    /// The server's memory budget (`--max-memory`) cannot hold the change, or a new room.
    MemoryFull,
    /// The store could not write the change (disk full, I/O error): it was not applied, nor
    /// acknowledged or delivered; the room is as it was. Safe to send again.
    Unavailable,
    /// The `clientReqId` was already processed; not applied again.
    Duplicate,
    /// The message could not be decoded at all.
    BadMessage,
    NotFound,
    MethodNotAllowed,
    /// A plain HTTP request to the WebSocket endpoint.
    UpgradeRequired,
    /// The WebSocket upgrade request is malformed.
    BadUpgrade,
    /// The room name is not valid.
    BadRoom,
    /// `since` is missing, not a number, or ahead of the room.
    BadSince,
    /// The HTTP body could not be read.
    BadBody,
    /// The changes asked for are no longer in the history.
    Gone,
    /// `--max-connections` reached.
    TooManyConnections,
    /// `--max-rooms` reached.
    TooManyRooms,
    /// An HTTP request body did not arrive within `--body-timeout`.
    Timeout,
    /// `--max-body-bytes-in-flight` reached: the server holds as many request bodies as it may.
    Overloaded,
    /// No valid token (missing, malformed, expired, not yet valid, badly signed), or, for the
    /// admin API, not the `--admin-token-file` bearer.
    Unauthorized,
    /// The request's `Origin` is not in `--allowed-origins` (HTTP 403, before anything happens).
    OriginNotAllowed,
    /// An HTTP request body that is not `Content-Type: application/json` (HTTP 415).
    UnsupportedMediaType,
    /// Over a rate limit (HTTP 429 with `Retry-After`; a WebSocket `reject`/`error` with
    /// `retryAfterMs`).
    RateLimited,
    /// An HTTP `Idempotency-Key` reused with a different request (HTTP 422).
    IdempotencyKeyReused,
}

impl ErrorCode {
    /// Every code; the first nine are the ones a change can be rejected with.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::Conflict,
        ErrorCode::Stale,
        ErrorCode::Invalid,
        ErrorCode::TestFailed,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::Draining,
        ErrorCode::MemoryFull,
        ErrorCode::Unavailable,
        ErrorCode::Duplicate,
        ErrorCode::BadMessage,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UpgradeRequired,
        ErrorCode::BadUpgrade,
        ErrorCode::BadRoom,
        ErrorCode::BadSince,
        ErrorCode::BadBody,
        ErrorCode::Gone,
        ErrorCode::TooManyConnections,
        ErrorCode::TooManyRooms,
        ErrorCode::Timeout,
        ErrorCode::Overloaded,
        ErrorCode::Unauthorized,
        ErrorCode::OriginNotAllowed,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::IdempotencyKeyReused,
    ];

    /// The codes a change can be rejected with (`reject` messages; the `code` label of
    /// `ringsync_changes_rejected_total`).
    pub const REJECTS: &[ErrorCode] = Self::ALL.split_at(9).0;

    /// The code named `name` (see [`ErrorCode::as_str`]).
    pub fn parse(name: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// The stable name clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Conflict => "conflict",
            ErrorCode::Stale => "stale",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TestFailed => "test_failed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MemoryFull => "memory_full",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::BadUpgrade => "bad_upgrade",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::BadSince => "bad_since",
            ErrorCode::BadBody => "bad_body",
            ErrorCode::Gone => "gone",
            ErrorCode::Draining => "draining",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<PatchError> for ErrorCode {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::Invalid { .. } => ErrorCode::Invalid,
            PatchError::TestFailed { .. } => ErrorCode::TestFailed,
            PatchError::TooLarge { .. } => ErrorCode::TooLarge,
            PatchError::TooMuchWork { .. } => ErrorCode::TooLarge,
        }
    }
}

/// A change that was not committed: what the author is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Reject {
    pub code: ErrorCode,
    pub message: String,
    /// The room's revision when the change was refused.
    pub rev: u64,
    /// Revisions that conflicted (`conflict` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<u64>,
}

impl Reject {
    /// A reject with no conflict list.
    pub fn new(code: ErrorCode, message: impl Into<String>, rev: u64) -> Self {
        Reject { code, message: message.into(), rev, conflicts: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let names: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        let rejects = [
            "conflict",
            "stale",
            "invalid",
            "test_failed",
            "too_large",
            "forbidden",
            "draining",
            "memory_full",
            "unavailable",
        ];
        assert_eq!(ErrorCode::REJECTS.iter().map(|c| c.as_str()).collect::<Vec<_>>(), rejects);
    }
}
