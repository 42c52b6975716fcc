//! Newtypes for the identifiers and counters that cross module boundaries, so that a revision can
//! never be passed where a request id is expected. All are cheap to copy or clone.

use std::fmt;
use std::sync::Arc;

use rand::Rng;

/// A room revision: the number of changes committed to the room since it was created in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev(pub u64);

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client's own sequence number for its changes; strictly increasing within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClientReqId(pub u64);

/// The public author id of a session (`c7`), or `http` for changes made through the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl ClientId {
    /// The author of changes posted over HTTP.
    pub const HTTP: ClientId = ClientId(0);
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == ClientId::HTTP { f.write_str("http") } else { write!(f, "c{}", self.0) }
    }
}

/// A random string fixed when a room is created in memory. A revision is only meaningful
/// together with the epoch it was issued in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    pub fn random() -> Self {
        Epoch(random_hex(8).into())
    }
    /// The epoch a stored room was created with.
    pub fn restored(s: &str) -> Self {
        Epoch(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Wall-clock time, ms since the Unix epoch (0 before it): commit times, session and room
/// activity, stream lag.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `bytes` random bytes from the thread-local CSPRNG, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// A validated room name: 1–128 characters of `A-Z a-z 0-9 . _ - :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room name must be 1-128 characters of A-Z a-z 0-9 . _ - :")]
pub struct BadRoomId;

impl RoomId {
    /// # Errors
    /// [`BadRoomId`] for an empty, over-long or otherwise invalid name.
    pub fn parse(s: &str) -> Result<Self, BadRoomId> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if ok { Ok(RoomId(s.into())) } else { Err(BadRoomId) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomId::parse("lobby").is_ok());
        assert!(RoomId::parse("game:42.a_b-C").is_ok());
        assert!(RoomId::parse(&"x".repeat(128)).is_ok());
        assert!(RoomId::parse(&"x".repeat(129)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("a/b").is_err());
        assert!(RoomId::parse("é").is_err());
        assert!(RoomId::parse("a b").is_err());
    }

    #[test]
    fn client_ids_display() {
        assert_eq!(ClientId(7).to_string(), "c7");
        assert_eq!(ClientId::HTTP.to_string(), "http");
        assert_ne!(Epoch::random(), Epoch::random());
        assert_eq!(random_hex(16).len(), 32);
    }
}
