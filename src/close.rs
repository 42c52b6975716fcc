//! The catalogue of ways a WebSocket connection ends: each reason's close code, its text and its
//! metrics label, written once. The writer sends these codes, `connection::refuse` sends the
//! admission ones, and `metrics` registers every label at zero from [`CloseReason::ALL`].
//!
//! Invariant: codes in the 4000–4999 range are ringsync's own and documented in PROTOCOL.md; a
//! reason that cannot send a close frame (the socket is gone or stuck) maps to 1006, which is
//! never put on the wire.

use std::time::Duration;

/// Time given to the other half of a connection to finish once one half has ended (a close
/// frame to be written, or the client's answer to ours).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: the client closed, we echo.
    Normal,
    /// 1001: idle timeout.
    Idle,
    /// 1001: server shutting down.
    Shutdown,
    /// 1002: WebSocket protocol violation.
    Protocol,
    /// 1007: invalid UTF-8 in a text message.
    BadUtf8,
    /// 1009: message over `--max-message-bytes`.
    TooBig,
    /// 4001: another connection took the session over.
    TakenOver,
    /// 4005: `--max-room-clients` reached.
    RoomFull,
    /// 4006: `--max-rooms` reached and this room does not exist.
    TooManyRooms,
    /// 4007: `--max-sessions` reached and every session is connected.
    TooManySessions,
    /// 4008: the memory budget (`--max-memory`) admits no new room and this one does not exist.
    MemoryFull,
    /// 4401: no valid token (missing, malformed, expired, not yet valid, badly signed), or the
    /// token expired (past `--jwt-leeway`) without a refresh.
    Unauthorized,
    /// 4403: a valid token without permission for this room (or it lost read on a refresh).
    Forbidden,
    /// 4403: the session (or a refresh token) belongs to another user.
    OtherUser,
    /// The socket did not accept a write within `--write-timeout` (no close frame can be sent).
    SlowClient,
    /// The socket failed (reset, closed under us).
    Gone,
    /// 4009: an operator kicked this client (admin API); its session stays resumable unless the
    /// kick also ended it.
    Kicked,
    /// 4010: an operator closed the room (admin API); the room and its state stay.
    RoomClosed,
    /// 4011: an operator deleted the room (admin API); the next connection gets a fresh room.
    RoomDeleted,
    /// 4012: the room is stored but its data cannot be read back (see the server's log).
    RoomUnreadable,
    /// 4013: on Redis (`--redis`), this node no longer owns the room (its lease lapsed or another
    /// node took it): reconnect, and the load balancer's node that owns it takes over.
    RoomMoved,
    /// 4429: the client kept sending past its rate limits (more than `--rate-limit-strikes`
    /// rate-limited messages within `--rate-limit-window`).
    RateLimited,
}

impl CloseReason {
    pub const ALL: [CloseReason; 22] = [
        CloseReason::Normal,
        CloseReason::Idle,
        CloseReason::Shutdown,
        CloseReason::Protocol,
        CloseReason::BadUtf8,
        CloseReason::TooBig,
        CloseReason::TakenOver,
        CloseReason::RoomFull,
        CloseReason::TooManyRooms,
        CloseReason::TooManySessions,
        CloseReason::MemoryFull,
        CloseReason::Unauthorized,
        CloseReason::Forbidden,
        CloseReason::OtherUser,
        CloseReason::SlowClient,
        CloseReason::Gone,
        CloseReason::Kicked,
        CloseReason::RoomClosed,
        CloseReason::RoomDeleted,
        CloseReason::RoomUnreadable,
        CloseReason::RoomMoved,
        CloseReason::RateLimited,
    ];

    /// The WebSocket close code (RFC 6455 §7.4).
    pub fn close_code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Idle | CloseReason::Shutdown => 1001,
            CloseReason::Protocol => 1002,
            CloseReason::BadUtf8 => 1007,
            CloseReason::TooBig => 1009,
            CloseReason::TakenOver => 4001,
            CloseReason::RoomFull => 4005,
            CloseReason::TooManyRooms => 4006,
            CloseReason::TooManySessions => 4007,
            CloseReason::MemoryFull => 4008,
            CloseReason::Unauthorized => 4401,
            CloseReason::Forbidden | CloseReason::OtherUser => 4403,
            CloseReason::Kicked => 4009,
            CloseReason::RoomClosed => 4010,
            CloseReason::RoomDeleted => 4011,
            CloseReason::RoomUnreadable => 4012,
            CloseReason::RoomMoved => 4013,
            CloseReason::SlowClient | CloseReason::Gone => 1006,
            CloseReason::RateLimited => 4429,
        }
    }

    /// The close frame's reason text.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::Idle => "idle timeout",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Protocol => "protocol error",
            CloseReason::BadUtf8 => "invalid UTF-8",
            CloseReason::TooBig => "message too big",
            CloseReason::TakenOver => "session taken over",
            CloseReason::RoomFull => "room full",
            CloseReason::TooManyRooms => "too many rooms",
            CloseReason::TooManySessions => "too many sessions",
            CloseReason::MemoryFull => "server memory full (--max-memory): no new rooms",
            CloseReason::Unauthorized => "unauthorized: missing, invalid or expired token",
            CloseReason::Forbidden => "forbidden: the token grants no access to this room",
            CloseReason::OtherUser => "forbidden: the session or token belongs to another user",
            CloseReason::SlowClient => "write timeout",
            CloseReason::Gone => "connection lost",
            CloseReason::Kicked => "kicked by an operator",
            CloseReason::RoomClosed => "room closed by an operator",
            CloseReason::RoomDeleted => "room deleted by an operator",
            CloseReason::RoomUnreadable => "the room's stored data cannot be read",
            CloseReason::RoomMoved => "this node no longer owns the room: reconnect",
            CloseReason::RateLimited => "rate limited: too many messages over the limit",
        }
    }

    /// The `reason` label of `ringsync_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "client_close",
            CloseReason::Idle => "idle_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Protocol => "protocol_error",
            CloseReason::BadUtf8 => "bad_utf8",
            CloseReason::TooBig => "too_big",
            CloseReason::TakenOver => "taken_over",
            CloseReason::RoomFull => "room_full",
            CloseReason::TooManyRooms => "too_many_rooms",
            CloseReason::TooManySessions => "too_many_sessions",
            CloseReason::MemoryFull => "memory_full",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Forbidden => "forbidden",
            CloseReason::OtherUser => "other_user",
            CloseReason::SlowClient => "write_timeout",
            CloseReason::Gone => "connection_lost",
            CloseReason::Kicked => "kicked",
            CloseReason::RoomClosed => "room_closed",
            CloseReason::RoomDeleted => "room_deleted",
            CloseReason::RoomUnreadable => "room_unreadable",
            CloseReason::RoomMoved => "room_moved",
            CloseReason::RateLimited => "rate_limited",
        }
    }

    /// Whether a close frame with this reason can still be written (the socket works and we did
    /// not already echo the client's close).
    pub fn sends_frame(self) -> bool {
        !matches!(self, CloseReason::Normal | CloseReason::SlowClient | CloseReason::Gone)
    }
}

/// Whether a peer may put `code` in a close frame (RFC 6455 §7.4 and the IANA registry): the
/// defined codes other than 1004 (reserved) and 1005, 1006, 1015 (never sent), the registered
/// 3000–3999 and the private 4000–4999. Anything else in a client's close frame is a protocol
/// error.
pub fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_a_client_may_send() {
        for ok in
            [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
        {
            assert!(may_be_sent(ok), "{ok}");
        }
        // Autobahn 7.9.x and 7.13.x.
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!may_be_sent(bad), "{bad}");
        }
    }

    #[test]
    fn codes_labels_and_texts_are_distinct() {
        let labels: std::collections::HashSet<_> = CloseReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), CloseReason::ALL.len());
        for r in CloseReason::ALL {
            assert!(r.text().len() <= 123, "a close reason fits a control frame");
            if r.sends_frame() {
                assert!(may_be_sent(r.close_code()), "{r:?}");
            }
        }
    }
}
