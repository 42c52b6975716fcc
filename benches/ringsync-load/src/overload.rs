//! `overload`: one room whose readers partly cannot keep up with the writer. A share of the
//! readers are slow (they stop reading for `pause-ms`, then read for `read-ms`, over and over,
//! behind a small receive buffer), and the questions are: are the fast readers slowed, does every
//! reader still end at the writer's final revision, and does the server's memory stay bounded.
//!
//! The run, in steps: connect the writer and the readers (slow and fast interleaved); write
//! through the warm-up and the window while sampling the server's RSS every 100 ms; wait for the
//! writer's last change to be acknowledged (its revision still for 500 ms); wait for every reader
//! to reach that revision (at most `--timeout`, capped at 30 s); report. Fast readers' figures
//! are the window's; slow readers' cover the whole run, writing and catching up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::harness::{Edge, Harness, Pool, Stopped, Window};
use crate::procfs;
use crate::report::{Run, latency, put};
use crate::role::{self, Role};

/// The flags of `overload`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// Share of the readers that are slow (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    pub slow_share: f64,
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 1000)]
    pub payload: usize,
    /// How long a slow reader stops reading at a time (milliseconds).
    #[arg(long, default_value_t = 2000)]
    pub pause_ms: u64,
    /// How long it then reads before pausing again (milliseconds).
    #[arg(long, default_value_t = 100)]
    pub read_ms: u64,
    /// Receive buffer of a slow reader's socket (KiB; 0 = the kernel's default, which on
    /// loopback grows to megabytes and hides the backlog from the server).
    #[arg(long, default_value_t = 64)]
    pub rcvbuf_kb: u32,
}

impl Args {
    fn pause(&self) -> Duration {
        Duration::from_millis(self.pause_ms)
    }
    fn read(&self) -> Duration {
        Duration::from_millis(self.read_ms)
    }
    /// The slow readers' receive buffer in bytes (`None`: the kernel's default).
    fn rcvbuf(&self) -> Option<u32> {
        (self.rcvbuf_kb > 0).then(|| self.rcvbuf_kb.saturating_mul(1024))
    }
    /// How many of the readers are slow.
    fn n_slow(&self) -> usize {
        ((self.clients as f64 * self.slow_share).round() as usize).min(self.clients)
    }
}

/// Where the readers ended, once they converged or the wait gave up.
struct Landing {
    final_rev: u64,
    /// Each fast reader's revision (`None`: dropped).
    fast: Vec<Option<u64>>,
    slow: Vec<Option<u64>>,
    /// From the writer's last acknowledgement to every reader at `final_rev`.
    converged: Option<Duration>,
}

impl Landing {
    fn at_final(&self, revs: &[Option<u64>]) -> usize {
        revs.iter().filter(|r| **r == Some(self.final_rev)).count()
    }
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    validate(&a)?;
    let connect = connect(h, &a).await?;
    let rss = RssPeak::start(h.pid.clone());
    let start = h.edge();
    let rev0 = h.ctx.writer_rev.load(Relaxed);
    let w = h.write_and_measure().await;
    let stopped = h.edge();
    let (final_rev, acked) = last_ack(h, start.at).await;
    let landing = land(h, final_rev, acked).await;
    let end = h.edge();
    rss.stop();
    let hwm_kb = h.pid.as_deref().and_then(|p| procfs::status_kb(p, "VmHWM:"));
    let s = h.stop().await;
    let whole = h.between(&start, &end);
    let mut r = h.base("overload");
    settings(&mut r, &a);
    fast_figures(&mut r, &a, &w, &s);
    slow_figures(&mut r, &a, &whole, final_rev.saturating_sub(rev0), final_rev);
    landing_figures(&mut r, &a, &landing, acked.duration_since(stopped.at));
    memory_figures(&mut r, &start, &end, rss.peak_kb(), hwm_kb);
    let delivered = w.d.changes as f64;
    put(&mut r, "server_cpu_us_per_delivery", w.server_cpu_s.map(|c| c * 1e6 / delivered.max(1.0)));
    r.insert("connect_s".into(), connect.as_secs_f64().into());
    h.finish(&mut r, Some(&w));
    let behind = a.clients - landing.at_final(&landing.fast) - landing.at_final(&landing.slow);
    if landing.converged.is_none() {
        eprintln!("warning: {behind} of {} readers did not reach the final revision {final_rev}", a.clients);
    }
    Ok(r)
}

fn validate(a: &Args) -> anyhow::Result<()> {
    ensure!(a.clients >= 1, "need at least one client");
    ensure!((0.0..=1.0).contains(&a.slow_share), "--slow-share must be in [0, 1]");
    ensure!(a.rate > 0.0 && a.rate <= 1_000_000.0, "--rate must be in (0, 1000000]");
    ensure!(a.payload <= 1 << 20, "--payload must be at most 1 MiB");
    let max = Duration::from_secs(600);
    ensure!(a.pause() <= max && a.read() <= max, "--pause-ms and --read-ms must be at most 600000");
    ensure!(!a.read().is_zero(), "--read-ms must be positive");
    Ok(())
}

/// The writer, then the readers, slow and fast interleaved so they join the room mixed.
async fn connect(h: &mut Harness, a: &Args) -> anyhow::Result<Duration> {
    let (clients, n_slow) = (a.clients, a.n_slow());
    let room = h.room(0);
    h.add(Pool::Writers, room.clone(), Role::writer(a.rate, role::filler_for(a.payload)));
    h.wait_synced(1).await?;
    for i in 0..clients {
        if i * n_slow / clients.max(1) != (i + 1) * n_slow / clients.max(1) {
            h.add(Pool::Slow, room.clone(), Role::slow(a.pause(), a.read(), a.rcvbuf()));
        } else {
            h.add(Pool::Readers, room.clone(), Role::Reader);
        }
    }
    h.wait_synced(clients as u64 + 1).await
}

/// The server's RSS every 100 ms from `start` until `stop`, keeping the highest.
struct RssPeak {
    peak_kb: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
}

impl RssPeak {
    fn start(pid: Option<String>) -> Self {
        let peak =
            RssPeak { peak_kb: Arc::new(AtomicU64::new(0)), sampling: Arc::new(AtomicBool::new(true)) };
        if let Some(pid) = pid {
            let (peak_kb, sampling) = (peak.peak_kb.clone(), peak.sampling.clone());
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
        peak
    }

    fn stop(&self) {
        self.sampling.store(false, Relaxed);
    }

    /// `None` when nothing was sampled (no `--server-pid`).
    fn peak_kb(&self) -> Option<u64> {
        let peak = self.peak_kb.load(Relaxed);
        (peak > 0).then_some(peak)
    }
}

/// The writer's last acknowledged revision, once it has not moved for 500 ms (or 600 s after
/// `since`), and when that was established.
async fn last_ack(h: &Harness, since: Instant) -> (u64, Instant) {
    let mut final_rev = h.ctx.writer_rev.load(Relaxed);
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_millis(500) && since.elapsed().as_secs_f64() < 600.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = h.ctx.writer_rev.load(Relaxed);
        if now != final_rev {
            final_rev = now;
            still = Instant::now();
        }
    }
    (final_rev, Instant::now())
}

/// Polls every reader's revision until all hold `final_rev`, the rest are gone, or the wait
/// (`--timeout`, at most 30 s from `acked`) runs out.
async fn land(h: &Harness, final_rev: u64, acked: Instant) -> Landing {
    loop {
        let mut l = Landing {
            final_rev,
            fast: h.revs(Pool::Readers).await,
            slow: h.revs(Pool::Slow).await,
            converged: None,
        };
        let all = l.fast.len() + l.slow.len();
        let done = l.at_final(&l.fast) + l.at_final(&l.slow);
        let live = l.fast.iter().chain(&l.slow).filter(|r| r.is_some()).count();
        if done == all {
            l.converged = Some(acked.elapsed());
            return l;
        }
        let gone = done == live && live < all;
        if gone || acked.elapsed().as_secs_f64() > h.o.timeout.min(30.0) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The run's flags, as reported.
fn settings(r: &mut Run, a: &Args) {
    r.insert("clients".into(), a.clients.into());
    r.insert("slow".into(), a.n_slow().into());
    r.insert("rate".into(), a.rate.into());
    r.insert("payload".into(), a.payload.into());
    r.insert("pause_ms".into(), (a.pause().as_millis() as u64).into());
    r.insert("read_ms".into(), (a.read().as_millis() as u64).into());
    put(r, "slow_rcvbuf_kb", a.rcvbuf().map(|b| f64::from(b) / 1024.0));
}

/// Fast readers, in the window (and the slow readers' latency beside theirs).
fn fast_figures(r: &mut Run, a: &Args, w: &Window, s: &Stopped) {
    let n_fast = a.clients - a.n_slow();
    r.insert("sent_per_s".into(), (w.d.sent as f64 / w.secs).into());
    let delivered = w.d.changes as f64;
    r.insert("fast_delivered_per_s".into(), (delivered / w.secs).into());
    r.insert("fast_delivered_share".into(), (delivered / (w.d.sent as f64 * n_fast as f64).max(1.0)).into());
    r.insert("fast_frames_per_s".into(), (w.d.frames as f64 / w.secs).into());
    latency(r, "lat", s.lat_of(Pool::Readers));
    latency(r, "slow_lat", s.lat_of(Pool::Slow));
    r.insert("fast_snapshots".into(), w.d.snapshots.into());
}

/// Slow readers, over the whole run (writing and catching up).
fn slow_figures(r: &mut Run, a: &Args, whole: &Window, changes: u64, final_rev: u64) {
    r.insert("final_rev".into(), final_rev.into());
    r.insert("changes_total".into(), changes.into());
    r.insert("slow_frames".into(), whole.d.slow_frames.into());
    r.insert("slow_deltas".into(), whole.d.slow_deltas.into());
    r.insert("slow_snapshots".into(), whole.d.slow_snapshots.into());
    r.insert("slow_delta_changes".into(), whole.d.slow_changes.into());
    let per_slow = |x: u64| x as f64 / a.n_slow().max(1) as f64;
    r.insert("slow_frames_each".into(), per_slow(whole.d.slow_frames).into());
    r.insert("slow_snapshots_each".into(), per_slow(whole.d.slow_snapshots).into());
    r.insert("slow_mb_each".into(), (per_slow(whole.d.slow_bytes) / 1e6).into());
}

/// Nothing lost: every reader at the final revision.
fn landing_figures(r: &mut Run, a: &Args, l: &Landing, stop_to_ack: Duration) {
    let (fast_ok, slow_ok) = (l.at_final(&l.fast), l.at_final(&l.slow));
    r.insert("fast_at_final".into(), fast_ok.into());
    r.insert("slow_at_final".into(), slow_ok.into());
    r.insert("readers_not_at_final".into(), (a.clients - fast_ok - slow_ok).into());
    let dropped = l.fast.iter().chain(&l.slow).filter(|r| r.is_none()).count();
    r.insert("readers_dropped".into(), dropped.into());
    put(r, "converge_ms", l.converged.map(|d| d.as_secs_f64() * 1000.0));
    put(r, "writer_stop_to_ack_ms", Some(stop_to_ack.as_secs_f64() * 1000.0));
}

/// The server's memory: before writing, the sampled peak, after convergence, and its high-water
/// mark.
fn memory_figures(r: &mut Run, start: &Edge, end: &Edge, peak_kb: Option<u64>, hwm_kb: Option<u64>) {
    let kb_mb = |kb: u64| kb as f64 / 1024.0;
    put(r, "rss_start_mb", start.server.map(|s| kb_mb(s.rss_kb)));
    put(r, "rss_peak_mb", peak_kb.map(kb_mb));
    put(r, "rss_end_mb", end.server.map(|s| kb_mb(s.rss_kb)));
    put(r, "rss_hwm_mb", hwm_kb.map(kb_mb));
}
