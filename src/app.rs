//! The state every handler shares ([`App`]), the RAII guards that count what is open against the
//! server's limits, and the one commit path that WebSocket and HTTP writes both take.
//!
//! Invariants: `active` counts open HTTP connections plus upgraded WebSockets (shutdown is done
//! when it reaches zero); `websockets` never exceeds `--max-connections`, because a slot is taken
//! atomically before the upgrade and released only when its [`WsSlot`] drops. Likewise
//! `http_connections` never exceeds `--max-http-connections` ([`HttpSlot`], taken at accept and
//! dropped when the connection closes or upgrades), and `body_bytes` never exceeds
//! `--max-body-bytes-in-flight` ([`BodyCharge`], which adds bytes as they arrive only while they
//! fit, and releases all of them when the request ends, however it ends). Once
//! [`App::begin_drain`] has returned, no commit is under way and none will start (every later one
//! is refused with `draining`), so each connection's last catch-up before its shutdown close holds
//! every change that will ever be acked.
//! The rooms share one memory [`Budget`] of `--max-memory`; before each write the rings are asked to shed if it
//! is tight ([`Rooms::relieve`]), and what it refuses is counted here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::close::CloseReason;
use crate::config::{AdminToken, Config, FsyncMode, WriterConfig};
use crate::guard::Guard;
use crate::ids::RoomId;
use crate::memory::Budget;
use crate::metrics as m;
use crate::protocol::{ChangeKind, ErrorCode, Reject};
use crate::room::{self, Change, ChangeRequest, Room};
use crate::rooms::{NoNewRoom, Rooms};
use crate::session::{SessionLimits, Sessions};
use crate::store::file::{FileOptions, FileStore, Fsync};
use crate::store::redis::{Mail, RedisOptions, RedisStore};

/// What a room is shown as a connection or request starts using it on this node (cluster mode
/// relays its presence and broadcasts to the other nodes: see [`crate::cluster`]).
pub trait RoomHook: Send + Sync {
    fn attach(&self, room: &Arc<Room>);
}

/// Everything the request handlers share.
pub struct App {
    pub config: Config,
    /// The connections' writers' part of `config`, which each writer borrows.
    pub writer_config: WriterConfig,
    /// Verifies tokens (open mode without a `--jwt-*` key); built once at start.
    pub auth: Authenticator,
    pub rooms: Rooms,
    /// The data directory's store (`None` with `--memory-only`); the rooms hold it as their
    /// [`Store`](crate::store::Store), this handle is for its statistics and shutdown flush.
    pub file_store: Option<Arc<FileStore>>,
    /// The Redis store (`--redis`), for its metrics.
    pub redis_store: Option<Arc<RedisStore>>,
    /// Set once in cluster mode (see [`App::attach_room`]).
    room_hook: std::sync::OnceLock<Arc<dyn RoomHook>>,
    /// HTTP changes forwarded to owners so far (their ids, see [`App::forward_http`]).
    http_forwards: std::sync::atomic::AtomicU64,
    pub sessions: Arc<Sessions>,
    pub metrics: PrometheusHandle,
    /// The admin API's secret (`--admin-token-file`), read once at start.
    pub admin_token: Option<AdminToken>,
    /// Origins, CORS and the per-IP and per-caller rate limits (`guard`).
    pub guard: Guard,
    shutdown_tx: watch::Sender<bool>,
    draining: AtomicBool,
    /// Held shared by every commit and exclusively by `begin_drain` as it sets `draining`: a
    /// commit either completes before the drain begins or sees `draining` and is refused. (A
    /// parking_lot lock, never held across `.await`: a commit is synchronous.)
    commit_gate: parking_lot::RwLock<()>,
    /// Open HTTP connections plus upgraded WebSockets, so shutdown knows when it is done.
    active: AtomicUsize,
    /// WebSockets open or being upgraded, for `--max-connections`.
    websockets: AtomicUsize,
    /// HTTP connections open and not upgraded, for `--max-http-connections`.
    http_connections: AtomicUsize,
    /// Bytes of request bodies received by requests still being handled, for
    /// `--max-body-bytes-in-flight`.
    body_bytes: AtomicUsize,
}

impl App {
    /// Builds the shared state (installing the metrics recorder on first use in the process).
    ///
    /// # Panics
    /// When a file the config names cannot be used (the binary calls [`App::try_new`] and exits
    /// with its message instead).
    pub fn new(config: Config) -> Arc<App> {
        App::try_new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the shared state, reading the files the config names once: the token keys
    /// (`--jwt-secret-file`, `--jwt-public-key-file`) and `--admin-token-file`.
    ///
    /// # Errors
    /// A message naming the flag whose file cannot be used.
    pub fn try_new(config: Config) -> Result<Arc<App>, String> {
        let auth = Authenticator::from_config(&config)?;
        let admin_token = config.read_admin_token()?;
        let mut rooms =
            Rooms::with_budget(config.room_config(), config.max_rooms, Budget::new(config.max_memory));
        let mut redis_store = None;
        let file_store = if config.memory_only {
            None
        } else if let Some(url) = &config.redis {
            let options = RedisOptions {
                url: url.clone(),
                lease: config.owner_lease,
                retain: config.retain_history.max(config.history as u64),
            };
            let store = RedisStore::connect(options).map_err(|e| format!("--redis: {e}"))?;
            rooms = rooms.with_store(Arc::new(store.clone()));
            redis_store = Some(store);
            None
        } else {
            let options = FileOptions {
                fsync: match config.fsync {
                    FsyncMode::Always => Fsync::Always,
                    FsyncMode::Batch => Fsync::Batch,
                    FsyncMode::Never => Fsync::Never,
                },
                fsync_interval: config.fsync_interval,
                retain: config.retain_history.max(config.history as u64),
                max_open: open_segment_cap(),
                wal_max: FileOptions::DEFAULT_WAL_MAX,
            };
            let store =
                FileStore::open_dir(&config.data_dir, options).map_err(|e| format!("--data-dir: {e}"))?;
            rooms = rooms.with_store(Arc::new(store.clone()));
            Some(store)
        };
        let limits = SessionLimits::from(&config);
        let sessions = match &redis_store {
            Some(store) => Sessions::for_node(limits, store.node()),
            None => Sessions::new(limits),
        };
        Ok(Arc::new(App {
            auth,
            admin_token,
            file_store,
            redis_store,
            room_hook: std::sync::OnceLock::new(),
            http_forwards: std::sync::atomic::AtomicU64::new(0),
            rooms,
            sessions: Arc::new(sessions),
            metrics: m::install(),
            guard: Guard::new(&config),
            shutdown_tx: watch::channel(false).0,
            draining: AtomicBool::new(false),
            commit_gate: parking_lot::RwLock::new(()),
            active: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
            http_connections: AtomicUsize::new(0),
            body_bytes: AtomicUsize::new(0),
            writer_config: WriterConfig::from(&config),
            config,
        }))
    }

    /// A receiver that changes once, when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking new work and tells every connection to wind down. When it returns, no commit
    /// is half-way and every later one is refused with `draining`; only then are the connections
    /// told, so the catch-up each sends before its close is final.
    pub fn begin_drain(&self) {
        let gate = self.commit_gate.write();
        self.draining.store(true, Ordering::Release);
        drop(gate);
        self.shutdown_tx.send_replace(true);
        // Room connections' writers look at the flag when they wake (see `writer::Signals`).
        for room in self.rooms.all() {
            room.wake_listeners();
        }
    }

    /// Open HTTP connections plus WebSockets.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Counts one open connection in [`App::active`] until the guard drops.
    pub fn hold_active(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }

    /// A place under `--max-connections` (0 = unlimited), or `None` when the server is full.
    pub fn websocket_slot(self: &Arc<Self>) -> Option<WsSlot> {
        let max = self.config.max_connections;
        self.websockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .ok()
            .map(|_| WsSlot(self.clone()))
    }

    /// A place under `--max-http-connections` (0 = unlimited), or `None` when that many are open.
    pub fn http_slot(self: &Arc<Self>) -> Option<HttpSlot> {
        let max = self.config.max_http_connections;
        self.http_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .ok()?;
        metrics::gauge!(m::HTTP_CONNECTIONS_OPEN).increment(1.0);
        Some(HttpSlot(self.clone()))
    }

    /// HTTP connections open (upgraded WebSockets not included).
    pub fn http_connections(&self) -> usize {
        self.http_connections.load(Ordering::Acquire)
    }

    /// An empty charge for one request body against `--max-body-bytes-in-flight` (0 = unlimited),
    /// or `None` when the budget is spent: the body is then refused before any of it is read.
    pub fn body_charge(&self) -> Option<BodyCharge<'_>> {
        let max = self.config.max_body_bytes_in_flight;
        (max == 0 || self.body_bytes.load(Ordering::Acquire) < max)
            .then_some(BodyCharge { app: self, bytes: 0 })
    }

    /// Bytes of request bodies held by requests in progress.
    pub fn body_bytes_in_flight(&self) -> usize {
        self.body_bytes.load(Ordering::Acquire)
    }

    /// The room to write to over HTTP, created if needed (a refusal is counted).
    ///
    /// # Errors
    /// [`NoNewRoom`] when it does not exist and cannot be created.
    pub fn room_for_write(&self, id: &RoomId) -> Result<Arc<Room>, NoNewRoom> {
        let room = self.rooms.get_or_create(id);
        if let Err(NoNewRoom::MemoryFull) = room {
            m::MemoryRefusal::Room.count();
        }
        room
    }

    /// Reads a stored room that is not in memory on a blocking thread, so the async workers
    /// that then use it never wait on the disk (no-op when it is in memory, or memory only).
    ///
    /// # Errors
    /// [`NoNewRoom::Unreadable`] when the room is stored but cannot be loaded (or, on Redis,
    /// another node owns it).
    pub async fn load_stored(self: &Arc<Self>, id: &RoomId) -> Result<(), NoNewRoom> {
        if self.rooms.store().is_none() || self.rooms.is_loaded(id) {
            return Ok(());
        }
        let (app, id) = (self.clone(), id.clone());
        match tokio::task::spawn_blocking(move || app.rooms.try_get(&id)).await {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Closes every connection of `room` with `reason` (ending their sessions too with `end`);
    /// returns how many connections were told.
    pub fn close_connections(&self, room: &Arc<Room>, reason: CloseReason, end: bool) -> usize {
        self.sessions.of_room(room).iter().filter(|s| self.sessions.kick(s, reason, end)).count()
    }

    /// Unloads the rooms whose ownership moved to another node (the store says which) and
    /// closes their connections with 4013, so their clients reconnect to the owner. Returns
    /// how many rooms were unloaded.
    pub fn unload_moved(&self) -> usize {
        let Some(store) = self.rooms.store() else { return 0 };
        let mut unloaded = 0;
        for id in store.take_moved() {
            let Some(room) = self.rooms.unload(&id) else { continue };
            let closed = self.close_connections(&room, CloseReason::RoomMoved, true);
            tracing::warn!(room = %id, closed, "room moved to another node: unloaded, connections closed (4013)");
            unloaded += 1;
        }
        unloaded
    }

    /// Once a second: sheds history if memory is tight, and publishes the memory gauges.
    pub fn sweep_memory(&self) {
        self.rooms.relieve();
        let budget = self.rooms.budget();
        metrics::gauge!(m::MEMORY_ACCOUNTED).set(budget.used() as f64);
        metrics::gauge!(m::MEMORY_LIMIT).set(budget.limit() as f64);
        metrics::gauge!(m::MEMORY_HISTORY).set(budget.history() as f64);
        metrics::counter!(m::HISTORY_SHED).absolute(budget.shed_total());
        if let Some(store) = &self.file_store {
            m::publish_store(&store.stats());
        }
        if let Some(store) = &self.redis_store {
            m::publish_redis(&store.stats());
        }
    }

    /// Installs the hook [`App::attach_room`] calls (cluster mode; once).
    pub fn set_room_hook(&self, hook: Arc<dyn RoomHook>) {
        let _ = self.room_hook.set(hook);
    }

    /// A connection or request is about to use the room's presence or broadcasts on this node.
    pub fn attach_room(&self, room: &Arc<Room>) {
        if let Some(hook) = self.room_hook.get() {
            hook.attach(room);
        }
    }

    /// A client's change over its WebSocket: committed here ([`App::commit`]), or, when this
    /// node follows the room (cluster mode: another node owns it), forwarded to the owner
    /// ([`App::forward`]), and `Ok(None)`: its ack then arrives with its record from the owner's
    /// stream, or its reject by mail, both through the connection's writer as on the owner (see
    /// [`crate::cluster`]).
    ///
    /// # Errors
    /// As [`App::commit`] and [`App::forward`].
    pub fn submit(&self, room: &Arc<Room>, req: ChangeRequest) -> Result<Option<Arc<Change>>, Reject> {
        if room.is_follower() {
            return self.forward(room, req, None).map(|()| None);
        }
        self.commit(room, req).map(Some)
    }

    /// An HTTP change to a room this node follows: forwarded to the owner under an id unique to
    /// this node (its author stays the HTTP author), the receiver getting the change as
    /// committed (once this node has taken its record) or the owner's reject.
    ///
    /// # Errors
    /// As [`App::forward`].
    pub fn forward_http(
        &self,
        room: &Arc<Room>,
        mut req: ChangeRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Arc<Change>, Reject>>, Reject> {
        let node = self.redis_store.as_ref().map_or(0, |s| s.node());
        let n = self.http_forwards.fetch_add(1, Ordering::Relaxed) + 1;
        req.client_req_id = Some(crate::ids::ClientReqId((node << 32) | (n & 0xffff_ffff)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.forward(room, req, Some(tx))?;
        Ok(rx)
    }

    /// Sends `req` to the owner of `room`, which this node follows; `reply` (an HTTP request's)
    /// gets the answer, else the author's connection does.
    ///
    /// # Errors
    /// `draining` once the server is shutting down; `unavailable` when the room's owner is not
    /// known at the moment (it is changing hands).
    pub fn forward(
        &self,
        room: &Arc<Room>,
        req: ChangeRequest,
        reply: Option<room::follow::Reply>,
    ) -> Result<(), Reject> {
        let refused = |code: ErrorCode, message: &str| {
            let r = Reject::new(code, message, room.rev().0);
            count_reject(&r);
            Err(r)
        };
        if self.is_draining() {
            let message =
                "the server is shutting down; the change was not applied: send it again after reconnecting";
            return refused(ErrorCode::Draining, message);
        }
        let Some((store, owner)) =
            self.redis_store.as_ref().and_then(|s| s.owner_node(room.id()).map(|owner| (s, owner)))
        else {
            let message = "the room's owner is changing; the change was not applied: send it again";
            return refused(ErrorCode::Unavailable, message);
        };
        metrics::counter!(m::CLUSTER_FORWARDED).increment(1);
        let lost = req.client_req_id.map(|id| {
            room.note_forwarded(req.author, id, owner, reply);
            // Redis was unreachable: the owner may never see it, and nobody would answer.
            let (copy, author) = (Arc::downgrade(room), req.author);
            Box::new(move || {
                if let Some(copy) = copy.upgrade() {
                    let message =
                        "the change may not have reached the room's owner (Redis unreachable): send it again";
                    copy.reject_forwarded(
                        author,
                        id,
                        Reject::new(ErrorCode::Unavailable, message, copy.rev().0),
                    );
                }
            }) as crate::store::redis::Lost
        });
        let mail = Mail::Change { room: room.id().to_string(), req: req.to_wire() };
        store.send(owner, &mail, lost);
        Ok(())
    }

    /// Commits a change to `room`, recording the outcome in the metrics. Every write, over a
    /// WebSocket or HTTP, goes through here.
    ///
    /// # Errors
    /// The room's [`Reject`], or `draining` once the server is shutting down; the room is then
    /// unchanged.
    pub fn commit(&self, room: &Room, req: ChangeRequest) -> Result<Arc<Change>, Reject> {
        let started = Instant::now();
        // An index into `m::HISTORY_KINDS` (and `m::hot().history`).
        let history = match req.extras.kind {
            ChangeKind::Plain => None,
            ChangeKind::Undo => Some(0),
            ChangeKind::Redo => Some(1),
            ChangeKind::Reverts(_) => Some(2),
        };
        let gate = self.commit_gate.read();
        let result = if self.is_draining() {
            let message =
                "the server is shutting down; the change was not applied: send it again after reconnecting";
            Err(Reject::new(ErrorCode::Draining, message, room.rev().0))
        } else {
            self.rooms.relieve();
            room.commit(req)
        };
        drop(gate);
        match &result {
            Ok(change) => {
                let hot = m::hot();
                hot.commit_duration.record(started.elapsed().as_secs_f64());
                hot.committed.increment(1);
                if let Some(kind) = history {
                    hot.history[kind].increment(1);
                }
                for op in &change.ops {
                    hot.ops[op.kind() as usize].increment(1);
                }
            }
            Err(r) => {
                if r.code == ErrorCode::MemoryFull {
                    m::MemoryRefusal::Change.count();
                }
                count_reject(r)
            }
        }
        result
    }
}

/// Counts a change refused before or by the room.
pub fn count_reject(r: &Reject) {
    metrics::counter!(m::CHANGES_REJECTED, "code" => r.code.as_str()).increment(1);
}

/// One open connection in [`App::active`], while alive. Owned, so a WebSocket's count can move
/// from the task that upgraded it to the task that serves it.
pub struct Active(Arc<App>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A WebSocket's place under `--max-connections`, taken before the upgrade and released when the
/// connection (or the failed upgrade) ends.
pub struct WsSlot(Arc<App>);

impl Drop for WsSlot {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An HTTP connection's place under `--max-http-connections`, taken at accept and released when
/// the connection closes (after any lingering close) or is upgraded to a WebSocket.
pub struct HttpSlot(Arc<App>);

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.http_connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(m::HTTP_CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// The body bytes one request holds under `--max-body-bytes-in-flight`, counted as they arrive
/// (never from a declared `Content-Length`) and all released when the charge drops.
pub struct BodyCharge<'a> {
    app: &'a App,
    bytes: usize,
}

impl BodyCharge<'_> {
    /// Counts `n` more bytes; `false`, counting nothing, when they would go over the budget.
    pub fn add(&mut self, n: usize) -> bool {
        let max = self.app.config.max_body_bytes_in_flight;
        let fits = self
            .app
            .body_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&next| max == 0 || next <= max)
            })
            .is_ok();
        if fits {
            self.bytes += n;
            metrics::gauge!(m::HTTP_BODY_IN_FLIGHT).increment(n as f64);
        }
        fits
    }
}

impl Drop for BodyCharge<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.app.body_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
            metrics::gauge!(m::HTTP_BODY_IN_FLIGHT).decrement(self.bytes as f64);
        }
    }
}

/// How many log segments the file store keeps open: a quarter of the process's open-file limit
/// (the rest is for connections), between 64 and 65,536.
pub fn open_segment_cap() -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(limit / 4).unwrap_or(usize::MAX).clamp(64, 65_536)
}
