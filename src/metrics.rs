//! Prometheus metrics: every name, its description, unit and buckets, in one place.
//!
//! [`install`] installs the `metrics` recorder once per process (later calls return the same
//! handle), then describes every metric — in that order, because handles taken before the
//! recorder exists stay no-ops forever. Call sites use the `metrics` macros with the constants
//! below, and only ever label by bounded enums (reason, kind, code, op, limit, outcome): never a
//! room, client or session id. Every label value comes from an enum's one label table (here, or
//! beside the enum it belongs to: `CloseReason`, `ErrorCode`, `OpKind`, `SnapshotReason`), and
//! [`install`] registers each at zero from the same tables. `/metrics` is rendered from the
//! returned handle by the server's own HTTP route.

use std::sync::OnceLock;

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS_OPEN: &str = "ringsync_connections_open";
pub const CONNECTIONS_ACCEPTED: &str = "ringsync_connections_accepted_total";
pub const CONNECTIONS_CLOSED: &str = "ringsync_connections_closed_total";
pub const CONNECTIONS_REFUSED: &str = "ringsync_connections_refused_total";
pub const SLOW_CLIENT_CLOSES: &str = "ringsync_slow_client_closes_total";
pub const SESSIONS_LIVE: &str = "ringsync_sessions_live";
pub const SESSIONS_EVICTED: &str = "ringsync_sessions_evicted_total";
pub const SESSION_CONNECTS: &str = "ringsync_session_connects_total";
pub const ROOMS: &str = "ringsync_rooms";
pub const ROOMS_EVICTED: &str = "ringsync_rooms_evicted_total";
pub const STORE_APPENDS: &str = "ringsync_store_appends_total";
pub const STORE_BYTES: &str = "ringsync_store_written_bytes_total";
pub const STORE_FSYNCS: &str = "ringsync_store_fsyncs_total";
pub const STORE_FSYNC_SECONDS: &str = "ringsync_store_fsync_seconds";
pub const STORE_FAILURES: &str = "ringsync_store_failures_total";
pub const STORE_DAMAGED: &str = "ringsync_store_damaged_total";
pub const STORE_SNAPSHOTS: &str = "ringsync_store_snapshots_total";
pub const STORE_SEGMENTS_DELETED: &str = "ringsync_store_segments_deleted_total";
pub const STORE_SEGMENTS_PARKED: &str = "ringsync_store_segments_parked_total";
pub const STORE_CHECKPOINTS: &str = "ringsync_store_wal_checkpoints_total";
pub const STORE_WAL_REPLAYED: &str = "ringsync_store_wal_replayed_total";
pub const STORE_QUEUE: &str = "ringsync_store_queue_length";
pub const REDIS_ROOMS_OWNED: &str = "ringsync_redis_rooms_owned";
pub const REDIS_APPENDS: &str = "ringsync_redis_appends_total";
pub const REDIS_APPEND_FAILURES: &str = "ringsync_redis_append_failures_total";
pub const REDIS_ROUNDS: &str = "ringsync_redis_rounds_total";
pub const REDIS_RENEWALS: &str = "ringsync_redis_lease_renewals_total";
pub const REDIS_LEASES_LOST: &str = "ringsync_redis_leases_lost_total";
pub const CLUSTER_FORWARDED: &str = "ringsync_cluster_forwarded_total";
pub const CLUSTER_FORWARDS_RECEIVED: &str = "ringsync_cluster_forwards_received_total";
pub const CLUSTER_FORWARD_REJECTS: &str = "ringsync_cluster_forward_rejects_total";
pub const CLUSTER_ROOMS_FOLLOWED: &str = "ringsync_cluster_rooms_followed";
pub const CLUSTER_RECORDS_FOLLOWED: &str = "ringsync_cluster_records_followed_total";
pub const CLUSTER_FOLLOW_LAG: &str = "ringsync_cluster_follow_lag_seconds";
pub const CLUSTER_TAKEOVERS: &str = "ringsync_cluster_takeovers_total";
pub const CLUSTER_GAP_RECORDS: &str = "ringsync_cluster_gap_records_total";
pub const CHANGES_COMMITTED: &str = "ringsync_changes_committed_total";
pub const CHANGES_REJECTED: &str = "ringsync_changes_rejected_total";
pub const OPS_APPLIED: &str = "ringsync_ops_applied_total";
pub const FRAMES_SENT: &str = "ringsync_frames_sent_total";
pub const BYTES_SENT: &str = "ringsync_sent_bytes_total";
pub const BYTES_RECEIVED: &str = "ringsync_received_bytes_total";
pub const SNAPSHOTS_SENT: &str = "ringsync_snapshots_sent_total";
pub const COMMIT_DURATION: &str = "ringsync_commit_duration_seconds";
pub const DELIVERY_LAG: &str = "ringsync_delivery_lag_seconds";
pub const CATCHUP_LAG: &str = "ringsync_catchup_lag_revisions";
pub const WRITE_PASS: &str = "ringsync_write_pass_offers_total";
pub const RING_ENTRIES: &str = "ringsync_ring_entries";
pub const RING_CAPACITY: &str = "ringsync_ring_capacity_entries";
pub const RING_FULL_ROOMS: &str = "ringsync_ring_full_rooms";
pub const PRESENCE_UPDATES: &str = "ringsync_presence_updates_total";
pub const PRESENCE_COALESCED: &str = "ringsync_presence_updates_coalesced_total";
pub const BROADCASTS: &str = "ringsync_broadcasts_total";
pub const BROADCASTS_DROPPED: &str = "ringsync_broadcasts_dropped_total";
pub const DECODE_ERRORS: &str = "ringsync_decode_errors_total";
pub const HTTP_REQUESTS: &str = "ringsync_http_requests_total";
pub const HTTP_CONNECTIONS_OPEN: &str = "ringsync_http_connections_open";
pub const HTTP_BODY_IN_FLIGHT: &str = "ringsync_http_body_in_flight_bytes";
pub const MEMORY_ACCOUNTED: &str = "ringsync_memory_accounted_bytes";
pub const MEMORY_LIMIT: &str = "ringsync_memory_limit_bytes";
pub const MEMORY_HISTORY: &str = "ringsync_memory_history_bytes";
pub const MEMORY_REFUSALS: &str = "ringsync_memory_refusals_total";
pub const HISTORY_SHED: &str = "ringsync_history_shed_bytes_total";
pub const ADMIN_ACTIONS: &str = "ringsync_admin_actions_total";
/// Committed undo, redo and `reverts` changes, by `kind` (also counted in `CHANGES_COMMITTED`).
pub const HISTORY_COMMITS: &str = "ringsync_history_commits_total";
/// The `kind` labels of [`HISTORY_COMMITS`].
pub const HISTORY_KINDS: [&str; 3] = ["undo", "redo", "revert"];
pub const RATE_LIMITED: &str = "ringsync_rate_limited_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static HOT: OnceLock<Hot> = OnceLock::new();
static NOOP: Hot = Hot::noop();

/// Handles for the metrics touched once per frame per recipient or once per commit, registered
/// once after the recorder is installed, so the hot paths do no registry look-up (a look-up
/// hashes the name and labels each time).
pub struct Hot {
    /// Frames and bytes sent, indexed like [`FrameKind`].
    pub frames: [Counter; 5],
    pub bytes: [Counter; 5],
    pub delivery_lag: Histogram,
    pub catchup_lag: Histogram,
    /// The room's write pass's offers, indexed like [`PassOutcome`].
    pub pass: [Counter; 3],
    pub commit_duration: Histogram,
    pub committed: Counter,
    /// Undo, redo and revert commits, indexed like [`HISTORY_KINDS`].
    pub history: [Counter; 3],
    /// Ops applied, indexed like [`OpKind::ALL`](crate::patch::OpKind::ALL).
    pub ops: [Counter; crate::patch::OpKind::ALL.len()],
}

/// What became of one offer of the room's write pass: the `outcome` label of
/// `ringsync_write_pass_offers_total`.
#[derive(Debug, Clone, Copy)]
pub enum PassOutcome {
    /// Written whole by the pass: the connection's task was not woken.
    Written = 0,
    /// Partly written by the pass; the connection's task wrote the rest.
    Partial = 1,
    /// The connection's task was woken to catch up by itself (behind, busy, or its own change
    /// frame needed).
    Woken = 2,
}

impl PassOutcome {
    pub const LABELS: [&'static str; 3] = ["written", "partial", "woken"];
}

/// Why a connection or request was refused: the `limit` label of
/// `ringsync_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxRoomClients,
    MaxRooms,
    /// `--max-sessions` reached with every session connected.
    MaxSessions,
    /// Request headers or the WebSocket upgrade not done within `--handshake-timeout`.
    HandshakeTimeout,
    /// A connection accepted while `--max-http-connections` were open.
    MaxHttpConnections,
    /// A request body refused because `--max-body-bytes-in-flight` were held.
    MaxBodyBytesInFlight,
    /// A request body not received within `--body-timeout`.
    BodyTimeout,
    /// The memory budget (`--max-memory`) admits no new room.
    MaxMemory,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::MaxConnections,
        Refusal::MaxRoomClients,
        Refusal::MaxRooms,
        Refusal::MaxSessions,
        Refusal::HandshakeTimeout,
        Refusal::MaxHttpConnections,
        Refusal::MaxBodyBytesInFlight,
        Refusal::BodyTimeout,
        Refusal::MaxMemory,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxRoomClients => "max_room_clients",
            Refusal::MaxRooms => "max_rooms",
            Refusal::MaxSessions => "max_sessions",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::MaxHttpConnections => "max_http_connections",
            Refusal::MaxBodyBytesInFlight => "max_body_bytes_in_flight",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::MaxMemory => "max_memory",
        }
    }

    /// Counts one refusal.
    pub fn count(self) {
        metrics::counter!(CONNECTIONS_REFUSED, "limit" => self.label()).increment(1);
    }
}

/// What the memory budget refused: the `what` label of `ringsync_memory_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRefusal {
    /// A new room (HTTP 503 or WebSocket close 4008).
    Room,
    /// A change (`memory_full` reject).
    Change,
}

impl MemoryRefusal {
    pub const ALL: [MemoryRefusal; 2] = [MemoryRefusal::Room, MemoryRefusal::Change];

    pub fn label(self) -> &'static str {
        match self {
            MemoryRefusal::Room => "room",
            MemoryRefusal::Change => "change",
        }
    }

    /// Counts one refusal.
    pub fn count(self) {
        metrics::counter!(MEMORY_REFUSALS, "what" => self.label()).increment(1);
    }
}

/// An admin API call served: the `action` label of `ringsync_admin_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    List,
    Details,
    Kick,
    Close,
    Delete,
}

impl AdminAction {
    pub const ALL: [AdminAction; 5] =
        [AdminAction::List, AdminAction::Details, AdminAction::Kick, AdminAction::Close, AdminAction::Delete];

    pub fn label(self) -> &'static str {
        match self {
            AdminAction::List => "list",
            AdminAction::Details => "details",
            AdminAction::Kick => "kick",
            AdminAction::Close => "close",
            AdminAction::Delete => "delete",
        }
    }

    /// Counts one action carried out.
    pub fn count(self) {
        metrics::counter!(ADMIN_ACTIONS, "action" => self.label()).increment(1);
    }
}

/// Which rate limit refused something: the `limit` label of `ringsync_rate_limited_total` (the
/// limits themselves live in `guard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// A change or broadcast over `--rate-changes` on one WebSocket.
    Changes,
    /// A message over `--rate-inbound-bytes` on one WebSocket.
    InboundBytes,
    /// A WebSocket closed with 4429 for going past `--rate-limit-strikes`.
    Strikes,
    /// A WebSocket upgrade over `--rate-ip-connections` from one IP.
    IpConnectionRate,
    /// A WebSocket upgrade over `--max-ip-connections` open from one IP.
    IpConnections,
    /// An HTTP API request over `--rate-http` from one caller (bearer token, else IP).
    HttpRequests,
}

impl RateLimit {
    pub const ALL: [RateLimit; 6] = [
        RateLimit::Changes,
        RateLimit::InboundBytes,
        RateLimit::Strikes,
        RateLimit::IpConnectionRate,
        RateLimit::IpConnections,
        RateLimit::HttpRequests,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RateLimit::Changes => "changes",
            RateLimit::InboundBytes => "inbound_bytes",
            RateLimit::Strikes => "strikes",
            RateLimit::IpConnectionRate => "ip_connection_rate",
            RateLimit::IpConnections => "ip_connections",
            RateLimit::HttpRequests => "http_requests",
        }
    }

    /// Counts one refusal.
    pub fn count(self) {
        metrics::counter!(RATE_LIMITED, "limit" => self.label()).increment(1);
    }
}

/// How a connection's session started: the `outcome` label of `ringsync_session_connects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// A new session.
    New,
    /// A resumed session brought up to date by a delta.
    Delta,
    /// A resumed session that needed a snapshot.
    Snapshot,
}

impl ConnectOutcome {
    pub const ALL: [ConnectOutcome; 3] =
        [ConnectOutcome::New, ConnectOutcome::Delta, ConnectOutcome::Snapshot];

    pub fn label(self) -> &'static str {
        match self {
            ConnectOutcome::New => "new",
            ConnectOutcome::Delta => "delta",
            ConnectOutcome::Snapshot => "snapshot",
        }
    }
}

/// Frame kinds, the `kind` label of frames and bytes sent.
#[derive(Debug, Clone, Copy)]
pub enum FrameKind {
    Delta = 0,
    Snapshot = 1,
    Presence = 2,
    Broadcast = 3,
    Control = 4,
}

impl FrameKind {
    pub const LABELS: [&'static str; 5] = ["delta", "snapshot", "presence", "broadcast", "control"];
}

impl Hot {
    const fn noop() -> Self {
        const C: Counter = Counter::noop();
        Hot {
            frames: [C; 5],
            bytes: [C; 5],
            delivery_lag: Histogram::noop(),
            catchup_lag: Histogram::noop(),
            pass: [C; 3],
            commit_duration: Histogram::noop(),
            committed: C,
            history: [C; 3],
            ops: [C; crate::patch::OpKind::ALL.len()],
        }
    }

    fn register() -> Self {
        Hot {
            frames: FrameKind::LABELS.map(|k| metrics::counter!(FRAMES_SENT, "kind" => k)),
            bytes: FrameKind::LABELS.map(|k| metrics::counter!(BYTES_SENT, "kind" => k)),
            delivery_lag: metrics::histogram!(DELIVERY_LAG),
            catchup_lag: metrics::histogram!(CATCHUP_LAG),
            pass: PassOutcome::LABELS.map(|o| metrics::counter!(WRITE_PASS, "outcome" => o)),
            commit_duration: metrics::histogram!(COMMIT_DURATION),
            committed: metrics::counter!(CHANGES_COMMITTED),
            history: HISTORY_KINDS.map(|k| metrics::counter!(HISTORY_COMMITS, "kind" => k)),
            ops: crate::patch::OpKind::ALL.map(|op| metrics::counter!(OPS_APPLIED, "op" => op.as_str())),
        }
    }

    /// Counts one frame of `kind` carrying `len` payload bytes.
    pub fn sent(&self, kind: FrameKind, len: usize) {
        self.frames[kind as usize].increment(1);
        self.bytes[kind as usize].increment(len as u64);
    }
}

/// The hot-path handles (no-ops until [`install`] has run).
pub fn hot() -> &'static Hot {
    HOT.get().unwrap_or(&NOOP)
}

/// Installs the recorder (once per process) and describes every metric.
///
/// # Panics
/// When another `metrics` recorder was installed first by someone else.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(COMMIT_DURATION.into()),
                    &[1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 0.025],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DELIVERY_LAG.into()),
                        &[1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CATCHUP_LAG.into()),
                        &[1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("ringsync installs the only metrics recorder");
            describe();
            initialise();
            let _ = HOT.set(Hot::register());
            handle
        })
        .clone()
}

/// Registers every counter with each of its label values at zero, so a scrape shows the whole
/// catalogue (rates work from the first sample, dashboards never query a missing series).
fn initialise() {
    use crate::close::CloseReason;
    use crate::patch::OpKind;
    use crate::protocol::ErrorCode;
    use crate::room::SnapshotReason;
    for name in [
        CONNECTIONS_ACCEPTED,
        SLOW_CLIENT_CLOSES,
        ROOMS_EVICTED,
        SESSIONS_EVICTED,
        CHANGES_COMMITTED,
        BYTES_RECEIVED,
        PRESENCE_UPDATES,
        PRESENCE_COALESCED,
        BROADCASTS,
        BROADCASTS_DROPPED,
        HISTORY_SHED,
        STORE_APPENDS,
        STORE_BYTES,
        STORE_FSYNCS,
        STORE_FAILURES,
        STORE_DAMAGED,
        STORE_SNAPSHOTS,
        STORE_SEGMENTS_DELETED,
        STORE_SEGMENTS_PARKED,
        STORE_CHECKPOINTS,
        STORE_WAL_REPLAYED,
        REDIS_APPENDS,
        REDIS_APPEND_FAILURES,
        REDIS_ROUNDS,
        REDIS_RENEWALS,
        REDIS_LEASES_LOST,
        CLUSTER_FORWARDED,
        CLUSTER_FORWARDS_RECEIVED,
        CLUSTER_FORWARD_REJECTS,
        CLUSTER_RECORDS_FOLLOWED,
        CLUSTER_TAKEOVERS,
        CLUSTER_GAP_RECORDS,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(CLUSTER_ROOMS_FOLLOWED).set(0.0);
    metrics::gauge!(CLUSTER_FOLLOW_LAG).set(0.0);
    metrics::gauge!(REDIS_ROOMS_OWNED).set(0.0);
    metrics::gauge!(STORE_FSYNC_SECONDS).set(0.0);
    metrics::gauge!(STORE_QUEUE).set(0.0);
    for what in MemoryRefusal::ALL {
        metrics::counter!(MEMORY_REFUSALS, "what" => what.label()).increment(0);
    }
    for reason in CloseReason::ALL {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.label()).increment(0);
    }
    for limit in Refusal::ALL {
        metrics::counter!(CONNECTIONS_REFUSED, "limit" => limit.label()).increment(0);
    }
    for action in AdminAction::ALL {
        metrics::counter!(ADMIN_ACTIONS, "action" => action.label()).increment(0);
    }
    for limit in RateLimit::ALL {
        metrics::counter!(RATE_LIMITED, "limit" => limit.label()).increment(0);
    }
    for outcome in ConnectOutcome::ALL {
        metrics::counter!(SESSION_CONNECTS, "outcome" => outcome.label()).increment(0);
    }
    for outcome in PassOutcome::LABELS {
        metrics::counter!(WRITE_PASS, "outcome" => outcome).increment(0);
    }
    for code in ErrorCode::REJECTS.iter().copied() {
        metrics::counter!(CHANGES_REJECTED, "code" => code.as_str()).increment(0);
    }
    for op in OpKind::ALL {
        metrics::counter!(OPS_APPLIED, "op" => op.as_str()).increment(0);
    }
    for kind in FrameKind::LABELS {
        metrics::counter!(FRAMES_SENT, "kind" => kind).increment(0);
        metrics::counter!(BYTES_SENT, "kind" => kind).increment(0);
    }
    for reason in SnapshotReason::ALL {
        metrics::counter!(SNAPSHOTS_SENT, "reason" => reason.as_str()).increment(0);
    }
    for kind in HISTORY_KINDS {
        metrics::counter!(HISTORY_COMMITS, "kind" => kind).increment(0);
    }
    metrics::counter!(DECODE_ERRORS, "code" => ErrorCode::BadMessage.as_str()).increment(0);
    metrics::counter!(DECODE_ERRORS, "code" => ErrorCode::Invalid.as_str()).increment(0);
    metrics::gauge!(CONNECTIONS_OPEN).set(0.0);
    metrics::gauge!(HTTP_CONNECTIONS_OPEN).set(0.0);
    metrics::gauge!(HTTP_BODY_IN_FLIGHT).set(0.0);
    metrics::gauge!(SESSIONS_LIVE).set(0.0);
    for gauge in [MEMORY_ACCOUNTED, MEMORY_LIMIT, MEMORY_HISTORY] {
        metrics::gauge!(gauge).set(0.0);
    }
}

fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections currently open");
    describe_counter!(CONNECTIONS_ACCEPTED, "WebSocket connections accepted");
    describe_counter!(CONNECTIONS_CLOSED, "WebSocket connections closed, by close reason");
    describe_counter!(CONNECTIONS_REFUSED, "Connections or HTTP request bodies refused by a limit, by limit");
    describe_counter!(SLOW_CLIENT_CLOSES, "Connections closed because the client stopped accepting writes");
    describe_gauge!(SESSIONS_LIVE, "Sessions held (connected or resumable)");
    describe_counter!(
        SESSIONS_EVICTED,
        "Disconnected sessions dropped before --session-ttl to stay under --max-sessions"
    );
    describe_counter!(
        SESSION_CONNECTS,
        "Connections by how the session started: new, or resumed with a delta or a snapshot"
    );
    describe_gauge!(ROOMS, "Rooms in memory");
    describe_counter!(ROOMS_EVICTED, "Idle rooms dropped from memory");
    describe_counter!(CHANGES_COMMITTED, "Changes committed");
    describe_counter!(CHANGES_REJECTED, "Changes rejected, by reject code");
    describe_counter!(OPS_APPLIED, "Operations applied in committed changes, by op");
    describe_counter!(FRAMES_SENT, "WebSocket frames sent, by kind");
    describe_counter!(BYTES_SENT, Unit::Bytes, "WebSocket payload bytes sent, by kind");
    describe_counter!(BYTES_RECEIVED, Unit::Bytes, "WebSocket payload bytes received");
    describe_counter!(SNAPSHOTS_SENT, "Snapshots sent, by reason");
    describe_histogram!(COMMIT_DURATION, Unit::Seconds, "Time to validate, apply and record one change");
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "Time from commit to the frame carrying it being written"
    );
    describe_histogram!(CATCHUP_LAG, "Revisions a connection was behind when its writer caught it up");
    describe_counter!(
        WRITE_PASS,
        "Deltas the room's write pass offered connections, by outcome: written whole by the pass, \
         partly written (the connection's task wrote the rest), or woken (the task caught up itself)"
    );
    describe_gauge!(RING_ENTRIES, "Changes held in all rooms' rings");
    describe_gauge!(RING_CAPACITY, "Total ring capacity over all rooms");
    describe_gauge!(RING_FULL_ROOMS, "Rooms whose ring is full (older changes need snapshots)");
    describe_counter!(PRESENCE_UPDATES, "Presence updates received");
    describe_counter!(PRESENCE_COALESCED, "Presence updates superseded before a slow reader saw them");
    describe_counter!(BROADCASTS, "Broadcasts received");
    describe_counter!(BROADCASTS_DROPPED, "Broadcasts a slow reader never received");
    describe_counter!(DECODE_ERRORS, "Client messages that could not be decoded, by code");
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by status class");
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "HTTP connections open (not counting upgraded WebSockets)");
    describe_gauge!(
        HTTP_BODY_IN_FLIGHT,
        Unit::Bytes,
        "Bytes of HTTP request bodies received and held by requests still being handled"
    );
    describe_gauge!(
        MEMORY_ACCOUNTED,
        Unit::Bytes,
        "Memory the rooms hold as accounted against --max-memory (state, history, caches, broadcasts, presence)"
    );
    describe_gauge!(MEMORY_LIMIT, Unit::Bytes, "The memory budget, --max-memory (0 = unlimited)");
    describe_gauge!(MEMORY_HISTORY, Unit::Bytes, "The part of the accounted memory the rooms' rings hold");
    describe_counter!(
        MEMORY_REFUSALS,
        "New rooms and changes refused because the memory budget is full, by what"
    );
    describe_counter!(RATE_LIMITED, "Messages, connections and requests refused by a rate limit, by limit");
    describe_counter!(
        HISTORY_SHED,
        Unit::Bytes,
        "History (oldest changes) shed because the memory budget was tight"
    );
    describe_counter!(ADMIN_ACTIONS, "Admin API calls carried out, by action");
    describe_counter!(HISTORY_COMMITS, "Undo, redo and reverts changes committed, by kind");
    describe_counter!(STORE_APPENDS, "Change records written to the rooms' logs");
    describe_counter!(STORE_BYTES, Unit::Bytes, "Bytes written to the data directory (logs and snapshots)");
    describe_counter!(STORE_FSYNCS, "fsyncs of log segments and snapshots");
    describe_gauge!(
        STORE_FSYNC_SECONDS,
        Unit::Seconds,
        "Time spent in fsync since the server started (a running total: rate() it; a gauge because the metrics crate's counters are integers)"
    );
    describe_counter!(
        STORE_FAILURES,
        "Writes and fsyncs that failed (disk full, I/O error): their changes were rejected unavailable"
    );
    describe_counter!(
        STORE_DAMAGED,
        "Torn or corrupt records and snapshots found (and cut) when loading rooms"
    );
    describe_counter!(STORE_SNAPSHOTS, "Room snapshots written");
    describe_counter!(STORE_SEGMENTS_DELETED, "Log segments deleted once a newer snapshot covered them");
    describe_counter!(
        STORE_SEGMENTS_PARKED,
        "Log segments closed to keep the store's open files within its cap (reopened on their next write)"
    );
    describe_counter!(
        STORE_CHECKPOINTS,
        "Checkpoints of the write-ahead log (--fsync always): segments synced, the log started afresh"
    );
    describe_counter!(
        STORE_WAL_REPLAYED,
        "Records appended again from the write-ahead log at start, after an unclean stop had lost them from their segments"
    );
    describe_gauge!(STORE_QUEUE, "Records and snapshots waiting for the store's writer thread");
    describe_gauge!(REDIS_ROOMS_OWNED, "Rooms whose ownership lease this node holds in Redis (--redis)");
    describe_counter!(REDIS_APPENDS, "Change records appended to the rooms' Redis streams (--redis)");
    describe_counter!(
        REDIS_APPEND_FAILURES,
        "Change records Redis did not take (fenced by another node's lease, or Redis unreachable): rejected unavailable"
    );
    describe_counter!(REDIS_ROUNDS, "Pipelined rounds the Redis store's thread sent (--redis)");
    describe_counter!(REDIS_RENEWALS, "Ownership leases renewed in Redis (--redis)");
    describe_counter!(
        REDIS_LEASES_LOST,
        "Rooms this node lost to another node (lease lapsed or taken, or appends fenced): unloaded, clients closed with 4013"
    );
    describe_counter!(
        CLUSTER_FORWARDED,
        "Changes this node's clients sent that it forwarded to the room's owner node (--redis)"
    );
    describe_counter!(
        CLUSTER_FORWARDS_RECEIVED,
        "Forwarded changes this node received as a room's owner (committed, or answered with a reject)"
    );
    describe_counter!(
        CLUSTER_FORWARD_REJECTS,
        "Rejects an owner node sent back for changes this node forwarded, delivered to their authors"
    );
    describe_gauge!(
        CLUSTER_ROOMS_FOLLOWED,
        "Rooms this node follows: another node owns them, this one serves its own clients"
    );
    describe_counter!(
        CLUSTER_RECORDS_FOLLOWED,
        "Records taken from the owners' feeds and streams into follower copies"
    );
    describe_counter!(
        CLUSTER_GAP_RECORDS,
        "Records followers read from the rooms' streams because their feed missed them (a reconnect, or right after a load)"
    );
    describe_counter!(
        CLUSTER_TAKEOVERS,
        "Rooms this node followed and took over in place when their owner's lease lapsed (clients stayed connected)"
    );
    describe_gauge!(
        CLUSTER_FOLLOW_LAG,
        "Stream lag: seconds from the owner's commit to a follower copy taking the change (the newest one taken)"
    );
}

/// Publishes the file store's statistics (the sweep calls it once a second).
pub fn publish_store(s: &crate::store::file::StatsSnapshot) {
    metrics::counter!(STORE_APPENDS).absolute(s.appends_written);
    metrics::counter!(STORE_BYTES).absolute(s.bytes_written);
    metrics::counter!(STORE_FSYNCS).absolute(s.fsyncs);
    metrics::gauge!(STORE_FSYNC_SECONDS).set(s.fsync_nanos as f64 / 1e9);
    metrics::counter!(STORE_FAILURES).absolute(s.write_failures + s.fsync_failures);
    metrics::counter!(STORE_DAMAGED).absolute(s.damaged_records + s.damaged_snapshots);
    metrics::counter!(STORE_SNAPSHOTS).absolute(s.snapshots_written);
    metrics::counter!(STORE_SEGMENTS_DELETED).absolute(s.segments_deleted);
    metrics::counter!(STORE_SEGMENTS_PARKED).absolute(s.segments_parked);
    metrics::counter!(STORE_CHECKPOINTS).absolute(s.checkpoints);
    metrics::counter!(STORE_WAL_REPLAYED).absolute(s.wal_replayed);
    metrics::gauge!(STORE_QUEUE).set(s.queue_len as f64);
}

/// Publishes the Redis store's counters (called once a second by the sweep).
pub fn publish_redis(s: &crate::store::redis::StatsSnapshot) {
    metrics::gauge!(REDIS_ROOMS_OWNED).set(s.rooms_owned as f64);
    metrics::counter!(REDIS_APPENDS).absolute(s.appends);
    metrics::counter!(REDIS_APPEND_FAILURES).absolute(s.append_failures);
    metrics::counter!(REDIS_ROUNDS).absolute(s.rounds);
    metrics::counter!(REDIS_RENEWALS).absolute(s.renewals);
    metrics::counter!(REDIS_LEASES_LOST).absolute(s.leases_lost);
    metrics::gauge!(CLUSTER_ROOMS_FOLLOWED).set(s.rooms_followed as f64);
    metrics::counter!(CLUSTER_GAP_RECORDS).absolute(s.gap_records);
}

#[cfg(test)]
mod tests {
    use crate::patch::OpKind;

    #[test]
    fn an_op_kind_indexes_its_own_handle() {
        // `Hot::ops` is built from `OpKind::ALL` and indexed by `kind as usize`.
        for (i, kind) in OpKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{}", kind.as_str());
        }
    }
}
