//! ringsync: an in-memory delta-sync server.
//!
//! Every room holds one authoritative JSON state, a revision counter, a fixed-size ring of recent
//! changes and a lazily encoded snapshot. Each connected client is sent exactly what it is
//! missing: the changes after its last revision while the ring still holds them, else a snapshot.
//!
//! Data flows one way: socket → [`protocol`] decode → [`room`] commit → [`ring`] → writers →
//! socket. Module map, lowest layer first:
//! - [`patch`]: RFC 6902 JSON Patch + `incr`, atomic apply with inverse (pure);
//! - [`ring`]: fixed-capacity ring of committed changes (pure);
//! - [`ids`]: newtypes for revisions, request ids, client ids, epochs, room names;
//! - [`protocol`]: the only encoder/decoder of wire messages;
//! - [`room`]: one room's ordering point: commit, catch-up, snapshots (synchronous);
//! - [`presence`]: a room's presence lane: who is here, coalesced for slow readers (synchronous);
//! - [`broadcast`]: a room's broadcast lane: a ring of recent messages (synchronous);
//! - [`rooms`]: the registry of rooms;
//! - [`session`]: sessions (identity, dedupe, takeover, expiry);
//! - [`connection`]: one WebSocket: the reader loop → room (each client message is handled in
//!   `connection::handle_message`), run beside [`writer`] ← room;
//! - [`http_api`]: HTTP endpoints for back-ends;
//! - [`server`]: accept loop, routing, shutdown; [`config`] and [`metrics`] beside it.

pub mod broadcast;
pub mod config;
pub mod connection;
pub mod http_api;
pub mod ids;
pub mod metrics;
pub mod patch;
pub mod presence;
pub mod protocol;
pub mod ring;
pub mod room;
pub mod rooms;
pub mod server;
pub mod session;
pub mod writer;
