//! `ringsync-load`: a load generator that speaks ringsync's protocol v1 over real sockets.
//!
//! Scenarios: `fanout` (N readers, one writer at M changes/s), `rooms` (R rooms × N readers,
//! one writer each), `presence` (N clients each moving a cursor at F Hz), `reconnect` (N readers
//! drop at once and resume their sessions), `idle` (server memory per connection), `overload`
//! (one room whose readers partly cannot keep up with the writer: are the fast ones slowed, do the
//! slow ones still end at the final revision, does the server's memory stay bounded); for durable
//! rooms (issue 16) `commit` (W writers in R rooms, each keeping K changes in flight: committed
//! changes/s and send → ack latency), `fsync-rate` (the disk's own rate of small appends + fsync,
//! the floor under `--fsync always`) and `startup` (spawns a server on a data directory and times
//! it to listening and to serving a stored room). Each run
//! prints a table, appends a JSON line to `--json FILE`, and `report FILE...` turns those lines
//! into the Markdown tables of `docs/BENCHMARKS.md` (medians per label).
//!
//! `floor-server --listen ADDR` is not a scenario but a server: the fan-out floor, a minimal
//! WebSocket server that writes one pre-built delta frame to every reader with one `write` per
//! socket and does nothing else. `fanout` runs against it unchanged (`--addr` its address,
//! `--server-pid` its pid), and `report` sets ringsync's CPU per delivery against the floor's for
//! every fan-out shape measured against both (runs whose label starts with `floor`).
//!
//! `redis-fanout` runs `fanout`'s shape against a Redis server the caller started (`--addr`,
//! `--server-pid`): N subscribers on one pub/sub channel and one publisher at M messages/s, with
//! `fanout`'s figures, so that ringsync's server CPU per delivery can be set against Redis's.
//!
//! Built to cost the server's core as little as possible from the other one: a current-thread
//! runtime, one task per group of `--group-size` connections, a hand-rolled RFC 6455 client
//! (`ws`), and frames scanned in place for the few fields that matter (`scan`) instead of parsed.
//! Writers put a timestamp in every change value (µs since the load generator started) and
//! readers take commit→receive latency from it; since writers and readers share one clock, the
//! figure is send → server commit → fan-out → receive. Load is bounded in connections, rate and
//! time, and goes to loopback addresses only.
//!
//! This file is the command line and the dispatch. Module map: one file per scenario (`fanout`,
//! which `rooms` reuses, `presence`, `reconnect`, `idle`, `overload`, `commit`, `fsync_rate`,
//! `startup`, `redis`), each owning its flags and
//! its figures; `floor` (the floor server); `harness` (pools of groups, windows, the figures every run reports); `group`
//! (one task driving many connections), `conn` (one connection and what each server message does
//! to the counters), `role` (what writers, movers and slow readers send), `ctx` (state and
//! counters shared by the run); `ws` (RFC 6455 client), `scan` (fields found in frames without
//! parsing), `procfs` (CPU and memory of a process), `http` (plain GETs: `/metrics`, a room),
//! `report` (tables, JSON lines, `report`).

mod commit;
mod conn;
mod ctx;
mod fanout;
mod floor;
mod fsync_rate;
mod group;
mod harness;
mod http;
mod idle;
mod overload;
mod presence;
mod procfs;
mod reconnect;
mod redis;
mod report;
mod role;
mod rooms;
mod scan;
mod startup;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use harness::Harness;

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

/// The flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Server address; loopback only.
    #[arg(long, global = true, env = "RINGSYNC_LOAD_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The server's process id, for its CPU time and RSS from /proc.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Readers connect here instead of `--addr` (cluster mode: the writers on one node, the
    /// readers on another); loopback only.
    #[arg(long, global = true)]
    pub reader_addr: Option<SocketAddr>,
    /// Another process whose CPU time and RSS count as the server's (cluster mode: the other
    /// nodes and Redis); repeat for each.
    #[arg(long, global = true)]
    pub also_pid: Vec<u32>,
    /// Measurement window (seconds).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Load before the window starts (seconds).
    #[arg(long, global = true, default_value_t = 2.0)]
    pub warmup: f64,
    /// Connection attempts in flight at once. More than the server's listen backlog (128 for a
    /// tokio listener bound the default way) overflows its accept queue, and the dropped SYNs are
    /// retried only after 1 s.
    #[arg(long, global = true, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Connections driven by one task.
    #[arg(long, global = true, default_value_t = 64)]
    pub group_size: usize,
    /// Runtime threads (1 = current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Append each run as a JSON line to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Name of the run in reports (runs with the same label are summarised by their median).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Room names start with this (a random suffix keeps runs apart).
    #[arg(long, global = true, default_value = "load")]
    pub room_prefix: String,
    /// Give up connecting, syncing or converging after this long (seconds).
    #[arg(long, global = true, default_value_t = 60.0)]
    pub timeout: f64,
}

#[derive(Debug, Clone, Subcommand)]
enum Cmd {
    /// One room: N readers, one writer sending M changes/s.
    Fanout(fanout::Args),
    /// R rooms × N readers, one writer per room.
    Rooms(rooms::Args),
    /// One room: N clients each moving a cursor (presence update) F times a second.
    Presence(presence::Args),
    /// One room: N readers and a writer; after the warm-up every reader drops at once and
    /// resumes its session (`?session&epoch&since`) after `offline-ms`.
    Reconnect(reconnect::Args),
    /// One room: N readers, a share of them slow (they stop reading for `pause-ms`, then read
    /// for `read-ms`, over and over), and one writer at M changes/s. Reports the fast readers'
    /// throughput and latency, whether every reader ends at the writer's final revision, what
    /// the slow ones received, and the server's peak RSS (sampled every 100 ms).
    Overload(overload::Args),
    /// Connect N clients that only listen; report the server's RSS growth per connection.
    Idle(idle::Args),
    /// W writers in R rooms (writer i in room i % R), no readers, each keeping K changes in
    /// flight: committed changes/s, send → ack latency, server CPU per change, and the store's
    /// fsyncs from /metrics (durable rooms, `--fsync` modes).
    Commit(commit::Args),
    /// The disk's own rate: append ~100 bytes + fsync (`sync_data`) in a loop on a file in DIR,
    /// for --duration; fsyncs/s and latency. No server needed.
    FsyncRate(fsync_rate::Args),
    /// Spawn the server command after `--` (on a data directory), time it to listening and, with
    /// --room, to the first `GET /v1/rooms/{room}` at --rev; then stop it with SIGTERM.
    Startup(startup::Args),
    /// `fanout`'s shape against Redis pub/sub (`--addr` a redis-server's, `--server-pid` its pid):
    /// N subscribers on one channel, one publisher sending M messages/s; the same figures.
    RedisFanout(redis::Args),
    /// Markdown tables from JSON-lines result files (median per label).
    Report { files: Vec<PathBuf> },
    /// Not a scenario: serve as the fan-out floor (one pre-built frame, one write per reader
    /// socket; enough of protocol v1 for `fanout`) until killed, on a current-thread runtime.
    FloorServer(floor::Args),
}

impl Cmd {
    /// Connections the scenario opens at most.
    fn connections(&self) -> usize {
        match self {
            Cmd::Fanout(a) => a.clients + 1,
            Cmd::Reconnect(a) => a.clients + 1,
            Cmd::Overload(a) => a.clients + 1,
            Cmd::RedisFanout(a) => a.clients + 1,
            Cmd::Rooms(a) => a.rooms * (a.clients + 1),
            Cmd::Presence(a) => a.clients,
            Cmd::Idle(a) => a.clients,
            Cmd::Commit(a) => a.writers,
            Cmd::FsyncRate(_) | Cmd::Startup(_) | Cmd::Report { .. } | Cmd::FloorServer(_) => 0,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Report { files } = &cli.cmd {
        print!("{}", report::markdown(files)?);
        return Ok(());
    }
    if let Cmd::FloorServer(a) = &cli.cmd {
        return floor::main(a);
    }
    check(&cli.opts, &cli.cmd)?;
    let o = &cli.opts;
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

/// The limits every scenario shares: loopback only, bounded time and connections.
fn check(o: &Opts, cmd: &Cmd) -> anyhow::Result<()> {
    ensure!(o.addr.ip().is_loopback(), "--addr must be a loopback address (this tool loads 127.0.0.1 only)");
    ensure!(
        o.reader_addr.is_none_or(|a| a.ip().is_loopback()),
        "--reader-addr must be a loopback address (this tool loads 127.0.0.1 only)"
    );
    ensure!(o.duration > 0.0 && o.duration <= MAX_DURATION, "--duration must be in (0, {MAX_DURATION}]");
    ensure!((0.0..=MAX_DURATION).contains(&o.warmup), "--warmup must be in [0, {MAX_DURATION}]");
    ensure!(o.group_size > 0 && o.threads > 0, "--group-size and --threads must be positive");
    let needed = cmd.connections();
    ensure!(needed <= MAX_CONNECTIONS, "{needed} connections is over this tool's limit of {MAX_CONNECTIONS}");
    if let Some(limit) = procfs::open_files_limit() {
        ensure!(
            needed as u64 + 64 <= limit,
            "{needed} connections need more file descriptors than `ulimit -n` ({limit}) allows; raise it"
        );
    }
    Ok(())
}

async fn scenario(opts: Opts, cmd: Cmd) -> anyhow::Result<report::Run> {
    let mut h = Harness::new(opts);
    match cmd {
        Cmd::Fanout(a) => fanout::run(&mut h, a).await,
        Cmd::Rooms(a) => rooms::run(&mut h, a).await,
        Cmd::Presence(a) => presence::run(&mut h, a).await,
        Cmd::Reconnect(a) => reconnect::run(&mut h, a).await,
        Cmd::Idle(a) => idle::run(&mut h, a).await,
        Cmd::Overload(a) => overload::run(&mut h, a).await,
        Cmd::Commit(a) => commit::run(&mut h, a).await,
        Cmd::FsyncRate(a) => fsync_rate::run(&mut h, a).await,
        Cmd::Startup(a) => startup::run(&mut h, a).await,
        Cmd::RedisFanout(a) => redis::run(&mut h, a).await,
        Cmd::Report { .. } | Cmd::FloorServer(_) => unreachable!("handled in main"),
    }
}
