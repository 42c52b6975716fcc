//! `ringsync-load`: a load generator that speaks ringsync's protocol v1 over real sockets.
//!
//! Scenarios: `fanout` (N readers, one writer at M changes/s), `rooms` (R rooms × N readers,
//! one writer each), `presence` (N clients each moving a cursor at F Hz), `reconnect` (N readers
//! drop at once and resume their sessions), `idle` (server memory per connection), `overload`
//! (one room whose readers partly cannot keep up with the writer: are the fast ones slowed, do the
//! slow ones still end at the final revision, does the server's memory stay bounded). Each run
//! prints a table, appends a JSON line to `--json FILE`, and `report FILE...` turns those lines
//! into the Markdown tables of `docs/BENCHMARKS.md` (medians per label).
//!
//! Built to cost the server's core as little as possible from the other one: a current-thread
//! runtime, one task per group of `--group-size` connections, a hand-rolled RFC 6455 client
//! (`ws`), and frames scanned in place for the few fields that matter (`scan`) instead of parsed.
//! Writers put a timestamp in every change value (µs since the load generator started) and
//! readers take commit→receive latency from it; since writers and readers share one clock, the
//! figure is send → server commit → fan-out → receive. Load is bounded in connections, rate and
//! time, and goes to loopback addresses only.

mod conn;
mod ctx;
mod group;
mod procfs;
mod report;
mod role;
mod scan;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use conn::Conn;
use ctx::{Ctx, Snap};
use group::{GroupMsg, GroupTx};
use role::{Role, filler_for};

/// Most connections one run may open.
const MAX_CONNECTIONS: usize = 60_000;
/// Longest measurement window (seconds).
const MAX_DURATION: f64 = 600.0;

#[derive(Debug, Parser)]
#[command(
    name = "ringsync-load",
    version,
    about = "Load generator for ringsync (protocol v1, loopback only)"
)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Args)]
struct Opts {
    /// Server address; loopback only.
    #[arg(long, global = true, env = "RINGSYNC_LOAD_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The server's process id, for its CPU time and RSS from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Measurement window (seconds).
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Load before the window starts (seconds).
    #[arg(long, global = true, default_value_t = 2.0)]
    warmup: f64,
    /// Connection attempts in flight at once. More than the server's listen backlog (128 for a
    /// tokio listener bound the default way) overflows its accept queue, and the dropped SYNs are
    /// retried only after 1 s.
    #[arg(long, global = true, default_value_t = 128)]
    connect_concurrency: usize,
    /// Connections driven by one task.
    #[arg(long, global = true, default_value_t = 64)]
    group_size: usize,
    /// Runtime threads (1 = current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Append each run as a JSON line to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Name of the run in reports (runs with the same label are summarised by their median).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Room names start with this (a random suffix keeps runs apart).
    #[arg(long, global = true, default_value = "load")]
    room_prefix: String,
    /// Give up connecting, syncing or converging after this long (seconds).
    #[arg(long, global = true, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Debug, Clone, Subcommand)]
enum Cmd {
    /// One room: N readers, one writer sending M changes/s.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Changes per second from the writer.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Size of one change entry as readers receive it (bytes, at least ~90).
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// R rooms × N readers, one writer per room.
    Rooms {
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Readers per room.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Changes per second per room.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// One room: N clients each moving a cursor (presence update) F times a second.
    Presence {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        hz: f64,
    },
    /// One room: N readers and a writer; after the warm-up every reader drops at once and
    /// resumes its session (`?session&epoch&since`) after `offline-ms`.
    Reconnect {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// How long the readers stay away before resuming (milliseconds).
        #[arg(long, default_value_t = 0)]
        offline_ms: u64,
    },
    /// One room: N readers, a share of them slow (they stop reading for `pause-ms`, then read
    /// for `read-ms`, over and over), and one writer at M changes/s. Reports the fast readers'
    /// throughput and latency, whether every reader ends at the writer's final revision, what
    /// the slow ones received, and the server's peak RSS (sampled every 100 ms).
    Overload {
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// Share of the readers that are slow (0 to 1).
        #[arg(long, default_value_t = 0.2)]
        slow_share: f64,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 1000)]
        payload: usize,
        /// How long a slow reader stops reading at a time (milliseconds).
        #[arg(long, default_value_t = 2000)]
        pause_ms: u64,
        /// How long it then reads before pausing again (milliseconds).
        #[arg(long, default_value_t = 100)]
        read_ms: u64,
        /// Receive buffer of a slow reader's socket (KiB; 0 = the kernel's default, which on
        /// loopback grows to megabytes and hides the backlog from the server).
        #[arg(long, default_value_t = 64)]
        rcvbuf_kb: u32,
    },
    /// Connect N clients that only listen; report the server's RSS growth per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Spread the clients over this many rooms.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Longest wait for the server to go quiet before reading its RSS (seconds).
        #[arg(long, default_value_t = 10.0)]
        settle: f64,
    },
    /// Markdown tables from JSON-lines result files (median per label).
    Report { files: Vec<PathBuf> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Report { files } = &cli.cmd {
        print!("{}", report::markdown(files)?);
        return Ok(());
    }
    let o = &cli.opts;
    ensure!(o.addr.ip().is_loopback(), "--addr must be a loopback address (this tool loads 127.0.0.1 only)");
    ensure!(o.duration > 0.0 && o.duration <= MAX_DURATION, "--duration must be in (0, {MAX_DURATION}]");
    ensure!((0.0..=MAX_DURATION).contains(&o.warmup), "--warmup must be in [0, {MAX_DURATION}]");
    ensure!(o.group_size > 0 && o.threads > 0, "--group-size and --threads must be positive");
    let needed = connections(&cli.cmd);
    ensure!(needed <= MAX_CONNECTIONS, "{needed} connections is over this tool's limit of {MAX_CONNECTIONS}");
    if let Some(limit) = procfs::open_files_limit() {
        ensure!(
            needed as u64 + 64 <= limit,
            "{needed} connections need more file descriptors than `ulimit -n` ({limit}) allows; raise it"
        );
    }
    let rt = if o.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(o.threads).enable_all().build()?
    };
    let run = rt.block_on(scenario(cli.opts.clone(), cli.cmd.clone()))?;
    report::print_run(&run);
    if let Some(path) = &cli.opts.json {
        report::append(path, &run).with_context(|| format!("cannot append to {}", path.display()))?;
    }
    println!("{}", Value::Object(run));
    Ok(())
}

fn connections(cmd: &Cmd) -> usize {
    match *cmd {
        Cmd::Fanout { clients, .. } | Cmd::Reconnect { clients, .. } | Cmd::Overload { clients, .. } => {
            clients + 1
        }
        Cmd::Rooms { rooms, clients, .. } => rooms * (clients + 1),
        Cmd::Presence { clients, .. } | Cmd::Idle { clients, .. } => clients,
        Cmd::Report { .. } => 0,
    }
}

async fn scenario(opts: Opts, cmd: Cmd) -> anyhow::Result<report::Run> {
    let mut h = Harness::new(opts);
    match cmd {
        Cmd::Fanout { clients, rate, payload } => h.rooms("fanout", 1, clients, rate, payload).await,
        Cmd::Rooms { rooms, clients, rate, payload } => h.rooms("rooms", rooms, clients, rate, payload).await,
        Cmd::Presence { clients, hz } => h.presence(clients, hz).await,
        Cmd::Reconnect { clients, rate, payload, offline_ms } => {
            h.reconnect(clients, rate, payload, offline_ms).await
        }
        Cmd::Idle { clients, rooms, settle } => h.idle(clients, rooms, settle).await,
        Cmd::Overload { clients, slow_share, rate, payload, pause_ms, read_ms, rcvbuf_kb } => {
            let slow = Slow {
                share: slow_share,
                pause: Duration::from_millis(pause_ms),
                read: Duration::from_millis(read_ms),
                rcvbuf: (rcvbuf_kb > 0).then(|| rcvbuf_kb.saturating_mul(1024)),
            };
            h.overload(clients, rate, payload, slow).await
        }
        Cmd::Report { .. } => unreachable!("handled in main"),
    }
}

/// Groups of one kind, filled `group_size` connections at a time.
struct Pool {
    groups: Vec<GroupTx>,
    tick: Option<Duration>,
    added: usize,
}

/// One reading at the edges of a window.
struct Edge {
    at: Instant,
    c: Snap,
    server: Option<procfs::Sample>,
    client_cpu: Option<f64>,
    machine_busy: Option<f64>,
}

/// What a window measured.
struct Window {
    secs: f64,
    d: Snap,
    server_cpu_s: Option<f64>,
    server_rss_kb: Option<u64>,
    client_cpu_s: Option<f64>,
    /// CPU used by everything but the server and this process (other jobs on a shared machine,
    /// plus interrupt time the kernel does not charge to a process).
    other_cpu_s: Option<f64>,
}

/// The slow readers of `overload`.
struct Slow {
    share: f64,
    pause: Duration,
    read: Duration,
    rcvbuf: Option<u32>,
}

struct Stopped {
    lat: Histogram<u64>,
    /// `lat` of each pool alone.
    lat_pool: Vec<Histogram<u64>>,
    sync: Histogram<u64>,
    resync: Histogram<u64>,
}

struct Harness {
    o: Opts,
    ctx: Arc<Ctx>,
    pools: Vec<Pool>,
    pid: Option<String>,
    /// Random suffix for room names.
    tag: String,
}

const READERS: usize = 0;
const WRITERS: usize = 1;
/// The slow readers of `overload` (their tick moves them between pausing and reading).
const SLOW: usize = 2;

impl Harness {
    fn new(o: Opts) -> Self {
        let ctx = Arc::new(Ctx::new(o.addr, o.connect_concurrency));
        let pools = vec![
            Pool { groups: Vec::new(), tick: None, added: 0 },
            Pool { groups: Vec::new(), tick: Some(Duration::from_millis(1)), added: 0 },
            Pool { groups: Vec::new(), tick: Some(Duration::from_millis(5)), added: 0 },
        ];
        let pid = o.server_pid.map(|p| p.to_string());
        let tag = format!("{:08x}", rand::random::<u32>());
        Harness { o, ctx, pools, pid, tag }
    }

    fn room(&self, i: usize) -> Arc<str> {
        format!("{}-{}-{i}", self.o.room_prefix, self.tag).into()
    }

    /// Starts connecting one client into `pool`.
    fn add(&mut self, pool: usize, room: Arc<str>, role: Role) {
        let size = self.o.group_size;
        let p = &mut self.pools[pool];
        if p.added % size == 0 {
            p.groups.push(group::spawn_group(self.ctx.clone(), p.tick));
        }
        p.added += 1;
        let tx = p.groups.last().expect("just ensured").clone();
        tokio::spawn(conn::open(self.ctx.clone(), room, role, None, tx));
    }

    /// Waits until `n` connections have synced (or failed to connect).
    async fn wait_synced(&self, n: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let c = &self.ctx.c;
        loop {
            let (synced, failed) = (c.synced.load(Relaxed), c.connect_errors.load(Relaxed));
            if synced + failed >= n {
                if failed > 0 {
                    eprintln!("warning: {failed} connections failed: {}", self.first_error());
                }
                ensure!(synced > 0, "no connection synced: {}", self.first_error());
                return Ok(start.elapsed());
            }
            if start.elapsed().as_secs_f64() > self.o.timeout {
                bail!("only {synced} of {n} connections synced within --timeout: {}", self.first_error());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn first_error(&self) -> String {
        self.ctx.first_error()
    }

    fn edge(&self) -> Edge {
        Edge {
            at: Instant::now(),
            c: self.ctx.c.snap(),
            server: self.pid.as_deref().and_then(procfs::sample),
            client_cpu: procfs::cpu_s("self"),
            machine_busy: procfs::machine_busy_s(),
        }
    }

    fn between(&self, a: &Edge, b: &Edge) -> Window {
        let server_cpu_s = a.server.zip(b.server).map(|(a, b)| b.cpu_s - a.cpu_s);
        let client_cpu_s = a.client_cpu.zip(b.client_cpu).map(|(a, b)| b - a);
        let busy = a.machine_busy.zip(b.machine_busy).map(|(a, b)| b - a);
        Window {
            secs: b.at.duration_since(a.at).as_secs_f64(),
            d: b.c - a.c,
            server_cpu_s,
            server_rss_kb: b.server.map(|s| s.rss_kb),
            client_cpu_s,
            other_cpu_s: busy
                .map(|b| (b - server_cpu_s.unwrap_or(0.0) - client_cpu_s.unwrap_or(0.0)).max(0.0)),
        }
    }

    /// The measurement window: latencies are recorded only inside it.
    async fn window(&self) -> Window {
        let a = self.edge();
        self.ctx.measuring.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.o.duration)).await;
        self.ctx.measuring.store(false, Relaxed);
        let b = self.edge();
        self.between(&a, &b)
    }

    /// Stops every group, merges their histograms, and closes every connection.
    async fn stop(&mut self) -> Stopped {
        let mut s = Stopped {
            lat: ctx::histogram(),
            lat_pool: Vec::new(),
            sync: ctx::histogram(),
            resync: ctx::histogram(),
        };
        let mut conns: Vec<Conn> = Vec::new();
        for p in &mut self.pools {
            let mut pool_lat = ctx::histogram();
            for g in p.groups.drain(..) {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if g.send(GroupMsg::Stop(tx)).is_err() {
                    continue;
                }
                if let Ok(r) = rx.await {
                    let _ = s.lat.add(&r.lat);
                    let _ = pool_lat.add(&r.lat);
                    let _ = s.sync.add(&r.sync);
                    let _ = s.resync.add(&r.resync);
                    conns.extend(r.conns);
                }
            }
            s.lat_pool.push(pool_lat);
        }
        for c in &mut conns {
            c.close();
        }
        s
    }

    /// Figures every run reports.
    fn base(&self, scenario: &str) -> report::Run {
        let mut r = report::Run::new();
        r.insert("scenario".into(), scenario.into());
        r.insert("label".into(), self.o.label.clone().unwrap_or_else(|| scenario.to_owned()).into());
        r
    }

    fn finish(&self, r: &mut report::Run, w: Option<&Window>) {
        let c = self.ctx.c.snap();
        if let Some(w) = w {
            put(r, "server_cpu_s", w.server_cpu_s);
            put(r, "server_cpu_util", w.server_cpu_s.map(|s| s / w.secs));
            put(r, "server_rss_mb", w.server_rss_kb.map(|kb| kb as f64 / 1024.0));
            put(r, "client_cpu_util", w.client_cpu_s.map(|s| s / w.secs));
            put(r, "other_cpu_util", w.other_cpu_s.map(|s| s / w.secs));
            put(r, "window_s", Some(w.secs));
        }
        put(r, "max_send_lag_ms", Some(self.ctx.max_send_lag_us.load(Relaxed) as f64 / 1000.0));
        r.insert("send_skipped".into(), c.send_skipped.into());
        r.insert("connect_errors".into(), c.connect_errors.into());
        r.insert("gaps".into(), c.gaps.into());
        r.insert("errors".into(), c.errors.into());
        r.insert("server_closes".into(), c.closes.into());
        r.insert("eofs".into(), c.eofs.into());
        let codes = self.ctx.close_codes.lock().expect("not poisoned");
        if !codes.is_empty() {
            r.insert(
                "close_codes".into(),
                json!(codes.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>()),
            );
        }
        if c.errors > 0 {
            r.insert("first_error".into(), self.first_error().into());
        }
    }

    /// `fanout` (one room) and `rooms`: R rooms × N readers, one writer each.
    async fn rooms(
        &mut self,
        scenario: &str,
        rooms: usize,
        clients: usize,
        rate: f64,
        payload: usize,
    ) -> anyhow::Result<report::Run> {
        ensure!(rooms >= 1 && clients >= 1, "need at least one room and one client");
        ensure!(rate > 0.0 && rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
        ensure!(payload <= 1 << 20, "--payload must be at most 1 MiB");
        let filler = filler_for(payload);
        for i in 0..rooms {
            let room = self.room(i);
            self.add(WRITERS, room, Role::writer(rate, filler));
        }
        self.wait_synced(rooms as u64).await?;
        let before = self.edge();
        for i in 0..rooms * clients {
            let room = self.room(i % rooms);
            self.add(READERS, room, Role::Reader);
        }
        let connect = self.wait_synced((rooms * (clients + 1)) as u64).await?;
        let connected = self.edge();
        self.ctx.writing.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.o.warmup)).await;
        let w = self.window().await;
        self.ctx.writing.store(false, Relaxed);
        let s = self.stop().await;
        let mut r = self.base(scenario);
        r.insert("clients".into(), (rooms * clients).into());
        r.insert("rooms".into(), rooms.into());
        r.insert("rate".into(), rate.into());
        r.insert("payload".into(), payload.into());
        r.insert("offered_per_s".into(), (rate * (rooms * clients) as f64).into());
        r.insert("sent_per_s".into(), (w.d.sent as f64 / w.secs).into());
        let delivered = w.d.changes as f64;
        r.insert("delivered_per_s".into(), (delivered / w.secs).into());
        r.insert("frames_per_s".into(), (w.d.frames as f64 / w.secs).into());
        r.insert("changes_per_frame".into(), (delivered / w.d.deltas.max(1) as f64).into());
        r.insert("mb_per_s".into(), (w.d.bytes as f64 / w.secs / 1e6).into());
        latency(&mut r, "lat", &s.lat);
        put(&mut r, "server_cpu_us_per_delivery", w.server_cpu_s.map(|c| c * 1e6 / delivered.max(1.0)));
        r.insert("snapshots".into(), w.d.snapshots.into());
        connect_figures(&mut r, connect, &s.sync, &self.between(&before, &connected));
        self.finish(&mut r, Some(&w));
        Ok(r)
    }

    async fn presence(&mut self, clients: usize, hz: f64) -> anyhow::Result<report::Run> {
        ensure!(clients >= 2, "presence needs at least two clients");
        ensure!(hz > 0.0 && hz <= 1000.0, "--hz must be in (0, 1000]");
        let period = Duration::from_secs_f64(1.0 / hz);
        self.pools[WRITERS].tick =
            Some(Duration::from_millis(2).min(period / 4).max(Duration::from_millis(1)));
        let room = self.room(0);
        let before = self.edge();
        for _ in 0..clients {
            self.add(WRITERS, room.clone(), Role::mover(period));
        }
        let connect = self.wait_synced(clients as u64).await?;
        let connected = self.edge();
        self.ctx.writing.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.o.warmup)).await;
        let w = self.window().await;
        self.ctx.writing.store(false, Relaxed);
        let s = self.stop().await;
        let mut r = self.base("presence");
        r.insert("clients".into(), clients.into());
        r.insert("hz".into(), hz.into());
        r.insert("sent_per_s".into(), (w.d.sent as f64 / w.secs).into());
        let entries = w.d.presence_entries as f64;
        r.insert("presence_entries_per_s".into(), (entries / w.secs).into());
        r.insert("frames_per_s".into(), (w.d.frames as f64 / w.secs).into());
        r.insert("entries_per_frame".into(), (entries / w.d.presence_frames.max(1) as f64).into());
        r.insert("mb_per_s".into(), (w.d.bytes as f64 / w.secs / 1e6).into());
        latency(&mut r, "lat", &s.lat);
        put(&mut r, "server_cpu_us_per_delivery", w.server_cpu_s.map(|c| c * 1e6 / entries.max(1.0)));
        connect_figures(&mut r, connect, &s.sync, &self.between(&before, &connected));
        self.finish(&mut r, Some(&w));
        Ok(r)
    }

    async fn reconnect(
        &mut self,
        clients: usize,
        rate: f64,
        payload: usize,
        offline_ms: u64,
    ) -> anyhow::Result<report::Run> {
        ensure!(clients >= 1, "need at least one client");
        ensure!(rate > 0.0 && rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
        ensure!(offline_ms <= 600_000, "--offline-ms must be at most 600000");
        let room = self.room(0);
        self.add(WRITERS, room.clone(), Role::writer(rate, filler_for(payload)));
        self.wait_synced(1).await?;
        for _ in 0..clients {
            self.add(READERS, room.clone(), Role::Reader);
        }
        let connect = self.wait_synced(clients as u64 + 1).await?;
        self.ctx.writing.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.o.warmup)).await;
        let live = clients as u64 - self.ctx.c.connect_errors.load(Relaxed);
        let target = self.ctx.writer_rev.load(Relaxed).max(1);
        self.ctx.target_rev.store(target, Relaxed);
        let a = self.edge();
        for g in &self.pools[READERS].groups {
            let _ = g.send(GroupMsg::Reconnect { offline: Duration::from_millis(offline_ms) });
        }
        let start = Instant::now();
        let converged = loop {
            let c = self.ctx.c.snap();
            if c.converged >= live {
                break Some(start.elapsed());
            }
            if c.converged + c.connect_errors >= live + a.c.connect_errors
                || start.elapsed().as_secs_f64() > self.o.timeout
            {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let b = self.edge();
        self.ctx.writing.store(false, Relaxed);
        let s = self.stop().await;
        let w = self.between(&a, &b);
        let mut r = self.base("reconnect");
        r.insert("clients".into(), clients.into());
        r.insert("rate".into(), rate.into());
        r.insert("offline_ms".into(), offline_ms.into());
        r.insert("target_rev".into(), target.into());
        let (deltas, snaps) = (w.d.resume_deltas as f64, w.d.resume_snapshots as f64);
        r.insert("resumed_share".into(), (w.d.resumed as f64 / live.max(1) as f64).into());
        r.insert("delta_share".into(), (deltas / (deltas + snaps).max(1.0)).into());
        r.insert("resume_snapshots".into(), w.d.resume_snapshots.into());
        put(&mut r, "converge_ms", converged.map(|d| d.as_secs_f64() * 1000.0));
        r.insert("converged".into(), w.d.converged.into());
        latency(&mut r, "resync", &s.resync);
        put(&mut r, "server_cpu_s", w.server_cpu_s);
        put(&mut r, "server_rss_mb", w.server_rss_kb.map(|kb| kb as f64 / 1024.0));
        put(&mut r, "other_cpu_util", w.other_cpu_s.map(|s| s / w.secs));
        r.insert("connect_s".into(), connect.as_secs_f64().into());
        self.finish(&mut r, None);
        if converged.is_none() {
            eprintln!("warning: only {} of {live} readers converged", w.d.converged);
        }
        Ok(r)
    }

    /// The revision each reader of `pool` holds (`None`: its connection is gone).
    async fn revs(&self, pool: usize) -> Vec<Option<u64>> {
        let mut all = Vec::new();
        for g in &self.pools[pool].groups {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if g.send(GroupMsg::Revs(tx)).is_ok()
                && let Ok(v) = rx.await
            {
                all.extend(v);
            }
        }
        all
    }

    async fn overload(
        &mut self,
        clients: usize,
        rate: f64,
        payload: usize,
        slow: Slow,
    ) -> anyhow::Result<report::Run> {
        ensure!(clients >= 1, "need at least one client");
        ensure!((0.0..=1.0).contains(&slow.share), "--slow-share must be in [0, 1]");
        ensure!(rate > 0.0 && rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
        ensure!(payload <= 1 << 20, "--payload must be at most 1 MiB");
        ensure!(
            slow.pause <= Duration::from_secs(600) && slow.read <= Duration::from_secs(600),
            "--pause-ms and --read-ms must be at most 600000"
        );
        ensure!(!slow.read.is_zero(), "--read-ms must be positive");
        let n_slow = ((clients as f64 * slow.share).round() as usize).min(clients);
        let n_fast = clients - n_slow;
        let room = self.room(0);
        self.add(WRITERS, room.clone(), Role::writer(rate, filler_for(payload)));
        self.wait_synced(1).await?;
        for i in 0..clients {
            // Interleaved, so slow and fast readers join the room mixed.
            if i * n_slow / clients.max(1) != (i + 1) * n_slow / clients.max(1) {
                self.add(SLOW, room.clone(), Role::slow(slow.pause, slow.read, slow.rcvbuf));
            } else {
                self.add(READERS, room.clone(), Role::Reader);
            }
        }
        let connect = self.wait_synced(clients as u64 + 1).await?;

        // The server's RSS every 100 ms from here to the end of the run.
        let peak_kb = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        if let Some(pid) = self.pid.clone() {
            let (peak_kb, sampling) = (peak_kb.clone(), sampling.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                while sampling.load(Relaxed) {
                    every.tick().await;
                    if let Some(kb) = procfs::status_kb(&pid, "VmRSS:") {
                        peak_kb.fetch_max(kb, Relaxed);
                    }
                }
            });
        }
        let start = self.edge();
        let rev0 = self.ctx.writer_rev.load(Relaxed);
        self.ctx.writing.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.o.warmup)).await;
        let w = self.window().await;
        self.ctx.writing.store(false, Relaxed);
        let stopped = self.edge();

        // The writer's last acknowledged revision: wait until it stops moving.
        let mut final_rev = self.ctx.writer_rev.load(Relaxed);
        let mut still = Instant::now();
        while still.elapsed() < Duration::from_millis(500) && start.at.elapsed().as_secs_f64() < 600.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.ctx.writer_rev.load(Relaxed);
            if now != final_rev {
                final_rev = now;
                still = Instant::now();
            }
        }
        let acked = Instant::now();

        // Every reader must end at `final_rev`.
        let at_final = |v: &[Option<u64>]| v.iter().filter(|r| **r == Some(final_rev)).count();
        let (mut fast, mut slows);
        let converged = loop {
            fast = self.revs(READERS).await;
            slows = self.revs(SLOW).await;
            let done = at_final(&fast) + at_final(&slows);
            let live = fast.iter().chain(&slows).filter(|r| r.is_some()).count();
            if done == fast.len() + slows.len() {
                break Some(acked.elapsed());
            }
            if done == live && live < fast.len() + slows.len() {
                break None; // the rest are gone
            }
            if acked.elapsed().as_secs_f64() > self.o.timeout.min(30.0) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let end = self.edge();
        sampling.store(false, Relaxed);
        let hwm_kb = self.pid.as_deref().and_then(|p| procfs::status_kb(p, "VmHWM:"));
        let s = self.stop().await;
        let run = self.between(&start, &end);

        let mut r = self.base("overload");
        r.insert("clients".into(), clients.into());
        r.insert("slow".into(), n_slow.into());
        r.insert("rate".into(), rate.into());
        r.insert("payload".into(), payload.into());
        r.insert("pause_ms".into(), (slow.pause.as_millis() as u64).into());
        r.insert("read_ms".into(), (slow.read.as_millis() as u64).into());
        put(&mut r, "slow_rcvbuf_kb", slow.rcvbuf.map(|b| f64::from(b) / 1024.0));
        let sent_per_s = w.d.sent as f64 / w.secs;
        r.insert("sent_per_s".into(), sent_per_s.into());
        // Fast readers, in the window.
        let delivered = w.d.changes as f64;
        r.insert("fast_delivered_per_s".into(), (delivered / w.secs).into());
        r.insert(
            "fast_delivered_share".into(),
            (delivered / (w.d.sent as f64 * n_fast as f64).max(1.0)).into(),
        );
        r.insert("fast_frames_per_s".into(), (w.d.frames as f64 / w.secs).into());
        latency(&mut r, "lat", &s.lat_pool[READERS]);
        latency(&mut r, "slow_lat", &s.lat_pool[SLOW]);
        r.insert("fast_snapshots".into(), w.d.snapshots.into());
        // Slow readers, over the whole run (writing and catching up).
        r.insert("final_rev".into(), final_rev.into());
        r.insert("changes_total".into(), (final_rev.saturating_sub(rev0)).into());
        r.insert("slow_frames".into(), run.d.slow_frames.into());
        r.insert("slow_deltas".into(), run.d.slow_deltas.into());
        r.insert("slow_snapshots".into(), run.d.slow_snapshots.into());
        r.insert("slow_delta_changes".into(), run.d.slow_changes.into());
        let per_slow = |x: u64| x as f64 / n_slow.max(1) as f64;
        r.insert("slow_frames_each".into(), per_slow(run.d.slow_frames).into());
        r.insert("slow_snapshots_each".into(), per_slow(run.d.slow_snapshots).into());
        r.insert("slow_mb_each".into(), (per_slow(run.d.slow_bytes) / 1e6).into());
        // Nothing lost: every reader at the final revision.
        let (fast_ok, slow_ok) = (at_final(&fast), at_final(&slows));
        r.insert("fast_at_final".into(), fast_ok.into());
        r.insert("slow_at_final".into(), slow_ok.into());
        r.insert("readers_not_at_final".into(), (clients - fast_ok - slow_ok).into());
        r.insert("readers_dropped".into(), fast.iter().chain(&slows).filter(|r| r.is_none()).count().into());
        put(&mut r, "converge_ms", converged.map(|d| d.as_secs_f64() * 1000.0));
        put(&mut r, "writer_stop_to_ack_ms", Some(acked.duration_since(stopped.at).as_secs_f64() * 1000.0));
        // Memory.
        let kb_mb = |kb: u64| kb as f64 / 1024.0;
        put(&mut r, "rss_start_mb", start.server.map(|s| kb_mb(s.rss_kb)));
        let peak = peak_kb.load(Relaxed);
        put(&mut r, "rss_peak_mb", (peak > 0).then(|| kb_mb(peak)));
        put(&mut r, "rss_end_mb", end.server.map(|s| kb_mb(s.rss_kb)));
        put(&mut r, "rss_hwm_mb", hwm_kb.map(kb_mb));
        put(&mut r, "server_cpu_us_per_delivery", w.server_cpu_s.map(|c| c * 1e6 / delivered.max(1.0)));
        r.insert("connect_s".into(), connect.as_secs_f64().into());
        self.finish(&mut r, Some(&w));
        if converged.is_none() {
            eprintln!(
                "warning: {} of {clients} readers did not reach the final revision {final_rev}",
                clients - fast_ok - slow_ok
            );
        }
        Ok(r)
    }

    async fn idle(&mut self, clients: usize, rooms: usize, settle: f64) -> anyhow::Result<report::Run> {
        ensure!(clients >= 1 && rooms >= 1, "need at least one client and one room");
        let before = self.edge();
        for i in 0..clients {
            let room = self.room(i % rooms);
            self.add(READERS, room, Role::Reader);
        }
        let connect = self.wait_synced(clients as u64).await?;
        let connected = self.edge();
        // Let presence join storms die down before reading the RSS.
        let start = Instant::now();
        let mut last = self.ctx.c.snap().frames;
        let mut quiet_since = Instant::now();
        while start.elapsed().as_secs_f64() < settle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.ctx.c.snap().frames;
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(1000) {
                break;
            }
        }
        let after = self.edge();
        let s = self.stop().await;
        let mut r = self.base("idle");
        r.insert("clients".into(), clients.into());
        r.insert("rooms".into(), rooms.into());
        connect_figures(&mut r, connect, &s.sync, &self.between(&before, &connected));
        let (b, a) = (before.server, after.server);
        put(&mut r, "rss_before_mb", b.map(|s| s.rss_kb as f64 / 1024.0));
        put(&mut r, "rss_after_mb", a.map(|s| s.rss_kb as f64 / 1024.0));
        let synced = (after.c.synced - before.c.synced).max(1);
        put(
            &mut r,
            "kib_per_conn",
            b.zip(a).map(|(b, a)| (a.rss_kb as f64 - b.rss_kb as f64) / synced as f64),
        );
        put(&mut r, "server_cpu_settle_s", connected.server.zip(a).map(|(c, a)| a.cpu_s - c.cpu_s));
        r.insert("frames_received".into(), (after.c.frames - before.c.frames).into());
        r.insert("bytes_received".into(), (after.c.bytes - before.c.bytes).into());
        self.finish(&mut r, None);
        Ok(r)
    }
}

fn put(r: &mut report::Run, key: &str, v: Option<f64>) {
    r.insert(key.into(), v.map_or(Value::Null, Value::from));
}

/// `{prefix}_p50_ms`, `_p99_ms`, `_p999_ms`, `_max_ms`, `_count` from a µs histogram.
fn latency(r: &mut report::Run, prefix: &str, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    let some = !h.is_empty();
    put(r, &format!("{prefix}_p50_ms"), some.then(|| ms(h.value_at_quantile(0.5))));
    put(r, &format!("{prefix}_p99_ms"), some.then(|| ms(h.value_at_quantile(0.99))));
    put(r, &format!("{prefix}_p999_ms"), some.then(|| ms(h.value_at_quantile(0.999))));
    put(r, &format!("{prefix}_max_ms"), some.then(|| ms(h.max())));
    r.insert(format!("{prefix}_count"), h.len().into());
}

fn connect_figures(r: &mut report::Run, all: Duration, sync: &Histogram<u64>, w: &Window) {
    r.insert("connect_s".into(), all.as_secs_f64().into());
    let some = !sync.is_empty();
    put(r, "connect_p50_ms", some.then(|| sync.value_at_quantile(0.5) as f64 / 1000.0));
    put(r, "connect_p99_ms", some.then(|| sync.value_at_quantile(0.99) as f64 / 1000.0));
    put(r, "server_cpu_connect_s", w.server_cpu_s);
}
