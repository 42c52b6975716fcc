//! The state every handler shares ([`App`]), the RAII guards that count what is open against the
//! server's limits, and the one commit path that WebSocket and HTTP writes both take.
//!
//! Invariants: `active` counts open HTTP connections plus upgraded WebSockets (shutdown is done
//! when it reaches zero); `websockets` never exceeds `--max-connections`, because a slot is taken
//! atomically before the upgrade and released only when its [`WsSlot`] drops. The rooms share
//! one memory [`Budget`] of `--max-memory`; before each write the rings are asked to shed if it
//! is tight ([`Rooms::relieve`]), and what it refuses is counted here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::Config;
use crate::ids::RoomId;
use crate::memory::Budget;
use crate::metrics as m;
use crate::protocol::{ErrorCode, Reject};
use crate::room::{Change, ChangeRequest, Room};
use crate::rooms::{NoNewRoom, Rooms};
use crate::session::Sessions;

/// Everything the request handlers share.
pub struct App {
    pub config: Config,
    pub rooms: Rooms,
    pub sessions: Arc<Sessions>,
    pub metrics: PrometheusHandle,
    shutdown_tx: watch::Sender<bool>,
    draining: AtomicBool,
    /// Open HTTP connections plus upgraded WebSockets, so shutdown knows when it is done.
    active: AtomicUsize,
    /// WebSockets open or being upgraded, for `--max-connections`.
    websockets: AtomicUsize,
}

impl App {
    /// Builds the shared state (installing the metrics recorder on first use in the process).
    pub fn new(config: Config) -> Arc<App> {
        Arc::new(App {
            rooms: Rooms::with_budget(config.room_config(), config.max_rooms, Budget::new(config.max_memory)),
            sessions: Arc::new(Sessions::default()),
            metrics: m::install(),
            shutdown_tx: watch::channel(false).0,
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
            config,
        })
    }

    /// A receiver that changes once, when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking new work and tells every connection to wind down.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.shutdown_tx.send_replace(true);
    }

    /// Open HTTP connections plus WebSockets.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Counts one open connection in [`App::active`] until the guard drops.
    pub fn hold_active(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(&self.active)
    }

    /// A place under `--max-connections` (0 = unlimited), or `None` when the server is full.
    pub fn websocket_slot(self: &Arc<Self>) -> Option<WsSlot> {
        let max = self.config.max_connections;
        self.websockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .ok()
            .map(|_| WsSlot(self.clone()))
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

    /// Once a second: sheds history if memory is tight, and publishes the memory gauges.
    pub fn sweep_memory(&self) {
        self.rooms.relieve();
        let budget = self.rooms.budget();
        metrics::gauge!(m::MEMORY_ACCOUNTED).set(budget.used() as f64);
        metrics::gauge!(m::MEMORY_LIMIT).set(budget.limit() as f64);
        metrics::gauge!(m::MEMORY_HISTORY).set(budget.history() as f64);
        metrics::counter!(m::HISTORY_SHED).absolute(budget.shed_total());
    }

    /// Commits a change to `room`, recording the outcome in the metrics. Every write, over a
    /// WebSocket or HTTP, goes through here.
    ///
    /// # Errors
    /// The room's [`Reject`]; the room is then unchanged.
    pub fn commit(&self, room: &Room, req: ChangeRequest) -> Result<Arc<Change>, Reject> {
        let started = Instant::now();
        self.rooms.relieve();
        let result = room.commit(req);
        match &result {
            Ok(change) => {
                metrics::histogram!(m::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
                metrics::counter!(m::CHANGES_COMMITTED).increment(1);
                for op in &change.ops {
                    metrics::counter!(m::OPS_APPLIED, "op" => op.kind().as_str()).increment(1);
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

/// One open connection in [`App::active`], while alive.
pub struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
