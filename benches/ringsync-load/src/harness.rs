//! The driver's side of a run, shared by every scenario: pools of groups to add connections to,
//! waiting for them to sync, readings at the edges of a window (the load generator's counters,
//! the server's and this process's CPU and memory), the measurement window itself, stopping the
//! groups, and the figures every run reports.
//!
//! Connections of different kinds live in different pools, so each kind's groups tick at its own
//! pace (readers never, writers and movers every millisecond, slow readers every 5 ms) and each
//! pool's latency can be reported alone.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::Opts;
use crate::conn::{self, Conn};
use crate::ctx::{Ctx, Snap, histogram};
use crate::group::{self, GroupMsg, GroupReport, GroupTx};
use crate::procfs;
use crate::report::{self, put};
use crate::role::Role;

/// The kinds of connection a run keeps apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Readers = 0,
    /// Writers, and the cursor movers of `presence`.
    Writers = 1,
    /// The slow readers of `overload` (their tick moves them between pausing and reading).
    Slow = 2,
}

/// The groups of one pool, filled `group_size` connections at a time.
struct Groups {
    txs: Vec<GroupTx>,
    tick: Option<Duration>,
    added: usize,
}

/// One reading at the edges of a window.
pub struct Edge {
    pub at: Instant,
    pub c: Snap,
    pub server: Option<procfs::Sample>,
    client_cpu: Option<f64>,
    machine_busy: Option<f64>,
}

/// What a window measured.
pub struct Window {
    pub secs: f64,
    pub d: Snap,
    pub server_cpu_s: Option<f64>,
    pub server_rss_kb: Option<u64>,
    pub client_cpu_s: Option<f64>,
    /// CPU used by everything but the server and this process (other jobs on a shared machine,
    /// plus interrupt time the kernel does not charge to a process).
    pub other_cpu_s: Option<f64>,
}

/// The groups' histograms, merged when they were stopped.
pub struct Stopped {
    pub lat: Histogram<u64>,
    /// `lat` of each pool alone, indexed by `Pool`.
    lat_pool: Vec<Histogram<u64>>,
    pub sync: Histogram<u64>,
    pub resync: Histogram<u64>,
}

impl Stopped {
    pub fn lat_of(&self, pool: Pool) -> &Histogram<u64> {
        &self.lat_pool[pool as usize]
    }
}

pub struct Harness {
    pub o: Opts,
    pub ctx: Arc<Ctx>,
    pools: Vec<Groups>,
    /// The server's pid as `/proc` names it.
    pub pid: Option<String>,
    /// Random suffix for room names.
    tag: String,
}

// Connections.
impl Harness {
    pub fn new(o: Opts) -> Self {
        let ctx = Arc::new(Ctx::new(o.addr, o.reader_addr, o.connect_concurrency));
        let pools = vec![
            Groups { txs: Vec::new(), tick: None, added: 0 },
            Groups { txs: Vec::new(), tick: Some(Duration::from_millis(1)), added: 0 },
            Groups { txs: Vec::new(), tick: Some(Duration::from_millis(5)), added: 0 },
        ];
        let pid = o.server_pid.map(|p| p.to_string());
        let tag = format!("{:08x}", rand::random::<u32>());
        Harness { o, ctx, pools, pid, tag }
    }

    /// The server's CPU time and RSS now, with every `--also-pid`'s added.
    fn server_sample(&self) -> Option<procfs::Sample> {
        let mut total = procfs::sample(self.pid.as_deref()?)?;
        for pid in &self.o.also_pid {
            let s = procfs::sample(&pid.to_string())?;
            total.cpu_s += s.cpu_s;
            total.rss_kb += s.rss_kb;
        }
        Some(total)
    }

    /// The name of this run's room `i`.
    pub fn room(&self, i: usize) -> Arc<str> {
        format!("{}-{}-{i}", self.o.room_prefix, self.tag).into()
    }

    /// Sets how often `pool`'s groups tick (before any connection is added to it).
    pub fn set_tick(&mut self, pool: Pool, every: Duration) {
        self.pools[pool as usize].tick = Some(every);
    }

    /// Starts connecting one client into `pool`.
    pub fn add(&mut self, pool: Pool, room: Arc<str>, role: Role) {
        let size = self.o.group_size;
        let p = &mut self.pools[pool as usize];
        if p.added.is_multiple_of(size) {
            p.txs.push(group::spawn_group(self.ctx.clone(), p.tick));
        }
        p.added += 1;
        let tx = p.txs.last().expect("just ensured").clone();
        tokio::spawn(conn::open(self.ctx.clone(), room, role, None, tx));
    }

    /// Waits until `n` connections have synced (or failed to connect).
    pub async fn wait_synced(&self, n: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let c = &self.ctx.c;
        loop {
            let (synced, failed) = (c.synced.load(Relaxed), c.connect_errors.load(Relaxed));
            if synced + failed >= n {
                if failed > 0 {
                    eprintln!("warning: {failed} connections failed: {}", self.ctx.first_error());
                }
                ensure!(synced > 0, "no connection synced: {}", self.ctx.first_error());
                return Ok(start.elapsed());
            }
            if start.elapsed().as_secs_f64() > self.o.timeout {
                bail!("only {synced} of {n} connections synced within --timeout: {}", self.ctx.first_error());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Drops every reader's socket at once; each resumes its session after `offline`.
    pub fn reconnect_readers(&self, offline: Duration) {
        for g in &self.pools[Pool::Readers as usize].txs {
            let _ = g.send(GroupMsg::Reconnect { offline });
        }
    }

    /// The revision each reader of `pool` holds (`None`: its connection is gone).
    pub async fn revs(&self, pool: Pool) -> Vec<Option<u64>> {
        let mut all = Vec::new();
        for g in &self.pools[pool as usize].txs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if g.send(GroupMsg::Revs(tx)).is_ok()
                && let Ok(v) = rx.await
            {
                all.extend(v);
            }
        }
        all
    }

    /// Stops every group, merges their histograms, and closes every connection.
    pub async fn stop(&mut self) -> Stopped {
        let mut s =
            Stopped { lat: histogram(), lat_pool: Vec::new(), sync: histogram(), resync: histogram() };
        let mut conns: Vec<Conn> = Vec::new();
        for p in &mut self.pools {
            let mut pool_lat = histogram();
            for g in p.txs.drain(..) {
                let Some(r) = stop_group(&g).await else { continue };
                let _ = s.lat.add(&r.lat);
                let _ = pool_lat.add(&r.lat);
                let _ = s.sync.add(&r.sync);
                let _ = s.resync.add(&r.resync);
                conns.extend(r.conns);
            }
            s.lat_pool.push(pool_lat);
        }
        for c in &mut conns {
            c.close();
        }
        s
    }
}

async fn stop_group(g: &GroupTx) -> Option<GroupReport> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    g.send(GroupMsg::Stop(tx)).ok()?;
    rx.await.ok()
}

// Measuring.
impl Harness {
    /// A reading of the counters, the server and this machine now.
    pub fn edge(&self) -> Edge {
        Edge {
            at: Instant::now(),
            c: self.ctx.c.snap(),
            server: self.server_sample(),
            client_cpu: procfs::cpu_s("self"),
            machine_busy: procfs::machine_busy_s(),
        }
    }

    /// What happened between two readings.
    pub fn between(&self, a: &Edge, b: &Edge) -> Window {
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

    /// Sleeps through `--warmup`.
    pub async fn warm_up(&self) {
        tokio::time::sleep(Duration::from_secs_f64(self.o.warmup)).await;
    }

    /// The measurement window: latencies are recorded only inside it.
    pub async fn window(&self) -> Window {
        let a = self.edge();
        self.ctx.measuring.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(self.o.duration)).await;
        self.ctx.measuring.store(false, Relaxed);
        let b = self.edge();
        self.between(&a, &b)
    }

    /// Writers write through the warm-up and the window, and stop after it.
    pub async fn write_and_measure(&self) -> Window {
        self.ctx.writing.store(true, Relaxed);
        self.warm_up().await;
        let w = self.window().await;
        self.ctx.writing.store(false, Relaxed);
        w
    }
}

// Figures every run reports.
impl Harness {
    /// A run's first fields: the scenario and the label.
    pub fn base(&self, scenario: &str) -> report::Run {
        let mut r = report::Run::new();
        r.insert("scenario".into(), scenario.into());
        r.insert("label".into(), self.o.label.clone().unwrap_or_else(|| scenario.to_owned()).into());
        r
    }

    /// A run's last fields: the window's CPU and memory (when there is one), then the load
    /// generator's health: send lag, skipped sends, errors, closes.
    pub fn finish(&self, r: &mut report::Run, w: Option<&Window>) {
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
            r.insert("first_error".into(), self.ctx.first_error().into());
        }
    }
}
