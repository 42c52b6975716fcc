//! ringsync: a delta-sync server with durable rooms.
//!
//! Every room holds one authoritative JSON state, a revision counter, a fixed-size ring of recent
//! changes and a lazily encoded snapshot. Each connected client is sent exactly what it is
//! missing: the changes after its last revision while the ring still holds them, else a snapshot.
//!
//! Data flows one way: socket → [`connection`] (read, [`reassembly`], [`protocol`] decode) →
//! [`app::App::commit`] → [`room`] commit → [`ring`] and the room's [`store`] log; once the store
//! has written it ([`room::durable`]) the room decides what each reader gets ([`room::catchup`])
//! and each connection's [`writer`] sends it → socket.
//!
//! The modules layer one way (`tests/layering.rs` enforces it), lowest first:
//! - the synchronous core, which imports nothing from the shell:
//!   [`ids`], [`patch`] (RFC 6902 + `incr`, atomic apply with inverse) and [`ring`];
//!   [`store`] (the storage seam, the file store: CRC32C-framed rkyv log and snapshots on its own
//!   thread, and an in-memory store for tests);
//!   [`memory`] (heap estimates of what rooms hold, and the process-wide budget);
//!   [`protocol`] (the only encoder/decoder, and the error-code catalogue);
//!   [`presence`] and [`broadcast`] (a room's two ephemeral lanes);
//!   [`room`] (one room's ordering point: commit, conflict modes, catch-up decision, snapshots,
//!   what the store's answers do to it and how it is rebuilt as the store streams it back);
//!   [`rooms`] (the registry: admission, activity, lazy loading from the store, eviction);
//! - the shell: [`config`] (every flag once), [`close`] (close-reason catalogue), [`metrics`]
//!   (names, label enums, handles), [`web`] (embedded browser files); [`auth`] (tokens and room
//!   permissions) and [`guard`] (Origin checks, CORS, the JSON-only rule for HTTP bodies, rate
//!   limits); then [`session`] (identity
//!   across reconnects, dedupe, takeover, the resume point); [`app`] (shared state, limit guards,
//!   the one commit path); [`cluster`] (cluster mode on Redis: following the
//!   rooms other nodes own, committing the changes forwarded to this one); [`writer`] (the only socket writer, generic over its sink) and
//!   [`reassembly`]; [`connection`] (one WebSocket's read loop; each client message is handled in
//!   `connection::handle_message`), [`http_api`] (HTTP endpoints for back-ends) and [`admin`]
//!   (the operators' API: list, inspect, kick, close, delete; who may call it); [`server`]
//!   (accept loop, routing, drain, sweeps); `main.rs` last.
//!
//! These docs are for contributors: build them with `cargo doc --document-private-items`
//! (`scripts/test.sh` does, with warnings as errors), which is why module docs may link to
//! private items.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod broadcast;
pub mod close;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod guard;
pub mod http_api;
pub mod ids;
pub mod memory;
pub mod metrics;
pub mod patch;
pub mod presence;
pub mod protocol;
pub mod reassembly;
pub mod ring;
pub mod room;
pub mod rooms;
pub mod server;
pub mod session;
pub mod store;
pub mod web;
pub mod writer;
