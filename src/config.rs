//! Server configuration: every flag, its default and unit, settable by `--flag` or `RINGSYNC_*`.
//!
//! Each default is written once: the room limits come from [`RoomConfig::DEFAULT`], the rest are
//! here. The binary reads flags and `RINGSYNC_*` variables ([`Config::parse`]); tests and embedders
//! use [`Config::default`] or [`Config::from_flags`], which ignore the environment, so a variable
//! in a developer's shell never changes what a test runs. Values are validated once at start
//! ([`Config::validate`]); an invalid one stops the server with a message that names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::room::RoomConfig;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `--fsync`: when a change's record is flushed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum FsyncMode {
    /// Before the ack (group commit).
    Always,
    /// At most every `--fsync-interval`.
    #[default]
    Batch,
    /// When the OS decides.
    Never,
}

/// ringsync: a delta-sync server (rooms of JSON state, deltas or snapshots per client).
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "RINGSYNC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Extra listener serving only /metrics (so the main port need not expose it).
    #[arg(long, env = "RINGSYNC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Changes kept per room for delta catch-up (ring size, entries).
    #[arg(long, env = "RINGSYNC_HISTORY", default_value_t = RoomConfig::DEFAULT.history, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub history: usize,

    /// Most memory one room's history may hold (bytes; 0 = unlimited): what its changes keep
    /// alive (decoded ops and inverses, touched paths, encoded frames: about 7x the encoded size
    /// for many small ops). The oldest changes are dropped beyond it, so clients that far behind
    /// get a snapshot. 16 MiB holds the full 1,024-change ring of changes up to ~16 KiB each;
    /// 64 rooms with full rings fill the default --max-memory, past which rings are shed anyway.
    #[arg(long, env = "RINGSYNC_HISTORY_BYTES", default_value_t = RoomConfig::DEFAULT.history_bytes)]
    pub history_bytes: usize,

    /// Memory budget for what rooms hold: states, histories, cached snapshots, broadcasts and
    /// presence, as the server accounts them (bytes; 0 = unlimited). Past 7/8 of it, rings shed
    /// their oldest changes and new rooms are refused (HTTP 503 / close 4008 `memory_full`); a
    /// change that does not fit is rejected with `memory_full`. Connections and sessions are not
    /// in it (bounded by --max-connections): 1 GiB of rooms plus 20,000 idle connections
    /// (~6 KiB each) fits a 2 GiB server.
    #[arg(long, env = "RINGSYNC_MAX_MEMORY", default_value_t = 1 << 30)]
    pub max_memory: usize,

    /// How long a disconnected session can be resumed (seconds).
    #[arg(long, env = "RINGSYNC_SESSION_TTL", default_value = "300", value_parser = parse_secs)]
    pub session_ttl: Duration,

    /// Server ping interval on idle connections (seconds).
    #[arg(long, env = "RINGSYNC_PING_INTERVAL", default_value = "15", value_parser = parse_secs)]
    pub ping_interval: Duration,

    /// Close a connection that sent nothing for this long (seconds).
    #[arg(long, env = "RINGSYNC_IDLE_TIMEOUT", default_value = "45", value_parser = parse_secs)]
    pub idle_timeout: Duration,

    /// Close a connection whose socket has not accepted a write for this long (seconds).
    #[arg(long, env = "RINGSYNC_WRITE_TIMEOUT", default_value = "30", value_parser = parse_secs)]
    pub write_timeout: Duration,

    /// Largest WebSocket message or HTTP body accepted (bytes).
    #[arg(long, env = "RINGSYNC_MAX_MESSAGE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
    pub max_message_bytes: u64,

    /// Largest presence object per session (bytes, encoded JSON).
    #[arg(long, env = "RINGSYNC_MAX_PRESENCE_BYTES", default_value_t = 4096)]
    pub max_presence_bytes: usize,

    /// At most one presence message per client per interval (milliseconds; 0 = immediately).
    #[arg(long, env = "RINGSYNC_PRESENCE_INTERVAL", default_value = "50", value_parser = parse_millis)]
    pub presence_interval: Duration,

    /// Most peers a room lists in presence (0 = all). Past it, further peers are counted, not
    /// listed: `welcome` carries the listed peers and `presenceCount`, presence messages `count`,
    /// and a peer is listed when a listed one leaves (docs/PROTOCOL.md, "Big rooms"). Listing
    /// everyone makes a join storm quadratic: each joiner is sent every peer, and every peer each
    /// joiner; 256 entries are a few KiB per `welcome`.
    #[arg(long, env = "RINGSYNC_PRESENCE_PEERS", default_value_t = RoomConfig::DEFAULT.presence_peers)]
    pub presence_peers: usize,

    /// Presence of a dropped connection is kept this long for a quick resume (seconds).
    #[arg(long, env = "RINGSYNC_PRESENCE_GRACE", default_value = "10", value_parser = parse_secs)]
    pub presence_grace: Duration,

    /// Undelivered broadcasts kept per room for slow readers (messages); older ones are dropped
    /// and counted. Only kept while someone in the room can still receive them.
    #[arg(long, env = "RINGSYNC_BROADCAST_BUFFER", default_value_t = RoomConfig::DEFAULT.broadcast_buffer, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub broadcast_buffer: usize,

    /// Most bytes of undelivered broadcasts kept per room (encoded; the newest is always kept;
    /// 0 = no limit besides --broadcast-buffer). 1 MiB is one largest message, or 64 of 16 KiB.
    #[arg(long, env = "RINGSYNC_BROADCAST_BUFFER_BYTES", default_value_t = RoomConfig::DEFAULT.broadcast_bytes)]
    pub broadcast_buffer_bytes: usize,

    /// Most simultaneous WebSocket connections (0 = unlimited). An idle connection costs ~6 KiB
    /// of the process plus its kernel socket buffers: 20,000 are ~120 MiB besides --max-memory.
    #[arg(long, env = "RINGSYNC_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Most connections in one room (0 = unlimited). Every commit wakes each of them (each join
    /// is sent at most --presence-peers peers' presence), so 5,000 is the most one room serves
    /// well on one core.
    #[arg(long, env = "RINGSYNC_MAX_ROOM_CLIENTS", default_value_t = 5_000)]
    pub max_room_clients: usize,

    /// Most rooms in memory (0 = unlimited). An empty room costs ~2 KiB, so 100,000 are ~200 MiB
    /// of --max-memory; rooms that hold data are bounded by --max-memory first.
    #[arg(long, env = "RINGSYNC_MAX_ROOMS", default_value_t = 100_000)]
    pub max_rooms: usize,

    /// Largest room state (bytes of encoded JSON, tracked exactly op by op; 0 = unlimited).
    #[arg(long, env = "RINGSYNC_MAX_STATE_BYTES", default_value_t = RoomConfig::DEFAULT.max_state_bytes)]
    pub max_state_bytes: usize,

    /// Most operations in one change (0 = unlimited).
    #[arg(long, env = "RINGSYNC_MAX_OPS_PER_CHANGE", default_value_t = RoomConfig::DEFAULT.max_ops_per_change)]
    pub max_ops_per_change: usize,

    /// Most sessions held, connected or resumable (sessions; 0 = unlimited). A new session beyond
    /// it drops the session disconnected longest ago (its resume then starts afresh); when every
    /// session is connected, the new connection is closed with 4007. ~1.4 KiB per idle session.
    #[arg(long, env = "RINGSYNC_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,

    /// With --memory-only: drop rooms with no connection and no write for this long, losing them
    /// (seconds; 0 = keep forever). Stored rooms are evicted by --evict-idle instead, and come back.
    #[arg(long, env = "RINGSYNC_ROOM_IDLE_TTL", default_value = "0", value_parser = parse_secs)]
    pub room_idle_ttl: Duration,

    /// A WebSocket upgrade (request headers to upgraded socket) must complete within this (seconds).
    #[arg(long, env = "RINGSYNC_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// An HTTP request body must arrive in full within this, counted from the end of its headers;
    /// else it is answered 408 and the connection closed (seconds).
    #[arg(long, env = "RINGSYNC_BODY_TIMEOUT", default_value = "30", value_parser = parse_secs)]
    pub body_timeout: Duration,

    /// Most bytes of HTTP request bodies held at once over all requests, counted as they arrive
    /// and released when each request ends; past it a body is refused with 503 (bytes; 0 =
    /// unlimited).
    #[arg(long, env = "RINGSYNC_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 << 20)]
    pub max_body_bytes_in_flight: usize,

    /// Most simultaneous HTTP connections, WebSocket upgrades in progress included; past it a new
    /// connection is answered 503 and closed. An upgraded WebSocket counts under
    /// --max-connections instead (connections; 0 = unlimited).
    #[arg(long, env = "RINGSYNC_MAX_HTTP_CONNECTIONS", default_value_t = 2048)]
    pub max_http_connections: usize,

    /// Time given to clients to drain on SIGTERM/SIGINT before exit (seconds).
    #[arg(long, env = "RINGSYNC_SHUTDOWN_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub shutdown_timeout: Duration,

    /// Origins allowed to use the rooms (WebSocket and HTTP API) from a browser: comma-separated
    /// exact origins (`https://game.example,http://localhost:5173`), or `*` for any. A request
    /// whose `Origin` header is present and not listed is refused with 403; requests without
    /// `Origin` (back-ends, curl) always pass. Also the origins CORS answers for.
    #[arg(long, env = "RINGSYNC_ALLOWED_ORIGINS", default_value = "*")]
    pub allowed_origins: String,

    /// Changes and broadcasts one WebSocket may send (messages per second, sustained; 0 =
    /// unlimited). Over it a change gets a `reject` with code `rate_limited` and `retryAfterMs`.
    #[arg(long, env = "RINGSYNC_RATE_CHANGES", default_value_t = 200)]
    pub rate_changes: u32,

    /// Changes and broadcasts one WebSocket may send at once before --rate-changes applies
    /// (messages).
    #[arg(long, env = "RINGSYNC_RATE_CHANGES_BURST", default_value_t = 1000)]
    pub rate_changes_burst: u32,

    /// Bytes one WebSocket may send (message payload bytes per second, sustained; 0 = unlimited).
    /// A message over it is answered `rate_limited` and not processed.
    #[arg(long, env = "RINGSYNC_RATE_INBOUND_BYTES", default_value_t = 2 << 20)]
    pub rate_inbound_bytes: u32,

    /// Bytes one WebSocket may send at once before --rate-inbound-bytes applies (bytes; at least
    /// --max-message-bytes).
    #[arg(long, env = "RINGSYNC_RATE_INBOUND_BYTES_BURST", default_value_t = 8 << 20)]
    pub rate_inbound_bytes_burst: u32,

    /// A WebSocket that has more than this many messages refused as `rate_limited` within
    /// --rate-limit-window is closed with 4429 (messages; 0 = never closed for it).
    #[arg(long, env = "RINGSYNC_RATE_LIMIT_STRIKES", default_value_t = 100)]
    pub rate_limit_strikes: u32,

    /// The window of --rate-limit-strikes (seconds).
    #[arg(long, env = "RINGSYNC_RATE_LIMIT_WINDOW", default_value = "10", value_parser = parse_secs)]
    pub rate_limit_window: Duration,

    /// New WebSocket connections from one IP address (connections per second, sustained; 0 =
    /// unlimited); over it the upgrade is answered 429 with `Retry-After`. Behind a reverse proxy
    /// every client has the proxy's address: set it to 0 there.
    #[arg(long, env = "RINGSYNC_RATE_IP_CONNECTIONS", default_value_t = 20)]
    pub rate_ip_connections: u32,

    /// New WebSocket connections from one IP address at once before --rate-ip-connections
    /// applies (connections).
    #[arg(long, env = "RINGSYNC_RATE_IP_CONNECTIONS_BURST", default_value_t = 100)]
    pub rate_ip_connections_burst: u32,

    /// Most WebSocket connections open from one IP address (connections; 0 = unlimited); over it
    /// the upgrade is answered 429 with `Retry-After`. Set it to 0 behind a reverse proxy.
    #[arg(long, env = "RINGSYNC_MAX_IP_CONNECTIONS", default_value_t = 1000)]
    pub max_ip_connections: usize,

    /// HTTP API requests per caller: per bearer token (`Authorization: Bearer ..`, kept only as a
    /// keyed hash), else per IP address (requests per second, sustained; 0 = unlimited); over it
    /// 429 with `Retry-After`.
    #[arg(long, env = "RINGSYNC_RATE_HTTP", default_value_t = 100)]
    pub rate_http: u32,

    /// HTTP API requests per caller at once before --rate-http applies (requests).
    #[arg(long, env = "RINGSYNC_RATE_HTTP_BURST", default_value_t = 200)]
    pub rate_http_burst: u32,

    /// Log format.
    #[arg(long, env = "RINGSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// HS256 secret for client tokens (JWT): a file read once at start (trailing whitespace
    /// trimmed; at least 32 bytes). With this or --jwt-public-key-file, every WebSocket and HTTP
    /// API request needs a token (see README "Security").
    #[arg(long, env = "RINGSYNC_JWT_SECRET_FILE", value_name = "PATH")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// Public key for client tokens (JWT), PEM: RSA (RS256/384/512), EC P-256/P-384
    /// (ES256/ES384) or Ed25519 (EdDSA), detected from the key. Read once at start.
    #[arg(long, env = "RINGSYNC_JWT_PUBLIC_KEY_FILE", value_name = "PATH")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Required `iss` claim of client tokens (checked only when set).
    #[arg(long, env = "RINGSYNC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim of client tokens (checked only when set).
    #[arg(long, env = "RINGSYNC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed when checking a token's `exp` and `nbf` (seconds).
    #[arg(long, env = "RINGSYNC_JWT_LEEWAY", default_value_t = 30, value_name = "SECONDS")]
    pub jwt_leeway: u64,

    /// Open mode (no --jwt-* key) on a non-loopback --listen address: every client may read and
    /// write every room. Without this flag the server refuses to start that way.
    #[arg(long, env = "RINGSYNC_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Where rooms are stored (an append-only log and snapshots per room, see README
    /// "Durability"); created if missing, locked against a second server. Relative to the working
    /// directory.
    #[arg(long, env = "RINGSYNC_DATA_DIR", default_value = "ringsync-data")]
    pub data_dir: PathBuf,

    /// Keep rooms in memory only, as before durable rooms: a restart loses every room and session.
    #[arg(long, env = "RINGSYNC_MEMORY_ONLY")]
    pub memory_only: bool,

    /// Store rooms in Redis at this URL (`redis://HOST:PORT/DB`) instead of --data-dir: the first
    /// step of cluster mode. A node owns a room through a lease in Redis (--owner-lease) and is
    /// the only one that commits to it; every append is fenced by that lease (README "Running
    /// a cluster").
    #[arg(long, env = "RINGSYNC_REDIS_URL", conflicts_with = "memory_only")]
    pub redis: Option<String>,

    /// How long a room's ownership lease in Redis lasts without renewal (milliseconds); renewed
    /// at a third of it. A room whose owner died is taken over by another node after at most this.
    #[arg(long, env = "RINGSYNC_OWNER_LEASE", default_value = "2000", value_parser = parse_millis)]
    pub owner_lease: Duration,

    /// When a change's record is fsynced: `always` (the ack waits for it, with group commit: an
    /// OS crash loses nothing acknowledged), `batch` (at most every --fsync-interval: an OS crash
    /// loses at most that window), `never` (the OS decides). Every mode writes the record before
    /// the ack, so a process crash loses nothing acknowledged.
    #[arg(long, env = "RINGSYNC_FSYNC", value_enum, default_value_t = FsyncMode::Batch)]
    pub fsync: FsyncMode,

    /// Most time between fsyncs in `--fsync batch` (milliseconds).
    #[arg(long, env = "RINGSYNC_FSYNC_INTERVAL", default_value = "1000", value_parser = parse_millis)]
    pub fsync_interval: Duration,

    /// A stored room writes a snapshot every this many changes (0 = only by bytes), so a restart
    /// replays at most that many.
    #[arg(long, env = "RINGSYNC_SNAPSHOT_EVERY", default_value_t = RoomConfig::DEFAULT.snapshot_every)]
    pub snapshot_every: u64,

    /// ... or every this many bytes of logged ops, whichever comes first (0 = only by count).
    #[arg(long, env = "RINGSYNC_SNAPSHOT_EVERY_BYTES", default_value_t = RoomConfig::DEFAULT.snapshot_bytes)]
    pub snapshot_every_bytes: usize,

    /// Changes kept on disk before the newest snapshot, for `GET .../changes` beyond the ring
    /// (changes; at least --history are always kept).
    #[arg(long, env = "RINGSYNC_RETAIN_HISTORY", default_value_t = 10_000)]
    pub retain_history: u64,

    /// A stored room with no connection and no write for this long is written out and evicted
    /// from memory, and loaded again on its next use (seconds; 0 = never evict).
    #[arg(long, env = "RINGSYNC_EVICT_IDLE", default_value = "300", value_parser = parse_secs)]
    pub evict_idle: Duration,

    /// A file holding the admin API's secret: `Authorization: Bearer <it>` grants every
    /// `/v1/admin/...` call. Read once at start (surrounding whitespace ignored); an empty or
    /// unreadable file stops the server. Without it, the admin API answers loopback peers only.
    #[arg(long, env = "RINGSYNC_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Test only: serve `GET /test/echo`, a WebSocket that echoes every message through the same
    /// read path and writer as a room connection (for the Autobahn TestSuite run in
    /// scripts/test.sh). Off by default; hidden from `--help` and deliberately without an
    /// environment variable, so no stray variable can turn it on in production.
    #[arg(long, hide = true)]
    pub test_echo_endpoint: bool,
}

impl Default for Config {
    /// Every flag at its default; the environment is not read.
    fn default() -> Self {
        Config::from_flags::<&str>(&[]).expect("the defaults parse")
    }
}

/// Seconds as a decimal number (`0.5`, `30`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0 * 365.0).contains(&v) {
        return Err(format!("{s} seconds is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let v: u64 = s.parse().map_err(|_| format!("{s:?} is not a whole number of milliseconds"))?;
    Ok(Duration::from_millis(v))
}

/// `--allowed-origins` as a list: `None` for `*` (any origin), else each exact origin
/// (`scheme://host[:port]`, compared byte for byte as browsers serialise them).
///
/// # Errors
/// A message naming the flag and the entry that is not an origin.
pub fn parse_origins(s: &str) -> Result<Option<Vec<String>>, String> {
    let entries: Vec<&str> = s.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if entries.contains(&"*") {
        return Ok(None);
    }
    if entries.is_empty() {
        return Err("--allowed-origins must list at least one origin, or be *".into());
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let rest = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://"));
        let ok = rest.is_some_and(|host| {
            !host.is_empty() && !host.contains(['/', '?', '#', '@', ' ']) && !host.ends_with(':')
        });
        if !ok {
            return Err(format!(
                "--allowed-origins: {e:?} is not an origin (scheme://host[:port], no path or trailing slash)"
            ));
        }
        out.push(e.to_ascii_lowercase());
    }
    Ok(Some(out))
}

impl Config {
    /// The defaults with `flags` (as on the command line, without the program name) applied;
    /// `RINGSYNC_*` variables are not read.
    ///
    /// # Errors
    /// clap's error for a flag it does not accept.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<Config, clap::Error> {
        let cmd = Config::command().mut_args(|a| a.env(None));
        let args = std::iter::once("ringsync").chain(flags.iter().map(AsRef::as_ref));
        Config::from_arg_matches(&cmd.try_get_matches_from(args)?)
    }

    /// Cross-field checks that clap cannot express.
    ///
    /// # Errors
    /// A message naming the offending flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.idle_timeout.is_zero() {
            return Err("--idle-timeout must be positive".into());
        }
        if self.ping_interval.is_zero() {
            return Err("--ping-interval must be positive".into());
        }
        if self.ping_interval >= self.idle_timeout {
            return Err("--ping-interval must be shorter than --idle-timeout".into());
        }
        if self.write_timeout.is_zero() {
            return Err("--write-timeout must be positive".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("--handshake-timeout must be positive".into());
        }
        if self.body_timeout.is_zero() {
            return Err("--body-timeout must be positive".into());
        }
        if self.max_body_bytes_in_flight != 0
            && (self.max_body_bytes_in_flight as u64) < self.max_message_bytes
        {
            return Err(
                "--max-body-bytes-in-flight must be 0 (unlimited) or at least --max-message-bytes".into()
            );
        }
        if self.owner_lease < Duration::from_millis(30) {
            return Err("--owner-lease must be at least 30 ms".into());
        }
        if !self.memory_only && self.snapshot_every == 0 && self.snapshot_every_bytes == 0 {
            return Err("--snapshot-every and --snapshot-every-bytes cannot both be 0".into());
        }
        if self.session_ttl < self.presence_grace {
            return Err("--session-ttl must be at least --presence-grace".into());
        }
        if self.max_presence_bytes < 2 {
            return Err("--max-presence-bytes must be at least 2".into());
        }
        for (rate, burst, flag) in [
            (self.rate_changes, self.rate_changes_burst, "--rate-changes-burst"),
            (self.rate_inbound_bytes, self.rate_inbound_bytes_burst, "--rate-inbound-bytes-burst"),
            (self.rate_ip_connections, self.rate_ip_connections_burst, "--rate-ip-connections-burst"),
            (self.rate_http, self.rate_http_burst, "--rate-http-burst"),
        ] {
            if rate != 0 && burst == 0 {
                return Err(format!("{flag} must be at least 1 when its rate is set"));
            }
        }
        if self.rate_inbound_bytes != 0 && u64::from(self.rate_inbound_bytes_burst) < self.max_message_bytes {
            return Err("--rate-inbound-bytes-burst must be at least --max-message-bytes".into());
        }
        if self.rate_limit_strikes != 0 && self.rate_limit_window.is_zero() {
            return Err("--rate-limit-window must be positive".into());
        }
        parse_origins(&self.allowed_origins)?;
        if self.max_memory != 0 && self.max_memory < 1 << 20 {
            return Err("--max-memory must be 0 (unlimited) or at least 1 MiB (1048576)".into());
        }
        if !self.tokens_required() && !self.allow_anonymous && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--listen {} is not a loopback address and no token key is set: anyone could read and \
                 write every room. Set --jwt-secret-file or --jwt-public-key-file, or pass \
                 --allow-anonymous to serve open rooms on purpose",
                self.listen
            ));
        }
        Ok(())
    }

    /// Whether clients need a token (a `--jwt-*` key is configured); else the server is in open
    /// mode.
    pub fn tokens_required(&self) -> bool {
        self.jwt_secret_file.is_some() || self.jwt_public_key_file.is_some()
    }

    /// Reads the admin token named by `--admin-token-file` (`None` without the flag).
    ///
    /// # Errors
    /// A message naming the flag when the file cannot be read or holds only whitespace.
    pub fn read_admin_token(&self) -> Result<Option<AdminToken>, String> {
        let Some(path) = &self.admin_token_file else { return Ok(None) };
        let bytes = std::fs::read(path)
            .map_err(|e| format!("--admin-token-file {}: cannot read it: {e}", path.display()))?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(format!("--admin-token-file {}: the file is empty", path.display()));
        }
        Ok(Some(AdminToken(token.into())))
    }

    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            history: self.history,
            max_state_bytes: self.max_state_bytes,
            history_bytes: self.history_bytes,
            max_ops_per_change: self.max_ops_per_change,
            broadcast_buffer: self.broadcast_buffer,
            broadcast_bytes: self.broadcast_buffer_bytes,
            snapshot_every: self.snapshot_every,
            snapshot_bytes: self.snapshot_every_bytes,
            session_ttl_ms: self.session_ttl.as_millis() as u64,
            presence_peers: self.presence_peers,
        }
    }
}

/// The admin API's secret (from `--admin-token-file`). Never printed: its `Debug` is redacted.
#[derive(Clone)]
pub struct AdminToken(Box<[u8]>);

impl AdminToken {
    /// The secret's bytes, for a constant-time comparison.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// A connection writer's timings, from `Config` (one in `App`, borrowed by every writer).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Presence messages go out on a grid of this interval (0 = immediately).
    pub presence_interval: Duration,
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    /// On shutdown, the close comes at a random moment within 80 % of this.
    pub shutdown_timeout: Duration,
    /// Close a connection whose client sent nothing for this long (see `writer::Writer::heard`).
    pub idle_timeout: Duration,
}

impl From<&Config> for WriterConfig {
    fn from(c: &Config) -> Self {
        WriterConfig {
            presence_interval: c.presence_interval,
            ping_interval: c.ping_interval,
            write_timeout: c.write_timeout,
            shutdown_timeout: c.shutdown_timeout,
            idle_timeout: c.idle_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.history, 1024);
        assert_eq!(c.presence_interval, Duration::from_millis(50));
    }

    #[test]
    fn origins_parse() {
        assert_eq!(parse_origins("*").unwrap(), None);
        assert_eq!(
            parse_origins("https://Game.example, http://localhost:5173").unwrap(),
            Some(vec!["https://game.example".to_owned(), "http://localhost:5173".to_owned()])
        );
        for bad in ["", "game.example", "https://", "https://a.example/x", "ftp://a", "https://a.example:"] {
            assert!(parse_origins(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Config::try_parse_from(["ringsync", "--history", "0"]).unwrap_err().to_string();
        assert!(e.contains("--history"), "{e}");
        let e = Config::try_parse_from(["ringsync", "--idle-timeout", "x"]).unwrap_err().to_string();
        assert!(e.contains("--idle-timeout"), "{e}");
        let c = Config::try_parse_from(["ringsync", "--ping-interval", "50"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--ping-interval"));
        let c = Config::from_flags(&["--body-timeout", "0"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--body-timeout"));
        let c = Config::from_flags(&["--max-body-bytes-in-flight", "1000"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--max-body-bytes-in-flight"));
        Config::from_flags(&["--max-body-bytes-in-flight", "0"]).unwrap().validate().unwrap();
        let c = Config::from_flags(&["--rate-inbound-bytes-burst", "1000"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--rate-inbound-bytes-burst"));
        let c = Config::from_flags(&["--rate-http-burst", "0"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--rate-http-burst"));
        Config::from_flags(&["--rate-http", "0", "--rate-http-burst", "0"]).unwrap().validate().unwrap();
        let c = Config::from_flags(&["--allowed-origins", "https://a.example/"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--allowed-origins"));
        let e = Config::from_flags(&["--history", "0"]).unwrap_err().to_string();
        assert!(e.contains("--history"), "{e}");
    }

    #[test]
    fn open_mode_is_refused_off_loopback_unless_asked_for() {
        let e = Config::from_flags(&["--listen", "0.0.0.0:8080"]).unwrap().validate().unwrap_err();
        for flag in ["--allow-anonymous", "--jwt-secret-file", "--jwt-public-key-file"] {
            assert!(e.contains(flag), "{e}");
        }
        for ok in [
            &["--listen", "0.0.0.0:8080", "--allow-anonymous"][..],
            &["--listen", "[::]:8080", "--jwt-secret-file", "/k"],
            &["--listen", "10.0.0.1:8080", "--jwt-public-key-file", "/k.pem"],
            &["--listen", "[::1]:8080"],
        ] {
            Config::from_flags(ok).unwrap().validate().unwrap();
        }
        assert_eq!(Config::default().jwt_leeway, 30);
    }

    #[test]
    fn the_admin_token_file_is_read_trimmed_and_must_hold_something() {
        assert!(Config::default().read_admin_token().unwrap().is_none());
        let dir = std::env::temp_dir();
        let path = dir.join(format!("ringsync-admin-token-{}", std::process::id()));
        std::fs::write(&path, "  s3cret\n").unwrap();
        let c = Config::from_flags(&["--admin-token-file", path.to_str().unwrap()]).unwrap();
        let token = c.read_admin_token().unwrap().unwrap();
        assert_eq!(token.expose(), b"s3cret");
        assert!(!format!("{token:?}").contains("s3cret"));
        std::fs::write(&path, " \n").unwrap();
        assert!(c.read_admin_token().unwrap_err().contains("--admin-token-file"));
        std::fs::remove_file(&path).unwrap();
        assert!(c.read_admin_token().unwrap_err().contains("--admin-token-file"));
    }

    #[test]
    fn room_defaults_are_the_room_config_defaults() {
        let c = Config::default().room_config();
        let d = RoomConfig::DEFAULT;
        assert_eq!(
            (c.history, c.max_state_bytes, c.history_bytes, c.max_ops_per_change, c.broadcast_buffer),
            (d.history, d.max_state_bytes, d.history_bytes, d.max_ops_per_change, d.broadcast_buffer)
        );
        assert_eq!(c.broadcast_bytes, d.broadcast_bytes);
    }

    #[test]
    fn every_limit_is_finite_by_default() {
        let c = Config::default();
        let limits = [
            ("--max-memory", c.max_memory),
            ("--max-rooms", c.max_rooms),
            ("--max-connections", c.max_connections),
            ("--max-room-clients", c.max_room_clients),
            ("--history-bytes", c.history_bytes),
            ("--broadcast-buffer-bytes", c.broadcast_buffer_bytes),
            ("--max-state-bytes", c.max_state_bytes),
            ("--max-ops-per-change", c.max_ops_per_change),
            ("--rate-changes", c.rate_changes as usize),
            ("--rate-inbound-bytes", c.rate_inbound_bytes as usize),
            ("--rate-limit-strikes", c.rate_limit_strikes as usize),
            ("--rate-ip-connections", c.rate_ip_connections as usize),
            ("--max-ip-connections", c.max_ip_connections),
            ("--rate-http", c.rate_http as usize),
        ];
        for (flag, v) in limits {
            assert!(v > 0, "{flag} defaults to unlimited");
        }
        let e = Config::from_flags(&["--max-memory", "1000"]).unwrap().validate().unwrap_err();
        assert!(e.contains("--max-memory"), "{e}");
    }
}
